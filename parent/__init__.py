"""Parent-instance side: the vsock relay, the credential provider and the enclave RPC client."""

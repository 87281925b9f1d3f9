"""The in-enclave side of nitrokms: NSM client, attested KMS calls, keyring and the RPC service."""

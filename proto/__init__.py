"""What the parent and the enclave share: addresses, frames, messages and attestation documents."""

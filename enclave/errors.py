"""The enclave side's one exception family.

Every failure the enclave reports derives from EnclaveError and carries a stable `code` that goes
on the wire unchanged in RPC error replies. Codes are namespaced by where the failure came from,
so a caller can tell "denied by policy" (`kms.AccessDeniedException`) from "KMS unreachable"
(`kms.Unreachable`) from "bad input" (`protocol.*`) from an NSM refusal (`nsm.InvalidIndex`).
Foreign exceptions (botocore, socket, cffi) are translated into these at the edge, once.
"""

from __future__ import annotations


class EnclaveError(Exception):
    """Root of every error raised by enclave/."""

    default_code = "enclave.Error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class DecryptionError(EnclaveError):
    """Any failure to decrypt (wrong key, bad padding, tampered data), deliberately opaque."""

    default_code = "crypto.DecryptionFailed"

    def __init__(self, message: str = "decryption failed", *, code: str | None = None) -> None:
        super().__init__(message, code=code)

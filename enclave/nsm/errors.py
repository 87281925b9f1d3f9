"""Errors of the NSM client: the device's own ErrorCode, and the device being absent."""

from __future__ import annotations

from enum import IntEnum

from nitrokms.enclave.errors import EnclaveError


class NSMErrorCode(IntEnum):
    """Mirror of nsm-api's `ErrorCode` (same names, same C values)."""

    Success = 0
    InvalidArgument = 1
    InvalidIndex = 2
    InvalidResponse = 3
    ReadOnlyIndex = 4
    InvalidOperation = 5
    BufferTooSmall = 6
    InputTooLarge = 7
    InternalError = 8


class NSMError(EnclaveError):
    """The NSM (or the path to it) refused or failed a request; `code` is `nsm.<ErrorCode name>`."""

    def __init__(self, nsm_code: NSMErrorCode, message: str | None = None) -> None:
        super().__init__(message or f"NSM error {nsm_code.name}", code=f"nsm.{nsm_code.name}")
        self.nsm_code = nsm_code


class NSMUnavailableError(EnclaveError):
    """The NSM device (or libnsm) cannot be opened: not in an enclave, or no driver loaded."""

    default_code = "nsm.Unavailable"

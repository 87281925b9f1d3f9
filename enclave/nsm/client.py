"""`NSMClient`: the enclave's API to the Nitro Secure Module.

`NSMClient.open()` uses AWS libnsm when it can be loaded and the /dev/nsm ioctl otherwise; both
sit behind `NSMBackend`, so nothing above this module knows which one (or whether the device is
real: the test harness answers at /dev/nsm itself).
"""

from __future__ import annotations

from types import TracebackType
from typing import Literal

from nitrokms.enclave.errors import NSMError, NSMErrorCode, NSMUnavailableError
from nitrokms.enclave.nsm.backend import NSMBackend, TransportBackend
from nitrokms.enclave.nsm.codec import NSMDescription, PCRState
from nitrokms.enclave.nsm.device import DEFAULT_DEVICE_PATH, DeviceTransport
from nitrokms.enclave.nsm.libnsm import LibNSMBackend

BackendChoice = Literal["auto", "device", "libnsm"]

_U16_MAX = 0xFFFF


def _check_index(name: str, value: int) -> None:
    if type(value) is not int or not 0 <= value <= _U16_MAX:
        raise NSMError(NSMErrorCode.InvalidArgument, f"{name} must be an integer in 0..65535")


def _check_optional_bytes(name: str, value: bytes | None) -> None:
    if value is not None and not isinstance(value, bytes):
        raise NSMError(NSMErrorCode.InvalidArgument, f"{name} must be bytes or None")


class NSMClient:
    """Operations on the NSM. Thread-safe; use as a context manager or call close()."""

    def __init__(self, backend: NSMBackend) -> None:
        self._backend = backend

    @classmethod
    def open(cls, path: str = DEFAULT_DEVICE_PATH, *, backend: BackendChoice = "auto") -> NSMClient:
        """Open the NSM.

        "auto" tries libnsm (`$NITROKMS_LIBNSM` or `libnsm.so`) for the default device path and
        falls back to the ioctl on `path`. Raises NSMUnavailableError when neither works.
        """
        if backend == "libnsm" or (backend == "auto" and path == DEFAULT_DEVICE_PATH):
            try:
                return cls(LibNSMBackend.load())
            except NSMUnavailableError:
                if backend == "libnsm":
                    raise
        return cls(TransportBackend(DeviceTransport.open(path)))

    def __repr__(self) -> str:
        return f"NSMClient({self._backend!r})"

    def __enter__(self) -> NSMClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._backend.close()

    def describe_nsm(self) -> NSMDescription:
        """Module id, version, PCR count, locked PCRs and digest. Raises NSMError."""
        return self._backend.describe_nsm()

    def describe_pcr(self, index: int) -> PCRState:
        """Lock state and value of PCR `index`. Raises NSMError (InvalidIndex out of range)."""
        _check_index("index", index)
        return self._backend.describe_pcr(index)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR `index` with `data`; returns the new value.

        Raises NSMError: ReadOnlyIndex for a locked PCR, InvalidIndex out of range.
        """
        _check_index("index", index)
        if not isinstance(data, bytes):
            raise NSMError(NSMErrorCode.InvalidArgument, "data must be bytes")
        return self._backend.extend_pcr(index, data)

    def lock_pcr(self, index: int) -> None:
        """Lock PCR `index` until the enclave stops. Raises NSMError (ReadOnlyIndex if locked)."""
        _check_index("index", index)
        self._backend.lock_pcr(index)

    def lock_pcrs(self, range_: int) -> None:
        """Lock PCRs `[0, range_)`. Raises NSMError when `range_` exceeds the PCR count."""
        _check_index("range", range_)
        self._backend.lock_pcrs(range_)

    def get_random(self) -> bytes:
        """Up to 256 random bytes from the NSM. Raises NSMError."""
        return self._backend.get_random()

    def get_attestation_doc(
        self,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """A signed attestation document (raw untagged COSE_Sign1 bytes).

        Raises NSMError: InputTooLarge when a field (or the whole request) is too big.
        """
        for name, value in (("user_data", user_data), ("nonce", nonce), ("public_key", public_key)):
            _check_optional_bytes(name, value)
        return self._backend.get_attestation_doc(user_data, nonce, public_key)

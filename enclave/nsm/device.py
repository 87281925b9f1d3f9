"""The /dev/nsm backend: one fd, one raw ioctl per request (spec 1.1)."""

from __future__ import annotations

import os
import threading

from nitrokms.enclave.errors import NSMError, NSMErrorCode, NSMUnavailableError
from nitrokms.enclave.nsm import _binding
from nitrokms.enclave.nsm.codec import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES

DEFAULT_DEVICE_PATH = "/dev/nsm"


class DeviceTransport:
    """Exchanges raw CBOR with the NSM driver; safe to share between threads (one lock)."""

    def __init__(self, fd: int, path: str = DEFAULT_DEVICE_PATH) -> None:
        self._fd = fd
        self._path = path
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str = DEFAULT_DEVICE_PATH) -> DeviceTransport:
        """Open the device read-write. Raises NSMUnavailableError when it cannot be opened."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise NSMUnavailableError(
                f"cannot open NSM device {path}: {exc.strerror or exc}"
            ) from None
        return cls(fd, path)

    def __repr__(self) -> str:
        return f"DeviceTransport(path={self._path!r}, fd={self._fd})"

    def exchange(self, request: bytes) -> bytes:
        """Send one request and return the reply bytes.

        Raises NSMError: InputTooLarge for requests over 4096 bytes (checked before the ioctl),
        InternalError when the driver fails; NSMUnavailableError after close().
        """
        if len(request) > MAX_REQUEST_BYTES:
            raise NSMError(NSMErrorCode.InputTooLarge, "NSM request larger than 4096 bytes")
        with self._lock:
            if self._fd < 0:
                raise NSMUnavailableError("NSM device is closed")
            return _binding.ioctl_exchange(self._fd, request, MAX_RESPONSE_BYTES)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

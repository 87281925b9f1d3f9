"""Nitro Secure Module access: `NSMClient.open()` and the NSM error types."""

from __future__ import annotations

from enclave.nsm.backend import NSMBackend, NSMTransport, TransportBackend
from enclave.nsm.client import NSMClient
from enclave.nsm.codec import NSMDescription, PCRState
from enclave.nsm.device import DEFAULT_DEVICE_PATH, DeviceTransport
from enclave.nsm.errors import NSMError, NSMErrorCode, NSMUnavailableError
from enclave.nsm.libnsm import LibNSMBackend

__all__ = [
    "DEFAULT_DEVICE_PATH",
    "DeviceTransport",
    "LibNSMBackend",
    "NSMBackend",
    "NSMClient",
    "NSMDescription",
    "NSMError",
    "NSMErrorCode",
    "NSMTransport",
    "NSMUnavailableError",
    "PCRState",
    "TransportBackend",
]

"""Nitro Secure Module access: `NSMClient.open()` and the NSM error types."""

from __future__ import annotations

from nitrokms.enclave.errors import NSMError, NSMErrorCode, NSMUnavailableError
from nitrokms.enclave.nsm.backend import NSMBackend, NSMTransport, TransportBackend
from nitrokms.enclave.nsm.client import NSMClient
from nitrokms.enclave.nsm.codec import NSMDescription, PCRState
from nitrokms.enclave.nsm.device import DEFAULT_DEVICE_PATH, DeviceTransport
from nitrokms.enclave.nsm.libnsm import LibNSMBackend

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

"""The libnsm.so backend (AWS nsm-api's C library, spec 2), for images that ship it."""

from __future__ import annotations

import threading
from typing import Any

from nitrokms.enclave.errors import NSMError, NSMErrorCode
from nitrokms.enclave.nsm import _binding
from nitrokms.enclave.nsm.codec import DIGESTS, NSMDescription, PCRState

ATTESTATION_CAPACITY_BYTES = 16 * 1024
PCR_CAPACITY_BYTES = 64
RANDOM_BYTES = 256


class LibNSMBackend:
    """NSMBackend over libnsm's C API; calls are serialised (libnsm shares one fd)."""

    def __init__(self, lib: _binding.LibNSM) -> None:
        self._lib = lib
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | None = None) -> LibNSMBackend:
        """Load libnsm (see `_binding.load_libnsm`) and open the device through it.

        Raises NSMUnavailableError when the library or the device is unavailable.
        """
        return cls(_binding.LibNSM(_binding.load_libnsm(path)))

    def __repr__(self) -> str:
        return "LibNSMBackend()"

    def _run(self, method: str, *args: Any) -> Any:
        with self._lock:
            return getattr(self._lib, method)(*args)

    def describe_nsm(self) -> NSMDescription:
        fields = self._run("get_description")
        digest = fields.pop("digest")
        if not 0 <= digest < len(DIGESTS):
            raise NSMError(NSMErrorCode.InvalidResponse, f"libnsm reported digest {digest}")
        return NSMDescription(**fields, digest=DIGESTS[digest])

    def describe_pcr(self, index: int) -> PCRState:
        locked, data = self._run("describe_pcr", index, PCR_CAPACITY_BYTES)
        return PCRState(locked, data)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        result: bytes = self._run("extend_pcr", index, data, PCR_CAPACITY_BYTES)
        return result

    def lock_pcr(self, index: int) -> None:
        self._run("lock_pcr", index)

    def lock_pcrs(self, range_: int) -> None:
        self._run("lock_pcrs", range_)

    def get_random(self) -> bytes:
        result: bytes = self._run("get_random", RANDOM_BYTES)
        return result

    def get_attestation_doc(
        self, user_data: bytes | None, nonce: bytes | None, public_key: bytes | None
    ) -> bytes:
        result: bytes = self._run(
            "get_attestation_doc", user_data, nonce, public_key, ATTESTATION_CAPACITY_BYTES
        )
        return result

    def close(self) -> None:
        with self._lock:
            self._lib.close()

"""The simulated NSM device: a pure state machine from request bytes to response bytes.

It speaks the real CBOR protocol (decoded and encoded with the production codec, pinned by
tests to bytes AWS's nsm-api produced: tests/vectors/nsm) and applies the PCR rules of spec 1.4.
Which ErrorCode the real NSM returns for each misuse is UNCONFIRMED; this simulator's mapping is:

| misuse                                                   | ErrorCode        |
|----------------------------------------------------------|------------------|
| bytes that are not CBOR, wrong field types, missing field| InvalidArgument  |
| a request variant it does not know                       | InvalidOperation |
| request over 4096 bytes (the driver stops these first)   | InputTooLarge    |
| PCR index >= 32 (DescribePCR, ExtendPCR, LockPCR)        | InvalidIndex     |
| LockPCRs with range > 32                                 | InvalidIndex     |
| ExtendPCR or LockPCR on a locked PCR                     | ReadOnlyIndex    |
| Attestation user_data, nonce or public_key > 1024 bytes  | InputTooLarge    |
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from nitrokms.enclave.errors import NSMError, NSMErrorCode
from nitrokms.enclave.nsm import codec

PCR_COUNT = 32
PCR_BYTES = 48
BOOT_LOCKED_PCRS = 16
DOCUMENT_PCRS = 16
MAX_ATTESTATION_FIELD_BYTES = 1024
RANDOM_BYTES = 256
VERSION = (1, 0, 0)
INSTANCE_ID_FILE = "instance-id"
DEFAULT_MEASUREMENT_SEED = "nitrokms simulated enclave image"

_INSTANCE_ID = re.compile(r"\Ai-[0-9a-f]{17}\Z")
_HEX96 = re.compile(r"\A[0-9a-fA-F]{96}\Z")
_ZERO = bytes(PCR_BYTES)


class SimulatorConfigError(ValueError):
    """A measurements file or state directory the simulator cannot use; the message says why."""


class DocumentSigner(Protocol):
    def sign_document(
        self,
        *,
        module_id: str,
        timestamp_ms: int,
        pcrs: Mapping[int, bytes],
        public_key: bytes | None,
        user_data: bytes | None,
        nonce: bytes | None,
        digest: str = "SHA384",
    ) -> bytes: ...


def extend(old: bytes, data: bytes) -> bytes:
    """The NSM extend function: SHA384(old || data)."""
    return hashlib.sha384(old + data).digest()


def measure_text(text: str) -> bytes:
    """A PCR as the guide defines PCR3/PCR4: SHA384(0^48 || UTF-8 text)."""
    return extend(_ZERO, text.encode())


def load_measurements(path: Path) -> dict[int, bytes]:
    """PCR0/1/2 (and PCR8 when present) from `nitro-cli build-enclave` JSON output.

    Raises SimulatorConfigError naming the problem.
    """
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SimulatorConfigError(f"cannot read measurements {path}: {exc}") from None
    section = document.get("Measurements") if isinstance(document, dict) else None
    if not isinstance(section, dict):
        raise SimulatorConfigError(f"{path}: no 'Measurements' object")
    pcrs: dict[int, bytes] = {}
    for index in (0, 1, 2, 8):
        value = section.get(f"PCR{index}")
        if value is None and index == 8:
            continue
        if not isinstance(value, str) or not _HEX96.match(value):
            raise SimulatorConfigError(f"{path}: PCR{index} must be 96 hex characters")
        pcrs[index] = bytes.fromhex(value)
    return pcrs


def default_measurements() -> dict[int, bytes]:
    """Deterministic stand-ins for PCR0/1/2, shaped like build-time measurements."""
    return {
        i: extend(_ZERO, hashlib.sha384(f"{DEFAULT_MEASUREMENT_SEED} PCR{i}".encode()).digest())
        for i in range(3)
    }


def boot_pcrs(
    *,
    instance_id: str,
    measurements: Mapping[int, bytes] | None = None,
    debug: bool = False,
    role_arn: str | None = None,
) -> dict[int, bytes]:
    """All 32 boot PCR values (spec 1.4, 3.6): debug mode zeroes PCR0-2."""
    pcrs = dict.fromkeys(range(PCR_COUNT), _ZERO)
    pcrs.update(default_measurements() if measurements is None else measurements)
    if debug:
        pcrs.update(dict.fromkeys(range(3), _ZERO))
    if role_arn:
        pcrs[3] = measure_text(role_arn)
    pcrs[4] = measure_text(instance_id)
    return pcrs


def load_or_create_instance_id(state_dir: Path) -> str:
    """The simulated parent instance id, stable across runs sharing `state_dir`."""
    path = Path(state_dir) / INSTANCE_ID_FILE
    if path.exists():
        value = path.read_text().strip()
        if not _INSTANCE_ID.match(value):
            raise SimulatorConfigError(f"{path}: not an instance id (i- and 17 hex digits)")
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = "i-" + secrets.token_hex(9)[:17]
    temp = path.with_name(f".{INSTANCE_ID_FILE}.{os.getpid()}")
    temp.write_text(value + "\n")
    try:
        os.link(temp, path)
    except FileExistsError:
        value = path.read_text().strip()
    finally:
        temp.unlink()
    return value


def new_module_id(instance_id: str) -> str:
    """`<instance id>-enc<16 hex>`, with a fresh enclave id."""
    return f"{instance_id}-enc{secrets.token_hex(8)}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class NSMSimulator:
    """The device state machine; thread-safe. `exchange()` is an NSMTransport."""

    def __init__(
        self,
        signer: DocumentSigner,
        *,
        module_id: str,
        pcrs: Mapping[int, bytes],
        clock_ms: Callable[[], int] = _now_ms,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if sorted(pcrs) != list(range(PCR_COUNT)) or any(
            len(v) != PCR_BYTES for v in pcrs.values()
        ):
            raise SimulatorConfigError("pcrs must hold 32 values of 48 bytes")
        self.module_id = module_id
        self._signer = signer
        self._clock_ms = clock_ms
        self._random = random_bytes
        self._pcrs = dict(pcrs)
        self._locked = set(range(BOOT_LOCKED_PCRS))
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"NSMSimulator(module_id={self.module_id!r})"

    def pcr(self, index: int) -> bytes:
        with self._lock:
            return self._pcrs[index]

    def exchange(self, request: bytes) -> bytes:
        """Answer one request; every failure becomes an `{"Error": name}` reply."""
        try:
            response = self.handle(codec.decode_request(request))
        except NSMError as exc:
            response = codec.ErrorResponse(exc.nsm_code)
        return codec.encode_response(response)

    def handle(self, request: codec.Request) -> codec.Response:  # noqa: PLR0911
        """Apply one decoded request. Raises NSMError with the code the device would reply."""
        with self._lock:
            match request:
                case codec.DescribePCRRequest():
                    return self._describe_pcr(request)
                case codec.ExtendPCRRequest():
                    return self._extend_pcr(request)
                case codec.LockPCRRequest():
                    return self._lock_pcr(request)
                case codec.LockPCRsRequest():
                    return self._lock_pcrs(request)
                case codec.DescribeNSMRequest():
                    return self._describe_nsm()
                case codec.AttestationRequest():
                    return self._attestation(request)
                case codec.GetRandomRequest():
                    return codec.GetRandomResponse(self._random(RANDOM_BYTES))
            raise NSMError(NSMErrorCode.InvalidOperation, f"unsupported {type(request).__name__}")

    def _index(self, index: int, *, writable: bool) -> int:
        if index >= PCR_COUNT:
            raise NSMError(NSMErrorCode.InvalidIndex, f"PCR {index} out of range")
        if writable and index in self._locked:
            raise NSMError(NSMErrorCode.ReadOnlyIndex, f"PCR {index} is locked")
        return index

    def _describe_pcr(self, request: codec.DescribePCRRequest) -> codec.Response:
        index = self._index(request.index, writable=False)
        return codec.PCRState(index in self._locked, self._pcrs[index])

    def _extend_pcr(self, request: codec.ExtendPCRRequest) -> codec.Response:
        index = self._index(request.index, writable=True)
        self._pcrs[index] = extend(self._pcrs[index], request.data)
        return codec.ExtendPCRResponse(self._pcrs[index])

    def _lock_pcr(self, request: codec.LockPCRRequest) -> codec.Response:
        self._locked.add(self._index(request.index, writable=True))
        return codec.LockPCRResponse()

    def _lock_pcrs(self, request: codec.LockPCRsRequest) -> codec.Response:
        if request.range > PCR_COUNT:
            raise NSMError(NSMErrorCode.InvalidIndex, f"range {request.range} exceeds {PCR_COUNT}")
        self._locked.update(range(request.range))
        return codec.LockPCRsResponse()

    def _describe_nsm(self) -> codec.Response:
        major, minor, patch = VERSION
        return codec.NSMDescription(
            major, minor, patch, self.module_id, PCR_COUNT, tuple(sorted(self._locked)), "SHA384"
        )

    def _attestation(self, request: codec.AttestationRequest) -> codec.Response:
        for name in ("user_data", "nonce", "public_key"):
            value = getattr(request, name)
            if value is not None and len(value) > MAX_ATTESTATION_FIELD_BYTES:
                raise NSMError(NSMErrorCode.InputTooLarge, f"{name} over 1024 bytes")
        document = self._signer.sign_document(
            module_id=self.module_id,
            timestamp_ms=self._clock_ms(),
            pcrs={i: self._pcrs[i] for i in range(DOCUMENT_PCRS)},
            public_key=request.public_key,
            user_data=request.user_data,
            nonce=request.nonce,
        )
        return codec.AttestationResponse(document)

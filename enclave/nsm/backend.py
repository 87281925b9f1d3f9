"""The seams the NSM client sits on, and the codec-driven backend over a raw transport.

`NSMTransport` is a byte pipe to the device (the /dev/nsm ioctl, or anything that answers the NSM
protocol). `NSMBackend` is the operation-level seam: libnsm's C API offers operations, not raw
exchange, so the client depends on this one and `TransportBackend` adapts a transport to it.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from nitrokms.enclave.errors import NSMError, NSMErrorCode
from nitrokms.enclave.nsm import codec
from nitrokms.enclave.nsm.codec import NSMDescription, PCRState


class NSMTransport(Protocol):
    def exchange(self, request: bytes) -> bytes: ...


class NSMBackend(Protocol):
    def describe_nsm(self) -> NSMDescription: ...
    def describe_pcr(self, index: int) -> PCRState: ...
    def extend_pcr(self, index: int, data: bytes) -> bytes: ...
    def lock_pcr(self, index: int) -> None: ...
    def lock_pcrs(self, range_: int) -> None: ...
    def get_random(self) -> bytes: ...
    def get_attestation_doc(
        self, user_data: bytes | None, nonce: bytes | None, public_key: bytes | None
    ) -> bytes: ...
    def close(self) -> None: ...


_R = TypeVar("_R")


class TransportBackend:
    """NSMBackend speaking the CBOR protocol over an NSMTransport."""

    def __init__(self, transport: NSMTransport) -> None:
        self._transport = transport

    def __repr__(self) -> str:
        return f"TransportBackend({self._transport!r})"

    def _call(self, request: codec.Request, expected: type[_R]) -> _R:
        name = type(request).__name__.removesuffix("Request")
        reply = codec.decode_response(self._transport.exchange(codec.encode_request(request)))
        if isinstance(reply, codec.ErrorResponse):
            raise NSMError(reply.error, f"NSM refused {name}: {reply.error.name}")
        if not isinstance(reply, expected):
            raise NSMError(
                NSMErrorCode.InvalidResponse,
                f"NSM answered {name} with {type(reply).__name__}",
            )
        return reply

    def describe_nsm(self) -> NSMDescription:
        return self._call(codec.DescribeNSMRequest(), NSMDescription)

    def describe_pcr(self, index: int) -> PCRState:
        return self._call(codec.DescribePCRRequest(index), PCRState)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        return self._call(codec.ExtendPCRRequest(index, data), codec.ExtendPCRResponse).data

    def lock_pcr(self, index: int) -> None:
        self._call(codec.LockPCRRequest(index), codec.LockPCRResponse)

    def lock_pcrs(self, range_: int) -> None:
        self._call(codec.LockPCRsRequest(range_), codec.LockPCRsResponse)

    def get_random(self) -> bytes:
        return self._call(codec.GetRandomRequest(), codec.GetRandomResponse).random

    def get_attestation_doc(
        self, user_data: bytes | None, nonce: bytes | None, public_key: bytes | None
    ) -> bytes:
        request = codec.AttestationRequest(user_data, nonce, public_key)
        return self._call(request, codec.AttestationResponse).document

    def close(self) -> None:
        close = getattr(self._transport, "close", None)
        if close is not None:
            close()

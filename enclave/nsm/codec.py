"""Pure codec for NSM requests and responses, byte-compatible with nsm-api's serde_cbor encoding.

serde_cbor's default enum encoding (spec 1.2): a unit variant is the CBOR text of its name, a
struct variant is a one-entry map `{name: {field: value, ...}}` with fields in declaration order,
and `Option::None` is `null`. One table per direction describes every variant; the generic
encoder and decoder below walk it, so a variant's wire shape is written down exactly once.

Decoding follows serde's derive rules: unknown fields are ignored, a missing `Option` field reads
as `None`, anything else missing or mistyped is malformed. Decoders take untrusted bytes and raise
only `NSMError`: a malformed response is `InternalError` (as nsm-api reports it); a malformed
request is `InvalidArgument`, an unknown request variant `InvalidOperation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import cbor2
from nitrokms.enclave.errors import NSMError, NSMErrorCode
from nitrokms.proto.cbor import CBORDecodeError, CBORLimits, loads

MAX_REQUEST_BYTES = 0x1000
MAX_RESPONSE_BYTES = 0x3000
MAX_CBOR_DEPTH = 8
MAX_CBOR_ITEMS = 1024
"""The largest message, DescribeNSM, has 16 items plus one per locked PCR (at most 64 in libnsm)."""
CBOR_LIMITS = CBORLimits(MAX_RESPONSE_BYTES, MAX_CBOR_ITEMS, MAX_CBOR_DEPTH)
DIGESTS = ("SHA256", "SHA384", "SHA512")

_U16_MAX = 0xFFFF


def _invalid(message: str) -> NSMError:
    return NSMError(NSMErrorCode.InvalidArgument, message)


def _check_u16(name: str, value: int) -> None:
    if type(value) is not int or not 0 <= value <= _U16_MAX:
        raise _invalid(f"{name} must be an integer in 0..65535")


def _check_bytes(name: str, value: bytes | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if type(value) is not bytes:
        raise _invalid(f"{name} must be bytes")


# Requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DescribePCRRequest:
    index: int

    def __post_init__(self) -> None:
        _check_u16("index", self.index)


@dataclass(frozen=True)
class ExtendPCRRequest:
    index: int
    data: bytes

    def __post_init__(self) -> None:
        _check_u16("index", self.index)
        _check_bytes("data", self.data)


@dataclass(frozen=True)
class LockPCRRequest:
    index: int

    def __post_init__(self) -> None:
        _check_u16("index", self.index)


@dataclass(frozen=True)
class LockPCRsRequest:
    range: int

    def __post_init__(self) -> None:
        _check_u16("range", self.range)


@dataclass(frozen=True)
class DescribeNSMRequest:
    pass


@dataclass(frozen=True)
class AttestationRequest:
    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("user_data", "nonce", "public_key"):
            _check_bytes(name, getattr(self, name), optional=True)


@dataclass(frozen=True)
class GetRandomRequest:
    pass


Request = (
    DescribePCRRequest
    | ExtendPCRRequest
    | LockPCRRequest
    | LockPCRsRequest
    | DescribeNSMRequest
    | AttestationRequest
    | GetRandomRequest
)

# Responses --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCRState:
    """A PCR's lock state and value (the DescribePCR response)."""

    locked: bool
    data: bytes

    def __post_init__(self) -> None:
        if type(self.locked) is not bool:
            raise _invalid("lock must be a bool")
        _check_bytes("data", self.data)


@dataclass(frozen=True)
class ExtendPCRResponse:
    data: bytes

    def __post_init__(self) -> None:
        _check_bytes("data", self.data)


@dataclass(frozen=True)
class LockPCRResponse:
    pass


@dataclass(frozen=True)
class LockPCRsResponse:
    pass


@dataclass(frozen=True)
class NSMDescription:
    """The module's self-description (the DescribeNSM response)."""

    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: tuple[int, ...]
    digest: str

    def __post_init__(self) -> None:
        for name in ("version_major", "version_minor", "version_patch", "max_pcrs"):
            _check_u16(name, getattr(self, name))
        if type(self.module_id) is not str:
            raise _invalid("module_id must be text")
        if type(self.locked_pcrs) is not tuple:
            raise _invalid("locked_pcrs must be a tuple")
        for index in self.locked_pcrs:
            _check_u16("locked_pcrs entry", index)
        if self.digest not in DIGESTS:
            raise _invalid(f"digest must be one of {', '.join(DIGESTS)}")


@dataclass(frozen=True)
class AttestationResponse:
    document: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_bytes("document", self.document)


@dataclass(frozen=True)
class GetRandomResponse:
    random: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_bytes("random", self.random)


@dataclass(frozen=True)
class ErrorResponse:
    error: NSMErrorCode


Response = (
    PCRState
    | ExtendPCRResponse
    | LockPCRResponse
    | LockPCRsResponse
    | NSMDescription
    | AttestationResponse
    | GetRandomResponse
    | ErrorResponse
)

# Wire tables ------------------------------------------------------------------------------------

_Kind = Literal["u16", "bytes", "opt_bytes", "bool", "text", "u16_set", "digest"]


@dataclass(frozen=True)
class _Field:
    wire: str
    attr: str
    kind: _Kind


@dataclass(frozen=True)
class _Variant:
    name: str
    cls: Callable[..., Any]
    fields: tuple[_Field, ...] = ()


def _f(wire: str, kind: _Kind, attr: str | None = None) -> _Field:
    return _Field(wire, attr or wire, kind)


_REQUESTS = (
    _Variant("DescribePCR", DescribePCRRequest, (_f("index", "u16"),)),
    _Variant("ExtendPCR", ExtendPCRRequest, (_f("index", "u16"), _f("data", "bytes"))),
    _Variant("LockPCR", LockPCRRequest, (_f("index", "u16"),)),
    _Variant("LockPCRs", LockPCRsRequest, (_f("range", "u16"),)),
    _Variant("DescribeNSM", DescribeNSMRequest),
    _Variant(
        "Attestation",
        AttestationRequest,
        (_f("user_data", "opt_bytes"), _f("nonce", "opt_bytes"), _f("public_key", "opt_bytes")),
    ),
    _Variant("GetRandom", GetRandomRequest),
)

_RESPONSES = (
    _Variant("DescribePCR", PCRState, (_f("lock", "bool", "locked"), _f("data", "bytes"))),
    _Variant("ExtendPCR", ExtendPCRResponse, (_f("data", "bytes"),)),
    _Variant("LockPCR", LockPCRResponse),
    _Variant("LockPCRs", LockPCRsResponse),
    _Variant(
        "DescribeNSM",
        NSMDescription,
        (
            _f("version_major", "u16"),
            _f("version_minor", "u16"),
            _f("version_patch", "u16"),
            _f("module_id", "text"),
            _f("max_pcrs", "u16"),
            _f("locked_pcrs", "u16_set"),
            _f("digest", "digest"),
        ),
    ),
    _Variant("Attestation", AttestationResponse, (_f("document", "bytes"),)),
    _Variant("GetRandom", GetRandomResponse, (_f("random", "bytes"),)),
)

_REQUEST_BY_NAME = {v.name: v for v in _REQUESTS}
_REQUEST_BY_CLS = {v.cls: v for v in _REQUESTS}
_RESPONSE_BY_NAME = {v.name: v for v in _RESPONSES}
_RESPONSE_BY_CLS = {v.cls: v for v in _RESPONSES}

# Encoding ---------------------------------------------------------------------------------------


def _encode(variant: _Variant, message: object) -> bytes:
    if not variant.fields:
        return cbor2.dumps(variant.name)
    body: dict[str, object] = {}
    for fld in variant.fields:
        value = getattr(message, fld.attr)
        body[fld.wire] = sorted(set(value)) if fld.kind == "u16_set" else value
    return cbor2.dumps({variant.name: body})


def encode_request(request: Request) -> bytes:
    """CBOR bytes of `request` exactly as nsm-api would send them."""
    return _encode(_REQUEST_BY_CLS[type(request)], request)


def encode_response(response: Response) -> bytes:
    """CBOR bytes of `response` exactly as the NSM would reply."""
    if isinstance(response, ErrorResponse):
        return cbor2.dumps({"Error": response.error.name})
    return _encode(_RESPONSE_BY_CLS[type(response)], response)


# Decoding ---------------------------------------------------------------------------------------


class _MalformedError(Exception):
    def __init__(self, message: str, *, unknown: bool = False) -> None:
        super().__init__(message)
        self.unknown = unknown


def _loads(data: bytes) -> object:
    try:
        return loads(data, CBOR_LIMITS)
    except CBORDecodeError as exc:
        raise _MalformedError(f"invalid CBOR: {exc.message}") from None


def _convert(fld: _Field, value: object) -> object:  # noqa: PLR0911
    kind = fld.kind
    if kind == "opt_bytes" and value is None:
        return None
    if kind in ("bytes", "opt_bytes") and type(value) is bytes:
        return value
    if kind == "u16" and type(value) is int and 0 <= value <= _U16_MAX:
        return value
    if kind == "bool" and type(value) is bool:
        return value
    if kind == "text" and type(value) is str:
        return value
    if kind == "digest" and type(value) is str and value in DIGESTS:
        return value
    if kind == "u16_set" and type(value) is list:
        items = [_convert(_Field(fld.wire, fld.attr, "u16"), item) for item in value]
        return tuple(sorted(set(items)))  # type: ignore[type-var]
    raise _MalformedError(f"field {fld.wire!r} has the wrong type")


def _decode_struct(variant: _Variant, body: object) -> object:
    if not variant.fields:
        raise _MalformedError(f"{variant.name} takes no fields")
    if not isinstance(body, dict):
        raise _MalformedError(f"{variant.name} fields must be a map")
    kwargs: dict[str, object] = {}
    for fld in variant.fields:
        if fld.wire not in body and fld.kind != "opt_bytes":
            raise _MalformedError(f"{variant.name} lacks field {fld.wire!r}")
        kwargs[fld.attr] = _convert(fld, body.get(fld.wire))
    try:
        return variant.cls(**kwargs)
    except NSMError as exc:
        raise _MalformedError(exc.message) from None


def _decode_error(body: object) -> ErrorResponse:
    if type(body) is not str or body not in NSMErrorCode.__members__:
        raise _MalformedError("Error carries an unknown error code")
    return ErrorResponse(NSMErrorCode[body])


def _decode(data: bytes, table: dict[str, _Variant], *, errors: bool) -> object:
    value = _loads(data)
    if type(value) is str:
        variant = table.get(value)
        if variant is None:
            raise _MalformedError(f"unknown variant {value[:40]!r}", unknown=True)
        if variant.fields:
            raise _MalformedError(f"{value} needs fields")
        return variant.cls()
    if not isinstance(value, dict) or len(value) != 1:
        raise _MalformedError("expected a variant name or a one-entry map")
    ((name, body),) = value.items()
    if type(name) is not str:
        raise _MalformedError("variant name must be text")
    if errors and name == "Error":
        return _decode_error(body)
    variant = table.get(name)
    if variant is None:
        raise _MalformedError(f"unknown variant {name[:40]!r}", unknown=True)
    return _decode_struct(variant, body)


def decode_request(data: bytes) -> Request:
    """Parse request bytes as the NSM would.

    Raises NSMError: InputTooLarge above 4096 bytes, InvalidOperation for an unknown variant,
    InvalidArgument for anything else malformed.
    """
    if len(data) > MAX_REQUEST_BYTES:
        raise NSMError(NSMErrorCode.InputTooLarge, "request larger than 4096 bytes")
    try:
        result: Request = _decode(data, _REQUEST_BY_NAME, errors=False)  # type: ignore[assignment]
    except _MalformedError as exc:
        code = NSMErrorCode.InvalidOperation if exc.unknown else NSMErrorCode.InvalidArgument
        raise NSMError(code, f"malformed NSM request: {exc}") from None
    return result


def decode_response(data: bytes) -> Response:
    """Parse response bytes from the device; an `{"Error": name}` reply becomes ErrorResponse.

    Raises NSMError(InternalError) for bytes that are not a well-formed response.
    """
    if len(data) > MAX_RESPONSE_BYTES:
        raise NSMError(NSMErrorCode.InternalError, "response larger than 12288 bytes")
    try:
        result: Response = _decode(data, _RESPONSE_BY_NAME, errors=True)  # type: ignore[assignment]
    except _MalformedError as exc:
        raise NSMError(NSMErrorCode.InternalError, f"malformed NSM response: {exc}") from None
    return result

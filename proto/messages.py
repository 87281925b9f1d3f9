"""RPC messages between the parent and the enclave service (wire format: proto/README.md).

Every frame body is one CBOR map, the envelope:

    request   {"v": 1, "id": ID, "op": OPERATION, "body": {...}}
    reply     {"v": 1, "id": ID, "op": OPERATION, "result": {...}}
    error     {"v": 1, "id": ID | null, "op": OPERATION | null, "error": {"code": C, "message": M}}

Bodies are frozen dataclasses that validate at construction, and the decoder builds them through
the same constructors, so junk from the peer surfaces as RemoteProtocolError (h11's rule), while a
bad message built on this side raises LocalProtocolError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self

import cbor2
from nitrokms.proto import schema
from nitrokms.proto.cbor import CBORLimits, loads
from nitrokms.proto.codes import (
    INVALID_FIELD,
    MALFORMED_MESSAGE,
    UNKNOWN_OPERATION,
    UNSUPPORTED_VERSION,
)
from nitrokms.proto.errors import LocalProtocolError, RemoteProtocolError
from nitrokms.proto.framing import ABSOLUTE_MAX_FRAME_BYTES
from nitrokms.proto.keys import (
    ENCRYPTION_CONTEXT,
    GRANT_TOKENS,
    KEY_ID,
    KeyRequest,
)
from nitrokms.proto.schema import kind_field

PROTOCOL_VERSION: Final = 1
MAX_REQUEST_ID: Final = 2**53 - 1  # exact in every JSON/JS number as well
MAX_CBOR_DEPTH: Final = 8
MAX_CBOR_ITEMS: Final = 1024
"""The largest valid message (a 64-pair encryption context with 10 grant tokens, or Describe
with 32 PCRs and 32 locked ones) has under 200 items."""
CBOR_LIMITS: Final = CBORLimits(ABSOLUTE_MAX_FRAME_BYTES, MAX_CBOR_ITEMS, MAX_CBOR_DEPTH)

MAX_CIPHERTEXT_BLOB_BYTES: Final = 6144
MAX_SEAL_PLAINTEXT_BYTES: Final = 1024 * 1024
MAX_ENVELOPE_BYTES: Final = MAX_SEAL_PLAINTEXT_BYTES + 16 * 1024
MAX_ATTESTATION_DOCUMENT_BYTES: Final = 16 * 1024
MAX_ATTEST_INPUT_BYTES: Final = 1024
MAX_HANDLE_CHARS: Final = 128
MAX_ERROR_MESSAGE_CHARS: Final = 2048

ERROR_CODE_PATTERN: Final = r"[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)+"
_ERROR_CODE = re.compile(ERROR_CODE_PATTERN)

HANDLE = schema.Text(MAX_HANDLE_CHARS, pattern=r"[A-Za-z0-9_-]+")
CIPHERTEXT_BLOB = schema.Blob(MAX_CIPHERTEXT_BLOB_BYTES, min_bytes=1)
TIMESTAMP_MS = schema.Int(0, 2**63 - 1)
REGION = schema.Text(64, pattern=r"[a-z]{2}(-[a-z0-9]+)+")


class Body(schema.Record):
    """Base of request and result bodies: validation (`schema.Record`), and conversion to and
    from CBOR maps."""

    operation: ClassVar[str]

    def to_body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _, _ in schema.kinds_of(type(self)):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_body(cls, body: Any) -> Self:
        """Build from a decoded CBOR map. Raises LocalProtocolError naming the bad field."""
        if not isinstance(body, Mapping):
            raise LocalProtocolError("message body must be a map", code=INVALID_FIELD)
        kinds = schema.kinds_of(cls)
        names = {name for name, _, _ in kinds}
        unknown = [k for k in body if k not in names]
        if unknown:
            raise LocalProtocolError(
                f"unknown field {str(unknown[0])[:64]!r} in {cls.operation}", code=INVALID_FIELD
            )
        missing = [name for name, _, optional in kinds if not optional and name not in body]
        if missing:
            raise LocalProtocolError(
                f"missing field {missing[0]!r} in {cls.operation}", code=INVALID_FIELD
            )
        return cls(**body)


def _exactly_one(body: object, *names: str) -> None:
    given = [n for n in names if getattr(body, n) is not None]
    if len(given) != 1:
        raise LocalProtocolError(
            f"exactly one of {' or '.join(names)} is required", code=INVALID_FIELD
        )


# --- operations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SetCredentialsRequest(Body):
    operation = "SetCredentials"
    # IAM allows 16..128 word characters; test stand-ins ("test", moto's "testing") are shorter
    # and lower-case, and KMS itself refuses an unknown id, so only the character set is kept.
    access_key_id: str = kind_field(schema.Text(128, pattern=r"[A-Za-z0-9_]+"))
    secret_access_key: str = kind_field(schema.Text(128), secret=True)
    region: str = kind_field(REGION)
    session_token: str | None = kind_field(schema.Text(8192), secret=True, optional=True)
    expiration_ms: int | None = kind_field(TIMESTAMP_MS, optional=True)


@dataclass(frozen=True)
class SetCredentialsResult(Body):
    operation = "SetCredentials"


@dataclass(frozen=True)
class GenerateDataKeyRequest(KeyRequest, Body):
    """A KeyRequest on the wire, with `key_id` and exactly one of the two sizes required."""

    operation = "GenerateDataKey"

    def _check(self) -> None:
        if self.key_id is None:
            raise LocalProtocolError(
                f"missing field 'key_id' in {self.operation}", code=INVALID_FIELD
            )
        _exactly_one(self, "key_spec", "number_of_bytes")

    @property
    def key(self) -> KeyRequest:
        """The request as a plain KeyRequest (its fields are exactly those)."""
        return KeyRequest(**self.fields())


@dataclass(frozen=True)
class GenerateDataKeyResult(Body):
    operation = "GenerateDataKey"
    handle: str = kind_field(HANDLE)
    ciphertext_blob: bytes = kind_field(CIPHERTEXT_BLOB)
    key_id: str = kind_field(KEY_ID)


@dataclass(frozen=True)
class LoadDataKeyRequest(Body):
    operation = "LoadDataKey"
    ciphertext_blob: bytes = kind_field(CIPHERTEXT_BLOB)
    key_id: str | None = kind_field(KEY_ID, optional=True)
    encryption_context: dict[str, str] | None = kind_field(ENCRYPTION_CONTEXT, optional=True)
    grant_tokens: tuple[str, ...] | None = kind_field(GRANT_TOKENS, optional=True)

    @property
    def key(self) -> KeyRequest:
        """What KMS Decrypt needs besides the blob."""
        return KeyRequest(
            self.key_id, encryption_context=self.encryption_context, grant_tokens=self.grant_tokens
        )


@dataclass(frozen=True)
class LoadDataKeyResult(Body):
    operation = "LoadDataKey"
    handle: str = kind_field(HANDLE)
    key_id: str = kind_field(KEY_ID)


@dataclass(frozen=True)
class ForgetKeyRequest(Body):
    operation = "ForgetKey"
    handle: str = kind_field(HANDLE)


@dataclass(frozen=True)
class ForgetKeyResult(Body):
    operation = "ForgetKey"


@dataclass(frozen=True)
class SealRequest(Body):
    operation = "Seal"
    plaintext: bytes = kind_field(schema.Blob(MAX_SEAL_PLAINTEXT_BYTES), secret=True)
    handle: str | None = kind_field(HANDLE, optional=True)
    key_id: str | None = kind_field(KEY_ID, optional=True)
    encryption_context: dict[str, str] | None = kind_field(ENCRYPTION_CONTEXT, optional=True)
    grant_tokens: tuple[str, ...] | None = kind_field(GRANT_TOKENS, optional=True)

    def _check(self) -> None:
        _exactly_one(self, "handle", "key_id")

    @property
    def key(self) -> KeyRequest:
        """The key to generate under (`key_id`, None with a handle), context and grant tokens."""
        return KeyRequest(
            self.key_id, encryption_context=self.encryption_context, grant_tokens=self.grant_tokens
        )


@dataclass(frozen=True)
class SealResult(Body):
    operation = "Seal"
    envelope: bytes = kind_field(schema.Blob(MAX_ENVELOPE_BYTES, min_bytes=1))
    key_id: str = kind_field(KEY_ID)
    handle: str | None = kind_field(HANDLE, optional=True)


@dataclass(frozen=True)
class UnsealRequest(Body):
    operation = "Unseal"
    envelope: bytes = kind_field(schema.Blob(MAX_ENVELOPE_BYTES, min_bytes=1))
    encryption_context: dict[str, str] | None = kind_field(ENCRYPTION_CONTEXT, optional=True)
    grant_tokens: tuple[str, ...] | None = kind_field(GRANT_TOKENS, optional=True)

    @property
    def key(self) -> KeyRequest:
        """The context and grant tokens the caller presents (the key id is the envelope's)."""
        return KeyRequest(
            encryption_context=self.encryption_context, grant_tokens=self.grant_tokens
        )


@dataclass(frozen=True)
class UnsealResult(Body):
    operation = "Unseal"
    plaintext: bytes = kind_field(schema.Blob(MAX_SEAL_PLAINTEXT_BYTES), secret=True)
    key_id: str = kind_field(KEY_ID)


@dataclass(frozen=True)
class AttestRequest(Body):
    operation = "Attest"
    nonce: bytes | None = kind_field(schema.Blob(MAX_ATTEST_INPUT_BYTES), optional=True)
    user_data: bytes | None = kind_field(schema.Blob(MAX_ATTEST_INPUT_BYTES), optional=True)


@dataclass(frozen=True)
class AttestResult(Body):
    operation = "Attest"
    document: bytes = kind_field(schema.Blob(MAX_ATTESTATION_DOCUMENT_BYTES, min_bytes=1))


@dataclass(frozen=True)
class DescribeRequest(Body):
    operation = "Describe"


@dataclass(frozen=True)
class DescribeResult(Body):
    operation = "Describe"
    module_id: str = kind_field(schema.Text(256))
    pcrs: dict[int, bytes] = kind_field(schema.PCRMap())
    debug_mode: bool = kind_field(schema.Bool())
    service_version: str = kind_field(schema.Text(64))
    nsm_version: str = kind_field(schema.Text(64))
    digest: str = kind_field(schema.Text(16))
    locked_pcrs: tuple[int, ...] = kind_field(schema.ListOf(32, schema.Int(0, 31)))


@dataclass(frozen=True)
class HealthRequest(Body):
    operation = "Health"


@dataclass(frozen=True)
class HealthResult(Body):
    operation = "Health"
    ready: bool = kind_field(schema.Bool())
    credentials_present: bool = kind_field(schema.Bool())
    key_pool_ready: int = kind_field(schema.Int(0, 2**31))
    key_pool_target: int = kind_field(schema.Int(0, 2**31))
    handles: int = kind_field(schema.Int(0, 2**31))
    credentials_expiration_ms: int | None = kind_field(TIMESTAMP_MS, optional=True)
    region: str | None = kind_field(REGION, optional=True)
    kms_reachable: bool | None = kind_field(schema.Bool(), optional=True)
    last_error: str | None = kind_field(schema.Text(MAX_ERROR_MESSAGE_CHARS), optional=True)


@dataclass(frozen=True)
class Operation:
    name: str
    request: type[Body]
    result: type[Body]


OPERATIONS: Final[Mapping[str, Operation]] = {
    op.name: op
    for op in (
        Operation("SetCredentials", SetCredentialsRequest, SetCredentialsResult),
        Operation("GenerateDataKey", GenerateDataKeyRequest, GenerateDataKeyResult),
        Operation("LoadDataKey", LoadDataKeyRequest, LoadDataKeyResult),
        Operation("ForgetKey", ForgetKeyRequest, ForgetKeyResult),
        Operation("Seal", SealRequest, SealResult),
        Operation("Unseal", UnsealRequest, UnsealResult),
        Operation("Attest", AttestRequest, AttestResult),
        Operation("Describe", DescribeRequest, DescribeResult),
        Operation("Health", HealthRequest, HealthResult),
    )
}


# --- envelopes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    id: int
    body: Body

    def __post_init__(self) -> None:
        _check_request_id(self.id)
        if self.body.operation not in OPERATIONS or not isinstance(
            self.body, OPERATIONS[self.body.operation].request
        ):
            raise LocalProtocolError(f"{type(self.body).__name__} is not a request body")

    @property
    def operation(self) -> str:
        return self.body.operation


@dataclass(frozen=True)
class Reply:
    id: int
    result: Body

    def __post_init__(self) -> None:
        _check_request_id(self.id)
        if self.result.operation not in OPERATIONS or not isinstance(
            self.result, OPERATIONS[self.result.operation].result
        ):
            raise LocalProtocolError(f"{type(self.result).__name__} is not a result body")

    @property
    def operation(self) -> str:
        return self.result.operation


@dataclass(frozen=True)
class ErrorReply:
    """A failed request. `id` is None when the failure cannot be tied to a request."""

    id: int | None
    operation: str | None
    code: str
    message: str

    def __post_init__(self) -> None:
        if self.id is not None:
            _check_request_id(self.id)
        if not isinstance(self.code, str) or not _ERROR_CODE.fullmatch(self.code):
            raise LocalProtocolError(f"invalid error code {self.code!r}", code=INVALID_FIELD)
        if len(self.code) > 64:
            raise LocalProtocolError("error code longer than 64 characters", code=INVALID_FIELD)
        if not isinstance(self.message, str):
            raise LocalProtocolError("error message must be text", code=INVALID_FIELD)
        if len(self.message) > MAX_ERROR_MESSAGE_CHARS:
            object.__setattr__(self, "message", self.message[: MAX_ERROR_MESSAGE_CHARS - 3] + "...")
        if self.operation is not None and self.operation not in OPERATIONS:
            raise LocalProtocolError(f"unknown operation {self.operation!r}", code=INVALID_FIELD)


Response = Reply | ErrorReply


class RequestDecodeError(RemoteProtocolError):
    """A request that could not be decoded; `request_id`/`operation` are set when they were read,
    so the server can answer that request with an error and keep the connection."""

    def __init__(
        self, message: str, *, code: str, request_id: int | None, operation: str | None
    ) -> None:
        super().__init__(message, code=code)
        self.request_id = request_id
        self.operation = operation


def _check_request_id(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REQUEST_ID:
        raise LocalProtocolError(
            f"request id must be an integer in 0..{MAX_REQUEST_ID}", code=INVALID_FIELD
        )


def _dumps(envelope: dict[str, Any]) -> bytes:
    return cbor2.dumps(envelope, canonical=True)


def encode_request(request: Request) -> bytes:
    return _dumps(
        {
            "v": PROTOCOL_VERSION,
            "id": request.id,
            "op": request.operation,
            "body": request.body.to_body(),
        }
    )


def encode_response(response: Response) -> bytes:
    envelope: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": response.id}
    if isinstance(response, Reply):
        envelope["op"] = response.operation
        envelope["result"] = response.result.to_body()
    else:
        envelope["op"] = response.operation
        envelope["error"] = {"code": response.code, "message": response.message}
    return _dumps(envelope)


def _load_envelope(data: bytes) -> dict[Any, Any]:
    envelope = loads(data, CBOR_LIMITS)
    if not isinstance(envelope, dict):
        raise RemoteProtocolError("message is not a CBOR map", code=MALFORMED_MESSAGE)
    version = envelope.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise RemoteProtocolError(
            f"unsupported protocol version {str(version)[:32]!r}; this side speaks "
            f"{PROTOCOL_VERSION}",
            code=UNSUPPORTED_VERSION,
        )
    return envelope


def _read_id(envelope: Mapping[Any, Any]) -> int | None:
    value = envelope.get("id")
    try:
        _check_request_id(value)
    except LocalProtocolError:
        return None
    assert isinstance(value, int)
    return value


def _read_operation(envelope: Mapping[Any, Any]) -> Operation:
    name = envelope.get("op")
    if not isinstance(name, str) or name not in OPERATIONS:
        raise RemoteProtocolError(f"unknown operation {str(name)[:64]!r}", code=UNKNOWN_OPERATION)
    return OPERATIONS[name]


def decode_request(data: bytes) -> Request:
    """Decode one request envelope. Raises RequestDecodeError (a RemoteProtocolError)."""
    request_id: int | None = None
    operation: str | None = None
    try:
        envelope = _load_envelope(data)
        request_id = _read_id(envelope)
        if request_id is None:
            raise RemoteProtocolError("request has no valid id", code=MALFORMED_MESSAGE)
        op = _read_operation(envelope)
        operation = op.name
        if set(envelope) != {"v", "id", "op", "body"}:
            raise RemoteProtocolError(
                "request envelope must hold exactly v, id, op and body", code=MALFORMED_MESSAGE
            )
        body = op.request.from_body(envelope["body"])
        return Request(request_id, body)
    except (LocalProtocolError, RemoteProtocolError) as exc:
        raise RequestDecodeError(
            exc.message, code=exc.code, request_id=request_id, operation=operation
        ) from None


def decode_response(data: bytes) -> Response:
    """Decode one reply or error envelope. Raises RemoteProtocolError."""
    envelope = _load_envelope(data)
    request_id = _read_id(envelope)
    try:
        if "error" in envelope:
            return _decode_error(envelope, request_id)
        if request_id is None:
            raise RemoteProtocolError("reply has no valid id", code=MALFORMED_MESSAGE)
        op = _read_operation(envelope)
        if set(envelope) != {"v", "id", "op", "result"}:
            raise RemoteProtocolError(
                "reply envelope must hold exactly v, id, op and result", code=MALFORMED_MESSAGE
            )
        return Reply(request_id, op.result.from_body(envelope["result"]))
    except LocalProtocolError as exc:
        raise RemoteProtocolError(exc.message, code=exc.code) from None


def _decode_error(envelope: Mapping[Any, Any], request_id: int | None) -> ErrorReply:
    if set(envelope) != {"v", "id", "op", "error"}:
        raise RemoteProtocolError(
            "error envelope must hold exactly v, id, op and error", code=MALFORMED_MESSAGE
        )
    if envelope["id"] is not None and request_id is None:
        raise RemoteProtocolError("error reply has an invalid id", code=MALFORMED_MESSAGE)
    op = envelope["op"]
    if op is not None:
        op = _read_operation(envelope).name
    error = envelope["error"]
    if not isinstance(error, Mapping) or set(error) != {"code", "message"}:
        raise RemoteProtocolError("error must hold exactly code and message", code=INVALID_FIELD)
    return ErrorReply(request_id, op, error["code"], error["message"])

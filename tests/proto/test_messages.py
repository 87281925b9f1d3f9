from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.proto import messages as m
from nitrokms.proto.errors import LocalProtocolError, RemoteProtocolError

PCRS = {i: bytes([i]) * 48 for i in range(16)}

# One valid request and one valid result per operation: the round-trip table.
SAMPLES: dict[str, tuple[m.Body, m.Body]] = {
    "SetCredentials": (
        m.SetCredentialsRequest(
            access_key_id="AKIAIOSFODNN7EXAMPLE",
            secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            region="eu-west-1",
            session_token="FwoGZXIvYXdzEXAMPLE",
            expiration_ms=1_900_000_000_000,
        ),
        m.SetCredentialsResult(),
    ),
    "GenerateDataKey": (
        m.GenerateDataKeyRequest(
            key_id="arn:aws:kms:us-east-1:111122223333:alias/app",
            number_of_bytes=64,
            encryption_context={"tenant": "a", "purpose": "db"},
            grant_tokens=("token-1",),
        ),
        m.GenerateDataKeyResult(handle="kh-00ff", ciphertext_blob=b"\x01" * 184, key_id="k"),
    ),
    "LoadDataKey": (
        m.LoadDataKeyRequest(ciphertext_blob=b"\x02" * 184, key_id="alias/app"),
        m.LoadDataKeyResult(handle="kh-1", key_id="arn:aws:kms:us-east-1:1:key/x"),
    ),
    "ForgetKey": (m.ForgetKeyRequest(handle="kh-1"), m.ForgetKeyResult()),
    "Seal": (
        m.SealRequest(plaintext=b"secret data", handle="kh-1", encryption_context={"a": "b"}),
        m.SealResult(envelope=b"NKE1" + b"\x00" * 60, key_id="k", handle="kh-1"),
    ),
    "Unseal": (
        m.UnsealRequest(envelope=b"NKE1" + b"\x00" * 60),
        m.UnsealResult(plaintext=b"secret data", key_id="k"),
    ),
    "Attest": (
        m.AttestRequest(nonce=b"\x01" * 32, user_data=b""),
        m.AttestResult(document=b"\x84" + b"\x00" * 100),
    ),
    "Describe": (
        m.DescribeRequest(),
        m.DescribeResult(
            module_id="i-0123456789abcdef0-enc0123456789abcdef",
            pcrs=PCRS,
            debug_mode=False,
            service_version="0.1.0",
            nsm_version="1.0.0",
            digest="SHA384",
            locked_pcrs=tuple(range(16)),
        ),
    ),
    "Health": (
        m.HealthRequest(),
        m.HealthResult(
            ready=True,
            credentials_present=True,
            key_pool_ready=2,
            key_pool_target=2,
            handles=0,
            credentials_expiration_ms=1_900_000_000_000,
            region="us-east-1",
            kms_reachable=None,
        ),
    ),
}

# (message, wire bytes). The first entry is derived by hand from the README's envelope rules.
GOLDEN: list[tuple[m.Request | m.Response, str]] = [
    (m.Request(1, m.HealthRequest()), "a461760162696401626f70664865616c746864626f6479a0"),
    (
        m.Request(
            7,
            m.GenerateDataKeyRequest(
                key_id="alias/app", key_spec="AES_256", encryption_context={"tenant": "a"}
            ),
        ),
        "a461760162696407626f706f47656e6572617465446174614b657964626f6479a3666b65795f696469616c69"
        "61732f617070686b65795f73706563674145535f32353672656e6372797074696f6e5f636f6e74657874a166"
        "74656e616e746161",
    ),
    (
        m.Reply(9, m.SealResult(envelope=b"\x01\x02", key_id="k", handle="kh-1")),
        "a461760162696409626f70645365616c66726573756c74a36668616e646c65646b682d31666b65795f696461"
        "6b68656e76656c6f7065420102",
    ),
    (
        m.ErrorReply(3, "Unseal", "crypto.DecryptionFailed", "decryption failed"),
        "a461760162696403626f7066556e7365616c656572726f72a264636f64657763727970746f2e446563727970"
        "74696f6e4661696c6564676d6573736167657164656372797074696f6e206661696c6564",
    ),
    (
        m.ErrorReply(None, None, "protocol.FrameTooLarge", "too big"),
        "a4617601626964f6626f70f6656572726f72a264636f64657670726f746f636f6c2e4672616d65546f6f4c61"
        "726765676d65737361676567746f6f20626967",
    ),
]


def encode(message: m.Request | m.Response) -> bytes:
    return (
        m.encode_request(message) if isinstance(message, m.Request) else m.encode_response(message)
    )


def decode_like(message: m.Request | m.Response, data: bytes) -> m.Request | m.Response:
    return m.decode_request(data) if isinstance(message, m.Request) else m.decode_response(data)


def test_every_operation_has_a_sample() -> None:
    assert set(SAMPLES) == set(m.OPERATIONS)


@pytest.mark.parametrize(("message", "wire"), GOLDEN)
def test_golden_encode(message: m.Request | m.Response, wire: str) -> None:
    assert encode(message).hex() == wire


@pytest.mark.parametrize(("message", "wire"), GOLDEN)
def test_golden_decode(message: m.Request | m.Response, wire: str) -> None:
    assert decode_like(message, bytes.fromhex(wire)) == message


@pytest.mark.parametrize(("message", "wire"), GOLDEN)
def test_golden_with_trailing_data_is_refused(message: m.Request | m.Response, wire: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_like(message, bytes.fromhex(wire) + b"\x00")


@pytest.mark.parametrize("operation", sorted(SAMPLES))
def test_round_trip_every_message(operation: str) -> None:
    request, result = SAMPLES[operation]
    assert m.decode_request(m.encode_request(m.Request(5, request))) == m.Request(5, request)
    assert m.decode_response(m.encode_response(m.Reply(6, result))) == m.Reply(6, result)
    error = m.ErrorReply(7, operation, "kms.AccessDeniedException", "denied")
    assert m.decode_response(m.encode_response(error)) == error


def test_secrets_stay_out_of_repr() -> None:
    creds, _ = SAMPLES["SetCredentials"]
    seal, _ = SAMPLES["Seal"]
    _, unseal = SAMPLES["Unseal"]
    text = repr(creds) + repr(seal) + repr(unseal) + repr(m.Request(1, creds))
    for secret in ("wJalrXUtnFEMI", "FwoGZXIvYXdz", "secret data"):
        assert secret not in text
    assert "AKIAIOSFODNN7EXAMPLE" in repr(creds)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: m.GenerateDataKeyRequest(key_id="k"), "key_spec"),
        (lambda: m.GenerateDataKeyRequest(key_id="k", key_spec="AES_256", number_of_bytes=3), ""),
        (lambda: m.GenerateDataKeyRequest(key_id="k", number_of_bytes=0), "number_of_bytes"),
        (lambda: m.GenerateDataKeyRequest(key_id="k", number_of_bytes=1025), "number_of_bytes"),
        (lambda: m.GenerateDataKeyRequest(key_id="k", key_spec="RSA"), "key_spec"),
        (lambda: m.GenerateDataKeyRequest(key_id="", key_spec="AES_256"), "key_id"),
        (lambda: m.GenerateDataKeyRequest(key_id="k" * 2049, key_spec="AES_256"), "key_id"),
        (lambda: m.SealRequest(plaintext=b"x"), "handle"),
        (lambda: m.SealRequest(plaintext=b"x" * (m.MAX_SEAL_PLAINTEXT_BYTES + 1), handle="h"), ""),
        (lambda: m.AttestRequest(nonce=b"x" * 1025), "nonce"),
        (lambda: m.ForgetKeyRequest(handle="bad handle!"), "handle"),
        (
            lambda: m.SetCredentialsRequest(
                access_key_id="AKIA EXAMPLE", secret_access_key="s", region="us-east-1"
            ),
            "access_key_id",
        ),
        (
            lambda: m.SetCredentialsRequest(
                access_key_id="A" * 129, secret_access_key="s", region="us-east-1"
            ),
            "access_key_id",
        ),
        (
            lambda: m.SetCredentialsRequest(
                access_key_id="AKIAIOSFODNN7EXAMPLE", secret_access_key="s", region="Mars"
            ),
            "region",
        ),
        (
            lambda: m.LoadDataKeyRequest(ciphertext_blob=b"x", encryption_context={"": "v"}),
            "encryption_context",
        ),
        (
            lambda: m.LoadDataKeyRequest(ciphertext_blob=b"x", grant_tokens=("t",) * 11),
            "grant_tokens",
        ),
    ],
)
def test_invalid_local_messages_raise_local_error(build: Any, field: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert info.value.code == "protocol.InvalidField"
    assert field in str(info.value)


def test_secret_values_never_echoed_in_field_errors() -> None:
    with pytest.raises(LocalProtocolError) as info:
        m.SealRequest(plaintext="my-secret-text", handle="h")  # type: ignore[arg-type]
    assert "my-secret-text" not in str(info.value)


def envelope(**fields: Any) -> bytes:
    base: dict[str, Any] = {"v": 1, "id": 4, "op": "Health", "body": {}}
    base.update(fields)
    return cbor2.dumps({k: v for k, v in base.items() if v is not ...})


@pytest.mark.parametrize(
    ("data", "code", "request_id"),
    [
        (envelope(v=2), "protocol.UnsupportedVersion", None),
        (envelope(v=True), "protocol.UnsupportedVersion", None),
        (envelope(v=...), "protocol.UnsupportedVersion", None),
        (envelope(op="Launch"), "protocol.UnknownOperation", 4),
        (envelope(op=7), "protocol.UnknownOperation", 4),
        (envelope(id=-1), "protocol.MalformedMessage", None),
        (envelope(id=2**53), "protocol.MalformedMessage", None),
        (envelope(id="4"), "protocol.MalformedMessage", None),
        (envelope(body=[]), "protocol.InvalidField", 4),
        (envelope(body={"extra": 1}), "protocol.InvalidField", 4),
        (envelope(extra=1), "protocol.MalformedMessage", 4),
        (envelope(op="ForgetKey", body={}), "protocol.InvalidField", 4),
        (envelope(op="ForgetKey", body={"handle": b"kh"}), "protocol.InvalidField", 4),
        (envelope(op="Attest", body={"nonce": b"x" * 1025}), "protocol.InvalidField", 4),
        (envelope(op="Attest", body={"nonce": 1.5}), "protocol.InvalidField", 4),
        (cbor2.dumps([1, 2]), "protocol.MalformedMessage", None),
        (b"\xff", "protocol.MalformedMessage", None),
        (b"", "protocol.MalformedMessage", None),
        (bytes.fromhex("a2617601617601"), "protocol.MalformedMessage", None),  # duplicate key
        (b"\x81" * 50 + b"\x00", "protocol.MalformedMessage", None),  # deep nesting
    ],
)
def test_bad_requests_are_typed_remote_errors(
    data: bytes, code: str, request_id: int | None
) -> None:
    with pytest.raises(m.RequestDecodeError) as info:
        m.decode_request(data)
    assert info.value.code == code
    assert info.value.request_id == request_id
    assert isinstance(info.value, RemoteProtocolError)


def test_bad_field_errors_carry_id_and_operation() -> None:
    with pytest.raises(m.RequestDecodeError) as info:
        m.decode_request(envelope(op="Seal", body={"plaintext": "text", "handle": "h"}))
    assert (info.value.request_id, info.value.operation) == (4, "Seal")
    assert "plaintext" in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        cbor2.dumps({"v": 1, "id": 1, "op": "Health", "result": {"ready": "yes"}}),
        cbor2.dumps({"v": 1, "id": 1, "op": "Health", "error": {"code": "bad code"}}),
        cbor2.dumps({"v": 1, "id": 1, "op": "Health", "error": {"code": "a.b", "message": 5}}),
        cbor2.dumps({"v": 1, "id": "x", "op": "Health", "error": {"code": "a.b", "message": ""}}),
        cbor2.dumps({"v": 1, "id": 1, "op": "Health"}),
        cbor2.dumps({"v": 1, "id": None, "op": "Health", "result": {}}),
    ],
)
def test_bad_responses_are_typed_remote_errors(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        m.decode_response(data)


def test_long_error_messages_are_truncated_not_refused() -> None:
    reply = m.ErrorReply(1, None, "enclave.InternalError", "x" * 10_000)
    assert len(reply.message) == m.MAX_ERROR_MESSAGE_CHARS


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for decode in (m.decode_request, m.decode_response):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)


@settings(max_examples=500)
@given(
    st.sampled_from(sorted(m.OPERATIONS)),
    st.dictionaries(
        st.sampled_from(
            [
                "key_id",
                "handle",
                "plaintext",
                "nonce",
                "key_spec",
                "number_of_bytes",
                "encryption_context",
                "grant_tokens",
                "ciphertext_blob",
                "envelope",
                "x",
            ]
        ),
        cbor_values,
        max_size=4,
    ),
    st.one_of(st.integers(), cbor_values),
)
def test_structured_junk_raises_only_protocol_errors(op: str, body: Any, request_id: Any) -> None:
    data = cbor2.dumps({"v": 1, "id": request_id, "op": op, "body": body})
    try:
        request = m.decode_request(data)
    except RemoteProtocolError:
        return
    assert m.decode_request(m.encode_request(request)) == request


@settings(max_examples=200)
@given(
    st.text(min_size=1, max_size=100),
    st.integers(min_value=1, max_value=1024),
    st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=5),
    st.integers(min_value=0, max_value=m.MAX_REQUEST_ID),
)
def test_generate_data_key_round_trips(key_id: str, n: int, ctx: dict[str, str], rid: int) -> None:
    request = m.Request(
        rid, m.GenerateDataKeyRequest(key_id=key_id, number_of_bytes=n, encryption_context=ctx)
    )
    assert m.decode_request(m.encode_request(request)) == request


def test_trailing_data_after_a_large_message_is_refused() -> None:
    data = m.encode_request(m.Request(1, m.SealRequest(plaintext=b"x" * 10_000, handle="h")))
    assert m.decode_request(data).id == 1
    with pytest.raises(RemoteProtocolError, match="trailing"):
        m.decode_request(data + b"\x00")


@pytest.mark.parametrize("access_key_id", ["test", "testing", "AKIAIOSFODNN7EXAMPLE", "A" * 128])
def test_dummy_and_real_access_key_ids_are_accepted(access_key_id: str) -> None:
    creds = m.SetCredentialsRequest(
        access_key_id=access_key_id, secret_access_key="test", region="us-east-1"
    )
    assert m.decode_request(m.encode_request(m.Request(1, creds))).body == creds

"""The lean KMS path against botocore itself: the same request bytes and signature for the same
inputs, and the same error, status and number of attempts for every error reply a KMS can send."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
from nitrokms.enclave.keypool import RecipientKeyPool
from nitrokms.enclave.kms import EnclaveKMS, KMSError, KMSTLSError, KMSUnavailableError
from nitrokms.proto.keys import KeyRequest

from .botocore_reference import ReferenceKMS
from .conftest import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY
from .fakes import FOR_RECIPIENT, HANG, Answer, Raw, scripted_kms, spki_attestor

FROZEN = datetime(2026, 11, 29, 12, 34, 56, tzinfo=UTC)
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+/token=="
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SIGNED = ("X-Amz-Target", "Content-Type", "X-Amz-Date", "X-Amz-Security-Token", "Authorization")
BLOB = base64.b64encode(b"wrapped data key").decode()
SUCCESS: Answer = (
    200,
    {"CiphertextForRecipient": FOR_RECIPIENT, "CiphertextBlob": BLOB, "KeyId": KEY_ARN},
)
PLAIN_SUCCESS: Answer = (200, {"CiphertextBlob": BLOB, "KeyId": KEY_ARN})
CONTEXT = {"purpose": "tëst", "ключ": "значение €", "emoji": "🔐"}

LeanCall = Callable[[EnclaveKMS], object]
# (lean call, the boto3 method and parameters the old EnclaveKMS sent for it)
CALLS: dict[str, tuple[LeanCall, str, dict[str, Any]]] = {
    "GenerateDataKey": (
        lambda k: k.generate_data_key(
            KeyRequest("alias/app", encryption_context=CONTEXT, grant_tokens=("g",))
        ),
        "generate_data_key",
        {"KeyId": "alias/app", "KeySpec": "AES_256", "EncryptionContext": CONTEXT,
         "GrantTokens": ["g"]},
    ),
    "GenerateDataKey bytes": (
        lambda k: k.generate_data_key(KeyRequest(KEY_ARN, number_of_bytes=7)),
        "generate_data_key", {"KeyId": KEY_ARN, "NumberOfBytes": 7},
    ),
    "GenerateDataKeyWithoutPlaintext": (
        lambda k: k.generate_data_key_without_plaintext(KeyRequest(KEY_ARN, key_spec="AES_128")),
        "generate_data_key_without_plaintext", {"KeyId": KEY_ARN, "KeySpec": "AES_128"},
    ),
    "Decrypt": (
        lambda k: k.decrypt(
            b"\x01\x02blob", KeyRequest(KEY_ARN, encryption_context=CONTEXT)
        ),
        "decrypt",
        {"CiphertextBlob": b"\x01\x02blob", "KeyId": KEY_ARN, "EncryptionContext": CONTEXT},
    ),
    "GenerateRandom": (
        lambda k: k.generate_random(48), "generate_random", {"NumberOfBytes": 48},
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def one_key() -> Iterator[RecipientKeyPool]:
    """One key, so both clients send the same Recipient document."""
    with RecipientKeyPool(size=1) as pool:
        assert pool.wait_ready(60)
        yield pool


def lean(url: str, pool: RecipientKeyPool, token: str | None = None, **kwargs: Any) -> EnclaveKMS:
    kms = EnclaveKMS(
        REGION, endpoint_url=url, attestor=spki_attestor, pool=pool, now=lambda: FROZEN, **kwargs
    )
    kms.sleep = lambda _s: None
    kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, token)
    return kms


def reference(
    url: str, pool: RecipientKeyPool, token: str | None = None, **kw: Any
) -> ReferenceKMS:
    return ReferenceKMS(
        REGION, endpoint_url=url, attestor=spki_attestor, pool=pool,
        access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY, session_token=token,
        **kw,
    )  # fmt: skip


def random_call(side: str, url: str, pool: RecipientKeyPool, **kwargs: Any) -> Callable[[], object]:
    """A GenerateRandom of 8 bytes through the lean client or the botocore reference."""
    if side == "lean":
        kms = lean(url, pool, **kwargs)
        return lambda: kms.generate_random(8)
    ref = reference(url, pool, **kwargs)
    return lambda: ref.call("generate_random", NumberOfBytes=8)


def outcome(call: Callable[[], object]) -> tuple[str, str, str, int | None]:
    try:
        call()
    except KMSError as exc:
        return type(exc).__name__, exc.code, exc.message, exc.status
    return "ok", "", "", None


# --- requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("name", CALLS)
def test_the_same_body_and_signature_as_botocore(one_key, name, token):
    lean_call, method, params = CALLS[name]
    answer = PLAIN_SUCCESS if name == "GenerateDataKeyWithoutPlaintext" else SUCCESS
    with scripted_kms([answer, answer], plaintext=b"p" * 32) as fake:
        lean_call(lean(fake.url, one_key, token))
        frozen = FROZEN.replace(tzinfo=None)  # botocore's clock is naive UTC
        with mock.patch("botocore.auth.get_current_datetime", return_value=frozen):
            reference(fake.url, one_key, token).call(method, **params)
    ours, theirs = fake.received
    assert ours.body == theirs.body, "byte-for-byte the same JSON"
    for header in SIGNED:
        assert ours.headers.get(header) == theirs.headers.get(header), header
    assert (TOKEN in ours.headers.get("X-Amz-Security-Token", "")) == (token is not None)
    if name != "GenerateDataKeyWithoutPlaintext":
        assert "Recipient" in json.loads(ours.body)


def test_encryption_context_is_sent_as_json_escapes(one_key):
    with scripted_kms([SUCCESS], plaintext=b"p" * 32) as fake:
        CALLS["GenerateDataKey"][0](lean(fake.url, one_key))
    sent = fake.received[0].body
    assert sent.isascii()
    assert json.loads(sent)["EncryptionContext"] == CONTEXT


# --- errors and retries ---------------------------------------------------------------------------

LONG = "x" * 700
ERROR_REPLIES = {
    "namespaced type": Raw(400, b'{"__type":"com.amazonaws.kms#NotFoundException","message":"k"}'),
    "Message key": Raw(400, b'{"__type":"AccessDeniedException","Message":"denied"}'),
    "type with colon": Raw(
        400, b'{"__type":"InvalidCiphertextException:http://internal.amazon.com/coral/"}'
    ),
    "no type": Raw(400, b'{"message":"what"}'),
    "empty object": Raw(400, b"{}"),
    "no body": Raw(400),
    "not json": Raw(403, b"not json at all"),
    "html 404": Raw(404, b"<html>nope</html>"),
    "null message": Raw(400, b'{"__type":"SomethingException","message":null}'),
    "long message": Raw(400, json.dumps({"__type": "X", "message": LONG}).encode()),
    "500 no body": Raw(500),
    "503 html": Raw(503, b"<html><body>Service Unavailable</body></html>"),
    "502 json": Raw(502, b'{"__type":"KMSInternalException","message":"bad gateway"}'),
    "500 modeled": Raw(500, b'{"__type":"KMSInternalException","message":"oops"}'),
    "429 no body": Raw(429),
    "429 modeled": Raw(429, b'{"__type":"NotFoundException","message":"m"}'),
    "429 unmodeled": Raw(429, b'{"__type":"TooManyThings","message":"m"}'),
    "throttling": Raw(400, b'{"__type":"ThrottlingException","message":"Rate exceeded"}'),
    "limit exceeded": Raw(400, b'{"__type":"LimitExceededException","message":"l"}'),
    "request timeout": Raw(400, b'{"__type":"RequestTimeoutException","message":"t"}'),
    "dependency timeout": Raw(400, b'{"__type":"DependencyTimeoutException","message":"d"}'),
    "retry-after": Raw(
        400, b'{"__type":"ThrottlingException"}', (("x-amz-retry-after", "10"),)
    ),
    "invalid ciphertext": Raw(400, b'{"__type":"InvalidCiphertextException","message":"c"}'),
}  # fmt: skip


@pytest.mark.parametrize("attempts", [1, 3])
@pytest.mark.parametrize("name", ["GenerateDataKey", "Decrypt", "GenerateRandom"])
@pytest.mark.parametrize("reply", ERROR_REPLIES)
def test_error_replies_map_and_retry_as_botocore(one_key, reply, name, attempts):
    lean_call, method, params = CALLS[name]
    script = [ERROR_REPLIES[reply]] * 4
    with scripted_kms(script) as ours:
        got = outcome(lambda: lean_call(lean(ours.url, one_key, max_attempts=attempts)))
    with scripted_kms(script) as theirs:
        ref = reference(theirs.url, one_key, max_attempts=attempts)
        expected = outcome(lambda: ref.call(method, **params))
    assert got == expected
    assert len(ours.received) == len(theirs.received), "the same number of attempts"


def test_a_retried_call_that_then_succeeds_returns_the_result(one_key):
    script = [ERROR_REPLIES["throttling"], ERROR_REPLIES["500 no body"], SUCCESS]
    with scripted_kms(script, plaintext=b"r" * 48) as fake:
        assert lean(fake.url, one_key, max_attempts=3).generate_random(48) == b"r" * 48
    assert len(fake.received) == 3


def test_the_retry_quota_runs_out_as_botocore_s_does(one_key):
    """A KMS failing every call: both clients stop retrying after the same number of requests
    (500 units of quota, 14 per retry), and a success afterwards refills it the same way."""
    failing = [ERROR_REPLIES["500 no body"]] * 300
    counts = []
    for side in ("lean", "reference"):
        with scripted_kms(failing) as fake:
            call = random_call(side, fake.url, one_key, max_attempts=4)
            for _ in range(20):
                outcome(call)
        counts.append(len(fake.received))
    assert counts[0] == counts[1]
    assert counts[0] == 20 + 500 // 14, "35 retries fit in the quota, then none"


def test_timeouts_are_retried_and_reported_as_botocore_does(one_key):
    results = []
    for side in ("lean", "reference"):
        with scripted_kms([HANG] * 3) as fake:
            call = random_call(side, fake.url, one_key, max_attempts=2, read_timeout_s=0.2)
            kind, code, _, status = outcome(call)
            results.append((kind, code, status, len(fake.received)))
    assert results[0] == results[1] == ("KMSUnavailableError", "kms.Unreachable", None, 2)


def test_tls_verification_failures_map_alike_but_are_not_retried(local_kms, one_key, tmp_path):
    from nitrokms.sim.kms.tls import prepare

    other_ca = str(prepare(tmp_path, REGION).ca_cert)
    ours = EnclaveKMS(REGION, endpoint_url=local_kms.url, ca_bundle=other_ca,
                      attestor=spki_attestor, pool=one_key, max_attempts=4)  # fmt: skip
    ours.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    theirs = ReferenceKMS(REGION, endpoint_url=local_kms.url, ca_bundle=other_ca,
                          attestor=spki_attestor, pool=one_key, access_key_id=ACCESS_KEY_ID,
                          secret_access_key=SECRET_ACCESS_KEY, max_attempts=1)  # fmt: skip
    with pytest.raises(KMSTLSError) as lean_error:
        ours.generate_random(8)
    with pytest.raises(KMSTLSError) as reference_error:
        theirs.call("generate_random", NumberOfBytes=8)
    assert lean_error.value.code == reference_error.value.code == "kms.TLSVerificationFailed"
    assert "unable to get local issuer certificate" in lean_error.value.message
    assert "unable to get local issuer certificate" in reference_error.value.message
    assert ours.transport_stats().connections == 0, "no handshake completed"
    assert ours.kms_reachable is False
    assert isinstance(lean_error.value, KMSUnavailableError)

"""EnclaveKMS: credentials, the one attested path, retries and error translation."""

from __future__ import annotations

import base64
import logging
import socket
from datetime import UTC, datetime, timedelta

import pytest
from nitrokms.enclave.errors import (
    CredentialsError,
    EnclaveError,
    KMSError,
    KMSRequestError,
    KMSTLSError,
    KMSUnavailableError,
)
from nitrokms.enclave.keypool import RecipientKeyPool
from nitrokms.enclave.kms import DataKey, EnclaveKMS
from nitrokms.proto.errors import LocalProtocolError
from nitrokms.proto.keys import KeyRequest

from .conftest import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, attested_policy
from .fakes import (
    FOR_RECIPIENT,
    FOR_RECIPIENT_REPLY,
    HANG,
    Raw,
    kms_error,
    one_shot_server,
    scripted_kms,
    spki_attestor,
)


@pytest.fixture
def enclave_kms(local_kms, nsm, pool):
    kms = EnclaveKMS(
        REGION,
        endpoint_url=local_kms.url,
        ca_bundle=str(local_kms.ca_path),
        attestor=nsm.get_attestation_doc,
        pool=pool,
    )
    kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None)
    return kms


def scripted_enclave_kms(url, pool, **kwargs):
    kms = EnclaveKMS(REGION, endpoint_url=url, attestor=spki_attestor, pool=pool, **kwargs)
    kms.set_credentials("AKIAFAKE", "fake-secret", "token", None)
    return kms


# --- end to end against the local KMS ----------------------------------------------------------


def test_generate_data_key_then_decrypt_round_trip(enclave_kms, attested_key_id):
    made = enclave_kms.generate_data_key(
        KeyRequest(attested_key_id, encryption_context={"purpose": "t"})
    )
    assert isinstance(made.plaintext, bytearray)
    assert len(made.plaintext) == 32
    assert made.key_id == attested_key_id
    loaded = enclave_kms.decrypt(
        made.ciphertext_blob, KeyRequest(encryption_context={"purpose": "t"})
    )
    assert loaded.plaintext == made.plaintext
    assert enclave_kms.kms_reachable is True
    assert enclave_kms.last_error is None


def test_number_of_bytes_and_without_plaintext(enclave_kms, attested_key_id):
    assert (
        len(enclave_kms.generate_data_key(KeyRequest(attested_key_id, number_of_bytes=7)).plaintext)
        == 7
    )
    wrapped = enclave_kms.generate_data_key_without_plaintext(
        KeyRequest(attested_key_id, key_spec="AES_128")
    )
    assert len(enclave_kms.decrypt(wrapped.ciphertext_blob).plaintext) == 16


def test_generate_random(enclave_kms):
    assert len(enclave_kms.generate_random(100)) == 100
    with pytest.raises(KMSRequestError):
        enclave_kms.generate_random(0)
    with pytest.raises(KMSRequestError):
        enclave_kms.generate_random(1025)


def test_data_key_repr_and_wipe_hide_plaintext(enclave_kms, attested_key_id):
    key = enclave_kms.generate_data_key(KeyRequest(attested_key_id))
    secret = bytes(key.plaintext)
    text = repr(key)
    assert secret.hex() not in text
    assert repr(secret) not in text
    assert base64.b64encode(secret).decode() not in text
    key.wipe()
    assert key.plaintext == bytearray(32)


def test_credentials_repr_hides_secret(enclave_kms):
    text = repr(enclave_kms.credentials) + repr(enclave_kms)
    assert SECRET_ACCESS_KEY not in text
    assert ACCESS_KEY_ID in text


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ("other_pcr", "kms.AccessDeniedException"),
        ("missing_key", "kms.NotFoundException"),
        ("garbage_blob", "kms.InvalidCiphertextException"),
        ("disabled", "kms.DisabledException"),
        ("bad_secret", "kms.InvalidSignatureException"),
    ],
)
def test_kms_errors_map_to_typed_codes(enclave_kms, plain_client, simulator, setup, code):
    if setup == "other_pcr":
        key = plain_client.create_key(Policy=attested_policy("ab" * 48))["KeyMetadata"]["Arn"]
        call = lambda: enclave_kms.generate_data_key(KeyRequest(key))  # noqa: E731
    elif setup == "missing_key":
        missing = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000"
        call = lambda: enclave_kms.generate_data_key(KeyRequest(missing))  # noqa: E731
    elif setup == "garbage_blob":
        call = lambda: enclave_kms.decrypt(b"\x01" * 64)  # noqa: E731
    elif setup == "disabled":
        policy = attested_policy(simulator.pcr(0).hex())
        key = plain_client.create_key(Policy=policy)["KeyMetadata"]["Arn"]
        plain_client.disable_key(KeyId=key)
        call = lambda: enclave_kms.generate_data_key(KeyRequest(key))  # noqa: E731
    else:
        enclave_kms.set_credentials(ACCESS_KEY_ID, "wrong-secret", None, None)
        call = lambda: enclave_kms.generate_random(8)  # noqa: E731
    with pytest.raises(KMSError) as info:
        call()
    assert info.value.code == code
    assert info.value.message
    assert enclave_kms.kms_reachable is True
    assert enclave_kms.last_error is not None
    assert enclave_kms.last_error.startswith(code)


def test_missing_credentials_fail_before_network(nsm, pool):
    kms = EnclaveKMS(
        REGION, endpoint_url="https://127.0.0.1:1", attestor=nsm.get_attestation_doc, pool=pool
    )
    with pytest.raises(CredentialsError) as info:
        kms.generate_random(8)
    assert info.value.code == "enclave.CredentialsMissing"
    assert kms.kms_reachable is None


def test_expired_credentials_fail_before_network(nsm, pool):
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    kms = EnclaveKMS(
        REGION,
        endpoint_url="https://127.0.0.1:1",
        attestor=nsm.get_attestation_doc,
        pool=pool,
        now=lambda: now[0],
    )
    with pytest.raises(CredentialsError) as info:
        kms.set_credentials("AKIA1", "s", "t", now[0] - timedelta(seconds=1))
    assert info.value.code == "enclave.CredentialsExpired"
    kms.set_credentials("AKIA1", "s", "t", now[0] + timedelta(minutes=5))
    assert kms.health().credentials_expire_at == now[0] + timedelta(minutes=5)
    now[0] += timedelta(minutes=6)
    with pytest.raises(CredentialsError) as info:
        kms.generate_data_key(KeyRequest("alias/x"))
    assert info.value.code == "enclave.CredentialsExpired"
    assert kms.kms_reachable is None


def test_unreachable_kms(nsm, pool):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kms = EnclaveKMS(
        REGION,
        endpoint_url=f"https://127.0.0.1:{port}",
        attestor=nsm.get_attestation_doc,
        pool=pool,
        max_attempts=2,
    )
    kms.set_credentials("AKIA1", "s")
    with pytest.raises(KMSUnavailableError) as info:
        kms.generate_random(8)
    assert info.value.code == "kms.Unreachable"
    assert kms.kms_reachable is False
    assert str(kms.health().last_error).startswith("kms.Unreachable")


def test_untrusted_certificate_is_a_tls_error(local_kms, nsm, pool, tmp_path):
    from nitrokms.sim.kms.tls import prepare

    other_ca = prepare(tmp_path, REGION).ca_cert
    kms = EnclaveKMS(
        REGION,
        endpoint_url=local_kms.url,
        ca_bundle=str(other_ca),
        attestor=nsm.get_attestation_doc,
        pool=pool,
        max_attempts=1,
    )
    kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    with pytest.raises(KMSTLSError) as info:
        kms.generate_random(8)
    assert info.value.code == "kms.TLSVerificationFailed"
    assert "certificate" in info.value.message
    assert kms.kms_reachable is False


# --- retries against a scripted server ------------------------------------------------------------


def test_throttling_and_5xx_are_retried_then_succeed(pool):
    script = [
        kms_error("ThrottlingException", status=400),
        kms_error("KMSInternalException", status=500),
        (200, {"CiphertextForRecipient": FOR_RECIPIENT}),
    ]
    with scripted_kms(script, plaintext=b"r" * 16) as fake:
        kms = scripted_enclave_kms(fake.url, pool, max_attempts=4)
        assert kms.generate_random(16) == b"r" * 16
    assert len(fake.targets) == 3


def test_5xx_retries_are_bounded(pool):
    with scripted_kms([kms_error("KMSInternalException", status=500)] * 10) as fake:
        kms = scripted_enclave_kms(fake.url, pool, max_attempts=3)
        with pytest.raises(KMSError) as info:
            kms.generate_random(16)
    assert info.value.code == "kms.KMSInternalException"
    assert info.value.status == 500
    assert len(fake.targets) == 3


@pytest.mark.parametrize("code", ["AccessDeniedException", "InvalidCiphertextException"])
def test_client_errors_are_not_retried(pool, code):
    with scripted_kms([kms_error(code)] * 3) as fake:
        kms = scripted_enclave_kms(fake.url, pool, max_attempts=4)
        with pytest.raises(KMSError) as info:
            kms.decrypt(b"blob")
    assert info.value.code == f"kms.{code}"
    assert len(fake.targets) == 1


def test_read_timeouts_are_retried_then_reported_unreachable(pool):
    with scripted_kms([HANG, HANG, HANG]) as fake:
        kms = scripted_enclave_kms(fake.url, pool, max_attempts=2, read_timeout_s=0.2)
        with pytest.raises(KMSUnavailableError) as info:
            kms.generate_random(16)
        assert len(fake.targets) == 2
    assert info.value.code == "kms.Unreachable"


def test_same_credentials_keep_the_signer(enclave_kms):
    signer = enclave_kms.signer()
    enclave_kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None)
    assert enclave_kms.signer() is signer
    enclave_kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, "session", None)
    assert enclave_kms.signer() is not signer


def test_one_tls_handshake_carries_every_call(enclave_kms, attested_key_id):
    for _ in range(10):
        enclave_kms.generate_data_key(KeyRequest(attested_key_id))
    stats = enclave_kms.transport_stats()
    assert (stats.handshakes, stats.requests, stats.reused) == (1, 10, 9)
    enclave_kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, "other-session", None)
    with pytest.raises(KMSError):
        enclave_kms.generate_random(8)  # unknown token: refused, on the same connection
    assert enclave_kms.transport_stats().handshakes == 1


def test_session_credentials_are_signed_and_accepted(tmp_path, pki, nsm, pool):
    from nitrokms.sim.kms.auth import Credential
    from nitrokms.sim.kms.server import LocalKMS

    from .conftest import PRINCIPAL

    temporary = Credential("ASIATEMPORARY0000001", "temporary-secret", PRINCIPAL, "tok/en+==")
    with LocalKMS(tmp_path, [temporary], pki.root_certificate_pem, region=REGION) as local:
        kms = EnclaveKMS(REGION, endpoint_url=local.url, ca_bundle=str(local.ca_path),
                         attestor=nsm.get_attestation_doc, pool=pool)  # fmt: skip
        kms.set_credentials(temporary.access_key_id, "temporary-secret", "tok/en+==")
        assert len(kms.generate_random(16)) == 16
        kms.set_credentials(temporary.access_key_id, "temporary-secret", "another-token")
        with pytest.raises(KMSError) as info:
            kms.generate_random(16)
    assert info.value.code == "kms.UnrecognizedClientException"


def test_pre_attested_pool_documents_serve_the_calls(local_kms, nsm, attested_key_id):
    calls = []

    def counting(*, public_key: bytes) -> bytes:
        calls.append(public_key)
        document: bytes = nsm.get_attestation_doc(public_key=public_key)
        return document

    with RecipientKeyPool(size=1, attestor=counting) as attested_pool:
        assert attested_pool.wait_ready(60)
        kms = EnclaveKMS(REGION, endpoint_url=local_kms.url, ca_bundle=str(local_kms.ca_path),
                         pool=attested_pool)  # fmt: skip
        kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
        made = [kms.generate_data_key(KeyRequest(attested_key_id)) for _ in range(5)]
        assert kms.decrypt(made[0].ciphertext_blob).plaintext == made[0].plaintext
    assert len(calls) == 1, "one document made ahead, reused by every call"


def test_a_connection_the_server_closed_while_idle_is_replaced(pool):
    with one_shot_server(FOR_RECIPIENT_REPLY) as server:
        kms = scripted_enclave_kms(server.url, pool, max_attempts=1)
        assert len(kms.generate_random(16)) == 16
        assert server.wait_closed()
        assert len(kms.generate_random(16)) == 16, "no attempt spent on the dead connection"
    stats = kms.transport_stats()
    assert (stats.connections, stats.requests) == (2, 2)


def test_a_reused_connection_cut_during_a_request_costs_one_attempt(pool, monkeypatch):
    """Closed between the check and the request: the attempt fails as under botocore, and the
    retry goes out on a new connection."""
    from nitrokms.enclave import kms_connection

    with one_shot_server(FOR_RECIPIENT_REPLY) as server:
        kms = scripted_enclave_kms(server.url, pool, max_attempts=2)
        kms.sleep = lambda _s: None
        kms.generate_random(16)
        assert server.wait_closed()
        monkeypatch.setattr(kms_connection._Connection, "dropped", lambda self: False)
        assert len(kms.generate_random(16)) == 16
    stats = kms.transport_stats()
    assert (stats.connections, stats.requests, stats.reused) == (2, 3, 1)


@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", b"garbage\r\n\r\n", b""],
)
def test_malformed_or_cut_responses_are_unreachable_and_retried(pool, reply):
    with one_shot_server(reply, count=3) as server:
        kms = scripted_enclave_kms(server.url, pool, max_attempts=3)
        kms.sleep = lambda _s: None
        with pytest.raises(KMSUnavailableError) as info:
            kms.generate_random(16)
    assert server.served == 3
    assert info.value.code == "kms.Unreachable"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[]", "kms.MalformedResponse"),
        (b'{"CiphertextForRecipient": "not base64!"}', "kms.MalformedResponse"),
        (b'{"CiphertextForRecipient": 7}', "kms.MalformedResponse"),
        (b"{}", "kms.MissingCiphertextForRecipient"),
    ],
)
def test_unusable_success_replies_are_typed_errors(pool, body, code):
    with scripted_kms([Raw(200, body)]) as fake:
        kms = scripted_enclave_kms(fake.url, pool)
        with pytest.raises(EnclaveError) as info:
            kms.generate_random(16)
    assert info.value.code == code
    assert str(kms.last_error).startswith(code)


@pytest.mark.parametrize(
    "fields",
    [
        {"key_id": ""},
        {"key_id": "k" * 2049},
        {"key_id": "k", "number_of_bytes": 0},
        {"key_id": "k", "number_of_bytes": 1025},
        {"key_id": "k", "encryption_context": {"a": 1}},
        {"key_id": "k", "grant_tokens": ("g",) * 11},
    ],
)
def test_key_requests_kms_would_refuse_cannot_be_made(fields):
    """What botocore's parameter validation refused, KeyRequest refuses when it is built, so no
    such request reaches EnclaveKMS."""
    with pytest.raises(LocalProtocolError):
        KeyRequest(**fields)


@pytest.mark.parametrize(
    "call",
    [
        lambda k: k.decrypt(b""),
        lambda k: k.decrypt(b"x" * 6145),
        lambda k: k.generate_data_key(KeyRequest(number_of_bytes=32)),
    ],
)
def test_parameters_kms_would_refuse_fail_before_sending(pool, call):
    with scripted_kms([]) as fake:
        kms = scripted_enclave_kms(fake.url, pool)
        with pytest.raises(KMSRequestError) as info:
            call(kms)
    assert info.value.code == "kms.ValidationException"
    assert fake.received == []


def test_requests_kms_would_refuse_are_refused_before_sending(enclave_kms):
    with pytest.raises(KMSRequestError, match="key id"):
        enclave_kms.generate_data_key(KeyRequest(number_of_bytes=32))
    with pytest.raises(KMSRequestError, match="Decrypt takes no"):
        enclave_kms.decrypt(b"blob", KeyRequest(key_spec="AES_256"))
    assert enclave_kms.kms_reachable is None


def test_data_key_type():
    assert DataKey(bytearray(b"x"), b"blob", "k").key_id == "k"


@pytest.mark.parametrize(
    ("access_key_id", "secret", "expiration"),
    [("", "s", None), ("AKIA1", "", None), ("AKIA1", "s", datetime(2030, 1, 1))],
)
def test_malformed_credentials_are_refused(nsm, pool, access_key_id, secret, expiration):
    kms = EnclaveKMS(REGION, attestor=nsm.get_attestation_doc, pool=pool)
    with pytest.raises(CredentialsError) as info:
        kms.set_credentials(access_key_id, secret, None, expiration)
    assert info.value.code == "enclave.CredentialsInvalid"
    assert kms.credentials is None


def test_session_token_and_secret_stay_out_of_debug_logs(local_kms, nsm, pool, caplog):
    caplog.set_level(logging.DEBUG)
    kms = EnclaveKMS(REGION, endpoint_url=local_kms.url, ca_bundle=str(local_kms.ca_path),
                     attestor=nsm.get_attestation_doc, pool=pool)  # fmt: skip
    kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, "SESSION-TOKEN-SENTINEL", None)
    with pytest.raises(KMSError):
        kms.generate_random(8)  # the local KMS does not know this token
    assert "SESSION-TOKEN-SENTINEL" not in caplog.text
    assert SECRET_ACCESS_KEY not in caplog.text

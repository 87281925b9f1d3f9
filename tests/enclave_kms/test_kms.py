"""EnclaveKMS: credentials, the one attested path, retries and error translation."""

from __future__ import annotations

import base64
import logging
import socket
from datetime import UTC, datetime, timedelta

import pytest
from nitrokms.enclave.errors import (
    CredentialsError,
    KMSError,
    KMSRequestError,
    KMSTLSError,
    KMSUnavailableError,
)
from nitrokms.enclave.kms import DataKey, EnclaveKMS
from nitrokms.proto.keys import KeyRequest

from .conftest import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, attested_policy
from .fakes import FOR_RECIPIENT, HANG, kms_error, scripted_kms, spki_attestor


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


def test_same_credentials_keep_the_client(enclave_kms):
    client = enclave_kms.client()
    enclave_kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None)
    assert enclave_kms.client() is client
    enclave_kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, "session", None)
    assert enclave_kms.client() is not client


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

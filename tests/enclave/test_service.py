from __future__ import annotations

import time
from typing import Any

import pytest
from nitrokms.enclave import envelope
from nitrokms.enclave.errors import (
    ContextMismatchError,
    DecryptionError,
    EnclaveError,
    RegionMismatchError,
    UnknownHandleError,
    UnsupportedDataKeyError,
)
from nitrokms.enclave.keyring import Keyring
from nitrokms.enclave.service import EnclaveService
from nitrokms.proto import messages as m
from nitrokms.proto.keys import KeyRequest

from nitrokms import __version__
from tests.enclave.fakes import KEY_ARN, FakeKMS, FakeNSM, FakePool

CONTEXT = {"tenant": "acme"}


@pytest.fixture
def kms() -> FakeKMS:
    return FakeKMS()


@pytest.fixture
def service(kms: FakeKMS) -> EnclaveService:
    return EnclaveService(
        kms=kms, nsm=FakeNSM(), keyring=Keyring(), pool=FakePool(), region="us-east-1"
    )


def _call(service: EnclaveService, body: m.Body) -> Any:
    result = service.handle(body)
    assert result.operation == body.operation
    return result


def test_generate_data_key_returns_handle_and_blob_never_the_key(service, kms):
    result = _call(service, m.GenerateDataKeyRequest(key_id="alias/app", key_spec="AES_256"))
    assert result.handle.startswith("kh-")
    assert result.key_id == KEY_ARN
    assert kms.calls == ["GenerateDataKey"]
    assert set(result.to_body()) == {"handle", "ciphertext_blob", "key_id"}
    with service.keyring.borrow(result.handle) as held:
        assert len(held.key) == 32
        assert bytes(held.key) not in result.ciphertext_blob


def test_load_data_key_decrypts_through_kms(service, kms):
    made = _call(
        service,
        m.GenerateDataKeyRequest(key_id="k", number_of_bytes=32, encryption_context=CONTEXT),
    )
    loaded = _call(
        service,
        m.LoadDataKeyRequest(ciphertext_blob=made.ciphertext_blob, encryption_context=CONTEXT),
    )
    assert loaded.handle != made.handle
    with service.keyring.borrow(made.handle) as a, service.keyring.borrow(loaded.handle) as b:
        assert a.key == b.key
    assert kms.calls == ["GenerateDataKey", "Decrypt"]


def test_forget_key_wipes_and_unknown_handle_is_typed(service):
    made = _call(service, m.GenerateDataKeyRequest(key_id="k", key_spec="AES_256"))
    with service.keyring.borrow(made.handle) as held:
        key_buffer = held.key
    _call(service, m.ForgetKeyRequest(handle=made.handle))
    assert key_buffer == bytearray(32)
    with pytest.raises(UnknownHandleError) as info:
        service.handle(m.ForgetKeyRequest(handle=made.handle))
    assert info.value.code == "enclave.UnknownHandle"


def test_seal_with_key_id_then_unseal_uses_the_held_key(service, kms):
    sealed = _call(
        service, m.SealRequest(plaintext=b"hello", key_id="k", encryption_context=CONTEXT)
    )
    assert sealed.key_id == KEY_ARN
    assert sealed.handle is not None
    opened = _call(service, m.UnsealRequest(envelope=sealed.envelope, encryption_context=CONTEXT))
    assert opened.plaintext == b"hello"
    assert opened.key_id == KEY_ARN
    assert kms.calls == ["GenerateDataKey"]


def test_unseal_after_forget_reloads_through_decrypt(service, kms):
    sealed = _call(
        service, m.SealRequest(plaintext=b"hello", key_id="k", encryption_context=CONTEXT)
    )
    _call(service, m.ForgetKeyRequest(handle=sealed.handle))
    opened = _call(service, m.UnsealRequest(envelope=sealed.envelope, encryption_context=CONTEXT))
    assert opened.plaintext == b"hello"
    assert kms.calls == ["GenerateDataKey", "Decrypt"]
    _call(service, m.UnsealRequest(envelope=sealed.envelope, encryption_context=CONTEXT))
    assert kms.calls == ["GenerateDataKey", "Decrypt"], "the reloaded key is kept for reuse"


def test_one_key_request_reaches_kms_from_every_operation(service, kms):
    tokens = ("grant-1",)
    wire = m.GenerateDataKeyRequest(key_id="k", number_of_bytes=16, grant_tokens=tokens)
    made = _call(service, wire)
    _call(service, m.LoadDataKeyRequest(ciphertext_blob=made.ciphertext_blob, key_id="k"))
    sealed = _call(
        service,
        m.SealRequest(plaintext=b"x", key_id="k", encryption_context=CONTEXT, grant_tokens=tokens),
    )
    _call(service, m.ForgetKeyRequest(handle=sealed.handle))
    _call(
        service,
        m.UnsealRequest(envelope=sealed.envelope, encryption_context=CONTEXT, grant_tokens=tokens),
    )
    assert kms.key_requests == [
        KeyRequest("k", number_of_bytes=16, grant_tokens=tokens),
        KeyRequest("k"),
        KeyRequest("k", "AES_256", encryption_context=CONTEXT, grant_tokens=tokens),
        KeyRequest(KEY_ARN, encryption_context=CONTEXT, grant_tokens=tokens),
    ]


def test_seal_with_handle_uses_its_context(service):
    made = _call(
        service,
        m.GenerateDataKeyRequest(key_id="k", key_spec="AES_256", encryption_context=CONTEXT),
    )
    sealed = _call(service, m.SealRequest(plaintext=b"x", handle=made.handle))
    assert envelope.parse(sealed.envelope).encryption_context == CONTEXT
    assert sealed.handle == made.handle
    with pytest.raises(ContextMismatchError) as info:
        service.handle(
            m.SealRequest(
                plaintext=b"x", handle=made.handle, encryption_context={"tenant": "other"}
            )
        )
    assert info.value.code == "enclave.ContextMismatch"


def test_seal_refuses_a_key_that_is_not_256_bits(service):
    made = _call(service, m.GenerateDataKeyRequest(key_id="k", key_spec="AES_128"))
    with pytest.raises(UnsupportedDataKeyError):
        service.handle(m.SealRequest(plaintext=b"x", handle=made.handle))


@pytest.mark.parametrize("context", [None, {}, {"tenant": "other"}, {"tenant": "acme", "x": "y"}])
def test_unseal_with_another_context_fails_opaquely(service, kms, context):
    sealed = _call(service, m.SealRequest(plaintext=b"x", key_id="k", encryption_context=CONTEXT))
    with pytest.raises(DecryptionError) as info:
        service.handle(m.UnsealRequest(envelope=sealed.envelope, encryption_context=context))
    assert info.value.code == "crypto.DecryptionFailed"
    assert kms.calls == ["GenerateDataKey"]


def test_unseal_without_context_when_none_was_bound(service):
    sealed = _call(service, m.SealRequest(plaintext=b"x", key_id="k"))
    assert _call(service, m.UnsealRequest(envelope=sealed.envelope)).plaintext == b"x"


def test_unseal_of_a_tampered_envelope(service):
    sealed = _call(service, m.SealRequest(plaintext=b"xyz", key_id="k"))
    tampered = bytearray(sealed.envelope)
    tampered[-1] ^= 1
    with pytest.raises(DecryptionError):
        service.handle(m.UnsealRequest(envelope=bytes(tampered)))
    with pytest.raises(EnclaveError) as info:
        service.handle(m.UnsealRequest(envelope=b"junk"))
    assert info.value.code == "enclave.MalformedEnvelope"


def test_kms_errors_pass_through_with_their_code(service, kms):
    kms.fail_with = EnclaveError("denied", code="kms.AccessDeniedException")
    with pytest.raises(EnclaveError) as info:
        service.handle(m.GenerateDataKeyRequest(key_id="k", key_spec="AES_256"))
    assert info.value.code == "kms.AccessDeniedException"
    assert len(service.keyring) == 0


def test_set_credentials_checks_region_and_passes_expiry(service, kms):
    with pytest.raises(RegionMismatchError) as info:
        service.handle(
            m.SetCredentialsRequest(
                access_key_id="AKIAEXAMPLE123456", secret_access_key="s", region="eu-west-1"
            )
        )
    assert info.value.code == "enclave.RegionMismatch"
    assert not kms.health().credentials_present
    expiry_ms = int(time.time() * 1000) + 3_600_000
    _call(
        service,
        m.SetCredentialsRequest(
            access_key_id="AKIAEXAMPLE123456",
            secret_access_key="s",
            region="us-east-1",
            session_token="t",
            expiration_ms=expiry_ms,
        ),
    )
    assert kms.credentials == ("AKIAEXAMPLE123456", "s", "t", expiry_ms / 1000)
    health = _call(service, m.HealthRequest())
    assert health.credentials_present
    assert abs(health.credentials_expiration_ms - expiry_ms) <= 1
    assert health.ready


def test_health_before_credentials(service):
    health = _call(service, m.HealthRequest())
    assert not health.ready
    assert not health.credentials_present
    assert health.key_pool_ready == 2
    assert health.handles == 0
    assert health.region == "us-east-1"


def test_attest_passes_nonce_and_user_data_without_a_public_key(service):
    result = _call(service, m.AttestRequest(nonce=b"n1", user_data=b"u1"))
    assert result.document == b"\x84docn1u1"
    assert service.nsm.attest_calls == [(b"u1", b"n1", None)]


@pytest.mark.parametrize("debug", [False, True])
def test_describe(kms, debug):
    service = EnclaveService(
        kms=kms, nsm=FakeNSM(debug=debug), keyring=Keyring(), pool=FakePool(), region="us-east-1"
    )
    result = _call(service, m.DescribeRequest())
    assert sorted(result.pcrs) == list(range(16))
    assert result.debug_mode is debug
    assert result.service_version == __version__
    assert result.nsm_version == "1.0.0"
    assert result.digest == "SHA384"


def test_seal_refuses_an_envelope_over_the_wire_limit(service):
    context = {f"k{i:02d}": "\u20ac" * 125 for i in range(64)}  # 3-byte characters
    with pytest.raises(EnclaveError) as info:
        service.handle(
            m.SealRequest(
                plaintext=bytes(m.MAX_SEAL_PLAINTEXT_BYTES),
                key_id="k",
                encryption_context=context,
            )
        )
    assert info.value.code == "enclave.EnvelopeTooLarge"

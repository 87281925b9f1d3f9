"""Issue 10: unmodified boto3 KMS calls that attach Recipient and return attested plaintext."""

from __future__ import annotations

import threading

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from cryptography.hazmat.primitives.asymmetric import rsa
from nitrokms.enclave.attested_kms import attach_recipient, attested_kms_client
from nitrokms.enclave.errors import RecipientReplyError, UnknownRecipientError
from nitrokms.enclave.keypool import RecipientKey, RecipientKeyPool
from nitrokms.sim.kms.cms_encoder import encrypt_for_recipient
from nitrokms.sim.kms.server import LocalKMS

from .conftest import ACCESS_KEY_ID, REGION, attested_policy, client_kwargs


@pytest.fixture
def attested(local_kms, nsm, pool):
    client = boto3.session.Session().client("kms", **client_kwargs(local_kms))
    return attach_recipient(client, attestor=nsm.get_attestation_doc, pool=pool)


def test_generate_data_key_is_denied_plain_and_attested_hooked(
    plain_client, attested, attested_key_id
):
    with pytest.raises(ClientError) as denied:
        plain_client.generate_data_key(KeyId=attested_key_id, KeySpec="AES_256")
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"

    reply = attested.generate_data_key(KeyId=attested_key_id, KeySpec="AES_256")
    assert len(reply["Plaintext"]) == 32
    assert "CiphertextForRecipient" not in reply
    assert reply["KeyId"] == attested_key_id


def test_decrypt_is_denied_plain_and_attested_hooked(plain_client, attested, attested_key_id):
    generated = attested.generate_data_key(KeyId=attested_key_id, NumberOfBytes=24)
    blob = generated["CiphertextBlob"]
    with pytest.raises(ClientError) as denied:
        plain_client.decrypt(CiphertextBlob=blob)
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"

    reply = attested.decrypt(CiphertextBlob=blob)
    assert reply["Plaintext"] == generated["Plaintext"]
    assert "CiphertextForRecipient" not in reply


def test_decrypt_of_key_made_without_plaintext(attested, plain_client, attested_key_id):
    made = plain_client.generate_data_key_without_plaintext(
        KeyId=attested_key_id, KeySpec="AES_128", EncryptionContext={"app": "x"}
    )
    reply = attested.decrypt(CiphertextBlob=made["CiphertextBlob"], EncryptionContext={"app": "x"})
    assert len(reply["Plaintext"]) == 16


def test_generate_random_returns_plaintext(attested):
    reply = attested.generate_random(NumberOfBytes=48)
    assert len(reply["Plaintext"]) == 48
    assert "CiphertextForRecipient" not in reply


def test_call_with_its_own_recipient_is_left_alone(attested, nsm, attested_key_id):
    own = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = RecipientKey.from_private_key(own, 0.0)
    recipient = {
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        "AttestationDocument": nsm.get_attestation_doc(public_key=key.spki_der),
    }
    reply = attested.generate_data_key(
        KeyId=attested_key_id, KeySpec="AES_256", Recipient=recipient
    )
    assert "Plaintext" not in reply
    assert reply["CiphertextForRecipient"]
    from nitrokms.enclave.cms import decrypt_enveloped_data

    assert len(decrypt_enveloped_data(reply["CiphertextForRecipient"], own)) == 32


def test_reply_encrypted_for_another_key_is_a_clear_error(tmp_path, pki, nsm, pool, simulator):
    other = RecipientKey.from_private_key(
        rsa.generate_private_key(public_exponent=65537, key_size=2048), 0.0
    )

    def to_someone_else(plaintext: bytes, _spki: bytes) -> bytes:
        return encrypt_for_recipient(plaintext, other.spki_der)

    from nitrokms.sim.kms.auth import Credential

    from .conftest import PRINCIPAL, SECRET_ACCESS_KEY

    with LocalKMS(
        tmp_path,
        [Credential(ACCESS_KEY_ID, SECRET_ACCESS_KEY, PRINCIPAL)],
        pki.root_certificate_pem,
        region=REGION,
        encrypt_for_recipient=to_someone_else,
    ) as rogue:
        client = attested_kms_client(
            boto3.session.Session(),
            attestor=nsm.get_attestation_doc,
            pool=pool,
            **client_kwargs(rogue),
        )
        key_id = client.create_key(Policy=attested_policy(simulator.pcr(0).hex()))["KeyMetadata"][
            "KeyId"
        ]
        with pytest.raises(UnknownRecipientError) as info:
            client.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    assert info.value.code == "cms.UnknownRecipient"


def test_eight_threads_share_one_client_with_rotating_keys(local_kms, nsm, attested_key_id):
    with RecipientKeyPool(size=2, max_uses=3) as rotating:
        client = attested_kms_client(
            attestor=nsm.get_attestation_doc, pool=rotating, **client_kwargs(local_kms)
        )
        results: list[tuple[bytes, bytes]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker() -> None:
            try:
                for _ in range(4):
                    made = client.generate_data_key(KeyId=attested_key_id, KeySpec="AES_256")
                    again = client.decrypt(CiphertextBlob=made["CiphertextBlob"])
                    with lock:
                        results.append((made["Plaintext"], again["Plaintext"]))
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        generated = rotating.stats().generated
    assert errors == []
    assert len(results) == 32
    assert all(made == again for made, again in results)
    assert len({made for made, _ in results}) == 32
    assert generated >= 64 // 3, "keys rotated during the run"


# --- operations the local KMS does not implement: hook wiring through botocore's Stubber ---------


@pytest.fixture
def single_key_pool():
    with RecipientKeyPool(size=1, max_uses=10_000) as one:
        assert one.wait_ready(60)
        yield one


@pytest.fixture
def stubbed(single_key_pool):
    documents: list[bytes] = []

    def attestor(*, public_key: bytes) -> bytes:
        documents.append(public_key)
        return b"document-for:" + public_key[:8]

    client = boto3.session.Session().client(
        "kms", region_name=REGION, aws_access_key_id="AKIA0", aws_secret_access_key="s"
    )
    attach_recipient(client, attestor=attestor, pool=single_key_pool)
    with Stubber(client) as stubber:
        yield client, stubber, single_key_pool.acquire(), documents


def test_generate_data_key_pair_puts_private_key_plaintext(stubbed):
    client, stubber, key, documents = stubbed
    stubber.add_response(
        "generate_data_key_pair",
        {
            "PrivateKeyCiphertextBlob": b"wrapped",
            "PublicKey": b"public",
            "KeyId": "k",
            "KeyPairSpec": "ECC_NIST_P256",
            "CiphertextForRecipient": encrypt_for_recipient(b"private-key-der", key.spki_der),
        },
        {"KeyId": "k", "KeyPairSpec": "ECC_NIST_P256", "Recipient": ANY},
    )
    reply = client.generate_data_key_pair(KeyId="k", KeyPairSpec="ECC_NIST_P256")
    assert reply["PrivateKeyPlaintext"] == b"private-key-der"
    assert "CiphertextForRecipient" not in reply
    assert documents == [key.spki_der]


def test_derive_shared_secret_puts_shared_secret(stubbed):
    client, stubber, key, _ = stubbed
    stubber.add_response(
        "derive_shared_secret",
        {
            "KeyId": "k",
            "CiphertextForRecipient": encrypt_for_recipient(b"s" * 32, key.spki_der),
            "KeyAgreementAlgorithm": "ECDH",
        },
        {"KeyId": "k", "KeyAgreementAlgorithm": "ECDH", "PublicKey": b"peer", "Recipient": ANY},
    )
    reply = client.derive_shared_secret(KeyId="k", KeyAgreementAlgorithm="ECDH", PublicKey=b"peer")
    assert reply["SharedSecret"] == b"s" * 32
    assert "CiphertextForRecipient" not in reply


def test_recipient_carries_algorithm_and_document(stubbed):
    client, stubber, key, _ = stubbed
    expected = {
        "NumberOfBytes": 8,
        "Recipient": {
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            "AttestationDocument": b"document-for:" + key.spki_der[:8],
        },
    }
    stubber.add_response(
        "generate_random",
        {"CiphertextForRecipient": encrypt_for_recipient(b"12345678", key.spki_der)},
        expected,
    )
    assert client.generate_random(NumberOfBytes=8)["Plaintext"] == b"12345678"


def test_success_without_ciphertext_for_recipient_is_refused(stubbed):
    client, stubber, _, _ = stubbed
    stubber.add_response(
        "generate_random", {"Plaintext": b"not-attested"}, {"NumberOfBytes": 12, "Recipient": ANY}
    )
    with pytest.raises(RecipientReplyError) as info:
        client.generate_random(NumberOfBytes=12)
    assert info.value.code == "kms.MissingCiphertextForRecipient"


def test_error_replies_pass_through_untouched(stubbed):
    client, stubber, _, _ = stubbed
    stubber.add_client_error("decrypt", "AccessDeniedException", "denied", 400)
    with pytest.raises(ClientError) as info:
        client.decrypt(CiphertextBlob=b"x")
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"


def test_attaching_twice_is_harmless(stubbed, single_key_pool):
    client, stubber, key, documents = stubbed
    attach_recipient(client, attestor=lambda **_: b"other", pool=single_key_pool)
    stubber.add_response(
        "generate_random",
        {"CiphertextForRecipient": encrypt_for_recipient(b"ab", key.spki_der)},
        {"NumberOfBytes": 2, "Recipient": ANY},
    )
    assert client.generate_random(NumberOfBytes=2)["Plaintext"] == b"ab"
    assert len(documents) == 1


def test_only_kms_clients_are_accepted(single_key_pool):
    s3 = boto3.session.Session().client("s3", region_name=REGION)
    with pytest.raises(ValueError, match="KMS client"):
        attach_recipient(s3, attestor=lambda **_: b"", pool=single_key_pool)

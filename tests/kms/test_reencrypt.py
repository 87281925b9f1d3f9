"""ReEncrypt: symmetric and RSA keys on either side, encryption contexts, separate authorisation."""

from __future__ import annotations

from typing import Any

from .conftest import ADMIN, STRANGER, expect_error, policy_of, statement


def test_reencrypt_between_symmetric_keys_moves_to_the_new_context(admin: Any) -> None:
    source = admin.create_key()["KeyMetadata"]
    target = admin.create_key()["KeyMetadata"]
    blob = admin.encrypt(KeyId=source["KeyId"], Plaintext=b"moved", EncryptionContext={"a": "1"})
    reply = admin.re_encrypt(
        CiphertextBlob=blob["CiphertextBlob"],
        SourceEncryptionContext={"a": "1"},
        DestinationKeyId=target["KeyId"],
        DestinationEncryptionContext={"b": "2"},
    )
    assert (reply["SourceKeyId"], reply["KeyId"]) == (source["Arn"], target["Arn"])
    assert reply["SourceEncryptionAlgorithm"] == reply["DestinationEncryptionAlgorithm"]
    assert reply["SourceKeyMaterialId"] == source["CurrentKeyMaterialId"]
    assert reply["DestinationKeyMaterialId"] == target["CurrentKeyMaterialId"]
    opened = admin.decrypt(CiphertextBlob=reply["CiphertextBlob"], EncryptionContext={"b": "2"})
    assert (opened["Plaintext"], opened["KeyId"]) == (b"moved", target["Arn"])
    for call in (
        lambda: admin.decrypt(CiphertextBlob=reply["CiphertextBlob"], EncryptionContext={"a": "1"}),
        lambda: admin.re_encrypt(
            CiphertextBlob=blob["CiphertextBlob"], DestinationKeyId=target["KeyId"]
        ),
    ):
        expect_error(call, "InvalidCiphertextException")
    expect_error(
        lambda: admin.re_encrypt(
            CiphertextBlob=blob["CiphertextBlob"], SourceEncryptionContext={"a": "1"},
            SourceKeyId=target["KeyId"], DestinationKeyId=target["KeyId"],
        ),
        "IncorrectKeyException",
    )  # fmt: skip
    expect_error(
        lambda: admin.re_encrypt(
            CiphertextBlob=blob["CiphertextBlob"], SourceEncryptionContext={"a": "1"},
            DestinationKeyId=target["KeyId"], DryRun=True,
        ),
        "DryRunOperationException",
    )  # fmt: skip


def test_reencrypt_to_and_from_an_rsa_key(admin: Any) -> None:
    symmetric = admin.create_key()["KeyMetadata"]["KeyId"]
    rsa_key = admin.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    oaep = "RSAES_OAEP_SHA_256"
    blob = admin.encrypt(KeyId=symmetric, Plaintext=b"to rsa")["CiphertextBlob"]
    to_rsa = admin.re_encrypt(
        CiphertextBlob=blob, DestinationKeyId=rsa_key["KeyId"], DestinationEncryptionAlgorithm=oaep
    )
    assert "DestinationKeyMaterialId" not in to_rsa
    assert to_rsa["DestinationEncryptionAlgorithm"] == oaep
    rsa_blob = to_rsa["CiphertextBlob"]
    assert (
        admin.decrypt(CiphertextBlob=rsa_blob, KeyId=rsa_key["Arn"], EncryptionAlgorithm=oaep)[
            "Plaintext"
        ]
        == b"to rsa"
    )
    back = admin.re_encrypt(
        CiphertextBlob=rsa_blob,
        SourceKeyId=rsa_key["KeyId"],
        SourceEncryptionAlgorithm=oaep,
        DestinationKeyId=symmetric,
        DestinationEncryptionContext={"c": "3"},
    )
    assert back["SourceKeyId"] == rsa_key["Arn"]
    opened = admin.decrypt(CiphertextBlob=back["CiphertextBlob"], EncryptionContext={"c": "3"})
    assert opened["Plaintext"] == b"to rsa"
    expect_error(
        lambda: admin.re_encrypt(CiphertextBlob=rsa_blob, DestinationKeyId=symmetric),
        "InvalidCiphertextException",
    )
    expect_error(
        lambda: admin.re_encrypt(
            CiphertextBlob=blob, DestinationKeyId=rsa_key["KeyId"],
            DestinationEncryptionAlgorithm=oaep, DestinationEncryptionContext={"x": "y"},
        ),
        "ValidationException",
    )  # fmt: skip


def test_source_and_destination_are_authorised_separately(admin: Any, stranger: Any) -> None:
    eve = STRANGER.principal_arn

    def key(*actions: str) -> dict[str, Any]:
        extra = [statement(eve, list(actions))] if actions else []
        return dict(admin.create_key(Policy=policy_of(*extra))["KeyMetadata"])

    source_ok, source_no = key("kms:ReEncryptFrom"), key("kms:ReEncryptTo")
    target_ok, target_no = key("kms:ReEncryptTo"), key("kms:ReEncryptFrom")
    blobs = {
        k["KeyId"]: admin.encrypt(KeyId=k["KeyId"], Plaintext=b"p")["CiphertextBlob"]
        for k in (source_ok, source_no)
    }

    def reencrypt(source: dict[str, Any], target: dict[str, Any]) -> Any:
        return stranger.re_encrypt(
            CiphertextBlob=blobs[source["KeyId"]], DestinationKeyId=target["Arn"]
        )

    assert reencrypt(source_ok, target_ok)["KeyId"] == target_ok["Arn"]
    denied_to = expect_error(lambda: reencrypt(source_ok, target_no), "AccessDeniedException")
    assert f"kms:ReEncryptTo on resource: {target_no['Arn']}" in denied_to
    denied_from = expect_error(lambda: reencrypt(source_no, target_ok), "AccessDeniedException")
    assert f"kms:ReEncryptFrom on resource: {source_no['Arn']}" in denied_from


def test_reencrypt_on_same_key_condition(admin: Any) -> None:
    deny_same = statement(
        ADMIN.principal_arn,
        "kms:ReEncrypt*",
        Effect="Deny",
        Condition={"Bool": {"kms:ReEncryptOnSameKey": "true"}},
    )
    key_id = admin.create_key(Policy=policy_of(deny_same))["KeyMetadata"]["KeyId"]
    other = admin.create_key()["KeyMetadata"]["KeyId"]
    blob = admin.encrypt(KeyId=key_id, Plaintext=b"p")["CiphertextBlob"]
    expect_error(
        lambda: admin.re_encrypt(CiphertextBlob=blob, DestinationKeyId=key_id),
        "AccessDeniedException",
    )
    assert admin.re_encrypt(CiphertextBlob=blob, DestinationKeyId=other)["KeyId"].endswith(other)

"""Encryption operations (the data plane): Encrypt, Decrypt, ReEncrypt, GenerateDataKey(+Without
Plaintext) and GenerateRandom, with Recipient support.

Symmetric keys seal this KMS's own blob (`crypto.py`) with their current material version; RSA
keys with key usage ENCRYPT_DECRYPT use RSA-OAEP and return the raw RSA ciphertext, which names no
key, so decrypting it takes the KeyId and the algorithm, as in KMS. With a Recipient the response
carries `CiphertextForRecipient` (CMS for the attested enclave key) instead of `Plaintext`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from nitrokms.sim.kms import algorithms, crypto
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.exceptions import (
    IncorrectKeyException,
    InvalidCiphertextException,
    UnsupportedOperationException,
    ValidationException,
)
from nitrokms.sim.kms.keyspecs import (
    ENCRYPT_DECRYPT,
    ENCRYPTION_ALGORITHMS,
    RSA_ENCRYPTION,
    SYMMETRIC,
)
from nitrokms.sim.kms.operations import Operations, b64, dry_run, incompatible, require_usage
from nitrokms.sim.kms.params import Params
from nitrokms.sim.kms.records import Key

log = logging.getLogger("nitrokms.sim.kms")

DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
MAX_PLAINTEXT_BYTES = 4096
MAX_RANDOM_BYTES = 1024


class DataPlane(Operations):
    OPERATIONS = (
        "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
        "GenerateRandom",
    )  # fmt: skip

    def op_Encrypt(self, p: Params, caller: Credential) -> dict[str, Any]:
        plaintext = p.required_blob("Plaintext", max_len=MAX_PLAINTEXT_BYTES)
        context = p.context()
        algorithm = _algorithm(p, "EncryptionAlgorithm")
        key = self.authorised_key(
            p, caller, "kms:Encrypt", context=context,
            conditions={"kms:EncryptionAlgorithm": algorithm},
        )  # fmt: skip
        blob, _ = seal_for(key, plaintext, context, algorithm, "Encrypt")
        dry_run(p)
        return {"CiphertextBlob": b64(blob), "KeyId": key.arn, "EncryptionAlgorithm": algorithm}

    def op_Decrypt(self, p: Params, caller: Credential) -> dict[str, Any]:
        blob = p.required_blob("CiphertextBlob", max_len=crypto.MAX_BLOB_BYTES)
        context = p.context()
        grant_ids = self.grant_ids(p)
        algorithm = _algorithm(p, "EncryptionAlgorithm")
        key_ref = p.string("KeyId")
        recipient = self.recipient(p)
        key = self._source_key(blob, key_ref)
        self._auth.authorise(
            key, "kms:Decrypt", caller, context=context, recipient=recipient,
            grant_ids=grant_ids, conditions={"kms:EncryptionAlgorithm": algorithm},
        )  # fmt: skip
        plaintext, material_id = open_for(key, blob, context, algorithm, "Decrypt")
        dry_run(p)
        result = {"KeyId": key.arn, "EncryptionAlgorithm": algorithm}
        if material_id is not None:
            result["KeyMaterialId"] = material_id
        return result | self.secret_field("Plaintext", plaintext, recipient)

    def op_ReEncrypt(self, p: Params, caller: Credential) -> dict[str, Any]:
        blob = p.required_blob("CiphertextBlob", max_len=crypto.MAX_BLOB_BYTES)
        source_context = p.context("SourceEncryptionContext")
        target_context = p.context("DestinationEncryptionContext")
        source_ref = p.string("SourceKeyId")
        target_ref = p.required_string("DestinationKeyId")
        source_algorithm = _algorithm(p, "SourceEncryptionAlgorithm")
        target_algorithm = _algorithm(p, "DestinationEncryptionAlgorithm")
        grant_ids = self.grant_ids(p)
        source = self._source_key(blob, source_ref)
        target = self.store.resolve(target_ref)
        same = "true" if source.key_id == target.key_id else "false"
        for key, action, context, algorithm in (
            (source, "kms:ReEncryptFrom", source_context, source_algorithm),
            (target, "kms:ReEncryptTo", target_context, target_algorithm),
        ):
            conditions = {"kms:EncryptionAlgorithm": algorithm, "kms:ReEncryptOnSameKey": same}
            self._auth.authorise(
                key, action, caller, context=context, grant_ids=grant_ids, conditions=conditions
            )
        plaintext, source_material = open_for(
            source, blob, source_context, source_algorithm, "ReEncrypt"
        )
        new_blob, target_material = seal_for(
            target, plaintext, target_context, target_algorithm, "ReEncrypt"
        )
        dry_run(p)
        result = {
            "CiphertextBlob": b64(new_blob),
            "SourceKeyId": source.arn,
            "KeyId": target.arn,
            "SourceEncryptionAlgorithm": source_algorithm,
            "DestinationEncryptionAlgorithm": target_algorithm,
        }
        for name, value in (
            ("SourceKeyMaterialId", source_material),
            ("DestinationKeyMaterialId", target_material),
        ):
            if value is not None:
                result[name] = value
        return result

    def op_GenerateDataKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        return self._data_key(p, caller, "GenerateDataKey", with_plaintext=True)

    def op_GenerateDataKeyWithoutPlaintext(self, p: Params, caller: Credential) -> dict[str, Any]:
        return self._data_key(p, caller, "GenerateDataKeyWithoutPlaintext", with_plaintext=False)

    def _data_key(
        self, p: Params, caller: Credential, operation: str, *, with_plaintext: bool
    ) -> dict[str, Any]:
        size = _data_key_size(p)
        context = p.context()
        recipient = self.recipient(p) if with_plaintext else None
        key = self.authorised_key(
            p, caller, f"kms:{operation}", context=context, recipient=recipient
        )
        plaintext = os.urandom(size)
        blob, material_id = seal_for(key, plaintext, context, SYMMETRIC, operation)
        dry_run(p)
        result = {"CiphertextBlob": b64(blob), "KeyId": key.arn, "KeyMaterialId": material_id}
        if not with_plaintext:
            return result
        return result | self.secret_field("Plaintext", plaintext, recipient)

    def op_GenerateRandom(self, p: Params, caller: Credential) -> dict[str, Any]:
        size = p.integer("NumberOfBytes", low=1, high=MAX_RANDOM_BYTES)
        if size is None:
            raise ValidationException("NumberOfBytes is required.")
        if p.has("CustomKeyStoreId"):
            raise UnsupportedOperationException("Custom key stores are not supported")
        recipient = self.recipient(p)
        if recipient is not None and not recipient.verified:
            log.warning(
                "GenerateRandom for %s with a Recipient document that did not verify (%s): "
                "no key policy applies, answering",
                caller.principal_arn,
                recipient.failure,
            )
        return self.secret_field("Plaintext", os.urandom(size), recipient)

    def _source_key(self, blob: bytes, key_ref: str | None) -> Key:
        """The key that can open `blob`: the named RSA key, or the key the blob names (which
        must be the named key, if one is named)."""
        named = self.store.resolve(key_ref) if key_ref is not None else None
        if named is not None and named.spec.family == "rsa":
            return named
        owner = self.store.get(crypto.blob_key_id(blob))
        if owner is None:
            raise InvalidCiphertextException("The ciphertext refers to a key that does not exist.")
        if named is not None and named.key_id != owner.key_id:
            raise IncorrectKeyException(
                "The key ID in the request does not identify a CMK that can perform this operation."
            )
        return owner


def seal_for(
    key: Key, plaintext: bytes, context: dict[str, str], algorithm: str, operation: str
) -> tuple[bytes, str | None]:
    """Encrypt under `key`: (ciphertext, the material id for symmetric keys).

    Raises Disabled/KMSInvalidState/InvalidKeyUsageException for a key that cannot, and
    ValidationException for an encryption context with an RSA key or a too-long plaintext.
    """
    require_usage(key, ENCRYPT_DECRYPT, operation)
    if key.is_symmetric_encryption:
        if algorithm != SYMMETRIC:
            raise incompatible(algorithm, key)
        material = key.materials[-1]
        blob = crypto.seal(material.secret, key.key_id, plaintext, context, key.current_version)
        return blob, material.material_id
    _check_rsa_request(key, algorithm, context)
    return algorithms.rsa_encrypt(key.material, key.key_spec, algorithm, plaintext), None


def open_for(
    key: Key, blob: bytes, context: dict[str, str], algorithm: str, operation: str
) -> tuple[bytes, str | None]:
    """Decrypt with `key`: (plaintext, the material id for symmetric keys). Raises as
    `seal_for`, and InvalidCiphertextException when the ciphertext does not open."""
    require_usage(key, ENCRYPT_DECRYPT, operation)
    if key.is_symmetric_encryption:
        if algorithm != SYMMETRIC:
            raise incompatible(algorithm, key)
        material = key.material_at(crypto.read_header(blob).material_version)
        if material is None:
            raise InvalidCiphertextException("The ciphertext names unknown key material.")
        return crypto.open_blob(material.secret, blob, context), material.material_id
    _check_rsa_request(key, algorithm, context)
    return algorithms.rsa_decrypt(key.material, algorithm, blob), None


def _check_rsa_request(key: Key, algorithm: str, context: dict[str, str]) -> None:
    if algorithm not in RSA_ENCRYPTION:
        raise incompatible(algorithm, key)
    if context:
        raise ValidationException(
            "EncryptionContext is not supported with asymmetric KMS keys: RSA-OAEP takes none."
        )


def _algorithm(p: Params, name: str) -> str:
    value = p.enum(name, ENCRYPTION_ALGORITHMS, SYMMETRIC)
    assert value is not None
    return value


def _data_key_size(p: Params) -> int:
    spec = p.enum("KeySpec", DATA_KEY_SPECS)
    size = p.integer("NumberOfBytes", low=1, high=1024)
    if (spec is None) == (size is None):
        raise ValidationException("Please specify either number of bytes or key spec.")
    return DATA_KEY_SPECS[spec] if spec is not None else size  # type: ignore[return-value]

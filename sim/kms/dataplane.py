"""Cryptographic operations (the data plane), with Recipient support.

With a Recipient, the response carries `CiphertextForRecipient` (CMS for the attested enclave key)
instead of `Plaintext`. DryRun is checked last, so it reports whether the call would have succeeded.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from typing import Any

from nitrokms.sim.kms import crypto
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.authorizer import Authorizer
from nitrokms.sim.kms.cms_encoder import encrypt_for_recipient
from nitrokms.sim.kms.exceptions import (
    DryRunOperationException,
    IncorrectKeyException,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    UnsupportedOperationException,
    ValidationException,
)
from nitrokms.sim.kms.models import Key, KeyStore
from nitrokms.sim.kms.params import Params
from nitrokms.sim.kms.recipient import Recipient, RecipientReader

log = logging.getLogger("nitrokms.sim.kms")

SYMMETRIC = "SYMMETRIC_DEFAULT"
ENCRYPTION_ALGORITHMS = frozenset({SYMMETRIC, "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"})
DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
MAX_PLAINTEXT_BYTES = 4096
MAX_RANDOM_BYTES = 1024


class DataPlane:
    def __init__(
        self,
        store: KeyStore,
        authorizer: Authorizer,
        recipients: RecipientReader,
        encrypt_for_recipient: Callable[[bytes, bytes], bytes] | None = None,
    ) -> None:
        self.store = store
        self._auth = authorizer
        self._recipients = recipients
        self._encrypt_for_recipient = encrypt_for_recipient

    def op_Encrypt(self, p: Params, caller: Credential) -> dict[str, Any]:
        key_ref = p.required_string("KeyId")
        plaintext = p.required_blob("Plaintext", max_len=MAX_PLAINTEXT_BYTES)
        context = p.context()
        p.grant_tokens()
        algorithm = p.enum("EncryptionAlgorithm", ENCRYPTION_ALGORITHMS, SYMMETRIC)
        key = self.store.resolve(key_ref)
        self._auth.authorise(key, "kms:Encrypt", caller, context=context)
        _require_encryption_key(key, algorithm)
        blob = crypto.seal(key.material, key.key_id, plaintext, context)
        _dry_run(p)
        return {"CiphertextBlob": _b64(blob), "KeyId": key.arn, "EncryptionAlgorithm": SYMMETRIC}

    def op_Decrypt(self, p: Params, caller: Credential) -> dict[str, Any]:
        blob = p.required_blob("CiphertextBlob", max_len=crypto.MAX_BLOB_BYTES)
        context = p.context()
        p.grant_tokens()
        algorithm = p.enum("EncryptionAlgorithm", ENCRYPTION_ALGORITHMS, SYMMETRIC)
        key_ref = p.string("KeyId")
        recipient = self._recipient(p)
        key = self.store.get(crypto.blob_key_id(blob))
        if key is None:
            raise InvalidCiphertextException("The ciphertext refers to a key that does not exist.")
        if key_ref is not None and self.store.resolve(key_ref).key_id != key.key_id:
            raise IncorrectKeyException(
                "The key ID in the request does not identify a CMK that can perform this operation."
            )
        self._auth.authorise(key, "kms:Decrypt", caller, context=context, recipient=recipient)
        _require_encryption_key(key, algorithm)
        plaintext = crypto.open_blob(key.material, blob, context)
        _dry_run(p)
        result = {"KeyId": key.arn, "EncryptionAlgorithm": SYMMETRIC}
        return result | self._plaintext_field(plaintext, recipient)

    def op_GenerateDataKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        key, blob, plaintext, recipient = self._data_key(p, caller, "kms:GenerateDataKey", True)
        result = {"CiphertextBlob": _b64(blob), "KeyId": key.arn}
        return result | self._plaintext_field(plaintext, recipient)

    def op_GenerateDataKeyWithoutPlaintext(self, p: Params, caller: Credential) -> dict[str, Any]:
        action = "kms:GenerateDataKeyWithoutPlaintext"
        key, blob, _, _ = self._data_key(p, caller, action, False)
        return {"CiphertextBlob": _b64(blob), "KeyId": key.arn}

    def _data_key(
        self, p: Params, caller: Credential, action: str, with_recipient: bool
    ) -> tuple[Key, bytes, bytes, Recipient | None]:
        key_ref = p.required_string("KeyId")
        size = _data_key_size(p)
        context = p.context()
        p.grant_tokens()
        recipient = self._recipient(p) if with_recipient else None
        key = self.store.resolve(key_ref)
        self._auth.authorise(key, action, caller, context=context, recipient=recipient)
        _require_encryption_key(key, SYMMETRIC)
        plaintext = os.urandom(size)
        blob = crypto.seal(key.material, key.key_id, plaintext, context)
        _dry_run(p)
        return key, blob, plaintext, recipient

    def op_GenerateRandom(self, p: Params, caller: Credential) -> dict[str, Any]:
        size = p.integer("NumberOfBytes", low=1, high=MAX_RANDOM_BYTES)
        if size is None:
            raise ValidationException("NumberOfBytes is required")
        if p.has("CustomKeyStoreId"):
            raise UnsupportedOperationException("Custom key stores are not supported")
        recipient = self._recipient(p)
        if recipient is not None and not recipient.verified:
            log.warning(
                "GenerateRandom for %s with a Recipient document that did not verify (%s): "
                "no key policy applies, answering",
                caller.principal_arn,
                recipient.failure,
            )
        return self._plaintext_field(os.urandom(size), recipient)

    def _recipient(self, p: Params) -> Recipient | None:
        raw = p.raw("Recipient")
        if raw is None:
            return None
        recipient = self._recipients.read(raw)
        if recipient.verified:
            log.info("Recipient document from %s verified", recipient.module_id)
        else:
            log.info(
                "Recipient document from %s did not verify: %s",
                recipient.module_id,
                recipient.failure,
            )
        return recipient

    def _plaintext_field(self, plaintext: bytes, recipient: Recipient | None) -> dict[str, str]:
        if recipient is None:
            return {"Plaintext": _b64(plaintext)}
        encrypt = self._encrypt_for_recipient or encrypt_for_recipient
        return {"CiphertextForRecipient": _b64(encrypt(plaintext, recipient.public_key_der))}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _dry_run(p: Params) -> None:
    if p.boolean("DryRun"):
        raise DryRunOperationException()


def _require_encryption_key(key: Key, algorithm: str | None) -> None:
    key.require_usable()
    if key.key_usage != "ENCRYPT_DECRYPT":
        raise InvalidKeyUsageException(
            f"{key.arn} key usage is {key.key_usage} which is not valid for this operation."
        )
    if algorithm != SYMMETRIC:
        raise InvalidKeyUsageException(
            f"Algorithm {algorithm} is incompatible with key spec {key.key_spec}."
        )


def _data_key_size(p: Params) -> int:
    spec = p.enum("KeySpec", DATA_KEY_SPECS)
    size = p.integer("NumberOfBytes", low=1, high=1024)
    if (spec is None) == (size is None):
        raise ValidationException("Please specify either number of bytes or key spec.")
    return DATA_KEY_SPECS[spec] if spec is not None else size  # type: ignore[return-value]

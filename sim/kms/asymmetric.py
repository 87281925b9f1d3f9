"""Asymmetric-key operations: Sign, Verify, GetPublicKey, DeriveSharedSecret, and the data key
pairs (GenerateDataKeyPair and ...WithoutPlaintext) that a symmetric key protects.

DeriveSharedSecret and GenerateDataKeyPair take a Recipient: the shared secret, or the private key
(DER PKCS#8), then travels only as CiphertextForRecipient, and the key policy sees the
`kms:RecipientAttestation:*` condition keys exactly as for GenerateDataKey.
"""

from __future__ import annotations

from typing import Any

from nitrokms.sim.kms import algorithms
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.dataplane import seal_for
from nitrokms.sim.kms.exceptions import UnsupportedOperationException
from nitrokms.sim.kms.keyspecs import (
    DATA_KEY_PAIR_SPEC_ENUM,
    KEY_AGREEMENT,
    SIGN_VERIFY,
    SIGNING_ALGORITHMS,
    SYMMETRIC,
    data_key_pair_spec,
)
from nitrokms.sim.kms.operations import Operations, b64, dry_run, incompatible, require_usage
from nitrokms.sim.kms.params import Params
from nitrokms.sim.kms.records import Key

MAX_MESSAGE_BYTES = 4096
MAX_SIGNATURE_BYTES = 6144
MAX_PUBLIC_KEY_BYTES = 8192
MESSAGE_TYPES = ("RAW", "DIGEST", "EXTERNAL_MU")


class AsymmetricOperations(Operations):
    OPERATIONS = (
        "Sign", "Verify", "GetPublicKey", "DeriveSharedSecret", "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
    )  # fmt: skip

    def _signing(self, p: Params, caller: Credential, operation: str) -> tuple[Key, str, str]:
        """The key, algorithm and message type of a Sign or Verify, authorised and checked."""
        algorithm = p.required_enum("SigningAlgorithm", SIGNING_ALGORITHMS)
        message_type = p.enum("MessageType", MESSAGE_TYPES, "RAW")
        assert message_type is not None
        conditions = {"kms:SigningAlgorithm": algorithm, "kms:MessageType": message_type}
        key = self.authorised_key(p, caller, f"kms:{operation}", conditions=conditions)
        require_usage(key, SIGN_VERIFY, operation)
        if algorithm not in key.spec.signing:
            raise incompatible(algorithm, key)
        return key, algorithm, message_type

    def op_Sign(self, p: Params, caller: Credential) -> dict[str, Any]:
        message = p.required_blob("Message", max_len=MAX_MESSAGE_BYTES)
        key, algorithm, message_type = self._signing(p, caller, "Sign")
        signature = algorithms.sign(key.material, algorithm, message, message_type)
        dry_run(p)
        return {"KeyId": key.arn, "Signature": b64(signature), "SigningAlgorithm": algorithm}

    def op_Verify(self, p: Params, caller: Credential) -> dict[str, Any]:
        message = p.required_blob("Message", max_len=MAX_MESSAGE_BYTES)
        signature = p.required_blob("Signature", max_len=MAX_SIGNATURE_BYTES)
        key, algorithm, message_type = self._signing(p, caller, "Verify")
        algorithms.verify(key.material, algorithm, message, message_type, signature)
        dry_run(p)
        return {"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": algorithm}

    def op_GetPublicKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.authorised_key(p, caller, "kms:GetPublicKey")
        key.require_usable()
        if not key.spec.asymmetric:
            raise UnsupportedOperationException(
                f"{key.arn} is a {key.key_spec} key, which has no public key."
            )
        return {
            "KeyId": key.arn,
            "PublicKey": b64(algorithms.public_key_der(key.material)),
            "CustomerMasterKeySpec": key.key_spec,
            "KeySpec": key.key_spec,
            "KeyUsage": key.key_usage,
            **key.spec.algorithms(key.key_usage),
        }

    def op_DeriveSharedSecret(self, p: Params, caller: Credential) -> dict[str, Any]:
        algorithm = p.required_enum("KeyAgreementAlgorithm", ("ECDH",))
        peer = p.required_blob("PublicKey", max_len=MAX_PUBLIC_KEY_BYTES)
        recipient = self.recipient(p)
        key = self.authorised_key(
            p, caller, "kms:DeriveSharedSecret", recipient=recipient,
            conditions={"kms:KeyAgreementAlgorithm": algorithm},
        )  # fmt: skip
        require_usage(key, KEY_AGREEMENT, "DeriveSharedSecret")
        secret = algorithms.derive_shared_secret(key.material, peer)
        dry_run(p)
        result = {"KeyId": key.arn, "KeyAgreementAlgorithm": algorithm, "KeyOrigin": "AWS_KMS"}
        return result | self.secret_field("SharedSecret", secret, recipient)

    def op_GenerateDataKeyPair(self, p: Params, caller: Credential) -> dict[str, Any]:
        return self._data_key_pair(p, caller, "GenerateDataKeyPair", with_plaintext=True)

    def op_GenerateDataKeyPairWithoutPlaintext(
        self, p: Params, caller: Credential
    ) -> dict[str, Any]:
        operation = "GenerateDataKeyPairWithoutPlaintext"
        return self._data_key_pair(p, caller, operation, with_plaintext=False)

    def _data_key_pair(
        self, p: Params, caller: Credential, operation: str, *, with_plaintext: bool
    ) -> dict[str, Any]:
        spec_name = p.required_enum("KeyPairSpec", DATA_KEY_PAIR_SPEC_ENUM)
        context = p.context()
        recipient = self.recipient(p) if with_plaintext else None
        key = self.authorised_key(
            p, caller, f"kms:{operation}", context=context, recipient=recipient,
            conditions={"kms:DataKeyPairSpec": spec_name},
        )  # fmt: skip
        require_usage(key, "ENCRYPT_DECRYPT", operation)
        if not key.is_symmetric_encryption:
            raise incompatible(SYMMETRIC, key)
        private = data_key_pair_spec(spec_name).new_material()
        blob, material_id = seal_for(key, private, context, SYMMETRIC, operation)
        dry_run(p)
        result = {
            "PrivateKeyCiphertextBlob": b64(blob),
            "PublicKey": b64(algorithms.public_key_der(private, cache=False)),
            "KeyId": key.arn,
            "KeyPairSpec": spec_name,
            "KeyMaterialId": material_id,
        }
        if not with_plaintext:
            return result
        return result | self.secret_field("PrivateKeyPlaintext", private, recipient)

"""An independent reader for CiphertextForRecipient, written for the tests from RFC 5652 / spec 4.6.

asn1crypto parses the BER (indefinite lengths, chunked content); `cryptography` does RSA-OAEP
(SHA-256, MGF1-SHA-256) and AES-256-CBC with PKCS#7 padding. It shares no code with the encoder.
"""

from __future__ import annotations

import hashlib

from asn1crypto import cms
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def decrypt_for_recipient(ber: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    info = cms.ContentInfo.load(ber)
    assert info["content_type"].native == "enveloped_data"
    enveloped = info["content"]
    assert enveloped["version"].native == "v2"
    (recipient,) = list(enveloped["recipient_infos"])
    ktri = recipient.chosen
    assert isinstance(ktri, cms.KeyTransRecipientInfo)
    assert ktri["version"].native == "v2"
    spki = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ktri["rid"].name == "subject_key_identifier"
    assert ktri["rid"].chosen.native == hashlib.sha256(spki).digest()
    algorithm = ktri["key_encryption_algorithm"]
    assert algorithm["algorithm"].native == "rsaes_oaep"
    params = algorithm["parameters"]
    assert params["hash_algorithm"]["algorithm"].native == "sha256"
    assert params["mask_gen_algorithm"]["parameters"]["algorithm"].native == "sha256"
    content_key = private_key.decrypt(
        ktri["encrypted_key"].native,
        asym_padding.OAEP(
            mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        ),
    )
    assert len(content_key) == 32
    content = enveloped["encrypted_content_info"]
    assert content["content_type"].native == "data"
    assert content["content_encryption_algorithm"]["algorithm"].native == "aes256_cbc"
    iv = content["content_encryption_algorithm"]["parameters"].native
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(content["encrypted_content"].native) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()

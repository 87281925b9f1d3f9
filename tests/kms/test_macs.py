"""HMAC keys: GenerateMac and VerifyMac, checked against RFC 2104 HMAC of the key's material."""

from __future__ import annotations

import functools
import hmac
from typing import Any

import pytest
from nitrokms.sim.kms.server import LocalKMS

from .conftest import expect_error

HMAC_SPECS = {
    "HMAC_224": "sha224",
    "HMAC_256": "sha256",
    "HMAC_384": "sha384",
    "HMAC_512": "sha512",
}


@pytest.mark.parametrize("spec", list(HMAC_SPECS))
def test_hmac_keys_mac_as_rfc_2104_with_their_own_material(
    local_kms: LocalKMS, admin: Any, spec: str
) -> None:
    meta = admin.create_key(KeySpec=spec, KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    algorithm = spec.replace("HMAC_", "HMAC_SHA_")
    assert meta["MacAlgorithms"] == [algorithm]
    assert "EncryptionAlgorithms" not in meta
    material = local_kms.store.resolve(meta["KeyId"]).material
    assert len(material) == int(spec.removeprefix("HMAC_")) // 8
    message = b"authenticate me"
    reply = admin.generate_mac(KeyId=meta["KeyId"], Message=message, MacAlgorithm=algorithm)
    assert reply["Mac"] == hmac.new(material, message, HMAC_SPECS[spec]).digest()
    assert (reply["MacAlgorithm"], reply["KeyId"]) == (algorithm, meta["Arn"])
    verified = admin.verify_mac(
        KeyId=meta["KeyId"], Message=message, Mac=reply["Mac"], MacAlgorithm=algorithm
    )
    assert verified["MacValid"] is True
    tampered = bytes([reply["Mac"][0] ^ 1]) + reply["Mac"][1:]
    for bad_message, mac in ((message, tampered), (message + b"!", reply["Mac"])):
        expect_error(
            functools.partial(
                admin.verify_mac,
                KeyId=meta["KeyId"],
                Message=bad_message,
                Mac=mac,
                MacAlgorithm=algorithm,
            ),
            "KMSInvalidMacException",
        )


def test_mac_misuse_errors(admin: Any, key_id: str) -> None:
    mac_key = admin.create_key(KeySpec="HMAC_224", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    assert expect_error(
        lambda: admin.generate_mac(
            KeyId=mac_key["KeyId"], Message=b"m", MacAlgorithm="HMAC_SHA_256"
        ),
        "InvalidKeyUsageException",
    ) == ("Algorithm HMAC_SHA_256 is incompatible with key spec HMAC_224.")
    expect_error(
        lambda: admin.generate_mac(KeyId=mac_key["KeyId"], Message=b"m", MacAlgorithm="INVALID"),
        "ValidationException",
    )
    arn = admin.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    assert expect_error(
        lambda: admin.generate_mac(KeyId=key_id, Message=b"m", MacAlgorithm="HMAC_SHA_256"),
        "InvalidKeyUsageException",
    ) == (f"{arn} key usage is ENCRYPT_DECRYPT which is not valid for GenerateMac.")
    expect_error(
        lambda: admin.generate_mac(
            KeyId=mac_key["KeyId"], Message=b"m" * 4097, MacAlgorithm="HMAC_SHA_224"
        ),
        "ValidationException",
    )
    admin.disable_key(KeyId=mac_key["KeyId"])
    expect_error(
        lambda: admin.verify_mac(
            KeyId=mac_key["KeyId"], Message=b"m", Mac=b"\x00" * 28, MacAlgorithm="HMAC_SHA_224"
        ),
        "DisabledException",
    )

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "cms"
HELLO_PLAINTEXT = b"Hello, World"


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="session")
def hello_blob() -> bytes:
    return (VECTORS / "kms_cms_hello-world.ber").read_bytes()


@pytest.fixture(scope="session")
def hello_key() -> rsa.RSAPrivateKey:
    return _load_key(VECTORS / "kms_cms_hello-world.key.pem")


@pytest.fixture(scope="session")
def openssl_key() -> rsa.RSAPrivateKey:
    return _load_key(VECTORS / "test_recipient.key.pem")


@pytest.fixture(scope="session")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def third_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)

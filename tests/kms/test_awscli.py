"""The AWS CLI (v1, from PyPI) against `python -m nitrokms.sim kms serve`, configured only through
its environment (AWS_ENDPOINT_URL_KMS, AWS_CA_BUNDLE, credentials, region), as a user would."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nitrokms.sim.kms.fixtures import KMSProcess

AWS = Path(sys.executable).with_name("aws")
CLI_TIMEOUT_S = 60


class AwsCli:
    def __init__(self, server: KMSProcess, home: Path) -> None:
        home.mkdir(exist_ok=True)
        self.home = home
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "AWS_CONFIG_FILE": str(home / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
            "AWS_ENDPOINT_URL_KMS": server.url,
            "AWS_CA_BUNDLE": str(server.ca_path),
            "AWS_ACCESS_KEY_ID": server.access_key_id,
            "AWS_SECRET_ACCESS_KEY": server.secret_access_key,
            "AWS_DEFAULT_REGION": server.region,
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_PAGER": "",
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(AWS), "kms", *args, "--output", "json"],
            env=self.env, cwd=self.home, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
            check=False,
        )  # fmt: skip

    def __call__(self, *args: str) -> Any:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    def file(self, name: str, data: bytes) -> str:
        path = self.home / name
        path.write_bytes(data)
        return f"fileb://{path}"


@pytest.fixture
def aws(kms_server: KMSProcess, tmp_path: Path) -> AwsCli:
    if not AWS.exists():
        pytest.fail(f"the AWS CLI is not installed at {AWS}: it is part of the test extra")
    return AwsCli(kms_server, tmp_path / "cli")


def test_aws_cli_symmetric_key_round_trips(aws: AwsCli) -> None:
    key = aws("create-key", "--description", "from the aws cli")["KeyMetadata"]
    assert key["KeySpec"] == "SYMMETRIC_DEFAULT"
    aws("create-alias", "--alias-name", "alias/cli", "--target-key-id", key["KeyId"])
    data_key = aws("generate-data-key", "--key-id", "alias/cli", "--key-spec", "AES_256")
    assert len(base64.b64decode(data_key["Plaintext"])) == 32
    blob = aws.file("data-key.bin", base64.b64decode(data_key["CiphertextBlob"]))
    opened = aws("decrypt", "--ciphertext-blob", blob)
    assert (opened["Plaintext"], opened["KeyId"]) == (data_key["Plaintext"], key["Arn"])
    plaintext = aws.file("plain.txt", b"secret from the shell")
    sealed = aws(
        "encrypt", "--key-id", key["KeyId"], "--plaintext", plaintext,
        "--encryption-context", "purpose=cli",
    )  # fmt: skip
    ciphertext = aws.file("sealed.bin", base64.b64decode(sealed["CiphertextBlob"]))
    opened = aws("decrypt", "--ciphertext-blob", ciphertext, "--encryption-context", "purpose=cli")
    assert base64.b64decode(opened["Plaintext"]) == b"secret from the shell"
    refused = aws.run("decrypt", "--ciphertext-blob", ciphertext)
    assert refused.returncode != 0
    assert "InvalidCiphertextException" in refused.stderr
    alias_refused = aws.run("get-key-policy", "--key-id", "alias/cli", "--policy-name", "default")
    assert "NotFoundException" in alias_refused.stderr
    listed = {k["KeyId"] for k in aws("list-keys")["Keys"]}
    assert key["KeyId"] in listed


def test_aws_cli_signs_and_verifies(aws: AwsCli) -> None:
    key = aws("create-key", "--key-spec", "ECC_NIST_P256", "--key-usage", "SIGN_VERIFY")[
        "KeyMetadata"
    ]
    message = aws.file("message.txt", b"signed in the shell")
    signed = aws(
        "sign", "--key-id", key["KeyId"], "--message", message,
        "--signing-algorithm", "ECDSA_SHA_256",
    )  # fmt: skip
    signature = base64.b64decode(signed["Signature"])
    verified = aws(
        "verify", "--key-id", key["KeyId"], "--message", message,
        "--signature", aws.file("signature.der", signature),
        "--signing-algorithm", "ECDSA_SHA_256",
    )  # fmt: skip
    assert verified["SignatureValid"] is True
    public = aws("get-public-key", "--key-id", key["KeyId"])["PublicKey"]
    spki = serialization.load_der_public_key(base64.b64decode(public))
    assert isinstance(spki, ec.EllipticCurvePublicKey)
    spki.verify(signature, b"signed in the shell", ec.ECDSA(hashes.SHA256()))
    forged = aws.run(
        "verify", "--key-id", key["KeyId"], "--message", aws.file("other.txt", b"not this"),
        "--signature", aws.file("signature.der", signature),
        "--signing-algorithm", "ECDSA_SHA_256",
    )  # fmt: skip
    assert forged.returncode != 0
    assert "KMSInvalidSignatureException" in forged.stderr

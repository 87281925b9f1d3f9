"""GenerateDataKey with Recipient through boto3 over a reused connection: median and p99.

Runs the real `kms serve` subprocess, a key whose policy pins PCR0/PCR1 (so every call verifies the
attestation document and evaluates the conditions), and one boto3 client (one kept-alive HTTPS
connection). Baseline in the same run: GenerateDataKey without Recipient under the default policy.
Target: median <= 5 ms with Recipient, chain cache warm.

    .venv/bin/python -m tests.bench.bench_kms [--calls N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nitrokms.sim.kms.fixtures import spawn_kms, stop_kms
from nitrokms.sim.nsm.pki import SimulatedPKI

from tests.bench.common import Figure, figure, summarize, table, time_calls

TARGET_MEDIAN_MS = 5.0
PCRS = {i: bytes([i + 1]) * 48 if i < 5 else bytes(48) for i in range(16)}


def _policy() -> str:
    conditions = {
        "kms:RecipientAttestation:ImageSha384": PCRS[0].hex(),
        "kms:RecipientAttestation:PCR1": PCRS[1].hex(),
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "111122223333"},
         "Action": ["kms:CreateKey", "kms:PutKeyPolicy", "kms:DescribeKey"], "Resource": "*"},
        {"Sid": "Enclave", "Effect": "Allow", "Principal": {"AWS": "111122223333"},
         "Action": "kms:GenerateDataKey", "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": conditions}},
    ]})  # fmt: skip


def run(quick: bool = False, calls: int | None = None) -> list[Figure]:
    """GenerateDataKey with Recipient (attested policy) against the plain call, same client."""
    calls = calls or (30 if quick else 500)
    with tempfile.TemporaryDirectory() as tmp:
        pki = SimulatedPKI.load_or_create(Path(tmp) / "nsm")
        server = spawn_kms(Path(tmp) / "kms", pki.root_certificate_pem)
        try:
            client: Any = server.client()
            plain_key = client.create_key()["KeyMetadata"]["KeyId"]
            attested_key = client.create_key(Policy=_policy())["KeyMetadata"]["KeyId"]
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            spki = private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            document = pki.sign_document(
                module_id="i-0123456789abcdef0-enc0123456789abcdef",
                timestamp_ms=int(time.time() * 1000),
                pcrs=PCRS, public_key=spki, user_data=None, nonce=None,
            )  # fmt: skip
            recipient = {
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                "AttestationDocument": document,
            }
            reply = client.generate_data_key(
                KeyId=attested_key, KeySpec="AES_256", Recipient=recipient
            )
            assert "CiphertextForRecipient" in reply
            assert "Plaintext" not in reply
            plain = time_calls(
                lambda: client.generate_data_key(KeyId=plain_key, KeySpec="AES_256"), calls, 30
            )
            attested = time_calls(
                lambda: client.generate_data_key(
                    KeyId=attested_key, KeySpec="AES_256", Recipient=recipient
                ),
                calls,
                30,
            )
        finally:
            stop_kms(server.process)
    return [
        figure("kms", "local GenerateDataKey + Recipient", summarize(attested, 1000), "ms",
               "GenerateDataKey, no Recipient", summarize(plain, 1000).median,
               target=TARGET_MEDIAN_MS),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    print(table(run(calls=parser.parse_args().calls)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

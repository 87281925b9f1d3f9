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
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness.kms.fixtures import spawn_kms, stop_kms
from tests.harness.nsm.pki import SimulatedPKI

TARGET_MEDIAN_MS = 5.0
PCRS = {i: bytes([i + 1]) * 48 if i < 5 else bytes(48) for i in range(16)}


def _measure(call: Callable[[], Any], calls: int, warmup: int = 30) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _report(name: str, samples: list[float]) -> float:
    ordered = sorted(samples)
    median = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"{name:<38} n={len(samples):<5} median={median:7.2f} ms  p99={p99:7.2f} ms")
    return median


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
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
            print(f"local KMS benchmark, {args.calls} calls each, one kept-alive connection")
            _report(
                "GenerateDataKey (baseline)",
                _measure(
                    lambda: client.generate_data_key(KeyId=plain_key, KeySpec="AES_256"), args.calls
                ),
            )
            median = _report(
                "GenerateDataKey + Recipient (attested)",
                _measure(
                    lambda: client.generate_data_key(
                        KeyId=attested_key, KeySpec="AES_256", Recipient=recipient
                    ),
                    args.calls,
                ),
            )
        finally:
            stop_kms(server.process)
    verdict = "OK" if median <= TARGET_MEDIAN_MS else "OVER TARGET"
    print(f"target: median <= {TARGET_MEDIAN_MS} ms with Recipient -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

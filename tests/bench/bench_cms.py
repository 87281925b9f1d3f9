"""CMS reader and encoder throughput: `.venv/bin/python -m tests.bench.bench_cms [--n N]`.

The floor is the bare RSA-OAEP-2048 (SHA-256) decrypt of the same encrypted key, measured in the
same run: everything the reader adds (BER parsing, key choice, AES-CBC, unpadding) is the gap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP

from enclave.cms import decrypt_enveloped_data, inspect_enveloped_data, subject_key_identifier
from tests.harness.kms.cms_encoder import encrypt_for_recipient

_OAEP = OAEP(mgf=MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _measure(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """Return (median µs, operations per second) over n timed calls after a short warm-up."""
    for _ in range(min(20, n)):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    median_us = statistics.median(samples) / 1000
    return median_us, 1e9 * n / sum(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="timed iterations per case")
    n = parser.parse_args().n
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pool = {subject_key_identifier(k.public_key()): k for k in [key] + [
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)
    ]}  # fmt: skip
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    data_key = os.urandom(32)
    blob = encrypt_for_recipient(data_key, spki)
    encrypted_key = key.public_key().encrypt(os.urandom(32), _OAEP)
    assert decrypt_enveloped_data(blob, pool) == data_key

    cases: list[tuple[str, Callable[[], object]]] = [
        ("baseline: bare RSA-OAEP-2048 decrypt", lambda: key.decrypt(encrypted_key, _OAEP)),
        ("cms decrypt, single key", lambda: decrypt_enveloped_data(blob, key)),
        ("cms decrypt, 4-key pool by SKI", lambda: decrypt_enveloped_data(blob, pool)),
        ("cms inspect (parse only)", lambda: inspect_enveloped_data(blob)),
        ("encoder encrypt_for_recipient (32 B)", lambda: encrypt_for_recipient(data_key, spki)),
    ]
    results = {name: _measure(fn, n) for name, fn in cases}
    floor_us = results[cases[0][0]][0]
    print(f"{'case':40} {'median µs':>10} {'ops/s':>10} {'vs floor':>9}")
    for name, (median_us, rate) in results.items():
        print(f"{name:40} {median_us:10.1f} {rate:10.0f} {median_us / floor_us:8.2f}x")
    print(f"reader overhead over the floor: {results[cases[1][0]][0] - floor_us:.1f} µs median")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

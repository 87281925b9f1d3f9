"""CMS reader and encoder throughput: `.venv/bin/python -m tests.bench.bench_cms [--n N]`.

The floor is the bare RSA-OAEP-2048 (SHA-256) decrypt of the same encrypted key, measured in the
same run: everything the reader adds (BER parsing, key choice, AES-CBC, unpadding) is the gap.
"""

from __future__ import annotations

import argparse
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from nitrokms.enclave.cms import decrypt_enveloped_data, subject_key_identifier
from nitrokms.sim.kms.cms_encoder import encrypt_for_recipient

from tests.bench.common import Figure, aggregate, figure, summarize, table, time_calls

FLOOR = "bare RSA-OAEP-2048 decrypt"
_OAEP = OAEP(mgf=MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def run(quick: bool = False, n: int | None = None) -> list[Figure]:
    """CMS decrypt latency and rate, each against the bare RSA-OAEP decrypt of the same size."""
    n = n or (200 if quick else 2000)
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
    floor = time_calls(lambda: key.decrypt(encrypted_key, _OAEP), n, warmup=20)
    single = time_calls(lambda: decrypt_enveloped_data(blob, key), n, warmup=20)
    pooled = time_calls(lambda: decrypt_enveloped_data(blob, pool), n, warmup=20)
    floor_us = summarize(floor, 1e6).median
    return [
        figure("cms", "decrypt, single key", summarize(single, 1e6), "µs", FLOOR, floor_us),
        figure("cms", "decrypt, 4-key pool by SKI", summarize(pooled, 1e6), "µs", FLOOR, floor_us),
        aggregate("cms", "decryption rate (single key)", len(single) / sum(single), "ops/s",
                  len(single), "bare RSA-OAEP rate", len(floor) / sum(floor), better="higher"),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="timed iterations per case")
    print(table(run(n=parser.parse_args().n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

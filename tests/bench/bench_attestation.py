"""Attestation verify and simulated signing: `.venv/bin/python -m tests.bench.bench_attestation`.

Targets: verify with a cached chain <= 1 ms, cold (fresh verifier, whole chain) <= 5 ms, simulator
signing <= 2 ms with a warm chain. Baselines in the same run: pycose's ES384 verify of the same
document (pure-Python `ecdsa`; decoded with cbor2 and `Sign1Message.from_cose_obj`, since pycose's
own decode fails with cbor2 6), and the bare `cryptography` ECDSA P-384 verify of the Sig_structure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

from proto.attestation import AttestationVerifier, parse_document
from proto.attestation.cose import sig_structure
from tests.harness.nsm.pki import SimulatedPKI

MODULE_ID = "i-0f73a4b4cb74cc9f2-enc0192e4188fef781d"
TARGETS_MS = {"verify, cached chain": 1.0, "verify, cold chain": 5.0, "simulator sign": 2.0}


def _measure(fn: Callable[[], object], n: int) -> float:
    """Median milliseconds over n timed calls after a short warm-up."""
    for _ in range(min(10, n)):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500, help="timed iterations per case")
    n = parser.parse_args().n
    pki = SimulatedPKI.ephemeral()
    now_ms = int(time.time() * 1000)
    pcrs = {i: bytes([i]) * 48 for i in range(16)}
    counter = iter(range(10**9))

    def sign() -> bytes:
        return pki.sign_document(
            module_id=MODULE_ID, timestamp_ms=now_ms + next(counter), pcrs=pcrs,
            public_key=bytes(294), user_data=bytes(32), nonce=bytes(16),
        )  # fmt: skip

    doc = sign()
    parsed = parse_document(doc)
    leaf = x509.load_der_x509_certificate(parsed.certificate).public_key()
    assert isinstance(leaf, ec.EllipticCurvePublicKey)
    numbers = leaf.public_numbers()
    cose_key = EC2Key(crv="P_384", x=numbers.x.to_bytes(48, "big"), y=numbers.y.to_bytes(48, "big"))
    message = Sign1Message.from_cose_obj(cbor2.loads(doc), True)
    message.key = cose_key
    assert message.verify_signature()
    to_be_signed = sig_structure(parsed.protected, parsed.payload)
    der_sig = encode_dss_signature(
        int.from_bytes(parsed.signature[:48], "big"), int.from_bytes(parsed.signature[48:], "big")
    )
    warm = AttestationVerifier(pki.root_certificate)
    root = pki.root_certificate

    cases: list[tuple[str, Callable[[], object]]] = [
        ("baseline: pycose ES384 verify (pure Python)", message.verify_signature),
        ("baseline: bare cryptography ES384 verify", lambda: leaf.verify(
            der_sig, to_be_signed, ec.ECDSA(hashes.SHA384()))),
        ("parse only (no crypto)", lambda: parse_document(doc)),
        ("verify, cached chain", lambda: warm.verify(doc)),
        ("verify, cold chain", lambda: AttestationVerifier(root).verify(doc)),
        ("simulator sign", sign),
    ]  # fmt: skip
    results = {name: _measure(fn, n) for name, fn in cases}
    width = max(len(name) for name in results)
    pycose = results["baseline: pycose ES384 verify (pure Python)"]
    print(f"{'case':<{width}}  median ms   vs pycose  target")
    for name, ms in results.items():
        target = TARGETS_MS.get(name)
        verdict = "" if target is None else f"<= {target:g} ms {'ok' if ms <= target else 'MISSED'}"
        print(f"{name:<{width}}  {ms:9.3f}  {pycose / ms:8.1f}x  {verdict}")
    print(f"simulator signing rate: {1000 / results['simulator sign']:.0f} documents/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

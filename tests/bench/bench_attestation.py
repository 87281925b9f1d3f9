"""Attestation verify and simulated signing: `.venv/bin/python -m tests.bench.bench_attestation`.

Targets: verify with a cached chain <= 1 ms, cold (fresh verifier, whole chain) <= 5 ms, simulator
signing <= 2 ms with a warm chain. Baselines in the same run: pycose's ES384 verify of the same
document (pure-Python `ecdsa`; decoded with cbor2 and `Sign1Message.from_cose_obj`, since pycose's
own decode fails with cbor2 6), and the bare `cryptography` ECDSA P-384 verify of the Sig_structure.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from nitrokms.proto.attestation import AttestationVerifier, parse_document
from nitrokms.proto.attestation.cose import sig_structure
from nitrokms.sim.nsm.pki import SimulatedPKI
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

from tests.bench.common import Figure, figure, summarize, table, time_calls

MODULE_ID = "i-0f73a4b4cb74cc9f2-enc0192e4188fef781d"
PYCOSE = "pycose ES384 verify (pure Python)"
TARGETS_MS = {"verify, cached chain": 1.0, "verify, cold chain": 5.0, "simulator sign": 2.0}


def _samples(fn: Callable[[], object], n: int) -> list[float]:
    """Seconds per call over n timed calls after a short warm-up."""
    return time_calls(fn, n, warmup=min(10, n))


def run(quick: bool = False, n: int | None = None) -> list[Figure]:
    """Verify (cached and cold chain) against pycose, and simulator signing against bare ECDSA."""
    n = n or (30 if quick else 500)
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
    signer = ec.generate_private_key(ec.SECP384R1())

    cases: dict[str, Callable[[], object]] = {
        PYCOSE: message.verify_signature,
        "bare cryptography ES384 verify": lambda: leaf.verify(
            der_sig, to_be_signed, ec.ECDSA(hashes.SHA384())),
        "bare cryptography ES384 sign": lambda: signer.sign(
            to_be_signed, ec.ECDSA(hashes.SHA384())),
        "parse only (no crypto)": lambda: parse_document(doc),
        "verify, cached chain": lambda: warm.verify(doc),
        "verify, cold chain": lambda: AttestationVerifier(root).verify(doc),
        "simulator sign": sign,
    }  # fmt: skip
    stats = {name: summarize(_samples(fn, n), 1000) for name, fn in cases.items()}
    pycose = stats[PYCOSE].median
    figures = [
        figure("attestation", name, stats[name], "ms", PYCOSE, pycose, target=TARGETS_MS[name])
        for name in ("verify, cached chain", "verify, cold chain")
    ]
    bare_sign = "bare cryptography ES384 sign"
    figures.append(
        figure(
            "attestation",
            "simulator sign",
            stats["simulator sign"],
            "ms",
            bare_sign,
            stats[bare_sign].median,
            target=TARGETS_MS["simulator sign"],
        )
    )
    return figures  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500, help="timed iterations per case")
    print(table(run(n=parser.parse_args().n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

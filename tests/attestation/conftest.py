"""Fixtures: the real vector, and a simulated PKI signing documents on demand."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nitrokms.proto.attestation import AttestationVerifier, parse_document
from nitrokms.sim.nsm.pki import SimulatedPKI

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "attestation"
REAL_DOC = VECTORS / "attestation_2024-11-14_debug.cose"
REAL_ROOT = VECTORS / "aws_nitro_enclaves_root_g1.pem"
MODULE_ID = "i-0f73a4b4cb74cc9f2-enc0192e4188fef781d"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
NOW_MS = int(NOW.timestamp() * 1000)


def boot_pcrs(*, debug: bool = False) -> dict[int, bytes]:
    """PCR0-15 as a production (or debug) enclave boots with them."""
    pcrs = {i: bytes(48) for i in range(16)}
    if not debug:
        for i in (0, 1, 2):
            pcrs[i] = hashlib.sha384(bytes(48) + bytes([i]) * 48).digest()
    pcrs[4] = hashlib.sha384(bytes(48) + MODULE_ID.split("-enc", maxsplit=1)[0].encode()).digest()
    return pcrs


@pytest.fixture(scope="session")
def real_doc() -> bytes:
    return REAL_DOC.read_bytes()


@pytest.fixture(scope="session")
def pki() -> SimulatedPKI:
    return SimulatedPKI.ephemeral()


@pytest.fixture(scope="session")
def other_pki() -> SimulatedPKI:
    return SimulatedPKI.ephemeral()


@pytest.fixture
def verifier(pki: SimulatedPKI) -> AttestationVerifier:
    return AttestationVerifier(pki.root_certificate)


SignFn = Callable[..., bytes]


@pytest.fixture(scope="session")
def sign(pki: SimulatedPKI) -> SignFn:
    """Sign a production-mode document at NOW; keyword arguments override any field."""

    def make(**overrides: Any) -> bytes:
        fields: dict[str, Any] = {
            "module_id": MODULE_ID,
            "timestamp_ms": NOW_MS,
            "pcrs": boot_pcrs(),
            "public_key": None,
            "user_data": b"hello",
            "nonce": b"\x01" * 16,
        }
        fields.update(overrides)
        return pki.sign_document(**fields)

    return make


@pytest.fixture(scope="session")
def sim_doc(sign: SignFn) -> bytes:
    return sign()


def payload_of(doc: bytes) -> bytes:
    return parse_document(doc).payload

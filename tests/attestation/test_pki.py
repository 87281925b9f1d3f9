"""The simulated NSM PKI: persistence of its root and the real documents' exact shape."""

from __future__ import annotations

import datetime as dt
import stat
import threading
from pathlib import Path
from typing import TypeVar

import cbor2
from cryptography import x509
from nitrokms.proto.attestation import AttestationVerifier, parse_document
from nitrokms.sim.nsm.pki import (
    PAYLOAD_KEYS,
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    SimulatedPKI,
    root_certificate_path,
)

from tests.attestation.conftest import MODULE_ID, NOW, NOW_MS, boot_pcrs

E = TypeVar("E", bound=x509.ExtensionType)


def _doc(pki: SimulatedPKI, timestamp_ms: int = NOW_MS, module_id: str = MODULE_ID) -> bytes:
    return pki.sign_document(
        module_id=module_id, timestamp_ms=timestamp_ms, pcrs=boot_pcrs(),
        public_key=None, user_data=None, nonce=None,
    )  # fmt: skip


def test_root_persists_across_runs_with_a_private_key_file(tmp_path: Path) -> None:
    first = SimulatedPKI.load_or_create(tmp_path / "nsm")
    second = SimulatedPKI.load_or_create(tmp_path / "nsm")
    assert first.root_certificate == second.root_certificate
    assert root_certificate_path(tmp_path / "nsm").read_bytes() == first.root_certificate_pem
    assert stat.S_IMODE((tmp_path / "nsm" / ROOT_KEY_FILE).stat().st_mode) == 0o600
    assert (tmp_path / "nsm" / ROOT_CERT_FILE).exists()
    verifier = AttestationVerifier(first.root_certificate_pem)
    assert verifier.verify(_doc(second), at=NOW).module_id == MODULE_ID


def test_concurrent_creation_yields_one_root(tmp_path: Path) -> None:
    roots: list[bytes] = []

    def load() -> None:
        roots.append(SimulatedPKI.load_or_create(tmp_path).root_certificate_pem)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(roots) == 4
    assert len(set(roots)) == 1


def test_document_bytes_have_the_real_layout(pki: SimulatedPKI) -> None:
    data = _doc(pki)
    assert data[:8] == bytes.fromhex("8444a1013822a059")
    protected, unprotected, payload, signature = cbor2.loads(data)
    assert (protected, unprotected, len(signature)) == (bytes.fromhex("a1013822"), {}, 96)
    assert payload[:1] == b"\xa9"
    assert list(cbor2.loads(payload)) == list(PAYLOAD_KEYS)
    assert b"itimestamp\x1b" + NOW_MS.to_bytes(8, "big") in payload
    assert b"jpublic_key\xf6iuser_data\xf6enonce\xf6" in payload
    assert list(cbor2.loads(payload)["pcrs"]) == list(range(16))


def _ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def test_chain_mirrors_aws(pki: SimulatedPKI) -> None:
    doc = parse_document(_doc(pki))
    root, regional, zonal, instance = (x509.load_der_x509_certificate(c) for c in doc.cabundle)
    leaf = x509.load_der_x509_certificate(doc.certificate)
    assert root == pki.root_certificate
    cns = [
        c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        for c in (root, regional, zonal, instance, leaf)
    ]
    assert cns[0] == "aws.nitro-enclaves"
    assert str(cns[1]).endswith(".us-east-1.aws.nitro-enclaves")
    assert str(cns[2]).endswith(".zonal.us-east-1.aws.nitro-enclaves")
    assert cns[3] == "i-0f73a4b4cb74cc9f2.us-east-1.aws.nitro-enclaves"
    assert cns[4] == f"{MODULE_ID}.us-east-1.aws"
    lengths = [
        _ext(c, x509.BasicConstraints).value.path_length for c in (root, regional, zonal, instance)
    ]
    assert lengths == [None, 2, 1, 0]
    assert not _ext(leaf, x509.BasicConstraints).value.ca
    assert _ext(instance, x509.KeyUsage).critical
    assert not _ext(leaf, x509.KeyUsage).critical
    days = [
        (c.not_valid_after_utc - c.not_valid_before_utc) / dt.timedelta(days=1)
        for c in (root, regional, zonal, instance, leaf)
    ]
    assert days[0] > 30 * 365
    assert 19 < days[1] < 21
    assert 5 < days[2] < 7
    assert days[3] == 1
    assert abs(days[4] * 24 - 3) < 0.01
    serial = leaf.serial_number.to_bytes(16, "big")
    assert serial[:8] == bytes.fromhex(MODULE_ID.split("-enc")[1])
    assert serial[8:12] == bytes(4)
    assert abs(int.from_bytes(serial[12:], "big") - NOW_MS // 1000) <= 3


def test_leaf_is_reissued_near_expiry_with_the_same_key(pki: SimulatedPKI) -> None:
    module_id = "i-0aaaaaaaaaaaaaaaa-enc00000000000000aa"
    later = NOW + dt.timedelta(hours=2, minutes=30)
    first = parse_document(_doc(pki, NOW_MS, module_id))
    same = parse_document(_doc(pki, NOW_MS + 60_000, module_id))
    second = parse_document(_doc(pki, int(later.timestamp() * 1000), module_id))
    assert same.certificate == first.certificate
    assert second.certificate != first.certificate
    keys = [x509.load_der_x509_certificate(d.certificate).public_key() for d in (first, second)]
    assert keys[0] == keys[1]
    verifier = AttestationVerifier(pki.root_certificate)
    verifier.verify(_doc(pki, int(later.timestamp() * 1000), module_id), at=later)


def test_odd_module_ids_get_derived_names(pki: SimulatedPKI) -> None:
    doc = AttestationVerifier(pki.root_certificate).verify(_doc(pki, module_id="enclave"), at=NOW)
    assert doc.module_id == "enclave"

"""Crafted chains: each structural rule of spec 3.5 steps 3-7 refuses what breaks it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from nitrokms.proto.attestation import (
    AttestationVerifier,
    BadChainError,
    BadSignatureError,
    UntrustedRootError,
)
from nitrokms.sim.nsm.pki import (
    IssuedCert,
    SimulatedPKI,
    encode_payload,
    issue_certificate,
    sign1,
)

from tests.attestation.conftest import MODULE_ID, NOW, NOW_MS, boot_pcrs

HOUR = dt.timedelta(hours=1)
SIGN_ONLY = x509.KeyUsage(True, True, False, False, False, False, False, False, False)
CERT_SIGN = x509.KeyUsage(False, False, False, False, False, True, False, False, False)


def _cert(issuer: IssuedCert, cn: str, **options: Any) -> IssuedCert:
    fields: dict[str, Any] = {
        "subject": x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]),
        "issuer": issuer,
        "key": ec.generate_private_key(ec.SECP384R1()),
        "not_before": NOW - HOUR,
        "not_after": NOW + HOUR,
        "serial": 1234,
        "path_length": None,
        "ca": False,
        "usage": (SIGN_ONLY, False),
    }
    fields.update(options)
    return issue_certificate(**fields)


def _ca(issuer: IssuedCert, cn: str, path_length: int | None = 0, **options: Any) -> IssuedCert:
    return _cert(issuer, cn, ca=True, path_length=path_length, usage=(CERT_SIGN, True), **options)


def _document(
    leaf: IssuedCert, cabundle: list[bytes], *, signer: ec.EllipticCurvePrivateKey | None = None
) -> bytes:
    payload = encode_payload(
        module_id=MODULE_ID, timestamp_ms=NOW_MS, pcrs=boot_pcrs(), certificate=leaf.der,
        cabundle=cabundle, public_key=None, user_data=None, nonce=None,
    )  # fmt: skip
    return sign1(payload, signer or leaf.key)


@pytest.fixture
def chain(pki: SimulatedPKI) -> tuple[IssuedCert, list[IssuedCert]]:
    """(instance CA, [root, regional, zonal, instance]) from the simulator."""
    issued = pki.chain(MODULE_ID, NOW_MS)
    return issued.intermediates[-1], [issued.root, *issued.intermediates]


def _bundle(certs: list[IssuedCert]) -> list[bytes]:
    return [c.der for c in certs]


def test_crafted_chain_with_a_plain_leaf_verifies(verifier: AttestationVerifier, chain) -> None:
    instance, certs = chain
    leaf = _cert(instance, "leaf")
    assert verifier.verify(_document(leaf, _bundle(certs)), at=NOW).module_id == MODULE_ID


def test_missing_intermediate_breaks_the_name_chain(verifier: AttestationVerifier, chain) -> None:
    instance, certs = chain
    leaf = _cert(instance, "leaf")
    with pytest.raises(BadChainError, match="issuer of"):
        verifier.verify(_document(leaf, _bundle([certs[0], certs[1], certs[3]])), at=NOW)


def test_path_length_is_enforced(verifier: AttestationVerifier, chain) -> None:
    instance, certs = chain
    extra = _ca(instance, "below instance", path_length=0)
    leaf = _cert(extra, "leaf")
    with pytest.raises(BadChainError, match=r"allows \d intermediate") as err:
        verifier.verify(_document(leaf, _bundle([*certs, extra])), at=NOW)
    assert err.value.code == "attestation.BadChain"


def test_ca_leaf_is_refused(verifier: AttestationVerifier, chain) -> None:
    instance, certs = chain
    leaf = _cert(instance, "leaf", ca=True, usage=(SIGN_ONLY, False))
    with pytest.raises(BadChainError, match="is a CA"):
        verifier.verify(_document(leaf, _bundle(certs)), at=NOW)


def test_leaf_needs_digital_signature(verifier: AttestationVerifier, chain) -> None:
    instance, certs = chain
    leaf = _cert(instance, "leaf", usage=(CERT_SIGN, False))
    with pytest.raises(BadChainError, match="digitalSignature"):
        verifier.verify(_document(leaf, _bundle(certs)), at=NOW)


def test_ca_needs_key_cert_sign(verifier: AttestationVerifier, chain) -> None:
    _, certs = chain
    odd = _cert(certs[2], "odd CA", ca=True, path_length=None, usage=(SIGN_ONLY, True))
    leaf = _cert(odd, "leaf")
    with pytest.raises(BadChainError, match="keyCertSign"):
        verifier.verify(_document(leaf, _bundle([*certs[:3], odd])), at=NOW)


def test_ca_needs_basic_constraints_ca(verifier: AttestationVerifier, chain) -> None:
    _, certs = chain
    not_ca = _cert(certs[2], "not a CA", usage=(CERT_SIGN, True))
    leaf = _cert(not_ca, "leaf")
    with pytest.raises(BadChainError, match="not a CA"):
        verifier.verify(_document(leaf, _bundle([*certs[:3], not_ca])), at=NOW)


def test_sha256_signatures_are_refused(verifier: AttestationVerifier, chain) -> None:
    instance, certs = chain
    leaf = _cert(instance, "leaf", hash_algorithm=hashes.SHA256())
    with pytest.raises(BadChainError, match="ecdsa-with-SHA384"):
        verifier.verify(_document(leaf, _bundle(certs)), at=NOW)


def test_p256_leaf_key_is_refused(verifier: AttestationVerifier, chain) -> None:
    instance, certs = chain
    leaf = _cert(instance, "leaf", key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(BadChainError, match="P-384"):
        verifier.verify(_document(leaf, _bundle(certs)), at=NOW)


def test_certificate_signed_by_the_wrong_key(verifier: AttestationVerifier, chain) -> None:
    instance, certs = chain
    impostor = IssuedCert(instance.certificate, ec.generate_private_key(ec.SECP384R1()), b"")
    leaf = _cert(impostor, "leaf", key_ids=False)
    with pytest.raises(BadSignatureError, match=r"leaf certificate .* is not signed by"):
        verifier.verify(_document(leaf, _bundle(certs)), at=NOW)


def test_document_signed_by_another_key(verifier: AttestationVerifier, chain) -> None:
    instance, certs = chain
    leaf = _cert(instance, "leaf")
    data = _document(leaf, _bundle(certs), signer=ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(BadSignatureError, match="COSE signature") as err:
        verifier.verify(data, at=NOW)
    assert err.value.code == "attestation.BadSignature"


def test_unknown_critical_extension_is_refused(pki: SimulatedPKI, chain) -> None:
    instance, certs = chain
    key = ec.generate_private_key(ec.SECP384R1())
    odd = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(instance.certificate.subject)
        .public_key(key.public_key())
        .serial_number(77)
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(SIGN_ONLY, critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=True)
        .sign(instance.key, hashes.SHA384())
    )
    leaf = IssuedCert(odd, key, odd.public_bytes(Encoding.DER))
    with pytest.raises(BadChainError, match="unknown critical extension"):
        AttestationVerifier(pki.root_certificate).verify(_document(leaf, _bundle(certs)), at=NOW)


def test_reissued_root_with_the_same_key_is_the_same_anchor(pki: SimulatedPKI, chain) -> None:
    _, certs = chain
    root = pki.root
    usage = root.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    again = issue_certificate(
        subject=root.certificate.subject, issuer=None, key=root.key,
        not_before=NOW - 10 * HOUR, not_after=NOW + 10 * HOUR, serial=99, path_length=None,
        ca=True, usage=(usage, True),
    )  # fmt: skip
    leaf = _cert(chain[0], "leaf")
    assert AttestationVerifier(again.certificate).verify(_document(leaf, _bundle(certs)), at=NOW)
    assert AttestationVerifier(again.certificate).verify(
        _document(leaf, [again.der, *_bundle(certs[1:])]), at=NOW
    )


def test_same_subject_other_key_is_untrusted(other_pki: SimulatedPKI, chain) -> None:
    instance, certs = chain
    assert other_pki.root_certificate.subject == certs[0].certificate.subject
    leaf = _cert(instance, "leaf")
    with pytest.raises(UntrustedRootError, match=r"cabundle\[0\]"):
        AttestationVerifier(other_pki.root_certificate).verify(
            _document(leaf, _bundle(certs)), at=NOW
        )

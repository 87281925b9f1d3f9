"""pycose, an independent COSE implementation, verifies the simulator's attestation documents: the
ones the simulated PKI signs directly and the ones the simulated /dev/nsm returns under `nsm run`.

pycose 1.1 with cbor2 >= 6 cannot `Sign1Message.decode` (cbor2 6 gives tagged arrays as tuples,
and decode refuses untagged input, which is what the NSM emits): the document is decoded with cbor2
and handed to `Sign1Message.from_cose_obj` (spec/nitro-facts.md section 9), with the unprotected
header as a plain dict (under a tag cbor2 6 gives a frozendict, which pycose refuses). The chain
is checked with `cryptography`'s `verify_directly_issued_by`, not with this project's validator.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from nitrokms.sim.nsm.pki import SimulatedPKI
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

from tests.attestation.conftest import REAL_DOC, SignFn


def pycose_message(document: bytes) -> Sign1Message:
    """`document` (untagged, or with tag 18) as a pycose Sign1Message keyed with its leaf cert."""
    item = cbor2.loads(document)
    if isinstance(item, cbor2.CBORTag):
        assert item.tag == 18
        item = item.value
    protected, unprotected, payload, signature = item  # under a tag: tuple and frozendict
    message = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    assert message.payload is not None
    leaf = x509.load_der_x509_certificate(cbor2.loads(message.payload)["certificate"])
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    numbers = key.public_numbers()
    message.key = EC2Key(
        crv="P_384", x=numbers.x.to_bytes(48, "big"), y=numbers.y.to_bytes(48, "big")
    )
    return message


def chain_of(document: bytes) -> list[x509.Certificate]:
    payload = cbor2.loads(pycose_message(document).payload or b"")
    ders = [*payload["cabundle"], payload["certificate"]]
    return [x509.load_der_x509_certificate(der) for der in ders]


def check_chain(document: bytes, root: x509.Certificate) -> None:
    """Root to leaf, each certificate signed by the one before (cryptography, not our code)."""
    path = chain_of(document)
    assert path[0] == root
    for issuer, subject in itertools.pairwise(path):
        subject.verify_directly_issued_by(issuer)


@pytest.mark.parametrize("tagged", [False, True])
def test_pycose_verifies_simulated_pki_documents(
    pki: SimulatedPKI, sign: SignFn, tagged: bool
) -> None:
    document = sign(tagged=tagged)
    assert (cbor2.loads(document).__class__ is cbor2.CBORTag) == tagged
    assert pycose_message(document).verify_signature()
    check_chain(document, pki.root_certificate)


def test_pycose_refuses_a_tampered_payload(sign: SignFn) -> None:
    item = list(cbor2.loads(sign()))
    payload = cbor2.loads(item[2])
    payload["user_data"] = b"forged"
    item[2] = cbor2.dumps(payload)
    assert not pycose_message(cbor2.dumps(item)).verify_signature()


def test_pycose_agrees_on_the_real_aws_document() -> None:
    assert pycose_message(REAL_DOC.read_bytes()).verify_signature()


def test_pycose_verifies_documents_from_the_simulated_device(nitrokms_nsm, tmp_path: Path) -> None:
    """The whole simulated path: `nitrokms nsm attest` under `nsm run` (the production NSM client
    through /dev/nsm, answered by the simulator), checked by pycose and cryptography only."""
    document = tmp_path / "doc.cose"
    cli = [sys.executable, "-m", "nitrokms.cli", "nsm", "attest", "--nonce", "0badcafe"]
    made = nitrokms_nsm.run([*cli, "--user-data", "1234", "--out", str(document)])
    assert made.returncode == 0, made.stderr
    data = document.read_bytes()
    message = pycose_message(data)
    assert message.verify_signature()
    payload = cbor2.loads(message.payload or b"")
    assert (payload["nonce"], payload["user_data"]) == (bytes.fromhex("0badcafe"), b"\x12\x34")
    check_chain(data, x509.load_pem_x509_certificate(nitrokms_nsm.root_pem))

"""Documents from the simulated NSM: trust, tampering, time and the relying party's checks."""

from __future__ import annotations

import datetime as dt

import cbor2
import pytest
from nitrokms.proto.attestation import (
    AttestationError,
    AttestationVerifier,
    BadSignatureError,
    DebugModeError,
    Expectations,
    ExpiredError,
    FromFutureError,
    MalformedError,
    NonceMismatchError,
    PCRMismatchError,
    TooOldError,
    UntrustedRootError,
    parse_document,
)
from nitrokms.sim.nsm.pki import SimulatedPKI

from tests.attestation.conftest import MODULE_ID, NOW, NOW_MS, SignFn, boot_pcrs


def test_simulated_document_verifies_against_the_simulator_root(
    verifier: AttestationVerifier, sim_doc: bytes
) -> None:
    doc = verifier.verify(sim_doc, at=NOW)
    assert doc.module_id == MODULE_ID
    assert doc.timestamp == NOW_MS
    assert doc.pcrs == boot_pcrs()
    assert doc.user_data == b"hello"
    assert doc.nonce == b"\x01" * 16
    assert doc.public_key is None
    assert not doc.debug_mode


def test_fresh_document_verifies_at_the_current_time(pki: SimulatedPKI) -> None:
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    data = pki.sign_document(
        module_id=MODULE_ID, timestamp_ms=now_ms, pcrs=boot_pcrs(),
        public_key=b"\x30" * 10, user_data=None, nonce=None,
    )  # fmt: skip
    assert AttestationVerifier(pki.root_certificate_pem).verify(data).public_key == b"\x30" * 10


def test_refused_by_the_aws_root(sim_doc: bytes) -> None:
    with pytest.raises(UntrustedRootError) as err:
        AttestationVerifier().verify(sim_doc, at=NOW)
    assert err.value.code == "attestation.UntrustedRoot"


def test_refused_by_another_simulator_root(other_pki: SimulatedPKI, sim_doc: bytes) -> None:
    with pytest.raises(UntrustedRootError):
        AttestationVerifier(other_pki.root_certificate).verify(sim_doc, at=NOW)


def test_every_single_flipped_byte_is_refused(
    verifier: AttestationVerifier, sim_doc: bytes
) -> None:
    verifier.verify(sim_doc, at=NOW)
    for position in range(len(sim_doc)):
        for mask in (0x01, 0xFF) if position % 5 == 0 else (0x01,):
            mutated = bytearray(sim_doc)
            mutated[position] ^= mask
            with pytest.raises(AttestationError):
                verifier.verify(bytes(mutated), at=NOW)


def test_truncated_or_extended_documents_are_malformed(
    verifier: AttestationVerifier, sim_doc: bytes
) -> None:
    for cut in (0, 1, 7, len(sim_doc) // 2, len(sim_doc) - 1):
        with pytest.raises(MalformedError):
            verifier.verify(sim_doc[:cut], at=NOW)
    with pytest.raises(MalformedError):
        verifier.verify(sim_doc + b"\x00", at=NOW)


def test_oversized_input_is_refused_before_decoding(verifier: AttestationVerifier) -> None:
    with pytest.raises(MalformedError, match="larger than"):
        verifier.verify(b"\x84" + bytes(20_000), at=NOW)


def test_indefinite_length_payload_and_tag_18_are_accepted(
    verifier: AttestationVerifier, sign: SignFn
) -> None:
    indefinite = sign(indefinite_map=True)
    assert parse_document(indefinite).payload[:1] == b"\xbf"
    assert verifier.verify(indefinite, at=NOW).module_id == MODULE_ID
    tagged = sign(tagged=True)
    assert tagged[:1] == b"\xd2"
    assert verifier.verify(tagged, at=NOW).module_id == MODULE_ID


def test_other_tags_are_refused(verifier: AttestationVerifier, sim_doc: bytes) -> None:
    with pytest.raises(MalformedError, match="tag 17"):
        verifier.verify(b"\xd1" + sim_doc, at=NOW)


def test_leaf_expiry_names_the_leaf_and_time(verifier: AttestationVerifier, sign: SignFn) -> None:
    old = NOW - dt.timedelta(hours=5)
    data = sign(timestamp_ms=int(old.timestamp() * 1000))
    verifier.verify(data, at=old)
    with pytest.raises(ExpiredError, match=r"leaf certificate .* expired at .*verification time"):
        verifier.verify(data, at=NOW)


def test_cached_chain_still_expires(sign: SignFn, pki: SimulatedPKI) -> None:
    verifier = AttestationVerifier(pki.root_certificate)
    data = sign()
    verifier.verify(data, at=NOW)
    assert verifier._chains.cached_chains() == 1
    with pytest.raises(ExpiredError):
        verifier.verify(data, at=NOW + dt.timedelta(hours=4))
    verifier.verify(data, at=NOW + dt.timedelta(minutes=1))
    assert verifier._chains.cached_chains() == 1


def test_chain_cache_is_bounded(sign: SignFn, pki: SimulatedPKI) -> None:
    verifier = AttestationVerifier(pki.root_certificate, cache_size=2)
    for n in range(4):
        verifier.verify(sign(module_id=f"i-0123456789abcdef{n}-enc000000000000000{n}"), at=NOW)
    assert verifier._chains.cached_chains() == 2


def test_cache_does_not_leak_trust_across_roots(sim_doc: bytes, other_pki: SimulatedPKI) -> None:
    AttestationVerifier(SimulatedPKI.ephemeral().root_certificate)
    with pytest.raises(UntrustedRootError):
        AttestationVerifier(other_pki.root_certificate).verify(sim_doc, at=NOW)


def test_expected_pcrs(verifier: AttestationVerifier, sim_doc: bytes) -> None:
    pcrs = boot_pcrs()
    verifier.verify(sim_doc, at=NOW, expect=Expectations(pcrs={0: pcrs[0], 4: pcrs[4]}))
    with pytest.raises(PCRMismatchError, match="PCR2") as err:
        verifier.verify(sim_doc, at=NOW, expect=Expectations(pcrs={0: pcrs[0], 2: pcrs[1]}))
    assert err.value.code == "attestation.PCRMismatch"
    with pytest.raises(PCRMismatchError, match="PCR20"):
        verifier.verify(sim_doc, at=NOW, expect=Expectations(pcrs={20: bytes(48)}))


def test_expectations_refuse_impossible_pcr_indices() -> None:
    with pytest.raises(ValueError, match="32"):
        Expectations(pcrs={32: bytes(48)})


def test_expected_nonce(verifier: AttestationVerifier, sign: SignFn, sim_doc: bytes) -> None:
    verifier.verify(sim_doc, at=NOW, expect=Expectations(nonce=b"\x01" * 16))
    with pytest.raises(NonceMismatchError) as err:
        verifier.verify(sim_doc, at=NOW, expect=Expectations(nonce=b"\x02" * 16))
    assert err.value.code == "attestation.NonceMismatch"
    with pytest.raises(NonceMismatchError):
        verifier.verify(sign(nonce=None), at=NOW, expect=Expectations(nonce=b""))


def test_max_age(verifier: AttestationVerifier, sim_doc: bytes) -> None:
    minute = dt.timedelta(minutes=1)
    verifier.verify(sim_doc, at=NOW + minute, expect=Expectations(max_age=2 * minute))
    with pytest.raises(TooOldError, match="too old") as err:
        verifier.verify(sim_doc, at=NOW + 3 * minute, expect=Expectations(max_age=2 * minute))
    assert err.value.code == "attestation.TooOld"


def test_documents_from_the_future_are_refused(verifier: AttestationVerifier, sign: SignFn) -> None:
    module_id = "i-00000000000000fff-enc00000000000000ff"
    earlier = NOW - dt.timedelta(minutes=30)
    sign(module_id=module_id, timestamp_ms=int(earlier.timestamp() * 1000))
    data = sign(module_id=module_id)
    verifier.verify(data, at=NOW - dt.timedelta(minutes=4))
    with pytest.raises(FromFutureError) as err:
        verifier.verify(data, at=NOW - dt.timedelta(minutes=10))
    assert err.value.code == "attestation.FromFuture"


def test_debug_documents(verifier: AttestationVerifier, sign: SignFn) -> None:
    data = sign(pcrs=boot_pcrs(debug=True))
    with pytest.raises(DebugModeError, match="allow"):
        verifier.verify(data, at=NOW)
    assert verifier.verify(data, at=NOW, expect=Expectations(allow_debug=True)).debug_mode


def test_naive_times_are_taken_as_utc(verifier: AttestationVerifier, sim_doc: bytes) -> None:
    verifier.verify(sim_doc, at=NOW.replace(tzinfo=None))


def test_signature_over_reencoded_payload_is_not_accepted(
    verifier: AttestationVerifier, sign: SignFn
) -> None:
    protected, unprotected, payload, signature = cbor2.loads(sign(indefinite_map=True))
    definite = cbor2.dumps(cbor2.loads(payload))
    assert definite != payload
    forged = cbor2.dumps([protected, unprotected, definite, signature])
    with pytest.raises(BadSignatureError):
        verifier.verify(forged, at=NOW)

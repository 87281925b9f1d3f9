"""Fuzz invariant: any byte string verifies or raises an AttestationError, nothing else."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nitrokms.proto.attestation import (
    AttestationError,
    AttestationVerifier,
    MalformedError,
    parse_document,
)
from nitrokms.sim.nsm.pki import PAYLOAD_KEYS, SimulatedPKI

from tests.attestation.conftest import MODULE_ID, NOW, NOW_MS, REAL_DOC, boot_pcrs

PKI = SimulatedPKI.ephemeral()
VERIFIER = AttestationVerifier(PKI.root_certificate)
SIM_DOC = PKI.sign_document(
    module_id=MODULE_ID, timestamp_ms=NOW_MS, pcrs=boot_pcrs(), public_key=b"k",
    user_data=b"u", nonce=b"n",
)  # fmt: skip
REAL = REAL_DOC.read_bytes()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=80)
    | st.text(max_size=20) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.integers(-3, 40) | st.text(max_size=8), inner, max_size=4
    ),
    max_leaves=12,
)  # fmt: skip


def _verify_or_typed_error(data: bytes) -> None:
    error: AttestationError | None = None
    try:
        VERIFIER.verify(data, at=NOW)
    except AttestationError as exc:
        error = exc
    if error is not None:
        assert error.code.startswith("attestation.")
        assert "\n" not in str(error)


@SETTINGS
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_attestation_errors(data: bytes) -> None:
    _verify_or_typed_error(data)
    with contextlib.suppress(MalformedError):
        parse_document(data)


@SETTINGS
@given(st.sampled_from([SIM_DOC, REAL]), st.data())
def test_mutated_documents_raise_only_attestation_errors(doc: bytes, data: st.DataObject) -> None:
    mutated = bytearray(doc)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        kind = data.draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        if kind == "set":
            mutated[position] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            mutated[position:position] = data.draw(st.binary(min_size=1, max_size=9))
        elif kind == "delete":
            del mutated[position : position + data.draw(st.integers(1, 9))]
        else:
            del mutated[position:]
        if not mutated:
            break
    _verify_or_typed_error(bytes(mutated))


@SETTINGS
@given(st.dictionaries(st.sampled_from(PAYLOAD_KEYS), cbor_values, max_size=9), st.data())
def test_signed_payloads_of_any_shape_parse_or_raise_malformed(
    overrides: dict[str, Any], data: st.DataObject
) -> None:
    chain = PKI.chain(MODULE_ID, NOW_MS)
    fields: dict[str, Any] = {
        "module_id": MODULE_ID, "digest": "SHA384", "timestamp": NOW_MS, "pcrs": boot_pcrs(),
        "certificate": chain.leaf.der, "cabundle": list(chain.cabundle),
        "public_key": None, "user_data": None, "nonce": None,
    }  # fmt: skip
    fields.update(overrides)
    if data.draw(st.booleans()):
        del fields[data.draw(st.sampled_from(sorted(fields)))]
    signed = PKI.sign_payload(cbor2.dumps(fields), module_id=MODULE_ID, timestamp_ms=NOW_MS)
    _verify_or_typed_error(signed)


@SETTINGS
@given(st.lists(cbor_values, min_size=0, max_size=6), st.booleans())
def test_cose_shaped_junk_raises_malformed(items: list[Any], tagged: bool) -> None:
    encoded = cbor2.dumps(cbor2.CBORTag(18, items) if tagged else items)
    _verify_or_typed_error(encoded)

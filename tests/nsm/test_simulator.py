"""The simulator's rules (spec 1.4) and its ErrorCode for each misuse, via its byte interface."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cbor2
import pytest
from nitrokms.enclave.nsm import NSMClient, NSMError, NSMErrorCode, TransportBackend, codec
from nitrokms.sim.nsm.pki import SimulatedPKI
from nitrokms.sim.nsm.simulator import (
    NSMSimulator,
    SimulatorConfigError,
    boot_pcrs,
    default_measurements,
    load_measurements,
    load_or_create_instance_id,
    new_module_id,
)

from tests.nsm.conftest import INSTANCE_ID, MODULE_ID

ZERO = bytes(48)


def sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


@pytest.fixture
def nsm(simulator: NSMSimulator) -> NSMClient:
    return NSMClient(TransportBackend(simulator))


def nsm_code(exc: pytest.ExceptionInfo[NSMError]) -> NSMErrorCode:
    return exc.value.nsm_code


def test_boot_state_matches_a_fresh_enclave(nsm: NSMClient) -> None:
    desc = nsm.describe_nsm()
    assert (desc.max_pcrs, desc.digest, desc.module_id) == (32, "SHA384", MODULE_ID)
    assert desc.locked_pcrs == tuple(range(16))
    assert (desc.version_major, desc.version_minor, desc.version_patch) == (1, 0, 0)
    for index in range(16, 32):
        assert nsm.describe_pcr(index) == codec.PCRState(False, ZERO)
    assert nsm.describe_pcr(4) == codec.PCRState(True, sha384(ZERO + INSTANCE_ID.encode()))
    assert nsm.describe_pcr(3).data == ZERO
    assert all(nsm.describe_pcr(i).data != ZERO for i in range(3))


def test_extend_chains_sha384_over_old_value(nsm: NSMClient) -> None:
    first = nsm.extend_pcr(16, b"hello")
    assert first == sha384(ZERO + b"hello")
    assert nsm.extend_pcr(16, b"") == sha384(first)
    assert nsm.describe_pcr(16) == codec.PCRState(False, sha384(first))


@pytest.mark.parametrize("index", [0, 4, 15])
def test_boot_locked_pcrs_refuse_extend_and_lock(nsm: NSMClient, index: int) -> None:
    before = nsm.describe_pcr(index)
    for call in (lambda: nsm.extend_pcr(index, b"x"), lambda: nsm.lock_pcr(index)):
        with pytest.raises(NSMError) as info:
            call()
        assert nsm_code(info) is NSMErrorCode.ReadOnlyIndex
    assert nsm.describe_pcr(index) == before


@pytest.mark.parametrize("index", [32, 33, 1000, 65535])
def test_out_of_range_index_is_invalid_index(nsm: NSMClient, index: int) -> None:
    for call in (
        lambda: nsm.describe_pcr(index),
        lambda: nsm.extend_pcr(index, b"x"),
        lambda: nsm.lock_pcr(index),
    ):
        with pytest.raises(NSMError) as info:
            call()
        assert nsm_code(info) is NSMErrorCode.InvalidIndex


def test_lock_is_permanent(nsm: NSMClient) -> None:
    value = nsm.extend_pcr(20, b"measure")
    nsm.lock_pcr(20)
    assert nsm.describe_pcr(20) == codec.PCRState(True, value)
    with pytest.raises(NSMError) as info:
        nsm.extend_pcr(20, b"more")
    assert nsm_code(info) is NSMErrorCode.ReadOnlyIndex
    with pytest.raises(NSMError) as again:
        nsm.lock_pcr(20)
    assert nsm_code(again) is NSMErrorCode.ReadOnlyIndex
    assert 20 in nsm.describe_nsm().locked_pcrs


def test_lock_pcrs_locks_the_prefix(nsm: NSMClient) -> None:
    nsm.lock_pcrs(0)
    nsm.lock_pcrs(18)
    assert nsm.describe_nsm().locked_pcrs == tuple(range(18))
    assert nsm.extend_pcr(18, b"still open")
    nsm.lock_pcrs(32)
    assert nsm.describe_nsm().locked_pcrs == tuple(range(32))


@pytest.mark.parametrize("range_", [33, 64, 65535])
def test_lock_pcrs_beyond_max_fails_and_locks_nothing(nsm: NSMClient, range_: int) -> None:
    with pytest.raises(NSMError) as info:
        nsm.lock_pcrs(range_)
    assert nsm_code(info) is NSMErrorCode.InvalidIndex
    assert nsm.describe_nsm().locked_pcrs == tuple(range(16))


def test_get_random_is_256_fresh_bytes(nsm: NSMClient) -> None:
    first, second = nsm.get_random(), nsm.get_random()
    assert len(first) == len(second) == 256
    assert first != second


def payload_of(document: bytes) -> dict[object, object]:
    envelope = cbor2.loads(document)
    assert isinstance(envelope, list)
    assert len(envelope) == 4
    assert envelope[0] == b"\xa1\x01\x38\x22"
    assert len(envelope[3]) == 96
    payload = cbor2.loads(envelope[2])
    assert isinstance(payload, dict)
    return payload


def test_attestation_document_carries_inputs_and_current_pcrs(nsm: NSMClient) -> None:
    nsm.extend_pcr(16, b"not in the document")
    document = nsm.get_attestation_doc(
        user_data=b"u" * 1024, nonce=b"n" * 1024, public_key=b"k" * 1024
    )
    payload = payload_of(document)
    assert list(payload) == [
        "module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle",
        "public_key", "user_data", "nonce",
    ]  # fmt: skip
    assert payload["module_id"] == MODULE_ID
    assert payload["timestamp"] == 1_700_000_000_123
    pcrs = payload["pcrs"]
    assert isinstance(pcrs, dict)
    assert sorted(pcrs) == list(range(16))
    assert pcrs[4] == nsm.describe_pcr(4).data
    assert (payload["user_data"], payload["nonce"], payload["public_key"]) == (
        b"u" * 1024, b"n" * 1024, b"k" * 1024,
    )  # fmt: skip


def test_attestation_absent_fields_are_null(nsm: NSMClient) -> None:
    payload = payload_of(nsm.get_attestation_doc())
    assert payload["user_data"] is payload["nonce"] is payload["public_key"] is None


@pytest.mark.parametrize("field", ["user_data", "nonce", "public_key"])
def test_attestation_field_over_1024_bytes_is_input_too_large(nsm: NSMClient, field: str) -> None:
    with pytest.raises(NSMError) as info:
        nsm.get_attestation_doc(**{field: b"x" * 1025})
    assert nsm_code(info) is NSMErrorCode.InputTooLarge


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"\xff\x00", NSMErrorCode.InvalidArgument),
        (cbor2.dumps({"ExtendPCR": {"index": 16, "data": "text"}}), NSMErrorCode.InvalidArgument),
        (cbor2.dumps({"LockPCR": {"index": -3}}), NSMErrorCode.InvalidArgument),
        (cbor2.dumps("Reboot"), NSMErrorCode.InvalidOperation),
        (cbor2.dumps({"GetRandomBytes": {}}), NSMErrorCode.InvalidOperation),
        (b"\x40" * 4097, NSMErrorCode.InputTooLarge),
    ],
)
def test_malformed_requests_get_an_error_reply(
    simulator: NSMSimulator, wire: bytes, expected: NSMErrorCode
) -> None:
    assert codec.decode_response(simulator.exchange(wire)) == codec.ErrorResponse(expected)


def test_boot_pcrs_from_measurements_debug_and_role(tmp_path: Path) -> None:
    values = {f"PCR{i}": f"{i:02x}" * 48 for i in (0, 1, 2, 8)}
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"Measurements": {"HashAlgorithm": "Sha384 { ... }", **values}}))
    measured = load_measurements(path)
    assert measured == {i: bytes([i]) * 48 for i in (0, 1, 2, 8)}
    role = "arn:aws:iam::123456789012:role/app"
    pcrs = boot_pcrs(instance_id=INSTANCE_ID, measurements=measured, role_arn=role)
    assert [pcrs[0], pcrs[1], pcrs[8]] == [bytes(48), b"\x01" * 48, b"\x08" * 48]
    assert pcrs[3] == sha384(ZERO + role.encode())
    debug = boot_pcrs(instance_id=INSTANCE_ID, measurements=measured, role_arn=role, debug=True)
    assert [debug[i] for i in range(3)] == [ZERO] * 3
    assert [debug[i] for i in (3, 4, 8)] == [pcrs[i] for i in (3, 4, 8)]


def test_default_measurements_are_deterministic_nonzero() -> None:
    assert default_measurements() == default_measurements()
    assert len(set(default_measurements().values())) == 3


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"Measurements": {}}',
        '{"Measurements": {"PCR0": "00", "PCR1": "", "PCR2": ""}}',
    ],
)
def test_bad_measurements_name_the_problem(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(SimulatorConfigError, match=r"m\.json"):
        load_measurements(path)


def test_instance_id_persists_and_enclave_id_is_fresh(tmp_path: Path) -> None:
    first = load_or_create_instance_id(tmp_path)
    assert re.fullmatch(r"i-[0-9a-f]{17}", first)
    assert load_or_create_instance_id(tmp_path) == first
    one, two = new_module_id(first), new_module_id(first)
    assert one != two
    assert re.fullmatch(rf"{first}-enc[0-9a-f]{{16}}", one)


def test_simulator_refuses_a_wrong_pcr_bank(pki: SimulatedPKI) -> None:
    with pytest.raises(SimulatorConfigError):
        NSMSimulator(pki, module_id=MODULE_ID, pcrs={0: ZERO})

"""Golden bytes per spec 1.2 (written by hand, not by cbor2) drive encoder and decoder tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.enclave.errors import NSMError, NSMErrorCode
from nitrokms.enclave.nsm import codec


def text(value: str) -> bytes:
    raw = value.encode()
    return (bytes([0x60 + len(raw)]) if len(raw) < 24 else bytes([0x78, len(raw)])) + raw


def one(name: str, body: bytes, count: int) -> bytes:
    return b"\xa1" + text(name) + bytes([0xA0 + count]) + body


MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"

REQUESTS: list[tuple[codec.Request, bytes]] = [
    (codec.DescribePCRRequest(5), one("DescribePCR", text("index") + b"\x05", 1)),
    (
        codec.ExtendPCRRequest(16, b"abc"),
        one("ExtendPCR", text("index") + b"\x10" + text("data") + b"\x43abc", 2),
    ),
    (codec.LockPCRRequest(300), one("LockPCR", text("index") + b"\x19\x01\x2c", 1)),
    (codec.LockPCRsRequest(32), one("LockPCRs", text("range") + b"\x18\x20", 1)),
    (codec.DescribeNSMRequest(), text("DescribeNSM")),
    (
        codec.AttestationRequest(None, b"\x01", None),
        one(
            "Attestation",
            text("user_data")
            + b"\xf6"
            + text("nonce")
            + b"\x41\x01"
            + text("public_key")
            + b"\xf6",
            3,
        ),
    ),
    (
        codec.AttestationRequest(b"u", b"", b"k"),
        one(
            "Attestation",
            text("user_data") + b"\x41u" + text("nonce") + b"\x40" + text("public_key") + b"\x41k",
            3,
        ),
    ),
    (codec.GetRandomRequest(), bytes.fromhex("69 47 65 74 52 61 6e 64 6f 6d")),
]

RESPONSES: list[tuple[codec.Response, bytes]] = [
    (
        codec.PCRState(True, b"\xaa" * 48),
        one("DescribePCR", text("lock") + b"\xf5" + text("data") + b"\x58\x30" + b"\xaa" * 48, 2),
    ),
    (
        codec.PCRState(False, b""),
        one("DescribePCR", text("lock") + b"\xf4" + text("data") + b"\x40", 2),
    ),
    (
        codec.ExtendPCRResponse(bytes(48)),
        one("ExtendPCR", text("data") + b"\x58\x30" + bytes(48), 1),
    ),
    (codec.LockPCRResponse(), text("LockPCR")),
    (codec.LockPCRsResponse(), text("LockPCRs")),
    (
        codec.NSMDescription(1, 0, 0, MODULE_ID, 32, (0, 1, 15), "SHA384"),
        one(
            "DescribeNSM",
            text("version_major") + b"\x01" + text("version_minor") + b"\x00"
            + text("version_patch") + b"\x00" + text("module_id") + text(MODULE_ID)
            + text("max_pcrs") + b"\x18\x20" + text("locked_pcrs") + b"\x83\x00\x01\x0f"
            + text("digest") + text("SHA384"),
            7,
        ),
    ),
    (
        codec.AttestationResponse(b"\x84\x44"),
        one("Attestation", text("document") + b"\x42\x84\x44", 1),
    ),
    (
        codec.GetRandomResponse(b"\x07" * 256),
        one("GetRandom", text("random") + b"\x59\x01\x00" + b"\x07" * 256, 1),
    ),
    (
        codec.ErrorResponse(NSMErrorCode.InvalidIndex),
        b"\xa1" + text("Error") + text("InvalidIndex"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("message", "wire"), REQUESTS)
def test_request_golden_bytes(message: codec.Request, wire: bytes) -> None:
    assert codec.encode_request(message) == wire
    assert codec.decode_request(wire) == message


@pytest.mark.parametrize(("message", "wire"), RESPONSES)
def test_response_golden_bytes(message: codec.Response, wire: bytes) -> None:
    assert codec.encode_response(message) == wire
    assert codec.decode_response(wire) == message


def test_get_random_reply_matches_the_kernel_drivers_expected_prefix() -> None:
    wire = codec.encode_response(codec.GetRandomResponse(b"\x00" * 256))
    assert wire.startswith(b"\xa1\x69GetRandom\xa1\x66random")


@pytest.mark.parametrize(("message", "wire"), RESPONSES)
def test_every_truncation_and_trailing_byte_is_rejected(
    message: codec.Response, wire: bytes
) -> None:
    for cut in range(len(wire)):
        with pytest.raises(NSMError) as info:
            codec.decode_response(wire[:cut])
        assert info.value.nsm_code is NSMErrorCode.InternalError
    with pytest.raises(NSMError, match="trailing"):
        codec.decode_response(wire + b"\x00")


def test_all_error_codes_decode_by_name() -> None:
    for code in NSMErrorCode:
        assert codec.decode_response(cbor2.dumps({"Error": code.name})) == codec.ErrorResponse(code)


def test_error_code_enum_mirrors_nsm_api() -> None:
    assert [(c.name, c.value) for c in NSMErrorCode] == [
        ("Success", 0), ("InvalidArgument", 1), ("InvalidIndex", 2), ("InvalidResponse", 3),
        ("ReadOnlyIndex", 4), ("InvalidOperation", 5), ("BufferTooSmall", 6),
        ("InputTooLarge", 7), ("InternalError", 8),
    ]  # fmt: skip
    error = NSMError(NSMErrorCode.ReadOnlyIndex)
    assert error.code == "nsm.ReadOnlyIndex"
    assert error.nsm_code is NSMErrorCode.ReadOnlyIndex


BAD_RESPONSES = [
    b"",
    b"\xff",
    cbor2.dumps("Bogus"),
    cbor2.dumps("DescribePCR"),
    cbor2.dumps({"Error": "NoSuchCode"}),
    cbor2.dumps({"Error": 3}),
    cbor2.dumps({"DescribePCR": {"lock": 1, "data": b""}}),
    cbor2.dumps({"DescribePCR": {"lock": True}}),
    cbor2.dumps({"DescribePCR": [True, b""]}),
    cbor2.dumps({"LockPCR": {}}),
    cbor2.dumps({"GetRandom": {"random": "text"}}),
    cbor2.dumps({"GetRandom": {"random": b""}, "LockPCR": None}),
    cbor2.dumps({1: {"random": b""}}),
    cbor2.dumps(["GetRandom"]),
    cbor2.dumps({"DescribeNSM": {"version_major": 70000}}),
    cbor2.dumps(
        {
            "DescribeNSM": {
                "version_major": 1, "version_minor": 0, "version_patch": 0, "module_id": "m",
                "max_pcrs": 32, "locked_pcrs": [1, -1], "digest": "SHA384",
            }
        }
    ),
    cbor2.dumps(
        {
            "DescribeNSM": {
                "version_major": 1, "version_minor": 0, "version_patch": 0, "module_id": "m",
                "max_pcrs": 32, "locked_pcrs": [], "digest": "MD5",
            }
        }
    ),
    b"\x81" * 5000,
    b"\xa1\x65Error\xa1\x65Error\xa1" * 4,
    bytes.fromhex("a2 61 61 01 61 61 02"),
    b"\x5a\xff\xff\xff\xff",
    cbor2.dumps({"GetRandom": {"random": b"\x00" * 12300}}),
]  # fmt: skip


@pytest.mark.parametrize("wire", BAD_RESPONSES)
def test_malformed_responses_raise_internal_error(wire: bytes) -> None:
    with pytest.raises(NSMError) as info:
        codec.decode_response(wire)
    assert info.value.nsm_code is NSMErrorCode.InternalError


def test_request_decoder_distinguishes_unknown_from_malformed() -> None:
    with pytest.raises(NSMError) as unknown:
        codec.decode_request(cbor2.dumps({"Frobnicate": {"index": 1}}))
    assert unknown.value.nsm_code is NSMErrorCode.InvalidOperation
    with pytest.raises(NSMError) as malformed:
        codec.decode_request(cbor2.dumps({"DescribePCR": {"index": -1}}))
    assert malformed.value.nsm_code is NSMErrorCode.InvalidArgument
    with pytest.raises(NSMError) as big:
        codec.decode_request(b"\x00" * 4097)
    assert big.value.nsm_code is NSMErrorCode.InputTooLarge


def test_request_decoder_follows_serde_rules_for_extra_and_missing_optional_fields() -> None:
    wire = cbor2.dumps({"Attestation": {"nonce": b"n", "extra": 1}})
    assert codec.decode_request(wire) == codec.AttestationRequest(None, b"n", None)
    with pytest.raises(NSMError):
        codec.decode_request(cbor2.dumps({"ExtendPCR": {"index": 1}}))


def test_constructors_refuse_out_of_range_values() -> None:
    for bad in (-1, 65536, True, "1"):
        with pytest.raises(NSMError) as info:
            codec.DescribePCRRequest(bad)  # type: ignore[arg-type]
        assert info.value.nsm_code is NSMErrorCode.InvalidArgument


def test_secret_bearing_responses_do_not_repr_their_bytes() -> None:
    assert "\\x07" not in repr(codec.GetRandomResponse(b"\x07" * 8))


u16 = st.integers(0, 0xFFFF)
opt = st.none() | st.binary(max_size=64)
requests = st.one_of(
    st.builds(codec.DescribePCRRequest, u16),
    st.builds(codec.ExtendPCRRequest, u16, st.binary(max_size=64)),
    st.builds(codec.LockPCRRequest, u16),
    st.builds(codec.LockPCRsRequest, u16),
    st.just(codec.DescribeNSMRequest()),
    st.builds(codec.AttestationRequest, opt, opt, opt),
    st.just(codec.GetRandomRequest()),
)
responses = st.one_of(
    st.builds(codec.PCRState, st.booleans(), st.binary(max_size=64)),
    st.builds(codec.ExtendPCRResponse, st.binary(max_size=64)),
    st.builds(
        codec.NSMDescription, u16, u16, u16, st.text(max_size=40), u16,
        st.frozensets(u16, max_size=20).map(lambda s: tuple(sorted(s))),
        st.sampled_from(codec.DIGESTS),
    ),
    st.builds(codec.AttestationResponse, st.binary(max_size=64)),
    st.builds(codec.GetRandomResponse, st.binary(max_size=256)),
    st.builds(codec.ErrorResponse, st.sampled_from(NSMErrorCode)),
)  # fmt: skip


@settings(max_examples=300)
@given(requests)
def test_requests_round_trip(request: codec.Request) -> None:
    assert codec.decode_request(codec.encode_request(request)) == request


@settings(max_examples=300)
@given(responses)
def test_responses_round_trip(response: codec.Response) -> None:
    assert codec.decode_response(codec.encode_response(response)) == response


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_any_response_bytes_parse_or_raise_nsm_error(data: bytes) -> None:
    code = NSMErrorCode.Success
    try:
        codec.decode_response(data)
    except NSMError as exc:
        code = exc.nsm_code
    assert code in (NSMErrorCode.Success, NSMErrorCode.InternalError)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=20)
    | st.text(max_size=12)
    | st.sampled_from(["GetRandom", "DescribePCR", "Error", "index", "data"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["DescribePCR", "ExtendPCR", "Attestation", "Error", "index", "data",
                         "lock", "nonce", "random", "range", "x"]) | st.integers(),
        inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=500)
@given(cbor_values)
def test_any_structured_cbor_parses_or_raises_nsm_error(value: object) -> None:
    wire = cbor2.dumps(value)
    for decode in (codec.decode_response, codec.decode_request):
        with contextlib.suppress(NSMError):
            decode(wire)


@pytest.mark.parametrize(
    ("decode", "size", "code"),
    [
        (codec.decode_response, codec.MAX_RESPONSE_BYTES, NSMErrorCode.InternalError),
        (codec.decode_request, codec.MAX_REQUEST_BYTES, NSMErrorCode.InvalidArgument),
    ],
)
@pytest.mark.parametrize("unit", [b"\x80", b"\xa0", b"\x00"])
def test_amplification_within_the_size_cap_is_refused_as_nsm_error(
    decode: Callable[[bytes], object], size: int, code: NSMErrorCode, unit: bytes
) -> None:
    with pytest.raises(NSMError) as info:
        decode(b"\x9f" + unit * (size - 2) + b"\xff")
    assert info.value.nsm_code is code
    assert "CBOR items" in info.value.message

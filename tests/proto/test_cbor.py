"""The shared CBOR loader: the rules it enforces, and hostile shapes refused within a work budget.

"Within budget" is checked without clocks: the header walk is counted (it may look at no more than
`max_items + 1` headers), cbor2 must never be reached, and the peak of traced memory stays small.
"""

from __future__ import annotations

import contextlib
import math
import tracemalloc
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.proto import cbor
from nitrokms.proto import messages as m
from nitrokms.proto.attestation import MalformedError, parse_document
from nitrokms.proto.cbor import CBORDecodeError, CBORLimits, loads
from nitrokms.proto.errors import RemoteProtocolError

LIMITS = CBORLimits(max_bytes=4096, max_items=64, max_depth=4)
FOUR_MIB = 4 * 1024 * 1024


def refused(data: bytes, limits: CBORLimits = LIMITS) -> str:
    with pytest.raises(CBORDecodeError) as info:
        loads(data, limits)
    return info.value.message


def test_plain_values_decode_exactly_as_cbor2_reads_them() -> None:
    value = {"a": [1, -2, b"\x00", None, True, 1.5], 7: {b"k": "v"}, -3: []}
    assert loads(cbor2.dumps(value), LIMITS) == value


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "truncated"),
        (b"\x82\x01", "truncated"),
        (b"\x5a\x00\x00\x10\x00abc", "truncated"),
        (b"\x1b\x00\x00", "truncated"),
        (b"\x01\x02", "trailing"),
        (b"\x1c", "reserved"),
        (b"\x7e", "reserved"),
        (b"\xff", "unexpected CBOR break"),
        (b"\x82\x01\xff", "unexpected CBOR break"),
        (b"\xbf\x01\xff", "ends after a key"),
        (b"\x5f\x41a\x61b\xff", "foreign chunk"),
        (b"\x5f\x5f\xff\xff", "foreign chunk"),
        (b"\xc1\x00", "tag 1 is not allowed"),
        (b"\xa1\x80\x01", "map key"),
        (b"\xa1\xf5\x01", "map key"),
        (b"\xa1\xf6\x01", "map key"),
        (b"\xa1\xf9\x3c\x00\x01", "map key"),
        (b"\xa1\xc1\x00\x01", "map key"),
        (b"\xa2\x01\x00\x01\x00", "duplicate"),
        (b"\xa2\x01\x00\x18\x01\x00", "duplicate"),  # same integer, longer encoding
        (b"\xa2\x20\x00\x38\x00\x00", "duplicate"),  # -1 twice
        (b"\xa2\x61a\x00\x7f\x61a\xff\x00", "duplicate"),  # "a", then "a" in chunks
        (b"\xbf\x42ab\x00\x5f\x41a\x41b\xff\x00\xff", "duplicate"),
        (b"\x81\x81\x81\x81\x80", "nested deeper than 4"),  # an empty array counts
        (b"\x81" * 50 + b"\x00", "nested deeper than 4"),
        (b"\x9b" + b"\xff" * 8, "announces"),
        (b"\x99\x00\x41" + b"\x00" * 65, "announces 65 items; too many"),
        (b"\x98\x20" + b"\x00" * 10, "announces 32 items; truncated"),
        (b"\xb8\x10" + b"\x00" * 10, "announces 32 items; truncated"),
        (b"\x9f" + b"\x00" * 64 + b"\xff", "more than 64 CBOR items"),
        (b"\x62\xff\xfe", "undecodable"),  # invalid UTF-8 reaches cbor2, which refuses it
        (b"\x00" * 4097, "4097 bytes"),
    ],
)
def test_broken_rules_are_named(data: bytes, problem: str) -> None:
    assert problem in refused(data)


def test_the_limits_are_inclusive() -> None:
    assert loads(b"\x81\x81\x81\x81\x00", LIMITS) == [[[[0]]]]
    assert loads(b"\x98\x3f" + b"\x00" * 63, LIMITS) == [0] * 63  # 64 items with the array
    tagged = loads(b"\xd2\x81\x00", CBORLimits(16, 3, 2, tags=frozenset({18})))
    assert isinstance(tagged, cbor2.CBORTag)
    assert (tagged.tag, list(tagged.value)) == (18, [0])
    assert "deeper than 1" in refused(b"\xd2\x80", CBORLimits(16, 3, 1, tags=frozenset({18})))


def test_indefinite_lengths_and_distinct_keys_are_accepted() -> None:
    data = b"\xbf\x61a\x9f\x01\x02\xff\x7f\x61b\x61c\xff\x5f\x41x\xff\x01\x41a\xff"
    assert loads(data, LIMITS) == {"a": [1, 2], "bc": b"x", 1: b"a"}


def test_equal_looking_keys_of_different_types_are_distinct() -> None:
    value = {1: 0, "1": 0, b"1": 0, -1: 0}
    assert loads(cbor2.dumps(value), LIMITS) == value


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CBORLimits(0, 1, 1)


# --- properties ---------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=16)
    | st.text(max_size=8)
    | st.floats(allow_nan=False)
)
keys = st.integers(-(2**64), 2**64 - 1) | st.text(max_size=6) | st.binary(max_size=6)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)  # fmt: skip


def _items(value: object) -> int:
    if isinstance(value, list):
        return 1 + sum(_items(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(_items(k) + _items(v) for k, v in value.items())
    return 1


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=400)
@given(values, st.booleans())
def test_any_value_within_the_limits_round_trips(value: Any, canonical: bool) -> None:
    data = cbor2.dumps(value, canonical=canonical)
    limits = CBORLimits(len(data), _items(value), max(1, _depth(value)))
    assert loads(data, limits) == value
    if _items(value) > 1:
        smaller = CBORLimits(len(data), _items(value) - 1, max(1, _depth(value)))
        with pytest.raises(CBORDecodeError, match="items"):
            loads(data, smaller)


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_the_typed_error(data: bytes) -> None:
    code = "ok"
    try:
        loads(data, LIMITS)
    except CBORDecodeError as exc:
        code = exc.code
    assert code in ("ok", "protocol.MalformedMessage")


@settings(max_examples=300)
@given(values)
def test_what_the_walk_passes_cbor2_decodes_to_the_same_value(value: Any) -> None:
    data = cbor2.dumps(value)
    cbor.scan(data, CBORLimits(len(data), 10_000, 64))
    decoded = cbor2.loads(data)
    assert decoded == value or (isinstance(value, float) and math.isnan(value))


# --- amplification ------------------------------------------------------------------------------


@contextlib.contextmanager
def walk_budget() -> Iterator[list[int]]:
    """Counts the headers the walk reads; cbor2 must never be reached for refused input."""
    seen = [0]
    real_item = cbor._Walk._item

    def counting(self: cbor._Walk, major: int, info: int) -> tuple[bool, object]:
        seen[0] += 1
        return real_item(self, major, info)

    def unreachable(data: bytes) -> object:
        raise AssertionError("cbor2 was handed input the walk should have refused")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cbor._Walk, "_item", counting)
        patch.setattr(cbor2, "loads", unreachable)
        yield seen


UNITS = [b"\x80", b"\xa0", b"\x00", b"\x40", b"\x9f\xff", b"\xbf\xff", b"\x81\x80", b"\xf6"]


@st.composite
def amplification(draw: st.DrawFn) -> bytes:
    """A container (definite, indefinite, or a map of distinct keys) of many small items, possibly
    under a few wrapping containers, up to 4 MiB."""
    count = draw(st.integers(min_value=8 * (m.MAX_CBOR_ITEMS + 1), max_value=FOUR_MIB // 4))
    unit = draw(st.sampled_from(UNITS))
    wrap = draw(st.sampled_from([b"", b"\x81", b"\xa1\x61x", b"\x81\x81"]))
    kind = draw(st.sampled_from(["definite", "indefinite", "map"]))
    if kind == "map":
        body = b"".join(b"\x1a" + i.to_bytes(4, "big") + unit for i in range(count // 8))
        return wrap + b"\xbf" + body + b"\xff"
    if kind == "indefinite":
        return wrap + b"\x9f" + unit * count + b"\xff"
    return wrap + b"\x9a" + count.to_bytes(4, "big") + unit * count


@settings(max_examples=40)
@given(amplification())
def test_amplification_shapes_are_refused_within_the_item_budget(data: bytes) -> None:
    with walk_budget() as seen, pytest.raises(CBORDecodeError):
        loads(data, m.CBOR_LIMITS)
    assert seen[0] <= m.MAX_CBOR_ITEMS + 1


def test_a_four_mib_frame_of_empty_arrays_is_refused_with_little_memory() -> None:
    count = FOUR_MIB - 16
    frames = [
        b"\x9a" + count.to_bytes(4, "big") + b"\x80" * count,
        b"\x9f" + b"\xa0" * count + b"\xff",
    ]
    for data in frames:
        tracemalloc.start()
        try:
            with walk_budget() as seen, pytest.raises(m.RequestDecodeError) as info:
                m.decode_request(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert info.value.code == "protocol.MalformedMessage"
        assert peak < 256 * 1024  # cbor2 alone peaks near 290 MiB on these
        assert seen[0] <= m.MAX_CBOR_ITEMS + 1


def test_each_caller_gets_its_own_error_family() -> None:
    hostile = b"\x9f" + b"\x80" * 2000 + b"\xff"
    with pytest.raises(RemoteProtocolError) as rpc:
        m.decode_response(hostile)
    assert rpc.value.code == "protocol.MalformedMessage"
    with pytest.raises(MalformedError, match="document is not valid CBOR"):
        parse_document(hostile)

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.proto.errors import LocalProtocolError, RemoteProtocolError
from nitrokms.proto.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        out.append(data[pos : pos + size])
        pos += size
    out.append(data[pos:])
    return out


def test_encode_frame_prefixes_big_endian_length() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_default_limit_is_4_mib() -> None:
    assert DEFAULT_MAX_FRAME_BYTES == 4 * 1024 * 1024


def test_encode_refuses_empty_and_oversized() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"")
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(b"x" * 11, max_frame_bytes=10)
    assert info.value.code == "protocol.FrameTooLarge"


@pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
def test_decoder_whole_bytewise_and_with_trailing_data(mode: str) -> None:
    bodies = [b"one", b"two" * 100, b"\x00"]
    stream = b"".join(encode_frame(b) for b in bodies)
    decoder = FrameDecoder()
    got: list[bytes] = []
    if mode == "bytewise":
        for i in range(len(stream)):
            decoder.feed(stream[i : i + 1])
            got.extend(decoder.frames())
    else:
        decoder.feed(stream + (b"\x00\x00" if mode == "trailing" else b""))
        got.extend(decoder.frames())
    assert got == bodies
    if mode == "trailing":
        assert decoder.buffered_bytes == 2
        with pytest.raises(RemoteProtocolError) as info:
            decoder.feed_eof()
        assert info.value.code == "protocol.TruncatedFrame"
    else:
        decoder.feed_eof()


def test_oversize_header_rejected_before_body_is_buffered() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(struct.pack(">I", 1025))
    assert info.value.code == "protocol.FrameTooLarge"
    assert decoder.buffered_bytes == 0
    # Poisoned: later input is refused with the same error and nothing is buffered.
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"x" * 100)
    assert decoder.buffered_bytes == 0


def test_huge_announced_length_costs_only_the_header() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\xff\xff\xff\xff" + b"y" * 10)
    assert decoder.buffered_bytes == 0


def test_zero_length_frame_is_malformed() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(b"\x00\x00\x00\x00")
    assert info.value.code == "protocol.MalformedFrame"


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 8])
def test_truncated_frame_at_eof(cut: int) -> None:
    frame = encode_frame(b"hello")
    decoder = FrameDecoder()
    decoder.feed(frame[:cut])
    assert decoder.next_frame() is None
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed_eof()
    assert info.value.code == "protocol.TruncatedFrame"


def test_clean_eof_between_frames() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"a"))
    assert list(decoder.frames()) == [b"a"]
    decoder.feed_eof()
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"more")


def test_bad_limits_refused() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        FrameDecoder(max_frame_bytes=0)


@settings(max_examples=300)
@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    st.lists(st.integers(min_value=1, max_value=50), max_size=40),
)
def test_any_chunking_yields_the_same_frames(bodies: list[bytes], sizes: list[int]) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for piece in chunked(stream, sizes):
        decoder.feed(piece)
        got.extend(decoder.frames())
    decoder.feed_eof()
    assert got == bodies


@settings(max_examples=500)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_arbitrary_bytes_raise_only_the_protocol_error(data: bytes, sizes: list[int]) -> None:
    decoder = FrameDecoder(max_frame_bytes=256)
    try:
        for piece in chunked(data, sizes):
            decoder.feed(piece)
            for body in decoder.frames():
                assert 1 <= len(body) <= 256
        decoder.feed_eof()
    except RemoteProtocolError:
        pass
    assert decoder.buffered_bytes <= 256 + 4 + max([len(data), *sizes])


def test_complete_frames_before_a_cut_are_delivered_then_truncation() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"whole") + encode_frame(b"cut")[:5])
    decoder.feed_eof()
    assert decoder.next_frame() == b"whole"
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code == "protocol.TruncatedFrame"

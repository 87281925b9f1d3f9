"""Length-prefixed frames: a 4-byte big-endian body length, then that many bytes of CBOR.

Sans-I/O. `FrameDecoder` takes bytes in any chunking and yields complete frame bodies. The length
header is checked against `max_frame_bytes` before a single body byte is buffered, so a peer that
announces a huge frame costs us four bytes, not four gigabytes. A zero-length frame is an error: no
message encodes to zero bytes, so it can only be garbage or a desynchronised stream.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

from nitrokms.proto.codes import FRAME_TOO_LARGE, MALFORMED_FRAME, TRUNCATED_FRAME
from nitrokms.proto.errors import LocalProtocolError, RemoteProtocolError

HEADER_BYTES: Final = 4
DEFAULT_MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
ABSOLUTE_MAX_FRAME_BYTES: Final = 0xFFFFFFFF

_HEADER = struct.Struct(">I")


def _check_limit(max_frame_bytes: int) -> None:
    if not 1 <= max_frame_bytes <= ABSOLUTE_MAX_FRAME_BYTES:
        raise ValueError(f"max_frame_bytes must be in 1..{ABSOLUTE_MAX_FRAME_BYTES}")


def encode_frame(body: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Prefix `body` with its length. Raises LocalProtocolError if it is empty or too large."""
    _check_limit(max_frame_bytes)
    if not body:
        raise LocalProtocolError("refusing to send an empty frame", code=MALFORMED_FRAME)
    if len(body) > max_frame_bytes:
        raise LocalProtocolError(
            f"frame body of {len(body)} bytes exceeds the {max_frame_bytes}-byte limit",
            code=FRAME_TOO_LARGE,
        )
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: `feed(data)` then iterate `frames()`, or call `next_frame()`.

    After an error the decoder is poisoned: the stream cannot be resynchronised, so every later
    call raises the same error. Callers close the connection.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        _check_limit(max_frame_bytes)
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._expected: int | None = None
        self._error: RemoteProtocolError | None = None
        self._eof = False

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    @property
    def frame_remaining_bytes(self) -> int:
        """Bytes of the frame being read that have not arrived (0 until its header has)."""
        if self._expected is None:
            return 0
        return max(0, HEADER_BYTES + self._expected - len(self._buffer))

    def feed(self, data: bytes) -> None:
        self._raise_if_failed()
        if self._eof:
            raise LocalProtocolError("data fed after end of stream")
        self._buffer += data
        self._parse_header()

    def feed_eof(self) -> None:
        """Mark the end of the stream. Raises RemoteProtocolError if a frame was cut short (here,
        or from `next_frame` once the complete frames before the cut have been taken)."""
        self._raise_if_failed()
        self._eof = True
        if self._buffer and not self._has_complete_frame():
            self._fail_truncated()

    def _fail_truncated(self) -> None:
        self._fail(
            f"stream ended inside a frame ({len(self._buffer)} bytes buffered)", TRUNCATED_FRAME
        )

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None when more data is needed."""
        self._raise_if_failed()
        self._parse_header()
        if not self._has_complete_frame():
            if self._eof and self._buffer:
                self._fail_truncated()
            return None
        assert self._expected is not None
        end = HEADER_BYTES + self._expected
        body = bytes(self._buffer[HEADER_BYTES:end])
        del self._buffer[:end]
        self._expected = None
        return body

    def frames(self) -> Iterator[bytes]:
        while (body := self.next_frame()) is not None:
            yield body

    def _has_complete_frame(self) -> bool:
        return self._expected is not None and len(self._buffer) >= HEADER_BYTES + self._expected

    def _parse_header(self) -> None:
        if self._expected is not None or len(self._buffer) < HEADER_BYTES:
            return
        (length,) = _HEADER.unpack_from(self._buffer)
        if length == 0:
            self._fail("zero-length frame", MALFORMED_FRAME)
        if length > self.max_frame_bytes:
            self._fail(
                f"peer announced a {length}-byte frame; the limit is {self.max_frame_bytes}",
                FRAME_TOO_LARGE,
            )
        self._expected = length

    def _fail(self, message: str, code: str) -> None:
        self._buffer.clear()
        self._error = RemoteProtocolError(message, code=code)
        raise self._error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

"""KMS requests and responses as bytes (AWS JSON 1.1 over HTTP/1.1): no sockets here.

`encode_request` lays out one signed `POST /` with a JSON body; `ResponseReader` reads one response
from bytes fed as they arrive, whole or in any fragments. The reader accepts what a KMS endpoint
sends (a status line, headers, a body framed by Content-Length, by chunked encoding, or by the end
of the connection) within fixed limits, and anything else raises `HTTPResponseError`:
- the status line and headers together at most MAX_HEAD_BYTES (h11's default: far above any AWS
  reply head, small enough that a peer cannot make us buffer without bound), at most MAX_HEADERS;
- a body at most MAX_BODY_BYTES: KMS replies are a few kilobytes (the largest, a 4096-bit
  GenerateDataKeyPair, stays under 16 KiB);
- 1xx interim responses are skipped; any transfer coding other than `chunked` is refused;
- a response followed by stray bytes is returned, but marked not to reuse its connection.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 1024 * 1024
MAX_CHUNK_LINE_BYTES = 1024
CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "TrentService."
NO_BODY_STATUSES = frozenset({204, 304})

Header = tuple[str, str]


class HTTPResponseError(ValueError):
    """The bytes are not an acceptable HTTP/1.1 response."""


def to_json(value: Any) -> Any:
    """Request parameters as JSON values: bytes become base64 text (botocore's blob rule)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def encode_body(params: Mapping[str, Any]) -> bytes:
    """The JSON body botocore would send for `params` (same member order, same escaping)."""
    return json.dumps(to_json(params)).encode("utf-8")


def request_headers(host: str, operation: str) -> list[Header]:
    """The headers that are signed, in botocore's order."""
    return [
        ("Host", host),
        ("X-Amz-Target", TARGET_PREFIX + operation),
        ("Content-Type", CONTENT_TYPE),
    ]


def encode_request(headers: Sequence[Header], body: bytes) -> bytes:
    """One `POST /` request: `headers` (Host first), then Content-Length and the body."""
    lines = [f"{name}: {value}\r\n" for name, value in headers]
    head = f"POST / HTTP/1.1\r\n{''.join(lines)}Content-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    keep_alive: bool = True


class ResponseReader:
    """Reads one HTTP/1.1 response. Feed bytes with `feed` (returns the Response once complete,
    else None) and call `eof()` when the peer closes; both raise HTTPResponseError."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep_alive = True
        self._length: int | None = None  # body bytes still expected (Content-Length framing)
        self._chunked = False
        self._until_close = False
        self._in_head = True
        self._body = bytearray()
        self._trailers = False
        self._chunk_left = 0
        self.received = 0

    def feed(self, data: bytes) -> Response | None:
        self.received += len(data)
        self._buffer += data
        if self._in_head and not self._read_head():
            return None
        return self._read_body()

    def eof(self) -> Response:
        """The peer closed: the response if its body ends with the connection, else an error."""
        if not self._in_head and self._until_close:
            return self._done(keep_alive=False)
        raise HTTPResponseError("the connection closed before the response was complete")

    # --- head ---------------------------------------------------------------------------------

    def _read_head(self) -> bool:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise HTTPResponseError(f"response head longer than {MAX_HEAD_BYTES} bytes")
                return False
            if end + 4 > MAX_HEAD_BYTES:
                raise HTTPResponseError(f"response head longer than {MAX_HEAD_BYTES} bytes")
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            status, version, headers = _parse_head(head)
            if 100 <= status < 200 and status != 101:
                continue  # interim response: the real one follows
            self._start_body(status, version, headers)
            return True

    def _start_body(self, status: int, version: str, headers: dict[str, str]) -> None:
        self._status, self._headers, self._in_head = status, headers, False
        connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        self._keep_alive = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        coding = headers.get("transfer-encoding")
        if status in NO_BODY_STATUSES:
            self._length = 0
        elif coding is not None:
            if coding.strip().lower() != "chunked":
                raise HTTPResponseError(f"unsupported transfer coding {coding[:40]!r}")
            self._chunked = True
        elif "content-length" in headers:
            self._length = _content_length(headers["content-length"])
        else:
            self._until_close, self._keep_alive = True, False

    # --- body ---------------------------------------------------------------------------------

    def _read_body(self) -> Response | None:
        if self._chunked:
            return self._read_chunks()
        if self._until_close:
            self._take(len(self._buffer))
            return None
        assert self._length is not None
        if len(self._buffer) < self._length:
            return None
        extra = len(self._buffer) > self._length  # a peer out of step: never reuse it
        self._take(self._length)
        return self._done(self._keep_alive and not extra)

    def _read_chunks(self) -> Response | None:
        while True:
            if self._trailers:
                return self._read_trailers()
            if self._chunk_left:
                if len(self._buffer) < self._chunk_left + 2:
                    return None
                if self._buffer[self._chunk_left : self._chunk_left + 2] != b"\r\n":
                    raise HTTPResponseError("a chunk does not end with CRLF")
                self._take(self._chunk_left)
                del self._buffer[:2]
                self._chunk_left = 0
            line = self._line()
            if line is None:
                return None
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or len(size_text) > 16 or not _is_hex(size_text):
                raise HTTPResponseError("bad chunk size line")
            self._chunk_left = int(size_text, 16)
            if len(self._body) + self._chunk_left > MAX_BODY_BYTES:
                raise HTTPResponseError(f"response body longer than {MAX_BODY_BYTES} bytes")
            self._trailers = self._chunk_left == 0

    def _read_trailers(self) -> Response | None:
        while (line := self._line()) is not None:
            if not line:
                return self._done(self._keep_alive and not self._buffer)
        return None

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_CHUNK_LINE_BYTES:
                raise HTTPResponseError("chunk line too long")
            return None
        if end > MAX_CHUNK_LINE_BYTES:
            raise HTTPResponseError("chunk line too long")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _take(self, count: int) -> None:
        if len(self._body) + count > MAX_BODY_BYTES:
            raise HTTPResponseError(f"response body longer than {MAX_BODY_BYTES} bytes")
        self._body += self._buffer[:count]
        del self._buffer[:count]

    def _done(self, keep_alive: bool) -> Response:
        return Response(self._status, self._headers, bytes(self._body), keep_alive)


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    version = parts[0].decode("latin-1")
    if len(parts) < 2 or version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HTTPResponseError("bad status line")
    code = parts[1]
    if len(code) != 3 or not code.isdigit():
        raise HTTPResponseError("bad status code")
    if len(lines) - 1 > MAX_HEADERS:
        raise HTTPResponseError(f"more than {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name or b"\t" in name:
            raise HTTPResponseError("bad header line")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        if key == "content-length" and key in headers and headers[key] != text:
            raise HTTPResponseError("conflicting Content-Length headers")
        if key in headers and key != "content-length":
            text = f"{headers[key]}, {text}"
        headers[key] = text
    return int(code), version, headers


def _content_length(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise HTTPResponseError("bad Content-Length")
    length = int(text)
    if length > MAX_BODY_BYTES:
        raise HTTPResponseError(f"response body longer than {MAX_BODY_BYTES} bytes")
    return length


def _is_hex(text: bytes) -> bool:
    return all(c in b"0123456789abcdefABCDEF" for c in text)

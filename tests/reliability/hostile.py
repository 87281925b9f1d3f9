"""A hostile parent's tools: raw frames on the enclave's RPC socket, bit flips, and slowloris.

Blocking sockets keep the attacker simple and its timing explicit; every read has a timeout, and
a connection's outcome is classified as a reply, a typed error reply, or the server closing it.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import cbor2
from nitrokms.proto import messages as m
from nitrokms.proto.errors import RemoteProtocolError
from nitrokms.proto.framing import FrameDecoder, encode_frame

READ_TIMEOUT_S: Final = 20.0


@contextmanager
def raw_connection(path: str, timeout_s: float = READ_TIMEOUT_S) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
        yield sock
    finally:
        sock.close()


def request_frame(request_id: int, body: m.Body) -> bytes:
    return encode_frame(m.encode_request(m.Request(request_id, body)))


@dataclass
class Outcome:
    responses: list[m.Response]
    closed: bool

    def codes(self) -> list[str]:
        return [r.code for r in self.responses if isinstance(r, m.ErrorReply)]


def read_responses(sock: socket.socket, count: int) -> Outcome:
    """Read until `count` responses arrive or the server closes. Raises TimeoutError if the
    server neither answers nor closes within the socket's timeout (a hang)."""
    decoder = FrameDecoder()
    responses: list[m.Response] = []
    while len(responses) < count:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return Outcome(responses, closed=True)
        if not data:
            return Outcome(responses, closed=True)
        decoder.feed(data)
        responses.extend(m.decode_response(frame) for frame in decoder.frames())
    return Outcome(responses, closed=False)


def exchange(path: str, payload: bytes, expected: int, *, half_close: bool = True) -> Outcome:
    """Send raw bytes on a fresh connection (then EOF, so a frame cut short is answered at once)
    and collect up to `expected` responses."""
    with raw_connection(path) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_responses(sock, expected)


def flip_bits(data: bytes, rng: random.Random, flips: int) -> bytes:
    mutated = bytearray(data)
    for _ in range(flips):
        position = rng.randrange(len(mutated) * 8)
        mutated[position // 8] ^= 1 << (position % 8)
    return bytes(mutated)


def decodes_as_request(frame_body: bytes) -> m.Request | None:
    try:
        return m.decode_request(frame_body)
    except RemoteProtocolError:
        return None


# --- resource attacks (issue 15) ------------------------------------------------------------------

AMPLIFICATION_ITEMS: Final = 4 * 1024 * 1024 - 64


def amplification_frame(request_id: int, items: int = AMPLIFICATION_ITEMS) -> bytes:
    """A frame within the 4 MiB limit whose Seal body holds `items` empty CBOR arrays (one byte
    each on the wire, a Python list each once decoded): a well-formed envelope with an id, so the
    enclave answers it `protocol.InvalidField` and, without a decoding bound, pays for the lists
    first."""
    body = (
        b"\xa4"  # map of 4: v, id, op, body
        + b"\x61v\x01"
        + b"\x62id"
        + cbor2.dumps(request_id)
        + b"\x62op\x64Seal"
        + b"\x64body\xa1\x69plaintext"
        + b"\x9a"
        + struct.pack(">I", items)
        + b"\x80" * items
    )
    return struct.pack(">I", len(body)) + body


def open_raw(path: str, timeout_s: float = READ_TIMEOUT_S) -> socket.socket:
    """A connected raw socket the caller closes (for attacks that hold many at once). The connect
    blocks while the listen backlog is full (a unix socket with a timeout would fail at once)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    sock.settimeout(timeout_s)
    return sock


class Flood(threading.Thread):
    """Send `frame(n)` for n = 1, 2, ... on one connection and never read, until `stop` is set or
    the server closes the connection. `sent` counts whole frames; `closed_after` is the time from
    the first frame to the server closing (None while it has not)."""

    def __init__(
        self, path: str, frame: Callable[[int], bytes], *, reconnect: bool = False
    ) -> None:
        super().__init__(name="flood", daemon=True)
        self.path, self.frame, self.reconnect = path, frame, reconnect
        self.stop = threading.Event()
        self.sent = 0
        self.connections = 0
        self.closed_after: float | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            self.connections += 1
            started = time.monotonic()
            try:
                with raw_connection(self.path, timeout_s=0.5) as sock:
                    self._send_until_closed(sock)
            except OSError:
                pass
            if self.closed_after is None and not self.stop.is_set():
                self.closed_after = time.monotonic() - started
            if not self.reconnect:
                return

    def _send_until_closed(self, sock: socket.socket) -> None:
        while not self.stop.is_set():
            data = memoryview(self.frame(self.sent + 1))
            while data and not self.stop.is_set():
                try:
                    data = data[sock.send(data) :]
                except TimeoutError:
                    continue  # the enclave is not reading: keep pushing until told to stop
            self.sent += 1

"""A hostile parent's tools: raw frames on the enclave's RPC socket, bit flips, and slowloris.

Blocking sockets keep the attacker simple and its timing explicit; every read has a timeout, and
a connection's outcome is classified as a reply, a typed error reply, or the server closing it.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

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

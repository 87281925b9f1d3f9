"""A scripted plain-HTTP KMS stand-in for retry and error-mapping tests.

Each request takes the next scripted answer: a (status, JSON body) pair, a `Raw` answer (any
status, body bytes and headers), or HANG (hold the request until the server stops, to provoke a
read timeout); every request is kept (`received`). A success body may contain the marker
FOR_RECIPIENT, replaced by a CiphertextForRecipient for the request's Recipient: the tests' attestor
returns the SPKI itself as the "document", so no COSE parsing is needed here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nitrokms.sim.kms.cms_encoder import encrypt_for_recipient

HANG = "hang"
FOR_RECIPIENT = "__for_recipient__"


@dataclass(frozen=True)
class Raw:
    """An answer given byte for byte: status, body and extra headers (Content-Length is added)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, Any]] | Raw | str


def spki_attestor(*, public_key: bytes) -> bytes:
    return public_key


def kms_error(code: str, message: str = "scripted", status: int = 400) -> Answer:
    return status, {"__type": code, "message": message}


class ScriptedKMS:
    def __init__(self, script: Sequence[Answer], plaintext: bytes = b"k" * 32) -> None:
        self.script = list(script)
        self.plaintext = plaintext
        self.targets: list[str] = []
        self.received: list[Received] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _next(self, received: Received) -> Answer:
        with self._lock:
            self.targets.append(received.headers.get("X-Amz-Target", ""))
            self.received.append(received)
            return self.script.pop(0) if self.script else (200, {})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                answer = outer._next(Received(dict(self.headers.items()), raw))
                if answer == HANG:
                    outer.release.wait()
                    return
                if isinstance(answer, Raw):
                    self.send_response(answer.status)
                    for name, value in answer.headers:
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                    return
                assert not isinstance(answer, str)
                status, reply = answer
                reply = dict(reply)
                if reply.get("CiphertextForRecipient") == FOR_RECIPIENT:
                    spki = base64.b64decode(body["Recipient"]["AttestationDocument"])
                    blob = encrypt_for_recipient(outer.plaintext, spki)
                    reply["CiphertextForRecipient"] = base64.b64encode(blob).decode()
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def scripted_kms(script: Sequence[Answer], **kwargs: Any) -> Iterator[ScriptedKMS]:
    fake = ScriptedKMS(script, **kwargs)
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        fake.server.shutdown()
        fake.server.server_close()
        thread.join()


FOR_RECIPIENT_REPLY = b"__for_recipient_reply__"


class OneShotServer:
    """Answers one request per connection, then closes it without saying so (no
    `Connection: close`), as a server whose idle timeout fired does. `reply` is sent byte for
    byte, or FOR_RECIPIENT_REPLY: a 200 carrying a CiphertextForRecipient for the request."""

    def __init__(self, reply: bytes, count: int | None = None) -> None:
        self.reply, self.count = reply, count
        self.served = 0
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def wait_closed(self) -> bool:
        return self.closed.wait(10)

    def _serve(self) -> None:
        while self.count is None or self.served < self.count:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                request = _read_request(conn)
                if request is not None:
                    conn.sendall(self._answer(request))
                    self.served += 1
            self.closed.set()

    def _answer(self, body: bytes) -> bytes:
        if self.reply != FOR_RECIPIENT_REPLY:
            return self.reply
        spki = base64.b64decode(json.loads(body)["Recipient"]["AttestationDocument"])
        blob = base64.b64encode(encrypt_for_recipient(b"o" * 16, spki)).decode()
        data = json.dumps({"CiphertextForRecipient": blob}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )  # fmt: skip
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return body


@contextmanager
def one_shot_server(reply: bytes, count: int | None = None) -> Iterator[OneShotServer]:
    server = OneShotServer(reply, count)
    server.thread.start()
    try:
        yield server
    finally:
        with contextlib.suppress(OSError):
            server.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        server.listener.close()
        server.thread.join(10)

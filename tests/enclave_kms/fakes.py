"""A scripted plain-HTTP KMS stand-in for retry and error-mapping tests.

Each request takes the next scripted answer: a (status, JSON body) pair, or HANG (hold the
request until the server stops, to provoke a read timeout). A success body may contain the marker
FOR_RECIPIENT, replaced by a CiphertextForRecipient for the request's Recipient: the tests' attestor
returns the SPKI itself as the "document", so no COSE parsing is needed here.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nitrokms.sim.kms.cms_encoder import encrypt_for_recipient

HANG = "hang"
FOR_RECIPIENT = "__for_recipient__"
Answer = tuple[int, dict[str, Any]] | str


def spki_attestor(*, public_key: bytes) -> bytes:
    return public_key


def kms_error(code: str, message: str = "scripted", status: int = 400) -> Answer:
    return status, {"__type": code, "message": message}


class ScriptedKMS:
    def __init__(self, script: Sequence[Answer], plaintext: bytes = b"k" * 32) -> None:
        self.script = list(script)
        self.plaintext = plaintext
        self.targets: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _next(self, target: str) -> Answer:
        with self._lock:
            self.targets.append(target)
            return self.script.pop(0) if self.script else (200, {})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = outer._next(self.headers.get("X-Amz-Target", ""))
                if answer == HANG:
                    outer.release.wait()
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
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        fake.server.shutdown()
        fake.server.server_close()
        thread.join()

"""The HTTPS edge of the local KMS and `LocalKMS`, the object tests and the CLI run.

A threading HTTP/1.1 server (keep-alive, one thread per connection) whose TLS handshake runs in
the connection's thread, so a slow client never blocks `accept`. The body size is checked against
Content-Length before anything is read. `stop()` stops accepting, closes idle keep-alive
connections, lets requests in flight finish (up to STOP_GRACE_S) and then closes the rest.

Every reply carries `x-nitrokms-server-time-ms`: the time spent handling the request (from the
body read to the reply built: JSON, SigV4, policy, attestation, CMS), so a benchmark can subtract
"time inside KMS" from what a client saw. With `log_timing` each request also logs one INFO line
`server-time op=<X-Amz-Target operation> status=<code> ms=<float>` for callers that cannot see
the reply headers (the enclave consumes them).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from nitrokms.sim.kms.auth import Credential, ReceivedRequest, SigV4Verifier
from nitrokms.sim.kms.exceptions import (
    KMSServiceError,
    RequestEntityTooLargeException,
    ValidationException,
)
from nitrokms.sim.kms.faults import Fault, FaultPlan
from nitrokms.sim.kms.models import KeyStore
from nitrokms.sim.kms.recipient import RecipientReader
from nitrokms.sim.kms.responses import JSON_CONTENT_TYPE, KMSApplication, Response, request_id
from nitrokms.sim.kms.tls import TLSFiles, prepare

log = logging.getLogger("nitrokms.sim.kms")

MAX_BODY_BYTES = 512 * 1024
SERVER_TIME_HEADER = "x-nitrokms-server-time-ms"
LISTEN_BACKLOG = 1024
IDLE_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
DEFAULT_ACCOUNT = "111122223333"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default listen backlog is 5: a burst of new connections (16 clients
    # opening their pools at once) overflowed it, and each dropped SYN cost a 1 s retransmit.
    request_queue_size = LISTEN_BACKLOG
    faults: FaultPlan | None = None

    def __init__(
        self,
        address: tuple[str, int],
        app: KMSApplication,
        tls: ssl.SSLContext,
        log_timing: bool = False,
    ) -> None:
        self.app = app
        self.log_timing = log_timing
        self.stopping = False
        self._tls = tls
        self._open: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()
        self._state = threading.Condition()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        wrapped = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._state:
            self._open.add(wrapped)
        return wrapped, addr

    def shutdown_request(self, request: Any) -> None:
        with self._state:
            self._open.discard(request)
        super().shutdown_request(request)

    @contextlib.contextmanager
    def busy(self, sock: socket.socket) -> Iterator[None]:
        """Mark a connection as answering a request, so `drain` lets it finish."""
        with self._state:
            self._busy.add(sock)
        try:
            yield
        finally:
            with self._state:
                self._busy.discard(sock)
                self._state.notify_all()

    def wait_stopping(self, timeout_s: float) -> bool:
        with self._state:
            return self._state.wait_for(lambda: self.stopping, timeout=timeout_s)

    def drain(self, timeout_s: float) -> None:
        """Close idle keep-alive connections; give in-flight requests `timeout_s` to finish."""
        with self._state:
            self.stopping = True
            self._state.notify_all()
            self._close(self._open - self._busy)
            self._state.wait_for(lambda: not self._busy, timeout=timeout_s)
            self._close(set(self._open))

    @staticmethod
    def _close(sockets: set[socket.socket]) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nitrokms-local-kms"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # one write per response; handle_one_request flushes it
    server: _Server

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", self.client_address, exc)
            self.close_connection = True
            raise

    def handle(self) -> None:
        with contextlib.suppress(ssl.SSLError, ConnectionError, TimeoutError):
            super().handle()

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _serve(self, method: str) -> None:
        try:
            body = self._read_body()
        except KMSServiceError as exc:
            self.close_connection = True
            self._reply(Response(exc.status, exc.to_json()))
            return
        request = ReceivedRequest(method, self.path, list(self.headers.items()), body)
        if self.server.faults is not None and self._inject(request):
            return
        with self.server.busy(self.connection):
            started = time.perf_counter()
            response = self.server.app.handle(request)
            server_ms = (time.perf_counter() - started) * 1000
            self.close_connection = self.close_connection or self.server.stopping
            self._reply(response, server_ms)
            self.wfile.flush()
        if self.server.log_timing:
            operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2] or "-"
            log.info("server-time op=%s status=%d ms=%.3f", operation, response.status, server_ms)

    def _inject(self, request: ReceivedRequest) -> bool:
        """Apply the fault plan's next fault; True if it replaced the normal reply."""
        assert self.server.faults is not None
        target = request.header("X-Amz-Target") or ""
        fault: Fault | None = self.server.faults.take(target.removeprefix("TrentService."))
        if fault is None:
            return False
        if fault.delay_s:
            time.sleep(fault.delay_s)
        if fault.reset:
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return True
        if fault.status is not None:
            self._reply(Response(fault.status, fault.error_body()))
            self.wfile.flush()
            return True
        return False

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise ValidationException("Transfer-Encoding is not supported; send Content-Length")
        raw = self.headers.get("Content-Length", "0")
        if not raw.isdigit():
            raise ValidationException("Content-Length must be a decimal number")
        length = int(raw)
        if length > MAX_BODY_BYTES:
            raise RequestEntityTooLargeException(
                f"Request body of {length} bytes exceeds the {MAX_BODY_BYTES}-byte limit"
            )
        body = self.rfile.read(length)
        if len(body) != length:
            raise ValidationException("The request body ended early")
        return body

    def _reply(self, response: Response, server_ms: float | None = None) -> None:
        payload = response.encode()
        self.send_response(response.status)
        self.send_header("Content-Type", JSON_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amzn-RequestId", request_id())
        if server_ms is not None:
            self.send_header(SERVER_TIME_HEADER, f"{server_ms:.3f}")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)


class LocalKMS:
    """An in-process local KMS: `start()` returns its URL, `stop()` ends it; a context manager.

    `attestation_root` is the PEM (or DER) root that Recipient documents must chain to;
    `log_timing` logs each request's handling time (see the module docstring).
    `fault_plan` (a JSON file, see `faults.py`) scripts faults for the requests to come.
    `clock` is the key store's time (rotation schedules), for tests that move it.
    """

    def __init__(
        self,
        state_dir: Path,
        credentials: Sequence[Credential],
        attestation_root: bytes | None,
        *,
        region: str = "us-east-1",
        account: str = DEFAULT_ACCOUNT,
        host: str = "127.0.0.1",
        port: int = 0,
        max_document_age: timedelta | None = None,
        attestation_clock: Callable[[], datetime] | None = None,
        encrypt_for_recipient: Callable[[bytes, bytes], bytes] | None = None,
        log_timing: bool = False,
        fault_plan: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not credentials:
            raise ValueError("the local KMS needs at least one credential")
        self.state_dir = Path(state_dir)
        self.region = region
        self._address = (host, port)
        self._log_timing = log_timing
        self.store = KeyStore(self.state_dir, region=region, account=account, clock=clock)
        self.app = KMSApplication(
            self.store,
            SigV4Verifier(credentials, region=region),
            RecipientReader(attestation_root, max_age=max_document_age, clock=attestation_clock),
            encrypt_for_recipient=encrypt_for_recipient,
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.tls: TLSFiles | None = None
        self.faults = None if fault_plan is None else FaultPlan(fault_plan)

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "ca.pem"

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the local KMS is not running")
        host = self._address[0]
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}:{self._server.server_port}"

    def start(self) -> str:
        """Bind, start serving in a background thread and return the endpoint URL."""
        if self._server is not None:
            return self.url
        self.tls = prepare(self.state_dir, self.region)
        self._server = _Server(self._address, self.app, self.tls.server_context(), self._log_timing)
        self._server.faults = self.faults
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-kms", daemon=True
        )
        self._thread.start()
        log.info("local KMS listening on %s (region %s)", self.url, self.region)
        return self.url

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.drain(STOP_GRACE_S)
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> LocalKMS:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

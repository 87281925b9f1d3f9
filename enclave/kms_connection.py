"""Kept-alive TLS connections to KMS for the enclave's own calls, and one request/response on them.

A `KMSTransport` reaches the KMS endpoint one of three ways: straight through a stream to the
parent's relay (`relay=`, vsock in production: no CONNECT listener, no loopback TCP hop), through
an HTTP CONNECT proxy (`proxy=`, the in-enclave listener), or over TCP to the endpoint itself
(tests against a local KMS). TLS always ends here, verified against the configured CA bundle with
the endpoint's host name in SNI and in the host-name check, so the relay only ever sees ciphertext.

Idle connections are kept (most recently used first, at most `max_idle`) and reused; one that the
peer has closed meanwhile is noticed before reuse (as urllib3 does) and replaced. A connection that
fails during a request is closed, and the failure counts as one attempt of the caller's retries,
as it did under botocore. Failures raise `TransportError` subclasses, which `enclave.kms` maps to
KMS errors.
`stats()` counts TLS handshakes, requests and reuses.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import weakref
from dataclasses import dataclass

from nitrokms.enclave.kms_wire import HTTPResponseError, Response, ResponseReader
from nitrokms.proto.addresses import Address, AddressError
from nitrokms.transport.sockets import connect_socket

READ_BYTES = 64 * 1024
MAX_PROXY_REPLY_BYTES = 8 * 1024
HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH


class TransportError(Exception):
    """KMS could not be reached or did not answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectError(TransportError):
    """No connection: refused, timed out, proxy refusal, relay absent, TLS handshake cut."""


class TLSVerificationError(TransportError):
    """The peer's certificate or host name did not verify."""


class ExchangeError(TransportError):
    """The connection failed or timed out during the request, or the response was malformed."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool = True


@dataclass(frozen=True)
class TransportStats:
    handshakes: int
    connections: int
    requests: int
    reused: int
    idle: int


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Verifying client context: `ca_bundle`, or the bundle botocore would use by default."""
    if ca_bundle is None:
        from botocore.httpsession import get_cert_path  # noqa: PLC0415 - only for the default

        ca_bundle = get_cert_path(True)
    context = ssl.create_default_context(cafile=ca_bundle)
    context.options |= ssl.OP_NO_COMPRESSION
    return context


class _Connection:
    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def dropped(self) -> bool:
        """Whether the idle peer has closed (or sent something unasked): then do not reuse."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class KMSTransport:
    """Sends one KMS request at a time per connection; thread-safe across connections."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        relay: Address | None = None,
        proxy: tuple[str, int] | None = None,
        ca_bundle: str | None = None,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_idle: int,
    ) -> None:
        if relay is not None and proxy is not None:
            raise ValueError("give a relay or a proxy, not both")
        self.endpoint, self.relay, self.proxy = endpoint, relay, proxy
        self.connect_timeout_s, self.read_timeout_s = connect_timeout_s, read_timeout_s
        self.max_idle = max_idle
        self._context = tls_context(ca_bundle) if endpoint.tls else None
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._idle)  # no socket outlives a dropped transport
        self._handshakes = self._connections = self._requests = self._reused = 0

    def __repr__(self) -> str:
        route = f"relay={self.relay}" if self.relay else f"proxy={self.proxy}"
        return f"KMSTransport({self.endpoint.host}:{self.endpoint.port}, {route})"

    def stats(self) -> TransportStats:
        with self._lock:
            return TransportStats(
                self._handshakes, self._connections, self._requests, self._reused, len(self._idle)
            )

    def close(self) -> None:
        with self._lock:
            idle = self._idle[:]
            self._idle.clear()
        _close_all(idle)

    def exchange(self, request: bytes) -> Response:
        """Send `request` and read the response. Raises TransportError."""
        connection = self._checkout()
        if connection is not None:
            return self._exchange(connection, request, reused=True)
        return self._exchange(self._connect(), request, reused=False)

    # --- one exchange -----------------------------------------------------------------------

    def _exchange(self, connection: _Connection, request: bytes, *, reused: bool) -> Response:
        with self._lock:
            self._requests += 1
            self._reused += reused
        reader = ResponseReader()
        try:
            connection.sock.sendall(request)
            response = None
            while response is None:
                data = connection.sock.recv(READ_BYTES)
                response = reader.feed(data) if data else reader.eof()
        except (OSError, HTTPResponseError) as exc:
            connection.close()
            raise _exchange_error(exc, received=reader.received) from None
        if response.keep_alive:
            self._checkin(connection)
        else:
            connection.close()
        return response

    # --- the pool -----------------------------------------------------------------------------

    def _checkout(self) -> _Connection | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                connection = self._idle.pop()
            if not connection.dropped():
                return connection
            connection.close()

    def _checkin(self, connection: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(connection)
                return
        connection.close()

    # --- new connections ----------------------------------------------------------------------

    def _connect(self) -> _Connection:
        sock = self._open_stream()
        try:
            if self.proxy is not None:
                _tunnel(sock, self.endpoint)
            if self._context is not None:
                sock = self._handshake(sock)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.read_timeout_s)  # from here on, per send and per read
        with self._lock:
            self._connections += 1
        return _Connection(sock)

    def _open_stream(self) -> socket.socket:
        target = self.relay or (
            _TcpTarget(*self.proxy)
            if self.proxy
            else _TcpTarget(self.endpoint.host, self.endpoint.port)
        )
        try:
            if isinstance(target, _TcpTarget):
                sock = socket.create_connection(
                    (target.host, target.port), timeout=self.connect_timeout_s
                )
            else:
                sock = connect_socket(target, self.connect_timeout_s)
        except (OSError, AddressError) as exc:
            raise ConnectError(f"cannot connect to {target}: {_reason(exc)}") from None
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as urllib3 does
        sock.settimeout(self.connect_timeout_s)
        return sock

    def _handshake(self, sock: socket.socket) -> socket.socket:
        assert self._context is not None
        try:
            tls = self._context.wrap_socket(sock, server_hostname=self.endpoint.host)
        except ssl.SSLCertVerificationError as exc:
            raise TLSVerificationError(_verification_problem(exc, self.endpoint.host)) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"TLS handshake cut: {_reason(exc)}") from None
        with self._lock:
            self._handshakes += 1
        return tls


def _close_all(connections: list[_Connection]) -> None:
    for connection in connections:
        connection.close()
    connections.clear()


@dataclass(frozen=True)
class _TcpTarget:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _tunnel(sock: socket.socket, endpoint: Endpoint) -> None:
    """CONNECT through an HTTP proxy; raises ConnectError unless it answers 2xx."""
    authority = f"{endpoint.host}:{endpoint.port}"
    try:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = sock.recv(1)  # byte by byte: what follows the head belongs to TLS
            if not data or len(reply) >= MAX_PROXY_REPLY_BYTES:
                raise ConnectError("the proxy closed the connection or sent no reply head")
            reply += data
    except OSError as exc:
        raise ConnectError(f"proxy failed: {_reason(exc)}") from None
    status = reply.split(b"\r\n", 1)[0]
    parts = status.split(b" ", 2)
    if len(parts) < 2 or not parts[1].startswith(b"2"):
        raise ConnectError(f"proxy refused the tunnel: {status[:100].decode('latin-1')}")


def _exchange_error(exc: BaseException, *, received: int) -> ExchangeError:
    if isinstance(exc, TimeoutError):
        return ExchangeError("read timeout: KMS did not answer in time")
    if not received:
        reason = "closed" if isinstance(exc, HTTPResponseError) else _reason(exc)
        return ExchangeError(f"connection lost before KMS answered: {reason}")
    if isinstance(exc, HTTPResponseError):
        return ExchangeError(f"malformed response from KMS: {exc}")
    return ExchangeError(f"connection lost during the response: {_reason(exc)}")


def _verification_problem(exc: ssl.SSLCertVerificationError, host: str) -> str:
    if exc.verify_code == HOSTNAME_MISMATCH:
        return f"hostname {host!r} doesn't match the certificate"
    return str(exc.verify_message or exc.reason or exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

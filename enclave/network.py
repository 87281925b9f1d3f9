"""In-enclave networking: the loopback interface and the HTTP CONNECT listener for KMS.

An enclave has no network, only vsock, and its init leaves `lo` down. botocore inside the enclave
reaches KMS through its own proxy support: `Config(proxies={"https": "http://127.0.0.1:PORT"})`
makes it send `CONNECT kms.<region>.amazonaws.com:443` to `ConnectProxy`, which accepts only that
target, opens a stream to the parent relay (vsock CID 3 port 8000 by default; a unix socket in
tests) and pipes bytes both ways. botocore then runs TLS through the tunnel with the real hostname
in SNI and verifies the certificate and hostname inside the enclave, so the parent stays a dumb pipe
that sees only ciphertext. This needs no /etc/hosts edits and no DNS inside the enclave, and no
re-signing or TLS termination anywhere. The service's own KMS calls (`enclave.kms`) do not use the
listener: they run TLS over a stream they open to the relay themselves, one hop fewer.

`ConnectProxy` is an asyncio server for a service that runs its own loop; `ThreadedConnectProxy`
runs one in a thread with its own loop (`start()` returns once it listens).

`KMSNetworkPath` is the one call that gives code inside the enclave its way to KMS: loopback up,
the CONNECT listener, and the botocore settings that use it. The service awaits `start()` on its
own loop; application code writes `with kms_network_path() as path:` and creates boto3 clients
with `**path.client_kwargs()` (or sets `path.botocore_config()` as a session's default).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

from nitrokms.enclave.errors import NetworkError
from nitrokms.proto.addresses import Address, VsockAddress, parse_address
from nitrokms.proto.errors import AddressError
from nitrokms.transport.sockets import connect_protocol
from nitrokms.transport.splice import Splice

log = logging.getLogger(__name__)

DEFAULT_RELAY = VsockAddress(3, 8000)
ENV_RELAY = "NITROKMS_KMS_RELAY"
"""Overrides DEFAULT_RELAY for `kms_network_path` (nitro-cli gives an enclave no environment, so
this serves simulated worlds and tests; the relay is untrusted either way: TLS ends here)."""
KMS_PORT = 443
MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT_S = 10.0
UPSTREAM_CONNECT_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 256
START_TIMEOUT_S = 10.0
IP_COMMAND_TIMEOUT_S = 5.0

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")


# --- loopback ------------------------------------------------------------------------------------


def _interface_flags(sock: socket.socket, name: str) -> int:
    request = _IFREQ.pack(name.encode(), 0)
    flags: int = _IFREQ.unpack(fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))[1]
    return flags


def interface_is_up(name: str = "lo") -> bool:
    """Whether `name` has IFF_UP. Raises NetworkError when the interface does not exist."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            return bool(_interface_flags(sock, name) & IFF_UP)
    except OSError as exc:
        raise NetworkError(f"cannot read the flags of interface {name}: {exc.strerror}") from None


def _set_up_with_ioctl(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = _interface_flags(sock, name)
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | IFF_UP))


def _set_up_with_ip(ip: str, name: str) -> bool:
    try:
        result = subprocess.run(
            [ip, "link", "set", name, "up"],
            capture_output=True,
            timeout=IP_COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def bring_up_loopback(name: str = "lo", *, use_ip_command: bool = True) -> bool:
    """Bring `name` up, with `ip link set NAME up` when `ip` exists, else SIOCSIFFLAGS.

    Returns False when it was already up (nothing done), True when it brought it up. Raises
    NetworkError when it cannot (no such interface, or no CAP_NET_ADMIN).
    """
    if interface_is_up(name):
        return False
    ip = shutil.which("ip") if use_ip_command else None
    if ip is None or not _set_up_with_ip(ip, name):
        try:
            _set_up_with_ioctl(name)
        except OSError as exc:
            hint = " (needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
            raise NetworkError(f"cannot bring {name} up: {exc.strerror}{hint}") from None
    if not interface_is_up(name):
        raise NetworkError(f"{name} is still down after bringing it up")
    return True


def kms_endpoint(region: str, endpoint_url: str | None = None) -> tuple[str, int]:
    """The (host, port) botocore will CONNECT to for KMS: `endpoint_url`'s, or the regional one
    (`kms.<region>.amazonaws.com`, `.amazonaws.com.cn` for China regions). Raises NetworkError
    for an endpoint URL that is not https://HOST[:PORT]."""
    if endpoint_url is None:
        suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        return f"kms.{region}.{suffix}", KMS_PORT
    try:
        parts = urlsplit(endpoint_url)
        port = parts.port or KMS_PORT
    except ValueError as exc:
        raise NetworkError(f"bad KMS endpoint URL {endpoint_url!r}: {exc}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise NetworkError(f"KMS endpoint URL must be https://HOST[:PORT], not {endpoint_url!r}")
    return parts.hostname, port


# --- CONNECT request parsing (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class ConnectDecision:
    """What to answer a proxy request: `status` 200 means tunnel to the relay."""

    status: int
    reason: str


def decide_connect(head: bytes, allowed_host: str, allowed_port: int = KMS_PORT) -> ConnectDecision:
    """Judge one request head (request line and headers, CRLF CRLF included)."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return ConnectDecision(400, "Bad Request")
    method, target = parts[0], parts[1]
    if method != b"CONNECT":
        return ConnectDecision(405, "Method Not Allowed")
    host, sep, port = target.decode("ascii", "replace").rpartition(":")
    if not sep or not port.isdigit():
        return ConnectDecision(400, "Bad Request")
    if host.rstrip(".").lower() != allowed_host.rstrip(".").lower() or int(port) != allowed_port:
        return ConnectDecision(403, "Forbidden")
    return ConnectDecision(200, "Connection established")


def _status_line(decision: ConnectDecision) -> bytes:
    extra = b"" if decision.status == 200 else b"Content-Length: 0\r\nConnection: close\r\n"
    return f"HTTP/1.1 {decision.status} {decision.reason}\r\n".encode() + extra + b"\r\n"


# --- the listener --------------------------------------------------------------------------------


class ConnectProxy:
    """An asyncio HTTP CONNECT listener that tunnels only `kms_host:kms_port` to the relay.

    Each accepted connection starts as a `_HeadReader` protocol that buffers the request head
    (bounded, with a timeout); a tunnel then splices the client's transport to the relay's with
    `nitrokms.transport.splice.Splice`, so tunnelled bytes go from one transport to the other in
    the same callback, with no stream buffers or coroutine per chunk.
    """

    def __init__(
        self,
        kms_host: str,
        *,
        relay: Address = DEFAULT_RELAY,
        listen_host: str = "127.0.0.1",
        port: int = 0,
        kms_port: int = KMS_PORT,
        max_connections: int = MAX_CONNECTIONS,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        connect_timeout_s: float = UPSTREAM_CONNECT_TIMEOUT_S,
    ) -> None:
        self.kms_host, self.kms_port, self.relay = kms_host, kms_port, relay
        self.listen_host, self._requested_port = listen_host, port
        self.max_connections = max_connections
        self.header_timeout_s, self.connect_timeout_s = header_timeout_s, connect_timeout_s
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def proxy_url(self) -> str:
        return f"http://{self.listen_host}:{self.port}"

    async def start(self) -> None:
        """Listen. Raises NetworkError if the address cannot be bound."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _HeadReader(self), self.listen_host, self._requested_port
            )
        except OSError as exc:
            raise NetworkError(
                f"cannot listen on {self.listen_host}:{self._requested_port}: {exc.strerror}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and cut every tunnel."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in list(self._clients):
            transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _admit(self, transport: asyncio.Transport) -> bool:
        if len(self._clients) >= self.max_connections:
            return False
        self._clients.add(transport)
        return True

    def _tunnel(self, transport: asyncio.Transport, head: bytes, rest: bytes) -> None:
        """Judge the head; for a CONNECT to KMS move the transport into a splice at once and
        connect the relay in a task."""
        decision = decide_connect(head, self.kms_host, self.kms_port)
        if decision.status != 200:
            log.warning("refused proxy request: %s", head.split(b"\r\n", 1)[0][:200])
            _refuse(transport, decision)
            return
        splice = Splice()
        transport.set_protocol(splice.a)
        splice.a.connection_made(transport)
        task = asyncio.get_running_loop().create_task(self._serve(splice, transport, rest))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, splice: Splice, transport: asyncio.Transport, rest: bytes) -> None:
        try:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    await connect_protocol(self.relay, lambda: splice.b)
            except (OSError, TimeoutError, AddressError) as exc:
                log.warning("relay %s unreachable: %s", self.relay, exc)
                _refuse(transport, ConnectDecision(502, "Bad Gateway"))
                return
            if splice.a.lost or transport.is_closing():
                splice.abort()
                return
            transport.write(_status_line(ConnectDecision(200, "Connection established")))
            splice.start(rest)
            await splice.finished
        except asyncio.CancelledError:
            splice.abort()  # close() cut this tunnel
            raise
        finally:
            self._clients.discard(transport)


def _refuse(transport: asyncio.Transport, decision: ConnectDecision) -> None:
    if not transport.is_closing():
        transport.write(_status_line(decision))
        transport.close()


class _HeadReader(asyncio.Protocol):
    """Reads one request head (at most MAX_HEADER_BYTES, within the header timeout), then hands
    the transport to the proxy; anything else gets 400 and the connection is closed."""

    def __init__(self, proxy: ConnectProxy) -> None:
        self.proxy = proxy
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.proxy._admit(self.transport):
            _refuse(self.transport, ConnectDecision(503, "Service Unavailable"))
            return
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.proxy.header_timeout_s, self._bad_request)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                self._bad_request()
            return
        end += 4
        if end > MAX_HEADER_BYTES:
            self._bad_request()
            return
        self._stop_timer()
        self.transport.pause_reading()
        head, rest = bytes(self.buffer[:end]), bytes(self.buffer[end:])
        self.buffer.clear()
        self.proxy._tunnel(self.transport, head, rest)

    def eof_received(self) -> bool:
        self._bad_request()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self.transport is not None:
            self.proxy._clients.discard(self.transport)

    def _bad_request(self) -> None:
        self._stop_timer()
        if self.transport is not None:
            _refuse(self.transport, ConnectDecision(400, "Bad Request"))

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class ThreadedConnectProxy:
    """A ConnectProxy on its own event loop in a daemon thread."""

    def __init__(self, proxy: ConnectProxy) -> None:
        self._proxy = proxy
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return self._proxy.port

    @property
    def proxy_url(self) -> str:
        return self._proxy.proxy_url

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start and return once listening. Raises NetworkError if it cannot listen."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="kms-connect-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise NetworkError("the KMS CONNECT listener did not start in time")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error

    def stop(self) -> None:
        """Stop listening, cut tunnels and join the thread. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        thread.join()

    def __enter__(self) -> ThreadedConnectProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self._proxy.start()
        except NetworkError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self._proxy.close()


# --- the one call: the whole path for code in the enclave ----------------------------------------


class KMSNetworkPath:
    """Loopback, the CONNECT listener to the relay, and the botocore settings that use it.

    `region` defaults to $AWS_REGION or $AWS_DEFAULT_REGION; `endpoint_url` to
    $AWS_ENDPOINT_URL_KMS, else the regional endpoint; `relay` to $NITROKMS_KMS_RELAY, else vsock
    CID 3 port 8000 (the parent). Raises NetworkError for a missing region or a bad endpoint or
    relay address.
    """

    def __init__(
        self,
        region: str | None = None,
        *,
        endpoint_url: str | None = None,
        relay: Address | str | None = None,
        listen_port: int = 0,
    ) -> None:
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            raise NetworkError("no AWS region: pass region or set AWS_REGION")
        self.region = region
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_KMS") or None
        self.kms_host, self.kms_port = kms_endpoint(region, self.endpoint_url)
        self.relay = _relay_address(relay)
        self.proxy = ConnectProxy(
            self.kms_host, relay=self.relay, port=listen_port, kms_port=self.kms_port
        )
        self._thread: ThreadedConnectProxy | None = None

    def __repr__(self) -> str:
        return f"KMSNetworkPath({self.kms_host}:{self.kms_port} via {self.relay})"

    @property
    def proxy_url(self) -> str:
        """The CONNECT listener's URL (`http://127.0.0.1:PORT`), once started."""
        if not self.proxy.port:
            raise NetworkError("the KMS network path is not started")
        return self.proxy.proxy_url

    async def start(self) -> None:
        """Bring loopback up and listen, on the running loop. Raises NetworkError."""
        if bring_up_loopback():
            log.info("brought the loopback interface up")
        await self.proxy.start()

    async def close(self) -> None:
        await self.proxy.close()

    def start_in_thread(self) -> KMSNetworkPath:
        """Bring loopback up and listen on a loop in a daemon thread (for synchronous code).
        Returns self. Raises NetworkError."""
        if self._thread is None:
            bring_up_loopback()
            thread = ThreadedConnectProxy(self.proxy)
            thread.start()
            self._thread = thread
        return self

    def stop(self) -> None:
        """Stop a listener started by `start_in_thread` (tunnels are cut). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()

    def __enter__(self) -> KMSNetworkPath:
        return self.start_in_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def botocore_config(self, **options: Any) -> Any:
        """A `botocore.config.Config` whose HTTPS goes through the listener (plus `options`)."""
        from botocore.config import Config  # noqa: PLC0415 - botocore is slow to import

        return Config(proxies={"https": self.proxy_url}, **options)

    def client_kwargs(self, **options: Any) -> dict[str, Any]:
        """Keyword arguments for `boto3.client("kms", ...)` / `session.create_client("kms", ...)`:
        region, endpoint (when not the regional default) and the proxied config."""
        kwargs: dict[str, Any] = {"region_name": self.region, "config": self.botocore_config()}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        kwargs.update(options)
        return kwargs


def _relay_address(relay: Address | str | None) -> Address:
    if relay is None:
        relay = os.environ.get(ENV_RELAY) or DEFAULT_RELAY
    if isinstance(relay, str):
        try:
            return parse_address(relay)
        except AddressError as exc:
            raise NetworkError(f"bad KMS relay address {relay!r}: {exc.message}") from None
    return relay


def kms_network_path(
    region: str | None = None,
    *,
    endpoint_url: str | None = None,
    relay: Address | str | None = None,
) -> KMSNetworkPath:
    """Start the enclave's path to KMS (loopback, CONNECT listener in a thread) and return it;
    use it as a context manager or call `stop()`. See KMSNetworkPath for the defaults."""
    return KMSNetworkPath(region, endpoint_url=endpoint_url, relay=relay).start_in_thread()

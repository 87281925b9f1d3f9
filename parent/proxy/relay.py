"""The relay: accept a client, connect upstream, copy bytes both ways; never look inside them.

No threads and no coroutine per chunk: the two sockets are joined by
`nitrokms.transport.splice.Splice` (the pump the enclave's CONNECT listener uses too), whose sides
are asyncio Protocols that hand each read straight to the other transport. Backpressure uses the
transports' own flow control: when one side's write buffer passes WRITE_HIGH_WATER_BYTES the other
side stops reading, so a slow reader costs at most that plus one read (256 KiB) per direction and
stalls only its own pair. EOF on one side becomes `write_eof()` (shutdown SHUT_WR) on the other
while the opposite direction keeps flowing; an error on either side aborts the pair.

With an allowlist in its settings, the relay checks every connection's resolved address against
it before connecting (`allowlist.check_destination`), so a DNS answer that changed since start-up
cannot send the bytes somewhere nobody allowlisted; a refusal is logged (`upstream.not_allowed`)
and counted (`reason="not_allowed"`), and only that client is closed.

Listening goes through `nitrokms.transport.sockets.start_server` with a plain (non-coroutine)
callback, which asyncio calls from `connection_made`, before any data arrives; it moves the
transport to our protocol with the public `set_protocol`, so no stream buffer ever holds client
bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any, cast

from nitrokms.parent.proxy.allowlist import AllowEntry, check_destination
from nitrokms.parent.proxy.errors import NotAllowedError, ResolveError, UpstreamError
from nitrokms.parent.proxy.logs import event
from nitrokms.parent.proxy.metrics import Metrics
from nitrokms.parent.proxy.resolver import Resolver
from nitrokms.proto.addresses import Address
from nitrokms.transport.sockets import ClientCallback, bound_address, start_server
from nitrokms.transport.splice import Splice

WRITE_HIGH_WATER_BYTES = 256 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 600.0
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_DRAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RelaySettings:
    """Where to relay to and the per-connection limits. `idle_timeout_s=None` disables it;
    `allowlist=None` skips the check on connect (the caller checked, or there is no list)."""

    remote_host: str
    remote_port: int
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    allowlist: tuple[AllowEntry, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.remote_port <= 0xFFFF:
            raise ValueError(f"remote port {self.remote_port} is out of range 1..65535")
        if self.connect_timeout_s <= 0:
            raise ValueError("connect timeout must be positive")
        if self.idle_timeout_s is not None and self.idle_timeout_s <= 0:
            raise ValueError("idle timeout must be positive")
        if self.max_connections < 1:
            raise ValueError("max connections must be at least 1")


class Relay:
    """A listening relay. Use `await start(address)`, then `drain()` or `aclose()` to stop."""

    def __init__(
        self,
        settings: RelaySettings,
        resolver: Resolver | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver or Resolver()
        self.metrics = metrics or Metrics()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: set[_Pair] = set()
        self._ids = itertools.count(1)
        self._accepting = False

    @property
    def address(self) -> Address:
        if self._server is None:
            raise RuntimeError("relay is not listening")
        return bound_address(self._server)

    def buffered_bytes(self) -> int:
        """Bytes read but not yet handed to the kernel, across all pairs (bounded by design)."""
        return sum(pair.buffered_bytes() for pair in self._open)

    async def start(self, listen: Address) -> Address:
        """Listen on `listen` and return the bound address. Raises OSError or AddressError."""
        self._server = await start_server(cast(ClientCallback, self._accept), listen)
        self._accepting = True
        return self.address

    def stop_accepting(self) -> None:
        """Close the listening socket; open pairs carry on."""
        self._accepting = False
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> int:
        """Stop accepting, let open pairs finish for up to `timeout_s`, then abort the rest.

        Returns how many pairs had to be aborted.
        """
        self.stop_accepting()
        pending = set(self._tasks)
        if pending and timeout_s > 0:
            _, pending = await asyncio.wait(pending, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)

    async def aclose(self) -> None:
        await self.drain(0)

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called synchronously from connection_made: take the transport over at once."""
        transport = cast(asyncio.Transport, writer.transport)
        conn_id = next(self._ids)
        peer = _peer_name(transport)
        if not self._accepting or self.metrics.active >= self.settings.max_connections:
            self.metrics.refused += 1
            reason = "draining" if not self._accepting else "max_connections"
            event(logging.WARNING, "connection.refused", conn=conn_id, peer=peer, reason=reason)
            transport.abort()
            return
        self.metrics.accepted += 1
        self.metrics.active += 1
        pair = _Pair(self.metrics, self.settings.idle_timeout_s, writer)
        transport.set_protocol(pair.client)
        pair.client.connection_made(transport)
        task = asyncio.get_running_loop().create_task(self._serve(conn_id, peer, pair))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn_id: int, peer: str, pair: _Pair) -> None:
        self._open.add(pair)
        try:
            try:
                await self._connect(pair)
            except (UpstreamError, NotAllowedError) as exc:
                name = (
                    "upstream.not_allowed"
                    if isinstance(exc, NotAllowedError)
                    else "upstream.failed"
                )
                event(
                    logging.WARNING, name, conn=conn_id, peer=peer, code=exc.code, error=exc.message
                )
                pair.abort()
                return
            pair.start()
            await pair.finished
        except asyncio.CancelledError:
            pair.abort("cancelled")
            raise
        finally:
            self.metrics.active -= 1
            self._open.discard(pair)
            event(
                logging.DEBUG,
                "connection.closed",
                conn=conn_id,
                peer=peer,
                to_upstream=pair.sent[0],
                to_client=pair.sent[1],
                reason=pair.end_reason,
            )

    async def _connect(self, pair: _Pair) -> None:
        """Resolve (cached), check the allowlist and connect upstream. Raises UpstreamError or
        NotAllowedError, counted by reason."""
        host, port = self.settings.remote_host, self.settings.remote_port
        try:
            ip = await self.resolver.resolve(host)
        except ResolveError as exc:
            self.metrics.upstream_failed("resolve")
            raise UpstreamError(exc.message, code=exc.code) from exc
        if self.settings.allowlist is not None:
            try:
                await check_destination(
                    self.settings.allowlist, host, port, ip, self.resolver.resolve_all
                )
            except NotAllowedError:
                self.metrics.upstream_failed("not_allowed")
                raise
        target = f"{ip}:{port}"
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: pair.upstream, str(ip), port),
                self.settings.connect_timeout_s,
            )
        except TimeoutError as exc:
            self.metrics.upstream_failed("timeout")
            raise UpstreamError(
                f"connect to {target} timed out after {self.settings.connect_timeout_s} s"
            ) from exc
        except ConnectionRefusedError as exc:
            self.metrics.upstream_failed("refused")
            raise UpstreamError(f"connect to {target} refused") from exc
        except OSError as exc:
            self.metrics.upstream_failed("unreachable")
            raise UpstreamError(f"connect to {target} failed: {exc.strerror or exc}") from exc


class _Pair:
    """A client/upstream pair: a `Splice` (client is side a), byte counts, an idle timer."""

    def __init__(self, metrics: Metrics, idle_timeout_s: float | None, writer: Any) -> None:
        self.metrics = metrics
        self.idle_timeout_s = idle_timeout_s
        self.sent = [0, 0]
        self._end_reason: str | None = None
        self._writer = writer  # keeps the StreamWriter (whose __del__ closes) alive with us
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self.splice = Splice(high_water=WRITE_HIGH_WATER_BYTES, on_activity=self.activity)
        self.client, self.upstream = self.splice.a, self.splice.b
        self.finished = self.splice.finished
        self.finished.add_done_callback(self._stop_timer)

    @property
    def end_reason(self) -> str:
        if self._end_reason is not None:
            return self._end_reason
        return "error" if self.splice.error is not None else "eof"

    def start(self) -> None:
        """Link the sides once upstream is connected and let bytes flow."""
        if self.idle_timeout_s is not None:
            self._timer = self._loop.call_at(
                self._last_activity + self.idle_timeout_s, self._check_idle
            )
        self.splice.start()

    def activity(self, direction: int, size: int) -> None:
        self._last_activity = self._loop.time()
        self.sent[direction] += size
        if direction == 0:
            self.metrics.bytes_to_upstream += size
        else:
            self.metrics.bytes_to_client += size

    def buffered_bytes(self) -> int:
        return self.splice.buffered_bytes()

    def abort(self, reason: str = "upstream_failed") -> None:
        if self._end_reason is None and self.splice.error is None:
            self._end_reason = reason
        self.splice.abort()

    def _stop_timer(self, _: object = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        assert self.idle_timeout_s is not None
        deadline = self._last_activity + self.idle_timeout_s
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check_idle)
            return
        self.metrics.idle_timeouts += 1
        self.abort("idle")


def _peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "local")

"""A fault-injecting TCP proxy for the simulated world, placed between a relay and the local KMS.

    enclave -> relay (nitrokms proxy) -> FaultProxy (127.0.0.1:P) -> local KMS (127.0.0.1:K)

It copies bytes both ways (TLS passes through untouched: the enclave still verifies KMS) and
misbehaves on demand, for connections accepted from then on:

- `pass`: a faithful pipe; `delay`: each chunk waits `delay_s` first (a slow network);
- `reset`: accept, then drop with an RST before any byte (connection resets);
- `blackhole`: accept and read, never forward or answer (timeouts);
- `refuse`: the listening socket is closed, so connects are refused (a closed KMS port); any
  other mode re-opens it on the same port.

A thread accepts and two threads pump each connection; `close()` stops all of them. Counters say
how many connections each mode saw, so a test can assert that retries were bounded.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from types import TracebackType
from typing import Final, Literal

Mode = Literal["pass", "delay", "reset", "blackhole", "refuse"]
CHUNK_BYTES: Final = 64 * 1024
ACCEPT_POLL_S: Final = 0.2
_LINGER_RST: Final = struct.pack("ii", 1, 0)


class FaultProxy:
    """`with FaultProxy(upstream_port) as proxy:`; `proxy.port`; `proxy.set_mode("reset")`."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections: Counter[str] = Counter()
        self._mode: Mode = "pass"
        self._delay_s = 0.0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._open: set[socket.socket] = set()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def mode(self) -> Mode:
        return self._mode

    def start(self) -> int:
        """Listen on 127.0.0.1 (an ephemeral port the first time, the same port after)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(ACCEPT_POLL_S)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(listener,), name="fault-proxy", daemon=True
        )
        self._acceptor.start()
        return self.port

    def set_mode(self, mode: Mode, *, delay_s: float = 0.0) -> None:
        """Switch behaviour for new connections (`refuse` also stops listening)."""
        with self._lock:
            previous, self._mode, self._delay_s = self._mode, mode, delay_s
        if mode == "refuse" and previous != "refuse":
            self._stop_listening()
        elif mode != "refuse" and previous == "refuse":
            self.start()

    def drop_all(self) -> None:
        """Reset every connection open now (e.g. pooled keep-alive connections)."""
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _reset(sock)

    def close(self) -> None:
        self._closing.set()
        self._stop_listening()
        self.drop_all()

    def _stop_listening(self) -> None:
        listener, acceptor = self._listener, self._acceptor
        self._listener = self._acceptor = None
        if listener is not None:
            listener.close()
        if acceptor is not None:
            acceptor.join(timeout=5)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closing.is_set() and self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                mode, delay_s = self._mode, self._delay_s
                self.connections[mode] += 1
            threading.Thread(
                target=self._serve, args=(client, mode, delay_s), name="fault-conn", daemon=True
            ).start()

    def _serve(self, client: socket.socket, mode: Mode, delay_s: float) -> None:
        self._track(client)
        if mode == "reset":
            _reset(client)
            self._untrack(client)
            return
        if mode == "blackhole":
            self._swallow(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(client)
            self._untrack(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        back = threading.Thread(
            target=self._pump, args=(upstream, client, delay_s), name="fault-pump", daemon=True
        )
        back.start()
        self._pump(client, upstream, delay_s)
        back.join()

    def _swallow(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self._closing.is_set() and client.recv(CHUNK_BYTES):
                pass
        self._untrack(client)
        client.close()

    def _pump(self, source: socket.socket, sink: socket.socket, delay_s: float) -> None:
        try:
            while data := source.recv(CHUNK_BYTES):
                if delay_s:
                    time.sleep(delay_s)
                sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(sink)
        finally:
            self._untrack(source)
            with contextlib.suppress(OSError):
                source.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    with contextlib.suppress(OSError):
        sock.close()

"""Byte splicing between two asyncio transports: the pump the relay and the enclave's CONNECT
listener share.

No coroutine per chunk: each side is an asyncio Protocol whose `data_received` hands the bytes
straight to the other side's transport (stream pumps copy every chunk twice and resume a
coroutine per read). Backpressure uses the transports' own flow control: when one side's write
buffer passes `high_water` bytes the other side stops reading, so a slow reader costs at most
that plus one read per direction. EOF on one side becomes `write_eof()` (shutdown SHUT_WR) on the
other while the opposite direction keeps flowing; both closed for writing closes both; an error on
either side aborts both.

    splice = Splice()
    transport_a.set_protocol(splice.a); splice.a.connection_made(transport_a)
    await connect_protocol(address, lambda: splice.b)
    splice.start()          # bytes flow from here on
    await splice.finished   # both transports are gone
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

DEFAULT_HIGH_WATER_BYTES = 256 * 1024

Activity = Callable[[int, int], None]


class SpliceSide(asyncio.Protocol):
    """One transport of a splice; forwards what it reads to its peer's transport."""

    __slots__ = ("direction", "eof", "lost", "peer", "splice", "transport")

    def __init__(self, splice: Splice, direction: int) -> None:
        self.splice = splice
        self.direction = direction  # 0: a -> b, 1: b -> a
        self.transport: asyncio.Transport | None = None
        self.peer: SpliceSide | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=self.splice.high_water)
        if self.peer is None:
            self.transport.pause_reading()  # until the splice starts

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return
        if self.splice.on_activity is not None:
            self.splice.on_activity(self.direction, len(data))
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            else:
                peer.transport.close()
        self.splice.check_done()
        return True

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.splice.side_lost(exc)


class Splice:
    """Two transports joined both ways. `finished` resolves once both are closed."""

    __slots__ = ("a", "aborted", "b", "error", "finished", "high_water", "on_activity")

    def __init__(
        self,
        *,
        high_water: int = DEFAULT_HIGH_WATER_BYTES,
        on_activity: Activity | None = None,
    ) -> None:
        self.high_water = high_water
        self.on_activity = on_activity
        self.aborted = False
        self.error: Exception | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.a = SpliceSide(self, 0)
        self.b = SpliceSide(self, 1)

    def sides(self) -> tuple[SpliceSide, SpliceSide]:
        return self.a, self.b

    def start(self, first: bytes = b"") -> None:
        """Link the sides (both transports must be connected) and let bytes flow; `first` is
        what side a had already read, sent on to b ahead of anything else."""
        self.a.peer, self.b.peer = self.b, self.a
        if first and self.b.transport is not None and not self.b.transport.is_closing():
            self.a.data_received(first)
        for side in self.sides():
            if side.transport is not None and not side.transport.is_closing():
                side.transport.resume_reading()
        self.check_done()

    def buffered_bytes(self) -> int:
        return sum(s.transport.get_write_buffer_size() for s in self.sides() if s.transport)

    def check_done(self) -> None:
        if self.a.eof and self.b.eof:
            for side in self.sides():
                if side.transport is not None:
                    side.transport.close()  # flushes what is buffered, then closes

    def side_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            if self.error is None:
                self.error = exc
            self.abort()
        self._finish_if_gone()

    def abort(self) -> None:
        """Cut both transports at once (buffered bytes are dropped)."""
        self.aborted = True
        for side in self.sides():
            if side.transport is not None:
                side.transport.abort()
        self._finish_if_gone()

    def _finish_if_gone(self) -> None:
        gone = all(s.lost or s.transport is None for s in self.sides())
        if gone and not self.finished.done():
            self.finished.set_result(None)

"""A stand-in for the parent's vsock relay: a dumb unix-socket -> TCP byte pipe on its own loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from nitrokms.proto.addresses import TcpAddress, UnixAddress
from nitrokms.transport.sockets import open_connection, start_server


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()


class PipeRelay:
    def __init__(self, listen: UnixAddress, target: TcpAddress) -> None:
        self.listen, self.target = listen, target
        self.connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_writer = None
        try:
            up_reader, up_writer = await open_connection(self.target)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            self._tasks.discard(task)
            for w in (up_writer, writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await w.wait_closed()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await start_server(self._handle, self.listen)
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> PipeRelay:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@contextmanager
def pipe_relay(socket_path: str, target_url: str) -> Iterator[PipeRelay]:
    host_port = target_url.removeprefix("https://")
    host, _, port = host_port.rpartition(":")
    with PipeRelay(UnixAddress(socket_path), TcpAddress(host, int(port))) as relay:
        yield relay

"""A recording byte pipe between unix sockets: every byte the host side of the vsock bridge
carries, kept per connection and direction, so a test can search it for what must never cross.

`Recorder(listen, target, capture_dir, name)` accepts on `listen`, connects each client to
`target`, copies both ways and appends each direction to `capture_dir/NAME-N-{up,down}.bin`
("up": from the client that connected to us, "down": back to it). It runs its own event loop in
a thread; `close()` stops it and closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 64 * 1024
START_TIMEOUT_S = 10.0


class Recorder:
    def __init__(self, listen: Path, target: Path, capture_dir: Path, name: str) -> None:
        self.listen = listen
        self.target = target
        self.capture_dir = capture_dir
        self.name = name
        self.connections = 0
        self.bytes = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"recorder-{name}", daemon=True)

    def start(self) -> Recorder:
        """Listen; return once accepting. Raises OSError when `listen` cannot be bound."""
        self.capture_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise TimeoutError(f"recorder {self.name} did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_unix_server(self._accept, str(self.listen))
            )
        except OSError as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        base = self.capture_dir / f"{self.name}-{number}"
        with (
            base.with_name(base.name + "-up.bin").open("wb") as up,
            base.with_name(base.name + "-down.bin").open("wb") as down,
        ):
            await asyncio.gather(
                self._pump(reader, up_writer, up),
                self._pump(up_reader, writer, down),
                return_exceptions=True,
            )
        for stream in (writer, up_writer):
            stream.close()
        self._tasks.discard(task)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, capture: BinaryIO
    ) -> None:
        try:
            while data := await source.read(CHUNK_BYTES):
                capture.write(data)
                capture.flush()
                self.bytes += len(data)
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        finally:
            with contextlib.suppress(OSError):
                await sink.drain()

    def captures(self) -> list[Path]:
        return sorted(self.capture_dir.glob(f"{self.name}-*.bin"))

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            self.listen.unlink()

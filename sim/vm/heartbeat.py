"""The parent's end of the enclave boot heartbeat (nitro-facts 6.2; image/init.c): the init
connects to the parent's vsock port 9000, sends 0xB7 and waits for it back. Under
vhost-device-vsock that connection arrives on the unix socket `RUN/vm.vsock_9000`, served here
from one thread, one byte each way per connection, every read bounded in time.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Final

HEARTBEAT: Final = b"\xb7"
IO_TIMEOUT_S: Final = 5.0


class HeartbeatListener:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.answered = 0
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._thread = threading.Thread(target=self._serve, name="heartbeat", daemon=True)

    def start(self) -> HeartbeatListener:
        """Listen on `path`. Raises OSError when it cannot be bound."""
        self.path.unlink(missing_ok=True)
        self._listener.bind(str(self.path))
        self._listener.listen(4)
        self._listener.settimeout(0.5)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(IO_TIMEOUT_S)
                if conn.recv(1) == HEARTBEAT:
                    conn.sendall(HEARTBEAT)
                    self.answered += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=IO_TIMEOUT_S + 1)
        self._listener.close()
        self.path.unlink(missing_ok=True)

"""Serve the simulator to the preload library (`preload.c`) over a filesystem unix socket.

A path (not an abstract name) so a child in another network namespace still reaches it. Framing
each way: a 4-byte big-endian length, then that many bytes. Requests over 4096 bytes never come
(the preload library refuses them with EMSGSIZE, as the driver does); the server drops a
connection that sends one anyway.

`SimulatedNSM` bundles PKI, boot PCRs, simulator and server for tests and `nsm run`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from nitrokms.enclave.nsm.codec import MAX_REQUEST_BYTES
from nitrokms.sim.nsm.pki import SimulatedPKI
from nitrokms.sim.nsm.simulator import (
    NSMSimulator,
    boot_pcrs,
    load_measurements,
    load_or_create_instance_id,
    new_module_id,
)

SOCKET_ENV = "NITROKMS_NSM_SOCKET"
PRELOAD_ENV = "NITROKMS_NSM_PRELOAD"
SOCKET_NAME = "nsm.sock"
_HEADER = struct.Struct(">I")


PRELOAD_MODULE = "nitrokms.sim.nsm._preload"


class PreloadMissingError(RuntimeError):
    """The preload library was not built (the package was installed without a C compiler)."""


def preload_library_path() -> Path:
    """`$NITROKMS_NSM_PRELOAD`, else the library built with the package (`_preload*.so` beside
    this module). Raises PreloadMissingError when neither exists."""
    override = os.environ.get(PRELOAD_ENV)
    if override:
        return Path(override)
    spec = importlib.util.find_spec(PRELOAD_MODULE)
    if spec is None or spec.origin is None:
        raise PreloadMissingError(
            "the simulated NSM's preload library was not built with this installation; "
            "reinstall nitrokms[sim] where gcc is available"
        )
    return Path(spec.origin)


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = conn.recv(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class NSMServer:
    """Accepts connections on `socket_path`; one thread per connection; stop() joins them all."""

    def __init__(self, simulator: NSMSimulator, socket_path: Path) -> None:
        self.simulator = simulator
        self.socket_path = Path(socket_path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket_path))
        self._listener.listen(64)
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="nsm-accept", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                self._conns.add(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                header = _recv_exact(conn, _HEADER.size)
                if header is None:
                    return
                (length,) = _HEADER.unpack(header)
                if length > MAX_REQUEST_BYTES:
                    return
                request = _recv_exact(conn, length)
                if request is None:
                    return
                response = self.simulator.exchange(request)
                conn.sendall(_HEADER.pack(len(response)) + response)
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            conns = list(self._conns)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._acceptor.join()
        for thread in list(self._threads):
            thread.join()
        self.socket_path.unlink(missing_ok=True)


class SimulatedNSM:
    """A running simulated NSM: `with SimulatedNSM(dir) as nsm: subprocess.run(..., env=nsm.env)`.

    `measurements` is a nitro-cli measurements JSON path or a ready {index: bytes} mapping.
    Raises SimulatorConfigError for unusable measurements or state.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        measurements: Path | Mapping[int, bytes] | None = None,
        debug: bool = False,
        role_arn: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.pki = SimulatedPKI.load_or_create(self.state_dir, region=region)
        self.instance_id = load_or_create_instance_id(self.state_dir)
        boot = load_measurements(measurements) if isinstance(measurements, Path) else measurements
        pcrs = boot_pcrs(
            instance_id=self.instance_id, measurements=boot, debug=debug, role_arn=role_arn
        )
        self.simulator = NSMSimulator(
            self.pki, module_id=new_module_id(self.instance_id), pcrs=pcrs
        )
        self._socket_dir: Path | None = None
        self._server: NSMServer | None = None

    @property
    def socket_path(self) -> Path:
        if self._socket_dir is None:
            raise RuntimeError("SimulatedNSM is not running")
        return self._socket_dir / SOCKET_NAME

    @property
    def root_certificate_pem(self) -> bytes:
        return self.pki.root_certificate_pem

    @property
    def env(self) -> dict[str, str]:
        """Variables a child needs so its open("/dev/nsm") reaches this simulator."""
        return {"LD_PRELOAD": str(preload_library_path()), SOCKET_ENV: str(self.socket_path)}

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) plus `env`, keeping any LD_PRELOAD already in `base`."""
        merged = dict(os.environ if base is None else base)
        ours = self.env
        if merged.get("LD_PRELOAD"):
            ours["LD_PRELOAD"] = f"{ours['LD_PRELOAD']} {merged['LD_PRELOAD']}"
        merged.update(ours)
        return merged

    def start(self) -> SimulatedNSM:
        self._socket_dir = Path(tempfile.mkdtemp(prefix="nitrokms-nsm-"))
        self._server = NSMServer(self.simulator, self.socket_path)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def __enter__(self) -> SimulatedNSM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

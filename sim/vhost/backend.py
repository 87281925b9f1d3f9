"""The vhost-user session: what each front-end message does to the device's state, and the
one-thread loop that serves it on a unix socket.

`Session.handle(message)` is the state machine (no sockets: tests drive it with scripted
messages); `serve()` accepts the front-end (QEMU), reads messages with their fds, and wakes the
device when a queue's kick eventfd fires. Offered: VIRTIO_F_VERSION_1 and
VHOST_USER_F_PROTOCOL_FEATURES with no protocol features, so rings start on SET_VRING_ENABLE and
there are no replies to acknowledge. Anything else the front-end asks for ends the session with
VhostUserError.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from nitrokms.sim.vhost import messages as m
from nitrokms.sim.vhost.memory import GuestMemory, MemoryAccessError
from nitrokms.sim.vhost.messages import Message, Request, VhostUserError
from nitrokms.sim.vhost.virtqueue import QueueError, SplitQueue

VIRTIO_F_VERSION_1 = 1 << 32
VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
EVENTFD_VALUE = struct.Struct("<Q")
PAYLOAD_TIMEOUT_S = 5.0  # a header's payload follows in the same sendmsg; waiting longer is a bug

log = logging.getLogger("nitrokms.vhost")

MemoryMapper = Callable[[Sequence[m.Region], Sequence[int]], GuestMemory]


class Device(Protocol):
    """What a device behind the session provides."""

    num_queues: int
    features: int  # device-specific feature bits, offered beside VERSION_1

    def process(self, index: int, queue: SplitQueue) -> bool:
        """Serve what is available on queue `index`; True when used entries were added."""
        ...


@dataclass
class Vring:
    size: int = 0
    base: int = 0
    addr: m.VringAddr | None = None
    kick: int | None = None
    call: int | None = None
    err: int | None = None
    enabled: bool = False
    queue: SplitQueue | None = None


class Session:
    """One front-end connection's state. Owns every fd it was given and closes them."""

    def __init__(self, device: Device, map_memory: MemoryMapper = GuestMemory.map) -> None:
        self.device = device
        self.map_memory = map_memory
        self.memory: GuestMemory | None = None
        self.acked_features = 0
        self.owned = False
        self.vrings = [Vring() for _ in range(device.num_queues)]
        self.kick_generation = 0  # bumped whenever a kick fd is replaced, closed or enabled

    @property
    def offered_features(self) -> int:
        return VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | self.device.features

    def handle(self, message: Message) -> bytes | None:
        """Apply one message; return the reply bytes when the message has one.

        Raises VhostUserError for a message this backend does not accept; the caller ends the
        session (its fds are closed here first).
        """
        try:
            return self._dispatch(message)
        except (VhostUserError, MemoryAccessError, QueueError) as exc:
            for fd in message.fds:
                _close(fd)
            raise VhostUserError(f"{message.name}: {exc}") from None

    def _dispatch(self, message: Message) -> bytes | None:  # noqa: PLR0911, PLR0912
        request = message.request
        if request not in (Request.SET_MEM_TABLE, *_FD_REQUESTS) and message.fds:
            raise VhostUserError("unexpected file descriptors")
        if request == Request.GET_FEATURES:
            return m.reply_u64(request, self.offered_features)
        if request == Request.GET_PROTOCOL_FEATURES:
            return m.reply_u64(request, 0)
        if request == Request.SET_PROTOCOL_FEATURES:
            if m.u64(message) != 0:
                raise VhostUserError("protocol features were not offered")
            return None
        if request == Request.SET_FEATURES:
            self._set_features(m.u64(message))
            return None
        if request == Request.SET_OWNER:
            self.owned = True
            return None
        if request == Request.RESET_OWNER:
            self.reset()
            return None
        if request == Request.SET_MEM_TABLE:
            self._set_memory(message)
            return None
        if request in _FD_REQUESTS:
            self._set_fd(request, message)
            return None
        if request == Request.GET_VRING_BASE:
            index, _ = m.vring_state(message)
            return m.reply_state(request, index, self._stop(index))
        if request in (Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.SET_VRING_ENABLE):
            self._set_state(request, *m.vring_state(message))
            return None
        if request == Request.SET_VRING_ADDR:
            addr = m.vring_addr(message)
            self._vring(addr.index).addr = addr
            return None
        raise VhostUserError("not supported by this backend")

    def _vring(self, index: int) -> Vring:
        if not 0 <= index < len(self.vrings):
            raise VhostUserError(f"queue {index} does not exist ({len(self.vrings)} queues)")
        return self.vrings[index]

    def _set_features(self, features: int) -> None:
        if features & ~self.offered_features:
            raise VhostUserError(f"features {features & ~self.offered_features:#x} not offered")
        self.acked_features = features

    def _set_memory(self, message: Message) -> None:
        regions = m.memory_table(message)
        memory = self.map_memory(regions, message.fds)
        for vring in self.vrings:
            vring.queue = None  # rebuilt over the new table on the next kick
        if self.memory is not None:
            self.memory.close()
        self.memory = memory

    def _set_fd(self, request: int, message: Message) -> None:
        index, fd = m.vring_file(message)
        vring = self._vring(index)
        name = {Request.SET_VRING_KICK: "kick", Request.SET_VRING_CALL: "call"}.get(
            Request(request), "err"
        )
        old = getattr(vring, name)
        if old is not None:
            _close(old)
        setattr(vring, name, fd)
        self.kick_generation += 1
        if name == "kick" and not self.acked_features & VHOST_USER_F_PROTOCOL_FEATURES:
            vring.enabled = True  # without protocol features a ring starts with its kick fd

    def _set_state(self, request: int, index: int, value: int) -> None:
        vring = self._vring(index)
        if request == Request.SET_VRING_NUM:
            vring.size = value
        elif request == Request.SET_VRING_BASE:
            vring.base = value
        else:
            vring.enabled = bool(value)
            self.kick_generation += 1
        vring.queue = None

    def _stop(self, index: int) -> int:
        vring = self._vring(index)
        base = vring.queue.last_avail if vring.queue is not None else vring.base
        vring.base, vring.queue, vring.enabled = base, None, False
        self.kick_generation += 1
        if vring.kick is not None:
            _close(vring.kick)
            vring.kick = None
        return base

    def queue(self, index: int) -> SplitQueue | None:
        """The live queue `index`, built on first use once it is fully configured."""
        vring = self._vring(index)
        if vring.queue is None and self._ready(vring) and self.memory is not None:
            assert vring.addr is not None
            vring.queue = SplitQueue(
                self.memory,
                size=vring.size,
                desc=self.memory.user_to_guest(vring.addr.desc),
                avail=self.memory.user_to_guest(vring.addr.avail),
                used=self.memory.user_to_guest(vring.addr.used),
                base=vring.base,
            )
        return vring.queue

    def _ready(self, vring: Vring) -> bool:
        return vring.enabled and vring.addr is not None and vring.size > 0 and self.owned

    def kicked(self, index: int) -> None:
        """Run the device on queue `index` and signal the driver when it used buffers. A ring
        the guest broke (addresses outside its memory) is logged and left alone: the guest's
        driver is the one to reset it."""
        try:
            queue = self.queue(index)
            if queue is None:
                return
            used = self.device.process(index, queue)
        except (QueueError, MemoryAccessError) as exc:
            log.error("queue %d: %s", index, exc)
            return
        call = self.vrings[index].call
        if used and call is not None:
            os.write(call, EVENTFD_VALUE.pack(1))

    def reset(self) -> None:
        for vring in self.vrings:
            for fd in (vring.kick, vring.call, vring.err):
                if fd is not None:
                    _close(fd)
        self.vrings = [Vring() for _ in range(self.device.num_queues)]
        self.kick_generation += 1
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        self.acked_features = 0
        self.owned = False


_FD_REQUESTS = (Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _recv_message(conn: socket.socket) -> Message | None:
    """One message with its fds, or None at EOF between messages. Reads exactly the header, then
    exactly its payload, so fds cannot be attributed to the wrong message."""
    reader = m.MessageReader()
    conn.settimeout(None)  # the selector said readable
    try:
        header = _recv_exact(conn, m.HEADER.size, reader)
        if not header:
            return None
        _request, _flags, size = m.parse_header(header)
        conn.settimeout(PAYLOAD_TIMEOUT_S)
        if size and not _recv_exact(conn, size, reader):
            raise VhostUserError("the front-end closed the connection mid-message")
        message = reader.next_message()
    except BaseException:
        for fd in reader.pending_fds:
            _close(fd)
        raise
    assert message is not None
    return message


def _recv_exact(conn: socket.socket, size: int, reader: m.MessageReader) -> bytes:
    """Read `size` bytes into `reader` (with any fds beside them); b"" at EOF before the first
    byte. Raises VhostUserError at EOF after it."""
    fd_space = socket.CMSG_SPACE(m.MAX_FDS * 4)
    data = b""
    while len(data) < size:
        chunk, ancillary, _flags, _ = conn.recvmsg(size - len(data), fd_space)
        fds = _fds(ancillary)
        if not chunk:
            for fd in fds:
                _close(fd)
            if data:
                raise VhostUserError("the front-end closed the connection mid-message")
            return b""
        reader.feed(chunk, fds)
        data += chunk
    return data


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"<{usable // 4}i", data[:usable]))
    return fds


def serve_connection(conn: socket.socket, device: Device, stop: threading.Event) -> None:
    """Serve one front-end until it disconnects, `stop` is set, or it breaks the protocol
    (VhostUserError, logged). Every fd of the session is closed on the way out."""
    session = Session(device)
    selector = selectors.DefaultSelector()
    selector.register(conn, selectors.EVENT_READ, None)
    watched: dict[int, int] = {}
    seen = [-1]
    try:
        while not stop.is_set():
            _watch_kicks(selector, session, watched, seen)
            # Kicks first, then at most one message: a message may close a kick fd, and the
            # selector is brought up to date before any other event is looked at.
            events = sorted(selector.select(timeout=0.5), key=lambda e: e[0].data is None)
            for key, _ in events:
                if key.data is not None:
                    _drain_eventfd(key.fd)
                    session.kicked(key.data)
                    continue
                message = _recv_message(conn)
                if message is None:
                    return
                log.debug("vhost-user %s", message.name)
                reply = session.handle(message)
                if reply is not None:
                    conn.sendall(reply)
    except VhostUserError as exc:
        log.error("vhost-user session ended: %s", exc)
    except OSError as exc:
        log.error("vhost-user connection failed: %s", exc)
    finally:
        selector.close()
        session.reset()


def _watch_kicks(
    selector: selectors.BaseSelector, session: Session, watched: dict[int, int], seen: list[int]
) -> None:
    """Re-register the enabled queues' kick fds whenever the session changed them. (An fd number
    can come back for a new eventfd after the old one closed, so numbers alone cannot tell.)"""
    if seen[0] == session.kick_generation:
        return
    seen[0] = session.kick_generation
    for fd in watched:
        with contextlib.suppress(KeyError, ValueError, OSError):
            selector.unregister(fd)
    watched.clear()
    for index, vring in enumerate(session.vrings):
        if vring.kick is not None and vring.enabled:
            selector.register(vring.kick, selectors.EVENT_READ, index)
            watched[vring.kick] = index
            session.kicked(index)  # buffers made available before the kick fd arrived


def _drain_eventfd(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        os.read(fd, 8)


def serve(path: str, device: Device, stop: threading.Event, ready: Callable[[], None]) -> None:
    """Listen on the unix socket `path` and serve front-ends one after another until `stop`."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(0.5)
        ready()
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                serve_connection(conn, device, stop)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

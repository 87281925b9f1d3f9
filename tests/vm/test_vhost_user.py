"""The vhost-user backend and the NSM virtio device, driven by a scripted front-end.

Three levels: the message codec on arbitrary and fragmented bytes; the session state machine fed
messages the way QEMU sends them, over a bytearray as guest memory, with the driver side laid out
as Linux's nsm driver lays it (request chain, then response chain, one kick); and the whole I/O
loop on a real unix socket, with a memfd as guest memory and eventfds for kick and call, answered
by the real NSM simulator.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.enclave.errors import NSMErrorCode
from nitrokms.enclave.nsm import codec
from nitrokms.sim.nsm.server import SimulatedNSM
from nitrokms.sim.nsm.vhost_user import NSMVirtioDevice
from nitrokms.sim.vhost import messages as m
from nitrokms.sim.vhost.backend import (
    VHOST_USER_F_PROTOCOL_FEATURES,
    VIRTIO_F_VERSION_1,
    Session,
    serve,
)
from nitrokms.sim.vhost.memory import GuestMemory, MemoryAccessError
from nitrokms.sim.vhost.messages import Message, Region, Request, VhostUserError

from tests.vm.driver import Driver, Layout

GPA = 0x100000
QVA = 0x7F0000000000
MEMORY_BYTES = 1 << 20
QUEUE = 64


def echo_exchange(request: bytes) -> bytes:
    return b"reply:" + request


def vring_file(index: int) -> bytes:
    return m.U64.pack(index)


def front_end_setup(layout: Layout) -> list[tuple[int, bytes]]:
    """The messages QEMU sends from realize to DRIVER_OK for one queue (vhost-user-base), fds
    given separately."""
    return [
        (Request.GET_FEATURES, b""),
        (Request.GET_PROTOCOL_FEATURES, b""),
        (Request.SET_PROTOCOL_FEATURES, m.U64.pack(0)),
        (Request.SET_OWNER, b""),
        (Request.GET_FEATURES, b""),
        (Request.SET_FEATURES, m.U64.pack(VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES)),
        (Request.SET_VRING_NUM, m.VRING_STATE.pack(0, layout.size)),
        (Request.SET_VRING_BASE, m.VRING_STATE.pack(0, 0)),
        (
            Request.SET_VRING_ADDR,
            m.VRING_ADDR.pack(
                0,
                0,
                QVA + layout.desc - GPA,
                QVA + layout.used - GPA,
                QVA + layout.avail - GPA,
                0,
            ),
        ),
    ]


class Rig:
    """A session over a bytearray "guest", with real eventfds for kick and call."""

    def __init__(self, exchange: Callable[[bytes], bytes] = echo_exchange) -> None:
        self.ram = bytearray(MEMORY_BYTES)
        self.layout = Layout(GPA, QUEUE)
        self.driver = Driver(self.ram, self.layout, gpa_base=GPA)
        self.device = NSMVirtioDevice(exchange)
        self.session = Session(self.device, self._map)
        self.kick = os.eventfd(0, os.EFD_NONBLOCK)
        self.call = os.eventfd(0, os.EFD_NONBLOCK)
        self.replies: list[bytes | None] = []

    def _map(self, regions: Sequence[Region], fds: Sequence[int]) -> GuestMemory:
        for fd in fds:
            os.close(fd)
        return GuestMemory([(regions[0], memoryview(self.ram))])

    def send(self, request: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> bytes | None:
        reply = self.session.handle(Message(request, m.VERSION, payload, fds))
        self.replies.append(reply)
        return reply

    def start(self) -> None:
        for request, payload in front_end_setup(self.layout):
            self.send(request, payload)
        table = m.encode_memory_table([Region(GPA, MEMORY_BYTES, QVA, 0)])
        self.send(Request.SET_MEM_TABLE, table, (os.dup(self.kick),))
        self.send(Request.SET_VRING_KICK, vring_file(0), (os.dup(self.kick),))
        self.send(Request.SET_VRING_CALL, vring_file(0), (os.dup(self.call),))
        self.send(Request.SET_VRING_ENABLE, m.VRING_STATE.pack(0, 1))

    def request(
        self, data: bytes, response_size: int = codec.MAX_RESPONSE_BYTES
    ) -> tuple[int, int]:
        """As drivers/misc/nsm.c: the request chain, then the response chain; returns heads."""
        req = self.driver.add([(*self.driver.buffer(data), False)])
        resp_addr, resp_len = self.driver.buffer(size=response_size)
        resp = self.driver.add([(resp_addr, resp_len, True)])
        self.resp_addr = resp_addr
        return req, resp

    def signalled(self) -> int:
        try:
            return int.from_bytes(os.read(self.call, 8), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        self.session.reset()
        os.close(self.kick)
        os.close(self.call)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


# --- the codec --------------------------------------------------------------------------------


def test_header_round_trip_whole_bytewise_and_trailing() -> None:
    data = m.encode(Request.SET_VRING_NUM, m.VRING_STATE.pack(0, 64), flags=m.FLAG_NEED_REPLY)
    reader = m.MessageReader()
    for i in range(len(data)):
        assert reader.next_message() is None
        reader.feed(data[i : i + 1])
    message = reader.next_message()
    assert message == Message(Request.SET_VRING_NUM, m.VERSION | m.FLAG_NEED_REPLY, data[12:])
    assert message.need_reply
    reader.feed(data + data[:5])
    assert reader.next_message() == message
    assert reader.next_message() is None


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (m.HEADER.pack(1, 0x2, 0), "version 2"),
        (m.HEADER.pack(1, 0x1, m.MAX_PAYLOAD_BYTES + 1), "exceeds 4096"),
    ],
)
def test_bad_headers(header: bytes, problem: str) -> None:
    reader = m.MessageReader()
    reader.feed(header)
    with pytest.raises(VhostUserError, match=problem):
        reader.next_message()


def test_too_many_fds_refused() -> None:
    reader = m.MessageReader()
    with pytest.raises(VhostUserError, match="more than 8"):
        reader.feed(b"", list(range(9)))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise(data: bytes) -> None:
    reader = m.MessageReader()
    reader.feed(data)
    try:
        while reader.next_message() is not None:
            pass
    except VhostUserError:
        pass


@pytest.mark.parametrize(
    ("payload", "fds", "problem"),
    [
        (m.MEMORY_HEADER.pack(0, 0), (), "0 regions"),
        (m.MEMORY_HEADER.pack(9, 0), (), "9 regions"),
        (m.encode_memory_table([Region(0, 4096, 0, 0)]), (), "1 regions but 0 fds"),
        (m.MEMORY_HEADER.pack(1, 0), (5,), "need 40"),
        (m.encode_memory_table([Region(0, 0, 0, 0)]), (5,), "empty"),
    ],
)
def test_bad_memory_tables(payload: bytes, fds: tuple[int, ...], problem: str) -> None:
    with pytest.raises(VhostUserError, match=problem):
        m.memory_table(Message(Request.SET_MEM_TABLE, m.VERSION, payload, fds))


# --- the session, scripted --------------------------------------------------------------------


def test_negotiation_replies(rig: Rig) -> None:
    rig.start()
    features = m.U64.unpack(rig.replies[0][12:])[0]  # type: ignore[index]
    assert features == VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES
    assert m.HEADER.unpack(rig.replies[0][:12]) == (Request.GET_FEATURES, m.VERSION | 4, 8)  # type: ignore[index]
    assert rig.replies[1] == m.reply_u64(Request.GET_PROTOCOL_FEATURES, 0)
    assert all(reply is None for reply in rig.replies[2:4] + rig.replies[5:])


def test_a_request_as_the_linux_driver_sends_it(rig: Rig) -> None:
    rig.start()
    req, resp = rig.request(b"DescribeNSM")
    rig.session.kicked(0)
    assert rig.driver.completions() == [(req, 0), (resp, len(b"reply:DescribeNSM"))]
    assert rig.driver.read(rig.resp_addr, 17) == b"reply:DescribeNSM"
    assert rig.signalled() == 1


def test_requests_before_the_kick_fd_are_served_in_order(rig: Rig) -> None:
    heads = [rig.request(b"one"), rig.request(b"two")]
    rig.start()
    rig.session.kicked(0)
    used = rig.driver.completions()
    assert [h for h, _ in used] == [heads[0][0], heads[0][1], heads[1][0], heads[1][1]]


def test_one_chain_holding_request_and_response(rig: Rig) -> None:
    rig.start()
    req = rig.driver.buffer(b"GetRandom")
    resp = rig.driver.buffer(size=100)
    head = rig.driver.add([(*req, False), (*resp, True)])
    rig.session.kicked(0)
    assert rig.driver.completions() == [(head, 15)]
    assert rig.driver.read(resp[0], 15) == b"reply:GetRandom"


def test_a_response_too_small_gets_an_error_reply(rig: Rig) -> None:
    rig.start()
    _req, resp = rig.request(b"x" * 100, response_size=40)
    rig.session.kicked(0)
    (_, (head, written)) = rig.driver.completions()
    error = codec.encode_response(codec.ErrorResponse(NSMErrorCode.InternalError))
    assert (head, written) == (resp, len(error))
    assert rig.driver.read(rig.resp_addr, written) == error


def test_an_oversized_request_is_returned_unanswered(rig: Rig) -> None:
    rig.start()
    req, resp = rig.request(b"x" * (codec.MAX_REQUEST_BYTES + 1))
    rig.session.kicked(0)
    # the request chain is handed back unread; the response buffer finds no request to answer
    assert rig.driver.completions() == [(req, 0), (resp, 0)]
    assert rig.device.answered == 0


def test_a_descriptor_loop_is_refused_and_the_queue_goes_on(rig: Rig) -> None:
    rig.start()
    addr, length = rig.driver.buffer(b"loop")
    looped = rig.driver.add([(addr, length, False)], next_override=rig.driver.next_desc - 0)
    rig.session.kicked(0)
    assert rig.driver.completions() == [(looped, 0)]
    req, resp = rig.request(b"after")
    rig.session.kicked(0)
    assert rig.driver.completions() == [(req, 0), (resp, 11)]


def test_a_buffer_outside_guest_memory_is_refused(rig: Rig) -> None:
    rig.start()
    head = rig.driver.add([(GPA + MEMORY_BYTES - 4, 64, False)])
    rig.request(b"fine")
    rig.session.kicked(0)
    done = rig.driver.completions()
    assert done[0] == (head, 0)
    assert done[-1][1] == len(b"reply:fine")


def test_get_vring_base_stops_the_ring_and_reports_where_it_was(rig: Rig) -> None:
    rig.start()
    rig.request(b"a")
    rig.session.kicked(0)
    reply = rig.send(Request.GET_VRING_BASE, m.VRING_STATE.pack(0, 0))
    assert reply == m.reply_state(Request.GET_VRING_BASE, 0, 2)
    rig.request(b"b")
    rig.session.kicked(0)  # stopped: nothing is taken
    assert rig.driver.completions() == [(0, 0), (1, len(b"reply:a"))]


@pytest.mark.parametrize(
    ("request_", "payload", "problem"),
    [
        (Request.SET_FEATURES, m.U64.pack(1 << 3), "not offered"),
        (Request.SET_PROTOCOL_FEATURES, m.U64.pack(1), "not offered"),
        (Request.SET_VRING_NUM, m.VRING_STATE.pack(1, 64), "queue 1 does not exist"),
        (Request.SET_VRING_ADDR, b"\0" * 8, "need 40"),
        (Request.GET_CONFIG, b"", "not supported"),
        (99, b"", "request 99: not supported"),
        (Request.SET_VRING_KICK, m.U64.pack(0x200), "unknown bits"),
    ],
)
def test_refused_messages(rig: Rig, request_: int, payload: bytes, problem: str) -> None:
    with pytest.raises(VhostUserError, match=problem):
        rig.send(request_, payload)


def test_fds_on_the_wrong_message_are_closed(rig: Rig) -> None:
    fd = os.dup(rig.kick)
    with pytest.raises(VhostUserError, match="unexpected file descriptors"):
        rig.send(Request.SET_OWNER, b"", (fd,))
    with pytest.raises(OSError):  # noqa: PT011 - EBADF: the session closed it
        os.fstat(fd)


def test_memory_access_is_bounded() -> None:
    memory = GuestMemory([(Region(GPA, 4096, QVA, 0), memoryview(bytearray(4096)))])
    assert memory.user_to_guest(QVA + 10) == GPA + 10
    for addr, length in ((GPA - 1, 1), (GPA + 4000, 97), (GPA, -1)):
        with pytest.raises(MemoryAccessError):
            memory.view(addr, length)
    with pytest.raises(MemoryAccessError):
        memory.user_to_guest(QVA + 4096)


# --- the I/O loop on a real socket, answered by the NSM simulator -------------------------------


def send_message(
    sock: socket.socket, request: int, payload: bytes = b"", fds: Sequence[int] = ()
) -> None:
    data = m.encode(request, payload)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def recv_reply(sock: socket.socket) -> tuple[int, bytes]:
    header = sock.recv(12, socket.MSG_WAITALL)
    request, flags, size = m.HEADER.unpack(header)
    assert flags == m.VERSION | m.FLAG_REPLY
    return request, sock.recv(size, socket.MSG_WAITALL)


def test_serving_qemu_style_over_a_socket(tmp_path: Path) -> None:
    nsm = SimulatedNSM(tmp_path / "state")
    device = NSMVirtioDevice(nsm.simulator.exchange)
    path = str(tmp_path / "nsm.sock")
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(path, device, stop, ready.set))
    thread.start()
    memfd = os.memfd_create("guest")
    os.ftruncate(memfd, MEMORY_BYTES)
    ram = mmap.mmap(memfd, MEMORY_BYTES)
    kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    layout = Layout(GPA, QUEUE)
    view = memoryview(ram)
    driver = Driver(view, layout, gpa_base=GPA)
    try:
        assert ready.wait(10)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            for request, payload in front_end_setup(layout):
                send_message(sock, request, payload)
                if request in (Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES):
                    assert recv_reply(sock)[0] == request
            table = m.encode_memory_table([Region(GPA, MEMORY_BYTES, QVA, 0)])
            send_message(sock, Request.SET_MEM_TABLE, table, [memfd])
            send_message(sock, Request.SET_VRING_KICK, vring_file(0), [kick])
            send_message(sock, Request.SET_VRING_CALL, vring_file(0), [call])
            send_message(sock, Request.SET_VRING_ENABLE, m.VRING_STATE.pack(0, 1))
            describe = codec.encode_request(codec.DescribeNSMRequest())
            req = driver.add([(*driver.buffer(describe), False)])
            resp_addr, resp_len = driver.buffer(size=codec.MAX_RESPONSE_BYTES)
            resp = driver.add([(resp_addr, resp_len, True)])
            os.eventfd_write(kick, 1)
            assert select.select([call], [], [], 10)[0] == [call], "no interrupt from the device"
            (_, _), (head, written) = driver.completions()
            assert head == resp
            reply = codec.decode_response(driver.read(resp_addr, written))
            assert isinstance(reply, codec.NSMDescription)
            assert reply.module_id == nsm.simulator.module_id
            assert req == 0
            send_message(sock, Request.GET_VRING_BASE, m.VRING_STATE.pack(0, 0))
            assert recv_reply(sock) == (Request.GET_VRING_BASE, m.VRING_STATE.pack(0, 2))
    finally:
        stop.set()
        thread.join(10)
        view.release()
        ram.close()
        for fd in (memfd, kick, call):
            os.close(fd)
    assert not thread.is_alive()
    assert device.answered == 1
    assert not Path(path).exists()


def test_a_front_end_breaking_the_protocol_ends_only_its_session(tmp_path: Path) -> None:
    device = NSMVirtioDevice(echo_exchange)
    path = str(tmp_path / "nsm.sock")
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(path, device, stop, ready.set))
    thread.start()
    try:
        assert ready.wait(10)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(struct.pack("<III", 1, 0x3, 0))  # version 3
            assert sock.recv(1) == b""  # the backend hung up
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # the next one is served
            sock.settimeout(10)
            sock.connect(path)
            send_message(sock, Request.GET_FEATURES)
            assert recv_reply(sock)[0] == Request.GET_FEATURES
    finally:
        stop.set()
        thread.join(10)


# --- whatever the guest writes into its rings -------------------------------------------------


@settings(max_examples=300)
@given(
    rings=st.binary(max_size=2048),
    avail_idx=st.integers(0, 0xFFFF),
    base=st.integers(0, 0xFFFF),
    offsets=st.tuples(*(st.integers(-64, MEMORY_BYTES) for _ in range(3))),
)
def test_any_ring_contents_are_served_or_refused(
    rings: bytes, avail_idx: int, base: int, offsets: tuple[int, int, int]
) -> None:
    """Guest-controlled memory (descriptors, indexes, ring addresses) never crashes the device or
    loops: a kick returns, having used buffers or not."""
    rig = Rig()
    try:
        rig.ram[: len(rings)] = rings
        rig.ram[rig.layout.avail - GPA + 2 : rig.layout.avail - GPA + 4] = avail_idx.to_bytes(
            2, "little"
        )
        desc, used, avail = (GPA + o for o in offsets)
        rig.start()
        addr = m.VRING_ADDR.pack(0, 0, QVA + desc - GPA, QVA + used - GPA, QVA + avail - GPA, 0)
        for payload in (m.VRING_ADDR.pack(0, 0, QVA, QVA + rig.layout.used - GPA,
                                          QVA + rig.layout.avail - GPA, 0), addr):  # fmt: skip
            rig.send(Request.SET_VRING_ADDR, payload)
            rig.send(Request.SET_VRING_BASE, m.VRING_STATE.pack(0, base))
            rig.send(Request.SET_VRING_ENABLE, m.VRING_STATE.pack(0, 1))
            rig.session.kicked(0)
    finally:
        rig.close()

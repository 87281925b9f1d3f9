"""The vhost-user wire format (QEMU docs/interop/vhost-user.rst), as bytes in and messages out.

Every message is a 12-byte little-endian header (request u32, flags u32, payload size u32) and the
payload; file descriptors travel beside it as SCM_RIGHTS ancillary data. Flags carry the protocol
version (1) in bits 0-1, "this is a reply" in bit 2 and "reply wanted" in bit 3. Payloads are
capped at MAX_PAYLOAD_BYTES before any allocation: the largest message a front-end sends a device
like ours is the memory table (8 + 32 bytes per region, at most MAX_REGIONS regions).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEMORY_HEADER = struct.Struct("<II")
MEMORY_REGION = struct.Struct("<QQQQ")

VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
MAX_REGIONS = 8
MAX_PAYLOAD_BYTES = 4096
MAX_FDS = MAX_REGIONS
VRING_INDEX_MASK = 0xFF
VRING_NOFD = 0x100


class Request(enum.IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_MAX_MEM_SLOTS = 36
    SET_STATUS = 39
    GET_STATUS = 40


class VhostUserError(Exception):
    """The front-end sent something this backend cannot accept; the session ends."""


@dataclass(frozen=True)
class Message:
    """One decoded message. `request` is the raw number (unknown ones are kept for the error)."""

    request: int
    flags: int
    payload: bytes
    fds: tuple[int, ...] = field(default=())

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def name(self) -> str:
        try:
            return Request(self.request).name
        except ValueError:
            return f"request {self.request}"


@dataclass(frozen=True)
class Region:
    """One memory table entry: guest-physical range, the front-end's mapping, offset in the fd."""

    guest_phys_addr: int
    size: int
    user_addr: int
    mmap_offset: int


@dataclass(frozen=True)
class VringAddr:
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


def parse_header(data: bytes) -> tuple[int, int, int]:
    """(request, flags, size) from 12 header bytes. Raises VhostUserError for a wrong version
    or a payload over MAX_PAYLOAD_BYTES."""
    request, flags, size = HEADER.unpack(data)
    if flags & VERSION_MASK != VERSION:
        raise VhostUserError(f"vhost-user version {flags & VERSION_MASK}, expected {VERSION}")
    if size > MAX_PAYLOAD_BYTES:
        raise VhostUserError(f"payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return request, flags, size


class MessageReader:
    """Reassembles messages from stream bytes; fds given with a chunk belong to the message that
    chunk starts or continues."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._fds: list[int] = []

    def feed(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        if len(self._fds) + len(fds) > MAX_FDS:
            raise VhostUserError(f"more than {MAX_FDS} file descriptors for one message")
        self._buffer += data
        self._fds.extend(fds)

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive. Raises VhostUserError."""
        if len(self._buffer) < HEADER.size:
            return None
        request, flags, size = parse_header(bytes(self._buffer[: HEADER.size]))
        end = HEADER.size + size
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        fds, self._fds = tuple(self._fds), []
        return Message(request, flags, payload, fds)

    @property
    def pending_fds(self) -> list[int]:
        return self._fds


def encode(request: int, payload: bytes = b"", *, reply: bool = False, flags: int = 0) -> bytes:
    bits = VERSION | (FLAG_REPLY if reply else 0) | flags
    return HEADER.pack(request, bits, len(payload)) + payload


def reply_u64(request: int, value: int) -> bytes:
    return encode(request, U64.pack(value), reply=True)


def reply_state(request: int, index: int, num: int) -> bytes:
    return encode(request, VRING_STATE.pack(index, num), reply=True)


def _exact(message: Message, size: int) -> bytes:
    if len(message.payload) < size:
        got = len(message.payload)
        raise VhostUserError(f"{message.name}: payload of {got} bytes, need {size}")
    return message.payload[:size]


def u64(message: Message) -> int:
    value: int = U64.unpack(_exact(message, U64.size))[0]
    return value


def vring_state(message: Message) -> tuple[int, int]:
    index, num = VRING_STATE.unpack(_exact(message, VRING_STATE.size))
    return index, num


def vring_addr(message: Message) -> VringAddr:
    return VringAddr(*VRING_ADDR.unpack(_exact(message, VRING_ADDR.size)))


def vring_file(message: Message) -> tuple[int, int | None]:
    """(queue index, fd or None) for SET_VRING_KICK/CALL/ERR."""
    value = u64(message)
    if value & ~(VRING_INDEX_MASK | VRING_NOFD):
        raise VhostUserError(f"{message.name}: unknown bits in {value:#x}")
    index = value & VRING_INDEX_MASK
    if value & VRING_NOFD:
        if message.fds:
            raise VhostUserError(f"{message.name}: 'no fd' flag with an fd")
        return index, None
    if len(message.fds) != 1:
        raise VhostUserError(f"{message.name}: expected one fd, got {len(message.fds)}")
    return index, message.fds[0]


def memory_table(message: Message) -> list[Region]:
    """The regions of SET_MEM_TABLE, one fd each. Raises VhostUserError on a malformed table."""
    count, _padding = MEMORY_HEADER.unpack(_exact(message, MEMORY_HEADER.size))
    if not 0 < count <= MAX_REGIONS:
        raise VhostUserError(f"memory table with {count} regions (1..{MAX_REGIONS})")
    if len(message.fds) != count:
        raise VhostUserError(f"memory table: {count} regions but {len(message.fds)} fds")
    body = _exact(message, MEMORY_HEADER.size + count * MEMORY_REGION.size)
    regions = []
    for i in range(count):
        offset = MEMORY_HEADER.size + i * MEMORY_REGION.size
        region = Region(*MEMORY_REGION.unpack_from(body, offset))
        if region.size == 0:
            raise VhostUserError(f"memory region {i} is empty")
        regions.append(region)
    return regions


def encode_memory_table(regions: list[Region]) -> bytes:
    """The SET_MEM_TABLE payload for `regions` (scripted front-ends in tests)."""
    parts = [MEMORY_HEADER.pack(len(regions), 0)]
    parts += [
        MEMORY_REGION.pack(r.guest_phys_addr, r.size, r.user_addr, r.mmap_offset) for r in regions
    ]
    return b"".join(parts)

"""Split virtqueues (virtio 1.x, 2.7) from the device's side, over GuestMemory.

Descriptor table: 16 bytes each (addr u64, len u32, flags u16, next u16). Available ring: flags
u16, idx u16, ring[num] u16. Used ring: flags u16, idx u16, ring[num] of (id u32, len u32). All
little-endian. Indirect descriptors and event indexes are not offered, so a descriptor with the
INDIRECT flag is the driver's error. A chain longer than the queue (a loop) or a readable
descriptor after a writable one is refused with QueueError, and the chain is not consumed twice.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from nitrokms.sim.vhost.memory import GuestMemory, MemoryAccessError

DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
MAX_QUEUE_SIZE = 32768


class QueueError(Exception):
    """The driver put something on the queue that the virtio spec does not allow. `head` names
    the chain it was found in (so it can be handed back), when there is one."""

    def __init__(self, message: str, head: int | None = None) -> None:
        super().__init__(message)
        self.head = head


@dataclass
class Chain:
    """One descriptor chain: its head index and its (guest address, length) segments."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)
    writable: list[tuple[int, int]] = field(default_factory=list)

    def read_all(self, memory: GuestMemory, limit: int) -> bytes:
        """The device-readable bytes, refusing more than `limit` before copying any."""
        total = sum(length for _, length in self.readable)
        if total > limit:
            raise QueueError(f"request of {total} bytes exceeds {limit}")
        return b"".join(memory.read(addr, length) for addr, length in self.readable)

    def writable_bytes(self) -> int:
        return sum(length for _, length in self.writable)

    def write_all(self, memory: GuestMemory, data: bytes) -> int:
        """Write `data` across the writable segments; return the count written (all of it, or
        QueueError when it does not fit)."""
        if len(data) > self.writable_bytes():
            raise QueueError(f"{len(data)} bytes do not fit in {self.writable_bytes()}")
        offset = 0
        for addr, length in self.writable:
            piece = data[offset : offset + length]
            if not piece:
                break
            memory.write(addr, piece)
            offset += len(piece)
        return offset


class SplitQueue:
    """The device side of one split virtqueue."""

    def __init__(
        self, memory: GuestMemory, *, size: int, desc: int, avail: int, used: int, base: int = 0
    ) -> None:
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise QueueError(f"queue size {size} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.memory = memory
        self.size = size
        self.desc = desc
        self.avail = avail
        self.used = used
        self.last_avail = base & 0xFFFF
        try:
            self.used_idx = self._u16(used + 2)
        except MemoryAccessError as exc:
            raise QueueError(f"used ring: {exc}") from None

    def _u16(self, addr: int) -> int:
        value: int = U16.unpack(self.memory.read(addr, 2))[0]
        return value

    def pending(self) -> int:
        """Chains the driver made available that the device has not taken yet. Raises QueueError
        when the ring itself is outside guest memory."""
        try:
            return (self._u16(self.avail + 2) - self.last_avail) & 0xFFFF
        except MemoryAccessError as exc:
            raise QueueError(f"available ring: {exc}") from None

    def pop(self) -> Chain | None:
        """Take the next available chain, or None. Raises QueueError for a malformed chain (it
        is consumed all the same, so one bad chain cannot wedge the queue)."""
        pending = self.pending()
        if pending == 0:
            return None
        if pending > self.size:
            raise QueueError(f"driver claims {pending} available chains in a queue of {self.size}")
        slot = self.avail + 4 + 2 * (self.last_avail % self.size)
        head = self._u16(slot)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        try:
            return self._walk(head)
        except (QueueError, MemoryAccessError) as exc:
            raise QueueError(str(exc), head if head < self.size else None) from None

    def _walk(self, head: int) -> Chain:
        chain = Chain(head)
        index = head
        for _ in range(self.size):
            if index >= self.size:
                raise QueueError(f"descriptor index {index} outside a queue of {self.size}")
            addr, length, flags, next_index = DESC.unpack(
                self.memory.read(self.desc + 16 * index, DESC.size)
            )
            if flags & DESC_F_INDIRECT:
                raise QueueError("indirect descriptor, but the feature was not offered")
            if flags & DESC_F_WRITE:
                chain.writable.append((addr, length))
            elif chain.writable:
                raise QueueError("device-readable descriptor after a device-writable one")
            else:
                chain.readable.append((addr, length))
            if not flags & DESC_F_NEXT:
                return chain
            index = next_index
        raise QueueError(f"descriptor chain from {head} is longer than the queue (a loop?)")

    def push(self, head: int, written: int) -> None:
        """Return chain `head` to the driver with `written` bytes written into it. Raises
        MemoryAccessError when the used ring is outside guest memory."""
        slot = self.used + 4 + USED_ELEM.size * (self.used_idx % self.size)
        self.memory.write(slot, USED_ELEM.pack(head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        # The index goes after the element; Python's stores stay in program order on x86 (TSO),
        # the only host this backend runs on.
        self.memory.write(self.used + 2, U16.pack(self.used_idx))

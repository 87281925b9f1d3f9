"""The driver's side of a split virtqueue, for tests: what Linux's virtio_ring does, over a
bytearray standing in for guest memory (or an mmap of a memfd the backend maps too)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nitrokms.sim.vhost.virtqueue import DESC_F_NEXT, DESC_F_WRITE

DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
USED = struct.Struct("<II")


@dataclass
class Layout:
    """Where a queue of `size` lives in guest-physical memory starting at `base`."""

    base: int
    size: int

    @property
    def desc(self) -> int:
        return self.base

    @property
    def avail(self) -> int:
        return self.desc + 16 * self.size

    @property
    def used(self) -> int:
        return (self.avail + 6 + 2 * self.size + 3) // 4 * 4

    @property
    def buffers(self) -> int:
        """First byte after the rings, 4 KiB aligned: where tests put data buffers."""
        return (self.used + 6 + 8 * self.size + 4095) // 4096 * 4096


class Driver:
    """Adds chains and reads completions, as the guest's driver would."""

    def __init__(self, memory: bytearray | memoryview, layout: Layout, gpa_base: int = 0) -> None:
        self.memory = memory
        self.layout = layout
        self.gpa_base = gpa_base  # guest-physical address of memory[0]
        self.next_desc = 0
        self.avail_idx = 0
        self.used_seen = 0
        self.heap = layout.buffers

    def _at(self, gpa: int) -> int:
        return gpa - self.gpa_base

    def buffer(self, data: bytes = b"", size: int | None = None) -> tuple[int, int]:
        """Carve a buffer out of guest memory; returns (guest address, length)."""
        length = len(data) if size is None else size
        gpa = self.heap
        self.heap += (length + 15) // 16 * 16 or 16
        self.memory[self._at(gpa) : self._at(gpa) + len(data)] = data
        return gpa, length

    def add(
        self, segments: list[tuple[int, int, bool]], *, next_override: int | None = None
    ) -> int:
        """One chain of (address, length, device-writable) segments; returns its head."""
        head = self.next_desc
        for i, (addr, length, writable) in enumerate(segments):
            index = self.next_desc
            self.next_desc += 1
            last = i == len(segments) - 1
            flags = (0 if last else DESC_F_NEXT) | (DESC_F_WRITE if writable else 0)
            following = index + 1 if next_override is None or not last else next_override
            if next_override is not None and last:
                flags |= DESC_F_NEXT
            offset = self._at(self.layout.desc + 16 * index)
            self.memory[offset : offset + 16] = DESC.pack(addr, length, flags, following)
        slot = self._at(self.layout.avail + 4 + 2 * (self.avail_idx % self.layout.size))
        self.memory[slot : slot + 2] = U16.pack(head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        offset = self._at(self.layout.avail + 2)
        self.memory[offset : offset + 2] = U16.pack(self.avail_idx)
        return head

    def completions(self) -> list[tuple[int, int]]:
        """(head, written) of each chain the device returned since the last call."""
        offset = self._at(self.layout.used + 2)
        (used_idx,) = U16.unpack(self.memory[offset : offset + 2])
        done = []
        while self.used_seen != used_idx:
            slot = self._at(self.layout.used + 4 + 8 * (self.used_seen % self.layout.size))
            done.append(USED.unpack(self.memory[slot : slot + 8]))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return done

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.memory[self._at(gpa) : self._at(gpa) + length])

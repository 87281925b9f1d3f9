"""The guest's memory as the front-end shares it: one mapping per memory-table region.

Descriptors hold guest-physical addresses; SET_VRING_ADDR gives the front-end's own virtual
addresses. Both translate through the table. Every access is bounds-checked against one region:
an address or length the guest made up raises MemoryAccessError, never touches other memory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence

from nitrokms.sim.vhost.messages import Region


class MemoryAccessError(Exception):
    """An address range outside every region (the guest or front-end named memory it has not
    shared)."""


class GuestMemory:
    """Regions and their buffers (mmaps in a real session, bytearrays in tests)."""

    def __init__(self, regions: Sequence[tuple[Region, memoryview]]) -> None:
        self._regions = list(regions)
        self._maps: list[mmap.mmap] = []

    @classmethod
    def map(cls, regions: Sequence[Region], fds: Sequence[int]) -> GuestMemory:
        """mmap each region's fd (shared, read-write). Closes the fds; raises OSError."""
        views: list[tuple[Region, memoryview]] = []
        maps: list[mmap.mmap] = []
        try:
            for region, fd in zip(regions, fds, strict=True):
                mapping = mmap.mmap(fd, region.mmap_offset + region.size, mmap.MAP_SHARED)
                maps.append(mapping)
                start = region.mmap_offset
                views.append((region, memoryview(mapping)[start : start + region.size]))
        except BaseException:
            for view in views:
                view[1].release()
            for mapping in maps:
                mapping.close()
            raise
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        memory = cls(views)
        memory._maps = maps
        return memory

    def close(self) -> None:
        for _, view in self._regions:
            view.release()
        self._regions = []
        for mapping in self._maps:
            with contextlib.suppress(BufferError):
                mapping.close()
        self._maps = []

    def user_to_guest(self, user_addr: int) -> int:
        """Front-end virtual address -> guest-physical. Raises MemoryAccessError."""
        for region, _ in self._regions:
            if region.user_addr <= user_addr < region.user_addr + region.size:
                return region.guest_phys_addr + (user_addr - region.user_addr)
        raise MemoryAccessError(f"front-end address {user_addr:#x} is in no region")

    def view(self, guest_addr: int, length: int) -> memoryview:
        """`length` bytes of guest memory at `guest_addr`, inside one region."""
        if length < 0:
            raise MemoryAccessError(f"negative length {length}")
        for region, buffer in self._regions:
            offset = guest_addr - region.guest_phys_addr
            if offset >= 0 and offset + length <= region.size:
                return buffer[offset : offset + length]
        raise MemoryAccessError(f"guest range {guest_addr:#x}+{length} is in no region")

    def read(self, guest_addr: int, length: int) -> bytes:
        return bytes(self.view(guest_addr, length))

    def write(self, guest_addr: int, data: bytes) -> None:
        self.view(guest_addr, len(data))[:] = data

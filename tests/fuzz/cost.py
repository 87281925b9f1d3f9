"""What one fuzz input costs, and what it may cost: CPU time and peak memory, linear in its length.

`Meter` measures one call, with the garbage collector paused: CPU time of the calling thread
(`time.thread_time`, so time spent descheduled on a busy machine does not count) and the peak of
memory traced by `tracemalloc`
above what was allocated when the call began (Python objects, including those C extensions make
through Python's allocators; not OpenSSL's or Rust's own heaps).

`calibrate` turns a target's seeds into a `Budget`: the constant parts are the most any seed costs
(after a warm-up pass, so lazy set-up and first-use caches are not counted) times a margin, with a
floor; the per-byte parts come from the `CostModel`. The defaults allow 20 µs of CPU and 16 bytes
of memory per input byte on top: a parser that copies its input a few times stays well inside, a
decoder that makes a 64-byte object out of every byte (an empty CBOR array is one byte on the wire
and a Python list of 56 bytes plus its slot in the parent) or that goes quadratic does not, at the
sizes the fuzzer feeds (up to 64 KiB).
"""

from __future__ import annotations

import contextlib
import gc
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

KiB: Final = 1024
CALIBRATION_ROUNDS: Final = 3


@dataclass(frozen=True)
class Cost:
    cpu_s: float
    peak_bytes: int


@dataclass(frozen=True)
class CostModel:
    cpu_margin: float = 10.0
    cpu_floor_s: float = 0.020
    cpu_s_per_byte: float = 20e-6
    memory_margin: float = 4.0
    memory_floor_bytes: int = 256 * KiB
    memory_per_byte: float = 16.0


DEFAULT_COST_MODEL: Final = CostModel()


@dataclass(frozen=True)
class Budget:
    """CPU at most `cpu_s + cpu_s_per_byte x len`, memory at most `memory_bytes +
    memory_per_byte x len`, for an input of `len` bytes."""

    cpu_s: float
    cpu_s_per_byte: float
    memory_bytes: int
    memory_per_byte: float

    def excess(self, cost: Cost, size: int) -> str | None:
        """Why `cost` is over budget for an input of `size` bytes, or None."""
        measures = (  # unit, what, used, constant part, per-byte part and its unit, per-byte scale
            ("ms", "of CPU", cost.cpu_s * 1000, self.cpu_s * 1000, self.cpu_s_per_byte * 1e6,
             "µs", 1000),
            ("KiB", "allocated at peak", cost.peak_bytes / KiB, self.memory_bytes / KiB,
             self.memory_per_byte, "bytes", KiB),
        )  # fmt: skip
        for unit, what, used, base, per_byte, per_byte_unit, scale in measures:
            limit = base + per_byte * size / scale
            if used > limit:
                return (
                    f"cost: {used:.1f} {unit} {what} for {size} bytes, over the budget of "
                    f"{limit:.1f} {unit} ({base:.1f} {unit} + {per_byte:g} {per_byte_unit}/byte)"
                )
        return None


class Meter:
    """`with Meter() as meter: call()`, then `meter.cost`. Memory needs `tracing()` to be on."""

    cost = Cost(0.0, 0)

    def __enter__(self) -> Meter:
        # No garbage collection inside the call: a pass over the whole heap (tens of ms in a big
        # process) would be charged to whichever input happened to trigger it.
        self._collecting = gc.isenabled()
        gc.disable()
        self._tracing = tracemalloc.is_tracing()
        if self._tracing:
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        self._cpu = time.thread_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        cpu_s = time.thread_time() - self._cpu
        peak = tracemalloc.get_traced_memory()[1] - self._base if self._tracing else 0
        if self._collecting:
            gc.enable()
        self.cost = Cost(cpu_s, max(0, peak))


@contextmanager
def tracing() -> Iterator[None]:
    """Trace allocations for the block (unless something else already does)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


def calibrate(
    run: Callable[[bytes], object], seeds: Sequence[bytes], model: CostModel | None = None
) -> Budget:
    """The budget for a target from what its seeds cost (exceptions they raise are ignored)."""
    model = model or CostModel()
    worst = Cost(0.0, 0)
    for round_ in range(CALIBRATION_ROUNDS):
        for seed in seeds:
            with Meter() as meter, contextlib.suppress(Exception):  # a seed may fail typed
                run(seed)
            if round_:  # the first round warms caches and lazy fixtures up
                worst = Cost(
                    max(worst.cpu_s, meter.cost.cpu_s), max(worst.peak_bytes, meter.cost.peak_bytes)
                )
    return Budget(
        cpu_s=max(model.cpu_floor_s, model.cpu_margin * worst.cpu_s),
        cpu_s_per_byte=model.cpu_s_per_byte,
        memory_bytes=max(model.memory_floor_bytes, int(model.memory_margin * worst.peak_bytes)),
        memory_per_byte=model.memory_per_byte,
    )

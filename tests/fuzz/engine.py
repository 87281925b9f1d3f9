"""A small counting mutation fuzzer: seeds in, mutated inputs through a target, failures out.

Each target is a callable over bytes plus the exception types it may raise (its typed errors).
An input "passes" when the call returns or raises one of those within its cost budget; anything
else is a failure: an untyped exception, a call that runs past the per-input time bound (a hang,
interrupted with SIGALRM (`setitimer`) when the runner is on the main thread), or a call that
costs more than its budget allows for an input of its size (an amplification). Inputs come from
the target's seeds (valid encodings) through stacked byte-level mutations, plus a share of pure
random bytes, so both the deep (almost valid) and the shallow (junk) paths are exercised. Runs
are deterministic for a given `rng_seed`.

Cost. Every input is measured: CPU time of the running thread (`time.thread_time`) and the peak
of memory allocated through Python's allocators while it ran (`tracemalloc`, which also sees
what C extensions such as cbor2 allocate as Python objects). A target's budget is linear in the
input's length, `a + b x len` for CPU and `c + d x len` for memory: the constant parts are
calibrated on the target's seeds (the most any seed costs, times a margin, with a floor), the
per-byte parts are fixed (`CostModel`). A decoder that turns each input byte into an object of
64 bytes, or that goes quadratic, exceeds them; one that copies its input a few times does not.
"""

from __future__ import annotations

import contextlib
import functools
import random
import signal
import struct
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from tests.fuzz.cost import DEFAULT_COST_MODEL, Budget, CostModel, Meter, calibrate, tracing

PER_INPUT_TIMEOUT_S: Final = 2.0
MAX_INPUT_BYTES: Final = 64 * 1024
MAX_FAILURES_KEPT: Final = 5
_INTERESTING: Final = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x18, 0x19, 0x1A, 0x1B, 0x5B, 0x9F, 0xBF)
_BIG_CBOR_HEADS: Final = (b"\x1b" + b"\xff" * 8, b"\x5b" + b"\x7f" + b"\xff" * 7, b"\xbf", b"\x9f")
# One-byte CBOR items (empty array, map, byte and text string, null, zero) that an input can
# repeat many times, bare or inside an array head: how a small input becomes many objects.
_SMALL_CBOR_ITEMS: Final = (0x80, 0xA0, 0x40, 0x60, 0xF6, 0x00)
MAX_RUN_ITEMS: Final = 32 * 1024


class HangError(Exception):
    """An input ran past the per-input time bound."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    seeds: Callable[[], Sequence[bytes]]
    typed_errors: tuple[type[BaseException], ...]
    description: str = ""


@dataclass(frozen=True)
class Failure:
    data: bytes = field(repr=False)
    error: str
    kind: str = "type"  # "type" (an untyped exception), "hang" or "cost"

    def __str__(self) -> str:
        return f"{self.error} on input {self.data[:64].hex()}{'...' if len(self.data) > 64 else ''}"


@dataclass
class TargetReport:
    name: str
    inputs: int = 0
    accepted: int = 0
    typed_errors: int = 0
    failures: int = 0
    failure_kinds: Counter[str] = field(default_factory=Counter)
    examples: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    budget: Budget | None = None

    @property
    def ok(self) -> bool:
        return self.failures == 0


class Mutator:
    """Byte-level mutations in the style of AFL's havoc stage, over a seed corpus."""

    def __init__(self, seeds: Sequence[bytes], rng: random.Random) -> None:
        self.seeds = [s for s in seeds if s] or [b"\x00"]
        self.rng = rng

    def next_input(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.1:
            return rng.randbytes(rng.randint(0, 256))
        data = bytearray(rng.choice(self.seeds))
        for _ in range(rng.choice((1, 1, 2, 3, 4, 8))):
            self._mutate(data)
        return bytes(data[:MAX_INPUT_BYTES])

    def _mutate(self, data: bytearray) -> None:
        rng = self.rng
        pos = rng.randint(0, max(len(data) - 1, 0))
        choice = rng.randrange(11)
        if not data:
            data.extend(rng.randbytes(rng.randint(1, 8)))
        elif choice == 0:
            data[pos] ^= 1 << rng.randrange(8)
        elif choice == 1:
            data[pos] = rng.choice(_INTERESTING)
        elif choice == 2:
            data[pos] = rng.randrange(256)
        elif choice == 3:
            data[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif choice == 4:
            del data[pos : pos + rng.randint(1, 16)]
        elif choice == 5:
            del data[pos:]
        elif choice == 6:
            end = min(len(data), pos + rng.randint(1, 64))
            data[pos:pos] = data[pos:end] * rng.randint(1, 4)
        elif choice == 7:
            other = rng.choice(self.seeds)
            start = rng.randint(0, max(len(other) - 1, 0))
            data[pos:] = other[start:]
        elif choice == 8:
            data[pos : pos + 1] = rng.choice(_BIG_CBOR_HEADS)
        elif choice == 9:
            data[pos:pos] = self._run()
        else:
            data.extend(rng.randbytes(rng.randint(1, 32)))

    def _run(self) -> bytes:
        """A run of one small CBOR item, bare, in an indefinite array or under a counted head."""
        rng = self.rng
        count = rng.randint(1, MAX_RUN_ITEMS)
        head = rng.choice((b"", b"\x9f", b"\x9a" + struct.pack(">I", count)))
        return head + bytes([rng.choice(_SMALL_CBOR_ITEMS)]) * count


@contextmanager
def _time_bound(seconds: float) -> Iterator[None]:
    """Raise HangError in the main thread after `seconds`; no bound off the main thread.

    An alarm already set (pytest-timeout's) is kept: it fires through its own handler if it
    comes first, and is re-armed with its remaining time afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    started = time.monotonic()
    outer_handler = signal.getsignal(signal.SIGALRM)
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    outer_first = 0 < outer_delay <= seconds

    def on_alarm(signum: int, frame: Any) -> None:
        if outer_first and callable(outer_handler):
            outer_handler(signum, frame)
        raise HangError(f"no result within {seconds}s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, outer_delay if outer_first else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_delay > 0:
            left = max(outer_delay - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def run_one(
    target: Target,
    data: bytes,
    timeout_s: float = PER_INPUT_TIMEOUT_S,
    budget: Budget | None = None,
) -> str | None:
    """Run one input; None if it returned, else the typed error's name. Raises FuzzFailure for
    an untyped error, a hang, or (given a `budget`) a cost over it."""
    started = time.monotonic()
    outcome: str | None = None
    meter = Meter()
    try:
        with _time_bound(timeout_s), meter:
            target.run(data)
    except target.typed_errors as exc:
        outcome = type(exc).__name__
    except HangError as exc:
        raise FuzzFailure(Failure(data, f"hang: {exc}", "hang")) from None
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        error = f"{type(exc).__name__}: {str(exc)[:200]} at {where.filename}:{where.lineno}"
        raise FuzzFailure(Failure(data, error)) from None
    _check_elapsed(started, timeout_s)
    excess = None if budget is None else budget.excess(meter.cost, len(data))
    if excess is not None:
        raise FuzzFailure(Failure(data, excess, "cost"))
    return outcome


def _bounded(run: Callable[[bytes], object], timeout_s: float, data: bytes) -> None:
    with _time_bound(timeout_s):
        run(data)


def _check_elapsed(started: float, timeout_s: float) -> None:
    elapsed = time.monotonic() - started
    if elapsed > timeout_s:
        raise FuzzFailure(Failure(b"", f"hang: took {elapsed:.2f}s off the main thread", "hang"))


class FuzzFailure(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error)
        self.failure = failure


def fuzz(
    target: Target,
    *,
    inputs: int | None = None,
    seconds: float | None = None,
    rng_seed: int = 0,
    timeout_s: float = PER_INPUT_TIMEOUT_S,
    cost: CostModel | None = DEFAULT_COST_MODEL,
) -> TargetReport:
    """Run `target` on its seeds, then on mutated inputs until `inputs` or `seconds` is reached.
    With a `cost` model (the default) every input must also stay within the budget calibrated
    on the seeds; `cost=None` checks types and hangs only."""
    if inputs is None and seconds is None:
        raise ValueError("give inputs or seconds")
    seeds = list(target.seeds())
    mutator = Mutator(seeds, random.Random(f"{target.name}:{rng_seed}"))
    report = TargetReport(target.name)
    started = time.monotonic()
    deadline = None if seconds is None else started + seconds
    queue = iter(seeds)
    with tracing() if cost is not None else contextlib.nullcontext():
        if cost is not None:
            bounded_run = functools.partial(_bounded, target.run, timeout_s)
            report.budget = calibrate(bounded_run, seeds, cost)
        while (inputs is None or report.inputs < inputs) and (
            deadline is None or time.monotonic() < deadline
        ):
            data = next(queue, None)
            _record(report, target, mutator.next_input() if data is None else data, timeout_s)
    report.seconds = time.monotonic() - started
    return report


def _record(report: TargetReport, target: Target, data: bytes, timeout_s: float) -> None:
    report.inputs += 1
    try:
        error = run_one(target, data, timeout_s, report.budget)
    except FuzzFailure as exc:
        report.failures += 1
        report.failure_kinds[exc.failure.kind] += 1
        if len(report.examples) < MAX_FAILURES_KEPT:
            report.examples.append(Failure(data, exc.failure.error, exc.failure.kind))
        return
    if error is None:
        report.accepted += 1
    else:
        report.typed_errors += 1

"""Worker threads shared fairly between connections, in lanes that cannot fill each other.

The handler blocks (KMS calls go through boto3), so requests run in threads. A single FIFO pool
lets whoever queues most take every thread: four connections of KMS-bound requests on a slow KMS
starved a fifth connection's purely local Seal for 30 s. So:

- **Lanes.** Each lane has its own threads. Work that may wait on KMS goes to the "kms" lane,
  work that never leaves the enclave to the "local" lane (`enclave.lanes` says which is which), so
  no KMS backlog can delay a Health or a Seal with a held key.
- **Fair share within a lane.** Waiting jobs queue per owner (a connection), and a free thread
  takes the next job round-robin over owners, not first-come-first-served. Owners under their
  quota (`per_owner` threads, counting threads still busy with requests that already timed out)
  come first; an owner at its quota gets another thread only while nobody under quota waits. So a
  lone client may use the whole lane (its throughput is the lane's), and as soon as another
  connection has work, each free thread goes to it until it holds its share.
- **Priority owners** (the credential provider's control connections) are served first.
- **Deadlines.** A job whose deadline passes while it waits never starts; a running job runs
  under `deadlines.bounded`, so its KMS calls stop retrying past the deadline.

All bookkeeping happens on the event loop; threads only run `fn(arg)` and post the outcome back
with one `call_soon_threadsafe`. A lane hands a job to a thread only when one is free for it, so
its threads need no queue discipline of their own: they are plain threads on a SimpleQueue
(concurrent.futures' executor added a Future, a condition and a semaphore per job), started as
the lane first needs them. A requester may pass `on_done`, called on the loop as soon as the
job's future is resolved (no extra loop iteration, as a done-callback would take).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nitrokms.enclave import deadlines
from nitrokms.enclave.errors import DeadlineExceededError, LaneClosedError

log = logging.getLogger("enclave.scheduler")

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class LaneLimits:
    workers: int
    per_owner: int

    def __post_init__(self) -> None:
        if self.workers < 1 or self.per_owner < 1:
            raise ValueError("a lane needs at least one worker and a quota of at least one")


@dataclass(eq=False)
class _Job(Generic[A, R]):
    owner: Hashable
    fn: Callable[[A], R]
    arg: A
    deadline: float | None
    label: str
    result: asyncio.Future[R]
    on_done: Callable[[asyncio.Future[R]], None] | None = None
    started: bool = field(default=False)

    def resolve(self, result: Any = None, exc: BaseException | None = None) -> None:
        """Settle the future (unless the requester cancelled it) and tell `on_done`."""
        if self.result.done():
            return
        if exc is not None:
            self.result.set_exception(exc)
        else:
            self.result.set_result(result)
        if self.on_done is not None:
            self.on_done(self.result)


_Outcome = tuple[bool, Any]  # (True, result) or (False, exception)


class Lane(Generic[A, R]):
    """One pool of threads, shared round-robin between owners, each capped at its quota."""

    def __init__(self, name: str, limits: LaneLimits) -> None:
        self.name = name
        self.limits = limits
        self._jobs: queue.SimpleQueue[tuple[_Job[A, R], asyncio.AbstractEventLoop] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._waiting: dict[Hashable, deque[_Job[A, R]]] = {}  # insertion order: whose turn
        self._priority: set[Hashable] = set()
        self._busy: Counter[Hashable] = Counter()
        self.busy = 0

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    def busy_for(self, owner: Hashable) -> int:
        return self._busy[owner]

    def submit(
        self,
        owner: Hashable,
        fn: Callable[[A], R],
        arg: A,
        *,
        deadline: float | None = None,
        priority: bool = False,
        label: str = "",
        on_done: Callable[[asyncio.Future[R]], None] | None = None,
    ) -> asyncio.Future[R]:
        """Queue `fn(arg)`; the future resolves with its result or exception, and `on_done`
        (if given) is called with it right then, on the loop. Cancelling the future removes a
        job that has not started (a started one runs on, its result dropped, `on_done` not
        called)."""
        result: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        job = _Job(owner, fn, arg, deadline, label, result, on_done)
        if priority:
            self._priority.add(owner)
        self._waiting.setdefault(owner, deque()).append(job)
        self._dispatch()
        if not job.started:  # it waits: let a cancellation take it out of the queue
            result.add_done_callback(lambda _: self._forget(job))
        return result

    def shutdown(self) -> None:
        """Fail every waiting job (LaneClosedError) and stop the threads once idle."""
        waiting = [job for queue in self._waiting.values() for job in queue]
        self._waiting.clear()
        self._priority.clear()
        for job in waiting:
            job.started = True
            job.resolve(exc=LaneClosedError(f"the {self.name} lane shut down"))
        self._closed = True
        with contextlib.suppress(queue.Empty):  # handed to a thread that has not taken it yet
            while (item := self._jobs.get_nowait()) is not None:
                self._finished(item[0], (False, None))
        for _ in self._threads:
            self._jobs.put(None)  # each thread ends once its current job is done

    def _forget(self, job: _Job[A, R]) -> None:
        """A cancelled job that has not started leaves the queue at once."""
        if job.started:
            return
        queue = self._waiting.get(job.owner)
        if queue is not None and job in queue:
            queue.remove(job)
            if not queue:
                del self._waiting[job.owner]
                self._priority.discard(job.owner)

    def _dispatch(self) -> None:
        while self.busy < self.limits.workers:
            job = self._next()
            if job is None:
                return
            self._start(job)

    def _next(self) -> _Job[A, R] | None:
        """The next job: from the first owner in turn order (priority owners first) that is
        under its quota; if every waiting owner is at its quota, from the one holding fewest
        threads (the lane never idles while work waits). The owner goes to the back."""
        if len(self._waiting) == 1 and not self._priority:  # the common case: one client
            return self._take(next(iter(self._waiting)))
        order = list(self._waiting)
        if self._priority:
            order.sort(key=lambda owner: owner not in self._priority)  # stable: keeps the turns
        eligible = [o for o in order if self._busy[o] < self.limits.per_owner]
        if eligible:
            owner = eligible[0]
        elif order:
            owner = min(order, key=lambda o: self._busy[o])
        else:
            return None
        return self._take(owner)

    def _take(self, owner: Hashable) -> _Job[A, R]:
        """`owner`'s oldest job; the owner goes to the back of the turn order."""
        queue = self._waiting.pop(owner)
        job = queue.popleft()
        if queue:
            self._waiting[owner] = queue
        else:
            self._priority.discard(owner)
        return job

    def _start(self, job: _Job[A, R]) -> None:
        job.started = True
        if job.result.done():  # cancelled by its requester a moment ago
            return
        if job.deadline is not None and time.monotonic() >= job.deadline:
            job.resolve(exc=DeadlineExceededError(f"{job.label} waited past its deadline"))
            return
        if self._closed:
            job.resolve(exc=LaneClosedError(f"the {self.name} lane shut down"))
            return
        self.busy += 1
        self._busy[job.owner] += 1
        self._jobs.put((job, asyncio.get_running_loop()))
        if len(self._threads) < self.busy:  # every started job has a thread of its own
            thread = threading.Thread(
                target=self._work, name=f"enclave-{self.name}_{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        """A lane thread: run jobs until the lane shuts down."""
        while (item := self._jobs.get()) is not None:
            job, loop = item
            try:
                outcome: _Outcome = (True, _run(job.fn, job.arg, job.deadline))
            except BaseException as exc:  # handed to the requester, as an executor does
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._finished, job, outcome)
            del item, job, outcome  # no reference to the last result while waiting

    def _finished(self, job: _Job[A, R], outcome: _Outcome) -> None:
        """On the loop: `outcome` of a job (`(False, None)`: the lane shut down first)."""
        self.busy -= 1
        self._busy[job.owner] -= 1
        if not self._busy[job.owner]:
            del self._busy[job.owner]
        ok, value = outcome
        if ok:
            job.resolve(value)
        else:
            exc = value or LaneClosedError(f"the {self.name} lane shut down")
            if isinstance(exc, DeadlineExceededError):
                log.info("%s stopped past its deadline (%s lane): %s", job.label, self.name, exc)
            job.resolve(exc=exc)
        self._dispatch()


def _run(fn: Callable[[A], R], arg: A, deadline: float | None) -> R:
    with deadlines.bounded(deadline):
        deadlines.check("the request started")
        return fn(arg)


class Scheduler(Generic[A, R]):
    """The lanes by name; `submit(lane, ...)` queues a job in one."""

    def __init__(self, lanes: Mapping[str, LaneLimits]) -> None:
        if not lanes:
            raise ValueError("a scheduler needs at least one lane")
        self.lanes: dict[str, Lane[A, R]] = {n: Lane(n, limits) for n, limits in lanes.items()}

    def submit(
        self, lane: str, owner: Hashable, fn: Callable[[A], R], arg: A, **options: Any
    ) -> asyncio.Future[R]:
        """`Lane.submit` on the lane named `lane` (KeyError for an unknown one)."""
        return self.lanes[lane].submit(owner, fn, arg, **options)

    def shutdown(self) -> None:
        for lane in self.lanes.values():
            lane.shutdown()

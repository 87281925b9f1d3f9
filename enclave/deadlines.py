"""The deadline of the request a worker thread is running, so blocking work can stop early.

A worker thread cannot be interrupted, so a request that outlives its timeout keeps its thread.
What can be done is to stop at the next step: the scheduler runs each request under `bounded()`,
work checks `check()` before an expensive step, and the KMS client checks it before every HTTP
attempt (`before_send`, a botocore `before-send` handler), so a call past its deadline makes no
further attempt (no retry, no backoff sleep followed by another attempt). An attempt already on
the wire still runs up to botocore's read timeout. Outside a request (no deadline) every check
passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from nitrokms.enclave.errors import DeadlineExceededError

_deadline: ContextVar[float | None] = ContextVar("nitrokms_request_deadline", default=None)


@contextmanager
def bounded(deadline: float | None) -> Iterator[None]:
    """Run the block under `deadline` (a `time.monotonic()` value; None: no deadline)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining_s() -> float | None:
    """Seconds left before the current deadline (negative once past it), or None."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def check(step: str) -> None:
    """Raises DeadlineExceededError if the current request's deadline has passed."""
    left = remaining_s()
    if left is not None and left <= 0:
        raise DeadlineExceededError(f"the request's deadline passed before {step}")


def before_send(**_: Any) -> None:
    """botocore `before-send` handler: no KMS attempt starts past the request's deadline."""
    check("a KMS attempt")

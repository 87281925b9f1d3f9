"""A fault mode for the local KMS: a queue of scripted misbehaviours, one per incoming request.

`kms serve --fault-plan FILE` makes the server consult FILE before every request. The file holds a
JSON list of faults; the server pops the first one whose `operation` matches (or that has none)
and rewrites the file, so a test scripts "the next N calls fail like this" by writing the file
and the faults are used up by exactly the requests that saw them. A missing or empty file means
no fault. Each fault is an object with any of:

    {"operation": "GenerateDataKey",   # only this X-Amz-Target operation (default: any)
     "delay_s": 2.5,                   # sleep first (a slow KMS); then go on as below
     "status": 400, "type": "ThrottlingException", "message": "Rate exceeded",  # error reply
     "reset": true}                    # drop the TCP connection with an RST instead of replying

A fault with only `delay_s` delays the request and then serves it normally. A malformed plan is
logged and ignored (the KMS keeps serving), never a crash.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nitrokms.sim.files import atomic_write

log = logging.getLogger("nitrokms.sim.kms")

MAX_DELAY_S: Final = 120.0
MAX_PLAN_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class Fault:
    operation: str | None = None
    delay_s: float = 0.0
    status: int | None = None
    aws_type: str = "KMSInternalException"
    message: str = "injected fault"
    reset: bool = False

    @classmethod
    def from_json(cls, raw: Any) -> Fault:
        """Raises ValueError for anything that is not a fault object."""
        if not isinstance(raw, dict):
            raise ValueError("a fault must be a JSON object")
        delay = float(raw.get("delay_s", 0.0))
        status = raw.get("status")
        if not 0 <= delay <= MAX_DELAY_S:
            raise ValueError(f"delay_s must be in 0..{MAX_DELAY_S:g}")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise ValueError("status must be an HTTP error status (400..599)")
        operation = raw.get("operation")
        return cls(
            operation=None if operation is None else str(operation),
            delay_s=delay,
            status=status,
            aws_type=str(raw.get("type", "KMSInternalException")),
            message=str(raw.get("message", "injected fault")),
            reset=bool(raw.get("reset", False)),
        )

    def error_body(self) -> dict[str, str]:
        return {"__type": self.aws_type, "message": self.message}


class FaultPlan:
    """The plan file, consumed one fault per matching request (thread-safe within the server)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def take(self, operation: str) -> Fault | None:
        """The next fault for `operation`, removed from the plan; None when there is none."""
        with self._lock:
            plan = self._load()
            for index, raw in enumerate(plan):
                try:
                    fault = Fault.from_json(raw)
                except (TypeError, ValueError) as exc:
                    log.warning("fault plan %s: dropping entry %d: %s", self.path, index, exc)
                    del plan[index]
                    self._save(plan)
                    return None
                if fault.operation in (None, operation):
                    del plan[index]
                    self._save(plan)
                    log.info("injecting fault into %s: %s", operation, fault)
                    return fault
        return None

    def _load(self) -> list[Any]:
        try:
            if self.path.stat().st_size > MAX_PLAN_BYTES:
                log.warning("fault plan %s is too large; ignored", self.path)
                return []
            plan = json.loads(self.path.read_bytes() or b"[]")
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("fault plan %s unreadable: %s", self.path, exc)
            return []
        return plan if isinstance(plan, list) else []

    def _save(self, plan: list[Any]) -> None:
        atomic_write(self.path, json.dumps(plan).encode())


def write_plan(path: Path, faults: list[dict[str, Any]]) -> None:
    """Replace the plan atomically (the server never sees a half-written file)."""
    atomic_write(path, json.dumps(faults).encode())


def remaining(path: Path) -> int:
    """How many faults are still queued."""
    try:
        plan = json.loads(path.read_bytes() or b"[]")
    except FileNotFoundError:
        return 0
    return len(plan) if isinstance(plan, list) else 0

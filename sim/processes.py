"""Child processes for the simulated world: started in their own session, output teed line by line
into a log file, readiness awaited on an output line, stopped with SIGTERM then SIGKILL.

A reader thread drains the child's merged stdout/stderr continuously (so a chatty child never
blocks on a full pipe), appends every line to `log_path` and wakes anyone waiting for a line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 20.0
TAIL_LINES: Final = 40

LinePredicate = Callable[[str], bool]


class ProcessFailed(RuntimeError):
    """A child exited or stayed silent before printing what was awaited; the message names the
    process, what was awaited, its exit status and the tail of its log."""


class ManagedProcess:
    """One running child. `wait_for_line` is the readiness primitive; `stop` is idempotent."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str],
        cwd: Path,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("a", encoding="utf-8")
        self._log.write(f"# {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n")
        self._log.flush()
        try:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError:
            self._log.close()
            raise
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with contextlib.suppress(ValueError):
                self._log.write(line)
                self._log.flush()
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def mark(self) -> int:
        """The number of lines seen so far: pass it as `after=` to wait only for newer lines."""
        with self._changed:
            return len(self._lines)

    def lines(self, after: int = 0) -> list[str]:
        with self._changed:
            return self._lines[after:]

    def wait_for_line(
        self,
        predicate: LinePredicate | str,
        *,
        after: int = 0,
        timeout_s: float = START_TIMEOUT_S,
    ) -> str:
        """The first line (from index `after`) matching `predicate` (a callable, or a substring).

        Raises ProcessFailed if the child's output ends or `timeout_s` passes first.
        """
        match = predicate if callable(predicate) else (lambda line: predicate in line)
        what = getattr(predicate, "__name__", None) if callable(predicate) else repr(predicate)
        deadline = time.monotonic() + timeout_s
        index = after
        with self._changed:
            while True:
                while index < len(self._lines):
                    line = self._lines[index]
                    index += 1
                    if match(line):
                        return line
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._changed.wait(remaining)
        if self._eof:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        reason = "exited" if self._eof else f"printed nothing matching within {timeout_s:g} s"
        raise ProcessFailed(
            f"{self.name} {reason} while waiting for {what} (exit status {self.popen.poll()}); "
            f"log {self.log_path}:\n{self.tail()}"
        )

    def tail(self, lines: int = TAIL_LINES) -> str:
        with self._changed:
            return "\n".join(self._lines[-lines:])

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signum)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL the whole session. Returns the status."""
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._log.write(f"# not stopped after {timeout_s:g} s: killed\n")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._reader.join(timeout=timeout_s)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        with contextlib.suppress(ValueError):
            self._log.write(f"# {time.strftime('%H:%M:%S')} exit status {self.popen.returncode}\n")
            self._log.close()
        return self.popen.returncode


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path,
    ready: LinePredicate | str | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> tuple[ManagedProcess, str]:
    """Start a child and, when `ready` is given, wait for its ready line (returned, else "").

    Raises ProcessFailed (after stopping the child) if the ready line does not come, OSError if
    the program cannot be started.
    """
    process = ManagedProcess(name, argv, log_path=log_path, env=env, cwd=cwd)
    if ready is None:
        return process, ""
    try:
        return process, process.wait_for_line(ready, timeout_s=timeout_s)
    except BaseException:
        process.stop()
        raise

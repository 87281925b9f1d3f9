"""Shared tools of the reliability suite: load generation, RSS sampling, a faulty KMS path, and
the scan for secrets in logs and output.

Load goes through the production client (`parent.rpc.AsyncEnclaveClient`) over several
multiplexed connections; every request has a timeout, so a hang shows up as `client.Timeout`
instead of a stuck test. Outcomes are tallied by error code.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nitrokms.parent.rpc import AsyncEnclaveClient
from nitrokms.parent.rpc.errors import RPCError
from nitrokms.sim.faults import FaultProxy
from nitrokms.sim.processes import ManagedProcess, spawn
from nitrokms.sim.world import EnclaveProcess, World

REQUEST_TIMEOUT_S: Final = 30.0
RSS_SAMPLE_S: Final = 0.25
MARKER_PLAINTEXT: Final = b"MARKER-sealed-plaintext-7f3a9c1e-do-not-log"
CONTEXT: Final = {"tenant": "reliability", "purpose": "suite"}

Call = Callable[[AsyncEnclaveClient, int], Awaitable[object]]


@dataclass
class LoadResult:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0
    progress: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @property
    def total(self) -> int:
        return self.ok + sum(self.errors.values())

    def record_ok(self) -> None:
        with self.progress:
            self.ok += 1
            self.progress.notify_all()

    def record_error(self, exc: RPCError) -> None:
        with self.progress:
            self.errors[exc.code] += 1
            if len(self.messages) < 50:
                self.messages.append(str(exc))
            self.progress.notify_all()

    def wait_for_ok(self, target: int, timeout_s: float) -> bool:
        """Block until `ok` reaches `target`; False on timeout."""
        with self.progress:
            return self.progress.wait_for(lambda: self.ok >= target, timeout_s)


async def run_load(
    address: str,
    call: Call,
    *,
    total: int,
    concurrency: int,
    connections: int = 4,
    stop: threading.Event | None = None,
    timeout_s: float = REQUEST_TIMEOUT_S,
    result: LoadResult | None = None,
) -> LoadResult:
    """Run `total` calls (or until `stop` is set) with `concurrency` in flight over
    `connections` clients; tally successes and typed errors into `result` (live, so another
    thread can watch progress). Any non-RPCError propagates."""
    clients = [AsyncEnclaveClient(address, timeout_s=timeout_s) for _ in range(connections)]
    result = LoadResult() if result is None else result
    counter = iter(range(total))
    started = time.monotonic()

    async def worker(index: int) -> None:
        client = clients[index % connections]
        for n in counter:
            if stop is not None and stop.is_set():
                return
            try:
                await call(client, n)
            except RPCError as exc:
                result.record_error(exc)
            else:
                result.record_ok()

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for client in clients:
            await client.aclose()
    result.seconds = time.monotonic() - started
    return result


def gdk_call(key_id: str, context: dict[str, str] | None = None) -> Call:
    """One attested fetch: GenerateDataKey (Recipient + CMS inside the enclave), then ForgetKey."""

    async def call(client: AsyncEnclaveClient, n: int) -> object:
        result = await client.generate_data_key(key_id, encryption_context=context)
        await client.forget_key(result.handle)
        return result

    return call


class LoadThread:
    """`run_load` in a background thread, for faults injected while it runs."""

    def __init__(self, address: str, call: Call, *, concurrency: int = 8) -> None:
        self.stop = threading.Event()
        self.result = LoadResult()
        self.error: BaseException | None = None
        self._args = (address, call, concurrency)
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        address, call, concurrency = self._args
        try:
            asyncio.run(
                run_load(
                    address, call, total=10**9, concurrency=concurrency, stop=self.stop,
                    result=self.result,
                )
            )  # fmt: skip
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> LoadThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    def finish(self, timeout_s: float = REQUEST_TIMEOUT_S + 30) -> LoadResult:
        """Stop and return the tally. Raises AssertionError if the load did not stop in time
        (a request hung past its own timeout) or crashed with a non-RPC error."""
        self.stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the load did not stop: a request hung"
        if self.error is not None:
            raise self.error
        return self.result

    def wait_for_successes(self, count: int, timeout_s: float = 60.0) -> None:
        """Block until `count` more calls have succeeded. Raises AssertionError on timeout."""
        reached = self.result.wait_for_ok(self.result.ok + count, timeout_s)
        assert self.error is None, self.error
        assert reached, f"no progress within {timeout_s:g} s: {self.result}"


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class RSSSeries:
    samples: list[int] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.samples[0]

    @property
    def peak(self) -> int:
        return max(self.samples)

    @property
    def end(self) -> int:
        return self.samples[-1]

    def __str__(self) -> str:
        mib = 1024
        return (
            f"start {self.start / mib:.1f} MiB, peak {self.peak / mib:.1f} MiB, "
            f"end {self.end / mib:.1f} MiB"
        )


@contextmanager
def sample_rss(pids: dict[str, int]) -> Iterator[dict[str, RSSSeries]]:
    """Sample the RSS of each pid every RSS_SAMPLE_S until the block ends (start and end too)."""
    series = {name: RSSSeries() for name in pids}
    done = threading.Event()

    def sample() -> None:
        for name, pid in pids.items():
            value = rss_kib(pid)
            if value is not None:
                series[name].samples.append(value)

    def loop() -> None:
        while not done.wait(RSS_SAMPLE_S):
            sample()

    sample()
    thread = threading.Thread(target=loop, name="rss", daemon=True)
    thread.start()
    try:
        yield series
    finally:
        done.set()
        thread.join()
        sample()


# --- a second, faulty path to KMS -----------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONUNBUFFERED="1")
    return env


def start_relay(world: World, name: str, upstream_port: int) -> tuple[ManagedProcess, Path]:
    """A `nitrokms proxy` relaying a unix socket to 127.0.0.1:`upstream_port` (caller stops it)."""
    allowlist = world.workdir / f"{name}-allowlist.yaml"
    allowlist.write_text(f"allowlist:\n- {{address: 127.0.0.1, port: {upstream_port}}}\n")
    socket_path = world.run_dir / f"{name}.sock"
    argv = [
        sys.executable, "-m", "nitrokms.cli", "proxy", "8000", "127.0.0.1", str(upstream_port),
        "--config", str(allowlist), "--listen", f"unix://{socket_path}", "--log-format", "json",
        "--connect-timeout", "2", "--drain-timeout", "2",
    ]  # fmt: skip
    process, _ = spawn(
        name, argv, log_path=world.log_dir / f"{name}.log", env=_env(), cwd=world.workdir,
        ready="proxy.listening",
    )  # fmt: skip
    return process, socket_path


@dataclass
class FaultyPath:
    """enclave `faulty` -> relay `relay-faulty` -> FaultProxy -> the world's local KMS."""

    proxy: FaultProxy
    relay: ManagedProcess
    enclave: EnclaveProcess


@contextmanager
def faulty_path(world: World, *enclave_args: str) -> Iterator[FaultyPath]:
    with FaultProxy(world.kms_port) as proxy:
        relay, socket_path = start_relay(world, "relay-faulty", proxy.port)
        try:
            enclave = world.spawn_enclave("faulty", kms_relay=socket_path, extra_args=enclave_args)
            yield FaultyPath(proxy, relay, enclave)
        finally:
            proxy.close()  # end the relayed connections first, so the relay drains at once
            relay.stop()


# --- secrets ------------------------------------------------------------------------------------


def world_secrets(world: World) -> dict[str, str]:
    """Every secret value the world's processes hold: credential secrets and session tokens."""
    found: dict[str, str] = {}
    for path in (world.workdir / "secrets").glob("*.json"):
        entries: Any = json.loads(path.read_text())
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            for name in ("secret_access_key", "session_token", "SecretAccessKey", "SessionToken"):
                value = entry.get(name) if isinstance(entry, dict) else None
                if isinstance(value, str) and len(value) >= 16:
                    found[f"{path.name}[{index}].{name}"] = value
    return found


def leaks(texts: dict[str, str], secrets: dict[str, str | bytes]) -> list[str]:
    """Where any secret (raw, hex or base64 for bytes) appears in any text."""
    import base64

    needles: list[tuple[str, str]] = []
    for name, value in secrets.items():
        if isinstance(value, bytes):
            needles += [(name, value.decode("latin-1")), (name, value.hex())]
            needles.append((name, base64.b64encode(value).decode()))
        else:
            needles.append((name, value))
    return [
        f"{secret} in {where}"
        for where, text in texts.items()
        for secret, needle in needles
        if needle and needle in text
    ]


def read_logs(paths: Iterable[Path]) -> dict[str, str]:
    return {str(p): p.read_text(errors="replace") for p in paths if p.is_file()}

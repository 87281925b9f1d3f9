"""Same-run A/B of two enclave builds or settings: one World, two enclaves, calls interleaved.

    .venv/bin/python -m tests.bench.ab_enclave --a HEAD --b worktree [--a-args "..."]
        [--b-args "..."] [--rounds 8] [--calls 100] [--c16]

Both enclaves run in the same World (one local KMS with `--log-timing`, one relay), each under
`nsm run` in its own namespace, `--a`/`--b` naming the git ref whose `nitrokms` it runs
(`worktree`: the working tree; see trees.py) and `--a-args`/`--b-args` extra enclave options. A
parent-side `AsyncEnclaveClient` per enclave drives attested GenerateDataKey calls at c=1 in
rounds ordered A B B A A B ..., so both sides see the same load drift. Per side it reports what
`bench_e2e` reports (latency; overhead = each call minus the KMS's logged handler time for that
call; the ratio of the two medians) plus CPU milliseconds per call of the enclave service, its
`nsm run` (the simulated NSM), the KMS and the relay, from /proc over the rounds, and of the
client (this process's thread running the calls); with `--c16`,
also throughput at concurrency 16 (interleaved the same way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nitrokms.parent.rpc import AsyncEnclaveClient
from nitrokms.sim.world import EnclaveProcess, World

from tests.bench.bench_e2e import _cpu_s, _server_times_s
from tests.bench.common import percentile
from tests.bench.trees import WORKTREE, commit_of, import_tree

WARMUP = 30
PROCESSES = ("enclave", "nsm", "kms", "relay", "client")  # client: this process's loop thread


@dataclass
class Side:
    label: str
    ref: str
    args: list[str]
    enclave: EnclaveProcess | None = None
    latency_s: list[float] = field(default_factory=list)
    overhead_s: list[float] = field(default_factory=list)
    inside_s: list[float] = field(default_factory=list)
    round_medians_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROCESSES, 0.0))
    throughput: list[float] = field(default_factory=list)

    @property
    def address(self) -> str:
        assert self.enclave is not None
        return self.enclave.address

    def summary(self) -> dict[str, Any]:
        calls = len(self.latency_s)
        ordered = sorted(self.latency_s)
        overhead = statistics.median(self.overhead_s)
        inside = statistics.median(self.inside_s)
        return {
            "ref": self.ref, "commit": commit_of(self.ref), "args": self.args, "calls": calls,
            "latency_ms": statistics.median(ordered) * 1000,
            "latency_p99_ms": percentile(ordered, 0.99) * 1000,
            "overhead_ms": overhead * 1000, "kms_handler_ms": inside * 1000,
            "overhead_ratio": overhead / inside,
            "cpu_ms_per_call": {k: v * 1000 / calls for k, v in self.cpu_s.items()},
            "round_medians_ms": [round(x, 3) for x in self.round_medians_ms],
            "throughput_c16": [round(x, 1) for x in self.throughput],
        }  # fmt: skip


@contextmanager
def _pythonpath(entry: Path | None) -> Iterator[None]:
    saved = os.environ.get("PYTHONPATH")
    if entry is not None:
        os.environ["PYTHONPATH"] = str(entry)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def _pids(world: World, side: Side) -> dict[str, int]:
    assert side.enclave is not None
    return {
        "enclave": side.enclave.pid,
        "nsm": _ppid(side.enclave.pid),
        "kms": world.process("kms").pid,
        "relay": world.process("relay").pid,
    }


async def _round(world: World, side: Side, key: str, calls: int) -> None:
    kms = world.process("kms")
    pids = _pids(world, side)
    mark = kms.mark()
    before = {name: _cpu_s(pid) for name, pid in pids.items()}
    client_before = time.thread_time()
    samples = []
    async with AsyncEnclaveClient(side.address) as client:
        for _ in range(calls):
            started = time.perf_counter()
            await client.generate_data_key(key)
            samples.append(time.perf_counter() - started)
    side.cpu_s["client"] += time.thread_time() - client_before
    for name, pid in pids.items():
        side.cpu_s[name] += _cpu_s(pid) - before[name]
    inside = _server_times_s(world, mark, calls)
    side.latency_s += samples
    side.inside_s += inside
    side.overhead_s += [t - k for t, k in zip(samples, inside, strict=True)]
    side.round_medians_ms.append(statistics.median(samples) * 1000)


async def _throughput(side: Side, key: str, calls: int) -> None:
    async with AsyncEnclaveClient(side.address, max_in_flight=16) as client:

        async def worker() -> None:
            for _ in range(calls // 16):
                await client.generate_data_key(key)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        side.throughput.append(calls // 16 * 16 / (time.perf_counter() - started))


async def _measure(
    world: World, key: str, sides: Sequence[Side], rounds: int, calls: int, *, c16: bool
) -> None:
    for side in sides:
        async with AsyncEnclaveClient(side.address) as client:
            for _ in range(WARMUP):
                await client.generate_data_key(key)
    for index in range(rounds):
        order = sides if index % 4 in (0, 3) else list(reversed(sides))
        for side in order:
            await _round(world, side, key, calls)
        if c16:
            for side in order:
                await _throughput(side, key, calls * 4)


def run(a: Side, b: Side, rounds: int, calls: int, c16: bool = False) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="ab-enclave-") as tmp,
        World(Path(tmp), kms_args=["--log-timing"],
              enclave_args=["--log-level", "WARNING"]) as world,
    ):  # fmt: skip
        for side in (a, b):
            workdir = Path(tmp) / side.label  # the same ref may be on both sides (an A/A run)
            workdir.mkdir()
            tree = import_tree(side.ref, workdir) if side.ref != WORKTREE else None
            with _pythonpath(tree):
                side.enclave = world.spawn_enclave(
                    f"ab-{side.label}", extra_args=["--log-level", "WARNING", *side.args]
                )
        key = world.create_attested_key()
        asyncio.run(_measure(world, key, (a, b), rounds, calls, c16=c16))
    return {"a": a.summary(), "b": b.summary(), "rounds": rounds, "calls_per_round": calls}


def report(result: dict[str, Any]) -> str:
    lines = []
    for label in ("a", "b"):
        s = result[label]
        cpu = "  ".join(f"{k} {v:.2f}" for k, v in s["cpu_ms_per_call"].items())
        lines += [
            f"{label}: {s['ref']} ({s['commit']}) {' '.join(s['args'])}".rstrip(),
            f"   latency c=1 median {s['latency_ms']:.2f} ms, p99 {s['latency_p99_ms']:.2f} ms;"
            f" overhead {s['overhead_ms']:.2f} ms over KMS {s['kms_handler_ms']:.2f} ms"
            f" = {s['overhead_ratio']:.2f}x",
            f"   CPU ms per call: {cpu}",
            f"   round medians (ms): {' '.join(f'{x:.2f}' for x in s['round_medians_ms'])}",
        ]
        if s["throughput_c16"]:
            lines.append(f"   throughput c=16 (fetch/s): {s['throughput_c16']}")
    a, b = result["a"], result["b"]
    paired = [y - x for x, y in zip(a["round_medians_ms"], b["round_medians_ms"], strict=True)]
    lines.append(
        f"b - a: latency {b['latency_ms'] - a['latency_ms']:+.2f} ms (per-round median "
        f"{statistics.median(paired):+.2f} ms, {sum(d < 0 for d in paired)}/{len(paired)} rounds "
        f"faster), overhead {b['overhead_ms'] - a['overhead_ms']:+.2f} ms"
    )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.ab_enclave", description=__doc__)
    parser.add_argument("--a", default="HEAD", help="git ref for side A (or 'worktree')")
    parser.add_argument("--b", default=WORKTREE, help="git ref for side B (or 'worktree')")
    parser.add_argument("--a-args", default="", help="extra enclave options for A")
    parser.add_argument("--b-args", default="", help="extra enclave options for B")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=100, help="calls per round and side")
    parser.add_argument("--c16", action="store_true", help="also throughput at concurrency 16")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    a = Side("a", args.a, shlex.split(args.a_args))
    b = Side("b", args.b, shlex.split(args.b_args))
    result = run(a, b, args.rounds, args.calls, args.c16)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

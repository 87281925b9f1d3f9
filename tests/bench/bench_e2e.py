"""Attested fetch end to end through the whole World, against the kmstool-enclave-cli pattern.

    .venv/bin/python -m tests.bench.bench_e2e [--quick]

One `World` (local KMS, relay, enclave under the simulated NSM in its own network namespace,
credential provider). A parent-side `AsyncEnclaveClient` calls GenerateDataKey on a key whose
policy pins the world's PCRs: client -> enclave (RPC) -> pooled RSA key + NSM document -> CONNECT
listener -> relay -> local KMS (TLS, SigV4, attestation, CMS) and back, at concurrency 1, 16, 64.

Baseline, same run, same path: `tests.bench.kmstool_pattern`, one process per call (own RSA key,
own NSM document, fresh TLS connection through the same relay, from inside the enclave's network
namespace under `nsm run`), at the same concurrency levels.

Enclave overhead per fetch (c=1): each call's end-to-end time minus the local KMS's own handling
time for that call. The KMS runs with `--log-timing` and logs `server-time op=GenerateDataKey
ms=...` per request (from body read to reply built: JSON, SigV4, policy, attestation verification,
CMS encryption); at concurrency 1 the n-th logged GenerateDataKey is the n-th call.

That handler time leaves out the KMS's TLS record decryption, HTTP parsing and reply writing,
which a real KMS also does on its side of the wire; here they land in "enclave overhead". A
second, informational row counts them as KMS: each call's time minus the KMS process's CPU time
per call over the c=1 run (utime + stime from /proc; at c=1 the KMS serves nothing else). The
target stays on the conservative handler-time row.

A third informational row (added for issue 14, no target) is the enclave service's own CPU time
per fetch over the c=1 run (its process, all threads, from /proc), beside the same KMS handler
time: the work the service itself does per fetch, without the client's, the relay's or the
KMS's. The overhead row is a wall-clock difference that also carries those.

`--skip-baseline` leaves out the slow kmstool-pattern runs (their rows show a baseline of 0),
for iterating on the enclave's own figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nitrokms.parent.rpc import AsyncEnclaveClient
from nitrokms.sim.world import World

from tests.bench.common import Figure, aggregate, figure, summarize, table

LEVELS = (1, 16, 64)
TARGET_OVERHEAD_MS = 2.0
WARMUP = 20
SERVER_TIME = re.compile(r"server-time op=GenerateDataKey status=200 ms=([0-9.]+)")
DRIVER_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Plan:
    """How many calls per concurrency level, for the enclave and for the baseline."""

    enclave: dict[int, int]
    kmstool: dict[int, int]

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls({1: 16, 16: 32, 64: 64}, {1: 1, 16: 2, 64: 2})
        return cls({1: 300, 16: 640, 64: 1280}, {1: 8, 16: 16, 64: 64})


@dataclass(frozen=True)
class Run:
    samples_s: list[float]
    wall_s: float

    @property
    def throughput(self) -> float:
        return len(self.samples_s) / self.wall_s


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process `pid`, all threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _enclave_levels(
    world: World, key: str, plan: Plan
) -> tuple[dict[int, Run], int, dict[str, float]]:
    """Each level's run on one client, after a warm-up; the KMS log mark taken just before the
    c=1 run; and the CPU seconds per call of the KMS and the enclave processes during that run."""
    kms = world.process("kms")
    pids = {"kms": kms.pid, "enclave": world.enclave_pid}
    async with AsyncEnclaveClient(world.enclave_address, max_in_flight=max(LEVELS)) as client:
        for _ in range(WARMUP):
            await client.generate_data_key(key)
        mark = kms.mark()
        before = {name: _cpu_s(pid) for name, pid in pids.items()}
        runs = {1: await _level(client, key, plan.enclave[1], 1)}
        cpu = {name: (_cpu_s(pid) - before[name]) / plan.enclave[1] for name, pid in pids.items()}
        runs.update({c: await _level(client, key, plan.enclave[c], c) for c in LEVELS[1:]})
    return runs, mark, cpu


async def _level(client: AsyncEnclaveClient, key: str, count: int, concurrency: int) -> Run:
    samples: list[float] = []

    async def worker(calls: int) -> None:
        for _ in range(calls):
            started = time.perf_counter()
            await client.generate_data_key(key)
            samples.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
    return Run(samples, time.perf_counter() - started)


def _server_times_s(world: World, mark: int, count: int) -> list[float]:
    """The first `count` GenerateDataKey handling times the KMS logged after `mark`, in seconds.

    The KMS logs each line after flushing its reply, so the last one may trail the client by a
    moment: wait for the count-th line. Raises ProcessFailed if it never comes.
    """
    kms = world.process("kms")
    seen = 0

    def enough(line: str) -> bool:
        nonlocal seen
        seen += SERVER_TIME.search(line) is not None
        return seen >= count

    kms.wait_for_line(enough, after=mark, timeout_s=30)
    found = [float(m.group(1)) / 1000 for m in map(SERVER_TIME.search, kms.lines(mark)) if m]
    return found[:count]


def _kmstool_env(world: World) -> dict[str, str]:
    """The parent role's credentials (the ones the key policy allows), in the environment only."""
    parent = world.parent_credentials()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=parent.access_key_id,
        AWS_SECRET_ACCESS_KEY=parent.secret_access_key,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PYTHONUNBUFFERED="1",
    )
    if parent.session_token:
        env["AWS_SESSION_TOKEN"] = parent.session_token
    return env


def _kmstool_run(world: World, key: str, count: int, concurrency: int) -> Run:
    """Drive `count` kmstool-pattern processes inside the enclave's namespace, under `nsm run`
    with the enclave's measurements. Raises RuntimeError if the driver fails."""
    inner = [
        sys.executable, "-m", "nitrokms.sim", "nsm", "run", "--state", str(world.nsm_state),
        "--measurements", str(world.workdir / "enclave-measurements.json"),
        "--role-arn", world.role_arn, "--region", world.region, "--",
        sys.executable, "-m", "tests.bench.kmstool_pattern", "drive",
        "--count", str(count), "--concurrency", str(concurrency), "--key", key,
        "--relay", f"unix://{world.relay_socket}",
        "--endpoint", f"{world.kms_host}:{world.kms_port}", "--ca", str(world.kms_ca_path),
        "--region", world.region,
    ]  # fmt: skip
    done = subprocess.run(
        world.enclave_netns_command(inner),
        env=_kmstool_env(world),
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kmstool pattern driver failed: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Run(result["samples_s"], result["wall_s"])


def _figures(enclave: dict[int, Run], kmstool: dict[int, Run], overhead: list[float],
             inside: list[float], cpu_s: dict[str, float]) -> list[Figure]:  # fmt: skip
    kms_cpu_s = cpu_s["kms"]
    inside_ms = summarize(inside, 1000).median
    figures = []
    for c in LEVELS:
        base = summarize(kmstool[c].samples_s or [0.0], 1000)
        figures.append(figure("e2e", f"attested fetch latency, c={c}",
                              summarize(enclave[c].samples_s, 1000), "ms",
                              f"kmstool pattern, c={c}", base.median))  # fmt: skip
    for c in LEVELS:
        figures.append(aggregate("e2e", f"attested fetch throughput, c={c}",
                                 enclave[c].throughput, "fetch/s", len(enclave[c].samples_s),
                                 f"kmstool pattern, c={c}", kmstool[c].throughput,
                                 better="higher"))  # fmt: skip
    figures.append(figure("e2e", "enclave overhead per fetch (total - KMS), c=1",
                          summarize(overhead, 1000), "ms", "time inside KMS, c=1",
                          inside_ms, target=TARGET_OVERHEAD_MS))  # fmt: skip
    figures.append(figure("e2e", "enclave overhead (total - KMS process CPU), c=1",
                          summarize([t - kms_cpu_s for t in enclave[1].samples_s], 1000), "ms",
                          "KMS process CPU per call, c=1", kms_cpu_s * 1000))  # fmt: skip
    figures.append(aggregate("e2e", "enclave service CPU per fetch, c=1", cpu_s["enclave"] * 1000,
                             "ms", len(enclave[1].samples_s), "time inside KMS, c=1",
                             inside_ms))  # fmt: skip
    return figures


def run(quick: bool = False, skip_baseline: bool = False) -> list[Figure]:
    """All end-to-end figures. Raises WorldError/ProcessFailed if the World does not start,
    RuntimeError if the baseline fails."""
    plan = Plan.make(quick)
    with (
        tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp,
        World(Path(tmp), kms_args=["--log-timing"],
              enclave_args=["--log-level", "WARNING"]) as world,
    ):  # fmt: skip
        key = world.create_attested_key()
        enclave, mark, cpu_s = asyncio.run(_enclave_levels(world, key, plan))
        inside = _server_times_s(world, mark, plan.enclave[1])
        kmstool = {
            c: Run([], 1.0) if skip_baseline else _kmstool_run(world, key, plan.kmstool[c], c)
            for c in LEVELS
        }
    overhead = [t - k for t, k in zip(enclave[1].samples_s, inside, strict=True)]
    return _figures(enclave, kmstool, overhead, inside, cpu_s)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_e2e")
    parser.add_argument("--quick", action="store_true", help="few calls: a smoke test")
    parser.add_argument(
        "--skip-baseline", action="store_true", help="leave out the slow kmstool-pattern runs"
    )
    args = parser.parse_args(argv)
    print(table(run(args.quick, args.skip_baseline)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

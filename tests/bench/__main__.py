"""`make bench`: run every benchmark, print one table, write the JSON record.

    .venv/bin/python -m tests.bench [--quick] [--json out/bench.json] [--only e2e,relay,...]

Each `tests.bench.bench_<area>` module has `run(quick) -> list[Figure]`; every figure is measured
beside its baseline in the same run (see common.py). The output of the servers and processes the
benchmarks start (and their warnings) goes to a log file beside the JSON, not the terminal. A
module that fails is reported (in the table's footer and the JSON's `errors`) and the others still
run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.bench.common import Figure, table

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULES = (
    "e2e", "relay", "attestation", "nsm", "cms", "kms", "enclave_kms", "enclave", "rpc", "cbor",
)  # fmt: skip
LIBRARIES = ("nitrokms", "cryptography", "cbor2", "boto3", "botocore", "pycose", "cffi")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _field(text: str, name: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return "unknown"


def _command(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else ""


def machine() -> dict[str, Any]:
    mem_kib = _field(_read("/proc/meminfo"), "MemTotal").split()[0]
    return {
        "cpu_model": _field(_read("/proc/cpuinfo"), "model name"),
        "cores": os.cpu_count(),
        "memory_mib": int(mem_kib) // 1024 if mem_kib.isdigit() else None,
        "kernel": platform.release(),
        "machine": platform.machine(),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    socat = shutil.which("socat")
    found["socat"] = _socat_version(socat) if socat else ""
    return found


def _socat_version(path: str) -> str:
    done = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("socat version"):
            return line.split()[2]
    return "unknown"


def git() -> dict[str, Any]:
    commit = _command("git", "-C", str(REPO_ROOT), "rev-parse", "HEAD")
    status = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(REPO_ROOT), "status", "--porcelain"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return {"commit": commit, "dirty": bool(status.stdout.strip())}


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 (inherited by every child process) at `path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_module(name: str, quick: bool, log: Path) -> tuple[list[Figure], str | None, float]:
    """One module's figures, its error (None if it ran) and its duration in seconds."""
    started = time.perf_counter()
    with stderr_to(log):
        print(f"===== bench_{name} =====", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"tests.bench.bench_{name}")
            figures: list[Figure] = module.run(quick=quick)
            error = None
        except Exception as exc:  # one failing benchmark must not hide the others
            traceback.print_exc()
            figures, error = [], f"{type(exc).__name__}: {exc}"
    return figures, error, time.perf_counter() - started


def target_miss(f: Figure) -> float:
    """How far past its target a figure is (> 1: missed), 0 for figures without one."""
    if f.target is None or f.median <= 0:
        return 0.0
    return f.median / f.target if f.better == "lower" else f.target / f.median


def worst(figures: Sequence[Figure]) -> tuple[Figure | None, Figure | None]:
    """The figure furthest past its target, and the one furthest behind its baseline."""
    targeted = [f for f in figures if f.target is not None]
    by_target = max(targeted, key=target_miss, default=None)
    by_baseline = max(figures, key=lambda f: f.badness, default=None)
    return by_target, by_baseline


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke test")
    parser.add_argument("--json", type=Path, help="write the JSON record here")
    parser.add_argument("--log", type=Path, help="child output (default: beside the JSON)")
    parser.add_argument(
        "--only", type=lambda s: s.split(","), default=list(MODULES),
        help=f"comma-separated subset of {','.join(MODULES)}",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    unknown = sorted(set(args.only) - set(MODULES))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    log = args.log or (args.json.with_suffix(".log") if args.json else Path("bench.log"))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    started = time.perf_counter()
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    durations: dict[str, float] = {}
    for name in [m for m in MODULES if m in args.only]:
        print(f"bench_{name} ...", end=" ", flush=True)
        found, error, durations[name] = run_module(name, args.quick, log)
        figures += found
        print(f"{durations[name]:.1f} s" + (f"  FAILED: {error}" if error else ""), flush=True)
        if error:
            errors[name] = error
    print()
    print(table(figures))
    by_target, by_baseline = worst(figures)
    if by_target is not None:
        print(f"\nfurthest past its target: {by_target.group}: {by_target.name} "
              f"({by_target.median:.3g} {by_target.unit}, target {by_target.target:.3g}, "
              f"{target_miss(by_target):.2f}x)")  # fmt: skip
    if by_baseline is not None:
        print(f"furthest behind its baseline: {by_baseline.group}: {by_baseline.name} "
              f"({by_baseline.median:.3g} {by_baseline.unit} vs {by_baseline.baseline_name} "
              f"{by_baseline.baseline:.3g}, {by_baseline.badness:.2f}x worse)")  # fmt: skip
    for name, error in errors.items():
        print(f"bench_{name} FAILED: {error} (see {log})")
    if args.json:
        record = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "machine": machine(),
            "versions": versions(),
            "git": git(),
            "duration_s": round(time.perf_counter() - started, 1),
            "module_durations_s": {k: round(v, 1) for k, v in durations.items()},
            "figures": [f.to_json() for f in figures],
            "worst_vs_target": None
            if by_target is None
            else f"{by_target.group}: {by_target.name}",
            "worst_vs_baseline": (
                None if by_baseline is None else f"{by_baseline.group}: {by_baseline.name}"
            ),
            "errors": errors,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json} (child output in {log})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

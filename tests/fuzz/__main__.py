"""`python -m tests.fuzz [--seconds N | --inputs N] [--target NAME]...`: run every fuzz target.

Prints one line per target (inputs run, accepted, typed errors, failures) and a total; exits 1 if
any input crashed (an exception outside the target's typed errors), hung past the per-input
bound or cost more than its budget (CPU and memory linear in its length, calibrated on the
target's seeds: tests/fuzz/cost.py), printing the first failing inputs as hex so they can be
replayed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from tests.fuzz.cost import DEFAULT_COST_MODEL
from tests.fuzz.engine import PER_INPUT_TIMEOUT_S, TargetReport, fuzz
from tests.fuzz.targets import TARGETS, by_name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, help="time per target")
    budget.add_argument("--inputs", type=int, help="inputs per target (default 2000)")
    parser.add_argument("--target", action="append", default=[], choices=[t.name for t in TARGETS])
    parser.add_argument("--seed", type=int, default=0, help="random seed (runs are deterministic)")
    parser.add_argument("--timeout-s", type=float, default=PER_INPUT_TIMEOUT_S)
    parser.add_argument(
        "--cpu-us-per-byte",
        type=float,
        default=DEFAULT_COST_MODEL.cpu_s_per_byte * 1e6,
        help="CPU budget per input byte, on top of the seeds' (default %(default)g)",
    )
    parser.add_argument(
        "--memory-per-byte",
        type=float,
        default=DEFAULT_COST_MODEL.memory_per_byte,
        help="bytes of memory allowed per input byte, on top of the seeds' (default %(default)g)",
    )
    parser.add_argument("--no-cost", action="store_true", help="check types and hangs only")
    return parser


def _line(report: TargetReport) -> str:
    status = "ok" if report.ok else "FAIL"
    return (
        f"{report.name:<18} {report.inputs:>9} inputs {report.accepted:>8} accepted "
        f"{report.typed_errors:>9} typed errors {report.failures:>4} failures "
        f"{report.seconds:7.1f}s  {status}{_kinds(report)}"
    )


def _kinds(report: TargetReport) -> str:
    if not report.failures:
        return ""
    return " (" + ", ".join(f"{n} {kind}" for kind, n in sorted(report.failure_kinds.items())) + ")"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    inputs = args.inputs if args.inputs is not None or args.seconds is not None else 2000
    cost = None
    if not args.no_cost:
        cost = dataclasses.replace(
            DEFAULT_COST_MODEL,
            cpu_s_per_byte=args.cpu_us_per_byte / 1e6,
            memory_per_byte=args.memory_per_byte,
        )
    reports = []
    for target in by_name(args.target):
        report = fuzz(
            target,
            inputs=inputs,
            seconds=args.seconds,
            rng_seed=args.seed,
            timeout_s=args.timeout_s,
            cost=cost,
        )
        reports.append(report)
        print(_line(report), flush=True)
        for failure in report.examples:
            print(f"    {failure}", flush=True)
    total = sum(r.inputs for r in reports)
    failures = sum(r.failures for r in reports)
    print(
        f"total: {total} inputs over {len(reports)} targets, {failures} failures; "
        + (
            "only typed errors occurred, within budget"
            if not failures
            else "UNTYPED ERRORS, HANGS OR INPUTS OVER BUDGET FOUND"
        )
    )
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

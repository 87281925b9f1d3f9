"""What every benchmark returns: `Figure` records, each beside a baseline measured in the same run.

These machines are noisy (2 cores, other work running), so an absolute number means little on its
own: every figure carries the name and value of a baseline taken in the same run, and the ratio
between them. `ratio` is always `median / baseline`; `better` says which direction is good, and
`badness` folds both directions into one number (> 1: worse than the baseline) so the runner can
name the worst figure.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Stats:
    """Summary of one sample set: median, p99 and the interquartile range, in the samples' unit."""

    median: float
    p99: float
    iqr: float
    n: int


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples (q in 0..1). Raises ValueError if empty."""
    if not ordered:
        raise ValueError("no samples")
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered))))]


def summarize(samples: Sequence[float], scale: float = 1.0) -> Stats:
    """Stats of `samples` multiplied by `scale` (e.g. 1000 for seconds -> ms)."""
    ordered = sorted(s * scale for s in samples)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4)
    else:
        q1 = q3 = ordered[0] if ordered else 0.0
    return Stats(statistics.median(ordered), percentile(ordered, 0.99), q3 - q1, len(ordered))


def time_calls(call: Callable[[], object], n: int, warmup: int = 10) -> list[float]:
    """Seconds per call for `n` sequential calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


@dataclass(frozen=True)
class Figure:
    """One measured figure and its same-run baseline.

    `median`/`p99`/`spread` (IQR, or None for a single aggregate such as a throughput) are in
    `unit`; `baseline` is in the same unit. `target` is the project's budget for the figure, when
    it has one (DESIGN.md "Performance budget"), in the same unit.
    """

    group: str
    name: str
    unit: str
    median: float
    p99: float | None
    spread: float | None
    n: int
    baseline_name: str
    baseline: float
    better: Better = "lower"
    target: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.median / self.baseline if self.baseline else float("inf")

    @property
    def badness(self) -> float:
        """How much worse than the baseline: ratio if lower is better, its inverse otherwise."""
        if self.better == "lower":
            return self.ratio
        return self.baseline / self.median if self.median else float("inf")

    @property
    def target_met(self) -> bool | None:
        if self.target is None:
            return None
        return self.median <= self.target if self.better == "lower" else self.median >= self.target

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (a non-finite ratio, from a zero baseline or median, becomes None)."""
        data = asdict(self)
        data.update(ratio=self.ratio if math.isfinite(self.ratio) else None)
        data.update(target_met=self.target_met)
        return data

    def with_baseline(self, name: str, value: float) -> Figure:
        return replace(self, baseline_name=name, baseline=value)


def figure(  # noqa: PLR0917 - one positional per table column, as call sites read
    group: str,
    name: str,
    stats: Stats,
    unit: str,
    baseline_name: str,
    baseline: float,
    **extra: Any,
) -> Figure:
    """A Figure from sample statistics."""
    return Figure(
        group, name, unit, stats.median, stats.p99, stats.iqr, stats.n, baseline_name, baseline,
        **extra,
    )  # fmt: skip


def aggregate(  # noqa: PLR0917 - one positional per table column, as call sites read
    group: str,
    name: str,
    value: float,
    unit: str,
    n: int,
    baseline_name: str,
    baseline: float,
    **extra: Any,
) -> Figure:
    """A Figure for a single aggregate number (throughput, memory): no p99, no spread."""
    return Figure(group, name, unit, value, None, None, n, baseline_name, baseline, **extra)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.2f}"


def table(figures: Sequence[Figure]) -> str:
    """The figures as one fixed-width text table (the format BENCHMARKS.md quotes)."""
    header = ("figure", "unit", "median", "p99", "IQR", "n", "baseline", "base", "ratio", "target")
    rows = [header]
    for f in figures:
        target = ""
        if f.target is not None:
            sign = "<=" if f.better == "lower" else ">="
            target = f"{sign}{_num(f.target)} {'ok' if f.target_met else 'MISSED'}"
        rows.append((
            f"{f.group}: {f.name}", f.unit, _num(f.median), _num(f.p99), _num(f.spread), str(f.n),
            f.baseline_name, _num(f.baseline), f"{f.ratio:.2f}x", target,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {2, 3, 4, 5, 7, 8}
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

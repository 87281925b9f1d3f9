"""The fuzz runner in CI: every target for a bounded number of inputs, and the runner's own checks
(it reports a crash, a hang and a wrong invariant; runs are reproducible)."""

from __future__ import annotations

import pytest

from tests.fuzz.__main__ import main
from tests.fuzz.engine import Target, fuzz
from tests.fuzz.targets import TARGETS

CI_INPUTS_PER_TARGET = 3000


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_target_raises_only_typed_errors(target: Target) -> None:
    report = fuzz(target, inputs=CI_INPUTS_PER_TARGET, rng_seed=20261129)
    assert report.ok, [str(f) for f in report.examples]
    assert report.inputs == CI_INPUTS_PER_TARGET
    assert report.typed_errors > 0, "the mutations never reached the target's error paths"


def _seeds() -> list[bytes]:
    return [b"\x00\x01\x02\x03"]


def _crashes_on_ff(data: bytes) -> None:
    if b"\xff" in data:
        raise IndexError("boom")
    raise ValueError("typed")


def _hangs_on_long_input(data: bytes) -> None:
    while len(data) > 40:
        pass


def test_runner_reports_an_untyped_exception_with_its_input() -> None:
    report = fuzz(Target("crashy", _crashes_on_ff, _seeds, (ValueError,)), inputs=500)
    assert report.failures > 0
    example = report.examples[0]
    assert b"\xff" in example.data
    assert example.error.startswith("IndexError: boom")


def test_runner_reports_a_hang_within_the_time_bound() -> None:
    target = Target("hangs", _hangs_on_long_input, lambda: [b"x" * 41], ())
    report = fuzz(target, inputs=2, timeout_s=0.2)
    assert report.failures >= 1
    assert report.examples[0].error.startswith("hang")
    assert report.seconds < 2


def test_runs_are_reproducible() -> None:
    target = TARGETS[0]
    first, second = fuzz(target, inputs=300, rng_seed=5), fuzz(target, inputs=300, rng_seed=5)
    assert (first.accepted, first.typed_errors) == (second.accepted, second.typed_errors)


def test_command_line_prints_counts_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--inputs", "50", "--target", "frames", "--target", "envelope"]) == 0
    out = capsys.readouterr().out
    assert "frames" in out
    assert "envelope" in out
    assert "total: 100 inputs over 2 targets, 0 failures; only typed errors occurred" in out

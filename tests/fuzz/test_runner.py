"""The fuzz runner in CI: every target for a bounded number of inputs, and the runner's own checks
(it reports a crash, a hang, an input over its cost budget and a wrong invariant; runs are
reproducible)."""

from __future__ import annotations

import time

import cbor2
import pytest

from tests.fuzz.__main__ import main
from tests.fuzz.cost import calibrate, tracing
from tests.fuzz.engine import FuzzFailure, Target, fuzz, run_one
from tests.fuzz.targets import TARGETS, by_name
from tests.reliability.hostile import amplification_frame

CI_INPUTS_PER_TARGET = 3000


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_target_raises_only_typed_errors_within_its_cost_budget(target: Target) -> None:
    report = fuzz(target, inputs=CI_INPUTS_PER_TARGET, rng_seed=20261129)
    assert report.inputs == CI_INPUTS_PER_TARGET
    assert report.typed_errors > 0, "the mutations never reached the target's error paths"
    assert report.ok, [str(f) for f in report.examples]


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


# --- cost ----------------------------------------------------------------------------------------

AMPLIFYING_ITEMS = 64 * 1024  # the fuzzer's largest input; the attack itself used four million


def _unbounded_cbor(data: bytes) -> None:
    """A CBOR decoder with no item limit: what the RPC decoder is without the bounded loader."""
    cbor2.loads(data)


def _cbor_seeds() -> list[bytes]:
    return [cbor2.dumps({"v": 1, "id": 1, "op": "Seal", "body": {"plaintext": b"x" * 64}})]


def test_an_amplifying_input_is_a_failure_reported_like_a_type_failure() -> None:
    """The frame that cost the enclave 290 MiB, at the fuzzer's 64 KiB: each one-byte empty array
    becomes a Python list, so the decoder allocates ~64 bytes per input byte."""
    target = Target("unbounded-cbor", _unbounded_cbor, _cbor_seeds, (cbor2.CBORDecodeError,))
    frame = amplification_frame(1, items=AMPLIFYING_ITEMS)[4:]
    with tracing():
        budget = calibrate(target.run, target.seeds())
        assert run_one(target, _cbor_seeds()[0], budget=budget) is None
        with pytest.raises(FuzzFailure) as caught:
            run_one(target, frame, budget=budget)
    failure = caught.value.failure
    assert failure.kind == "cost"
    assert failure.error.startswith("cost: ")
    assert "allocated at peak" in failure.error
    assert str(failure).endswith(frame[:64].hex() + "...")


def test_the_fuzzer_finds_an_amplification_by_itself() -> None:
    target = Target("unbounded-cbor", _unbounded_cbor, _cbor_seeds, (cbor2.CBORDecodeError,))
    report = fuzz(target, inputs=2000, rng_seed=7)
    assert report.failure_kinds["cost"] > 0
    assert report.failure_kinds.keys() == {"cost"}


def _busy_per_byte(data: bytes) -> None:
    """Burns 200 µs of CPU per input byte: linear, but ten times the budget's slope."""
    end = time.thread_time() + 200e-6 * len(data)
    while time.thread_time() < end:
        pass


def test_cpu_over_the_budget_is_a_cost_failure() -> None:
    target = Target("slow", _busy_per_byte, lambda: [b"x" * 8], ())
    with tracing():
        budget = calibrate(target.run, target.seeds())
        assert run_one(target, b"x" * 8, budget=budget) is None
        with pytest.raises(FuzzFailure) as caught:
            run_one(target, b"x" * 1000, budget=budget)
    assert caught.value.failure.kind == "cost"
    assert "ms of CPU" in caught.value.failure.error


@pytest.mark.slow
def test_the_four_million_empty_arrays_frame_is_within_the_rpc_decoders_budget() -> None:
    """The real decoder on the real attack frame (4 MiB): within budget since the bounded loader
    (proto/cbor.py) refuses it after a few header reads."""
    target = by_name(["rpc-request"])[0]
    with tracing():
        budget = calibrate(target.run, target.seeds())
        run_one(target, amplification_frame(1)[4:], timeout_s=60, budget=budget)

"""Simulated NSM round trips through the production device path (ioctl -> preload -> simulator).

Run `.venv/bin/python -m tests.bench.bench_nsm` after `make build`. The parent process starts the
simulator and re-runs this module as a child under LD_PRELOAD; the child times GetRandom (the
baseline: a bare round trip) and attestation (target <= 2 ms each) with the same client and
prints its samples as one JSON line, which the parent turns into figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.bench.common import Figure, aggregate, figure, summarize, table

ROUNDS = 500
QUICK_ROUNDS = 50
WARMUP = 20
TARGET_ATTEST_MS = 2.0


def _samples(call: Callable[[], object], rounds: int) -> list[float]:
    for _ in range(WARMUP):
        call()
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def child(rounds: int) -> int:
    from nitrokms.enclave.nsm import NSMClient

    with NSMClient.open(backend="device") as client:
        results = {
            "random": _samples(client.get_random, rounds),
            "attest": _samples(lambda: client.get_attestation_doc(nonce=b"n" * 32), rounds),
            "attest_key": _samples(
                lambda: client.get_attestation_doc(nonce=b"n" * 32, public_key=b"k" * 294), rounds
            ),
        }
    print(json.dumps(results))
    return 0


def run(quick: bool = False) -> list[Figure]:
    """Figures for the simulated NSM. Raises RuntimeError if the preload library is missing."""
    from nitrokms.sim.nsm.server import SimulatedNSM, preload_library_path

    if not preload_library_path().is_file():
        raise RuntimeError(f"{preload_library_path()} missing: reinstall nitrokms[sim] with gcc")
    rounds = QUICK_ROUNDS if quick else ROUNDS
    with tempfile.TemporaryDirectory() as state, SimulatedNSM(Path(state)) as nsm:
        args = [sys.executable, "-m", "tests.bench.bench_nsm", "--child", str(rounds)]
        out = subprocess.run(args, env=nsm.child_env(), check=True, capture_output=True, text=True)
    samples = json.loads(out.stdout)
    base = summarize(samples["random"], 1000)
    attest = summarize(samples["attest_key"], 1000)
    baseline = "NSM GetRandom round trip"
    return [
        figure("nsm", "simulated attestation (nonce + RSA SPKI)", attest, "ms", baseline,
               base.median, target=TARGET_ATTEST_MS),
        aggregate("nsm", "simulated attestation rate", 1000 / attest.median, "docs/s", attest.n,
                  "GetRandom rate", 1000 / base.median, better="higher"),
    ]  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(int(sys.argv[2])))
    print(table(run("--quick" in sys.argv[1:])))

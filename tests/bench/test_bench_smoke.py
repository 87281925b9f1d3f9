"""The benchmark runner works: every module produces its figures with sane fields (no timings are
asserted: these machines are too noisy for that), and the local KMS reports its handling time."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nitrokms.sim.kms.fixtures import KMSProcess, kms_server  # noqa: F401
from nitrokms.sim.kms.server import SERVER_TIME_HEADER

from tests.bench.__main__ import MODULES
from tests.bench.common import Figure, summarize, table

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_TIMEOUT_S = 180

EXPECTED_GROUPS = {
    "e2e": "e2e",
    "relay": "relay",
    "attestation": "attestation",
    "nsm": "nsm",
    "cms": "cms",
    "kms": "kms",
    "enclave_kms": "in-process",
    "enclave": "enclave",
    "rpc": "rpc",
    "cbor": "cbor",
}


@pytest.fixture(scope="module")
def quick_record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--quick", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record: dict[str, Any] = json.loads(out.read_text())
    record["stdout"] = done.stdout
    return record


def test_quick_run_has_every_module_and_no_errors(quick_record: dict[str, Any]) -> None:
    assert quick_record["errors"] == {}
    groups = {f["group"] for f in quick_record["figures"]}
    assert groups == {EXPECTED_GROUPS[m] for m in MODULES}
    assert set(quick_record["module_durations_s"]) == set(MODULES)


def test_every_figure_has_sane_fields(quick_record: dict[str, Any]) -> None:
    for f in quick_record["figures"]:
        where = f"{f['group']}: {f['name']}"
        assert f["unit"], where
        assert f["baseline_name"], where
        assert f["n"] > 0, where
        assert math.isfinite(f["baseline"]), where
        assert f["baseline"] > 0, where
        assert math.isfinite(f["median"]), where
        assert f["ratio"] == pytest.approx(f["median"] / f["baseline"]), where
        assert f["better"] in ("lower", "higher"), where
        if f["p99"] is not None:
            assert f["p99"] >= f["median"], where
        if f["target"] is not None:
            assert isinstance(f["target_met"], bool), where


def test_e2e_reports_every_concurrency_and_the_overhead(quick_record: dict[str, Any]) -> None:
    names = {f["name"] for f in quick_record["figures"] if f["group"] == "e2e"}
    for c in (1, 16, 64):
        assert f"attested fetch latency, c={c}" in names
        assert f"attested fetch throughput, c={c}" in names
    assert "enclave overhead per fetch (total - KMS), c=1" in names


def test_record_describes_the_machine_and_versions(quick_record: dict[str, Any]) -> None:
    machine = quick_record["machine"]
    assert machine["cores"] >= 1
    assert machine["kernel"]
    assert machine["cpu_model"]
    assert {"python", "cryptography", "boto3"} <= set(quick_record["versions"])
    assert quick_record["git"]["commit"]
    assert quick_record["date"]


def test_the_printed_table_lists_every_figure(quick_record: dict[str, Any]) -> None:
    for f in quick_record["figures"]:
        assert f"{f['group']}: {f['name']}" in quick_record["stdout"]


def test_summarize_and_ratio_directions() -> None:
    stats = summarize([0.004, 0.001, 0.002, 0.003, 0.100], scale=1000)
    assert (stats.median, stats.p99, stats.n) == (3.0, 100.0, 5)
    slower = Figure("g", "latency", "ms", 4.0, None, None, 1, "base", 2.0)
    faster = Figure("g", "rate", "op/s", 50.0, None, None, 1, "base", 100.0, better="higher")
    assert (slower.ratio, slower.badness) == (2.0, 2.0)
    assert (faster.ratio, faster.badness) == (0.5, 2.0)
    assert "g: latency" in table([slower, faster])


def test_local_kms_reports_its_handling_time(kms_server: KMSProcess) -> None:  # noqa: F811
    client: Any = kms_server.client()
    reply = client.list_keys()
    server_ms = float(reply["ResponseMetadata"]["HTTPHeaders"][SERVER_TIME_HEADER])
    assert 0 < server_ms < 60_000


def test_an_import_tree_runs_another_commit_s_code(tmp_path):
    """The A/B tool's trees: a child on that PYTHONPATH imports the commit's own enclave code
    (exported with git archive, not the working tree's) and the working tree's simulator."""
    from tests.bench.trees import import_tree

    tree = import_tree("HEAD", tmp_path)
    probe = "import nitrokms.enclave.kms as k, nitrokms.sim as s; print(k.__file__, s.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(tree)},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    kms_file, sim_file = done.stdout.split()
    assert Path(kms_file).resolve().is_relative_to(tmp_path)
    assert Path(sim_file).resolve().is_relative_to(REPO_ROOT / "sim")
    committed = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "show", "HEAD:enclave/kms.py"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert Path(kms_file).read_bytes() == committed

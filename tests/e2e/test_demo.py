"""`make demo`'s program, run as a user would: it narrates six steps and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from nitrokms.sim import demo
from nitrokms.sim.world import base_env


def test_the_demo_runs_and_cleans_up(tmp_path: Path):
    env = dict(base_env(), TMPDIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "nitrokms.sim", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in (
        "1. The local KMS is up.",
        "2. A key whose policy pins the enclave's measurements",
        "3. The enclave service is up, isolated.",
        "4. Attested GenerateDataKey",
        "5. Seal, then Unseal, a message.",
        "6. The same request from other enclaves: denied, and why.",
        "All 6 steps behaved as described",
    ):
        assert step in out
    assert '"kms:RecipientAttestation:PCR0"' in out
    assert out.count("client got: kms.AccessDeniedException") == 2
    assert out.count("Sid 'EnclaveDataPlane'") == 2
    assert os.listdir(tmp_path) == [], "the temporary work directory was removed"


def test_a_step_that_misbehaves_fails_the_demo_and_keeps_the_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    def misbehaving(workdir: Path) -> None:
        (workdir / "logs").mkdir(parents=True)
        raise demo.DemoFailed("the debug-mode enclave got a data key")

    monkeypatch.setattr(demo, "run_demo", misbehaving)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert demo.main([]) == 1
    err = capsys.readouterr().err
    assert "demo FAILED: the step did not behave as described: the debug-mode enclave" in err
    (kept,) = tmp_path.iterdir()
    assert f"logs kept in {kept / 'logs'}" in err

"""The harness itself: isolation fallbacks, readiness failures, teardown of stubborn children, and
the credential_process that hands out expiring credentials."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nitrokms.sim.creds import new_credential, process_output, write_pool
from nitrokms.sim.processes import ProcessFailed, spawn
from nitrokms.sim.world import (
    NO_ISOLATION_WARNING,
    ROLE_ARN,
    World,
    WorldError,
    base_env,
    measurements_hex,
    probe_isolation,
)


@pytest.mark.parametrize("isolation", ["userns", "none"])
def test_the_world_works_without_root_namespaces(
    tmp_path: Path, isolation: str, capsys: pytest.CaptureFixture[str]
):
    if isolation == "userns":
        try:
            probe_isolation("userns")
        except WorldError:
            pytest.skip("user namespaces are not available here")
    with World(tmp_path, isolation=isolation) as world:  # type: ignore[arg-type]
        key = world.create_attested_key()
        with world.client() as client:
            made = client.generate_data_key(key, number_of_bytes=32)
        assert made.key_id == key
        assert world.isolation_used == isolation
        if isolation == "none":
            with pytest.raises(WorldError, match="no network namespace"):
                world.probe_direct_kms()
        else:
            assert "ConnectionRefusedError" in world.probe_direct_kms()
    warned = NO_ISOLATION_WARNING in capsys.readouterr().err
    assert warned == (isolation == "none")


def test_measurements_must_be_an_image_or_a_debug_enclave():
    assert measurements_hex({0: bytes(48), 1: bytes(48), 2: bytes(48)})[0] == "0" * 96
    with pytest.raises(WorldError, match="zero only in part"):
        measurements_hex({0: bytes(48), 1: b"\x01" * 48, 2: bytes(48)})
    with pytest.raises(WorldError, match="lack PCR2"):
        measurements_hex({0: b"\x01" * 48, 1: b"\x01" * 48})


def test_a_child_that_dies_before_its_ready_line_is_reported(tmp_path: Path):
    code = "import sys; print('starting'); print('bad config', file=sys.stderr); sys.exit(3)"
    with pytest.raises(ProcessFailed) as failed:
        spawn(
            "broken",
            [sys.executable, "-c", code],
            log_path=tmp_path / "broken.log",
            env=base_env(),
            cwd=tmp_path,
            ready="listening",
        )
    message = str(failed.value)
    assert "broken exited while waiting for 'listening' (exit status 3)" in message
    assert "bad config" in message
    assert "bad config" in (tmp_path / "broken.log").read_text()


def test_a_child_ignoring_sigterm_is_killed_with_its_children(tmp_path: Path):
    code = textwrap.dedent(
        """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("ready", child.pid, flush=True)
        time.sleep(600)
        """
    )
    process, line = spawn(
        "stubborn",
        [sys.executable, "-c", code],
        log_path=tmp_path / "stubborn.log",
        env=base_env(),
        cwd=tmp_path,
        ready="ready",
    )
    assert line.startswith("ready ")
    assert process.stop(timeout_s=0.5) == -signal.SIGKILL
    with pytest.raises(ProcessFailed, match="stubborn exited"):
        # EOF on the output pipe: every holder of its write end, the grandchild too, is gone
        process.wait_for_line(lambda _: False, timeout_s=10)
    assert "killed" in (tmp_path / "stubborn.log").read_text()


def test_credential_process_hands_out_expiring_pool_credentials(tmp_path: Path):
    pool_path = tmp_path / "pool.json"
    pool = write_pool(pool_path, ROLE_ARN, size=2)
    assert stat.S_IMODE(pool_path.stat().st_mode) == 0o600
    command = [sys.executable, "-m", "nitrokms.sim", "creds", "--pool", str(pool_path)]
    handed = [
        json.loads(
            subprocess.run(
                [*command, "--ttl", "30"],
                cwd=tmp_path,
                env=base_env(),
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        )
        for _ in range(3)
    ]
    assert [h["AccessKeyId"] for h in handed] == [
        pool[0].access_key_id,
        pool[1].access_key_id,
        pool[0].access_key_id,
    ]
    config = tmp_path / "config"
    config.write_text(f"[profile t]\ncredential_process = {' '.join(command)} --ttl 30\n")
    env = dict(base_env(), AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    probe = (
        "import boto3; c = boto3.Session(profile_name='t').get_credentials();"
        "print(type(c).__name__, c._expiry_time.isoformat())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert out[0] == "RefreshableCredentials"
    remaining = datetime.fromisoformat(out[1]) - datetime.now(UTC)
    assert 0 < remaining.total_seconds() <= 30


def test_credential_process_output_format():
    credential = new_credential(ROLE_ARN, session=True)
    output = process_output(credential, 2.5, datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert output["Version"] == 1
    assert str(output["AccessKeyId"]).startswith("ASIA")
    assert output["Expiration"] == "2030-01-02T03:04:07.500Z"
    assert output["SessionToken"] == credential.session_token

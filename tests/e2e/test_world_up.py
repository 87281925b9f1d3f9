"""`python -m nitrokms.sim world up|status`: the world kept running for someone else's code, and
the environment file that is all a shell needs to use it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from nitrokms.sim.processes import ManagedProcess, spawn
from nitrokms.sim.world import base_env

VENV_BIN = Path(sys.executable).parent
NITROKMS = VENV_BIN / "nitrokms"
ENV_KEYS = [
    "AWS_ENDPOINT_URL_KMS",
    "AWS_CA_BUNDLE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "NITROKMS_ENCLAVE",
]  # the list, spelled out (not imported from world_cli) so the test pins it


def start_world_up(state: Path, log: Path) -> ManagedProcess:
    """`world up --state STATE`, returned once it printed its `ready:` line."""
    process, _ = spawn(
        "world-up", [sys.executable, "-m", "nitrokms.sim", "world", "up", "--state", str(state)],
        log_path=log, env=base_env(), cwd=log.parent,
        ready=lambda line: line.startswith("ready:"), timeout_s=120,
    )  # fmt: skip
    return process


def sim(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nitrokms.sim", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env or base_env(),
    )  # fmt: skip


def in_world_shell(env_file: Path, script: str) -> subprocess.CompletedProcess[str]:
    """`script` in bash after `set -a; . world.env; set +a`, with no AWS_* of ours inherited."""
    env = base_env()
    env.pop("AWS_EC2_METADATA_DISABLED")
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(
        ["bash", "-ec", f"set -a; . {env_file}; set +a\n{script}"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def world_up(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("world-up")
    process = start_world_up(state, state.parent / "world-up.log")
    try:
        yield state, process
    finally:
        process.stop()


def test_world_env_is_all_a_shell_needs(world_up: tuple[Path, ManagedProcess]) -> None:
    state, process = world_up
    env_file = state / "world.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    lines = env_file.read_text().splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ENV_KEYS
    values = dict(line.split("=", 1) for line in lines)
    printed = "\n".join(process.lines())
    assert values["AWS_SECRET_ACCESS_KEY"] not in printed  # the secret stays in the file
    for key in ENV_KEYS[:3] + ENV_KEYS[4:]:
        assert f"{key}={values[key]}" in printed
    made = in_world_shell(
        env_file,
        f'KEY=$({sys.executable} -c "import boto3; '
        "print(boto3.client('kms').create_key()['KeyMetadata']['Arn'])\")\n"
        "nitrokms call health --json\n"
        "nitrokms call generate-data-key --key-id $KEY --json\n",
    )
    assert made.returncode == 0, made.stderr
    health, end = json.JSONDecoder().raw_decode(made.stdout)
    generated = json.loads(made.stdout[end:])
    assert health["ready"] is True
    assert generated["handle"]
    assert generated["key_id"].startswith("arn:aws:kms:us-east-1:111122223333:key/")


@pytest.mark.skipif(
    shutil.which("aws", path=str(VENV_BIN)) is None, reason="awscli is not installed in the venv"
)
def test_the_aws_cli_uses_the_world(world_up: tuple[Path, ManagedProcess]) -> None:
    state, _ = world_up
    done = in_world_shell(
        state / "world.env",
        "KEY=$(aws kms create-key --query KeyMetadata.Arn --output text)\n"
        "aws kms generate-data-key --key-id $KEY --key-spec AES_256 --query KeyId --output text",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("arn:aws:kms:us-east-1:111122223333:key/")


def test_status_probes_every_part(world_up: tuple[Path, ManagedProcess]) -> None:
    state, process = world_up
    done = sim("world", "status", "--state", str(state), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["up"] is True
    assert set(report["parts"]) == {"world up", "kms", "relay", "enclave", "credentials"}
    assert f"pid {process.pid}" in report["parts"]["world up"]["detail"]


def test_a_second_world_up_in_the_same_state_is_refused(
    world_up: tuple[Path, ManagedProcess],
) -> None:
    state, _ = world_up
    done = sim("world", "up", "--state", str(state))
    assert done.returncode == 1
    assert "already up" in done.stderr


def test_sigterm_stops_everything_and_exits_0(tmp_path: Path) -> None:
    state = tmp_path / "w"
    process = start_world_up(state, tmp_path / "up.log")
    record = json.loads((state / "world.json").read_text())
    children = list(record["processes"].values())
    assert process.stop() == 0  # SIGTERM
    assert process.lines()[-1] == "world stopped"
    assert not (state / "world.env").exists()
    assert not (state / "world.json").exists()
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    done = sim("world", "status", "--state", str(state))
    assert done.returncode == 1
    assert "no world is up" in done.stderr


def test_a_part_that_dies_takes_the_world_down_with_exit_1(tmp_path: Path) -> None:
    state = tmp_path / "w"
    process = start_world_up(state, tmp_path / "up.log")
    record = json.loads((state / "world.json").read_text())
    os.kill(record["processes"]["relay"], signal.SIGKILL)
    process.wait_for_line(lambda line: "relay exited" in line, timeout_s=60)
    assert process.popen.wait(timeout=60) == 1
    process.stop()
    assert not (state / "world.env").exists()

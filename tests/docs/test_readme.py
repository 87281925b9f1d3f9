"""The README's code blocks run, so they cannot rot: Python for the parent against a world's
enclave, Python for inside the enclave under `nitrokms_enclave`, shell in a fresh directory
(`pytest` blocks run in tests/plugin/test_plugin.py, as an outside project)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nitrokms.sim.world import World, base_env

from tests.docs.readme import KINDS, Block, blocks, to_run

VENV_BIN = Path(sys.executable).parent
ALIAS = "alias/app"


def _label(block: Block) -> str:
    return f"README line {block.line}"


def test_every_code_block_is_run_or_says_why() -> None:
    found = blocks()
    assert len(found) >= 6
    for block in found:
        assert block.marker is not None, f"{_label(block)}: no <!-- run: --> marker before it"
        if block.marker == "run":
            assert block.detail in KINDS, f"{_label(block)}: unknown kind {block.detail!r}"
        assert block.detail.strip(), f"{_label(block)}: a block that is not run says why"
    assert {b.detail for b in found if b.marker == "run"} == set(KINDS)


@pytest.fixture(scope="module")
def app_key(nitrokms_world: World, nitrokms_attested_key: str) -> str:
    """alias/app names the world's attested key, as the README's examples expect."""
    admin = nitrokms_world.kms_admin()
    aliases = {a["AliasName"] for a in admin.list_aliases()["Aliases"]}
    if ALIAS not in aliases:
        admin.create_alias(AliasName=ALIAS, TargetKeyId=nitrokms_attested_key)
    return nitrokms_attested_key


@pytest.mark.parametrize("block", to_run("parent"), ids=_label)
def test_parent_blocks(block: Block, nitrokms_world: World, app_key: str) -> None:
    env = {**base_env(), "NITROKMS_ENCLAVE": nitrokms_world.enclave_address}
    done = subprocess.run(
        [sys.executable, "-c", block.code],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("block", to_run("enclave"), ids=_label)
def test_enclave_blocks(block: Block, nitrokms_enclave, app_key: str) -> None:
    done = nitrokms_enclave.run([sys.executable, "-c", block.code], env={"APP_KEY_ARN": app_key})
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("block", to_run("shell"), ids=_label)
def test_shell_blocks(block: Block, tmp_path: Path) -> None:
    env = base_env()
    del env["AWS_EC2_METADATA_DISABLED"]
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    process = subprocess.Popen(
        ["bash", "-e", "-c", block.code],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:  # timed out: take the whole group down, world included
            os.killpg(process.pid, signal.SIGTERM)
            process.communicate(timeout=60)
    assert process.returncode == 0, output[-4000:]
    assert "world stopped" in output

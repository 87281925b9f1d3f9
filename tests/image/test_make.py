"""The hardware Makefile targets: the exact docker/nitro-cli/nitrokms command lines (`make -n`),
real runs against stand-in `docker`/`nitro-cli`/`skopeo` scripts, the DEBUG warning, and the
refusal to build without a looked-up base image digest."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

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


def rootfs(tmp_path: Path) -> Path:
    out = tmp_path / "image"
    out.mkdir(exist_ok=True)
    (out / "rootfs.tar").write_bytes(b"tar")
    return out


def test_eif_builds_the_docker_image_then_the_eif_keeping_measurements(tmp_path: Path) -> None:
    result = make("-n", "eif", "OUT=out", f"IMAGE_OUT={rootfs(tmp_path)}")
    assert result.returncode == 0, result.stderr
    lines = commands(result)
    assert "docker build -f Dockerfile.enclave -t nitrokms-enclave:0.1.0 ." in lines
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
    result = make("eif", f"OUT={out}", f"IMAGE_OUT={rootfs(tmp_path)}", path=bin_dir)
    assert result.returncode == 0, result.stderr
    assert calls(docker) == [["build", "-f", "Dockerfile.enclave", "-t", "nitrokms-enclave:0.1.0",
                              "."]]  # fmt: skip
    assert calls(nitro) == [["build-enclave", "--docker-uri", "nitrokms-enclave:0.1.0",
                             "--output-file", f"{out}/nitrokms.eif"]]  # fmt: skip
    assert json.loads((out / "measurements.json").read_text()) == MEASUREMENTS


def test_a_failed_eif_build_leaves_no_measurements(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "docker")
    fake_tool(bin_dir, "nitro-cli", "print('{\"Measurements\": {')\nsys.exit(3)\n")
    out = tmp_path / "out"
    result = make("eif", f"OUT={out}", f"IMAGE_OUT={rootfs(tmp_path)}", path=bin_dir)
    assert result.returncode != 0
    assert not (out / "measurements.json").exists()


def test_eif_without_the_rootfs_says_how_to_make_it(tmp_path: Path) -> None:
    docker = fake_tool(tmp_path / "bin", "docker")
    result = make("eif", f"IMAGE_OUT={tmp_path / 'none'}", path=tmp_path / "bin")
    assert result.returncode != 0
    assert "make image REGION=" in result.stderr
    assert calls(docker) == []


def test_image_targets_pass_the_settings_and_check_twice() -> None:
    line = commands(make("-n", "image", "REGION=eu-west-1", "PARENT_CID=2",
                         "KMS_ENDPOINT=kms-fips.eu-west-1.amazonaws.com",
                         "SOURCE_DATE_EPOCH=1700000000"))[-1]  # fmt: skip
    assert line == (
        "SOURCE_DATE_EPOCH=1700000000 .venv/bin/python -m image.build --region 'eu-west-1' "
        "--parent-cid 2 --kms-endpoint 'kms-fips.eu-west-1.amazonaws.com'  "
        "--out out/image --work build/image"
    )
    check = commands(make("-n", "image-check"))
    builds = [line for line in check if "-m image.build" in line]
    assert len(builds) == 2
    assert {b.split("--work ")[1] for b in builds} == {
        "build/image-check/work-first",
        "build/image-check/work-second",
    }
    assert "rm -rf build/image-check" in check
    assert [c for c in check if c.startswith("cmp ")] == [
        f"cmp build/image-check/first/{f} build/image-check/second/{f}"
        for f in ("rootfs.tar", "enclave.eif")
    ]


def test_policy_names_pcr8_as_signed_eif_only(tmp_path: Path) -> None:
    measurements = tmp_path / "measurements.json"
    measurements.write_text(json.dumps(MEASUREMENTS))
    result = make("policy", f"MEASUREMENTS={measurements}", f"ROLE_ARN={ROLE}", "PCRS=3 8")
    assert result.returncode != 0
    assert "PCR8 exists only for a signed EIF" in result.stderr
    assert "Traceback" not in result.stderr


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


def test_enclave_lock_regenerates_both_locks_with_hashes_from_pypi_only() -> None:
    lines = [line for line in commands(make("-n", "enclave-lock")) if "pip-compile --" in line]
    assert len(lines) == 2
    for line, lock in zip(lines, ("enclave", "build"), strict=True):
        assert "PIP_CONFIG_FILE=/dev/null" in line
        assert "-u PIP_FIND_LINKS" in line
        assert "--generate-hashes" in line
        assert line.endswith(f"--output-file requirements/{lock}.lock requirements/{lock}.in")

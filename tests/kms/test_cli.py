"""`python -m nitrokms.sim kms serve` as a subprocess."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import boto3
from nitrokms.sim.kms.fixtures import KMSProcess, stop_kms
from nitrokms.sim.nsm.pki import SimulatedPKI


def test_serve_prints_url_first_writes_ca_and_stops_on_sigterm(kms_server: KMSProcess) -> None:
    assert kms_server.url.startswith("https://127.0.0.1:")
    assert kms_server.ca_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    client = kms_server.client()
    key_id = client.create_key()["KeyMetadata"]["KeyId"]  # type: ignore[attr-defined]
    assert client.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"].endswith(key_id)  # type: ignore[attr-defined]
    assert stop_kms(kms_server.process) == 0


def _run(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "nitrokms.sim", "kms", "serve", *args],
            cwd=log.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | extra


def test_serve_refuses_to_start_without_credentials(tmp_path: Path) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(SimulatedPKI.ephemeral().root_certificate_pem)
    log = tmp_path / "stderr.log"
    args = ["--state", str(tmp_path / "kms"), "--attestation-root", str(root)]
    process = _run(args, _clean_env(), log)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert out == ""
    assert "no credentials" in log.read_text()


def test_serve_uses_environment_credentials_and_default_nsm_root(tmp_path: Path) -> None:
    env = _clean_env(
        AWS_ACCESS_KEY_ID="AKIAENVCREDS0000001",
        AWS_SECRET_ACCESS_KEY="env-secret-value",
        AWS_DEFAULT_REGION="eu-west-1",
        NITROKMS_HARNESS_STATE=str(tmp_path / "harness"),
    )
    log = tmp_path / "stderr.log"
    process = _run(["--state", str(tmp_path / "kms"), "--listen", "127.0.0.1:0", "-v"], env, log)
    try:
        assert process.stdout is not None
        assert select.select([process.stdout], [], [], 30)[0]
        url = process.stdout.readline().strip()
        assert (tmp_path / "harness" / "nsm").is_dir()
        client = boto3.client(
            "kms",
            endpoint_url=url,
            region_name="eu-west-1",
            verify=str(tmp_path / "kms" / "ca.pem"),
            aws_access_key_id="AKIAENVCREDS0000001",
            aws_secret_access_key="env-secret-value",
        )
        meta = client.create_key()["KeyMetadata"]
        assert meta["Arn"].startswith("arn:aws:kms:eu-west-1:111122223333:key/")
    finally:
        assert stop_kms(process) == 0
    logged = log.read_text()
    assert "created key" in logged
    assert "env-secret-value" not in logged

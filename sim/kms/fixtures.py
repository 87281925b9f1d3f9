"""Pytest fixtures that run the real `python -m nitrokms.sim kms serve` subprocess.

Use from a conftest: `from nitrokms.sim.kms.fixtures import kms_server  # noqa: F401`. The
fixture writes a credentials file and an attestation root, starts the server on a free port, waits
for its first stdout line (the URL: readiness), and on teardown sends SIGTERM and waits.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nitrokms.sim.nsm.pki import SimulatedPKI

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


@dataclass
class KMSProcess:
    url: str
    state_dir: Path
    ca_path: Path
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    process: subprocess.Popen[str] = field(repr=False)

    def client(self) -> object:
        import boto3  # noqa: PLC0415 - boto3 costs ~0.3 s to import; only clients need it

        return boto3.client(
            "kms",
            endpoint_url=self.url,
            region_name=self.region,
            verify=str(self.ca_path),
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


def spawn_kms(
    state_dir: Path,
    attestation_root_pem: bytes,
    *,
    region: str = "us-east-1",
    extra_args: tuple[str, ...] = (),
) -> KMSProcess:
    """Start `kms serve` and return once it printed its URL. Raises RuntimeError if it did not."""
    state_dir.mkdir(parents=True, exist_ok=True)
    root = state_dir.parent / f"{state_dir.name}-attestation-root.pem"
    root.write_bytes(attestation_root_pem)
    creds = state_dir.parent / f"{state_dir.name}-credentials.json"
    secret = os.urandom(16).hex()
    creds.write_text(
        json.dumps(
            [
                {
                    "access_key_id": "AKIALOCALKMSTEST0001",
                    "secret_access_key": secret,
                    "principal_arn": "arn:aws:iam::111122223333:root",
                }
            ]
        )
    )
    creds.chmod(0o600)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "nitrokms.sim", "kms", "serve", "--state", str(state_dir),
         "--attestation-root", str(root), "--credentials", str(creds), "--region", region,
         *extra_args],
        cwd=state_dir, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    url = ""
    if select.select([process.stdout], [], [], START_TIMEOUT_S)[0]:
        url = process.stdout.readline().strip()
    if not url.startswith("https://"):
        stop_kms(process)
        raise RuntimeError(f"kms serve did not print its URL (got {url!r})")
    return KMSProcess(
        url, state_dir, state_dir / "ca.pem", region, "AKIALOCALKMSTEST0001", secret, process
    )


def stop_kms(process: subprocess.Popen[str]) -> int:
    """SIGTERM the server and return its exit status (killing it if it does not stop in time)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


@pytest.fixture
def kms_server(tmp_path: Path) -> Iterator[KMSProcess]:
    pki = SimulatedPKI.load_or_create(tmp_path / "nsm")
    server = spawn_kms(tmp_path / "kms", pki.root_certificate_pem)
    try:
        yield server
    finally:
        stop_kms(server.process)

"""The enclave side in its own network namespace, reaching NSM at /dev/nsm and KMS via the relay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from .relay import pipe_relay

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 90


def _can_unshare() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["unshare", "-n", "true"], timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare -n"),
]


def test_loopback_comes_up_by_ioctl_in_a_fresh_namespace():
    code = (
        "from nitrokms.enclave.network import bring_up_loopback, interface_is_up\n"
        "assert not interface_is_up('lo')\n"
        "assert bring_up_loopback(use_ip_command=False)\n"
        "assert interface_is_up('lo')\n"
        "assert not bring_up_loopback(use_ip_command=False)\n"
        "print('up')\n"
    )
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "up\n"


def test_attested_fetch_from_an_isolated_enclave_process(
    tmp_path, nsm_state, local_kms, attested_key_id
):
    relay_path = str(tmp_path / "relay.sock")
    env = dict(
        os.environ, PROBE_ACCESS_KEY_ID=ACCESS_KEY_ID, PROBE_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY
    )
    command = [
        "unshare", "-n",
        sys.executable, "-m", "nitrokms.sim", "nsm", "run", "--state", str(nsm_state), "--",
        sys.executable, "-m", "tests.enclave_kms.enclave_probe",
        "--relay", f"unix://{relay_path}",
        "--ca", str(local_kms.ca_path),
        "--key-id", attested_key_id,
    ]  # fmt: skip
    with pipe_relay(relay_path, local_kms.url) as relay:
        result = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "OK 32"
    assert relay.connections >= 1

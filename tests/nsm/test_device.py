"""The production device backend, in a child process, against the simulator via the preload."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import cbor2
from nitrokms.sim.nsm.server import SimulatedNSM

from tests.nsm.conftest import PYTHON, ROOT


def run_under(nsm: SimulatedNSM, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [PYTHON, *args],
        env=env or nsm.child_env(),
        cwd=ROOT,
        check=False,
        capture_output=True,
        timeout=60,
    )


def test_device_backend_round_trips_through_the_preload(running_nsm: SimulatedNSM) -> None:
    result = run_under(running_nsm, "-m", "tests.nsm.device_probe")
    assert result.returncode == 0, result.stderr.decode()
    seen = json.loads(result.stdout)
    sim = running_nsm.simulator
    assert "DeviceTransport(path='/dev/nsm'" in seen["repr"]
    assert seen["module_id"] == sim.module_id
    assert seen["locked"] == list(range(16))
    assert bytes.fromhex(seen["pcr4"]) == sim.pcr(4)
    assert bytes.fromhex(seen["extend"]) == hashlib.sha384(bytes(48) + b"probe").digest()
    assert sim.pcr(16) == bytes.fromhex(seen["extend"])
    assert seen["extend_locked"] == "nsm.ReadOnlyIndex"
    assert seen["bad_index"] == "nsm.InvalidIndex"
    assert seen["random_len"] == 256
    assert seen["attest_too_big_field"] == "nsm.InputTooLarge"
    assert seen["request_over_4096"] == "nsm.InputTooLarge"
    assert seen["raw_emsgsize"] == "nsm.InputTooLarge"
    assert seen["threaded"] == [256] * 100
    assert seen["openat_works"] is True
    assert seen["other_files_work"] is True
    truncated = bytes.fromhex(seen["truncated"])
    assert truncated == b"\xa1\x69GetRandom"[:10]
    payload = cbor2.loads(cbor2.loads(bytes.fromhex(seen["doc"]))[2])
    assert payload["module_id"] == sim.module_id
    assert (payload["user_data"], payload["nonce"], payload["public_key"]) == (
        b"u" * 1024,
        b"n" * 1024,
        b"k" * 1024,
    )


def test_without_a_simulator_socket_the_device_is_unavailable(
    running_nsm: SimulatedNSM, tmp_path: Path
) -> None:
    env = running_nsm.child_env()
    env["NITROKMS_NSM_SOCKET"] = str(tmp_path / "absent.sock")
    code = (
        "from nitrokms.enclave.nsm import NSMClient, NSMUnavailableError\n"
        "try:\n    NSMClient.open(backend='device')\n"
        "except NSMUnavailableError as e:\n    print(e.code)\n"
    )
    result = run_under(running_nsm, "-c", code, env=env)
    assert result.stdout.decode().strip() == "nsm.Unavailable", result.stderr.decode()

"""The enclave image in a real Linux guest (QEMU microvm, TCG) with real vsock: `make vm-test`.

One run of `python -m nitrokms.sim vm demo --record` under `strace -f` (it builds the image with
the VM's settings and boots its EIF's kernel, command line and ramdisks), then three checks on
what it left behind: the flow's output, every byte the host side of the vsock bridge carried
(searched for the data key's plaintext, recovered independently from the local KMS's key store),
and every socket, bind and connect call of every host process (no AF_VSOCK at all, so nothing
could reach CID 2 of this machine). Slow (about a minute warm): not part of `make test`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nitrokms.parent.eif import measurements, read_eif
from nitrokms.sim.kms.crypto import open_blob
from nitrokms.sim.kms.models import KeyStore
from nitrokms.sim.kms.server import DEFAULT_ACCOUNT

RUN_TIMEOUT_S = 1100

pytestmark = [
    pytest.mark.slow,
    pytest.mark.image,  # it builds and runs the enclave image: kept out of `make soak` too
    pytest.mark.needs_root,
    pytest.mark.timeout(RUN_TIMEOUT_S + 60),
    pytest.mark.skipif(os.geteuid() != 0, reason="the VM needs root (chroot, mount namespaces)"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed (make vm-test installs it)")
    base = tmp_path_factory.mktemp("vm")
    trace, summary = base / "host-sockets.trace", base / "summary.json"
    argv = [
        strace, "-f", "--seccomp-bpf", "-qq", "-e", "trace=socket,bind,connect",
        "-e", "signal=none", "-o", str(trace),
        sys.executable, "-m", "nitrokms.sim", "vm", "demo", "--workdir", str(base / "world"),
        "--record", "--summary", str(summary), "--timeout", str(RUN_TIMEOUT_S - 30),
    ]  # fmt: skip
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return {
        "stdout": result.stdout,
        "summary": json.loads(summary.read_text()),
        "trace": trace.read_text().splitlines(),
    }


def test_the_attested_flow_runs_in_the_guest(run: dict[str, object]) -> None:
    out = str(run["stdout"])
    summary = run["summary"]
    assert isinstance(summary, dict)
    assert "vm: guest kernel 6." in out
    assert summary["kernel_release"].endswith("-cloud-amd64")
    eif = read_eif(Path(summary["eif"]).read_bytes())
    assert {i: v.hex() for i, v in measurements(eif).items()} == {
        int(i): v for i, v in summary["measurements"].items()
    }
    assert "nitrokms-init: heartbeat to vsock 2:9000 answered" in out
    assert summary["heartbeats"] == 1
    assert summary["nsm_module_id"].startswith("i-")  # the simulator answered via /dev/nsm
    assert "credentials pushed over vsock" in out
    assert f"generate-data-key: handle {summary['handle']}" in out
    assert summary["handle"].startswith("kh-")
    assert "the same bytes back" in out
    assert "PCR0-2 = the EIF's" in out


def test_no_data_key_plaintext_crossed_the_bridge(run: dict[str, object]) -> None:
    summary = run["summary"]
    assert isinstance(summary, dict)
    store = KeyStore(Path(summary["kms_state"]), region="us-east-1", account=DEFAULT_ACCOUNT)
    blob = base64.b64decode(summary["ciphertext_blob"])
    plaintext = open_blob(store.resolve(summary["key_id"]).material, blob, summary["context"])
    assert len(plaintext) == 32
    captures = {Path(p).name: Path(p).read_bytes() for p in summary["captures"]}
    to_guest = b"".join(v for k, v in captures.items() if k.startswith("to-guest"))
    to_relay = b"".join(v for k, v in captures.items() if k.startswith("to-relay"))
    # The recording saw the real traffic: the RPC reply carrying the blob, the KMS TLS stream.
    assert blob in to_guest
    assert len(to_relay) > 4096
    forms = (plaintext, base64.b64encode(plaintext), plaintext.hex().encode())
    for name, data in captures.items():
        for form in forms:
            assert form not in data, f"data key plaintext found in {name}"


def test_no_host_process_used_af_vsock(run: dict[str, object]) -> None:
    trace = run["trace"]
    assert isinstance(trace, list)
    # strace saw the host side: the RPC client's connects to the bridge socket.
    assert any("connect(" in line and "vm.vsock" in line for line in trace)
    assert any("connect(" in line and "vhost.sock" in line for line in trace)  # QEMU, chrooted
    assert [line for line in trace if "AF_VSOCK" in line] == []

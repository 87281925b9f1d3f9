"""`python -m nitrokms.sim nsm ...` and `nitrokms nsm ...` from the command line."""

from __future__ import annotations

import hashlib
import json
import signal
import stat
import subprocess
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.nsm.conftest import PYTHON, ROOT

NITROKMS = str(Path(PYTHON).with_name("nitrokms"))


def harness(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [PYTHON, "-m", "nitrokms.sim", "nsm", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
    )


def test_attest_under_nsm_run_writes_a_document_that_verifies(
    preload_library: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    out = tmp_path / "doc.cose"
    result = harness(
        "run", "--state", str(state), "--", NITROKMS, "nsm", "attest",
        "--nonce", "0a0b", "--user-data", "cafe", "--public-key", str(pem), "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    summary = result.stdout.decode()
    assert summary.count("\n") == 1
    assert summary.startswith("wrote attestation document (")
    assert f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()[:16]}..." in summary
    assert f"nonce 0a0b, public key bytes {len(spki)}) to {out}" in summary
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    payload = cbor2.loads(cbor2.loads(out.read_bytes())[2])
    assert (payload["nonce"], payload["user_data"], payload["public_key"]) == (
        b"\x0a\x0b", b"\xca\xfe", spki,
    )  # fmt: skip
    root = harness("root", "--state", str(state))
    assert root.returncode == 0
    assert root.stdout == (state / "root.pem").read_bytes()
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(root.stdout)
    verify = subprocess.run(
        [NITROKMS, "attestation", "verify", str(out), "--root", str(root_pem), "--nonce", "0a0b"],
        check=False, capture_output=True, timeout=60,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr.decode()
    as_json = harness(
        "run", "--state", str(state), "--", NITROKMS, "nsm", "attest", "--json",
        "--out", str(out),
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr.decode()
    reply = json.loads(as_json.stdout)
    assert reply["out"] == str(out)
    assert reply["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (reply["nonce"], reply["public_key_bytes"]) == (None, None)


def test_run_applies_measurements_debug_and_role(preload_library: Path, tmp_path: Path) -> None:
    measurements = tmp_path / "m.json"
    measurements.write_text(json.dumps({"Measurements": {f"PCR{i}": "ab" * 48 for i in range(3)}}))
    script = (
        f"{NITROKMS} nsm pcr 1 --json && {NITROKMS} nsm pcr 3 --json && {NITROKMS} nsm describe "
        f"&& {NITROKMS} nsm pcr 40; echo rc=$?"
    )
    common = ["--state", str(tmp_path / "s"), "--measurements", str(measurements)]
    normal = harness(
        "run", *common, "--role-arn", "arn:aws:iam::1:role/r", "--", "sh", "-c", script
    )
    debug = harness("run", *common, "--debug", "--", "sh", "-c", script)
    lines, debug_lines = normal.stdout.decode().splitlines(), debug.stdout.decode().splitlines()
    assert json.loads(lines[0]) == {"index": 1, "locked": True, "data": "ab" * 48}
    assert json.loads(lines[1])["data"] != "00" * 48
    assert json.loads(debug_lines[0])["data"] == "00" * 48
    assert json.loads(debug_lines[1])["data"] == "00" * 48
    assert "locked_pcrs: 0-15" in normal.stdout.decode()
    assert lines[-1] == "rc=1"
    assert "InvalidIndex" in normal.stderr.decode()


def test_run_propagates_the_exit_code_and_cleans_up(preload_library: Path, tmp_path: Path) -> None:
    result = harness(
        "run", "--state", str(tmp_path), "--", "sh", "-c", 'echo "$NITROKMS_NSM_SOCKET"; exit 7'
    )
    assert result.returncode == 7
    socket_path = Path(result.stdout.decode().strip())
    assert socket_path.name == "nsm.sock"
    assert not socket_path.parent.exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "--"], 2, "missing command"),
        (["run", "--", "/nonexistent/cmd"], 127, "cannot run"),
        (["run", "--measurements", "/nonexistent.json", "--", "true"], 1, "measurements"),
    ],
)
def test_run_usage_errors(
    preload_library: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    result = harness(args[0], "--state", str(tmp_path), *args[1:])
    assert result.returncode == code
    assert message in result.stderr.decode()


def test_missing_preload_library_is_named(tmp_path: Path) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "nitrokms.sim", "nsm", "run", "--state", str(tmp_path), "--", "true"],
        cwd=ROOT, check=False, capture_output=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "NITROKMS_NSM_PRELOAD": str(tmp_path / "missing.so")},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode() == f"nsm run: preload library {tmp_path}/missing.so not found\n"


def test_nitrokms_nsm_without_a_device_fails_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [NITROKMS, "nsm", "describe"], check=False, capture_output=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "NITROKMS_LIBNSM": str(tmp_path / "none.so")},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode().startswith("nitrokms: cannot open NSM device /dev/nsm")


def test_bad_public_key_file_is_reported(tmp_path: Path) -> None:
    key = tmp_path / "key.der"
    key.write_bytes(b"not a key")
    result = subprocess.run(
        [NITROKMS, "nsm", "attest", "--public-key", str(key), "--out", str(tmp_path / "o")],
        check=False, capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a SubjectPublicKeyInfo" in result.stderr.decode()
    missing = subprocess.run(
        [NITROKMS, "nsm", "attest", "--public-key", str(tmp_path / "nope"), "--out", "o"],
        check=False, capture_output=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "cannot read public key" in missing.stderr.decode()


def test_run_forwards_sigterm_to_the_command(preload_library: Path, tmp_path: Path) -> None:
    script = (
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "nitrokms.sim",
            "nsm",
            "run",
            "--state",
            str(tmp_path),
            "--",
            PYTHON,
            "-c",
            script,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    with proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 42
        finally:
            proc.kill()

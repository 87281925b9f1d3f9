"""`nitrokms attestation inspect|verify`: output, exit codes 0/1/2 and the one-line stderr."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from nitrokms.sim.nsm.pki import SimulatedPKI

from nitrokms.cli import main
from tests.attestation.conftest import REAL_DOC, SignFn, boot_pcrs

NITROKMS = Path(sys.executable).parent / "nitrokms"
REAL = str(REAL_DOC)


@pytest.fixture
def files(tmp_path: Path, pki: SimulatedPKI, sign: SignFn) -> dict[str, str]:
    paths = {
        "doc": tmp_path / "doc.cose",
        "b64": tmp_path / "doc.b64",
        "root": tmp_path / "root.pem",
        "junk": tmp_path / "junk.bin",
    }
    doc = sign()
    paths["doc"].write_bytes(doc)
    paths["b64"].write_bytes(base64.b64encode(doc) + b"\n")
    paths["root"].write_bytes(pki.root_certificate_pem)
    paths["junk"].write_bytes(b"\x84\x44junk")
    return {name: str(path) for name, path in paths.items()}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["attestation", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_real_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "inspect", REAL)
    assert code == 0
    assert "i-0f73a4b4cb74cc9f2-enc0192e4188fef781d" in out
    assert "2024-11-14T23:46:29.450Z" in out
    assert "debug mode: yes" in out
    assert "PCR4" in out
    assert "9ab5a1aba055ee41" in out
    assert "zero PCRs:  0, 1, 2, 5," in out
    assert "CN=aws.nitro-enclaves" in out
    assert "2024-11-15T00:24:29.000Z" in out
    assert "public key: none" in out


def test_inspect_json(capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> None:
    code, out, _ = _run(capsys, "inspect", files["b64"], "--json")
    info = json.loads(out)
    assert code == 0
    assert info["debug_mode"] is False
    assert info["pcrs"]["0"] == boot_pcrs()[0].hex()
    assert info["nonce"] == "01" * 16
    assert info["user_data"] == b"hello".hex()
    assert len(info["cabundle"]) == 4
    assert info["certificate"]["subject"].startswith("CN=i-0f73a4b4cb74cc9f2-enc")


def test_verify_real_document_at_its_time(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "verify", REAL, "--at", "doc", "--allow-debug")
    assert (code, err) == (0, "")
    assert out.startswith("valid: i-0f73a4b4cb74cc9f2")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--at", "doc"], "--allow-debug"),
        (["--allow-debug"], "expired"),
        (["--allow-debug", "--at", "2024-11-15T03:00:00+00:00"], "expired"),
        (["--allow-debug", "--at", "1731627989450", "--pcr", "4=" + "00" * 48], "PCR4"),
        (["--at", "doc", "--allow-debug", "--nonce", "00"], "nonce"),
        (["--allow-debug", "--max-age", "1", "--at", "1731627999450"], "too old"),
    ],
)
def test_verify_failures_print_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code, _, err = _run(capsys, "verify", REAL, *argv)
    assert code == 1
    assert err.count("\n") == 1
    assert needle in err


def test_verify_simulated_document_with_its_root(
    capsys: pytest.CaptureFixture[str], files: dict[str, str]
) -> None:
    pcr0 = boot_pcrs()[0].hex()
    argv = ["verify", files["doc"], "--root", files["root"], "--pcr", f"0={pcr0}"]
    code, out, _ = _run(capsys, *argv, "--nonce", "01" * 16, "--json")
    assert code == 0
    assert json.loads(out)["valid"] is True
    code, out, err = _run(capsys, *argv, "--pcr", "1=" + pcr0, "--json")
    assert code == 1
    assert json.loads(out) == {
        "valid": False,
        "code": "attestation.PCRMismatch",
        "error": "PCR mismatch: PCR1 differs from the expected value",
    }
    assert err == "nitrokms: invalid attestation document: " + json.loads(out)["error"] + "\n"


def test_default_root_refuses_simulated_documents(
    capsys: pytest.CaptureFixture[str], files: dict[str, str]
) -> None:
    code, _, err = _run(capsys, "verify", files["doc"])
    assert code == 1
    assert "untrusted root" in err


def test_malformed_document(capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> None:
    for command in ("inspect", "verify"):
        code, _, err = _run(capsys, command, files["junk"])
        assert code == 1
        assert err.count("\n") == 1
        assert "malformed" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", REAL, "--pcr", "40=00"],
        ["verify", REAL, "--pcr", "nope"],
        ["verify", REAL, "--at", "yesterday"],
        ["verify", REAL, "--nonce", "xyz"],
        ["verify", REAL, "--max-age", "-3"],
        ["verify"],
        ["bogus"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["attestation", *argv])
    assert exit_.value.code == 2
    capsys.readouterr()


def test_unusable_root_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], tmp_path: Path
) -> None:
    code, _, err = _run(capsys, "verify", REAL, "--root", str(tmp_path / "missing.pem"))
    assert code == 2
    assert "cannot read" in err
    code, _, err = _run(capsys, "verify", REAL, "--root", files["junk"])
    assert code == 2
    assert "not a PEM or DER certificate" in err


def test_installed_command(files: dict[str, str]) -> None:
    ok = subprocess.run(
        [str(NITROKMS), "attestation", "verify", files["doc"], "--root", files["root"]],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (ok.returncode, ok.stderr) == (0, "")
    bad = subprocess.run(
        [str(NITROKMS), "attestation", "verify", REAL, "--at", "doc"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        "nitrokms: invalid attestation document: debug mode: PCR0-2 are all zero"
        " (debug-mode enclave); pass allow_debug (--allow-debug) to accept it"
    ]
    usage = subprocess.run(
        [str(NITROKMS), "attestation", "verify", REAL, "--at", "never"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert usage.returncode == 2

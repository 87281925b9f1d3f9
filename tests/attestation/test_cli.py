"""`nitrokms attestation inspect|verify`: output, exit codes 0/1/2 and the one-line stderr."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from nitrokms.proto.attestation import parse_document
from nitrokms.sim.nsm.pki import SimulatedPKI

from nitrokms.cli import main
from tests.attestation.conftest import MODULE_ID, NOW_MS, REAL_DOC, SignFn, boot_pcrs

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


def test_garbage_and_missing_documents_exit_2(
    capsys: pytest.CaptureFixture[str], files: dict[str, str], tmp_path: Path
) -> None:
    unreadable = tmp_path / "unreadable.cose"
    unreadable.mkdir()
    for command in ("inspect", "verify"):
        code, _, err = _run(capsys, command, files["junk"])
        assert (code, err.count("\n")) == (2, 1)
        assert "not an attestation document (malformed" in err
        code, _, err = _run(capsys, command, str(tmp_path / "missing.cose"))
        assert (code, err.count("\n")) == (2, 1)
        assert "cannot read" in err
        code, _, err = _run(capsys, command, str(unreadable))
        assert (code, err.count("\n")) == (2, 1)


@pytest.mark.parametrize("timestamp", [2**63, 2**64 - 1, 253_402_300_800_000])
def test_timestamp_past_year_9999_is_a_typed_failure(
    capsys: pytest.CaptureFixture[str],
    pki: SimulatedPKI,
    tmp_path: Path,
    files: dict[str, str],
    timestamp: int,
) -> None:
    doc = tmp_path / "far.cose"
    doc.write_bytes(_with_timestamp(pki, timestamp))
    for argv in (["inspect", str(doc)], ["verify", str(doc), "--root", files["root"]]):
        code, out, err = _run(capsys, *argv)
        assert (code, out, err.count("\n")) == (1, "", 1), err
        assert "timestamp" in err
        assert "out of range" in err
        assert "Traceback" not in err
    installed = subprocess.run(
        [str(NITROKMS), "attestation", "inspect", str(doc)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert installed.returncode == 1
    assert len(installed.stderr.splitlines()) == 1


def _with_timestamp(pki: SimulatedPKI, timestamp: int) -> bytes:
    """A correctly signed document whose payload carries `timestamp` (no certificate can be
    issued for such a time, so the chain is one for now)."""
    signed = pki.sign_document(
        module_id=MODULE_ID, timestamp_ms=NOW_MS, pcrs=boot_pcrs(), public_key=None,
        user_data=None, nonce=None,
    )  # fmt: skip
    payload = cbor2.loads(parse_document(signed).payload)
    payload["timestamp"] = timestamp
    return pki.sign_payload(cbor2.dumps(payload), module_id=MODULE_ID, timestamp_ms=NOW_MS)


def test_payload_breaking_the_rules_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: SimulatedPKI
) -> None:
    doc = tmp_path / "bad-payload.cose"
    doc.write_bytes(pki.sign_payload(b"\xa0"))  # a COSE_Sign1 whose payload is an empty map
    code, _, err = _run(capsys, "inspect", str(doc))
    assert (code, err.count("\n")) == (1, 1)
    assert "malformed: payload lacks module_id" in err


def test_root_mismatch_names_both_roots_and_the_simulator_root(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, str],
    other_pki: SimulatedPKI,
    tmp_path: Path,
) -> None:
    code, _, err = _run(capsys, "verify", files["doc"])
    assert (code, err.count("\n")) == (1, 1)
    assert "the document chains to CN=" in err
    assert "not the pinned root AWS Nitro Enclaves Root-G1, CN=aws.nitro-enclaves" in err
    assert "python -m nitrokms.sim nsm root" in err
    theirs, ours = err.split("SHA-256 ")[1][:16], err.split("SHA-256 ")[2][:16]
    assert theirs != ours
    other = tmp_path / "other-root.pem"
    other.write_bytes(other_pki.root_certificate_pem)
    code, out, err = _run(capsys, "verify", files["doc"], "--root", str(other), "--json")
    assert code == 1
    reply = json.loads(out)
    assert reply["code"] == "attestation.UntrustedRoot"
    assert "nsm root" not in reply["error"]  # the pinned root is not AWS's: no simulator hint
    assert reply["error"].count("SHA-256") == 2


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

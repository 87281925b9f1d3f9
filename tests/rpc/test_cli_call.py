"""`nitrokms call OP`: every operation, human and --json output, exit codes."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nitrokms.proto import messages as m
from nitrokms.proto.addresses import UnixAddress

from nitrokms.cli import main
from tests.rpc.fakes import KEY_ARN, PCR, Close, Fail, FakeEnclave, ServerThread


@pytest.fixture
def fake() -> FakeEnclave:
    return FakeEnclave()


@pytest.fixture
def server(unix_address: UnixAddress, fake: FakeEnclave) -> Iterator[ServerThread]:
    with ServerThread(unix_address, fake) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_enclave_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NITROKMS_ENCLAVE", raising=False)
    monkeypatch.delenv("NITROKMS_ENCLAVE_CID", raising=False)


def call(
    server: ServerThread, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    code = main(["call", *args, "--enclave", str(server.address)])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_data_key_human_and_json(
    server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = call(
        server, capsys, "generate-data-key", "--key-id", "alias/x", "--context", "app=a=b"
    )
    assert code == 0
    blob = base64.b64encode(b"\x01\x02\x03" * 10).decode()
    assert out == f"handle: h-gen\nkey id: {KEY_ARN}\nciphertext blob: {blob}\n"
    code, out, _ = call(
        server, capsys, "generate-data-key", "--key-id", "k", "--number-of-bytes", "16", "--json"
    )
    assert code == 0
    assert json.loads(out) == {"handle": "h-gen", "key_id": KEY_ARN, "ciphertext_blob": blob}
    assert [r.body for r in server.requests] == [
        m.GenerateDataKeyRequest(
            key_id="alias/x", key_spec="AES_256", encryption_context={"app": "a=b"}
        ),
        m.GenerateDataKeyRequest(key_id="k", number_of_bytes=16),
    ]


def test_load_data_key_and_forget_key(
    server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = base64.b64encode(b"\x09" * 20).decode()
    code, out, _ = call(server, capsys, "load-data-key", "--ciphertext-blob", blob, "--json")
    assert (code, json.loads(out)) == (0, {"handle": "h-load", "key_id": KEY_ARN})
    code, out, _ = call(server, capsys, "forget-key", "h-load")
    assert (code, out) == (0, "forgot key h-load\n")
    code, out, _ = call(server, capsys, "forget-key", "h-load", "--json")
    assert json.loads(out) == {"handle": "h-load", "forgotten": True}
    assert [r.body for r in server.requests][:2] == [
        m.LoadDataKeyRequest(ciphertext_blob=b"\x09" * 20),
        m.ForgetKeyRequest(handle="h-load"),
    ]


def test_seal_and_unseal_through_files_and_stdin(
    server: ServerThread,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "plain").write_bytes(b"\x00binary\xff")
    envelope_file = tmp_path / "env"
    code, out, _ = call(
        server,
        capsys,
        "seal",
        "--handle",
        "h1",
        "--in",
        str(tmp_path / "plain"),
        "--out",
        str(envelope_file),
        "--context",
        "k=v",
    )
    assert (code, out) == (0, f"wrote envelope (12 bytes) to {envelope_file}\n")
    assert envelope_file.read_bytes() == b"ENV:\x00binary\xff"

    out_file = tmp_path / "plain.out"
    code, out, _ = call(
        server, capsys, "unseal", "--in", str(envelope_file), "--out", str(out_file)
    )
    assert code == 0
    assert out_file.read_bytes() == b"\x00binary\xff"
    assert out_file.stat().st_mode & 0o777 == 0o600

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    code, out, _ = call(server, capsys, "seal", "--key-id", "alias/x", "--json")
    sealed = json.loads(out)
    assert sealed["envelope"] == base64.b64encode(b"ENV:from stdin").decode()
    assert sealed["key_id"] == KEY_ARN

    (tmp_path / "env.b64").write_text(sealed["envelope"] + "\n")
    code, out, _ = call(server, capsys, "unseal", "--in", str(tmp_path / "env.b64"), "--json")
    assert json.loads(out) == {
        "key_id": KEY_ARN,
        "plaintext_bytes": 10,
        "plaintext": base64.b64encode(b"from stdin").decode(),
    }
    seals = [r.body for r in server.requests if r.operation == "Seal"]
    assert seals == [
        m.SealRequest(plaintext=b"\x00binary\xff", handle="h1", encryption_context={"k": "v"}),
        m.SealRequest(plaintext=b"from stdin", key_id="alias/x"),
    ]


def test_unseal_out_never_writes_through_an_existing_file_or_a_symlink(
    server: ServerThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "env").write_bytes(b"ENV:secret")
    existing = tmp_path / "plain.out"
    existing.write_bytes(b"old")
    existing.chmod(0o644)
    code, _, _ = call(
        server, capsys, "unseal", "--in", str(tmp_path / "env"), "--out", str(existing)
    )
    assert (code, existing.read_bytes(), existing.stat().st_mode & 0o777) == (0, b"secret", 0o600)
    target = tmp_path / "elsewhere"
    link = tmp_path / "link.out"
    link.symlink_to(target)
    code, out, err = call(
        server, capsys, "unseal", "--in", str(tmp_path / "env"), "--out", str(link)
    )
    assert (code, out) == (2, "")
    assert err == f"nitrokms: refusing to write {link}: it is a symbolic link\n"
    assert not target.exists()


def test_unseal_writes_raw_plaintext_to_stdout(
    server: ServerThread, capfdbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> None:
    (tmp_path / "env").write_bytes(b"ENV:\x00\x01raw")
    code = main(["call", "unseal", "--in", str(tmp_path / "env"), "--enclave", str(server.address)])
    assert code == 0
    assert capfdbinary.readouterr().out == b"\x00\x01raw"


def test_attest_writes_the_document(
    server: ServerThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = tmp_path / "doc.cose"
    code, out, _ = call(
        server, capsys, "attest", "--nonce", "0a0b", "--user-data", "ff", "--out", str(doc)
    )
    assert (code, out) == (0, f"wrote attestation document (7 bytes) to {doc}\n")
    assert doc.read_bytes() == b"DOC:\x0a\x0b\xff"
    code, out, _ = call(server, capsys, "attest", "--out", str(doc), "--json")
    assert json.loads(out)["document"] == base64.b64encode(b"DOC:").decode()


def test_describe_and_health(
    server: ServerThread, fake: FakeEnclave, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = call(server, capsys, "describe")
    assert code == 0
    assert "debug mode: no\n" in out
    assert "locked PCRs: 0, 1, 2\n" in out
    assert f"PCR2: {PCR.hex()}" in out
    code, out, _ = call(server, capsys, "describe", "--json")
    described = json.loads(out)
    assert described["pcrs"]["1"] == PCR.hex()
    assert described["debug_mode"] is False

    code, out, err = call(server, capsys, "health")
    assert code == 1  # not ready: the answer is no, with the health still printed
    assert "credentials present: no\n" in out
    assert (
        err == "nitrokms: enclave not ready: no credentials (is `nitrokms credentials` running?)\n"
    )
    code, out, _ = call(server, capsys, "health", "--json")
    assert code == 1
    assert json.loads(out)["key_pool_target"] == 4
    assert json.loads(out)["ready"] is False
    fake.credentials = m.SetCredentialsRequest(
        access_key_id="test", secret_access_key="test", region="us-east-1"
    )
    code, out, err = call(server, capsys, "health", "--json")
    assert (code, err, json.loads(out)["ready"]) == (0, "", True)


def test_remote_errors_exit_1_with_one_line_naming_the_code(
    unix_address: UnixAddress, capsys: pytest.CaptureFixture[str]
) -> None:
    async def deny(request: m.Request) -> Fail:
        return Fail("kms.AccessDeniedException", "no statement allows kms:GenerateDataKey")

    async def close(request: m.Request) -> Close:
        return Close()

    fake = FakeEnclave(overrides={"GenerateDataKey": deny, "Describe": close})
    with ServerThread(unix_address, fake) as server:
        code, out, err = call(server, capsys, "generate-data-key", "--key-id", "k")
        assert (code, out) == (1, "")
        assert err == (
            "nitrokms: kms.AccessDeniedException: no statement allows kms:GenerateDataKey\n"
        )
        code, _, err = call(server, capsys, "describe")
        assert code == 1
        assert err.startswith("nitrokms: client.ConnectionLost: ")
        assert err.count("\n") == 1


def test_unreachable_enclave_exits_1(
    unix_address: UnixAddress, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["call", "health", "--enclave", str(unix_address), "--connect-timeout", "0.1"])
    assert code == 1
    assert capsys.readouterr().err.startswith("nitrokms: client.ConnectionFailed: ")


@pytest.mark.parametrize(
    "argv",
    [
        ["call", "health"],
        ["call", "health", "--enclave", "bogus"],
        ["call", "health", "--cid", "2"],
        ["call", "load-data-key", "--ciphertext-blob", "!!!", "--enclave", "unix:///nonexistent"],
        ["call", "attest", "--nonce", "xyz", "--out", "/dev/null", "--enclave", "unix:///none"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nitrokms: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["generate-data-key", "--key-id", "k", "--number-of-bytes", "0"],
        ["generate-data-key", "--key-id", "", "--key-spec", "AES_256"],
        ["generate-data-key", "--key-id", "k", *["--grant-token", "t"] * 11],
        ["seal", "--handle", "bad handle!", "--in", "/dev/null"],
    ],
)
def test_arguments_that_cannot_form_a_request_exit_2_and_send_nothing(
    server: ServerThread, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = call(server, capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith("nitrokms: ")
    assert err.count("\n") == 1
    assert server.requests == []


@pytest.mark.parametrize(
    "argv",
    [
        ["call"],
        ["call", "set-credentials"],
        ["call", "seal", "--enclave", "unix:///x"],
        ["call", "seal", "--handle", "h", "--key-id", "k"],
        ["call", "generate-data-key", "--key-id", "k", "--context", "novalue"],
        [
            "call",
            "generate-data-key",
            "--key-id",
            "k",
            "--key-spec",
            "AES_256",
            "--number-of-bytes",
            "8",
        ],
    ],
)
def test_argparse_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2


def test_enclave_address_from_the_environment(
    server: ServerThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NITROKMS_ENCLAVE", str(server.address))
    assert main(["call", "health", "--json"]) == 1  # reached: it answers "not ready"
    assert json.loads(capsys.readouterr().out)["ready"] is False


def test_installed_entry_point_runs_a_call(server: ServerThread, tmp_path: Path) -> None:
    nitrokms = Path(sys.executable).parent / "nitrokms"
    env = {**os.environ, "NITROKMS_ENCLAVE": str(server.address)}
    out = tmp_path / "doc.cose"
    done = subprocess.run(
        [str(nitrokms), "call", "attest", "--nonce", "00ff", "--out", str(out), "--json"],
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b"DOC:\x00\xff"
    assert json.loads(done.stdout)["out"] == str(out)
    missing = subprocess.run(
        [str(nitrokms), "call", "health"],
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("NITROKMS_ENCLAVE")},
        timeout=30,
        check=False,
    )
    assert missing.returncode == 2
    assert b"no enclave address" in missing.stderr

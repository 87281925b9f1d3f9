from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nitrokms.cli import main
from tests.cms.conftest import HELLO_PLAINTEXT, VECTORS

HELLO = VECTORS / "kms_cms_hello-world.ber"
HELLO_KEY = VECTORS / "kms_cms_hello-world.key.pem"


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, fmt) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    )
    return path


def test_inspect_text(capsys):
    assert main(["cms", "inspect", str(HELLO)]) == 0
    out = capsys.readouterr().out
    assert "rsaesOaep (hash sha256, mgf mgf1/sha256, label empty)" in out
    assert "IV 2c2ff1116ae6f8573fd58fd44f980624 (16 bytes)" in out
    assert "16 bytes (constructed, 1 chunk(s))" in out
    assert "decrypt: supported" in out


def test_inspect_json_from_base64(tmp_path, capsys):
    b64 = tmp_path / "blob.b64"
    b64.write_text(base64.b64encode(HELLO.read_bytes()).decode() + "\n")
    assert main(["cms", "inspect", str(b64), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["content_encryption_algorithm"] == "aes-256-cbc"
    assert doc["recipients"][0]["subject_key_identifier"].startswith("fb09e9af")
    assert doc["recipients"][0]["encrypted_key_size"] == 256
    assert doc["refusals"] == []


def test_inspect_lists_refusals(capsys):
    assert main(["cms", "inspect", str(VECTORS / "openssl_aes128.der"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["refusals"] == ["content encryption aes-128-cbc is not supported; need aes-256-cbc"]


def test_inspect_garbage_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(HELLO.read_bytes()[:100])  # truncated: not BER at all
    assert main(["cms", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a CMS structure (malformed BER" in err
    assert err.count("\n") == 1


def test_inspect_well_formed_ber_that_is_not_enveloped_data_exits_1(tmp_path, capsys):
    bad = tmp_path / "seq.der"
    bad.write_bytes(bytes.fromhex("3003020101"))  # SEQUENCE { INTEGER 1 }: BER, not CMS
    assert main(["cms", "inspect", str(bad)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_decrypt_pkcs8_to_stdout_as_base64(capsys):
    assert main(["cms", "decrypt", str(HELLO), "--key", str(HELLO_KEY)]) == 0
    assert base64.b64decode(capsys.readouterr().out) == HELLO_PLAINTEXT


def test_decrypt_pkcs1_key_from_hex_to_file(tmp_path, hello_key, capsys):
    key = _write_key(tmp_path / "k1.pem", hello_key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    hex_blob = tmp_path / "blob.hex"
    hex_blob.write_text(HELLO.read_bytes().hex())
    out = tmp_path / "plain.bin"
    assert main(["cms", "decrypt", str(hex_blob), "--key", str(key), "--out", str(out)]) == 0
    assert out.read_bytes() == HELLO_PLAINTEXT
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert capsys.readouterr().out == ""


def test_decrypt_wrong_key_exits_1(tmp_path, other_key, capsys):
    key = _write_key(tmp_path / "k.pem", other_key, serialization.PrivateFormat.PKCS8)
    assert main(["cms", "decrypt", str(HELLO), "--key", str(key)]) == 1
    captured = capsys.readouterr()
    assert "decryption failed (wrong key or corrupted data)" in captured.err
    assert captured.out == ""


def test_decrypt_unsupported_exits_1(capsys):
    blob = VECTORS / "openssl_pkcs1v15.der"
    assert main(["cms", "decrypt", str(blob), "--key", str(HELLO_KEY)]) == 1
    assert "PKCS#1 v1.5" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a key", "not a PEM private key"), (None, "not an RSA private key")],
)
def test_decrypt_bad_key_file_exits_2(tmp_path, capsys, content, message):
    path = tmp_path / "k.pem"
    if content is None:
        _write_key(path, ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8)
    else:
        path.write_bytes(content)
    assert main(["cms", "decrypt", str(HELLO), "--key", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_decrypt_missing_blob_or_key_exits_2(tmp_path, capsys):
    assert main(["cms", "decrypt", str(tmp_path / "nope"), "--key", str(HELLO_KEY)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["cms", "decrypt", str(HELLO), "--key", str(tmp_path / "nokey")]) == 2
    assert "cannot read key" in capsys.readouterr().err


def test_decrypt_json(tmp_path, capsys):
    assert main(["cms", "decrypt", str(HELLO), "--key", str(HELLO_KEY), "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert base64.b64decode(reply["plaintext"]) == HELLO_PLAINTEXT
    assert reply["plaintext_bytes"] == len(HELLO_PLAINTEXT)
    out = tmp_path / "p.bin"
    argv = ["cms", "decrypt", str(HELLO), "--key", str(HELLO_KEY), "--out", str(out), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {
        "out": str(out),
        "plaintext_bytes": len(HELLO_PLAINTEXT),
    }
    assert out.read_bytes() == HELLO_PLAINTEXT


def test_decrypt_out_replaces_a_readable_file_and_refuses_a_symlink(tmp_path, capsys):
    out = tmp_path / "plain.bin"
    out.write_bytes(b"old")
    out.chmod(0o644)
    with out.open("rb") as held:  # someone holding the old file open never sees the plaintext
        assert main(["cms", "decrypt", str(HELLO), "--key", str(HELLO_KEY), "--out", str(out)]) == 0
        assert held.read() == b"old"
    assert out.read_bytes() == HELLO_PLAINTEXT
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = tmp_path / "link.bin"
    link.symlink_to(victim)
    assert main(["cms", "decrypt", str(HELLO), "--key", str(HELLO_KEY), "--out", str(link)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert victim.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.bin", "plain.bin", "victim"]


@pytest.mark.parametrize(
    "argv", [["cms"], ["cms", "decrypt", str(HELLO)], ["cms", "inspect"], ["cms", "frob"]]
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_installed_entry_point_decrypts_from_stdin():
    exe = Path(sys.executable).with_name("nitrokms")
    if not exe.exists():
        pytest.skip("nitrokms entry point not installed in this environment")
    result = subprocess.run(
        [str(exe), "cms", "decrypt", "-", "--key", str(HELLO_KEY)],
        input=base64.b64encode(HELLO.read_bytes()),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert base64.b64decode(result.stdout) == HELLO_PLAINTEXT

"""image/build.py's command line: the options `make vm-demo` relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from image import build

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture(autouse=True)
def _epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


def test_kms_roots_pem_replaces_the_named_roots(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(PEM)
    options = build.parse(
        ["--region", "us-east-1", "--parent-cid", "2", "--kms-roots-pem", str(bundle),
         "--mirror", "http://mirror.invalid/debian"]
    )  # fmt: skip
    assert options.kms_roots_pem == PEM
    assert options.parent_cid == 2
    assert options.settings["ca_bundle"] == "/" + build.KMS_ROOTS_PATH
    assert build.parse(["--region", "us-east-1", "--mirror", "x/debian"]).kms_roots_pem is None


@pytest.mark.parametrize(("content", "problem"), [(None, "No such file"), (b"junk", "no PEM")])
def test_kms_roots_pem_must_be_a_readable_pem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, problem: str
) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_bytes(content)
    with pytest.raises(SystemExit) as exited:
        build.parse(["--region", "us-east-1", "--kms-roots-pem", str(bundle), "--mirror", "m"])
    assert exited.value.code == 2
    assert problem in capsys.readouterr().err

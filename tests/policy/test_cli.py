"""`nitrokms policy`: output, warnings and exit codes."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from nitrokms.parent.policy import find_unconditional_grants, measured_pcr

from nitrokms.cli import main

from .conftest import ACCOUNT, INSTANCE_ID, PCR0, ROLE_ARN, ZERO, measurements_json

PREFIX = "kms:RecipientAttestation:"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_prints_a_checked_policy_with_two_space_indent(capsys, measurements_file: Path) -> None:
    code, out, err = run(capsys, "--measurements", str(measurements_file), "--role-arn", ROLE_ARN)
    assert (code, err) == (0, "")
    assert out.startswith('{\n  "Version": "2012-10-17",\n')
    policy = json.loads(out)
    assert find_unconditional_grants(policy) == []
    assert policy["Statement"][0]["Condition"]["StringEqualsIgnoreCase"][f"{PREFIX}PCR0"] == PCR0


def test_pcr_options_and_instance_id(capsys, measurements_file: Path) -> None:
    explicit = "ab" * 48
    code, out, _ = run(
        capsys, "--measurements", str(measurements_file), "--role-arn", ROLE_ARN,
        "--pcr", "3", "--pcr", f"7={explicit.upper()}", "--instance-id", INSTANCE_ID,
    )  # fmt: skip
    assert code == 0
    found = json.loads(out)["Statement"][0]["Condition"]["StringEqualsIgnoreCase"]
    assert found[f"{PREFIX}PCR3"] == measured_pcr(ROLE_ARN)
    assert found[f"{PREFIX}PCR4"] == measured_pcr(INSTANCE_ID)
    assert found[f"{PREFIX}PCR7"] == explicit


def test_debug_measurements_exit_1_unless_allowed(capsys, debug_measurements_file: Path) -> None:
    code, out, err = run(
        capsys, "--measurements", str(debug_measurements_file), "--account", ACCOUNT
    )
    assert (code, out) == (1, "")
    assert "debug-mode enclaves" in err
    assert "--allow-debug" in err
    code, out, err = run(
        capsys,
        "--measurements",
        str(debug_measurements_file),
        "--account",
        ACCOUNT,
        "--allow-debug",
    )
    assert code == 0
    assert "ANY debug-mode enclave" in err
    values = json.loads(out)["Statement"][0]["Condition"]["StringEqualsIgnoreCase"].values()
    assert set(values) == {ZERO}


def test_allow_debug_on_production_measurements_warns(capsys, measurements_file: Path) -> None:
    code, out, err = run(
        capsys, "--measurements", str(measurements_file), "--role-arn", ROLE_ARN, "--allow-debug"
    )
    assert code == 0
    assert "also admits debug-mode enclaves" in err
    assert [s["Sid"] for s in json.loads(out)["Statement"]] == [
        "EnclaveDataPlane", "EnclaveDataPlaneDebug", "KeyAdministration",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("{not json", (), "not JSON"),
        (measurements_json(PCR0="ab"), (), "PCR0 has 2 hex digits"),
        (None, (), "cannot read measurements file"),
        (measurements_json(PCR0=PCR0, PCR1=PCR0, PCR2=PCR0), (), "--role-arn"),
        (
            measurements_json(PCR0=PCR0, PCR1=PCR0, PCR2=PCR0),
            ("--account", ACCOUNT, "--pcr", "8"),
            "PCR8",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path: Path, content, extra, message) -> None:
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    code, out, err = run(capsys, "--measurements", str(path), *extra)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith("nitrokms: ")
    assert message in err


@pytest.mark.parametrize(
    "argv",
    [
        (),
        ("--measurements", "a", "--check", "b"),
        ("--measurements", "a", "--pcr", "x"),
        ("--measurements", "a", "--pcr", "123"),
    ],
)
def test_usage_errors_exit_2(capsys, argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["policy", *argv])
    assert exc.value.code == 2


def test_check_accepts_a_good_policy_and_get_key_policy_output(capsys, tmp_path, measurements_file):
    _, generated, _ = run(capsys, "--measurements", str(measurements_file), "--role-arn", ROLE_ARN)
    path = tmp_path / "policy.json"
    for text in (generated, json.dumps({"Policy": generated, "PolicyName": "default"})):
        path.write_text(text)
        code, out, err = run(capsys, "--check", str(path))
        assert (code, err) == (0, "")
        assert out.startswith("ok:")


def test_check_names_the_offending_statement(capsys, tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    statements = [
        {
            "Sid": "Fine",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "kms:Describe*",
            "Resource": "*",
        },
        {"Sid": "Oops", "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
    ]
    path.write_text(json.dumps({"Statement": statements}))
    code, out, err = run(capsys, "--check", str(path))
    assert (code, out) == (1, "")
    assert "statement #1 (Sid 'Oops') grants kms:Decrypt" in err
    assert "Fine" not in err


def test_check_reads_stdin_and_refuses_junk(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"[1, 2]")))
    code, _, err = run(capsys, "--check", "-")
    assert code == 2
    assert "not a policy" in err


def test_check_json(capsys, tmp_path: Path, measurements_file: Path) -> None:
    _, generated, _ = run(capsys, "--measurements", str(measurements_file), "--role-arn", ROLE_ARN)
    path = tmp_path / "policy.json"
    path.write_text(generated)
    code, out, err = run(capsys, "--check", str(path), "--json")
    assert (code, err, json.loads(out)) == (0, "", {"ok": True, "problems": []})
    bad = {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}
    path.write_text(json.dumps(bad))
    code, out, _ = run(capsys, "--check", str(path), "--json")
    reply = json.loads(out)
    assert (code, reply["ok"]) == (1, False)
    assert "grants kms:Decrypt" in reply["problems"][0]
    path.write_text("{not json")
    code, out, err = run(capsys, "--check", str(path), "--json")
    assert (code, out) == (2, "")
    assert "is not JSON" in err

from __future__ import annotations

import json
from pathlib import Path

import pytest

ACCOUNT = "111122223333"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/EnclaveRole"
INSTANCE_ID = "i-0123456789abcdef0"
PCR0, PCR1, PCR2 = ("a1" * 48, "B2" * 48, "c3" * 48)
PCR8 = "d4" * 48
ZERO = "0" * 96


def measurements_json(**pcrs: str) -> str:
    body = {"HashAlgorithm": "Sha384 { ... }"} | pcrs
    return json.dumps({"Measurements": body}, indent=2)


@pytest.fixture
def measurements_file(tmp_path: Path) -> Path:
    path = tmp_path / "measurements.json"
    path.write_text(measurements_json(PCR0=PCR0, PCR1=PCR1, PCR2=PCR2))
    return path


@pytest.fixture
def debug_measurements_file(tmp_path: Path) -> Path:
    path = tmp_path / "debug-measurements.json"
    path.write_text(measurements_json(PCR0=ZERO, PCR1=ZERO, PCR2=ZERO))
    return path

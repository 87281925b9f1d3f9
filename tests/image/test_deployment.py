"""The deployment story agrees with itself: the systemd units name each other and the install path
the README uses, and every unit the README installs exists."""

from __future__ import annotations

import re

import pytest

from .conftest import REPO

UNITS = REPO / "parent" / "systemd"
README = (REPO / "README.md").read_text()
VENV_BIN = "/opt/nitrokms/.venv/bin/nitrokms"


def unit(name: str) -> str:
    return (UNITS / name).read_text()


@pytest.mark.parametrize("name", sorted(p.name for p in UNITS.glob("*.service")))
def test_units_reference_only_existing_nitrokms_units_and_the_readme_path(name: str) -> None:
    text = unit(name)
    for referenced in re.findall(r"(nitrokms-[a-z]+\.service)", text):
        assert (UNITS / referenced).exists(), f"{name} names {referenced}"
    for path in re.findall(r"(/\S*/bin/nitrokms)\b", text):
        assert path == VENV_BIN, f"{name} runs {path}"
    assert f"install -m 0644 parent/systemd/{name} /etc/systemd/system/" in README


def test_readme_installs_where_the_units_look() -> None:
    assert "python3 -m venv /opt/nitrokms/.venv" in README
    eif = re.search(r"NITROKMS_EIF=(\S+)", unit("nitrokms-enclave.service"))
    assert eif is not None
    assert f"out/nitrokms.eif {eif.group(1)}" in README
    assert "After=nitro-enclaves-allocator.service" in unit("nitrokms-enclave.service")
    assert "nitrokms-enclave.service" in unit("nitrokms-credentials.service")

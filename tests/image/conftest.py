from __future__ import annotations

from pathlib import Path

import pytest

from .dockerfile import DockerIgnore, Stage, parse

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dockerfile_text() -> str:
    return (REPO / "Dockerfile.enclave").read_text()


@pytest.fixture(scope="session")
def stages(dockerfile_text: str) -> list[Stage]:
    return parse(dockerfile_text)[1]


@pytest.fixture(scope="session")
def dockerignore() -> DockerIgnore:
    return DockerIgnore((REPO / ".dockerignore").read_text())

"""The one import name: every package folder is mapped under `nitrokms`, and the wheel holds
exactly the mapped tree (no top-level `enclave`, `parent`, `proto`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.paths import REPO_ROOT

SETUPTOOLS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_folders() -> dict[str, Path]:
    """Import name -> folder, for every folder under a mapped root that holds Python code."""
    found: dict[str, Path] = {}
    for name, folder in SETUPTOOLS["package-dir"].items():
        root = REPO_ROOT / folder
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            found[".".join((name, *relative))] = init.parent
    return found


def test_every_package_folder_is_in_the_package_list() -> None:
    listed = set(SETUPTOOLS["packages"])
    missing = sorted(set(_package_folders()) - listed)
    assert missing == [], f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_everything_maps_under_the_one_name() -> None:
    assert all(n == "nitrokms" or n.startswith("nitrokms.") for n in SETUPTOOLS["package-dir"])
    assert all(p == "nitrokms" or p.startswith("nitrokms.") for p in SETUPTOOLS["packages"])


def test_the_simulated_world_lives_outside_tests() -> None:
    assert SETUPTOOLS["package-dir"]["nitrokms.sim"] == "sim"
    assert not (REPO_ROOT / "tests" / "harness").exists()

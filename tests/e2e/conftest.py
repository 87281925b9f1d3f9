"""End-to-end tests over `nitrokms.sim.world.World`: production processes only.

A failed test's report gets the tail of every log of the World it used (the nitrokms pytest
plugin's report hook, nitrokms.sim.pytest_plugin).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nitrokms.sim.world import World


def open_world(
    tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any
) -> Iterator[World]:
    """A started World in a fresh directory under pytest's tmp (logs kept there)."""
    workdir: Path = tmp_path_factory.mktemp(name)
    with World(workdir, **options) as world:
        yield world

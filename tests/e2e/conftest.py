"""End-to-end tests over `nitrokms.sim.world.World`: production processes only.

A failed test's report gets the tail of every log of the World it used.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nitrokms.sim.world import World


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, World) and name != "nitrokms_world":  # the plugin reports that one
            report.sections.append((f"world logs ({value.log_dir})", value.log_tails()))


def open_world(
    tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any
) -> Iterator[World]:
    """A started World in a fresh directory under pytest's tmp (logs kept there)."""
    workdir: Path = tmp_path_factory.mktemp(name)
    with World(workdir, **options) as world:
        yield world

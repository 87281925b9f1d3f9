"""The pytest plugin as an outside project uses it: conftest-free test files in an empty
directory (this folder's outside_project.py and the README's pytest example), run with this
venv's pytest, find the nitrokms_* fixtures through the entry point."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from nitrokms.sim.world import base_env

from tests.docs.readme import to_run

OUTSIDE = Path(__file__).with_name("outside_project.py")
PYTEST = Path(sys.executable).with_name("pytest")


def test_the_plugin_is_registered_through_its_entry_point() -> None:
    entry = [e for e in metadata.entry_points(group="pytest11") if e.name == "nitrokms"]
    assert [e.value for e in entry] == ["nitrokms.sim.pytest_plugin"]


def test_an_outside_project_uses_the_fixtures(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(OUTSIDE, project / "test_with_nitrokms.py")
    [example] = to_run("pytest")
    (project / "test_readme_example.py").write_text(example.code)
    pcrs = {f"PCR{i}": hashlib.sha384(f"my image {i}".encode()).hexdigest() for i in (0, 1, 2)}
    (project / "measurements.json").write_text(json.dumps({"Measurements": pcrs}))
    (project / "pytest.ini").write_text(
        "[pytest]\nnitrokms_region = eu-west-1\nnitrokms_measurements = measurements.json\n"
    )
    env = base_env()
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [str(PYTEST), "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'tmp'}",
         "test_with_nitrokms.py", "test_readme_example.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "9 passed" in done.stdout
    assert sorted(p.name for p in project.iterdir()) == [
        "measurements.json",
        "pytest.ini",
        "test_readme_example.py",
        "test_with_nitrokms.py",
    ]

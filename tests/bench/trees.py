"""Import trees for same-run A/B benchmarks: run a process on another commit's code.

`import_tree(ref, workdir)` returns a directory to put first on a child's PYTHONPATH so that its
`nitrokms` package is the one at git `ref` (or the working tree, for "worktree"). The repository's
folders are laid out as they install (enclave/ -> nitrokms/enclave, ...), the same trick as
`make typecheck`; the simulated world (`nitrokms.sim`, with its compiled NSM preload library) is
always the working tree's, so both sides of an A/B run against the same simulator. A child whose
working directory is the repository root would import the repository's own `nitrokms/` first:
run it elsewhere (World's processes run in its log directory).

A commit from before the control listener (issue 15) has no `--control-listen`, which the
working tree's launcher passes. Its tree gets an entry point (`nitrokms/enclave/__main__.py`)
that drops the option and makes the control socket a symlink to the service socket, where that
commit served the credential provider anyway; everything else is the commit's own code.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WINGS = ("enclave", "parent", "proto", "transport")
WORKTREE = "worktree"


def _export(ref: str, into: Path) -> Path:
    """The folders of `ref` under `into` (git archive). Raises RuntimeError for a bad ref."""
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", ref, "nitrokms", *WINGS],
        capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"git archive {ref}: {done.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into


def import_tree(ref: str, workdir: Path) -> Path:
    """A PYTHONPATH entry whose `nitrokms` is `ref`'s code (the working tree's for WORKTREE)."""
    name = "worktree" if ref == WORKTREE else ref.replace("/", "_")
    top = workdir / f"tree-{name}"
    source = REPO_ROOT if ref == WORKTREE else _export(ref, workdir / f"src-{name}")
    package = top / "nitrokms"
    package.mkdir(parents=True)
    for path in (source / "nitrokms").iterdir():
        if path.suffix == ".py":
            (package / path.name).symlink_to(path.resolve())
    for wing in WINGS:
        if wing == "enclave" and not _has_control_listener(source):
            _enclave_with_control_shim(source / wing, package / wing)
        else:
            (package / wing).symlink_to((source / wing).resolve())
    (package / "sim").symlink_to(REPO_ROOT / "sim")
    return top


def _has_control_listener(source: Path) -> bool:
    return "--control-listen" in (source / "enclave" / "config.py").read_text()


_CONTROL_SHIM = """\
# Written by tests/bench/trees.py: this commit predates --control-listen (see there).
import os, runpy, sys

argv = sys.argv[1:]
if "--control-listen" in argv:
    at = argv.index("--control-listen")
    control = argv[at + 1].removeprefix("unix://")
    listen = argv[argv.index("--listen") + 1].removeprefix("unix://")
    del argv[at : at + 2]
    if os.path.lexists(control):
        os.unlink(control)
    os.symlink(listen, control)
sys.argv[1:] = argv
runpy.run_path({main!r}, run_name="__main__")
"""


def _enclave_with_control_shim(source: Path, into: Path) -> None:
    """`source`'s enclave package, linked file by file, with the shim as its entry point."""
    into.mkdir()
    for path in source.iterdir():
        if path.name != "__main__.py":
            (into / path.name).symlink_to(path.resolve())
    main = (source / "__main__.py").resolve()
    (into / "__main__.py").write_text(_CONTROL_SHIM.format(main=str(main)))


def commit_of(ref: str) -> str:
    """The short commit id of `ref` ("worktree" plus a mark when the tree has changes)."""
    if ref == WORKTREE:
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        head = commit_of("HEAD")
        return f"{head}+changes" if dirty else head
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", ref],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() or ref

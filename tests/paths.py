"""Where the checkout is, for tests that run `python -m tests...` in a child process."""

from __future__ import annotations

from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parents[1]


def checkout_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the checkout on PYTHONPATH, so a child can import `tests`."""
    return env | {"PYTHONPATH": str(REPO_ROOT)}

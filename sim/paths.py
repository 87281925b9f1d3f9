"""Where the simulated world keeps its state by default.

`NITROKMS_HARNESS_STATE` overrides the base directory; otherwise it is
`$XDG_STATE_HOME/nitrokms-harness` (`~/.local/state/nitrokms-harness`). The NSM simulator keeps its
root key and certificate under `nsm/`, so documents from separate runs chain to the same root and
the local KMS finds that root by default.
"""

from __future__ import annotations

import os
from pathlib import Path


def harness_state_dir() -> Path:
    override = os.environ.get("NITROKMS_HARNESS_STATE")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "nitrokms-harness"


def default_nsm_state_dir() -> Path:
    return harness_state_dir() / "nsm"


def default_kms_state_dir() -> Path:
    return harness_state_dir() / "kms"

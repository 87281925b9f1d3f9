"""`python -m nitrokms.sim GROUP ...`: drive the simulated world (see DESIGN.md, command line)."""

from __future__ import annotations

import importlib
import sys

GROUPS = {
    "nsm": "nitrokms.sim.nsm.cli",
    "kms": "nitrokms.sim.kms.cli",
    "creds": "nitrokms.sim.creds",
    "demo": "nitrokms.sim.demo",
    "world": "nitrokms.sim.world_cli",
    "vm": "nitrokms.sim.vm.demo",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in GROUPS:
        print("usage: python -m nitrokms.sim {" + ",".join(GROUPS) + "} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(GROUPS[argv[0]])
    result: int = module.main(argv[1:])
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

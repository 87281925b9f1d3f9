"""`python -m tests.harness GROUP ...`: drive the simulated world (see DESIGN.md, command line)."""

from __future__ import annotations

import importlib
import sys

GROUPS = {
    "nsm": "tests.harness.nsm.cli",
    "kms": "tests.harness.kms.cli",
    "creds": "tests.harness.creds",
    "demo": "tests.harness.demo",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in GROUPS:
        print("usage: python -m tests.harness {" + ",".join(GROUPS) + "} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(GROUPS[argv[0]])
    result: int = module.main(argv[1:])
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

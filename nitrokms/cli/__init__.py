"""The `nitrokms` command line.

Each subcommand lives in its own module in this package and exposes `register(subparsers)`; the
modules are discovered at start-up, so a capability adds its command without touching this file.
Handlers return the exit code: 0 success, 1 a failed check or operation (one line on stderr), 2 a
usage error (argparse's own convention).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence

from nitrokms import __version__

Handler = Callable[[argparse.Namespace], int]


class CLIError(Exception):
    """A failure to report as one line on stderr, with an exit code (1 unless said otherwise)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nitrokms",
        description="Attested AWS KMS key fetch for Nitro Enclaves: operator tools for the parent.",
    )
    parser.add_argument("--version", action="version", version=f"nitrokms {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except CLIError as exc:
        print(f"nitrokms: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130

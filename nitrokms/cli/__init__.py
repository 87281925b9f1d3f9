"""The `nitrokms` command line.

Each subcommand lives in its own module in this package and exposes `register(subparsers)`; the
modules are discovered at start-up, so a capability adds its command without touching this file.
Handlers return the exit code: 0 success, 1 the answer is no (a failed check, a denial, not ready;
one line on stderr), 2 usage or unreadable input (argparse's own convention for usage).

Start-up stays fast: when argv names a command, only that module is imported (so `nitrokms
attestation inspect` never loads botocore or dnspython), and the top-level help lists the commands
from the first paragraph of each module's docstring ("`nitrokms X`: summary."), read without
importing any of them.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


class CLIError(Exception):
    """A failure to report as one line on stderr, with an exit code (1 unless said otherwise)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def examples(*lines: str) -> str:
    """An argparse epilog listing example command lines (use RawDescriptionHelpFormatter)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


class _Version(argparse.Action):
    """--version, reading the installed version only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from nitrokms import __version__  # noqa: PLC0415 - reads package metadata (slow)

        print(f"nitrokms {__version__}")
        parser.exit()


def command_modules() -> list[str]:
    """The names of the modules in this package that define a command."""
    names = (info.name for info in pkgutil.iter_modules(__path__))
    return sorted(name for name in names if not name.startswith("_"))


def command_summary(name: str) -> str:
    """The summary of command module `name`: the first sentence of its docstring, after the
    "`nitrokms X`: " that opens it."""
    spec = importlib.util.find_spec(f"{__name__}.{name}")
    origin = spec.origin if spec is not None else None
    source = Path(origin).read_text(encoding="utf-8") if origin else ""
    docstring = ast.get_docstring(ast.parse(source)) or ""
    first = " ".join(docstring.split("\n\n", 1)[0].split())
    return first.split("`: ", 1)[-1].split(". ", 1)[0].rstrip(".")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `nitrokms` parser with every command (`only` None), or with the command module `only`
    registered in full. Without `only`, the commands are listed from their summaries and none is
    imported: parsing a command's arguments needs `only`."""
    parser = argparse.ArgumentParser(
        prog="nitrokms",
        description="Attested AWS KMS key fetch for Nitro Enclaves: operator tools for the parent. "
        "Exit codes: 0 success, 1 the answer is no (verification failed, denied, not ready), "
        "2 usage or unreadable input.",
        epilog=examples(
            "nitrokms attestation verify doc.cose --pcr 0=$PCR0",
            "nitrokms call health --enclave vsock://16:5000",
            "nitrokms COMMAND --help",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    if only is None:
        for name in command_modules():
            subparsers.add_parser(name, help=command_summary(name))
        return parser
    importlib.import_module(f"{__name__}.{only}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    parser = build_parser(command if command in command_modules() else None)
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = handler(args)
        sys.stdout.flush()
    except CLIError as exc:
        print(f"nitrokms: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`nitrokms call describe | head -1`): stop quietly, with the
        # status a shell gives a command killed by SIGPIPE; stdout is closed for Python's exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code

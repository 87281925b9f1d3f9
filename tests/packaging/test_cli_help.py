"""Every `nitrokms` command and subcommand shows an example in its help, and the commands start
without loading what they do not need (boto3, dnspython)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from nitrokms.cli import build_parser, command_modules, command_summary


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*path, name))


def test_every_subcommand_help_shows_an_example() -> None:
    seen = []
    for command in command_modules():
        for path, parser in _leaves(build_parser(command)):
            seen.append(" ".join(path))
            assert "examples:\n  nitrokms " in parser.format_help(), " ".join(path)
    assert len(seen) >= 18  # attestation 2, call 8, cms 2, credentials, nsm 3, policy, proxy


def test_the_top_level_help_lists_every_command_from_its_docstring() -> None:
    text = build_parser().format_help()
    for command in command_modules():
        assert command in text
        summary = command_summary(command)
        assert summary
        assert not summary.startswith("`")


@pytest.mark.parametrize(
    ("argv", "absent"),
    [
        (["--help"], ["boto3", "botocore", "dns", "yaml", "cryptography"]),
        (["attestation", "inspect", "-"], ["boto3", "botocore", "dns", "yaml"]),
        (["cms", "inspect", "-"], ["boto3", "botocore", "dns", "yaml"]),
        (["policy", "--check", "-"], ["boto3", "botocore", "dns"]),
        (["call", "health", "--enclave", "unix:///nonexistent", "--connect-timeout", "0.1"],
         ["boto3", "botocore", "dns", "yaml"]),
    ],
)  # fmt: skip
def test_commands_import_only_what_they_need(argv: list[str], absent: list[str]) -> None:
    code = (
        "import json, sys\n"
        "from nitrokms.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=b"", capture_output=True, timeout=60, check=False
    )
    loaded = set(json.loads(done.stderr.decode().splitlines()[-1]))
    assert loaded.isdisjoint(absent), sorted(loaded & set(absent))

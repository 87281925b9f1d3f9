"""The import rules hold, and breaking one fails `make lint`.

The rules live in the `ruff.toml` of each package folder (ruff's banned-api and relative-import
checks). Each case below feeds ruff one violating import as if it were a file in that folder, so
a rule that stops working fails here; the whole tree passing is `make lint`'s job.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

RUFF = Path(sys.executable).parent / "ruff"

VIOLATIONS = [
    ("proto/_probe.py", "import socket"),
    ("proto/_probe.py", "import asyncio"),
    ("proto/_probe.py", "import subprocess"),
    ("proto/attestation/_probe.py", "from nitrokms.transport.sockets import start_server"),
    ("proto/_probe.py", "from nitrokms.enclave.nsm import NSMClient"),
    ("transport/_probe.py", "from nitrokms.parent.rpc import EnclaveClient"),
    ("enclave/_probe.py", "from nitrokms.parent.rpc import EnclaveClient"),
    ("enclave/nsm/_probe.py", "import nitrokms.parent.proxy"),
    ("enclave/_probe.py", "from nitrokms.sim.world import World"),
    ("enclave/_probe.py", "from nitrokms.cli import main"),
    ("enclave/_probe.py", "from ..parent import rpc"),
    ("parent/_probe.py", "from nitrokms.enclave.cms import decrypt"),
    ("parent/rpc/_probe.py", "from nitrokms.sim.kms import server"),
    ("parent/_probe.py", "from tests.paths import REPO_ROOT"),
    ("nitrokms/cli/_probe.py", "from nitrokms.sim.nsm.pki import SimulatedPKI"),
    ("nitrokms/cli/_probe.py", "import tests.paths"),
    ("sim/_probe.py", "from tests.paths import REPO_ROOT"),
]

ALLOWED = [
    ("proto/_probe.py", "import hashlib\nimport threading"),
    ("transport/_probe.py", "import socket\nfrom nitrokms.proto.addresses import Address"),
    ("enclave/_probe.py", "from nitrokms.transport.sockets import start_server"),
    ("parent/_probe.py", "from nitrokms.proto import messages"),
    (
        "nitrokms/cli/_probe.py",
        "from nitrokms.enclave.nsm import NSMClient\nimport nitrokms.parent",
    ),
    ("sim/_probe.py", "from nitrokms.enclave.nsm import NSMClient\nimport nitrokms.parent"),
]


def _ruff(filename: str, imports: str) -> subprocess.CompletedProcess[str]:
    source = f'"""Probe."""\n\n{textwrap.dedent(imports)}\n'
    return subprocess.run(
        [str(RUFF), "check", "--no-cache", "--select", "TID", "--output-format", "concise",
         "--stdin-filename", filename, "-"],
        input=source, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(("filename", "imports"), VIOLATIONS)
def test_a_broken_rule_fails_lint(filename: str, imports: str) -> None:
    result = _ruff(filename, imports)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "TID251" in result.stdout or "TID252" in result.stdout, result.stdout


@pytest.mark.parametrize(("filename", "imports"), ALLOWED)
def test_what_the_layers_allow_passes(filename: str, imports: str) -> None:
    result = _ruff(filename, imports)
    assert result.returncode == 0, result.stdout + result.stderr


PRODUCTION = ("nitrokms.proto", "nitrokms.transport", "nitrokms.enclave", "nitrokms.parent",
              "nitrokms.cli")  # fmt: skip


def test_importing_all_production_code_loads_no_simulator_and_no_tests() -> None:
    """What ruff cannot see (imports by string) still holds at run time."""
    probe = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        for root in {PRODUCTION!r}:
            package = importlib.import_module(root)
            for info in pkgutil.walk_packages(package.__path__, root + "."):
                if not info.name.endswith("__main__"):
                    importlib.import_module(info.name)
        import nitrokms.cli
        nitrokms.cli.build_parser()
        leaked = sorted(m for m in sys.modules if m.startswith(("nitrokms.sim", "tests")))
        print(",".join(leaked))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    assert result.stdout.strip() == ""

"""The simulated world as pytest fixtures, for your own project's tests (`pip install
'nitrokms[sim]'`; pytest finds this plugin through its `pytest11` entry point, no conftest needed).

- `nitrokms_world` (session): a started `nitrokms.sim.world.World`: local KMS, relay, enclave
  service under the simulated NSM in its own network namespace, credential provider. Its
  `client_environment()` is what `world up` writes to world.env; `client()` is an RPC client.
- `nitrokms_attested_key` (session): the ARN of a key whose policy admits GenerateDataKey and
  Decrypt only with an attestation document carrying the world's PCR0/1/2 (the policy
  `nitrokms policy` makes for the world's measurements and the parent role).
- `nitrokms_enclave`: runs commands as code inside the world's enclave (the enclave's network
  namespace, the simulated NSM with the world's measurements, and the environment
  `nitrokms.enclave.network.kms_network_path()` and boto3 need to reach KMS through the relay).
- `nitrokms_kms` (session): the local KMS alone (`kms serve` in a subprocess), with `client()` and
  `environment()`.
- `nitrokms_nsm`: runs commands under the simulated NSM alone (`nsm run`: /dev/nsm answers, no
  network namespace, no KMS), with `root_pem` to verify the documents it signs.

Settings (pytest.ini / pyproject `[tool.pytest.ini_options]`): `nitrokms_region` (default
us-east-1), `nitrokms_measurements` (a nitro-cli measurements JSON, relative to the rootdir: your
image's PCRs, so policies made from your real measurements admit the world's enclave) and
`nitrokms_isolation` (auto, netns, userns or none).

Processes are started by the fixtures and stopped at the end of their scope; the World's logs are
kept under pytest's temporary directory, and the log tails of every World a failing test used
(this plugin's or one of its own) are added to its report.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nitrokms.sim.kms.fixtures import KMSProcess, spawn_kms, stop_kms
from nitrokms.sim.launch import base_env
from nitrokms.sim.nsm.pki import SimulatedPKI
from nitrokms.sim.world import World

RUN_TIMEOUT_S = 120.0


@dataclass
class SimulatedRun:
    """Runs commands with a fixed prefix (namespace, `nsm run`) and environment."""

    prefix: list[str]
    env: dict[str, str] = field(repr=False)
    cwd: Path

    def command(self, argv: Sequence[str]) -> list[str]:
        return [*self.prefix, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: float = RUN_TIMEOUT_S,
        check: bool = False,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` to completion, `stdin` as its input, output captured as text; `env` adds
        to the environment. Raises subprocess.TimeoutExpired (and CalledProcessError with
        `check`)."""
        return subprocess.run(
            self.command(argv),
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=check,
            input=stdin,
        )

    def python(
        self, code: str, *, env: Mapping[str, str] | None = None, timeout_s: float = RUN_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run Python `code` (this interpreter, so the same installed packages)."""
        return self.run([sys.executable, "-c", code], env=env, timeout_s=timeout_s)


@dataclass
class LocalKMSFixture:
    """The local KMS alone: `url`, `ca_path`, `region`, a boto3 `client()` signed as the account
    root, and `environment()` for subprocesses (boto3 or the AWS CLI)."""

    process: KMSProcess

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def ca_path(self) -> Path:
        return self.process.ca_path

    @property
    def region(self) -> str:
        return self.process.region

    def client(self) -> Any:
        return self.process.client()

    def environment(self) -> dict[str, str]:
        env = base_env()
        env.update(
            AWS_ENDPOINT_URL_KMS=self.process.url,
            AWS_CA_BUNDLE=str(self.process.ca_path),
            AWS_ACCESS_KEY_ID=self.process.access_key_id,
            AWS_SECRET_ACCESS_KEY=self.process.secret_access_key,
            AWS_DEFAULT_REGION=self.process.region,
        )
        return env


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("nitrokms_region", "AWS region of the simulated world", default="us-east-1")
    parser.addini("nitrokms_measurements", "nitro-cli measurements JSON for the world's enclave")
    parser.addini("nitrokms_isolation", "auto, netns, userns or none", default="auto")


def _world_options(config: pytest.Config) -> dict[str, Any]:
    measurements = str(config.getini("nitrokms_measurements") or "")
    isolation = str(config.getini("nitrokms_isolation"))
    if isolation not in ("auto", "netns", "userns", "none"):
        raise pytest.UsageError(f"nitrokms_isolation {isolation!r}: auto, netns, userns or none")
    return {
        "region": str(config.getini("nitrokms_region")),
        "measurements": config.rootpath / measurements if measurements else None,
        "isolation": isolation,
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, World):
            report.sections.append((f"nitrokms world logs ({value.log_dir})", value.log_tails()))


@pytest.fixture(scope="session")
def nitrokms_world(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[World]:
    """The whole simulated world, started once per session (logs under pytest's tmp)."""
    options = _world_options(pytestconfig)
    with World(tmp_path_factory.mktemp("nitrokms-world"), **options) as world:
        yield world


@pytest.fixture(scope="session")
def nitrokms_attested_key(nitrokms_world: World) -> str:
    """ARN of a key only the world's enclave (PCR0/1/2 pinned) may use for data keys."""
    return nitrokms_world.create_attested_key()


@pytest.fixture
def nitrokms_enclave(nitrokms_world: World, tmp_path: Path) -> SimulatedRun:
    """Runs commands as code inside the world's enclave (namespace, NSM, KMS path via relay)."""
    return SimulatedRun(
        nitrokms_world.enclave_command([]), nitrokms_world.enclave_environment(), tmp_path
    )


@pytest.fixture(scope="session")
def nitrokms_kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKMSFixture]:
    """The local KMS alone (`kms serve`), with a root-signed boto3 client() and environment()."""
    base = tmp_path_factory.mktemp("nitrokms-kms")
    root = SimulatedPKI.load_or_create(base / "nsm").root_certificate_pem
    process = spawn_kms(base / "kms", root)
    try:
        yield LocalKMSFixture(process)
    finally:
        stop_kms(process.process)


@dataclass
class NSMRun(SimulatedRun):
    """`SimulatedRun` under `nsm run`; `root_pem` verifies the documents it signs."""

    root_pem: bytes = field(default=b"", repr=False)


@pytest.fixture(scope="session")
def _nitrokms_nsm_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nitrokms-nsm")


@pytest.fixture
def nitrokms_nsm(_nitrokms_nsm_state: Path, tmp_path: Path) -> NSMRun:
    """Runs commands under the simulated NSM alone (`nsm run`); root_pem verifies its docs."""
    root = SimulatedPKI.load_or_create(_nitrokms_nsm_state).root_certificate_pem
    prefix = [sys.executable, "-m", "nitrokms.sim", "nsm", "run", "--state"]
    return NSMRun([*prefix, str(_nitrokms_nsm_state), "--"], base_env(), tmp_path, root)

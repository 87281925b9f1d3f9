"""The simulated world: the whole product running as separate processes, as on a parent instance.

    local KMS (https 127.0.0.1:P) <-TCP- nitrokms proxy (unix kms-relay.sock) <-unix- enclave
    nitrokms credentials --enclave unix://enclave.sock  -SetCredentials->  enclave
    tests / demo: parent.rpc.EnclaveClient  -unix->  enclave.sock

The enclave service runs as `python -m nitrokms.sim nsm run -- python -m nitrokms.enclave ...`
inside its own network namespace (`unshare -n` as root, `unshare -rn` in a user namespace
otherwise; probed, not guessed), so the relay's unix socket is its only way out. Where no
namespace can be made it runs without one and a warning line says so.

Credentials: each world makes random ones. The admin key (principal: the account root) is only
ever used by `kms_admin()`. The parent's credentials (principal: the parent instance role) reach
only the credential provider, through its environment, or, with `credentials_ttl_s`, through a
`credential_process` profile handing out expiring sets from a pool the local KMS also knows (see
`nitrokms.sim.creds`). The enclave gets credentials only through SetCredentials.

Readiness is always a line of the child's output (KMS URL, `proxy.listening`, the enclave's ready
event, the provider's "pushed credentials"); logs are kept per process in `workdir/logs/`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

from nitrokms.parent.policy import PolicyRequest, generate_policy, parse_measurements
from nitrokms.parent.rpc import EnclaveClient
from nitrokms.sim.creds import (
    credentials_json,
    new_credential,
    next_credential,
    write_pool,
    write_secret_file,
)
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.launch import (
    NO_ISOLATION_WARNING,
    EnclaveProcess,
    Isolation,
    IsolationUsed,
    MeasurementsArg,
    WorldError,
    base_env,
    measurements_document,
    measurements_hex,
    probe_isolation,
    start_enclave,
    start_relay,
)
from nitrokms.sim.nsm.pki import SimulatedPKI
from nitrokms.sim.processes import LinePredicate, ManagedProcess, ProcessFailed, spawn

__all__ = [
    "ADMIN_ARN",
    "NO_ISOLATION_WARNING",
    "PUSHED",
    "ROLE_ARN",
    "EnclaveProcess",
    "Isolation",
    "IsolationUsed",
    "ProcessFailed",
    "World",
    "WorldError",
    "base_env",
    "measurements_hex",
    "probe_isolation",
    "start_enclave",
    "start_relay",
]

ACCOUNT: Final = "111122223333"
ROLE_ARN: Final = f"arn:aws:iam::{ACCOUNT}:role/parent-instance-role"
ADMIN_ARN: Final = f"arn:aws:iam::{ACCOUNT}:root"
PROVIDER_POLL_S: Final = 1.0
# The provider retries a failed push after 5 s (parent.credentials.DEFAULT_RETRY_INTERVAL_S).
REPUSH_TIMEOUT_S: Final = 30.0
MAX_SOCKET_PATH: Final = 100
PUSHED: Final = "pushed credentials"
PUSH_FAILED: Final = "credential push failed"


def _push_outcome(line: str) -> bool:
    return PUSHED in line or PUSH_FAILED in line


def _is_url(line: str) -> bool:
    return line.startswith("https://")


class World:
    """Local KMS, relay, enclave and credential provider, started by `with World(dir) as w:`.

    Every process is stopped in reverse order on exit; on an exception the tails of every log are
    printed to stderr. Logs stay in `workdir/logs/` (the caller owns `workdir`).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        measurements: MeasurementsArg = None,
        debug: bool = False,
        isolation: Isolation = "auto",
        region: str = "us-east-1",
        credentials_ttl_s: float | None = None,
        kms_args: Sequence[str] = (),
        enclave_args: Sequence[str] = (),
        relay_args: Sequence[str] = (),
    ) -> None:
        if credentials_ttl_s is not None and not 0 < credentials_ttl_s < 86400:
            raise WorldError("credentials_ttl_s must be in (0, 86400) seconds")
        self.workdir = Path(workdir).resolve()
        self.region = region
        self.debug = debug
        self.credentials_ttl_s = credentials_ttl_s
        self.requested_isolation: Isolation = isolation
        self.isolation_used: IsolationUsed = "none"
        self.measurements = measurements_hex(measurements)
        self.kms_args = tuple(kms_args)
        self.enclave_args = tuple(enclave_args)
        self.relay_args = tuple(relay_args)
        self.role_arn = ROLE_ARN
        self.nsm_state = self.workdir / "nsm"
        self.kms_state = self.workdir / "kms"
        self.log_dir = self.workdir / "logs"
        self.measurements_path = self.workdir / "measurements.json"
        self.run_dir = self.workdir / "run"
        self.kms_url = ""
        self._kms_credentials = self.workdir / "secrets" / "kms-credentials.json"
        self._attestation_root = self.workdir / "attestation-root.pem"
        self._admin: Credential | None = None
        self._parent: Credential | None = None
        self._pool_path: Path | None = None
        self._provider_env: dict[str, str] = {}
        self._kms: ManagedProcess | None = None
        self._relay: ManagedProcess | None = None
        self._provider: ManagedProcess | None = None
        self._enclave: EnclaveProcess | None = None
        self._extras: list[EnclaveProcess] = []
        self._processes: dict[str, ManagedProcess] = {}

    def __repr__(self) -> str:
        return f"World({str(self.workdir)!r}, isolation={self.isolation_used!r})"

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> World:
        try:
            self.start()
        except BaseException:
            self._report_failure()
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._report_failure()
        self.close()

    def start(self) -> None:
        """Start everything and return once the enclave holds credentials. Raises WorldError or
        ProcessFailed (with the failing process's log tail)."""
        self.run_dir = self._socket_dir()
        for directory in (self.nsm_state, self.kms_state, self.log_dir, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.isolation_used = probe_isolation(self.requested_isolation)
        if self.isolation_used == "none":
            why = (
                "isolation 'none' was asked for"
                if self.requested_isolation == "none"
                else "unshare -n and unshare -rn both failed here"
            )
            print(
                f"{NO_ISOLATION_WARNING} ({why}): it could reach the local KMS directly, not only "
                "through the relay.",
                file=sys.stderr,
                flush=True,
            )
        self.measurements_path.write_text(
            json.dumps(measurements_document(self.measurements), indent=2)
        )
        self._write_credentials()
        self._start_kms()
        self._start_relay()
        self._enclave = self._spawn_enclave("enclave", self.measurements, self.debug, None, ())
        self._start_provider()

    def close(self) -> None:
        """Stop every process, newest first. Idempotent."""
        if self._provider is not None:
            self._provider.stop()
        for extra in reversed(self._extras):
            extra.stop()
        if self._enclave is not None:
            self._enclave.stop()
        for process in (self._relay, self._kms):
            if process is not None:
                process.stop()
        if not self.run_dir.is_relative_to(self.workdir):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def relay_socket(self) -> Path:
        return self.run_dir / "kms-relay.sock"

    def _socket_dir(self) -> Path:
        preferred = self.workdir / "run"
        if len(str(preferred / "kms-relay.sock")) <= MAX_SOCKET_PATH:
            return preferred
        return Path(tempfile.mkdtemp(prefix="nitrokms-world-"))  # removed by close()

    def _spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        ready: LinePredicate | str | None,
    ) -> tuple[ManagedProcess, str]:
        process, line = spawn(
            name,
            argv,
            log_path=self.log_dir / f"{name}.log",
            env=env,
            cwd=self.workdir,
            ready=ready,
        )
        self._processes[name] = process
        return process, line

    # --- the local KMS ------------------------------------------------------------------------

    def _write_credentials(self) -> None:
        secrets_dir = self.workdir / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        self._admin = new_credential(ADMIN_ARN, session=False)
        env = base_env()
        env.update(AWS_DEFAULT_REGION=self.region, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        if self.credentials_ttl_s is None:
            parent = new_credential(ROLE_ARN, session=True)
            self._parent = parent
            accepted = [self._admin, parent]
            env.update(
                AWS_CONFIG_FILE=os.devnull,
                AWS_ACCESS_KEY_ID=parent.access_key_id,
                AWS_SECRET_ACCESS_KEY=parent.secret_access_key,
                AWS_SESSION_TOKEN=parent.session_token or "",
            )
        else:
            pool_path = secrets_dir / "parent-credential-pool.json"
            self._pool_path = pool_path
            accepted = [self._admin, *write_pool(pool_path, ROLE_ARN)]
            command = shlex.join(
                [sys.executable, "-m", "nitrokms.sim", "creds", "--pool", str(pool_path),
                 "--ttl", f"{self.credentials_ttl_s:g}"]
            )  # fmt: skip
            config = secrets_dir / "aws-config"
            config.write_text(
                f"[profile world]\nregion = {self.region}\ncredential_process = {command}\n"
            )
            env.update(AWS_CONFIG_FILE=str(config), AWS_PROFILE="world")
        write_secret_file(self._kms_credentials, credentials_json(accepted))
        self._provider_env = env
        root = SimulatedPKI.load_or_create(self.nsm_state, region=self.region)
        self._attestation_root.write_bytes(root.root_certificate_pem)

    def _start_kms(self, port: int | None = None) -> None:
        listen = ["--listen", f"127.0.0.1:{port}"] if port else []
        argv = [
            sys.executable, "-m", "nitrokms.sim", "kms", "serve", "--state", str(self.kms_state),
            "--attestation-root", str(self._attestation_root),
            "--credentials", str(self._kms_credentials), "--region", self.region,
            *listen, *self.kms_args,
        ]  # fmt: skip
        self._kms, line = self._spawn("kms", argv, base_env(), ready=_is_url)
        self.kms_url = line.strip()

    @property
    def kms_port(self) -> int:
        port = urlsplit(self.kms_url).port
        if port is None:
            raise WorldError("the local KMS is not running")
        return port

    @property
    def kms_ca_path(self) -> Path:
        return self.kms_state / "ca.pem"

    @property
    def kms_host(self) -> str:
        return f"kms.{self.region}.amazonaws.com"

    def kms_admin(self) -> Any:
        """A boto3 KMS client signed with the admin credentials (the account root)."""
        if self._admin is None:
            raise WorldError("the world is not started")
        return self.kms_client(self._admin)

    def kms_as_parent(self, **client_kwargs: Any) -> Any:
        """A boto3 KMS client signed as the parent role, talking to KMS directly (no enclave,
        no attestation): what a compromised parent could do with the credentials."""
        return self.kms_client(self.parent_credentials(), **client_kwargs)

    def kms_client(self, credential: Credential, **client_kwargs: Any) -> Any:
        """A boto3 KMS client for this world's local KMS, signed with `credential`."""
        import boto3  # noqa: PLC0415 - boto3 costs ~0.3 s to import; only clients need it

        return boto3.client(
            "kms",
            endpoint_url=self.kms_url,
            region_name=self.region,
            verify=str(self.kms_ca_path),
            aws_access_key_id=credential.access_key_id,
            aws_secret_access_key=credential.secret_access_key,
            aws_session_token=credential.session_token,
            **client_kwargs,
        )

    def parent_credentials(self) -> Credential:
        """The parent role's credentials (with a TTL: the pool's next set), for tests that push
        SetCredentials themselves. The secret stays out of the repr."""
        if self._pool_path is not None:
            return next_credential(self._pool_path)
        if self._parent is None:
            raise WorldError("the world is not started")
        return self._parent

    def restart_kms(self) -> None:
        """Stop the local KMS and start it again on the same port with the same state (keys,
        aliases, CA), so the relay's upstream stays valid. Raises ProcessFailed if it does not
        come back (e.g. the port was taken meanwhile)."""
        port = self.kms_port
        if self._kms is not None:
            self._kms.stop()
        self._start_kms(port)

    # --- policy and keys ----------------------------------------------------------------------

    def key_policy(
        self,
        *,
        allow_debug: bool = False,
        extra_pcrs: Iterable[int] = (),
        measurements: MeasurementsArg = None,
    ) -> dict[str, Any]:
        """The policy `nitrokms policy` makes for this world's measurements (or others) and the
        parent role. Raises parent.policy.PolicyError as the generator does."""
        pcrs = self.measurements if measurements is None else measurements_hex(measurements)
        parsed = parse_measurements(json.dumps(measurements_document(pcrs)).encode())
        return generate_policy(
            PolicyRequest(
                measurements=parsed,
                role_arn=self.role_arn,
                pcrs=tuple(extra_pcrs),
                allow_debug=allow_debug,
            )
        )

    def create_key(self, policy: Mapping[str, Any], description: str = "") -> str:
        """Create a key with `policy` as the admin; return its ARN."""
        created = self.kms_admin().create_key(Policy=json.dumps(policy), Description=description)
        arn: str = created["KeyMetadata"]["Arn"]
        return arn

    def create_attested_key(
        self, *, allow_debug: bool = False, extra_pcrs: Iterable[int] = ()
    ) -> str:
        """A key only this world's enclave (PCR0/1/2 pinned, plus `extra_pcrs`) may use."""
        policy = self.key_policy(allow_debug=allow_debug, extra_pcrs=extra_pcrs)
        return self.create_key(policy, "nitrokms world: attested key")

    # --- the relay ------------------------------------------------------------------------------

    def _start_relay(self) -> None:
        self._relay = start_relay(
            self.log_dir, self.relay_socket, self.kms_port, extra_args=self.relay_args
        )
        self._processes["relay"] = self._relay

    def stop_relay(self) -> int:
        """Stop the relay (the enclave loses its way to KMS). Returns its exit status."""
        return self._require(self._relay).stop()

    def start_relay(self) -> None:
        """Start the relay again on the same socket. Raises WorldError if it is running."""
        if self._require(self._relay).returncode is None:
            raise WorldError("the relay is already running")
        self._start_relay()

    def restart_relay(self) -> None:
        self.stop_relay()
        self.start_relay()

    # --- enclaves -------------------------------------------------------------------------------

    def _spawn_enclave(
        self,
        name: str,
        measurements: Mapping[int, str],
        debug: bool,
        kms_relay: Path | None,
        extra_args: Sequence[str],
    ) -> EnclaveProcess:
        pcrs_file = self.workdir / f"{name}-measurements.json"
        pcrs_file.write_text(json.dumps(measurements_document(measurements)))
        enclave = start_enclave(
            self.log_dir,
            name,
            isolation=self.isolation_used,
            nsm_state=self.nsm_state,
            socket_path=self.run_dir / f"{name}.sock",
            kms_relay=kms_relay or self.relay_socket,
            kms_endpoint=f"{self.kms_host}:{self.kms_port}",
            ca_bundle=self.kms_ca_path,
            region=self.region,
            measurements_path=pcrs_file,
            role_arn=self.role_arn,
            debug=debug,
            extra_args=(*self.enclave_args, *extra_args),
        )
        enclave.measurements = dict(measurements)
        self._processes[name] = enclave.process
        return enclave

    @property
    def enclave(self) -> EnclaveProcess:
        if self._enclave is None:
            raise WorldError("the world is not started")
        return self._enclave

    @property
    def enclave_address(self) -> str:
        return self.enclave.address

    @property
    def enclave_pid(self) -> int:
        return self.enclave.pid

    def client(self, **kwargs: Any) -> EnclaveClient:
        """A blocking RPC client for the world's enclave (the caller closes it)."""
        return EnclaveClient(self.enclave_address, **kwargs)

    def stop_enclave(self) -> int:
        """Stop the world's enclave (keys in its memory are gone). Returns its exit status."""
        return self.enclave.stop()

    def start_enclave(self) -> None:
        """Start the world's enclave again (same socket, measurements) and wait until the
        credential provider has noticed and pushed it credentials."""
        if self.enclave.running:
            raise WorldError("the enclave is already running")
        provider = self._require(self._provider)
        mark = provider.mark()
        self._enclave = self._spawn_enclave("enclave", self.measurements, self.debug, None, ())
        provider.wait_for_line(PUSHED, after=mark, timeout_s=REPUSH_TIMEOUT_S)

    def restart_enclave(self) -> None:
        self.stop_enclave()
        self.start_enclave()

    def spawn_enclave(
        self,
        name: str,
        *,
        measurements: MeasurementsArg = None,
        debug: bool = False,
        kms_relay: Path | None = None,
        push_credentials: bool = True,
        extra_args: Sequence[str] = (),
    ) -> EnclaveProcess:
        """Another enclave in this world (its own namespace, same NSM root, KMS and relay unless
        `kms_relay` names another socket), stopped with the world. With `push_credentials`, one
        `nitrokms credentials --once` run gives it the parent's credentials."""
        if name in self._processes or not name.replace("-", "").isalnum():
            raise WorldError(f"enclave name {name!r} is taken or not [A-Za-z0-9-]")
        pcrs = self.measurements if measurements is None else measurements_hex(measurements)
        enclave = self._spawn_enclave(name, pcrs, debug, kms_relay, extra_args)
        self._extras.append(enclave)
        if push_credentials:
            self.push_credentials_once(enclave)
        return enclave

    def push_credentials_once(self, enclave: EnclaveProcess) -> None:
        """Run `nitrokms credentials --once` against `enclave`. Raises ProcessFailed if it fails."""
        argv = [
            sys.executable, "-m", "nitrokms.cli", "credentials", "--once",
            "--enclave", enclave.control_address, "--region", self.region,
        ]  # fmt: skip
        process, _ = self._spawn(f"credentials-{enclave.name}", argv, self._provider_env, None)
        if process.popen.wait(timeout=REPUSH_TIMEOUT_S) != 0:
            process.stop()
            raise ProcessFailed(f"nitrokms credentials --once failed:\n{process.tail()}")
        process.stop()

    # --- the environment clients and in-enclave code need -------------------------------------

    def client_environment(self) -> dict[str, str]:
        """What a shell on the "parent", the AWS CLI, boto3 or `nitrokms call` need to use this
        world: the local KMS endpoint and CA bundle, the admin's credentials (the account root,
        so keys can be created and their policies set), the region and the enclave's address.
        Holds a secret: write it owner-only."""
        admin = self._admin
        if admin is None:
            raise WorldError("the world is not started")
        return {
            "AWS_ENDPOINT_URL_KMS": self.kms_url,
            "AWS_CA_BUNDLE": str(self.kms_ca_path),
            "AWS_ACCESS_KEY_ID": admin.access_key_id,
            "AWS_SECRET_ACCESS_KEY": admin.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "NITROKMS_ENCLAVE": self.enclave_address,
        }

    def enclave_environment(self, credential: Credential | None = None) -> dict[str, str]:
        """The environment for code run with `enclave_command`: the KMS endpoint by its real
        host name (the relay resolves nothing; the CONNECT listener names the host), the CA
        bundle, the relay's socket for `enclave.network.kms_network_path`, the region and
        `credential` (default: the parent role's, as the credential provider would push)."""
        credential = credential or self.parent_credentials()
        env = base_env()
        env.update(
            AWS_ENDPOINT_URL_KMS=f"https://{self.kms_host}:{self.kms_port}",
            AWS_CA_BUNDLE=str(self.kms_ca_path),
            AWS_DEFAULT_REGION=self.region,
            AWS_ACCESS_KEY_ID=credential.access_key_id,
            AWS_SECRET_ACCESS_KEY=credential.secret_access_key,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            NITROKMS_KMS_RELAY=f"unix://{self.relay_socket}",
        )
        if credential.session_token:
            env["AWS_SESSION_TOKEN"] = credential.session_token
        return env

    def enclave_command(self, argv: Sequence[str], *, debug: bool = False) -> list[str]:
        """`argv` run as code inside this world's enclave: under the simulated NSM (same root,
        measurements and role as the enclave, so key policies pinned to them admit it) and in the
        enclave's network namespace, whose only way out is the relay. Use with
        `enclave_environment()`."""
        measurements = self.workdir / "enclave-measurements.json"  # written by _spawn_enclave
        nsm_run = [
            sys.executable, "-m", "nitrokms.sim", "nsm", "run", "--state", str(self.nsm_state),
            "--region", self.region, "--measurements", str(measurements),
            "--role-arn", self.role_arn, *(["--debug"] if debug else []), "--", *argv,
        ]  # fmt: skip
        if self.isolation_used == "none":
            return nsm_run
        return self.enclave_netns_command(nsm_run)

    def enclave_netns_command(self, argv: Sequence[str], pid: int | None = None) -> list[str]:
        """`argv` prefixed to run in the enclave's network namespace (nsenter)."""
        target = str(pid or self.enclave_pid)
        user = ["-U", "--preserve-credentials"] if self.isolation_used == "userns" else []
        return ["nsenter", "-t", target, *user, "-n", *argv]

    def probe_direct_kms(self, pid: int | None = None) -> str:
        """Try, from the enclave's network namespace, a plain TCP connection to the local KMS
        port, bypassing the relay. Returns "connected" or the error the attempt got.

        Raises WorldError when there is no namespace to enter (isolation "none")."""
        if self.isolation_used == "none":
            raise WorldError("the enclave has no network namespace of its own (isolation none)")
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {self.kms_port}), timeout=5).close()\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print(f'{type(exc).__name__}: {exc}')\n"
        )
        result = subprocess.run(
            self.enclave_netns_command([sys.executable, "-c", code], pid),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise WorldError(f"nsenter probe failed: {result.stderr.strip()[-500:]}")
        return result.stdout.strip()

    # --- the credential provider ----------------------------------------------------------------

    def _start_provider(self) -> None:
        argv = [
            sys.executable, "-m", "nitrokms.cli", "credentials",
            "--enclave", self.enclave.control_address, "--region", self.region,
            "--poll-interval", f"{PROVIDER_POLL_S:g}",
        ]  # fmt: skip
        self._provider, line = self._spawn(
            "credentials", argv, self._provider_env, ready=_push_outcome
        )
        if PUSH_FAILED in line:
            raise ProcessFailed(f"the credential provider could not push credentials: {line}")

    @property
    def provider(self) -> ManagedProcess:
        return self._require(self._provider)

    # --- logs -----------------------------------------------------------------------------------

    def process(self, name: str) -> ManagedProcess:
        """The process started under `name` ("kms", "relay", "enclave", "credentials", or an
        extra enclave's name). Raises KeyError for an unknown name."""
        return self._processes[name]

    @property
    def logs(self) -> dict[str, Path]:
        return {name: p.log_path for name, p in self._processes.items()}

    def log_tails(self, lines: int = 30) -> str:
        parts = []
        for name, process in self._processes.items():
            parts.append(f"----- {name} ({process.log_path}) -----\n{process.tail(lines)}")
        return "\n".join(parts)

    def _report_failure(self) -> None:
        print(f"\nworld logs (kept in {self.log_dir}):\n{self.log_tails()}", file=sys.stderr)

    @staticmethod
    def _require(process: ManagedProcess | None) -> ManagedProcess:
        if process is None:
            raise WorldError("the world is not started")
        return process

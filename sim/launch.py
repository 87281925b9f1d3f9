"""Launchers for the simulated world's processes: the relay and enclave command lines, the
isolation probe, measurements files. `nitrokms.sim.world.World` composes them; tests that need
one more relay or enclave of their own call them directly.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from nitrokms.parent.policy import parse_measurements
from nitrokms.sim.nsm.simulator import default_measurements
from nitrokms.sim.processes import ManagedProcess, spawn

Isolation = Literal["auto", "netns", "userns", "none"]
IsolationUsed = Literal["netns", "userns", "none"]
MeasurementsArg = Path | Mapping[int, bytes | str] | None

ISOLATION_PREFIX: Final[dict[str, list[str]]] = {
    "netns": ["unshare", "-n"],
    "userns": ["unshare", "-rn"],
    "none": [],
}
NO_ISOLATION_WARNING: Final = "WARNING: the enclave runs WITHOUT network isolation"


class WorldError(RuntimeError):
    """The world cannot be set up as asked (isolation unavailable, bad measurements, a process
    that did not become ready); the message says which and why."""


@functools.cache
def _unshare_works(flags: str) -> bool:
    try:
        result = subprocess.run(
            ["unshare", flags, "true"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def probe_isolation(requested: Isolation = "auto") -> IsolationUsed:
    """The isolation the enclave will get. "auto" tries a network namespace as root, then a user
    namespace, then none. Raises WorldError when an explicitly requested kind does not work."""
    if requested == "none":
        return "none"
    if requested in ("auto", "netns") and os.geteuid() == 0 and _unshare_works("-n"):
        return "netns"
    if requested in ("auto", "userns") and _unshare_works("-rn"):
        return "userns"
    if requested != "auto":
        raise WorldError(f"isolation {requested!r} is not available here (unshare failed)")
    return "none"


def measurements_document(pcrs: Mapping[int, str]) -> dict[str, Any]:
    """nitro-cli `build-enclave` output shape for PCR0/1/2 (hex)."""
    inner: dict[str, str] = {"HashAlgorithm": "Sha384 { ... }"}
    inner.update({f"PCR{i}": value for i, value in sorted(pcrs.items())})
    return {"Measurements": inner}


def measurements_hex(value: MeasurementsArg) -> dict[int, str]:
    """PCR index -> lower-case hex from a nitro-cli JSON file, a mapping, or None (the
    simulator's defaults). Raises WorldError for an unusable value."""
    if value is None:
        return {i: v.hex() for i, v in default_measurements().items()}
    if isinstance(value, Path):
        try:
            parsed = parse_measurements(value.read_bytes())
        except (OSError, ValueError) as exc:
            raise WorldError(f"measurements {value}: {exc}") from None
        return dict(parsed.pcrs)
    pcrs = {int(i): v.hex() if isinstance(v, bytes) else str(v).lower() for i, v in value.items()}
    try:
        parse_measurements(json.dumps(measurements_document(pcrs)).encode())
    except ValueError as exc:
        raise WorldError(f"measurements: {exc}") from None
    return pcrs


def base_env() -> dict[str, str]:
    """Our environment without any AWS_* variable (no child inherits credentials by accident),
    with output unbuffered (ready lines arrive at once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONUNBUFFERED="1", AWS_EC2_METADATA_DISABLED="true")
    return env


@dataclass
class EnclaveProcess:
    """One enclave service under `nsm run` (and its namespace). `pid` is the service's own."""

    name: str
    process: ManagedProcess = field(repr=False)
    socket_path: Path
    pid: int
    measurements: dict[int, str]
    debug: bool

    @property
    def address(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def control_socket_path(self) -> Path:
        """Where the enclave listens for the credential provider (`--control-listen`)."""
        return control_socket(self.socket_path)

    @property
    def control_address(self) -> str:
        return f"unix://{self.control_socket_path}"

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def stop(self) -> int:
        """SIGTERM (`nsm run` forwards it; the service drains and exits 0). Returns the status."""
        return self.process.stop()


def control_socket(socket_path: Path) -> Path:
    """The control listener's socket beside `socket_path`, never a longer path (unix paths are
    limited to 107 bytes)."""
    return socket_path.with_suffix(".ctl")


def start_relay(
    log_dir: Path,
    socket_path: Path,
    upstream_port: int,
    *,
    name: str = "relay",
    extra_args: Sequence[str] = (),
) -> ManagedProcess:
    """`nitrokms proxy` on `socket_path` (the vsock stand-in) to 127.0.0.1:`upstream_port`, with
    a generated allowlist; returns once it logged `proxy.listening`. Raises ProcessFailed."""
    allowlist = socket_path.with_name(socket_path.stem + "-allowlist.yaml")
    allowlist.write_text(f"allowlist:\n- {{address: 127.0.0.1, port: {upstream_port}}}\n")
    argv = [
        sys.executable, "-m", "nitrokms.cli", "proxy", "8000", "127.0.0.1", str(upstream_port),
        "--config", str(allowlist), "--listen", f"unix://{socket_path}",
        "--log-format", "json", "--drain-timeout", "2", *extra_args,
    ]  # fmt: skip
    process, _ = spawn(
        name, argv, log_path=log_dir / f"{name}.log", env=base_env(), cwd=log_dir,
        ready="proxy.listening",
    )  # fmt: skip
    return process


def start_enclave(
    log_dir: Path,
    name: str,
    *,
    isolation: IsolationUsed,
    nsm_state: Path,
    socket_path: Path,
    kms_relay: Path,
    kms_endpoint: str,
    ca_bundle: Path,
    region: str,
    measurements_path: Path | None = None,
    role_arn: str | None = None,
    debug: bool = False,
    extra_args: Sequence[str] = (),
) -> EnclaveProcess:
    """`python -m nitrokms.enclave` under `nsm run`, in the given isolation; returns once it
    printed its ready line. Raises ProcessFailed (with its log tail) if it does not."""
    nsm_options = [
        *(["--measurements", str(measurements_path)] if measurements_path else []),
        *(["--role-arn", role_arn] if role_arn else []),
        *(["--debug"] if debug else []),
    ]
    argv = [
        *ISOLATION_PREFIX[isolation],
        sys.executable, "-m", "nitrokms.sim", "nsm", "run", "--state", str(nsm_state),
        "--region", region, *nsm_options, "--",
        sys.executable, "-m", "nitrokms.enclave", "--listen", f"unix://{socket_path}",
        "--control-listen", f"unix://{control_socket(socket_path)}",
        "--kms-relay", f"unix://{kms_relay}", "--kms-endpoint", kms_endpoint,
        "--ca-bundle", str(ca_bundle), "--region", region, "--pool-size", "2", *extra_args,
    ]  # fmt: skip
    process, line = spawn(
        name, argv, log_path=log_dir / f"{name}.log", env=base_env(), cwd=log_dir,
        ready='"event": "ready"',
    )  # fmt: skip
    pid = int(json.loads(line[line.index("{") :])["pid"])
    return EnclaveProcess(name, process, socket_path, pid, {}, debug)

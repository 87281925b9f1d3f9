"""`python -m nitrokms.sim world up|status`: keep the whole simulated world running for your own
code, and check on it.

`world up [--state DIR]` starts a `World` in DIR (local KMS, relay, isolated enclave, credential
provider) and, once every part is ready, writes two files beside the parts' state:

- `DIR/world.env` (mode 0600: it holds the admin's secret key): `KEY=VALUE` lines for
  `AWS_ENDPOINT_URL_KMS`, `AWS_CA_BUNDLE`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
  `AWS_DEFAULT_REGION` and `NITROKMS_ENCLAVE`, so `set -a; . DIR/world.env; set +a` is all a
  shell, the AWS CLI, boto3 or `nitrokms call` needs;
- `DIR/world.json`: the addresses and process ids `world status` probes (no secret).

It prints the addresses and the environment (the secret key only as the file that holds it), then
a last line starting `ready:`, and stays up until SIGINT or SIGTERM, when it stops every part and
removes both files (keys, aliases and the NSM root stay in DIR for the next run) and exits 0. If a
part dies meanwhile, it stops the rest and exits 1. Start-up failures exit 1 with the log tails;
usage errors exit 2.

`world status [--state DIR] [--json]` probes each part of the world recorded in DIR: exit 0 when
all answer, 1 otherwise (or when no world is up there).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Final
from urllib.parse import urlsplit

from nitrokms.sim.files import atomic_write
from nitrokms.sim.paths import harness_state_dir
from nitrokms.sim.processes import ProcessFailed
from nitrokms.sim.world import World, WorldError

ENV_FILE: Final = "world.env"
STATE_FILE: Final = "world.json"
PROBE_TIMEOUT_S: Final = 5.0
WATCH_INTERVAL_S: Final = 1.0
ENV_ORDER: Final = (
    "AWS_ENDPOINT_URL_KMS",
    "AWS_CA_BUNDLE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "NITROKMS_ENCLAVE",
)
SECRET_KEYS: Final = frozenset({"AWS_SECRET_ACCESS_KEY"})


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived while the world was starting."""


def default_state_dir() -> Path:
    return harness_state_dir() / "world"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nitrokms.sim world",
        description="Run the whole simulated world until interrupted, or check on one.",
        epilog="examples:\n"
        "  python -m nitrokms.sim world up --state ./world &\n"
        "  set -a; . ./world/world.env; set +a\n"
        "  aws kms create-key && nitrokms call health\n"
        "  python -m nitrokms.sim world status --state ./world",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="start the world and keep it up until SIGINT/SIGTERM")
    status = commands.add_parser("status", help="probe each part of a running world")
    for sub in (up, status):
        sub.add_argument(
            "--state",
            type=Path,
            default=None,
            metavar="DIR",
            help=f"the world's directory (default {default_state_dir()})",
        )
    up.add_argument("--region", default="us-east-1", help="AWS region (default us-east-1)")
    up.add_argument("--measurements", type=Path, metavar="JSON", help="nitro-cli measurements")
    up.add_argument("--debug", action="store_true", help="run the enclave in debug mode")
    up.add_argument(
        "--isolation",
        choices=("auto", "netns", "userns", "none"),
        default="auto",
        help="the enclave's network isolation (default: the best available)",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    state: Path = (args.state or default_state_dir()).resolve()
    if args.command == "up":
        return _up(state, args)
    return _status(state, as_json=args.json)


# --- world up --------------------------------------------------------------------------------


def _up(state: Path, args: argparse.Namespace) -> int:
    running = _recorded(state)
    if running is not None and _alive(running.get("pid")):
        print(f"world up: a world is already up in {state} (pid {running['pid']})", file=sys.stderr)
        return 1
    state.mkdir(parents=True, exist_ok=True)
    _remove_records(state)
    world = World(
        state,
        measurements=args.measurements,
        debug=args.debug,
        isolation=args.isolation,
        region=args.region,
    )
    stop = threading.Event()
    with _signals(stop) as starting:
        try:
            world.__enter__()  # on any exception it stops what it had started
            starting.clear()
        except _Stopped:
            world.close()  # idempotent; covers a signal just after __enter__ returned
            return 0
        except (WorldError, ProcessFailed, OSError) as exc:
            print(f"world up: {_first_line(exc)} (logs in {world.log_dir})", file=sys.stderr)
            return 1
        try:
            _announce(world, state)
            failed = _watch(world, stop)
        finally:
            _remove_records(state)
            world.close()
    if failed is not None:
        print(f"world up: {failed} exited; the world was stopped (logs in {world.log_dir})")
        return 1
    print("world stopped", flush=True)
    return 0


@contextlib.contextmanager
def _signals(stop: threading.Event) -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set `stop`; while the yielded "starting" event is set they also raise
    _Stopped, so a start in progress is abandoned (and undone) at once."""
    starting = threading.Event()
    starting.set()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if starting.is_set():
            starting.clear()
            raise _Stopped

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield starting
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _announce(world: World, state: Path) -> None:
    env = world.client_environment()
    atomic_write(state / ENV_FILE, "".join(f"{k}={env[k]}\n" for k in ENV_ORDER).encode())
    atomic_write(state / STATE_FILE, (json.dumps(_record(world, state), indent=2) + "\n").encode())
    lines = [
        f"nitrokms simulated world in {state}",
        f"  local KMS    {world.kms_url}  (CA bundle {world.kms_ca_path})",
        f"  relay        unix://{world.relay_socket} -> 127.0.0.1:{world.kms_port}",
        f"  enclave      {world.enclave_address}  (isolation {world.isolation_used})",
        f"  credentials  nitrokms credentials, as {world.role_arn}",
        f"  logs         {world.log_dir}",
        f"environment ({state / ENV_FILE}, mode 0600):",
    ]
    for key in ENV_ORDER:
        shown = f"(in {state / ENV_FILE})" if key in SECRET_KEYS else env[key]
        lines.append(f"  {key}={shown}")
    lines.append(f"ready: set -a; . {state / ENV_FILE}; set +a   (Ctrl-C or SIGTERM stops it)")
    print("\n".join(lines), flush=True)


def _record(world: World, state: Path) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "state": str(state),
        "region": world.region,
        "kms_url": world.kms_url,
        "kms_ca": str(world.kms_ca_path),
        "relay_socket": str(world.relay_socket),
        "enclave": world.enclave_address,
        "isolation": world.isolation_used,
        "processes": {name: world.process(name).pid for name in world.logs},
    }


def _watch(world: World, stop: threading.Event) -> str | None:
    """Wait for `stop`; return the name of a part that exited on its own first, if any."""
    while not stop.wait(WATCH_INTERVAL_S):
        for name in world.logs:
            if world.process(name).returncode is not None:
                return name
    return None


def _remove_records(state: Path) -> None:
    for name in (ENV_FILE, STATE_FILE):
        (state / name).unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


# --- world status ----------------------------------------------------------------------------


def _recorded(state: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((state / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _status(state: Path, *, as_json: bool) -> int:
    record = _recorded(state)
    if record is None:
        print(f"world status: no world is up in {state} (no {STATE_FILE})", file=sys.stderr)
        return 1
    checks = probe(record)
    healthy = all(ok for ok, _ in checks.values())
    if as_json:
        report = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()}
        print(json.dumps({"up": healthy, "state": str(state), "parts": report}, indent=2))
    else:
        for name, (ok, detail) in checks.items():
            print(f"{name:<12} {'ok ' if ok else 'DOWN'} {detail}")
    return 0 if healthy else 1


def probe(record: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """Each part of the recorded world: (answers, what was seen)."""
    processes = record.get("processes", {})
    checks = {
        "world up": _process_check(record.get("pid")),
        "kms": _probe_kms(str(record.get("kms_url", "")), str(record.get("kms_ca", ""))),
        "relay": _probe_unix(str(record.get("relay_socket", ""))),
    }
    enclave, credentials = _probe_enclave(str(record.get("enclave", "")))
    checks["enclave"] = enclave
    provider = _process_check(processes.get("credentials"))
    checks["credentials"] = credentials if provider[0] else provider
    return checks


def _process_check(pid: object) -> tuple[bool, str]:
    return (True, f"pid {pid}") if _alive(pid) else (False, f"pid {pid} is not running")


def _probe_kms(url: str, ca: str) -> tuple[bool, str]:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return False, f"no KMS URL recorded ({url!r})"
    try:
        context = ssl.create_default_context(cafile=ca)
        with (
            socket.create_connection((parts.hostname, parts.port), PROBE_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname),
        ):
            pass
    except (OSError, ssl.SSLError) as exc:
        return False, f"{url}: {exc}"
    return True, f"{url} (TLS verified with {ca})"


def _probe_unix(path: str) -> tuple[bool, str]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(PROBE_TIMEOUT_S)
            sock.connect(path)
    except OSError as exc:
        return False, f"unix://{path}: {exc.strerror or exc}"
    return True, f"unix://{path} accepts connections"


def _probe_enclave(address: str) -> tuple[tuple[bool, str], tuple[bool, str]]:
    from nitrokms.parent.rpc import EnclaveClient, RPCError  # noqa: PLC0415 - only for status

    try:
        with EnclaveClient(address, timeout_s=PROBE_TIMEOUT_S) as client:
            health = client.health()
    except (RPCError, OSError, ValueError) as exc:
        down = (False, f"{address}: {exc}")
        return down, (False, "the enclave does not answer")
    pool = f"key pool {health.key_pool_ready}/{health.key_pool_target}"
    enclave = (health.ready, f"{address} ready={health.ready}, {pool}")
    if health.credentials_present:
        pushed = (True, "the enclave holds credentials")
    else:
        pushed = (False, "the enclave holds no credentials")
    return enclave, pushed

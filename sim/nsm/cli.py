"""`python -m nitrokms.sim nsm run|root`: the simulated NSM around any command."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from nitrokms.sim.nsm.pki import SimulatedPKI
from nitrokms.sim.nsm.server import PreloadMissingError, SimulatedNSM, preload_library_path
from nitrokms.sim.nsm.simulator import SimulatorConfigError
from nitrokms.sim.paths import default_nsm_state_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nitrokms.sim nsm")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run CMD with the simulated NSM answering at /dev/nsm")
    run.add_argument("--state", type=Path, default=None, help="state directory (root key, ids)")
    run.add_argument("--measurements", type=Path, help="nitro-cli build-enclave JSON output")
    run.add_argument("--debug", action="store_true", help="debug-mode enclave: PCR0-2 zero")
    run.add_argument("--role-arn", help="parent IAM role ARN measured into PCR3")
    run.add_argument("--region", default="us-east-1", help="region in certificate names")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    sub.add_parser(
        "vhost-user",
        add_help=False,
        help="serve the simulator as virtio device 33 over vhost-user (vhost-user --help)",
    )
    root = sub.add_parser("root", help="print the simulator's root certificate (PEM)")
    root.add_argument("--state", type=Path, default=None, help="state directory")
    return parser


def _run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("nsm run: missing command (use: nsm run [options] -- CMD ARGS...)", file=sys.stderr)
        return 2
    try:
        preload = preload_library_path()
    except PreloadMissingError as exc:
        print(f"nsm run: {exc}", file=sys.stderr)
        return 1
    if not preload.is_file():
        print(f"nsm run: preload library {preload} not found", file=sys.stderr)
        return 1
    with SimulatedNSM(
        args.state or default_nsm_state_dir(),
        measurements=args.measurements,
        debug=args.debug,
        role_arn=args.role_arn,
        region=args.region,
    ) as nsm:
        try:
            child = subprocess.Popen(cmd, env=nsm.child_env())
        except OSError as exc:
            print(f"nsm run: cannot run {cmd[0]}: {exc.strerror or exc}", file=sys.stderr)
            return 127 if isinstance(exc, FileNotFoundError) else 126
        with child:
            code = _wait_forwarding_signals(child)
    return 128 - code if code < 0 else code


FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _wait_forwarding_signals(child: subprocess.Popen[bytes]) -> int:
    """Wait for `child`, passing on the signals a supervisor uses to stop us (so `nsm run` can
    wrap a service under systemd or a test harness and still stop it cleanly)."""

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str]) -> int:
    if argv[:1] == ["vhost-user"]:
        from nitrokms.sim.nsm import vhost_user  # noqa: PLC0415 - only this command needs it

        return vhost_user.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "root":
            pki = SimulatedPKI.load_or_create(args.state or default_nsm_state_dir())
            sys.stdout.write(pki.root_certificate_pem.decode())
            return 0
        return _run(args)
    except (SimulatorConfigError, OSError) as exc:
        print(f"nsm {args.command}: {exc}", file=sys.stderr)
        return 1

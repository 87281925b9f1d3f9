"""`python -m nitrokms.sim vm setup|demo`: the enclave image booted as a virtual machine.

`setup` installs the toolchain (cached) and prints what it found. `demo` builds the enclave image
with the VM's settings (image/build.py: parent CID 2, the local KMS's CA as the KMS trust anchor;
or boots `--eif FILE` as it is), boots the EIF's kernel, command line and ramdisks, and runs the
whole attested flow through vhost-device-vsock with the production tools: the credential provider
pushes credentials over vsock; `nitrokms call generate-data-key` and the RPC client reach the guest
at `vhost-vsock://RUN/vm.vsock:5000`; the guest reaches the local KMS through the relay. Then Seal
and Unseal, and the figures BENCHMARKS.md records. Every wait has its own limit and the whole run
has `--timeout`. Exit 0 when everything held, 1 when a step failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any, Final

from nitrokms.parent.rpc import EnclaveClient
from nitrokms.sim.launch import base_env
from nitrokms.sim.processes import ProcessFailed
from nitrokms.sim.vm import toolchain
from nitrokms.sim.vm.bootimage import BootSource, ImageBuild, ImageError, PrebuiltEif, checkout
from nitrokms.sim.vm.world import VMWorld

DEFAULT_TIMEOUT_S: Final = 1200.0
CALL_TIMEOUT_S: Final = 120.0
FETCHES: Final = 20
SECRET: Final = b"attested in a real kernel, over real vsock"
CONTEXT: Final = {"demo": "vm"}


class DemoTimeout(Exception):
    pass


def _say(text: str) -> None:
    print(f"vm: {text}", flush=True)


def _setup(_args: argparse.Namespace) -> int:
    started = time.monotonic()
    tools = toolchain.ensure()
    _say(f"toolchain ready in {time.monotonic() - started:.1f} s under {tools.cache}")
    return 0


def _call(world: VMWorld, *argv: str) -> dict[str, Any]:
    """One `nitrokms call` run (the production command line) against the guest."""
    command = [sys.executable, "-m", "nitrokms.cli", "call", *argv, "--enclave",
               world.enclave_address, "--json", "--connect-timeout", "30"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=CALL_TIMEOUT_S, env=base_env(), check=False
    )
    if result.returncode != 0:
        raise ProcessFailed(f"nitrokms call {argv[0]} failed: {result.stderr.strip()}")
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _flow(world: VMWorld, summary: dict[str, Any]) -> None:
    vm, image = world.vm, world.image
    assert vm is not None
    assert image is not None
    pcr0 = image.measurements[0][:16]
    _say(f"booted {image.eif}: its kernel, command line and ramdisks (PCR0 {pcr0}...)")
    _say(f"guest kernel {vm.kernel_release} (Debian's cloud kernel under QEMU microvm, TCG)")
    _say(f"image init after {vm.times.init_s:.1f} s, enclave ready after {vm.times.ready_s:.1f} s")
    for line in vm.console_lines("nitrokms-init: heartbeat") + vm.console_lines("module nsm"):
        _say(f"guest: {line.strip()}")
    _say(f"credentials pushed over vsock ({world.enclave.control_address}, the control listener)")
    key_arn = world.create_attested_key()
    started = time.monotonic()
    generated = _call(world, "generate-data-key", "--key-id", key_arn, "--context", "demo=vm")
    first_fetch_s = time.monotonic() - started
    handle = generated["handle"]
    _say(f"generate-data-key: handle {handle} (first attested fetch {first_fetch_s:.1f} s)")
    with EnclaveClient(world.enclave_address, timeout_s=CALL_TIMEOUT_S,
                       connect_timeout_s=30) as client:  # fmt: skip
        sealed = client.seal(SECRET, handle=handle, encryption_context=CONTEXT)
        opened = client.unseal(sealed.envelope, encryption_context=CONTEXT)
        if opened != SECRET:
            raise ProcessFailed("Unseal returned other bytes than were sealed")
        _say(f"seal/unseal: {len(SECRET)} bytes -> {len(sealed.envelope)}-byte envelope -> "
             "the same bytes back")  # fmt: skip
        describe = client.describe()
        booted = {i: describe.pcrs[i].hex() for i in range(3)}
        if booted != world.measurements:
            raise ProcessFailed("the guest's PCR0-2 are not the booted image's measurements")
        _say(f"describe, from /dev/nsm through the guest's nsm driver (virtio device 33 over "
             f"vhost-user): {describe.module_id}, PCR0-2 = the EIF's")  # fmt: skip
        started = time.monotonic()
        for _ in range(FETCHES):
            client.generate_data_key(key_arn, encryption_context=CONTEXT)
        rate = FETCHES / (time.monotonic() - started)
    _say(f"fetch rate under TCG: {rate:.2f} attested GenerateDataKey/s ({FETCHES} in a row)")
    summary.update(
        eif=str(image.eif),
        kernel_release=vm.kernel_release,
        nsm_module_id=describe.module_id,
        heartbeats=vm.heartbeat.answered if vm.heartbeat is not None else 0,
        boot_to_init_s=round(vm.times.init_s, 2),
        boot_to_ready_s=round(vm.times.ready_s, 2),
        first_fetch_s=round(first_fetch_s, 2),
        fetch_rate_per_s=round(rate, 3),
        handle=handle,
        key_id=generated["key_id"],
        ciphertext_blob=generated["ciphertext_blob"],
        context=CONTEXT,
        measurements=world.measurements,
    )


def _source(args: argparse.Namespace) -> BootSource:
    if args.eif is not None:
        return PrebuiltEif(args.eif)
    repo = checkout()
    if repo is None:
        raise ImageError("no checkout with image/build.py here: pass --eif FILE")
    return ImageBuild(repo)


def _demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tools = toolchain.ensure()
    summary: dict[str, Any] = {"toolchain_s": round(time.monotonic() - started, 2)}
    _say(f"toolchain ready in {summary['toolchain_s']:.1f} s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nitrokms-vm-"))
    summary["workdir"] = str(workdir)
    try:
        _run_world(args, tools, workdir, summary)
    except BaseException:
        print(f"vm demo: logs and state kept in {workdir}", file=sys.stderr)
        raise
    if args.workdir is None and not args.record:
        shutil.rmtree(workdir, ignore_errors=True)  # hundreds of MB of image and boot files
    summary["total_s"] = round(time.monotonic() - started, 2)
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2))
    _say(f"done in {summary['total_s']:.1f} s")
    return 0


def _run_world(
    args: argparse.Namespace, tools: toolchain.Toolchain, workdir: Path, summary: dict[str, Any]
) -> None:
    source = _source(args)
    world = VMWorld(workdir, tools, source, record=args.record)
    with world:
        if isinstance(source, ImageBuild):
            summary["image_build_s"] = round(source.seconds, 2)
            _say(f"enclave image built in {source.seconds:.1f} s (image/build.py, parent CID 2, "
                 "the local KMS's CA as KMS root)")  # fmt: skip
        _flow(world, summary)
        if args.record:
            summary["captures"] = [str(p) for p in world.capture_dir.glob("*.bin")]
            summary["kms_state"] = str(world.kms_state)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nitrokms.sim vm")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("setup", help="install the VM toolchain (cached)")
    demo = sub.add_parser("demo", help="boot the enclave VM and run the attested flow")
    demo.add_argument("--eif", type=Path, help="boot this EIF as it is (default: build one)")
    demo.add_argument("--workdir", type=Path, help="keep state and logs here")
    demo.add_argument("--record", action="store_true", help="record the bridge's bytes")
    demo.add_argument("--summary", type=Path, help="write the figures as JSON here")
    demo.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="whole-run limit")
    return parser


class DemoStopped(Exception):
    pass


def _expire(_signum: int, _frame: FrameType | None) -> None:
    raise DemoTimeout


def _stopped(_signum: int, _frame: FrameType | None) -> None:
    raise DemoStopped  # unwinds through the world's cleanup: no VM or backend is left behind


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        signal.signal(signal.SIGALRM, _expire)
        signal.signal(signal.SIGTERM, _stopped)
        signal.alarm(max(1, int(args.timeout)))
    try:
        return _setup(args) if args.command == "setup" else _demo(args)
    except DemoTimeout:
        print(f"vm {args.command}: not finished within {args.timeout:g} s", file=sys.stderr)
    except DemoStopped:
        print(f"vm {args.command}: stopped (SIGTERM)", file=sys.stderr)
    except (toolchain.ToolchainError, ImageError, ProcessFailed, OSError) as exc:
        print(f"vm {args.command}: {exc}", file=sys.stderr)
    except Exception as exc:  # an RPC or KMS error from the flow: one line, no traceback
        print(f"vm {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        signal.alarm(0)
    return 1

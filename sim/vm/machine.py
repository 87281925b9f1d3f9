"""One virtual machine booting an enclave image: QEMU's microvm under TCG (this machine's KVM
cannot boot stock kernels, vm-facts.md), vhost-device-vsock as its vsock device and the simulated
NSM as its virtio device 33, each a process of its own with its log.

Sockets in `run_dir`: `vhost.sock` (QEMU <-> vhost-device-vsock), `nsm.sock` (QEMU <-> the NSM
backend), `vm.vsock` (host -> guest, `vhost-vsock://RUN/vm.vsock:PORT`), and `vm.vsock_PORT`,
where whoever listens receives the guest's connections to CID 2, port PORT.
"""

from __future__ import annotations

import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nitrokms.sim.launch import base_env
from nitrokms.sim.nsm.vhost_user import READY_LINE
from nitrokms.sim.processes import ManagedProcess, ProcessFailed, spawn
from nitrokms.sim.vm.heartbeat import HeartbeatListener
from nitrokms.sim.vm.toolchain import Toolchain

GUEST_CID: Final = 16
MEMORY_MB: Final = 1024
BACKEND_TIMEOUT_S: Final = 30.0
BOOT_TIMEOUT_S: Final = 120.0  # to the kernel's first line from our init
READY_TIMEOUT_S: Final = 300.0  # to the enclave's ready line: Python under TCG is slow
ENCLAVE_READY: Final = '"event": "ready"'


INIT_MARK: Final = "nitrokms-init: starting"  # the image's init, image/init.c
KERNEL_MARK: Final = "Linux version "
HEARTBEAT_PORT: Final = 9000  # image/init.c's default
# Guest time from the instruction count while the guest runs: microvm has no HPET or PM timer, so
# the kernel calibrates its TSC against the PIT, and under TCG on a loaded host that calibration
# fails ("tsc: Unable to calibrate against PIT") and the boot hangs; with icount both clocks advance
# with the guest's own work and it holds at any load. While the guest idles, time follows the
# host's clock (sleep=on, the default): with sleep=off it jumps to the next timer, and a guest
# waiting on a host-side device (the NSM backend, vsock) saw its 30 s request timeouts fire early.
ICOUNT: Final = ("-icount", "shift=auto,sleep=on")


@dataclass(frozen=True)
class BootImage:
    """What boots: a kernel, its command line, and ramdisks in order (concatenated in `initrd`),
    with the EIF they came from and its measurements (PCR index -> hex)."""

    kernel: Path
    cmdline: str
    initrd: Path
    measurements: dict[int, str]
    eif: Path


@dataclass
class BootTimes:
    """Seconds from starting QEMU: to the image's init's first line, and to the enclave's ready
    line."""

    init_s: float = 0.0
    ready_s: float = 0.0


class VirtualMachine:
    """Backends and QEMU, started by `start()`, stopped (newest first) by `stop()`."""

    def __init__(
        self,
        tools: Toolchain,
        image: BootImage,
        *,
        run_dir: Path,
        log_dir: Path,
        binds: list[Path],
        nsm_args: list[str],
    ) -> None:
        self.tools = tools
        self.image = image
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.binds = binds
        self.nsm_args = nsm_args
        self.processes: list[ManagedProcess] = []
        self.qemu: ManagedProcess | None = None
        self.times = BootTimes()
        self.kernel_release = ""
        self.heartbeat: HeartbeatListener | None = None

    @property
    def vsock_path(self) -> Path:
        return self.run_dir / "vm.vsock"

    def _spawn(self, name: str, argv: list[str], ready: str | None) -> ManagedProcess:
        process, _ = spawn(
            name,
            argv,
            log_path=self.log_dir / f"{name}.log",
            env=base_env(),
            cwd=self.log_dir,
            ready=ready,
            timeout_s=BACKEND_TIMEOUT_S,
        )
        self.processes.append(process)
        return process

    def start(self) -> None:
        """Start everything; return once the enclave in the guest printed its ready line.

        Raises ProcessFailed (with the failing process's log tail) when anything does not come up
        in time.
        """
        nsm_socket = self.run_dir / "nsm.sock"
        self._spawn(
            "nsm-vhost-user",
            [sys.executable, "-m", "nitrokms.sim", "nsm", "vhost-user", "--socket",
             str(nsm_socket), *self.nsm_args],
            ready=READY_LINE,
        )  # fmt: skip
        vhost = self.run_dir / "vhost.sock"
        vsock = self._spawn(
            "vhost-device-vsock",
            self.tools.chroot_argv(
                ["vhost-device-vsock", "--guest-cid", str(GUEST_CID), "--socket", str(vhost),
                 "--uds-path", str(self.vsock_path)],
                self.binds,
            ),
            ready=None,
        )  # fmt: skip
        _wait_for_socket(vsock, vhost, BACKEND_TIMEOUT_S)
        self.heartbeat = HeartbeatListener(Path(f"{self.vsock_path}_{HEARTBEAT_PORT}")).start()
        started = time.monotonic()
        self.qemu = self._spawn("qemu", self.tools.chroot_argv(self._qemu_argv(), self.binds), None)
        line = self.qemu.wait_for_line(KERNEL_MARK, timeout_s=BOOT_TIMEOUT_S)
        self.kernel_release = line.split(KERNEL_MARK, 1)[1].split()[0]
        self.qemu.wait_for_line(INIT_MARK, timeout_s=BOOT_TIMEOUT_S)
        self.times.init_s = time.monotonic() - started
        self.qemu.wait_for_line(ENCLAVE_READY, timeout_s=READY_TIMEOUT_S)
        self.times.ready_s = time.monotonic() - started

    def console_lines(self, marker: str) -> list[str]:
        """The guest console's lines holding `marker` so far."""
        return [] if self.qemu is None else [s for s in self.qemu.lines() if marker in s]

    def _qemu_argv(self) -> list[str]:
        memory = f"{MEMORY_MB}M"
        return [
            "qemu-system-x86_64", "-M", "microvm,acpi=on,memory-backend=mem", "-accel", "tcg",
            "-cpu", "max", "-smp", "1", "-m", memory, *ICOUNT,
            "-object", f"memory-backend-memfd,id=mem,size={memory},share=on",
            "-chardev", f"socket,id=vsock,path={self.run_dir / 'vhost.sock'}",
            "-device", "vhost-user-vsock-device,chardev=vsock",
            "-chardev", f"socket,id=nsm,path={self.run_dir / 'nsm.sock'}",
            "-device", "vhost-user-test-device,chardev=nsm,virtio-id=33,num_vqs=1",
            "-nographic", "-no-reboot",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", self.image.cmdline,
        ]  # fmt: skip

    @property
    def running(self) -> bool:
        return self.qemu is not None and self.qemu.returncode is None

    def stop(self) -> int:
        """Stop QEMU (the guest's memory, keys included, is gone), then the backends. Returns
        QEMU's exit status (or 0 when it never started)."""
        status = 0
        for process in reversed(self.processes):
            code = process.stop()
            if process is self.qemu:
                status = code
        self.processes.clear()
        if self.heartbeat is not None:
            self.heartbeat.close()
            self.heartbeat = None
        return status


def _wait_for_socket(process: ManagedProcess, path: Path, timeout_s: float) -> None:
    """Wait until `path` is a listening socket (vhost-device-vsock prints no ready line)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
            return
        if process.returncode is not None:
            break
        time.sleep(0.05)  # polling a file's appearance; there is no line to wait for
    raise ProcessFailed(f"{process.name} did not create {path} within {timeout_s:g} s:\n"
                        f"{process.tail()}")  # fmt: skip

"""The simulated world with the enclave in a virtual machine: the local KMS, the relay and the
credential provider run on the host as in `nitrokms.sim.world.World`, and reach the guest through
vhost-device-vsock with the production address code (`vhost-vsock://RUN/vm.vsock:5000`). The
enclave service runs in the guest on real AF_VSOCK (listening on port 5000, reaching the relay at
CID 2, port 8000), with its NSM behind the guest's own Linux driver.

With `record=True` a `Recorder` stands between the host tools and vhost-device-vsock in both
directions (RPC and credentials to the guest; the guest's KMS traffic to the relay), keeping every
byte the bridge carried under `workdir/capture/`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nitrokms.sim.launch import EnclaveProcess, WorldError, measurements_document
from nitrokms.sim.vm.bootimage import BootSource
from nitrokms.sim.vm.machine import BootImage, VirtualMachine
from nitrokms.sim.vm.recorder import Recorder
from nitrokms.sim.vm.toolchain import Toolchain
from nitrokms.sim.world import World

ENCLAVE_PORT: Final = 5000  # the image's default listen port
CONTROL_PORT: Final = 5001  # the image's default control listener (--control-listen)
RELAY_PORT: Final = 8000  # the image's default relay port (at its parent CID, 2 here)


@dataclass
class VMEnclave(EnclaveProcess):
    """The enclave as the world sees it: its address is the guest's port behind the bridge."""

    vm: VirtualMachine | None = field(default=None, repr=False)
    vsock_address: str = ""
    vsock_control_address: str = ""

    @property
    def address(self) -> str:
        return self.vsock_address

    @property
    def control_address(self) -> str:
        """The guest's control listener (the image's default `--control-listen`, vsock port
        5001) behind the same bridge."""
        return self.vsock_control_address

    @property
    def running(self) -> bool:
        return self.vm is not None and self.vm.running

    def stop(self) -> int:
        return self.vm.stop() if self.vm is not None else 0


class VMWorld(World):
    """`with VMWorld(workdir, tools, source) as world:`; `world.vm` is the running machine and
    `world.image` what it booted."""

    def __init__(
        self,
        workdir: Path,
        tools: Toolchain,
        source: BootSource,
        *,
        record: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(workdir, **kwargs)
        self.tools = tools
        self.source = source
        self.record = record
        self.vm: VirtualMachine | None = None
        self.image: BootImage | None = None
        self.recorders: list[Recorder] = []

    @property
    def relay_socket(self) -> Path:
        name = "relay.sock" if self.record else f"vm.vsock_{RELAY_PORT}"
        return self.run_dir / name

    @property
    def capture_dir(self) -> Path:
        return self.workdir / "capture"

    def _spawn_enclave(
        self,
        name: str,
        measurements: Mapping[int, str],
        debug: bool,
        kms_relay: Path | None,
        extra_args: Sequence[str],
    ) -> EnclaveProcess:
        if name != "enclave" or kms_relay is not None or extra_args or debug:
            raise WorldError("a VM world runs exactly one enclave, the image's")
        # The image's KMS endpoint is the real host name on port 443; the relay, not the name,
        # decides where the bytes go (the local KMS's port), and the local KMS's certificate
        # names that host, so TLS in the guest verifies as it would against AWS.
        image = self.source.build(self.workdir / "vm", self.region, self.kms_ca_path)
        self.image = image
        self.measurements = {i: image.measurements[i] for i in range(3)}
        pcrs_file = self.workdir / "vm-measurements.json"
        pcrs_file.write_text(json.dumps(measurements_document(self.measurements)))
        binds = sorted({self.workdir, self.run_dir})
        self.vm = VirtualMachine(
            self.tools,
            image,
            run_dir=self.run_dir,
            log_dir=self.log_dir,
            binds=binds,
            nsm_args=[
                "--state", str(self.nsm_state), "--measurements", str(pcrs_file),
                "--role-arn", self.role_arn, "--region", self.region,
            ],
        )  # fmt: skip
        address_path = self.vm.vsock_path
        if self.record:
            address_path = self.run_dir / "rec.vsock"
        if self.record and not self.recorders:  # a restarted enclave keeps the same recorders
            self._record(self.run_dir / f"vm.vsock_{RELAY_PORT}", self.relay_socket, "to-relay")
            self._record(address_path, self.vm.vsock_path, "to-guest")
        try:
            self.vm.start()
        finally:
            if self.vm.qemu is not None:
                self._processes[name] = self.vm.qemu
            for process in self.vm.processes:
                self._processes.setdefault(process.name, process)
        assert self.vm.qemu is not None
        return VMEnclave(
            name, self.vm.qemu, self.vm.vsock_path, self.vm.qemu.pid, dict(self.measurements),
            False, vm=self.vm, vsock_address=f"vhost-vsock://{address_path}:{ENCLAVE_PORT}",
            vsock_control_address=f"vhost-vsock://{address_path}:{CONTROL_PORT}",
        )  # fmt: skip

    def enclave_netns_command(self, argv: Sequence[str], pid: int | None = None) -> list[str]:
        raise WorldError("the enclave is a virtual machine: there is no namespace to enter")

    def probe_direct_kms(self, pid: int | None = None) -> str:
        raise WorldError("the enclave is a virtual machine: its only way out is vsock")

    def _record(self, listen: Path, target: Path, name: str) -> None:
        self.recorders.append(Recorder(listen, target, self.capture_dir, name).start())

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.vm is not None:
                self.vm.stop()
            for recorder in self.recorders:
                recorder.close()

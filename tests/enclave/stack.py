"""The piecewise stack `tests/bench/bench_enclave.py` drives: local KMS, relay and enclave started
one at a time, all through `tests.harness.world`'s launchers (one orchestration: the command
lines, readiness, logs and teardown live there).

New code should use `tests.harness.world.World`, which also runs the credential provider, makes
attested keys from the policy generator and isolates the enclave; `tests/enclave/
test_integration.py` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests.harness.kms.fixtures import KMSProcess, spawn_kms, stop_kms
from tests.harness.processes import ManagedProcess
from tests.harness.world import EnclaveProcess, probe_isolation, start_enclave, start_relay

KMS_HOST = "kms.us-east-1.amazonaws.com"


@dataclass
class Relay:
    process: ManagedProcess = field(repr=False)
    socket_path: Path

    @classmethod
    def start(cls, workdir: Path, kms_port: int) -> Relay:
        """Raises ProcessFailed if the relay does not report `proxy.listening`."""
        socket_path = workdir / "kms.sock"
        return cls(start_relay(workdir / "logs", socket_path, kms_port), socket_path)

    def stop(self) -> None:
        self.process.stop()


@dataclass
class Enclave:
    enclave: EnclaveProcess

    @property
    def socket_path(self) -> Path:
        return self.enclave.socket_path

    @property
    def pid(self) -> int:
        return self.enclave.pid

    @classmethod
    def start(
        cls, workdir: Path, nsm_state: Path, kms: KMSProcess, relay: Relay, *extra: str
    ) -> Enclave:
        """The enclave under the simulated NSM, isolated as `World` would. Raises ProcessFailed."""
        port = urlsplit(kms.url).port or 443
        enclave = start_enclave(
            workdir / "logs",
            "enclave",
            isolation=probe_isolation(),
            nsm_state=nsm_state,
            socket_path=workdir / "enclave.sock",
            kms_relay=relay.socket_path,
            kms_endpoint=f"{KMS_HOST}:{port}",
            ca_bundle=kms.ca_path,
            region=kms.region,
            extra_args=("--log-level", "DEBUG", *extra),
        )
        return cls(enclave)

    def stop(self) -> tuple[int, str]:
        """SIGTERM the enclave (nsm run forwards it); return its exit status and its output."""
        code = self.enclave.stop()
        return code, "\n".join(self.enclave.process.lines())


def start_kms(workdir: Path, nsm_state: Path) -> KMSProcess:
    from tests.harness.nsm.pki import SimulatedPKI

    pki = SimulatedPKI.load_or_create(nsm_state)
    return spawn_kms(workdir / "kms", pki.root_certificate_pem)


def stop_all(kms: KMSProcess | None, relay: Relay | None, enclave: Enclave | None) -> None:
    if enclave is not None:
        enclave.stop()
    if relay is not None:
        relay.stop()
    if kms is not None:
        stop_kms(kms.process)

"""The fault-injection tools themselves: the local KMS's fault plan and the TCP FaultProxy."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from nitrokms.sim.faults import FaultProxy
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.faults import Fault, FaultPlan, remaining, write_plan
from nitrokms.sim.kms.server import LocalKMS

CREDENTIAL = Credential("AKIAFAULTTOOLS00001", "fault-tools-secret", "arn:aws:iam::1:root")


def test_plan_is_consumed_in_order_per_matching_operation(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    write_plan(path, [{"operation": "Decrypt", "status": 500}, {"delay_s": 0.5}])
    plan = FaultPlan(path)
    assert plan.take("GenerateDataKey") == Fault(delay_s=0.5)
    assert plan.take("GenerateDataKey") is None
    assert remaining(path) == 1
    fault = plan.take("Decrypt")
    assert fault is not None
    assert fault.status == 500
    assert remaining(path) == 0


@pytest.mark.parametrize(
    "entry", [{"status": 200}, {"delay_s": -1}, {"delay_s": 1e9}, "junk", {"status": "500"}]
)
def test_bad_entries_are_dropped_not_obeyed(tmp_path: Path, entry: object) -> None:
    path = tmp_path / "plan.json"
    write_plan(path, [entry])  # type: ignore[list-item]
    assert FaultPlan(path).take("Encrypt") is None
    assert remaining(path) == 0


def test_missing_or_unreadable_plan_means_no_fault(tmp_path: Path) -> None:
    assert FaultPlan(tmp_path / "absent.json").take("Encrypt") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert FaultPlan(tmp_path / "bad.json").take("Encrypt") is None


@pytest.fixture
def local_kms(tmp_path: Path) -> Iterator[tuple[LocalKMS, Path]]:
    plan = tmp_path / "plan.json"
    with LocalKMS(tmp_path / "kms", [CREDENTIAL], None, fault_plan=plan) as kms:
        yield kms, plan


def _client(kms: LocalKMS) -> object:
    return boto3.client(
        "kms", endpoint_url=kms.url, region_name="us-east-1", verify=str(kms.ca_path),
        aws_access_key_id=CREDENTIAL.access_key_id,
        aws_secret_access_key=CREDENTIAL.secret_access_key,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=5, connect_timeout=5),
    )  # fmt: skip


def test_local_kms_serves_the_planned_error_then_recovers(
    local_kms: tuple[LocalKMS, Path],
) -> None:
    kms, plan = local_kms
    client = _client(kms)
    write_plan(plan, [{"status": 400, "type": "ThrottlingException", "message": "slow down"}])
    with pytest.raises(ClientError) as caught:
        client.list_keys()  # type: ignore[attr-defined]
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert client.list_keys()["Keys"] == []  # type: ignore[attr-defined]


def test_local_kms_resets_the_connection_when_planned(local_kms: tuple[LocalKMS, Path]) -> None:
    kms, plan = local_kms
    client = _client(kms)
    write_plan(plan, [{"reset": True}])
    with pytest.raises(ConnectionClosedError):
        client.list_keys()  # type: ignore[attr-defined]
    assert client.list_keys()["Keys"] == []  # type: ignore[attr-defined]


# --- FaultProxy ----------------------------------------------------------------------------------


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()
    thread.join(5)


def _roundtrip(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"ping")
        return sock.recv(16)


def test_proxy_modes(echo_port: int) -> None:
    with FaultProxy(echo_port) as proxy:
        assert _roundtrip(proxy.port) == b"ping"
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            _roundtrip(proxy.port)
        proxy.set_mode("blackhole")
        with pytest.raises(TimeoutError):
            _roundtrip(proxy.port)
        proxy.set_mode("refuse")
        with pytest.raises(ConnectionRefusedError):
            _roundtrip(proxy.port)
        proxy.set_mode("delay", delay_s=0.05)
        assert _roundtrip(proxy.port) == b"ping"
        assert proxy.connections == {"pass": 1, "reset": 1, "blackhole": 1, "delay": 1}

"""`nitrokms proxy` as a subprocess: readiness line, relaying, start-up refusals, SIGTERM drain."""

from __future__ import annotations

import json
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from nitrokms.parent.proxy.errors import NOT_ALLOWED_MESSAGE

NITROKMS = str(Path(sys.executable).parent / "nitrokms")
READY_TIMEOUT_S = 15.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def config(tmp_path: Path, echo_port: int) -> Path:
    path: Path = tmp_path / "vsock-proxy.yaml"
    path.write_text(
        f"allowlist:\n- {{address: 127.0.0.1, port: {echo_port}}}\n"
        "- {address: '::1', port: 443}\n"
    )
    return path


def read_event(proc: subprocess.Popen[str], name: str) -> dict[str, object]:
    """Read JSON log lines from stderr until event `name` (waits on the pipe, not on time)."""
    assert proc.stderr is not None
    while True:
        ready, _, _ = select.select([proc.stderr], [], [], READY_TIMEOUT_S)
        assert ready, f"no {name} line within {READY_TIMEOUT_S} s"
        line = proc.stderr.readline()
        assert line, f"proxy exited before {name}: rc={proc.wait()}"
        record: dict[str, object] = json.loads(line)
        if record["event"] == name:
            return record


@pytest.fixture
def proxy(config, echo_port) -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    proc = subprocess.Popen(
        [
            NITROKMS,
            "proxy",
            "8000",
            "127.0.0.1",
            str(echo_port),
            "--config",
            str(config),
            "--listen",
            "tcp://127.0.0.1:0",
            "--metrics",
            "tcp://127.0.0.1:0",
            "--log-format",
            "json",
            "--drain-timeout",
            "10",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, read_event(proc, "proxy.listening")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def host_port(address: object) -> tuple[str, int]:
    host, _, port = str(address).removeprefix("tcp://").rpartition(":")
    return host, int(port)


def test_relays_then_drains_on_sigterm(proxy) -> None:
    proc, ready = proxy
    target = host_port(ready["address"])
    with socket.create_connection(target, timeout=10) as client:
        client.sendall(b"hello through the relay")
        assert client.recv(100) == b"hello through the relay"
        proc.send_signal(signal.SIGTERM)
        read_event(proc, "proxy.draining")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(target, timeout=10).close()
        client.sendall(b"still open")
        assert client.recv(100) == b"still open"
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100) == b""
    stopped = read_event(proc, "proxy.stopped")
    assert stopped["aborted"] == 0
    assert proc.wait(timeout=10) == 0


def test_metrics_endpoint_counts_traffic(proxy) -> None:
    _, ready = proxy
    with socket.create_connection(host_port(ready["address"]), timeout=10) as client:
        client.sendall(b"12345")
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100) == b"12345"
        assert client.recv(100) == b""
    host, port = host_port(ready["metrics"])
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert "nitrokms_proxy_connections_accepted_total 1" in body
    assert 'nitrokms_proxy_bytes_total{direction="to_client"} 5' in body


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NITROKMS, "proxy", *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_destination_outside_the_allowlist_is_refused_at_start_up(config) -> None:
    result = run_cli(
        "8000", "127.0.0.1", "1", "--config", str(config), "--listen", "tcp://127.0.0.1:0"
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"nitrokms: {NOT_ALLOWED_MESSAGE}")


def test_ipv4_only_refuses_an_ipv6_destination(config) -> None:
    result = run_cli(
        "8000", "::1", "443", "--config", str(config), "-4", "--listen", "tcp://127.0.0.1:0"
    )
    assert result.returncode == 1
    assert "No accepted IP was found." in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--config", "/nonexistent/vsock-proxy.yaml"], 1, "cannot read config"),
        (["-4", "-6"], 2, "not allowed with argument"),
        (["-w", "0"], 2, "must be at least 1"),
        (["--listen", "ftp://x:1"], 2, "unknown address scheme"),
        (["--metrics", "unix:///tmp/m.sock"], 2, "tcp://HOST:PORT"),
    ],
)
def test_start_up_errors_are_one_clear_line(args: list[str], code: int, message: str) -> None:
    result = run_cli("8000", "127.0.0.1", "443", *args)
    assert result.returncode == code
    assert message in result.stderr


def test_malformed_config_is_a_start_up_error(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("allowlist:\n- address: [unclosed\n")
    result = run_cli("8000", "127.0.0.1", "443", "--config", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith(f"nitrokms: {bad}: not valid YAML")

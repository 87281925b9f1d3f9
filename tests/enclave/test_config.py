from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nitrokms.enclave.config import parse_config, split_endpoint
from nitrokms.proto.addresses import UnixAddress, VsockAddress

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_defaults():
    config = parse_config([], {})
    assert config.listen == VsockAddress(0xFFFFFFFF, 5000)
    assert config.kms_relay == VsockAddress(3, 8000)
    assert config.region == "us-east-1"
    assert (config.kms_host, config.kms_port) == ("kms.us-east-1.amazonaws.com", 443)
    assert config.endpoint_url == "https://kms.us-east-1.amazonaws.com"
    assert config.max_frame_bytes == 4 * 1024 * 1024
    assert config.ca_bundle is None


def test_environment_then_arguments():
    env = {
        "NITROKMS_LISTEN": "unix:///run/enclave.sock",
        "NITROKMS_REGION": "eu-west-1",
        "NITROKMS_POOL_SIZE": "4",
        "NITROKMS_REQUEST_TIMEOUT_S": "2.5",
    }
    config = parse_config(["--pool-size", "3"], env)
    assert config.listen == UnixAddress("/run/enclave.sock")
    assert config.region == "eu-west-1"
    assert config.kms_host == "kms.eu-west-1.amazonaws.com"
    assert config.pool_size == 3
    assert config.request_timeout_s == 2.5


def test_hostile_parent_limits_and_the_control_listener():
    config = parse_config([], {})
    assert config.control_listen == VsockAddress(0xFFFFFFFF, 5001)
    assert (config.connection_buffer_bytes, config.total_buffer_bytes) == (16 << 20, 256 << 20)
    assert (config.send_timeout_s, config.max_bad_requests) == (10.0, 4)
    assert (config.workers, config.local_workers, config.max_workers_per_connection) == (16, 4, 8)
    assert parse_config(["--control-listen", "none"], {}).control_listen is None
    env = {"NITROKMS_CONTROL_LISTEN": "unix:///run/control.sock"}
    assert parse_config([], env).control_listen == UnixAddress("/run/control.sock")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--connection-buffer-bytes", str(4 << 20)], "a whole frame"),
        (["--total-buffer-bytes", str(8 << 20)], "at least --connection-buffer-bytes"),
        (["--send-timeout-s", "0"], "outside"),
    ],
)
def test_limits_that_cannot_work_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        parse_config(argv, {})
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_aws_region_is_the_fallback_region():
    assert parse_config([], {"AWS_REGION": "ap-south-1"}).region == "ap-south-1"


def test_endpoint_forms():
    assert split_endpoint("kms.x.amazonaws.com") == ("kms.x.amazonaws.com", 443)
    assert split_endpoint("https://localhost:8443/") == ("localhost", 8443)
    assert split_endpoint("[::1]:9000") == ("::1", 9000)
    config = parse_config(["--kms-endpoint", "kms.us-east-1.amazonaws.com:4443"], {})
    assert config.endpoint_url == "https://kms.us-east-1.amazonaws.com:4443"
    for bad in ("", "host:0", "host:x", "http://h/path", "https://"):
        with pytest.raises(ValueError, match="endpoint"):
            split_endpoint(bad)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--listen", "carrier-pigeon://x"], {}, "scheme"),
        ([], {"NITROKMS_LISTEN": "nowhere"}, "no scheme"),
        (["--pool-size", "0"], {}, "outside"),
        (["--region", "Mars"], {}, "region"),
        (["--kms-endpoint", "h:99999"], {}, "endpoint"),
        (["--log-level", "chatty"], {}, "not one of"),
    ],
)
def test_bad_values_are_usage_errors(capsys, argv, env, message):
    with pytest.raises(SystemExit) as info:
        parse_config(argv, env)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def _run_enclave(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "nitrokms.enclave", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT, check=False,
    )  # fmt: skip


def test_help_names_every_environment_variable():
    result = _run_enclave("--help")
    assert result.returncode == 0
    for name in (
        "NITROKMS_LISTEN",
        "NITROKMS_KMS_RELAY",
        "NITROKMS_CA_BUNDLE",
        "NITROKMS_MAX_KEYS",
    ):
        assert name in result.stdout


def test_startup_without_an_nsm_fails_with_one_clear_line(tmp_path):
    if os.path.exists("/dev/nsm"):
        pytest.skip("a real NSM device is present")
    result = _run_enclave(
        "--listen", f"unix://{tmp_path}/e.sock", "--kms-relay", "tcp://127.0.0.1:9"
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "cannot start" in lines[0]
    assert "nsm." in lines[0]

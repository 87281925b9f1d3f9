from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nitrokms.enclave import config as config_module
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


# --- the image's settings file -------------------------------------------------------------------


def _settings(tmp_path, values) -> str:
    path = tmp_path / "enclave.json"
    path.write_text(json.dumps(values))
    return str(path)


def test_settings_file_alone_configures_the_service(tmp_path):
    path = _settings(
        tmp_path,
        {
            "region": "eu-west-1",
            "parent_cid": 2,
            "relay_port": 8001,
            "pool_size": 3,
            "ca_bundle": "/etc/nitrokms/kms-roots.pem",
        },
    )
    config = parse_config([], {"NITROKMS_SETTINGS": path})
    assert config.region == "eu-west-1"
    assert config.kms_host == "kms.eu-west-1.amazonaws.com"
    assert config.kms_relay == VsockAddress(2, 8001)
    assert config.pool_size == 3
    assert config.ca_bundle == "/etc/nitrokms/kms-roots.pem"


def test_environment_and_arguments_override_the_settings_file(tmp_path):
    path = _settings(tmp_path, {"region": "eu-west-1", "pool_size": 3, "kms_relay": "vsock://3:9"})
    config = parse_config(
        ["--settings", path, "--pool-size", "5"], {"NITROKMS_REGION": "eu-north-1"}
    )
    assert (config.region, config.pool_size) == ("eu-north-1", 5)
    assert config.kms_relay == VsockAddress(3, 9)


def test_the_default_settings_path_is_read_when_present(tmp_path, monkeypatch):
    path = _settings(tmp_path, {"region": "ap-south-1"})
    monkeypatch.setattr(config_module, "SETTINGS_PATH", path)
    assert parse_config([], {}).region == "ap-south-1"
    monkeypatch.setattr(config_module, "SETTINGS_PATH", str(tmp_path / "absent.json"))
    assert parse_config([], {}).region == "us-east-1"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"regoin": "eu-west-1"}', "unknown setting 'regoin'"),
        ('{"pool_size": 0}', "pool_size: 0 is outside"),
        ('{"parent_cid": 1}', "parent_cid: 1 is outside"),
        ('{"pool_size": true}', "string or a number"),
        ('{"listen": "nowhere"}', "listen: "),
        ('["region"]', "not a JSON object"),
        ("region = 1", "not JSON"),
    ],
)
def test_bad_settings_are_one_usage_error(tmp_path, capsys, content, message):
    path = tmp_path / "enclave.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as info:
        parse_config(["--settings", str(path)], {})
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_named_settings_file_must_exist(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_config([], {"NITROKMS_SETTINGS": str(tmp_path / "none.json")})
    assert "does not exist" in capsys.readouterr().err


def test_show_config_prints_the_effective_settings(tmp_path):
    path = _settings(tmp_path, {"region": "eu-west-1", "parent_cid": 2})
    result = _run_enclave("--settings", path, "--show-config")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["region"] == "eu-west-1"
    assert shown["kms_relay"] == "vsock://2:8000"
    assert shown["listen"] == "vsock://any:5000"

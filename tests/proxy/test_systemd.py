from __future__ import annotations

import configparser
from pathlib import Path

from nitrokms import parent

UNIT = Path(parent.__file__).parent / "systemd" / "nitrokms-proxy.service"


def test_unit_runs_the_relay_for_the_instance_region_and_restarts() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(UNIT.read_text())
    exec_start = unit["Service"]["ExecStart"]
    assert "latest/api/token" in exec_start  # IMDSv2, not v1
    assert 'nitrokms proxy 8000 "kms.$$REGION.amazonaws.com" 443' in exec_start
    assert "--config /etc/nitro_enclaves/vsock-proxy.yaml" in exec_start
    assert unit["Service"]["Restart"] == "always"
    assert int(unit["Service"]["TimeoutStopSec"]) > 30  # longer than the default drain

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from nitrokms.proto.addresses import Address, TcpAddress, UnixAddress


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets: sun_path holds 107 bytes, pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="rpc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def unix_address(sock_dir: Path) -> UnixAddress:
    return UnixAddress(str(sock_dir / "enclave.sock"))


@pytest.fixture(params=["unix", "tcp"])
def listen_address(request: pytest.FixtureRequest, sock_dir: Path) -> Address:
    if request.param == "unix":
        return UnixAddress(str(sock_dir / "enclave.sock"))
    return TcpAddress("127.0.0.1", 0)

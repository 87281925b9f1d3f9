"""Resolving the enclave's address from flags and the environment."""

from __future__ import annotations

import pytest
from nitrokms.parent.rpc.endpoint import enclave_address
from nitrokms.proto.addresses import TcpAddress, UnixAddress, VsockAddress
from nitrokms.proto.errors import AddressError


def test_explicit_address_wins_over_everything() -> None:
    env = {"NITROKMS_ENCLAVE": "tcp://127.0.0.1:1", "NITROKMS_ENCLAVE_CID": "7"}
    assert enclave_address("unix:///run/e.sock", 9, env) == UnixAddress("/run/e.sock")


def test_cid_flag_beats_the_environment() -> None:
    env = {"NITROKMS_ENCLAVE": "tcp://127.0.0.1:1"}
    assert enclave_address(None, 9, env) == VsockAddress(9, 5000)


def test_environment_address_then_environment_cid() -> None:
    assert enclave_address(None, None, {"NITROKMS_ENCLAVE": "tcp://127.0.0.1:1"}) == TcpAddress(
        "127.0.0.1", 1
    )
    assert enclave_address(None, None, {"NITROKMS_ENCLAVE_CID": "16"}) == VsockAddress(16, 5000)


@pytest.mark.parametrize(
    ("cid", "env", "message"),
    [
        (None, {}, "no enclave address"),
        (2, {}, "reserved"),
        (3, {}, "reserved"),
        (None, {"NITROKMS_ENCLAVE_CID": "x1"}, "not a decimal number"),
        (None, {"NITROKMS_ENCLAVE": "http://x"}, "unknown address scheme"),
    ],
)
def test_missing_or_bad_addresses_are_clear_errors(
    cid: int | None, env: dict[str, str], message: str
) -> None:
    with pytest.raises(AddressError, match=message):
        enclave_address(None, cid, env)

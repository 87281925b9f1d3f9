"""Resolving the enclave's address from flags and the environment."""

from __future__ import annotations

import argparse

import pytest
from nitrokms.parent.rpc.endpoint import CONTROL_PORT, enclave_address
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


def test_the_credential_provider_reaches_the_control_listener_by_cid() -> None:
    """A CID means port 5001 for the provider (its own slots), 5000 for everyone else; an
    explicit address is taken as given."""
    assert enclave_address(None, 16, {}, port=CONTROL_PORT) == VsockAddress(16, 5001)
    env = {"NITROKMS_ENCLAVE_CID": "16"}
    assert enclave_address(None, None, env, port=CONTROL_PORT) == VsockAddress(16, 5001)
    explicit = {"NITROKMS_ENCLAVE": "vsock://16:5000"}
    assert enclave_address(None, None, explicit, port=CONTROL_PORT) == VsockAddress(16, 5000)


def test_the_credentials_command_says_a_cid_means_the_control_port() -> None:
    from nitrokms.cli import build_parser

    def cid_help(command: str) -> str:
        parser = build_parser(command)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        leaf = sub.choices[command]
        if command == "call":
            leaf = next(a for a in leaf._actions if isinstance(a, argparse._SubParsersAction))
            leaf = leaf.choices["health"]
        return " ".join(leaf.format_help().split())

    assert "enclave CID for vsock://CID:5001" in cid_help("credentials")
    assert "enclave CID for vsock://CID:5000" in cid_help("call")

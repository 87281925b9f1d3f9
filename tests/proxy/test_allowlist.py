from __future__ import annotations

import asyncio

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.parent.proxy.allowlist import (
    MAX_CONFIG_BYTES,
    AllowEntry,
    check_allowlist,
    load_allowlist,
    parse_allowlist,
)
from nitrokms.parent.proxy.errors import (
    NOT_ALLOWED_MESSAGE,
    ConfigError,
    NotAllowedError,
    ResolveError,
)

from tests.proxy.support import ip

AWS_STYLE = """\
allowlist:
- {address: kms.us-east-1.amazonaws.com, port: 443}
- {address: kms-fips.us-east-1.amazonaws.com, port: 443}
- address: 10.0.0.5
  port: 8443
  comment: unknown keys are ignored, as serde does
"""

NAMES = {
    "kms.us-east-1.amazonaws.com": ("10.1.1.1", "10.1.1.2"),
    "alias.example": ("10.1.1.2",),
    "other.example": ("10.9.9.9",),
    "10.1.1.2": ("10.1.1.2",),
}


async def fake_resolve_all(host: str):
    if host not in NAMES:
        raise ResolveError(f"cannot resolve {host}")
    return tuple(ip(a) for a in NAMES[host])


def check(entries, remote: str, port: int) -> None:
    asyncio.run(check_allowlist(entries, remote, port, fake_resolve_all))


def test_parses_the_vsock_proxy_format() -> None:
    assert parse_allowlist(AWS_STYLE) == (
        AllowEntry("kms.us-east-1.amazonaws.com", 443),
        AllowEntry("kms-fips.us-east-1.amazonaws.com", 443),
        AllowEntry("10.0.0.5", 8443),
    )
    assert parse_allowlist("allowlist: []\n") == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "'allowlist' key"),
        ("- a\n", "'allowlist' key"),
        ("allowlist: 3\n", "must be a list"),
        ("allowlist:\n- 3\n", "entry 0 is not a mapping"),
        ("allowlist:\n- {address: a.example}\n", "needs both"),
        ("allowlist:\n- {address: a.example, port: '443'}\n", "must be an integer"),
        ("allowlist:\n- {address: a.example, port: 70000}\n", "out of range"),
        ("allowlist:\n- {address: 443, port: 443}\n", "non-empty string"),
        ("allowlist:\n- {address: 'a b', port: 443}\n", "not a host name"),
        ("allowlist: [\n", "not valid YAML"),
        ("allowlist: !!python/object:os.system {}\n", "not valid YAML"),
    ],
)
def test_malformed_configs_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_allowlist(text, source="/etc/x.yaml")


def test_oversized_and_missing_files_are_config_errors(tmp_path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_allowlist(str(big))
    with pytest.raises(ConfigError, match=r"cannot read config .*missing\.yaml"):
        load_allowlist(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_allowlist(str(tmp_path))


_yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_bytes_parse_or_raise_config_error(data: bytes | str) -> None:
    try:
        entries = parse_allowlist(data)
    except ConfigError:
        return
    assert all(isinstance(entry, AllowEntry) for entry in entries)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["allowlist", "x"]), _yaml_values, max_size=2))
def test_arbitrary_yaml_structures_parse_or_raise_config_error(document: object) -> None:
    try:
        entries = parse_allowlist(yaml.safe_dump(document))
    except ConfigError:
        return
    assert all(isinstance(entry, AllowEntry) for entry in entries)


ENTRIES = parse_allowlist(AWS_STYLE)


def test_exact_string_match_is_allowed_without_resolving() -> None:
    check(ENTRIES, "kms-fips.us-east-1.amazonaws.com", 443)  # not resolvable: exact match only


def test_resolved_address_match_is_allowed() -> None:
    check(ENTRIES, "alias.example", 443)  # 10.1.1.2 is one of kms.us-east-1's addresses
    check(ENTRIES, "10.1.1.2", 443)


def test_refusals_carry_the_vsock_proxy_message() -> None:
    for remote, port in [
        ("other.example", 443),
        ("kms.us-east-1.amazonaws.com", 444),
        ("alias.example", 8443),
        ("unresolvable.example", 443),
    ]:
        with pytest.raises(NotAllowedError) as caught:
            check(ENTRIES, remote, port)
        assert str(caught.value).startswith(NOT_ALLOWED_MESSAGE)


def test_an_unresolvable_allowlisted_name_does_not_block_others() -> None:
    entries = (AllowEntry("gone.example", 443), AllowEntry("alias.example", 443))
    check(entries, "10.1.1.2", 443)

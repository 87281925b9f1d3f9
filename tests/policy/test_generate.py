"""The key-policy generator: structure, conditions, PCR derivation, debug refusal, bad input."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.parent.policy import (
    ADMIN_ACTIONS,
    ATTESTED_ONLY_ACTIONS,
    Measurements,
    PolicyError,
    PolicyRequest,
    find_unconditional_grants,
    generate_policy,
    measured_pcr,
    parse_measurements,
    render,
)

from .conftest import (
    ACCOUNT,
    INSTANCE_ID,
    PCR0,
    PCR1,
    PCR2,
    PCR8,
    ROLE_ARN,
    ZERO,
    measurements_json,
)

PREFIX = "kms:RecipientAttestation:"
PROD = Measurements({0: PCR0, 1: PCR1.lower(), 2: PCR2})
DEBUG = Measurements({0: ZERO, 1: ZERO, 2: ZERO})


def statements_by_sid(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in policy["Statement"]}


def conditions(statement: dict[str, Any]) -> dict[str, str]:
    assert list(statement["Condition"]) == ["StringEqualsIgnoreCase"]
    found: dict[str, str] = statement["Condition"]["StringEqualsIgnoreCase"]
    return found


def test_default_policy_pins_pcr0_2_for_the_role_and_keeps_admin_apart() -> None:
    policy = generate_policy(PolicyRequest(PROD, role_arn=ROLE_ARN))
    assert policy["Version"] == "2012-10-17"
    by_sid = statements_by_sid(policy)
    assert set(by_sid) == {"EnclaveDataPlane", "KeyAdministration"}
    data = by_sid["EnclaveDataPlane"]
    assert data["Effect"] == "Allow"
    assert data["Principal"] == {"AWS": ROLE_ARN}
    assert data["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert conditions(data) == {
        f"{PREFIX}PCR0": PCR0,
        f"{PREFIX}PCR1": PCR1.lower(),
        f"{PREFIX}PCR2": PCR2,
    }
    admin = by_sid["KeyAdministration"]
    assert admin["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    assert "Condition" not in admin
    assert set(admin["Action"]) == set(ADMIN_ACTIONS)
    assert not set(admin["Action"]) & set(ATTESTED_ONLY_ACTIONS)
    assert "kms:PutKeyPolicy" in admin["Action"]
    assert not any("*" in a for s in policy["Statement"] for a in s["Action"])


def test_account_only_uses_the_account_root_for_both_statements() -> None:
    policy = generate_policy(PolicyRequest(PROD, account=ACCOUNT))
    by_sid = statements_by_sid(policy)
    root = {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    assert by_sid["EnclaveDataPlane"]["Principal"] == root
    assert by_sid["KeyAdministration"]["Principal"] == root


def test_admin_arn_replaces_the_root_as_administrator() -> None:
    admin = f"arn:aws:iam::{ACCOUNT}:role/KeyAdmin"
    policy = generate_policy(PolicyRequest(PROD, role_arn=ROLE_ARN, admin_arn=admin))
    assert statements_by_sid(policy)["KeyAdministration"]["Principal"] == {"AWS": admin}


def test_pcr3_and_pcr4_follow_the_spec_formula() -> None:
    policy = generate_policy(
        PolicyRequest(PROD, role_arn=ROLE_ARN, instance_id=INSTANCE_ID, pcrs=(3,))
    )
    found = conditions(statements_by_sid(policy)["EnclaveDataPlane"])
    assert found[f"{PREFIX}PCR3"] == hashlib.sha384(b"\0" * 48 + ROLE_ARN.encode()).hexdigest()
    assert found[f"{PREFIX}PCR4"] == hashlib.sha384(b"\0" * 48 + INSTANCE_ID.encode()).hexdigest()
    assert measured_pcr(INSTANCE_ID) == found[f"{PREFIX}PCR4"]


def test_pcr8_comes_from_signed_measurements_and_explicit_values_win() -> None:
    signed = Measurements({0: PCR0, 1: PCR1.lower(), 2: PCR2, 8: PCR8})
    explicit = "EE" * 48
    policy = generate_policy(
        PolicyRequest(signed, account=ACCOUNT, pcrs=(8,), explicit_pcrs={5: explicit})
    )
    found = conditions(statements_by_sid(policy)["EnclaveDataPlane"])
    assert found[f"{PREFIX}PCR8"] == PCR8
    assert found[f"{PREFIX}PCR5"] == explicit.lower()
    assert list(found) == [f"{PREFIX}PCR{i}" for i in (0, 1, 2, 5, 8)]


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({}, "--role-arn"),
        ({"account": "12345"}, "12-digit"),
        ({"role_arn": "arn:aws:iam::111122223333:user/bob"}, "not an IAM role ARN"),
        ({"role_arn": ROLE_ARN, "account": "999999999999"}, "differs"),
        ({"account": ACCOUNT, "pcrs": (3,)}, "PCR3: give --role-arn"),
        ({"account": ACCOUNT, "pcrs": (4,)}, "PCR4: give --instance-id"),
        ({"account": ACCOUNT, "pcrs": (8,)}, "PCR8"),
        ({"account": ACCOUNT, "pcrs": (16,)}, "0..15"),
        ({"account": ACCOUNT, "instance_id": "i-xyz"}, "not an i-... id"),
        ({"account": ACCOUNT, "explicit_pcrs": {3: "abc"}}, "PCR3 has 3 hex digits"),
        ({"account": ACCOUNT, "explicit_pcrs": {3: "zz" * 48}}, "PCR3 is not hex"),
        ({"account": ACCOUNT, "admin_arn": "root"}, "--admin-arn"),
        ({"account": ACCOUNT, "pcrs": (6,)}, "no value for PCR6: give --pcr 6=HEX"),
        ({"account": ACCOUNT, "explicit_pcrs": {1: "0" * 96}}, "needs --allow-debug"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_message(
    request_args: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        generate_policy(PolicyRequest(PROD, **request_args))


def test_debug_measurements_are_refused_without_allow_debug() -> None:
    with pytest.raises(PolicyError, match=r"all-zero PCR0-2.*anyone's debug enclave would match"):
        generate_policy(PolicyRequest(DEBUG, role_arn=ROLE_ARN))


def test_debug_measurements_with_allow_debug_pin_the_zero_values() -> None:
    policy = generate_policy(PolicyRequest(DEBUG, role_arn=ROLE_ARN, allow_debug=True))
    by_sid = statements_by_sid(policy)
    assert set(by_sid) == {"EnclaveDataPlane", "KeyAdministration"}
    assert set(conditions(by_sid["EnclaveDataPlane"]).values()) == {ZERO}


def test_allow_debug_adds_a_zero_pcr_alternative_to_production_measurements() -> None:
    policy = generate_policy(
        PolicyRequest(PROD, role_arn=ROLE_ARN, instance_id=INSTANCE_ID, allow_debug=True)
    )
    by_sid = statements_by_sid(policy)
    prod = conditions(by_sid["EnclaveDataPlane"])
    debug = conditions(by_sid["EnclaveDataPlaneDebug"])
    assert prod[f"{PREFIX}PCR0"] == PCR0
    assert {debug[f"{PREFIX}PCR{i}"] for i in (0, 1, 2)} == {ZERO}
    assert debug[f"{PREFIX}PCR4"] == prod[f"{PREFIX}PCR4"] == measured_pcr(INSTANCE_ID)


def test_generated_policies_pass_their_own_check() -> None:
    for request in (
        PolicyRequest(PROD, role_arn=ROLE_ARN),
        PolicyRequest(PROD, account=ACCOUNT, instance_id=INSTANCE_ID, pcrs=(3,), role_arn=ROLE_ARN),
    ):
        assert find_unconditional_grants(generate_policy(request)) == []


def test_render_is_two_space_json_with_a_final_newline() -> None:
    policy = generate_policy(PolicyRequest(PROD, role_arn=ROLE_ARN))
    text = render(policy)
    assert text.endswith("}\n")
    assert text.splitlines()[1] == '  "Version": "2012-10-17",'
    assert json.loads(text) == policy


def test_nitro_cli_output_parses_with_pcr8_and_upper_case_hex() -> None:
    parsed = parse_measurements(
        measurements_json(PCR0=PCR0, PCR1=PCR1, PCR2=PCR2, PCR8=PCR8.upper()).encode()
    )
    assert parsed.pcrs == {0: PCR0, 1: PCR1.lower(), 2: PCR2, 8: PCR8}
    assert not parsed.is_debug


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", 'no "Measurements"'),
        (b'{"PCR0": "00"}', 'no "Measurements"'),
        (b'{"Measurements": []}', 'no "Measurements"'),
        (measurements_json(PCR0=PCR0, PCR1=PCR1).encode(), "lack PCR2"),
        (measurements_json(PCR0=PCR0, PCR1=PCR1, PCR2="ab").encode(), "PCR2 has 2 hex digits"),
        (measurements_json(PCR0=PCR0, PCR1=PCR1, PCR2="g" * 96).encode(), "PCR2 is not hex"),
        (
            json.dumps({"Measurements": {"PCR0": PCR0, "PCR1": PCR1, "PCR2": 5}}).encode(),
            "PCR2 is not hex",
        ),
        (measurements_json(PCR0=ZERO, PCR1=PCR1, PCR2=PCR2).encode(), "zero only in part"),
        (
            measurements_json(PCR0=PCR0, PCR1=PCR1, PCR2=PCR2, PCR16=PCR0).encode(),
            "PCR16 is not a PCR",
        ),
        (
            json.dumps({"Measurements": {"HashAlgorithm": "Sha256", "PCR0": PCR0}}).encode(),
            "not Sha384",
        ),
        (b" " * 70000, "exceeds"),
    ],
)
def test_malformed_measurements_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse_measurements(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_measurements_bytes_parse_or_raise_policy_error(data: bytes) -> None:
    try:
        parsed = parse_measurements(data)
    except PolicyError:
        return
    assert all(len(v) == 96 for v in parsed.pcrs.values())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
MEASUREMENT_DOCS = st.fixed_dictionaries(
    {
        "Measurements": st.dictionaries(
            st.sampled_from(["PCR0", "PCR1", "PCR2", "PCR8", "PCR99", "HashAlgorithm"]),
            JSON | st.sampled_from([PCR0, ZERO]),
        )
    }
)


@settings(max_examples=300, deadline=None)
@given(MEASUREMENT_DOCS)
def test_any_measurements_shape_parses_or_raises_policy_error(document: dict[str, Any]) -> None:
    try:
        parsed = parse_measurements(json.dumps(document).encode())
    except PolicyError:
        return
    assert set(parsed.pcrs) >= {0, 1, 2}
    assert all(len(v) == 96 for v in parsed.pcrs.values())


def test_root_principal_follows_the_role_partition() -> None:
    role = "arn:aws-cn:iam::111122223333:role/EnclaveRole"
    policy = generate_policy(PolicyRequest(PROD, role_arn=role))
    admin = statements_by_sid(policy)["KeyAdministration"]
    assert admin["Principal"] == {"AWS": "arn:aws-cn:iam::111122223333:root"}

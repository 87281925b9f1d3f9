"""`find_unconditional_grants`: the aws-nitro-enclaves-sdk-c #157 check on good and bad policies."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.parent.policy import PolicyError, find_unconditional_grants

from .conftest import PCR0, PCR1, ZERO

ROLE = {"AWS": "arn:aws:iam::111122223333:role/EnclaveRole"}
PINNED = {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": PCR0}}


def allow(action: Any = "kms:Decrypt", condition: Any = None, **extra: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": ROLE, "Resource": "*"}
    if action is not None:
        statement["Action"] = action
    if condition is not None:
        statement["Condition"] = condition
    return statement | extra


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


@pytest.mark.parametrize(
    "statement",
    [
        allow(["kms:Decrypt", "kms:GenerateDataKey"], PINNED),
        allow("kms:Decrypt", {"StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0}}),
        allow("kms:Decrypt", {"stringequalsignorecase": {"KMS:RECIPIENTATTESTATION:PCR8": PCR0}}),
        allow("kms:*", {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR2": [PCR0, PCR1]}}),
        allow(["kms:Encrypt", "kms:DescribeKey", "kms:Describe*", "kms:List*", "kms:Put*"]),
        allow(
            None,
            NotAction=[
                "kms:Decrypt",
                "kms:GenerateDataKey*",
                "kms:GenerateRandom",
                "kms:ReEncrypt*",
                "kms:DeriveSharedSecret",
                "kms:CreateGrant",
            ],
        ),
        {"Effect": "Deny", "Principal": "*", "Action": "*", "Resource": "*"},
    ],
)
def test_good_statements_have_no_findings(statement: dict[str, Any]) -> None:
    assert find_unconditional_grants(policy(statement)) == []


@pytest.mark.parametrize(
    ("statement", "granted", "reason"),
    [
        (allow("kms:*"), "kms:Decrypt", "without any condition"),
        (allow("*"), "kms:GenerateDataKey", "without any condition"),
        (allow("kms:Gen*"), "kms:GenerateDataKeyPair", "without any condition"),
        (allow("kms:*Decrypt*"), "kms:Decrypt", "without any condition"),
        (allow("KMS:decrypt"), "kms:Decrypt", "without any condition"),
        (allow("kms:ReEncrypt*"), "kms:ReEncryptFrom", "without any condition"),
        (allow("kms:Create*"), "kms:CreateGrant", "without any condition"),
        (allow("kms:GenerateDataKe?"), "kms:GenerateDataKey", "without any condition"),
        (allow(None, NotAction="kms:Encrypt"), "kms:Decrypt", "without any condition"),
        (allow(None, NotAction=["kms:Decrypt"]), "kms:GenerateDataKey", "without any condition"),
        (
            allow("kms:Decrypt", {"StringEquals": {"kms:EncryptionContext:app": "x"}}),
            "kms:Decrypt",
            "without an attestation condition",
        ),
        (
            allow(
                "kms:Decrypt", {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR3": PCR0}}
            ),
            "kms:Decrypt",
            "without an attestation condition",
        ),
        (
            allow("kms:Decrypt", {"StringEqualsIfExists": {"kms:RecipientAttestation:PCR0": PCR0}}),
            "kms:Decrypt",
            "without an attestation condition",
        ),
        (
            allow("kms:Decrypt", {"StringLike": {"kms:RecipientAttestation:PCR0": "*"}}),
            "kms:Decrypt",
            "without an attestation condition",
        ),
        (
            allow("kms:Decrypt", {"StringNotEquals": {"kms:RecipientAttestation:PCR0": PCR0}}),
            "kms:Decrypt",
            "without an attestation condition",
        ),
        (
            allow(
                "kms:Decrypt", {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": ZERO}}
            ),
            "kms:Decrypt",
            "debug-mode enclaves",
        ),
    ],
)
def test_bad_statements_are_named(statement: dict[str, Any], granted: str, reason: str) -> None:
    good = allow("kms:Decrypt", PINNED, Sid="Enclave")
    findings = find_unconditional_grants(policy(good, statement | {"Sid": "Culprit"}))
    assert len(findings) == 1
    assert findings[0].startswith("statement #1 (Sid 'Culprit') grants ")
    assert granted in findings[0]
    assert reason in findings[0]


def test_allow_debug_accepts_a_zero_pin_but_not_a_missing_one() -> None:
    debug = allow(
        "kms:Decrypt", {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": ZERO}}
    )
    assert find_unconditional_grants(policy(debug), allow_debug=True) == []
    assert find_unconditional_grants(policy(allow("kms:*")), allow_debug=True) != []


def test_single_statement_object_is_checked() -> None:
    assert find_unconditional_grants({"Statement": allow("kms:*")}) != []


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"Version": "2012-10-17"},
        {"Statement": "x"},
        {"Statement": [1]},
        {"Statement": [{"Effect": "Maybe", "Action": "*"}]},
        {"Statement": [{"Effect": "Allow", "Resource": "*"}]},
        {"Statement": [{"Effect": "Allow", "Action": [1]}]},
        {"Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Condition": []}]},
        {"Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Condition": {"Bool": 1}}]},
    ],
)
def test_documents_that_are_not_policies_raise(document: Any) -> None:
    with pytest.raises(PolicyError):
        find_unconditional_grants(document)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=24,
)
FIELDS = st.sampled_from(["Effect", "Action", "NotAction", "Condition", "Sid", "Principal"])
STATEMENTS = st.dictionaries(
    FIELDS,
    JSON | st.sampled_from(["Allow", "Deny", "kms:*", "kms:Decrypt"]) | st.just(PINNED),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(STATEMENTS, max_size=4) | JSON)
def test_any_document_is_checked_or_raises_policy_error(statements: Any) -> None:
    try:
        findings = find_unconditional_grants({"Statement": statements})
    except PolicyError:
        return
    assert all(isinstance(f, str) and f.startswith("statement #") for f in findings)

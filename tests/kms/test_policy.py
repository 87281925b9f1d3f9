"""Key-policy evaluation as a pure function, and the parser's fuzz invariant."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.sim.kms.exceptions import MalformedPolicyDocumentException
from nitrokms.sim.kms.policy import (
    PolicyDocument,
    RequestContext,
    default_policy,
    principal_matches,
)

KEY = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
USER = "arn:aws:iam::111122223333:user/alice"


def ctx(action: str = "kms:Decrypt", principal: str = USER, **conditions: str) -> RequestContext:
    keys = {k.replace("__", ":").lower(): v for k, v in conditions.items()}
    return RequestContext(action, principal, KEY, keys)


def policy(*statements: dict[str, Any]) -> PolicyDocument:
    return PolicyDocument.parse(
        json.dumps({"Version": "2012-10-17", "Statement": list(statements)})
    )


def allow(**extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"} | extra


def test_default_policy_allows_every_principal_of_the_account_only() -> None:
    document = PolicyDocument.parse(default_policy("111122223333"))
    assert document.evaluate(ctx()).allowed
    assert not document.evaluate(ctx(principal="arn:aws:iam::444455556666:root")).allowed


def test_default_is_deny_and_explanation_lists_failures() -> None:
    document = policy(allow(Sid="OnlyEncrypt", Action="kms:Encrypt"))
    decision = document.evaluate(ctx())
    assert not decision.allowed
    assert not decision.explicit_deny
    assert (
        decision.explanation
        == "no statement allows: statement #0 (Sid 'OnlyEncrypt'): action does not match"
    )


@pytest.mark.parametrize(
    ("actions", "action", "allowed"),
    [
        ("kms:*", "kms:Decrypt", True),
        ("KMS:decrypt", "kms:Decrypt", True),
        ("kms:Generate*", "kms:GenerateDataKey", True),
        ("kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", False),
        ("kms:Decr?pt", "kms:Decrypt", True),
        ("kms:Re[a]*", "kms:Rea", False),
        (["kms:Encrypt", "kms:Decrypt"], "kms:Decrypt", True),
    ],
)
def test_action_wildcards(actions: Any, action: str, allowed: bool) -> None:
    assert policy(allow(Action=actions)).evaluate(ctx(action)).allowed is allowed


def test_not_action() -> None:
    document = policy(
        {"Effect": "Allow", "Principal": "*", "NotAction": "kms:Decrypt", "Resource": "*"}
    )
    assert document.evaluate(ctx("kms:Encrypt")).allowed
    assert not document.evaluate(ctx("kms:Decrypt")).allowed


@pytest.mark.parametrize(
    ("pattern", "principal", "matches"),
    [
        ("*", USER, True),
        ("111122223333", USER, True),
        ("arn:aws:iam::111122223333:root", USER, True),
        ("arn:aws:iam::444455556666:root", USER, False),
        (USER, USER, True),
        ("arn:aws:iam::111122223333:user/bob", USER, False),
        (
            "arn:aws:iam::111122223333:role/App",
            "arn:aws:sts::111122223333:assumed-role/App/s1",
            True,
        ),
        (
            "arn:aws:iam::111122223333:role/App",
            "arn:aws:sts::111122223333:assumed-role/Other/s1",
            False,
        ),
    ],
)
def test_principal_forms(pattern: str, principal: str, matches: bool) -> None:
    assert principal_matches(pattern, principal) is matches


def test_resource_must_match_key_arn() -> None:
    assert policy(allow(Resource=KEY)).evaluate(ctx()).allowed
    assert not policy(allow(Resource=KEY.replace("1234abcd", "ffffffff"))).evaluate(ctx()).allowed


def test_explicit_deny_wins_whatever_the_order() -> None:
    deny = {
        "Sid": "Stop",
        "Effect": "Deny",
        "Principal": {"AWS": USER},
        "Action": "kms:Decrypt",
        "Resource": "*",
    }
    for statements in ((allow(), deny), (deny, allow())):
        decision = policy(*statements).evaluate(ctx())
        assert decision.explicit_deny
        assert "Sid 'Stop'" in decision.explanation


PCR0 = "ab" * 48


@pytest.mark.parametrize(
    ("condition", "context", "allowed"),
    [
        (
            {"StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0}},
            {"kms:recipientattestation:imagesha384": PCR0},
            True,
        ),
        (
            {"StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0.upper()}},
            {"kms:recipientattestation:imagesha384": PCR0},
            False,
        ),
        (
            {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0.upper()}},
            {"kms:recipientattestation:imagesha384": PCR0},
            True,
        ),
        ({"StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0}}, {}, False),
        (
            {"StringEquals": {"kms:EncryptionContext:app": ["a", "b"]}},
            {"kms:encryptioncontext:app": "b"},
            True,
        ),
        (
            {"StringEquals": {"kms:EncryptionContext:app": "a", "kms:EncryptionContext:env": "p"}},
            {"kms:encryptioncontext:app": "a"},
            False,
        ),
        (
            {
                "StringEquals": {"kms:EncryptionContext:app": "a"},
                "Null": {"kms:EncryptionContext:env": "true"},
            },
            {"kms:encryptioncontext:app": "a"},
            True,
        ),
        ({"Null": {"kms:EncryptionContext:env": "false"}}, {}, False),
        (
            {"StringLike": {"kms:EncryptionContext:app": "web-*"}},
            {"kms:encryptioncontext:app": "web-1"},
            True,
        ),
        (
            {"StringLike": {"kms:EncryptionContext:app": "web-?"}},
            {"kms:encryptioncontext:app": "web-12"},
            False,
        ),
        (
            {"StringNotEquals": {"kms:EncryptionContext:app": "a"}},
            {"kms:encryptioncontext:app": "b"},
            True,
        ),
        ({"StringNotEquals": {"kms:EncryptionContext:app": "a"}}, {}, True),
        (
            {"StringNotEquals": {"kms:EncryptionContext:app": ["a", "b"]}},
            {"kms:encryptioncontext:app": "b"},
            False,
        ),
        ({"StringEqualsIfExists": {"kms:EncryptionContext:app": "a"}}, {}, True),
        ({"Bool": {"aws:SecureTransport": True}}, {"aws:securetransport": "true"}, True),
        ({"Bool": {"aws:SecureTransport": "false"}}, {"aws:securetransport": "true"}, False),
        # multi-valued keys and the set qualifiers
        (
            {"ForAllValues:StringEquals": {"kms:GrantOperations": ["Encrypt", "Decrypt"]}},
            {"kms:grantoperations": ("Decrypt", "Encrypt")},
            True,
        ),
        (
            {"ForAllValues:StringEquals": {"kms:GrantOperations": ["Encrypt", "Decrypt"]}},
            {"kms:grantoperations": ("Decrypt", "CreateGrant")},
            False,
        ),
        ({"ForAllValues:StringEquals": {"kms:GrantOperations": "Decrypt"}}, {}, True),
        (
            {"ForAnyValue:StringEquals": {"kms:GrantOperations": "Decrypt"}},
            {"kms:grantoperations": ("Sign", "Decrypt")},
            True,
        ),
        (
            {"ForAnyValue:StringEquals": {"kms:GrantOperations": "Decrypt"}},
            {"kms:grantoperations": ("Sign", "Verify")},
            False,
        ),
        ({"ForAnyValue:StringEquals": {"kms:GrantOperations": "Decrypt"}}, {}, False),
        (
            {"ForAllValues:StringNotEquals": {"kms:GrantOperations": ["CreateGrant"]}},
            {"kms:grantoperations": ("Encrypt", "Decrypt")},
            True,
        ),
        (
            {"ForAllValues:StringNotEquals": {"kms:GrantOperations": ["CreateGrant"]}},
            {"kms:grantoperations": ("Encrypt", "CreateGrant")},
            False,
        ),
        (
            {"ForAnyValue:StringLike": {"aws:TagKeys": "env*"}},
            {"aws:tagkeys": ("owner", "environment")},
            True,
        ),
        ({"StringEquals": {"aws:TagKeys": "b"}}, {"aws:tagkeys": ("a", "b")}, True),
        ({"StringNotEquals": {"aws:TagKeys": "b"}}, {"aws:tagkeys": ("a", "b")}, False),
        # numbers
        (
            {"NumericLessThanEquals": {"kms:RotationPeriodInDays": "180"}},
            {"kms:rotationperiodindays": "90"},
            True,
        ),
        (
            {"NumericLessThanEquals": {"kms:RotationPeriodInDays": 180}},
            {"kms:rotationperiodindays": "365"},
            False,
        ),
        (
            {"NumericGreaterThan": {"kms:RotationPeriodInDays": "1"}},
            {"kms:rotationperiodindays": "lots"},
            False,
        ),
        ({"NumericNotEquals": {"kms:RotationPeriodInDays": "90"}}, {}, True),
    ],
)
def test_conditions(condition: dict[str, Any], context: dict[str, Any], allowed: bool) -> None:
    decision = policy(allow(Condition=condition)).evaluate(
        RequestContext("kms:Decrypt", USER, KEY, context)
    )
    assert decision.allowed is allowed


def test_failed_condition_explains_why_the_value_is_absent() -> None:
    document = policy(
        allow(Sid="Enclave", Condition={"StringEquals": {"kms:RecipientAttestation:PCR0": PCR0}})
    )
    reasons = {"kms:recipientattestation:": "the document did not verify (attestation.Expired)"}
    decision = document.evaluate(RequestContext("kms:Decrypt", USER, KEY, {}, reasons))
    assert "StringEquals kms:RecipientAttestation:PCR0" in decision.explanation
    assert "attestation.Expired" in decision.explanation


@pytest.mark.parametrize(
    "document",
    [
        "[]",
        "{}",
        json.dumps({"Statement": []}),
        json.dumps({"Statement": [allow(Effect="allow")]}),
        json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Resource": "*"}]}),
        json.dumps({"Statement": [allow(Principal={"Nobody": "x"})]}),
        json.dumps({"Statement": [allow(Condition={"ForAnyValue:Null": {"a": "true"}})]}),
        json.dumps({"Statement": [allow(Condition={"IpAddress": {"aws:SourceIp": "10/8"}})]}),
        json.dumps({"Statement": [allow(Condition={"NumericLessThan": {"a": "many"}})]}),
        json.dumps({"Statement": [allow(Condition={"StringEquals": {"a": {"nested": 1}}})]}),
        json.dumps({"Statement": [allow(Action=[])]}),
        "x" * 40000,
    ],
)
def test_malformed_policies_are_refused(document: str) -> None:
    with pytest.raises(MalformedPolicyDocumentException):
        PolicyDocument.parse(document)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=20)
    | st.sampled_from(["Allow", "Deny", "*", "kms:*", "StringEquals", "Null", "AWS"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "Statement",
                    "Effect",
                    "Principal",
                    "Action",
                    "NotAction",
                    "Resource",
                    "Condition",
                    "Sid",
                    "AWS",
                    "StringLike",
                    "kms:EncryptionContext:a",
                ]
            )
            | st.text(max_size=10),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_any_json_parses_or_is_malformed(document: Any) -> None:
    try:
        parsed = PolicyDocument.parse(json.dumps(document))
    except MalformedPolicyDocumentException:
        return
    assert isinstance(parsed.evaluate(ctx()).allowed, bool)

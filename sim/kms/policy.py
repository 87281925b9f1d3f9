"""Key-policy parsing and evaluation, with an explanation for every decision.

The subset of IAM policy grammar a key policy needs: statements (one or a list) with Effect,
Principal/NotPrincipal, Action/NotAction, Resource/NotResource and Condition. Condition operators:
String(Not)Equals, String(Not)EqualsIgnoreCase, String(Not)Like, Arn(Not)Equals/Like, Bool, Null,
each with an optional `IfExists` suffix. Values in one condition are OR-ed; keys and operators are
AND-ed. An explicit Deny wins; otherwise at least one Allow must apply; the default is deny.
Condition key names are case-insensitive (the request context is keyed by lower-cased names);
values compare case-sensitively except for the IgnoreCase operators. Multi-valued keys and the
ForAnyValue/ForAllValues qualifiers are not supported and are refused when a policy is stored.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nitrokms.sim.kms.exceptions import MalformedPolicyDocumentException

_Matcher = Callable[[Sequence[str]], bool]  # patterns -> does the request match any of them

MAX_POLICY_BYTES = 32768
_ACCOUNT_RE = re.compile(r"^\d{12}$")


def default_policy(account: str) -> str:
    """AWS's default key policy: the account root (so every principal of the account) gets kms:*."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        },
        indent=2,
    )


@dataclass(frozen=True)
class RequestContext:
    """What a policy is evaluated against; `conditions` keys are lower-case condition key names.

    `absent_reasons` maps a lower-case key prefix to why keys under it are missing (for example an
    attestation document that failed verification), so an explanation can say so.
    """

    action: str
    principal_arn: str
    resource: str
    conditions: Mapping[str, str]
    absent_reasons: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, key: str) -> str | None:
        return self.conditions.get(key.lower())

    def why_absent(self, key: str) -> str:
        lowered = key.lower()
        for prefix, reason in self.absent_reasons.items():
            if lowered.startswith(prefix):
                return f"absent: {reason}"
        return "absent from the request"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    explicit_deny: bool
    explanation: str


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    """IAM wildcards: `*` is any run of characters, `?` any one character; nothing else."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _string_ops() -> dict[str, Callable[[str, str], bool]]:
    return {
        "StringEquals": lambda want, got: want == got,
        "StringEqualsIgnoreCase": lambda want, got: want.lower() == got.lower(),
        "StringLike": lambda want, got: _glob(want, ignore_case=False).fullmatch(got) is not None,
        "ArnEquals": lambda want, got: want == got,
        "ArnLike": lambda want, got: _glob(want, ignore_case=False).fullmatch(got) is not None,
        "Bool": lambda want, got: want.lower() == got.lower(),
    }


_POSITIVE = _string_ops()
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}
OPERATORS = frozenset([*_POSITIVE, *_NEGATED, "Null"])


@dataclass(frozen=True)
class Condition:
    operator: str
    key: str
    values: tuple[str, ...]

    @property
    def base_operator(self) -> str:
        return self.operator.removesuffix("IfExists")

    def holds(self, ctx: RequestContext) -> bool:
        actual = ctx.lookup(self.key)
        base = self.base_operator
        if base == "Null":
            return any((actual is None) == (v.lower() == "true") for v in self.values)
        if actual is None:
            return self.operator.endswith("IfExists") or base in _NEGATED
        if base in _NEGATED:
            test = _POSITIVE[_NEGATED[base]]
            return not any(test(v, actual) for v in self.values)
        return any(_POSITIVE[base](v, actual) for v in self.values)

    def describe(self, ctx: RequestContext) -> str:
        actual = ctx.lookup(self.key)
        got = repr(actual) if actual is not None else ctx.why_absent(self.key)
        want = self.values[0] if len(self.values) == 1 else list(self.values)
        return f"{self.operator} {self.key} {want!r} (request: {got})"


@dataclass(frozen=True)
class Statement:
    label: str
    effect: str
    principals: tuple[str, ...] | None
    not_principals: tuple[str, ...] | None
    actions: tuple[str, ...] | None
    not_actions: tuple[str, ...] | None
    resources: tuple[str, ...] | None
    not_resources: tuple[str, ...] | None
    conditions: tuple[Condition, ...]

    def scope_mismatch(self, ctx: RequestContext) -> str | None:
        """Why this statement does not cover the request (principal, action, resource), or None."""
        principal: _Matcher = functools.partial(_any_principal, principal_arn=ctx.principal_arn)
        action: _Matcher = functools.partial(_any_glob, value=ctx.action, ignore_case=True)
        resource: _Matcher = functools.partial(_any_glob, value=ctx.resource, ignore_case=False)
        checks = (
            (self.principals, False, principal, "principal"),
            (self.not_principals, True, principal, "principal"),
            (self.actions, False, action, "action"),
            (self.not_actions, True, action, "action"),
            (self.resources, False, resource, "resource"),
            (self.not_resources, True, resource, "resource"),
        )
        for patterns, negated, matches, what in checks:
            if patterns is None:
                continue
            if negated and matches(patterns):
                return f"{what} is excluded by Not{what.capitalize()}"
            if not negated and not matches(patterns):
                return f"{what} does not match"
        return None

    def failed_condition(self, ctx: RequestContext) -> Condition | None:
        return next((c for c in self.conditions if not c.holds(ctx)), None)


@dataclass(frozen=True)
class PolicyDocument:
    statements: tuple[Statement, ...]

    @classmethod
    def parse(cls, text: str) -> PolicyDocument:
        """Parse and validate a key policy. Raises MalformedPolicyDocumentException."""
        if len(text.encode()) > MAX_POLICY_BYTES:
            raise MalformedPolicyDocumentException(
                f"Policy exceeds the maximum size of {MAX_POLICY_BYTES} bytes"
            )
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise MalformedPolicyDocumentException(f"Policy is not valid JSON: {exc}") from None
        if not isinstance(document, dict) or "Statement" not in document:
            raise MalformedPolicyDocumentException("Policy must be an object with a Statement")
        raw = document["Statement"]
        items = [raw] if isinstance(raw, dict) else raw
        if not isinstance(items, list) or not items:
            raise MalformedPolicyDocumentException("Statement must be an object or a list")
        return cls(tuple(_parse_statement(i, s) for i, s in enumerate(items)))

    def evaluate(self, ctx: RequestContext) -> Decision:
        allowing: list[str] = []
        refusals: list[str] = []
        for statement in self.statements:
            mismatch = statement.scope_mismatch(ctx)
            failed = statement.failed_condition(ctx) if mismatch is None else None
            if mismatch is not None:
                refusals.append(f"{statement.label}: {mismatch}")
            elif failed is not None:
                refusals.append(f"{statement.label}: condition {failed.describe(ctx)} failed")
            elif statement.effect == "Deny":
                held = "; ".join(c.describe(ctx) for c in statement.conditions)
                suffix = f" (conditions held: {held})" if held else ""
                return Decision(False, True, f"explicitly denied by {statement.label}{suffix}")
            else:
                allowing.append(statement.label)
        if allowing:
            return Decision(True, False, f"allowed by {', '.join(allowing)}")
        return Decision(False, False, "no statement allows: " + "; ".join(refusals))


def _parse_statement(index: int, raw: Any) -> Statement:
    if not isinstance(raw, dict):
        raise MalformedPolicyDocumentException(f"Statement {index} is not an object")
    sid = raw.get("Sid")
    label = f"statement #{index}" + (f" (Sid {sid!r})" if sid else "")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise MalformedPolicyDocumentException(f"{label}: Effect must be Allow or Deny")
    fields = {
        name: _string_list(raw.get(name), label, name)
        for name in ("Action", "NotAction", "Resource", "NotResource")
    }
    if (fields["Action"] is None) == (fields["NotAction"] is None):
        raise MalformedPolicyDocumentException(f"{label}: needs exactly one of Action/NotAction")
    if (fields["Resource"] is None) == (fields["NotResource"] is None):
        raise MalformedPolicyDocumentException(
            f"{label}: needs exactly one of Resource/NotResource"
        )
    principals = _principals(raw.get("Principal"), label)
    not_principals = _principals(raw.get("NotPrincipal"), label)
    if (principals is None) == (not_principals is None):
        raise MalformedPolicyDocumentException(
            f"{label}: needs exactly one of Principal/NotPrincipal"
        )
    return Statement(
        label=label,
        effect=effect,
        principals=principals,
        not_principals=not_principals,
        actions=fields["Action"],
        not_actions=fields["NotAction"],
        resources=fields["Resource"],
        not_resources=fields["NotResource"],
        conditions=_conditions(raw.get("Condition"), label),
    )


def _string_list(value: Any, label: str, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise MalformedPolicyDocumentException(f"{label}: {name} must be a string or strings")
    return tuple(items)


def _principals(value: Any, label: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value == "*":
        return ("*",)
    if not isinstance(value, dict) or not value:
        raise MalformedPolicyDocumentException(f"{label}: Principal must be '*' or a map")
    found: list[str] = []
    for kind, names in value.items():
        listed = _string_list(names, label, f"Principal.{kind}") or ()
        if kind == "AWS":
            found.extend(listed)
        elif kind not in ("Service", "Federated", "CanonicalUser"):
            raise MalformedPolicyDocumentException(f"{label}: unknown principal type {kind!r}")
    return tuple(found)


def _conditions(value: Any, label: str) -> tuple[Condition, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise MalformedPolicyDocumentException(f"{label}: Condition must be a map")
    found: list[Condition] = []
    for operator, block in value.items():
        if not isinstance(operator, str) or operator.removesuffix("IfExists") not in OPERATORS:
            raise MalformedPolicyDocumentException(
                f"{label}: unsupported condition operator {operator!r}"
            )
        if not isinstance(block, dict) or not block:
            raise MalformedPolicyDocumentException(f"{label}: {operator} must map keys to values")
        for key, raw in block.items():
            found.append(Condition(operator, key, _condition_values(raw, label, operator)))
    return tuple(found)


def _condition_values(raw: Any, label: str, operator: str) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    values: list[str] = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, str | int) and not isinstance(item, bool):
            values.append(str(item))
        else:
            raise MalformedPolicyDocumentException(f"{label}: bad value in {operator}")
    if not values:
        raise MalformedPolicyDocumentException(f"{label}: {operator} has no values")
    return tuple(values)


def _any_glob(patterns: Sequence[str], value: str, ignore_case: bool) -> bool:
    return any(_glob(p, ignore_case=ignore_case).fullmatch(value) for p in patterns)


def _any_principal(patterns: Sequence[str], principal_arn: str) -> bool:
    return any(principal_matches(p, principal_arn) for p in patterns)


def principal_matches(pattern: str, principal_arn: str) -> bool:
    """`*`; an account id or account root ARN (any principal of that account); an exact ARN; or a
    role ARN matching that role's assumed-role sessions."""
    if pattern == "*":
        return True
    account = _arn_account(principal_arn)
    if _ACCOUNT_RE.match(pattern):
        return pattern == account
    if pattern == f"arn:aws:iam::{account}:root":
        return True
    if pattern == principal_arn:
        return True
    role = re.match(r"^arn:aws:sts::(\d{12}):assumed-role/([^/]+)/", principal_arn)
    if role and pattern.startswith(f"arn:aws:iam::{role.group(1)}:role/"):
        return pattern.rsplit("/", 1)[-1] == role.group(2)
    return False


def _arn_account(arn: str) -> str:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 else ""

"""Key-policy parsing and evaluation, with an explanation for every decision.

The subset of IAM policy grammar a key policy needs: statements (one or a list) with Effect,
Principal/NotPrincipal, Action/NotAction, Resource/NotResource and Condition (operators and the
request context in `conditions.py`). Conditions are AND-ed. An explicit Deny wins; otherwise at
least one Allow must apply; the default is deny.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nitrokms.sim.kms.conditions import Condition, RequestContext, glob, parse_conditions
from nitrokms.sim.kms.exceptions import MalformedPolicyDocumentException

__all__ = ["Decision", "PolicyDocument", "RequestContext", "default_policy", "principal_matches"]

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
class Decision:
    allowed: bool
    explicit_deny: bool
    explanation: str


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
        conditions=parse_conditions(raw.get("Condition"), label),
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


def _any_glob(patterns: Sequence[str], value: str, ignore_case: bool) -> bool:
    return any(glob(p, ignore_case=ignore_case).fullmatch(value) for p in patterns)


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

"""Policy conditions: the request context they read, the operators, and their parsing.

Operators: String(Not)Equals, String(Not)EqualsIgnoreCase, String(Not)Like, Arn(Not)Equals/Like,
Bool, Null and the Numeric comparisons, each with an optional `IfExists` suffix and an optional
`ForAnyValue:` / `ForAllValues:` qualifier for multi-valued keys (kms:GrantOperations,
kms:EncryptionContextKeys, aws:TagKeys). Values in one condition are OR-ed. A negated operator on
one value means "matches none of the values". On a set: ForAnyValue needs one member to satisfy
the operator, ForAllValues needs every member to (and holds for an empty or absent set). Without a
qualifier a multi-valued key behaves like ForAnyValue. Condition key names are case-insensitive
(the context is keyed by lower-cased names); values compare case-sensitively except for the
IgnoreCase operators.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nitrokms.sim.kms.exceptions import MalformedPolicyDocumentException

ConditionValue = str | tuple[str, ...]
QUALIFIERS = ("ForAnyValue:", "ForAllValues:")


@dataclass(frozen=True)
class RequestContext:
    """What a policy is evaluated against; `conditions` keys are lower-case condition key names
    and map to one value, or to a tuple for multi-valued keys.

    `absent_reasons` maps a lower-case key prefix to why keys under it are missing (for example an
    attestation document that failed verification), so an explanation can say so.
    """

    action: str
    principal_arn: str
    resource: str
    conditions: Mapping[str, ConditionValue]
    absent_reasons: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, key: str) -> ConditionValue | None:
        return self.conditions.get(key.lower())

    def why_absent(self, key: str) -> str:
        lowered = key.lower()
        for prefix, reason in self.absent_reasons.items():
            if lowered.startswith(prefix):
                return f"absent: {reason}"
        return "absent from the request"


@functools.lru_cache(maxsize=1024)
def glob(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    """IAM wildcards: `*` is any run of characters, `?` any one character; nothing else."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _numeric(test: Callable[[float, float], bool]) -> Callable[[str, str], bool]:
    def compare(want: str, got: str) -> bool:
        wanted, actual = _number(want), _number(got)
        return wanted is not None and actual is not None and test(actual, wanted)

    return compare


_POSITIVE: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda want, got: want == got,
    "StringEqualsIgnoreCase": lambda want, got: want.lower() == got.lower(),
    "StringLike": lambda want, got: glob(want, ignore_case=False).fullmatch(got) is not None,
    "ArnEquals": lambda want, got: want == got,
    "ArnLike": lambda want, got: glob(want, ignore_case=False).fullmatch(got) is not None,
    "Bool": lambda want, got: want.lower() == got.lower(),
    "NumericEquals": _numeric(lambda got, want: got == want),
    "NumericLessThan": _numeric(lambda got, want: got < want),
    "NumericLessThanEquals": _numeric(lambda got, want: got <= want),
    "NumericGreaterThan": _numeric(lambda got, want: got > want),
    "NumericGreaterThanEquals": _numeric(lambda got, want: got >= want),
}
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
    "NumericNotEquals": "NumericEquals",
}
OPERATORS = frozenset([*_POSITIVE, *_NEGATED, "Null"])


@dataclass(frozen=True)
class Condition:
    operator: str  # as written, qualifier and IfExists included
    key: str
    values: tuple[str, ...]

    @property
    def qualifier(self) -> str:
        return next((q for q in QUALIFIERS if self.operator.startswith(q)), "")

    @property
    def base_operator(self) -> str:
        return self.operator.removeprefix(self.qualifier).removesuffix("IfExists")

    def holds(self, ctx: RequestContext) -> bool:
        actual = ctx.lookup(self.key)
        base = self.base_operator
        if base == "Null":
            return any((actual is None) == (v.lower() == "true") for v in self.values)
        if self.qualifier == "ForAllValues:":
            return all(self._member_holds(a) for a in _members(actual))
        if self.qualifier == "ForAnyValue:":
            return any(self._member_holds(a) for a in _members(actual))
        if actual is None:
            return self.operator.endswith("IfExists") or base in _NEGATED
        if isinstance(actual, tuple):
            matched = any(self._matches(a) for a in actual)
            return not matched if base in _NEGATED else matched
        return self._member_holds(actual)

    def _member_holds(self, actual: str) -> bool:
        return (
            not self._matches(actual) if self.base_operator in _NEGATED else self._matches(actual)
        )

    def _matches(self, actual: str) -> bool:
        base = self.base_operator
        test = _POSITIVE[_NEGATED.get(base, base)]
        return any(test(v, actual) for v in self.values)

    def describe(self, ctx: RequestContext) -> str:
        actual = ctx.lookup(self.key)
        if actual is None:
            got = ctx.why_absent(self.key)
        else:
            got = repr(list(actual)) if isinstance(actual, tuple) else repr(actual)
        want = self.values[0] if len(self.values) == 1 else list(self.values)
        return f"{self.operator} {self.key} {want!r} (request: {got})"


def _members(actual: ConditionValue | None) -> tuple[str, ...]:
    if actual is None:
        return ()
    return actual if isinstance(actual, tuple) else (actual,)


def parse_conditions(value: Any, label: str) -> tuple[Condition, ...]:
    """A statement's Condition block. Raises MalformedPolicyDocumentException."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise MalformedPolicyDocumentException(f"{label}: Condition must be a map")
    found: list[Condition] = []
    for operator, block in value.items():
        _check_operator(operator, label)
        if not isinstance(block, dict) or not block:
            raise MalformedPolicyDocumentException(f"{label}: {operator} must map keys to values")
        for key, raw in block.items():
            condition = Condition(operator, key, _condition_values(raw, label, operator))
            if condition.base_operator.startswith("Numeric") and any(
                _number(v) is None for v in condition.values
            ):
                raise MalformedPolicyDocumentException(
                    f"{label}: {operator} needs numbers, got {list(condition.values)!r}"
                )
            found.append(condition)
    return tuple(found)


def _check_operator(operator: Any, label: str) -> None:
    if isinstance(operator, str):
        qualifier = next((q for q in QUALIFIERS if operator.startswith(q)), "")
        base = operator.removeprefix(qualifier).removesuffix("IfExists")
        if base in OPERATORS and not (qualifier and base == "Null"):
            return
    raise MalformedPolicyDocumentException(f"{label}: unsupported condition operator {operator!r}")


def _condition_values(raw: Any, label: str, operator: str) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    values: list[str] = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, str | int | float) and not isinstance(item, bool):
            values.append(str(item))
        else:
            raise MalformedPolicyDocumentException(f"{label}: bad value in {operator}")
    if not values:
        raise MalformedPolicyDocumentException(f"{label}: {operator} has no values")
    return tuple(values)

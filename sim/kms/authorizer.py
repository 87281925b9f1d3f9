"""Who may do what to a key: the key policy, then the key's grants; every decision explained.

An operation is allowed when the key policy allows it or, unless the policy explicitly denies it,
when a live grant on the key does: the caller is the grantee, the operation is among the grant's,
and its encryption context satisfies the grant's constraints (which DescribeKey and RetireGrant
ignore). A grant that allows CreateGrant lets its grantee create grants for no more operations and
with constraints at least as strict as its own. Grants are immediately consistent here, so a grant
token adds no permission; tokens are validated and a grant they name is called out in the log.

Every denial is logged (logger `nitrokms.sim.kms`) with the key, action, principal, the statement
and condition that decided it and why each grant did not apply, and raised as
AccessDeniedException with AWS's message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence

from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.conditions import ConditionValue, RequestContext
from nitrokms.sim.kms.exceptions import AccessDeniedException, MalformedPolicyDocumentException
from nitrokms.sim.kms.policy import PolicyDocument, principal_matches
from nitrokms.sim.kms.recipient import Recipient
from nitrokms.sim.kms.records import Grant, GrantConstraints, Key

log = logging.getLogger("nitrokms.sim.kms")

CONTEXT_FREE_OPERATIONS = frozenset({"DescribeKey", "RetireGrant"})


@functools.lru_cache(maxsize=256)
def parsed_policy(text: str) -> PolicyDocument:
    return PolicyDocument.parse(text)


class Authorizer:
    """Decides access questions; stateless apart from the parsed-policy cache.

    `grants` returns the live grants of a key id (none when not given).
    """

    def __init__(self, grants: Callable[[str], Sequence[Grant]] | None = None) -> None:
        self._grants = grants or (lambda key_id: ())

    def authorise(
        self,
        key: Key,
        action: str,
        caller: Credential,
        *,
        context: Mapping[str, str] | None = None,
        recipient: Recipient | None = None,
        conditions: Mapping[str, ConditionValue] | None = None,
        grant_ids: Sequence[str] = (),
        new_grant: Grant | None = None,
    ) -> None:
        """Allow by key policy or grant; otherwise log and raise AccessDeniedException."""
        ctx = self._request_context(key, action, caller, context, recipient, extra=conditions)
        decision = parsed_policy(key.policy).evaluate(ctx)
        grant_notes: list[str] = []
        if decision.allowed:
            self._warn_unverified(key, action, caller, recipient)
            return
        if not decision.explicit_deny:
            for grant in self._grants(key.key_id):
                refusal = grant_refusal(grant, action, caller.principal_arn, context, new_grant)
                named = " (named by a grant token)" if grant.grant_id in grant_ids else ""
                if refusal is None:
                    log.info(
                        "%s on %s by %s allowed by grant %s%s",
                        action, key.arn, caller.principal_arn, grant.grant_id, named,
                    )  # fmt: skip
                    self._warn_unverified(key, action, caller, recipient)
                    return
                grant_notes.append(f"grant {grant.grant_id}{named}: {refusal}")
        grants = "; ".join(grant_notes) or "none on this key"
        log.warning(
            "AccessDenied: key=%s action=%s principal=%s: key policy: %s; grants: %s",
            key.arn, action, caller.principal_arn, decision.explanation, grants,
        )  # fmt: skip
        how = (
            "with an explicit deny in a resource-based policy"
            if decision.explicit_deny
            else f"because no resource-based policy allows the {action} action"
        )
        raise AccessDeniedException(
            f"User: {caller.principal_arn} is not authorized to perform: {action} on resource: "
            f"{key.arn} {how}"
        )

    @staticmethod
    def _warn_unverified(
        key: Key, action: str, caller: Credential, recipient: Recipient | None
    ) -> None:
        if recipient is not None and not recipient.verified:
            log.warning(
                "%s on %s by %s allowed although the Recipient document did not verify (%s): "
                "neither the policy nor the grant requires attestation",
                action, key.arn, caller.principal_arn, recipient.failure,
            )  # fmt: skip

    def _request_context(
        self,
        key: Key,
        action: str,
        caller: Credential,
        context: Mapping[str, str] | None,
        recipient: Recipient | None,
        *,
        extra: Mapping[str, ConditionValue] | None,
    ) -> RequestContext:
        conditions: dict[str, ConditionValue] = {
            "aws:principalarn": caller.principal_arn,
            "aws:principalaccount": caller.account,
            "kms:calleraccount": caller.account,
            "aws:securetransport": "true",
            "kms:keyorigin": "AWS_KMS",
            "kms:keyspec": key.key_spec,
            "kms:keyusage": key.key_usage,
        }
        for tag, value in key.tags:
            conditions[f"aws:resourcetag/{tag.lower()}"] = value
        if context:
            conditions["kms:encryptioncontextkeys"] = tuple(sorted(context))
        for name, value in (context or {}).items():
            conditions[f"kms:encryptioncontext:{name.lower()}"] = value
        conditions.update({k.lower(): v for k, v in (extra or {}).items()})
        absent: dict[str, str] = {}
        if recipient is not None:
            conditions.update(recipient.condition_keys())
            absent.update(recipient.absent_reason())
        else:
            absent["kms:recipientattestation:"] = "the request has no Recipient"
        return RequestContext(action, caller.principal_arn, key.arn, conditions, absent)

    def check_lockout(self, policy: str, key_arn: str, caller: Credential, bypass: bool) -> None:
        """AWS's lockout safety check: the new policy must let the caller PutKeyPolicy again.

        Raises MalformedPolicyDocumentException for an invalid policy, or (unless `bypass`) for
        one that would lock the caller out.
        """
        document = parsed_policy(policy)
        if bypass:
            return
        ctx = RequestContext(
            "kms:PutKeyPolicy",
            caller.principal_arn,
            key_arn,
            {"aws:principalarn": caller.principal_arn, "kms:calleraccount": caller.account},
        )
        if not document.evaluate(ctx).allowed:
            raise MalformedPolicyDocumentException(
                "The new key policy will not allow you to update the key policy in the future."
            )


def grant_refusal(
    grant: Grant,
    action: str,
    principal_arn: str,
    context: Mapping[str, str] | None,
    new_grant: Grant | None = None,
) -> str | None:
    """Why `grant` does not allow `action` for this caller and context, or None if it does."""
    operation = action.removeprefix("kms:")
    if not principal_matches(grant.grantee, principal_arn):
        return f"the grantee is {grant.grantee}"
    if operation not in grant.operations:
        return f"{operation} is not among its operations {list(grant.operations)}"
    if operation == "CreateGrant" and new_grant is not None:
        return _create_grant_refusal(grant, new_grant)
    constraints = grant.constraints
    if constraints is None or operation in CONTEXT_FREE_OPERATIONS:
        return None
    if constraints.source_arn is not None:
        return f"its SourceArn constraint ({constraints.source_arn}) needs an AWS service caller"
    return context_refusal(constraints, context or {})


def context_refusal(constraints: GrantConstraints, context: Mapping[str, str]) -> str | None:
    """Why an encryption context does not satisfy a grant's constraints, or None."""
    if constraints.equals is not None and dict(constraints.equals) != dict(context):
        return (
            f"EncryptionContextEquals {dict(constraints.equals)} is not the request's "
            f"encryption context {dict(context)}"
        )
    if constraints.subset is not None and not set(constraints.subset) <= set(context.items()):
        return (
            f"EncryptionContextSubset {dict(constraints.subset)} is not within the request's "
            f"encryption context {dict(context)}"
        )
    return None


def _create_grant_refusal(grant: Grant, new: Grant) -> str | None:
    extra = sorted(set(new.operations) - set(grant.operations))
    if extra:
        return f"the new grant asks for operations {extra} beyond this grant's"
    parent = grant.constraints
    if parent is None or not parent.has_context:
        return None
    child = new.constraints or GrantConstraints()
    if parent.equals is not None:
        strict_enough = child.equals is not None and dict(child.equals) == dict(parent.equals)
    else:
        required = set(parent.subset or ())
        held = child.equals if child.equals is not None else child.subset
        strict_enough = held is not None and required <= set(held)
    if strict_enough:
        return None
    return "the new grant's encryption context constraint is less strict than this grant's"

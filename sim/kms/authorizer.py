"""Key-policy decisions for requests: builds the condition context, evaluates, logs denials.

Every denial is logged (logger `nitrokms.sim.kms`) with the key, action, principal and the
statement and condition that decided it, and raised as AccessDeniedException with AWS's message.
"""

from __future__ import annotations

import functools
import logging

from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.exceptions import AccessDeniedException, MalformedPolicyDocumentException
from nitrokms.sim.kms.models import Key
from nitrokms.sim.kms.policy import PolicyDocument, RequestContext
from nitrokms.sim.kms.recipient import Recipient

log = logging.getLogger("nitrokms.sim.kms")


@functools.lru_cache(maxsize=256)
def parsed_policy(text: str) -> PolicyDocument:
    return PolicyDocument.parse(text)


class Authorizer:
    """Decides key-policy questions; stateless apart from the parsed-policy cache."""

    def authorise(
        self,
        key: Key,
        action: str,
        caller: Credential,
        *,
        context: dict[str, str] | None = None,
        recipient: Recipient | None = None,
    ) -> None:
        """Evaluate the key policy; log and raise AccessDeniedException on a denial."""
        ctx = self._request_context(key, action, caller, context, recipient)
        decision = parsed_policy(key.policy).evaluate(ctx)
        if decision.allowed:
            if recipient is not None and not recipient.verified:
                log.warning(
                    "%s on %s by %s allowed although the Recipient document did not verify (%s): "
                    "the policy does not require attestation",
                    action,
                    key.arn,
                    caller.principal_arn,
                    recipient.failure,
                )
            return
        log.warning(
            "AccessDenied: key=%s action=%s principal=%s: %s",
            key.arn,
            action,
            caller.principal_arn,
            decision.explanation,
        )
        how = (
            "with an explicit deny in a resource-based policy"
            if decision.explicit_deny
            else f"because no resource-based policy allows the {action} action"
        )
        raise AccessDeniedException(
            f"User: {caller.principal_arn} is not authorized to perform: {action} on resource: "
            f"{key.arn} {how}"
        )

    def _request_context(
        self,
        key: Key,
        action: str,
        caller: Credential,
        context: dict[str, str] | None,
        recipient: Recipient | None,
    ) -> RequestContext:
        conditions = {
            "aws:principalarn": caller.principal_arn,
            "aws:principalaccount": caller.account,
            "kms:calleraccount": caller.account,
            "aws:securetransport": "true",
            "kms:keyorigin": "AWS_KMS",
            "kms:keyspec": key.key_spec,
            "kms:keyusage": key.key_usage,
        }
        for name, value in (context or {}).items():
            conditions[f"kms:encryptioncontext:{name.lower()}"] = value
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

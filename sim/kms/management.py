"""Key lifecycle and key-policy operations (the control plane of keys themselves).

Operations that name a key to manage take its key id or key ARN only, as KMS's do; an alias there
is NotFoundException ("Invalid keyId"). DescribeKey, like the data plane, also takes aliases.
"""

from __future__ import annotations

import logging
from typing import Any

from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.exceptions import (
    KMSInvalidStateException,
    NotFoundException,
    UnsupportedOperationException,
)
from nitrokms.sim.kms.keyspecs import KEY_SPEC_ENUM, KEY_USAGES, SYMMETRIC, spec_for_new_key
from nitrokms.sim.kms.operations import Operations, page
from nitrokms.sim.kms.params import Params
from nitrokms.sim.kms.policy import MAX_POLICY_BYTES, default_policy
from nitrokms.sim.kms.records import DISABLED, ENABLED, PENDING_DELETION
from nitrokms.sim.kms.tags import request_tags

log = logging.getLogger("nitrokms.sim.kms")

MAX_DESCRIPTION_CHARS = 8192
MIN_PENDING_DAYS, MAX_PENDING_DAYS = 7, 30
DAY_S = 86400


class KeyManagement(Operations):
    OPERATIONS = (
        "CreateKey", "DescribeKey", "ListKeys", "EnableKey", "DisableKey", "ScheduleKeyDeletion",
        "CancelKeyDeletion", "UpdateKeyDescription", "GetKeyPolicy", "PutKeyPolicy",
        "ListKeyPolicies",
    )  # fmt: skip

    def op_CreateKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        usage = p.enum("KeyUsage", KEY_USAGES)
        name = p.enum("KeySpec", KEY_SPEC_ENUM) or p.enum("CustomerMasterKeySpec", KEY_SPEC_ENUM)
        spec, usage = spec_for_new_key(name or SYMMETRIC, usage)
        origin = p.string("Origin", max_len=64) or "AWS_KMS"
        if origin != "AWS_KMS" or p.boolean("MultiRegion") or p.has("CustomKeyStoreId"):
            raise UnsupportedOperationException("Only single-Region AWS_KMS keys are supported")
        description = p.string("Description", max_len=MAX_DESCRIPTION_CHARS, min_len=0) or ""
        tags = request_tags(p) or ()
        policy = p.string("Policy", max_len=MAX_POLICY_BYTES)
        if policy is None:
            policy = default_policy(self.store.account)
        else:
            self._auth.check_lockout(
                policy, "*", caller, p.boolean("BypassPolicyLockoutSafetyCheck")
            )
        key = self.store.create_key(
            key_usage=usage, key_spec=spec.name, description=description, policy=policy, tags=tags
        )
        log.info("created key %s (%s) for %s", key.arn, spec.name, caller.principal_arn)
        return {"KeyMetadata": key.metadata()}

    def op_DescribeKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.authorised_key(p, caller, "kms:DescribeKey")
        return {"KeyMetadata": key.metadata()}

    def op_ListKeys(self, p: Params, caller: Credential) -> dict[str, Any]:
        keys = [{"KeyId": k.key_id, "KeyArn": k.arn} for k in self.store.all_keys()]
        return page(keys, "Keys", p)

    def op_EnableKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        return self._set_enabled(p, caller, "kms:EnableKey", ENABLED)

    def op_DisableKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        return self._set_enabled(p, caller, "kms:DisableKey", DISABLED)

    def _set_enabled(
        self, p: Params, caller: Credential, action: str, state: str
    ) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        self._auth.authorise(key, action, caller)
        key.require_not_pending()
        self.store.update_key(key.key_id, key_state=state)
        return {}

    def op_ScheduleKeyDeletion(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        days = p.integer("PendingWindowInDays", low=MIN_PENDING_DAYS, high=MAX_PENDING_DAYS)
        days = days or MAX_PENDING_DAYS
        self._auth.authorise(key, "kms:ScheduleKeyDeletion", caller)
        key.require_not_pending()
        deletion = round(self.store.now() + days * DAY_S, 3)
        self.store.update_key(key.key_id, key_state=PENDING_DELETION, deletion_date=deletion)
        return {
            "KeyId": key.arn,
            "DeletionDate": deletion,
            "KeyState": PENDING_DELETION,
            "PendingWindowInDays": days,
        }

    def op_CancelKeyDeletion(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        self._auth.authorise(key, "kms:CancelKeyDeletion", caller)
        if key.key_state != PENDING_DELETION:
            raise KMSInvalidStateException(f"{key.arn} is not pending deletion.")
        self.store.update_key(key.key_id, key_state=DISABLED, deletion_date=None)
        return {"KeyId": key.arn}

    def op_UpdateKeyDescription(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        description = p.string(
            "Description", required=True, max_len=MAX_DESCRIPTION_CHARS, min_len=0
        )
        self._auth.authorise(key, "kms:UpdateKeyDescription", caller)
        key.require_not_pending()
        self.store.update_key(key.key_id, description=description)
        return {}

    def op_GetKeyPolicy(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        name = _policy_name(p)
        self._auth.authorise(key, "kms:GetKeyPolicy", caller, conditions={"kms:PolicyName": name})
        return {"Policy": key.policy, "PolicyName": name}

    def op_PutKeyPolicy(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        name = _policy_name(p)
        policy = p.string("Policy", required=True, max_len=MAX_POLICY_BYTES)
        assert policy is not None
        self._auth.authorise(key, "kms:PutKeyPolicy", caller, conditions={"kms:PolicyName": name})
        self._auth.check_lockout(
            policy, key.arn, caller, p.boolean("BypassPolicyLockoutSafetyCheck")
        )
        self.store.update_key(key.key_id, policy=policy)
        log.info("policy of %s replaced by %s", key.arn, caller.principal_arn)
        return {}

    def op_ListKeyPolicies(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        self._auth.authorise(key, "kms:ListKeyPolicies", caller)
        return page(["default"], "PolicyNames", p)


def _policy_name(p: Params) -> str:
    """The only policy a key here has is `default` (no RAM sharing: AWS_RAM is not found)."""
    name = p.string("PolicyName", max_len=128) or "default"
    if name != "default":
        raise NotFoundException(f"No such policy exists: {name}")
    return name

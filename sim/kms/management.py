"""Key, alias and key-policy management operations (the control plane)."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.authorizer import Authorizer
from nitrokms.sim.kms.exceptions import (
    InvalidAliasNameException,
    InvalidMarkerException,
    KMSInvalidStateException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)
from nitrokms.sim.kms.models import DISABLED, ENABLED, PENDING_DELETION, Key, KeyStore
from nitrokms.sim.kms.params import Params
from nitrokms.sim.kms.policy import MAX_POLICY_BYTES, default_policy

log = logging.getLogger("nitrokms.sim.kms")

SYMMETRIC = "SYMMETRIC_DEFAULT"
HMAC_SPECS = frozenset({"HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512"})
ASYMMETRIC_SPECS = frozenset(
    {"RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521"}
    | {"ECC_SECG_P256K1", "SM2", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87"}
)
KEY_USAGES = frozenset({"ENCRYPT_DECRYPT", "SIGN_VERIFY", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"})
_ALIAS_RE = re.compile(r"^alias/[a-zA-Z0-9/_-]+$")


class KeyManagement:
    def __init__(self, store: KeyStore, authorizer: Authorizer) -> None:
        self.store = store
        self._auth = authorizer

    def op_CreateKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        usage = p.enum("KeyUsage", KEY_USAGES, "ENCRYPT_DECRYPT")
        spec = p.string("KeySpec", max_len=64) or p.string("CustomerMasterKeySpec", max_len=64)
        spec = spec or SYMMETRIC
        _check_key_spec(spec, usage)
        if (p.string("Origin", max_len=64) or "AWS_KMS") != "AWS_KMS" or p.boolean("MultiRegion"):
            raise UnsupportedOperationException("Only single-Region AWS_KMS keys are supported")
        description = p.string("Description", max_len=8192, min_len=0) or ""
        policy = p.string("Policy", max_len=MAX_POLICY_BYTES)
        if policy is None:
            policy = default_policy(self.store.account)
        else:
            self._auth.check_lockout(
                policy, "*", caller, p.boolean("BypassPolicyLockoutSafetyCheck")
            )
        key = self.store.create_key(
            key_usage=usage or "ENCRYPT_DECRYPT",
            key_spec=spec,
            description=description,
            policy=policy,
        )
        log.info("created key %s (%s) for %s", key.arn, spec, caller.principal_arn)
        return {"KeyMetadata": key.metadata()}

    def op_DescribeKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        p.grant_tokens()
        key = self.store.resolve(p.required_string("KeyId"))
        self._auth.authorise(key, "kms:DescribeKey", caller)
        return {"KeyMetadata": key.metadata()}

    def op_ListKeys(self, p: Params, caller: Credential) -> dict[str, Any]:
        keys = [{"KeyId": k.key_id, "KeyArn": k.arn} for k in self.store.all_keys()]
        return _page(keys, "Keys", p)

    def op_EnableKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        return self._set_enabled(p, caller, "kms:EnableKey", ENABLED)

    def op_DisableKey(self, p: Params, caller: Credential) -> dict[str, Any]:
        return self._set_enabled(p, caller, "kms:DisableKey", DISABLED)

    def _set_enabled(
        self, p: Params, caller: Credential, action: str, state: str
    ) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"))
        self._auth.authorise(key, action, caller)
        _require_not_pending(key)
        self.store.update_key(key.key_id, key_state=state)
        return {}

    def op_ScheduleKeyDeletion(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"))
        days = p.integer("PendingWindowInDays", low=7, high=30) or 30
        self._auth.authorise(key, "kms:ScheduleKeyDeletion", caller)
        _require_not_pending(key)
        deletion = round(time.time() + days * 86400, 3)
        self.store.update_key(key.key_id, key_state=PENDING_DELETION, deletion_date=deletion)
        return {
            "KeyId": key.arn,
            "DeletionDate": deletion,
            "KeyState": PENDING_DELETION,
            "PendingWindowInDays": days,
        }

    def op_CancelKeyDeletion(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"))
        self._auth.authorise(key, "kms:CancelKeyDeletion", caller)
        if key.key_state != PENDING_DELETION:
            raise KMSInvalidStateException(f"{key.arn} is not pending deletion.")
        self.store.update_key(key.key_id, key_state=DISABLED, deletion_date=None)
        return {"KeyId": key.arn}

    def op_GetKeyPolicy(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"))
        _policy_name(p)
        self._auth.authorise(key, "kms:GetKeyPolicy", caller)
        return {"Policy": key.policy, "PolicyName": "default"}

    def op_PutKeyPolicy(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"))
        _policy_name(p)
        policy = p.string("Policy", required=True, max_len=MAX_POLICY_BYTES)
        assert policy is not None
        self._auth.authorise(key, "kms:PutKeyPolicy", caller)
        self._auth.check_lockout(
            policy, key.arn, caller, p.boolean("BypassPolicyLockoutSafetyCheck")
        )
        self.store.update_key(key.key_id, policy=policy)
        log.info("policy of %s replaced by %s", key.arn, caller.principal_arn)
        return {}

    def op_CreateAlias(self, p: Params, caller: Credential) -> dict[str, Any]:
        name = _alias_name(p)
        key = self.store.resolve(_target_key(p))
        self._auth.authorise(key, "kms:CreateAlias", caller)
        _require_not_pending(key)
        self.store.create_alias(name, key.key_id)
        return {}

    def op_UpdateAlias(self, p: Params, caller: Credential) -> dict[str, Any]:
        name = _alias_name(p)
        old = self.store.resolve(name)
        key = self.store.resolve(_target_key(p))
        self._auth.authorise(old, "kms:UpdateAlias", caller)
        self._auth.authorise(key, "kms:UpdateAlias", caller)
        _require_not_pending(key)
        self.store.update_alias(name, key.key_id)
        return {}

    def op_DeleteAlias(self, p: Params, caller: Credential) -> dict[str, Any]:
        name = _alias_name(p)
        alias = self.store.alias(name)
        key = self.store.get(alias.target_key_id)
        if key is not None:
            self._auth.authorise(key, "kms:DeleteAlias", caller)
        self.store.delete_alias(name)
        return {}

    def op_ListAliases(self, p: Params, caller: Credential) -> dict[str, Any]:
        key_ref = p.string("KeyId")
        key_id = self.store.resolve(key_ref).key_id if key_ref else None
        aliases = [
            {
                "AliasName": a.name,
                "AliasArn": self.store.alias_arn(a.name),
                "TargetKeyId": a.target_key_id,
                "CreationDate": a.creation_date,
                "LastUpdatedDate": a.last_updated,
            }
            for a in self.store.all_aliases()
            if key_id is None or a.target_key_id == key_id
        ]
        return _page(aliases, "Aliases", p)


def _check_key_spec(spec: str, usage: str | None) -> None:
    """SYMMETRIC_DEFAULT for ENCRYPT_DECRYPT and HMAC_* for GENERATE_VERIFY_MAC are supported;
    asymmetric specs are UnsupportedOperationException; anything else ValidationException."""
    if spec in ASYMMETRIC_SPECS:
        raise UnsupportedOperationException(f"KeySpec {spec} is not supported by this local KMS")
    if spec == SYMMETRIC and usage == "ENCRYPT_DECRYPT":
        return
    if spec in HMAC_SPECS and usage == "GENERATE_VERIFY_MAC":
        return
    if spec not in HMAC_SPECS and spec != SYMMETRIC:
        raise ValidationException(f"KeySpec {spec[:64]!r} is not a valid key spec")
    raise ValidationException(f"KeyUsage {usage} is not compatible with KeySpec {spec}")


def _require_not_pending(key: Key) -> None:
    if key.key_state == PENDING_DELETION:
        raise KMSInvalidStateException(f"{key.arn} is pending deletion.")


def _policy_name(p: Params) -> None:
    name = p.string("PolicyName", max_len=128)
    if name not in (None, "default"):
        raise NotFoundException(f"No such policy exists: {name}")


def _alias_name(p: Params) -> str:
    name = p.required_string("AliasName", max_len=256)
    if not _ALIAS_RE.match(name):
        raise ValidationException(
            f"1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: ^alias/[a-zA-Z0-9/_-]+$"
        )
    if name.startswith("alias/aws/"):
        raise InvalidAliasNameException("Alias must not begin with 'alias/aws/'")
    return name


def _target_key(p: Params) -> str:
    ref = p.required_string("TargetKeyId")
    if ref.startswith("alias/") or ":alias/" in ref:
        raise ValidationException("TargetKeyId must be a key id or key ARN, not an alias")
    return ref


def _page(items: list[dict[str, Any]], name: str, p: Params) -> dict[str, Any]:
    limit = p.integer("Limit", low=1, high=1000) or 100
    marker = p.string("Marker", max_len=1024)
    start = 0
    if marker is not None:
        if not marker.isdigit() or int(marker) > len(items):
            raise InvalidMarkerException("Invalid marker")
        start = int(marker)
    page = items[start : start + limit]
    result: dict[str, Any] = {name: page, "Truncated": start + limit < len(items)}
    if result["Truncated"]:
        result["NextMarker"] = str(start + limit)
    return result

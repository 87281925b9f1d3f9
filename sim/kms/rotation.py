"""Key rotation: Enable/DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand,
ListKeyRotations.

Only symmetric encryption keys rotate (others: UnsupportedOperationException). A rotation appends
a new material version; ciphertexts name the version that sealed them, so they still decrypt.
On-demand rotation completes at once (no OnDemandRotationStartDate) and is limited to 25 per key;
automatic rotation happens when a request touches a key whose NextRotationDate has passed.
"""

from __future__ import annotations

from typing import Any

from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.conditions import ConditionValue
from nitrokms.sim.kms.exceptions import LimitExceededException, UnsupportedOperationException
from nitrokms.sim.kms.models import DAY_S
from nitrokms.sim.kms.operations import Operations, page
from nitrokms.sim.kms.params import Params
from nitrokms.sim.kms.records import PENDING_DELETION, Key

DEFAULT_PERIOD_DAYS = 365
MIN_PERIOD_DAYS, MAX_PERIOD_DAYS = 90, 2560
MAX_ON_DEMAND_ROTATIONS = 25


class RotationOperations(Operations):
    OPERATIONS = (
        "EnableKeyRotation", "DisableKeyRotation", "GetKeyRotationStatus", "RotateKeyOnDemand",
        "ListKeyRotations",
    )  # fmt: skip

    def _rotatable(
        self,
        p: Params,
        caller: Credential,
        action: str,
        conditions: dict[str, ConditionValue] | None = None,
    ) -> Key:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        self._auth.authorise(key, action, caller, conditions=conditions)
        if not key.is_symmetric_encryption:
            raise UnsupportedOperationException(
                f"{key.arn} is a {key.key_spec} key: only symmetric encryption keys rotate."
            )
        return key

    def op_EnableKeyRotation(self, p: Params, caller: Credential) -> dict[str, Any]:
        days = p.integer("RotationPeriodInDays", low=MIN_PERIOD_DAYS, high=MAX_PERIOD_DAYS)
        days = days or DEFAULT_PERIOD_DAYS
        conditions: dict[str, ConditionValue] = {"kms:RotationPeriodInDays": str(days)}
        key = self._rotatable(p, caller, "kms:EnableKeyRotation", conditions)
        key.require_usable()
        next_rotation = round(self.store.now() + days * DAY_S, 3)
        self.store.update_key(key.key_id, rotation_period_days=days, next_rotation=next_rotation)
        return {}

    def op_DisableKeyRotation(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self._rotatable(p, caller, "kms:DisableKeyRotation")
        key.require_usable()
        self.store.update_key(key.key_id, rotation_period_days=None, next_rotation=None)
        return {}

    def op_GetKeyRotationStatus(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self._rotatable(p, caller, "kms:GetKeyRotationStatus")
        enabled = key.rotation_period_days is not None and key.key_state != PENDING_DELETION
        status: dict[str, Any] = {"KeyId": key.arn, "KeyRotationEnabled": enabled}
        if enabled:
            status["RotationPeriodInDays"] = key.rotation_period_days
            status["NextRotationDate"] = key.next_rotation
        return status

    def op_RotateKeyOnDemand(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self._rotatable(p, caller, "kms:RotateKeyOnDemand")
        key.require_usable()
        done = sum(1 for m in key.materials if m.rotation == "ON_DEMAND")
        if done >= MAX_ON_DEMAND_ROTATIONS:
            raise LimitExceededException(
                "The on-demand rotations limit has been reached for the given keyId. No more "
                f"on-demand rotations can be performed for this key: {key.arn}"
            )
        self.store.rotate(key.key_id, "ON_DEMAND")
        return {"KeyId": key.arn}

    def op_ListKeyRotations(self, p: Params, caller: Credential) -> dict[str, Any]:
        include = p.enum("IncludeKeyMaterial", ("ALL_KEY_MATERIAL", "ROTATIONS_ONLY"))
        key = self._rotatable(p, caller, "kms:ListKeyRotations")
        rotations = []
        for index, material in enumerate(key.materials):
            if material.rotation is None and include != "ALL_KEY_MATERIAL":
                continue
            entry: dict[str, Any] = {
                "KeyId": key.arn,
                "KeyMaterialId": material.material_id,
                "KeyMaterialState": "CURRENT" if index == key.current_version else "NON_CURRENT",
            }
            if material.rotation is not None:
                entry |= {"RotationDate": material.created, "RotationType": material.rotation}
            rotations.append(entry)
        return page(rotations, "Rotations", p)

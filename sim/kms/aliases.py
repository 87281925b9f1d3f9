"""Alias operations: CreateAlias, UpdateAlias, DeleteAlias, ListAliases."""

from __future__ import annotations

import re
from typing import Any

from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.exceptions import InvalidAliasNameException, ValidationException
from nitrokms.sim.kms.operations import Operations, page
from nitrokms.sim.kms.params import Params

_ALIAS_RE = re.compile(r"^alias/[a-zA-Z0-9/_-]+$")


class AliasOperations(Operations):
    OPERATIONS = ("CreateAlias", "UpdateAlias", "DeleteAlias", "ListAliases")

    def op_CreateAlias(self, p: Params, caller: Credential) -> dict[str, Any]:
        name = _alias_name(p)
        key = self.store.resolve(_target_key(p))
        self._auth.authorise(key, "kms:CreateAlias", caller)
        key.require_not_pending()
        self.store.create_alias(name, key.key_id)
        return {}

    def op_UpdateAlias(self, p: Params, caller: Credential) -> dict[str, Any]:
        name = _alias_name(p)
        old = self.store.resolve(name)
        key = self.store.resolve(_target_key(p))
        self._auth.authorise(old, "kms:UpdateAlias", caller)
        self._auth.authorise(key, "kms:UpdateAlias", caller)
        key.require_not_pending()
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
        return page(aliases, "Aliases", p)


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

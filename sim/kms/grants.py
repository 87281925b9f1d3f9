"""Grant operations: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.

What a live grant allows is decided in `authorizer.py`; here grants are validated, stored and
deleted. CreateGrant checks each operation against the key (no Sign on a symmetric key, no
GenerateDataKey on an asymmetric one: ValidationException) and refuses encryption-context
constraints on keys whose operations take no encryption context. A repeated Name with identical
parameters returns the existing GrantId with a fresh token. A grant is retired by its retiring
principal, by its grantee when it lists RetireGrant, or by a principal of the account that issued
it; revoking takes kms:RevokeGrant in the key policy. Grants to AWS service principals
(GranteeServicePrincipal) are not supported: nothing here calls as a service.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from nitrokms.sim.kms import grant_tokens
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.authorizer import CONTEXT_FREE_OPERATIONS
from nitrokms.sim.kms.exceptions import (
    AccessDeniedException,
    InvalidArnException,
    InvalidGrantIdException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)
from nitrokms.sim.kms.operations import Operations, dry_run, page
from nitrokms.sim.kms.params import Params, constraint_error
from nitrokms.sim.kms.policy import principal_matches
from nitrokms.sim.kms.records import Grant, GrantConstraints, Key, Pairs

log = logging.getLogger("nitrokms.sim.kms")

GRANT_OPERATIONS = (
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
    "DeriveSharedSecret", "Encapsulate", "Decapsulate",
)  # fmt: skip
MAX_GRANTS_PER_KEY = 50000
MAX_CONSTRAINT_PAIRS = 8
MAX_CONSTRAINT_VALUE_CHARS = 384
DEFAULT_GRANT_PAGE, MAX_GRANT_PAGE = 50, 100
_PRINCIPAL_RE = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:[\w+=,.@:/-]+$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9:/_-]{1,256}$")
_SOURCE_ARN_RE = re.compile(r"^arn:aws[a-z0-9-]*:[a-z0-9-]+:[a-z0-9-]*:[0-9]{12}:.+$")
_NOT_GRANT_CONDITIONS = {"kms:GrantIsForAWSResource": "false"}


class GrantOperations(Operations):
    OPERATIONS = ("CreateGrant", "ListGrants", "ListRetirableGrants", "RetireGrant", "RevokeGrant")

    def op_CreateGrant(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        if p.has("GranteeServicePrincipal") or p.has("RetiringServicePrincipal"):
            raise UnsupportedOperationException(
                "Grants to AWS service principals are not supported"
            )
        grantee = _required_principal(p, "GranteePrincipal")
        retiring = _principal(p, "RetiringPrincipal")
        operations = _operations(p)
        constraints = _constraints(p.raw("Constraints"))
        name = p.string("Name", max_len=256)
        if name is not None and not _NAME_RE.match(name):
            raise constraint_error(
                "Name", name, "satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
            )
        grant_ids = self.grant_ids(p)
        grant = Grant(
            grant_tokens.new_grant_id(), key.key_id, key.arn, name, self.store.now(), grantee,
            retiring, operations, constraints, caller.account,
        )  # fmt: skip
        context = dict(constraints.equals or constraints.subset or ()) if constraints else {}
        self._auth.authorise(
            key, "kms:CreateGrant", caller, context=context, grant_ids=grant_ids,
            conditions=_create_conditions(grant), new_grant=grant,
        )  # fmt: skip
        key.require_usable()
        _check_fits_key(key, operations, constraints)
        dry_run(p)
        stored = self.store.add_grant(grant, limit=MAX_GRANTS_PER_KEY)
        log.info("grant %s on %s for %s: %s", stored.grant_id, key.arn, grantee, operations)
        return {
            "GrantId": stored.grant_id,
            "GrantToken": grant_tokens.issue(self.store.token_key, stored.grant_id),
        }

    def op_ListGrants(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        grant_id = _grant_id(p)
        grantee = p.string("GranteePrincipal", max_len=256)
        self._auth.authorise(key, "kms:ListGrants", caller, conditions=_NOT_GRANT_CONDITIONS)
        grants = [
            g.entry()
            for g in self.store.grants(key.key_id)
            if grant_id in (None, g.grant_id) and grantee in (None, g.grantee)
        ]
        return page(grants, "Grants", p, default=DEFAULT_GRANT_PAGE, most=MAX_GRANT_PAGE)

    def op_ListRetirableGrants(self, p: Params, caller: Credential) -> dict[str, Any]:
        if p.has("RetiringServicePrincipal"):
            raise UnsupportedOperationException("Service principals are not supported")
        retiring = _required_principal(p, "RetiringPrincipal")
        if retiring.split(":")[4] != caller.account:
            raise AccessDeniedException(
                f"User: {caller.principal_arn} is not authorized to perform: "
                f"kms:ListRetirableGrants on resource: {retiring}"
            )
        grants = [g.entry() for g in self.store.grants() if g.retiring == retiring]
        return page(grants, "Grants", p, default=DEFAULT_GRANT_PAGE, most=MAX_GRANT_PAGE)

    def op_RetireGrant(self, p: Params, caller: Credential) -> dict[str, Any]:
        token = p.string("GrantToken", max_len=grant_tokens.TOKEN_CHARS * 2)
        if token is not None:
            grant = self._existing(grant_tokens.grant_id_of(self.store.token_key, token))
        elif p.has("GrantId") and p.has("KeyId"):
            key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
            grant = self._existing(_required_grant_id(p), key)
        else:
            raise ValidationException("Specify a GrantToken, or a GrantId and a KeyId.")
        _authorise_retire(grant, caller)
        dry_run(p)
        self.store.delete_grant(grant.grant_id)
        log.info(
            "grant %s on %s retired by %s", grant.grant_id, grant.key_arn, caller.principal_arn
        )
        return {}

    def op_RevokeGrant(self, p: Params, caller: Credential) -> dict[str, Any]:
        key = self.store.resolve(p.required_string("KeyId"), allow_alias=False)
        grant = self._existing(_required_grant_id(p), key)
        self._auth.authorise(key, "kms:RevokeGrant", caller, conditions=_NOT_GRANT_CONDITIONS)
        dry_run(p)
        self.store.delete_grant(grant.grant_id)
        log.info("grant %s on %s revoked by %s", grant.grant_id, key.arn, caller.principal_arn)
        return {}

    def _existing(self, grant_id: str, key: Key | None = None) -> Grant:
        grant = self.store.grant(grant_id)
        if grant is None or (key is not None and grant.key_id != key.key_id):
            where = f" on {key.arn}" if key is not None else ""
            raise NotFoundException(f"Grant {grant_id} does not exist{where}.")
        return grant


def _authorise_retire(grant: Grant, caller: Credential) -> None:
    principal = caller.principal_arn
    if grant.retiring is not None and principal_matches(grant.retiring, principal):
        return
    if "RetireGrant" in grant.operations and principal_matches(grant.grantee, principal):
        return
    if caller.account == grant.issuing_account:
        return
    log.warning(
        "AccessDenied: grant %s on %s: %s is not its retiring principal (%s), not a grantee "
        "allowed RetireGrant, and not in the issuing account %s",
        grant.grant_id, grant.key_arn, principal, grant.retiring, grant.issuing_account,
    )  # fmt: skip
    raise AccessDeniedException(
        f"User: {principal} is not authorized to perform: kms:RetireGrant on resource: "
        f"{grant.key_arn}"
    )


def _create_conditions(grant: Grant) -> dict[str, Any]:
    conditions: dict[str, Any] = {
        "kms:GrantOperations": grant.operations,
        "kms:GranteePrincipal": grant.grantee,
        **_NOT_GRANT_CONDITIONS,
    }
    if grant.retiring is not None:
        conditions["kms:RetiringPrincipal"] = grant.retiring
    constraints = grant.constraints
    if constraints is not None and constraints.has_context:
        kinds = ("EncryptionContextEquals", constraints.equals), (
            "EncryptionContextSubset", constraints.subset,
        )  # fmt: skip
        conditions["kms:GrantConstraintType"] = tuple(k for k, v in kinds if v is not None)
    return conditions


def _principal(p: Params, name: str) -> str | None:
    value = p.string(name, max_len=256)
    if value is not None and not _PRINCIPAL_RE.match(value):
        raise InvalidArnException(f"{name} {value[:256]!r} is not an IAM principal ARN.")
    return value


def _operations(p: Params) -> tuple[str, ...]:
    raw = p.raw("Operations")
    if not isinstance(raw, list) or not raw:
        raise ValidationException("Operations must be a non-empty list of grant operations")
    for item in raw:
        if not isinstance(item, str) or item not in GRANT_OPERATIONS:
            raise constraint_error(
                "Operations", item, f"satisfy enum value set: [{', '.join(GRANT_OPERATIONS)}]"
            )
    return tuple(dict.fromkeys(raw))


def _constraint_pairs(value: Any, name: str) -> Pairs | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_CONSTRAINT_PAIRS:
        raise ValidationException(f"{name} must be a map of at most {MAX_CONSTRAINT_PAIRS} pairs")
    for key, item in value.items():
        if not isinstance(item, str) or not key or len(item) > MAX_CONSTRAINT_VALUE_CHARS:
            raise ValidationException(
                f"{name} must map non-empty strings to strings of at most "
                f"{MAX_CONSTRAINT_VALUE_CHARS} characters"
            )
    return tuple(sorted(value.items()))


def _constraints(raw: Any) -> GrantConstraints | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValidationException("Constraints must be an object")
    source_arn = raw.get("SourceArn")
    if source_arn is not None and (
        not isinstance(source_arn, str) or not _SOURCE_ARN_RE.match(source_arn)
    ):
        raise ValidationException("Constraints.SourceArn must be an ARN")
    constraints = GrantConstraints(
        subset=_constraint_pairs(raw.get("EncryptionContextSubset"), "EncryptionContextSubset"),
        equals=_constraint_pairs(raw.get("EncryptionContextEquals"), "EncryptionContextEquals"),
        source_arn=source_arn,
    )
    return constraints if constraints != GrantConstraints() else None


def _check_fits_key(
    key: Key, operations: tuple[str, ...], constraints: GrantConstraints | None
) -> None:
    allowed = key.spec.grant_operations(key.key_usage)
    unfit = [op for op in operations if op not in allowed]
    if unfit:
        raise ValidationException(
            f"Grant operations {unfit} are not valid for a {key.key_spec} key with key usage "
            f"{key.key_usage}."
        )
    crypto = [op for op in operations if op not in CONTEXT_FREE_OPERATIONS | {"CreateGrant"}]
    context_constrained = constraints is not None and constraints.has_context
    if context_constrained and crypto and not key.is_symmetric_encryption:
        raise ValidationException(
            f"Encryption context grant constraints are not supported for {crypto} on "
            f"{key.key_spec} keys: their operations take no encryption context."
        )


def _required_principal(p: Params, name: str) -> str:
    value = _principal(p, name)
    if value is None:
        raise constraint_error(name, None, "not be null")
    return value


def _grant_id(p: Params) -> str | None:
    value = p.string("GrantId", max_len=128)
    if value is not None and not grant_tokens.is_grant_id(value):
        raise InvalidGrantIdException(f"Invalid GrantId '{value}'")
    return value


def _required_grant_id(p: Params) -> str:
    value = _grant_id(p)
    if value is None:
        raise constraint_error("GrantId", None, "not be null")
    return value

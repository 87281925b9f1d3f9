"""The local KMS's records (keys, aliases, grants) and their JSON form in the state file.

Records are frozen; a change replaces the record. A key holds every version of its material, oldest
first: rotation appends one, and a ciphertext names the version that sealed it. Secrets (material)
are kept out of reprs.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from nitrokms.sim.kms.exceptions import DisabledException, KMSInvalidStateException
from nitrokms.sim.kms.keyspecs import SPECS, SYMMETRIC, KeySpec

ENABLED, DISABLED, PENDING_DELETION = "Enabled", "Disabled", "PendingDeletion"
Pairs = tuple[tuple[str, str], ...]


def material_id(key_id: str, secret: bytes) -> str:
    """KMS's KeyMaterialId shape (64 hex digits), derived so it names but does not reveal."""
    return hashlib.sha256(b"nitrokms key material id\0" + key_id.encode() + secret).hexdigest()


@dataclass(frozen=True)
class Material:
    material_id: str
    secret: bytes = field(repr=False)
    created: float
    rotation: str | None = None  # None for the first material, else AUTOMATIC or ON_DEMAND


@dataclass(frozen=True)
class Key:
    key_id: str
    arn: str
    account: str
    creation_date: float
    key_state: str
    key_usage: str
    key_spec: str
    description: str
    policy: str
    materials: tuple[Material, ...] = field(repr=False)
    deletion_date: float | None = None
    tags: Pairs = ()
    rotation_period_days: int | None = None
    next_rotation: float | None = None

    @property
    def spec(self) -> KeySpec:
        return SPECS[self.key_spec]

    @property
    def material(self) -> bytes:
        """The current material's secret (the one new ciphertexts and signatures use)."""
        return self.materials[-1].secret

    @property
    def current_version(self) -> int:
        return len(self.materials) - 1

    def material_at(self, version: int) -> Material | None:
        return self.materials[version] if 0 <= version < len(self.materials) else None

    @property
    def is_symmetric_encryption(self) -> bool:
        return self.key_spec == SYMMETRIC

    def metadata(self) -> dict[str, Any]:
        """DescribeKey's `KeyMetadata`."""
        meta: dict[str, Any] = {
            "AWSAccountId": self.account,
            "KeyId": self.key_id,
            "Arn": self.arn,
            "CreationDate": self.creation_date,
            "Enabled": self.key_state == ENABLED,
            "Description": self.description,
            "KeyUsage": self.key_usage,
            "KeyState": self.key_state,
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": self.key_spec,
            "KeySpec": self.key_spec,
            "MultiRegion": False,
            **self.spec.algorithms(self.key_usage),
        }
        if self.is_symmetric_encryption:
            meta["CurrentKeyMaterialId"] = self.materials[-1].material_id
        if self.deletion_date is not None:
            meta["DeletionDate"] = self.deletion_date
        return meta

    def require_usable(self) -> None:
        """Raise DisabledException / KMSInvalidStateException unless the key can be used."""
        if self.key_state == DISABLED:
            raise DisabledException(f"{self.arn} is disabled.")
        self.require_not_pending()

    def require_not_pending(self) -> None:
        if self.key_state == PENDING_DELETION:
            raise KMSInvalidStateException(f"{self.arn} is pending deletion.")


@dataclass(frozen=True)
class Alias:
    name: str
    target_key_id: str
    creation_date: float
    last_updated: float


@dataclass(frozen=True)
class GrantConstraints:
    subset: Pairs | None = None
    equals: Pairs | None = None
    source_arn: str | None = None

    @property
    def has_context(self) -> bool:
        return self.subset is not None or self.equals is not None

    def to_json(self) -> dict[str, Any]:
        shape: dict[str, Any] = {}
        if self.subset is not None:
            shape["EncryptionContextSubset"] = dict(self.subset)
        if self.equals is not None:
            shape["EncryptionContextEquals"] = dict(self.equals)
        if self.source_arn is not None:
            shape["SourceArn"] = self.source_arn
        return shape


@dataclass(frozen=True)
class Grant:
    grant_id: str
    key_id: str
    key_arn: str
    name: str | None
    creation_date: float
    grantee: str
    retiring: str | None
    operations: tuple[str, ...]
    constraints: GrantConstraints | None
    issuing_account: str

    def entry(self) -> dict[str, Any]:
        """ListGrants' `GrantListEntry`."""
        entry: dict[str, Any] = {
            "KeyId": self.key_arn,
            "GrantId": self.grant_id,
            "CreationDate": self.creation_date,
            "GranteePrincipal": self.grantee,
            "IssuingAccount": f"arn:aws:iam::{self.issuing_account}:root",
            "Operations": list(self.operations),
        }
        if self.name is not None:
            entry["Name"] = self.name
        if self.retiring is not None:
            entry["RetiringPrincipal"] = self.retiring
        if self.constraints is not None:
            entry["Constraints"] = self.constraints.to_json()
        return entry

    def same_parameters(self, other: Grant) -> bool:
        """Whether a CreateGrant retry with the same Name asks for this very grant."""
        ignored = {"grant_id", "creation_date"}
        return all(
            getattr(self, f.name) == getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ignored
        )


def key_to_json(key: Key) -> dict[str, Any]:
    record = dataclasses.asdict(key)
    record["materials"] = [
        {**dataclasses.asdict(m), "secret": base64.b64encode(m.secret).decode()}
        for m in key.materials
    ]
    record["tags"] = [list(pair) for pair in key.tags]
    return record


def key_from_json(record: dict[str, Any], version: int) -> Key:
    """A key record from the state file; version 1 files held one `material` and no tags."""
    record = dict(record)
    if version == 1:
        secret = base64.b64decode(record.pop("material"), validate=True)
        first = Material(material_id(record["key_id"], secret), secret, record["creation_date"])
        record["materials"] = [first]
    else:
        record["materials"] = [
            Material(**(m | {"secret": base64.b64decode(m["secret"], validate=True)}))
            for m in record["materials"]
        ]
        record["tags"] = tuple((str(k), str(v)) for k, v in record["tags"])
    record["materials"] = tuple(record["materials"])
    if record["key_spec"] not in SPECS:
        raise ValueError(f"unknown key spec {record['key_spec']!r}")
    return Key(**record)


def grant_to_json(grant: Grant) -> dict[str, Any]:
    return dataclasses.asdict(grant)


def grant_from_json(record: dict[str, Any]) -> Grant:
    record = dict(record)
    record["operations"] = tuple(record["operations"])
    constraints = record["constraints"]
    if constraints is not None:
        record["constraints"] = GrantConstraints(
            subset=_pairs(constraints["subset"]),
            equals=_pairs(constraints["equals"]),
            source_arn=constraints["source_arn"],
        )
    return Grant(**record)


def _pairs(value: Any) -> Pairs | None:
    return None if value is None else tuple((str(k), str(v)) for k, v in value)

"""Keys, aliases and key states, persisted under the state directory.

The whole store is one JSON document (`keys.json`, mode 0600, key material included: this is a test
harness). Every mutation runs under one lock and is written atomically (temporary file, fsync,
rename, fsync of the directory) before the caller answers, so an acknowledged change survives a
kill at any moment. Records are frozen; a mutation replaces the record.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nitrokms.sim.files import atomic_write
from nitrokms.sim.kms import crypto
from nitrokms.sim.kms.exceptions import (
    AlreadyExistsException,
    DisabledException,
    KMSInvalidStateException,
    NotFoundException,
)

STATE_FILE = "keys.json"
STATE_VERSION = 1
ENABLED, DISABLED, PENDING_DELETION = "Enabled", "Disabled", "PendingDeletion"


class StateFileError(Exception):
    """The state directory holds a file this version cannot read (raised at startup)."""


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
    material: bytes = field(repr=False)
    deletion_date: float | None = None

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
        }
        if self.key_usage == "ENCRYPT_DECRYPT":
            meta["EncryptionAlgorithms"] = ["SYMMETRIC_DEFAULT"]
        else:
            meta["MacAlgorithms"] = [self.key_spec.replace("HMAC_", "HMAC_SHA_")]
        if self.deletion_date is not None:
            meta["DeletionDate"] = self.deletion_date
        return meta

    def require_usable(self) -> None:
        """Raise DisabledException / KMSInvalidStateException unless the key can be used."""
        if self.key_state == DISABLED:
            raise DisabledException(f"{self.arn} is disabled.")
        if self.key_state == PENDING_DELETION:
            raise KMSInvalidStateException(f"{self.arn} is pending deletion.")


@dataclass(frozen=True)
class Alias:
    name: str
    target_key_id: str
    creation_date: float
    last_updated: float


class KeyStore:
    """The key and alias registry of one account in one region."""

    def __init__(self, state_dir: Path, *, region: str, account: str) -> None:
        self.region = region
        self.account = account
        self._path = Path(state_dir) / STATE_FILE
        self._lock = threading.RLock()
        self._keys: dict[str, Key] = {}
        self._aliases: dict[str, Alias] = {}
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self._load()

    def key_arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:key/{key_id}"

    def alias_arn(self, name: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:{name}"

    # ----- reads

    def resolve(self, key_ref: str) -> Key:
        """Find a key by id, key ARN, alias name or alias ARN. Raises NotFoundException."""
        with self._lock:
            if key_ref.startswith("alias/") or ":alias/" in key_ref:
                return self._resolve_alias(key_ref)
            key_id = self._key_id_from_ref(key_ref)
            key = self._keys.get(key_id)
            if key is None:
                raise NotFoundException(f"Key '{self.key_arn(key_id)}' does not exist")
            return key

    def get(self, key_id: str) -> Key | None:
        with self._lock:
            return self._keys.get(key_id)

    def all_keys(self) -> list[Key]:
        with self._lock:
            return sorted(self._keys.values(), key=lambda k: (k.creation_date, k.key_id))

    def all_aliases(self) -> list[Alias]:
        with self._lock:
            return sorted(self._aliases.values(), key=lambda a: a.name)

    # ----- mutations (each persisted before returning)

    def create_key(self, *, key_usage: str, key_spec: str, description: str, policy: str) -> Key:
        key_id = str(uuid.uuid4())
        key = Key(
            key_id=key_id,
            arn=self.key_arn(key_id),
            account=self.account,
            creation_date=round(time.time(), 3),
            key_state=ENABLED,
            key_usage=key_usage,
            key_spec=key_spec,
            description=description,
            policy=policy,
            material=crypto.new_key_material(),
        )
        with self._mutation():
            self._keys[key_id] = key
        return key

    def update_key(self, key_id: str, **changes: Any) -> Key:
        with self._mutation():
            key = dataclasses.replace(self._keys[key_id], **changes)
            self._keys[key_id] = key
        return key

    def create_alias(self, name: str, key_id: str) -> Alias:
        now = round(time.time(), 3)
        with self._mutation():
            if name in self._aliases:
                raise AlreadyExistsException(
                    f"An alias with the name {self.alias_arn(name)} already exists"
                )
            alias = Alias(name, key_id, now, now)
            self._aliases[name] = alias
        return alias

    def update_alias(self, name: str, key_id: str) -> None:
        with self._mutation():
            alias = self._require_alias(name)
            self._aliases[name] = dataclasses.replace(
                alias, target_key_id=key_id, last_updated=round(time.time(), 3)
            )

    def delete_alias(self, name: str) -> Alias:
        with self._mutation():
            alias = self._require_alias(name)
            del self._aliases[name]
        return alias

    def alias(self, name: str) -> Alias:
        with self._lock:
            return self._require_alias(name)

    # ----- internals

    def _key_id_from_ref(self, key_ref: str) -> str:
        if key_ref.startswith("arn:"):
            parts = key_ref.split(":", 5)
            if len(parts) != 6 or not parts[5].startswith("key/") or parts[2] != "kms":
                raise NotFoundException(f"Invalid keyId '{key_ref}'")
            if parts[3] != self.region or parts[4] != self.account:
                raise NotFoundException(f"Key '{key_ref}' does not exist")
            key_ref = parts[5][len("key/") :]
        try:
            return str(uuid.UUID(key_ref))
        except ValueError:
            raise NotFoundException(f"Invalid keyId '{key_ref}'") from None

    def _resolve_alias(self, ref: str) -> Key:
        name = ref
        if ref.startswith("arn:"):
            parts = ref.split(":", 5)
            if len(parts) != 6 or parts[3] != self.region or parts[4] != self.account:
                raise NotFoundException(f"Alias {ref} is not found.")
            name = parts[5]
        alias = self._require_alias(name)
        key = self._keys.get(alias.target_key_id)
        if key is None:
            raise NotFoundException(f"Alias {self.alias_arn(name)} is not found.")
        return key

    def _require_alias(self, name: str) -> Alias:
        alias = self._aliases.get(name)
        if alias is None:
            raise NotFoundException(f"Alias {self.alias_arn(name)} is not found.")
        return alias

    @contextlib.contextmanager
    def _mutation(self) -> Iterator[None]:
        """Apply a change under the lock and persist it; on a failed write, roll the change back."""
        with self._lock:
            keys, aliases = dict(self._keys), dict(self._aliases)
            try:
                yield
                self._save()
            except BaseException:
                self._keys, self._aliases = keys, aliases
                raise

    def _save(self) -> None:
        document = {
            "version": STATE_VERSION,
            "region": self.region,
            "account": self.account,
            "keys": [_key_to_json(k) for k in self._keys.values()],
            "aliases": [dataclasses.asdict(a) for a in self._aliases.values()],
        }
        atomic_write(self._path, json.dumps(document, indent=1).encode())

    def _load(self) -> None:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return
        try:
            document = json.loads(raw)
            if document.get("version") != STATE_VERSION:
                raise ValueError(f"unsupported state version {document.get('version')!r}")
            keys = [_key_from_json(k) for k in document["keys"]]
            aliases = [Alias(**a) for a in document["aliases"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise StateFileError(f"state file {self._path} is unreadable: {exc}") from None
        self._keys = {k.key_id: k for k in keys}
        self._aliases = {a.name: a for a in aliases}


def _key_to_json(key: Key) -> dict[str, Any]:
    record = dataclasses.asdict(key)
    record["material"] = base64.b64encode(key.material).decode()
    return record


def _key_from_json(record: dict[str, Any]) -> Key:
    record = dict(record)
    record["material"] = base64.b64decode(record["material"], validate=True)
    return Key(**record)

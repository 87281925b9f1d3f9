"""The key store: keys, aliases and grants of one account in one region, persisted on disk.

The whole store is one JSON document (`keys.json`, mode 0600, key material included: this is a test
harness). Every mutation runs under one lock and is written atomically (temporary file, fsync,
rename, fsync of the directory) before the caller answers, so an acknowledged change survives a
kill at any moment. The records themselves live in `records.py`.

Automatic rotation is lazy: a key whose rotation date has passed rotates when a request next
resolves it (time comes from `clock`, so tests can move it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nitrokms.sim.files import atomic_write
from nitrokms.sim.kms.exceptions import (
    AlreadyExistsException,
    LimitExceededException,
    NotFoundException,
)
from nitrokms.sim.kms.keyspecs import SPECS
from nitrokms.sim.kms.records import (
    DISABLED,
    ENABLED,
    PENDING_DELETION,
    Alias,
    Grant,
    Key,
    Material,
    Pairs,
    grant_from_json,
    grant_to_json,
    key_from_json,
    key_to_json,
    material_id,
)

__all__ = ["DISABLED", "ENABLED", "PENDING_DELETION", "Alias", "Key", "KeyStore", "StateFileError"]

STATE_FILE = "keys.json"
STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)
TOKEN_KEY_BYTES = 32
DAY_S = 86400


class StateFileError(Exception):
    """The state directory holds a file this version cannot read (raised at startup)."""


class KeyStore:
    """The key, alias and grant registry of one account in one region."""

    def __init__(
        self,
        state_dir: Path,
        *,
        region: str,
        account: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.region = region
        self.account = account
        self._clock = clock
        self._path = Path(state_dir) / STATE_FILE
        self._lock = threading.RLock()
        self._keys: dict[str, Key] = {}
        self._aliases: dict[str, Alias] = {}
        self._grants: dict[str, Grant] = {}
        self._token_key = os.urandom(TOKEN_KEY_BYTES)
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self._load()

    def key_arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:key/{key_id}"

    def alias_arn(self, name: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:{name}"

    def now(self) -> float:
        return round(self._clock(), 3)

    @property
    def token_key(self) -> bytes:
        """The secret that authenticates this store's grant tokens (persisted with the keys)."""
        return self._token_key

    # ----- reads

    def resolve(self, key_ref: str, *, allow_alias: bool = True) -> Key:
        """Find a key by id or key ARN (and, with `allow_alias`, alias name or alias ARN); a key
        whose automatic rotation is due rotates first. Raises NotFoundException."""
        with self._lock:
            if allow_alias and (key_ref.startswith("alias/") or ":alias/" in key_ref):
                key = self._resolve_alias(key_ref)
            else:
                key_id = self._key_id_from_ref(key_ref)
                found = self._keys.get(key_id)
                if found is None:
                    raise NotFoundException(f"Key '{self.key_arn(key_id)}' does not exist")
                key = found
            return self._rotate_if_due(key)

    def get(self, key_id: str) -> Key | None:
        with self._lock:
            key = self._keys.get(key_id)
            return None if key is None else self._rotate_if_due(key)

    def all_keys(self) -> list[Key]:
        with self._lock:
            return sorted(self._keys.values(), key=lambda k: (k.creation_date, k.key_id))

    def all_aliases(self) -> list[Alias]:
        with self._lock:
            return sorted(self._aliases.values(), key=lambda a: a.name)

    def alias(self, name: str) -> Alias:
        with self._lock:
            return self._require_alias(name)

    def grant(self, grant_id: str) -> Grant | None:
        with self._lock:
            return self._grants.get(grant_id)

    def grants(self, key_id: str | None = None) -> list[Grant]:
        """Grants of one key (or of every key), oldest first."""
        with self._lock:
            found = [g for g in self._grants.values() if key_id in (None, g.key_id)]
        return sorted(found, key=lambda g: (g.creation_date, g.grant_id))

    # ----- mutations (each persisted before returning)

    def create_key(
        self, *, key_usage: str, key_spec: str, description: str, policy: str, tags: Pairs = ()
    ) -> Key:
        key_id = str(uuid.uuid4())
        secret = SPECS[key_spec].new_material()  # RSA generation is slow: outside the lock
        now = self.now()
        key = Key(
            key_id=key_id,
            arn=self.key_arn(key_id),
            account=self.account,
            creation_date=now,
            key_state=ENABLED,
            key_usage=key_usage,
            key_spec=key_spec,
            description=description,
            policy=policy,
            materials=(Material(material_id(key_id, secret), secret, now),),
            tags=tags,
        )
        with self._mutation():
            self._keys[key_id] = key
        return key

    def update_key(self, key_id: str, **changes: Any) -> Key:
        with self._mutation():
            key = dataclasses.replace(self._keys[key_id], **changes)
            self._keys[key_id] = key
        return key

    def rotate(self, key_id: str, rotation: str, **changes: Any) -> Key:
        """Append a fresh material version (AUTOMATIC or ON_DEMAND) and apply `changes`."""
        with self._mutation():
            key = self._keys[key_id]
            secret = key.spec.new_material()
            material = Material(material_id(key_id, secret), secret, self.now(), rotation)
            key = dataclasses.replace(key, materials=(*key.materials, material), **changes)
            self._keys[key_id] = key
        return key

    def create_alias(self, name: str, key_id: str) -> Alias:
        now = self.now()
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
                alias, target_key_id=key_id, last_updated=self.now()
            )

    def delete_alias(self, name: str) -> Alias:
        with self._mutation():
            alias = self._require_alias(name)
            del self._aliases[name]
        return alias

    def add_grant(self, grant: Grant, *, limit: int) -> Grant:
        """Store `grant`, or return the existing grant of the same key, name and parameters.

        Raises LimitExceededException when the key already holds `limit` grants.
        """
        with self._mutation():
            same_key = [g for g in self._grants.values() if g.key_id == grant.key_id]
            if grant.name is not None:
                for existing in same_key:
                    if existing.name == grant.name and existing.same_parameters(grant):
                        return existing
            if len(same_key) >= limit:
                raise LimitExceededException(
                    f"{grant.key_arn} already has the maximum of {limit} grants."
                )
            self._grants[grant.grant_id] = grant
        return grant

    def delete_grant(self, grant_id: str) -> None:
        with self._mutation():
            self._grants.pop(grant_id, None)

    # ----- internals

    def _rotate_if_due(self, key: Key) -> Key:
        now = self._clock()
        due = key.next_rotation
        if due is None or key.key_state != ENABLED or now < due:
            return key
        period_s = (key.rotation_period_days or 365) * DAY_S
        following = due + period_s if due + period_s > now else now + period_s
        return self.rotate(key.key_id, "AUTOMATIC", next_rotation=round(following, 3))

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
            saved = dict(self._keys), dict(self._aliases), dict(self._grants)
            try:
                yield
                self._save()
            except BaseException:
                self._keys, self._aliases, self._grants = saved
                raise

    def _save(self) -> None:
        document = {
            "version": STATE_VERSION,
            "region": self.region,
            "account": self.account,
            "token_key": self._token_key.hex(),
            "keys": [key_to_json(k) for k in self._keys.values()],
            "aliases": [dataclasses.asdict(a) for a in self._aliases.values()],
            "grants": [grant_to_json(g) for g in self._grants.values()],
        }
        atomic_write(self._path, json.dumps(document, indent=1).encode())

    def _load(self) -> None:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return
        try:
            document = json.loads(raw)
            version = document.get("version")
            if version not in READABLE_VERSIONS:
                raise ValueError(f"unsupported state version {version!r}")
            keys = [key_from_json(k, version) for k in document["keys"]]
            aliases = [Alias(**a) for a in document["aliases"]]
            grants = [grant_from_json(g) for g in document.get("grants", [])]
            token_key = bytes.fromhex(document.get("token_key", self._token_key.hex()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateFileError(f"state file {self._path} is unreadable: {exc}") from None
        self._keys = {k.key_id: k for k in keys}
        self._aliases = {a.name: a for a in aliases}
        self._grants = {g.grant_id: g for g in grants}
        self._token_key = token_key

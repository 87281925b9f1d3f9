"""Field kinds for RPC message bodies: each validates a value and names the problem when it fails.

Messages (proto/messages.py) and the KeyRequest they carry (proto/keys.py) are `Record`s: frozen
dataclasses whose fields carry one of these kinds in their metadata (`kind_field`). The same check
runs when we build a value and when we decode one from the peer; only the error class differs
(LocalProtocolError here, mapped to RemoteProtocolError by the decoder).
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nitrokms.proto.codes import INVALID_FIELD
from nitrokms.proto.errors import LocalProtocolError


def _fail(name: str, problem: str) -> LocalProtocolError:
    return LocalProtocolError(f"field {name!r}: {problem}", code=INVALID_FIELD)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


class Kind(ABC):
    """Validate and return a value for a named field. Subclasses raise LocalProtocolError."""

    @abstractmethod
    def check(self, name: str, value: Any) -> Any: ...


@dataclass(frozen=True)
class Text(Kind):
    max_chars: int
    min_chars: int = 1
    pattern: str | None = None
    choices: tuple[str, ...] = ()

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _fail(name, f"expected text, got {_type_name(value)}")
        if not self.min_chars <= len(value) <= self.max_chars:
            raise _fail(name, f"length {len(value)} outside {self.min_chars}..{self.max_chars}")
        if self.choices and value not in self.choices:
            raise _fail(name, f"{value!r} is not one of {', '.join(self.choices)}")
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise _fail(name, "does not have the expected form")
        return value


@dataclass(frozen=True)
class Blob(Kind):
    max_bytes: int
    min_bytes: int = 0

    def check(self, name: str, value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise _fail(name, f"expected bytes, got {_type_name(value)}")
        if not self.min_bytes <= len(value) <= self.max_bytes:
            raise _fail(name, f"{len(value)} bytes outside {self.min_bytes}..{self.max_bytes}")
        return value


@dataclass(frozen=True)
class Int(Kind):
    lo: int
    hi: int

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(name, f"expected an integer, got {_type_name(value)}")
        if not self.lo <= value <= self.hi:
            raise _fail(name, f"{value} outside {self.lo}..{self.hi}")
        return value


@dataclass(frozen=True)
class Bool(Kind):
    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _fail(name, f"expected true or false, got {_type_name(value)}")
        return value


@dataclass(frozen=True)
class TextMap(Kind):
    """A text -> text map, such as a KMS encryption context (returned as a plain dict)."""

    max_pairs: int
    max_total_chars: int

    def check(self, name: str, value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise _fail(name, f"expected a map, got {_type_name(value)}")
        if len(value) > self.max_pairs:
            raise _fail(name, f"{len(value)} entries; at most {self.max_pairs}")
        total = 0
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, str) or not key:
                raise _fail(name, "keys must be non-empty text and values text")
            total += len(key) + len(item)
        if total > self.max_total_chars:
            raise _fail(name, f"{total} characters in all; at most {self.max_total_chars}")
        return dict(value)


@dataclass(frozen=True)
class ListOf(Kind):
    """An array of at most `max_items` values of one kind (returned as a tuple)."""

    max_items: int
    item: Kind

    def check(self, name: str, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise _fail(name, f"expected an array, got {_type_name(value)}")
        if len(value) > self.max_items:
            raise _fail(name, f"{len(value)} items; at most {self.max_items}")
        return tuple(self.item.check(f"{name}[{i}]", v) for i, v in enumerate(value))


@dataclass(frozen=True)
class PCRMap(Kind):
    """PCR index (0..31) -> 32, 48 or 64-byte value."""

    def check(self, name: str, value: Any) -> dict[int, bytes]:
        if not isinstance(value, Mapping):
            raise _fail(name, f"expected a map, got {_type_name(value)}")
        if len(value) > 32:
            raise _fail(name, f"{len(value)} entries; at most 32")
        out: dict[int, bytes] = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < 32:
                raise _fail(name, f"PCR index {key!r} is not an integer in 0..31")
            if not isinstance(item, bytes) or len(item) not in (32, 48, 64):
                raise _fail(name, f"PCR{key} must be 32, 48 or 64 bytes")
            out[key] = item
        return out


def kind_field(kind: Kind, *, secret: bool = False, optional: bool = False) -> Any:
    """A dataclass field of the given kind (None when `optional`); secrets are kept out of repr."""
    if optional:
        return dataclasses.field(default=None, repr=not secret, metadata={"kind": kind})
    return dataclasses.field(repr=not secret, metadata={"kind": kind})


_KINDS: dict[type, tuple[tuple[str, Kind, bool], ...]] = {}


def kinds_of(cls: type) -> tuple[tuple[str, Kind, bool], ...]:
    """(name, kind, optional) of each field of the Record class `cls`, computed once per class
    (`dataclasses.fields` builds a tuple per call, and a message is checked on every send and
    receive)."""
    kinds = _KINDS.get(cls)
    if kinds is None:
        kinds = _KINDS[cls] = tuple(
            (f.name, f.metadata["kind"], f.default is None) for f in dataclasses.fields(cls)
        )
    return kinds


class Record:
    """Base of frozen dataclasses made of `kind_field`s: every field is checked (and normalised,
    e.g. a list to a tuple) at construction, then `_check` applies the cross-field rules."""

    def __post_init__(self) -> None:
        for name, kind, optional in kinds_of(type(self)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            object.__setattr__(self, name, kind.check(name, value))
        self._check()

    def _check(self) -> None:
        """Cross-field rules; raise LocalProtocolError."""

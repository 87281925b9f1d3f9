"""The one CBOR loader for bytes from a peer: RPC messages, attestation documents, NSM replies.

cbor2 builds every item it reads, so a valid 4 MiB frame holding four million empty arrays costs
seconds of CPU and hundreds of MiB before any check on the result can run, and cbor2 5.x has no
depth limit or duplicate-key check at all. So `loads` first walks the item headers over the raw
bytes, building nothing, and refuses the input at the first item past a limit: more than
`max_items` items, nesting deeper than `max_depth`, a tag outside `tags`, a map key that is not an
integer, text or byte string, a duplicate map key, a truncated item or trailing bytes. An array or
map header announcing more items than the limit or the remaining bytes allow is refused at the
header. Only input that passes reaches cbor2, whose work is then bounded by the same counts.

The walk costs about a microsecond per item (strings are skipped by their length), so refusing any
input costs at most `max_items` microseconds and no memory beyond the map keys seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import cbor2
from nitrokms.proto import codes
from nitrokms.proto.errors import RemoteProtocolError

_INDEFINITE: Final = -1
_BREAK: Final = 0xFF
_ARGUMENT_BYTES: Final = {24: 1, 25: 2, 26: 4, 27: 8}
_BYTES, _TEXT, _ARRAY, _MAP, _TAG = 2, 3, 4, 5, 6


@dataclass(frozen=True)
class CBORLimits:
    """What decoding one item may cost: its size in bytes, its number of items (every header
    counts, containers included), its nesting depth (arrays, maps and tags) and the tags allowed."""

    max_bytes: int
    max_items: int
    max_depth: int
    tags: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_items, self.max_depth) < 1:
            raise ValueError("CBOR limits must be at least 1")


class CBORDecodeError(RemoteProtocolError):
    """The bytes are not exactly one well-formed CBOR item within the limits.

    The RPC decoder lets it through as is; the attestation parser and the NSM codec translate it
    into their own family's error.
    """

    default_code = codes.MALFORMED_MESSAGE


def loads(data: bytes, limits: CBORLimits) -> Any:
    """Decode exactly one CBOR item from `data` within `limits`. Raises CBORDecodeError."""
    scan(data, limits)
    try:
        return cbor2.loads(data)
    except (cbor2.CBORError, ValueError, TypeError, LookupError, ArithmeticError) as exc:
        raise CBORDecodeError(f"undecodable CBOR: {_first_line(exc)}") from None


def scan(data: bytes, limits: CBORLimits) -> None:
    """Check that `data` is exactly one CBOR item within `limits`, building nothing.

    Raises CBORDecodeError naming the first rule broken.
    """
    if len(data) > limits.max_bytes:
        raise CBORDecodeError(f"CBOR item of {len(data)} bytes; the limit is {limits.max_bytes}")
    _Walk(data, limits).run()


class _Open:
    """A container being walked: `left` items still due (or _INDEFINITE) and, for a map, the keys
    seen and whether a key comes next; for an indefinite-length string, its major type and (when
    it is itself a map key) its chunks."""

    __slots__ = ("chunks", "keys", "left", "major", "want_key")

    def __init__(self, major: int, left: int) -> None:
        self.major = major
        self.left = left
        self.want_key = major == _MAP
        self.keys: set[object] | None = set() if major == _MAP else None
        self.chunks: list[bytes] | None = None


class _Walk:
    __slots__ = ("data", "depth", "items", "limits", "pos", "stack")

    def __init__(self, data: bytes, limits: CBORLimits) -> None:
        self.data, self.limits = data, limits
        self.pos = self.items = self.depth = 0
        self.stack: list[_Open] = []

    def run(self) -> None:
        data, end, stack = self.data, len(self.data), self.stack
        while True:
            if self.pos >= end:
                raise CBORDecodeError("truncated CBOR item")
            initial = data[self.pos]
            self.pos += 1
            if initial == _BREAK:
                key = self._break()
            else:
                self.items += 1
                if self.items > self.limits.max_items:
                    raise CBORDecodeError(f"more than {self.limits.max_items} CBOR items")
                complete, key = self._item(initial >> 5, initial & 0x1F)
                if not complete:
                    continue
            self._complete(key)
            if not stack:
                if self.pos != end:
                    raise CBORDecodeError(
                        f"{end - self.pos} bytes of trailing data after the CBOR item"
                    )
                return

    def _item(self, major: int, info: int) -> tuple[bool, object]:
        """Read one header: (whether the item is already complete, its value as a map key)."""
        parent = self.stack[-1] if self.stack else None
        as_key = parent is not None and parent.want_key
        if parent is not None and parent.major in (_BYTES, _TEXT):
            if major != parent.major or info == 31:
                raise CBORDecodeError("an indefinite-length string holds a foreign chunk")
            as_key = parent.chunks is not None
        value = info if info < 24 else self._argument(major, info)
        if major <= 1:
            return True, value if major == 0 else -1 - value
        if major in (_BYTES, _TEXT):
            return self._string(major, value, as_key)
        if as_key:
            raise CBORDecodeError("a CBOR map key must be an integer, text or byte string")
        if major in (_ARRAY, _MAP):
            count = value if value == _INDEFINITE or major == _ARRAY else 2 * value
            return self._open(major, count), None
        if major == _TAG:
            if value not in self.limits.tags:
                raise CBORDecodeError(f"CBOR tag {value} is not allowed")
            return self._open(_TAG, 1), None
        return True, None  # simple values and floats

    def _string(self, major: int, length: int, as_key: bool) -> tuple[bool, object]:
        if length == _INDEFINITE:
            self.stack.append(_Open(major, _INDEFINITE))
            if as_key:
                self.stack[-1].chunks = []
            return False, None
        start = self.pos
        if length > len(self.data) - start:
            raise CBORDecodeError("truncated CBOR string")
        self.pos = start + length
        return True, (major, self.data[start : self.pos]) if as_key else None

    def _open(self, major: int, count: int) -> bool:
        """Enter a container of `count` items; return whether it is already complete (empty)."""
        limits = self.limits
        if self.depth >= limits.max_depth:
            raise CBORDecodeError(f"CBOR nested deeper than {limits.max_depth}")
        if count == 0:
            return True
        if count > limits.max_items - self.items:
            raise CBORDecodeError(f"a CBOR container announces {count} items; too many")
        if count > len(self.data) - self.pos:
            raise CBORDecodeError(f"a CBOR container announces {count} items; truncated")
        self.depth += 1
        self.stack.append(_Open(major, count))
        return False

    def _break(self) -> object:
        """A break code: close the indefinite container it ends; return its value as a key."""
        parent = self.stack.pop() if self.stack else None
        if parent is None or parent.left != _INDEFINITE:
            raise CBORDecodeError("unexpected CBOR break")
        if parent.major == _MAP and not parent.want_key:
            raise CBORDecodeError("an indefinite-length CBOR map ends after a key")
        if parent.major in (_BYTES, _TEXT):
            return None if parent.chunks is None else (parent.major, b"".join(parent.chunks))
        self.depth -= 1
        return None

    def _complete(self, key: object) -> None:
        """Count one finished item in its container, closing every container it completes."""
        stack = self.stack
        while stack:
            parent = stack[-1]
            if parent.chunks is not None:
                assert isinstance(key, tuple)
                parent.chunks.append(key[1])
                return
            if parent.keys is not None:
                if parent.want_key:
                    if key is None:
                        raise CBORDecodeError("a CBOR map key must be an integer, text or bytes")
                    if key in parent.keys:
                        raise CBORDecodeError("duplicate CBOR map key")
                    parent.keys.add(key)
                parent.want_key = not parent.want_key
            if parent.left == _INDEFINITE:
                return
            parent.left -= 1
            if parent.left:
                return
            stack.pop()
            self.depth -= 1
            key = None

    def _argument(self, major: int, info: int) -> int:
        """The argument of a header with additional info 24..31 (advancing past it); _INDEFINITE
        for 31."""
        size = _ARGUMENT_BYTES.get(info)
        if size is None:
            if info == 31 and major in (_BYTES, _TEXT, _ARRAY, _MAP):
                return _INDEFINITE
            raise CBORDecodeError(f"reserved CBOR additional information {info}")
        start = self.pos
        if start + size > len(self.data):
            raise CBORDecodeError("truncated CBOR header")
        self.pos = start + size
        return int.from_bytes(self.data[start : self.pos], "big")


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0][:120] if text else type(exc).__name__

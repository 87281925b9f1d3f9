"""A small, strict BER reader: bytes in, a tree of `Element`s out, or `CMSFormatError`.

Hand-written rather than asn1crypto because the reader faces untrusted bytes inside the enclave:
asn1crypto parses lazily and lets many foreign exceptions (ValueError, TypeError, IndexError...)
escape from attribute access, with no depth limit. Here every length is checked against the bytes
that remain before anything is sliced, nesting is capped at MAX_DEPTH and the element count at
MAX_ELEMENTS, and every failure is one typed error naming the offset. BER features KMS uses are
supported: indefinite lengths (constructed only) and constructed (chunked) strings.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from nitrokms.enclave.errors import CMSFormatError

MAX_DEPTH = 32
MAX_ELEMENTS = 4096
MAX_LENGTH_OCTETS = 4
MAX_TAG_NUMBER = 1 << 28

UNIVERSAL = 0
APPLICATION = 1
CONTEXT = 2
PRIVATE = 3

INTEGER = 2
OCTET_STRING = 4
NULL = 5
OID = 6
SEQUENCE = 16
SET = 17
UNIVERSAL_NAMES = {
    INTEGER: "INTEGER",
    OCTET_STRING: "OCTET STRING",
    NULL: "NULL",
    OID: "OBJECT IDENTIFIER",
    SEQUENCE: "SEQUENCE",
    SET: "SET",
}


@dataclass(slots=True)
class Element:
    """One TLV: `value` for primitives, `children` for constructed ones.

    Treat as immutable. Not `frozen=True`: frozen construction doubled the parse time.
    """

    tag_class: int
    constructed: bool
    number: int
    offset: int
    indefinite: bool = False
    value: bytes = field(default=b"", repr=False)
    children: tuple[Element, ...] = ()

    def is_(self, tag_class: int, number: int, *, constructed: bool | None = None) -> bool:
        if constructed is not None and constructed != self.constructed:
            return False
        return self.tag_class == tag_class and self.number == number

    def describe(self) -> str:
        if self.tag_class == CONTEXT:
            return f"[{self.number}]"
        if self.tag_class == UNIVERSAL and self.number in UNIVERSAL_NAMES:
            return UNIVERSAL_NAMES[self.number]
        kind = {UNIVERSAL: "universal", APPLICATION: "application", PRIVATE: "private"}
        return f"{kind[self.tag_class]} tag {self.number}"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.count = 0

    def fail(self, offset: int, what: str) -> CMSFormatError:
        return CMSFormatError(f"malformed BER at offset {offset}: {what}")

    def byte(self, pos: int, end: int) -> int:
        if pos >= end:
            raise self.fail(pos, "truncated")
        return self.data[pos]

    def header(self, pos: int, end: int) -> tuple[int, bool, int, int, int | None]:
        """Return (class, constructed, number, content start, length or None if indefinite)."""
        first = self.byte(pos, end)
        tag_class, constructed, number = first >> 6, bool(first & 0x20), first & 0x1F
        pos += 1
        if number == 0x1F:
            number = 0
            while True:
                b = self.byte(pos, end)
                pos += 1
                number = (number << 7) | (b & 0x7F)
                if number >= MAX_TAG_NUMBER:
                    raise self.fail(pos, "tag number too large")
                if not b & 0x80:
                    break
        start = pos
        first_len = self.byte(pos, end)
        pos += 1
        if first_len < 0x80:
            return tag_class, constructed, number, pos, first_len
        if first_len == 0x80:
            if not constructed:
                raise self.fail(start, "indefinite length on a primitive element")
            return tag_class, constructed, number, pos, None
        n = first_len & 0x7F
        if n > MAX_LENGTH_OCTETS:
            raise self.fail(start, f"length of {n} octets is too long")
        if pos + n > end:
            raise self.fail(start, "truncated length")
        length = int.from_bytes(self.data[pos : pos + n], "big")
        return tag_class, constructed, number, pos + n, length

    def element(self, pos: int, end: int, depth: int) -> tuple[Element, int]:
        self.count += 1
        if self.count > MAX_ELEMENTS:
            raise self.fail(pos, f"more than {MAX_ELEMENTS} elements")
        if depth > MAX_DEPTH:
            raise self.fail(pos, f"nested deeper than {MAX_DEPTH}")
        tag_class, constructed, number, start, length = self.header(pos, end)
        if length is None:
            children, after = self.children_until_eoc(start, end, depth + 1)
            return Element(tag_class, True, number, pos, True, children=children), after
        if length > end - start:
            raise self.fail(pos, f"length {length} runs past the end of the data")
        stop = start + length
        if not constructed:
            return Element(tag_class, False, number, pos, value=self.data[start:stop]), stop
        return Element(
            tag_class, True, number, pos, children=self.children(start, stop, depth + 1)
        ), stop

    def children(self, pos: int, end: int, depth: int) -> tuple[Element, ...]:
        items: list[Element] = []
        while pos < end:
            child, pos = self.element(pos, end, depth)
            if _is_eoc(child):
                raise self.fail(child.offset, "end-of-contents inside a definite length")
            items.append(child)
        return tuple(items)

    def children_until_eoc(self, pos: int, end: int, depth: int) -> tuple[tuple[Element, ...], int]:
        items: list[Element] = []
        while True:
            if pos >= end:
                raise self.fail(pos, "truncated: missing end-of-contents")
            child, pos = self.element(pos, end, depth)
            if _is_eoc(child):
                if child.value or child.constructed:
                    raise self.fail(child.offset, "malformed end-of-contents")
                return tuple(items), pos
            items.append(child)


def _is_eoc(element: Element) -> bool:
    return element.tag_class == UNIVERSAL and element.number == 0


def parse(data: bytes) -> Element:
    """Parse exactly one BER element filling `data`.

    Raises CMSFormatError on truncation, trailing bytes, bad lengths, or past the depth and
    element limits.
    """
    reader = _Reader(data)
    root, end = reader.element(0, len(data), 0)
    if _is_eoc(root):
        raise reader.fail(0, "end-of-contents at top level")
    if end != len(data):
        raise reader.fail(end, f"{len(data) - end} trailing bytes after the CMS structure")
    return root


def octets(element: Element, what: str) -> bytes:
    """The bytes of a string element, concatenating the chunks of a constructed (BER) one."""
    if not element.constructed:
        return element.value
    parts: list[bytes] = []
    for child in element.children:
        if not child.is_(UNIVERSAL, OCTET_STRING):
            raise CMSFormatError(f"{what}: chunk at offset {child.offset} is not an OCTET STRING")
        parts.append(octets(child, what))
    return b"".join(parts)


def integer(element: Element, what: str, max_bytes: int = 32) -> int:
    if not element.is_(UNIVERSAL, INTEGER, constructed=False):
        raise CMSFormatError(f"{what}: expected an INTEGER at offset {element.offset}")
    if not 0 < len(element.value) <= max_bytes:
        raise CMSFormatError(f"{what}: INTEGER of {len(element.value)} bytes at {element.offset}")
    return int.from_bytes(element.value, "big", signed=True)


def oid(element: Element, what: str) -> str:
    """The dotted form of an OBJECT IDENTIFIER element."""
    if not element.is_(UNIVERSAL, OID, constructed=False):
        raise CMSFormatError(f"{what}: expected an OBJECT IDENTIFIER at offset {element.offset}")
    dotted = _dotted(element.value)
    if dotted is None:
        raise CMSFormatError(f"{what}: malformed OBJECT IDENTIFIER at offset {element.offset}")
    return dotted


@functools.lru_cache(maxsize=256)
def _dotted(data: bytes) -> str | None:
    if not 0 < len(data) <= 64 or data[-1] & 0x80:
        return None
    arcs: list[int] = []
    value = 0
    for i, b in enumerate(data):
        if b == 0x80 and (i == 0 or not data[i - 1] & 0x80):
            return None  # a non-minimal arc (leading 0x80 septet)
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def encode_definite(element: Element) -> bytes:
    """Re-encode an element with definite lengths (DER-like, for display and comparison)."""
    if element.constructed:
        body = b"".join(encode_definite(child) for child in element.children)
    else:
        body = element.value
    first = (element.tag_class << 6) | (0x20 if element.constructed else 0)
    if element.number < 0x1F:
        tag = bytes([first | element.number])
    else:
        septets = [element.number & 0x7F]
        rest = element.number >> 7
        while rest:
            septets.append(0x80 | (rest & 0x7F))
            rest >>= 7
        tag = bytes([first | 0x1F, *reversed(septets)])
    return tag + _encode_length(len(body)) + body


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body

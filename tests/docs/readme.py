"""The README's fenced code blocks, each with the marker that says how the tests run it.

Every fence with a language is preceded by `<!-- run: KIND -->` (KIND: parent, enclave, shell or
pytest) or `<!-- not run: REASON -->`; fences without a language are diagrams.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
KINDS = ("parent", "enclave", "shell", "pytest")
_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!-- (run|not run): (.+?) -->$")


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    marker: str | None  # "run" or "not run", None when missing
    detail: str  # the kind to run, or why not
    code: str


def blocks(path: Path = README) -> list[Block]:
    """Every fenced block with a language, in order. Raises ValueError on an unclosed fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next((j for j in range(index + 1, len(lines)) if lines[j] == "```"), None)
        if end is None:
            raise ValueError(f"README line {index + 1}: fence never closed")
        if opening[1]:
            marker = _MARKER.match(lines[index - 1]) if index else None
            found.append(
                Block(
                    line=index + 1,
                    language=opening[1],
                    marker=marker[1] if marker else None,
                    detail=marker[2] if marker else "",
                    code="\n".join(lines[index + 1 : end]) + "\n",
                )
            )
        index = end + 1
    return found


def to_run(kind: str) -> list[Block]:
    return [b for b in blocks() if b.marker == "run" and b.detail == kind]

"""A small Dockerfile reader for tests: instructions (with continuations joined) grouped in stages,
and the build context a `.dockerignore` leaves (moby patternmatcher semantics: patterns match a path
or any parent of it, `**` spans directories, the last matching pattern wins, `!` re-includes)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN, or None for shell form."""
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def named(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def instructions(text: str) -> list[Instruction]:
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        found.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "Dockerfile ends inside a line continuation"
    return found


def parse(text: str) -> tuple[list[Instruction], list[Stage]]:
    """(global instructions before the first FROM, stages)."""
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            preamble.append(instruction)
    return preamble, stages


def _pattern(text: str) -> re.Pattern[str]:
    body = text.strip().lstrip("/").rstrip("/")
    regex = ""
    i = 0
    while i < len(body):
        if body.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif body.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif body[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif body[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(body[i]), i + 1
    return re.compile(regex)


class DockerIgnore:
    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                body = line.removeprefix("!")
                self.rules.append((line.startswith("!"), body, _pattern(body)))

    def excludes(self, relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for negate, _, pattern in self.rules:
            if any(pattern.fullmatch(p) for p in prefixes):
                excluded = not negate
        return excluded

    def _may_reinclude_below(self, directory: str) -> bool:
        return any(neg and body.lstrip("/").startswith(directory) for neg, body, _ in self.rules)

    def context_files(self, root: Path) -> set[str]:
        """Relative paths of the files `docker build root` sends."""
        kept: set[str] = set()
        for current, dirs, files in os.walk(root):
            base = Path(current).relative_to(root).as_posix()
            prefix = "" if base == "." else base + "/"
            dirs[:] = [
                d
                for d in dirs
                if not self.excludes(prefix + d) or self._may_reinclude_below(prefix + d)
            ]
            kept.update(prefix + f for f in files if not self.excludes(prefix + f))
        return kept

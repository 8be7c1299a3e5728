"""Reading and editing main.cf text in Postfix's syntax (sans-IO).

Syntax (postconf(5)): ``name = value`` logical lines; a physical line starting with
whitespace continues the previous logical line; a line whose first non-blank character is
``#`` is a comment, and comments and blank lines may sit inside a continued value. The
whitespace around ``=`` and at both ends of the value is not part of it. Continuation lines
are joined with one space.

Roost also reads ``service/name = value``: an override of ``name`` for one network service,
like master.cf's ``-o name=value`` (``postconf -P``'s ``service/type/name`` without type).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["Entry", "Problem", "edit_main_cf", "parse_main_cf"]

_NAME_RE: Final = re.compile(r"(?:[A-Za-z0-9_-]+/)?[A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``name = value`` logical line.

    Attributes:
        name: the parameter name; ``service/name`` for a per-service override.
        value: the raw (unexpanded) value, continuation lines joined by one space.
        line: the 1-based number of the first physical line.
        end_line: the number of the last physical line of the value.
    """

    name: str
    value: str
    line: int
    end_line: int


@dataclass(frozen=True, slots=True)
class Problem:
    """A configuration mistake, printed as ``FILE:LINE: NAME: reason``.

    Attributes:
        file: the file name ("" for defaults and the command line).
        line: the 1-based line number, 0 when it has none.
        name: the parameter concerned ("" when none).
        reason: what is wrong, in words an administrator can act on.
        warning: True for warnings (unknown names), False for errors (bad values).
    """

    file: str
    line: int
    name: str
    reason: str
    warning: bool = False

    def __str__(self) -> str:
        where = (
            f"{self.file}:{self.line}: "
            if self.file and self.line
            else (f"{self.file}: " if self.file else "")
        )
        what = f"{self.name}: " if self.name else ""
        prefix = "warning: " if self.warning else ""
        return f"{prefix}{where}{what}{self.reason}"


def _logical_lines(text: str) -> list[tuple[int, int, str]]:
    """Group physical lines into (first line, last line, joined text)."""
    logical: list[tuple[int, int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t":
            if logical:
                first, _, joined = logical[-1]
                logical[-1] = (first, number, f"{joined} {stripped}")
                continue
            logical.append((number, number, " " + stripped))  # reported as an error below
            continue
        logical.append((number, number, raw.rstrip()))
    return logical


def parse_main_cf(text: str, filename: str) -> tuple[list[Entry], list[Problem]]:
    """Parse main.cf text into entries, in file order.

    Args:
        text: the whole file.
        filename: used in problems.

    Returns:
        The entries (later ones override earlier ones of the same name) and the problems
        found: syntax errors (errors) and repeated names (warnings).
    """
    entries: list[Entry] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for first, last, joined in _logical_lines(text):
        if joined.startswith(" "):
            problems.append(
                Problem(filename, first, "", "continuation line with no parameter before it")
            )
            continue
        name, equals, value = joined.partition("=")
        name = name.strip()
        if not equals:
            problems.append(
                Problem(filename, first, "", f"missing '=' after parameter name {name!r}")
            )
            continue
        if not _NAME_RE.fullmatch(name):
            problems.append(Problem(filename, first, "", f"bad parameter name {name!r}"))
            continue
        if name in seen:
            problems.append(
                Problem(
                    filename,
                    first,
                    name,
                    f"overrides the setting on line {seen[name]}",
                    warning=True,
                )
            )
        seen[name] = first
        entries.append(Entry(name, value.strip(), first, last))
    return entries, problems


def edit_main_cf(text: str, changes: Mapping[str, str | None]) -> str:
    """Set or remove parameters, keeping every other byte of the file as it was.

    Like ``postconf -e`` / ``postconf -X``: a parameter that is set is replaced where its
    (last) setting stands, continuation lines included; a new one is appended at the end.

    Args:
        text: the file's current text.
        changes: name -> new raw value, or None to remove every setting of the name.

    Returns:
        The new text.
    """
    lines = text.splitlines(keepends=True)
    entries, _ = parse_main_cf(text, "")
    last: dict[str, Entry] = {entry.name: entry for entry in entries}
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    replacements: dict[int, tuple[int, str | None]] = {}  # first line -> (last line, text)
    appended: list[str] = []
    for name, value in changes.items():
        if value is None:
            for entry in entries:
                if entry.name == name:
                    replacements[entry.line] = (entry.end_line, None)
            continue
        new_line = f"{name} = {value}".rstrip() + newline
        if name in last:
            entry = last[name]
            replacements[entry.line] = (entry.end_line, new_line)
        else:
            appended.append(new_line)
    out: list[str] = []
    number = 1
    while number <= len(lines):
        if number in replacements:
            end, replacement = replacements[number]
            if replacement is not None:
                out.append(replacement)
            number = end + 1
            continue
        out.append(lines[number - 1])
        number += 1
    if appended:
        if out and not out[-1].endswith(("\n", "\r")):
            out.append(newline)
        out.extend(appended)
    return "".join(out)

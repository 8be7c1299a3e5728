"""Postfix's lazy ``$name`` expansion of parameter values (sans-IO).

Forms (postconf(5), "parameter expansion"):

- ``$name``, ``${name}``, ``$(name)``: the value of ``name`` (empty when undefined);
- ``${name?text}``: ``text`` when ``$name`` is non-empty, else nothing;
- ``${name:text}``: ``text`` when ``$name`` is empty, else nothing;
- ``${name?{text1}:{text2}}``: ``text1`` when non-empty, else ``text2`` (Postfix 3.0);
- ``$$``: a literal ``$``.

``text`` is expanded in turn. Expansion of one parameter that refers back to itself is an
error, not a hang.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Final

__all__ = ["ExpansionError", "expand", "references"]

_NAME: Final = re.compile(r"[A-Za-z0-9_]+")


class ExpansionError(ValueError):
    """A value cannot be expanded: unbalanced braces or a reference loop."""


def _closing(text: str, start: int, open_char: str, close_char: str) -> int:
    """Return the index of the bracket closing the one just before ``start``."""
    depth = 1
    for index in range(start, len(text)):
        char = text[index]
        if char == open_char:
            depth += 1
        elif char == close_char:
            depth -= 1
            if depth == 0:
                return index
    raise ExpansionError(f"missing '{close_char}' in {text!r}")


def _split_alternatives(body: str) -> tuple[str, str | None]:
    """Split ``{text1}:{text2}`` or ``{text1}`` into its parts (Postfix 3.0 form)."""
    end = _closing(body, 1, "{", "}")
    first = body[1:end]
    rest = body[end + 1 :].strip()
    if not rest:
        return first, None
    if rest.startswith(":") and rest[1:].strip().startswith("{") and rest.endswith("}"):
        second = rest[1:].strip()
        return first, second[1:-1]
    raise ExpansionError(f"bad conditional expansion {body!r}")


def expand(text: str, value_of: Callable[[str], str]) -> str:
    """Expand every ``$`` form in ``text``.

    Args:
        text: a raw parameter value.
        value_of: returns the *expanded* value of a parameter name ("" when undefined).

    Returns:
        The expanded text.

    Raises:
        ExpansionError: unbalanced ``{``/``(``; loops are detected by ``value_of``'s owner.
    """
    if "$" not in text:
        return text
    out: list[str] = []
    pos = 0
    length = len(text)
    while pos < length:
        dollar = text.find("$", pos)
        if dollar < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:dollar])
        pos = dollar + 1
        if pos >= length:
            out.append("$")
            break
        char = text[pos]
        if char == "$":
            out.append("$")
            pos += 1
        elif char in "{(":
            close_char = "}" if char == "{" else ")"
            end = _closing(text, pos + 1, char, close_char)
            out.append(_expand_braced(text[pos + 1 : end], value_of))
            pos = end + 1
        else:
            match = _NAME.match(text, pos)
            if match is None:
                out.append("$")
                continue
            out.append(value_of(match.group()))
            pos = match.end()
    return "".join(out)


def _expand_braced(body: str, value_of: Callable[[str], str]) -> str:
    match = _NAME.match(body)
    if match is None:
        raise ExpansionError(f"bad parameter name in ${{{body}}}")
    name = match.group()
    rest = body[match.end() :]
    if not rest:
        return value_of(name)
    operator, text = rest[0], rest[1:]
    if operator not in "?:":
        raise ExpansionError(f"bad expansion ${{{body}}}: expected ? or : after {name}")
    present = value_of(name) != ""
    if operator == "?" and text.startswith("{"):
        when_set, when_empty = _split_alternatives(text)
        return expand(when_set if present else (when_empty or ""), value_of)
    if present == (operator == "?"):
        return expand(text, value_of)
    return ""


def references(text: str) -> Iterator[str]:
    """Yield the parameter names ``text`` refers to (for "unused parameter" checks)."""
    for match in re.finditer(r"\$(?:\{|\()?([A-Za-z0-9_]+)", text.replace("$$", "")):
        yield match.group(1)

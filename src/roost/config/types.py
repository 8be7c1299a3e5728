"""Value types of main.cf parameters and their parsers.

Each parser takes the parameter's text *after* ``$name`` expansion and returns a typed
value, or raises :class:`ValueError` with a reason that the loader prefixes with
``FILE:LINE: NAME:``.

See Also: postconf(5), "time units" and "lists"; Dovecot's size units.
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = [
    "TIME_UNITS",
    "ParamType",
    "parse_boolean",
    "parse_integer",
    "parse_list",
    "parse_size",
    "parse_table_refs",
    "parse_time",
]


class ParamType(enum.Enum):
    """The value type of a parameter, as named in docs/configuration.md."""

    STRING = "string"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    TIME = "time"
    SIZE = "size"
    LIST = "list"
    TABLE = "lookup table"


#: Postfix's time units (postconf(5) "time units"), in seconds.
TIME_UNITS: Final[dict[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_SIZE_UNITS: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
}

_TIME_RE: Final = re.compile(r"(\d+)([smhdw]?)")
_SIZE_RE: Final = re.compile(r"(\d+)\s*([a-z]*)")
_LIST_SPLIT_RE: Final = re.compile(r"[\s,]+")
_TABLE_RE: Final = re.compile(r"[a-z][a-z0-9_+-]*:.+")


def parse_integer(text: str, *, minimum: int | None = None) -> int:
    """Parse a decimal integer such as ``50`` or ``-1``.

    Raises:
        ValueError: not an integer, or below ``minimum``.
    """
    stripped = text.strip()
    if not re.fullmatch(r"[+-]?\d+", stripped):
        raise ValueError(f"bad integer value: {text!r}")
    value = int(stripped)
    if minimum is not None and value < minimum:
        raise ValueError(f"value {value} is below the minimum {minimum}")
    return value


def parse_boolean(text: str) -> bool:
    """Parse Postfix's ``yes``/``no`` (``true``/``false`` too, case-insensitive).

    Raises:
        ValueError: anything else.
    """
    lowered = text.strip().lower()
    if lowered in ("yes", "true"):
        return True
    if lowered in ("no", "false"):
        return False
    raise ValueError(f"bad boolean value: {text!r} (use yes or no)")


def parse_time(text: str, *, default_unit: str = "s") -> int:
    """Parse a Postfix time value such as ``300s``, ``5d``, ``1h30m`` or ``300``.

    A bare number takes the parameter's default unit (postconf(5): "time units").

    Returns:
        The duration in seconds.

    Raises:
        ValueError: not a time value.
    """
    stripped = text.strip().lower()
    if not stripped:
        raise ValueError("empty time value")
    total = 0
    pos = 0
    while pos < len(stripped):
        match = _TIME_RE.match(stripped, pos)
        if match is None:
            raise ValueError(f"bad time value: {text!r} (use a number with s, m, h, d or w)")
        total += int(match.group(1)) * TIME_UNITS[match.group(2) or default_unit]
        pos = match.end()
    return total


def parse_size(text: str) -> int:
    """Parse a size such as ``10240000``, ``512k``, ``10M`` or ``1G`` (powers of 1024).

    Postfix writes sizes as plain byte counts; the unit suffixes are Dovecot's.

    Returns:
        The size in bytes.

    Raises:
        ValueError: not a size.
    """
    match = _SIZE_RE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"bad size value: {text!r} (use bytes, or a number with k, M or G)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_list(text: str) -> tuple[str, ...]:
    """Split a list value on commas and/or whitespace (postconf(5)).

    Text inside ``{...}`` stays one element, as Postfix allows for values with spaces.
    """
    items: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        if depth == 0 and _LIST_SPLIT_RE.fullmatch(char):
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        items.append("".join(current))
    return tuple(items)


def parse_table_refs(text: str) -> tuple[str, ...]:
    """Parse a list of lookup table references in Postfix's ``type:name`` form.

    Raises:
        ValueError: an element is not ``type:name``.
    """
    refs = parse_list(text)
    for ref in refs:
        if not _TABLE_RE.fullmatch(ref):
            raise ValueError(f"bad lookup table {ref!r} (expected type:name, e.g. texthash:/path)")
    return refs

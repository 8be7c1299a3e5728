"""Lookup tables in Postfix's ``type:name`` form, behind one small interface.

Types (see Postfix's DATABASE_README, cidr_table(5), regexp_table(5)):

- ``texthash:/path`` (and ``hash:``, ``btree:``, ``lmdb:``, read from the text source, so no
  ``postmap`` step is needed): ``key value`` lines, ``#`` comments, indented continuation
  lines; keys compared case-insensitively.
- ``inline:{ key=value, { key = text with, commas } }``: the table in the parameter itself.
- ``static:value`` or ``static:{ text with spaces }``: every key gives the value.
- ``cidr:/path``: ``network/prefix result`` lines (IPv4 and IPv6, ``[ipv6]/len`` too); the
  first matching line wins; the key must be an IP address.
- ``regexp:/path``: ``/pattern/flags result`` and ``!/pattern/ result`` lines, with ``if`` /
  ``endif`` blocks; case-insensitive unless the ``i`` flag is given; ``$1`` substitution.

Further types (``ldap:``) register a factory with :func:`register_table_type`.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from roost.config.types import parse_list

__all__ = [
    "LookupTable",
    "TableError",
    "open_table",
    "register_table_type",
    "table_types",
]


class TableError(ValueError):
    """A lookup table cannot be opened: unknown type, unreadable file or a bad line.

    The message starts with ``FILE:LINE:`` (or the table reference) so it can be acted on.
    """


class LookupTable(Protocol):
    """A read-only key -> value table."""

    @property
    def ref(self) -> str:
        """The table's ``type:name`` as written in main.cf."""
        ...

    def lookup(self, key: str) -> str | None:
        """Return the value for ``key``, or None when the table has no such key."""
        ...


TableFactory = Callable[[str, str], LookupTable]
"""Builds a table from (type, name); raises TableError."""

_FACTORIES: dict[str, TableFactory] = {}
#: Table types whose module registers them when first needed.
_PLUGINS: Final = {"ldap": "roost.auth.ldap"}


def register_table_type(kind: str, factory: TableFactory) -> None:
    """Make ``kind:name`` references open through ``factory(kind, name)``."""
    _FACTORIES[kind] = factory


def table_types() -> tuple[str, ...]:
    """Return the table types that can be opened (those registered when first used
    included)."""
    return tuple(sorted({*_FACTORIES, *_PLUGINS}))


def open_table(ref: str) -> LookupTable:
    """Open a table from its ``type:name`` reference.

    Raises:
        TableError: unknown type, missing or unreadable file, or a bad line in it.
    """
    kind, colon, name = ref.partition(":")
    if not colon or not name:
        raise TableError(f"{ref}: expected type:name")
    factory = _FACTORIES.get(kind)
    if factory is None and kind in _PLUGINS:
        importlib.import_module(_PLUGINS[kind])  # registers itself
        factory = _FACTORIES.get(kind)
    if factory is None:
        raise TableError(f"{ref}: unknown table type {kind!r} (known: {', '.join(table_types())})")
    return factory(kind, name)


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, logical line) of a Postfix table source file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TableError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TableError(f"{path}: not UTF-8 text: {exc}") from None
    current: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t" and current is not None:
            current = (current[0], f"{current[1]} {stripped}")
            continue
        if current is not None:
            yield current
        current = (number, stripped)
    if current is not None:
        yield current


@dataclass(frozen=True, slots=True)
class DictTable:
    """A table held in memory, keys folded to lower case."""

    ref: str
    data: Mapping[str, str]

    def lookup(self, key: str) -> str | None:
        """Return the value for ``key`` (case-insensitive), or None."""
        return self.data.get(key.lower())


def _open_texthash(kind: str, name: str) -> LookupTable:
    data: dict[str, str] = {}
    for number, line in _read_lines(name):
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise TableError(f"{name}:{number}: expected 'key whitespace value'")
        data.setdefault(parts[0].lower(), parts[1].strip())
    return DictTable(f"{kind}:{name}", data)


def _unbrace(text: str) -> str:
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        return text[1:-1].strip()
    return text


def _open_inline(kind: str, name: str) -> LookupTable:
    body = name.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise TableError(f"{kind}:{name}: expected inline:{{ key=value, ... }}")
    data: dict[str, str] = {}
    for item in parse_list(body[1:-1]):
        key, equals, value = _unbrace(item).partition("=")
        if not equals or not key.strip():
            raise TableError(f"{kind}:{name}: expected key=value, got {item!r}")
        data.setdefault(key.strip().lower(), value.strip())
    return DictTable(f"{kind}:{name}", data)


@dataclass(frozen=True, slots=True)
class StaticTable:
    """``static:value``: every key gives the same value."""

    ref: str
    value: str

    def lookup(self, key: str) -> str | None:
        """Return the static value whatever the key."""
        return self.value


def _open_static(kind: str, name: str) -> LookupTable:
    return StaticTable(f"{kind}:{name}", _unbrace(name))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class CidrTable:
    """``cidr:``: the first network containing the client address gives the value."""

    ref: str
    rules: tuple[tuple[Network, str], ...]

    def lookup(self, key: str) -> str | None:
        """Return the value of the first network containing ``key`` (an IP address)."""
        try:
            address = ipaddress.ip_address(key.strip("[]"))
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for network, value in self.rules:
            if address.version == network.version and address in network:
                return value
        return None


def parse_network(text: str) -> Network:
    """Parse ``1.2.3.0/24``, ``1.2.3.4``, ``[::1]/128`` or ``::1`` into a network.

    Raises:
        ValueError: not an address or network, or host bits set (Postfix rejects those).
    """
    address, slash, prefix = text.partition("/")
    address = address.strip("[]")
    return ipaddress.ip_network(f"{address}{slash}{prefix}", strict=True)


def _open_cidr(kind: str, name: str) -> LookupTable:
    rules: list[tuple[Network, str]] = []
    for number, line in _read_lines(name):
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise TableError(f"{name}:{number}: expected 'network/prefix result'")
        try:
            rules.append((parse_network(parts[0]), parts[1].strip()))
        except ValueError as exc:
            raise TableError(f"{name}:{number}: bad network {parts[0]!r}: {exc}") from None
    return CidrTable(f"{kind}:{name}", tuple(rules))


_REGEXP_RE: Final = re.compile(r"(!?)/((?:[^/\\]|\\.)*)/([a-zA-Z]*)\s*(.*)")


@dataclass(frozen=True, slots=True)
class RegexpRule:
    """One ``regexp:`` line; ``depth`` counts the enclosing ``if`` blocks."""

    pattern: re.Pattern[str]
    negate: bool
    result: str | None  # None for "if"
    end: int  # for "if": index of the rule after the matching endif


@dataclass(frozen=True, slots=True)
class RegexpTable:
    """``regexp:``: the first matching pattern gives its result, with ``$n`` substituted."""

    ref: str
    rules: tuple[RegexpRule, ...]

    def lookup(self, key: str) -> str | None:
        """Return the result of the first rule matching ``key``, or None."""
        index = 0
        while index < len(self.rules):
            rule = self.rules[index]
            match = rule.pattern.search(key)
            matched = (match is not None) != rule.negate
            if rule.result is None:  # if ... endif
                index = index + 1 if matched else rule.end
                continue
            if matched:
                if match is None or rule.negate:
                    return rule.result
                return _substitute(rule.result, match)
            index += 1
        return None


def _substitute(result: str, match: re.Match[str]) -> str:
    """Replace ``$n`` / ``${n}`` in a regexp table result with the match's groups."""

    def group(ref: re.Match[str]) -> str:
        index = int(ref.group(1) or ref.group(2))
        if index > (match.re.groups or 0):
            return ""
        return match.group(index) or ""

    return re.sub(r"\$(?:(\d)|\{(\d)\})", group, result)


def _compile(name: str, number: int, text: str) -> tuple[re.Pattern[str], bool, str]:
    match = _REGEXP_RE.fullmatch(text)
    if match is None:
        raise TableError(f"{name}:{number}: expected /pattern/flags result")
    negate, pattern, flags, result = match.groups()
    options = re.IGNORECASE
    for flag in flags:
        if flag == "i":
            options ^= re.IGNORECASE
        elif flag == "x":
            options |= re.VERBOSE
        elif flag == "m":
            options |= re.MULTILINE
        else:
            raise TableError(f"{name}:{number}: unknown regexp flag {flag!r}")
    try:
        return re.compile(pattern, options), bool(negate), result.strip()
    except re.error as exc:
        raise TableError(f"{name}:{number}: bad regular expression: {exc}") from None


def _open_regexp(kind: str, name: str) -> LookupTable:
    rules: list[RegexpRule] = []
    open_ifs: list[tuple[int, int]] = []  # (rule index, line number)
    for number, line in _read_lines(name):
        keyword = line.split(None, 1)[0].lower()
        if keyword == "endif":
            if not open_ifs:
                raise TableError(f"{name}:{number}: endif without if")
            start, _ = open_ifs.pop()
            rule = rules[start]
            rules[start] = RegexpRule(rule.pattern, rule.negate, None, len(rules))
            continue
        if keyword == "if":
            pattern, negate, rest = _compile(name, number, line[2:].strip())
            if rest:
                raise TableError(f"{name}:{number}: if takes no result")
            open_ifs.append((len(rules), number))
            rules.append(RegexpRule(pattern, negate, None, -1))
            continue
        pattern, negate, result = _compile(name, number, line)
        if not result:
            raise TableError(f"{name}:{number}: missing result after the pattern")
        rules.append(RegexpRule(pattern, negate, result, -1))
    if open_ifs:
        raise TableError(f"{name}:{open_ifs[-1][1]}: if without endif")
    return RegexpTable(f"{kind}:{name}", tuple(rules))


for _kind in ("texthash", "hash", "btree", "lmdb"):
    register_table_type(_kind, _open_texthash)
register_table_type("inline", _open_inline)
register_table_type("static", _open_static)
register_table_type("cidr", _open_cidr)
register_table_type("regexp", _open_regexp)

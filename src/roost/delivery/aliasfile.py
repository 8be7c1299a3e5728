"""``alias_maps``: read alias tables for :func:`roost.delivery.aliases.expand_recipient`.

File-based Postfix table types (``hash:``, ``btree:``, ``lmdb:``, ``cdb:``, ``dbm:``,
``texthash:``) name an aliases(5) text file here, read with
:func:`roost.delivery.aliases.parse_aliases` (no ``newaliases`` index is needed); other
types open through :func:`roost.config.open_table` and their values are split with
:func:`roost.delivery.aliases.split_targets`. The first table that has a name wins.

Blocking (reads files at open): open at start-up and on reload, not per message.

See Also: Postfix aliases(5), postalias(1), postconf(5) ``alias_maps``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from roost.config.lookup import LookupTable, TableError, open_table
from roost.delivery.aliases import LookupUnavailable, parse_aliases, split_targets

__all__ = ["AliasFile", "AliasMaps", "load_alias_file", "open_alias_maps"]

#: Table types whose name is an aliases(5) text file.
FILE_TYPES: Final = frozenset({"hash", "btree", "lmdb", "cdb", "dbm", "texthash"})


@dataclass(frozen=True, slots=True)
class AliasFile:
    """One aliases(5) file, parsed.

    Attributes:
        ref: the ``type:/path`` it was opened as.
        aliases: name -> targets.
        problems: ``FILE:LINE: reason`` for each bad line (those entries are left out).
        owner_uid: the file's owner (Postfix runs ``|command`` and ``/file`` targets of a
            non-root-owned alias file with its owner's rights).
    """

    ref: str
    aliases: Mapping[str, tuple[str, ...]]
    problems: tuple[str, ...]
    owner_uid: int

    def lookup(self, key: str) -> str | None:
        """Return the targets of ``key`` joined with ``, `` (the LookupTable interface)."""
        targets = self.aliases.get(key.lower())
        return None if targets is None else ", ".join(targets)


def load_alias_file(path: str, ref: str | None = None) -> AliasFile:
    """Read and parse an aliases(5) file.

    Args:
        path: the file.
        ref: the table reference to report (default ``texthash:PATH``).

    Raises:
        TableError: the file cannot be read (``PATH: cannot read: reason``).
    """
    try:
        with open(path, "rb") as handle:
            owner = os.fstat(handle.fileno()).st_uid
            text = handle.read().decode("utf-8", "replace")
    except OSError as exc:
        raise TableError(f"{path}: cannot read: {exc.strerror or exc}") from None
    aliases, problems = parse_aliases(text, path)
    return AliasFile(ref or f"texthash:{path}", aliases, tuple(problems), owner)


class AliasMaps:
    """The ``alias_maps`` tables in order, as one lookup function.

    Args:
        tables: the opened tables, in ``alias_maps`` order.
    """

    def __init__(self, tables: Iterable[AliasFile | LookupTable]) -> None:
        self.tables = tuple(tables)

    @property
    def problems(self) -> tuple[str, ...]:
        """Every bad line of every alias file (for ``newaliases`` and the log)."""
        return tuple(p for t in self.tables if isinstance(t, AliasFile) for p in t.problems)

    def lookup(self, name: str) -> tuple[str, ...] | None:
        """Return the targets of alias ``name`` (a folded local part), or None.

        This is ``expand_recipient``'s ``lookup_alias``.

        Raises:
            LookupUnavailable: a table failed (OSError, or a value with a bad quote).
        """
        for table in self.tables:
            if isinstance(table, AliasFile):
                found = table.aliases.get(name.lower())
                if found is not None:
                    return found
                continue
            try:
                value = table.lookup(name.lower())
                if value is not None:
                    return split_targets(value)
            except (OSError, ValueError) as exc:
                raise LookupUnavailable(f"{table.ref}: {exc}") from exc
        return None

    def owner_uid(self, name: str) -> int:
        """Return the owner of the alias file that defines ``name`` (0: root or no file)."""
        for table in self.tables:
            if isinstance(table, AliasFile):
                if name.lower() in table.aliases:
                    return table.owner_uid
            elif table.lookup(name.lower()) is not None:
                return 0
        return 0


def open_alias_maps(refs: Iterable[str]) -> AliasMaps:
    """Open the tables of ``alias_maps`` (``settings.tables("alias_maps")``).

    Raises:
        TableError: a table cannot be opened.
    """
    tables: list[AliasFile | LookupTable] = []
    for ref in refs:
        kind, _, name = ref.partition(":")
        if kind in FILE_TYPES and name:
            tables.append(load_alias_file(name, ref))
        else:
            tables.append(open_table(ref))
    return AliasMaps(tables)

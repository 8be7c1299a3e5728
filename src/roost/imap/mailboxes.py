"""Mailbox names and the mailbox list as IMAP shows them: LIST, LSUB, special-use.

Pure functions, no I/O: the session asks the store for the mailbox list and the
subscriptions (in a worker thread) and hands them here.

* Names: the store speaks Unicode with ``.`` between levels; the wire carries modified
  UTF-7 (RFC 9051 §5.1.3) unless the client enabled ``UTF8=ACCEPT`` (RFC 6855 §3), then
  UTF-8. :func:`name_from_client` and :func:`name_to_client` convert.
* Patterns: ``*`` matches anything, ``%`` anything but the hierarchy delimiter (RFC 9051
  §6.3.9); the reference is prefixed to the pattern as Dovecot does; the ``INBOX`` level
  matches in any case.
* LIST-EXTENDED (RFC 5258): selection options ``SUBSCRIBED``, ``RECURSIVEMATCH``,
  ``SPECIAL-USE`` (RFC 6154 §5.1), ``REMOTE`` (nothing remote here); return options
  ``CHILDREN``, ``SUBSCRIBED``, ``SPECIAL-USE`` and ``STATUS`` (RFC 5819, done by the
  session from :attr:`ListEntry.selectable`).
* Special-use folders created at login: :func:`parse_special_use` reads the
  ``special_use_folders`` parameter (``Drafts=\\Drafts, Sent=\\Sent, ...``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from roost.imap.commands import List
from roost.store import (
    HIERARCHY_SEPARATOR,
    INBOX,
    SPECIAL_USE_ATTRIBUTES,
    InvalidMailboxName,
    MailboxInfo,
    MUTF7Error,
    decode_mutf7,
    encode_mutf7,
)

__all__ = [
    "DELIMITER",
    "ListEntry",
    "PatternMatcher",
    "canonical_pattern",
    "list_entries",
    "list_root",
    "lsub_entries",
    "name_from_client",
    "name_to_client",
    "parse_special_use",
]

DELIMITER: Final = HIERARCHY_SEPARATOR
"""The hierarchy delimiter shown to clients (Dovecot's Maildir++ default ``.``)."""

_NONEXISTENT: Final = "\\NonExistent"
_NOSELECT: Final = "\\Noselect"
_SUBSCRIBED: Final = "\\Subscribed"
_HAS_CHILDREN: Final = "\\HasChildren"
_HAS_NO_CHILDREN: Final = "\\HasNoChildren"
_SPECIAL_USE_BY_LOWER: Final = {name.lower(): name for name in SPECIAL_USE_ATTRIBUTES}


# --- names ----------------------------------------------------------------------------------


def name_from_client(name: str, *, utf8: bool) -> str:
    """The store's name for a mailbox name as the client sent it.

    Args:
        name: the name from the command (``INBOX`` already canonical).
        utf8: ``UTF8=ACCEPT`` is enabled: the name is UTF-8 already.

    Raises:
        InvalidMailboxName: the name is not valid modified UTF-7 (RFC 9051 §5.1.3).
    """
    if utf8:
        return name
    try:
        return decode_mutf7(name)
    except (MUTF7Error, ValueError):
        raise InvalidMailboxName(
            f"mailbox name {name!r} is not valid modified UTF-7", mailbox=name
        ) from None


def name_to_client(name: str, *, utf8: bool) -> str:
    """The wire form of a store name: modified UTF-7, or UTF-8 under ``UTF8=ACCEPT``."""
    return name if utf8 else encode_mutf7(name)


def parse_special_use(text: str) -> dict[str, str]:
    """Parse ``Drafts=\\Drafts, Sent=\\Sent, Sent Items=\\Sent`` into name -> attribute.

    Entries are separated by commas (or new lines); a name may hold spaces and ``.`` for
    a level below another one. An empty text means no special-use folders.

    Raises:
        ValueError: an entry without ``=``, an empty name, or an attribute that is not an
            RFC 6154 / RFC 8457 special-use attribute.
    """
    result: dict[str, str] = {}
    for raw in re.split(r"[,\n]", text):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, attribute = entry.rpartition("=")
        name, attribute = name.strip(), attribute.strip()
        if not sep or not name:
            raise ValueError(f"{entry!r}: expected NAME=\\Attribute")
        canonical = _SPECIAL_USE_BY_LOWER.get(attribute.lower())
        if canonical is None:
            known = ", ".join(sorted(SPECIAL_USE_ATTRIBUTES))
            raise ValueError(f"{entry!r}: unknown special-use attribute (known: {known})")
        result[name] = canonical
    return result


# --- patterns ---------------------------------------------------------------------------------


class PatternMatcher:
    """Matches store names against one LIST/LSUB pattern (reference already prefixed).

    Args:
        pattern: the canonical pattern, e.g. ``"Archive.%"``, in store form (Unicode).
    """

    __slots__ = ("_partial", "_regex", "pattern")

    def __init__(self, pattern: str) -> None:
        head, sep, rest = pattern.partition(DELIMITER)
        if head.upper() == INBOX:
            pattern = INBOX + sep + rest
        self.pattern = pattern
        self._regex = re.compile(_regex_text(pattern), re.DOTALL)
        # For LSUB's "%" rule: a name whose level ends where a "%" stops.
        self._partial = re.compile(_regex_text(pattern) + "(?=" + re.escape(DELIMITER) + ")")

    def matches(self, name: str) -> bool:
        """Whether ``name`` matches the whole pattern."""
        return self._regex.fullmatch(name) is not None

    def matching_prefix(self, name: str) -> str | None:
        """The ancestor of ``name`` that matches the pattern (``a`` of ``a.b`` for ``%``).

        Returns:
            The longest proper ancestor of ``name`` that the pattern matches, or
            ``None``. RFC 3501 §6.3.9 shows such an ancestor with ``\\Noselect``.
        """
        levels = name.split(DELIMITER)
        for end in range(len(levels) - 1, 0, -1):
            ancestor = DELIMITER.join(levels[:end])
            if self.matches(ancestor):
                return ancestor
        return None


def _regex_text(pattern: str) -> str:
    pieces: list[str] = []
    for char in pattern:
        if char == "*":
            pieces.append(".*")
        elif char == "%":
            pieces.append("[^" + re.escape(DELIMITER) + "]*")
        else:
            pieces.append(re.escape(char))
    return "".join(pieces)


def canonical_pattern(reference: str, pattern: str) -> str:
    """Join reference and pattern (RFC 9051 §6.3.9; Dovecot simply concatenates)."""
    if reference and pattern.startswith(DELIMITER) and reference.endswith(DELIMITER):
        return reference + pattern[1:]
    return reference + pattern


def list_root(reference: str) -> str:
    """The root name for ``LIST reference ""``: the reference's first level and delimiter."""
    head, sep, _ = reference.partition(DELIMITER)
    return head + sep if sep else ""


# --- LIST ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One ``* LIST`` (or ``* LSUB``) line before name encoding.

    Attributes:
        name: the store name.
        attributes: the attributes to show, in a stable order.
        child_info: ``("SUBSCRIBED",)`` for RECURSIVEMATCH parents (RFC 5258 §4).
        selectable: the mailbox exists and can be selected (LIST-STATUS applies).
    """

    name: str
    attributes: tuple[str, ...]
    child_info: tuple[str, ...] = ()
    selectable: bool = False


def _order(attributes: Iterable[str]) -> tuple[str, ...]:
    rank = {_NOSELECT: 0, _NONEXISTENT: 1, _HAS_CHILDREN: 2, _HAS_NO_CHILDREN: 2, _SUBSCRIBED: 3}
    return tuple(sorted(set(attributes), key=lambda name: (rank.get(name, 4), name)))


def _ancestors(name: str) -> list[str]:
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:end]) for end in range(1, len(levels))]


def list_entries(
    command: List,
    infos: Sequence[MailboxInfo],
    subscriptions: Iterable[str],
    patterns: Sequence[str],
) -> list[ListEntry]:
    """What ``LIST`` answers (RFC 9051 §6.3.9, RFC 5258, RFC 6154, RFC 5819).

    Args:
        command: the LIST command (options decide attributes and selection).
        infos: every mailbox from the store, parents included.
        subscriptions: the subscribed names, existing or not.
        patterns: the canonical patterns in store form (reference prefixed, decoded).

    Returns:
        The entries in mailbox-list order, each name once.
    """
    selection = command.selection
    returns = command.return_options
    show_subscribed = "SUBSCRIBED" in returns or "SUBSCRIBED" in selection
    only_subscribed = "SUBSCRIBED" in selection
    only_special = "SPECIAL-USE" in selection
    recursive = "RECURSIVEMATCH" in selection
    subscribed = set(subscriptions)
    by_name = {info.name: info for info in infos}
    matchers = [PatternMatcher(pattern) for pattern in patterns]

    def selected_by_criteria(name: str) -> bool:
        info = by_name.get(name)
        if only_subscribed and name not in subscribed:
            return False
        return not (only_special and (info is None or info.special_use is None))

    candidates: list[str] = [info.name for info in infos]
    if only_subscribed:
        extra = [name for name in subscriptions if name not in by_name]
        candidates += extra
        for name in extra:
            candidates += [a for a in _ancestors(name) if a not in by_name]
    meeting = {name for name in candidates if selected_by_criteria(name)}
    parents_of_meeting: set[str] = set()
    if recursive:
        for name in meeting:
            parents_of_meeting.update(_ancestors(name))

    entries: list[ListEntry] = []
    done: set[str] = set()
    for name in sorted(set(candidates), key=lambda n: (n != INBOX, n)):
        if name in done or not any(matcher.matches(name) for matcher in matchers):
            continue
        info = by_name.get(name)
        child_info: tuple[str, ...] = ()
        if name not in meeting:
            if not (recursive and name in parents_of_meeting):
                continue
            child_info = ("SUBSCRIBED",) if only_subscribed else ()
        attributes = set() if info is None else set(info.attributes)
        if info is None:
            attributes.add(_NONEXISTENT)
            if any(other.startswith(name + DELIMITER) for other in by_name):
                attributes.add(_HAS_CHILDREN)
        if name in subscribed:
            attributes.add(_SUBSCRIBED)
        if not show_subscribed:
            attributes.discard(_SUBSCRIBED)
        if not command.extended:
            attributes.discard(_NONEXISTENT)
            if info is None:
                attributes.add(_NOSELECT)
        elif _NONEXISTENT in attributes:
            attributes.discard(_NOSELECT)  # implied (RFC 5258 §3.4)
        if info is not None and info.special_use is not None:
            attributes.add(info.special_use)
        selectable = info is not None and _NOSELECT not in attributes
        entries.append(ListEntry(name, _order(attributes), child_info, selectable))
        done.add(name)
    return entries


def lsub_entries(
    infos: Sequence[MailboxInfo], subscriptions: Iterable[str], pattern: str
) -> list[ListEntry]:
    """What ``LSUB`` answers (RFC 3501 §6.3.9).

    Subscribed names that match, with ``\\Noselect`` when they cannot be selected; with a
    ``%`` that stops above a subscribed name, its matching ancestor with ``\\Noselect``.
    """
    matcher = PatternMatcher(pattern)
    by_name: Mapping[str, MailboxInfo] = {info.name: info for info in infos}
    subscribed = list(dict.fromkeys(subscriptions))
    entries: dict[str, ListEntry] = {}
    for name in subscribed:
        if matcher.matches(name):
            info = by_name.get(name)
            noselect = info is None or _NOSELECT in info.attributes
            entries[name] = ListEntry(name, (_NOSELECT,) if noselect else (), (), not noselect)
        elif "%" in matcher.pattern:
            ancestor = matcher.matching_prefix(name)
            if ancestor is not None and ancestor not in entries and ancestor not in subscribed:
                entries[ancestor] = ListEntry(ancestor, (_NOSELECT,))
    return sorted(entries.values(), key=lambda entry: (entry.name != INBOX, entry.name))

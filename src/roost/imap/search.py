"""Evaluating ``SEARCH`` criteria against one message (RFC 9051 §6.4.4, RFC 3501 §6.4.4).

The session builds a :class:`MessageContext` per message from what the mailbox index
already knows (sequence number, UID, flags, internal date, size, mod-sequence) and a
loader for the message itself; :func:`matches` then walks the key tree. The loader runs
only when a key needs the header or the body, and at most once per message: the cheap
keys of an ``AND`` (and of an ``OR``) are tried first, so ``SEARCH UNSEEN FROM x``
reads only the unseen messages and ``SEARCH FLAGGED`` reads none. :func:`needs_message`
tells the session in advance whether any message will be read at all.

Semantics:

* strings (``FROM``, ``SUBJECT``, ``HEADER``, ``BODY``, ``TEXT``) match as
  case-insensitive substrings (Unicode case folding) of the decoded text: header fields
  with RFC 2047 encoded words decoded, bodies with their transfer encoding removed and
  converted from their charset; an empty ``HEADER`` string matches every message with
  that field;
* ``HEADER``, ``FROM``, ``TO``, ``CC``, ``BCC`` and ``SUBJECT`` look at the message header
  only; ``BODY`` at the text parts and the headers of attached messages; ``TEXT`` at both;
* dates compare as dates, time of day ignored: the internal date (``BEFORE``, ``ON``,
  ``SINCE``) as a calendar date in :attr:`MessageContext.zone` (UTC unless the session
  gives the server's zone); the ``Date:`` field (``SENTBEFORE``, ``SENTON``,
  ``SENTSINCE``) as a calendar date in the zone written in the field, so a message sent
  ``Mon, 1 Jan 2024 23:30 -0800`` is ``SENTON 1-Jan-2024`` anywhere. A message whose Date
  field is missing or unreadable uses its internal date instead, as SORT does (RFC 5256
  §2.2);
* ``LARGER``/``SMALLER`` are strict; ``*`` in a sequence set is the highest message
  sequence number or UID of the mailbox;
* flags and keywords compare without case; ``NEW`` (``RECENT UNSEEN``) and ``OLD``
  (``NOT RECENT``) arrive as such from the parser;
* ``MODSEQ`` compares the message's mod-sequence: roost keeps no separate
  mod-sequences per flag, which RFC 7162 §3.1.5 allows.

No I/O: the loader is the session's.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from roost.imap.commands import (
    DateField,
    DateRelation,
    SearchAll,
    SearchAnd,
    SearchBody,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchLarger,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSmaller,
    SearchText,
)
from roost.imap.message import ParsedMessage

__all__ = ["MessageContext", "header_fields", "matches", "needs_message"]

_UTC: Final = datetime.UTC


@dataclass(slots=True)
class MessageContext:
    """What a search may ask about one message (one per message of each SEARCH: a plain
    dataclass, made in less than half a frozen one's time; treat it as read-only).

    Attributes:
        msn: the message sequence number.
        uid: the UID.
        flags: the flags set, ``\\Recent`` included when it is, keywords as stored.
        internal_date: the internal date, seconds since the epoch.
        size: RFC822.SIZE in octets.
        max_msn: the number of messages in the mailbox (the value of ``*``).
        max_uid: the highest UID in the mailbox (the value of ``*`` in ``UID`` sets).
        message: returns the parsed message; called only when a key needs the header or
            body, at most once per :func:`matches` call.
        mod_seq: the mod-sequence (RFC 7162), 0 without CONDSTORE.
        zone: the time zone whose calendar dates ``BEFORE``/``ON``/``SINCE`` compare.
        header: the raw header fields ``message`` parses, when the caller has them
            without reading the message (the index's search cache): a header key whose
            text cannot occur in them is answered without parsing.
    """

    msn: int
    uid: int
    flags: frozenset[str]
    internal_date: float
    size: int
    max_msn: int
    max_uid: int
    message: Callable[[], ParsedMessage] = field(repr=False)
    mod_seq: int = 0
    zone: datetime.tzinfo = _UTC
    header: bytes | None = field(default=None, repr=False)


def needs_message(key: SearchKey) -> bool:
    """Whether evaluating ``key`` may need the message header or body.

    When it does not, :func:`matches` never calls the loader.
    """
    return _cost(key) > 0


def header_fields(key: SearchKey) -> frozenset[str] | None:
    """The header fields (lower case) ``key`` reads, or None when it needs the body.

    A key for which this returns a set can be evaluated against a message made of just
    those header fields (what the session keeps in the index for ``SEARCH FROM`` etc.).
    """
    names: set[str] = set()

    def walk(inner: SearchKey) -> bool:
        match inner:
            case SearchHeader(field=name):
                names.add(name.lower())
            case SearchDate(field=DateField.SENT):
                names.add("date")
            case SearchBody() | SearchText():
                return False
            case SearchNot(key=child):
                return walk(child)
            case SearchOr(left=left, right=right):
                return walk(left) and walk(right)
            case SearchAnd(keys=keys):
                return all(walk(child) for child in keys)
        return True

    return frozenset(names) if walk(key) else None


def matches(key: SearchKey, ctx: MessageContext) -> bool:
    """Whether the message described by ``ctx`` satisfies ``key``.

    Raises:
        ValueError: ``key`` holds the saved set ``$``: the session substitutes the saved
            search result first (RFC 5182 §2.1).

    See Also: RFC 9051 §6.4.4 (SEARCH keys), RFC 7162 §3.1.5 (MODSEQ).
    """
    return _Evaluation(ctx).test(key)


# --- cost: 0 needs nothing but the index, 1 the header, 2 the body ------------------------


def _cost(key: SearchKey) -> int:
    match key:
        case SearchHeader():
            return 1
        case SearchDate(field=DateField.SENT):
            return 1
        case SearchBody() | SearchText():
            return 2
        case SearchNot(key=inner):
            return _cost(inner)
        case SearchOr(left=left, right=right):
            return max(_cost(left), _cost(right))
        case SearchAnd(keys=keys):
            return max((_cost(inner) for inner in keys), default=0)
        case _:
            return 0


class _Evaluation:
    """One message's evaluation: loads and folds what is needed, once."""

    __slots__ = ("_flags", "_message", "ctx")

    def __init__(self, ctx: MessageContext) -> None:
        self.ctx = ctx
        self._flags: frozenset[str] | None = None
        self._message: ParsedMessage | None = None

    @property
    def message(self) -> ParsedMessage:
        if self._message is None:
            self._message = self.ctx.message()
        return self._message

    def has_flag(self, flag: str) -> bool:
        if self._flags is None:
            self._flags = frozenset(name.casefold() for name in self.ctx.flags)
        return flag.casefold() in self._flags

    def test(self, key: SearchKey) -> bool:
        ctx = self.ctx
        match key:
            case SearchAll():
                return True
            case SearchFlag(flag=flag, present=present):
                return self.has_flag(flag) == present
            case SearchSequence(sequence_set=sequence_set, uid=uid):
                if uid:
                    return sequence_set.contains(ctx.uid, max(ctx.max_uid, ctx.uid))
                return sequence_set.contains(ctx.msn, max(ctx.max_msn, ctx.msn))
            case SearchLarger(size=size):
                return ctx.size > size
            case SearchSmaller(size=size):
                return ctx.size < size
            case SearchModSeq(mod_seq=mod_seq):
                return ctx.mod_seq >= mod_seq
            case SearchDate(field=date_field, relation=relation, date=date):
                return _compare(self.date_of(date_field), relation, date)
            case SearchHeader(field=name, value=value):
                needle = value.casefold()
                if ctx.header is not None and _absent(needle, ctx.header):
                    return False
                return any(needle in text.casefold() for text in self.message.header_values(name))
            case SearchBody(value=value):
                return value.casefold() in self.message.text_for_search().casefold()
            case SearchText(value=value):
                needle = value.casefold()
                message = self.message
                return (
                    needle in message.header_text_for_search().casefold()
                    or needle in message.text_for_search().casefold()
                )
            case SearchNot(key=inner):
                return not self.test(inner)
            case SearchOr(left=left, right=right):
                if _cost(right) < _cost(left):
                    left, right = right, left
                return self.test(left) or self.test(right)
            case SearchAnd(keys=keys):
                return all(self.test(inner) for inner in sorted(keys, key=_cost))
        raise TypeError(f"not a search key: {key!r}")  # pragma: no cover

    def date_of(self, date_field: DateField) -> datetime.date:
        if date_field is DateField.SENT:
            sent = self.message.sent_date()
            if sent is not None:
                return sent.date()
        return _calendar_date(self.ctx.internal_date, self.ctx.zone)


def _absent(needle: str, header: bytes) -> bool:
    """True if no header value in ``header`` can contain ``needle`` (casefolded).

    Only decided for what is cheap and exact: an ASCII needle without white space (so no
    unfolding can make it appear), and ASCII header text without RFC 2047 encoded words
    (so decoding and case folding change nothing but the ASCII letters' case).
    """
    if not needle or not needle.isascii() or not header.isascii() or b"=?" in header:
        return False
    if any(c.isspace() for c in needle):
        return False
    return needle.encode("ascii") not in header.lower()


def _calendar_date(timestamp: float, zone: datetime.tzinfo) -> datetime.date:
    try:
        return datetime.datetime.fromtimestamp(timestamp, zone).date()
    except (OverflowError, OSError, ValueError):
        return datetime.date.max if timestamp > 0 else datetime.date.min


def _compare(value: datetime.date, relation: DateRelation, date: datetime.date) -> bool:
    if relation is DateRelation.BEFORE:
        return value < date
    if relation is DateRelation.ON:
        return value == date
    return value >= date

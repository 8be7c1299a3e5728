"""IMAP client commands as values: one frozen dataclass per command (RFC 9051 §6, RFC 3501 §6).

The parser (:mod:`roost.imap.grammar`) builds these; the session dispatches on their type
through an explicit table. Every command has the client's ``tag``; the commands that also
exist as ``UID <command>`` carry ``uid`` (``True`` when the numbers are UIDs).

Values are decoded once here so the session never sees grammar:

* mailbox names are ``str``: UTF-8 when ``UTF8=ACCEPT`` is enabled (RFC 6855), otherwise
  ASCII (modified UTF-7 is left to the store, RFC 9051 §5.1.3); any case of ``INBOX`` is
  ``"INBOX"`` (RFC 9051 §5.1);
* flags are ``str``: system flags in their canonical spelling (``\\Seen``), keywords as sent;
* dates are :class:`datetime.date`, date-times aware :class:`datetime.datetime`;
* message data (``APPEND``) is ``bytes``, exactly as received.

Search criteria are a tree of ``Search*`` nodes (:data:`SearchKey`); fetch items are
:class:`FetchAttribute`, :class:`FetchBody` and :class:`FetchBinarySize` (:data:`FetchItem`),
with the ``ALL``/``FAST``/``FULL`` macros already expanded.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from roost.imap.sequence import SequenceSet

__all__ = [
    "ANSWERED",
    "DELETED",
    "DRAFT",
    "FLAGGED",
    "RECENT",
    "SEEN",
    "SYSTEM_FLAGS",
    "Append",
    "AppendMessage",
    "Authenticate",
    "Capability",
    "Check",
    "Close",
    "Command",
    "Compress",
    "Copy",
    "Create",
    "DateField",
    "DateRelation",
    "Delete",
    "Enable",
    "Examine",
    "Expunge",
    "Fetch",
    "FetchAttribute",
    "FetchBinarySize",
    "FetchBody",
    "FetchItem",
    "GetQuota",
    "GetQuotaRoot",
    "Id",
    "Idle",
    "List",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "Namespace",
    "Noop",
    "QResync",
    "Rename",
    "Search",
    "SearchAll",
    "SearchAnd",
    "SearchBody",
    "SearchDate",
    "SearchFlag",
    "SearchHeader",
    "SearchKey",
    "SearchLarger",
    "SearchModSeq",
    "SearchNot",
    "SearchOr",
    "SearchReturn",
    "SearchSequence",
    "SearchSmaller",
    "SearchText",
    "Section",
    "SectionText",
    "Select",
    "SelectCommand",
    "SetQuota",
    "StartTLS",
    "Status",
    "Store",
    "StoreMode",
    "Subscribe",
    "UidExpunge",
    "Unselect",
    "Unsubscribe",
]

# --- flags (RFC 9051 §2.3.2) ------------------------------------------------------------

SEEN: Final = "\\Seen"
ANSWERED: Final = "\\Answered"
FLAGGED: Final = "\\Flagged"
DELETED: Final = "\\Deleted"
DRAFT: Final = "\\Draft"
RECENT: Final = "\\Recent"
"""IMAP4rev1 only (RFC 3501 §2.3.2); a client can never set it."""

SYSTEM_FLAGS: Final[frozenset[str]] = frozenset({SEEN, ANSWERED, FLAGGED, DELETED, DRAFT})
"""The system flags a client may set with ``STORE`` or ``APPEND``."""


# --- the base -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """What every command has.

    Attributes:
        tag: the client's tag, echoed in the tagged reply (RFC 9051 §2.2.1).
    """

    tag: str


# --- any state (RFC 9051 §6.1) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capability(Command):
    """``CAPABILITY`` (RFC 9051 §6.1.1)."""


@dataclass(frozen=True, slots=True)
class Noop(Command):
    """``NOOP`` (RFC 9051 §6.1.2): a chance to send pending untagged updates."""


@dataclass(frozen=True, slots=True)
class Logout(Command):
    """``LOGOUT`` (RFC 9051 §6.1.3): ``* BYE``, tagged ``OK``, then close."""


@dataclass(frozen=True, slots=True)
class Id(Command):
    """``ID`` (RFC 2971): the client's identification.

    Attributes:
        parameters: ``(field, value)`` pairs in the order sent (value ``None`` for
            ``NIL``), or ``None`` for ``ID NIL``. Values are UTF-8 decoded, invalid octets
            replaced: they are for logs only.
    """

    parameters: tuple[tuple[str, str | None], ...] | None


# --- not authenticated (RFC 9051 §6.2) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    """``STARTTLS`` (RFC 9051 §6.2.1).

    After the tagged ``OK`` the session discards whatever the client sent behind the
    command (``Connection.take_unprocessed()``: plaintext injection, CVE-2011-0411).
    """


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """``AUTHENTICATE mechanism [initial-response]`` (RFC 9051 §6.2.2, SASL-IR RFC 4959).

    Attributes:
        mechanism: the SASL mechanism name, uppercased (``PLAIN``).
        initial_response: the base64 text as sent (``b"="`` for an empty response), for
            ``roost.auth.sasl.decode_response(..., initial=True)``; ``None`` when absent.
    """

    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True, slots=True)
class Login(Command):
    """``LOGIN user password`` (RFC 9051 §6.2.3); both UTF-8 decoded."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"Login(tag={self.tag!r}, user={self.user!r}, password=<hidden>)"


# --- authenticated (RFC 9051 §6.3) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enable(Command):
    """``ENABLE cap...`` (RFC 5161, RFC 9051 §6.3.1).

    Attributes:
        capabilities: the names, uppercased, in the order sent.
    """

    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QResync:
    """The ``QRESYNC`` parameter of ``SELECT``/``EXAMINE`` (RFC 7162 §3.2.5).

    Attributes:
        uid_validity: the UIDVALIDITY the client last knew.
        mod_seq: the last known HIGHESTMODSEQ.
        known_uids: the UIDs the client knows, or ``None``.
        seq_match: ``(message sequence numbers, their UIDs)`` samples, or ``None``.
    """

    uid_validity: int
    mod_seq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class SelectCommand(Command):
    """What ``SELECT`` and ``EXAMINE`` share; never built itself.

    Attributes:
        mailbox: the mailbox name.
        condstore: the ``CONDSTORE`` parameter was given (RFC 7162 §3.1.8).
        qresync: the ``QRESYNC`` parameter (RFC 7162 §3.2.5), or ``None``.
    """

    mailbox: str
    condstore: bool = False
    qresync: QResync | None = None

    @property
    def read_only(self) -> bool:
        """``True`` for ``EXAMINE``."""
        return isinstance(self, Examine)


@dataclass(frozen=True, slots=True)
class Select(SelectCommand):
    """``SELECT mailbox [(params)]`` (RFC 9051 §6.3.2)."""


@dataclass(frozen=True, slots=True)
class Examine(SelectCommand):
    """``EXAMINE mailbox [(params)]`` (RFC 9051 §6.3.3): ``SELECT`` read-only."""


@dataclass(frozen=True, slots=True)
class Create(Command):
    """``CREATE mailbox [(USE (attrs))]`` (RFC 9051 §6.3.4, CREATE-SPECIAL-USE RFC 6154).

    Attributes:
        special_use: special-use attributes such as ``\\Drafts``, as sent.
    """

    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete(Command):
    """``DELETE mailbox`` (RFC 9051 §6.3.5)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    """``RENAME mailbox new_mailbox`` (RFC 9051 §6.3.6)."""

    mailbox: str
    new_mailbox: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    """``SUBSCRIBE mailbox`` (RFC 9051 §6.3.7)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    """``UNSUBSCRIBE mailbox`` (RFC 9051 §6.3.8)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """``LIST [(selection)] reference pattern(s) [RETURN (options)]`` (RFC 9051 §6.3.9).

    Attributes:
        reference: the reference name (not INBOX-normalized).
        patterns: the mailbox patterns with ``*`` and ``%`` wildcards; several with the
            extended syntax ``(p1 p2)`` (RFC 5258 §3).
        selection: selection options, uppercased: ``SUBSCRIBED``, ``REMOTE``,
            ``RECURSIVEMATCH``, ``SPECIAL-USE`` (RFC 5258 §3.1, RFC 6154 §5.1).
        return_options: return options, uppercased: ``CHILDREN``, ``SUBSCRIBED``,
            ``SPECIAL-USE``, ``STATUS`` (RFC 5258 §3.2, RFC 6154, RFC 5819).
        status_items: the items of ``RETURN (STATUS (...))`` (RFC 5819), uppercased.
        extended: the LIST-EXTENDED syntax was used (selection options, a pattern list or
            return options), which changes what the reply may contain (RFC 5258 §3).
    """

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    return_options: frozenset[str] = frozenset()
    status_items: tuple[str, ...] = ()
    extended: bool = False


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    """``LSUB reference pattern`` (RFC 3501 §6.3.9; gone in IMAP4rev2)."""

    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    """``NAMESPACE`` (RFC 2342, RFC 9051 §6.3.10)."""


@dataclass(frozen=True, slots=True)
class Status(Command):
    """``STATUS mailbox (items)`` (RFC 9051 §6.3.11).

    Attributes:
        items: uppercased, in the order sent, each one of ``MESSAGES``, ``UIDNEXT``,
            ``UIDVALIDITY``, ``UNSEEN``, ``DELETED``, ``SIZE``, ``RECENT`` (RFC 3501),
            ``HIGHESTMODSEQ`` (RFC 7162), ``APPENDLIMIT`` (RFC 7889), ``MAILBOXID``
            (RFC 8474).
    """

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of an ``APPEND`` (several with MULTIAPPEND, RFC 3502).

    Attributes:
        data: the message octets, exactly as received (one ``bytes`` object, not copied
            again by the parser).
        flags: flags to set; ``\\Recent`` is refused by the parser.
        date_time: the internal date to set, or ``None`` for "now".
        binary: the data came as a ``literal8`` (``~{N}``, BINARY RFC 3516 §4.4).
    """

    data: bytes
    flags: tuple[str, ...] = ()
    date_time: datetime.datetime | None = None
    binary: bool = False

    def __repr__(self) -> str:
        return (
            f"AppendMessage(data=<{len(self.data)} octets>, flags={self.flags!r}, "
            f"date_time={self.date_time!r}, binary={self.binary!r})"
        )


@dataclass(frozen=True, slots=True)
class Append(Command):
    """``APPEND mailbox [flags] [date-time] literal ...`` (RFC 9051 §6.3.12, RFC 3502).

    Attributes:
        mailbox: the target mailbox.
        messages: one message, or several for MULTIAPPEND (all or none are appended).
    """

    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class Idle(Command):
    """``IDLE`` (RFC 2177, RFC 9051 §6.3.13).

    The session answers ``+ idling`` and calls ``Connection.start_idle(tag)``; the
    client's ``DONE`` then arrives as an ``IdleDone`` event.
    """


@dataclass(frozen=True, slots=True)
class GetQuota(Command):
    """``GETQUOTA root`` (RFC 9208 §4.2)."""

    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot(Command):
    """``GETQUOTAROOT mailbox`` (RFC 9208 §4.3)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class SetQuota(Command):
    """``SETQUOTA root (resource limit ...)`` (RFC 9208 §4.1); a server may refuse it.

    Attributes:
        limits: ``(resource name uppercased, limit)`` pairs in the order sent.
    """

    root: str
    limits: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Compress(Command):
    """``COMPRESS mechanism`` (RFC 4978); ``DEFLATE`` is the only mechanism defined.

    After the tagged ``OK`` the session takes ``Connection.take_unprocessed()`` (already
    compressed octets) and feeds them back through the decompressor.
    """

    mechanism: str


# --- selected (RFC 9051 §6.4) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check(Command):
    """``CHECK`` (RFC 3501 §6.4.1; gone in IMAP4rev2, where it is a ``NOOP``)."""


@dataclass(frozen=True, slots=True)
class Close(Command):
    """``CLOSE`` (RFC 9051 §6.4.1): expunge silently (unless read-only) and deselect."""


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    """``UNSELECT`` (RFC 3691, RFC 9051 §6.4.2): deselect without expunging."""


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    """``EXPUNGE`` (RFC 9051 §6.4.3)."""


@dataclass(frozen=True, slots=True)
class UidExpunge(Command):
    """``UID EXPUNGE uids`` (UIDPLUS RFC 4315 §2.1, RFC 9051 §6.4.9)."""

    sequence_set: SequenceSet

    @property
    def uid(self) -> bool:
        """Always ``True``: the set holds UIDs."""
        return True


class SearchReturn(enum.Enum):
    """``SEARCH RETURN (...)`` options (ESEARCH RFC 4731 §3.1, SEARCHRES RFC 5182 §2)."""

    MIN = "MIN"
    MAX = "MAX"
    ALL = "ALL"
    COUNT = "COUNT"
    SAVE = "SAVE"


@dataclass(frozen=True, slots=True)
class Search(Command):
    """``[UID] SEARCH [RETURN (opts)] [CHARSET cs] criteria`` (RFC 9051 §6.4.4).

    Attributes:
        key: the criteria; several top-level keys are a :class:`SearchAnd`.
        uid: ``UID SEARCH``: answer with UIDs.
        charset: ``"UTF-8"`` or ``"US-ASCII"`` when given (others are refused by the
            parser with ``NO [BADCHARSET]``); strings in ``key`` are decoded already.
        return_options: ``None`` for a plain ``SEARCH`` (answer ``* SEARCH``); otherwise
            the ESEARCH options (answer ``* ESEARCH``), where ``RETURN ()`` is read as
            ``RETURN (ALL)`` (RFC 4731 §3.1).
    """

    key: SearchKey
    uid: bool = False
    charset: str | None = None
    return_options: frozenset[SearchReturn] | None = None


class FetchAttribute(enum.Enum):
    """The fetch items that are one keyword (RFC 9051 §6.4.5, RFC 3501 §6.4.5).

    ``RFC822`` is ``BODY[]`` and ``RFC822.TEXT`` is ``BODY[TEXT]`` (both set ``\\Seen``),
    ``RFC822.HEADER`` is ``BODY.PEEK[HEADER]``; each is answered under its own name.
    """

    ENVELOPE = "ENVELOPE"
    FLAGS = "FLAGS"
    INTERNALDATE = "INTERNALDATE"
    RFC822_SIZE = "RFC822.SIZE"
    BODY = "BODY"
    """The non-extensible body structure."""
    BODYSTRUCTURE = "BODYSTRUCTURE"
    UID = "UID"
    MODSEQ = "MODSEQ"
    """RFC 7162 §3.1.4.1."""
    RFC822 = "RFC822"
    RFC822_HEADER = "RFC822.HEADER"
    RFC822_TEXT = "RFC822.TEXT"
    SAVEDATE = "SAVEDATE"
    """RFC 8514."""
    EMAILID = "EMAILID"
    """OBJECTID, RFC 8474 §5.1."""
    THREADID = "THREADID"
    """OBJECTID, RFC 8474 §5.2."""

    def __bytes__(self) -> bytes:
        return self.value.encode("ascii")


class SectionText(enum.Enum):
    """The text part of a body section (RFC 9051 §9 section-msgtext, section-text)."""

    HEADER = "HEADER"
    HEADER_FIELDS = "HEADER.FIELDS"
    HEADER_FIELDS_NOT = "HEADER.FIELDS.NOT"
    TEXT = "TEXT"
    MIME = "MIME"
    """Only after a part number."""


@dataclass(frozen=True, slots=True)
class Section:
    """A body section: ``[]``, ``[HEADER]``, ``[1.2.TEXT]``, ``[HEADER.FIELDS (A B)]``.

    Attributes:
        part: the MIME part path (``(1, 2)`` for ``1.2``); empty for the whole message.
        text: the part of it wanted, or ``None`` for all of it.
        header_fields: the field names for ``HEADER.FIELDS`` and ``HEADER.FIELDS.NOT``,
            as sent.

    See Also: RFC 9051 §6.4.5 (BODY[<section>]) and §9 (section-spec).
    """

    part: tuple[int, ...] = ()
    text: SectionText | None = None
    header_fields: tuple[str, ...] = ()

    def __bytes__(self) -> bytes:
        """The section spec without brackets, as the response names it: ``1.HEADER``."""
        pieces = [str(number).encode("ascii") for number in self.part]
        if self.text is not None:
            pieces.append(self.text.value.encode("ascii"))
        spec = b".".join(pieces)
        if self.text in (SectionText.HEADER_FIELDS, SectionText.HEADER_FIELDS_NOT):
            spec += b" (" + b" ".join(_astring(name) for name in self.header_fields) + b")"
        return spec


@dataclass(frozen=True, slots=True)
class FetchBody:
    """``BODY[section]<partial>``, ``BODY.PEEK[...]``, ``BINARY[...]``, ``BINARY.PEEK[...]``.

    Attributes:
        section: which part of the message.
        peek: ``.PEEK``: do not set ``\\Seen``.
        partial: ``(offset, count)`` in octets from ``<offset.count>``, or ``None``.
        binary: ``BINARY``: content transfer encoding removed (RFC 3516); then
            ``section`` has a part path only.
    """

    section: Section = Section()
    peek: bool = False
    partial: tuple[int, int] | None = None
    binary: bool = False

    @property
    def sets_seen(self) -> bool:
        """Whether fetching this sets ``\\Seen`` (RFC 9051 §6.4.5)."""
        return not self.peek

    def response_name(self) -> bytes:
        """The name of the item in the ``FETCH`` response: ``BODY[HEADER]<0>``.

        ``.PEEK`` is not echoed and a partial shows its origin only (RFC 9051 §7.5.2).
        """
        name = b"BINARY[" if self.binary else b"BODY["
        name += bytes(self.section) + b"]"
        if self.partial is not None:
            name += b"<%d>" % self.partial[0]
        return name

    def __bytes__(self) -> bytes:
        """The item as a client writes it: ``BODY.PEEK[HEADER]<0.100>``."""
        name = b"BINARY" if self.binary else b"BODY"
        if self.peek:
            name += b".PEEK"
        name += b"[" + bytes(self.section) + b"]"
        if self.partial is not None:
            name += b"<%d.%d>" % self.partial
        return name


@dataclass(frozen=True, slots=True)
class FetchBinarySize:
    """``BINARY.SIZE[part]`` (RFC 3516 §4.2)."""

    part: tuple[int, ...] = ()

    def __bytes__(self) -> bytes:
        return b"BINARY.SIZE[" + ".".join(map(str, self.part)).encode("ascii") + b"]"


FetchItem: TypeAlias = FetchAttribute | FetchBody | FetchBinarySize
"""One thing to fetch."""


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """``[UID] FETCH set items [(CHANGEDSINCE n [VANISHED])]`` (RFC 9051 §6.4.5, RFC 7162).

    Attributes:
        sequence_set: message sequence numbers, or UIDs when ``uid``.
        items: what to fetch, macros expanded, in the order sent. ``UID FETCH`` answers
            with ``UID`` even when it is not listed (RFC 9051 §6.4.9): the session adds it.
        uid: ``UID FETCH``.
        changed_since: ``CHANGEDSINCE`` mod-sequence (RFC 7162 §3.1.4.1), or ``None``.
        vanished: ``VANISHED`` (RFC 7162 §3.2.6; only with ``UID`` and ``CHANGEDSINCE``).
    """

    sequence_set: SequenceSet
    items: tuple[FetchItem, ...]
    uid: bool = False
    changed_since: int | None = None
    vanished: bool = False


class StoreMode(enum.Enum):
    """How ``STORE`` changes the flags (RFC 9051 §6.4.6)."""

    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"


@dataclass(frozen=True, slots=True)
class Store(Command):
    """``[UID] STORE set [(UNCHANGEDSINCE n)] (+|-)FLAGS[.SILENT] flags`` (RFC 9051 §6.4.6).

    Attributes:
        sequence_set: message sequence numbers, or UIDs when ``uid``.
        mode: replace, add or remove.
        flags: the flags (``\\Recent`` is refused by the parser).
        silent: ``.SILENT``: no untagged ``FETCH`` for the change itself.
        uid: ``UID STORE``.
        unchanged_since: ``UNCHANGEDSINCE`` mod-sequence (RFC 7162 §3.1.3), or ``None``.
    """

    sequence_set: SequenceSet
    mode: StoreMode
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class Copy(Command):
    """``[UID] COPY set mailbox`` (RFC 9051 §6.4.7)."""

    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Move(Command):
    """``[UID] MOVE set mailbox`` (RFC 6851, RFC 9051 §6.4.8)."""

    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


# --- search keys (RFC 9051 §6.4.4, §9 search-key) -----------------------------------------


@dataclass(frozen=True, slots=True)
class SearchAll:
    """``ALL``: every message."""


@dataclass(frozen=True, slots=True)
class SearchFlag:
    """A flag is set (``present``) or not.

    ``ANSWERED``/``UNANSWERED``, ``DELETED``, ``DRAFT``, ``FLAGGED``, ``SEEN``,
    ``RECENT`` (flag ``\\Recent``), ``KEYWORD``/``UNKEYWORD`` (the keyword as sent).
    ``NEW`` is ``(RECENT UNSEEN)`` and ``OLD`` is ``NOT RECENT`` (RFC 3501 §6.4.4).
    """

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class SearchHeader:
    """A header field contains ``value`` (case-insensitive substring).

    ``FROM``, ``TO``, ``CC``, ``BCC``, ``SUBJECT`` and ``HEADER field value``; an empty
    ``value`` matches every message that has the field (RFC 9051 §6.4.4).
    """

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class SearchBody:
    """``BODY value``: the body (not the header) contains ``value``."""

    value: str


@dataclass(frozen=True, slots=True)
class SearchText:
    """``TEXT value``: the header or the body contains ``value``."""

    value: str


class DateField(enum.Enum):
    """Which date a date criterion compares."""

    INTERNAL = "internal"
    """``BEFORE``/``ON``/``SINCE``: the internal date."""
    SENT = "sent"
    """``SENTBEFORE``/``SENTON``/``SENTSINCE``: the ``Date:`` header field."""


class DateRelation(enum.Enum):
    """How a date criterion compares (dates only; time and zone are ignored)."""

    BEFORE = "before"
    ON = "on"
    SINCE = "since"
    """On or after."""


@dataclass(frozen=True, slots=True)
class SearchDate:
    """``BEFORE``, ``ON``, ``SINCE``, ``SENTBEFORE``, ``SENTON``, ``SENTSINCE``."""

    field: DateField
    relation: DateRelation
    date: datetime.date


@dataclass(frozen=True, slots=True)
class SearchLarger:
    """``LARGER n``: RFC822.SIZE above ``size`` octets."""

    size: int


@dataclass(frozen=True, slots=True)
class SearchSmaller:
    """``SMALLER n``: RFC822.SIZE below ``size`` octets."""

    size: int


@dataclass(frozen=True, slots=True)
class SearchSequence:
    """A bare sequence set (message sequence numbers) or ``UID set``."""

    sequence_set: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class SearchModSeq:
    """``MODSEQ ["/flags/\\Seen" all] n`` (RFC 7162 §3.1.5): mod-sequence at least ``n``.

    Attributes:
        entry_name: the metadata entry (``/flags/\\Seen``), or ``None``.
        entry_type: ``"priv"``, ``"shared"`` or ``"all"`` with an entry name.
    """

    mod_seq: int
    entry_name: str | None = None
    entry_type: Literal["priv", "shared", "all"] | None = None


@dataclass(frozen=True, slots=True)
class SearchNot:
    """``NOT key``."""

    key: SearchKey


@dataclass(frozen=True, slots=True)
class SearchOr:
    """``OR key1 key2``."""

    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SearchAnd:
    """All of ``keys``: a parenthesized list, or several keys at the top level."""

    keys: tuple[SearchKey, ...]


SearchKey: TypeAlias = (
    SearchAll
    | SearchFlag
    | SearchHeader
    | SearchBody
    | SearchText
    | SearchDate
    | SearchLarger
    | SearchSmaller
    | SearchSequence
    | SearchModSeq
    | SearchNot
    | SearchOr
    | SearchAnd
)
"""One node of a search criteria tree."""


def _astring(name: str) -> bytes:
    """Render a header field name as an atom when it can be one, else quoted."""
    data = name.encode("utf-8")
    specials = b'(){ %*"\\]'
    if data and all(0x21 <= octet < 0x7F and octet not in specials for octet in data):
        return data
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'

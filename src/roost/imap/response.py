"""Rendering IMAP server responses (RFC 9051 §7 and §9 response grammar).

Every response is a frozen dataclass whose ``bytes()`` is the complete line(s) to send,
CRLF included:

* status responses: :class:`TaggedResponse` (``a1 OK [READ-WRITE] SELECT completed``),
  :class:`UntaggedResponse` (``* OK``, ``* NO``, ``* BAD``, ``* PREAUTH``, ``* BYE``) and
  :class:`ContinuationResponse` (``+ Ready for literal data``), with an optional
  :class:`ResponseCode` (RFC 5530 codes and those of RFC 9051 §7.1 and the extensions);
* untagged data: ``EXISTS``, ``RECENT``, ``EXPUNGE``, ``VANISHED``, ``FETCH``, ``LIST``,
  ``LSUB``, ``STATUS``, ``SEARCH``, ``ESEARCH``, ``FLAGS``, ``CAPABILITY``, ``ENABLED``,
  ``NAMESPACE``, ``ID``, ``QUOTA``, ``QUOTAROOT`` (one ``*Response`` class each).

Strings are quoted when they can be (7-bit, no CR, LF or NUL; ``"`` and ``\\`` escaped) and
sent as literals (``{N}\\r\\n...``) otherwise; message data in ``FETCH`` is always a
literal. Human-readable texts have CR, LF and NUL replaced by spaces, so a text that echoes
client input cannot inject a response line.

``ENVELOPE``, ``BODY`` and ``BODYSTRUCTURE`` are rendered elsewhere (from the stdlib
``email`` package) and passed through as :class:`RawItem`.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, TypeAlias

from roost.imap.commands import FetchAttribute, FetchBody
from roost.imap.sequence import SequenceSet

__all__ = [
    "ALERT",
    "ALREADYEXISTS",
    "AUTHENTICATIONFAILED",
    "AUTHORIZATIONFAILED",
    "CANNOT",
    "CLIENTBUG",
    "CLOSED",
    "CONTACTADMIN",
    "CONTINUE_LITERAL",
    "CORRUPTION",
    "EXPIRED",
    "EXPUNGEISSUED",
    "HASCHILDREN",
    "INUSE",
    "LIMIT",
    "NOMODSEQ",
    "NONEXISTENT",
    "NOPERM",
    "NOTSAVED",
    "OVERQUOTA",
    "PARSE",
    "PRIVACYREQUIRED",
    "READ_ONLY",
    "READ_WRITE",
    "SERVERBUG",
    "TOOBIG",
    "TRYCREATE",
    "UIDNOTSTICKY",
    "UNAVAILABLE",
    "UNKNOWN_CTE",
    "USEATTR",
    "BinarySizeItem",
    "BodyItem",
    "CapabilityResponse",
    "ContinuationResponse",
    "ESearchResponse",
    "EmailIdItem",
    "EnabledResponse",
    "ExistsResponse",
    "ExpungeResponse",
    "FetchResponse",
    "FetchValue",
    "FlagsItem",
    "FlagsResponse",
    "IdResponse",
    "InternalDateItem",
    "ListResponse",
    "LsubResponse",
    "MailboxStatusResponse",
    "ModSeqItem",
    "NamespaceResponse",
    "QuotaResponse",
    "QuotaRootResponse",
    "RawItem",
    "RecentResponse",
    "Response",
    "ResponseCode",
    "SaveDateItem",
    "SearchResponse",
    "SizeItem",
    "TaggedResponse",
    "ThreadIdItem",
    "UidItem",
    "UntaggedResponse",
    "VanishedResponse",
    "render_date_time",
    "render_flag_list",
    "render_literal",
    "render_mailbox",
    "render_nstring",
    "render_quoted",
    "render_string",
    "render_text",
]

CRLF: Final = b"\r\n"
_MONTHS: Final = "JanFebMarAprMayJunJulAugSepOctNovDec"
_TEXT_UNSAFE: Final = bytes.maketrans(b"\r\n\x00", b"   ")


# --- strings -------------------------------------------------------------------------------


def _octets(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _quotable(data: bytes) -> bool:
    return data.isascii() and b"\r" not in data and b"\n" not in data and b"\x00" not in data


def render_quoted(value: str | bytes) -> bytes:
    """Render ``value`` as a quoted string, escaping ``"`` and ``\\``.

    Raises:
        ValueError: ``value`` holds CR, LF, NUL or 8-bit octets (use :func:`render_string`).

    See Also: RFC 9051 §9 (quoted, QUOTED-CHAR).
    """
    data = _octets(value)
    if not _quotable(data):
        raise ValueError("cannot quote CR, LF, NUL or 8-bit octets")
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def render_literal(value: bytes, *, binary: bool = False) -> bytes:
    """Render ``value`` as a literal ``{N}\\r\\n...`` (``~{N}`` for a literal8).

    See Also: RFC 9051 §9 (literal), RFC 3516 §4.4 (literal8).
    """
    return b"%s{%d}\r\n%s" % (b"~" if binary else b"", len(value), value)


def render_string(value: str | bytes) -> bytes:
    """Render ``value`` as a quoted string when it can be one, else as a literal.

    ``str`` is encoded as UTF-8; 8-bit content goes as a literal, which every IMAP
    client reads, with or without UTF8=ACCEPT.

    See Also: RFC 9051 §9 (string).
    """
    data = _octets(value)
    return render_quoted(data) if _quotable(data) else render_literal(data)


def render_nstring(value: str | bytes | None) -> bytes:
    """Render a string or ``NIL`` for ``None`` (RFC 9051 §9 nstring)."""
    return b"NIL" if value is None else render_string(value)


def render_mailbox(name: str) -> bytes:
    """Render a mailbox name: always quoted (a literal when it must be).

    See Also: RFC 9051 §9 (mailbox).
    """
    return render_string(name)


#: How many checked renderings of flag lists and of atoms are kept (each): a mailbox has
#: few distinct flag sets, and FETCH shows one per message.
_RENDERED_MAX: Final = 4096


def render_flag_list(flags: Iterable[str]) -> bytes:
    """Render ``(\\Seen $Forwarded)``; flags are atoms (``\\*`` included).

    Raises:
        ValueError: a flag holds a space, a parenthesis or an 8-bit or control character.
    """
    if type(flags) is tuple:
        return _render_flag_tuple(flags)
    return _render_flag_list(flags)


def _render_flag_list(flags: Iterable[str]) -> bytes:
    rendered = []
    for flag in flags:
        data = flag.encode("utf-8")
        if not data or any(octet <= 0x20 or octet >= 0x7F or octet in b'(){"' for octet in data):
            raise ValueError(f"not a flag: {flag!r}")
        rendered.append(data)
    return b"(" + b" ".join(rendered) + b")"


#: :func:`render_flag_list` of a tuple, kept once checked (a bad list raises each time).
_render_flag_tuple: Final = functools.lru_cache(maxsize=_RENDERED_MAX)(_render_flag_list)


def render_date_time(value: datetime.datetime) -> bytes:
    """Render ``"17-Jul-1996 02:44:25 -0700"`` (RFC 9051 §9 date-time).

    Raises:
        ValueError: ``value`` is naive (an internal date always has a zone).
    """
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("an IMAP date-time needs a time zone")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = (
        f'"{value.day:2d}-{_MONTHS[3 * value.month - 3 : 3 * value.month]}-{value.year:04d} '
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} "
        f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
    )
    return text.encode("ascii")


def render_text(text: str) -> bytes:
    """Render human-readable text, CR, LF and NUL replaced by spaces (RFC 9051 §9 text)."""
    return text.encode("utf-8").translate(_TEXT_UNSAFE)


@functools.lru_cache(maxsize=_RENDERED_MAX)
def _atom(value: str) -> bytes:
    data = value.encode("ascii")
    if not data or any(octet <= 0x20 or octet >= 0x7F or octet in b'(){%*"\\]' for octet in data):
        raise ValueError(f"not an atom: {value!r}")
    return data


def _number(value: int) -> bytes:
    return b"%d" % value


# --- response codes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseCode:
    """A response code: ``[NAME]`` or ``[NAME argument]`` (RFC 9051 §7.1, RFC 5530).

    Attributes:
        name: the code's atom, e.g. ``"NONEXISTENT"``.
        argument: the rendered argument, or empty.

    Use the module constants for codes without arguments and the class methods for the
    others.
    """

    name: str
    argument: bytes = b""

    def __bytes__(self) -> bytes:
        if self.argument:
            return b"[" + _atom(self.name) + b" " + self.argument + b"]"
        return b"[" + _atom(self.name) + b"]"

    @classmethod
    def uid_next(cls, uid_next: int) -> ResponseCode:
        """``[UIDNEXT n]`` (RFC 9051 §7.1)."""
        return cls("UIDNEXT", _number(uid_next))

    @classmethod
    def uid_validity(cls, uid_validity: int) -> ResponseCode:
        """``[UIDVALIDITY n]`` (RFC 9051 §7.1)."""
        return cls("UIDVALIDITY", _number(uid_validity))

    @classmethod
    def permanent_flags(cls, flags: Iterable[str]) -> ResponseCode:
        """``[PERMANENTFLAGS (\\Deleted \\Seen \\*)]`` (RFC 9051 §7.1)."""
        return cls("PERMANENTFLAGS", render_flag_list(flags))

    @classmethod
    def highest_mod_seq(cls, mod_seq: int) -> ResponseCode:
        """``[HIGHESTMODSEQ n]`` (RFC 7162 §3.1.2.1)."""
        return cls("HIGHESTMODSEQ", _number(mod_seq))

    @classmethod
    def append_uid(cls, uid_validity: int, uids: SequenceSet) -> ResponseCode:
        """``[APPENDUID uidvalidity uids]`` (UIDPLUS RFC 4315 §3, RFC 9051 §7.1)."""
        return cls("APPENDUID", _number(uid_validity) + b" " + bytes(uids))

    @classmethod
    def copy_uid(
        cls, uid_validity: int, source: SequenceSet, destination: SequenceSet
    ) -> ResponseCode:
        """``[COPYUID uidvalidity source-uids destination-uids]`` (RFC 4315 §3)."""
        argument = _number(uid_validity) + b" " + bytes(source) + b" " + bytes(destination)
        return cls("COPYUID", argument)

    @classmethod
    def modified(cls, numbers: SequenceSet) -> ResponseCode:
        """``[MODIFIED set]``: what ``STORE ... UNCHANGEDSINCE`` left alone (RFC 7162)."""
        return cls("MODIFIED", bytes(numbers))

    @classmethod
    def capability(cls, capabilities: Iterable[str]) -> ResponseCode:
        """``[CAPABILITY IMAP4rev2 ...]`` (RFC 9051 §7.1)."""
        return cls("CAPABILITY", b" ".join(_atom(name) for name in capabilities))

    @classmethod
    def bad_charset(cls, charsets: Iterable[str] = ()) -> ResponseCode:
        """``[BADCHARSET (UTF-8 US-ASCII)]`` (RFC 9051 §7.1); bare when empty."""
        names = [render_string(name) if not _is_atom(name) else _atom(name) for name in charsets]
        return cls("BADCHARSET", b"(" + b" ".join(names) + b")" if names else b"")

    @classmethod
    def mailbox_id(cls, object_id: str) -> ResponseCode:
        """``[MAILBOXID (F2212ea87-...)]`` (RFC 8474 §4.1)."""
        return cls("MAILBOXID", b"(" + _atom(object_id) + b")")


def _is_atom(value: str) -> bool:
    try:
        _atom(value)
    except (ValueError, UnicodeEncodeError):
        return False
    return True


# RFC 5530 §3.
UNAVAILABLE: Final = ResponseCode("UNAVAILABLE")
AUTHENTICATIONFAILED: Final = ResponseCode("AUTHENTICATIONFAILED")
AUTHORIZATIONFAILED: Final = ResponseCode("AUTHORIZATIONFAILED")
EXPIRED: Final = ResponseCode("EXPIRED")
PRIVACYREQUIRED: Final = ResponseCode("PRIVACYREQUIRED")
CONTACTADMIN: Final = ResponseCode("CONTACTADMIN")
NOPERM: Final = ResponseCode("NOPERM")
INUSE: Final = ResponseCode("INUSE")
EXPUNGEISSUED: Final = ResponseCode("EXPUNGEISSUED")
CORRUPTION: Final = ResponseCode("CORRUPTION")
SERVERBUG: Final = ResponseCode("SERVERBUG")
CLIENTBUG: Final = ResponseCode("CLIENTBUG")
CANNOT: Final = ResponseCode("CANNOT")
LIMIT: Final = ResponseCode("LIMIT")
OVERQUOTA: Final = ResponseCode("OVERQUOTA")
ALREADYEXISTS: Final = ResponseCode("ALREADYEXISTS")
NONEXISTENT: Final = ResponseCode("NONEXISTENT")
# RFC 9051 §7.1 and extensions.
ALERT: Final = ResponseCode("ALERT")
PARSE: Final = ResponseCode("PARSE")
READ_ONLY: Final = ResponseCode("READ-ONLY")
READ_WRITE: Final = ResponseCode("READ-WRITE")
TRYCREATE: Final = ResponseCode("TRYCREATE")
UIDNOTSTICKY: Final = ResponseCode("UIDNOTSTICKY")
"""RFC 4315 §3."""
HASCHILDREN: Final = ResponseCode("HASCHILDREN")
UNKNOWN_CTE: Final = ResponseCode("UNKNOWN-CTE")
"""RFC 3516 §4.3."""
NOMODSEQ: Final = ResponseCode("NOMODSEQ")
"""RFC 7162 §3.1.2.2."""
CLOSED: Final = ResponseCode("CLOSED")
"""RFC 7162 §3.2.11."""
TOOBIG: Final = ResponseCode("TOOBIG")
"""RFC 4469 §5, used by RFC 7888 §4 and RFC 7889."""
NOTSAVED: Final = ResponseCode("NOTSAVED")
"""RFC 5182 §2.4."""
USEATTR: Final = ResponseCode("USEATTR")
"""RFC 6154 §3."""


# --- status responses ------------------------------------------------------------------------

_DEFAULT_TEXT: Final = {
    "OK": "completed",
    "NO": "failed",
    "BAD": "invalid",
    "PREAUTH": "logged in",
    "BYE": "closing",
}


def _status_line(prefix: bytes, status: str, code: ResponseCode | None, text: str) -> bytes:
    line = prefix + b" " + status.encode("ascii") + b" "
    if code is not None:
        line += bytes(code) + b" "
    return line + render_text(text or _DEFAULT_TEXT[status]) + CRLF


@dataclass(frozen=True, slots=True)
class TaggedResponse:
    """``tag OK|NO|BAD [code] text`` (RFC 9051 §7.1).

    An empty text is replaced by a word (``completed``, ``failed``, ``invalid``): RFC 3501
    clients expect one.
    """

    tag: str
    status: Literal["OK", "NO", "BAD"]
    text: str = ""
    code: ResponseCode | None = None

    def __bytes__(self) -> bytes:
        return _status_line(self.tag.encode("ascii"), self.status, self.code, self.text)


@dataclass(frozen=True, slots=True)
class UntaggedResponse:
    """``* OK|NO|BAD|PREAUTH|BYE [code] text`` (RFC 9051 §7.1)."""

    status: Literal["OK", "NO", "BAD", "PREAUTH", "BYE"]
    text: str = ""
    code: ResponseCode | None = None

    def __bytes__(self) -> bytes:
        return _status_line(b"*", self.status, self.code, self.text)


@dataclass(frozen=True, slots=True)
class ContinuationResponse:
    """``+ text`` (RFC 9051 §7.5): go on with a literal, a SASL step (base64) or IDLE."""

    text: str = ""

    def __bytes__(self) -> bytes:
        return b"+ " + render_text(self.text) + CRLF


CONTINUE_LITERAL: Final = ContinuationResponse("Ready for literal data")
"""The reply to ``ContinuationNeeded``."""


# --- mailbox data -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExistsResponse:
    """``* n EXISTS`` (RFC 9051 §7.4.1)."""

    count: int

    def __bytes__(self) -> bytes:
        return b"* %d EXISTS\r\n" % self.count


@dataclass(frozen=True, slots=True)
class RecentResponse:
    """``* n RECENT`` (RFC 3501 §7.3.2; not in IMAP4rev2)."""

    count: int

    def __bytes__(self) -> bytes:
        return b"* %d RECENT\r\n" % self.count


@dataclass(frozen=True, slots=True)
class ExpungeResponse:
    """``* msn EXPUNGE`` (RFC 9051 §7.5.1)."""

    msn: int

    def __bytes__(self) -> bytes:
        return b"* %d EXPUNGE\r\n" % self.msn


@dataclass(frozen=True, slots=True)
class VanishedResponse:
    """``* VANISHED [(EARLIER)] uids`` (QRESYNC, RFC 7162 §3.2.10)."""

    uids: SequenceSet
    earlier: bool = False

    def __bytes__(self) -> bytes:
        earlier = b"(EARLIER) " if self.earlier else b""
        return b"* VANISHED " + earlier + bytes(self.uids) + CRLF


@dataclass(frozen=True, slots=True)
class FlagsResponse:
    """``* FLAGS (flags)`` (RFC 9051 §7.3.5)."""

    flags: tuple[str, ...]

    def __bytes__(self) -> bytes:
        return b"* FLAGS " + render_flag_list(self.flags) + CRLF


@dataclass(frozen=True, slots=True)
class CapabilityResponse:
    """``* CAPABILITY IMAP4rev2 ...`` (RFC 9051 §7.2.2)."""

    capabilities: tuple[str, ...]

    def __bytes__(self) -> bytes:
        return b"* CAPABILITY " + b" ".join(map(_atom, self.capabilities)) + CRLF


@dataclass(frozen=True, slots=True)
class EnabledResponse:
    """``* ENABLED caps`` (RFC 5161 §3.2); may be empty."""

    capabilities: tuple[str, ...] = ()

    def __bytes__(self) -> bytes:
        return b"".join([b"* ENABLED", *(b" " + _atom(name) for name in self.capabilities), CRLF])


@dataclass(frozen=True, slots=True)
class ListResponse:
    """``* LIST (attributes) delimiter mailbox [extended data]`` (RFC 9051 §7.3.1).

    Attributes:
        mailbox: the name (modified UTF-7 or UTF-8, as the store gives it).
        delimiter: the hierarchy delimiter, or ``None`` for a flat namespace (``NIL``).
        attributes: ``\\HasChildren``, ``\\Noselect``, ``\\Subscribed``, ``\\Sent``...
        child_info: ``CHILDINFO`` extended data (RFC 5258 §4), e.g. ``("SUBSCRIBED",)``.
        old_name: ``OLDNAME`` extended data (RFC 9051 §7.3.1), or ``None``.
    """

    name: ClassVar[bytes] = b"LIST"

    mailbox: str
    delimiter: str | None
    attributes: tuple[str, ...] = ()
    child_info: tuple[str, ...] = ()
    old_name: str | None = None

    def __bytes__(self) -> bytes:
        delimiter = b"NIL" if self.delimiter is None else render_quoted(self.delimiter)
        line = b"* %s %s %s %s" % (
            self.name,
            render_flag_list(self.attributes),
            delimiter,
            render_mailbox(self.mailbox),
        )
        extended = []
        if self.child_info:
            extended.append(
                b'"CHILDINFO" (' + b" ".join(map(render_quoted, self.child_info)) + b")"
            )
        if self.old_name is not None:
            extended.append(b'"OLDNAME" (' + render_mailbox(self.old_name) + b")")
        if extended:
            line += b" (" + b" ".join(extended) + b")"
        return line + CRLF


@dataclass(frozen=True, slots=True)
class LsubResponse(ListResponse):
    """``* LSUB (attributes) delimiter mailbox`` (RFC 3501 §7.2.3)."""

    name: ClassVar[bytes] = b"LSUB"


@dataclass(frozen=True, slots=True)
class MailboxStatusResponse:
    """``* STATUS mailbox (MESSAGES 2 UIDNEXT 5)`` (RFC 9051 §7.3.2).

    Attributes:
        items: ``(name, value)`` pairs in order; a ``str`` value is an object id and is
            rendered in parentheses (``MAILBOXID (F123)``, RFC 8474).
    """

    mailbox: str
    items: tuple[tuple[str, int | str], ...]

    def __bytes__(self) -> bytes:
        rendered = []
        for name, value in self.items:
            shown = b"(" + _atom(value) + b")" if isinstance(value, str) else _number(value)
            rendered.append(_atom(name) + b" " + shown)
        return (
            b"* STATUS " + render_mailbox(self.mailbox) + b" (" + b" ".join(rendered) + b")" + CRLF
        )


@dataclass(frozen=True, slots=True)
class SearchResponse:
    """``* SEARCH 2 3 [(MODSEQ n)]`` (RFC 3501 §7.2.5, RFC 7162 §3.1.5)."""

    numbers: tuple[int, ...]
    mod_seq: int | None = None

    def __bytes__(self) -> bytes:
        parts = [b"* SEARCH", *(b" %d" % number for number in self.numbers)]
        if self.mod_seq is not None:
            parts.append(b" (MODSEQ %d)" % self.mod_seq)
        return b"".join(parts) + CRLF


@dataclass(frozen=True, slots=True)
class ESearchResponse:
    """``* ESEARCH (TAG "a1") UID MIN 2 MAX 9 COUNT 3 ALL 2,5:9`` (RFC 4731 §3.1, RFC 9051).

    Each result is rendered only when not ``None``; ``ALL`` is omitted when the set is
    empty, as RFC 4731 §3.1 requires.
    """

    tag: str | None
    uid: bool = False
    minimum: int | None = None
    maximum: int | None = None
    count: int | None = None
    all: SequenceSet | None = None
    mod_seq: int | None = None

    def __bytes__(self) -> bytes:
        parts = [b"* ESEARCH"]
        if self.tag is not None:
            parts.append(b" (TAG " + render_quoted(self.tag) + b")")
        if self.uid:
            parts.append(b" UID")
        if self.minimum is not None:
            parts.append(b" MIN %d" % self.minimum)
        if self.maximum is not None:
            parts.append(b" MAX %d" % self.maximum)
        if self.count is not None:
            parts.append(b" COUNT %d" % self.count)
        if self.all is not None and (self.all.ranges or self.all.saved):
            parts.append(b" ALL " + bytes(self.all))
        if self.mod_seq is not None:
            parts.append(b" MODSEQ %d" % self.mod_seq)
        return b"".join(parts) + CRLF


Namespace: TypeAlias = tuple[tuple[str, str | None], ...] | None
"""``((prefix, delimiter), ...)`` or ``None`` for ``NIL`` (RFC 2342)."""


def _namespace(namespace: Namespace) -> bytes:
    if not namespace:
        return b"NIL"
    rendered = (
        b"("
        + render_string(prefix)
        + b" "
        + (b"NIL" if delimiter is None else render_quoted(delimiter))
        + b")"
        for prefix, delimiter in namespace
    )
    return b"(" + b"".join(rendered) + b")"


@dataclass(frozen=True, slots=True)
class NamespaceResponse:
    """``* NAMESPACE (("" "/")) NIL NIL`` (RFC 2342 §5, RFC 9051 §7.3.3)."""

    personal: Namespace
    other_users: Namespace = None
    shared: Namespace = None

    def __bytes__(self) -> bytes:
        return (
            b"* NAMESPACE "
            + b" ".join(map(_namespace, (self.personal, self.other_users, self.shared)))
            + CRLF
        )


@dataclass(frozen=True, slots=True)
class IdResponse:
    """``* ID ("name" "roost" ...)`` or ``* ID NIL`` (RFC 2971 §3.2)."""

    parameters: tuple[tuple[str, str | None], ...] | None

    def __bytes__(self) -> bytes:
        if not self.parameters:
            return b"* ID NIL\r\n"
        pairs = (
            render_string(field) + b" " + render_nstring(value) for field, value in self.parameters
        )
        return b"* ID (" + b" ".join(pairs) + b")" + CRLF


@dataclass(frozen=True, slots=True)
class QuotaResponse:
    """``* QUOTA root (STORAGE 10 512 MESSAGE 3 1000)`` (RFC 9208 §5.1).

    Attributes:
        resources: ``(name, usage, limit)``; STORAGE is in units of 1024 octets.
    """

    root: str
    resources: tuple[tuple[str, int, int], ...]

    def __bytes__(self) -> bytes:
        rendered = b" ".join(
            _atom(name) + b" %d %d" % (usage, limit) for name, usage, limit in self.resources
        )
        return b"* QUOTA " + render_string(self.root) + b" (" + rendered + b")" + CRLF


@dataclass(frozen=True, slots=True)
class QuotaRootResponse:
    """``* QUOTAROOT mailbox root...`` (RFC 9208 §5.2)."""

    mailbox: str
    roots: tuple[str, ...] = ()

    def __bytes__(self) -> bytes:
        roots = b"".join(b" " + render_string(root) for root in self.roots)
        return b"* QUOTAROOT " + render_mailbox(self.mailbox) + roots + CRLF


# --- FETCH ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlagsItem:
    """``FLAGS (\\Seen)``."""

    flags: tuple[str, ...]

    def __bytes__(self) -> bytes:
        return b"FLAGS " + render_flag_list(self.flags)


@dataclass(frozen=True, slots=True)
class UidItem:
    """``UID 42``."""

    uid: int

    def __bytes__(self) -> bytes:
        return b"UID %d" % self.uid


@dataclass(frozen=True, slots=True)
class InternalDateItem:
    """``INTERNALDATE "17-Jul-1996 02:44:25 -0700"``."""

    value: datetime.datetime

    def __bytes__(self) -> bytes:
        return b"INTERNALDATE " + render_date_time(self.value)


@dataclass(frozen=True, slots=True)
class SizeItem:
    """``RFC822.SIZE 4286`` (octets)."""

    size: int

    def __bytes__(self) -> bytes:
        return b"RFC822.SIZE %d" % self.size


@dataclass(frozen=True, slots=True)
class ModSeqItem:
    """``MODSEQ (12345)`` (RFC 7162 §3.1.4.1)."""

    mod_seq: int

    def __bytes__(self) -> bytes:
        return b"MODSEQ (%d)" % self.mod_seq


@dataclass(frozen=True, slots=True)
class BodyItem:
    """Message data: ``BODY[HEADER] {N}\\r\\n...``, ``RFC822 {N}...``, ``BINARY[1] ~{N}...``.

    Attributes:
        item: the requested item (its response name is used: no ``.PEEK``, partial origin
            only), or ``RFC822``/``RFC822.HEADER``/``RFC822.TEXT``.
        data: the octets (always sent as a literal; a literal8 for ``BINARY`` data holding
            NUL), or ``None`` for ``NIL``.
    """

    item: FetchBody | FetchAttribute
    data: bytes | None

    def __bytes__(self) -> bytes:
        name = self.item.response_name() if isinstance(self.item, FetchBody) else bytes(self.item)
        if self.data is None:
            return name + b" NIL"
        binary = isinstance(self.item, FetchBody) and self.item.binary and b"\x00" in self.data
        return name + b" " + render_literal(self.data, binary=binary)


@dataclass(frozen=True, slots=True)
class BinarySizeItem:
    """``BINARY.SIZE[1] 1234`` (RFC 3516 §4.2)."""

    part: tuple[int, ...]
    size: int

    def __bytes__(self) -> bytes:
        section = ".".join(map(str, self.part)).encode("ascii")
        return b"BINARY.SIZE[" + section + b"] %d" % self.size


@dataclass(frozen=True, slots=True)
class RawItem:
    """An item rendered elsewhere: ``ENVELOPE``, ``BODY``, ``BODYSTRUCTURE``.

    Attributes:
        name: the item name, e.g. ``"BODYSTRUCTURE"``.
        rendered: its value, already in IMAP syntax (a parenthesized list).
    """

    name: str
    rendered: bytes

    def __bytes__(self) -> bytes:
        return _atom(self.name) + b" " + self.rendered


@dataclass(frozen=True, slots=True)
class SaveDateItem:
    """``SAVEDATE "..."`` or ``SAVEDATE NIL`` (RFC 8514 §4)."""

    value: datetime.datetime | None

    def __bytes__(self) -> bytes:
        return b"SAVEDATE " + (b"NIL" if self.value is None else render_date_time(self.value))


@dataclass(frozen=True, slots=True)
class EmailIdItem:
    """``EMAILID (M6d99ac3275bb4e)`` (RFC 8474 §5.1)."""

    email_id: str

    def __bytes__(self) -> bytes:
        return b"EMAILID (" + _atom(self.email_id) + b")"


@dataclass(frozen=True, slots=True)
class ThreadIdItem:
    """``THREADID (T64b478a75b7ea9)`` or ``THREADID NIL`` (RFC 8474 §5.2)."""

    thread_id: str | None

    def __bytes__(self) -> bytes:
        if self.thread_id is None:
            return b"THREADID NIL"
        return b"THREADID (" + _atom(self.thread_id) + b")"


FetchValue: TypeAlias = (
    FlagsItem
    | UidItem
    | InternalDateItem
    | SizeItem
    | ModSeqItem
    | BodyItem
    | BinarySizeItem
    | RawItem
    | SaveDateItem
    | EmailIdItem
    | ThreadIdItem
)
"""One item of a ``FETCH`` response."""


@dataclass(frozen=True, slots=True)
class FetchResponse:
    """``* msn FETCH (item value ...)`` (RFC 9051 §7.5.2)."""

    msn: int
    items: tuple[FetchValue, ...]

    def __bytes__(self) -> bytes:
        return b"* %d FETCH (" % self.msn + b" ".join(map(bytes, self.items)) + b")" + CRLF


Response: TypeAlias = (
    TaggedResponse
    | UntaggedResponse
    | ContinuationResponse
    | ExistsResponse
    | RecentResponse
    | ExpungeResponse
    | VanishedResponse
    | FlagsResponse
    | CapabilityResponse
    | EnabledResponse
    | ListResponse
    | MailboxStatusResponse
    | SearchResponse
    | ESearchResponse
    | NamespaceResponse
    | IdResponse
    | QuotaResponse
    | QuotaRootResponse
    | FetchResponse
)
"""Anything the server sends; ``bytes(response)`` is the wire form."""

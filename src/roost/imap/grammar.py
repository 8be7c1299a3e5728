"""Parsing IMAP client commands from octets (RFC 9051 §9, RFC 3501 §9 and extensions).

Two layers:

* Element parsers that read one grammar element from a buffer (``bytes``, ``bytearray`` or
  ``memoryview``) at a position and return ``(value, end)``: :func:`parse_atom`,
  :func:`parse_tag`, :func:`parse_number`, :func:`parse_quoted`,
  :func:`parse_literal_marker`, :func:`parse_sequence_set`, :func:`parse_date`,
  :func:`parse_date_time`, :func:`parse_flag`. They raise :class:`ParseError` and never
  look past the element.
* :func:`parse_command`, which reads one whole command framed by the connection: its lines
  and the literal data between them (``lines[i]`` ends with the ``{N}`` marker of
  ``literals[i]``), through a :class:`Reader`, and returns a command value from
  :mod:`roost.imap.commands`. Each command name has its own parser in one explicit table.

Literal data is never searched for grammar: a literal is taken whole from ``literals``, so
an ``APPEND`` message is the very ``bytes`` object the connection collected.

Errors are the peer's (h11's "remote" errors): :class:`ParseError` means ``tag BAD
reason``; :class:`BadCharsetError` means ``tag NO [BADCHARSET (UTF-8 US-ASCII)]``.
A ``ValueError`` or ``RuntimeError`` from here is a bug in the caller.

Not supported (refused with ``BAD``): CATENATE, the UTF8 append-data extension, CONTEXT,
PARTIAL, SORT/THREAD, METADATA, ACL, NOTIFY, the WITHIN and SAVEDATE search keys,
search-key extensions such as ``EMAILID``/``THREADID``/``X-GM-RAW``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn, TypeAlias, TypeVar

from roost.imap.commands import (
    DELETED,
    RECENT,
    SEEN,
    SYSTEM_FLAGS,
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Compress,
    Copy,
    Create,
    DateField,
    DateRelation,
    Delete,
    Enable,
    Examine,
    Expunge,
    Fetch,
    FetchAttribute,
    FetchBinarySize,
    FetchBody,
    FetchItem,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QResync,
    Rename,
    Search,
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
    SearchReturn,
    SearchSequence,
    SearchSmaller,
    SearchText,
    Section,
    SectionText,
    Select,
    SetQuota,
    StartTLS,
    Status,
    Store,
    StoreMode,
    Subscribe,
    UidExpunge,
    Unselect,
    Unsubscribe,
)
from roost.imap.sequence import MAX_NUMBER, SequenceSet, SequenceSetError

__all__ = [
    "COMMANDS",
    "MAX_MOD_SEQ",
    "MAX_NESTING",
    "STATUS_ITEMS",
    "SUPPORTED_CHARSETS",
    "UID_COMMANDS",
    "BadCharsetError",
    "Buffer",
    "LiteralMarker",
    "ParseError",
    "Reader",
    "find_literal_marker",
    "lookup_command",
    "normalize_mailbox",
    "parse_atom",
    "parse_command",
    "parse_command_bytes",
    "parse_date",
    "parse_date_time",
    "parse_flag",
    "parse_literal_marker",
    "parse_number",
    "parse_quoted",
    "parse_sequence_set",
    "parse_tag",
    "split_command",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""What element parsers read from."""

MAX_MOD_SEQ: Final = 2**63 - 1
"""The largest mod-sequence and number64 (RFC 9051 §9, RFC 7162 §7)."""

MAX_NESTING: Final = 32
"""The deepest nesting accepted in search criteria (parentheses, ``NOT``, ``OR``)."""

SUPPORTED_CHARSETS: Final = ("UTF-8", "US-ASCII")
"""Charsets accepted by ``SEARCH CHARSET`` (RFC 9051 §6.4.4: both are required)."""

STATUS_ITEMS: Final[frozenset[str]] = frozenset(
    {
        "MESSAGES",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",
        "SIZE",
        "RECENT",
        "HIGHESTMODSEQ",
        "APPENDLIMIT",
        "MAILBOXID",
    }
)
"""Status data items (RFC 9051 §6.3.11, RFC 3501, RFC 7162, RFC 7889, RFC 8474)."""

_T = TypeVar("_T")


# --- errors -------------------------------------------------------------------------------


class ParseError(ValueError):
    """The client's input is not valid IMAP; the reply is ``tag BAD reason``.

    Attributes:
        reason: what is wrong, short enough for the ``BAD`` text.
        position: the offset in the line being read when the error was found.
    """

    def __init__(self, reason: str, position: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


class BadCharsetError(ParseError):
    """``SEARCH CHARSET`` names a charset we do not support.

    The reply is ``tag NO [BADCHARSET (UTF-8 US-ASCII)] ...`` (RFC 9051 §6.4.4, §7.1).

    Attributes:
        charset: the charset the client asked for.
    """

    def __init__(self, charset: str, position: int = 0) -> None:
        super().__init__(f"charset {charset} is not supported", position)
        self.charset = charset


# --- octet classes (RFC 9051 §9) ------------------------------------------------------------

# ATOM-CHAR: any CHAR except atom-specials ( ) { SP CTL % * " \ ]
_ATOM: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
# ASTRING-CHAR = ATOM-CHAR / resp-specials ("]")
_ASTRING_ATOM: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')
# tag = 1*<any ASTRING-CHAR except "+">
_TAG: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
# list-char = ATOM-CHAR / list-wildcards / resp-specials
_LIST_ATOM: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]+')
_DIGITS: Final = re.compile(rb"[0-9]+")
# quoted = DQUOTE *QUOTED-CHAR DQUOTE; UTF-8 allowed (RFC 9051 §9, RFC 6855 §3)
_QUOTED: Final = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_QUOTED_ESCAPE: Final = re.compile(rb'\\(["\\])')
_LITERAL: Final = re.compile(rb"(~?)\{([0-9]+)(\+?)\}")
_LITERAL_AT_END: Final = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\Z")
_BASE64: Final = re.compile(rb"[A-Za-z0-9+/]+={0,2}|=")
_FETCH_NAME: Final = re.compile(rb"[A-Za-z0-9.]+")
_DATE: Final = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATE_TIME: Final = re.compile(
    rb'"( [0-9]|[0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) '
    rb'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)
_MONTHS: Final[Mapping[bytes, int]] = {
    name: number
    for number, name in enumerate(b"JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)
}
_FLAG_SPELLING: Final[Mapping[str, str]] = {flag.lower(): flag for flag in (*SYSTEM_FLAGS, RECENT)}
_MAX_DIGITS: Final = 20


def _found(buf: Buffer, pos: int) -> str:
    """Describe what is at ``pos`` for an error message."""
    if pos >= len(buf):
        return "the end of the line"
    octet = buf[pos]
    if octet == 0x20:
        return "a space"
    if 0x21 <= octet < 0x7F:
        return repr(chr(octet))
    return f"octet 0x{octet:02x}"


# --- element parsers ------------------------------------------------------------------------


def parse_atom(buf: Buffer, pos: int) -> tuple[str, int]:
    """Parse an atom at ``buf[pos]``.

    Returns:
        The atom as ASCII ``str`` (case kept) and the offset after it.

    Raises:
        ParseError: no atom starts at ``pos``.

    See Also: RFC 9051 §9 (atom, ATOM-CHAR, atom-specials).
    """
    match = _ATOM.match(buf, pos)
    if match is None:
        raise ParseError(f"expected an atom, found {_found(buf, pos)}", pos)
    return match.group().decode("ascii"), match.end()


def parse_tag(buf: Buffer, pos: int) -> tuple[str, int]:
    """Parse a command tag at ``buf[pos]``.

    Raises:
        ParseError: no tag starts at ``pos``.

    See Also: RFC 9051 §9 (tag = 1*<any ASTRING-CHAR except "+">).
    """
    match = _TAG.match(buf, pos)
    if match is None:
        raise ParseError(f"expected a tag, found {_found(buf, pos)}", pos)
    return match.group().decode("ascii"), match.end()


def parse_number(
    buf: Buffer, pos: int, *, minimum: int = 0, maximum: int = MAX_NUMBER
) -> tuple[int, int]:
    """Parse a decimal number at ``buf[pos]`` within ``minimum..maximum``.

    The defaults read ``number`` (unsigned 32-bit); ``minimum=1`` reads ``nz-number``;
    ``maximum=MAX_MOD_SEQ`` reads ``number64`` and mod-sequences.

    Raises:
        ParseError: no digits at ``pos``, or the value is out of range.

    See Also: RFC 9051 §9 (number, nz-number, number64), RFC 7162 §7 (mod-sequence-value).
    """
    match = _DIGITS.match(buf, pos)
    if match is None:
        raise ParseError(f"expected a number, found {_found(buf, pos)}", pos)
    digits = match.group()
    if len(digits) > _MAX_DIGITS:
        raise ParseError("number is too large", pos)
    value = int(digits)
    if value < minimum:
        raise ParseError(f"number must be at least {minimum}", pos)
    if value > maximum:
        raise ParseError("number is too large", pos)
    return value, match.end()


def parse_quoted(buf: Buffer, pos: int) -> tuple[bytes, int]:
    """Parse a quoted string at ``buf[pos]``, undoing ``\\"`` and ``\\\\``.

    Returns:
        The string's octets (8-bit octets are kept: UTF-8 is allowed in IMAP4rev2 and with
        UTF8=ACCEPT) and the offset after the closing quote.

    Raises:
        ParseError: no quoted string starts at ``pos``: unterminated, a backslash before
            another character, or a NUL.

    See Also: RFC 9051 §9 (quoted, QUOTED-CHAR, quoted-specials).
    """
    match = _QUOTED.match(buf, pos)
    if match is None:
        if buf[pos : pos + 1] != b'"':
            raise ParseError(f"expected a quoted string, found {_found(buf, pos)}", pos)
        raise ParseError("unterminated or invalid quoted string", pos)
    value = match.group(1)
    if b"\\" in value:
        value = _QUOTED_ESCAPE.sub(rb"\1", value)
    return bytes(value), match.end()


@dataclass(frozen=True, slots=True)
class LiteralMarker:
    """The octet count that announces a literal: ``{N}``, ``{N+}``, ``~{N}``, ``~{N+}``.

    Attributes:
        size: the number of octets that follow the CRLF; a count of more than 20 digits
            is read as ``2**64`` (always too large).
        synchronizing: ``{N}``: the client waits for a ``+`` continuation before sending
            the data. ``{N+}`` is non-synchronizing (LITERAL+/LITERAL-, RFC 7888).
        binary: ``~{N}``: a literal8 that may hold NUL octets (BINARY, RFC 3516 §4.4).

    See Also: RFC 9051 §9 (literal, literal8), RFC 7888 §3-4.
    """

    size: int
    synchronizing: bool = True
    binary: bool = False

    def __bytes__(self) -> bytes:
        size = b"%d" % self.size
        return (
            (b"~" if self.binary else b"")
            + b"{"
            + size
            + (b"" if self.synchronizing else b"+")
            + b"}"
        )


def _marker(match: re.Match[bytes]) -> LiteralMarker:
    digits = match.group(2)
    size = 2**64 if len(digits) > _MAX_DIGITS else int(digits)
    return LiteralMarker(size, synchronizing=not match.group(3), binary=bool(match.group(1)))


def parse_literal_marker(buf: Buffer, pos: int) -> tuple[LiteralMarker, int]:
    """Parse a literal's octet count (``{12}``, ``{12+}``, ``~{12}``) at ``buf[pos]``.

    Raises:
        ParseError: no literal marker starts at ``pos``.

    See Also: RFC 9051 §9 (literal), RFC 3516 §4.4 (literal8), RFC 7888 §8 (literal).
    """
    match = _LITERAL.match(buf, pos)
    if match is None:
        raise ParseError("invalid literal octet count", pos)
    return _marker(match), match.end()


def find_literal_marker(line: Buffer) -> LiteralMarker | None:
    """Return the literal announced at the end of a command line (CRLF removed), if any.

    This is what the connection checks on every line to know whether literal data and
    another line follow (RFC 9051 §4.3, RFC 7888 §3).
    """
    match = _LITERAL_AT_END.search(line, max(0, len(line) - 64))
    return None if match is None else _marker(match)


def parse_sequence_set(buf: Buffer, pos: int) -> tuple[SequenceSet, int]:
    """Parse a sequence set (``1:4,7,9:*`` or ``$``) at ``buf[pos]``.

    Raises:
        ParseError: no valid sequence set starts at ``pos``.

    See Also: RFC 9051 §9 (sequence-set), RFC 5182 §4 (``$``).
    """
    try:
        return SequenceSet.parse_from(buf, pos)
    except SequenceSetError as error:
        raise ParseError(error.reason, error.position) from None


def parse_date(buf: Buffer, pos: int) -> tuple[datetime.date, int]:
    """Parse a search date (``1-Feb-1994``, optionally quoted) at ``buf[pos]``.

    Raises:
        ParseError: not a date, or not a real day (``31-Feb-2000``).

    See Also: RFC 9051 §9 (date, date-text, date-day, date-month, date-year).
    """
    quoted = buf[pos : pos + 1] == b'"'
    start = pos + 1 if quoted else pos
    match = _DATE.match(buf, start)
    if match is None:
        raise ParseError("expected a date such as 1-Feb-1994", pos)
    end = match.end()
    if quoted:
        if buf[end : end + 1] != b'"':
            raise ParseError("unterminated quoted date", pos)
        end += 1
    day, month, year = match.groups()
    return _date(int(day), month, int(year), pos), end


def _date(day: int, month_name: bytes, year: int, pos: int) -> datetime.date:
    month = _MONTHS.get(month_name.upper())
    if month is None:
        raise ParseError(f"unknown month {month_name.decode('ascii')!r}", pos)
    try:
        return datetime.date(year, month, day)
    except ValueError:
        raise ParseError("no such date", pos) from None


def parse_date_time(buf: Buffer, pos: int) -> tuple[datetime.datetime, int]:
    """Parse a quoted date-time (``"01-Feb-1994 12:00:00 +0000"``) at ``buf[pos]``.

    A one-digit day without the leading space is accepted too.

    Returns:
        An aware datetime in the given zone, and the offset after the closing quote.

    Raises:
        ParseError: not a date-time, or an impossible date, time or zone.

    See Also: RFC 9051 §9 (date-time, date-day-fixed, time, zone).
    """
    match = _DATE_TIME.match(buf, pos)
    if match is None:
        raise ParseError('expected a date-time such as "01-Feb-1994 12:00:00 +0000"', pos)
    day, month, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
    date = _date(int(day), month, int(year), pos)
    offset_minutes = int(zone_h) * 60 + int(zone_m)
    if int(zone_m) >= 60 or offset_minutes >= 24 * 60:
        raise ParseError("invalid time zone", pos)
    offset = datetime.timedelta(minutes=-offset_minutes if sign == b"-" else offset_minutes)
    try:
        value = datetime.datetime.combine(
            date,
            datetime.time(int(hour), int(minute), int(second)),
            tzinfo=datetime.timezone(offset),
        )
    except ValueError:
        raise ParseError("invalid time of day", pos) from None
    return value, match.end()


def parse_flag(
    buf: Buffer, pos: int, *, allow_wildcard: bool = False, allow_recent: bool = False
) -> tuple[str, int]:
    """Parse a flag: a system flag (``\\Seen``), a keyword (``$Forwarded``), or ``\\*``.

    System flags come back in their canonical spelling (flags are case-insensitive,
    RFC 9051 §2.3.2); keywords as sent. Unknown ``\\`` flags (flag-extension) are refused,
    as servers must not accept flags they cannot store.

    Args:
        allow_wildcard: accept ``\\*`` (only in PERMANENTFLAGS-style lists).
        allow_recent: accept ``\\Recent`` (search only; a client cannot set it).

    Raises:
        ParseError: no flag at ``pos``, or a flag not allowed here.

    See Also: RFC 9051 §9 (flag, flag-keyword, flag-extension, flag-perm).
    """
    if buf[pos : pos + 1] == b"\\":
        if buf[pos + 1 : pos + 2] == b"*":
            if not allow_wildcard:
                raise ParseError("\\* is not a flag a client can send", pos)
            return "\\*", pos + 2
        match = _ATOM.match(buf, pos + 1)
        if match is None:
            raise ParseError("expected a flag name after \\", pos)
        name = "\\" + match.group().decode("ascii")
        canonical = _FLAG_SPELLING.get(name.lower())
        if canonical is None:
            raise ParseError(f"unknown system flag {name}", pos)
        if canonical == RECENT and not allow_recent:
            raise ParseError("\\Recent cannot be set by a client", pos)
        return canonical, match.end()
    match = _ATOM.match(buf, pos)
    if match is None:
        raise ParseError(f"expected a flag, found {_found(buf, pos)}", pos)
    return match.group().decode("ascii"), match.end()


def normalize_mailbox(name: str) -> str:
    """Return ``"INBOX"`` for any case of ``inbox``, else ``name`` unchanged (RFC 9051 §5.1)."""
    return "INBOX" if name.upper() == "INBOX" else name


# --- the reader ---------------------------------------------------------------------------


class Reader:
    """A cursor over one framed command: its lines and the literal data between them.

    ``lines[i]`` (without CRLF) ends with the marker of ``literals[i]``; the last line ends
    the command. Element parsers run on the current line; a string that is a literal
    moves the cursor to the start of the next line.

    Args:
        lines: the command's lines, at least one.
        literals: the literal data, one fewer than ``lines``.
        utf8: ``UTF8=ACCEPT`` is enabled (RFC 6855): mailbox names are UTF-8, else ASCII.

    Raises:
        ValueError: ``lines`` and ``literals`` do not fit together (the caller's bug).
    """

    __slots__ = ("_index", "_lines", "_literals", "buf", "pos", "utf8")

    def __init__(
        self, lines: Sequence[bytes], literals: Sequence[bytes] = (), *, utf8: bool = False
    ) -> None:
        if not lines or len(literals) != len(lines) - 1:
            raise ValueError("a command has one line more than it has literals")
        self._lines = lines
        self._literals = literals
        self._index = 0
        self.buf: bytes = lines[0]
        self.pos = 0
        self.utf8 = utf8

    # -- basics --

    def fail(self, reason: str) -> NoReturn:
        """Raise :class:`ParseError` at the current position."""
        raise ParseError(reason, self.pos)

    def run(self, parse: Callable[[Buffer, int], tuple[_T, int]]) -> _T:
        """Run an element parser at the cursor and move past what it read."""
        value, self.pos = parse(self.buf, self.pos)
        return value

    def peek(self, size: int = 1) -> bytes:
        """The next ``size`` octets of the current line (fewer at its end)."""
        return self.buf[self.pos : self.pos + size]

    def at_end(self) -> bool:
        """Whether the whole command has been read."""
        return self.pos >= len(self.buf) and self._index == len(self._lines) - 1

    def accept(self, token: bytes) -> bool:
        """Move past ``token`` if it is next; say whether it was."""
        if self.buf.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: bytes, what: str) -> None:
        """Move past ``token`` or fail with "expected <what>"."""
        if not self.accept(token):
            self.fail(f"expected {what}, found {_found(self.buf, self.pos)}")

    def sp(self) -> None:
        """Move past one space."""
        self.expect(b" ", "a space")

    def end(self) -> None:
        """Fail unless the whole command has been read."""
        if not self.at_end():
            self.fail(f"unexpected {_found(self.buf, self.pos)} after the command")

    def keyword(self) -> str:
        """Read an atom and return it uppercased."""
        return self.run(parse_atom).upper()

    def peek_keyword(self) -> str | None:
        """The uppercased atom at the cursor, without moving; ``None`` if there is none."""
        match = _ATOM.match(self.buf, self.pos)
        return None if match is None else match.group().decode("ascii").upper()

    def number(self, *, minimum: int = 0, maximum: int = MAX_NUMBER) -> int:
        """Read a number within ``minimum..maximum`` (see :func:`parse_number`)."""
        return self.run(lambda buf, pos: parse_number(buf, pos, minimum=minimum, maximum=maximum))

    def sequence_set(self) -> SequenceSet:
        """Read a sequence set."""
        return self.run(parse_sequence_set)

    def items(self, item: Callable[[], _T], *, allow_empty: bool = True) -> list[_T]:
        """Read ``"(" [item *(SP item)] ")"``."""
        self.expect(b"(", "(")
        values: list[_T] = []
        if self.accept(b")"):
            if not allow_empty:
                self.fail("empty list")
            return values
        values.append(item())
        while self.accept(b" "):
            values.append(item())
        self.expect(b")", "a space or )")
        return values

    # -- strings --

    def literal(self, *, binary: bool = False) -> tuple[bytes, LiteralMarker]:
        """Read a literal: its marker must end the line; the data is taken whole.

        Args:
            binary: a literal8 (``~{N}``) is allowed here.
        """
        start = self.pos
        marker, end = parse_literal_marker(self.buf, self.pos)
        if marker.binary and not binary:
            self.fail("a binary literal is not allowed here")
        if end != len(self.buf) or self._index >= len(self._literals):
            raise ParseError("a literal's octet count must end the line", start)
        data = self._literals[self._index]
        if len(data) != marker.size:
            raise ParseError("literal data does not match its octet count", start)
        self._index += 1
        self.buf = self._lines[self._index]
        self.pos = 0
        return data, marker

    def string(self) -> bytes:
        """Read a string: quoted or literal (RFC 9051 §9 string)."""
        first = self.peek()
        if first == b'"':
            return self.run(parse_quoted)
        if first in (b"{", b"~"):
            data, _ = self.literal()
            if b"\x00" in data:
                self.fail("a string cannot contain NUL")
            return data
        self.fail(f"expected a string, found {_found(self.buf, self.pos)}")

    def astring(self) -> bytes:
        """Read an astring: an atom (``]`` allowed) or a string (RFC 9051 §9 astring)."""
        match = _ASTRING_ATOM.match(self.buf, self.pos)
        if match is not None:
            self.pos = match.end()
            return match.group()
        return self.string()

    def nstring(self) -> bytes | None:
        """Read a string or ``NIL`` (RFC 9051 §9 nstring)."""
        if self.peek(3).upper() == b"NIL" and _ATOM.match(self.buf, self.pos + 3) is None:
            self.pos += 3
            return None
        return self.string()

    def text(self, data: bytes, what: str) -> str:
        """Decode a string as UTF-8 (ASCII is a subset) or fail naming ``what``."""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8")

    def name(self, data: bytes, what: str) -> str:
        """Decode a mailbox name or pattern: UTF-8 with UTF8=ACCEPT, else ASCII."""
        try:
            name = data.decode("utf-8" if self.utf8 else "ascii")
        except UnicodeDecodeError:
            self.fail(
                f"{what} must be UTF-8" if self.utf8 else f"{what} must be 7-bit (modified UTF-7)"
            )
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
            self.fail(f"{what} contains control characters")
        return name

    def mailbox(self) -> str:
        """Read a mailbox name, INBOX normalized (RFC 9051 §9 mailbox, §5.1)."""
        return normalize_mailbox(self.name(self.astring(), "mailbox name"))

    def list_mailbox(self) -> str:
        """Read a LIST pattern: list-chars (``%``/``*`` allowed) or a string."""
        match = _LIST_ATOM.match(self.buf, self.pos)
        if match is not None:
            self.pos = match.end()
            return self.name(match.group(), "mailbox pattern")
        return self.name(self.string(), "mailbox pattern")

    def header_name(self) -> str:
        """Read a header field name (an astring of printable ASCII, no colon)."""
        data = self.astring()
        if not data or any(not 0x21 <= octet <= 0x7E or octet == 0x3A for octet in data):
            self.fail("invalid header field name")
        return data.decode("ascii")

    # -- flags and dates --

    def flag(self, *, allow_recent: bool = False) -> str:
        """Read a flag (see :func:`parse_flag`)."""
        return self.run(lambda buf, pos: parse_flag(buf, pos, allow_recent=allow_recent))

    def flag_list(self) -> tuple[str, ...]:
        """Read ``(flag ...)`` as the client may set them (no ``\\Recent``, no ``\\*``)."""
        return tuple(dict.fromkeys(self.items(self.flag)))

    def date(self) -> datetime.date:
        """Read a search date."""
        return self.run(parse_date)

    def date_time(self) -> datetime.datetime:
        """Read a quoted date-time."""
        return self.run(parse_date_time)


# --- command parsers ------------------------------------------------------------------------

_Parser: TypeAlias = Callable[[Reader, str, bool], Command]


def _simple(cls: Callable[[str], Command]) -> _Parser:
    """A parser for a command without arguments."""

    def parse(reader: Reader, tag: str, uid: bool) -> Command:
        return cls(tag)

    return parse


def _parse_id(r: Reader, tag: str, uid: bool) -> Id:
    # RFC 2971 §4: id-params-list = "(" *(string SP nstring) ")" / nil
    r.sp()
    if r.peek() != b"(":
        if r.keyword() != "NIL":
            r.fail("expected ( or NIL")
        return Id(tag, None)

    def pair() -> tuple[str, str | None]:
        field = r.string().decode("utf-8", "replace")
        r.sp()
        value = r.nstring()
        return field, None if value is None else value.decode("utf-8", "replace")

    return Id(tag, tuple(r.items(pair)))


def _parse_authenticate(r: Reader, tag: str, uid: bool) -> Authenticate:
    # RFC 9051 §9: authenticate = "AUTHENTICATE" SP auth-type [SP initial-resp]
    r.sp()
    mechanism = r.keyword()
    initial: bytes | None = None
    if r.accept(b" "):
        match = _BASE64.match(r.buf, r.pos)
        if match is None or match.end() != len(r.buf):
            r.fail("the initial response must be base64 or =")
        initial = bytes(match.group())
        r.pos = match.end()
    return Authenticate(tag, mechanism, initial)


def _parse_login(r: Reader, tag: str, uid: bool) -> Login:
    # login = "LOGIN" SP userid SP password
    r.sp()
    user = r.text(r.astring(), "the user name")
    r.sp()
    password = r.text(r.astring(), "the password")
    return Login(tag, user, password)


def _parse_enable(r: Reader, tag: str, uid: bool) -> Enable:
    # RFC 5161: enable = "ENABLE" 1*(SP capability)
    names: list[str] = []
    while r.accept(b" "):
        names.append(r.keyword())
    if not names:
        r.fail("ENABLE needs at least one capability")
    return Enable(tag, tuple(names))


def _parse_qresync(r: Reader) -> QResync:
    # RFC 7162 §7: "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
    #              [SP seq-match-data] ")"
    r.expect(b"(", "( after QRESYNC")
    uid_validity = r.number(minimum=1)
    r.sp()
    mod_seq = r.number(minimum=1, maximum=MAX_MOD_SEQ)
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None
    if r.accept(b" "):
        if r.peek() != b"(":
            known_uids = r.sequence_set()
        if r.peek() == b"(" or r.accept(b" "):
            r.expect(b"(", "( of the sequence match data")
            known_sequence = r.sequence_set()
            r.sp()
            known_uid_set = r.sequence_set()
            r.expect(b")", ") after the sequence match data")
            seq_match = (known_sequence, known_uid_set)
    r.expect(b")", ") after the QRESYNC parameters")
    return QResync(uid_validity, mod_seq, known_uids, seq_match)


def _parse_select(r: Reader, tag: str, uid: bool, *, examine: bool = False) -> Command:
    # select = "SELECT" SP mailbox [select-params]  (RFC 4466 §2.1, RFC 7162)
    r.sp()
    mailbox = r.mailbox()
    condstore = False
    qresync: QResync | None = None
    if r.accept(b" "):

        def param() -> None:
            nonlocal condstore, qresync
            name = r.keyword()
            if name == "CONDSTORE":
                condstore = True
            elif name == "QRESYNC" and qresync is None:
                r.sp()
                qresync = _parse_qresync(r)
            else:
                r.fail(f"unknown or repeated SELECT parameter {name}")

        r.items(param, allow_empty=False)
    if examine:
        return Examine(tag, mailbox, condstore, qresync)
    return Select(tag, mailbox, condstore, qresync)


def _parse_examine(r: Reader, tag: str, uid: bool) -> Command:
    return _parse_select(r, tag, uid, examine=True)


def _use_attribute(r: Reader) -> str:
    if not r.accept(b"\\"):
        r.fail("a special-use attribute starts with \\")
    return "\\" + r.run(parse_atom)


def _parse_create(r: Reader, tag: str, uid: bool) -> Create:
    # create = "CREATE" SP mailbox [create-params]; RFC 6154 §6: "USE" SP "(" use-attr ")"
    r.sp()
    mailbox = r.mailbox()
    special_use: list[str] = []
    if r.accept(b" "):

        def param() -> None:
            if r.keyword() != "USE" or special_use:
                r.fail("unknown or repeated CREATE parameter")
            r.sp()
            special_use.extend(r.items(lambda: _use_attribute(r), allow_empty=False))

        r.items(param, allow_empty=False)
    return Create(tag, mailbox, tuple(special_use))


def _mailbox_command(cls: Callable[[str, str], Command]) -> _Parser:
    """A parser for ``NAME SP mailbox``."""

    def parse(r: Reader, tag: str, uid: bool) -> Command:
        r.sp()
        return cls(tag, r.mailbox())

    return parse


def _parse_rename(r: Reader, tag: str, uid: bool) -> Rename:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    return Rename(tag, mailbox, r.mailbox())


_LIST_SELECTION: Final = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN: Final = frozenset({"CHILDREN", "SUBSCRIBED", "SPECIAL-USE", "STATUS"})


def _status_item(r: Reader) -> str:
    name = r.keyword()
    if name not in STATUS_ITEMS:
        r.fail(f"unknown status item {name}")
    return name


def _parse_list(r: Reader, tag: str, uid: bool) -> List:
    # RFC 5258 §6: list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    #                     [SP list-return-opts]
    r.sp()
    extended = False
    selection: list[str] = []
    if r.peek() == b"(":
        extended = True
        selection = r.items(r.keyword)
        unknown = set(selection) - _LIST_SELECTION
        if unknown:
            r.fail(f"unknown LIST selection option {sorted(unknown)[0]}")
        if "RECURSIVEMATCH" in selection and not set(selection) & {"SUBSCRIBED", "SPECIAL-USE"}:
            r.fail("RECURSIVEMATCH needs another selection option")
        r.sp()
    reference = r.name(r.astring(), "reference name")
    r.sp()
    if r.peek() == b"(":
        extended = True
        patterns = r.items(r.list_mailbox, allow_empty=False)
    else:
        patterns = [r.list_mailbox()]
    return_options: list[str] = []
    status_items: list[str] = []
    if r.accept(b" "):
        if r.keyword() != "RETURN":
            r.fail("expected RETURN")
        r.sp()
        extended = True

        def option() -> str:
            name = r.keyword()
            if name not in _LIST_RETURN:
                r.fail(f"unknown LIST return option {name}")
            if name == "STATUS":
                r.sp()
                status_items.extend(r.items(lambda: _status_item(r), allow_empty=False))
            return name

        return_options = r.items(option)
    return List(
        tag,
        reference,
        tuple(patterns),
        frozenset(selection),
        frozenset(return_options),
        tuple(status_items),
        extended,
    )


def _parse_lsub(r: Reader, tag: str, uid: bool) -> Lsub:
    r.sp()
    reference = r.name(r.astring(), "reference name")
    r.sp()
    return Lsub(tag, reference, r.list_mailbox())


def _parse_status(r: Reader, tag: str, uid: bool) -> Status:
    # status = "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    items = r.items(lambda: _status_item(r), allow_empty=False)
    return Status(tag, mailbox, tuple(dict.fromkeys(items)))


def _parse_append(r: Reader, tag: str, uid: bool) -> Append:
    # append = "APPEND" SP mailbox 1*append-message (RFC 3502 MULTIAPPEND)
    # append-message = append-opts SP append-data; append-opts = [SP flag-list] [SP date-time]
    r.sp()
    mailbox = r.mailbox()
    messages: list[AppendMessage] = []
    while not r.at_end() or not messages:
        r.sp()
        flags: tuple[str, ...] = ()
        date_time: datetime.datetime | None = None
        if r.peek() == b"(":
            flags = r.flag_list()
            r.sp()
        if r.peek() == b'"':
            date_time = r.date_time()
            r.sp()
        if r.peek() not in (b"{", b"~"):
            r.fail("APPEND message data must be a literal")
        data, marker = r.literal(binary=True)
        messages.append(AppendMessage(data, flags, date_time, marker.binary))
    return Append(tag, mailbox, tuple(messages))


def _parse_getquota(r: Reader, tag: str, uid: bool) -> GetQuota:
    r.sp()
    return GetQuota(tag, r.name(r.astring(), "quota root"))


def _parse_setquota(r: Reader, tag: str, uid: bool) -> SetQuota:
    # RFC 9208 §4.1: setquota = "SETQUOTA" SP quota-root-name SP setquota-list
    r.sp()
    root = r.name(r.astring(), "quota root")
    r.sp()

    def resource() -> tuple[str, int]:
        name = r.keyword()
        r.sp()
        return name, r.number(maximum=MAX_MOD_SEQ)

    return SetQuota(tag, root, tuple(r.items(resource)))


def _parse_compress(r: Reader, tag: str, uid: bool) -> Compress:
    r.sp()
    return Compress(tag, r.keyword())


def _parse_uid_expunge(r: Reader, tag: str, uid: bool) -> UidExpunge:
    r.sp()
    return UidExpunge(tag, r.sequence_set())


def _parse_copy(r: Reader, tag: str, uid: bool) -> Copy:
    r.sp()
    sequence_set = r.sequence_set()
    r.sp()
    return Copy(tag, sequence_set, r.mailbox(), uid)


def _parse_move(r: Reader, tag: str, uid: bool) -> Move:
    r.sp()
    sequence_set = r.sequence_set()
    r.sp()
    return Move(tag, sequence_set, r.mailbox(), uid)


_STORE_MODES: Final[Mapping[str, tuple[StoreMode, bool]]] = {
    prefix + "FLAGS" + suffix: (mode, bool(suffix))
    for prefix, mode in (("", StoreMode.REPLACE), ("+", StoreMode.ADD), ("-", StoreMode.REMOVE))
    for suffix in ("", ".SILENT")
}


def _parse_store(r: Reader, tag: str, uid: bool) -> Store:
    # store = "STORE" SP sequence-set [store-modifiers] SP store-att-flags (RFC 4466, 7162)
    r.sp()
    sequence_set = r.sequence_set()
    r.sp()
    unchanged_since: int | None = None
    if r.peek() == b"(":

        def modifier() -> None:
            nonlocal unchanged_since
            if r.keyword() != "UNCHANGEDSINCE" or unchanged_since is not None:
                r.fail("unknown or repeated STORE modifier")
            r.sp()
            unchanged_since = r.number(maximum=MAX_MOD_SEQ)

        r.items(modifier, allow_empty=False)
        r.sp()
    operation = r.keyword()
    if operation not in _STORE_MODES:
        r.fail(f"expected FLAGS, +FLAGS or -FLAGS, found {operation}")
    mode, silent = _STORE_MODES[operation]
    r.sp()
    if r.peek() == b"(":
        flags = r.flag_list()
    else:
        listed = [r.flag()]
        while r.accept(b" "):
            listed.append(r.flag())
        flags = tuple(dict.fromkeys(listed))
    return Store(tag, sequence_set, mode, flags, silent, uid, unchanged_since)


# -- FETCH --

_FETCH_ATTRIBUTES: Final[Mapping[str, FetchAttribute]] = {
    attribute.value: attribute for attribute in FetchAttribute
}
_FAST: Final = (FetchAttribute.FLAGS, FetchAttribute.INTERNALDATE, FetchAttribute.RFC822_SIZE)
_FETCH_MACROS: Final[Mapping[str, tuple[FetchItem, ...]]] = {
    "FAST": _FAST,
    "ALL": (*_FAST, FetchAttribute.ENVELOPE),
    "FULL": (*_FAST, FetchAttribute.ENVELOPE, FetchAttribute.BODY),
}
_SECTION_TEXTS: Final[Mapping[str, SectionText]] = {text.value: text for text in SectionText}


def _part_number(r: Reader, text: bytes) -> int:
    if not text.isdigit() or text.startswith(b"0") or len(text) > 10 or int(text) > MAX_NUMBER:
        r.fail("invalid body part number")
    return int(text)


def _section(r: Reader, *, binary: bool) -> Section:
    # section = "[" [section-spec] "]"; section-binary = "[" [section-part] "]"
    r.expect(b"[", "[")
    if r.accept(b"]"):
        return Section()
    match = _FETCH_NAME.match(r.buf, r.pos)
    if match is None:
        r.fail("invalid body section")
    r.pos = match.end()
    components = match.group().split(b".")
    part: list[int] = []
    while components and components[0][:1].isdigit():
        part.append(_part_number(r, components.pop(0)))
    text: SectionText | None = None
    fields: list[str] = []
    if components:
        if binary:
            r.fail("a BINARY section is a part number only")
        text = _SECTION_TEXTS.get(b".".join(components).decode("ascii").upper())
        if text is None:
            r.fail("invalid body section")
        if text is SectionText.MIME and not part:
            r.fail("MIME needs a part number")
        if text in (SectionText.HEADER_FIELDS, SectionText.HEADER_FIELDS_NOT):
            r.sp()
            fields = r.items(r.header_name, allow_empty=False)
    r.expect(b"]", "]")
    return Section(tuple(part), text, tuple(fields))


def _fetch_item(r: Reader) -> FetchItem:
    match = _FETCH_NAME.match(r.buf, r.pos)
    if match is None:
        r.fail(f"expected a fetch item, found {_found(r.buf, r.pos)}")
    r.pos = match.end()
    name = match.group().decode("ascii").upper()
    if r.peek() == b"[":
        if name in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK"):
            binary = name.startswith("BINARY")
            section = _section(r, binary=binary)
            partial: tuple[int, int] | None = None
            if r.accept(b"<"):
                offset = r.number(maximum=MAX_MOD_SEQ)
                r.expect(b".", ". in the partial range")
                count = r.number(minimum=1, maximum=MAX_MOD_SEQ)
                r.expect(b">", "> after the partial range")
                partial = (offset, count)
            return FetchBody(section, name.endswith(".PEEK"), partial, binary)
        if name == "BINARY.SIZE":
            return FetchBinarySize(_section(r, binary=True).part)
        r.fail(f"{name} takes no section")
    attribute = _FETCH_ATTRIBUTES.get(name)
    if attribute is None:
        r.fail(f"unknown fetch item {name}")
    return attribute


def _parse_fetch(r: Reader, tag: str, uid: bool) -> Fetch:
    # fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att /
    #         "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers]  (RFC 4466, RFC 7162)
    r.sp()
    sequence_set = r.sequence_set()
    r.sp()
    items: tuple[FetchItem, ...]
    if r.peek() == b"(":
        items = tuple(dict.fromkeys(r.items(lambda: _fetch_item(r), allow_empty=False)))
    else:
        macro = _FETCH_MACROS.get(r.peek_keyword() or "")
        if macro is not None and _FETCH_NAME.match(r.buf, r.pos) is not None:
            r.keyword()
            items = macro
        else:
            items = (_fetch_item(r),)
    changed_since: int | None = None
    vanished = False
    if r.accept(b" "):

        def modifier() -> None:
            nonlocal changed_since, vanished
            name = r.keyword()
            if name == "CHANGEDSINCE" and changed_since is None:
                r.sp()
                changed_since = r.number(maximum=MAX_MOD_SEQ)
            elif name == "VANISHED" and not vanished:
                vanished = True
            else:
                r.fail(f"unknown or repeated FETCH modifier {name}")

        r.items(modifier, allow_empty=False)
        if vanished and not (uid and changed_since is not None):
            r.fail("VANISHED needs UID FETCH and CHANGEDSINCE")
    return Fetch(tag, sequence_set, items, uid, changed_since, vanished)


# -- SEARCH --


def _flag_key(flag: str, present: bool = True) -> Callable[[Reader, int], SearchKey]:
    return lambda r, depth: SearchFlag(flag, present)


def _header_key(field: str) -> Callable[[Reader, int], SearchKey]:
    def parse(r: Reader, depth: int) -> SearchKey:
        r.sp()
        return SearchHeader(field, r.text(r.astring(), "the search string"))

    return parse


def _date_key(field: DateField, relation: DateRelation) -> Callable[[Reader, int], SearchKey]:
    def parse(r: Reader, depth: int) -> SearchKey:
        r.sp()
        return SearchDate(field, relation, r.date())

    return parse


def _keyword_key(present: bool) -> Callable[[Reader, int], SearchKey]:
    def parse(r: Reader, depth: int) -> SearchKey:
        r.sp()
        return SearchFlag(r.run(parse_atom), present)

    return parse


def _search_header(r: Reader, depth: int) -> SearchKey:
    r.sp()
    field = r.header_name()
    r.sp()
    return SearchHeader(field, r.text(r.astring(), "the search string"))


def _search_body(r: Reader, depth: int) -> SearchKey:
    r.sp()
    return SearchBody(r.text(r.astring(), "the search string"))


def _search_text(r: Reader, depth: int) -> SearchKey:
    r.sp()
    return SearchText(r.text(r.astring(), "the search string"))


def _search_larger(r: Reader, depth: int) -> SearchKey:
    r.sp()
    return SearchLarger(r.number(maximum=MAX_MOD_SEQ))


def _search_smaller(r: Reader, depth: int) -> SearchKey:
    r.sp()
    return SearchSmaller(r.number(maximum=MAX_MOD_SEQ))


def _search_not(r: Reader, depth: int) -> SearchKey:
    r.sp()
    return SearchNot(_search_key(r, depth + 1))


def _search_or(r: Reader, depth: int) -> SearchKey:
    r.sp()
    left = _search_key(r, depth + 1)
    r.sp()
    return SearchOr(left, _search_key(r, depth + 1))


def _search_uid(r: Reader, depth: int) -> SearchKey:
    r.sp()
    return SearchSequence(r.sequence_set(), uid=True)


def _search_modseq(r: Reader, depth: int) -> SearchKey:
    # RFC 7162 §7: search-modsequence = "MODSEQ" [search-modseq-ext] SP mod-sequence-valzer
    r.sp()
    if r.peek() != b'"':
        return SearchModSeq(r.number(maximum=MAX_MOD_SEQ))
    entry_name = r.text(r.run(parse_quoted), "the entry name")
    if not entry_name.startswith("/flags/"):
        r.fail("the MODSEQ entry name must start with /flags/")
    r.sp()
    entry_type = r.keyword().lower()
    if entry_type not in ("priv", "shared", "all"):
        r.fail("the MODSEQ entry type must be priv, shared or all")
    r.sp()
    value = r.number(maximum=MAX_MOD_SEQ)
    if entry_type == "priv":
        return SearchModSeq(value, entry_name, "priv")
    return SearchModSeq(value, entry_name, "shared" if entry_type == "shared" else "all")


_INTERNAL, _SENT = DateField.INTERNAL, DateField.SENT
_BEFORE, _ON, _SINCE = DateRelation.BEFORE, DateRelation.ON, DateRelation.SINCE

_SEARCH_KEYS: Final[Mapping[str, Callable[[Reader, int], SearchKey]]] = {
    "ALL": lambda r, depth: SearchAll(),
    "ANSWERED": _flag_key("\\Answered"),
    "UNANSWERED": _flag_key("\\Answered", False),
    "DELETED": _flag_key(DELETED),
    "UNDELETED": _flag_key(DELETED, False),
    "DRAFT": _flag_key("\\Draft"),
    "UNDRAFT": _flag_key("\\Draft", False),
    "FLAGGED": _flag_key("\\Flagged"),
    "UNFLAGGED": _flag_key("\\Flagged", False),
    "SEEN": _flag_key(SEEN),
    "UNSEEN": _flag_key(SEEN, False),
    "RECENT": _flag_key(RECENT),
    "OLD": _flag_key(RECENT, False),
    "NEW": lambda r, depth: SearchAnd((SearchFlag(RECENT), SearchFlag(SEEN, False))),
    "KEYWORD": _keyword_key(True),
    "UNKEYWORD": _keyword_key(False),
    "BCC": _header_key("Bcc"),
    "CC": _header_key("Cc"),
    "FROM": _header_key("From"),
    "SUBJECT": _header_key("Subject"),
    "TO": _header_key("To"),
    "HEADER": _search_header,
    "BODY": _search_body,
    "TEXT": _search_text,
    "BEFORE": _date_key(_INTERNAL, _BEFORE),
    "ON": _date_key(_INTERNAL, _ON),
    "SINCE": _date_key(_INTERNAL, _SINCE),
    "SENTBEFORE": _date_key(_SENT, _BEFORE),
    "SENTON": _date_key(_SENT, _ON),
    "SENTSINCE": _date_key(_SENT, _SINCE),
    "LARGER": _search_larger,
    "SMALLER": _search_smaller,
    "NOT": _search_not,
    "OR": _search_or,
    "UID": _search_uid,
    "MODSEQ": _search_modseq,
}


def _search_key(r: Reader, depth: int) -> SearchKey:
    # RFC 9051 §9 search-key (plus NEW, OLD, RECENT of RFC 3501 and MODSEQ of RFC 7162)
    if depth > MAX_NESTING:
        r.fail("search criteria are nested too deeply")
    if r.peek() == b"(":
        keys = r.items(lambda: _search_key(r, depth + 1), allow_empty=False)
        return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    if r.peek() in (b"*", b"$") or r.peek().isdigit():
        return SearchSequence(r.sequence_set())
    name = r.keyword()
    parse = _SEARCH_KEYS.get(name)
    if parse is None:
        r.fail(f"unknown search key {name}")
    return parse(r, depth)


_SEARCH_RETURNS: Final[Mapping[str, SearchReturn]] = {
    option.value: option for option in SearchReturn
}


def _search_return(r: Reader) -> SearchReturn:
    name = r.keyword()
    option = _SEARCH_RETURNS.get(name)
    if option is None:
        r.fail(f"unknown SEARCH return option {name}")
    return option


def _parse_search(r: Reader, tag: str, uid: bool) -> Search:
    # search = "SEARCH" [search-return-opts] SP search-program (RFC 4731, RFC 9051 §9)
    # search-program = ["CHARSET" SP charset SP] search-key *(SP search-key)
    r.sp()
    return_options: frozenset[SearchReturn] | None = None
    if r.peek_keyword() == "RETURN" and r.peek(7)[6:] == b" ":
        r.keyword()
        r.sp()
        return_options = frozenset(r.items(lambda: _search_return(r))) or frozenset(
            {SearchReturn.ALL}
        )
        r.sp()
    charset: str | None = None
    if r.peek_keyword() == "CHARSET" and r.peek(8)[7:] == b" ":
        r.keyword()
        r.sp()
        position = r.pos
        charset = r.astring().decode("ascii", "replace").upper()
        if charset not in SUPPORTED_CHARSETS:
            raise BadCharsetError(charset, position)
        r.sp()
    keys = [_search_key(r, 0)]
    while r.accept(b" "):
        keys.append(_search_key(r, 0))
    key = keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    return Search(tag, key, uid, charset, return_options)


# --- the command tables -----------------------------------------------------------------

_PARSERS: Final[Mapping[type[Command], _Parser]] = {
    Capability: _simple(Capability),
    Noop: _simple(Noop),
    Logout: _simple(Logout),
    Id: _parse_id,
    StartTLS: _simple(StartTLS),
    Authenticate: _parse_authenticate,
    Login: _parse_login,
    Enable: _parse_enable,
    Select: _parse_select,
    Examine: _parse_examine,
    Create: _parse_create,
    Delete: _mailbox_command(Delete),
    Rename: _parse_rename,
    Subscribe: _mailbox_command(Subscribe),
    Unsubscribe: _mailbox_command(Unsubscribe),
    List: _parse_list,
    Lsub: _parse_lsub,
    Namespace: _simple(Namespace),
    Status: _parse_status,
    Append: _parse_append,
    Idle: _simple(Idle),
    GetQuota: _parse_getquota,
    GetQuotaRoot: _mailbox_command(GetQuotaRoot),
    SetQuota: _parse_setquota,
    Compress: _parse_compress,
    Check: _simple(Check),
    Close: _simple(Close),
    Unselect: _simple(Unselect),
    Expunge: _simple(Expunge),
    UidExpunge: _parse_uid_expunge,
    Search: _parse_search,
    Fetch: _parse_fetch,
    Store: _parse_store,
    Copy: _parse_copy,
    Move: _parse_move,
}

COMMANDS: Final[Mapping[str, type[Command]]] = {
    "CAPABILITY": Capability,
    "NOOP": Noop,
    "LOGOUT": Logout,
    "ID": Id,
    "STARTTLS": StartTLS,
    "AUTHENTICATE": Authenticate,
    "LOGIN": Login,
    "ENABLE": Enable,
    "SELECT": Select,
    "EXAMINE": Examine,
    "CREATE": Create,
    "DELETE": Delete,
    "RENAME": Rename,
    "SUBSCRIBE": Subscribe,
    "UNSUBSCRIBE": Unsubscribe,
    "LIST": List,
    "LSUB": Lsub,
    "NAMESPACE": Namespace,
    "STATUS": Status,
    "APPEND": Append,
    "IDLE": Idle,
    "GETQUOTA": GetQuota,
    "GETQUOTAROOT": GetQuotaRoot,
    "SETQUOTA": SetQuota,
    "COMPRESS": Compress,
    "CHECK": Check,
    "CLOSE": Close,
    "UNSELECT": Unselect,
    "EXPUNGE": Expunge,
    "SEARCH": Search,
    "FETCH": Fetch,
    "STORE": Store,
    "COPY": Copy,
    "MOVE": Move,
}
"""Command names (uppercase) to command types."""

UID_COMMANDS: Final[Mapping[str, type[Command]]] = {
    "FETCH": Fetch,
    "STORE": Store,
    "COPY": Copy,
    "MOVE": Move,
    "SEARCH": Search,
    "EXPUNGE": UidExpunge,
}
"""The commands that may follow ``UID`` (RFC 9051 §6.4.9, UIDPLUS, MOVE)."""


def lookup_command(line: Buffer) -> tuple[str | None, type[Command] | None]:
    """Read the tag and the command type from the start of a command's first line.

    The connection uses this before the whole command has arrived: to name the tag in an
    error, and to refuse a literal for an unknown command or one not valid in the
    current state without reading the literal.

    Returns:
        ``(tag, command type)``, each ``None`` when it cannot be read or is unknown; a tag
        counts only when a space follows it.
    """
    try:
        tag, pos = parse_tag(line, 0)
    except ParseError:
        return None, None
    if line[pos : pos + 1] != b" ":
        return None, None
    try:
        name, pos = parse_atom(line, pos + 1)
    except ParseError:
        return tag, None
    name = name.upper()
    if name != "UID":
        return tag, COMMANDS.get(name)
    if line[pos : pos + 1] != b" ":
        return tag, None
    try:
        name, pos = parse_atom(line, pos + 1)
    except ParseError:
        return tag, None
    return tag, UID_COMMANDS.get(name.upper())


def parse_command(
    lines: Sequence[bytes], literals: Sequence[bytes] = (), *, utf8: bool = False
) -> Command:
    """Parse one complete command.

    Args:
        lines: the command's lines without CRLF; each but the last ends with the marker
            of the literal that follows it.
        literals: the literal data, one per line but the last; taken whole, not copied.
        utf8: ``UTF8=ACCEPT`` is enabled (mailbox names are UTF-8, RFC 6855).

    Returns:
        The command value (see :mod:`roost.imap.commands`).

    Raises:
        ParseError: the command is not valid (reply ``tag BAD reason``; the tag is
            :func:`lookup_command`'s).
        BadCharsetError: ``SEARCH CHARSET`` names an unsupported charset (reply
            ``tag NO [BADCHARSET (...)]``).
        ValueError: ``lines`` and ``literals`` do not fit together (the caller's bug).

    See Also: RFC 9051 §9 (command, command-any, command-auth, command-nonauth,
        command-select, uid) and the extension RFCs named on each command.
    """
    reader = Reader(lines, literals, utf8=utf8)
    tag = reader.run(parse_tag)
    reader.sp()
    name = reader.keyword()
    uid = name == "UID"
    if uid:
        reader.sp()
        name = reader.keyword()
        command_type = UID_COMMANDS.get(name)
        if command_type is None:
            reader.fail(f"unknown UID command {name}")
    else:
        command_type = COMMANDS.get(name)
        if command_type is None:
            reader.fail(f"unknown command {name}")
    command = _PARSERS[command_type](reader, tag, uid)
    reader.end()
    return command


def split_command(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """Split one complete command with its literal data inline into lines and literals.

    For tests and tools; the connection frames commands itself. ``data`` may end with
    CRLF or not.

    Raises:
        ParseError: a literal is announced but its data is incomplete.
    """
    lines: list[bytes] = []
    literals: list[bytes] = []
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        line = data[pos:] if end < 0 else data[pos:end]
        lines.append(line)
        if end < 0:
            return lines, literals
        pos = end + 2
        marker = find_literal_marker(line)
        if marker is None:
            if pos != len(data):
                raise ParseError("more than one command line", pos)
            return lines, literals
        if pos + marker.size > len(data):
            raise ParseError("literal data is incomplete", pos)
        literals.append(data[pos : pos + marker.size])
        pos += marker.size


def parse_command_bytes(data: bytes, *, utf8: bool = False) -> Command:
    """Parse one complete command given as it travels (``a1 LOGIN {3}\\r\\nbob pw\\r\\n``).

    Raises:
        ParseError: as :func:`parse_command`, or the framing is incomplete.
    """
    lines, literals = split_command(data)
    return parse_command(lines, literals, utf8=utf8)

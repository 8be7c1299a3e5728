"""The POP3 server connection's input side as a sans-IO parser (h11-style).

The connection turns octets from the client into events; it knows nothing of sockets,
of the maildrop or of which commands the current state allows
(:mod:`roost.pop3.state` decides that)::

    conn = Connection()
    conn.receive_data(b"USER alice\\r\\nPASS secret word\\r\\n")   # b"" at EOF
    conn.next_event()   # User(name='alice')
    conn.next_event()   # Pass(password=<hidden>)
    conn.next_event()   # NEED_DATA

Events (:data:`Event`):

* a command (:class:`Command` subclasses): complete and syntactically valid. The
  keyword is case-insensitive (RFC 1939 §3); arguments are separated by spaces (runs of
  spaces are accepted); message numbers are decimal integers from 1 (whether the
  message exists is the maildrop's question).
* :class:`BadCommand`: an unknown keyword or bad arguments; answer ``-ERR`` with its
  reason and go on.
* :class:`LineTooLong`: a line over the limit; the rest of it is skipped.
* :class:`AuthResponse`: one client line of a SASL exchange, between
  :meth:`Connection.start_auth_exchange` and :meth:`Connection.end_auth_exchange`
  (RFC 5034 §4).
* :class:`ConnectionClosed`: the client closed (``receive_data(b"")``) and every complete
  line before that was returned.
* :data:`NEED_DATA`: nothing more until more octets arrive.

Lines end with CRLF; a bare LF is accepted too (as Dovecot does). Empty lines between
commands are ignored. Limits, CRLF included: :data:`MAX_COMMAND_LINE` for commands
(RFC 2449 §4: 255 octets) and :data:`MAX_AUTH_LINE` for SASL responses (those carry
base64 tokens; RFC 5034 §4 exempts them from the command limit). The limit holds also
while a line is still arriving: a client cannot make the buffer grow past it.

Parsing is pure and total: any input gives events, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from roost.auth.sasl import MAX_RESPONSE_LINE
from roost.pop3.render import printable

__all__ = [
    "COMMANDS",
    "MAX_AUTH_LINE",
    "MAX_COMMAND_LINE",
    "NEED_DATA",
    "Apop",
    "Auth",
    "AuthResponse",
    "BadCommand",
    "Capa",
    "Command",
    "Connection",
    "ConnectionClosed",
    "Dele",
    "Event",
    "LineTooLong",
    "List",
    "NeedData",
    "Noop",
    "Pass",
    "Quit",
    "Retr",
    "Rset",
    "Stat",
    "Stls",
    "Top",
    "Uidl",
    "User",
    "parse_command",
]

MAX_COMMAND_LINE: Final = 255
"""Longest command line in octets, CRLF included (RFC 2449 §4)."""

MAX_AUTH_LINE: Final = MAX_RESPONSE_LINE + 2
"""Longest SASL response line in octets, CRLF included: the shared SASL limit
(``roost.auth.sasl.MAX_RESPONSE_LINE``, 12288 octets of base64) plus CRLF."""

_COMPACT_AFTER: Final = 16 * 1024


# --- commands (RFC 1939 §4-§7, RFC 2449, RFC 2595, RFC 5034) ------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """What every POP3 command is; the subclasses say which one."""


@dataclass(frozen=True, slots=True)
class User(Command):
    """``USER name`` (RFC 1939 §7).

    Attributes:
        name: the login name: the rest of the line, outer spaces removed (as Dovecot),
            UTF-8, never empty, no control characters.
    """

    name: str


@dataclass(frozen=True, slots=True)
class Pass(Command):
    """``PASS password`` (RFC 1939 §7); kept out of ``repr``.

    Attributes:
        password: everything after ``PASS`` and one space, spaces included (RFC 1939 §7
            allows spaces in the password), UTF-8, never empty, no NUL or CR.
    """

    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Apop(Command):
    """``APOP name digest`` (RFC 1939 §7).

    Attributes:
        name: the login name.
        digest: the MD5 digest as 32 lowercase hex digits.
    """

    name: str
    digest: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Stat(Command):
    """``STAT`` (RFC 1939 §5): message count and octets."""


@dataclass(frozen=True, slots=True)
class List(Command):
    """``LIST [msg]`` (RFC 1939 §5).

    Attributes:
        msg: the message number (1 or more), or ``None`` for the whole listing.
    """

    msg: int | None = None


@dataclass(frozen=True, slots=True)
class Retr(Command):
    """``RETR msg`` (RFC 1939 §5)."""

    msg: int


@dataclass(frozen=True, slots=True)
class Dele(Command):
    """``DELE msg`` (RFC 1939 §5): mark for deletion at UPDATE."""

    msg: int


@dataclass(frozen=True, slots=True)
class Noop(Command):
    """``NOOP`` (RFC 1939 §5)."""


@dataclass(frozen=True, slots=True)
class Rset(Command):
    """``RSET`` (RFC 1939 §5): unmark every deleted message."""


@dataclass(frozen=True, slots=True)
class Quit(Command):
    """``QUIT`` (RFC 1939 §4, §6): close; in TRANSACTION enter UPDATE first."""


@dataclass(frozen=True, slots=True)
class Top(Command):
    """``TOP msg n`` (RFC 1939 §7).

    Attributes:
        msg: the message number.
        lines: how many body lines to send after the headers (0 or more).
    """

    msg: int
    lines: int


@dataclass(frozen=True, slots=True)
class Uidl(Command):
    """``UIDL [msg]`` (RFC 1939 §7)."""

    msg: int | None = None


@dataclass(frozen=True, slots=True)
class Capa(Command):
    """``CAPA`` (RFC 2449 §5)."""


@dataclass(frozen=True, slots=True)
class Stls(Command):
    """``STLS`` (RFC 2595 §4).

    After ``+OK`` and the TLS handshake the session discards whatever the client sent
    behind the command (:meth:`Connection.take_unprocessed`; CVE-2011-0411).
    """


@dataclass(frozen=True, slots=True)
class Auth(Command):
    """``AUTH [mechanism [initial-response]]`` (RFC 5034 §4).

    Attributes:
        mechanism: the SASL mechanism name, uppercased; ``None`` for a bare ``AUTH``,
            which lists the mechanisms (the pre-RFC 5034 form Outlook uses, as Dovecot).
        initial_response: the base64 text as sent (``b"="`` for an empty response) for
            ``roost.auth.sasl.decode_response(..., initial=True)``; ``None`` when absent.
            Kept out of ``repr``: it holds a password with PLAIN.
    """

    mechanism: str | None = None
    initial_response: bytes | None = field(default=None, repr=False)


# --- other events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedData:
    """No event until more octets arrive; the only instance is :data:`NEED_DATA`."""


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """One client line during a SASL exchange (RFC 5034 §4); kept out of ``repr``.

    Attributes:
        line: the line without its line end: base64, empty, or ``*`` to cancel.
    """

    line: bytes = field(repr=False)

    @property
    def cancelled(self) -> bool:
        """The client sent ``*``: the AUTH command is answered ``-ERR`` (RFC 5034 §4)."""
        return self.line.strip(b" \t") == b"*"


@dataclass(frozen=True, slots=True)
class BadCommand:
    """A line that is not a valid command; answer ``-ERR reason``.

    Attributes:
        reason: what was wrong, safe to send (client text is made printable and short).
    """

    reason: str


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line longer than ``limit`` octets (CRLF included); it is skipped to its end.

    Attributes:
        limit: the limit that applied, in octets.
    """

    limit: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client closed the connection.

    Attributes:
        incomplete: a line was cut off by the close.
    """

    incomplete: bool = False


Event: TypeAlias = Command | AuthResponse | BadCommand | LineTooLong | ConnectionClosed | NeedData
"""What :meth:`Connection.next_event` returns."""


# --- parsing one command line -------------------------------------------------------------


class _Invalid(Exception):
    """A command line is malformed; the message is the -ERR reason."""


_MECHANISM: Final = re.compile(rb"[A-Za-z0-9_-]{1,20}")
"""A SASL mechanism name (RFC 4422 §3.1)."""
_HEX_DIGEST: Final = re.compile(rb"[0-9A-Fa-f]{32}")
_CONTROL: Final = re.compile(rb"[\x00-\x1f\x7f]")


def _arguments(rest: bytes) -> list[bytes]:
    return [argument for argument in rest.split(b" ") if argument]


def _count(name: str, rest: bytes, low: int, high: int, usage: str) -> list[bytes]:
    arguments = _arguments(rest)
    if not low <= len(arguments) <= high:
        raise _Invalid(f"{name} {usage}")
    return arguments


def _number(argument: bytes, what: str, *, minimum: int) -> int:
    if not argument.isdigit():  # ASCII digits only for bytes; no sign, no spaces
        raise _Invalid(f"Invalid {what}: {printable(argument)}")
    value = int(argument)
    if value < minimum:
        raise _Invalid(f"Invalid {what}: {value}")
    return value


def _msg(argument: bytes) -> int:
    return _number(argument, "message number", minimum=1)


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Invalid(f"{what} is not UTF-8") from None


def _no_arguments(cls: type[Command], name: str) -> Callable[[bytes], Command]:
    def parse(rest: bytes) -> Command:
        _count(name, rest, 0, 0, "takes no arguments")
        return cls()

    return parse


def _parse_user(rest: bytes) -> User:
    name = rest.strip(b" ")
    if not name:
        raise _Invalid("USER needs a user name")
    if _CONTROL.search(name):
        raise _Invalid("Invalid user name")
    return User(_utf8(name, "User name"))


def _parse_pass(rest: bytes) -> Pass:
    if not rest:
        raise _Invalid("PASS needs a password")
    if b"\x00" in rest or b"\r" in rest:
        raise _Invalid("Invalid password")
    return Pass(_utf8(rest, "Password"))


def _parse_apop(rest: bytes) -> Apop:
    name, digest = _count("APOP", rest, 2, 2, "needs a user name and a digest")
    if _CONTROL.search(name):
        raise _Invalid("Invalid user name")
    if not _HEX_DIGEST.fullmatch(digest):
        raise _Invalid("APOP digest must be 32 hex digits")
    return Apop(_utf8(name, "User name"), digest.decode("ascii").lower())


def _parse_list(rest: bytes) -> List:
    arguments = _count("LIST", rest, 0, 1, "takes at most one message number")
    return List(_msg(arguments[0]) if arguments else None)


def _parse_uidl(rest: bytes) -> Uidl:
    arguments = _count("UIDL", rest, 0, 1, "takes at most one message number")
    return Uidl(_msg(arguments[0]) if arguments else None)


def _parse_retr(rest: bytes) -> Retr:
    (msg,) = _count("RETR", rest, 1, 1, "needs one message number")
    return Retr(_msg(msg))


def _parse_dele(rest: bytes) -> Dele:
    (msg,) = _count("DELE", rest, 1, 1, "needs one message number")
    return Dele(_msg(msg))


def _parse_top(rest: bytes) -> Top:
    msg, lines = _count("TOP", rest, 2, 2, "needs a message number and a line count")
    return Top(_msg(msg), _number(lines, "line count", minimum=0))


def _parse_auth(rest: bytes) -> Auth:
    arguments = _count("AUTH", rest, 0, 2, "takes a mechanism and an initial response")
    if not arguments:
        return Auth()
    if not _MECHANISM.fullmatch(arguments[0]):
        raise _Invalid(f"Invalid SASL mechanism name: {printable(arguments[0])}")
    mechanism = arguments[0].decode("ascii").upper()
    return Auth(mechanism, arguments[1] if len(arguments) == 2 else None)


COMMANDS: Final[Mapping[bytes, Callable[[bytes], Command]]] = {
    b"USER": _parse_user,
    b"PASS": _parse_pass,
    b"APOP": _parse_apop,
    b"STAT": _no_arguments(Stat, "STAT"),
    b"LIST": _parse_list,
    b"RETR": _parse_retr,
    b"DELE": _parse_dele,
    b"NOOP": _no_arguments(Noop, "NOOP"),
    b"RSET": _no_arguments(Rset, "RSET"),
    b"QUIT": _no_arguments(Quit, "QUIT"),
    b"TOP": _parse_top,
    b"UIDL": _parse_uidl,
    b"CAPA": _no_arguments(Capa, "CAPA"),
    b"STLS": _no_arguments(Stls, "STLS"),
    b"AUTH": _parse_auth,
}
"""The parser of each command keyword (uppercase); it gets the text after the first space."""


def parse_command(line: bytes) -> Command | BadCommand:
    """Parse one command line (without its line end).

    Args:
        line: the octets of the line.

    Returns:
        The command, or :class:`BadCommand` with the ``-ERR`` reason. Never raises.
    """
    keyword, _space, rest = line.partition(b" ")
    parser = COMMANDS.get(keyword.upper())
    if parser is None:
        if not keyword:
            return BadCommand("Unknown command")
        return BadCommand(f"Unknown command: {printable(keyword)}")
    try:
        return parser(rest)
    except _Invalid as exc:
        return BadCommand(str(exc))


# --- the connection -----------------------------------------------------------------------


class Connection:
    """One POP3 server connection's input, without I/O.

    Args:
        max_line_size: longest command line in octets, CRLF included.
        max_auth_line_size: longest line during a SASL exchange, CRLF included.

    Raises:
        ValueError: a limit is below 3 octets (one character and CRLF).
    """

    def __init__(
        self,
        *,
        max_line_size: int = MAX_COMMAND_LINE,
        max_auth_line_size: int = MAX_AUTH_LINE,
    ) -> None:
        if min(max_line_size, max_auth_line_size) < 3:
            raise ValueError("line limits must be at least 3 octets")
        self.max_line_size = max_line_size
        self.max_auth_line_size = max_auth_line_size
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._skipping = False
        self._auth = False
        self._bad_commands = 0

    # --- state the server sets ------------------------------------------------------------

    @property
    def in_auth_exchange(self) -> bool:
        """Lines are read as :class:`AuthResponse` (the larger limit applies)."""
        return self._auth

    def start_auth_exchange(self) -> None:
        """Read the following lines as SASL responses (after sending a ``+`` challenge)."""
        self._auth = True

    def end_auth_exchange(self) -> None:
        """Read the following lines as commands again."""
        self._auth = False

    @property
    def bad_commands(self) -> int:
        """How many :class:`BadCommand` and :class:`LineTooLong` events were returned."""
        return self._bad_commands

    @property
    def buffered(self) -> int:
        """Octets received and not yet returned as events."""
        return len(self._buf) - self._pos

    # --- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add octets received from the client; ``b""`` means the client closed.

        Raises:
            RuntimeError: octets after the close (the caller's bug); more ``b""`` is fine.
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data() after the end of the input")
        if self._skipping:
            # The rest of an over-long line: drop it without keeping it.
            lf = bytes(data).find(b"\n")
            if lf < 0:
                return
            self._skipping = False
            data = data[lf + 1 :]
        self._buf += data

    def take_unprocessed(self) -> bytes:
        """Remove and return every octet received but not yet returned as an event.

        After STLS the session calls this once TLS is up (through
        ``ServerState.tls_established``): octets sent in plaintext behind ``STLS`` must
        not be read as if they came over TLS (CVE-2011-0411, RFC 2595 §4).
        """
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        self._skipping = False
        return rest

    def next_event(self) -> Event:
        """Return the next event, or :data:`NEED_DATA`. Never raises on any input."""
        while True:
            limit = self.max_auth_line_size if self._auth else self.max_line_size
            lf = self._buf.find(b"\n", self._pos)
            if lf < 0:
                if len(self._buf) - self._pos >= limit:
                    # Too long already (its LF would make it longer still): skip the rest.
                    self._consume(len(self._buf))
                    self._skipping = True
                    return self._bad(LineTooLong(limit))
                return self._starved()
            if lf + 1 - self._pos > limit:
                self._consume(lf + 1)
                return self._bad(LineTooLong(limit))
            line = bytes(self._buf[self._pos : lf])
            self._consume(lf + 1)
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._auth:
                return AuthResponse(line)
            if not line:
                continue
            event = parse_command(line)
            if isinstance(event, BadCommand):
                return self._bad(event)
            return event

    # --- internals ------------------------------------------------------------------------

    def _bad(self, event: BadCommand | LineTooLong) -> BadCommand | LineTooLong:
        self._bad_commands += 1
        return event

    def _starved(self) -> NeedData | ConnectionClosed:
        if not self._eof:
            return NEED_DATA
        return ConnectionClosed(incomplete=self._skipping or self._pos < len(self._buf))

    def _consume(self, end: int) -> None:
        self._pos = end
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos >= _COMPACT_AFTER:
            del self._buf[: self._pos]
            self._pos = 0

"""The IMAP server connection as a sans-IO state machine (h11-style).

The session feeds octets in and takes events out::

    conn = Connection(max_append_size=settings.append_limit)
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(await reader.read(65536))   # b"" at EOF
            continue
        ...  # one branch per event type, see below

Events (:data:`Event`):

* a command value (:mod:`roost.imap.commands`): complete, parsed and valid in the
  current :attr:`Connection.state`;
* :class:`ContinuationNeeded`: a synchronizing literal ``{N}`` was accepted; send
  ``+ Ready for literal data`` (:data:`roost.imap.response.CONTINUE_LITERAL`) and go on
  reading; or call :meth:`Connection.refuse_literal` and answer the tag with ``NO``;
* :class:`BadCommand`: answer ``bytes(event.response())`` (``tag BAD reason``, ``tag NO
  [TOOBIG]``, ``tag NO [BADCHARSET ...]``, or ``* BAD`` without a tag) and go on;
* :class:`LineTooLong`: a line is over ``max_line_size``; the rest of it is skipped.
  Answer as for :class:`BadCommand`; closing the connection (``* BYE``) is reasonable;
* :class:`IdleDone`: the client ended ``IDLE`` (after :meth:`Connection.start_idle`);
* :class:`AuthenticateResponse`: one client line of a SASL exchange (between
  :meth:`Connection.start_authenticate` and :meth:`Connection.end_authenticate`);
* :class:`ConnectionClosed`: the peer closed (``receive_data(b"")``) and every complete
  command before that was returned;
* :data:`NEED_DATA`: nothing more can be parsed until more octets arrive.

Limits (constructor arguments, octets): a command line (``max_line_size``), a literal
outside APPEND message data (``max_literal_size``), one APPEND message
(``max_append_size``, the APPENDLIMIT of RFC 7889), all messages of one (MULTI)APPEND
(``max_append_total_size``) and a whole command without APPEND message data
(``max_command_size``). A literal over its limit is refused before its data is read: for
``{N}`` no continuation is asked for, so the client does not send it; a ``{N+}`` literal
(LITERAL+/LITERAL-, RFC 7888) is read and discarded without being kept, with the rest of
that command. With ``literal_plus=False`` (LITERAL- advertised instead of LITERAL+),
non-synchronizing literals above 4096 octets are refused that way (RFC 7888 §4).

A literal of an APPEND is kept as the chunks it arrived in and joined once when complete,
so a message costs at most about twice its size at the moment it is handed over. When the
session reads straight into a waiting literal, ``receive_data`` keeps the given ``bytes``
object itself.

Lines end with CRLF; a bare LF is accepted too (as Dovecot does). Empty lines between
commands are ignored.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from roost.imap.commands import (
    Append,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Compress,
    Copy,
    Create,
    Delete,
    Enable,
    Examine,
    Expunge,
    Fetch,
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
    Rename,
    Search,
    Select,
    SetQuota,
    StartTLS,
    Status,
    Store,
    Subscribe,
    UidExpunge,
    Unselect,
    Unsubscribe,
)
from roost.imap.grammar import (
    SUPPORTED_CHARSETS,
    BadCharsetError,
    LiteralMarker,
    ParseError,
    find_literal_marker,
    lookup_command,
    parse_command,
)
from roost.imap.response import TOOBIG, ResponseCode, TaggedResponse, UntaggedResponse

__all__ = [
    "LITERAL_MINUS_LIMIT",
    "NEED_DATA",
    "VALID_STATES",
    "AuthenticateResponse",
    "BadCommand",
    "Connection",
    "ConnectionClosed",
    "ContinuationNeeded",
    "Event",
    "IdleDone",
    "LineTooLong",
    "NeedData",
    "Parked",
    "State",
    "valid_in",
]

LITERAL_MINUS_LIMIT: Final = 4096
"""The largest non-synchronizing literal under LITERAL- (RFC 7888 §4), in octets."""

_KIB: Final = 1024
_MIB: Final = 1024 * 1024
_COMPACT_AFTER: Final = 64 * _KIB
_SKIP_TAIL: Final = 32
_APPEND_MAILBOX_LITERAL: Final = re.compile(rb"[^ ]+ APPEND ~?\{[0-9]+\+?\}\Z", re.IGNORECASE)


# --- states (RFC 9051 §3) ---------------------------------------------------------------------


class State(enum.Enum):
    """The connection states of RFC 9051 §3."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_ANY: Final = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
_NOT_AUTHENTICATED: Final = frozenset({State.NOT_AUTHENTICATED})
_AUTHENTICATED: Final = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED: Final = frozenset({State.SELECTED})

VALID_STATES: Final[Mapping[type[Command], frozenset[State]]] = {
    # RFC 9051 §6.1: any state.
    Capability: _ANY,
    Noop: _ANY,
    Logout: _ANY,
    Id: _ANY,  # RFC 2971 §3.1
    # RFC 9051 §6.2: not authenticated.
    StartTLS: _NOT_AUTHENTICATED,
    Authenticate: _NOT_AUTHENTICATED,
    Login: _NOT_AUTHENTICATED,
    # RFC 9051 §6.3: authenticated (and so selected).
    Enable: frozenset({State.AUTHENTICATED}),  # RFC 5161 §3.1: authenticated only
    Select: _AUTHENTICATED,
    Examine: _AUTHENTICATED,
    Create: _AUTHENTICATED,
    Delete: _AUTHENTICATED,
    Rename: _AUTHENTICATED,
    Subscribe: _AUTHENTICATED,
    Unsubscribe: _AUTHENTICATED,
    List: _AUTHENTICATED,
    Lsub: _AUTHENTICATED,
    Namespace: _AUTHENTICATED,
    Status: _AUTHENTICATED,
    Append: _AUTHENTICATED,
    Idle: _AUTHENTICATED,
    GetQuota: _AUTHENTICATED,  # RFC 9208 §4
    GetQuotaRoot: _AUTHENTICATED,
    SetQuota: _AUTHENTICATED,
    Compress: _AUTHENTICATED,  # RFC 4978 §3
    # RFC 9051 §6.4: selected.
    Check: _SELECTED,
    Close: _SELECTED,
    Unselect: _SELECTED,
    Expunge: _SELECTED,
    UidExpunge: _SELECTED,
    Search: _SELECTED,
    Fetch: _SELECTED,
    Store: _SELECTED,
    Copy: _SELECTED,
    Move: _SELECTED,
}
"""Which states each command is valid in; nothing is valid in LOGOUT."""


def valid_in(state: State, command: Command | type[Command]) -> bool:
    """Whether ``command`` (a command or its type) may be issued in ``state``.

    A command in the wrong state is answered ``tag BAD`` (RFC 9051 §3, §6). The
    connection applies this itself to every command and to literals before reading them.
    """
    kind = command if isinstance(command, type) else type(command)
    return state in VALID_STATES.get(kind, frozenset())


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedData:
    """No event until more octets arrive; the only instance is :data:`NEED_DATA`."""


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class ContinuationNeeded:
    """A synchronizing literal ``{size}`` was accepted; the client waits for ``+``.

    Send ``+ Ready for literal data`` (or refuse: :meth:`Connection.refuse_literal`).
    """

    size: int
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class BadCommand:
    """A command was refused before it ran; nothing of it reaches the session.

    Attributes:
        tag: the command's tag, or ``None`` when it could not be read (answer ``* BAD``).
        reason: what was wrong, for the response text.
        status: ``"BAD"`` (malformed, wrong state, literal over a limit) or ``"NO"``
            (a valid command refused: APPEND too big, unsupported charset).
        code: the response code to send (``TOOBIG``, ``BADCHARSET``), or ``None``.
    """

    tag: str | None
    reason: str
    status: Literal["BAD", "NO"] = "BAD"
    code: ResponseCode | None = None

    def response(self) -> TaggedResponse | UntaggedResponse:
        """The response that answers this event."""
        if self.tag is None:
            return UntaggedResponse("BAD", self.reason, self.code)
        return TaggedResponse(self.tag, self.status, self.reason, self.code)


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line was longer than ``limit`` octets; it is skipped to its end.

    After a non-synchronizing literal marker at its end, the literal and the rest of the
    command are skipped too. During IDLE the tag is the IDLE's (IDLE is over); during an
    AUTHENTICATE exchange it is ``None``: answer the AUTHENTICATE tag ``BAD`` and call
    :meth:`Connection.end_authenticate`.

    Attributes:
        tag: the tag of the command the line belonged to, or ``None`` if unknown.
        limit: ``max_line_size`` in octets.
    """

    tag: str | None
    limit: int

    def response(self) -> TaggedResponse | UntaggedResponse:
        """``tag BAD`` (or ``* BAD``) saying the line was too long."""
        reason = f"command line too long (limit {self.limit} octets)"
        if self.tag is None:
            return UntaggedResponse("BAD", reason)
        return TaggedResponse(self.tag, "BAD", reason)


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The client sent ``DONE``: answer ``tag OK IDLE terminated`` (RFC 2177)."""

    tag: str


@dataclass(frozen=True, slots=True)
class AuthenticateResponse:
    """One line of the client's side of ``AUTHENTICATE`` (RFC 9051 §6.2.2).

    Attributes:
        line: the line without CRLF: base64, or ``*`` to cancel
            (``roost.auth.sasl.decode_response`` reads both).
    """

    line: bytes

    @property
    def cancelled(self) -> bool:
        """The client sent ``*``: answer ``tag BAD`` (RFC 9051 §6.2.2)."""
        return self.line == b"*"

    def __repr__(self) -> str:
        return f"AuthenticateResponse(line=<{len(self.line)} octets>)"


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection.

    Attributes:
        incomplete: a command (or a part of a line) was cut off by the close.
    """

    incomplete: bool = False


Event: TypeAlias = (
    Command
    | ContinuationNeeded
    | BadCommand
    | LineTooLong
    | IdleDone
    | AuthenticateResponse
    | ConnectionClosed
    | NeedData
)
"""What :meth:`Connection.next_event` returns."""


class _Mode(enum.Enum):
    COMMAND = "command"
    IDLE = "idle"
    AUTHENTICATE = "authenticate"


_NEED: Final = -1
_TOO_LONG: Final = -2


# --- the connection ---------------------------------------------------------------------------


#: :meth:`Connection.park`: state, UTF8=ACCEPT, LITERAL+, the IDLE tag (None: not in IDLE).
Parked: TypeAlias = tuple[State, bool, bool, str | None]


class Connection:
    """One IMAP server connection's protocol state, without I/O.

    Args:
        state: the starting state (``AUTHENTICATED`` after ``PREAUTH``).
        max_line_size: longest command line, CRLF included, literal data excluded.
        max_literal_size: largest literal other than APPEND message data.
        max_append_size: largest APPEND message (the advertised APPENDLIMIT).
        max_append_total_size: largest sum of the messages of one (MULTI)APPEND;
            ``max_append_size`` when ``None``.
        max_command_size: largest command without its APPEND message data.
        literal_plus: LITERAL+ is advertised (any non-synchronizing literal is allowed);
            ``False`` means LITERAL- (RFC 7888 §4, and IMAP4rev2's base).
        utf8: UTF8=ACCEPT is enabled (RFC 6855); the session sets :attr:`utf8` when the
            client enables it.

    Raises:
        ValueError: a limit is not positive.
    """

    def __init__(
        self,
        *,
        state: State = State.NOT_AUTHENTICATED,
        max_line_size: int = 64 * _KIB,
        max_literal_size: int = 64 * _KIB,
        max_append_size: int = 50 * _MIB,
        max_append_total_size: int | None = None,
        max_command_size: int = 1 * _MIB,
        literal_plus: bool = True,
        utf8: bool = False,
    ) -> None:
        limits = (max_line_size, max_literal_size, max_append_size, max_command_size)
        if min(limits) < 1 or (max_append_total_size is not None and max_append_total_size < 1):
            raise ValueError("limits must be positive")
        self.state = state
        """The RFC 9051 §3 state; the session sets it after LOGIN, SELECT, CLOSE..."""
        self.utf8 = utf8
        """UTF8=ACCEPT is enabled: mailbox names are parsed as UTF-8."""
        self.literal_plus = literal_plus
        self.max_line_size = max_line_size
        self.max_literal_size = max_literal_size
        self.max_append_size = max_append_size
        self.max_append_total_size = (
            max_append_size if max_append_total_size is None else max_append_total_size
        )
        self.max_command_size = max_command_size
        self._buf = bytearray()
        self._pos = 0
        self._scan = 0
        self._eof = False
        self._mode = _Mode.COMMAND
        self._idle_tag = ""
        # The command being framed.
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._tag: str | None = None
        self._kind: type[Command] | None = None
        self._size = 0
        self._message_size = 0
        # A literal being read: its chunks and the octets still missing.
        self._chunks: list[bytes] | None = None
        self._need = 0
        # Input being thrown away.
        self._discard = 0
        self._skip_command = False
        self._skip_line = False
        self._skip_tail = b""

    # --- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add octets received from the client; ``b""`` means the client closed.

        Raises:
            RuntimeError: data after the close (the caller's bug).
        """
        if self._eof:
            raise RuntimeError("receive_data() after the end of the input")
        if not data:
            self._eof = True
            return
        if self._pos == len(self._buf):
            # Nothing buffered: octets for a waiting literal go straight into it.
            if self._chunks is not None and self._need:
                take = min(len(data), self._need)
                if take == len(data) and isinstance(data, bytes):
                    self._chunks.append(data)
                else:
                    with memoryview(data) as view:
                        self._chunks.append(bytes(view[:take]))
                self._need -= take
                data = memoryview(data)[take:]
            elif self._discard:
                take = min(len(data), self._discard)
                self._discard -= take
                data = memoryview(data)[take:]
            if not data:
                return
        self._buf += data

    def take_unprocessed(self) -> bytes:
        """Return and forget the octets received but not yet parsed.

        After ``STARTTLS`` they must be discarded (they were sent in the clear, before
        the handshake: CVE-2011-0411); after ``COMPRESS`` they are compressed data to
        feed back through the decompressor.

        Raises:
            RuntimeError: a command is half-framed (the caller's bug).
        """
        if self._in_command():
            raise RuntimeError("a command is in progress")
        with memoryview(self._buf) as view:
            data = bytes(view[self._pos :])
        self._buf.clear()
        self._pos = self._scan = 0
        return data

    # --- parking ----------------------------------------------------------------------------

    def park(self) -> Parked | None:
        """What :meth:`unpark` needs to make an equal connection, when nothing is buffered
        or half-framed: a hibernated IMAP session keeps that instead of this object and
        its buffers (docs/performance.md, "IMAP idle memory per connection, session 7").

        Returns:
            ``(state, utf8, literal_plus, IDLE tag or None)``, or None mid-command, with
            input not yet parsed, after the end of the input or in AUTHENTICATE.
        """
        if (
            self._buf
            or self._eof
            or self._in_command()
            or self._lines
            or self._literals
            or self._skip_tail
            or self._mode is _Mode.AUTHENTICATE
        ):
            return None
        idle_tag = self._idle_tag if self._mode is _Mode.IDLE else None
        return (self.state, self.utf8, self.literal_plus, idle_tag)

    @classmethod
    def unpark(
        cls,
        parked: Parked,
        *,
        max_line_size: int,
        max_literal_size: int,
        max_append_size: int,
    ) -> Connection:
        """A connection equal to the one :meth:`park` described, with these limits (the
        session's: they are not part of what is parked)."""
        state, utf8, literal_plus, idle_tag = parked
        conn = cls(
            state=state,
            max_line_size=max_line_size,
            max_literal_size=max_literal_size,
            max_append_size=max_append_size,
            literal_plus=literal_plus,
            utf8=utf8,
        )
        if idle_tag is not None:
            conn.start_idle(idle_tag)
        return conn

    # --- modes ------------------------------------------------------------------------------

    def start_idle(self, tag: str) -> None:
        """Enter IDLE after answering ``+``: the next line must be ``DONE`` (RFC 2177).

        Raises:
            RuntimeError: not between commands.
        """
        self._require_between_commands()
        self._mode = _Mode.IDLE
        self._idle_tag = tag

    def start_authenticate(self) -> None:
        """Deliver each following line as :class:`AuthenticateResponse` (RFC 9051 §6.2.2).

        Raises:
            RuntimeError: not between commands.
        """
        self._require_between_commands()
        self._mode = _Mode.AUTHENTICATE

    def end_authenticate(self) -> None:
        """Go back to reading commands after the SASL exchange.

        Raises:
            RuntimeError: no exchange is in progress.
        """
        if self._mode is not _Mode.AUTHENTICATE:
            raise RuntimeError("no AUTHENTICATE exchange is in progress")
        self._mode = _Mode.COMMAND

    def refuse_literal(self) -> None:
        """Drop the command whose synchronizing literal was just announced.

        Call instead of sending ``+`` after :class:`ContinuationNeeded`; then answer the
        tag (``NO``). The client does not send the literal.

        Raises:
            RuntimeError: no literal is awaited.
        """
        if self._chunks is None:
            raise RuntimeError("no literal is awaited")
        self._reset_command()

    @property
    def awaiting_literal(self) -> int | None:
        """The octets still missing from the literal being read, or ``None``."""
        return None if self._chunks is None else self._need

    # --- events -----------------------------------------------------------------------------

    def next_event(self) -> Event:
        """Parse and return the next event (see the module documentation).

        Call it until it returns :data:`NEED_DATA` (then feed more octets) or
        :class:`ConnectionClosed`. Input is parsed only here, so whatever the session
        changed since the last call (:attr:`state`, :attr:`utf8`, IDLE or AUTHENTICATE
        mode) applies to the next command.

        Returns:
            One :data:`Event`. Whatever the peer sends, this returns an event and never
            raises: malformed input becomes :class:`BadCommand` or :class:`LineTooLong`.
        """
        while True:
            if self._discard:
                if not self._drop_discarded():
                    return self._starved()
                continue
            if self._chunks is not None:
                if not self._fill_literal():
                    return self._starved()
                chunks, self._chunks = self._chunks, None
                self._literals.append(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                continue
            if self._skip_line:
                if not self._skip_to_line_end():
                    return self._starved()
                continue
            end = self._find_line()
            if end == _TOO_LONG:
                return self._line_too_long()
            if end == _NEED:
                return self._starved()
            line = self._take(end - self._pos)
            self._consume(1)
            if line.endswith(b"\r"):
                line = line[:-1]
            event = self._on_line(line)
            if event is not None:
                return event

    # --- framing ----------------------------------------------------------------------------

    def _on_line(self, line: bytes) -> Event | None:
        if self._mode is _Mode.AUTHENTICATE:
            return AuthenticateResponse(line)
        if self._mode is _Mode.IDLE:
            self._mode = _Mode.COMMAND
            if line.upper() == b"DONE":
                return IdleDone(self._idle_tag)
            return BadCommand(self._idle_tag, "expected DONE to end IDLE")
        if self._skip_command:
            marker = find_literal_marker(line)
            if marker is not None and not marker.synchronizing:
                self._discard = marker.size
            else:
                # The end of the command (a synchronizing literal is never sent: the
                # client waits for a "+" that does not come).
                self._skip_command = False
            return None
        first = not self._lines
        if first:
            if not line:
                return None
            self._tag, self._kind = lookup_command(line)
        self._lines.append(line)
        self._size += len(line) + 2
        marker = find_literal_marker(line)
        if self._size > self.max_command_size:
            return self._refuse(marker, "command too long", code=TOOBIG)
        if marker is None:
            return self._complete()
        return self._start_literal(marker, first, line)

    def _start_literal(self, marker: LiteralMarker, first: bool, line: bytes) -> Event | None:
        kind = self._kind
        if kind is None:
            reason = "invalid tag" if self._tag is None else "unknown command"
            return self._refuse(marker, reason)
        if not valid_in(self.state, kind):
            return self._refuse(marker, self._wrong_state(kind))
        message = kind is Append and not (first and _APPEND_MAILBOX_LITERAL.match(line))
        if marker.binary and not message:
            return self._refuse(marker, "a binary literal is not allowed here")
        if message:
            if marker.size > self.max_append_size:
                return self._refuse(marker, "message too large", "NO", TOOBIG)
            if self._message_size + marker.size > self.max_append_total_size:
                return self._refuse(marker, "messages too large", "NO", TOOBIG)
        else:
            if marker.size > self.max_literal_size:
                return self._refuse(marker, "literal too large", code=TOOBIG)
            if self._size + marker.size > self.max_command_size:
                return self._refuse(marker, "command too long", code=TOOBIG)
        if not marker.synchronizing and not self.literal_plus and marker.size > LITERAL_MINUS_LIMIT:
            reason = f"non-synchronizing literal over {LITERAL_MINUS_LIMIT} octets"
            return self._refuse(marker, reason, code=TOOBIG)
        if message:
            self._message_size += marker.size
        else:
            self._size += marker.size
        self._chunks = []
        self._need = marker.size
        if marker.synchronizing:
            return ContinuationNeeded(marker.size, self._tag)
        return None

    def _complete(self) -> Event:
        lines, literals = self._lines, self._literals
        tag, kind = self._tag, self._kind
        self._reset_command()
        if kind is not None and not valid_in(self.state, kind):
            return BadCommand(tag, self._wrong_state(kind))
        try:
            command = parse_command(lines, literals, utf8=self.utf8)
        except BadCharsetError as error:
            return BadCommand(tag, error.reason, "NO", ResponseCode.bad_charset(SUPPORTED_CHARSETS))
        except ParseError as error:
            return BadCommand(tag, error.reason)
        return command

    def _refuse(
        self,
        marker: LiteralMarker | None,
        reason: str,
        status: Literal["BAD", "NO"] = "BAD",
        code: ResponseCode | None = None,
    ) -> BadCommand:
        """Drop the command; skip its non-synchronizing literal and the rest of it."""
        event = BadCommand(self._tag, reason, status, code)
        self._reset_command()
        if marker is not None and not marker.synchronizing:
            self._discard = marker.size
            self._skip_command = True
        return event

    def _wrong_state(self, kind: type[Command]) -> str:
        return f"{kind.__name__.upper()} is not valid in the {self.state.value} state"

    def _line_too_long(self) -> LineTooLong:
        if self._mode is _Mode.COMMAND and not self._lines and not self._skip_command:
            with memoryview(self._buf) as view:
                tag, _ = lookup_command(bytes(view[self._pos : self._pos + self.max_line_size]))
        elif self._mode is _Mode.IDLE:
            tag = self._idle_tag
            self._mode = _Mode.COMMAND
        elif self._mode is _Mode.AUTHENTICATE:
            tag = None
        else:
            tag = self._tag
        self._reset_command()
        self._skip_line = True
        self._skip_tail = b""
        return LineTooLong(tag, self.max_line_size)

    def _reset_command(self) -> None:
        self._lines = []
        self._literals = []
        self._tag = None
        self._kind = None
        self._size = 0
        self._message_size = 0
        self._chunks = None
        self._need = 0

    def _require_between_commands(self) -> None:
        if self._mode is not _Mode.COMMAND or self._in_command():
            raise RuntimeError("only possible between commands")

    def _in_command(self) -> bool:
        return bool(
            self._lines
            or self._chunks is not None
            or self._discard
            or self._skip_command
            or self._skip_line
        )

    def _starved(self) -> NeedData | ConnectionClosed:
        if not self._eof:
            return NEED_DATA
        return ConnectionClosed(incomplete=self._in_command() or self._pos < len(self._buf))

    # --- the buffer ---------------------------------------------------------------------------

    def _find_line(self) -> int:
        """The offset of the LF ending the current line, or ``_NEED`` / ``_TOO_LONG``."""
        limit = self._pos + self.max_line_size
        end = self._buf.find(b"\n", self._scan, limit)
        if end >= 0:
            return end
        if len(self._buf) >= limit:
            return _TOO_LONG
        self._scan = len(self._buf)
        return _NEED

    def _take(self, size: int) -> bytes:
        with memoryview(self._buf) as view:
            data = bytes(view[self._pos : self._pos + size])
        self._consume(size)
        return data

    def _consume(self, size: int) -> None:
        self._pos += size
        if self._pos >= len(self._buf):
            self._buf.clear()
            self._pos = self._scan = 0
            return
        if self._scan < self._pos:
            self._scan = self._pos
        if self._pos > _COMPACT_AFTER and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0

    def _fill_literal(self) -> bool:
        assert self._chunks is not None
        take = min(self._need, len(self._buf) - self._pos)
        if take:
            self._chunks.append(self._take(take))
            self._need -= take
        return not self._need

    def _drop_discarded(self) -> bool:
        take = min(self._discard, len(self._buf) - self._pos)
        self._consume(take)
        self._discard -= take
        return not self._discard

    def _skip_to_line_end(self) -> bool:
        end = self._buf.find(b"\n", self._pos)
        stop = len(self._buf) if end < 0 else end
        with memoryview(self._buf) as view:
            tail = self._skip_tail + bytes(view[max(self._pos, stop - _SKIP_TAIL) : stop])
        self._skip_tail = tail[-_SKIP_TAIL:]
        self._consume(stop - self._pos)
        if end < 0:
            return False
        self._consume(1)
        self._skip_line = False
        marker = find_literal_marker(self._skip_tail.removesuffix(b"\r"))
        self._skip_tail = b""
        if marker is not None and not marker.synchronizing and self._mode is _Mode.COMMAND:
            self._discard = marker.size
            self._skip_command = True
        return True

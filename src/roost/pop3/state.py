"""The POP3 server's state machine as data and pure code (RFC 1939, 2449, 2595, 5034).

The states of RFC 1939 §3 and the commands valid in each (:data:`VALID_STATES`)::

    greeting ─▶ AUTHORIZATION ──login (USER/PASS, AUTH)──▶ TRANSACTION ──QUIT──▶ UPDATE
                 │ QUIT, too many bad commands, client gone        │ client gone
                 ▼                                                 ▼
               close (nothing is deleted: the UPDATE state is entered only by QUIT)

:class:`ServerState` is the server side of one conversation, without I/O. It reads events
from its :class:`~roost.pop3.protocol.Connection` and returns *actions*: octets to send,
or work for the session (verify a password, start TLS, read a message, delete messages),
whose results it is told through a method. The session is a short loop::

    server = ServerState(settings, tls_active=implicit_tls)
    send(server.greeting())
    while True:
        action = server.next_action()
        match action:
            case NeedData():
                server.receive_data(await read())           # b"" when the client closed
            case Send(data):
                send(data)
            case StartTls(data):
                send(data); await start_tls(); server.tls_established()
            case VerifyLogin(credentials):
                result = await users.verify(credentials.authcid, credentials.password)
                if not result.ok:
                    send(server.login_failed(login_failure(result.failure)).data)
                    continue
                try:
                    maildrop = await store.open_maildrop(result.user)
                except StoreError as exc:
                    send(server.login_failed(store_failure(exc)).data)
                else:
                    send(server.login_succeeded(maildrop.messages).data)
            case Retrieve():
                message = await maildrop.read(action.uid)   # StoreError: send failure(...)
                for piece in action.response(message):
                    send(piece)
            case Update(uids):
                await maildrop.delete(uids)                 # StoreError: update_finished(...)
                send(server.update_finished().data); break
            case Close(data):
                send(data); break
    # finally: await maildrop.close() (the lock; nothing deleted unless Update ran)

(``login_failure`` and ``store_failure`` are in :mod:`roost.pop3.errors`.)

:class:`MaildropView` holds the message list taken at login and the deletion marks; it
answers STAT, LIST, UIDL, DELE, RSET and builds RETR/TOP transfers, each as the exact
response octets.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeVar, cast

from roost.auth.sasl import (
    AuthzidRejected,
    Challenge,
    Credentials,
    EncryptionRequiredError,
    Mechanism,
    SASLCancelled,
    SASLError,
    UnknownMechanismError,
    advertised_mechanisms,
    decode_response,
    start_mechanism,
)
from roost.pop3 import render
from roost.pop3.maildrop import MaildropMessage, valid_uidl
from roost.pop3.protocol import (
    Apop,
    Auth,
    AuthResponse,
    BadCommand,
    Capa,
    Command,
    Connection,
    ConnectionClosed,
    Dele,
    Event,
    LineTooLong,
    List,
    NeedData,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)
from roost.pop3.render import Buffer, Failure, MultilineEncoder

__all__ = [
    "TRANSITIONS",
    "VALID_STATES",
    "Action",
    "Close",
    "LocalProtocolError",
    "MaildropView",
    "Pop3State",
    "Retrieve",
    "Send",
    "ServerSettings",
    "ServerState",
    "StartTls",
    "Update",
    "VerifyLogin",
    "valid_in",
]


# --- states (RFC 1939 §3) -----------------------------------------------------------------


class Pop3State(enum.Enum):
    """The session states of RFC 1939 §3."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


_AUTHORIZATION: Final = frozenset({Pop3State.AUTHORIZATION})
_TRANSACTION: Final = frozenset({Pop3State.TRANSACTION})
_BOTH: Final = frozenset({Pop3State.AUTHORIZATION, Pop3State.TRANSACTION})

VALID_STATES: Final[Mapping[type[Command], frozenset[Pop3State]]] = {
    Capa: _BOTH,  # RFC 2449 §5
    Quit: _BOTH,  # RFC 1939 §4 (AUTHORIZATION), §5 (TRANSACTION, then UPDATE)
    User: _AUTHORIZATION,  # RFC 1939 §7
    Pass: _AUTHORIZATION,
    Apop: _AUTHORIZATION,
    Stls: _AUTHORIZATION,  # RFC 2595 §4
    Auth: _AUTHORIZATION,  # RFC 5034 §4
    Stat: _TRANSACTION,  # RFC 1939 §5
    List: _TRANSACTION,
    Retr: _TRANSACTION,
    Dele: _TRANSACTION,
    Noop: _TRANSACTION,
    Rset: _TRANSACTION,
    Top: _TRANSACTION,  # RFC 1939 §7
    Uidl: _TRANSACTION,
}
"""The states each command is valid in; no command is valid in UPDATE."""

TRANSITIONS: Final[Mapping[Pop3State, frozenset[Pop3State]]] = {
    Pop3State.AUTHORIZATION: frozenset({Pop3State.TRANSACTION}),  # a successful login
    Pop3State.TRANSACTION: frozenset({Pop3State.UPDATE}),  # QUIT
    Pop3State.UPDATE: frozenset(),  # the connection closes
}
"""The state changes RFC 1939 §3 allows."""


def valid_in(state: Pop3State, command: Command | type[Command]) -> bool:
    """Whether ``command`` (a command or its type) may be issued in ``state``."""
    kind = command if isinstance(command, type) else type(command)
    return state in VALID_STATES.get(kind, frozenset())


class LocalProtocolError(RuntimeError):
    """The caller drove :class:`ServerState` out of turn (h11's "local" error): a bug."""


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` and go on reading."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Send ``data`` (maybe empty: the client is gone), then close; nothing is deleted."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StartTls:
    """Send ``data`` (``+OK``), do the TLS handshake, then call
    :meth:`ServerState.tls_established` (RFC 2595 §4). Close if the handshake fails."""

    data: bytes


@dataclass(frozen=True, slots=True)
class VerifyLogin:
    """Verify these credentials, open and lock the maildrop, then call
    :meth:`ServerState.login_succeeded` or :meth:`ServerState.login_failed`.

    Attributes:
        credentials: the login and password (``authzid`` is ``None`` or equal).
        mechanism: ``"USER"`` for USER/PASS, else the SASL mechanism (for logs).
    """

    credentials: Credentials
    mechanism: str


@dataclass(frozen=True, slots=True)
class Retrieve:
    """Read message ``uid`` from the maildrop and send it: RETR, or TOP when ``body_lines``
    is set (RFC 1939 §5, §7).

    If the message cannot be read, send ``render.failure(...)`` instead; nothing has been
    sent for this command before :meth:`response` (or :attr:`status`) is used.

    Attributes:
        uid: the store's key of the message.
        msg: the message number the client gave.
        size: the message size in octets, as listed (CRLF line ends).
        body_lines: TOP's line count; ``None`` for RETR.
    """

    uid: int
    msg: int
    size: int
    body_lines: int | None = None

    @property
    def status(self) -> bytes:
        """The status line: ``+OK <size> octets`` for RETR (as RFC 1939 §5), ``+OK`` for TOP."""
        if self.body_lines is None:
            return render.retr_status(self.size)
        return render.ok()

    def encoder(self) -> MultilineEncoder:
        """A fresh encoder for the body, for messages read in chunks (send :attr:`status`
        first, then what each ``feed`` returns, then ``end()``)."""
        return MultilineEncoder(body_lines=self.body_lines)

    def response(self, message: Buffer | Iterable[Buffer]) -> Iterator[bytes]:
        """The whole response in pieces: the status line, the encoded message, ``.``."""
        yield self.status
        yield from render.encode_message(message, body_lines=self.body_lines)


@dataclass(frozen=True, slots=True)
class Update:
    """The UPDATE state (RFC 1939 §6): delete these messages, then call
    :meth:`ServerState.update_finished` and send its reply. ``uids`` may be empty.

    Attributes:
        uids: the store keys of the messages marked deleted, in message-number order.
    """

    uids: tuple[int, ...]


Action: TypeAlias = Send | Close | StartTls | VerifyLogin | Retrieve | Update
"""What :meth:`ServerState.handle` returns."""


# --- the maildrop as the session sees it --------------------------------------------------


class MaildropView:
    """The message list taken at login and the deletion marks (RFC 1939 §5).

    Message numbers are 1-based positions in that list and never change during the
    session (RFC 1939 §5). Every method returns the exact response octets, or for RETR
    and TOP a :class:`Retrieve`; nothing touches the store.

    Args:
        messages: the messages at login, message number 1 first.

    Raises:
        ValueError: a size is negative or a UIDL is not 1-70 characters 0x21-0x7E
            (RFC 1939 §7): a bug in the store.
    """

    def __init__(self, messages: Sequence[MaildropMessage]) -> None:
        for message in messages:
            if message.size < 0:
                raise ValueError(f"message uid {message.uid}: negative size")
            if not valid_uidl(message.uidl):
                raise ValueError(f"message uid {message.uid}: invalid UIDL {message.uidl!r}")
        self._messages: tuple[MaildropMessage, ...] = tuple(messages)
        self._deleted: set[int] = set()

    @property
    def messages(self) -> tuple[MaildropMessage, ...]:
        """All messages listed at login, deleted ones included."""
        return self._messages

    @property
    def deleted(self) -> frozenset[int]:
        """The message numbers marked deleted."""
        return frozenset(self._deleted)

    @property
    def count(self) -> int:
        """Messages not marked deleted."""
        return len(self._messages) - len(self._deleted)

    @property
    def octets(self) -> int:
        """Total size of the messages not marked deleted, in octets."""
        return sum(message.size for msg, message in self._live())

    def _live(self) -> Iterator[tuple[int, MaildropMessage]]:
        for msg, message in enumerate(self._messages, start=1):
            if msg not in self._deleted:
                yield msg, message

    def _lookup(self, msg: int) -> MaildropMessage | bytes:
        """The message, or the -ERR line: out of range or marked deleted (RFC 1939 §5)."""
        if not 1 <= msg <= len(self._messages):
            return render.err(f"no such message, only {_messages(len(self._messages))} in maildrop")
        if msg in self._deleted:
            return render.err(f"message {msg} already deleted")
        return self._messages[msg - 1]

    def peek(self, msg: int) -> MaildropMessage | None:
        """Message ``msg`` if it exists and is not marked deleted (what a RETR of it would
        send); ``None`` otherwise. Changes nothing."""
        if 1 <= msg <= len(self._messages) and msg not in self._deleted:
            return self._messages[msg - 1]
        return None

    def summary(self) -> str:
        """``maildrop has N messages (M octets)``, as RFC 1939's examples."""
        return f"maildrop has {_messages(self.count)} ({self.octets} octets)"

    def stat(self) -> bytes:
        """STAT (RFC 1939 §5): ``+OK count octets`` of the messages not deleted."""
        return render.ok(f"{self.count} {self.octets}")

    def list_messages(self, msg: int | None = None) -> bytes:
        """LIST (RFC 1939 §5): ``+OK msg size``, or the listing of messages not deleted."""
        if msg is not None:
            found = self._lookup(msg)
            if isinstance(found, bytes):
                return found
            return render.ok(f"{msg} {found.size}")
        status = render.ok(f"{_messages(self.count)} ({self.octets} octets)")
        return render.multiline(status, (f"{n} {message.size}" for n, message in self._live()))

    def uidl(self, msg: int | None = None) -> bytes:
        """UIDL (RFC 1939 §7): ``+OK msg uidl``, or the listing of messages not deleted."""
        if msg is not None:
            found = self._lookup(msg)
            if isinstance(found, bytes):
                return found
            return render.ok(f"{msg} {found.uidl}")
        return render.multiline(render.ok(), (f"{n} {message.uidl}" for n, message in self._live()))

    def dele(self, msg: int) -> bytes:
        """DELE (RFC 1939 §5): mark the message; deleted at UPDATE only."""
        found = self._lookup(msg)
        if isinstance(found, bytes):
            return found
        self._deleted.add(msg)
        return render.ok(f"message {msg} deleted")

    def rset(self) -> bytes:
        """RSET (RFC 1939 §5): unmark every message."""
        self._deleted.clear()
        return render.ok(self.summary())

    def retr(self, msg: int) -> Retrieve | bytes:
        """RETR (RFC 1939 §5): the transfer to perform, or the -ERR line."""
        found = self._lookup(msg)
        if isinstance(found, bytes):
            return found
        return Retrieve(uid=found.uid, msg=msg, size=found.size)

    def top(self, msg: int, lines: int) -> Retrieve | bytes:
        """TOP (RFC 1939 §7): the transfer to perform, or the -ERR line.

        Raises:
            ValueError: ``lines`` is negative (the parser never produces that).
        """
        if lines < 0:
            raise ValueError("TOP line count must not be negative")
        found = self._lookup(msg)
        if isinstance(found, bytes):
            return found
        return Retrieve(uid=found.uid, msg=msg, size=found.size, body_lines=lines)

    def update(self) -> tuple[int, ...]:
        """The store keys of the messages to delete at UPDATE (RFC 1939 §6), in order."""
        return tuple(
            message.uid
            for msg, message in enumerate(self._messages, start=1)
            if msg in self._deleted
        )


# --- settings and the server side of one connection ---------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the POP3 protocol layer needs from the configuration.

    Attributes:
        implementation: the CAPA ``IMPLEMENTATION`` text and the name in the sign-off.
        greeting: the text of the ``+OK`` greeting (Dovecot ``login_greeting``). No APOP
            timestamp is included: APOP is not offered.
        tls_available: a TLS context exists, so STLS can be offered (RFC 2595 §4).
        disable_plaintext_auth: refuse USER/PASS and plaintext SASL mechanisms (PLAIN,
            LOGIN) on a connection that is not secured (Dovecot ``disable_plaintext_auth``,
            default yes).
        mechanisms: the SASL mechanisms enabled; ``None`` for all of
            ``roost.auth.sasl.MECHANISMS``.
        max_bad_commands: after this many bad commands (unknown, malformed, too long or
            in the wrong state) the connection is closed with ``-ERR``.
    """

    implementation: str = "roost"
    greeting: str = "roost ready."
    tls_available: bool = False
    disable_plaintext_auth: bool = True
    mechanisms: tuple[str, ...] | None = None
    max_bad_commands: int = 20

    def __post_init__(self) -> None:
        if self.max_bad_commands < 1:
            raise ValueError("max_bad_commands must be at least 1")


class _Waiting(enum.Enum):
    """What the server waits for from the session before it reads more input."""

    NOTHING = "nothing"
    TLS = "tls_established()"
    LOGIN = "login_succeeded() or login_failed()"
    UPDATE = "update_finished()"
    CLOSED = "nothing more: the connection is closed"


_E = TypeVar("_E", bound=Command | AuthResponse | BadCommand | LineTooLong | ConnectionClosed)
_AnyHandler: TypeAlias = "Callable[[ServerState, Event], Action]"


class ServerState:
    """The server side of one POP3 conversation: state, SASL exchange, maildrop view.

    Args:
        settings: the protocol settings.
        tls_active: the connection is already TLS (implicit TLS, port 995).
        secure_channel: the connection is safe without TLS (loopback), so plaintext
            logins are allowed as over TLS (as Dovecot treats local connections).
        connection: the input parser; a new :class:`Connection` by default.
    """

    def __init__(
        self,
        settings: ServerSettings | None = None,
        *,
        tls_active: bool = False,
        secure_channel: bool = False,
        connection: Connection | None = None,
    ) -> None:
        self.settings = settings if settings is not None else ServerSettings()
        self.connection = connection if connection is not None else Connection()
        self._state = Pop3State.AUTHORIZATION
        self._tls_active = tls_active
        self._secure_channel = secure_channel
        self._waiting = _Waiting.NOTHING
        self._pending_user: str | None = None
        self._mechanism: Mechanism | None = None
        self._view: MaildropView | None = None
        self._bad_commands = 0

    # --- what the session may look at -----------------------------------------------------

    @property
    def state(self) -> Pop3State:
        """The RFC 1939 state."""
        return self._state

    @property
    def tls_active(self) -> bool:
        """The connection is protected by TLS."""
        return self._tls_active

    @property
    def secured(self) -> bool:
        """TLS is active or the channel is trusted: passwords may cross it."""
        return self._tls_active or self._secure_channel

    @property
    def plaintext_allowed(self) -> bool:
        """USER/PASS and PLAIN/LOGIN are allowed now."""
        return self.secured or not self.settings.disable_plaintext_auth

    @property
    def maildrop(self) -> MaildropView | None:
        """The maildrop view once logged in."""
        return self._view

    @property
    def bad_commands(self) -> int:
        """Bad commands so far (see :attr:`ServerSettings.max_bad_commands`)."""
        return self._bad_commands

    def greeting(self) -> bytes:
        """The greeting sent when the client connects (RFC 1939 §4)."""
        return render.ok(self.settings.greeting)

    def capabilities(self) -> tuple[str, ...]:
        """The CAPA lines (RFC 2449 §5).

        The same in AUTHORIZATION and TRANSACTION ("capabilities available in the
        AUTHORIZATION state MUST be announced in both states", RFC 2449 §5); they
        depend on TLS: ``USER`` and the plaintext SASL mechanisms only when
        :attr:`plaintext_allowed`, ``STLS`` only when TLS is available and not active.
        """
        return render.capabilities(
            user=self.plaintext_allowed,
            sasl=self._mechanisms(),
            stls=self.settings.tls_available and not self._tls_active,
            implementation=self.settings.implementation,
        )

    # --- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Pass octets from the client to the connection; ``b""`` when it closed."""
        self.connection.receive_data(data)

    def next_action(self) -> Action | NeedData:
        """Parse the next event and handle it; :data:`~roost.pop3.protocol.NEED_DATA` if
        more input is needed.

        Raises:
            LocalProtocolError: an earlier action's result was not reported yet.
        """
        self._require_ready()
        event = self.connection.next_event()
        if isinstance(event, NeedData):
            return event
        return self.handle(event)

    def handle(self, event: Event) -> Action:
        """Handle one event from the connection and return what to do.

        Raises:
            LocalProtocolError: an earlier action's result was not reported yet.
            TypeError: ``event`` is :data:`~roost.pop3.protocol.NEED_DATA`.
        """
        self._require_ready()
        if isinstance(event, NeedData):
            raise TypeError("NEED_DATA is not an event to handle")
        if isinstance(event, Command) and not valid_in(self._state, event):
            return self._bad(f"{_keyword(event)} not valid in the {self._state.value} state")
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"unknown event {type(event).__name__}")
        return handler(self, event)

    # --- results from the session ---------------------------------------------------------

    def tls_established(self) -> bytes:
        """TLS is up after STLS: forget the plaintext state (RFC 2595 §4).

        Returns:
            The octets the client sent behind ``STLS`` before the handshake; they are
            discarded (CVE-2011-0411), returned for the log.

        Raises:
            LocalProtocolError: no STLS was answered.
        """
        self._expect(_Waiting.TLS)
        self._tls_active = True
        self._pending_user = None
        return self.connection.take_unprocessed()

    def await_login(self) -> None:
        """The credentials were checked by the process that handed this session over
        (:mod:`roost.daemon.handoff`): wait for :meth:`login_succeeded` or
        :meth:`login_failed`, as after a :class:`VerifyLogin` action.

        Raises:
            LocalProtocolError: not in AUTHORIZATION, or an earlier action is pending.
        """
        if self._state is not Pop3State.AUTHORIZATION:
            raise LocalProtocolError("await_login outside the AUTHORIZATION state")
        self._expect(_Waiting.NOTHING)
        self._waiting = _Waiting.LOGIN

    def login_succeeded(self, messages: Sequence[MaildropMessage]) -> Send:
        """The credentials were right and the maildrop is open and locked: TRANSACTION.

        Args:
            messages: the maildrop listing (``Maildrop.messages``).

        Raises:
            LocalProtocolError: no :class:`VerifyLogin` is pending.
            ValueError: the listing is invalid (see :class:`MaildropView`).
        """
        if self._waiting is not _Waiting.LOGIN:
            self._expect(_Waiting.LOGIN)  # raises
        view = MaildropView(messages)  # an invalid listing leaves the login pending
        self._expect(_Waiting.LOGIN)
        self._enter(Pop3State.TRANSACTION)
        self._view = view
        return Send(render.ok(f"Logged in, {view.summary()}"))

    def login_failed(self, failure: Failure) -> Send:
        """The login failed (RFC 1939 §7: back to AUTHORIZATION; the client may retry).

        Args:
            failure: why: bad credentials (``[AUTH]``), user database unavailable or
                client throttled (``[SYS/TEMP]``), maildrop locked (``[IN-USE]``),
                store errors (``[SYS/TEMP]``/``[SYS/PERM]``).

        Raises:
            LocalProtocolError: no :class:`VerifyLogin` is pending.
        """
        self._expect(_Waiting.LOGIN)
        return Send(render.failure(failure))

    def update_finished(self, failure: Failure | None = None) -> Close:
        """The UPDATE state is done: the sign-off reply, then close (RFC 1939 §6).

        Args:
            failure: ``None`` if every marked message was deleted; otherwise why not
                (answered ``-ERR [SYS/TEMP]``, or ``[SYS/PERM]`` for
                :attr:`Failure.PERMANENT`).

        Raises:
            LocalProtocolError: no :class:`Update` is pending.
        """
        self._expect(_Waiting.UPDATE)
        self._waiting = _Waiting.CLOSED
        if failure is not None:
            code = (
                render.RespCode.SYS_PERM
                if failure is Failure.PERMANENT
                else render.RespCode.SYS_TEMP
            )
            return Close(render.err("Some deleted messages not removed.", code))
        view = self._view
        left = view.count if view is not None else 0
        detail = "maildrop empty" if left == 0 else f"{_messages(left)} left"
        return Close(render.ok(f"{self._sign_off()} ({detail})"))

    # --- handlers -------------------------------------------------------------------------

    def _capa(self, command: Capa) -> Action:
        return Send(render.multiline(render.ok("Capability list follows"), self.capabilities()))

    def _quit(self, command: Quit) -> Action:
        if self._state is Pop3State.AUTHORIZATION:
            self._waiting = _Waiting.CLOSED
            return Close(render.ok(self._sign_off()))
        view = self._require_view()
        self._enter(Pop3State.UPDATE)
        self._waiting = _Waiting.UPDATE
        return Update(view.update())

    def _user(self, command: User) -> Action:
        if not self.plaintext_allowed:
            return Send(_PLAINTEXT_DISALLOWED)
        self._pending_user = command.name
        return Send(render.ok())

    def _pass(self, command: Pass) -> Action:
        if not self.plaintext_allowed:
            return Send(_PLAINTEXT_DISALLOWED)
        user, self._pending_user = self._pending_user, None
        if user is None:
            return Send(render.err("No user name given."))
        return self._verify(Credentials(authcid=user, password=command.password), "USER")

    def _apop(self, command: Apop) -> Action:
        return Send(render.err("APOP not enabled."))

    def _stls(self, command: Stls) -> Action:
        if self._tls_active:
            return Send(render.err("Command not permitted when TLS active"))  # RFC 2595 §4
        if not self.settings.tls_available:
            return Send(render.err("TLS support isn't enabled."))
        self._waiting = _Waiting.TLS
        return StartTls(render.ok("Begin TLS negotiation"))

    def _auth(self, command: Auth) -> Action:
        if command.mechanism is None:
            return Send(render.multiline(render.ok(), self._mechanisms()))
        try:
            mechanism = start_mechanism(
                command.mechanism,
                secured=self.secured,
                allow_plaintext=not self.settings.disable_plaintext_auth,
                enabled=self.settings.mechanisms,
            )
        except EncryptionRequiredError:
            return Send(_PLAINTEXT_DISALLOWED)
        except UnknownMechanismError:
            return Send(render.err("Unsupported authentication mechanism."))
        self._pending_user = None
        try:
            initial = command.initial_response
            response = None if initial is None else decode_response(initial, initial=True)
            step = mechanism.receive(response)
        except SASLError as exc:
            return Send(_sasl_error(exc))
        return self._sasl_step(mechanism, step)

    def _auth_response(self, event: AuthResponse) -> Action:
        mechanism = self._mechanism
        if mechanism is None:  # the connection only reads responses during an exchange
            return self._bad("Unexpected SASL response")
        try:
            step = mechanism.receive(decode_response(event.line))
        except SASLError as exc:
            self._end_exchange()
            return Send(_sasl_error(exc))
        return self._sasl_step(mechanism, step)

    def _sasl_step(self, mechanism: Mechanism, step: Challenge | Credentials) -> Action:
        if isinstance(step, Challenge):
            self._mechanism = mechanism
            self.connection.start_auth_exchange()
            return Send(render.continuation(step.data))
        self._end_exchange()
        return self._verify(step, mechanism.name)

    def _stat(self, command: Stat) -> Action:
        return Send(self._require_view().stat())

    def _list(self, command: List) -> Action:
        return Send(self._require_view().list_messages(command.msg))

    def _uidl(self, command: Uidl) -> Action:
        return Send(self._require_view().uidl(command.msg))

    def _retr(self, command: Retr) -> Action:
        result = self._require_view().retr(command.msg)
        return Send(result) if isinstance(result, bytes) else result

    def _top(self, command: Top) -> Action:
        result = self._require_view().top(command.msg, command.lines)
        return Send(result) if isinstance(result, bytes) else result

    def _dele(self, command: Dele) -> Action:
        return Send(self._require_view().dele(command.msg))

    def _noop(self, command: Noop) -> Action:
        return Send(render.ok())

    def _rset(self, command: Rset) -> Action:
        return Send(self._require_view().rset())

    def _bad_command(self, event: BadCommand) -> Action:
        return self._bad(event.reason)

    def _line_too_long(self, event: LineTooLong) -> Action:
        if self._mechanism is not None:  # RFC 5034 §4: the AUTH command fails
            self._end_exchange()
        return self._bad(f"Line too long (limit {event.limit} octets)")

    def _closed(self, event: ConnectionClosed) -> Action:
        self._end_exchange()
        self._waiting = _Waiting.CLOSED
        return Close(b"")

    # --- helpers --------------------------------------------------------------------------

    def _verify(self, credentials: Credentials, mechanism: str) -> Action:
        self._waiting = _Waiting.LOGIN
        return VerifyLogin(credentials, mechanism)

    def _end_exchange(self) -> None:
        self._mechanism = None
        self.connection.end_auth_exchange()

    def _bad(self, reason: str) -> Action:
        self._bad_commands += 1
        if self._bad_commands >= self.settings.max_bad_commands:
            self._end_exchange()
            self._waiting = _Waiting.CLOSED
            return Close(render.err("Too many bad commands."))
        return Send(render.err(reason))

    def _mechanisms(self) -> tuple[str, ...]:
        return advertised_mechanisms(
            secured=self.secured,
            allow_plaintext=not self.settings.disable_plaintext_auth,
            enabled=self.settings.mechanisms,
        )

    def _sign_off(self) -> str:
        return f"{render.printable(self.settings.implementation)} POP3 server signing off"

    def _enter(self, state: Pop3State) -> None:
        if state not in TRANSITIONS[self._state]:
            raise LocalProtocolError(f"no transition from {self._state.value} to {state.value}")
        self._state = state

    def _require_view(self) -> MaildropView:
        if self._view is None:
            raise LocalProtocolError("no maildrop in the TRANSACTION state")
        return self._view

    def _require_ready(self) -> None:
        if self._waiting is not _Waiting.NOTHING:
            raise LocalProtocolError(f"waiting for {self._waiting.value}")

    def _expect(self, waiting: _Waiting) -> None:
        if self._waiting is not waiting:
            raise LocalProtocolError(
                f"not waiting for {waiting.value} (waiting for {self._waiting.value})"
            )
        self._waiting = _Waiting.NOTHING


_PLAINTEXT_DISALLOWED: Final = render.err(
    "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
    render.RespCode.AUTH,
)
"""USER/PASS or a plaintext mechanism without TLS (Dovecot's text and code)."""


def _sasl_error(exc: SASLError) -> bytes:
    """The -ERR line that ends a failed SASL exchange (RFC 5034 §4)."""
    if isinstance(exc, SASLCancelled):
        return render.err("Authentication cancelled by the client.")
    if isinstance(exc, AuthzidRejected):
        return render.err("Authentication failed.", render.RespCode.AUTH)
    return render.err(f"Invalid SASL response: {render.printable(exc.reason, limit=80)}")


def _messages(count: int) -> str:
    return "1 message" if count == 1 else f"{count} messages"


def _keyword(command: Command) -> str:
    return type(command).__name__.upper()


def _entry(
    kind: type[_E], handler: Callable[[ServerState, _E], Action]
) -> tuple[type[object], _AnyHandler]:
    # The cast is safe: handle() looks handlers up by the exact type of the event, and the
    # TypeVar makes each entry's type and handler agree.
    return kind, cast("_AnyHandler", handler)


_HANDLERS: Final[Mapping[type[object], _AnyHandler]] = dict(
    (
        _entry(Capa, ServerState._capa),
        _entry(Quit, ServerState._quit),
        _entry(User, ServerState._user),
        _entry(Pass, ServerState._pass),
        _entry(Apop, ServerState._apop),
        _entry(Stls, ServerState._stls),
        _entry(Auth, ServerState._auth),
        _entry(AuthResponse, ServerState._auth_response),
        _entry(Stat, ServerState._stat),
        _entry(List, ServerState._list),
        _entry(Uidl, ServerState._uidl),
        _entry(Retr, ServerState._retr),
        _entry(Top, ServerState._top),
        _entry(Dele, ServerState._dele),
        _entry(Noop, ServerState._noop),
        _entry(Rset, ServerState._rset),
        _entry(BadCommand, ServerState._bad_command),
        _entry(LineTooLong, ServerState._line_too_long),
        _entry(ConnectionClosed, ServerState._closed),
    )
)
"""The handler of each event type: one explicit table (no ``getattr`` on names)."""

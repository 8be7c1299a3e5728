"""One POP3 server connection: the asyncio side of :class:`roost.pop3.state.ServerState`.

:class:`POP3Session` is an :class:`asyncio.Protocol`: ``data_received`` only buffers, and
one task per connection runs the loop of :mod:`roost.pop3.state` (octets in, actions
out). Replies are collected and written in one go before the session waits for input, so
pipelined commands (RFC 2449 ``PIPELINING``) get their replies in one segment.

What the session adds to the sans-IO core:

* authentication (USER/PASS, AUTH PLAIN/LOGIN with an initial response) through the
  shared user database and the failed-login :class:`~roost.auth.throttle.Throttle`: a
  client with recent failures waits before its next attempt is answered (Dovecot's auth
  penalty), a wrong password is ``-ERR [AUTH]``, a refused client or an unavailable user
  database ``-ERR [SYS/TEMP]``. Plaintext logins are refused on an unsecured connection
  (``disable_plaintext_auth``; the same address on both ends counts as secured, as in
  Dovecot). STLS discards whatever the client pipelined behind it (CVE-2011-0411);
* the maildrop (:class:`SessionMaildrop`, :mod:`roost.pop3.storedrop` over the store):
  opened and locked at login (``-ERR [IN-USE]`` while another session holds it), read
  by RETR/TOP, and changed only at the end: the messages retrieved get ``\\Seen`` however
  the session ends (unless ``pop3_no_flag_updates``), the ones marked by DELE are deleted
  only by QUIT (the UPDATE state, RFC 1939 §6); a dropped connection deletes nothing;
* limits: line length and bad commands (the protocol layer), ``mail_max_userip_connections``
  (sessions per user and client address), inactivity (``pop3_client_timeout``, at least
  10 minutes by RFC 1939 §3; 3 minutes before login, as Dovecot's login process);
* logs in Dovecot's shapes: ``pop3-login: Login: user=<alice>, method=PLAIN, rip=...,
  lip=..., mpid=..., TLS, session=<...>`` and ``pop3(alice): Disconnected: Logged out
  top=0/0, retr=1/1432, del=1/1, size=1432`` (``pop3_logout_format``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from roost.auth.login import (
    UserIPCounts,
    check_password,
    wait_throttle,
)
from roost.auth.throttle import Throttle
from roost.auth.users import User, UserDatabase
from roost.daemon.mailsession import MailSession, ResumedLogin
from roost.pop3 import render
from roost.pop3.errors import store_failure
from roost.pop3.maildrop import Maildrop
from roost.pop3.protocol import ConnectionClosed, Event, NeedData, Quit, Rset
from roost.pop3.render import Failure, RespCode
from roost.pop3.state import (
    Action,
    Close,
    MaildropView,
    Pop3State,
    Retrieve,
    Send,
    ServerSettings,
    ServerState,
    StartTls,
    Update,
    VerifyLogin,
)
from roost.store import LockTimeout, MessageNotFound, StoreError

if TYPE_CHECKING:
    from roost.daemon.handoff import HandOff

__all__ = [
    "DEFAULT_LOGOUT_FORMAT",
    "LOGIN_TIMEOUT",
    "MaildropOpener",
    "POP3Session",
    "Registry",
    "Resumed",
    "SessionConfig",
    "SessionMaildrop",
    "Shared",
    "format_logout",
]

log_login = logging.getLogger("roost.pop3-login")
log_pop3 = logging.getLogger("roost.pop3")

LOGIN_TIMEOUT: Final = 180.0
"""Seconds a client may stay silent before logging in (Dovecot's login processes: 3 min)."""
DEFAULT_LOGOUT_FORMAT: Final = "top=%t/%p, retr=%r/%b, del=%d/%m, size=%s"
"""Dovecot's default ``pop3_logout_format``."""
_READ_HIGH_WATER: Final = 256 * 1024
"""Octets of unprocessed input after which reading pauses."""
_WRITE_CHUNK: Final = 256 * 1024
"""Octets of queued output after which a RETR writes and waits for the client."""
_TERMINATOR_SIZE: Final = len(b".\r\n")
_WHOLE_MAX: Final = 256 * 1024
"""Largest message (octets) encoded for RETR in one go (:func:`render.encode_whole`).
Bigger ones are encoded in 64 KB pieces, which is faster for them (each piece stays in
the CPU cache through the passes over it) and lets other sessions run in between."""
_TLS_HANDSHAKE_TIMEOUT: Final = 60.0


# --- what the session is given ------------------------------------------------------------


class SessionMaildrop(Maildrop, Protocol):
    """A :class:`~roost.pop3.maildrop.Maildrop` that can also record ``\\Seen`` and read
    a message at once when that needs no waiting."""

    def read_now(self, uid: int) -> bytes | None:
        """The stored message if it can be read without waiting for the disk; else None
        (then use ``read``). Never raises."""
        ...

    def still_there(self, uid: int) -> bool:
        """Whether the message read last for ``uid`` is still there unchanged (not
        expunged, not renamed); a cheap check. Never raises."""
        ...

    async def mark_seen(self, uids: Sequence[int]) -> None:
        """Add ``\\Seen`` to these messages (those retrieved by RETR).

        Raises:
            roost.store.errors.StoreError: the store failed.
        """
        ...


MaildropOpener = Callable[[User], Awaitable[SessionMaildrop]]
"""Opens (and locks) a user's maildrop after a successful login.

Raises:
    LockTimeout: another POP3 session holds it (``-ERR [IN-USE]``).
    StoreError: it cannot be opened (``-ERR [SYS/TEMP]`` or ``[SYS/PERM]``).
"""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """One POP3 service's settings (``pop3`` or ``pop3s``), resolved once per (re)load.

    Attributes:
        service: ``pop3`` (110, STLS) or ``pop3s`` (995, implicit TLS).
        protocol: what the protocol layer needs (greeting, TLS, plaintext policy...).
        client_timeout: seconds of silence after login before the session ends
            (``pop3_client_timeout``).
        max_userip_connections: sessions one user may have from one address; 0: no limit
            (Dovecot ``mail_max_userip_connections``, counted per protocol).
        mark_seen: RETR sets ``\\Seen`` (not ``pop3_no_flag_updates``).
        logout_format: Dovecot's ``pop3_logout_format``.
    """

    service: str = "pop3"
    protocol: ServerSettings = field(default_factory=ServerSettings)
    client_timeout: float = 600.0
    max_userip_connections: int = 10
    mark_seen: bool = True
    logout_format: str = DEFAULT_LOGOUT_FORMAT

    @property
    def implicit_tls(self) -> bool:
        """TLS from the first octet (``pop3s``)."""
        return self.service == "pop3s"


class Registry(UserIPCounts):
    """The sessions of the POP3 service and the logins per user and address.

    Used on the event loop only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sessions: set[POP3Session] = set()


@dataclass(slots=True)
class Shared:
    """What the sessions of one service share (built by the service).

    Attributes:
        config: the service's settings.
        users: the user database (``None``: nobody can log in).
        throttle: failed-login throttling shared by every protocol.
        tls_context: returns the current server TLS context (or raises).
        open_maildrop: opens and locks a user's maildrop.
        registry: sessions and logins across ``pop3`` and ``pop3s``.
        handoff: hands sessions of other uids to a process of their own
            (``mail_process_per_user``, :mod:`roost.daemon.handoff`); None: served here.
    """

    config: SessionConfig
    users: UserDatabase | None
    throttle: Throttle
    tls_context: Callable[[], ssl.SSLContext]
    open_maildrop: MaildropOpener
    registry: Registry
    handoff: HandOff | None = None


@dataclass(frozen=True, slots=True)
class Resumed(ResumedLogin):
    """A POP3 session handed over to this process (:class:`ResumedLogin`).

    Attributes:
        maildrop: the user's maildrop, opened and locked by this process.
    """

    maildrop: SessionMaildrop


# --- the logout line ----------------------------------------------------------------------


@dataclass(slots=True)
class _Stats:
    """Counters for Dovecot's ``pop3_logout_format`` variables."""

    top_count: int = 0
    top_bytes: int = 0
    retr_count: int = 0
    retr_bytes: int = 0
    deleted_count: int = 0
    deleted_bytes: int = 0
    message_count: int = 0
    message_bytes: int = 0


_FORMAT_VARIABLE: Final = re.compile(r"%(?:\{([a-z_]+)\}|(.))", re.DOTALL)
_SHORT_NAMES: Final = {
    "t": "top_count",
    "p": "top_bytes",
    "r": "retr_count",
    "b": "retr_bytes",
    "d": "deleted_count",
    "m": "message_count",
    "s": "message_bytes",
    "i": "input",
    "o": "output",
    "u": "uidl_change",
}


def format_logout(template: str, values: Mapping[str, int | str]) -> str:
    """Expand Dovecot's ``pop3_logout_format``.

    Variables: ``%t`` top_count, ``%p`` top_bytes, ``%r`` retr_count, ``%b`` retr_bytes,
    ``%d`` deleted_count, ``%m`` message_count, ``%s`` message_bytes, ``%i`` input,
    ``%o`` output, and long names ``%{deleted_bytes}``, ``%{session}``...
    Unknown variables (and ``%u``, uidl_change) expand to nothing, ``%%`` to ``%``.
    """

    def expand(match: re.Match[str]) -> str:
        if match.group(2) == "%":
            return "%"
        name = match.group(1) or _SHORT_NAMES.get(match.group(2), "")
        value = values.get(name)
        return "" if value is None else str(value)

    return _FORMAT_VARIABLE.sub(expand, template)


# --- control flow -------------------------------------------------------------------------


class _Disconnect(Exception):
    """End the session: ``reply`` (if any) is sent first; ``reason`` goes to the log."""

    def __init__(self, reason: str, reply: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


class _HandedOff(_Disconnect):
    """The session went to a process of its own; the worker only copies octets now."""

    def __init__(self) -> None:
        super().__init__("Handed over")


_TIMED_OUT: Final = object()
"""What the idle timer wakes a waiting session with."""
_FED: Final = object()
"""What ``data_received`` wakes the task with after answering commands itself."""
_FLUSH: Final = object()
"""What :meth:`POP3Session._answer_ready` returns when enough output is queued."""
_ORDERLY: Final = frozenset({"Logged out", "Too many bad commands"})
"""End reasons Dovecot logs as ``Disconnected: <reason>`` (others stand alone, e.g.
``Disconnected for inactivity top=...`` or ``Connection closed top=...``)."""
_SHUTTING_DOWN: Final = render.err("Server shutting down.", RespCode.SYS_TEMP)
_INACTIVITY: Final = render.err("Disconnected for inactivity.")
_HANDOFF_FAILURES: Final = {
    "in-use": Failure.IN_USE,
    "temporary": Failure.TEMPORARY,
    "auth-failed": Failure.AUTH_FAILED,
}
"""The answer to a hand-off that failed, by :attr:`HandOffFailed.kind` (else PERMANENT)."""


# --- the session --------------------------------------------------------------------------


class POP3Session(MailSession[Shared, Resumed]):
    """One client connection (see the module documentation); what it shares with IMAP
    is in :class:`~roost.daemon.mailsession.MailSession`."""

    protocol = "pop3"
    _abort_reply = _SHUTTING_DOWN
    _read_high_water = _READ_HIGH_WATER
    _log = log_pop3
    _log_login = log_login

    def __init__(self, shared: Shared, resumed: Resumed | None = None) -> None:
        super().__init__(shared, resumed)
        self.config = shared.config
        self.stats = _Stats()
        self._maildrop: SessionMaildrop | None = None
        self._seen: set[int] = set()
        self._view: MaildropView | None = None
        self._ahead_msg = 0  # the message to read ahead when the session next waits
        self._ahead: tuple[int, bytes] | None = None  # (uid, the whole RETR response)
        self._inline: ServerState | None = None  # set in TRANSACTION: see _serve_inline
        self._pending: tuple[Event, Action] | object | None = None  # left to the task
        self._waiter: asyncio.Future[object] | None = None
        self._deadline = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._out: list[bytes] = []
        self._out_size = 0

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self._loop is not None
        self.shared.registry.sessions.add(self)
        self._task = self._loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if (
            self._inline is not None
            and waiter is not None  # the task waits for input, nothing else,
            and not waiter.done()  # and nothing (a timeout, a close) woke it yet
            and self._pending is None
            and not self._incoming
            and not self._stopping
            and self._writable.is_set()
        ):
            self._bytes_in += len(data)
            self._serve_inline(self._inline, data)
            return
        super().data_received(data)

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        # Keep a TCP transport open: a client may send "QUIT" and shut down its side
        # before reading the replies. (TLS transports ignore the answer, and warn.)
        return None if self.tls else True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wake()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _wake(self, why: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(why)

    def _idle_check(self) -> None:
        """The idle timer fired: time out a session still waiting, or wait on."""
        loop = self._loop
        assert loop is not None
        if self._waiter is None:
            self._idle_timer = None  # busy: the next wait starts a timer again
        elif loop.time() >= self._deadline:
            self._idle_timer = None
            self._wake(_TIMED_OUT)
        else:
            self._idle_timer = loop.call_at(self._deadline, self._idle_check)

    # --- logging --------------------------------------------------------------------------

    @property
    def _prefix(self) -> str:
        return f"pop3({self.user.login if self.user else self._auth_login})"

    # --- I/O --------------------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        if data:
            self._out.append(data)
            self._out_size += len(data)

    def _write_queued(self) -> None:
        """Hand what is queued to the transport (which sends what the socket takes)."""
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self._out_size = 0
            transport = self.transport
            if transport is not None and not self._lost:
                self._bytes_out += len(data)
                self._send(transport, data)

    async def _flush(self) -> None:
        """Write what is queued; wait while the client does not read (flow control)."""
        self._write_queued()
        if not self._writable.is_set():
            try:
                async with asyncio.timeout(self.config.client_timeout):
                    await self._writable.wait()
            except TimeoutError:
                raise _Disconnect("Disconnected for inactivity in reading our output") from None
        if self._lost:
            raise _Disconnect("Connection closed")

    async def _receive(self) -> bytes | None:
        """The next octets from the client; ``b""`` when it closed its side; ``None`` when
        :meth:`_serve_inline` has already passed them on (see :attr:`_pending`)."""
        if not (self._incoming or self._eof or self._lost or self._stopping):
            loop = self._loop
            assert loop is not None
            timeout = self.config.client_timeout
            if self.user is None:
                timeout = min(timeout, LOGIN_TIMEOUT)
            # One timer per session, moved only when it fires early: no timer churn for
            # every command of a busy session.
            self._deadline = loop.time() + timeout
            if self._idle_timer is None:
                self._idle_timer = loop.call_at(self._deadline, self._idle_check)
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
            why = waiter.result()
            if why is _FED:
                return None
            if why is _TIMED_OUT:
                raise _Disconnect("Disconnected for inactivity", _INACTIVITY)
        if self._stopping and not self._incoming:
            raise _Disconnect("Server shutting down", _SHUTTING_DOWN)
        if not self._incoming:
            return b""
        return self._take_input()

    # --- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        reason = "Connection closed"
        server = ServerState(
            self.config.protocol,
            tls_active=self.tls,
            secure_channel=bool(self.remote_ip) and self.remote_ip == self.local_ip,
        )
        try:
            resumed = self._resumed
            if resumed is None:
                self._queue(server.greeting())
            else:
                server.await_login()
                if not self._logged_in(server, resumed.user, resumed.maildrop):
                    await resumed.maildrop.close()
                    raise _Disconnect("Invalid maildrop listing")
            reason = await self._events(server)
        except _Disconnect as stop:
            reason = stop.reason
            self._queue(stop.reply)
        except Exception:
            log_pop3.exception("%s: session failed", self._prefix)
            reason = "Internal error"
            self._queue(render.err("Internal error occurred.", RespCode.SYS_TEMP))
        finally:
            await self._finish(reason)

    async def _events(self, server: ServerState) -> str:
        """Run the conversation; returns the reason it ended (for the log)."""
        while True:
            pending = self._pending
            if pending is None:
                pending = self._answer_ready(server)
            else:
                self._pending = None
            if pending is None or pending is _FLUSH:
                await self._flush()
                if pending is _FLUSH:
                    continue
                if self._ahead_msg and not self._incoming:
                    self._read_ahead()
                data = await self._receive()
                if data is not None:
                    server.receive_data(data)
                continue
            if isinstance(pending, BaseException):
                raise pending  # from _serve_inline
            assert isinstance(pending, tuple)
            event, action = pending
            if isinstance(action, Retrieve):
                await self._retrieve(action)
            elif isinstance(action, VerifyLogin):
                await self._login(server, action)
            elif isinstance(action, StartTls):
                await self._start_tls(server, action)
            elif isinstance(action, Update):
                self._inline = None
                await self._update(server, action)
                return "Logged out"
            else:
                assert isinstance(action, Close)
                self._queue(action.data)
                if isinstance(event, Quit):
                    return "Logged out"
                if isinstance(event, ConnectionClosed):
                    return "Connection closed"
                return "Too many bad commands"

    def _answer_ready(self, server: ServerState) -> tuple[Event, Action] | object | None:
        """Answer the commands received as far as that needs no waiting.

        Returns:
            None when more input is needed; :data:`_FLUSH` when enough output is queued
            to write it first; else the next event and its action, to be awaited.
        """
        connection = server.connection
        while True:
            if self._out_size >= _WRITE_CHUNK:
                return _FLUSH
            event = connection.next_event()
            if isinstance(event, NeedData):
                return None
            if isinstance(event, Rset) and server.state is Pop3State.TRANSACTION:
                self._seen.clear()  # as Dovecot: RSET also forgets what RETR would mark
            action = server.handle(event)
            if isinstance(action, Send):
                self._queue(action.data)
            elif not (isinstance(action, Retrieve) and self._retrieve_now(action)):
                return event, action

    def _serve_inline(self, server: ServerState, data: bytes) -> None:
        """Answer commands in ``data_received`` while the task waits for input.

        In the TRANSACTION state most commands (STAT, LIST, UIDL, DELE, NOOP, RSET, and
        RETR/TOP of a message in the page cache) need no waiting: answering them here
        saves two task switches per command. What does need waiting (a read from the
        disk, QUIT's deletions, a client that does not read) is left to the task, in
        order, with everything after it.
        """
        server.receive_data(data)
        try:
            pending = self._answer_ready(server)
            self._write_queued()
            while pending is _FLUSH and self._writable.is_set():
                pending = self._answer_ready(server)
                self._write_queued()
        except Exception as error:  # the task logs it, as any failure of the session
            pending = error
        loop = self._loop
        assert loop is not None
        self._deadline = loop.time() + self.config.client_timeout
        if pending is not None:
            self._pending = pending
            self._wake(_FED)
        elif self._ahead_msg:
            self._read_ahead()

    # --- STLS (RFC 2595 §4) -----------------------------------------------------------------

    async def _start_tls(self, server: ServerState, action: StartTls) -> None:
        try:
            context = self.shared.tls_context()
        except Exception as error:  # a certificate that cannot be loaded: a local problem
            log_login.warning("cannot start TLS: %s", error)
            raise _Disconnect(
                "TLS initialization failed",
                render.err("TLS initialization failed.", RespCode.SYS_TEMP),
            ) from None
        transport, loop = self.transport, self._loop
        assert transport is not None and loop is not None
        # Nothing may be awaited from here until start_tls() has paused reading: any
        # plaintext the client sent behind STLS is discarded, never read as if encrypted.
        self._queue(action.data)
        data = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        self._bytes_out += len(data)
        transport.write(data)
        self._incoming.clear()
        self._incoming_size = 0
        try:
            new_transport = await loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as error:
            raise _Disconnect(f"TLS handshake failed: {error}") from None
        if new_transport is None:
            raise _Disconnect("TLS handshake failed")
        self.transport = new_transport
        self._reading_paused = False
        self.tls = True
        discarded = server.tls_established()
        if discarded:
            log_login.info(
                "discarded %d octets sent before the TLS handshake: %s",
                len(discarded),
                self._log_fields(),
            )

    # --- login (RFC 1939 §7 USER/PASS, RFC 5034 AUTH) ---------------------------------------

    async def _login(self, server: ServerState, action: VerifyLogin) -> None:
        shared = self.shared
        credentials = action.credentials
        login = credentials.authcid
        # Dovecot's pop3-login turns USER/PASS into SASL PLAIN, and logs it as such.
        self._auth_method = "PLAIN" if action.mechanism == "USER" else action.mechanism
        self._auth_login = login
        users = shared.users
        if users is None:
            self._queue(server.login_failed(Failure.AUTH_UNAVAILABLE).data)
            return
        if not await wait_throttle(shared.throttle, self.remote_ip, login):
            server.login_failed(Failure.AUTH_UNAVAILABLE)
            raise _Disconnect(
                "Too many failed login attempts",
                render.err("Too many failed login attempts, try later.", RespCode.SYS_TEMP),
            )
        self._auth_attempts += 1
        checked = await check_password(
            users, shared.throttle, log_login, login, credentials.password, self.remote_ip
        )
        user = checked.user
        if user is None:
            failure = Failure.AUTH_UNAVAILABLE if checked.temporary else Failure.AUTH_FAILED
            self._queue(server.login_failed(failure).data)
            return
        self._auth_login = user.login
        key = (user.login.lower(), self.remote_ip)
        limit = self.config.max_userip_connections
        if not shared.registry.add_user(key, limit):
            text = (
                "Maximum number of connections from user+IP exceeded "
                f"(mail_max_userip_connections={limit})"
            )
            log_login.info("%s: %s", text, self._log_fields())
            server.login_failed(Failure.AUTH_UNAVAILABLE)
            self._queue(render.err(text, RespCode.SYS_TEMP))
            return
        if shared.handoff is not None and shared.handoff.wanted(user):
            refused = await self._hand_off(
                shared.handoff,
                user,
                key,
                (login, credentials.password),
                tag="",
                unprocessed=server.connection.take_unprocessed,
            )
            if refused is None:
                raise _HandedOff
            failed = _HANDOFF_FAILURES.get(refused.kind, Failure.PERMANENT)
            self._queue(server.login_failed(failed).data)
            return
        try:
            maildrop = await shared.open_maildrop(user)
        except LockTimeout:
            shared.registry.remove_user(key)
            log_login.info("Maildrop in use by another POP3 session: %s", self._log_fields())
            self._queue(server.login_failed(Failure.IN_USE).data)
            return
        except StoreError as error:
            shared.registry.remove_user(key)
            log_pop3.error("pop3(%s): cannot open the maildrop: %s", user.login, error)
            self._queue(server.login_failed(store_failure(error)).data)
            return
        self._userip = key
        if not self._logged_in(server, user, maildrop):
            shared.registry.remove_user(key)
            self._userip = None
            await maildrop.close()

    def _logged_in(self, server: ServerState, user: User, maildrop: SessionMaildrop) -> bool:
        """Enter TRANSACTION with ``maildrop`` open and locked; False (the failure
        answered) when its listing is invalid."""
        try:
            reply = server.login_succeeded(maildrop.messages)
        except ValueError as error:
            log_pop3.error("pop3(%s): invalid maildrop listing: %s", user.login, error)
            self._queue(server.login_failed(Failure.TEMPORARY).data)
            return False
        self.user = user
        self._maildrop = maildrop
        self._view = server.maildrop
        self._inline = server
        self.stats.message_count = len(maildrop.messages)
        self.stats.message_bytes = sum(message.size for message in maildrop.messages)
        self._login_in = self._bytes_in
        self._login_out = self._bytes_out
        log_login.info("Login: %s", self._log_fields(mpid=True))
        self._queue(reply.data)
        return True

    # --- RETR and TOP (RFC 1939 §5, §7) -----------------------------------------------------

    def _retrieve_now(self, action: Retrieve) -> bool:
        """Answer RETR or TOP of a message that can be had without waiting (read ahead,
        or in the page cache) and is at most :data:`_WHOLE_MAX`; False if it cannot."""
        maildrop = self._maildrop
        assert maildrop is not None
        uid = action.uid
        ahead = self._ahead
        if ahead is not None:
            self._ahead = None
            if ahead[0] == uid and action.body_lines is None and maildrop.still_there(uid):
                self._sent_whole(action, ahead[1])
                return True
        message = maildrop.read_now(uid)
        if message is None or len(message) > _WHOLE_MAX:
            return False
        if action.body_lines is None:
            self._sent_whole(action, render.encode_whole(message, status=action.status))
        else:
            response = b"".join(action.response(message))
            self._queue(response)
            self._count(action, len(response))
        return True

    def _sent_whole(self, action: Retrieve, response: bytes) -> None:
        """Queue a whole RETR response; read the next message ahead when next idle."""
        self._queue(response)
        self._count(action, len(response))
        self._ahead_msg = action.msg + 1

    def _count(self, action: Retrieve, sent: int) -> None:
        """Account ``sent`` octets (status line included) of a RETR or TOP response."""
        sent -= _TERMINATOR_SIZE  # as Dovecot's retr_bytes/top_bytes: all but ".\r\n"
        stats = self.stats
        if action.body_lines is None:
            stats.retr_count += 1
            stats.retr_bytes += sent
            if self.config.mark_seen:
                self._seen.add(action.uid)
        else:
            stats.top_count += 1
            stats.top_bytes += sent

    async def _retrieve(self, action: Retrieve) -> None:
        """RETR or TOP of a message that :meth:`_retrieve_now` could not answer."""
        maildrop = self._maildrop
        assert maildrop is not None
        try:
            message = await maildrop.read(action.uid)
        except MessageNotFound:
            self._queue(render.err(f"Message {action.msg} expunged."))
            return
        except StoreError as error:
            log_pop3.warning("%s: cannot read UID %d: %s", self._prefix, action.uid, error)
            self._queue(render.failure(store_failure(error)))
            return
        if action.body_lines is None and len(message) <= _WHOLE_MAX:
            self._sent_whole(action, render.encode_whole(message, status=action.status))
            return
        sent = 0
        for piece in action.response(message):
            sent += len(piece)
            self._queue(piece)
            if self._out_size >= _WRITE_CHUNK:
                await self._flush()
        self._count(action, sent)

    def _read_ahead(self) -> None:
        """Read and encode the message after the one just retrieved, while the client
        reads that one: clients download in order (RETR 1, RETR 2, ...), and this work
        is then off the path of the next RETR. Only a message that can be read without
        waiting (:meth:`SessionMaildrop.read_now`); at RETR time it is used only if its
        file is still there (not expunged or renamed since). At most one per session.
        """
        msg = self._ahead_msg
        self._ahead_msg = 0
        view = self._view
        maildrop = self._maildrop
        if view is None or maildrop is None:
            return
        message = view.peek(msg)
        if message is None or message.size > _WHOLE_MAX:
            return
        data = maildrop.read_now(message.uid)
        if data is not None:
            status = render.retr_status(message.size)
            self._ahead = (message.uid, render.encode_whole(data, status=status))

    # --- QUIT in TRANSACTION: the UPDATE state (RFC 1939 §6) --------------------------------

    async def _update(self, server: ServerState, action: Update) -> None:
        maildrop = self._maildrop
        assert maildrop is not None
        deleted = set(action.uids)
        await self._mark_seen(self._seen - deleted)
        failure: Failure | None = None
        try:
            await maildrop.delete(action.uids)
        except StoreError as error:
            log_pop3.error("%s: deleting messages failed: %s", self._prefix, error)
            failure = store_failure(error)
        else:
            view = server.maildrop
            sizes = {m.uid: m.size for m in view.messages} if view is not None else {}
            self.stats.deleted_count = len(action.uids)
            self.stats.deleted_bytes = sum(sizes.get(uid, 0) for uid in action.uids)
        # The lock goes before the sign-off (RFC 1939 §6): a client that reconnects at
        # once finds the maildrop free.
        await self._close_maildrop()
        self._queue(server.update_finished(failure).data)

    async def _mark_seen(self, uids: set[int]) -> None:
        self._seen.clear()
        maildrop = self._maildrop
        if not uids or maildrop is None:
            return
        try:
            await maildrop.mark_seen(sorted(uids))
        except StoreError as error:
            log_pop3.warning("%s: cannot set \\Seen: %s", self._prefix, error)

    # --- the end ------------------------------------------------------------------------------

    async def _close_maildrop(self) -> None:
        """Record ``\\Seen`` for the messages retrieved, close the maildrop, free its lock."""
        maildrop = self._maildrop
        if maildrop is None:
            return
        await self._mark_seen(set(self._seen))
        self._maildrop = None
        self._ahead = None
        self._inline = None
        try:
            await maildrop.close()
        except Exception as error:
            log_pop3.warning("%s: closing the maildrop failed: %s", self._prefix, error)

    async def _finish(self, reason: str) -> None:
        if self._proxy is not None:
            await self._proxy.wait()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        with contextlib.suppress(_Disconnect):
            await self._flush()
        if self.transport is not None and not self._lost:
            self.transport.close()
        await self._close_maildrop()  # without QUIT: \Seen is kept, nothing is deleted
        registry = self.shared.registry
        registry.sessions.discard(self)
        if self._userip is not None:
            registry.remove_user(self._userip)
            self._userip = None
        if self._ended_before_login(reason, plain=reason == "Connection closed"):
            return
        stats = self.stats
        values: dict[str, int | str] = {
            "top_count": stats.top_count,
            "top_bytes": stats.top_bytes,
            "retr_count": stats.retr_count,
            "retr_bytes": stats.retr_bytes,
            "deleted_count": stats.deleted_count,
            "deleted_bytes": stats.deleted_bytes,
            "message_count": stats.message_count,
            "message_bytes": stats.message_bytes,
            "input": self._bytes_in - self._login_in,
            "output": self._bytes_out - self._login_out,
            "session": self.session_id,
        }
        line = format_logout(self.config.logout_format, values)
        # As Dovecot: "Disconnected: " before the reasons of an orderly end only.
        what = f"Disconnected: {reason}" if reason in _ORDERLY else reason
        log_pop3.info("%s: %s %s", self._prefix, what, line)

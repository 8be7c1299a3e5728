"""What an IMAP and a POP3 session share: connection plumbing and the login hand-off.

:class:`MailSession` is the base of :class:`roost.imap.session.IMAPSession` and
:class:`roost.pop3.session.POP3Session`. It keeps what both do the same way and the
protocols only differ in by a constant:

* the client's addresses, session id and the counters of the Dovecot log lines
  (``rip``, ``lip``, ``session=<...>``, ``TLS`` or ``secured``, :meth:`_log_fields`), and
  the login process's line at the end of a session that never logged in
  (:meth:`_ended_before_login`);
* the input buffer: ``data_received`` only buffers (reading pauses above
  :attr:`MailSession._read_high_water` octets) and wakes the session's task;
* the daemon's control of a session (:class:`roost.daemon.serving.EndingSession`):
  :meth:`shutdown`, :meth:`abort`, :attr:`done`;
* the hand-off of a logged-in session to a process running as its user
  (:meth:`_hand_off`, ``mail_process_per_user``, :mod:`roost.daemon.handoff`), and what
  a session handed over to such a process starts from (:class:`ResumedLogin`).

The protocol's session defines ``_wake`` (resolve what its task waits for) and ``_flush``
(write what is queued), and sets the class attributes :attr:`protocol`,
:attr:`_abort_reply`, :attr:`_read_high_water` and its loggers.

See Also: Dovecot's login processes (``imap-login``, ``pop3-login``) and their log fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final, Generic, Protocol, TypeVar, cast

from roost.auth.login import UserIPCounts, log_disconnected, login_fields
from roost.auth.throttle import Throttle
from roost.auth.users import User

if TYPE_CHECKING:
    from roost.daemon.handoff import HandOff, HandOffFailed, Proxy

__all__ = [
    "TLS_WRITE_SIZE",
    "MailSession",
    "ResumedLogin",
    "ServiceConfig",
    "SessionShared",
    "plain_ip",
    "write_in_pieces",
]

#: The most handed to a TLS transport in one write (bytes): one TLS record's worth
#: (RFC 8446 §5.1, 2^14 octets of plaintext). The event loop's TLS layer encrypts a
#: write whole into the connection's outgoing memory BIO, and OpenSSL's memory BIO never
#: gives back what it grew to: without pieces a session keeps a buffer the size of its
#: largest response (a FETCH batch: megabytes) for the rest of its life, idle or not
#: (docs/performance.md, "IMAP idle memory over TLS, session 9").
TLS_WRITE_SIZE: Final = 16 * 1024


def plain_ip(address: str) -> str:
    """``::ffff:192.0.2.1`` as ``192.0.2.1`` (an IPv4-mapped IPv6 address, RFC 4291
    §2.5.5.2); other addresses as they are."""
    return address[7:] if address.startswith("::ffff:") and "." in address else address


def write_in_pieces(transport: asyncio.BaseTransport, data: bytes, size: int) -> None:
    """Write ``data`` to ``transport`` in pieces of at most ``size`` bytes (views, not
    copies), in order; in one write when it is no longer than that.

    Args:
        transport: a writable transport (``asyncio.WriteTransport``).
        data: what to send.
        size: the most per write, in bytes; at least 1 (:data:`TLS_WRITE_SIZE` for TLS).
    """
    write = cast(asyncio.WriteTransport, transport).write
    if len(data) <= size:
        write(data)
        return
    view = memoryview(data)
    for start in range(0, len(data), size):
        write(view[start : start + size])


class ServiceConfig(Protocol):
    """What :class:`MailSession` reads of a service's settings (IMAP and POP3
    ``SessionConfig``).

    Attributes:
        service: the ``master.cf`` service: ``imap``, ``imaps``, ``pop3``, ``pop3s``.
        implicit_tls: TLS from the first octet (``imaps``, ``pop3s``).
    """

    @property
    def service(self) -> str: ...
    @property
    def implicit_tls(self) -> bool: ...


class SessionShared(Protocol):
    """What :class:`MailSession` reads of the state its service's sessions share (IMAP
    and POP3 ``Shared``).

    Attributes:
        config: the service's settings.
        throttle: failed-login throttling, shared by every protocol.
        registry: logins per user and client address (``mail_max_userip_connections``).
        handoff: hands sessions of other uids to a process of their own; None: they are
            served here.
    """

    @property
    def config(self) -> ServiceConfig: ...
    @property
    def throttle(self) -> Throttle: ...
    @property
    def registry(self) -> UserIPCounts: ...
    @property
    def handoff(self) -> HandOff | None: ...


@dataclass(frozen=True, slots=True)
class ResumedLogin:
    """A session logged in by a worker and handed over to this process, running as the
    user (:mod:`roost.daemon.handoff`): it answers the login and goes on from there. Each
    protocol adds what it opened for the user (IMAP the store, POP3 the maildrop).

    Attributes:
        user: who logged in.
        tls: the client's connection (to the worker) is TLS.
        remote_ip: the client's address.
        local_ip: the address it connected to.
        session_id: the worker's session id (the logs of both processes share it).
        method: the SASL mechanism (``PLAIN`` for IMAP LOGIN and POP3 USER/PASS), for
            the log.
        login: the login name, for the log.
    """

    user: User
    tls: bool
    remote_ip: str
    local_ip: str
    session_id: str
    method: str
    login: str


SharedT = TypeVar("SharedT", bound=SessionShared)
ResumedT = TypeVar("ResumedT", bound=ResumedLogin)


class MailSession(asyncio.Protocol, Generic[SharedT, ResumedT]):
    """The part of one IMAP or POP3 client connection both protocols share (see the
    module documentation).

    Slotted: an idle IMAP session is little more than its slots (docs/performance.md).

    Args:
        shared: what the sessions of the service share.
        resumed: the login a worker handed over to this process (None: a new connection).
    """

    __slots__ = (
        "_auth_attempts",
        "_auth_login",
        "_auth_method",
        "_bytes_in",
        "_bytes_out",
        "_eof",
        "_incoming",
        "_incoming_size",
        "_login_in",
        "_login_out",
        "_loop",
        "_lost",
        "_proxy",
        "_reading_paused",
        "_resumed",
        "_stopping",
        "_task",
        "_userip",
        "local_ip",
        "remote_ip",
        "session_id",
        "shared",
        "started",
        "tls",
        "transport",
        "user",
    )

    #: ``imap`` or ``pop3``: the hand-off's protocol and the log lines' prefix.
    protocol: ClassVar[str] = "?"
    #: What :meth:`abort` writes before it closes the connection.
    _abort_reply: ClassVar[bytes] = b""
    #: Octets of unprocessed input after which reading pauses.
    _read_high_water: ClassVar[int] = 256 * 1024
    #: The protocol's log (``roost.imap``, ``roost.pop3``).
    _log: ClassVar[logging.Logger] = logging.getLogger("roost")
    #: The login process's log (``roost.imap-login``, ``roost.pop3-login``).
    _log_login: ClassVar[logging.Logger] = logging.getLogger("roost")

    def __init__(self, shared: SharedT, resumed: ResumedT | None = None) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.tls = shared.config.implicit_tls
        self.remote_ip = ""
        self.local_ip = ""
        self.session_id = secrets.token_urlsafe(9)
        self.started = time.monotonic()
        self.user: User | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._incoming: list[bytes] = []
        self._incoming_size = 0
        self._reading_paused = self._eof = self._lost = self._stopping = False
        # octets in and out, and their counts at the login (for the logout line)
        self._bytes_in = self._bytes_out = self._login_in = self._login_out = 0
        self._auth_attempts = 0
        self._auth_method = self._auth_login = ""
        self._userip: tuple[str, str] | None = None
        self._proxy: Proxy | None = None
        self._resumed = resumed
        if resumed is not None:
            self.tls = resumed.tls
            self.remote_ip, self.local_ip = resumed.remote_ip, resumed.local_ip
            self.session_id = resumed.session_id
            self._auth_method, self._auth_login = resumed.method, resumed.login

    def _send(self, transport: asyncio.BaseTransport, data: bytes) -> None:
        """Write ``data`` to the client: over TLS in pieces of :data:`TLS_WRITE_SIZE`
        (:func:`write_in_pieces`), else in one write."""
        if self.tls:
            write_in_pieces(transport, data, TLS_WRITE_SIZE)
        else:
            cast(asyncio.WriteTransport, transport).write(data)

    # --- what the protocol's session defines ------------------------------------------------

    def _wake(self) -> None:
        """Resolve what the session's task waits for (input, EOF, a stop...)."""
        raise NotImplementedError

    async def _flush(self) -> None:
        """Write what is queued (and wait while the client does not read)."""
        raise NotImplementedError

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the transport and, on a new connection, the client's addresses (the
        protocol's session then registers itself and starts its task)."""
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        if self._resumed is None:
            peer = transport.get_extra_info("peername") or ("", 0)
            sock = transport.get_extra_info("sockname") or ("", 0)
            self.remote_ip = plain_ip(str(peer[0]))
            self.local_ip = plain_ip(str(sock[0]))

    def data_received(self, data: bytes) -> None:
        """Buffer ``data`` for the session's task; pause reading above the high water."""
        self._incoming.append(data)
        self._incoming_size += len(data)
        self._bytes_in += len(data)
        if self._incoming_size > self._read_high_water and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()
        self._wake()

    def _take_input(self) -> bytes:
        """All buffered input (``b""`` for none); reading resumes if it was paused."""
        incoming = self._incoming
        if not incoming:
            data = b""
        else:
            data = incoming[0] if len(incoming) == 1 else b"".join(incoming)
            incoming.clear()
        self._incoming_size = 0
        if self._reading_paused and self.transport is not None and not self._lost:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    # --- daemon control (roost.daemon.serving.EndingSession) --------------------------------

    def shutdown(self) -> None:
        """Ask the session to end (IMAP ``* BYE``, POP3 ``-ERR [SYS/TEMP]``) when it next
        waits for input; a handed-over session's process is asked the same."""
        self._stopping = True
        self._wake()
        if self._proxy is not None:
            self._proxy.shutdown()

    def abort(self) -> None:
        """Close the connection at once (the grace time is over)."""
        if self._proxy is not None:
            self._proxy.abort()
        elif self.transport is not None and not self._lost:
            with contextlib.suppress(Exception):
                self.transport.write(self._abort_reply)
            self.transport.abort()

    @property
    def done(self) -> bool:
        """Whether the session has ended."""
        return self._task is None or self._task.done()

    # --- logging ----------------------------------------------------------------------------

    @property
    def secured(self) -> bool:
        """TLS, or both ends on the same address (Dovecot's "secured")."""
        return self.tls or (bool(self.remote_ip) and self.remote_ip == self.local_ip)

    def _log_fields(self, *, method: bool = True, mpid: bool = False) -> str:
        """Dovecot's login log fields (:func:`roost.auth.login.login_fields`)."""
        return login_fields(
            self._auth_login,
            self._auth_method if method else "",
            self.remote_ip,
            self.local_ip,
            self.session_id,
            tls=self.tls,
            secured=self.secured,
            mpid=mpid,
        )

    def _ended_before_login(self, reason: str, *, plain: bool, disallowed: str = "") -> bool:
        """At the session's end: log it if it never logged in (Dovecot's login process
        line, :func:`roost.auth.login.log_disconnected`; ``plain``: without the reason).

        Returns:
            True when nothing is left to log: the session was not logged in, or it went
            to a mail process of its own (which logged its end); False: the caller logs
            the logout line.
        """
        if self._proxy is not None:
            return True
        if self.user is None:
            log_disconnected(
                self._log_login,
                reason,
                self._log_fields(),
                plain=plain,
                attempts=self._auth_attempts,
                started=self.started,
                disallowed=disallowed,
            )
            return True
        return False

    # --- the hand-off (mail_process_per_user) -----------------------------------------------

    async def _hand_off(
        self,
        handoff: HandOff,
        user: User,
        key: tuple[str, str],
        credentials: tuple[str, str],
        *,
        tag: str,
        unprocessed: Callable[[], bytes],
    ) -> HandOffFailed | None:
        """Go on in a process running as ``user`` (:mod:`roost.daemon.handoff`), which
        answers the login.

        ``key`` (user, address) is counted in the registry already; it stays counted for
        the proxied session, and is released when the hand-off fails. ``credentials``
        (login, password) are checked again by the privileged helper: when that check
        fails, it counts in the failed-login throttle as a wrong password would (the
        worker's own check counted a success). What the client sent behind its login
        (``unprocessed``: what the protocol's parser holds, then the input buffer) goes to
        the session's process first; nothing is awaited between taking it and the proxy
        taking over.

        Args:
            handoff: the helper's hand-off.
            user: who logged in.
            key: the login's ``(user, address)`` in the registry.
            credentials: the login name and password the client gave.
            tag: the IMAP tag of the LOGIN or AUTHENTICATE command ("" for POP3).
            unprocessed: takes the octets the protocol's parser has not used.

        Returns:
            None when the session's process has taken over (the caller ends the
            session's task: only the proxy runs on); else the failure, for the caller to
            answer with its protocol's error, the session staying here, not logged in.
        """
        from roost.daemon.handoff import HandOffFailed

        login = credentials[0]
        state = {
            "tag": tag,
            "tls": self.tls,
            "remote_ip": self.remote_ip,
            "local_ip": self.local_ip,
            "session_id": self.session_id,
            "method": self._auth_method,
            "login": self._auth_login,
        }
        registry = self.shared.registry
        try:
            await self._flush()  # what was answered before the login goes first
            proxy = await handoff.start(
                self.protocol, self.shared.config.service, user, state, credentials
            )
        except HandOffFailed as failure:
            registry.remove_user(key)
            if failure.kind == "auth-failed":  # the helper logged it as a failed login
                self.shared.throttle.record_failure(self.remote_ip, login)
            self._log.error(
                "%s(%s): cannot start the mail process: %s", self.protocol, user.login, failure
            )
            return failure
        except BaseException:
            registry.remove_user(key)
            raise
        self._userip = key
        self.user = user
        transport = self.transport
        assert transport is not None
        # Nothing may be awaited from here until the proxy owns the transport.
        pending = unprocessed() + self._take_input()
        proxy.attach(transport, pending)
        self._proxy = proxy
        if self._stopping:
            proxy.shutdown()
        self._log_login.debug("handed over to mail process %d: %s", proxy.pid, self._log_fields())
        return None

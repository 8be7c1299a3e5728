"""One IMAP server connection: the asyncio side of :class:`roost.imap.connection.Connection`.

:class:`IMAPSession` is an :class:`asyncio.Protocol`: ``data_received`` only buffers, and
one task per connection runs the h11-style loop of :mod:`roost.imap` (octets in, events
out), dispatching each command through :data:`HANDLERS`, one explicit table. A session
with nothing to do (in IDLE, or silent for a few seconds) hibernates: its task ends, and
the next event starts another from the same state (:mod:`roost.imap.hibernate`). Store calls
that read or sync run on the event loop (a few ``stat`` calls and index reads when
nothing changed: cheaper than a thread hand-off); those that fsync (APPEND, STORE,
EXPUNGE, COPY, MOVE, mailbox changes) or may take long (SELECT, FETCH and SEARCH over
more than :data:`_INLINE_MESSAGES` messages) run as one call in a worker thread, so
waiting for the disk or a big mailbox does not stall other sessions. One call at a
time per session keeps one session's changes in order.

What the session adds to the sans-IO core:

* authentication: ``LOGIN`` and ``AUTHENTICATE`` (SASL PLAIN/LOGIN, SASL-IR) through the
  shared user database and the failed-login :class:`~roost.auth.throttle.Throttle`;
  plaintext authentication only on secured connections (TLS, or the same address on
  both ends as Dovecot counts it) unless ``disable_plaintext_auth = no``; STARTTLS
  discards whatever the client pipelined behind it (CVE-2011-0411);
* the selected mailbox: :class:`~roost.imap.selected.SelectedMailbox` keeps the client's
  view; the store is synced after every command and untagged updates go out where RFC
  9051 §7.5.1 allows them; IDLE (RFC 2177) wakes on the store's change bus and polls
  every ``mailbox_idle_check_interval`` for changes by other programs;
* limits: line and literal sizes, ``mail_max_userip_connections``, too many invalid
  commands (``* BYE``), inactivity (``imap_client_timeout``; 3 minutes before login);
* logs in Dovecot's shapes (``imap-login: Login: user=<...>, method=PLAIN, rip=...``,
  ``imap(user): Disconnected: Logged out in=... out=...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import logging
import os
import pickle
import re
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast

from roost.auth.login import (
    UserIPCounts,
    check_password,
    decrement,
    wait_throttle,
)
from roost.auth.sasl import (
    AuthzidRejected,
    Challenge,
    Credentials,
    EncryptionRequiredError,
    SASLCancelled,
    SASLError,
    UnknownMechanismError,
    advertised_mechanisms,
    decode_response,
    encode_challenge,
    start_mechanism,
)
from roost.auth.throttle import Throttle
from roost.auth.users import User, UserDatabase
from roost.daemon.hibernation import BYE_SHUTDOWN, DEFAULT_LOGOUT_FORMAT, maildir_stamps
from roost.daemon.mailsession import MailSession, ResumedLogin
from roost.imap.commands import (
    SEEN,
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
    FetchAttribute,
    FetchBody,
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
    SearchReturn,
    Select,
    SelectCommand,
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
from roost.imap.connection import (
    NEED_DATA,
    AuthenticateResponse,
    BadCommand,
    Connection,
    ConnectionClosed,
    ContinuationNeeded,
    IdleDone,
    LineTooLong,
    Parked,
    State,
)
from roost.imap.errors import store_error_response
from roost.imap.fetch import (
    FetchPlan,
    FetchTarget,
    SearchTarget,
    fetch_batch,
    has_modseq,
    search_messages,
    substitute_saved,
)
from roost.imap.hibernate import SLACK, Alarms, HeapTrim
from roost.imap.mailboxes import (
    DELIMITER,
    ListEntry,
    canonical_pattern,
    list_entries,
    list_root,
    lsub_entries,
    name_from_client,
    name_to_client,
)
from roost.imap.response import (
    AUTHENTICATIONFAILED,
    AUTHORIZATIONFAILED,
    CANNOT,
    CLOSED,
    CONTINUE_LITERAL,
    EXPUNGEISSUED,
    NONEXISTENT,
    NOPERM,
    PRIVACYREQUIRED,
    READ_ONLY,
    READ_WRITE,
    SERVERBUG,
    UNAVAILABLE,
    UNKNOWN_CTE,
    USEATTR,
    CapabilityResponse,
    ContinuationResponse,
    EnabledResponse,
    ESearchResponse,
    ExistsResponse,
    FetchResponse,
    IdResponse,
    ListResponse,
    LsubResponse,
    MailboxStatusResponse,
    NamespaceResponse,
    QuotaResponse,
    QuotaRootResponse,
    RecentResponse,
    Response,
    ResponseCode,
    SearchResponse,
    TaggedResponse,
    UidItem,
    UntaggedResponse,
    VanishedResponse,
)
from roost.imap.selected import RECENT_ONLY, SelectedMailbox, UpdateMode
from roost.imap.sequence import SequenceSet
from roost.store import (
    Changes,
    LockTimeout,
    MailboxInfo,
    MailboxNotFound,
    MailboxProtocol,
    MailboxStatus,
    MailStoreProtocol,
    MessageInfo,
    StoreError,
    StoreFlagsResult,
    normalize_mailbox_name,
)
from roost.store import StoreMode as StoreFlagMode

if TYPE_CHECKING:
    from roost.daemon.handoff import HandOff
    from roost.daemon.hibernation import HibernationLink

__all__ = [
    "HANDLERS",
    "LOGOUT_VARIABLES",
    "IMAPSession",
    "Registry",
    "Resumed",
    "SessionConfig",
    "Shared",
    "StoreOpener",
    "StoreUnavailable",
    "UserStore",
    "format_logout",
]

log_login = logging.getLogger("roost.imap-login")
log_imap = logging.getLogger("roost.imap")

_T = TypeVar("_T")

LOGIN_TIMEOUT: Final = 180.0
"""Seconds a client may stay silent before logging in (Dovecot: 3 minutes)."""
MAX_BAD_COMMANDS: Final = 20
"""Invalid commands after which the session ends (Dovecot's CLIENT_MAX_BAD_COMMANDS)."""
_READ_HIGH_WATER: Final = 1024 * 1024
_QUOTA_ROOT: Final = "User quota"
_POST_LOGIN_CAPABILITIES: Final = (
    "NAMESPACE",
    "UNSELECT",
    "UIDPLUS",
    "MOVE",
    "CHILDREN",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "ESEARCH",
    "SEARCHRES",
    "CONDSTORE",
    "QRESYNC",
    "UTF8=ACCEPT",
    "QUOTA",
    "QUOTA=RES-STORAGE",
    "STATUS=SIZE",
    "BINARY",
    "MULTIAPPEND",
)
_ENABLEABLE: Final = {
    "CONDSTORE": "CONDSTORE",
    "QRESYNC": "QRESYNC",
    "UTF8=ACCEPT": "UTF8=ACCEPT",
    "IMAP4REV2": "IMAP4rev2",
}


# --- configuration and shared state -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """One IMAP service's settings (``imap`` or ``imaps``), resolved once per (re)load.

    Attributes:
        service: ``imap`` (143, STARTTLS) or ``imaps`` (993, implicit TLS).
        greeting: the greeting text (Dovecot ``login_greeting``).
        max_line_length: longest command line and non-APPEND literal, octets
            (Dovecot ``imap_max_line_length``).
        append_limit: largest APPEND message, octets (APPENDLIMIT, RFC 7889).
        client_timeout: seconds of silence after login before the session ends.
        idle_notify_interval: seconds between ``* OK Still here`` during IDLE.
        idle_check_interval: seconds between polls of the mailbox during IDLE.
        max_userip_connections: sessions one user may have from one address.
        disable_plaintext_auth: refuse LOGIN and PLAIN/LOGIN on unsecured connections.
        capability: Dovecot's ``imap_capability`` (empty: the default list; ``+X Y``:
            the default plus X and Y; otherwise the whole post-login list).
        id_send: the ``ID`` response fields (value ``None`` for NIL).
        id_log: client ``ID`` fields to log (``*`` for all).
        logout_format: Dovecot's ``imap_logout_format``.
        special_use: mailboxes created at login: name -> special-use attribute.
        mechanisms: SASL mechanisms offered.
        hibernate_timeout: seconds in IDLE before the session moves to the master
            (Dovecot ``imap_hibernate_timeout``; 0: never).
    """

    service: str = "imap"
    greeting: str = "roost ready."
    max_line_length: int = 65536
    append_limit: int = 50 * 1024 * 1024
    client_timeout: float = 1800.0
    idle_notify_interval: float = 120.0
    idle_check_interval: float = 5.0
    max_userip_connections: int = 10
    disable_plaintext_auth: bool = True
    capability: str = ""
    id_send: tuple[tuple[str, str | None], ...] = (("name", "roost"),)
    id_log: frozenset[str] = frozenset()
    logout_format: str = "in=%i out=%o"
    special_use: Mapping[str, str] = field(default_factory=dict)
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    hibernate_timeout: float = 0.0

    @property
    def implicit_tls(self) -> bool:
        """TLS from the first octet (``imaps``)."""
        return self.service == "imaps"


class UserStore(MailStoreProtocol, Protocol):
    """What the session needs of a user's mail store beyond the shared protocol."""

    @property
    def quota(self) -> int | None:
        """The quota in octets, ``None`` for none."""

    def quota_usage(self) -> int:
        """Octets stored in all mailboxes."""


class StoreUnavailable(Exception):
    """The user's mail cannot be served (no usable ``mail_location``): ``NO [UNAVAILABLE]``."""


StoreOpener = Callable[[User], UserStore]
"""Opens a user's store (blocking; run in a worker thread); raises StoreUnavailable."""


class Registry(UserIPCounts):
    """The sessions of the IMAP service and their counts (used on the event loop only)."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: set[IMAPSession] = set()
        self.per_ip: dict[str, int] = {}

    def add(self, session: IMAPSession, address: str) -> int:
        """Count a new connection; returns the connections from that address now."""
        self.sessions.add(session)
        self.per_ip[address] = self.per_ip.get(address, 0) + 1
        return self.per_ip[address]

    def remove(self, session: IMAPSession, address: str) -> None:
        """Forget a connection (idempotent per session)."""
        if session in self.sessions:
            self.sessions.discard(session)
            decrement(self.per_ip, address)


#: FETCH and SEARCH over more messages than this run in a worker thread, so that one
#: big mailbox does not stall the event loop (smaller ones are cheaper inline).
_INLINE_MESSAGES: Final = 1000

#: A selected session that sent nothing for this long releases its mailbox's index
#: connection (reopened at its next command), in seconds.
_SUSPEND_AFTER_SECONDS: Final = 5.0


@dataclass(slots=True)
class Shared:
    """What the sessions of one service share (built by the composition root).

    Attributes:
        config: the service's settings.
        users: the user database (``None``: nobody can log in).
        throttle: failed-login throttling shared by every protocol.
        tls_context: returns the current server TLS context (or raises).
        open_store: opens a user's mail store (blocking).
        registry: connection counts across ``imap`` and ``imaps``.
        executor: where store calls run.
        ip_connection_limit: connections per client address (0: no limit).
        handoff: hands sessions of other uids to a process of their own
            (``mail_process_per_user``, :mod:`roost.daemon.handoff`); None: served here.
        alarms: the deadlines of the hibernated sessions (:mod:`roost.imap.hibernate`).
        heap_trim: trims the C heap once sessions have hibernated or ended.
        hibernation: the worker's link to the master, where sessions idle in IDLE for
            ``config.hibernate_timeout`` move (:mod:`roost.daemon.hibernation`); None in
            the master, with one process, or for ``imaps``.
    """

    config: SessionConfig
    users: UserDatabase | None
    throttle: Throttle
    tls_context: Callable[[], ssl.SSLContext]
    open_store: StoreOpener
    registry: Registry
    executor: Executor
    ip_connection_limit: int = 0
    handoff: HandOff | None = None
    alarms: Alarms = field(default_factory=Alarms)
    heap_trim: HeapTrim = field(default_factory=HeapTrim)
    hibernation: HibernationLink | None = None


@dataclass(frozen=True, slots=True)
class Resumed(ResumedLogin):
    """An IMAP session handed over to this process (:class:`ResumedLogin`).

    Attributes:
        tag: the tag of the LOGIN or AUTHENTICATE command.
        store: the user's store, opened by this process.
    """

    tag: str
    store: UserStore


# --- the logout line ------------------------------------------------------------------------


_NOTHING_ENABLED: Final[frozenset[str]] = frozenset()


@dataclass(slots=True)
class _Stats:
    """Counters for Dovecot's ``imap_logout_format`` variables."""

    deleted: int = 0
    expunged: int = 0
    trashed: int = 0
    fetch_hdr_count: int = 0
    fetch_hdr_bytes: int = 0
    fetch_body_count: int = 0
    fetch_body_bytes: int = 0


#: The variables of ``imap_logout_format`` a session counts (:func:`format_logout`).
LOGOUT_VARIABLES: Final = ("input", "output", *(f.name for f in dataclasses.fields(_Stats)))

_FORMAT_VARIABLE: Final = re.compile(r"%(?:\{([a-z_]+)\}|([a-zA-Z%]))")


def format_logout(template: str, values: Mapping[str, int]) -> str:
    """Expand Dovecot's ``imap_logout_format``: ``%i``/``%{input}``, ``%o``/``%{output}``,
    ``%{deleted}``, ``%{expunged}``, ``%{trashed}``, ``%{fetch_hdr_count}``... Unknown
    variables expand to nothing, ``%%`` to ``%``."""
    short = {"i": "input", "o": "output"}

    def expand(match: re.Match[str]) -> str:
        name = match.group(1) or short.get(match.group(2), "")
        if match.group(2) == "%":
            return "%"
        value = values.get(name)
        return "" if value is None else str(value)

    return _FORMAT_VARIABLE.sub(expand, template)


# --- control flow ---------------------------------------------------------------------------


class _Disconnect(Exception):
    """End the session: ``bye`` (if any) is sent first; ``reason`` goes to the log."""

    def __init__(self, reason: str, bye: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bye = bye


class _HandedOff(_Disconnect):
    """The session went to a process of its own; the worker only copies octets now."""

    def __init__(self) -> None:
        super().__init__("Handed over")


class _Hibernated(Exception):
    """The session hibernates: its task ends without ending the session."""


#: The layout of a hibernated session's packed state (:meth:`IMAPSession._move_out`).
_STATE_VERSION: Final = 1
#: The fields of a :class:`User`, in the order the packed state holds them (``extra``
#: and ``backend`` last).
_USER_FIELDS: Final = tuple(
    sorted(dataclasses.fields(User), key=lambda f: f.name in ("extra", "backend"))
)

#: Seconds before a session that could not move to the master tries again (a change of
#: its Maildir within the file system's timestamp granularity, output pending...).
_MOVE_RETRY: Final = 1.0


class _Bad(Exception):
    """The command is invalid in a way the grammar cannot see: ``tag BAD text``."""


Handler = Callable[["IMAPSession", Command], Awaitable[TaggedResponse | None]]


# --- the session ------------------------------------------------------------------------------


class IMAPSession(MailSession[Shared, Resumed]):
    """One client connection (see the module documentation); what it shares with POP3
    is in :class:`~roost.daemon.mailsession.MailSession`.

    Slotted, and without an :class:`asyncio.Event` per condition: a session waits on at
    most one future (:meth:`_wait_input`), which the protocol callbacks resolve. A
    hibernated session (:meth:`_hibernate_if_quiet`) has no task either: it is its slots,
    the transport and its mailbox's suspended state (docs/performance.md, "IMAP idle
    memory, session 5").
    """

    __slots__ = (
        "_adopt",
        "_alarm_at",
        "_auth_disallowed",
        "_bad_commands",
        "_changed",
        "_conn",
        "_counted",
        "_drained",
        "_hibernated",
        "_idle_tag",
        "_move_at",
        "_moved",
        "_next_check",
        "_next_notify",
        "_out",
        "_parked",
        "_quiet_until",
        "_waiter",
        "_writing_paused",
        "config",
        "enabled",
        "mail",
        "selected",
        "stats",
    )

    protocol = "imap"
    _abort_reply = BYE_SHUTDOWN
    _read_high_water = _READ_HIGH_WATER
    _log = log_imap
    _log_login = log_login

    def __init__(self, shared: Shared, resumed: Resumed | None = None) -> None:
        super().__init__(shared, resumed)
        self.config = shared.config
        config = self.config
        # The sans-IO connection; None while hibernated with nothing buffered, when
        # _parked describes it and the conn property makes it again.
        self._conn: Connection | None = Connection(
            max_line_size=config.max_line_length,
            max_literal_size=config.max_line_length,
            max_append_size=config.append_limit,
        )
        self._parked: Parked | None = None
        self.mail: UserStore | None = None
        self.selected: SelectedMailbox | None = None
        self.enabled = _NOTHING_ENABLED  # ENABLEd extensions (a new frozenset each)
        self.stats = _Stats()
        self._writing_paused = False
        # What _wait_input awaits (None: nothing waits); resolved by _wake().
        self._waiter: asyncio.Future[None] | None = None
        # What _flush awaits while the transport's buffer is full (pause_writing).
        self._drained: asyncio.Future[None] | None = None
        self._changed = False  # the selected mailbox changed (set from the loop thread)
        self._out: list[bytes] = []
        self._bad_commands = 0
        self._auth_disallowed = ""
        self._idle_tag: str | None = None
        # In IDLE: when to poll the mailbox and to send the keepalive (time.monotonic()).
        self._next_check = self._next_notify = 0.0
        # Outside IDLE: when silence ends the session (0.0: not waiting for input).
        self._quiet_until = 0.0
        # Hibernated: no task runs; _wake starts one (roost.imap.hibernate).
        self._hibernated = False
        # The deadline of this session's latest entry in shared.alarms (0.0: none).
        self._alarm_at = 0.0
        self._counted = False
        # In IDLE: when the session moves to the master (0.0: never; roost.daemon.hibernation).
        self._move_at = 0.0
        self._moved = False  # moved to the master: this object is done with
        # A session the master woke into this worker: (state, header) until connection_made.
        self._adopt: tuple[dict[str, Any], dict[str, object]] | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None and self._loop is not None
        registry = self.shared.registry
        if self._adopt is not None:  # woken in the master: its counts come with it
            if self._userip is not None:
                self._userip = (self._userip[0], self.remote_ip)
            registry.sessions.add(self)
            _move_count(registry.per_ip, self.remote_ip, 1)
            self._counted = True
            if self._userip is not None:
                _move_count(registry.per_user_ip, self._userip, 1)
            self._task = self._loop.create_task(self._run(adopting=True))
            return
        count = registry.add(self, self.remote_ip)
        self._counted = True
        limit = self.shared.ip_connection_limit
        if limit and count > limit:
            log_login.warning(
                "Disconnected: Too many connections from %s (limit %d): rip=%s, lip=%s",
                self.remote_ip,
                limit,
                self.remote_ip,
                self.local_ip,
            )
            self.transport.write(b"* BYE Too many connections from your address.\r\n")
            self.transport.close()
            registry.remove(self, self.remote_ip)
            self._counted = False
            return
        self._task = self._loop.create_task(self._run())

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._moved:
            return
        self._lost = True
        self._wake()
        self._resume()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._resume()

    def _wake(self) -> None:
        """Resolve what :meth:`_wait_input` awaits (input, EOF, a stop, a change), or
        start the task of a hibernated session."""
        if self._moved:
            return
        if self._hibernated:
            self._hibernated = False
            assert self._loop is not None
            self._task = self._loop.create_task(self._run(resuming=True))
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _alarm(self, when: float) -> None:
        """A deadline of :class:`~roost.imap.hibernate.Alarms`: wake up if it is still
        this session's (the poll or the keepalive is due)."""
        if when == self._alarm_at:
            self._alarm_at = 0.0
        due = self._quiet_until if self._idle_tag is None else self._idle_due()
        if self._hibernated and when == due:
            self._wake()

    def _idle_due(self) -> float:
        """In IDLE: the next deadline (the poll, the keepalive, the move to the master)."""
        due = min(self._next_check, self._next_notify)
        return min(due, self._move_at) if self._move_at else due

    def _alarm_pending(self, when: float) -> bool:
        """Whether the entry for ``when`` in shared.alarms is this session's latest."""
        return when == self._alarm_at

    @property
    def done(self) -> bool:
        """Whether the session has ended (a hibernated session has no task but goes on)."""
        return not self._hibernated and (self._task is None or self._task.done())

    def _resume(self) -> None:
        self._writing_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # --- properties ----------------------------------------------------------------------

    @property
    def conn(self) -> Connection:
        """The sans-IO connection (made again after hibernation, see :meth:`_park`)."""
        conn = self._conn
        if conn is None:
            assert self._parked is not None
            config = self.config
            conn = self._conn = Connection.unpark(
                self._parked,
                max_line_size=config.max_line_length,
                max_literal_size=config.max_line_length,
                max_append_size=config.append_limit,
            )
            self._parked = None
        return conn

    def _park(self) -> None:
        """Let go of the sans-IO connection while hibernated, when it holds nothing but
        its state (about 0.5 KiB a session with its buffers)."""
        conn = self._conn
        if conn is not None:
            parked = conn.park()
            if parked is not None:
                self._parked = parked
                self._conn = None

    @property
    def mode(self) -> UpdateMode:
        """What the client enabled, for rendering updates."""
        return UpdateMode(
            condstore="CONDSTORE" in self.enabled,
            qresync="QRESYNC" in self.enabled,
            rev2="IMAP4rev2" in self.enabled,
        )

    @property
    def utf8(self) -> bool:
        """UTF8=ACCEPT is enabled."""
        return self.conn.utf8

    def capabilities(self) -> tuple[str, ...]:
        """The capability list for the current state (RFC 9051 §7.2.2)."""
        caps = ["IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
        if self.conn.state is State.NOT_AUTHENTICATED:
            if not self.tls:
                caps.append("STARTTLS")
            allowed = advertised_mechanisms(
                secured=self.secured,
                allow_plaintext=not self.config.disable_plaintext_auth,
                enabled=self.config.mechanisms,
            )
            if not allowed or (self.config.disable_plaintext_auth and not self.secured):
                caps.append("LOGINDISABLED")
            caps += [f"AUTH={name}" for name in allowed]
            return tuple(caps)
        post = [*_POST_LOGIN_CAPABILITIES, f"APPENDLIMIT={self.config.append_limit}"]
        custom = self.config.capability.split()
        if custom and not custom[0].startswith("+"):
            return tuple(custom)
        return tuple(caps + post + [word.lstrip("+") for word in custom if word.lstrip("+")])

    @property
    def _prefix(self) -> str:
        return f"imap({self.user.login if self.user else ''})"

    # --- I/O -------------------------------------------------------------------------------

    def _queue(self, response: Response | bytes) -> None:
        self._out.append(response if isinstance(response, bytes) else bytes(response))

    def _queue_all(self, responses: Iterable[Response]) -> None:
        for response in responses:
            self._queue(response)

    async def _flush(self) -> None:
        transport = self.transport
        if self._out and transport is not None and not self._lost:
            data = b"".join(self._out)
            self._out.clear()
            self._bytes_out += len(data)
            self._send(transport, data)
        else:
            self._out.clear()
        if self._writing_paused and not self._lost:
            loop = asyncio.get_running_loop()
            self._drained = drained = loop.create_future()
            try:
                await asyncio.wait_for(drained, self.config.client_timeout)
            except TimeoutError:
                raise _Disconnect("Disconnected for inactivity (output buffer full)") from None
            finally:
                self._drained = None
        if self._lost:
            raise _Disconnect("Connection closed")

    async def _wait_input(self, timeout: float, *, changed: bool = False) -> bool:
        """Wait for input (or EOF), a stop request or, with ``changed``, a mailbox change.

        Returns:
            True when there is input (or EOF); False when only the mailbox changed or
            the timeout passed.
        """
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while not (self._incoming or self._eof or self._lost):
            if self._stopping:
                raise _Disconnect("Server shutting down", "Server shutting down.")
            if changed and self._changed:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(remaining, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return True

    async def _receive(self, *, hibernate: bool = False) -> bytes:
        """The next octets from the client (``b""`` at EOF); IDLE updates meanwhile.

        With ``hibernate`` (the command loop's call, not one inside a command) a
        session with nothing to do hibernates (:meth:`_hibernate_if_quiet`): silent for
        :data:`_SUSPEND_AFTER_SECONDS` outside IDLE, at once in IDLE.
        """
        if self._idle_tag is None:
            authenticated = self.conn.state is not State.NOT_AUTHENTICATED
            timeout = self.config.client_timeout
            if not authenticated:
                timeout = min(timeout, LOGIN_TIMEOUT)
            if self._quiet_until == 0.0:
                # A new wait (a task that goes on after hibernation keeps the deadline).
                self._quiet_until = time.monotonic() + timeout
                if await self._wait_input(min(timeout, _SUSPEND_AFTER_SECONDS)):
                    return self._input_taken()
                await self._suspend_selected()
            while True:
                if hibernate:
                    self._hibernate_if_quiet(self._quiet_until)
                remaining = self._quiet_until - time.monotonic()
                if await self._wait_input(remaining):
                    return self._input_taken()
                if remaining <= SLACK:
                    break
            self._quiet_until = 0.0
            reason = "Inactivity"
            if authenticated:
                reason = f"Inactivity - no input for {timeout:.0f} secs"
            raise _Disconnect(reason, "Disconnected for inactivity.")
        # IDLE (RFC 2177): no inactivity limit; keepalives find dead peers. The
        # deadlines are slots, for the task that goes on after hibernation.
        config = self.config
        while True:
            await self._suspend_selected()
            if hibernate and self._move_at and time.monotonic() + SLACK >= self._move_at:
                await self._move_out()
            if hibernate:
                self._hibernate_if_quiet(self._idle_due())
            wait = max(0.0, min(self._next_notify, self._next_check) - time.monotonic())
            if await self._wait_input(wait, changed=self.selected is not None):
                if not self._incoming:
                    return b""
                return self._take_input()
            now = time.monotonic()
            if self._changed or now + SLACK >= self._next_check:
                self._changed = False
                self._next_check = now + config.idle_check_interval
                await self._sync_selected(allow_expunge=True)
            if now + SLACK >= self._next_notify:
                self._queue(UntaggedResponse("OK", "Still here"))
                self._next_notify = now + config.idle_notify_interval
            await self._flush()

    # --- hibernation in the master (roost.daemon.hibernation) --------------------------------

    def _may_move(self) -> bool:
        """Whether this session could ever move to the master: a worker's plaintext
        session of its own (TLS state cannot move; neither a session handed to a process
        of its own, nor that process's session)."""
        return (
            self.shared.hibernation is not None
            and self.config.hibernate_timeout > 0
            and not self.tls
            and self._proxy is None
            and self._resumed is None
        )

    async def _move_out(self) -> None:
        """Move to the master (Dovecot ``imap_hibernate_timeout``), when nothing is
        buffered either way; raises :class:`_Hibernated` once the master holds the
        socket (this object is then done with), else returns and tries again later.

        The Maildir's stamps are taken before a last sync: a change after them shows in
        the master's poll. A directory changed less than a second ago (within the file
        system's timestamp granularity of a later change) postpones the move.
        """
        link = self.shared.hibernation
        self._move_at = time.monotonic() + _MOVE_RETRY
        selected, transport = self.selected, self.transport
        if link is None or selected is None or transport is None or not self._may_move():
            self._move_at = 0.0
            return
        if not self._quiet() or transport.get_write_buffer_size():
            return
        key = os.path.realpath(selected.mailbox.directory)
        stamps = maildir_stamps(key)
        wall = time.time_ns()
        if any(0 <= wall - stamp < 1_000_000_000 for stamp in stamps[:3]):
            return
        await self._sync_selected(allow_expunge=True)
        if self._out:
            await self._flush()  # the updates go out now; the move waits
            return
        conn = self.conn
        parked = conn.park()
        view = selected.hibernation_state()
        if view is None or parked is None:
            return
        await self._suspend_selected()  # the view read above unpacked it
        if not self._quiet() or transport.get_write_buffer_size():
            return
        sock = transport.get_extra_info("socket")
        if sock is None or self.user is None or self.selected is not selected:
            self._move_at = 0.0
            return
        now = time.monotonic()
        user = self.user
        state = (
            _STATE_VERSION,
            self.config.service,
            (*(getattr(user, f.name) for f in _USER_FIELDS[:-2]), dict(user.extra), user.backend),
            tuple(sorted(self.enabled)),
            (parked[0].value, *parked[1:]),
            view,
            dataclasses.astuple(self.stats),
            self._bad_commands,
            (self._bytes_in, self._bytes_out, self._login_in, self._login_out),
            (self._auth_method, self._auth_login, self._auth_attempts),
            self.session_id,
            self.started,
            self._userip is not None,
        )
        blob = zlib.compress(pickle.dumps(state, pickle.HIGHEST_PROTOCOL), 9)
        registry = self.shared.registry
        counts: list[list[object]] = []
        if self._counted:
            counts.append([_table_name(registry.per_ip), self.remote_ip])
        if self._userip is not None:
            counts.append([_table_name(registry.per_user_ip), list(self._userip)])
        values: dict[str, int] = dataclasses.asdict(self.stats)
        values["input"] = self._bytes_in - self._login_in
        values["output"] = self._bytes_out - self._login_out
        values = {name: value for name, value in values.items() if value}
        header: dict[str, object] = {
            "key": key,
            "stamps": stamps,
            "notify_in": max(0.0, self._next_notify - now),
            "notify": self.config.idle_notify_interval,
            "check": self.config.idle_check_interval,
            "counts": counts,
            "prefix": self._prefix,
            "values": values,
        }
        if self.config.logout_format != DEFAULT_LOGOUT_FORMAT:
            header["format"] = self.config.logout_format
        transport.pause_reading()
        if not await link.hand_over(header, blob, sock.fileno()):
            if not self._lost:
                transport.resume_reading()
            self._move_at = time.monotonic() + self.config.hibernate_timeout
            return
        # The master holds the connection: forget it here, without a log line.
        self._moved = True
        registry.sessions.discard(self)
        if self._counted:
            _move_count(registry.per_ip, self.remote_ip, -1)
            self._counted = False
        if self._userip is not None:
            _move_count(registry.per_user_ip, self._userip, -1)
            self._userip = None
        self.selected = None
        self._close_later(selected.mailbox)
        self._alarm_at = 0.0
        transport.abort()  # this process's descriptor only
        self.shared.heap_trim.soon()
        log_imap.debug("%s: hibernated into the master", self._prefix)
        raise _Hibernated

    def _pending(self) -> bool:
        """Input, EOF, a lost connection or a stop to handle, or output queued or held back
        by a full transport buffer: what keeps a session in its task (no hibernation,
        no move to the master)."""
        return bool(
            self._incoming
            or self._eof
            or self._lost
            or self._stopping
            or self._out
            or self._writing_paused
        )

    def _quiet(self) -> bool:
        """In IDLE with nothing to read, write or handle (the conditions of a move)."""
        return not (self._pending() or self._changed or self._idle_tag is None)

    @classmethod
    def adopted(cls, shared: Shared, header: dict[str, object], blob: bytes) -> IMAPSession:
        """A session the master woke into this worker (``header`` and the packed state
        ``blob`` of :meth:`_move_out`); the caller connects it to the socket, and its
        task reopens the store and the mailbox and syncs (:meth:`_readopt`)."""
        state: tuple[Any, ...] = pickle.loads(zlib.decompress(blob))
        if state[0] != _STATE_VERSION:
            raise ValueError(f"hibernated state version {state[0]!r}")
        (_, _, user, enabled, parked, view, stats, bad, io, auth, session_id, started, counted) = (
            state
        )
        session = cls(shared)
        session.user = User(**dict(zip((f.name for f in _USER_FIELDS), user, strict=True)))
        session.enabled = frozenset(enabled)
        session._conn = None
        session._parked = (State(parked[0]), *parked[1:])
        session.stats = _Stats(*stats)
        session._bad_commands = bad
        bytes_in, bytes_out, login_in, login_out = io
        session._bytes_in, session._login_in, session._login_out = bytes_in, login_in, login_out
        session._bytes_out = bytes_out + int(header.get("out", 0))  # type: ignore[call-overload]
        session._auth_method, session._auth_login, session._auth_attempts = auth
        session.session_id = session_id
        session.started = started
        if counted:
            session._userip = (session.user.login.lower(), "")  # the address: connection_made
        session._idle_tag = parked[3]
        session._adopt = (view, header)
        return session

    async def _readopt(self) -> None:
        """Open the store and the selected mailbox again and queue what changed since
        the move (the master's unwritten keepalive first)."""
        assert self._adopt is not None and self.user is not None
        view_state, header = self._adopt
        self._adopt = None
        pending = str(header.get("pending", "")).encode("latin-1")
        if pending:
            self._queue(pending)
        try:
            self.mail = await self._call(self.shared.open_store, self.user)
            view, changes, keywords = await self._call_in_thread(
                _reopen, self.mail, view_state, self._changed_callback()
            )
        except (StoreUnavailable, StoreError) as error:
            log_imap.warning("%s: reopening after hibernation failed: %s", self._prefix, error)
            raise _Disconnect("Mailbox unavailable", "Mailbox unavailable.") from None
        self.selected = view
        if changes.uid_validity_changed:
            raise _Disconnect("Mailbox UIDVALIDITY changed", "Mailbox UIDVALIDITY changed.")
        mailbox = view.mailbox
        view.apply(
            changes,
            uid_next=mailbox.uid_next,
            highest_modseq=mailbox.highest_modseq,
            keywords=keywords,
        )
        self._queue_all(view.take_updates(self.mode, allow_expunge=True))
        now = time.monotonic()
        config = self.config
        self._next_check = now + config.idle_check_interval
        self._next_notify = now + config.idle_notify_interval
        if self._may_move():
            self._move_at = now + config.hibernate_timeout
        log_imap.debug("%s: woken from the master (%s)", self._prefix, header.get("why", "?"))

    def _input_taken(self) -> bytes:
        self._quiet_until = 0.0
        return b"" if not self._incoming and (self._eof or self._lost) else self._take_input()

    def _hibernate_if_quiet(self, when: float) -> None:
        """Nothing to do before ``when`` (``time.monotonic()`` seconds, the next deadline):
        end the task (:class:`_Hibernated`); the next event starts another
        (:mod:`roost.imap.hibernate`).

        Not with input, EOF, a stop or (in IDLE) a change pending, nor with output
        queued or held back by a full transport buffer, nor for a session handed over to
        a process of its own (neither the worker's proxy nor the session in that process:
        the process lives as long as the session's first task,
        :mod:`roost.daemon.handoff`).
        """
        if (
            self._pending()
            or (self._changed and self._idle_tag is not None)
            or self._proxy is not None
            or self._resumed is not None
            or self._loop is None
        ):
            return
        if when - time.monotonic() <= SLACK:
            return
        if when != self._alarm_at:  # else woken early: the entry is still there
            self.shared.alarms.add(when, self)
            self._alarm_at = when
        self._hibernated = True
        self._task = None
        self._park()
        self.shared.heap_trim.soon()
        raise _Hibernated

    def _selected_as(self, name: str) -> MailboxProtocol | None:
        """The selected mailbox if ``name`` names it (APPEND needs no second open)."""
        selected = self.selected
        if selected is None:
            return None
        try:
            same = normalize_mailbox_name(name) == normalize_mailbox_name(selected.name)
        except StoreError:
            return None
        return selected.mailbox if same else None

    async def _suspend_selected(self) -> None:
        """Let the selected mailbox release its index connection and pack its message
        lists while the client idles.

        In a worker thread: the last connection to an index checkpoints its SQLite log,
        and packing is O(messages).
        """
        selected = self.selected
        if selected is None:
            return
        if not selected.mailbox.suspended or (len(selected) and not selected.packed):
            try:
                await self._call_in_thread(_suspend, selected)
            except Exception:
                log_imap.exception("%s: suspending %s failed", self._prefix, selected.name)

    def _close_later(self, mailbox: MailboxProtocol) -> None:
        """Close a mailbox the session no longer uses in a worker thread, not awaited.

        Closing the last connection to an index checkpoints its SQLite log (two
        fdatasyncs): on the event loop that would stall every session, and awaiting it
        would let a second cancellation skip the rest of :meth:`_finish`.
        """

        def close() -> None:
            try:
                mailbox.close()
            except Exception:
                log_imap.exception("%s: closing a mailbox failed", self._prefix)

        try:
            self.shared.executor.submit(close)
        except RuntimeError:  # the executor is shut down: close here
            close()

    async def _call(self, function: Callable[..., _T], *args: object) -> _T:
        """Run a cheap store call on the event loop thread.

        Reads, syncs and index lookups of a mailbox take microseconds to a few
        milliseconds; handing them to a thread costs more (GIL hand-offs) than it saves.
        """
        return function(*args)

    async def _call_in_thread(self, function: Callable[..., _T], *args: object) -> _T:
        """Run a store call that fsyncs (a write command) or may be long (SELECT, which
        may build an index; FETCH or SEARCH over many messages) in a worker thread.

        Waiting for the disk must not stall the other sessions, and concurrent fsyncs
        of several sessions share the file system's journal commits.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.shared.executor, functools.partial(function, *args))

    async def _write(self, messages: int, write: Callable[..., _T]) -> _T:
        """Run a STORE or EXPUNGE of the selected mailbox: ``write(nowait=...)``.

        On up to :data:`_INLINE_MESSAGES` messages it runs on the event loop with
        ``nowait``: a few hundred microseconds of work without the GIL hand-offs that a
        worker thread pays at each of its system calls (up to the 5 ms switch interval
        each while the loop is busy), and only the sync of the index's log goes to a
        thread. When another writer holds the mailbox's lock, or on more messages, the
        whole call runs in a thread, as every write did before.
        """
        selected = self._selected()
        if messages <= _INLINE_MESSAGES:
            try:
                result = write(nowait=True)
            except LockTimeout:
                pass  # another writer has the mailbox: wait for it in a thread
            else:
                log = selected.mailbox.open_index_log()
                if log is not None:
                    try:
                        await self._call_in_thread(log.sync)
                    finally:
                        log.close()
                return result
        return await self._call_in_thread(functools.partial(write, nowait=False))

    # --- the loop ------------------------------------------------------------------------

    async def _run(self, *, resuming: bool = False, adopting: bool = False) -> None:
        """The session's task; ``resuming``: a new task after hibernation; ``adopting``:
        the master woke the session into this process."""
        reason = "Connection closed"
        try:
            resumed = self._resumed
            if resuming:
                pass
            elif adopting:
                await self._readopt()
            elif resumed is None:
                # No local: _run's frame lives as long as the session.
                self._queue(
                    UntaggedResponse(
                        "OK", self.config.greeting, ResponseCode.capability(self.capabilities())
                    )
                )
            else:
                self._queue(await self._logged_in(resumed.tag, resumed.user, resumed.store))
            await self._events()
        except _Hibernated:
            return
        except _Disconnect as stop:
            reason = stop.reason
            if stop.bye is not None:
                self._queue(UntaggedResponse("BYE", stop.bye))
        except Exception:
            log_imap.exception("%s: session failed", self._prefix)
            reason = "Internal error"
            self._queue(UntaggedResponse("BYE", "Internal error occurred."))
        except BaseException:  # cancelled
            await self._finish(reason)
            raise
        await self._finish(reason)

    async def _events(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                await self._flush()
                if self._stopping and self._idle_tag is None:
                    raise _Disconnect("Server shutting down", "Server shutting down.")
                conn.receive_data(await self._receive(hibernate=True))
                continue
            match event:
                case ConnectionClosed():
                    raise _Disconnect("Connection closed")
                case ContinuationNeeded():
                    self._queue(CONTINUE_LITERAL)
                case BadCommand() | LineTooLong():
                    self._queue(event.response())
                    self._idle_tag = None  # a line other than DONE ends IDLE too
                    self._count_bad()
                case IdleDone(tag=tag):
                    self._idle_tag = None
                    await self._sync_selected(allow_expunge=True)
                    self._queue(TaggedResponse(tag, "OK", "Idle completed."))
                case AuthenticateResponse():
                    pass  # only read inside AUTHENTICATE
                case Command():
                    await self._execute(event)

    def _count_bad(self) -> None:
        self._bad_commands += 1
        if self._bad_commands >= MAX_BAD_COMMANDS:
            raise _Disconnect("Too many invalid IMAP commands", "Too many invalid IMAP commands.")

    async def _execute(self, command: Command) -> None:
        handler = HANDLERS.get(type(command))
        tag = command.tag
        tagged: TaggedResponse | None
        if handler is None:
            tagged = TaggedResponse(tag, "BAD", "Unknown command.")
        else:
            try:
                tagged = await handler(self, command)
            except _Bad as bad:
                tagged = TaggedResponse(tag, "BAD", str(bad))
            except StoreError as error:
                if not isinstance(error, MailboxNotFound):
                    log_imap.warning("%s: %s: %s", self._prefix, type(command).__name__, error)
                tagged = store_error_response(tag, error)
            except _Disconnect:
                raise
            except Exception:
                log_imap.exception("%s: %s failed", self._prefix, type(command).__name__.upper())
                tagged = TaggedResponse(
                    tag,
                    "NO",
                    "Internal error occurred. Refer to server log for more information.",
                    SERVERBUG,
                )
        if self.selected is not None and not isinstance(command, Logout):
            allow = _allows_expunge(command, qresync="QRESYNC" in self.enabled)
            await self._sync_selected(allow_expunge=allow)
        if tagged is not None:
            self._queue(tagged)
            if tagged.status == "BAD":
                self._count_bad()

    async def _sync_selected(self, *, allow_expunge: bool) -> None:
        """Sync the selected mailbox and queue the updates the client may get now."""
        selected = self.selected
        if selected is None:
            return
        try:
            changes, uid_next, modseq, keywords = await self._call(_sync, selected.mailbox)
        except MailboxNotFound:
            raise _Disconnect("Mailbox was deleted", "Mailbox has been deleted.") from None
        except StoreError as error:
            log_imap.warning("%s: sync of %s failed: %s", self._prefix, selected.name, error)
            return
        if changes.uid_validity_changed:
            raise _Disconnect("Mailbox UIDVALIDITY changed", "Mailbox UIDVALIDITY changed.")
        selected.apply(changes, uid_next=uid_next, highest_modseq=modseq, keywords=keywords)
        self._queue_all(selected.take_updates(self.mode, allow_expunge=allow_expunge))

    async def _finish(self, reason: str) -> None:
        self._alarm_at = 0.0  # an entry left in shared.alarms is stale
        if self._proxy is not None:
            await self._proxy.wait()
        with contextlib.suppress(_Disconnect):
            await self._flush()
        if self.transport is not None and not self._lost:
            self.transport.close()
        selected, self.selected = self.selected, None
        if selected is not None:
            self._close_later(selected.mailbox)
        if self._counted:
            self.shared.registry.remove(self, self.remote_ip)
        if self._userip is not None:
            self.shared.registry.remove_user(self._userip)
        self.shared.heap_trim.soon()
        plain = reason in ("Connection closed", "Logged out")
        if self._ended_before_login(reason, plain=plain, disallowed=self._auth_disallowed):
            return
        values = dataclasses.asdict(self.stats)
        values["input"] = self._bytes_in - self._login_in
        values["output"] = self._bytes_out - self._login_out
        line = format_logout(self.config.logout_format, values)
        log_imap.info("%s: Disconnected: %s %s", self._prefix, reason, line)

    # --- any state (RFC 9051 §6.1) ---------------------------------------------------------

    async def capability(self, command: Capability) -> TaggedResponse:
        """CAPABILITY (RFC 9051 §6.1.1)."""
        self._queue(CapabilityResponse(self.capabilities()))
        text = "Pre-login capabilities listed, post-login capabilities have more."
        return TaggedResponse(
            command.tag, "OK", text if self.user is None else "Capability completed."
        )

    async def noop(self, command: Noop | Check) -> TaggedResponse:
        """NOOP and CHECK (RFC 9051 §6.1.2; CHECK is a NOOP, RFC 3501 §6.4.1)."""
        name = "NOOP" if isinstance(command, Noop) else "Check"
        return TaggedResponse(command.tag, "OK", f"{name.capitalize()} completed.")

    async def logout(self, command: Logout) -> TaggedResponse | None:
        """LOGOUT (RFC 9051 §6.1.3): BYE, tagged OK, close."""
        self.conn.state = State.LOGOUT
        self._queue(UntaggedResponse("BYE", "Logging out"))
        self._queue(TaggedResponse(command.tag, "OK", "Logout completed."))
        raise _Disconnect("Logged out")

    async def identify(self, command: Id) -> TaggedResponse:
        """ID (RFC 2971): log what the client says, answer with ``imap_id_send``."""
        wanted = self.config.id_log
        if wanted and command.parameters:
            shown = [
                f"{name}={value}"
                for name, value in command.parameters
                if "*" in wanted or name.lower() in wanted
            ]
            if shown:
                logger = log_imap if self.user is not None else log_login
                prefix = f"{self._prefix}: " if self.user is not None else ""
                logger.info(
                    "%sID sent: %s: %s", prefix, ", ".join(shown), self._log_fields(method=False)
                )
        self._queue(IdResponse(self.config.id_send or None))
        return TaggedResponse(command.tag, "OK", "ID completed.")

    # --- not authenticated (RFC 9051 §6.2) -------------------------------------------------

    async def starttls(self, command: StartTLS) -> TaggedResponse | None:
        """STARTTLS (RFC 9051 §6.2.1); plaintext pipelined behind it is discarded."""
        if self.tls:
            return TaggedResponse(command.tag, "BAD", "TLS is already active.")
        try:
            context = self.shared.tls_context()
        except Exception as error:  # a certificate that cannot be loaded: a local problem
            log_login.warning("cannot start TLS: %s", error)
            return TaggedResponse(command.tag, "NO", "TLS initialization failed.", UNAVAILABLE)
        transport = self.transport
        loop = self._loop
        assert transport is not None and loop is not None
        # Nothing may be awaited from here until start_tls() has paused reading.
        self._queue(TaggedResponse(command.tag, "OK", "Begin TLS negotiation now."))
        data = b"".join(self._out)
        self._out.clear()
        self._bytes_out += len(data)
        transport.write(data)
        self.conn.take_unprocessed()
        self._take_input()
        try:
            new_transport = await loop.start_tls(transport, self, context, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as error:
            raise _Disconnect(f"TLS handshake failed: {error}") from None
        if new_transport is None:
            raise _Disconnect("TLS handshake failed")
        self.transport = new_transport
        self.tls = True
        return None

    async def login(self, command: Login) -> TaggedResponse:
        """LOGIN (RFC 9051 §6.2.3): a plaintext password, like SASL PLAIN."""
        if self.config.disable_plaintext_auth and not self.secured:
            self._auth_disallowed = "plaintext"
            return TaggedResponse(
                command.tag,
                "NO",
                "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
                PRIVACYREQUIRED,
            )
        self._auth_method = "PLAIN"
        return await self._authenticated(command.tag, command.user, command.password)

    async def authenticate(self, command: Authenticate) -> TaggedResponse:
        """AUTHENTICATE (RFC 9051 §6.2.2, SASL-IR RFC 4959) with the shared mechanisms."""
        tag = command.tag
        try:
            mechanism = start_mechanism(
                command.mechanism,
                secured=self.secured,
                allow_plaintext=not self.config.disable_plaintext_auth,
                enabled=self.config.mechanisms,
            )
        except EncryptionRequiredError:
            self._auth_disallowed = "plaintext"
            return TaggedResponse(
                tag,
                "NO",
                "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
                PRIVACYREQUIRED,
            )
        except UnknownMechanismError:
            return TaggedResponse(tag, "NO", "Unsupported authentication mechanism.")
        self._auth_method = command.mechanism
        started = False
        try:
            response = (
                None
                if command.initial_response is None
                else decode_response(command.initial_response, initial=True)
            )
            while True:
                step = mechanism.receive(response)
                if isinstance(step, Credentials):
                    break
                assert isinstance(step, Challenge)
                if not started:
                    self.conn.start_authenticate()
                    started = True
                text = encode_challenge(step.data).decode("ascii")
                self._queue(ContinuationResponse(text))
                await self._flush()
                line = await self._auth_line()
                if line is None:
                    return TaggedResponse(tag, "BAD", "Authentication response too long.")
                response = decode_response(line)
        except SASLCancelled:
            return TaggedResponse(tag, "BAD", "Authentication aborted by client.")
        except AuthzidRejected:
            self._auth_attempts += 1
            return TaggedResponse(tag, "NO", "Authorization failed.", AUTHORIZATIONFAILED)
        except SASLError as error:
            return TaggedResponse(tag, "BAD", f"Authentication failed: {error.reason}.")
        finally:
            if started:
                self.conn.end_authenticate()
        return await self._authenticated(tag, step.authcid, step.password)

    async def _auth_line(self) -> bytes | None:
        """The next line of the SASL exchange; ``None`` when it was too long."""
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                await self._flush()
                self.conn.receive_data(await self._receive())
                continue
            if isinstance(event, AuthenticateResponse):
                return event.line
            if isinstance(event, LineTooLong):
                return None
            if isinstance(event, ConnectionClosed):
                raise _Disconnect("Connection closed")

    async def _authenticated(self, tag: str, login: str, password: str) -> TaggedResponse:
        """Verify a login and password and enter the authenticated state."""
        shared = self.shared
        users = shared.users
        self._auth_login = login
        if users is None:
            return TaggedResponse(tag, "NO", "Authentication unavailable.", UNAVAILABLE)
        if not await wait_throttle(shared.throttle, self.remote_ip, login):
            self._queue(TaggedResponse(tag, "NO", "Too many failed login attempts.", UNAVAILABLE))
            raise _Disconnect(
                "Too many failed login attempts", "Too many failed login attempts, try later."
            )
        self._auth_attempts += 1
        checked = await check_password(
            users, shared.throttle, log_login, login, password, self.remote_ip
        )
        user = checked.user
        if user is None:
            if checked.temporary:
                return TaggedResponse(tag, "NO", "Temporary authentication failure.", UNAVAILABLE)
            return TaggedResponse(tag, "NO", "Authentication failed.", AUTHENTICATIONFAILED)
        self._auth_login = user.login
        key = (user.login.lower(), self.remote_ip)
        limit = self.config.max_userip_connections
        if not shared.registry.add_user(key, limit):
            log_login.info(
                "Maximum number of connections from user+IP exceeded "
                "(mail_max_userip_connections=%d): %s",
                limit,
                self._log_fields(),
            )
            return TaggedResponse(
                tag,
                "NO",
                "Maximum number of connections from user+IP exceeded "
                f"(mail_max_userip_connections={limit})",
                UNAVAILABLE,
            )
        if shared.handoff is not None and shared.handoff.wanted(user):
            failure = await self._hand_off(
                shared.handoff,
                user,
                key,
                (login, password),
                tag=tag,
                unprocessed=self.conn.take_unprocessed,
            )
            if failure is None:
                raise _HandedOff
            if failure.kind == "auth-failed":
                return TaggedResponse(tag, "NO", "Authentication failed.", AUTHENTICATIONFAILED)
            return TaggedResponse(tag, "NO", "Mailbox unavailable, try again later.", UNAVAILABLE)
        try:
            store = await self._call(shared.open_store, user)
        except (StoreUnavailable, StoreError) as error:
            shared.registry.remove_user(key)
            log_imap.error("imap(%s): cannot open the mail store: %s", user.login, error)
            return TaggedResponse(tag, "NO", "Mailbox unavailable, try again later.", UNAVAILABLE)
        self._userip = key
        return await self._logged_in(tag, user, store)

    async def _logged_in(self, tag: str, user: User, store: UserStore) -> TaggedResponse:
        """Enter the authenticated state with ``store`` open; the tagged OK."""
        if self.config.special_use:
            try:
                created = await self._call(_ensure_special_use, store, self.config.special_use)
            except (StoreError, ValueError) as error:
                log_imap.warning("imap(%s): special-use mailboxes: %s", user.login, error)
            else:
                if created:
                    log_imap.info("imap(%s): created %s", user.login, ", ".join(created))
        self.user = user
        self.mail = store
        self.conn.state = State.AUTHENTICATED
        self._login_in = self._bytes_in
        self._login_out = self._bytes_out
        log_login.info("Login: %s", self._log_fields(mpid=True))
        caps = ResponseCode.capability(self.capabilities())
        return TaggedResponse(tag, "OK", "Logged in", caps)

    # --- authenticated (RFC 9051 §6.3) -------------------------------------------------------

    def _store(self) -> UserStore:
        assert self.mail is not None
        return self.mail

    def _name(self, name: str) -> str:
        return name_from_client(name, utf8=self.utf8)

    def _wire(self, name: str) -> str:
        return name_to_client(name, utf8=self.utf8)

    async def enable(self, command: Enable) -> TaggedResponse:
        """ENABLE (RFC 5161): CONDSTORE, QRESYNC, UTF8=ACCEPT, IMAP4rev2."""
        newly: list[str] = []
        for name in command.capabilities:
            canonical = _ENABLEABLE.get(name.upper())
            if canonical is None or canonical in self.enabled:
                continue
            self.enabled |= {canonical}
            newly.append(canonical)
            if canonical == "QRESYNC":
                self.enabled |= {"CONDSTORE"}
            if canonical == "UTF8=ACCEPT":
                self.conn.utf8 = True
        self._queue(EnabledResponse(tuple(newly)))
        return TaggedResponse(command.tag, "OK", "Enabled.")

    def _enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 §3.1)."""
        self.enabled |= {"CONDSTORE"}

    async def select(self, command: SelectCommand) -> TaggedResponse:
        """SELECT and EXAMINE (RFC 9051 §6.3.2-3; CONDSTORE and QRESYNC, RFC 7162)."""
        tag = command.tag
        previous: MailboxProtocol | None = None
        if self.selected is not None:
            # Closed in the same worker thread call that opens the new one.
            previous, self.selected = self.selected.mailbox, None
            self.conn.state = State.AUTHENTICATED
            self._changed = False
            self._queue(UntaggedResponse("OK", "Previous mailbox closed.", CLOSED))
        qresync = command.qresync
        try:
            if qresync is not None and "QRESYNC" not in self.enabled:
                raise _Bad("QRESYNC has not been enabled.")
            if command.condstore:
                self._enable_condstore()
            name = self._name(command.mailbox)
        except BaseException:
            if previous is not None:
                self._close_later(previous)
            raise
        readonly = command.read_only
        since = qresync.mod_seq if qresync is not None else None
        if _reselectable(previous, name, readonly):
            assert previous is not None
            # The selected mailbox again, its index connection open: start its view
            # over on the loop (a sync, as after any command), no thread hand-off.
            try:
                opened = _reselect(previous, since)
            except BaseException:
                self._close_later(previous)
                raise
        else:
            try:
                opened = await self._call_in_thread(
                    _open_mailbox,
                    self._store(),
                    name,
                    readonly,
                    since,
                    self._changed_callback(),
                    previous,
                )
            except asyncio.CancelledError:
                if previous is not None:  # the call may not have run (closing twice is harmless)
                    self._close_later(previous)
                raise
        if qresync is not None and qresync.uid_validity != opened.mailbox.uid_validity:
            opened = dataclasses.replace(opened, vanished=None)
        selected = SelectedMailbox(
            name,
            opened.mailbox,
            readonly=readonly,
            messages=opened.messages,
            recent=opened.recent,
            keywords=opened.keywords,
            uid_validity=opened.uid_validity,
            uid_next=opened.uid_next,
            highest_modseq=opened.highest_modseq,
        )
        mode = self.mode
        self._queue_all(selected.flags_response()[:1])
        self._queue(ExistsResponse(len(selected)))
        if not mode.rev2:
            self._queue(RecentResponse(len(selected.recent)))
            unseen = next(
                (
                    n
                    for n, uid in enumerate(selected.uids, 1)
                    if SEEN not in selected.infos[uid].flags
                ),
                None,
            )
            if unseen is not None:
                self._queue(
                    UntaggedResponse("OK", "First unseen.", ResponseCode("UNSEEN", b"%d" % unseen))
                )
        self._queue_all(selected.flags_response()[1:])
        self._queue(
            UntaggedResponse("OK", "UIDs valid", ResponseCode.uid_validity(selected.uid_validity))
        )
        self._queue(
            UntaggedResponse("OK", "Predicted next UID", ResponseCode.uid_next(selected.uid_next))
        )
        self._queue(
            UntaggedResponse("OK", "Highest", ResponseCode.highest_mod_seq(selected.highest_modseq))
        )
        if mode.rev2:
            self._queue(ListResponse(self._wire(name), DELIMITER))
        self.selected = selected
        self.conn.state = State.SELECTED
        self._changed = False
        if qresync is not None and opened.vanished is not None:
            known = qresync.known_uids
            gone = [
                uid
                for uid in opened.vanished
                if known is None or known.contains(uid, max(uid, selected.max_uid))
            ]
            if gone:
                self._queue(VanishedResponse(SequenceSet.of(gone), earlier=True))
            for number, uid in enumerate(selected.uids, 1):
                if selected.infos[uid].modseq > qresync.mod_seq:
                    self._queue(FetchResponse(number, selected.flag_items(uid, mode)))
        code = READ_ONLY if readonly else READ_WRITE
        verb = "Examine" if isinstance(command, Examine) else "Select"
        return TaggedResponse(tag, "OK", f"{verb} completed.", code)

    def _changed_callback(self) -> Callable[[object], None]:
        # A bound method: no closures and cells kept per selected mailbox.
        return self._notify_change

    def _notify_change(self, _path: object) -> None:
        """The selected mailbox changed (called in the publishing thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_change)

    def _on_change(self) -> None:
        self._changed = True
        self._wake()

    async def _deselect(self) -> None:
        selected, self.selected = self.selected, None
        self.conn.state = State.AUTHENTICATED
        if selected is not None:
            await self._call_in_thread(selected.mailbox.close)
        self._changed = False

    async def create(self, command: Create) -> TaggedResponse:
        """CREATE (RFC 9051 §6.3.4; CREATE-SPECIAL-USE, RFC 6154 §3)."""
        if len(command.special_use) > 1:
            return TaggedResponse(
                command.tag, "NO", "Only one special-use attribute per mailbox.", USEATTR
            )
        name = self._name(command.mailbox)
        special = command.special_use[0] if command.special_use else None
        await self._call_in_thread(self._store().create, name, special)
        return TaggedResponse(command.tag, "OK", "Create completed.")

    async def delete(self, command: Delete) -> TaggedResponse:
        """DELETE (RFC 9051 §6.3.5); the selected mailbox is closed first."""
        name = self._name(command.mailbox)
        if self.selected is not None and self.selected.name == name:
            await self._deselect()
            self._queue(UntaggedResponse("OK", "Mailbox closed.", CLOSED))
        await self._call_in_thread(self._store().delete, name)
        return TaggedResponse(command.tag, "OK", "Delete completed.")

    async def rename(self, command: Rename) -> TaggedResponse:
        """RENAME (RFC 9051 §6.3.6); renaming INBOX moves its messages."""
        old = self._name(command.mailbox)
        new = self._name(command.new_mailbox)
        store = self._store()
        await self._call_in_thread(store.rename, old, new)
        selected = self.selected
        if (
            selected is not None
            and old != "INBOX"
            and (selected.name == old or selected.name.startswith(old + DELIMITER))
        ):
            await self._reopen(new + selected.name[len(old) :])
        return TaggedResponse(command.tag, "OK", "Rename completed.")

    async def _reopen(self, name: str) -> None:
        """Follow the selected mailbox to its new name after RENAME."""
        selected = self.selected
        assert selected is not None
        await self._call_in_thread(selected.mailbox.close)
        opened = await self._call_in_thread(
            _open_mailbox, self._store(), name, selected.readonly, None, self._changed_callback()
        )
        known = set(selected.infos)
        now = {info.uid: info for info in opened.messages}
        selected.mailbox = opened.mailbox
        selected.name = name
        changes = Changes(
            added=tuple(info for uid, info in now.items() if uid not in known),
            expunged=tuple(sorted(known - now.keys())),
        )
        selected.apply(changes, uid_next=opened.uid_next, highest_modseq=opened.highest_modseq)

    async def subscribe(self, command: Subscribe | Unsubscribe) -> TaggedResponse:
        """SUBSCRIBE and UNSUBSCRIBE (RFC 9051 §6.3.7-8)."""
        name = self._name(command.mailbox)
        store = self._store()
        if isinstance(command, Subscribe):
            await self._call_in_thread(store.subscribe, name)
            return TaggedResponse(command.tag, "OK", "Subscribe completed.")
        await self._call_in_thread(store.unsubscribe, name)
        return TaggedResponse(command.tag, "OK", "Unsubscribe completed.")

    async def list_mailboxes(self, command: List) -> TaggedResponse:
        """LIST with LIST-EXTENDED, SPECIAL-USE and LIST-STATUS (RFC 9051 §6.3.9)."""
        tag = command.tag
        reference = self._name(command.reference)
        if command.patterns == ("",) and not command.extended:
            self._queue(ListResponse(self._wire(list_root(reference)), DELIMITER, ("\\Noselect",)))
            return TaggedResponse(tag, "OK", "List completed.")
        patterns = [canonical_pattern(reference, self._name(p)) for p in command.patterns if p]
        statuses = "STATUS" in command.return_options
        infos, subscriptions = await self._call(_list_data, self._store())
        entries = list_entries(command, infos, subscriptions, patterns)
        status: dict[str, MailboxStatus] = {}
        if statuses:
            names = [entry.name for entry in entries if entry.selectable]
            status = await self._call(_statuses, self._store(), names)
        for entry in entries:
            self._queue(self._list_response(entry, ListResponse))
            if entry.name in status:
                self._queue(
                    self._status_response(entry.name, command.status_items, status[entry.name])
                )
        return TaggedResponse(tag, "OK", "List completed.")

    def _list_response(self, entry: ListEntry, kind: type[ListResponse]) -> ListResponse:
        return kind(self._wire(entry.name), DELIMITER, entry.attributes, entry.child_info)

    async def lsub(self, command: Lsub) -> TaggedResponse:
        """LSUB (RFC 3501 §6.3.9)."""
        reference = self._name(command.reference)
        if not command.pattern:
            self._queue(LsubResponse(self._wire(list_root(reference)), DELIMITER, ("\\Noselect",)))
            return TaggedResponse(command.tag, "OK", "Lsub completed.")
        pattern = canonical_pattern(reference, self._name(command.pattern))
        infos, subscriptions = await self._call(_list_data, self._store())
        for entry in lsub_entries(infos, subscriptions, pattern):
            self._queue(self._list_response(entry, LsubResponse))
        return TaggedResponse(command.tag, "OK", "Lsub completed.")

    async def namespace(self, command: Namespace) -> TaggedResponse:
        """NAMESPACE (RFC 2342): one personal namespace, ``""`` with ``.``."""
        self._queue(NamespaceResponse((("", DELIMITER),)))
        return TaggedResponse(command.tag, "OK", "Namespace completed.")

    async def status(self, command: Status) -> TaggedResponse:
        """STATUS (RFC 9051 §6.3.11; HIGHESTMODSEQ RFC 7162, SIZE RFC 8438, APPENDLIMIT)."""
        name = self._name(command.mailbox)
        if "HIGHESTMODSEQ" in command.items:
            self._enable_condstore()
        found = await self._call(self._store().status, name)
        self._queue(self._status_response(name, command.items, found))
        return TaggedResponse(command.tag, "OK", "Status completed.")

    def _status_response(
        self, name: str, items: Sequence[str], status: MailboxStatus
    ) -> MailboxStatusResponse:
        values: dict[str, int] = {
            "MESSAGES": status.messages,
            "RECENT": status.recent,
            "UIDNEXT": status.uid_next,
            "UIDVALIDITY": status.uid_validity,
            "UNSEEN": status.unseen,
            "DELETED": status.deleted,
            "SIZE": status.size,
            "HIGHESTMODSEQ": status.highest_modseq,
            "APPENDLIMIT": self.config.append_limit,
        }
        shown = tuple((item, values[item]) for item in items if item in values)
        return MailboxStatusResponse(self._wire(name), shown)

    async def append(self, command: Append) -> TaggedResponse:
        """APPEND and MULTIAPPEND (RFC 9051 §6.3.12, RFC 3502) with APPENDUID (RFC 4315)."""
        tag = command.tag
        if any(not message.data for message in command.messages):
            return TaggedResponse(tag, "NO", "Can't save a zero byte message.", CANNOT)
        name = self._name(command.mailbox)
        try:
            uid_validity, uids = await self._call_in_thread(
                _append, self._store(), name, command, self._selected_as(name)
            )
        except StoreError as error:
            return store_error_response(tag, error, missing_target=True)
        except ValueError as error:
            return TaggedResponse(tag, "NO", f"Invalid flag: {error}", CANNOT)
        code = ResponseCode.append_uid(uid_validity, SequenceSet.of(uids))
        return TaggedResponse(tag, "OK", "Append completed.", code)

    async def idle(self, command: Idle) -> None:
        """IDLE (RFC 2177): ``+ idling``, then updates until ``DONE``."""
        self._queue(ContinuationResponse("idling"))
        self.conn.start_idle(command.tag)
        self._idle_tag = command.tag
        now = time.monotonic()
        self._next_notify = now + self.config.idle_notify_interval
        self._next_check = now + self.config.idle_check_interval
        self._move_at = now + self.config.hibernate_timeout if self._may_move() else 0.0

    async def get_quota_root(self, command: GetQuotaRoot) -> TaggedResponse:
        """GETQUOTAROOT (RFC 9208 §4.3): one root, ``User quota``, for all mailboxes."""
        name = self._name(command.mailbox)
        store = self._store()
        await self._call(store.status, name)  # the mailbox must exist
        if store.quota is None:
            self._queue(QuotaRootResponse(self._wire(name)))
            return TaggedResponse(command.tag, "OK", "Getquotaroot completed.")
        self._queue(QuotaRootResponse(self._wire(name), (_QUOTA_ROOT,)))
        self._queue(await self._quota_response())
        return TaggedResponse(command.tag, "OK", "Getquotaroot completed.")

    async def get_quota(self, command: GetQuota) -> TaggedResponse:
        """GETQUOTA (RFC 9208 §4.2)."""
        if command.root != _QUOTA_ROOT or self._store().quota is None:
            return TaggedResponse(command.tag, "NO", "Quota root does not exist.", NONEXISTENT)
        self._queue(await self._quota_response())
        return TaggedResponse(command.tag, "OK", "Getquota completed.")

    async def _quota_response(self) -> QuotaResponse:
        store = self._store()
        used = await self._call(store.quota_usage)
        limit = store.quota or 0
        return QuotaResponse(_QUOTA_ROOT, (("STORAGE", (used + 1023) // 1024, limit // 1024),))

    async def set_quota(self, command: SetQuota) -> TaggedResponse:
        """SETQUOTA (RFC 9208 §4.1): quotas come from the user database."""
        return TaggedResponse(command.tag, "NO", "Permission denied.", NOPERM)

    async def compress(self, command: Compress) -> TaggedResponse:
        """COMPRESS (RFC 4978) is not offered."""
        return TaggedResponse(command.tag, "BAD", "COMPRESS is not supported.")

    # --- selected (RFC 9051 §6.4) ---------------------------------------------------------

    def _selected(self) -> SelectedMailbox:
        assert self.selected is not None
        return self.selected

    def _resolve(self, sequence_set: SequenceSet, *, uid: bool) -> list[int]:
        try:
            return self._selected().resolve(sequence_set, uid=uid)
        except ValueError:
            raise _Bad("Invalid messageset") from None

    async def close(self, command: Close) -> TaggedResponse:
        """CLOSE (RFC 9051 §6.4.1): expunge silently (read-write only) and deselect."""
        selected = self._selected()
        if not selected.readonly:
            expunged = await self._call_in_thread(selected.mailbox.expunge)
            self.stats.expunged += len(expunged)
        await self._deselect()
        return TaggedResponse(command.tag, "OK", "Close completed.")

    async def unselect(self, command: Unselect) -> TaggedResponse:
        """UNSELECT (RFC 3691): deselect without expunging."""
        await self._deselect()
        return TaggedResponse(command.tag, "OK", "Unselect completed.")

    async def expunge(self, command: Expunge | UidExpunge) -> TaggedResponse:
        """EXPUNGE and UID EXPUNGE (RFC 9051 §6.4.3, UIDPLUS RFC 4315 §2.1)."""
        selected = self._selected()
        if selected.readonly:
            return TaggedResponse(command.tag, "NO", "Mailbox is read-only.", READ_ONLY)
        uids = None
        if isinstance(command, UidExpunge):
            uids = self._resolve(command.sequence_set, uid=True)
            if not uids:
                return TaggedResponse(command.tag, "OK", "Expunge completed.")
        expunged: list[int] = await self._write(
            len(selected), functools.partial(selected.mailbox.expunge, uids)
        )
        self.stats.expunged += len(expunged)
        self._queue_all(selected.remove(expunged, self.mode))
        return TaggedResponse(command.tag, "OK", "Expunge completed.")

    async def search(self, command: Search) -> TaggedResponse:
        """SEARCH and UID SEARCH (RFC 9051 §6.4.4; ESEARCH RFC 4731, SEARCHRES RFC 5182)."""
        selected = self._selected()
        key = substitute_saved(command.key, selected.saved or ())
        uses_modseq = has_modseq(key)
        if uses_modseq:
            self._enable_condstore()
        mode = self.mode
        infos, recent = selected.infos, selected.recent
        targets = [
            SearchTarget(
                number,
                info := infos[uid],
                info.flags | RECENT_ONLY if uid in recent else info.flags,
            )
            for number, uid in enumerate(selected.uids, 1)
        ]
        zone = datetime.datetime.now().astimezone().tzinfo or datetime.UTC
        call = self._call_in_thread if len(targets) > _INLINE_MESSAGES else self._call
        found = await call(
            functools.partial(
                search_messages,
                selected.mailbox,
                targets,
                key,
                max_uid=selected.max_uid,
                zone=zone,
            )
        )
        numbers = [target.info.uid if command.uid else target.msn for target in found]
        mod_seq = max((t.info.modseq for t in found), default=None) if uses_modseq else None
        options = command.return_options
        if options is None and mode.rev2:
            options = frozenset({SearchReturn.ALL})
        if options is None:
            self._queue(SearchResponse(tuple(numbers), mod_seq))
            return TaggedResponse(command.tag, "OK", "Search completed.")
        wanted = options - {SearchReturn.SAVE}
        if SearchReturn.SAVE in options:
            kept = found
            if wanted and not wanted & {SearchReturn.ALL, SearchReturn.COUNT}:
                # RFC 5182 §2.4: SAVE with MIN and/or MAX saves just those.
                ends = []
                if found and SearchReturn.MIN in wanted:
                    ends.append(found[0])
                if found and SearchReturn.MAX in wanted:
                    ends.append(found[-1])
                kept = ends
            selected.saved = sorted({target.info.uid for target in kept})
        if not wanted:
            return TaggedResponse(command.tag, "OK", "Search completed.")
        self._queue(
            ESearchResponse(
                command.tag,
                uid=command.uid,
                minimum=min(numbers) if numbers and SearchReturn.MIN in wanted else None,
                maximum=max(numbers) if numbers and SearchReturn.MAX in wanted else None,
                count=len(numbers) if SearchReturn.COUNT in wanted else None,
                all=SequenceSet.of(numbers) if numbers and SearchReturn.ALL in wanted else None,
                mod_seq=mod_seq if numbers else None,
            )
        )
        return TaggedResponse(command.tag, "OK", "Search completed.")

    async def fetch(self, command: Fetch) -> TaggedResponse:
        """FETCH and UID FETCH (RFC 9051 §6.4.5; CONDSTORE/QRESYNC RFC 7162)."""
        tag = command.tag
        selected = self._selected()
        uids = self._resolve(command.sequence_set, uid=command.uid)
        items = command.items
        changed_since = command.changed_since
        if changed_since is not None or FetchAttribute.MODSEQ in items:
            self._enable_condstore()
        mode = self.mode
        if command.vanished:
            if "QRESYNC" not in self.enabled or changed_since is None:
                raise _Bad("VANISHED needs QRESYNC enabled and CHANGEDSINCE.")
            expunged = await self._call(selected.mailbox.expunged_since, changed_since)
            gone = [
                uid
                for uid in expunged
                if command.sequence_set.contains(uid, max(uid, selected.max_uid))
            ]
            if gone:
                self._queue(VanishedResponse(SequenceSet.of(gone), earlier=True))
        if changed_since is not None:
            uids = [uid for uid in uids if selected.infos[uid].modseq > changed_since]
        seen_now: set[int] = set()
        if not selected.readonly and any(_sets_seen(item) for item in items):
            unseen = [
                uid
                for uid in uids
                if SEEN not in selected.infos[uid].flags and not selected.is_expunged(uid)
            ]
            if unseen:
                result: StoreFlagsResult = await self._call_in_thread(
                    selected.mailbox.store_flags, unseen, (SEEN,), StoreFlagMode.ADD
                )
                seen_now = set(selected.update_flags(result.updated))
        plan = FetchPlan(
            items,
            uid=command.uid or mode.qresync,
            modseq=changed_since is not None or (mode.condstore and bool(seen_now)),
        )
        targets = [
            FetchTarget(
                selected.msn(uid) or 0,
                selected.infos[uid],
                selected.flags(uid, mode),
                add_flags=uid in seen_now,
            )
            for uid in uids
        ]
        missing: list[int] = []
        unknown_cte = False
        position = 0
        while position < len(targets):
            call = self._call_in_thread if len(targets) > _INLINE_MESSAGES else self._call
            batch = await call(
                fetch_batch, selected.mailbox, targets[position : position + 200], plan
            )
            position += batch.done
            missing += batch.missing
            unknown_cte = unknown_cte or batch.unknown_cte
            stats = self.stats
            stats.fetch_hdr_count += batch.header_count
            stats.fetch_hdr_bytes += batch.header_octets
            stats.fetch_body_count += batch.body_count
            stats.fetch_body_bytes += batch.body_octets
            self._out.extend(batch.responses)
            if position < len(targets):  # the last batch goes out with the tagged reply
                await self._flush()
        if unknown_cte:
            return TaggedResponse(tag, "NO", "Unknown Content-Transfer-Encoding.", UNKNOWN_CTE)
        if missing:
            return TaggedResponse(
                tag, "NO", "Some of the requested messages no longer exist.", EXPUNGEISSUED
            )
        return TaggedResponse(tag, "OK", "Fetch completed.")

    async def store_flags(self, command: Store) -> TaggedResponse:
        """STORE and UID STORE (RFC 9051 §6.4.6; UNCHANGEDSINCE, RFC 7162 §3.1.3)."""
        tag = command.tag
        selected = self._selected()
        if selected.readonly:
            return TaggedResponse(tag, "NO", "Mailbox is read-only.", READ_ONLY)
        uids = self._resolve(command.sequence_set, uid=command.uid)
        if command.unchanged_since is not None:
            self._enable_condstore()
        mode = self.mode
        before = {uid: selected.infos[uid] for uid in uids}
        try:
            result: StoreFlagsResult = await self._write(
                len(uids),
                functools.partial(
                    selected.mailbox.store_flags,
                    uids,
                    command.flags,
                    _STORE_MODES[command.mode],
                    command.unchanged_since,
                ),
            )
        except ValueError as error:
            raise _Bad(f"Invalid flags: {error}") from None
        updated = selected.update_flags(result.updated)
        if "\\Deleted" in command.flags and command.mode is not StoreMode.REMOVE:
            self.stats.deleted += sum(1 for uid in updated if "\\Deleted" not in before[uid].flags)
        for uid in updated:
            number = selected.msn(uid)
            if number is None:
                continue
            changed_modseq = selected.infos[uid].modseq != before[uid].modseq
            if command.silent and not (mode.condstore and changed_modseq):
                continue
            items = selected.flag_items(uid, mode, flags=not command.silent)
            if command.uid and not mode.qresync:
                items = (UidItem(uid), *items)
            self._queue(FetchResponse(number, items))
        if result.failed:
            numbers = (
                result.failed
                if command.uid
                else [n for n in (selected.msn(uid) for uid in result.failed) if n is not None]
            )
            code = ResponseCode.modified(SequenceSet.of(numbers))
            return TaggedResponse(tag, "OK", "Conditional store failed.", code)
        return TaggedResponse(tag, "OK", "Store completed.")

    async def copy(self, command: Copy | Move) -> TaggedResponse:
        """COPY and MOVE (RFC 9051 §6.4.7-8, RFC 6851) with COPYUID (RFC 4315)."""
        tag = command.tag
        selected = self._selected()
        move = isinstance(command, Move)
        if move and selected.readonly:
            return TaggedResponse(tag, "NO", "Mailbox is read-only.", READ_ONLY)
        uids = [
            uid
            for uid in self._resolve(command.sequence_set, uid=command.uid)
            if not selected.is_expunged(uid)
        ]
        target = self._name(command.mailbox)
        verb = "Move" if move else "Copy"
        if not uids:
            if command.uid:
                return TaggedResponse(tag, "OK", "No messages found.")
            return TaggedResponse(tag, "OK", f"{verb} completed.")
        try:
            uid_validity, pairs = await self._call_in_thread(
                _copy, self._store(), selected.mailbox, uids, target, move
            )
        except StoreError as error:
            return store_error_response(tag, error, missing_target=True)
        if self.config.special_use.get(target) == "\\Trash":
            self.stats.trashed += len(pairs)
        if not pairs:
            return TaggedResponse(
                tag, "NO", "Some of the requested messages no longer exist.", EXPUNGEISSUED
            )
        code = ResponseCode.copy_uid(
            uid_validity,
            _ordered_set([old for old, _ in pairs]),
            _ordered_set([new for _, new in pairs]),
        )
        if not move:
            return TaggedResponse(tag, "OK", "Copy completed.", code)
        self._queue(UntaggedResponse("OK", "Moved UIDs.", code))
        self.stats.expunged += len(pairs)
        self._queue_all(selected.remove([old for old, _ in pairs], self.mode))
        return TaggedResponse(tag, "OK", "Move completed.")


# --- helpers -------------------------------------------------------------------------------


_STORE_MODES: Final = {
    StoreMode.ADD: StoreFlagMode.ADD,
    StoreMode.REMOVE: StoreFlagMode.REMOVE,
    StoreMode.REPLACE: StoreFlagMode.REPLACE,
}


def _resolve(waiter: asyncio.Future[None]) -> None:
    """A timer's end: resolve the session's waiter (unless something else did)."""
    if not waiter.done():
        waiter.set_result(None)


def _allows_expunge(command: Command, *, qresync: bool) -> bool:
    """Whether EXPUNGE may be sent after ``command`` (RFC 9051 §7.5.1, RFC 3501 §7.4.1).

    Never while answering FETCH, STORE or SEARCH. The RFC allows it during their UID
    forms; roost sends it there only as ``VANISHED`` to QRESYNC clients (no message
    numbers to confuse, and their mod-sequence bookkeeping needs the expunges early,
    RFC 5162 erratum 1810). Other clients get it with their next other command.
    """
    if not isinstance(command, Fetch | Store | Search):
        return True
    return command.uid and qresync


def _sets_seen(item: object) -> bool:
    if isinstance(item, FetchBody):
        return item.sets_seen
    return item in (FetchAttribute.RFC822, FetchAttribute.RFC822_TEXT)


def _ordered_set(numbers: Sequence[int]) -> SequenceSet:
    """A set listing ``numbers`` in their order (COPYUID pairs source and target by order)."""
    ranges: list[tuple[int | None, int | None]] = []
    for number in numbers:
        if ranges:
            first, last = ranges[-1]
            if last is not None and number == last + 1:
                ranges[-1] = (first, number)
                continue
        ranges.append((number, number))
    return SequenceSet(tuple(ranges))


# --- store work (worker threads) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Opened:
    mailbox: MailboxProtocol
    messages: list[MessageInfo]
    recent: frozenset[int]
    keywords: list[str]
    uid_validity: int
    uid_next: int
    highest_modseq: int
    vanished: list[int] | None

    @classmethod
    def read(cls, mailbox: MailboxProtocol, since: int | None) -> _Opened:
        """What SELECT shows of the open ``mailbox``; ``since``: QRESYNC's known
        MODSEQ, for the UIDs expunged after it (RFC 7162 §3.2.5)."""
        return cls(
            mailbox,
            mailbox.messages(),
            mailbox.recent,
            mailbox.keywords(),
            mailbox.uid_validity,
            mailbox.uid_next,
            mailbox.highest_modseq,
            None if since is None else mailbox.expunged_since(since),
        )


def _open_mailbox(
    store: UserStore,
    name: str,
    readonly: bool,
    since: int | None,
    callback: Callable[[object], None],
    previous: MailboxProtocol | None = None,
) -> _Opened:
    if previous is not None:  # the mailbox selected before (SELECT closes it first)
        try:
            previous.close()
        except Exception:
            log_imap.exception("closing a mailbox failed")
    mailbox = store.open(name, readonly=readonly)
    try:
        mailbox.watch(callback)
        return _Opened.read(mailbox, since)
    except BaseException:
        mailbox.close()
        raise


def _reselectable(previous: MailboxProtocol | None, name: str, readonly: bool) -> bool:
    """Tell whether a SELECT of ``name`` can reuse the mailbox selected before: the
    same mailbox in the same mode, not suspended (resuming opens the index: a thread's
    job)."""
    if previous is None or previous.readonly != readonly or previous.suspended:
        return False
    try:
        return normalize_mailbox_name(name) == normalize_mailbox_name(previous.name)
    except StoreError:
        return False


def _reselect(mailbox: MailboxProtocol, since: int | None) -> _Opened:
    """:func:`_open_mailbox` for the mailbox selected before (:func:`_reselectable`)."""
    mailbox.reselect()
    return _Opened.read(mailbox, since)


def _suspend(selected: SelectedMailbox) -> None:
    """Suspend the store mailbox, then pack the session's view (sharing the store's pack)."""
    selected.mailbox.suspend()
    selected.pack()


def _reopen(
    store: UserStore, view: tuple[Any, ...], callback: Callable[[object], None]
) -> tuple[SelectedMailbox, Changes, list[str]]:
    """Open a hibernated session's mailbox again (in another process, maybe): the
    client's view (:meth:`SelectedMailbox.hibernation_state`) and what changed since."""
    name, readonly = view[0], view[1]
    mailbox = store.open(name, readonly=readonly)
    try:
        mailbox.watch(callback)
        selected, changes = SelectedMailbox.from_hibernation(
            view, mailbox, mailbox.messages(), mailbox.recent
        )
        return selected, changes, mailbox.keywords()
    except BaseException:
        mailbox.close()
        raise


def _table_name(table: object) -> str:
    """The shared name of a registry count table (``imap.per_ip``)."""
    return str(getattr(table, "name", ""))


def _move_count(table: object, key: object, delta: int) -> None:
    """Move a count between this process's share and the others' (a shared table:
    :meth:`roost.daemon.shared.SharedCounts.move`); a plain dict is not shared."""
    move = getattr(table, "move", None)
    if move is not None:
        move(key, delta)


def _sync(mailbox: MailboxProtocol) -> tuple[Changes, int, int, list[str] | None]:
    changes = mailbox.sync()
    keywords = mailbox.keywords() if changes.flags or changes.added else None
    return changes, mailbox.uid_next, mailbox.highest_modseq, keywords


def _ensure_special_use(store: UserStore, names: Mapping[str, str]) -> list[str]:
    return store.ensure_special_use(names, subscribe=True)


def _list_data(store: UserStore) -> tuple[list[MailboxInfo], list[str]]:
    return store.list_mailboxes(), store.subscriptions()


def _statuses(store: UserStore, names: Iterable[str]) -> dict[str, MailboxStatus]:
    found: dict[str, MailboxStatus] = {}
    for name in names:
        try:
            found[name] = store.status(name)
        except StoreError:
            continue
    return found


def _append(
    store: UserStore, name: str, command: Append, selected: MailboxProtocol | None
) -> tuple[int, list[int]]:
    if selected is not None and len(command.messages) == 1:
        # Into the selected mailbox: its object appends without a second open; the
        # session's next sync reports the message, as for any other session.
        message = command.messages[0]
        date = message.date_time.timestamp() if message.date_time else None
        return selected.uid_validity, [selected.append(message.data, message.flags, date)]
    mailbox = store.open(name)
    try:
        uids: list[int] = []
        try:
            for message in command.messages:
                date = message.date_time.timestamp() if message.date_time else None
                uids.append(mailbox.append(message.data, message.flags, date))
        except BaseException:
            if uids:  # MULTIAPPEND is all or nothing (RFC 3502 §6.3.11)
                with contextlib.suppress(Exception):
                    mailbox.sync()
                    mailbox.store_flags(uids, ("\\Deleted",), StoreFlagMode.ADD)
                    mailbox.expunge(uids)
            raise
        return mailbox.uid_validity, uids
    finally:
        mailbox.close()


def _copy(
    store: UserStore, source: MailboxProtocol, uids: list[int], target: str, move: bool
) -> tuple[int, list[tuple[int, int]]]:
    destination = store.open(target)
    try:
        pairs = source.move(uids, destination) if move else source.copy(uids, destination)
        return destination.uid_validity, pairs
    finally:
        destination.close()


# --- the dispatch table -------------------------------------------------------------------------


_C = TypeVar("_C", bound=Command)


def _entry(
    kind: type[_C], handler: Callable[[IMAPSession, _C], Awaitable[TaggedResponse | None]]
) -> tuple[type[Command], Handler]:
    return kind, cast(Handler, handler)


HANDLERS: Final[Mapping[type[Command], Handler]] = dict(
    [
        # any state
        _entry(Capability, IMAPSession.capability),
        _entry(Noop, IMAPSession.noop),
        _entry(Logout, IMAPSession.logout),
        _entry(Id, IMAPSession.identify),
        # not authenticated
        _entry(StartTLS, IMAPSession.starttls),
        _entry(Login, IMAPSession.login),
        _entry(Authenticate, IMAPSession.authenticate),
        # authenticated
        _entry(Enable, IMAPSession.enable),
        _entry(Select, IMAPSession.select),
        _entry(Examine, IMAPSession.select),
        _entry(Create, IMAPSession.create),
        _entry(Delete, IMAPSession.delete),
        _entry(Rename, IMAPSession.rename),
        _entry(Subscribe, IMAPSession.subscribe),
        _entry(Unsubscribe, IMAPSession.subscribe),
        _entry(List, IMAPSession.list_mailboxes),
        _entry(Lsub, IMAPSession.lsub),
        _entry(Namespace, IMAPSession.namespace),
        _entry(Status, IMAPSession.status),
        _entry(Append, IMAPSession.append),
        _entry(Idle, IMAPSession.idle),
        _entry(GetQuota, IMAPSession.get_quota),
        _entry(GetQuotaRoot, IMAPSession.get_quota_root),
        _entry(SetQuota, IMAPSession.set_quota),
        _entry(Compress, IMAPSession.compress),
        # selected
        _entry(Check, IMAPSession.noop),
        _entry(Close, IMAPSession.close),
        _entry(Unselect, IMAPSession.unselect),
        _entry(Expunge, IMAPSession.expunge),
        _entry(UidExpunge, IMAPSession.expunge),
        _entry(Search, IMAPSession.search),
        _entry(Fetch, IMAPSession.fetch),
        _entry(Store, IMAPSession.store_flags),
        _entry(Copy, IMAPSession.copy),
        _entry(Move, IMAPSession.copy),
    ]
)
"""Command type -> handler; ``UID`` forms share their command's type (``command.uid``)."""

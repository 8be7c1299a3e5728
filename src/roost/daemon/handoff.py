"""Per-user mail processes: a system user's IMAP or POP3 session goes on as that user.

Started as root, the daemon serves IMAP and POP3 as ``mail_owner``, which cannot read a
Maildir in a home of mode 0700. With ``mail_process_per_user = yes`` (the default), a
session whose user has a uid other than the worker's (a system user from PAM, or a
passwd-file user with a ``uid``) is handed over after its login, as Dovecot hands a
session from imap-login to an imap process running as the user:

1. the worker checks the password (as before) and the per-user connection limit, then
   makes a ``SOCK_STREAM`` socket pair and sends a ``session`` request to the privileged
   helper (:mod:`roost.daemon.privhelper`) with one end of it: the uid asked for, the
   login name and password the client gave (``auth``), the protocol and service, and what
   the session needs to go on (the IMAP tag of the login, TLS or not, the client's
   addresses, the session id, the SASL mechanism);
2. the helper forks a child for it, which checks the request as the helper checks
   deliveries (the uid exists and is at least ``first_valid_uid``, neither it nor its
   primary group is 0), re-reads main.cf as root and checks the login and password itself
   against the user database it names (passwd-file, LDAP, PAM: :func:`verified_user`);
   the user that check finds must have the uid asked for, and its record (home,
   ``mail_location``, quota) is the one the session uses, not the worker's. The mailbox
   must lie in the user's home or ``mail_spool_directory`` with no symbolic link below
   it. The child then becomes the user for good (groups, gid, uid), opens the store
   (POP3: and locks the maildrop), and answers ``ok`` with its pid, or a refusal that the
   worker answers with the protocol's error (IMAP ``NO [UNAVAILABLE]`` or
   ``[AUTHENTICATIONFAILED]``, POP3 ``-ERR [SYS/PERM]``, ``[SYS/TEMP]``, ``[AUTH]`` or
   ``[IN-USE]``); the session then stays in the worker, not logged in;
3. the child runs the normal session code (:class:`roost.imap.session.IMAPSession`,
   :class:`roost.pop3.session.POP3Session`) on its end of the pair, in plaintext, already
   logged in and as secured as the client's connection: it answers the login (IMAP
   ``tag OK [CAPABILITY ...] Logged in``, POP3 ``+OK Logged in``) and serves until the
   session ends, then exits;
4. the worker keeps the client's connection (and its TLS) and copies octets both ways
   (:class:`Proxy`); what the client had sent behind its login goes first.

The request's connection stays open as a control channel (JSON lines, as the worker
channel of :mod:`roost.daemon.channel`): the worker sends ``stop`` (the daemon stops: the
session ends with ``* BYE``/``-ERR [SYS/TEMP]`` at its next chance) and ``bus`` (a mailbox
changed, for IMAP IDLE); the child sends ``watch``/``unwatch`` (a mailbox it has selected,
so the worker subscribes to its changes on the daemon's bus, :mod:`roost.store.bus`, and
answers with a ``bus`` for it: the session syncs once more, after any change published
before the worker's subscription) and ``pub`` (its own writes, which the worker publishes to the
other sessions and processes). When the worker dies, the child sees the end of both
sockets and ends the session.

Nothing changes when the daemon does not run with privilege separation (not started as
root, or ``ROOST_STAY_ROOT=1``): there is no helper, :func:`handoff_for` answers None.

See Also: Dovecot's login processes and ``service_count = 1`` mail processes; docs/privsep.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypedDict, cast

from roost.auth.users import User
from roost.config import Settings, load_settings
from roost.daemon.channel import Channel, Message
from roost.store.bus import DEFAULT_BUS, ChangeBus, Subscription

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from roost.daemon.mailsession import MailSession
    from roost.daemon.privhelper import HelperClient

__all__ = [
    "PROTOCOLS",
    "HandOff",
    "HandOffFailed",
    "Proxy",
    "handoff_for",
    "preload",
    "serve_session",
    "use_helper",
]

log = logging.getLogger("roost.handoff")

#: The protocols whose sessions can be handed over, and their services.
PROTOCOLS: Final = {"imap": ("imap", "imaps"), "pop3": ("pop3", "pop3s")}

#: Seconds the worker waits for the child's answer (store opening and lock included).
_START_TIMEOUT: Final = 60.0

_client: HelperClient | None = None


def use_helper(client: HelperClient | None) -> None:
    """Hand sessions over through ``client`` (set once, before the workers are forked)."""
    global _client
    _client = client


def handoff_for(settings: Settings) -> HandOff | None:
    """The hand-off of IMAP and POP3 sessions, or None (no helper, or
    ``mail_process_per_user = no``)."""
    if _client is None or not settings.boolean("mail_process_per_user"):
        return None
    return HandOff(_client)


class HandOffFailed(Exception):
    """The session could not be handed over; it stays in the worker, not logged in.

    Attributes:
        kind: ``refused`` (the helper's checks failed: uid 0, no home, a path outside the
            home), ``auth-failed`` (the helper's own check of the login and password
            failed, or found a user of another uid), ``in-use`` (POP3: another session
            holds the maildrop), ``temporary`` or ``permanent`` (the store could not be
            opened, the user database could not answer; the helper is unreachable).
        text: the reason, for the log.
    """

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(f"{kind}: {text}")
        self.kind = kind
        self.text = text


@dataclasses.dataclass(frozen=True, slots=True)
class HandOff:
    """The worker's side: asks the helper for a session process and proxies to it.

    Args:
        client: the privileged helper's client.
    """

    client: HelperClient

    def wanted(self, user: User) -> bool:
        """Whether ``user``'s session goes to a process of its own: its uid is known
        and is not this process's (virtual users of ``mail_owner`` stay here)."""
        return user.uid is not None and user.uid != os.geteuid()

    async def start(
        self,
        protocol: str,
        service: str,
        user: User,
        state: Mapping[str, object],
        credentials: tuple[str, str],
    ) -> Proxy:
        """Have the helper start ``user``'s session process; return its proxy, not yet
        attached to the client (:meth:`Proxy.attach`).

        Args:
            protocol: ``imap`` or ``pop3``.
            service: the listener's service (``imap``, ``imaps``, ``pop3``, ``pop3s``).
            user: who logged in.
            state: what the session process needs to go on (see the module docstring).
            credentials: the login name and password the client gave (SASL authcid and
                password, IMAP LOGIN, POP3 USER and PASS), which the helper checks again.

        Raises:
            HandOffFailed: the helper refused (its own check of ``credentials``
                included), the store could not be opened, or the helper cannot be reached.
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        auth = {"login": credentials[0], "password": credentials[1]}
        del credentials
        request = {
            "op": "session",
            "protocol": protocol,
            "service": service,
            "uid": user.uid,
            "auth": auth,
            "state": dict(state),
        }
        from roost.daemon.privhelper import HelperError

        try:
            reply, control = await asyncio.to_thread(
                self.client.open_session, request, [theirs.fileno()], _START_TIMEOUT
            )
        except HelperError as exc:
            mine.close()
            raise HandOffFailed("temporary", str(exc)) from None
        except BaseException:  # cancelled: the child sees the end of its input
            mine.close()
            raise
        finally:
            theirs.close()
            auth.clear()  # no reference to the password is left here
        if reply.get("ok") is not True:
            mine.close()
            raise HandOffFailed(str(reply.get("kind", "error")), str(reply.get("text", "?")))
        pid = reply.get("pid")
        try:
            return await Proxy.open(mine, control, pid if isinstance(pid, int) else 0)
        except OSError as exc:
            mine.close()
            control.close()
            text = f"cannot connect to the session process: {exc}"
            raise HandOffFailed("temporary", text) from None


# --- the worker's side: the proxy ----------------------------------------------------------


class _Side(asyncio.Protocol):
    """One of the proxy's two connections; :meth:`_other` is the other one's transport.

    Back-pressure: while this side's buffer is full, the other side is not read. The end
    of this side closes the other once what is buffered there is out.
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def _other(self) -> asyncio.Transport | None:
        """The other connection's transport (None: not there yet)."""
        raise NotImplementedError

    def _mark_lost(self) -> None:
        """Note in the proxy that this side is gone."""
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_lost()
        other = self._other()
        if other is not None:
            other.close()
        self.proxy.check_done()

    def pause_writing(self) -> None:
        other = self._other()
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self._other()
        if other is not None and not other.is_closing():
            other.resume_reading()


class _ClientSide(_Side):
    """The client's connection after the hand-off: octets go to the session process."""

    def _other(self) -> asyncio.Transport | None:
        return self.proxy.child

    def _mark_lost(self) -> None:
        self.proxy.client_lost = True

    def data_received(self, data: bytes) -> None:
        child = self.proxy.child
        if child is not None and not child.is_closing():
            child.write(data)

    def eof_received(self) -> bool | None:
        child = self.proxy.child
        if child is not None and not child.is_closing() and child.can_write_eof():
            child.write_eof()
        # Keep a TCP connection open for the last answers (TLS transports close).
        return None if self.proxy.client_tls else True


class _ChildSide(_Side):
    """The socket to the session process: its octets go to the client."""

    def _other(self) -> asyncio.Transport | None:
        return self.proxy.client

    def _mark_lost(self) -> None:
        self.proxy.child_lost = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).pause_reading()  # until the client is attached

    def data_received(self, data: bytes) -> None:
        client = self.proxy.client
        if client is None:  # not attached yet (a loop may read before pause_reading)
            self.proxy.early.append(data)
        elif not client.is_closing():
            client.write(data)

    def eof_received(self) -> bool | None:
        if self.proxy.client is not None:
            self.proxy.client.close()  # after what is buffered
        else:
            self.proxy.early_eof = True
        return None


class Proxy:
    """Copies octets between a client's connection and its session process.

    Built by :meth:`HandOff.start`; :meth:`attach` makes it the client transport's
    protocol. Back-pressure goes both ways (a side whose buffer is full pauses reading
    on the other). The end of either side closes the other once what is buffered is out.
    """

    def __init__(self, control: socket.socket, pid: int) -> None:
        self.pid = pid
        self.child: asyncio.Transport | None = None
        self.client: asyncio.Transport | None = None
        self.client_tls = False
        self.client_lost = False
        self.child_lost = False
        self.early: list[bytes] = []
        self.early_eof = False
        self._done = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._channel = Channel(control, self._message)
        self._watches: dict[str, Subscription] = {}

    @classmethod
    async def open(cls, data: socket.socket, control: socket.socket, pid: int) -> Proxy:
        """Connect to the session process's sockets (its data and control channel).

        Raises:
            OSError: a socket cannot be used.
        """
        proxy = cls(control, pid)
        loop = asyncio.get_running_loop()
        data.setblocking(False)
        transport, _ = await loop.create_unix_connection(lambda: _ChildSide(proxy), sock=data)
        proxy.child = transport
        await proxy._channel.start()
        return proxy

    def attach(self, client: asyncio.Transport, pending: bytes) -> None:
        """Take over ``client`` (nothing may be awaited between reading its last input
        and this call); ``pending``: what the client sent behind its login."""
        self.client = client
        self.client_tls = client.get_extra_info("ssl_object") is not None
        child = self.child
        assert child is not None
        gone = client.is_closing()  # the client is gone already
        client.set_protocol(_ClientSide(self))
        if gone:
            self.client_lost = True
            child.close()
            self.check_done()
            return
        if pending:
            child.write(pending)
        for data in self.early:
            client.write(data)
        self.early.clear()
        if self.early_eof or self.child_lost:
            client.close()  # after what is buffered
        else:
            child.resume_reading()
        client.resume_reading()

    def check_done(self) -> None:
        """Called when a side is gone: done when both are."""
        if self.client_lost and self.child_lost and not self._done.is_set():
            for subscription in self._watches.values():
                subscription.cancel()
            self._watches.clear()
            self._loop.create_task(self._channel.close())
            self._done.set()

    async def wait(self) -> None:
        """Wait until both connections are closed."""
        await self._done.wait()

    @property
    def done(self) -> bool:
        """Whether both connections are closed."""
        return self._done.is_set()

    def shutdown(self) -> None:
        """Ask the session process to end the session at its next chance (daemon stop)."""
        self._channel.send({"t": "stop"})

    def abort(self) -> None:
        """Close both connections now."""
        for transport in (self.client, self.child):
            if transport is not None:
                transport.abort()

    def _message(self, message: Message) -> None:
        kind, path = message.get("t"), message.get("p")
        if not isinstance(path, str):
            return
        if kind == "watch" and len(self._watches) < 1000:
            if path not in self._watches:
                self._watches[path] = DEFAULT_BUS.subscribe(Path(path), self._changed, owner=self)
            # The session read the mailbox after it subscribed in its own process, maybe
            # before this subscription: a change published in between reached no one here.
            # One more sync, asked for now, finds it (changes from now on are relayed).
            self._channel.send({"t": "bus", "p": path})
        elif kind == "unwatch":
            subscription = self._watches.pop(path, None)
            if subscription is not None:
                subscription.cancel()
        elif kind == "pub":
            DEFAULT_BUS.publish(Path(path), origin=self)

    def _changed(self, path: Path) -> None:  # any thread
        message: Message = {"t": "bus", "p": str(path)}
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(self._channel.send, message)


# --- the session process's side --------------------------------------------------------------


class _RelayingBus(ChangeBus):
    """The session process's bus: subscriptions and publishes go to the worker too."""

    def __init__(self, send: Callable[[Message], None]) -> None:
        super().__init__()
        self._send = send
        self.relay = lambda key: send({"t": "pub", "p": key})

    def subscribe(
        self, mailbox_path: Path, callback: Callable[[Path], None], *, owner: object = None
    ) -> Subscription:
        subscription = super().subscribe(mailbox_path, callback, owner=owner)
        self._send({"t": "watch", "p": os.path.realpath(mailbox_path)})
        return subscription

    def _remove(self, key: str, subscription: Subscription) -> None:
        super()._remove(key, subscription)
        with self._lock:
            left = key in self._subscriptions
        if not left:
            self._send({"t": "unwatch", "p": key})


def preload() -> None:
    """Import what a session process runs (in the helper, at its start)."""
    import codecs
    import concurrent.futures.thread  # noqa: F401

    for encoding in ("ascii", "latin-1", "utf-8"):  # the codecs are modules, found lazily
        codecs.lookup(encoding)

    import roost.auth.factory
    import roost.delivery.local
    import roost.imap.server
    import roost.pop3.server
    import roost.queue.service  # noqa: F401


def _str(state: Mapping[str, object], key: str) -> str:
    value = state.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"bad {key} {value!r}")
    return value


def verified_user(
    settings: Settings, auth: object, uid: int, remote_ip: str, protocol: str = "session"
) -> User:
    """Check a session request's login and password against the user database of
    ``settings`` (``auth_backends``: passwd-file, LDAP, PAM; run as root in the helper's
    child, so PAM reads /etc/shadow itself); the user found must have ``uid``.

    The worker checked them already; checking them again here means a worker taken over
    cannot get a session of a user whose password it does not have (Dovecot's master
    starts a mail process only for a login its auth process vouches for). The password
    is taken out of ``auth`` (a dict: ``login``, ``password``) before it is checked.

    Args:
        settings: main.cf as the helper's child re-read it.
        auth: the request's ``auth`` object.
        uid: the uid the request asks for.
        remote_ip: the client's address (for a user's ``allow_nets``), "" for none.
        protocol: for the log line.

    Returns:
        The user as the database has it.

    Raises:
        HandOffFailed: ``refused`` (no ``auth``, or not strings), ``auth-failed`` (wrong
            login or password, a disabled user, another uid; logged as a failed login),
            ``temporary`` (no user database, or it could not answer).
    """
    from roost.auth.factory import build_user_database

    if not isinstance(auth, dict):
        raise HandOffFailed("refused", "no login and password to check")
    login, password = auth.pop("login", None), auth.pop("password", None)
    auth.clear()
    if not isinstance(login, str) or not isinstance(password, str) or not login:
        raise HandOffFailed("refused", "login and password must be strings")
    users = build_user_database(settings)
    if users is None:
        raise HandOffFailed("temporary", "auth_backends is empty: no login can be checked")
    try:
        result = users.verify_sync(login, password, remote_address=remote_ip or None)
    finally:
        del password
        for backend in users.backends:  # no directory connection into the session
            close = getattr(backend, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
    user = result.user
    if result.failure is not None and result.failure.temporary:
        log.warning("%s-login: auth: %s: %s", protocol, login, result.message)
        raise HandOffFailed("temporary", f"cannot check the login of {login}: {result.message}")
    if user is None or user.uid != uid:
        why = result.message or (
            "wrong login or password" if user is None else f"{user.login} has uid {user.uid}"
        )
        log.warning(
            "%s-login: session refused (auth failed): user=<%s>, uid=%d, rip=%s: %s",
            protocol,
            login,
            uid,
            remote_ip,
            why,
        )
        raise HandOffFailed("auth-failed", f"the helper's check of {login} failed")
    return user


def serve_session(
    settings: Settings,
    config: Path,
    request: dict[str, object],
    fds: Sequence[int],
    conn: socket.socket,
) -> None:
    """The helper child's work for a ``session`` request (as root until it becomes the
    user): check, become the user, open the store, answer, serve the session.

    Args:
        settings: the helper's settings (used when main.cf cannot be read again).
        config: main.cf, re-read for the session's settings.
        request: the request (``protocol``, ``service``, ``uid``, ``auth``, ``state``).
        fds: the descriptors that came with it (one: the session's socket).
        conn: the request's connection (the reply, then the control channel).
    """
    from roost.daemon.privhelper import Refused, account_of, become, check_path, send_frame

    data: socket.socket | None = None
    try:
        if len(fds) != 1:
            raise Refused("session needs its connection as one descriptor")
        data = socket.socket(fileno=fds[0])
        fds = []
        if data.family != socket.AF_UNIX or data.type != socket.SOCK_STREAM:
            raise Refused("session's descriptor is not a Unix stream socket")
        protocol, service = request.get("protocol"), request.get("service")
        if protocol not in PROTOCOLS or service not in PROTOCOLS[str(protocol)]:
            raise Refused(f"bad protocol or service {protocol!r} {service!r}")
        account = account_of(request.get("uid"))
        with contextlib.suppress(Exception):
            settings, _ = load_settings(config)  # as of the latest reload
        if account.uid < settings.integer("first_valid_uid"):
            raise Refused(f"uid {account.uid} is below first_valid_uid")
        state = request.get("state")
        if not isinstance(state, dict):
            raise Refused("state must be an object")
        try:
            for key in ("remote_ip", "local_ip", "session_id", "method", "login", "tag"):
                _str(state, key)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        user = verified_user(
            settings,
            request.pop("auth", None),
            account.uid,
            _str(state, "remote_ip"),
            str(protocol),
        )
        user = dataclasses.replace(user, gid=account.gid)
        state["login"] = user.login  # what the log says is who logged in
        preload()
        from roost.delivery.errors import DeliveryError
        from roost.delivery.mailbox import local_config, user_mailbox

        try:
            mailbox = user_mailbox(user, local_config(settings))
        except DeliveryError as exc:
            raise Refused(f"{user.login}: {exc.text}") from None
        if mailbox.kind != "maildir":
            raise Refused(f"{mailbox.kind} mailboxes ({mailbox.path}) are not served")
        spool = os.path.normpath(settings.string("mail_spool_directory"))
        roots = [
            os.path.normpath(r)
            for r in (account.home, spool)
            if r.startswith("/") and os.path.normpath(r) != "/"
        ]
        check_path(str(mailbox.path), roots)
        become(account)
        os.environ["HOME"] = account.home
        os.environ["USER"] = os.environ["LOGNAME"] = account.name
    except Refused as exc:
        log.warning("refused session request: %s", exc)
        _close(data, fds)
        send_frame(conn, {"ok": False, "kind": "refused", "text": str(exc)})
        return
    except HandOffFailed as failure:  # logged by verified_user
        _close(data, fds)
        send_frame(conn, {"ok": False, "kind": failure.kind, "text": failure.text})
        return
    except Exception as exc:
        log.exception("session request failed")
        _close(data, fds)
        send_frame(conn, {"ok": False, "kind": "temporary", "text": f"{type(exc).__name__}: {exc}"})
        return
    for handler in logging.getLogger().handlers:
        handler.setFormatter(
            logging.Formatter(f"roost/{protocol}[%(process)d]: %(levelname)s: %(message)s")
        )
    runner = _SessionProcess(settings, str(protocol), str(service), user, state, data, conn)
    asyncio.run(runner.run())


def _close(data: socket.socket | None, fds: Sequence[int]) -> None:
    if data is not None:
        data.close()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _SessionProcess:
    """One handed-over session, in its own process running as the user."""

    def __init__(
        self,
        settings: Settings,
        protocol: str,
        service: str,
        user: User,
        state: Mapping[str, object],
        data: socket.socket,
        conn: socket.socket,
    ) -> None:
        self.settings = settings
        self.protocol = protocol
        self.service = service
        self.user = user
        self.state = state
        self.data = data
        self.conn = conn
        self.channel: Channel | None = None
        self.session: MailSession[Any, Any] | None = None

    def _send(self, message: Message) -> None:  # any thread
        channel = self.channel
        loop = self.loop
        if channel is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(channel.send, message)

    def _message(self, message: Message) -> None:
        kind = message.get("t")
        if kind == "stop":
            if self.session is not None:
                self.session.shutdown()
        elif kind == "bus" and isinstance(message.get("p"), str):
            self.bus.publish_relayed(str(message["p"]))

    async def run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from roost.daemon.privhelper import send_frame

        self.loop = asyncio.get_running_loop()
        self.bus = _RelayingBus(self._send)
        DEFAULT_BUS.relay = self.bus.relay  # POP3's writes, published on the default bus
        executor = ThreadPoolExecutor(4, thread_name_prefix=f"{self.protocol}-store")
        try:
            opened = await self._open(executor)
        except HandOffFailed as failure:
            log.warning("%s(%s): %s", self.protocol, self.user.login, failure.text)
            send_frame(self.conn, {"ok": False, "kind": failure.kind, "text": failure.text})
            self.data.close()
            return
        send_frame(self.conn, {"ok": True, "pid": os.getpid()})
        self.conn.setblocking(False)
        self.channel = Channel(self.conn, self._message, on_close=self._worker_gone)
        await self.channel.start()
        self.session = session = opened
        self.data.setblocking(False)
        await self.loop.connect_accepted_socket(lambda: session, sock=self.data)
        task = session._task  # the session's loop, started by connection_made
        if task is not None:
            with contextlib.suppress(Exception):
                await task
        await self.channel.close()
        executor.shutdown(wait=True)

    def _worker_gone(self) -> None:
        session = self.session
        if session is not None and not session.done:
            session.abort()

    async def _open(self, executor: Executor) -> MailSession[Any, Any]:
        """Open the store (IMAP) or the locked maildrop (POP3) and build the session,
        logged in as the worker's state says.

        Raises:
            HandOffFailed: it cannot be opened.
        """
        state = self.state
        login = _LoginFields(
            user=self.user,
            tls=bool(state.get("tls")),
            remote_ip=_str(state, "remote_ip"),
            local_ip=_str(state, "local_ip"),
            session_id=_str(state, "session_id"),
            method=_str(state, "method"),
            login=_str(state, "login"),
        )
        if self.protocol == "imap":
            return await self._open_imap(executor, login)
        return await self._open_pop3(executor, login)

    async def _open_imap(self, executor: Executor, login: _LoginFields) -> MailSession[Any, Any]:
        """:meth:`_open` for IMAP: the user's store."""
        from roost.auth.throttle import Throttle
        from roost.imap.server import session_config, store_opener
        from roost.imap.session import IMAPSession, Registry, Resumed, Shared, StoreUnavailable
        from roost.store import StoreError

        opener = store_opener(self.settings, bus=self.bus)
        try:
            store = await self.loop.run_in_executor(executor, opener, self.user)
        except (StoreUnavailable, StoreError) as exc:
            raise HandOffFailed("temporary", f"cannot open the mail store: {exc}") from None
        return IMAPSession(
            Shared(
                config=session_config(self.settings, self.service),
                users=None,
                throttle=Throttle(),
                tls_context=_no_tls,
                open_store=opener,
                registry=Registry(),
                executor=executor,
            ),
            resumed=Resumed(**login, tag=_str(self.state, "tag"), store=store),
        )

    async def _open_pop3(self, executor: Executor, login: _LoginFields) -> MailSession[Any, Any]:
        """:meth:`_open` for POP3: the user's maildrop, locked."""
        from roost.auth.throttle import Throttle
        from roost.pop3.server import maildrop_opener, session_config
        from roost.pop3.session import POP3Session, Registry, Resumed, Shared
        from roost.store import LockTimeout, StoreError

        opener = maildrop_opener(self.settings, self.service, executor)
        try:
            maildrop = await opener(self.user)
        except LockTimeout as exc:
            raise HandOffFailed("in-use", f"maildrop in use: {exc}") from None
        except StoreError as exc:
            kind = "temporary" if exc.temporary else "permanent"
            raise HandOffFailed(kind, f"cannot open the maildrop: {exc}") from None
        return POP3Session(
            Shared(
                config=session_config(self.settings, self.service),
                users=None,
                throttle=Throttle(),
                tls_context=_no_tls,
                open_maildrop=opener,
                registry=Registry(),
            ),
            resumed=Resumed(**login, maildrop=maildrop),
        )


class _LoginFields(TypedDict):
    """The fields of :class:`roost.daemon.mailsession.ResumedLogin`, from the worker."""

    user: User
    tls: bool
    remote_ip: str
    local_ip: str
    session_id: str
    method: str
    login: str


def _no_tls() -> ssl.SSLContext:
    raise RuntimeError("TLS is the worker's (the session is already logged in)")

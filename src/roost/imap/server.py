"""The IMAP service: listeners for imap (143, STARTTLS) and imaps (993, implicit TLS).

One :class:`IMAPService` runs both listeners. Each has its own resolved settings
(``imap/name = value`` and ``imaps/name = value`` overrides apply); both share the user
database, the failed-login throttle, the connection counts (per client address and per
user and address) and a pool of worker threads for store calls. A reload builds new
settings for new connections; sessions in progress keep theirs.

Where a user's mail lives is local delivery's answer (``roost.delivery.mailbox.user_mailbox``),
so delivery and IMAP always agree: ``maildir:`` locations are served; ``mbox:`` ones get
``NO [UNAVAILABLE]`` at login for now.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import socket
from functools import partial
from typing import Final

from roost import __version__
from roost.auth.users import User
from roost.config import ConfigError, Settings
from roost.daemon.handoff import handoff_for
from roost.daemon.service import Context
from roost.daemon.serving import StoreService, config_problems, unless_idle
from roost.imap.mailboxes import parse_special_use
from roost.imap.session import (
    IMAPSession,
    Registry,
    SessionConfig,
    Shared,
    StoreOpener,
    StoreUnavailable,
    UserStore,
)
from roost.store import DEFAULT_BUS, ChangeBus, MailStore

__all__ = [
    "IMAP_SERVICES",
    "STORE_THREADS",
    "IMAPService",
    "build_imap_service",
    "check_imap",
    "parse_id_send",
    "session_config",
    "store_opener",
]

IMAP_SERVICES: Final = ("imap", "imaps")
STORE_THREADS: Final = 64
"""Worker threads for store calls, shared by every IMAP session."""
log = logging.getLogger("roost.imap-login")


def parse_id_send(text: str, version: str) -> tuple[tuple[str, str | None], ...]:
    """Parse Dovecot's ``imap_id_send``: ``name * version *`` or ``"support-url" "https://..."``.

    Pairs of a field and a value; the value ``*`` means roost's own (``name``,
    ``version``, ``vendor``, ``os``, ``os-version``); ``NIL`` means NIL. Double quotes
    group words.

    Raises:
        ValueError: an odd number of words, or ``*`` for a field roost has no value for.
    """
    words = shlex.split(text)
    if len(words) % 2:
        raise ValueError("expected pairs of a field name and a value")
    defaults = {
        "name": "roost",
        "version": version,
        "vendor": "roost",
        "os": os.uname().sysname,
        "os-version": os.uname().release,
    }
    pairs: list[tuple[str, str | None]] = []
    for name, value in zip(words[::2], words[1::2], strict=True):
        if value == "*":
            if name.lower() not in defaults:
                raise ValueError(f"no default value for ID field {name!r}")
            pairs.append((name, defaults[name.lower()]))
        else:
            pairs.append((name, None if value.upper() == "NIL" else value))
    return tuple(pairs)


def session_config(settings: Settings, service: str) -> SessionConfig:
    """Resolve one service's settings into a :class:`SessionConfig`.

    Raises:
        ConfigError: ``imap_id_send`` or ``special_use_folders`` cannot be read.
    """
    view = settings.for_service(service)
    try:
        id_send = parse_id_send(view.string("imap_id_send"), __version__)
    except ValueError as exc:
        raise view.error("imap_id_send", str(exc)) from None
    try:
        special_use = parse_special_use(view.string("special_use_folders"))
    except ValueError as exc:
        raise view.error("special_use_folders", str(exc)) from None
    return SessionConfig(
        service=service,
        greeting=view.string("login_greeting"),
        max_line_length=max(view.size("imap_max_line_length"), 1024),
        append_limit=max(view.size("imap_append_size_limit"), 1),
        client_timeout=float(view.seconds("imap_client_timeout")),
        idle_notify_interval=float(max(view.seconds("imap_idle_notify_interval"), 1)),
        idle_check_interval=float(max(view.seconds("mailbox_idle_check_interval"), 1)),
        max_userip_connections=view.integer("mail_max_userip_connections"),
        disable_plaintext_auth=view.boolean("disable_plaintext_auth"),
        capability=view.string("imap_capability"),
        id_send=id_send,
        id_log=frozenset(word.lower() for word in view.string("imap_id_log").split()),
        logout_format=view.string("imap_logout_format"),
        special_use=special_use,
        hibernate_timeout=float(view.seconds("imap_hibernate_timeout")),
    )


def store_opener(settings: Settings, bus: ChangeBus = DEFAULT_BUS) -> StoreOpener:
    """Open a user's Maildir++ store where local delivery puts their mail (changes
    published on ``bus``)."""
    from roost.delivery.errors import DeliveryError
    from roost.delivery.mailbox import local_config, user_mailbox

    config = local_config(settings)

    def open_store(user: User) -> UserStore:
        try:
            mailbox = user_mailbox(user, config)
        except DeliveryError as exc:
            raise StoreUnavailable(exc.text) from None
        if mailbox.kind != "maildir":
            raise StoreUnavailable(f"{mailbox.kind} mailboxes ({mailbox.path}) are not served")
        return MailStore(
            mailbox.path,
            uid=mailbox.uid,
            gid=mailbox.gid,
            quota=mailbox.quota_bytes or None,
            bus=bus,
        )

    return open_store


class IMAPService(StoreService[Shared, Registry]):
    """Both IMAP listeners of the daemon (see the module docstring)."""

    name = "imap"
    log = log

    def __init__(self, context: Context) -> None:
        super().__init__(
            context, IMAP_SERVICES, Registry(), STORE_THREADS, thread_name="imap-store"
        )
        self._adopting: set[asyncio.Task[None]] = set()
        self._build(context)

    def _build(self, context: Context) -> None:
        opener = store_opener(context.settings)
        shared: dict[str, Shared] = {}
        for service in IMAP_SERVICES:
            view = context.settings.for_service(service)
            shared[service] = Shared(
                config=session_config(context.settings, service),
                users=context.users,
                throttle=context.throttle,
                tls_context=partial(self._current_tls, service),
                open_store=opener,
                registry=self._registry,
                executor=self._executor,
                ip_connection_limit=view.integer("imap_client_connection_count_limit"),
                handoff=handoff_for(context.settings),
                hibernation=context.hibernation if service == "imap" else None,
            )
        self._context = context
        self._shared = shared
        if context.hibernation is not None:
            context.hibernation.on_wake = self.adopt

    def adopt(self, header: dict[str, object], blob: bytes, fd: int) -> None:
        """Serve a session the master woke (:mod:`roost.daemon.hibernation`): ``fd`` is
        its socket's descriptor (owned from now on), ``blob`` its packed state."""
        sock = socket.socket(fileno=fd)
        try:
            session = IMAPSession.adopted(self._shared["imap"], header, blob)
        except Exception:
            sock.close()
            raise
        self.count_accept()  # a connection this worker serves (max_idle's watch)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._connect(loop, session, sock))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, session: IMAPSession, sock: socket.socket
    ) -> None:
        try:
            await loop.connect_accepted_socket(lambda: session, sock)
        except Exception:
            log.exception("adopting a hibernated session failed")
            sock.close()

    def _session(self, service: str) -> IMAPSession:
        return IMAPSession(self._shared[service])

    def connections(self) -> int:
        """The open sessions, and the woken ones still being connected (:meth:`adopt`)."""
        return super().connections() + len(self._adopting)

    def _implicit_tls(self, service: str) -> bool:
        return service == "imaps"

    async def reload(self, context: Context) -> None:
        """Adopt new settings for new connections (bad ones are logged and ignored)."""
        try:
            self._build(context)
        except ConfigError as exc:
            log.error("reload: keeping the IMAP settings: %s", str(exc).replace("\n", "; "))


def build_imap_service(context: Context) -> IMAPService | None:
    """The composition root's factory: None when imap and imaps are both disabled."""
    return unless_idle(IMAPService(context))


def check_imap(settings: Settings) -> list[str]:
    """Validate the IMAP services' settings (for ``roost check``)."""
    return config_problems(lambda: [session_config(settings, s) for s in IMAP_SERVICES])

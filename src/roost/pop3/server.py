"""The POP3 service: listeners for pop3 (110, STLS) and pop3s (995, implicit TLS).

One :class:`POP3Service` runs both listeners. Each has its own resolved settings
(``pop3/name = value`` and ``pop3s/name = value`` overrides apply); both share the user
database, the failed-login throttle, the logins per user and address, and a pool of
worker threads for store calls. A reload builds new settings for new connections; sessions
in progress keep theirs.

Where a user's mail lives is local delivery's answer (``roost.delivery.mailbox.user_mailbox``),
so delivery, IMAP and POP3 always agree: ``maildir:`` locations are served (INBOX, through
:mod:`roost.pop3.storedrop`); ``mbox:`` ones get ``-ERR [SYS/PERM]`` at login for now.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from functools import partial
from typing import Final

from roost.auth.users import User
from roost.config import Settings
from roost.daemon.handoff import handoff_for
from roost.daemon.service import Context
from roost.daemon.serving import StoreService, config_problems, unless_idle
from roost.pop3.session import (
    MaildropOpener,
    POP3Session,
    Registry,
    SessionConfig,
    SessionMaildrop,
    Shared,
)
from roost.pop3.state import ServerSettings
from roost.pop3.storedrop import MaildropPlace, UidlFormat, open_maildrop
from roost.store import MailStore, StoreError

__all__ = [
    "POP3_SERVICES",
    "STORE_THREADS",
    "POP3Service",
    "build_pop3_service",
    "check_pop3",
    "maildrop_opener",
    "session_config",
]

POP3_SERVICES: Final = ("pop3", "pop3s")
STORE_THREADS: Final = 32
"""Worker threads for store calls, shared by every POP3 session."""
log = logging.getLogger("roost.pop3-login")


def session_config(settings: Settings, service: str) -> SessionConfig:
    """Resolve one service's settings into a :class:`SessionConfig`.

    Raises:
        ConfigError: ``pop3_uidl_format`` cannot be used.
    """
    view = settings.for_service(service)
    uidl_format(settings, service)  # validated here so a bad value fails start and reload
    return SessionConfig(
        service=service,
        protocol=ServerSettings(
            implementation="roost",
            greeting=view.string("login_greeting"),
            tls_available=True,  # the daemon refuses to start without the TLS files
            disable_plaintext_auth=view.boolean("disable_plaintext_auth"),
        ),
        client_timeout=float(max(view.seconds("pop3_client_timeout"), 1)),
        max_userip_connections=view.integer("mail_max_userip_connections"),
        mark_seen=not view.boolean("pop3_no_flag_updates"),
        logout_format=view.string("pop3_logout_format"),
    )


def uidl_format(settings: Settings, service: str) -> UidlFormat:
    """Parse ``pop3_uidl_format``.

    Raises:
        ConfigError: an unsupported variable, or none that tells messages apart.
    """
    view = settings.for_service(service)
    try:
        return UidlFormat.parse(view.string("pop3_uidl_format"))
    except ValueError as exc:
        raise view.error("pop3_uidl_format", str(exc)) from None


def maildrop_opener(settings: Settings, service: str, executor: Executor) -> MaildropOpener:
    """Open and lock a user's INBOX where local delivery puts their mail.

    Raises:
        ConfigError: ``pop3_uidl_format`` cannot be used.
    """
    from roost.delivery.errors import DeliveryError
    from roost.delivery.mailbox import local_config, user_mailbox

    config = local_config(settings)
    view = settings.for_service(service)
    lock_session = view.boolean("pop3_lock_session")
    readonly = view.boolean("pop3_no_flag_updates")
    uidls = uidl_format(settings, service)

    async def open_user_maildrop(user: User) -> SessionMaildrop:
        try:
            mailbox = user_mailbox(user, config)
        except DeliveryError as exc:
            raise StoreError(exc.text, temporary=exc.temporary) from None
        if mailbox.kind != "maildir":
            raise StoreError(
                f"{mailbox.kind} mailboxes ({mailbox.path}) are not supported by POP3 yet",
                temporary=False,
            )

        def open_store() -> MailStore:
            return MailStore(
                mailbox.path,
                uid=mailbox.uid,
                gid=mailbox.gid,
                quota=mailbox.quota_bytes or None,
            )

        place = MaildropPlace(open_store, mailbox.path, mailbox.uid, mailbox.gid)
        return await open_maildrop(
            place,
            executor=executor,
            lock_session=lock_session,
            readonly=readonly,
            uidl_format=uidls,
        )

    return open_user_maildrop


class POP3Service(StoreService[Shared, Registry]):
    """Both POP3 listeners of the daemon (see the module docstring).

    ``stop`` ends waiting sessions with ``-ERR [SYS/TEMP]`` (nothing is deleted without
    QUIT).
    """

    name = "pop3"
    log = log
    #: Aborted sessions still close their maildrops (session locks) in the executor.
    cleanup_time = 5.0

    def __init__(self, context: Context) -> None:
        super().__init__(
            context, POP3_SERVICES, Registry(), STORE_THREADS, thread_name="pop3-store"
        )
        self._build(context)

    def _build(self, context: Context) -> None:
        shared: dict[str, Shared] = {}
        for service in POP3_SERVICES:
            shared[service] = Shared(
                config=session_config(context.settings, service),
                users=context.users,
                throttle=context.throttle,
                tls_context=partial(self._current_tls, service),
                open_maildrop=maildrop_opener(context.settings, service, self._executor),
                registry=self._registry,
                handoff=handoff_for(context.settings),
            )
        self._context = context
        self._shared = shared

    def _session(self, service: str) -> POP3Session:
        return POP3Session(self._shared[service])

    def _implicit_tls(self, service: str) -> bool:
        return service == "pop3s"


def build_pop3_service(context: Context) -> POP3Service | None:
    """The composition root's factory: None when pop3 and pop3s are both disabled."""
    return unless_idle(POP3Service(context))


def check_pop3(settings: Settings) -> list[str]:
    """Validate the POP3 services' settings (for ``roost check``)."""
    return config_problems(lambda: [session_config(settings, s) for s in POP3_SERVICES])

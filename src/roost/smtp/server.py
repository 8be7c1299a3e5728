"""The SMTP service: listeners for smtp (25), submission (587) and submissions (465).

One :class:`SMTPService` runs every enabled SMTP listener of the daemon. Each service has
its own resolved settings (``service/name`` overrides and the master.cf-like defaults of
submission and submissions), its own restriction lists and connection accounting; all
share the spool, the user database and the failed-login throttle. A reload builds new
per-service state for new connections; sessions in progress keep what they started with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Final

from roost.address import Address
from roost.config import Settings, TableError, open_table
from roost.config.lookup import CidrTable, DictTable, LookupTable, RegexpTable, StaticTable
from roost.daemon.service import Context
from roost.daemon.serving import ListeningService, config_problems
from roost.delivery.router import RecipientStatus, Router, router_from_settings
from roost.smtp.anvil import Anvil
from roost.smtp.mynetworks import NetworkMatcher, mynetworks_from
from roost.smtp.policy import (
    LISTS,
    Policy,
    TableLookupError,
    blocks_relaying,
    parse_restrictions,
)
from roost.smtp.session import SessionConfig, Shared, SMTPSession

__all__ = ["SMTP_SERVICES", "SMTPService", "build_router", "build_shared", "session_config"]

SMTP_SERVICES: Final = ("smtp", "submission", "submissions")
#: Tables held in memory: looked up on the event loop; others (LDAP) in a thread.
IN_MEMORY_TABLES: Final = (DictTable, StaticTable, CidrTable, RegexpTable)
log = logging.getLogger("roost.smtpd")


def session_config(settings: Settings, service: str) -> SessionConfig:
    """Resolve one service's settings into a :class:`SessionConfig`."""
    view = settings.for_service(service)
    return SessionConfig(
        service=service,
        hostname=view.string("myhostname"),
        banner=view.string("smtpd_banner"),
        mail_name=view.string("mail_name"),
        message_size_limit=view.size("message_size_limit"),
        recipient_limit=view.integer("smtpd_recipient_limit"),
        timeout=float(view.seconds("smtpd_timeout")),
        soft_error_limit=view.integer("smtpd_soft_error_limit"),
        hard_error_limit=view.integer("smtpd_hard_error_limit"),
        error_sleep_time=float(view.seconds("smtpd_error_sleep_time")),
        junk_command_limit=view.integer("smtpd_junk_command_limit"),
        sasl_enabled=view.boolean("smtpd_sasl_auth_enable"),
        auth_required=view.boolean("smtpd_auth_required"),
        tls_level=view.string("smtpd_tls_security_level"),
        tls_auth_only=view.boolean("smtpd_tls_auth_only"),
        wrappermode=view.boolean("smtpd_tls_wrappermode"),
        normalize_bare_lf=view.string("smtpd_forbid_bare_newline") == "normalize",
        hopcount_limit=view.integer("hopcount_limit"),
        header_size_limit=view.size("header_size_limit"),
        disable_vrfy=view.boolean("disable_vrfy_command"),
        helo_required=view.boolean("smtpd_helo_required"),
        strict_envelopes=view.boolean("strict_rfc821_envelopes"),
        smtputf8=view.boolean("smtputf8_enable"),
        submission=service != "smtp",
        peername_lookup=view.boolean("smtpd_peername_lookup"),
    )


def build_router(settings: Settings, context: Context) -> Router:
    """Build the router, with ``alias_maps`` for recipient validation.

    Raises:
        ConfigError: an alias table cannot be opened.
    """
    from roost.queue.service import open_aliases

    aliases = open_aliases(settings)
    return router_from_settings(
        settings, context.users, lambda name: aliases.lookup(name) is not None
    )


@dataclass(frozen=True, slots=True)
class _Checks:
    """The outside world of the policy (see ``roost.smtp.policy.PolicyChecks``)."""

    mynetworks: NetworkMatcher
    router: Router
    login_maps: tuple[LookupTable, ...]

    def in_mynetworks(self, address: str) -> bool:
        return address in self.mynetworks

    async def sender_domain_exists(self, domain: str) -> bool | None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.getaddrinfo(domain, None), timeout=10)
        except (OSError, TimeoutError):
            return False
        return True

    async def recipient_status(self, recipient: Address) -> RecipientStatus:
        return await self.router.recipient_status(recipient)

    async def sender_owners(self, sender: Address) -> tuple[str, ...] | None:
        for table in self.login_maps:
            for key in (f"{sender.local_part}@{sender.domain}", f"@{sender.domain}"):
                value = await self.lookup(table, key)
                if value is not None:
                    return tuple(v.strip() for v in value.replace(",", " ").split())
        return None

    async def lookup(self, table: LookupTable, key: str) -> str | None:
        if isinstance(table, IN_MEMORY_TABLES):
            return table.lookup(key)
        try:
            return await asyncio.to_thread(table.lookup, key)
        except Exception as exc:  # a remote table (LDAP) that could not answer
            log.warning("%s: lookup of %s failed: %s", table.ref, key, exc)
            raise TableLookupError(str(exc)) from None


def _open_tables(settings: Settings, name: str, refs: list[str]) -> dict[str, LookupTable]:
    tables: dict[str, LookupTable] = {}
    for ref in refs:
        try:
            tables[ref] = open_table(ref)
        except TableError as exc:
            raise settings.error(name, str(exc)) from None
    return tables


def build_shared(settings: Settings, service: str, context: Context, router: Router) -> Shared:
    """Build one service's shared session state.

    Raises:
        ConfigError: a bad restriction list, table or network, naming the parameter.
    """
    view = settings.for_service(service)
    lists = {}
    tables: dict[str, LookupTable] = {}
    for name, _ in LISTS:
        try:
            lists[name] = parse_restrictions(view.strings(name))
        except ValueError as exc:
            raise view.error(name, str(exc)) from None
        refs = [r.table for r in lists[name] if r.table is not None]
        tables.update(_open_tables(view, name, refs))
    if not blocks_relaying(lists):
        raise view.error(
            "smtpd_relay_restrictions",
            "neither it nor smtpd_recipient_restrictions has reject_unauth_destination,"
            " defer_unauth_destination or reject: that would make an open relay",
        )
    try:
        mynetworks = mynetworks_from(view.strings("mynetworks"), view.string("mynetworks_style"))
        exceptions = mynetworks_from(
            view.strings("smtpd_client_event_limit_exceptions"), view.string("mynetworks_style")
        )
    except (ValueError, TableError, OSError) as exc:
        raise view.error("mynetworks", str(exc)) from None
    login_maps = tuple(
        _open_tables(
            view, "smtpd_sender_login_maps", list(view.tables("smtpd_sender_login_maps"))
        ).values()
    )
    checks = _Checks(mynetworks, router, login_maps)
    policy = Policy(
        lists,
        tables,
        checks,
        reject_unlisted=view.boolean("smtpd_reject_unlisted_recipient"),
    )
    anvil = Anvil(
        count_limit=view.integer("smtpd_client_connection_count_limit"),
        rate_limit=view.integer("smtpd_client_connection_rate_limit"),
        window=float(view.seconds("anvil_rate_time_unit")),
        clock=time.monotonic,
        exempt=lambda address: address in exceptions,
        name=service,
    )
    return Shared(
        config=session_config(settings, service),
        policy=policy,
        router=router,
        spool=context.spool,  # type: ignore[arg-type]  # None only for roost check
        users=context.users,
        throttle=context.throttle,
        anvil=anvil,
        tls_context=lambda: context.tls.server_context(service),
        clock=context.clock,
    )


class SMTPService(ListeningService[Shared]):
    """Every SMTP listener of the daemon (see the module docstring)."""

    name = "smtpd"
    log = log

    def __init__(self, context: Context) -> None:
        super().__init__(context, SMTP_SERVICES)
        self._build(context)

    def _build(self, context: Context) -> None:
        router = build_router(context.settings, context)
        shared = {
            service: build_shared(context.settings, service, context, router)
            for service in {listener.service for listener in self._listeners}
        }
        for service, state in shared.items():  # sessions live on in the new state's set
            old = self._shared.get(service)
            if old is not None:
                state.sessions = old.sessions
        self._context = context
        self._shared = shared

    def _session(self, service: str) -> SMTPSession:
        return SMTPSession(self._shared[service])

    def _implicit_tls(self, service: str) -> bool:
        return self._shared[service].config.wrappermode

    def _session_count(self) -> int:
        return sum(len(shared.sessions) for shared in self._shared.values())

    async def stop(self, grace: float) -> None:
        """Stop accepting; let sessions finish for ``grace`` seconds; then say 421."""
        self._stop_accepting()
        sessions = {s for shared in self._shared.values() for s in shared.sessions}
        deadline = time.monotonic() + grace
        while sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            sessions = {s for s in sessions if not s.finished}
        for session in sessions:
            await session.shutdown()
        await self._closed()


def build_smtp_service(context: Context) -> SMTPService | None:
    """The composition root's factory: None when every SMTP service is disabled."""
    service = SMTPService(context)
    return service if service.listeners else None


def check_smtp(settings: Settings, context: Context) -> list[str]:
    """Validate the SMTP services' settings (for ``roost check``)."""

    def check() -> None:
        router = build_router(settings, context)
        for service in SMTP_SERVICES:
            build_shared(settings, service, context, router)

    return config_problems(check)

"""The queue manager as a daemon service: built from settings, reloaded with them."""

from __future__ import annotations

from collections.abc import Mapping

from roost.config import ConfigError, Settings, TableError
from roost.daemon.service import Context
from roost.delivery.aliasfile import AliasMaps, open_alias_maps
from roost.delivery.local import LocalTransport
from roost.delivery.mailbox import local_config
from roost.delivery.router import Destination, Router, router_from_settings
from roost.delivery.smtp import SmtpTransport, smtp_transport_from_settings
from roost.queue.manager import QueueManager, Transport
from roost.queue.schedule import RetryPolicy

__all__ = ["QueueService", "build_queue_service", "open_aliases"]


def retry_policy(settings: Settings) -> RetryPolicy:
    """The retry schedule from the ``*_backoff_time`` and ``*_lifetime`` parameters."""
    return RetryPolicy(
        minimal_backoff=settings.seconds("minimal_backoff_time"),
        maximal_backoff=settings.seconds("maximal_backoff_time"),
        queue_run_delay=settings.seconds("queue_run_delay"),
        maximal_lifetime=settings.seconds("maximal_queue_lifetime"),
        bounce_lifetime=settings.seconds("bounce_queue_lifetime"),
        delay_warning=settings.seconds("delay_warning_time"),
    )


def open_aliases(settings: Settings) -> AliasMaps:
    """Open ``alias_maps``; a missing default /etc/aliases is an empty table.

    Raises:
        ConfigError: a table cannot be opened, naming alias_maps.
    """
    refs = list(settings.tables("alias_maps"))
    try:
        return open_alias_maps(refs)
    except TableError as exc:
        if not settings.is_set("alias_maps") and "No such file" in str(exc):
            return open_alias_maps([])
        raise settings.error("alias_maps", str(exc)) from None


def _transports(local: LocalTransport, smtp: SmtpTransport) -> Mapping[Destination, Transport]:
    return {
        Destination.LOCAL: local,
        Destination.VIRTUAL: local,
        Destination.RELAY: smtp,
        Destination.OTHER: smtp,
    }


class QueueService:
    """The ``qmgr`` service around :class:`QueueManager`."""

    name = "qmgr"

    def __init__(self, context: Context) -> None:
        if context.spool is None:
            raise ConfigError([])
        self.router, local, self.smtp = self._build(context)
        settings = context.settings
        self.manager = QueueManager(
            context.spool,
            self.router,
            _transports(local, self.smtp),
            retry_policy(settings),
            hostname=settings.string("myhostname"),
            double_bounce_recipient=settings.string("2bounce_notice_recipient"),
            bounce_size_limit=settings.size("bounce_size_limit"),
            concurrency=settings.integer("default_process_limit"),
            clock=context.clock,
        )

    @staticmethod
    def _build(context: Context) -> tuple[Router, LocalTransport, SmtpTransport]:
        settings = context.settings
        aliases = open_aliases(settings)
        router = router_from_settings(
            settings, context.users, lambda name: aliases.lookup(name) is not None
        )
        assert context.spool is not None
        local = LocalTransport(
            local_config(settings), router, aliases, context.users, context.spool
        )
        local.system_delivery = context.system_delivery
        return router, local, smtp_transport_from_settings(settings)

    async def start(self) -> None:
        """Take up the queue."""
        await self.manager.start()

    async def reload(self, context: Context) -> None:
        """Rebuild routing and transports from the new settings."""
        old_smtp = self.smtp
        self.router, local, self.smtp = self._build(context)
        await self.manager.reconfigure(
            self.router, _transports(local, self.smtp), retry_policy(context.settings)
        )
        await old_smtp.close()

    async def stop(self, grace: float) -> None:
        """Let deliveries in progress finish."""
        await self.manager.stop(grace)
        await self.smtp.close()

    def status(self) -> Mapping[str, object]:
        """Queue counters."""
        return self.manager.status()


def build_queue_service(context: Context) -> QueueService | None:
    """The composition root's factory; ``master_service_disable = qmgr`` leaves mail queued."""
    disabled = {w.split("/")[0].lower() for w in context.settings.strings("master_service_disable")}
    if context.spool is None or "qmgr" in disabled:
        return None
    return QueueService(context)

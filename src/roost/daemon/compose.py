"""The composition root: the one place that builds services and injects what they need.

Each component adds its factory to :data:`FACTORIES`; a factory returns None when its
service is disabled by the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from roost.daemon.service import Context, Service
from roost.imap.server import build_imap_service
from roost.pop3.server import build_pop3_service
from roost.queue.service import build_queue_service
from roost.smtp.server import build_smtp_service

__all__ = ["FACTORIES", "MASTER_FACTORIES", "WORKER_FACTORIES", "build_services"]

ServiceFactory = Callable[[Context], Service | None]

#: Factories in start order (workers before the listeners that feed them).
FACTORIES: Final[list[ServiceFactory]] = [
    build_queue_service,
    build_smtp_service,
    build_imap_service,
    build_pop3_service,
]

#: What the master runs itself when there are worker processes (the queue manager).
MASTER_FACTORIES: Final[list[ServiceFactory]] = [build_queue_service]

#: What every worker process runs: the network-facing listeners.
WORKER_FACTORIES: Final[list[ServiceFactory]] = [
    build_smtp_service,
    build_imap_service,
    build_pop3_service,
]


def build_services(
    context: Context, factories: Sequence[ServiceFactory] = FACTORIES
) -> list[Service]:
    """Build every enabled service from the context."""
    services: list[Service] = []
    for factory in factories:
        service = factory(context)
        if service is not None:
            services.append(service)
    return services

"""The composition root: the one place that builds services and injects what they need.

Each component adds its factory to :data:`FACTORIES`; a factory returns None when its
service is disabled by the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from roost.daemon.service import Context, Service

__all__ = ["FACTORIES", "build_services"]

ServiceFactory = Callable[[Context], Service | None]

#: Factories in start order (workers before the listeners that feed them).
FACTORIES: Final[list[ServiceFactory]] = []


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

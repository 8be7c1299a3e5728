"""The composition root: the one place that builds services and injects what they need.

Each component adds its factory to :data:`FACTORIES`; a factory returns None when its
service is disabled by the settings.

A service's modules are imported only when the settings enable it (:class:`LazyFactory`):
a daemon serving IMAP alone does not carry the SMTP server, the queue manager's delivery
agents or dnspython in its processes. With worker processes the master imports the
enabled workers' modules before it forks (:func:`preload`), so that their pages stay
shared by every process (docs/performance.md, "IMAP memory, session 3").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, cast

from roost.config import Settings
from roost.daemon.listeners import service_listeners
from roost.daemon.service import Context, Service

__all__ = [
    "FACTORIES",
    "MASTER_FACTORIES",
    "WORKER_FACTORIES",
    "LazyFactory",
    "build_services",
    "preload",
]

ServiceFactory = Callable[[Context], Service | None]


@dataclass(frozen=True, slots=True)
class LazyFactory:
    """A service factory whose module is imported at the first call that may build it.

    Attributes:
        module: the module that defines the factory, e.g. ``"roost.imap.server"``.
        function: the factory's name in it (returns the service, or None when disabled).
        services: the listener services (``master.cf`` names) it serves; when none of
            them has a listener (``master_service_disable``), the factory returns None
            without importing anything. Empty: no listeners (the queue manager).
        disable: a ``master_service_disable`` word that disables it without an import
            (``qmgr``).
        uses: modules the service imports when it is built or serves (:func:`preload`
            imports them too).
    """

    module: str
    function: str
    services: tuple[str, ...] = ()
    disable: str = ""
    uses: tuple[str, ...] = ()

    def enabled(self, settings: Settings) -> bool:
        """Whether the settings may enable the service (False: certainly disabled)."""
        if self.disable:
            disabled = {w.split("/")[0].lower() for w in settings.strings("master_service_disable")}
            if self.disable in disabled:
                return False
        if self.services:
            wanted = set(self.services)
            return any(listener.service in wanted for listener in service_listeners(settings))
        return True

    def load(self) -> ServiceFactory:
        """Import the module; return the factory itself."""
        return cast(ServiceFactory, getattr(importlib.import_module(self.module), self.function))

    def __call__(self, context: Context) -> Service | None:
        if not self.enabled(context.settings):
            return None
        return self.load()(context)


#: What the IMAP and POP3 servers import to find and open a user's mailboxes.
_MAILBOX_MODULES: Final = ("roost.delivery.errors", "roost.delivery.mailbox", "sqlite3")

#: Factories in start order (workers before the listeners that feed them).
FACTORIES: Final[list[LazyFactory]] = [
    LazyFactory("roost.queue.service", "build_queue_service", disable="qmgr"),
    LazyFactory("roost.smtp.server", "build_smtp_service", ("smtp", "submission", "submissions")),
    LazyFactory(
        "roost.imap.server", "build_imap_service", ("imap", "imaps"), uses=_MAILBOX_MODULES
    ),
    LazyFactory(
        "roost.pop3.server", "build_pop3_service", ("pop3", "pop3s"), uses=_MAILBOX_MODULES
    ),
]

#: What the master runs itself when there are worker processes (the queue manager).
MASTER_FACTORIES: Final[list[LazyFactory]] = FACTORIES[:1]

#: What every worker process runs: the network-facing listeners.
WORKER_FACTORIES: Final[list[LazyFactory]] = FACTORIES[1:]


def preload(settings: Settings, factories: Sequence[LazyFactory] = WORKER_FACTORIES) -> None:
    """Import the modules of the services the settings enable and the password hashing
    modules their user database needs, and read its passwd-files (before a fork: the
    children then share these pages instead of each importing and reading its own copy)."""
    enabled = [factory for factory in factories if factory.enabled(settings)]
    for factory in enabled:
        factory.load()
        for module in factory.uses:
            importlib.import_module(module)
    if enabled:  # what the user database needs to check passwords (libpass: ~3.4 MiB)
        from roost.auth.factory import password_modules, preload_user_database
        from roost.auth.schemes import preload_libpass

        preload_libpass(password_modules(settings))
        preload_user_database(settings)  # the passwd-files' users, parsed once for all


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

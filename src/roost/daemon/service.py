"""What every network service and background worker looks like to the daemon."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from roost.auth.throttle import Throttle
from roost.auth.users import UserDatabase
from roost.config import Settings

if TYPE_CHECKING:  # imported by the services that use them (not by an IMAP-only worker)
    from roost.daemon.hibernation import HibernationLink
    from roost.delivery.privileged import SystemDelivery
    from roost.queue.spool import Spool

__all__ = ["Context", "Service", "TLSProvider"]


class TLSProvider(Protocol):
    """Gives the current server TLS context of a service; it changes on reload."""

    def server_context(self, service: str) -> ssl.SSLContext:
        """Return the TLS context for ``service`` (e.g. "smtp", "imaps").

        Raises:
            roost.tls.TLSError: the service's certificate or key cannot be loaded.
        """
        ...


@dataclass(frozen=True, slots=True)
class Context:
    """Everything the composition root hands to a service factory.

    Attributes:
        settings: the effective main.cf settings (per-service views via ``for_service``).
        tls: the TLS contexts, current as of the last reload.
        clock: wall-clock time in seconds since the epoch (injected for tests).
        spool: the mail queue, shared by the SMTP server and the queue manager.
        users: the user database (``auth_backends``), None when none is configured.
        throttle: failed-login throttling shared by SMTP, IMAP and POP3.
        system_delivery: deliveries as system users through the privileged helper (None:
            the daemon writes itself; docs/privsep.md).
        hibernation: a worker's link to the master for IMAP sessions idle in IDLE
            (``imap_hibernate_timeout``, :mod:`roost.daemon.hibernation`); None in the
            master and with ``worker_processes = 1``.
    """

    settings: Settings
    tls: TLSProvider
    clock: Callable[[], float] = time.time
    spool: Spool | None = None
    users: UserDatabase | None = None
    throttle: Throttle = field(default_factory=Throttle)
    system_delivery: SystemDelivery | None = None
    hibernation: HibernationLink | None = None


class Service(Protocol):
    """A part of the daemon with a lifecycle: SMTP, IMAP, POP3 listeners, the queue manager.

    The daemon calls ``start`` once, ``reload`` on SIGHUP with new settings (already
    validated), and ``stop`` once at shutdown.
    """

    @property
    def name(self) -> str:
        """A short name for logs and ``roost status`` ("smtp", "qmgr", ...)."""
        ...

    async def start(self) -> None:
        """Start serving (listeners are open when this returns).

        Raises:
            OSError: a listener cannot be opened; the daemon exits with the error.
        """
        ...

    async def reload(self, context: Context) -> None:
        """Adopt new settings and TLS contexts without dropping established sessions."""
        ...

    async def stop(self, grace: float) -> None:
        """Stop accepting, let sessions finish for up to ``grace`` seconds, then close."""
        ...

    def status(self) -> Mapping[str, object]:
        """Return a small JSON-able summary for ``roost status``."""
        ...

"""The lifecycle the listening services share (SMTP, IMAP, POP3).

:class:`ListeningService` keeps a service's listeners (``master.cf``-style services
resolved by :func:`roost.daemon.listeners.service_listeners`), opens them on ``start``
(implicit TLS through the TLS context of the latest reload), rebuilds the per-service
shared state on ``reload`` (sessions in progress keep theirs) and closes them on ``stop``.
:class:`StoreService` adds what IMAP and POP3 share besides: a registry of sessions, a pool
of worker threads for store calls and a graceful stop that ends waiting sessions, gives busy
ones ``shutdown_grace_time`` seconds, then aborts them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from roost.config import ConfigError
from roost.daemon.listeners import Listener, open_server, service_listeners
from roost.daemon.service import Context

__all__ = [
    "EndingSession",
    "ListeningService",
    "SessionRegistry",
    "StoreService",
    "config_problems",
    "end_sessions",
    "unless_idle",
]

SharedT = TypeVar("SharedT")
RegistryT = TypeVar("RegistryT", bound="SessionRegistry")


class ListeningService(Generic[SharedT]):
    """Listeners of one protocol and the state their sessions share, per service.

    Subclasses set ``name`` and ``log``, and define :meth:`_build` (fill ``_shared`` from a
    context; raises ``ConfigError``), :meth:`_session` (a new session's protocol) and
    :meth:`_implicit_tls` (whether a service's listeners start in TLS), then call
    ``_build`` at the end of their ``__init__``.

    Args:
        context: the composition root's context (settings, TLS, users, ...).
        services: the ``master.cf`` service names this service runs (e.g. "imap", "imaps").
    """

    name = "?"
    log = logging.getLogger("roost")

    def __init__(self, context: Context, services: Collection[str]) -> None:
        self._context = context
        self._listeners = [
            listener
            for listener in service_listeners(context.settings)
            if listener.service in services
        ]
        self._servers: list[asyncio.AbstractServer] = []
        self._shared: dict[str, SharedT] = {}
        #: Connections accepted since the start (a session was made for each).
        self.accepted = 0
        #: When the last connection on an implicit-TLS listener was accepted
        #: (``time.monotonic()``; 0.0: none yet): its session counts only from the end of
        #: its TLS handshake (:meth:`connections`).
        self.last_tls_accept = 0.0
        #: Called at each accepted connection (a worker tells the master it is in use).
        self.on_accept: Callable[[], None] | None = None

    def _build(self, context: Context) -> None:
        """Build ``_shared`` (and set ``_context``) from ``context``; raises ConfigError."""
        raise NotImplementedError

    def _session(self, service: str) -> asyncio.Protocol:
        """A new session of ``service``."""
        raise NotImplementedError

    def _implicit_tls(self, service: str) -> bool:
        """Whether ``service``'s listeners start in TLS (smtps, imaps, pop3s)."""
        raise NotImplementedError

    def _session_count(self) -> int:
        """The open sessions, for ``roost status``."""
        raise NotImplementedError

    def connections(self) -> int:
        """The client connections this service now serves: its open sessions.

        A connection on an implicit-TLS listener (smtps, imaps, pop3s) becomes a session
        when its TLS handshake ends; until then only :attr:`last_tls_accept` tells of it.
        """
        return self._session_count()

    def _accepting(self, service: str, implicit: bool) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of ``service``'s listeners: a new session, counted."""

        def accept() -> asyncio.Protocol:
            self.count_accept()
            if implicit:
                self.last_tls_accept = time.monotonic()
            return self._session(service)

        return accept

    def count_accept(self) -> None:
        """Count a connection this service now serves (accepted, or handed to it)."""
        self.accepted += 1
        if self.on_accept is not None:
            self.on_accept()

    @property
    def listeners(self) -> list[Listener]:
        """The addresses this service listens on (ports resolved after start)."""
        return self._listeners

    def _current_tls(self, service: str) -> ssl.SSLContext:
        """The TLS context of the latest reload (``_context`` changes on SIGHUP)."""
        return self._context.tls.server_context(service)

    async def start(self) -> None:
        """Open every listener.

        Raises:
            OSError: an address cannot be bound.
        """
        for listener in self._listeners:
            service = listener.service
            implicit = partial(self._current_tls, service) if self._implicit_tls(service) else None
            server = await open_server(
                listener,
                self._accepting(service, implicit is not None),
                implicit_tls=implicit,
            )
            self._servers.append(server)
            self.log.info("%s: listening on %s", service, listener)

    async def reload(self, context: Context) -> None:
        """Adopt new settings for new connections."""
        self._build(context)

    def stop_accepting(self) -> None:
        """Close this process's listening sockets (established sessions go on).

        The sockets stay open in the other worker processes: connections in the accept
        queue are taken by them (docs/architecture.md, "Process model and privileges").
        """
        self._stop_accepting()

    def _stop_accepting(self) -> None:
        """Close the listening sockets (established sessions go on)."""
        for server in self._servers:
            server.close()

    async def _closed(self) -> None:
        """Wait until the listeners are closed and forget them."""
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def status(self) -> Mapping[str, object]:
        """Listeners and open sessions."""
        return {
            "listeners": [f"{listener.service} {listener}" for listener in self._listeners],
            "accepted": self.accepted,  # since this process started
            "sessions": self._session_count(),
        }


class EndingSession(Protocol):
    """A session that can be asked to end (IMAP ``* BYE``, POP3 ``-ERR [SYS/TEMP]``)."""

    def shutdown(self) -> None:
        """End the session when it is waiting for a command."""
        ...

    def abort(self) -> None:
        """Close the connection now (the session still cleans up)."""
        ...

    @property
    def done(self) -> bool:
        """Whether the session has finished its clean-up."""
        ...


class SessionRegistry(Protocol):
    """The open sessions of a service (IMAP and POP3 ``Registry``)."""

    @property
    def sessions(self) -> Collection[EndingSession]:
        """The sessions now open."""
        ...


async def _wait_done(sessions: Collection[EndingSession], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(not s.done for s in sessions):
        await asyncio.sleep(0.05)


async def end_sessions(sessions: Collection[EndingSession], grace: float, cleanup: float) -> None:
    """Ask ``sessions`` to end, give them ``grace`` seconds, abort the rest.

    Aborted sessions get ``cleanup`` more seconds to close their mailboxes or maildrops.
    """
    for session in sessions:
        session.shutdown()
    await _wait_done(sessions, grace)
    for session in sessions:
        if not session.done:
            session.abort()
    await _wait_done(sessions, cleanup)


class StoreService(ListeningService[SharedT], Generic[SharedT, RegistryT]):
    """A listening service with a session registry and store threads (IMAP, POP3).

    ``_registry`` is the one registry of every listener of the service; the worker
    processes swap its count dicts for shared ones (:func:`roost.daemon.shared.share_registry`).

    Args:
        context: as for :class:`ListeningService`.
        services: as for :class:`ListeningService`.
        registry: the service's empty registry.
        threads: worker threads for store calls.
        thread_name: the threads' name prefix.
    """

    #: Seconds aborted sessions get to close their mailboxes before the listeners close.
    cleanup_time = 2.0

    def __init__(
        self,
        context: Context,
        services: Collection[str],
        registry: RegistryT,
        threads: int,
        thread_name: str,
    ) -> None:
        super().__init__(context, services)
        self._registry = registry
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=thread_name)

    def _session_count(self) -> int:
        return len(self._registry.sessions)

    async def stop(self, grace: float) -> None:
        """Stop accepting; end waiting sessions; give busy ones ``grace`` seconds."""
        self._stop_accepting()
        await end_sessions(set(self._registry.sessions), grace, self.cleanup_time)
        await self._closed()
        self._executor.shutdown(wait=False, cancel_futures=True)


ServiceT = TypeVar("ServiceT", bound="StoreService[Any, Any]")


def unless_idle(service: ServiceT) -> ServiceT | None:
    """The composition root's factory result: None (threads stopped) without listeners."""
    if not service.listeners:
        service._executor.shutdown(wait=False)
        return None
    return service


def config_problems(check: Callable[[], object]) -> list[str]:
    """Run ``check`` (builds a service's settings); the problems of the ConfigError it
    raises, as text for ``roost check`` (empty: the settings are good)."""
    try:
        check()
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []

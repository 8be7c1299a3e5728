"""Per-destination scheduling for the smtp transport, like Postfix's qmgr and scache.

A destination is a next hop as the route names it (``example.org``, ``[relay]:587``):

- :class:`DeadDestinations` (pure): after ``*_destination_concurrency_failed_cohort_limit``
  consecutive deliveries that could not connect to any server of a destination, it is
  *dead*: its mail is deferred at once ("delivery temporarily suspended") for
  ``minimal_backoff_time`` while other destinations flow; a flush revives it.
- :func:`split_recipients` (pure): ``*_destination_recipient_limit`` recipients per
  transaction.
- :class:`DestinationSlots`: ``*_destination_concurrency_limit`` deliveries at a time per
  destination.
- :class:`ConnectionCache`: idle connections kept ``smtp_connection_cache_time_limit``
  for the next message to the same destination (Postfix's scache).

See Also: Postfix qmgr(8) "dead destination", SCHEDULER_README, CONNECTION_CACHE_README.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["ConnectionCache", "DeadDestinations", "DestinationSlots", "split_recipients"]

T = TypeVar("T")


def split_recipients(items: Sequence[T], limit: int) -> list[Sequence[T]]:
    """Cut ``items`` into pieces of at most ``limit`` (``limit`` < 1: one piece)."""
    if limit < 1 or len(items) <= limit:
        return [items] if items else []
    return [items[start : start + limit] for start in range(0, len(items), limit)]


@dataclass(slots=True)
class _Health:
    failures: int = 0
    dead_until: float = 0.0
    dsn: str = "4.4.1"
    reason: str = ""


class DeadDestinations:
    """Which destinations are dead, from the outcome of each delivery (no I/O).

    Args:
        failure_limit: consecutive failed deliveries that make a destination dead
            (Postfix ``default_destination_concurrency_failed_cohort_limit``).
        dead_time: seconds a dead destination stays suspended (``minimal_backoff_time``,
            as Postfix's qmgr).
    """

    def __init__(self, failure_limit: int = 1, dead_time: float = 300.0) -> None:
        self.failure_limit = max(1, failure_limit)
        self.dead_time = dead_time
        self._health: dict[str, _Health] = {}

    def failed(self, key: str, dsn: str, reason: str, now: float) -> bool:
        """A delivery to ``key`` could not connect to any server; True if it is now dead."""
        health = self._health.setdefault(key, _Health())
        health.failures += 1
        health.dsn, health.reason = dsn, reason
        if health.failures >= self.failure_limit:
            health.dead_until = now + self.dead_time
            return True
        return False

    def succeeded(self, key: str) -> None:
        """A delivery to ``key`` reached a server: it is alive."""
        self._health.pop(key, None)

    def suspended(self, key: str, now: float) -> tuple[str, str] | None:
        """(dsn, reason) when ``key`` is dead at ``now``, else None."""
        health = self._health.get(key)
        if health is None or health.dead_until <= now:
            return None
        return health.dsn, f"delivery temporarily suspended: {health.reason}"

    def revive(self, key: str) -> None:
        """Forget that ``key`` is dead (a queue flush tries dead destinations too)."""
        health = self._health.get(key)
        if health is not None:
            health.dead_until = 0.0


class DestinationSlots:
    """At most ``limit`` concurrent deliveries per destination.

    Args:
        limit: ``smtp_destination_concurrency_limit``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    def slot(self, key: str) -> _Slot:
        """Hold one of ``key``'s slots for the ``async with`` block.

        (An object with ``__aenter__``/``__aexit__`` rather than an
        ``asynccontextmanager``: it is entered once per delivery, and the generator
        machinery cost more than the semaphore.)
        """
        return _Slot(self, key)

    def _enter(self, key: str) -> asyncio.Semaphore:
        semaphore = self._semaphores.get(key)
        if semaphore is None:
            semaphore = self._semaphores[key] = asyncio.Semaphore(self.limit)
        self._users[key] = self._users.get(key, 0) + 1
        return semaphore

    def _leave(self, key: str) -> None:
        self._users[key] -= 1
        if not self._users[key]:
            del self._users[key]
            del self._semaphores[key]

    def waiting_or_active(self, key: str) -> int:
        """Deliveries to ``key`` in progress or waiting for a slot."""
        return self._users.get(key, 0)


class _Slot:
    """One use of :meth:`DestinationSlots.slot`."""

    __slots__ = ("_key", "_semaphore", "_slots")

    def __init__(self, slots: DestinationSlots, key: str) -> None:
        self._slots = slots
        self._key = key
        self._semaphore: asyncio.Semaphore | None = None

    async def __aenter__(self) -> None:
        semaphore = self._slots._enter(self._key)
        try:
            await semaphore.acquire()
        except BaseException:
            self._slots._leave(self._key)
            raise
        self._semaphore = semaphore

    async def __aexit__(self, *exc_info: object) -> None:
        semaphore, self._semaphore = self._semaphore, None
        if semaphore is not None:
            semaphore.release()
            self._slots._leave(self._key)


class ConnectionCache(Generic[T]):
    """Idle connections per destination, each closed after ``idle_time`` unused.

    Expiry is swept by one timer for the whole cache, armed for the oldest idle
    connection, rather than a timer per connection: a connection is put back and taken
    again for every message, and a timer each time cost more than the rest of the cache.

    Args:
        idle_time: seconds an idle connection is kept (0: none are kept).
        close: closes a connection politely (QUIT); errors are the callee's to swallow.
        per_key: at most this many idle connections per destination.
    """

    def __init__(
        self, idle_time: float, close: Callable[[T], Coroutine[Any, Any, None]], per_key: int = 20
    ) -> None:
        self.idle_time = idle_time
        self._close = close
        self.per_key = per_key
        # per destination, oldest first: (connection, when it expires: time.monotonic())
        self._idle: dict[str, list[tuple[T, float]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def put(self, key: str, connection: T) -> None:
        """Keep ``connection`` for the next delivery to ``key`` (or close it)."""
        entries = self._idle.get(key)
        if entries is None:
            entries = self._idle[key] = []
        if self.idle_time <= 0 or len(entries) >= self.per_key:
            if not entries:
                del self._idle[key]
            self._spawn_close(connection)
            return
        # time.monotonic(), not the loop's clock: asyncio.get_running_loop() costs a getpid()
        # system call (its fork check), and this runs for every message
        expires = time.monotonic() + self.idle_time
        entries.append((connection, expires))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_time, self._sweep)

    def take(self, key: str) -> T | None:
        """The idle connection to ``key`` that has waited longest, or None.

        Oldest first (not the most recently used): while mail flows to a destination every
        cached connection is used in turn and none idles out, so a destination that needs
        its 20 connections only most of the time keeps them open rather than closing a few
        at each lull and opening them again.
        """
        entries = self._idle.get(key)
        if not entries:
            return None
        connection, _ = entries.pop(0)
        if not entries:
            del self._idle[key]
        return connection

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._idle.values())

    def _sweep(self) -> None:
        """Close the connections idle for ``idle_time``; re-arm for the next to expire."""
        self._sweeper = None
        now = time.monotonic() + 0.001  # a timer may fire a little early (millisecond clocks)
        earliest: float | None = None
        for key in list(self._idle):
            entries = self._idle[key]
            expired = 0
            while expired < len(entries) and entries[expired][1] <= now:
                expired += 1
            for connection, _ in entries[:expired]:
                self._spawn_close(connection)
            del entries[:expired]
            if not entries:
                del self._idle[key]
            elif earliest is None or entries[0][1] < earliest:
                earliest = entries[0][1]
        if earliest is not None:
            delay = max(0.0, earliest - time.monotonic())
            self._sweeper = asyncio.get_running_loop().call_later(delay, self._sweep)

    def _spawn_close(self, connection: T) -> None:
        task = asyncio.get_running_loop().create_task(self._close(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_all(self, timeout: float | None = None) -> None:
        """Close every idle connection; wait up to ``timeout`` for the closes in progress."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for entries in self._idle.values():
            for connection, _ in entries:
                self._spawn_close(connection)
        self._idle.clear()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=timeout)

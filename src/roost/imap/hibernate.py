"""One timer for every hibernated IMAP session of an event loop.

A session in IDLE with nothing to do *hibernates* (as Dovecot's ``imap_hibernate_timeout``
moves such a connection to its ``imap-hibernate`` process): its task ends, and with it
its coroutine frames and its wait's future and timer. What is left is the session object
(its slots; the sans-IO connection reduced to its parked state when nothing is buffered;
the selected mailbox, suspended and packed into one compressed string, without its
``dovecot-uidlist`` reader and its lock template), which the transport keeps as its
protocol. Client input, the connection's end, a change
notification of the selected mailbox or a shutdown starts a new task
(:meth:`roost.imap.session.IMAPSession._wake`), which carries on where the old one
stopped. So does the session's next deadline (the ``mailbox_idle_check_interval`` poll,
the ``imap_idle_notify_interval`` keepalive): those are kept here, in one heap per event
loop with one timer for its earliest entry, instead of one timer per session.

:class:`HeapTrim` gives the C heap's free pages back once sessions have settled: what a
burst of logins and SELECTs used for a moment (SQLite's page caches, in the store threads'
malloc arena too) leaves free pages among the ones the idle sessions keep.

See docs/performance.md, "IMAP idle memory, session 5" and "IMAP idle memory per
connection, session 7".
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from typing import Final, Protocol

__all__ = ["Alarms", "HeapTrim", "Sleeper"]

logger = logging.getLogger("roost.imap")

#: A deadline this close (seconds) counts as reached: the loop's timers have millisecond
#: resolution, and a session woken a hair early would only hibernate again.
SLACK: Final = 0.005

#: Entries before the first clean-up of stale ones (:meth:`Alarms.add`).
_MIN_LIMIT: Final = 256

#: :class:`HeapTrim`: seconds from the first request to the trim, and the least seconds
#: between two trims.
TRIM_DELAY: Final = 1.0
TRIM_INTERVAL: Final = 3.0


class Sleeper(Protocol):
    """A hibernated session, as :class:`Alarms` sees it."""

    def _alarm(self, when: float) -> None:
        """The deadline ``when`` (``time.monotonic()`` seconds) was reached; the session
        ignores a deadline it no longer has (it woke up and set another meanwhile)."""

    def _alarm_pending(self, when: float) -> bool:
        """Whether the session still sleeps until ``when`` (else the entry is stale)."""


class Alarms:
    """The deadlines of hibernated sessions: a heap and one loop timer.

    Entries are not removed when a session wakes up early; the session ignores the
    stale alarm (:meth:`Sleeper._alarm`). Stale entries keep their session object alive
    until their deadline (up to the inactivity timeout), so when the heap has grown to
    twice its size after the last clean-up, :meth:`add` drops them (amortized O(1) per
    entry). Use on the event loop's thread only.
    """

    __slots__ = ("_count", "_heap", "_limit", "_timer", "_timer_at")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Sleeper]] = []
        self._count = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._limit = _MIN_LIMIT

    def __len__(self) -> int:
        """Entries pending (stale ones included)."""
        return len(self._heap)

    def add(self, when: float, sleeper: Sleeper) -> None:
        """Call ``sleeper._alarm(when)`` at ``when`` (``time.monotonic()`` seconds) or
        just after. Needs a running event loop."""
        heap = self._heap
        if len(heap) >= self._limit:
            heap[:] = [entry for entry in heap if entry[2]._alarm_pending(entry[0])]
            heapq.heapify(heap)
            self._limit = max(_MIN_LIMIT, 2 * len(heap))
        heapq.heappush(heap, (when, next(self._count), sleeper))
        if self._timer is None or when < self._timer_at:
            self._arm(asyncio.get_running_loop())

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            when = self._heap[0][0]
            self._timer_at = when
            self._timer = loop.call_later(max(0.0, when - time.monotonic()), self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        heap = self._heap
        due = time.monotonic() + SLACK
        while heap and heap[0][0] <= due:
            when, _, sleeper = heapq.heappop(heap)
            try:
                sleeper._alarm(when)
            except Exception:
                logger.exception("waking a hibernated session failed")
        self._arm(loop)


class HeapTrim:
    """``malloc_trim(0)`` once sessions have settled, at most every :data:`TRIM_INTERVAL`.

    :meth:`soon` is called when a session hibernates or ends: the first call after a trim
    arms one loop timer, :data:`TRIM_DELAY` seconds later but not before
    :data:`TRIM_INTERVAL` seconds after the last trim; calls while it is armed change
    nothing. So a steady stream of wake-ups trims every few seconds, not never. A trim
    takes about a millisecond, on the loop's thread; with 550 idle sessions in two
    workers it gave back about 2.8 MiB of free heap pages (the main heap and the store
    threads' arena). No-op without glibc. Use on the event loop's thread only.
    """

    __slots__ = ("_last", "_timer")

    def __init__(self) -> None:
        self._last = -TRIM_INTERVAL
        self._timer: asyncio.TimerHandle | None = None

    def soon(self) -> None:
        """Trim in :data:`TRIM_DELAY` seconds or later (see the class), unless a trim is
        already due. Needs a running event loop."""
        if self._timer is None:
            now = time.monotonic()
            delay = max(TRIM_DELAY, self._last + TRIM_INTERVAL - now)
            self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._last = time.monotonic()
        try:
            from roost.daemon.workers import release_free_heap

            release_free_heap()
        except Exception:
            logger.exception("trimming the heap failed")

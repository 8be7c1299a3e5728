"""Per-client connection counts and rates, like Postfix's anvil(8) (sans-IO).

``smtpd_client_connection_count_limit``: simultaneous connections per client address;
``smtpd_client_connection_rate_limit``: new connections per client address per
``anvil_rate_time_unit``. Clients in ``smtpd_client_event_limit_exceptions`` (default
``$mynetworks``) are exempt. Memory is bounded: idle entries are pruned.

Postfix runs anvil as one service for every smtpd process. Roost's worker processes
(``worker_processes``) each keep their own counts and share them: every process-wide
:data:`PEERS` holds what the other processes reported (through the master) and hands this
process's arrivals and departures to its ``emit`` hook. Without worker processes ``emit``
is None and :data:`PEERS` stays empty.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["PEERS", "Anvil", "AnvilPeers", "Verdict"]

#: ``[kind, name, address, at]``: kind ``"arrive"`` (an admitted connection), ``"refuse"``
#: (a refused one: counts for the rate only), ``"leave"`` or ``"hold"`` (an open connection,
#: in a snapshot for a new process); the Anvil's name (the SMTP
#: service); the client address; the monotonic time in seconds.
AnvilEvent = list[object]


class AnvilPeers:
    """The other processes' connections, per (anvil name, client address).

    Attributes:
        emit: sends this process's events to the others; None without worker processes.
    """

    def __init__(self) -> None:
        self.emit: Callable[[AnvilEvent], None] | None = None
        self.active: dict[tuple[str, str], int] = {}
        self.arrivals: dict[tuple[str, str], deque[float]] = {}

    def apply(self, event: AnvilEvent) -> None:
        """Account an event of another process."""
        kind, name, address, at = event
        key = (str(name), str(address))
        if kind in ("arrive", "refuse"):
            arrivals = self.arrivals.setdefault(key, deque())
            arrivals.append(float(at))  # type: ignore[arg-type]
            if len(arrivals) > 10000:
                arrivals.popleft()
        if kind in ("arrive", "hold"):  # hold: a snapshot's open connection
            self.active[key] = self.active.get(key, 0) + 1
        elif kind == "leave":
            left = self.active.get(key, 0) - 1
            if left > 0:
                self.active[key] = left
            else:
                self.active.pop(key, None)

    def counts(self, name: str, address: str, since: float) -> tuple[int, int]:
        """Return (active connections, arrivals after ``since``) of the other processes."""
        key = (name, address)
        arrivals = self.arrivals.get(key)
        recent = 0
        if arrivals is not None:
            while arrivals and arrivals[0] <= since:
                arrivals.popleft()
            recent = len(arrivals)
            if not arrivals and key not in self.active:
                del self.arrivals[key]
        return self.active.get(key, 0), recent


#: The process-wide view of the other worker processes.
PEERS: Final = AnvilPeers()


@dataclass(slots=True)
class _Client:
    active: int = 0
    arrivals: deque[float] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a new connection may proceed, and why not."""

    allowed: bool
    reason: str = ""  # "count" or "rate"


class Anvil:
    """Connection accounting for one service.

    Args:
        count_limit: simultaneous connections per address (0: no limit).
        rate_limit: connections per ``window`` seconds per address (0: no limit).
        window: the rate's time unit in seconds.
        clock: monotonic seconds.
        exempt: tells whether an address is exempt.
        name: what the counts are shared under between worker processes (the service).
    """

    def __init__(
        self,
        *,
        count_limit: int,
        rate_limit: int,
        window: float,
        clock: Callable[[], float],
        exempt: Callable[[str], bool],
        name: str = "smtpd",
    ) -> None:
        self.name = name
        self.count_limit = count_limit
        self.rate_limit = rate_limit
        self.window = window
        self._clock = clock
        self._exempt = exempt
        self._clients: dict[str, _Client] = {}

    def connect(self, address: str) -> Verdict:
        """Account a new connection; refused ones are not counted as active.

        With both limits off (0) nothing is counted, and nothing is sent to the other
        worker processes.
        """
        if (not self.count_limit and not self.rate_limit) or self._exempt(address):
            return Verdict(True)
        now = self._clock()
        client = self._clients.setdefault(address, _Client())
        while client.arrivals and client.arrivals[0] <= now - self.window:
            client.arrivals.popleft()
        client.arrivals.append(now)
        emit = PEERS.emit
        others_active, others_recent = (
            (0, 0) if emit is None else PEERS.counts(self.name, address, now - self.window)
        )
        verdict = Verdict(True)
        if self.rate_limit and len(client.arrivals) + others_recent > self.rate_limit:
            verdict = Verdict(False, "rate")
        elif self.count_limit and client.active + others_active >= self.count_limit:
            verdict = Verdict(False, "count")
        else:
            client.active += 1
        if emit is not None:
            emit(["arrive" if verdict.allowed else "refuse", self.name, address, now])
        return verdict

    def disconnect(self, address: str) -> None:
        """Account the end of an allowed connection."""
        client = self._clients.get(address)
        if client is None:
            return
        if PEERS.emit is not None and client.active > 0:
            PEERS.emit(["leave", self.name, address, self._clock()])
        client.active = max(0, client.active - 1)
        if client.active == 0 and not client.arrivals:
            del self._clients[address]
        elif len(self._clients) > 10000:
            self._prune()

    def _prune(self) -> None:
        cutoff = self._clock() - self.window
        for address in [a for a, c in self._clients.items() if c.active == 0]:
            client = self._clients[address]
            if not client.arrivals or client.arrivals[-1] <= cutoff:
                del self._clients[address]

"""Per-client connection counts and rates, like Postfix's anvil(8) (sans-IO).

``smtpd_client_connection_count_limit``: simultaneous connections per client address;
``smtpd_client_connection_rate_limit``: new connections per client address per
``anvil_rate_time_unit``. Clients in ``smtpd_client_event_limit_exceptions`` (default
``$mynetworks``) are exempt. Memory is bounded: idle entries are pruned.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Anvil", "Verdict"]


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
    """

    def __init__(
        self,
        *,
        count_limit: int,
        rate_limit: int,
        window: float,
        clock: Callable[[], float],
        exempt: Callable[[str], bool],
    ) -> None:
        self.count_limit = count_limit
        self.rate_limit = rate_limit
        self.window = window
        self._clock = clock
        self._exempt = exempt
        self._clients: dict[str, _Client] = {}

    def connect(self, address: str) -> Verdict:
        """Account a new connection; refused ones are not counted as active."""
        if self._exempt(address):
            return Verdict(True)
        now = self._clock()
        client = self._clients.setdefault(address, _Client())
        while client.arrivals and client.arrivals[0] <= now - self.window:
            client.arrivals.popleft()
        client.arrivals.append(now)
        if self.rate_limit and len(client.arrivals) > self.rate_limit:
            return Verdict(False, "rate")
        if self.count_limit and client.active >= self.count_limit:
            return Verdict(False, "count")
        client.active += 1
        return Verdict(True)

    def disconnect(self, address: str) -> None:
        """Account the end of an allowed connection."""
        client = self._clients.get(address)
        if client is None:
            return
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

"""Sans-IO failed-authentication throttling, shared by SMTP AUTH, IMAP and POP3.

Modelled on Dovecot's auth penalty (``src/auth/auth-penalty.c``): after ``n`` failures a
client waits ``2**(n-1)`` seconds, at most ``max_delay`` (15 s), before its next attempt
is answered. Two kinds of keys are counted, across all protocols:

* the client address (IPv6 addresses grouped by their first ``ipv6_prefix`` bits, 48 as in
  Dovecot, so one host cannot dodge the count by hopping addresses in its subnet;
  IPv4-mapped IPv6 counts as IPv4);
* the login name (lowercased), so guessing one account from many addresses is slowed too.

The delay is the larger of the two and counts from the last failure: a client that waited
on its own is not delayed again. A client or login that never failed is never delayed.

Refusal is per address only: after ``refuse_after`` failures, each within ``window``
seconds of the one before, :meth:`Throttle.refused` is true until ``window`` seconds have
passed since the last failure; the protocol answers with a temporary failure (SMTP
``421 4.7.0`` or ``454 4.7.0``, IMAP ``NO [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``) without
checking the password. Login names only add delay, never refusal, so nobody can lock a
victim out by failing on purpose; they can slow the victim by at most ``max_delay``.

A success clears the login name's count but not the address's: an attacker who owns one
account cannot reset its address count by logging in between guesses at other accounts.
A real user who mistyped keeps a short, decaying delay on that address.

Memory is bounded: entries are dropped ``window`` seconds after their last failure, and
beyond ``max_keys`` tracked keys the one with the oldest failure is evicted.

With worker processes (``worker_processes``) each process keeps a replica: every local
:meth:`Throttle.record_failure` and :meth:`Throttle.record_success` is also handed to
:attr:`Throttle.on_event` as a :data:`ThrottleEvent`, which the daemon sends through the
master to the other processes, where :meth:`Throttle.apply` replays it with its original
time (``time.monotonic`` is one clock for every process of the host).

Usage in a protocol session (``sleep`` is the protocol's own)::

    if throttle.refused(peer):
        reply temporary failure; close
    await asyncio.sleep(throttle.delay_for(peer, authcid))
    result = await users.verify(authcid, password, remote_address=peer)
    if result.ok:
        throttle.record_success(peer, authcid)
    elif not result.failure.temporary:
        throttle.record_failure(peer, authcid)
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from roost.auth._net import parse_ip

__all__ = ["Throttle", "ThrottleEvent"]

_MAX_EXPONENT: Final = 62

#: ``(kind, address, login, at)``: kind ``"failure"`` or ``"success"``, the client address,
#: the login name or None, and the clock time of the event in seconds.
ThrottleEvent = tuple[str, str, str | None, float]


@dataclass(slots=True)
class _Record:
    failures: int
    last_failure: float


class Throttle:
    """Failed-authentication bookkeeping with an injected clock. Not thread-safe: use it
    from the event loop only.

    Args:
        clock: returns the current time in seconds, monotonic (``time.monotonic``).
        max_delay: the longest delay in seconds (Dovecot ``AUTH_PENALTY_MAX_SECS``, 15).
        refuse_after: failures from one address after which it is refused.
        window: seconds after an address's or login's last failure at which its count is
            forgotten.
        max_keys: most addresses plus login names tracked at once.
        ipv6_prefix: prefix length in bits that groups IPv6 client addresses.

    Raises:
        ValueError: a negative delay, ``refuse_after`` or ``max_keys`` below 1, a
            non-positive window, or a prefix outside 0..128.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_delay: float = 15.0,
        refuse_after: int = 10,
        window: float = 300.0,
        max_keys: int = 100_000,
        ipv6_prefix: int = 48,
    ) -> None:
        if max_delay < 0:
            raise ValueError("max_delay must not be negative")
        if refuse_after < 1:
            raise ValueError("refuse_after must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be between 0 and 128")
        self._clock = clock
        self._max_delay = max_delay
        self._refuse_after = refuse_after
        self._window = window
        self._max_keys = max_keys
        self._ipv6_prefix = ipv6_prefix
        # Keyed by ("ip", address) / ("login", name); ordered by last failure, oldest first.
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()
        #: Called with every local failure and success (worker processes share them).
        self.on_event: Callable[[ThrottleEvent], None] | None = None

    def __len__(self) -> int:
        """The number of tracked keys (addresses plus login names)."""
        return len(self._records)

    def delay_for(self, address: str, login: str | None = None) -> float:
        """Seconds to wait before answering this client's next authentication attempt.

        Args:
            address: the client's IP address (any other text is counted as is).
            login: the login name being tried, when known.

        Returns:
            0.0 for clients and logins without recent failures; otherwise what remains of
            ``min(2**(n-1), max_delay)`` seconds after the last failure, the larger of the
            address's and the login's.
        """
        now = self._clock()
        delay = self._remaining(self._address_key(address), now)
        if login is not None:
            delay = max(delay, self._remaining(("login", login.lower()), now))
        return delay

    def refused(self, address: str) -> bool:
        """Whether the address has failed ``refuse_after`` times within the window and
        must get a temporary failure without a password check."""
        record = self._live(self._address_key(address), self._clock())
        return record is not None and record.failures >= self._refuse_after

    def record_failure(self, address: str, login: str | None = None) -> None:
        """Count one failed attempt (a wrong password or unknown user, not a backend error)
        for the address and, when given, the login name."""
        now = self._clock()
        self._failure(address, login, now)
        if self.on_event is not None:
            self.on_event(("failure", address, login, now))

    def record_success(self, address: str, login: str | None = None) -> None:
        """Note a successful login: forget the login name's failures (see the module
        docstring for why the address's are kept)."""
        if login is not None:
            self._records.pop(("login", login.lower()), None)
            if self.on_event is not None:
                self.on_event(("success", address, login, self._clock()))

    def apply(self, event: ThrottleEvent) -> None:
        """Replay an event recorded by another process (not handed to :attr:`on_event`).

        Raises:
            ValueError: the event's kind is neither ``"failure"`` nor ``"success"``.
        """
        kind, address, login, at = event
        if kind == "failure":
            self._failure(address, login, at)
        elif kind == "success":
            if login is not None:
                self._records.pop(("login", login.lower()), None)
        else:
            raise ValueError(f"unknown throttle event {kind!r}")

    def snapshot(self) -> list[tuple[str, str, int, float]]:
        """Every live record as ``(kind, key, failures, last_failure)``, oldest first (for a
        new worker process; see :meth:`restore`)."""
        self._prune(self._clock())
        return [(k, v, r.failures, r.last_failure) for (k, v), r in self._records.items()]

    def restore(self, records: list[tuple[str, str, int, float]]) -> None:
        """Take over the records of :meth:`snapshot` (replacing those with the same key)."""
        for kind, value, failures, last_failure in records:
            self._records[(kind, value)] = _Record(int(failures), float(last_failure))
            self._records.move_to_end((kind, value))

    def _failure(self, address: str, login: str | None, now: float) -> None:
        self._prune(now)
        self._bump(self._address_key(address), now)
        if login is not None:
            self._bump(("login", login.lower()), now)
        while len(self._records) > self._max_keys:
            self._records.popitem(last=False)

    # --- internals ---------------------------------------------------------------------

    def _address_key(self, address: str) -> tuple[str, str]:
        parsed = parse_ip(address)
        if parsed is None:
            return ("ip", address)
        if isinstance(parsed, ipaddress.IPv6Address):
            network = ipaddress.IPv6Network((parsed, self._ipv6_prefix), strict=False)
            return ("ip", str(network))
        return ("ip", str(parsed))

    def _live(self, key: tuple[str, str], now: float) -> _Record | None:
        record = self._records.get(key)
        if record is None:
            return None
        if now - record.last_failure > self._window:
            del self._records[key]
            return None
        return record

    def _remaining(self, key: tuple[str, str], now: float) -> float:
        record = self._live(key, now)
        if record is None:
            return 0.0
        penalty = min(float(2 ** min(record.failures - 1, _MAX_EXPONENT)), self._max_delay)
        elapsed = max(now - record.last_failure, 0.0)
        return max(penalty - elapsed, 0.0)

    def _bump(self, key: tuple[str, str], now: float) -> None:
        record = self._live(key, now)
        if record is None:
            self._records[key] = _Record(failures=1, last_failure=now)
            return
        record.failures += 1
        record.last_failure = max(record.last_failure, now)
        self._records.move_to_end(key)

    def _prune(self, now: float) -> None:
        while self._records:
            key, record = next(iter(self._records.items()))
            if now - record.last_failure <= self._window:
                return
            del self._records[key]

"""The retry schedule of deferred mail (sans-IO, tested with a fake clock).

Postfix's semantics (postconf(5)):

- a new message is tried at once;
- after a temporary failure the next try waits twice as long as the previous wait,
  starting at ``minimal_backoff_time`` and never more than ``maximal_backoff_time``;
- ``queue_run_delay`` is how often the deferred queue is scanned; here every deferred
  message also has its own timer, so the scan only catches what a timer missed;
- a message still undelivered ``maximal_queue_lifetime`` after arrival (for a bounce,
  with the null sender: ``bounce_queue_lifetime``) is returned: its deferred recipients
  bounce with the last reason;
- with ``delay_warning_time`` set (0 disables it), one "delayed" DSN is sent to the
  envelope sender once the message is that old.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry parameters, all in seconds.

    Attributes:
        minimal_backoff: ``minimal_backoff_time`` (300).
        maximal_backoff: ``maximal_backoff_time`` (4000).
        queue_run_delay: ``queue_run_delay`` (300).
        maximal_lifetime: ``maximal_queue_lifetime`` (5 days).
        bounce_lifetime: ``bounce_queue_lifetime`` (5 days), for null-sender mail.
        delay_warning: ``delay_warning_time`` (0: no delay warnings).
    """

    minimal_backoff: float = 300
    maximal_backoff: float = 4000
    queue_run_delay: float = 300
    maximal_lifetime: float = 5 * 86400
    bounce_lifetime: float = 5 * 86400
    delay_warning: float = 0

    def backoff(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed try (1-based), in seconds."""
        wait = self.minimal_backoff * float(2 ** min(max(0, attempts - 1), 60))
        return min(max(wait, self.minimal_backoff), max(self.maximal_backoff, self.minimal_backoff))

    def next_try(self, attempts: int, now: float) -> float:
        """When to try again after ``attempts`` failed tries, as epoch seconds."""
        return now + self.backoff(attempts)

    def expired(self, arrival: float, now: float, *, null_sender: bool) -> bool:
        """Tell whether a message is too old to be tried again."""
        lifetime = self.bounce_lifetime if null_sender else self.maximal_lifetime
        return now - arrival >= lifetime

    def wants_delay_warning(self, arrival: float, now: float, *, already_sent: bool) -> bool:
        """Tell whether a delay DSN is due now."""
        return bool(self.delay_warning) and not already_sent and now - arrival >= self.delay_warning

"""Queue IDs: unique, 13 characters, sortable by arrival time.

A queue ID names one message in the spool (its queue file ``ID`` and, after an update,
``ID.env``) and appears on every log line about that message, as in Postfix.

Format, modelled on Postfix's long queue IDs (``enable_long_queue_ids = yes``)::

    SSSSSS UUUU TTT
    |      |    +-- 3 chars: tag chosen at random once per process (52**3 = 140,608 values)
    |      +------- 4 chars: microseconds within that second (0..999,999)
    +-------------- 6 chars: seconds since the Unix epoch (good until the year 2596)

Each part is fixed-width base 52 over Postfix's alphabet ``0-9``, ``B-Z`` and ``b-z``
without vowels (so IDs never spell words). The alphabet is in ASCII order, so plain string
comparison of two IDs compares their times first: ``sorted(ids)`` is arrival order.

Within one process IDs are strictly increasing even if the clock stands still or steps back
(the time part is bumped by one microsecond past the last ID handed out). Across processes
(the daemon and ``sendmail`` writing to ``maildrop/``) the random tag keeps IDs apart; a
clash also needs the same microsecond, and the spool creates files with ``O_EXCL``.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Final, TypeAlias

__all__ = ["QUEUE_ID_LENGTH", "QueueIdGenerator", "is_queue_id", "queue_id_time"]

#: Postfix's base-52 alphabet (src/global/mail_queue.h): digits and consonants, ASCII order.
ALPHABET: Final = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"
_BASE: Final = len(ALPHABET)
_SECONDS_WIDTH: Final = 6
_MICROS_WIDTH: Final = 4
_TAG_WIDTH: Final = 3
#: Length of every queue ID in characters.
QUEUE_ID_LENGTH: Final = _SECONDS_WIDTH + _MICROS_WIDTH + _TAG_WIDTH
_QUEUE_ID_RE: Final = re.compile(f"[{re.escape(ALPHABET)}]{{{QUEUE_ID_LENGTH}}}")
_DIGIT_VALUE: Final = {c: i for i, c in enumerate(ALPHABET)}

assert _BASE == 52

_Clock: TypeAlias = Callable[[], float]


def _encode(value: int, width: int) -> str:
    if value < 0 or value >= _BASE**width:
        raise ValueError(f"{value} does not fit in {width} base-52 digits")
    digits = []
    for _ in range(width):
        value, digit = divmod(value, _BASE)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def _decode(text: str) -> int:
    value = 0
    for char in text:
        value = value * _BASE + _DIGIT_VALUE[char]
    return value


def is_queue_id(text: str) -> bool:
    """Tell whether ``text`` has the shape of a queue ID (13 base-52 characters)."""
    return _QUEUE_ID_RE.fullmatch(text) is not None


def queue_id_time(queue_id: str) -> float:
    """Return the time encoded in a queue ID, in seconds since the epoch (µs resolution).

    This is the time the ID was handed out: when reception of the message started.

    Raises:
        ValueError: ``queue_id`` is not a queue ID.
    """
    if not is_queue_id(queue_id):
        raise ValueError(f"not a queue ID: {queue_id!r}")
    seconds = _decode(queue_id[:_SECONDS_WIDTH])
    micros = _decode(queue_id[_SECONDS_WIDTH : _SECONDS_WIDTH + _MICROS_WIDTH])
    if micros >= 1_000_000:
        raise ValueError(f"not a queue ID (microseconds out of range): {queue_id!r}")
    return seconds + micros / 1_000_000


class QueueIdGenerator:
    """Hands out strictly increasing queue IDs; safe to share between threads.

    Args:
        tag: the 3-character per-process part; random when omitted (tests pass one).
        clock: returns the time in seconds since the epoch; ``time.time`` by default.

    Raises:
        ValueError: ``tag`` is not 3 characters of the alphabet.
    """

    __slots__ = ("_clock", "_last_micros", "_lock", "_tag")

    def __init__(self, tag: str | None = None, clock: _Clock | None = None) -> None:
        if tag is None:
            tag = _encode(secrets.randbelow(_BASE**_TAG_WIDTH), _TAG_WIDTH)
        if len(tag) != _TAG_WIDTH or any(c not in _DIGIT_VALUE for c in tag):
            raise ValueError(f"queue ID tag must be {_TAG_WIDTH} base-52 characters: {tag!r}")
        self._tag = tag
        self._clock: _Clock = clock if clock is not None else time.time
        self._last_micros = 0
        self._lock = threading.Lock()

    @property
    def tag(self) -> str:
        """The per-process part, the last 3 characters of every ID from this generator."""
        return self._tag

    def __call__(self) -> str:
        """Return a new queue ID, greater than every ID this generator returned before."""
        now_micros = int(self._clock() * 1_000_000)
        with self._lock:
            micros = max(now_micros, self._last_micros + 1)
            self._last_micros = micros
        seconds, micro = divmod(micros, 1_000_000)
        return _encode(seconds, _SECONDS_WIDTH) + _encode(micro, _MICROS_WIDTH) + self._tag

"""The shape of a queue, like Postfix's qshape(1): counts by domain and age.

Each row is a domain (of the recipients still to be delivered, or of the senders with
``by_sender``), each column an age bucket in minutes. The default buckets are qshape's:
``5 10 20 40 80 160 320 640 1280 1280+``; a message of age *a* minutes counts in the first
bucket whose bound is above *a*, and in ``1280+`` when it is older than every bound. ``T``
is the row total and the ``TOTAL`` row the column totals::

                T 5 10 20 40 80 160 320 640 1280 1280+
          TOTAL 4 1  0  0  0  0   0   0   2    0     1
    example.org 3 1  0  0  0  0   0   0   2    0     0
    example.net 1 0  0  0  0  0   0   0   0    0     1

Pure: values in, lines out. ``roost queue shape`` reads the spool and prints the lines.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["DEFAULT_BUCKETS", "QueueShape", "ShapeEntry", "queue_shape", "render_shape"]

#: qshape's default age buckets in minutes (``-t 5 -b 10``: 5, doubling, ten columns).
DEFAULT_BUCKETS: Final = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


@dataclass(frozen=True, slots=True)
class ShapeEntry:
    """One queued message as qshape sees it.

    Attributes:
        arrival_time: when it arrived, seconds since the epoch.
        sender: the envelope sender (``""`` for the null sender).
        recipients: the recipients still to be delivered.
    """

    arrival_time: float
    sender: str
    recipients: tuple[str, ...]


@dataclass(slots=True)
class QueueShape:
    """Counts per domain and age bucket.

    Attributes:
        buckets: the bucket bounds in minutes; there is one more column (older than all).
        rows: domain -> counts per column.
        total: counts per column over every domain.
    """

    buckets: tuple[int, ...]
    rows: dict[str, list[int]] = field(default_factory=dict)
    total: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.total:
            self.total = [0] * (len(self.buckets) + 1)

    def add(self, domain: str, age_minutes: float) -> None:
        """Count one recipient (or sender) of ``domain`` whose message is that old."""
        column = bisect.bisect_right(self.buckets, age_minutes)
        row = self.rows.setdefault(domain, [0] * (len(self.buckets) + 1))
        row[column] += 1
        self.total[column] += 1


def _domain(address: str) -> str:
    if not address:
        return "MAILER-DAEMON"
    local, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at and local else "(local)"


def queue_shape(
    entries: Iterable[ShapeEntry],
    now: float,
    *,
    by_sender: bool = False,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
) -> QueueShape:
    """Count the entries by domain and age.

    Each distinct recipient of a message counts once (qshape counts recipients); with
    ``by_sender`` each message counts once under its sender's domain (qshape ``-s``). The
    null sender shows as ``MAILER-DAEMON``, a local-only address as ``(local)``.

    Args:
        entries: the messages.
        now: the current time, seconds since the epoch.
        by_sender: count sender domains instead of recipient domains.
        buckets: increasing bounds in minutes.

    Raises:
        ValueError: ``buckets`` is empty or not strictly increasing.
    """
    bounds = tuple(buckets)
    if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"age buckets must be strictly increasing: {bounds!r}")
    shape = QueueShape(bounds)
    for entry in entries:
        age = max(0.0, now - entry.arrival_time) / 60
        if by_sender:
            shape.add(_domain(entry.sender), age)
            continue
        for address in dict.fromkeys(entry.recipients):
            shape.add(_domain(address), age)
    return shape


def render_shape(shape: QueueShape) -> list[str]:
    """Render like qshape: a heading, the TOTAL row, then domains by count, then name.

    Columns are right-aligned, each as wide as its widest value or heading.
    """
    headings = ["T", *map(str, shape.buckets), f"{shape.buckets[-1]}+"]
    ordered = sorted(shape.rows.items(), key=lambda item: (-sum(item[1]), item[0]))
    table = [("TOTAL", shape.total), *ordered]
    numbers = [[sum(counts), *counts] for _, counts in table]
    widths = [
        max(len(heading), *(len(str(row[i])) for row in numbers))
        for i, heading in enumerate(headings)
    ]
    name_width = max(len(name) for name, _ in table)
    lines = [
        " " * name_width + "".join(f" {h:>{w}}" for h, w in zip(headings, widths, strict=True))
    ]
    for (name, _), row in zip(table, numbers, strict=True):
        cells = "".join(f" {n:>{w}}" for n, w in zip(row, widths, strict=True))
        lines.append(f"{name:>{name_width}}{cells}")
    return lines

"""IMAP sequence sets: ``1:4,7,9:*`` and ``$`` (RFC 9051 §9 sequence-set, RFC 5182).

A :class:`SequenceSet` keeps the ranges as the client wrote them, so rendering it gives the
same text back (``bytes(SequenceSet.parse(b"5:2,*")) == b"5:2,*"``); the meaning is only
fixed once the largest number in use is known (the number of messages for message sequence
numbers, the highest UID for UIDs), because ``*`` stands for that number.

No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_NUMBER", "SequenceSet", "SequenceSetError"]

MAX_NUMBER: Final = 2**32 - 1
"""The largest nz-number (RFC 9051 §9: ``number = 1*DIGIT ; unsigned 32-bit integer``)."""

_SEQ_NUMBER: Final = re.compile(rb"\*|[1-9][0-9]{0,9}")


class SequenceSetError(ValueError):
    """The text is not a sequence set (the peer's error; the reply is ``BAD``).

    Attributes:
        reason: what is wrong, for the ``BAD`` text.
        position: the offset of the offending octet in the parsed buffer.
    """

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


Range = tuple[int | None, int | None]
"""One element of a set: ``(first, last)``; ``None`` is ``*``; a single number is ``(n, n)``."""


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A set of message sequence numbers or UIDs.

    Attributes:
        ranges: the elements in the order written: ``(first, last)`` with ``None`` for
            ``*``; ``first`` may be above ``last`` (``5:2`` means ``2:5``).
        saved: the set is ``$``, the result saved by ``SEARCH RETURN (SAVE)`` (RFC 5182
            §2.1); the session substitutes the saved set before using it.

    See Also: RFC 9051 §9 (sequence-set, seq-range, seq-number), RFC 5182 §4 (``$``).
    """

    ranges: tuple[Range, ...] = ()
    saved: bool = False

    def __post_init__(self) -> None:
        if self.saved and self.ranges:
            raise ValueError("a saved set ($) has no ranges")
        for first, last in self.ranges:
            for number in (first, last):
                if number is not None and not 1 <= number <= MAX_NUMBER:
                    raise ValueError(f"sequence number {number} is out of range")

    # --- construction -----------------------------------------------------------------

    @classmethod
    def of(cls, numbers: Iterable[int]) -> SequenceSet:
        """Return the shortest set holding exactly ``numbers`` (ascending, merged runs).

        Args:
            numbers: nz-numbers in any order, duplicates allowed; e.g. UIDs for
                ``COPYUID``, ``ESEARCH ALL`` or ``VANISHED``.

        Raises:
            ValueError: a number is outside ``1..2**32-1``.
        """
        ranges: list[Range] = []
        first = last = 0
        for number in sorted(set(numbers)):
            if last and number == last + 1:
                last = number
                continue
            if last:
                ranges.append((first, last))
            first = last = number
        if last:
            ranges.append((first, last))
        return cls(tuple(ranges))

    @classmethod
    def parse(cls, text: bytes | str) -> SequenceSet:
        """Parse a whole sequence set such as ``1:4,7,9:*`` or ``$``.

        Raises:
            SequenceSetError: the text is not exactly one sequence set.
        """
        data = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
        result, end = cls.parse_from(data, 0)
        if end != len(data):
            raise SequenceSetError("unexpected text after the sequence set", end)
        return result

    @classmethod
    def parse_from(cls, buf: bytes | bytearray | memoryview, pos: int) -> tuple[SequenceSet, int]:
        """Parse a sequence set starting at ``buf[pos]``.

        Returns:
            The set and the offset just after it.

        Raises:
            SequenceSetError: no valid sequence set starts at ``pos`` (a zero, a number
                above 2**32-1, a dangling ``:`` or ``,``).

        See Also: RFC 9051 §9 (sequence-set), RFC 5182 (seq-last-command ``$``).
        """
        if buf[pos : pos + 1] == b"$":
            return cls(saved=True), pos + 1
        ranges: list[Range] = []
        while True:
            first, pos = _seq_number(buf, pos)
            last = first
            if buf[pos : pos + 1] == b":":
                last, pos = _seq_number(buf, pos + 1)
            ranges.append((first, last))
            if buf[pos : pos + 1] != b",":
                return cls(tuple(ranges)), pos
            pos += 1

    # --- meaning ----------------------------------------------------------------------

    def intervals(self, largest: int) -> list[tuple[int, int]]:
        """Return the set as sorted, merged, inclusive intervals within ``1..largest``.

        Args:
            largest: the value of ``*``: the number of messages (for message sequence
                numbers) or the highest UID in use (for UIDs); 0 for an empty mailbox.

        Raises:
            ValueError: the set is ``$`` (substitute the saved set first).

        See Also: RFC 9051 §9 (seq-range: ``*`` is the largest number in use; ``559:*``
            includes the last message even when it is below 559).
        """
        if self.saved:
            raise ValueError("the $ set must be replaced by the saved search result first")
        spans: list[tuple[int, int]] = []
        for first, last in self.ranges:
            low = largest if first is None else first
            high = largest if last is None else last
            low, high = min(low, high), min(max(low, high), largest)
            if low < 1:
                low = 1
            if low <= high:
                spans.append((low, high))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        return merged

    def iter_numbers(self, largest: int) -> Iterator[int]:
        """Yield the numbers of the set in ascending order, each once, none above ``largest``.

        For UIDs prefer :meth:`contains` or :meth:`intervals` over the UIDs in use:
        ``1:*`` with a highest UID of 4 billion is 4 billion numbers.

        Args:
            largest: the value of ``*`` (see :meth:`intervals`).

        Raises:
            ValueError: the set is ``$``.
        """
        for low, high in self.intervals(largest):
            yield from range(low, high + 1)

    def contains(self, number: int, largest: int) -> bool:
        """Whether ``number`` is in the set when ``*`` is ``largest``.

        Raises:
            ValueError: the set is ``$``.
        """
        if self.saved:
            raise ValueError("the $ set must be replaced by the saved search result first")
        if not 1 <= number <= largest:
            return False
        for first, last in self.ranges:
            low = largest if first is None else first
            high = largest if last is None else last
            if min(low, high) <= number <= max(low, high):
                return True
        return False

    def exceeds(self, largest: int) -> bool:
        """Whether an explicit number in the set is above ``largest``.

        A message sequence number above the number of messages is a client error
        (RFC 9051 §6.4: the reply is ``BAD``); UID sets may name UIDs that do not exist.
        """
        return any(
            number is not None and number > largest
            for first, last in self.ranges
            for number in (first, last)
        )

    # --- rendering --------------------------------------------------------------------

    def __bytes__(self) -> bytes:
        return str(self).encode("ascii")

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(
            _number_text(first) if first == last else f"{_number_text(first)}:{_number_text(last)}"
            for first, last in self.ranges
        )


def _number_text(number: int | None) -> str:
    return "*" if number is None else str(number)


def _seq_number(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int | None, int]:
    match = _SEQ_NUMBER.match(buf, pos)
    if match is None:
        found = bytes(buf[pos : pos + 1])
        what = "a zero" if found == b"0" else repr(found) if found else "the end"
        raise SequenceSetError(f"expected a sequence number or *, found {what}", pos)
    text = match.group()
    end = match.end()
    if text == b"*":
        return None, end
    if bytes(buf[end : end + 1]).isdigit():
        raise SequenceSetError("sequence number is too large", pos)
    number = int(text)
    if number > MAX_NUMBER:
        raise SequenceSetError("sequence number is too large", pos)
    return number, end

"""A compact copy of a mailbox's message list, for sessions that idle.

An open mailbox keeps one :class:`~roost.store.MessageInfo` per message (with its base
and file name strings, two floats and a few ints: some 440 bytes each). A session that
only waits (IMAP IDLE, or silence) needs none of them until the next change or command,
so :meth:`roost.store.Mailbox.suspend` and the IMAP server's selected mailbox keep the
same facts packed into one compressed ``bytes`` object (the numbers, the flag indexes and
the file names; the distinct flag sets by reference: some 40 bytes a message for a
typical Maildir, docs/performance.md "IMAP idle memory per connection, session 7") and
build the objects again when they are needed. Equal packs compare equal, so a session's
selected mailbox can share the pack of its store mailbox instead of holding a second one.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterable, Iterator
from typing import Final

from roost.store.model import MessageInfo

__all__ = ["PackedMessages", "PackedUids"]

_INTS: Final = 4  # uid, size, vsize, modseq
_DATES: Final = 2  # internal_date, save_date
_SEPARATOR: Final = "\0"  # never in a file name
#: zlib level: the fastest (packing runs at each suspension, O(messages)).
_LEVEL: Final = 1
_INT_BYTES: Final = array("q").itemsize
_DATE_BYTES: Final = array("d").itemsize
_INDEX_BYTES: Final = array("I").itemsize


def _base_of(filename: str) -> str:
    """The Maildir base name of ``"<subdir>/<name>"``: the name up to ``:``."""
    return filename.rpartition("/")[2].partition(":")[0]


class PackedMessages:
    """Messages packed in UID order; :meth:`unpack` gives equal :class:`MessageInfo`\\s.

    One ``bytes`` object, zlib-compressed: the UIDs, sizes and mod-sequences (64-bit), the
    two dates (doubles), each message's index into the tuple of distinct flag sets, and
    the file names (UTF-8, NUL-separated). The flag sets themselves, the rare base names
    that differ from their file name's, POP3 UIDLs and the directory string are kept by
    reference.

    Args:
        messages: the messages, in ascending UID order, all of one ``directory``.

    Raises:
        ValueError: a file name holds a NUL character (not a Maildir file name).
    """

    __slots__ = ("_count", "_data", "_directory", "_extra", "_flags")

    def __init__(self, messages: Iterable[MessageInfo]) -> None:
        ints = array("q")
        dates = array("d")
        indexes = array("I")
        distinct: dict[frozenset[str], int] = {}
        names: list[str] = []
        bases: dict[int, str] = {}
        pop3: dict[int, str] = {}
        directory = ""
        for index, info in enumerate(messages):
            ints.extend((info.uid, info.size, info.vsize, info.modseq))
            dates.extend((info.internal_date, info.save_date))
            indexes.append(distinct.setdefault(info.flags, len(distinct)))
            if _SEPARATOR in info.filename:
                raise ValueError(f"file name with NUL: {info.filename!r}")
            names.append(info.filename)
            if _base_of(info.filename) != info.base_name:
                bases[index] = info.base_name
            if info.pop3_uidl:
                pop3[index] = info.pop3_uidl
            directory = info.directory
        self._count = len(names)
        self._flags = tuple(distinct)
        raw = b"".join(
            (
                ints.tobytes(),
                dates.tobytes(),
                indexes.tobytes(),
                _SEPARATOR.join(names).encode("utf-8", "surrogatepass"),
            )
        )
        self._data = zlib.compress(raw, _LEVEL)
        self._extra = (bases, pop3) if bases or pop3 else None
        self._directory = directory

    def __len__(self) -> int:
        return self._count

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackedMessages):
            return NotImplemented
        return (
            self._count == other._count
            and self._data == other._data
            and self._flags == other._flags
            and self._extra == other._extra
            and self._directory == other._directory
        )

    __hash__ = None  # type: ignore[assignment]

    def _columns(self) -> tuple[array[int], array[float], array[int], list[str]]:
        raw = zlib.decompress(self._data)
        count = self._count
        ints, dates, indexes = array("q"), array("d"), array("I")
        end = count * _INTS * _INT_BYTES
        ints.frombytes(raw[:end])
        start, end = end, end + count * _DATES * _DATE_BYTES
        dates.frombytes(raw[start:end])
        start, end = end, end + count * _INDEX_BYTES
        indexes.frombytes(raw[start:end])
        names = raw[end:].decode("utf-8", "surrogatepass").split(_SEPARATOR)
        return ints, dates, indexes, names

    def uids(self) -> list[int]:
        """The UIDs, ascending."""
        if not self._count:
            return []
        raw = zlib.decompress(self._data)
        ints = array("q")
        ints.frombytes(raw[: self._count * _INTS * _INT_BYTES])
        return ints[0::_INTS].tolist()

    def unpack(self) -> Iterator[MessageInfo]:
        """The messages, in UID order (new objects, equal to those packed; messages with
        equal flags share one flag set, as before packing)."""
        if not self._count:
            return
        ints, dates, indexes, names = self._columns()
        flags, directory = self._flags, self._directory
        bases, pop3 = self._extra or ({}, {})
        for index, (flag_index, filename) in enumerate(zip(indexes, names, strict=True)):
            i = index * _INTS
            d = index * _DATES
            yield MessageInfo(
                ints[i], flags[flag_index], ints[i + 1], ints[i + 2], dates[d], dates[d + 1],
                ints[i + 3], bases[index] if index in bases else _base_of(filename), filename,
                directory, pop3.get(index, ""),
            )  # fmt: skip


class PackedUids:
    """A set of UIDs packed in a sorted array's bytes (``\\Recent`` while a session idles).

    Args:
        uids: the UIDs (any order, no duplicates needed).
    """

    __slots__ = ("_uids",)

    def __init__(self, uids: Iterable[int]) -> None:
        self._uids = array("q", sorted(set(uids))).tobytes()

    def __len__(self) -> int:
        return len(self._uids) // _INT_BYTES

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackedUids):
            return NotImplemented
        return self._uids == other._uids

    __hash__ = None  # type: ignore[assignment]

    def unpack(self) -> set[int]:
        """The UIDs as a new set."""
        uids = array("q")
        uids.frombytes(self._uids)
        return set(uids)

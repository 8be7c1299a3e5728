"""A compact copy of a mailbox's message list, for sessions that idle.

An open mailbox keeps one :class:`~roost.store.MessageInfo` per message (with its base
and file name strings, two floats and a few ints: some 440 bytes each). A session that
only waits (IMAP IDLE, or silence) needs none of them until the next change or command,
so :meth:`roost.store.Mailbox.suspend` and the IMAP server's selected mailbox keep the
same facts packed into a few arrays and one string (about 100 bytes a message) and build
the objects again when they are needed. Equal packs compare equal, so a session's
selected mailbox can share the pack of its store mailbox instead of holding a second one.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from typing import Final

from roost.store.model import MessageInfo

__all__ = ["PackedMessages", "PackedUids"]

_INTS: Final = 4  # uid, size, vsize, modseq
_DATES: Final = 2  # internal_date, save_date
_SEPARATOR: Final = "\0"  # never in a file name


def _base_of(filename: str) -> str:
    """The Maildir base name of ``"<subdir>/<name>"``: the name up to ``:``."""
    return filename.rpartition("/")[2].partition(":")[0]


class PackedMessages:
    """Messages packed in UID order; :meth:`unpack` gives equal :class:`MessageInfo`\\s.

    Args:
        messages: the messages, in ascending UID order, all of one ``directory``.

    Raises:
        ValueError: a file name holds a NUL character (not a Maildir file name).
    """

    __slots__ = ("_bases", "_dates", "_directory", "_flags", "_ints", "_names", "_pop3")

    def __init__(self, messages: Iterable[MessageInfo]) -> None:
        ints = array("q")
        dates = array("d")
        flags: list[frozenset[str]] = []
        names: list[str] = []
        bases: dict[int, str] = {}
        pop3: dict[int, str] = {}
        directory = ""
        for index, info in enumerate(messages):
            ints.extend((info.uid, info.size, info.vsize, info.modseq))
            dates.extend((info.internal_date, info.save_date))
            flags.append(info.flags)
            if _SEPARATOR in info.filename:
                raise ValueError(f"file name with NUL: {info.filename!r}")
            names.append(info.filename)
            if _base_of(info.filename) != info.base_name:
                bases[index] = info.base_name
            if info.pop3_uidl:
                pop3[index] = info.pop3_uidl
            directory = info.directory
        self._ints = ints
        self._dates = dates
        self._flags = tuple(flags)
        self._names = _SEPARATOR.join(names)
        self._bases = bases or None
        self._pop3 = pop3 or None
        self._directory = directory

    def __len__(self) -> int:
        return len(self._flags)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackedMessages):
            return NotImplemented
        return (
            self._ints == other._ints
            and self._dates == other._dates
            and self._flags == other._flags
            and self._names == other._names
            and self._bases == other._bases
            and self._pop3 == other._pop3
            and self._directory == other._directory
        )

    __hash__ = None  # type: ignore[assignment]

    def uids(self) -> list[int]:
        """The UIDs, ascending."""
        return self._ints[0::_INTS].tolist()

    def unpack(self) -> Iterator[MessageInfo]:
        """The messages, in UID order (new objects, equal to those packed)."""
        if not self._flags:
            return
        ints, dates, directory = self._ints, self._dates, self._directory
        bases = self._bases or {}
        pop3 = self._pop3 or {}
        for index, (flags, filename) in enumerate(
            zip(self._flags, self._names.split(_SEPARATOR), strict=True)
        ):
            i = index * _INTS
            d = index * _DATES
            yield MessageInfo(
                ints[i], flags, ints[i + 1], ints[i + 2], dates[d], dates[d + 1], ints[i + 3],
                bases[index] if index in bases else _base_of(filename), filename, directory,
                pop3.get(index, ""),
            )  # fmt: skip


class PackedUids:
    """A set of UIDs packed in a sorted array (``\\Recent`` while a session idles).

    Args:
        uids: the UIDs (any order, no duplicates needed).
    """

    __slots__ = ("_uids",)

    def __init__(self, uids: Iterable[int]) -> None:
        self._uids = array("q", sorted(set(uids)))

    def __len__(self) -> int:
        return len(self._uids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackedUids):
            return NotImplemented
        return self._uids == other._uids

    __hash__ = None  # type: ignore[assignment]

    def unpack(self) -> set[int]:
        """The UIDs as a new set."""
        return set(self._uids)

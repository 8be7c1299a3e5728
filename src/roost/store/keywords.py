"""``dovecot-keywords``: which Maildir flag letter (``a``-``z``) stands for which keyword.

The file has one ``<index> <keyword>`` line per keyword; index 0 is the letter ``a``::

    0 $Junk
    1 $NonJunk

Only 26 keywords fit in file names; Dovecot keeps further keywords in its index only, and
so does roost. Names are matched case-insensitively. Readers need no lock; writers hold
``dovecot-uidlist.lock`` and replace the file with ``rename()`` from
``dovecot-keywords.lock``, making sure its mtime grows.

See Also: Dovecot "Maildir Mailbox Format" (IMAP keywords);
``src/lib-storage/index/maildir/maildir-keywords.c``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from roost.store.dotlock import replace_file
from roost.store.filename import KEYWORD_LETTERS

__all__ = ["KEYWORDS_NAME", "Keywords"]

logger = logging.getLogger("roost.store")

KEYWORDS_NAME: Final = "dovecot-keywords"
_MAX: Final = len(KEYWORD_LETTERS)
#: The names of a file not read yet, shared (never changed in place).
_NONE_DEFINED: Final[list[str | None]] = [None] * _MAX


class Keywords:
    """One mailbox's ``dovecot-keywords`` file.

    Args:
        path: the file.
        fsync: fsync before the rename when writing.
        file_mode: permission bits of the file.
        chown: called with the descriptor of the file written (ownership).
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = True,
        file_mode: int = 0o600,
        chown: Callable[[int], None] | None = None,
    ) -> None:
        #: A string, not a Path: an idle session keeps one per open mailbox.
        self.path: str = os.fspath(path)
        self._fsync = fsync
        self._file_mode = file_mode
        self._chown = chown
        self._names: list[str | None] = _NONE_DEFINED  # copied before a change
        self._by_lower: dict[str, int] = {}
        self._stamp = ""
        self._mtime_ns = 0

    def stamp(self) -> str:
        """Return ``inode:size:mtime_ns`` of the file now (``""`` when missing)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ""
        return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"

    def refresh(self) -> bool:
        """Re-read the file if it changed; return True if it did.

        Raises:
            OSError: reading failed (other than the file being absent).
        """
        stamp = self.stamp()
        if stamp == self._stamp:
            return False
        names: list[str | None] = [None] * _MAX
        try:
            with open(self.path, "rb") as handle:
                text = handle.read().decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            index_text, sep, name = line.partition(" ")
            if not sep or not index_text.isdigit() or not name:
                continue
            index = int(index_text)
            if index < _MAX:
                names[index] = name
        self._names = names if any(names) else _NONE_DEFINED
        self._by_lower = {n.lower(): i for i, n in enumerate(names) if n is not None}
        self._stamp = stamp
        self._mtime_ns = int(stamp.rsplit(":", 1)[1]) if stamp else 0
        return True

    def snapshot(self) -> tuple[str | None, ...]:
        """The keyword of each letter ``a``-``z`` (None where there is none)."""
        return tuple(self._names)

    @property
    def names(self) -> list[str]:
        """The keywords that have letters, in letter order."""
        return [name for name in self._names if name is not None]

    def lookup(self, keyword: str) -> str | None:
        """Return the spelling on file of ``keyword`` (case-insensitive), or None."""
        index = self._by_lower.get(keyword.lower())
        return None if index is None else self._names[index]

    def letter(self, keyword: str) -> str | None:
        """Return the letter of ``keyword`` (case-insensitive), or None if it has none."""
        index = self._by_lower.get(keyword.lower())
        return None if index is None else KEYWORD_LETTERS[index]

    def keyword(self, letter: str) -> str | None:
        """Return the keyword of letter ``a``-``z``, or None if the file names none."""
        return self._names[ord(letter) - ord("a")]

    def name_unknown(self, letter: str) -> str:
        """Give a letter found in a file name but not in the file a name (caller locks).

        Dovecot calls it ``unknown-<index>`` (adding ``?`` while that name is taken) and
        writes it to the file; so do we.

        Raises:
            OSError: writing the file failed.
        """
        index = ord(letter) - ord("a")
        name = f"unknown-{index}"
        while name.lower() in self._by_lower:
            name += "?"
        if self._names is _NONE_DEFINED:
            self._names = [None] * _MAX
        self._names[index] = name
        self._by_lower[name.lower()] = index
        self._write()
        return name

    def assign(self, keywords: Iterable[str]) -> None:
        """Give letters to those ``keywords`` that have none, while letters last.

        The caller holds ``dovecot-uidlist.lock`` and has called :meth:`refresh` under
        it. Keywords that find no free letter stay index-only.

        Raises:
            OSError: writing the file failed.
        """
        changed = False
        for keyword in keywords:
            if keyword.lower() in self._by_lower:
                continue
            try:
                index = self._names.index(None)
            except ValueError:
                break
            if self._names is _NONE_DEFINED:
                self._names = [None] * _MAX
            self._names[index] = keyword
            self._by_lower[keyword.lower()] = index
            changed = True
        if changed:
            self._write()

    def _write(self) -> None:
        text = "".join(f"{i} {name}\n" for i, name in enumerate(self._names) if name is not None)
        previous = self._mtime_ns

        def grow_mtime(fd: int) -> None:
            # Readers notice changes by mtime: it must grow on every write.
            if os.fstat(fd).st_mtime_ns <= previous:
                mtime = previous + 1_000_000_000
                os.utime(fd, ns=(time.time_ns(), mtime))

        data = text.encode("utf-8", "surrogateescape")
        replace_file(
            Path(self.path),
            lambda: data,
            fsync=self._fsync,
            mode=self._file_mode,
            stale_seconds=120.0,
            chown=self._chown,
            before_rename=grow_mtime,
        )
        self._stamp = self.stamp()
        self._mtime_ns = int(self._stamp.rsplit(":", 1)[1]) if self._stamp else 0

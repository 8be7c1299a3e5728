"""``dovecot-uidlist``: the UID <-> file name map shared with Dovecot.

Version 3, as Dovecot v1.1+ writes it::

    3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1
    25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394
    25017 W2481 :1276533073.M242911P3632.kurkku

- header: the version, then ``<key><value>`` fields in any order: ``V`` UIDVALIDITY,
  ``N`` the next UID, ``G`` the mailbox GUID (128 bits, hex); others are kept as they are.
- records, UIDs ascending: the UID, optional fields (``W`` vsize and ``S`` size when the
  file name lacks them, ``P`` a POP3 UIDL, ``O`` a POP3 order, ``G`` a message GUID: one
  upper-case key letter each), then ``:`` and the base file name (older versions wrote the
  whole last known name; the base is what identifies the message).

Readers need no lock. Writers hold ``dovecot-uidlist.lock``; they either append records at
the end, or write a complete new file and ``rename()`` it into place. Records of expunged
messages may stay until the next rewrite. Version 1 files (Courier's ``1 <uidvalidity>
<nextuid>`` and ``<uid> <name>``) are read and upgraded on the next rewrite.

See Also: Dovecot "Maildir Mailbox Format" (IMAP UID mapping);
``src/lib-storage/index/maildir/maildir-uidlist.c``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["UIDLIST_NAME", "UidList", "UidRecord"]

logger = logging.getLogger("roost.store")

UIDLIST_NAME: Final = "dovecot-uidlist"
_VERSION: Final = 3


@dataclass(slots=True)
class UidRecord:
    """One record: a UID, its extra fields (e.g. ``("W2481",)``) and the base name."""

    uid: int
    base: str
    fields: tuple[str, ...] = ()

    def field(self, key: str) -> str | None:
        """Return the value of the extension field ``key`` (one letter), or None."""
        for item in self.fields:
            if item.startswith(key):
                return item[1:]
        return None


class UidList:
    """One mailbox's ``dovecot-uidlist``, read incrementally, written under the dot-lock.

    Args:
        path: the file.
        fsync: ``fdatasync`` after writing.
        file_mode: permission bits for a new file.
        chown: called with the descriptor of every file created (ownership).

    Attributes:
        uid_validity: UIDVALIDITY, 0 while the file does not exist.
        next_uid: the UID the next new message gets.
        guid: the mailbox GUID (32 hex digits), ``""`` if the file has none.
        records: UID -> record, for every record read (expunged ones included).
        by_base: base file name -> UID.
        needs_rewrite: the file should be rewritten (old version, no GUID, bad lines).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
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
        self._reset()

    @property
    def exists(self) -> bool:
        """True once the file has been read (or written) successfully."""
        return self._inode != 0

    def stamp(self) -> str:
        """Return ``inode:size:mtime_ns`` of the file now (``""`` when missing)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ""
        return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"

    def _reset(self) -> None:
        """Nothing read yet (the state of a new object)."""
        self.uid_validity = 0
        self.next_uid = 1
        self.guid = ""
        self.header_fields: list[str] = []
        self.records: dict[int, UidRecord] = {}
        self.by_base: dict[str, int] = {}
        self.needs_rewrite = False
        #: Only the records after the caller's known offset were read.
        self.partial = False
        self._version = 0
        self._inode = 0
        self._offset = 0
        self._last_uid = 0

    def refresh(self, known: str = "", next_uid_floor: int = 0) -> bool:
        """Read what changed since the last call: new records, or a whole new file.

        Args:
            known: ``inode:size:mtime_ns`` of the file as the caller (the index) has
                already taken in. On the first call, when the file is still that inode
                and at least that size, only the header and the records after ``size``
                are read (:attr:`partial`): the caller knows the others.
            next_uid_floor: the caller's next UID (a lower bound when reading partially).

        Returns:
            True when the file was replaced (or appeared, or vanished): callers must
            recheck every UID; False when at most records were appended.

        Raises:
            OSError: reading failed (other than the file being absent).
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            replaced = self.exists
            self._reset()
            return replaced
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(fd)
            replaced = st.st_ino != self._inode or st.st_size < self._offset
            if replaced:
                self._reset()
                skip = _known_size(known, st.st_ino)
                if 0 < skip <= st.st_size:
                    header = handle.readline()
                    if header.endswith(b"\n") and len(header) <= skip:
                        self._parse_header(header[:-1].decode("utf-8", "surrogateescape"))
                        self._inode = st.st_ino
                        self._offset = skip
                        self.partial = True
                        self.next_uid = max(self.next_uid, next_uid_floor)
                        replaced = False
                    else:
                        handle.seek(0)
            elif st.st_size == self._offset:
                return False
            handle.seek(self._offset)
            data = handle.read()
        if replaced:
            self._inode = st.st_ino
        end = data.rfind(b"\n") + 1  # a partial last line is being written: read it later
        text = data[:end].decode("utf-8", "surrogateescape")
        lines = text.split("\n")
        lines.pop()
        if self._offset == 0:
            if not lines:
                self._inode = 0 if not data else st.st_ino
                return replaced
            self._parse_header(lines[0])
            lines = lines[1:]
        self._offset += end
        self._parse_records(lines)
        return replaced

    def ensure_complete(self) -> None:
        """Read the whole file if only its tail was read (before rewriting it).

        Raises:
            OSError: reading failed.
        """
        if self.partial:
            self._reset()
            self.refresh()

    def _parse_header(self, line: str) -> None:
        version, _, rest = line.partition(" ")
        if version == "1":
            parts = rest.split()
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                self.uid_validity, self.next_uid = int(parts[0]), int(parts[1])
            self._version = 1
            self.needs_rewrite = True
            return
        if version != str(_VERSION):
            logger.warning("%s: unsupported version %r, rebuilding it", self.path, version)
            self._version = _VERSION
            self.needs_rewrite = True
            return
        self._version = _VERSION
        for item in rest.split():
            key, value = item[0], item[1:]
            if key == "V" and value.isdigit():
                self.uid_validity = int(value)
            elif key == "N" and value.isdigit():
                self.next_uid = max(int(value), 1)
            elif key == "G":
                self.guid = value
            else:
                self.header_fields.append(item)
        if not self.guid or not self.uid_validity:
            self.needs_rewrite = True

    def _parse_records(self, lines: Iterable[str]) -> None:
        records = self.records
        by_base = self.by_base
        version = self._version
        for line in lines:
            uid_text, _, rest = line.partition(" ")
            if not uid_text.isdigit() or not rest:
                self._corrupt(line)
                continue
            uid = int(uid_text)
            if uid <= self._last_uid:
                self._corrupt(line)
                continue
            fields: tuple[str, ...] = ()
            if version == 1:
                name = rest
            elif rest[0] == ":":
                name = rest[1:]
            else:
                parsed = self._parse_fields(rest)
                if parsed is None:
                    self._corrupt(line)
                    continue
                fields, name = parsed
            base = name.partition(":")[0]
            if not base or "/" in base:
                self._corrupt(line)
                continue
            old = by_base.get(base)
            if old is not None and old != uid:
                # Dovecot: an expunged file was restored and got a new UID; the last wins.
                records.pop(old, None)
                self.needs_rewrite = True
            records[uid] = UidRecord(uid, base, fields)
            by_base[base] = uid
            self._last_uid = uid
        if self._last_uid >= self.next_uid:
            self.next_uid = self._last_uid + 1

    @staticmethod
    def _parse_fields(rest: str) -> tuple[tuple[str, ...], str] | None:
        fields: list[str] = []
        position = 0
        while True:
            if rest.startswith(":", position):
                return tuple(fields), rest[position + 1 :]
            space = rest.find(" ", position)
            if space < 0:
                return None
            item = rest[position:space]
            if item:
                if not "A" <= item[0] <= "Z":
                    return None
                fields.append(item)
            position = space + 1

    def _corrupt(self, line: str) -> None:
        logger.warning("%s: ignoring broken line %r", self.path, line[:200])
        self.needs_rewrite = True

    def uid_of(self, base: str) -> int | None:
        """Return the UID recorded for a base name, or None."""
        return self.by_base.get(base)

    def append(self, new: Iterable[UidRecord]) -> None:
        """Add records for new messages at the end of the file (caller holds the lock).

        The UIDs must be ``>= next_uid`` and ascending. When the file is missing, has an
        unfinished last line or needs a rewrite anyway, the whole file is rewritten
        (with the records already known).

        Raises:
            ValueError: a UID is below ``next_uid``.
            OSError: writing failed.
        """
        new = list(new)
        if not new:
            return
        for record in new:
            if record.uid < self.next_uid:
                raise ValueError(f"UID {record.uid} is below next_uid {self.next_uid}")
            self.next_uid = record.uid + 1
        if not self.exists or self.needs_rewrite or self._offset != _file_size(self.path):
            self.ensure_complete()
            for record in new:
                self._add(record)
            self.rewrite(self.records.values())
            return
        text = "".join(_record_line(record) for record in new)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            _write_all(fd, text.encode("utf-8", "surrogateescape"))
            if self._fsync:
                os.fdatasync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        for record in new:
            self._add(record)
        self._offset = st.st_size

    def _add(self, record: UidRecord) -> None:
        old = self.by_base.get(record.base)
        if old is not None and old != record.uid:
            self.records.pop(old, None)
        self.records[record.uid] = record
        self.by_base[record.base] = record.uid
        self._last_uid = max(self._last_uid, record.uid)

    def rewrite(
        self,
        records: Iterable[UidRecord],
        *,
        uid_validity: int | None = None,
        next_uid: int | None = None,
    ) -> None:
        """Write a complete new file (``dovecot-uidlist.tmp``, fsync, rename): lock held.

        Args:
            records: the records to keep (live messages), any order.
            uid_validity: a new UIDVALIDITY (default: keep the current one).
            next_uid: a new next UID (default: keep the current one; never lowered
                below the highest record + 1).

        Raises:
            ValueError: no UIDVALIDITY is known or given.
            OSError: writing failed.
        """
        kept = sorted(records, key=lambda record: record.uid)
        if uid_validity is not None:
            self.uid_validity = uid_validity
        if not self.uid_validity:
            raise ValueError("a new dovecot-uidlist needs a UIDVALIDITY")
        if next_uid is not None:
            self.next_uid = next_uid
        if kept and kept[-1].uid >= self.next_uid:
            self.next_uid = kept[-1].uid + 1
        if not self.guid:
            self.guid = secrets.token_hex(16)
        header = " ".join(
            [f"{_VERSION} V{self.uid_validity} N{self.next_uid} G{self.guid}", *self.header_fields]
        )
        text = header + "\n" + "".join(_record_line(record) for record in kept)
        temp = self.path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, self._file_mode)
        try:
            _write_all(fd, text.encode("utf-8", "surrogateescape"))
            if self._chown is not None:
                self._chown(fd)
            if self._fsync:
                os.fdatasync(fd)
            os.rename(temp, self.path)
            st = os.fstat(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        finally:
            os.close(fd)
        self.records = {record.uid: record for record in kept}
        self.by_base = {record.base: record.uid for record in kept}
        self.partial = False
        self._last_uid = kept[-1].uid if kept else 0
        self._version = _VERSION
        self._inode = st.st_ino
        self._offset = st.st_size
        self.needs_rewrite = False


def _record_line(record: UidRecord) -> str:
    if record.fields:
        return f"{record.uid} {' '.join(record.fields)} :{record.base}\n"
    return f"{record.uid} :{record.base}\n"


def _known_size(known: str, inode: int) -> int:
    """The size in ``inode:size:mtime`` if it is about ``inode``, else 0."""
    parts = known.split(":")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return 0
    return int(parts[1]) if int(parts[0]) == inode else 0


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

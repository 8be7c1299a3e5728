"""The per-mailbox index: an SQLite file (WAL mode) that makes a warm open fast.

The Maildir stays the truth; the index remembers what was seen there so that nothing has
to be listed, stat()ed or read again while nothing changed:

- ``state``: one row: UIDVALIDITY, next UID, HIGHESTMODSEQ (RFC 7162), the first UID
  nobody has seen as ``\\Recent`` yet, and the stamps (directory mtimes, uidlist and
  keywords ``inode:size:mtime``) of the disk state last synced; totals kept by triggers.
- ``messages``: one row per message: UID, base and current file name, flags (IMAP
  names, space separated), sizes, dates, MODSEQ.
- ``expunged``: (UID, MODSEQ, base name) of every expunge, for QRESYNC ``VANISHED``
  (RFC 7162 §3.2.5) and to recognise a file restored after its expunge.
- ``cache``: opaque per-message blobs the IMAP server parses once (ENVELOPE,
  BODYSTRUCTURE...).

MODSEQ values start at the time of the index's creation in microseconds, so an index that
is lost and rebuilt still never goes back below a HIGHESTMODSEQ a client may have cached;
``modseq_floor`` tells how far back the expunge history reaches.

Several processes and threads may use one index: writers use ``BEGIN IMMEDIATE`` under
the mailbox's ``dovecot-uidlist.lock``; readers see consistent snapshots (WAL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final, NamedTuple

__all__ = ["INDEX_NAME", "Index", "IndexState", "LogSync", "Row", "decode_flags", "encode_flags"]

logger = logging.getLogger("roost.store")

INDEX_NAME: Final = "roost.index.sqlite"
_SCHEMA_VERSION: Final = 2
_CHUNK: Final = 500
#: At most this many idle connections are kept per process (see :class:`_Pool`).
POOL_SIZE: Final = 32
#: An idle connection is closed once it was not used for this long (seconds).
POOL_LINGER_SECONDS: Final = 5.0

_SCHEMA: Final = (
    """
CREATE TABLE state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    uid_validity INTEGER NOT NULL,
    uid_next INTEGER NOT NULL,
    highest_modseq INTEGER NOT NULL,
    modseq_floor INTEGER NOT NULL,
    first_recent_uid INTEGER NOT NULL,
    new_mtime_ns INTEGER NOT NULL DEFAULT 0,
    cur_mtime_ns INTEGER NOT NULL DEFAULT 0,
    uidlist_stamp TEXT NOT NULL DEFAULT '',
    keywords_stamp TEXT NOT NULL DEFAULT '',
    synced_at_ns INTEGER NOT NULL DEFAULT 0,
    messages INTEGER NOT NULL DEFAULT 0,
    total_size INTEGER NOT NULL DEFAULT 0,
    total_vsize INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0,
    uidlist_stale INTEGER NOT NULL DEFAULT 0
)
""",
    """
CREATE TABLE messages (
    uid INTEGER PRIMARY KEY,
    base TEXT NOT NULL UNIQUE,
    subdir TEXT NOT NULL,
    filename TEXT NOT NULL,
    flags TEXT NOT NULL,
    size INTEGER NOT NULL,
    vsize INTEGER NOT NULL,
    internal_date REAL NOT NULL,
    save_date REAL NOT NULL,
    modseq INTEGER NOT NULL,
    pop3_uidl TEXT NOT NULL DEFAULT ''
)
""",
    "CREATE INDEX messages_modseq ON messages (modseq)",
    "CREATE INDEX messages_in_new ON messages (uid) WHERE subdir = 'new'",
    "CREATE TABLE expunged (uid INTEGER PRIMARY KEY, modseq INTEGER NOT NULL, base TEXT)",
    "CREATE INDEX expunged_modseq ON expunged (modseq)",
    "CREATE INDEX expunged_base ON expunged (base)",
    """
CREATE TABLE cache (
    uid INTEGER NOT NULL,
    field TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (uid, field)
) WITHOUT ROWID
""",
    """
CREATE TRIGGER messages_added AFTER INSERT ON messages BEGIN
    UPDATE state SET messages = messages + 1, total_size = total_size + NEW.size,
        total_vsize = total_vsize + NEW.vsize;
END
""",
    """
CREATE TRIGGER messages_removed AFTER DELETE ON messages BEGIN
    UPDATE state SET messages = messages - 1, total_size = total_size - OLD.size,
        total_vsize = total_vsize - OLD.vsize;
    DELETE FROM cache WHERE uid = OLD.uid;
END
""",
)

_ROW_COLUMNS: Final = (
    "uid, base, subdir, filename, flags, size, vsize, internal_date, save_date, modseq, pop3_uidl"
)

#: A ``messages`` row: uid, base, subdir, filename, flags text, size, vsize,
#: internal_date, save_date, modseq, pop3_uidl.
Row = tuple[int, str, str, str, str, int, int, float, float, int, str]

_flag_sets: dict[str, frozenset[str]] = {"": frozenset()}


def encode_flags(flags: Iterable[str]) -> str:
    """Flags as stored: sorted, space separated (keywords are atoms: no spaces)."""
    return " ".join(sorted(flags))


def decode_flags(text: str) -> frozenset[str]:
    """The inverse of :func:`encode_flags`; equal texts share one frozenset."""
    flags = _flag_sets.get(text)
    if flags is None:
        flags = frozenset(text.split(" "))
        if len(_flag_sets) < 4096:
            _flag_sets[text] = flags
    return flags


class IndexState(NamedTuple):
    """The ``state`` row (see the module docs); sizes in bytes, times in nanoseconds.

    A named tuple, not a frozen dataclass: it is read several times per IMAP command,
    and a tuple is made from the row in a fifth of the time.
    """

    uid_validity: int
    uid_next: int
    highest_modseq: int
    modseq_floor: int
    first_recent_uid: int
    new_mtime_ns: int
    cur_mtime_ns: int
    uidlist_stamp: str
    keywords_stamp: str
    synced_at_ns: int
    messages: int
    total_size: int
    total_vsize: int
    generation: int
    uidlist_stale: int


class _Pool:
    """Connections to index files whose last user let go of them lately.

    A login/logout cycle (or a SELECT of the mailbox just closed) opens the same index
    again a moment later. Reusing its connection saves the open (the WAL and shared-memory
    files, the schema check) and the last close's checkpoint, which syncs the log twice
    and deletes it, so that the next commit creates it again and syncs the directory.
    An idle connection is kept for :data:`POOL_LINGER_SECONDS` at most, and at most
    :data:`POOL_SIZE` of them, with their page caches released.

    A connection is only handed out again for the same file: same path, device and inode
    (a mailbox deleted and created again has a new index file). Forked children forget
    the parent's connections without closing them (a close in the child could checkpoint
    and delete a log that the parent still uses).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (path, fsync) -> (connection, (st_dev, st_ino), time given back); oldest first
        self._idle: dict[tuple[str, bool], tuple[sqlite3.Connection, tuple[int, int], float]] = {}
        self._orphans: list[sqlite3.Connection] = []

    def take(self, path: str, fsync: bool) -> tuple[sqlite3.Connection, tuple[int, int]] | None:
        """An idle connection to the file at ``path`` now and its identity, or None."""
        with self._lock:
            entry = self._idle.pop((path, fsync), None)
        if entry is None:
            return None
        db, identity, _ = entry
        if _identity(path) != identity:
            db.close()  # another file now (the mailbox was deleted or replaced)
            return None
        return db, identity

    def give(
        self, path: str, fsync: bool, db: sqlite3.Connection, identity: tuple[int, int]
    ) -> None:
        """Keep ``db``, open on the file ``identity`` (st_dev, st_ino), for the next
        :meth:`take` of ``path``; close what expired or does not fit."""
        closing: list[sqlite3.Connection] = []
        now = time.monotonic()
        try:
            db.execute("PRAGMA shrink_memory")
        except sqlite3.Error:
            db.close()
            return
        if identity == (0, 0):
            db.close()
            return
        with self._lock:
            old = self._idle.pop((path, fsync), None)
            if old is not None:
                closing.append(old[0])
            self._idle[(path, fsync)] = (db, identity, now)
            for key, (other, _, given) in list(self._idle.items()):
                if len(self._idle) <= POOL_SIZE and now - given < POOL_LINGER_SECONDS:
                    break
                del self._idle[key]
                closing.append(other)
        for other in closing:
            other.close()

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._orphans.extend(db for db, _, _ in self._idle.values())
        self._idle.clear()


class LogSync:
    """An index log opened by :meth:`Index.open_log`: :meth:`sync` it, then :meth:`close`."""

    __slots__ = ("_fd", "_index", "done")

    def __init__(self, index: Index, fd: int) -> None:
        self._index = index
        self._fd = fd
        self.done = False

    def sync(self) -> None:
        """fdatasync the log (in a worker thread: it waits for the disk).

        Raises:
            OSError: the sync failed.
        """
        os.fdatasync(self._fd)
        self.done = True

    def close(self) -> None:
        """Close the descriptor; after a :meth:`sync`, the commits are durable."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.done:
            self._index.unsynced = False


def _identity(path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of the file at ``path``; (0, 0) when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_dev, st.st_ino)


_POOL: Final = _Pool()
os.register_at_fork(after_in_child=_POOL.after_fork)


class Index:
    """An open index file.

    Args:
        path: the SQLite file (created, with its schema, when missing; recreated when
            unreadable or of another schema version).
        fsync: ``synchronous=FULL`` (every commit durable) instead of ``NORMAL``.
        file_mode: permission bits of a new file.
        chown: called with the path of a new file (ownership).

    Raises:
        sqlite3.Error: the file cannot be opened or created at all.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = True,
        file_mode: int = 0o600,
        chown: Callable[[str], None] | None = None,
    ) -> None:
        #: A string, not a Path: an idle session keeps one per open mailbox.
        self.path: str = os.fspath(path)
        self._fsync = fsync
        self._file_mode = file_mode
        self._chown = chown
        self.txn_start_changes = 0
        self._db: sqlite3.Connection | None = None
        self._identity = (0, 0)
        #: Durable commits leave the log unsynced (see :meth:`write`, :meth:`sync_log`).
        self.defer_sync = False
        #: A commit since the last :meth:`sync_log` is not durable yet.
        self.unsynced = False
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            logger.warning("%s: unreadable index (%s), rebuilding it", path, exc)
            self._remove_files()
            self._db = self._connect()

    @property
    def db(self) -> sqlite3.Connection:
        """The connection; opened again after :meth:`suspend`.

        Raises:
            sqlite3.Error: reopening failed.
        """
        db = self._db
        if db is None:
            db = self._db = self._connect()
        return db

    @property
    def suspended(self) -> bool:
        """True when no SQLite connection is open (:meth:`suspend`, or not used yet)."""
        return self._db is None

    def suspend(self, *, pool: bool = False) -> None:
        """Close the connection until the next use (outside a transaction only).

        An idle session keeps no SQLite connection (its page cache, lookaside and
        statement cache are some 200 KiB); the next use opens the file again.

        Args:
            pool: give the connection to the process's pool of idle connections
                (closed after a few seconds unused), where the next open of the same
                file finds it, instead of closing it.
        """
        db, self._db = self._db, None
        if db is not None:
            if pool and not db.in_transaction:
                _POOL.give(os.fspath(self.path), self._fsync, db, self._identity)
            else:
                db.close()

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def _connect(self) -> sqlite3.Connection:
        path = os.fspath(self.path)
        taken = _POOL.take(path, self._fsync)
        if taken is not None:
            db, self._identity = taken
            return db
        created = False
        if not os.path.exists(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, self._file_mode)
            os.close(fd)
            created = True
            if self._chown is not None:
                self._chown(path)
        before = _identity(path)
        db = self._open(created)
        # The file SQLite opened, if the path named the same one before and after.
        self._identity = before if _identity(path) == before else (0, 0)
        return db

    def _open(self, created: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
            if db.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                db.execute("BEGIN IMMEDIATE")
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version == _SCHEMA_VERSION:  # another process was faster
                    db.execute("COMMIT")
                    return db
                if not created and version != 0:
                    logger.info("%s: index schema %d, rebuilding it", self.path, version)
                for kind, name in db.execute(
                    "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger')"
                    " AND name NOT LIKE 'sqlite_%'"
                ).fetchall():
                    db.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        """Let go of the connection: to the process's pool of idle connections (a
        mailbox closed is often opened again a moment later: SELECT again, a login/
        logout cycle). Sessions that only idle (IDLE, silence) use :meth:`suspend`,
        which closes it: they would fill the pool for nothing."""
        self.suspend(pool=True)

    @contextlib.contextmanager
    def write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); rolled back on any exception.

        Args:
            durable: False for a change that may be lost in a crash without harm (which
                UIDs were \\Recent, when the disk was last synced): its commit is not
                fsynced (the next durable commit syncs the log, and with it this one).
        """
        db = self.db
        relaxed = not durable and self._fsync
        if self.defer_sync and durable and self._fsync:
            # Committed without a sync of the log (checkpoints still sync, as with
            # synchronous=NORMAL); the caller runs sync_log() before reporting success.
            db.execute("PRAGMA synchronous=NORMAL")
            self.unsynced = True
            relaxed = True
        elif relaxed:
            db.execute("PRAGMA synchronous=OFF")
        try:
            db.execute("BEGIN IMMEDIATE")
            self.txn_start_changes = db.total_changes
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            if relaxed:
                db.execute("PRAGMA synchronous=FULL")

    def sync_log(self) -> None:
        """Make the commits made with :attr:`defer_sync` durable: fdatasync the log.

        Called in a worker thread, so that the event loop never waits for the disk.

        Raises:
            OSError: the sync failed.
        """
        if not self.unsynced:
            return
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1  # checkpointed and removed: the database file holds everything
        if fd >= 0:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        self.unsynced = False

    def open_log(self) -> LogSync | None:
        """For a caller on an event loop: the log, opened now, when a commit made with
        :attr:`defer_sync` awaits its sync; None when none does.

        Opening is cheap; :meth:`LogSync.sync` (in a worker thread) is then one system
        call, so the thread takes the GIL back once, not after each of three.

        Raises:
            OSError: opening failed.
        """
        if not self.unsynced:
            return None
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.unsynced = False  # checkpointed and removed: the database file has all
            return None
        return LogSync(self, fd)

    def changed_in_transaction(self) -> bool:
        """True if the open write transaction modified any row."""
        return self.db.total_changes != self.txn_start_changes

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same snapshot."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    def state(self) -> IndexState | None:
        """Return the state row, or None for a new (empty) index."""
        row = self.db.execute(
            "SELECT uid_validity, uid_next, highest_modseq, modseq_floor, first_recent_uid,"
            " new_mtime_ns, cur_mtime_ns, uidlist_stamp, keywords_stamp, synced_at_ns,"
            " messages, total_size, total_vsize, generation, uidlist_stale FROM state WHERE id = 1"
        ).fetchone()
        return None if row is None else IndexState._make(row)

    def reset(self, uid_validity: int, uid_next: int) -> None:
        """Forget every message (new UIDVALIDITY); MODSEQ keeps growing. In a write txn."""
        db = self.db
        old = self.state()
        floor = max(old.highest_modseq if old else 0, time.time_ns() // 1000)
        db.execute("DELETE FROM messages")
        db.execute("DELETE FROM expunged")
        db.execute("DELETE FROM cache")
        db.execute("DELETE FROM state")
        db.execute(
            "INSERT INTO state (id, uid_validity, uid_next, highest_modseq, modseq_floor,"
            " first_recent_uid, generation) VALUES (1, ?, ?, ?, ?, 1, ?)",
            (uid_validity, uid_next, floor, floor, (old.generation + 1) if old else 1),
        )

    def set_state(self, **values: int | str) -> None:
        """Update state columns (names as in :class:`IndexState`). In a write txn."""
        columns = ", ".join(f"{name} = ?" for name in values)
        self.db.execute(f"UPDATE state SET {columns} WHERE id = 1", tuple(values.values()))

    def next_modseq(self) -> int:
        """Increment and return HIGHESTMODSEQ. In a write txn."""
        row = self.db.execute(
            "UPDATE state SET highest_modseq = highest_modseq + 1 WHERE id = 1"
            " RETURNING highest_modseq"
        ).fetchone()
        modseq: int = row[0]
        return modseq

    def filenames(self, subdir: str) -> set[str]:
        """The file names of the messages last seen in ``subdir``."""
        query = "SELECT filename FROM messages WHERE subdir = ?"
        return {name for (name,) in self.db.execute(query, (subdir,))}

    def all_rows(self) -> list[Row]:
        """Every message, in UID order."""
        rows: list[Row] = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM messages ORDER BY uid"
        ).fetchall()
        return rows

    def rows_since(self, modseq: int) -> list[Row]:
        """Messages whose MODSEQ is above ``modseq``, in UID order."""
        rows: list[Row] = self.db.execute(
            f"SELECT {_ROW_COLUMNS} FROM messages WHERE modseq > ? ORDER BY uid", (modseq,)
        ).fetchall()
        return rows

    def rows_for(self, uids: Sequence[int]) -> list[Row]:
        """The rows of those ``uids`` that exist, in UID order."""
        rows: list[Row] = []
        for start in range(0, len(uids), _CHUNK):
            chunk = uids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows.extend(
                self.db.execute(
                    f"SELECT {_ROW_COLUMNS} FROM messages WHERE uid IN ({marks})", chunk
                ).fetchall()
            )
        rows.sort()
        return rows

    def locations(self, subdir: str) -> dict[str, tuple[int, str, str]]:
        """base -> (uid, filename, flags) of the messages last seen in ``subdir``."""
        query = "SELECT base, uid, filename, flags FROM messages WHERE subdir = ?"
        return {
            base: (uid, name, flags) for base, uid, name, flags in self.db.execute(query, (subdir,))
        }

    def has_new(self) -> bool:
        """True if some message was last seen in ``new/``."""
        return (
            self.db.execute("SELECT 1 FROM messages WHERE subdir = 'new' LIMIT 1").fetchone()
            is not None
        )

    def expunged_since(self, modseq: int) -> list[int]:
        """UIDs expunged with a MODSEQ above ``modseq``, ascending."""
        return [
            uid
            for (uid,) in self.db.execute(
                "SELECT uid FROM expunged WHERE modseq > ? ORDER BY uid", (modseq,)
            )
        ]

    def _chunked(
        self, query: str, values: Sequence[int] | Sequence[str]
    ) -> list[tuple[int | str, ...]]:
        out: list[tuple[int | str, ...]] = []
        for start in range(0, len(values), _CHUNK):
            chunk = values[start : start + _CHUNK]
            out.extend(self.db.execute(query.format(marks=",".join("?" * len(chunk))), chunk))
        return out

    def uids_of_bases(self, bases: Sequence[str]) -> dict[str, int]:
        """base -> UID for those ``bases`` the index knows."""
        query = "SELECT base, uid FROM messages WHERE base IN ({marks})"
        return {str(base): int(uid) for base, uid in self._chunked(query, bases)}

    def existing_uids(self, uids: Sequence[int]) -> set[int]:
        """Those ``uids`` that are live messages."""
        query = "SELECT uid FROM messages WHERE uid IN ({marks})"
        return {int(uid) for (uid,) in self._chunked(query, uids)}

    def expunged_uids(self, uids: Sequence[int]) -> set[int]:
        """Those ``uids`` that were expunged (as far as the history reaches)."""
        query = "SELECT uid FROM expunged WHERE uid IN ({marks})"
        return {int(uid) for (uid,) in self._chunked(query, uids)}

    def insert(self, rows: Iterable[Row]) -> None:
        """Add messages. In a write txn."""
        self.db.executemany(
            f"INSERT INTO messages ({_ROW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows
        )

    def move(self, uid: int, subdir: str, filename: str) -> None:
        """Record a new file name without a flag change (e.g. ``new/`` -> ``cur/``)."""
        self.db.execute(
            "UPDATE messages SET subdir = ?, filename = ? WHERE uid = ?", (subdir, filename, uid)
        )

    def set_flags(self, uid: int, subdir: str, filename: str, flags: str, modseq: int) -> None:
        """Record new flags (and the file name that carries them). In a write txn."""
        self.db.execute(
            "UPDATE messages SET subdir = ?, filename = ?, flags = ?, modseq = ? WHERE uid = ?",
            (subdir, filename, flags, modseq, uid),
        )

    def expunge(self, uids: Sequence[int], modseq: int) -> None:
        """Remove messages and remember their expunge MODSEQ and base. In a write txn."""
        for start in range(0, len(uids), _CHUNK):
            chunk = uids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            self.db.execute(
                "INSERT OR REPLACE INTO expunged (uid, modseq, base)"
                f" SELECT uid, ?, base FROM messages WHERE uid IN ({marks})",
                (modseq, *chunk),
            )
            self.db.execute(f"DELETE FROM messages WHERE uid IN ({marks})", chunk)
        self.db.execute(
            "UPDATE state SET uidlist_stale = uidlist_stale + ? WHERE id = 1", (len(uids),)
        )

    def expunged_bases(self, bases: Sequence[str]) -> set[str]:
        """Those ``bases`` that belonged to expunged messages."""
        query = "SELECT base FROM expunged WHERE base IN ({marks})"
        return {str(base) for (base,) in self._chunked(query, bases)}

    def deleted(self) -> list[tuple[int, str, str]]:
        """(uid, subdir, filename) of the messages flagged ``\\Deleted``."""
        rows: list[tuple[int, str, str]] = self.db.execute(
            "SELECT uid, subdir, filename FROM messages WHERE instr(flags, '\\Deleted') > 0"
            " ORDER BY uid"
        ).fetchall()
        return rows

    def cache_get(self, uid: int, field: str) -> bytes | None:
        """The cached blob ``field`` of message ``uid``, or None."""
        row = self.db.execute(
            "SELECT value FROM cache WHERE uid = ? AND field = ?", (uid, field)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def cache_get_many(self, uids: Sequence[int], field: str) -> dict[int, bytes]:
        """uid -> the cached blob ``field``, for those ``uids`` that have one."""
        out: dict[int, bytes] = {}
        for start in range(0, len(uids), _CHUNK):
            chunk = uids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for uid, value in self.db.execute(
                f"SELECT uid, value FROM cache WHERE field = ? AND uid IN ({marks})",
                (field, *chunk),
            ):
                out[uid] = bytes(value)
        return out

    def cache_put(self, uid: int, field: str, value: bytes) -> None:
        """Store a blob for a message that exists (ignored otherwise)."""
        self.db.execute(
            "INSERT OR REPLACE INTO cache (uid, field, value)"
            " SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM messages WHERE uid = ?)",
            (uid, field, value, uid),
        )

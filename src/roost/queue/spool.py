"""The asyncio face of the spool: durable accept with group commit, and async queue access.

The SMTP server streams a message into a :class:`MessageWriter` and awaits
:meth:`MessageWriter.commit` before it answers ``250``; the queue manager learns of the new
message through ``on_commit`` and reads it with :meth:`Spool.load_envelope` and
:meth:`Spool.open_content`. All disk I/O runs in worker threads, never on the event loop.

Group commit: every change (commit, envelope update, move, remove) becomes a job in one
queue. A single committer thread takes *all* jobs waiting at that moment as one batch,
writes their files, flushes them and the directories of new files, renames (for changes
other than commits), and fsyncs each touched directory once; then
every caller of the batch is answered. While one batch is on disk the next one gathers, so
batches grow with the load and the number of fsyncs per message falls.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import enum
import functools
import logging
import os
import queue as queue_module
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence, Set
from types import TracebackType
from typing import Any, BinaryIO, Final, TypeAlias, TypeVar

from roost.queue.directory import (
    QueueDirectory,
    QueueName,
    RecoveryReport,
    SyncMethod,
    _CommitJob,
    _DiscardJob,
    _Job,
    _MoveJob,
    _RemoveJob,
    _UpdateJob,
    _write_all,
    encode_envelope,
)
from roost.queue.envelope import Envelope
from roost.queue.errors import SpoolError, SpoolErrorKind
from roost.queue.queue_id import QueueIdGenerator, is_queue_id

__all__ = ["MessageWriter", "OnCommit", "Spool"]

logger = logging.getLogger("roost.queue")

#: Called with the queue ID of each newly committed message, in the event loop thread.
OnCommit: TypeAlias = Callable[[str], None]

#: Default bytes a :class:`MessageWriter` buffers before writing to its file.
DEFAULT_BUFFER_SIZE: Final = 256 * 1024
#: Spare queue files kept ready in ``incoming/`` while mail arrives (see :class:`Spool`).
DEFAULT_SPARE_FILES: Final = 8
#: Seconds a spare queue file is kept unused before it is deleted (its queue ID tells the
#: time reception started: a spare must not be much older than its message).
SPARE_MAX_AGE: Final = 1.0
#: Messages this close together (seconds) count as a stream: spares are kept for it.
_BUSY_GAP: Final = 0.25
_T = TypeVar("_T")


class _Spare:
    """A queue file created ahead of its message (empty, locked), or being created.

    The spares of one refill share the I/O thread's one future (``fill``): once it is
    done, :meth:`result` gives the spare's open, locked fd or raises its create's
    :class:`SpoolError`, and ``dir_synced`` tells whether its directory entry is durable.
    A future per spare cost a lock and a condition each, in the event loop. The spare
    stands in for such a future where a message's create is awaited (:meth:`done`,
    :meth:`result`: :class:`MessageWriter`, ``_CommitJob``).
    """

    __slots__ = ("dir_synced", "error", "fd", "fill", "queue_id", "reserved")

    def __init__(self, queue_id: str, reserved: float) -> None:
        self.queue_id = queue_id
        self.reserved = reserved  # time.monotonic() when the queue ID was handed out
        self.fill: concurrent.futures.Future[None] | None = None  # set when submitted
        self.fd = -1  # set by the I/O thread before ``fill`` is done
        self.error: SpoolError | None = None  # or this
        self.dir_synced = False

    def done(self) -> bool:
        """Whether the create has ended (well or not)."""
        return self.fill is not None and self.fill.done()

    def result(self, timeout: float | None = None) -> int:
        """Wait for the create; the open, locked fd (the caller owns it).

        Raises:
            SpoolError: the create failed.
            Exception: the refill itself failed (a bug), as its future says.
        """
        assert self.fill is not None
        self.fill.result(timeout)
        if self.error is not None:
            raise self.error
        return self.fd


class Spool:
    """The mail queue's storage: one per daemon (or per sendmail process), in one loop.

    Use it as an async context manager (``async with Spool(path) as spool:``), or call
    :meth:`start` and :meth:`close`.

    Args:
        queue_directory: the queue directory (Postfix parameter ``queue_directory``).
        on_commit: called in the event loop thread with the queue ID of every message
            committed through this spool, once it is durable; the queue manager's wake-up.
            Exceptions it raises are logged and otherwise ignored.
        group_commit: batch concurrent changes so they share fsyncs (the default). False
            runs each change on its own (up to ``io_threads`` at a time): only for
            comparison in benchmarks.
        sync_method: how a batch makes new files durable (see :class:`SyncMethod`).
        io_threads: threads for message writes and reads.
        flush_threads: threads that flush the files of one batch together.
        max_batch: most jobs in one batch.
        buffer_size: bytes a :class:`MessageWriter` keeps in memory before it writes to
            disk; a writer's memory stays near this whatever the message size.
        queue_ids: makes queue IDs; a :class:`QueueIdGenerator` by default.
        precreate: create each new message's queue file in an I/O thread as soon as
            :meth:`new_message` is called (while the client sends the content), rather
            than in the committer thread at commit time.
        spare_files: while messages for ``incoming/`` arrive in a stream (less than 0.25 s
            apart), keep up to this many queue files created ahead, with their directory
            entries fsynced, in ``incoming/`` (0: none). A new message takes one, so its
            commit is one write and one ``fdatasync``: the create and the directory fsync
            are off the path to the ``250``. Spares are refilled in one I/O thread hand-off
            with one directory fsync for several files, deleted after
            :data:`SPARE_MAX_AGE` seconds unused and at :meth:`close`; a crash leaves them
            as unfinished files for :meth:`recover`. Needs ``precreate`` and
            ``SyncMethod.FSYNC``.
    """

    def __init__(
        self,
        queue_directory: str | os.PathLike[str],
        *,
        on_commit: OnCommit | None = None,
        group_commit: bool = True,
        sync_method: SyncMethod = SyncMethod.FSYNC,
        io_threads: int = 4,
        flush_threads: int = 8,
        max_batch: int = 1024,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        queue_ids: Callable[[], str] | None = None,
        precreate: bool = True,
        spare_files: int = DEFAULT_SPARE_FILES,
    ) -> None:
        if min(io_threads, flush_threads, max_batch, buffer_size) < 1:
            raise ValueError("io_threads, flush_threads, max_batch, buffer_size must be >= 1")
        self.directory = QueueDirectory(queue_directory, sync_method, flush_threads=flush_threads)
        self.buffer_size = buffer_size
        self.precreate = precreate
        self._on_commit = on_commit
        self._queue_ids: Callable[[], str] = queue_ids or QueueIdGenerator()
        self._max_batch = max_batch if group_commit else 1
        self._max_committers = 1 if group_commit else io_threads
        self._io = concurrent.futures.ThreadPoolExecutor(io_threads, "roost-spool-io")
        self._commit_pool = _Committers(self._max_committers, "roost-spool-commit")
        self._pending: collections.deque[tuple[_Job, asyncio.Future[None]]] = collections.deque()
        self._running_committers = 0  # batches in committer threads
        self._drained: asyncio.Future[None] | None = None  # close(): set when none is left
        self._receiving = 0  # MessageWriters created and not yet committing or aborted
        self._closed = False
        self._spare_files = (
            spare_files if precreate and sync_method is SyncMethod.FSYNC and spare_files > 0 else 0
        )
        # reserved and taken in the event loop; their files are made by an I/O thread
        self._spares: collections.deque[_Spare] = collections.deque()
        self._filling: concurrent.futures.Future[None] | None = None
        self._last_new = -1e9  # time.monotonic() of the last new_message for incoming/
        self._expiry: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the queue directory and its queues if missing.

        Raises:
            SpoolError: a directory cannot be created.
        """
        await self._in_thread(self.directory.create)

    async def close(self) -> None:
        """Wait for the changes in progress, then stop the worker threads.

        Messages still being written (neither committed nor aborted) stay on disk as
        uncommitted files for :meth:`recover` to delete.
        """
        self._closed = True
        while self._running_committers:  # each batch starts the next one waiting
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._filling is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wrap_future(self._filling)
        spares = list(self._spares)
        self._spares.clear()
        if spares:
            await asyncio.get_running_loop().run_in_executor(self._io, self._discard_spares, spares)
        self._io.shutdown(wait=False)
        self._commit_pool.shutdown()
        self.directory.close()

    async def __aenter__(self) -> Spool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def set_on_commit(self, on_commit: OnCommit | None) -> None:
        """Install (or with None remove) the commit callback; see the ``on_commit`` argument.

        The queue manager calls this when it starts, since the daemon builds the spool
        for the SMTP server first.
        """
        self._on_commit = on_commit

    # -- accepting mail --------------------------------------------------------------------

    def new_message(self, queue: QueueName = QueueName.INCOMING) -> MessageWriter:
        """Start a new message; its queue ID is known at once (for the Received header).

        Args:
            queue: INCOMING for the SMTP server; MAILDROP for sendmail(1) while the daemon
                is down.

        Returns:
            A writer: :meth:`MessageWriter.write` the content, then
            :meth:`MessageWriter.commit` or :meth:`MessageWriter.abort`. Best used as
            ``async with spool.new_message() as writer:`` (aborts unless committed).
        """
        self._check_open()
        queue = QueueName(queue)
        if queue is not QueueName.INCOMING or not self._spare_files:
            return MessageWriter(self, queue, self._queue_ids())
        now = time.monotonic()
        busy = now - self._last_new < _BUSY_GAP
        self._last_new = now
        if busy and len(self._spares) <= self._spare_files // 2 and not self._filling_now():
            self._fill_spares(self._spare_files - len(self._spares), now)
        # IDs are handed out in order: spares' IDs were reserved before any made here
        spare = self._take_spare(now)
        if spare is None:
            return MessageWriter(self, queue, self._queue_ids())
        return MessageWriter(self, queue, spare.queue_id, spare=spare)

    async def enqueue(
        self, envelope: Envelope, content: bytes, queue: QueueName = QueueName.INCOMING
    ) -> str:
        """Store a whole message durably; return once it is committed.

        Args:
            envelope: the envelope; ``queue_id`` and ``size`` are filled in.
            content: the message exactly as received, CRLF line ends, Received header
                included.
            queue: as for :meth:`new_message`.

        Returns:
            The new message's queue ID.

        Raises:
            SpoolError: nothing was stored (see :class:`SpoolErrorKind` for the reply).
            ValueError: ``envelope.queue_id`` is set already.
        """
        async with self.new_message(queue) as writer:
            await writer.write(content)
            return await writer.commit(envelope)

    # -- the queue manager's side ----------------------------------------------------------

    async def scan(self, queue: QueueName) -> list[str]:
        """List the committed messages in ``queue``, oldest first (by queue ID).

        Raises:
            SpoolError: the directory cannot be read.
        """
        return await self._in_thread(self.directory.scan, queue)

    async def load_envelope(self, queue_id: str, queue: QueueName) -> Envelope:
        """Read a message's envelope; a corrupt one is moved to ``corrupt/`` (warning).

        Raises:
            SpoolError: NOT_FOUND, CORRUPT, or an I/O failure.
        """
        return await self._in_thread(self.directory.load_envelope, queue_id, queue)

    async def open_content(self, queue_id: str, queue: QueueName) -> BinaryIO:
        """Open a message's content for reading; read it from a thread, or in chunks.

        Raises:
            SpoolError: NOT_FOUND, or an I/O failure.
        """
        return await self._in_thread(self.directory.open_content, queue_id, queue)

    async def update_envelope(self, queue_id: str, envelope: Envelope, queue: QueueName) -> None:
        """Durably replace a message's envelope (temp, fsync, rename over, fsync dir).

        Raises:
            ValueError: ``envelope.queue_id`` is not ``queue_id``.
            SpoolError: NOT_FOUND, or an I/O failure (the old envelope stays in force).
        """
        if envelope.queue_id != queue_id:
            raise ValueError(f"envelope.queue_id is {envelope.queue_id!r}, not {queue_id!r}")
        _check_queue_id(queue_id)
        await self._submit(_UpdateJob(queue, queue_id, encode_envelope(envelope)))

    async def move(
        self,
        queue_id: str,
        from_queue: QueueName,
        to_queue: QueueName,
        *,
        envelope: Envelope | None = None,
    ) -> None:
        """Move a message to another queue durably, content first and envelope last.

        Args:
            queue_id: the message.
            from_queue: where it is.
            to_queue: where it goes.
            envelope: if given, stored as the message's new envelope in the same step
                (e.g. recipient states when moving ``active`` to ``deferred``).

        Raises:
            ValueError: the queues are equal, or ``envelope.queue_id`` is wrong.
            SpoolError: NOT_FOUND, or an I/O failure (the message is then whole in one of
                the two queues).
        """
        _check_queue_id(queue_id)
        if envelope is not None and envelope.queue_id != queue_id:
            raise ValueError(f"envelope.queue_id is {envelope.queue_id!r}, not {queue_id!r}")
        data = None if envelope is None else encode_envelope(envelope)
        await self._submit(_MoveJob(QueueName(from_queue), QueueName(to_queue), queue_id, data))

    async def remove(self, queue_id: str, queue: QueueName, *, durable: bool = True) -> None:
        """Delete a message: envelope first, then content.

        Args:
            queue_id: the message.
            queue: where it is.
            durable: True: through the group commit, returning after the directory fsync.
                False: in an I/O thread, no fsync and no wait for the committer (Postfix
                removes delivered queue files so); the queue file is recycled into the
                pool ``free/`` when there is room (else unlinked, as is ``ID.env``:
                :meth:`QueueDirectory.remove_many`); after a crash the
                message may be back, whole, and is then delivered again. For the queue
                manager's delivered mail, never for ``roost queue delete``.

        Raises:
            SpoolError: NOT_FOUND, or an I/O failure.
        """
        _check_queue_id(queue_id)
        if durable:
            await self._submit(_RemoveJob(QueueName(queue), queue_id))
        else:
            await self._in_thread(
                functools.partial(self.directory.remove, durable=False), queue_id, queue
            )

    async def remove_many(
        self,
        messages: Sequence[tuple[str, QueueName]],
        *,
        no_envelope_file: Set[str] = frozenset(),
        open_files: Mapping[str, int] | None = None,
    ) -> list[SpoolError | None]:
        """Remove several messages without a directory fsync, in one thread hand-off.

        Each is removed as by :meth:`remove` with ``durable=False`` (the queue manager's
        delivered mail: after a crash a message may be back, whole, and is delivered
        again).

        Args:
            messages: (queue ID, queue) pairs.
            no_envelope_file: queue IDs known to have no ``ID.env`` (committed under a new
                queue ID, envelope never updated): none is looked for, a system call less.
            open_files: descriptors of queue files open for reading and writing, by queue
                ID (:meth:`QueueDirectory.read_new_message`), used instead of opening
                them again; all are closed by this call, whatever happens.

        Returns:
            Per message, in order: None when removed, else the :class:`SpoolError`
            (NOT_FOUND, or an I/O failure).

        Raises:
            ValueError: a queue ID is malformed (nothing was removed).
        """
        try:
            batch = [
                (queue_id, queue if isinstance(queue, QueueName) else QueueName(queue))
                for queue_id, queue in messages
            ]
            # QueueDirectory.remove_many checks every queue ID before it removes anything,
            # and closes the descriptors whatever happens once it runs
            self._check_open()
            done = asyncio.get_running_loop().run_in_executor(
                self._io,
                functools.partial(
                    self.directory.remove_many,
                    batch,
                    no_envelope_file=no_envelope_file,
                    open_files=open_files,
                ),
            )
        except BaseException:  # never handed on: close them here
            for fd in (open_files or {}).values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        return await done

    async def recover(self, *, orphan_age: float = 0.0) -> RecoveryReport:
        """Clean up after a crash; call once at start-up, before the queue manager runs.

        See :meth:`QueueDirectory.recover` and docs/spool.md, "Crash recovery".

        Args:
            orphan_age: minimum age in seconds of uncommitted files to delete.

        Raises:
            SpoolError: a queue cannot be read or requeued.
        """
        return await self._in_thread(
            functools.partial(self.directory.recover, orphan_age=orphan_age)
        )

    # -- spare queue files -----------------------------------------------------------------

    def _filling_now(self) -> bool:
        return self._filling is not None and not self._filling.done()

    def _take_spare(self, now: float) -> _Spare | None:
        """The oldest fresh spare (stale ones are deleted on the way), or None."""
        stale: list[_Spare] = []
        spare = None
        while self._spares:
            candidate = self._spares.popleft()
            if now - candidate.reserved <= SPARE_MAX_AGE:
                spare = candidate
                break
            stale.append(candidate)
        if stale:
            self._io.submit(self._discard_spares, stale)
        return spare

    def _fill_spares(self, count: int, now: float) -> None:
        """Reserve ``count`` queue IDs for spares (in the loop, so that IDs are handed out
        in order) and create their files in one I/O thread hand-off."""
        make_id = self._queue_ids
        spares = [_Spare(make_id(), now) for _ in range(count)]
        self._spares.extend(spares)
        self._filling = filling = self._io.submit(self._create_spares, spares)
        for spare in spares:
            spare.fill = filling
        if self._expiry is None:
            self._expiry = asyncio.get_running_loop().call_later(SPARE_MAX_AGE, self._expire_spares)

    def _create_spares(self, spares: list[_Spare]) -> None:
        """In an I/O thread: take the spares' files from the pool of recycled queue files
        or create them, then fsync the pool (if it gave any) and ``incoming/`` once."""
        directory = self.directory
        fds: list[int] = []
        failure: SpoolError | None = None
        pooled = False
        for spare in spares:
            try:
                fd = directory.take_pooled(QueueName.INCOMING, spare.queue_id)
                if fd is None:
                    fd = directory.create_content(QueueName.INCOMING, spare.queue_id)
                else:
                    pooled = True
                fds.append(fd)
            except SpoolError as exc:  # e.g. a full disk: the new messages will say so
                failure = exc
                break
        if fds:
            try:
                if pooled:  # the old names are gone for good before a message is written
                    directory.sync_pool()
                directory.sync_queue(QueueName.INCOMING)
            except SpoolError as exc:  # the commits fsync incoming/ themselves
                failure = failure or exc
        for n, spare in enumerate(spares):  # read once the refill's future is done
            if n < len(fds):
                spare.dir_synced = failure is None  # incoming/ was fsynced after the creates
                spare.fd = fds[n]
            else:
                assert failure is not None
                spare.error = failure

    def _expire_spares(self) -> None:
        """Delete spares unused for :data:`SPARE_MAX_AGE` seconds (the stream has ended)."""
        self._expiry = None
        if self._closed:
            return
        now = time.monotonic()
        stale: list[_Spare] = []
        while self._spares and now - self._spares[0].reserved > SPARE_MAX_AGE:
            stale.append(self._spares.popleft())
        if stale:
            self._io.submit(self._discard_spares, stale)
        if self._spares:
            delay = self._spares[0].reserved + SPARE_MAX_AGE - now
            self._expiry = asyncio.get_running_loop().call_later(
                max(delay, 0.01), self._expire_spares
            )

    def _discard_spares(self, spares: list[_Spare]) -> None:
        """In an I/O thread: put unused spares' files back into the pool of recycled queue
        files, or delete them when it is full (waiting for their creation first)."""
        for spare in spares:
            try:
                spare_fd = spare.result()
            except SpoolError:
                continue
            self.directory.pool_spare(QueueName.INCOMING, spare.queue_id, spare_fd)

    # -- machinery -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the spool is closed")

    async def _in_thread(self, function: Callable[..., _T], *args: object) -> _T:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, function, *args)

    async def _submit(self, job: _Job) -> None:
        """Queue ``job`` for the next batch and wait until it is durable.

        Cancelling the wait before the batch starts withdraws the job (a commit's files
        are deleted); after, the job completes regardless and ``on_commit`` still fires.

        Raises:
            SpoolError: the job failed; whatever it wrote has been removed.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._pending.append((job, waiter))
        if self._running_committers < self._max_committers:
            self._dispatch(loop)
        await waiter

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the jobs waiting (up to ``max_batch``) as one batch in a committer thread.

        No task of its own: the committer thread's answer comes back as one callback in
        the loop (:meth:`_batch_done`), which answers the batch's callers and starts the
        next batch from what gathered meanwhile. Jobs whose callers stopped waiting
        before their batch started are withdrawn (a commit's file is deleted).
        """
        while self._pending:
            batch = [
                self._pending.popleft() for _ in range(min(len(self._pending), self._max_batch))
            ]
            jobs: list[_Job] = []
            for job, waiter in batch:
                if not waiter.cancelled():
                    jobs.append(job)
                elif isinstance(job, _CommitJob):
                    jobs.append(_DiscardJob(job))
            if not jobs:
                continue
            self._running_committers += 1
            try:
                self._commit_pool.submit(
                    loop,
                    functools.partial(self._batch_done, loop, batch),
                    self.directory.run_batch,
                    jobs,
                )
            except Exception as exc:  # no thread could be started: fail this batch
                self._running_committers -= 1
                failure = SpoolError(
                    f"spool committer not started: {exc!r}", SpoolErrorKind.LOCAL_ERROR
                )
                # its files go as a failed batch's would (in an I/O thread, off the loop)
                self._io.submit(_roll_back, self.directory, jobs)
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(failure)
                continue
            return

    def _batch_done(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[_Job, asyncio.Future[None]]],
        error: BaseException | None,
    ) -> None:
        """In the loop, once a batch has ended: answer its callers (``on_commit`` for what
        it committed), then start the next batch if jobs are waiting."""
        self._running_committers -= 1
        try:
            if error is None:
                self._answer(batch)
            else:  # the batch engine failed (a bug): nobody's job is known to be done
                failure = SpoolError(
                    f"spool committer stopped: {error!r}", SpoolErrorKind.LOCAL_ERROR
                )
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(failure)
        finally:
            if self._pending and self._running_committers < self._max_committers:
                self._dispatch(loop)
            if not self._running_committers and self._drained is not None:
                if not self._drained.done():
                    self._drained.set_result(None)
                self._drained = None

    def _answer(self, batch: list[tuple[_Job, asyncio.Future[None]]]) -> None:
        for job, waiter in batch:
            if isinstance(job, _CommitJob) and job.committed and job.error is None:
                self._notify(job.queue_id)
            if waiter.done():
                continue
            if job.error is not None:
                waiter.set_exception(job.error)
            else:
                waiter.set_result(None)

    def _notify(self, queue_id: str) -> None:
        if self._on_commit is None:
            return
        try:
            self._on_commit(queue_id)
        except Exception:
            logger.exception("%s: on_commit callback failed", queue_id)


class _Committers:
    """The committer threads: run a batch function in one of ``count`` dedicated threads
    and call the caller's callback with the outcome in the caller's loop.

    What ``loop.run_in_executor`` with a ``ThreadPoolExecutor`` does, with less work on
    the way there and back (no ``concurrent.futures.Future`` with its condition and
    callbacks, no asyncio future and task to wake in turn): one ``SimpleQueue.put`` wakes
    a waiting thread, one ``call_soon_threadsafe`` runs the callback. With one SMTP
    session this round trip is on every message's path to the ``250``. Threads start when
    first needed: a new one while every thread started so far has a call (as a
    ``ThreadPoolExecutor`` would), up to ``count``. Used from one event loop's thread only.
    """

    __slots__ = ("_busy", "_count", "_name", "_queue", "_threads")

    def __init__(self, count: int, name: str) -> None:
        self._count = count
        self._name = name
        self._queue: queue_module.SimpleQueue[
            tuple[
                asyncio.AbstractEventLoop,
                Callable[[BaseException | None], None],
                Callable[..., object],
                tuple[Any, ...],
            ]
            | None
        ] = queue_module.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0  # calls submitted and not yet answered (counted in the loop)

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        done: Callable[[BaseException | None], None],
        function: Callable[..., object],
        *args: Any,
    ) -> None:
        """Run ``function(*args)`` in a committer thread, then ``done(error)`` in
        ``loop``'s thread (``error`` None when the call returned, else what it raised)."""
        started = len(self._threads)
        if started < self._count and (self._busy >= started or not started):
            self._start_thread()  # may raise RuntimeError: nothing was queued
        self._busy += 1
        self._queue.put((loop, done, function, args))

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _work(self) -> None:
        get = self._queue.get
        while (item := get()) is not None:
            loop, done, function, args = item
            error: BaseException | None = None
            try:
                function(*args)
            except BaseException as exc:  # handed to the caller, as an executor would
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._resolve, done, error)
            del item, done, function, args, error

    def _resolve(
        self, done: Callable[[BaseException | None], None], error: BaseException | None
    ) -> None:
        self._busy -= 1
        done(error)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the threads: each ends after the calls queued before this, and this waits
        for them up to ``timeout`` seconds in all (the spool calls it with no batch left,
        so the threads are idle and end at once)."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._busy = 0


class _State(enum.Enum):
    OPEN = "open"
    FAILED = "failed"  # a write failed: only abort() is allowed
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"


class MessageWriter:
    """Streams one new message into the spool; made by :meth:`Spool.new_message`.

    Content goes to the uncommitted queue file ``<queue>/<queue_id>`` in ``buffer_size``
    pieces,
    so memory stays bounded whatever the message size. Nothing is a message until
    :meth:`commit` returns. Not for concurrent use: await each call before the next.
    """

    __slots__ = (
        "_buffer",
        "_crc",
        "_creating",
        "_dir_synced",
        "_fd",
        "_flush",
        "_queue",
        "_queue_id",
        "_size",
        "_spare",
        "_spool",
        "_state",
    )

    def __init__(
        self, spool: Spool, queue: QueueName, queue_id: str, *, spare: _Spare | None = None
    ) -> None:
        self._spool = spool
        self._queue = queue
        self._queue_id = queue_id
        self._buffer = bytearray()
        self._size = 0
        self._crc = 0  # CRC-32 of the bytes written to the file so far
        self._flush: concurrent.futures.Future[None] | None = None
        self._state = _State.OPEN
        self._fd: int | None = None
        self._spare = spare
        if spare is not None:  # created ahead (Spool's spare_files), or being created
            self._creating: concurrent.futures.Future[int] | _Spare | None = spare
            self._dir_synced = False  # see commit()
            spool._receiving += 1
            return
        # The queue file is created at once, in an I/O thread, while the client sends the
        # content: the commit then only writes and flushes it. A message received alone
        # (no other writer, no batch waiting or running) also gets its directory entry
        # fsynced there, so that its commit is one fdatasync in the committer thread, with
        # no hand-off to a flush thread; with concurrent messages the batch's one
        # directory fsync is cheaper (see docs/spool.md, "Why the directory").
        self._dir_synced = (
            spool.precreate
            and spool.directory.sync_method is SyncMethod.FSYNC
            and spool._receiving == 0
            and not spool._pending
            and spool._running_committers == 0
        )
        spool._receiving += 1
        self._creating = None
        if spool.precreate:
            self._creating = spool._io.submit(
                functools.partial(
                    spool.directory.create_content,
                    queue,
                    queue_id,
                    sync_dir=self._dir_synced,
                    reuse=queue is QueueName.INCOMING,  # a recycled queue file if any
                )
            )

    @property
    def queue_id(self) -> str:
        """The message's queue ID, fixed from the start (for the Received header's ``id``)."""
        return self._queue_id

    @property
    def queue(self) -> QueueName:
        """The queue the message is committed into."""
        return self._queue

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append ``chunk`` to the content; writes to disk (in a thread) when the buffer
        is full.

        Raises:
            SpoolError: the write failed (e.g. ENOSPC, or EFBIG past a file size limit);
                the writer is then unusable, call :meth:`abort`.
            RuntimeError: the writer is committed, aborted, failed, or busy.
        """
        self._require(_State.OPEN)
        self._buffer += chunk
        self._size += memoryview(chunk).nbytes
        if len(self._buffer) < self._spool.buffer_size:
            return
        data, self._buffer = self._buffer, bytearray()
        self._flush = self._spool._io.submit(self._write_sync, data)
        try:
            await asyncio.wrap_future(self._flush)
        except BaseException:
            self._state = _State.FAILED
            raise

    def _write_sync(self, data: bytearray) -> None:
        directory = self._spool.directory
        if self._fd is None:
            creating, self._creating = self._creating, None
            if creating is not None:
                self._fd = creating.result()  # raises its SpoolError
            else:
                self._fd = directory.create_content(self._queue, self._queue_id)
        self._crc = zlib.crc32(data, self._crc)
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            action = f"write {self._queue}/"
            raise SpoolError.from_os_error(exc, action, queue_id=self._queue_id) from exc

    async def commit(self, envelope: Envelope) -> str:
        """Make the message durable and visible; return once its queue file (content,
        envelope, trailer) and its directory entry are flushed (the moment the SMTP server
        may answer ``250``).

        Args:
            envelope: the envelope; ``queue_id`` (must be ``""`` or this writer's) and
                ``size`` are filled in.

        Returns:
            The queue ID.

        Raises:
            SpoolError: the commit failed and its files are gone (e.g. INSUFFICIENT_STORAGE:
                answer ``452 4.3.1``).
            ValueError: ``envelope.queue_id`` names another message.
            RuntimeError: the writer is not open.
        """
        self._require(_State.OPEN)
        if envelope.queue_id not in ("", self._queue_id):
            raise ValueError(f"envelope.queue_id is {envelope.queue_id!r}, not {self._queue_id}")
        stored = (
            envelope  # already complete (the SMTP server's): no copy to validate again
            if envelope.queue_id == self._queue_id and envelope.size == self._size
            else dataclasses.replace(envelope, queue_id=self._queue_id, size=self._size)
        )
        creating: concurrent.futures.Future[int] | _Spare | None = None
        if self._fd is None and self._creating is not None:
            if self._creating.done():
                try:
                    self._fd = self._creating.result()
                except BaseException:
                    self._state = _State.FAILED  # abort() tidies up
                    raise
                finally:
                    self._creating = None
            else:
                # Still creating (and fsyncing the directory): the committer thread waits
                # for it, rather than waking this loop first (one thread hand-off fewer).
                creating, self._creating = self._creating, None
        job = _CommitJob(
            self._queue,
            self._queue_id,
            self._fd,
            self._buffer,
            encode_envelope(stored),
            content_length=self._size,
            crc=self._crc,
            # a spare's entry is durable once its creation has ended well
            dir_synced=self._dir_synced
            or (self._spare is not None and creating is None and self._spare.dir_synced),
            creating=creating,
        )
        self._fd = None
        self._buffer = bytearray()
        self._state = _State.COMMITTING
        self._spool._receiving -= 1
        try:
            await self._spool._submit(job)
        except BaseException:
            self._state = _State.ABORTED  # the committer has removed the files
            raise
        self._state = _State.COMMITTED
        return self._queue_id

    async def abort(self) -> None:
        """Discard the message: delete its uncommitted file. A no-op once committed,
        committing or aborted; never raises :class:`SpoolError` (failures are logged)."""
        if self._state not in (_State.OPEN, _State.FAILED):
            return
        self._state = _State.ABORTED
        self._spool._receiving -= 1
        self._buffer = bytearray()
        if self._flush is not None and not self._flush.done():
            with contextlib.suppress(BaseException):
                await asyncio.wrap_future(self._flush)
        creating, self._creating = self._creating, None
        if creating is not None and self._fd is None:
            with contextlib.suppress(BaseException):
                if isinstance(creating, _Spare):
                    assert creating.fill is not None
                    # shielded: cancelling this wait must not cancel the refill that
                    # other messages' spares depend on (wrap_future would)
                    await asyncio.shield(asyncio.wrap_future(creating.fill))
                    self._fd = creating.result()
                else:
                    self._fd = await asyncio.wrap_future(creating)
        fd, self._fd = self._fd, None
        if fd is not None:
            path = self._spool.directory.file_name(self._queue, self._queue_id)
            await asyncio.get_running_loop().run_in_executor(
                self._spool._io, _discard_content, path, fd
            )

    async def __aenter__(self) -> MessageWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.abort()

    def _require(self, state: _State) -> None:
        if self._state is not state:
            raise RuntimeError(f"message {self._queue_id} is {self._state.value}")
        if self._flush is not None and not self._flush.done():
            raise RuntimeError(f"message {self._queue_id}: a write() is still in progress")


def _roll_back(directory: QueueDirectory, jobs: list[_Job]) -> None:
    """Undo jobs that never reached their batch (their commits' files are deleted)."""
    for job in jobs:
        try:
            job.rollback(directory)
        except Exception:
            logger.exception("%s: cannot roll back", job.queue_id)


def _discard_content(path: str, fd: int) -> None:
    """Unlink an uncommitted queue file, then close it (holding its lock until then)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot remove %s: %s", path, exc.strerror)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _check_queue_id(queue_id: str) -> None:
    if not is_queue_id(queue_id):
        raise ValueError(f"not a queue ID: {queue_id!r}")

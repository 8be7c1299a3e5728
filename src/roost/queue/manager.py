"""The queue manager: takes each queued message to its transports, retries, bounces.

Like Postfix's qmgr(8): new mail is picked up the moment the spool commits it (the spool's
``on_commit`` hook, no polling); at start-up everything in ``incoming/`` (including what a
crash left in ``active/`` by an older version, which the spool's recovery moved back) and
``deferred/`` is taken up. Every ``queue_run_delay`` the deferred queue is scanned for
messages due, and ``incoming/`` for committed messages whose announcement was lost.

The active queue is kept in memory (:meth:`QueueManager.active_ids`): a message is
delivered where it lies (``incoming/`` or ``deferred/``), not moved to ``active/`` on disk.
Recovery treats everything in ``incoming/`` as to-do anyway, so the move would record
nothing a restart uses, and it would cost the acceptance path's committer two directory
fsyncs per message. Afterwards the message is removed when every recipient is final
(delivered or bounced), or moved to (or rewritten in) ``deferred/`` with its recipients'
states, reasons and next tries written durably in the same step.

The removal of a finished message is *not* durable (no directory fsync, as in Postfix): a
crash right after it may bring the message back, and it is then delivered again. Mail is
never lost this way, since every delivery is durable before it counts as done; a duplicate
is the price, which SMTP's at-least-once delivery allows (docs/delivery.md).

Each recipient's route comes from the router (local, virtual, relay, other) and each
route's transport is injected: local delivery, and outbound SMTP when it exists. A route
without a transport defers with a clear reason. Bounces and other DSNs are new messages
from the null sender (:mod:`roost.queue.bounce`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final, Protocol

from roost.address import AddressError
from roost.daemon.logsetup import log_info
from roost.delivery.router import Destination, Router, parse_recipient
from roost.queue.bounce import Action, DsnRecipient, build_dsn, wants_dsn
from roost.queue.directory import QueueDirectory, QueueName
from roost.queue.envelope import Envelope, Recipient, RecipientState, WithProtocol
from roost.queue.errors import SpoolError, SpoolErrorKind
from roost.queue.schedule import RetryPolicy
from roost.queue.spool import Spool

__all__ = [
    "DeliveryJob",
    "Outcome",
    "QueueManager",
    "RecipientResult",
    "Transport",
]

log = logging.getLogger("roost.qmgr")
#: The loggers of the delivery agents' result lines, by agent (:func:`_log_result`), and
#: bounce(8)'s for the notification lines.
_AGENT_LOGS: dict[str, logging.Logger] = {"qmgr": log, "bounce": logging.getLogger("roost.bounce")}

#: The largest queue file (bytes) whose content the queue manager reads with the envelope,
#: in one ``open`` and ``pread``, and hands to the transports from memory; larger ones are
#: streamed from the queue file.
CONTENT_IN_MEMORY: Final = 64 * 1024


class Outcome:
    """What a transport did with one recipient (Postfix's ``status=``)."""

    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """A transport's result for one recipient.

    Attributes:
        index: the recipient's index in the envelope.
        status: :class:`Outcome` value.
        dsn: the RFC 3463 code, e.g. ``2.0.0``, ``4.4.1``, ``5.1.1``.
        reason: the text for logs, ``mailq`` and DSNs (``delivered to maildir``).
        relay: the next hop for the log (``local``, ``mx.example[192.0.2.1]:25``).
        remote_reply: True when ``reason`` is a remote SMTP server's reply.
        agent: the program whose name the result's log line carries, Postfix's delivery
            agent for the result (``local``, ``virtual``, ``smtp``, ``discard``,
            ``error``, ``retry``: ``roost/local[PID]: ID: to=<...>, ... status=sent``);
            ``qmgr`` for the queue manager's own verdicts (no transport, bad address).
    """

    index: int
    status: str
    dsn: str
    reason: str
    relay: str = "none"
    remote_reply: bool = False
    agent: str = "qmgr"


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """The recipients of one message handed to one transport.

    Attributes:
        queue_id: the message.
        envelope: its envelope.
        recipients: (index, recipient) pairs for this transport.
        open_content: opens the message content (a new binary file each call).
        content_size: the content's size in bytes.
        content: the content itself when the queue manager has read it already (small
            messages, :data:`CONTENT_IN_MEMORY`), else None. A transport that writes in
            this process may use it instead of :attr:`open_content`; one that needs a file
            descriptor (the privileged helper, a command's stdin) opens the file.
    """

    queue_id: str
    envelope: Envelope
    recipients: tuple[tuple[int, Recipient], ...]
    open_content: Callable[[], BinaryIO]
    content_size: int
    content: bytes | None = None


class Transport(Protocol):
    """Delivers recipients of one message: local delivery, outbound SMTP."""

    @property
    def name(self) -> str:
        """The transport name for logs (``local``, ``virtual``, ``smtp``)."""
        ...

    async def deliver(self, job: DeliveryJob) -> list[RecipientResult]:
        """Deliver; return one result per recipient of the job (never raises for them)."""
        ...


class QueueManager:
    """The ``qmgr`` service (see the module docstring).

    Args:
        spool: the queue.
        router: classifies recipients.
        transports: a transport per destination class (missing ones defer).
        retry: the retry schedule.
        hostname: ``myhostname``, for DSNs.
        double_bounce_recipient: ``2bounce_notice_recipient`` (postmaster).
        bounce_size_limit: ``bounce_size_limit`` in bytes.
        concurrency: messages delivered at the same time.
        clock: wall-clock seconds.
    """

    name = "qmgr"

    def __init__(
        self,
        spool: Spool,
        router: Router,
        transports: Mapping[Destination, Transport],
        retry: RetryPolicy,
        *,
        hostname: str,
        double_bounce_recipient: str = "postmaster",
        bounce_size_limit: int = 50000,
        concurrency: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.router = router
        self.transports = transports
        self.retry = retry
        self.hostname = hostname
        self.double_bounce_recipient = double_bounce_recipient
        self.bounce_size_limit = bounce_size_limit
        self.clock = clock
        # (queue ID, where it is, just committed: see committed())
        # waiting for a free delivery slot: (queue ID, where it is, just committed)
        self._ready: collections.deque[tuple[str, QueueName, bool]] = collections.deque()
        self._free = concurrency  # delivery slots free
        self._running = False  # taking up messages (between start() and stop())
        self._queued: set[str] = set()
        self._forced: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._timer_queues: dict[str, QueueName] = {}  # where each timed message waits
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: set[str] = set()  # the active queue: messages being delivered now
        # delivered messages waiting for their (batched, non-durable) removal, and the
        # batch being removed now: still on disk, so still active
        self._to_remove: dict[str, QueueName] = {}
        self._removing: dict[str, QueueName] = {}
        self._no_envelope_file: set[str] = set()  # of _to_remove: no ID.env to look for
        self._remove_files: dict[str, int] = {}  # of _to_remove: queue files open already
        self._remove_slots = 0  # of _to_remove: delivery slots their removal frees
        self._remover: asyncio.Task[None] | None = None
        self._scanner: asyncio.Task[None] | None = None
        self._stopping = False
        self.delivered = 0
        self.deferred = 0
        self.bounced = 0

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Take up what is queued, then follow new commits."""
        self.spool.set_on_commit(self.committed)
        for queue_id in await self.spool.scan(QueueName.INCOMING):
            self._enqueue(queue_id, QueueName.INCOMING)
        await self._scan_deferred()
        self._running = True
        self._launch_ready()
        self._scanner = asyncio.create_task(self._scan_loop(), name="qmgr-scan")

    async def reconfigure(
        self, router: Router, transports: Mapping[Destination, Transport], retry: RetryPolicy
    ) -> None:
        """Adopt new routing, transports and retry settings."""
        self.router, self.transports, self.retry = router, transports, retry

    async def stop(self, grace: float) -> None:
        """Stop taking up mail; let deliveries in progress finish (up to ``grace``)."""
        self._stopping = True
        self.spool.set_on_commit(None)
        self._running = False  # nothing more starts
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scanner
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(grace, 0.1))
        # delivered mail must not stay queued over a clean restart (it would be delivered
        # again): finish the removals
        if self._remover is not None and not self._remover.done():
            await asyncio.wait([self._remover], timeout=max(grace, 0.1))

    def status(self) -> Mapping[str, object]:
        """Counters for ``roost status``."""
        return {
            "active": len(self._tasks),
            "waiting": len(self._ready),
            "scheduled": len(self._timers),
            "delivered": self.delivered,
            "deferred": self.deferred,
            "bounced": self.bounced,
        }

    def active_ids(self) -> frozenset[str]:
        """The queue IDs being delivered right now: Postfix's active queue (``*`` in mailq).

        They stay in ``incoming/`` or ``deferred/`` on disk; ``roost queue`` leaves them
        alone while the daemon runs.
        """
        return frozenset(self._active).union(self._to_remove, self._removing)

    def notify(self, queue_id: str) -> None:
        """A message is in ``incoming/`` (released from hold, requeued): take it up.

        Called in the event loop thread. Its envelope may be an ``ID.env`` beside the queue
        file (it was delivered to some recipients before); see :meth:`committed` for new
        messages.
        """
        if not self._stopping:
            self._enqueue(queue_id, QueueName.INCOMING)

    def committed(self, queue_id: str) -> None:
        """A new message was just committed to ``incoming/`` (the spool's ``on_commit``, a
        worker's commit notice, pickup): take it up.

        Called in the event loop thread. Unlike :meth:`notify`, the queue file is known to
        be new, under a new queue ID: no ``ID.env`` can belong to it yet, so its first read
        does not look for one (a system call less per message).
        """
        if not self._stopping:
            self._enqueue(queue_id, QueueName.INCOMING, fresh=True)

    def forget(self, queue_id: str) -> None:
        """Drop the retry timer of a message that left ``deferred/`` (deleted or held)."""
        timer = self._timers.pop(queue_id, None)
        self._timer_queues.pop(queue_id, None)
        if timer is not None:
            timer.cancel()

    def flush(self) -> None:
        """Try every deferred message now (``roost queue flush``, ``postqueue -f``)."""
        for queue_id, timer in list(self._timers.items()):
            timer.cancel()
            del self._timers[queue_id]
            queue = self._timer_queues.pop(queue_id, QueueName.DEFERRED)
            self._enqueue(queue_id, queue, force=True)

    # --- scheduling -------------------------------------------------------------------

    def _enqueue(
        self, queue_id: str, queue: QueueName, *, force: bool = False, fresh: bool = False
    ) -> None:
        if queue_id in self._queued or queue_id in self._to_remove or queue_id in self._removing:
            return  # being delivered, or delivered and about to be removed
        self._queued.add(queue_id)
        if force:
            self._forced.add(queue_id)
        if self._running and self._free > 0 and not self._ready:
            self._launch(queue_id, queue, fresh)  # the common case: a slot is free
        else:
            self._ready.append((queue_id, queue, fresh))

    def _schedule(self, queue_id: str, when: float, queue: QueueName = QueueName.DEFERRED) -> None:
        old = self._timers.pop(queue_id, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, when - self.clock())
        loop = asyncio.get_running_loop()

        def due() -> None:
            self._timers.pop(queue_id, None)
            self._timer_queues.pop(queue_id, None)
            self._enqueue(queue_id, queue)

        self._timer_queues[queue_id] = queue

        self._timers[queue_id] = loop.call_later(delay, due)

    async def _scan_deferred(self) -> None:
        for queue_id in await self.spool.scan(QueueName.DEFERRED):
            if queue_id in self._timers or queue_id in self._queued:
                continue
            try:
                envelope = await self.spool.load_envelope(queue_id, QueueName.DEFERRED)
            except SpoolError as exc:
                log.warning("%s: cannot read the envelope: %s", queue_id, exc)
                continue
            self._schedule(queue_id, _next_try(envelope))

    async def _scan_incoming(self, unclaimed: frozenset[str]) -> frozenset[str]:
        """Take up committed messages in ``incoming/`` that were never announced.

        Every new message is announced when it is committed (:meth:`committed`); one whose
        announcement was lost (an SMTP worker killed between its commit and its commit
        notice, a ``roost queue release`` whose notice did not reach the daemon) would
        otherwise wait for the next start. Postfix's qmgr finds such files at its periodic
        wakeup.
        A message is taken up only when it was unclaimed at the previous scan too
        (``unclaimed``, at least ``queue_run_delay`` earlier), so that one whose notice is
        merely on its way is never taken up twice.

        Returns:
            The queue IDs unclaimed at this scan and not taken up (for the next one).

        Raises:
            SpoolError: ``incoming/`` cannot be read.
        """
        known = self.active_ids()
        found = frozenset(
            queue_id
            for queue_id in await self.spool.scan(QueueName.INCOMING)
            if queue_id not in known
            and queue_id not in self._queued
            and queue_id not in self._timers
        )
        for queue_id in sorted(found & unclaimed):
            log.warning("%s: taken up from incoming/ without a commit notice", queue_id)
            self.notify(queue_id)
        return found - unclaimed

    async def _scan_loop(self) -> None:
        unclaimed: frozenset[str] = frozenset()
        while True:
            await asyncio.sleep(self.retry.queue_run_delay)
            with contextlib.suppress(SpoolError):
                await self._scan_deferred()
            with contextlib.suppress(SpoolError):
                unclaimed = await self._scan_incoming(unclaimed)

    def _launch(self, queue_id: str, queue: QueueName, fresh: bool) -> None:
        """Deliver one message in a task of its own, in a free slot (taken here)."""
        self._free -= 1
        task = asyncio.create_task(self._guarded(queue_id, queue, fresh))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _launch_ready(self) -> None:
        """Start what waits, in arrival order, while slots are free."""
        while self._running and self._free > 0 and self._ready:
            self._launch(*self._ready.popleft())

    async def _guarded(self, queue_id: str, queue: QueueName, fresh: bool) -> None:
        handed_on = False  # the slot went to the message's removal, which frees it
        try:
            handed_on = await self.process(
                queue_id, queue, force=queue_id in self._forced, fresh=fresh
            )
        except Exception:
            log.exception("%s: unexpected error; the message stays queued", queue_id)
        finally:
            self._forced.discard(queue_id)
            self._queued.discard(queue_id)
            if not handed_on:
                self._free += 1
                if self._ready:
                    self._launch_ready()

    # --- one message ------------------------------------------------------------------

    async def process(
        self, queue_id: str, queue: QueueName, *, force: bool = False, fresh: bool = False
    ) -> bool:
        """Deliver what is due of one message, then remove, defer or bounce it.

        The message stays where it is on disk while it is delivered; it is in
        :meth:`active_ids` meanwhile.

        Args:
            queue_id: the message.
            queue: where it is now (incoming or deferred; active only for what an older
                version left there).
            force: try every deferred recipient now (queue flush).
            fresh: the message was just committed (:meth:`committed`): no ``ID.env``.

        Returns:
            True when the message is done and queued for removal (:meth:`_remove`), which
            then frees the delivery slot; False when the slot is free again now.
        """
        self._active.add(queue_id)
        try:
            return await self._process(queue_id, queue, force=force, fresh=fresh)
        finally:
            self._active.discard(queue_id)

    async def _process(self, queue_id: str, queue: QueueName, *, force: bool, fresh: bool) -> bool:
        envelope, content, fd = self._read_message_now(queue_id, queue, fresh)
        # fd: a just-committed message's queue file, kept open for the common case's
        # removal (which then closes it instead of opening the file again); closed here on
        # every other way out
        try:
            if envelope is None:
                try:
                    envelope = await self.spool.load_envelope(queue_id, queue)
                except SpoolError as exc:
                    log.warning("%s: cannot take up the message: %s", queue_id, exc)
                    return False
            started = self.clock()
            due = [
                (index, recipient)
                for index, recipient in enumerate(envelope.recipients)
                if not recipient.is_final
                and (force or recipient.next_try is None or recipient.next_try <= started)
            ]
            results = await self._deliver(queue_id, queue, envelope, due, content)
            if len(due) == len(envelope.recipients) and self._all_sent(
                queue_id, envelope, results, started
            ):
                # every recipient delivered in one go, none asking for a success DSN:
                # nothing to expire, notify or warn about, and no envelope to write before
                # the removal
                no_envelope_file = fresh and queue is QueueName.INCOMING
                self._remove(queue_id, queue, no_envelope_file, fd, slot=True)
                fd = None  # the removal's now, and so is the delivery slot
                return True
        finally:
            if fd is not None:
                os.close(fd)
        envelope = self._apply(queue_id, envelope, results, started)
        envelope = self._expire(queue_id, envelope)
        await self._notifications(queue_id, queue, envelope, results)
        envelope = await self._delay_warning(queue_id, queue, envelope)
        try:
            if envelope.is_done:
                self._remove(queue_id, queue, slot=True)
                return True
            if queue is QueueName.DEFERRED:
                await self.spool.update_envelope(queue_id, envelope, queue)
            else:
                await self.spool.move(queue_id, queue, QueueName.DEFERRED, envelope=envelope)
                queue = QueueName.DEFERRED
        except SpoolError as exc:
            # e.g. a full queue disk, or the administrator deleted or held the message
            # meanwhile: it stays where it is (its old envelope, so what was delivered may
            # be delivered again) and is tried again later
            log.warning("%s: cannot update the queue file: %s; retrying later", queue_id, exc)
            if not self._stopping:
                retry_at = self.clock() + self.retry.minimal_backoff
                self._schedule(queue_id, retry_at, queue)
            return False
        if not self._stopping:
            self._schedule(queue_id, _next_try(envelope))
        return False

    def _read_message_now(
        self, queue_id: str, queue: QueueName, fresh: bool = False
    ) -> tuple[Envelope | None, bytes | None, int | None]:
        """Read a just-committed message in the event loop: a page-cache read costs less
        than a thread hand-off. The content too when the queue file is small
        (:data:`CONTENT_IN_MEMORY`), so that its delivery does not open the file again.
        (None, None, None) on any trouble (missing, corrupt): the caller then asks the
        spool, which reports and quarantines.

        ``fresh``: just committed, so no ``ID.env`` to look for; the file is then read in
        two system calls and returned open (the third item, the caller's to close or to
        hand to :meth:`_remove`), since in the common case it is recycled right after
        the delivery (:meth:`QueueDirectory.read_new_message`)."""
        directory = self.spool.directory
        fd: int | None = None
        try:
            opened = (
                directory.read_new_message(queue, queue_id, CONTENT_IN_MEMORY) if fresh else None
            )
            if opened is not None:
                data, content, fd = opened
            else:  # not fresh, or not readable so (e.g. not writable): the usual read
                found = directory.read_message_data(
                    queue, queue_id, CONTENT_IN_MEMORY, envelope_file=not fresh
                )
                if found is None:
                    return None, None, None
                data, content = found
            envelope = Envelope.from_json(data)
        except (OSError, ValueError):  # EnvelopeError is a ValueError
            envelope = None
        if envelope is None or envelope.queue_id != queue_id:
            if fd is not None:
                os.close(fd)
            return None, None, None
        return envelope, content, fd

    def _remove(
        self,
        queue_id: str,
        queue: QueueName,
        no_envelope_file: bool = False,
        fd: int | None = None,
        *,
        slot: bool = False,
    ) -> None:
        """Remove a finished message soon, with others in one thread hand-off.

        Not durable (no directory fsync, as Postfix): a crash may bring the message back,
        and it is then delivered again; every delivery is durable before this.
        ``no_envelope_file``: the message has no ``ID.env`` (just committed, its envelope
        never rewritten), so none is looked for. ``fd``: the queue file, open for reading
        and writing (:meth:`_read_message_now`): the removal recycles it through this
        descriptor and closes it.

        ``slot``: the message's delivery slot is handed to the removal, which frees it
        once the batch holding the message has been removed (the delivery's task ends at
        once, without waiting for it). So the messages delivered but still on disk
        (delivered again after a crash) are never more than the concurrency.
        """
        self._to_remove[queue_id] = queue
        if no_envelope_file:
            self._no_envelope_file.add(queue_id)
        if fd is not None:
            self._remove_files[queue_id] = fd
        if slot:
            self._remove_slots += 1
        if self._remover is None or self._remover.done():
            self._remover = asyncio.create_task(self._remove_loop(), name="qmgr-remove")

    async def _remove_loop(self) -> None:
        while self._to_remove:
            self._removing, self._to_remove = self._to_remove, {}
            slots, self._remove_slots = self._remove_slots, 0
            batch = list(self._removing.items())
            fresh, self._no_envelope_file = self._no_envelope_file, set()
            files, self._remove_files = self._remove_files, {}
            try:
                errors: list[SpoolError | None] = await self.spool.remove_many(
                    batch, no_envelope_file=fresh, open_files=files
                )
            except Exception as exc:  # the spool is closing, or a bug
                log.error("cannot remove delivered messages: %s", exc)
                errors = [SpoolError(str(exc), SpoolErrorKind.LOCAL_ERROR)] * len(batch)
            finally:
                self._removing = {}
                self._free += slots  # the delivery slots these messages kept
                if self._ready:
                    self._launch_ready()
            for (queue_id, _), error in zip(batch, errors, strict=True):
                if error is None:
                    log_info(log, f"{queue_id}: removed")
                else:  # e.g. deleted by the administrator meanwhile
                    log.warning("%s: cannot remove the queue file: %s", queue_id, error)

    async def _deliver(
        self,
        queue_id: str,
        queue: QueueName,
        envelope: Envelope,
        due: Sequence[tuple[int, Recipient]],
        content: bytes | None = None,
    ) -> list[RecipientResult]:
        groups: dict[Destination, list[tuple[int, Recipient]]] = {}
        results: list[RecipientResult] = []
        for index, recipient in due:
            try:
                address = parse_recipient(recipient.address)
            except AddressError as exc:
                results.append(
                    RecipientResult(index, Outcome.BOUNCED, "5.1.3", f"bad address: {exc}")
                )
                continue
            groups.setdefault(self.router.destination(address), []).append((index, recipient))
        directory = self.spool.directory
        for destination, recipients in groups.items():
            transport = self.transports.get(destination)
            if transport is None:
                reason = f"no transport for {destination.value} destinations yet"
                results += [
                    RecipientResult(index, Outcome.DEFERRED, "4.3.5", reason)
                    for index, _ in recipients
                ]
                continue
            job = DeliveryJob(
                queue_id=queue_id,
                envelope=envelope,
                recipients=tuple(recipients),
                open_content=functools.partial(directory.open_content, queue_id, queue),
                content_size=envelope.size,
                content=content,
            )
            try:
                results += await transport.deliver(job)
            except Exception as exc:  # a transport bug must not lose the message
                log.exception("%s: transport %s failed", queue_id, transport.name)
                results += [
                    RecipientResult(index, Outcome.DEFERRED, "4.3.0", f"internal error: {exc}")
                    for index, _ in recipients
                ]
        return results

    def _all_sent(
        self,
        queue_id: str,
        envelope: Envelope,
        results: Sequence[RecipientResult],
        started: float,
    ) -> bool:
        """The common case's :meth:`_apply`: when every recipient was just delivered (one
        result each, all ``sent``) and none wants a success DSN (RFC 3461 NOTIFY), log and
        count them as :meth:`_apply` does and return True; the message is then done and
        :meth:`_expire`, :meth:`_notifications` and :meth:`_delay_warning` have nothing
        to do, so the updated envelope they would read is not built. Otherwise return
        False having done nothing."""
        recipients = envelope.recipients
        if len(results) != len(recipients):
            return False
        for result in results:
            if result.status != Outcome.SENT:
                return False
            notify = recipients[result.index].notify
            if notify is not None and wants_dsn(recipients[result.index], Action.DELIVERED):
                return False
        if len({result.index for result in results}) != len(recipients):
            return False
        delays = _delays(envelope.arrival_time, started, self.clock())
        for result in results:
            self.delivered += 1
            _log_result(queue_id, recipients[result.index].address, result, delays)
        return True

    def _apply(
        self,
        queue_id: str,
        envelope: Envelope,
        results: Sequence[RecipientResult],
        started: float,
    ) -> Envelope:
        now = self.clock()
        for result in results:
            recipient = envelope.recipients[result.index]
            attempts = recipient.attempts + 1
            if result.status == Outcome.SENT:
                state, next_try = RecipientState.DELIVERED, None
                self.delivered += 1
            elif result.status == Outcome.BOUNCED:
                state, next_try = RecipientState.BOUNCED, None
                self.bounced += 1
            else:
                state, next_try = RecipientState.DEFERRED, self.retry.next_try(attempts, now)
                self.deferred += 1
            envelope = envelope.replace_recipient(
                result.index,
                dataclasses.replace(
                    recipient,
                    state=state,
                    reason=result.reason,
                    next_try=next_try,
                    attempts=attempts,
                    dsn_status=result.dsn,
                ),
            )
            _log_result(
                queue_id, recipient.address, result, _delays(envelope.arrival_time, started, now)
            )
        return envelope

    def _expire(self, queue_id: str, envelope: Envelope) -> Envelope:
        now = self.clock()
        if not self.retry.expired(
            envelope.arrival_time, now, null_sender=envelope.envelope_sender == ""
        ):
            return envelope
        for index, recipient in enumerate(envelope.recipients):
            if recipient.state is RecipientState.DEFERRED:
                reason = f"message expired after {_age(envelope, now)}: {recipient.reason}"
                status = "5" + (recipient.dsn_status or "4.4.7")[1:]
                envelope = envelope.replace_recipient(
                    index,
                    dataclasses.replace(
                        recipient,
                        state=RecipientState.BOUNCED,
                        reason=reason,
                        dsn_status=status,
                        next_try=None,
                    ),
                )
                log.info(
                    "%s: to=<%s>, status=expired, returned to sender (%s)",
                    queue_id,
                    recipient.address,
                    recipient.reason,
                )
                self.bounced += 1
        return envelope

    async def _notifications(
        self,
        queue_id: str,
        queue: QueueName,
        envelope: Envelope,
        results: Sequence[RecipientResult],
    ) -> None:
        by_index = {result.index: result for result in results}
        failed: list[DsnRecipient] = []
        delivered: list[DsnRecipient] = []
        for index, recipient in enumerate(envelope.recipients):
            result = by_index.get(index)
            just_bounced = recipient.state is RecipientState.BOUNCED and (
                result is not None or (recipient.reason or "").startswith("message expired")
            )
            if just_bounced and wants_dsn(recipient, Action.FAILED):
                failed.append(_dsn_line(recipient, Action.FAILED, result))
            elif (
                result is not None
                and result.status == Outcome.SENT
                and wants_dsn(recipient, Action.DELIVERED)
            ):
                delivered.append(_dsn_line(recipient, Action.DELIVERED, result))
        for lines, kind in ((failed, "non-delivery"), (delivered, "delivery status")):
            if not lines:
                continue
            to, notified = envelope.envelope_sender, "sender"
            if to == "":
                if kind != "non-delivery" or all(
                    line.recipient.address.lower().startswith(self.double_bounce_recipient)
                    for line in lines
                ):
                    log.info("%s: discarding a notice about a bounce to <>", queue_id)
                    continue
                to, notified = self.double_bounce_recipient, "postmaster"
            await self._send_dsn(queue_id, queue, envelope, lines, to, kind, notified=notified)

    async def _delay_warning(self, queue_id: str, queue: QueueName, envelope: Envelope) -> Envelope:
        """Send one "delayed" DSN once the message is ``delay_warning_time`` old."""
        now = self.clock()
        if envelope.is_done or not self.retry.wants_delay_warning(
            envelope.arrival_time, now, already_sent=envelope.delay_warned
        ):
            return envelope
        lines = [
            DsnRecipient(
                recipient=recipient,
                action=Action.DELAYED,
                status=recipient.dsn_status or "4.0.0",
                diagnostic=recipient.reason or "delivery temporarily suspended",
            )
            for recipient in envelope.recipients
            if recipient.state is RecipientState.DEFERRED and wants_dsn(recipient, Action.DELAYED)
        ]
        if lines and envelope.envelope_sender:
            lifetime = self.retry.maximal_lifetime
            await self._send_dsn(
                queue_id,
                queue,
                envelope,
                lines,
                envelope.envelope_sender,
                "delay",
                will_retry_until=envelope.arrival_time + lifetime,
            )
        return dataclasses.replace(envelope, delay_warned=True)

    async def _send_dsn(
        self,
        queue_id: str,
        queue: QueueName,
        envelope: Envelope,
        lines: list[DsnRecipient],
        to: str,
        kind: str,
        *,
        notified: str = "sender",
        will_retry_until: float | None = None,
    ) -> None:
        """Queue a DSN of ``kind`` (``non-delivery``, ``delivery status``, ``delay``) to
        ``to`` and log it as Postfix's bounce(8) does: ``ID: sender non-delivery
        notification: NEWID``, or with ``notified = "postmaster"`` for a double bounce
        (to ``2bounce_notice_recipient``). A spool error is logged, not raised."""
        try:
            original = await asyncio.to_thread(
                _read_limited, self.spool.directory, queue_id, queue, self.bounce_size_limit + 1
            )
            message = build_dsn(
                envelope=envelope,
                recipients=lines,
                original=original,
                hostname=self.hostname,
                now=self.clock(),
                bounce_size_limit=self.bounce_size_limit,
                will_retry_until=will_retry_until,
                to=to,
            )
            dsn_envelope = Envelope(
                envelope_sender="",
                recipients=(Recipient(to),),
                arrival_time=self.clock(),
                protocol=WithProtocol.LOCAL,
            )
            new_id = await self.spool.enqueue(dsn_envelope, message)
        except (SpoolError, OSError) as exc:
            log.error("%s: cannot queue the %s notification: %s", queue_id, kind, exc)
            return
        _AGENT_LOGS["bounce"].info("%s: %s %s notification: %s", queue_id, notified, kind, new_id)


def _read_limited(directory: QueueDirectory, queue_id: str, queue: QueueName, limit: int) -> bytes:
    with directory.open_content(queue_id, queue) as handle:
        return handle.read(limit)


def _dsn_line(recipient: Recipient, action: Action, result: RecipientResult | None) -> DsnRecipient:
    status = recipient.dsn_status or ("2.0.0" if action is Action.DELIVERED else "5.0.0")
    diagnostic = recipient.reason or ""
    return DsnRecipient(
        recipient=recipient,
        action=action,
        status=status,
        diagnostic=diagnostic,
        remote_mta=None,
        smtp_reply=bool(result and result.remote_reply),
    )


def _delays(arrival: float, started: float, now: float) -> tuple[str, str, str]:
    """A delivery's ``delay`` and the first and last of its ``delays=a/b/c/d`` (seconds
    since the epoch in; Postfix's rounding out): since arrival, before the attempt, the
    attempt."""
    return _pretty(now - arrival), _pretty(started - arrival), _pretty(now - started)


def _log_result(
    queue_id: str, address: str, result: RecipientResult, delays: tuple[str, str, str]
) -> None:
    """Log one recipient's result as Postfix's delivery agents do (``status=sent``,
    ``deferred`` or ``bounced``, with ``relay``, ``delay``, ``delays`` and ``dsn``), under
    the name of the result's agent (``roost/local``, ``roost/smtp``, ...)."""
    delay, before, took = delays
    agent_log = _AGENT_LOGS.get(result.agent)
    if agent_log is None:
        agent_log = _AGENT_LOGS[result.agent] = logging.getLogger(f"roost.{result.agent}")
    log_info(
        agent_log,
        f"{queue_id}: to=<{address}>, relay={result.relay}, delay={delay},"
        f" delays={before}/0/0/{took}, dsn={result.dsn}, status={result.status}"
        f" ({result.reason})",
    )


def _pretty(seconds: float) -> str:
    """Postfix's delay format: ``0.12``, ``0`` below 5 ms, whole seconds from 10 s."""
    if seconds < 0.005:
        return "0"
    if seconds < 10:
        return f"{seconds:.2f}".rstrip("0").rstrip(".")
    return f"{seconds:.0f}"


def _next_try(envelope: Envelope) -> float:
    tries = [r.next_try for r in envelope.recipients if not r.is_final and r.next_try is not None]
    return min(tries) if tries else 0.0


def _age(envelope: Envelope, now: float) -> str:
    seconds = int(now - envelope.arrival_time)
    if seconds >= 86400:
        return f"{seconds // 86400} days"
    if seconds >= 3600:
        return f"{seconds // 3600} hours"
    return f"{seconds} seconds"

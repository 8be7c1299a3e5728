"""The pickup service: takes what sendmail(1) left in ``maildrop/`` into ``incoming/``.

Like Postfix's pickup(8): ``roost sendmail`` commits each message into ``maildrop/`` (it
works while the daemon is down) and then asks a running daemon to pick it up at once
(control command ``pickup``); the daemon also picks up at start-up, before the queue
manager takes up ``incoming/``, and every :data:`PICKUP_INTERVAL` seconds in case a
request was lost (an unprivileged user cannot reach the control socket).

Picking up one message keeps its queue ID (the one sendmail printed) and prepends Postfix's
pickup trace header, with the user ID taken from the owner of the maildrop file (the
submitting process), not from anything the user wrote::

    Received: by mx.example.com (roost, from userid 1000)
            id 4Wk3nB0h2Fz1x; Sat, 21 Nov 2026 06:00:00 +0000

The steps are durable and safe to repeat: commit ``incoming/ID`` (content with the header,
the same envelope), then remove ``maildrop/ID``. A crash between the two leaves the message
in both queues; the next pass sees ``ID`` already queued elsewhere and only removes the
maildrop copy, so nothing is delivered twice. The queue manager hears of the message only
after the maildrop copy is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import email.utils
import logging
import os
import time
from collections.abc import Callable
from typing import Final

from roost.queue.directory import QueueDirectory, QueueName
from roost.queue.errors import SpoolError, SpoolErrorKind
from roost.queue.spool import Spool

__all__ = ["PICKUP_INTERVAL", "Pickup", "pickup_received_header"]

log = logging.getLogger("roost.pickup")

#: Seconds between scans of ``maildrop/`` when nobody asks (Postfix's pickup wakes every 60s).
PICKUP_INTERVAL: Final = 60.0

#: Queues where a picked-up message may already be after an interrupted pickup.
_LATER_QUEUES: Final = (
    QueueName.INCOMING,
    QueueName.ACTIVE,
    QueueName.DEFERRED,
    QueueName.HOLD,
    QueueName.CORRUPT,
)


def pickup_received_header(
    *, hostname: str, mail_name: str, uid: int, queue_id: str, now: float
) -> bytes:
    """Render the trace header pickup prepends (Postfix's pickup(8) shape, CRLF line ends).

    Args:
        hostname: ``myhostname``.
        mail_name: ``mail_name``, in the ``by`` comment.
        uid: the user ID that submitted the message (owner of the maildrop file).
        queue_id: the message's queue ID.
        now: the submission time in seconds since the epoch.

    See Also: RFC 5321 §4.4 (a Received header without ``from`` is valid for local mail).
    """
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC)
    date = email.utils.format_datetime(email.utils.localtime(stamp))
    return (
        f"Received: by {hostname} ({mail_name}, from userid {uid})\r\n\tid {queue_id}; {date}\r\n"
    ).encode("utf-8", "surrogateescape")


class Pickup:
    """Moves messages from ``maildrop/`` to ``incoming/`` (see the module docstring).

    Args:
        spool: the daemon's spool.
        hostname: ``myhostname``, for the Received header.
        mail_name: ``mail_name``, for the Received header.
        notify: called in the event loop with each picked-up queue ID (the queue manager's
            ``notify``); may be None.
        interval: seconds between scans when nobody asks.
    """

    name = "pickup"

    def __init__(
        self,
        spool: Spool,
        *,
        hostname: str,
        mail_name: str,
        notify: Callable[[str], None] | None = None,
        interval: float = PICKUP_INTERVAL,
    ) -> None:
        self.spool = spool
        self.hostname = hostname
        self.mail_name = mail_name
        self.interval = interval
        self._notify = notify
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.picked_up = 0

    def reconfigure(self, *, hostname: str, mail_name: str) -> None:
        """Adopt new ``myhostname`` and ``mail_name`` values (on reload)."""
        self.hostname, self.mail_name = hostname, mail_name

    def start(self) -> None:
        """Scan ``maildrop/`` every ``interval`` seconds from now on."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="pickup")

    async def stop(self) -> None:
        """Stop scanning; a pass in progress finishes first."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:
            pass

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.run()

    async def run(self) -> list[str]:
        """Pick up every committed message in ``maildrop/`` now (one pass at a time).

        Never raises for a message or an unreadable queue: failures are logged, and the
        message stays in ``maildrop/`` for the next pass.

        Returns:
            The queue IDs moved to ``incoming/`` in this pass.
        """
        async with self._lock:
            directory = self.spool.directory
            try:
                queue_ids = await asyncio.to_thread(directory.scan, QueueName.MAILDROP)
            except SpoolError as exc:
                log.error("cannot scan maildrop/: %s", exc)
                return []
            picked: list[str] = []
            for queue_id in queue_ids:
                try:
                    done = await asyncio.to_thread(self._pick_one, directory, queue_id)
                except SpoolError as exc:
                    if exc.kind is not SpoolErrorKind.NOT_FOUND:
                        log.error("%s: cannot pick up from maildrop/: %s", queue_id, exc)
                    continue
                except OSError as exc:
                    log.error("%s: cannot pick up from maildrop/: %s", queue_id, exc.strerror)
                    continue
                if done:
                    picked.append(queue_id)
                    self.picked_up += 1
                    if self._notify is not None:
                        self._notify(queue_id)
            return picked

    def _pick_one(self, directory: QueueDirectory, queue_id: str) -> bool:
        """Move one message (blocking; runs in a thread). Return True once it is in incoming.

        Raises:
            SpoolError: reading, committing or removing failed.
            OSError: the content cannot be read.
        """
        for queue in _LATER_QUEUES:
            if directory.has_message(queue, queue_id):
                log.info("%s: already in %s/; removing the maildrop/ copy", queue_id, queue)
                directory.remove(queue_id, QueueName.MAILDROP)
                return False
        envelope = directory.load_envelope(queue_id, QueueName.MAILDROP)
        with directory.open_content(queue_id, QueueName.MAILDROP) as handle:
            uid = os.fstat(handle.fileno()).st_uid
            content = handle.read()
        header = pickup_received_header(
            hostname=self.hostname,
            mail_name=self.mail_name,
            uid=uid,
            queue_id=queue_id,
            now=envelope.arrival_time or time.time(),
        )
        message = header + content
        picked = dataclasses.replace(envelope, size=len(message))
        directory.commit(QueueName.INCOMING, queue_id, message, picked)
        directory.remove(queue_id, QueueName.MAILDROP)
        log.info("%s: uid=%d from=<%s>", queue_id, uid, envelope.envelope_sender)
        log.info(
            "%s: from=<%s>, size=%d, nrcpt=%d (queue active)",
            queue_id,
            envelope.envelope_sender,
            len(message),
            len(envelope.recipients),
        )
        return True

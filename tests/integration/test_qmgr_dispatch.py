"""The queue manager's slots: at most ``concurrency`` messages in delivery, the others wait
in arrival order (queue/manager.py); a real spool in tmp_path, a transport that holds."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from roost.delivery.router import Destination, Router
from roost.queue.directory import QueueName
from roost.queue.envelope import Envelope, Recipient, WithProtocol
from roost.queue.manager import DeliveryJob, Outcome, QueueManager, RecipientResult
from roost.queue.schedule import RetryPolicy
from roost.queue.spool import Spool


class HoldingTransport:
    """Delivers once released; records the order and the most deliveries at once."""

    name = "virtual"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.order: list[str] = []
        self.running = 0
        self.most = 0

    async def deliver(self, job: DeliveryJob) -> list[RecipientResult]:
        self.order.append(job.queue_id)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return [
            RecipientResult(index, Outcome.SENT, "2.0.0", "delivered", "virtual", agent="virtual")
            for index, _ in job.recipients
        ]


def make_manager(
    spool: Spool, transport: HoldingTransport | None = None, concurrency: int = 2
) -> QueueManager:
    """A queue manager for ``virtual.test`` delivering through ``transport``."""
    return QueueManager(
        spool,
        Router(mydestination=(), virtual_domains=("virtual.test",)),
        {Destination.VIRTUAL: transport} if transport is not None else {},
        RetryPolicy(),
        hostname="mx.example.test",
        concurrency=concurrency,
    )


def to_alice() -> Envelope:
    return Envelope(
        envelope_sender="bob@example.org",
        recipients=(Recipient("alice@virtual.test"),),
        arrival_time=time.time(),
        protocol=WithProtocol.ESMTP,
    )


async def test_at_most_concurrency_messages_are_delivered_at_once_the_rest_in_order(
    tmp_path: Path,
) -> None:
    async with Spool(tmp_path / "queue") as spool:
        transport = HoldingTransport()
        manager = make_manager(spool, transport, concurrency=2)
        await manager.start()
        envelope = to_alice()
        # enqueue() commits and announces each (the spool's on_commit: manager.committed)
        ids = [await spool.enqueue(envelope, b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(5)]
        for _ in range(1000):  # until both have started (no time limit is asserted)
            if len(transport.order) == 2:
                break
            await asyncio.sleep(0.01)
        assert transport.order == ids[:2] and transport.most == 2
        assert manager.status()["waiting"] == 3
        transport.release.set()
        for _ in range(1000):
            if manager.delivered == 5 and not await spool.scan(QueueName.INCOMING):
                break
            await asyncio.sleep(0.01)
        assert transport.order == ids and transport.most == 2
        assert manager.delivered == 5 and await spool.scan(QueueName.INCOMING) == []
        assert manager.status()["waiting"] == 0
        await manager.stop(1)


async def test_a_delivered_message_keeps_its_slot_until_its_removal(tmp_path: Path) -> None:
    """The messages delivered but still on disk (delivered again after a crash) are never
    more than the concurrency: a delivered message's slot is free only once it is removed."""
    async with Spool(tmp_path / "queue") as spool:
        transport = HoldingTransport()
        transport.release.set()
        manager = make_manager(spool, transport, concurrency=1)
        removals = asyncio.Event()
        real_remove_many = spool.remove_many

        async def held_remove_many(*args, **kwargs):  # type: ignore[no-untyped-def]
            await removals.wait()
            return await real_remove_many(*args, **kwargs)

        spool.remove_many = held_remove_many  # type: ignore[method-assign]
        await manager.start()
        envelope = to_alice()
        ids = [await spool.enqueue(envelope, b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(2)]
        for _ in range(1000):  # until the first is delivered (no time limit is asserted)
            if manager.delivered == 1:
                break
            await asyncio.sleep(0.01)
        for _ in range(20):  # a few loop passes more: the second must not start
            await asyncio.sleep(0)
        assert transport.order == ids[:1] and manager.status()["waiting"] == 1
        assert ids[0] in manager.active_ids()
        removals.set()
        for _ in range(1000):
            if manager.delivered == 2 and not await spool.scan(QueueName.INCOMING):
                break
            await asyncio.sleep(0.01)
        assert transport.order == ids and await spool.scan(QueueName.INCOMING) == []
        await manager.stop(1)


async def test_a_fresh_message_not_opened_for_writing_is_read_the_usual_way(
    tmp_path: Path,
) -> None:
    """The loop's read of a just-committed message opens the queue file for reading and
    writing (kept for its removal); when that fails it reads it as before, in the loop,
    instead of falling back to the spool's threaded read."""
    async with Spool(tmp_path / "queue") as spool:
        envelope = to_alice()
        content = b"Subject: read\r\n\r\nx\r\n"
        queue_id = await spool.enqueue(envelope, content)
        manager = make_manager(spool)
        read, data, fd = manager._read_message_now(queue_id, QueueName.INCOMING, fresh=True)
        assert read is not None and read.queue_id == queue_id and data == content
        assert fd is not None
        os.close(fd)
        spool.directory.read_new_message = lambda *args: None  # type: ignore[method-assign]
        read, data, fd = manager._read_message_now(queue_id, QueueName.INCOMING, fresh=True)
        assert read is not None and read.queue_id == queue_id and data == content
        assert fd is None

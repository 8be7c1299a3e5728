"""The change relay between worker processes: only to the workers watching a mailbox.

The bus tells its watch hook when a mailbox gets its first subscriber and loses its last;
the master (:class:`roost.daemon.workers.WorkerPool`) relays a worker's change notice only
to the other workers watching that mailbox, and answers a subscription with a notice of
its own so that a change it handled just before is not lost. The master side runs here on
real socket pairs, each worker's end a real :class:`~roost.daemon.channel.Channel`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from roost.auth.throttle import Throttle
from roost.daemon.channel import Channel, Message
from roost.daemon.workers import Forker, WorkerPool
from roost.store.bus import DEFAULT_BUS, ChangeBus


def test_watch_hook_hears_of_first_and_last_subscribers_only(tmp_path: Path) -> None:
    bus = ChangeBus()
    inbox, lists = tmp_path / "Maildir", tmp_path / "Maildir" / ".Lists"
    inbox.mkdir()
    lists.mkdir()
    early = bus.subscribe(inbox, lambda _: None)
    heard: list[tuple[str, bool]] = []
    bus.set_watch_hook(lambda key, watched: heard.append((key, watched)))
    assert heard == [(str(inbox), True)]  # what was watched already
    second = bus.subscribe(inbox, lambda _: None)
    other = bus.subscribe(lists, lambda _: None)
    early.cancel()
    assert heard == [(str(inbox), True), (str(lists), True)]
    second.cancel()
    second.cancel()  # idempotent: no second report
    other.cancel()
    again = bus.subscribe(inbox, lambda _: None)
    assert heard[2:] == [(str(inbox), False), (str(lists), False), (str(inbox), True)]
    bus.set_watch_hook(None)
    again.cancel()
    assert len(heard) == 5


def test_watch_hook_reports_come_in_the_order_of_the_changes(tmp_path: Path) -> None:
    """Subscribing and cancelling from several threads: the last report per mailbox
    always matches whether it has subscribers (the hook runs under the bus's lock)."""
    bus = ChangeBus()
    heard: list[tuple[str, bool]] = []
    bus.set_watch_hook(lambda key, watched: heard.append((key, watched)))
    boxes = [tmp_path / f"box{n}" for n in range(3)]
    for box in boxes:
        box.mkdir()

    def churn(seed: int) -> None:
        for n in range(300):
            bus.subscribe(boxes[(seed + n) % 3], lambda _: None).cancel()
            kept = bus.subscribe(boxes[n % 3], lambda _: None)
            if n % 7:
                kept.cancel()

    threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for box in boxes:
        reports = [watched for key, watched in heard if key == str(box)]
        # alternating, starting with True, ending with the current state
        assert reports == [n % 2 == 0 for n in range(len(reports))]
        assert reports[-1] == (bus.subscriber_count(box) > 0)


class _Worker:
    """The worker's end of a channel to the pool, recording what the master sends."""

    def __init__(self, sock: socket.socket) -> None:
        self.received: list[Message] = []
        self.channel = Channel(sock, self.received.append)

    def bus(self) -> list[str]:
        return [str(m["p"]) for m in self.received if m.get("t") == "bus"]

    async def barrier(self, marker: str) -> None:
        """Wait until the master has handled everything this worker sent before: a
        subscription is answered, and the channel keeps order."""
        count = len(self.received)
        self.channel.send({"t": "sub", "p": marker})
        await until(lambda: {"t": "bus", "p": marker} in self.received[count:])
        self.channel.send({"t": "unsub", "p": marker})


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):  # a bound, not a timing assertion
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


@pytest.fixture
async def pool() -> AsyncIterator[tuple[WorkerPool, list[_Worker]]]:
    forker_end, _other_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # The fork server is not started: the pool only ever writes to this socket (a restart)
    pool = WorkerPool(Forker(0, forker_end), 2, Throttle(), on_commit=lambda _: None)
    workers: list[_Worker] = []
    for index in range(2):
        master_end, worker_end = socket.socketpair()
        worker = _Worker(worker_end)
        await worker.channel.start()
        await pool._attach(index, 100 + index, master_end)  # what a "spawned" report does
        workers.append(worker)
    for worker in workers:
        await until(lambda w=worker: any(m.get("t") == "sync" for m in w.received))  # type: ignore[misc]
    yield pool, workers
    pool._stopping = True  # no restarts of the workers closed below
    for worker in workers:
        await worker.channel.close()
    forker_end.close()
    _other_end.close()


async def test_a_change_goes_only_to_the_other_workers_that_watch_it(
    pool: tuple[WorkerPool, list[_Worker]],
) -> None:
    master, (first, second) = pool
    second.channel.send({"t": "bus", "p": "/m/bob"})  # nobody watches it
    await second.barrier("/m/x")
    assert first.bus() == []
    first.channel.send({"t": "sub", "p": "/m/bob"})
    second.channel.send({"t": "sub", "p": "/m/bob"})
    await first.barrier("/m/x")
    await second.barrier("/m/x")
    assert master.watching("/m/bob") == [0, 1]
    first.received.clear()
    second.received.clear()
    second.channel.send({"t": "bus", "p": "/m/bob"})
    await second.barrier("/m/y")
    await until(lambda: first.bus() == ["/m/bob"])
    assert second.bus() == ["/m/y"]  # not its own change back; only the barrier's answer
    counts = master.bus_status()
    assert counts["from_workers"] == 2
    assert counts["relayed"] == 1
    assert counts["unwatched"] == 1
    assert master.watching("/m/bob") == [0, 1]


async def test_a_subscription_after_a_change_still_wakes_the_subscriber(
    pool: tuple[WorkerPool, list[_Worker]],
) -> None:
    """The race of a session that subscribes, reads the mailbox, and a change written
    after that read in another worker that the master handles before the subscription:
    the answer to the subscription (a notice, sent after the change was handled) makes
    the session sync again."""
    master, (first, second) = pool
    second.channel.send({"t": "bus", "p": "/m/alice"})
    await second.barrier("/m/x")  # the master handled the change: relayed to no one
    assert master.bus_status()["relayed"] == 0
    first.channel.send({"t": "sub", "p": "/m/alice"})
    await until(lambda: first.bus() == ["/m/alice"])  # the answer: sync once more
    # from now on the changes are relayed
    second.channel.send({"t": "bus", "p": "/m/alice"})
    await until(lambda: first.bus() == ["/m/alice", "/m/alice"])
    assert master.bus_status()["relayed"] == 1


async def test_unsubscribed_and_dead_workers_get_no_more_changes(
    pool: tuple[WorkerPool, list[_Worker]],
) -> None:
    master, (first, second) = pool
    first.channel.send({"t": "sub", "p": "/m/a"})
    first.channel.send({"t": "sub", "p": "/m/b"})
    await first.barrier("/m/x")
    first.channel.send({"t": "unsub", "p": "/m/a"})
    await first.barrier("/m/y")
    assert master.watching("/m/a") == []
    first.received.clear()
    second.channel.send({"t": "bus", "p": "/m/a"})
    second.channel.send({"t": "bus", "p": "/m/b"})  # sent to first after /m/a was handled
    await until(lambda: first.bus() == ["/m/b"])
    assert master.watching("/m/b") == [0]
    # the worker dies: its subscriptions go with it
    await first.channel.close()
    await until(lambda: master.watching("/m/b") == [])
    assert master.bus_status()["watches"] == 0


async def test_the_masters_own_changes_go_to_the_watchers_gathered(
    pool: tuple[WorkerPool, list[_Worker]],
) -> None:
    """Deliveries in the master publish on its bus: gathered (BUS_RELAY_DELAY), then sent
    only to the workers watching the mailbox, once per mailbox for a burst."""
    master, (first, second) = pool
    for worker in (first, second):
        worker.channel.send({"t": "ready"})
    loop = asyncio.get_running_loop()
    try:
        await master.start()  # installs the relay; the workers are ready already
        first.channel.send({"t": "sub", "p": "/m/carol"})
        await first.barrier("/m/x")
        first.received.clear()
        relay = DEFAULT_BUS.relay
        assert relay is not None
        for _ in range(5):  # a burst of deliveries, from a delivery thread
            await asyncio.to_thread(relay, "/m/carol")
        await asyncio.to_thread(relay, "/m/dave")
        await until(lambda: master.bus_status()["from_master"] == 2)
        await until(lambda: first.bus() == ["/m/carol"])
        await second.barrier("/m/z")
        assert second.bus() == ["/m/z"]
        assert master.bus_status()["unwatched"] == 1  # /m/dave
    finally:
        DEFAULT_BUS.relay = None
        loop.remove_reader(master.forker.sock.fileno())

"""The pieces worker processes share state with: throttle events, anvil peers, shared counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Hashable

import pytest

from roost.auth.throttle import Throttle, ThrottleEvent
from roost.daemon.channel import Channel, Message
from roost.daemon.shared import SharedCounts, decode_key, share_registry
from roost.imap.session import Registry as IMAPRegistry
from roost.smtp import anvil
from roost.smtp.anvil import Anvil, AnvilPeers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_events_replayed_elsewhere_give_the_same_answers() -> None:
    clock = Clock()
    here, there = Throttle(clock, refuse_after=3), Throttle(clock, refuse_after=3)
    events: list[ThrottleEvent] = []
    here.on_event = events.append
    for _ in range(3):
        here.record_failure("192.0.2.1", "alice")
        clock.now += 1
    here.record_success("192.0.2.1", "alice")
    for event in events:
        there.apply(event)
    assert [e[0] for e in events] == ["failure"] * 3 + ["success"]
    assert there.refused("192.0.2.1") and here.refused("192.0.2.1")
    assert there.delay_for("192.0.2.1") == here.delay_for("192.0.2.1") > 0
    assert there.delay_for("192.0.2.9", "alice") == 0.0  # the success cleared the login
    # replaying does not hand the events on again
    assert len(events) == 4


def test_throttle_snapshot_brings_a_new_replica_up_to_date() -> None:
    clock = Clock()
    old, new = Throttle(clock, refuse_after=2), Throttle(clock, refuse_after=2)
    old.record_failure("2001:db8::1", "bob")
    old.record_failure("2001:db8::2")  # the same /48
    new.restore(old.snapshot())
    assert new.refused("2001:db8::3")
    assert new.delay_for("198.51.100.1", "bob") == old.delay_for("198.51.100.1", "bob") > 0


def test_throttle_apply_rejects_unknown_events() -> None:
    with pytest.raises(ValueError, match="unknown throttle event"):
        Throttle().apply(("reset", "192.0.2.1", None, 0.0))


@pytest.fixture
def peers() -> AnvilPeers:
    sent: list[list[object]] = []
    saved = anvil.PEERS.emit
    anvil.PEERS.emit = sent.append
    anvil.PEERS.active.clear()
    anvil.PEERS.arrivals.clear()
    yield anvil.PEERS  # type: ignore[misc]
    anvil.PEERS.emit = saved
    anvil.PEERS.active.clear()
    anvil.PEERS.arrivals.clear()


def _anvil(clock: Clock, **limits: int) -> Anvil:
    return Anvil(
        count_limit=limits.get("count", 0),
        rate_limit=limits.get("rate", 0),
        window=60.0,
        clock=clock,
        exempt=lambda address: address == "127.0.0.2",
        name="smtp",
    )


def test_anvil_counts_the_connections_of_other_processes(peers: AnvilPeers) -> None:
    clock = Clock()
    mine = _anvil(clock, count=3)
    for _ in range(2):
        peers.apply(["arrive", "smtp", "192.0.2.1", clock.now])
    peers.apply(["arrive", "submission", "192.0.2.1", clock.now])  # another service
    assert mine.connect("192.0.2.1").allowed
    assert mine.connect("192.0.2.1") == anvil.Verdict(False, "count")
    peers.apply(["leave", "smtp", "192.0.2.1", clock.now])
    assert mine.connect("192.0.2.1").allowed
    assert mine.connect("127.0.0.2").allowed  # exempt: never counted nor sent


def test_anvil_rate_includes_other_processes_within_the_window(peers: AnvilPeers) -> None:
    clock = Clock()
    mine = _anvil(clock, rate=2)
    peers.apply(["refuse", "smtp", "192.0.2.1", clock.now])
    assert mine.connect("192.0.2.1").allowed
    assert mine.connect("192.0.2.1") == anvil.Verdict(False, "rate")
    clock.now += 61  # the other process's arrival and ours have left the window
    assert mine.connect("192.0.2.1").allowed


def test_anvil_hands_its_events_to_the_other_processes() -> None:
    sent: list[list[object]] = []
    saved = anvil.PEERS.emit
    anvil.PEERS.emit = sent.append
    try:
        clock = Clock()
        mine = _anvil(clock, count=1)
        assert mine.connect("192.0.2.7").allowed
        assert not mine.connect("192.0.2.7").allowed
        mine.disconnect("192.0.2.7")
        assert [event[0] for event in sent] == ["arrive", "refuse", "leave"]
        other = AnvilPeers()
        for event in sent:
            other.apply(event)
        assert other.counts("smtp", "192.0.2.7", clock.now - 60) == (0, 2)
    finally:
        anvil.PEERS.emit = saved


def test_shared_counts_sum_this_process_and_the_others() -> None:
    sent: list[tuple[str, Hashable, int]] = []
    counts = SharedCounts("imap.per_ip", lambda name, key, delta: sent.append((name, key, delta)))
    assert counts.get("192.0.2.1", 0) == 0 and "192.0.2.1" not in counts
    counts.apply("192.0.2.1", 2)  # another worker has two
    counts["192.0.2.1"] = counts.get("192.0.2.1", 0) + 1
    assert counts["192.0.2.1"] == 3 and counts.local == {"192.0.2.1": 1}
    assert counts.pop("192.0.2.1", None) == 3  # ours goes; the others' stay
    assert counts["192.0.2.1"] == 2
    assert sent == [("imap.per_ip", "192.0.2.1", 1), ("imap.per_ip", "192.0.2.1", -1)]
    with pytest.raises(KeyError):
        counts["198.51.100.1"]


def test_share_registry_makes_the_imap_limits_count_every_process() -> None:
    class Service:
        name = "imap"

        def __init__(self) -> None:
            self._registry = IMAPRegistry()

    service = Service()
    sent: list[tuple[str, Hashable, int]] = []
    tables = {t.name: t for t in share_registry(service, lambda *e: sent.append(e))}
    assert set(tables) == {"imap.per_ip", "imap.per_user_ip"}
    registry = service._registry
    tables["imap.per_user_ip"].apply(decode_key(["alice", "192.0.2.1"]), 2)
    assert not registry.add_user(("alice", "192.0.2.1"), 2)
    assert registry.add_user(("alice", "192.0.2.1"), 3)
    registry.remove_user(("alice", "192.0.2.1"))
    assert sent == [
        ("imap.per_user_ip", ("alice", "192.0.2.1"), 1),
        ("imap.per_user_ip", ("alice", "192.0.2.1"), -1),
    ]


def test_anvil_without_limits_counts_and_sends_nothing() -> None:
    sent: list[list[object]] = []
    saved = anvil.PEERS.emit
    anvil.PEERS.emit = sent.append
    try:
        mine = _anvil(Clock())
        for _ in range(3):
            assert mine.connect("192.0.2.7").allowed
        mine.disconnect("192.0.2.7")
        assert sent == []
        assert _anvil(Clock(), rate=5).connect("192.0.2.7").allowed
        assert [event[0] for event in sent] == ["arrive"]
    finally:
        anvil.PEERS.emit = saved


async def test_channel_sends_the_messages_of_one_loop_pass_together_in_order() -> None:
    here, there = socket.socketpair()
    there.setblocking(False)
    received: list[Message] = []
    channel = Channel(here, received.append)
    await channel.start()
    try:
        for n in range(3):
            channel.send({"t": "commit", "id": f"id{n}"})
        with pytest.raises(BlockingIOError):  # nothing written before the pass ends
            there.recv(4096)
        data = b""
        while data.count(b"\n") < 3:
            await asyncio.sleep(0.01)
            with contextlib.suppress(BlockingIOError):
                data += there.recv(4096)
        assert [json.loads(line) for line in data.splitlines()] == [
            {"t": "commit", "id": f"id{n}"} for n in range(3)
        ]
        there.sendall(b'{"t":"status","id":1}\n')
        while not received:
            await asyncio.sleep(0.01)
        assert received == [{"t": "status", "id": 1}]
    finally:
        await channel.close()
        there.close()


async def test_channel_reads_lines_split_and_joined_across_reads_in_order() -> None:
    """Lines arrive as the socket gives them: several in one read, one across reads, a
    malformed one (logged and skipped), and an unterminated last one at the end."""
    here, there = socket.socketpair()
    received: list[Message] = []
    channel = Channel(here, received.append)
    await channel.start()
    try:
        there.sendall(b'{"t":"commit","id":"a"}\n{"t":"commit","id":"b"}\n{"t":"com')
        while len(received) < 2:
            await asyncio.sleep(0.01)
        assert received == [{"t": "commit", "id": "a"}, {"t": "commit", "id": "b"}]
        there.sendall(b'mit","id":"c"}\nnot json\n[1]\n{"t":"commit","id":"d"}\n{"t":"x"}')
        while len(received) < 4:
            await asyncio.sleep(0.01)
        there.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(channel.closed.wait(), 10)
        assert received == [
            {"t": "commit", "id": "a"},
            {"t": "commit", "id": "b"},
            {"t": "commit", "id": "c"},
            {"t": "commit", "id": "d"},
            {"t": "x"},
        ]
    finally:
        await channel.close()
        there.close()

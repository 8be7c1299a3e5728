"""The smtp transport's per-destination slots and connection cache, on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from roost.delivery.destinations import ConnectionCache, DestinationSlots
from roost.delivery.nexthop import Nexthop, Route, RouteKind


class Closed:
    """Records what the cache closed; ``wait`` until ``count`` were."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._changed = asyncio.Event()

    async def __call__(self, connection: str) -> None:
        self.names.append(connection)
        self._changed.set()

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(30):
            while len(self.names) < count:
                self._changed.clear()
                await self._changed.wait()


async def test_the_longest_idle_connection_is_taken_first() -> None:
    # every connection is used in turn, so none idles out while mail flows
    closed = Closed()
    cache: ConnectionCache[str] = ConnectionCache(60.0, closed, per_key=5)
    cache.put("a", "a1")
    cache.put("a", "a2")
    cache.put("b", "b1")
    assert len(cache) == 3
    assert cache.take("a") == "a1"
    cache.put("a", "a1")
    assert cache.take("a") == "a2"
    assert cache.take("a") == "a1"
    assert cache.take("a") is None
    assert cache.take("b") == "b1"
    assert closed.names == []
    await cache.close_all()


async def test_idle_connections_are_closed_after_idle_time_and_the_rest_kept() -> None:
    closed = Closed()
    cache: ConnectionCache[str] = ConnectionCache(0.05, closed, per_key=5)
    cache.put("a", "old")
    await closed.wait(1)
    assert closed.names == ["old"] and len(cache) == 0
    # a connection taken back before it expires is never closed by the cache
    cache.put("a", "reused")
    assert cache.take("a") == "reused"
    cache.put("b", "b1")
    cache.put("a", "a1")
    await closed.wait(3)
    assert sorted(closed.names[1:]) == ["a1", "b1"] and len(cache) == 0


async def test_more_than_per_key_idle_connections_are_closed_at_once() -> None:
    closed = Closed()
    cache: ConnectionCache[str] = ConnectionCache(60.0, closed, per_key=2)
    for name in ("c1", "c2", "c3"):
        cache.put("a", name)
    await closed.wait(1)
    assert closed.names == ["c3"] and len(cache) == 2
    await cache.close_all()
    assert sorted(closed.names) == ["c1", "c2", "c3"] and len(cache) == 0


async def test_no_idle_time_keeps_nothing() -> None:
    closed = Closed()
    cache: ConnectionCache[str] = ConnectionCache(0.0, closed)
    cache.put("a", "c1")
    await closed.wait(1)
    assert cache.take("a") is None


async def test_slots_limit_concurrent_deliveries_per_destination() -> None:
    slots = DestinationSlots(2)
    inside: list[str] = []
    release = asyncio.Event()

    async def deliver(key: str, name: str) -> None:
        async with slots.slot(key):
            inside.append(name)
            await release.wait()

    tasks = [asyncio.create_task(deliver("a", f"a{i}")) for i in range(3)]
    tasks.append(asyncio.create_task(deliver("b", "b0")))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sorted(inside) == ["a0", "a1", "b0"]
    assert slots.waiting_or_active("a") == 3 and slots.waiting_or_active("b") == 1
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(inside) == ["a0", "a1", "a2", "b0"]
    assert slots.waiting_or_active("a") == 0 and slots._semaphores == {}


async def test_a_delivery_cancelled_while_waiting_for_a_slot_gives_it_up() -> None:
    slots = DestinationSlots(1)
    async with slots.slot("a"):
        waiting = asyncio.create_task(slots.slot("a").__aenter__())
        await asyncio.sleep(0)
        assert slots.waiting_or_active("a") == 2
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert slots.waiting_or_active("a") == 1
    assert slots.waiting_or_active("a") == 0


def test_route_key_names_the_next_hops_in_order() -> None:
    route = Route(RouteKind.SMTP, (Nexthop("a.example", 587, False), Nexthop("b.example")))
    assert route.key == "[a.example]:587, b.example"
    assert route == Route(RouteKind.SMTP, route.nexthops)

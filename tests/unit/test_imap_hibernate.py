"""roost.imap.hibernate.Alarms: one timer for the deadlines of hibernated sessions."""

from __future__ import annotations

import asyncio
import time

import pytest

from roost.imap.hibernate import Alarms


class _Sleeper:
    def __init__(self, name: str, woken: list[tuple[str, float]], done: asyncio.Event) -> None:
        self.name = name
        self.woken = woken
        self.done = done

    def _alarm(self, when: float) -> None:
        self.woken.append((self.name, when))
        if self.name == "last":
            self.done.set()

    def _alarm_pending(self, when: float) -> bool:
        return True


def test_alarms_fire_in_deadline_order_once_each_with_one_timer() -> None:
    async def run() -> tuple[list[tuple[str, float]], list[float], int]:
        alarms = Alarms()
        woken: list[tuple[str, float]] = []
        done = asyncio.Event()
        now = time.monotonic()
        deadlines = {"c": now + 0.06, "a": now + 0.02, "last": now + 0.1, "b": now + 0.04}
        for name, when in deadlines.items():
            alarms.add(when, _Sleeper(name, woken, done))
        # A second deadline for the same sleeper is a second entry (the session
        # ignores the stale one); a past deadline fires at once.
        alarms.add(now - 1.0, _Sleeper("past", woken, done))
        pending = len(alarms)
        await asyncio.wait_for(done.wait(), 10)
        fired_at = time.monotonic()
        return (
            woken,
            [deadlines.get(name, now - 1.0) for name, _ in woken],
            pending + int(fired_at < deadlines["last"] - 0.005),
        )

    woken, expected, pending = asyncio.run(run())
    assert [name for name, _ in woken] == ["past", "a", "b", "c", "last"]
    assert [when for _, when in woken] == expected
    assert pending == 5  # and "last" did not fire before its deadline


def test_alarms_reschedule_for_an_earlier_deadline() -> None:
    async def run() -> list[str]:
        alarms = Alarms()
        woken: list[tuple[str, float]] = []
        done = asyncio.Event()
        now = time.monotonic()
        alarms.add(now + 30.0, _Sleeper("late", woken, done))
        alarms.add(now + 0.01, _Sleeper("last", woken, done))
        await asyncio.wait_for(done.wait(), 10)
        assert len(alarms) == 1  # "late" still waits
        return [name for name, _ in woken]

    assert asyncio.run(run()) == ["last"]


class _Stale:
    """A sleeper whose entries are all stale but the one for ``latest``."""

    def __init__(self) -> None:
        self.latest = 0.0

    def _alarm(self, when: float) -> None:
        raise AssertionError("no deadline of this test is reached")

    def _alarm_pending(self, when: float) -> bool:
        return when == self.latest


def test_alarms_drop_stale_entries_as_the_heap_grows() -> None:
    async def run() -> list[int]:
        alarms = Alarms()
        now = time.monotonic()
        sleepers = [_Stale() for _ in range(10)]
        sizes = []
        for step in range(1000):
            sleeper = sleepers[step % 10]
            sleeper.latest = now + 3600 + step
            alarms.add(sleeper.latest, sleeper)
            sizes.append(len(alarms))
        return sizes

    sizes = asyncio.run(run())
    # Without the clean-up the heap would hold all 1,000 entries; each sleeper has one
    # live entry (the one just added included), so after a clean-up 10 are left.
    assert sizes[255] == 256
    assert sizes[256] == 10
    assert max(sizes) == 256
    assert sizes[-1] < 256


def test_heap_trim_runs_once_per_burst_and_not_more_often_than_its_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import roost.daemon.workers
    from roost.imap import hibernate

    trims: list[float] = []
    monkeypatch.setattr(hibernate, "TRIM_DELAY", 0.05)
    monkeypatch.setattr(hibernate, "TRIM_INTERVAL", 0.3)
    monkeypatch.setattr(
        roost.daemon.workers, "release_free_heap", lambda: trims.append(time.monotonic()) or True
    )

    async def run() -> float:
        trim = hibernate.HeapTrim()
        began = time.monotonic()
        for _ in range(50):  # a burst: one trim
            trim.soon()
        await asyncio.sleep(0.15)
        assert len(trims) == 1
        trim.soon()  # soon after the first trim: waits for the interval
        await asyncio.sleep(0.5)
        return began

    began = asyncio.run(run())
    assert len(trims) == 2
    assert trims[0] - began >= 0.05 - hibernate.SLACK
    assert trims[1] - trims[0] >= 0.3 - hibernate.SLACK

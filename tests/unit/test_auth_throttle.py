"""Unit tests for roost.auth.throttle, driven by a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.auth.throttle import Throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_never_failed_is_never_delayed(clock: FakeClock) -> None:
    throttle = Throttle(clock)
    assert throttle.delay_for("192.0.2.1", "alice") == 0.0
    assert throttle.delay_for("192.0.2.1") == 0.0
    assert not throttle.refused("192.0.2.1")
    assert len(throttle) == 0


def test_delay_doubles_and_is_capped(clock: FakeClock) -> None:
    throttle = Throttle(clock, max_delay=15, refuse_after=100)
    delays = []
    for _ in range(7):
        throttle.record_failure("192.0.2.1")
        delays.append(throttle.delay_for("192.0.2.1"))
    assert delays == [1, 2, 4, 8, 15, 15, 15]


def test_delay_counts_from_the_last_failure(clock: FakeClock) -> None:
    throttle = Throttle(clock)
    for _ in range(3):
        throttle.record_failure("192.0.2.1")
    assert throttle.delay_for("192.0.2.1") == 4.0
    clock.advance(1.5)
    assert throttle.delay_for("192.0.2.1") == 2.5
    clock.advance(10)
    assert throttle.delay_for("192.0.2.1") == 0.0
    throttle.record_failure("192.0.2.1")  # the count continues within the window
    assert throttle.delay_for("192.0.2.1") == 8.0


def test_refused_after_n_failures_until_window_passes(clock: FakeClock) -> None:
    throttle = Throttle(clock, refuse_after=3, window=300)
    for _ in range(2):
        throttle.record_failure("192.0.2.1")
    assert not throttle.refused("192.0.2.1")
    throttle.record_failure("192.0.2.1")
    assert throttle.refused("192.0.2.1")
    assert not throttle.refused("192.0.2.2")
    clock.advance(300)
    assert throttle.refused("192.0.2.1")
    clock.advance(0.001)
    assert not throttle.refused("192.0.2.1")
    assert throttle.delay_for("192.0.2.1") == 0.0
    throttle.record_failure("192.0.2.1")  # a fresh count after the window
    assert throttle.delay_for("192.0.2.1") == 1.0 and not throttle.refused("192.0.2.1")


def test_slow_failures_outside_the_window_do_not_accumulate(clock: FakeClock) -> None:
    throttle = Throttle(clock, refuse_after=2, window=60)
    for _ in range(5):
        throttle.record_failure("192.0.2.1", "alice")
        clock.advance(61)
    assert not throttle.refused("192.0.2.1")
    assert throttle.delay_for("192.0.2.1", "alice") == 0.0


def test_login_name_is_counted_across_addresses(clock: FakeClock) -> None:
    throttle = Throttle(clock, refuse_after=3)
    for last_octet in range(1, 5):
        throttle.record_failure(f"198.51.100.{last_octet}", "Alice")
    # a new address guessing the same account waits as long as the account's count says
    assert throttle.delay_for("203.0.113.9", "alice") == 8.0
    assert throttle.delay_for("203.0.113.9", "bob") == 0.0
    # but login failures never refuse an address (no lock-out of the victim)
    assert not throttle.refused("203.0.113.9")


def test_success_clears_the_login_but_not_the_address(clock: FakeClock) -> None:
    throttle = Throttle(clock, refuse_after=10)
    for _ in range(3):
        throttle.record_failure("192.0.2.1", "alice")
    throttle.record_success("192.0.2.1", "alice")
    assert throttle.delay_for("198.51.100.1", "alice") == 0.0
    assert throttle.delay_for("192.0.2.1", "carol") == 4.0
    for _ in range(7):
        throttle.record_failure("192.0.2.1", "carol")
    assert throttle.refused("192.0.2.1")


def test_delay_is_the_larger_of_address_and_login(clock: FakeClock) -> None:
    throttle = Throttle(clock)
    throttle.record_failure("192.0.2.1", "alice")
    for _ in range(3):
        throttle.record_failure("198.51.100.1", "alice")
    assert throttle.delay_for("192.0.2.1", "alice") == 8.0
    assert throttle.delay_for("192.0.2.1") == 1.0


def test_ipv6_grouped_by_prefix_and_mapped_ipv4(clock: FakeClock) -> None:
    throttle = Throttle(clock, ipv6_prefix=48)
    throttle.record_failure("2001:db8:1:2::1")
    assert throttle.delay_for("2001:db8:1:ffff::99") == 1.0
    assert throttle.delay_for("[2001:db8:1:2::1]") == 1.0
    assert throttle.delay_for("2001:db8:2::1") == 0.0
    throttle.record_failure("::ffff:192.0.2.1")
    assert throttle.delay_for("192.0.2.1") == 1.0


def test_non_ip_addresses_are_counted_as_text(clock: FakeClock) -> None:
    throttle = Throttle(clock)
    throttle.record_failure("/run/roost/auth.sock")
    assert throttle.delay_for("/run/roost/auth.sock") == 1.0
    assert throttle.delay_for("other") == 0.0


def test_memory_is_bounded_by_pruning_and_eviction(clock: FakeClock) -> None:
    throttle = Throttle(clock, window=60, max_keys=10)
    for index in range(8):
        throttle.record_failure(f"10.0.0.{index}", f"user{index}")
        clock.advance(1)
    assert len(throttle) == 10  # oldest evicted beyond the cap
    assert throttle.delay_for("10.0.0.0", "user0") == 0.0
    assert throttle.delay_for("10.0.0.7", "user7") == 0.0  # 1 s penalty, 1 s passed
    clock.advance(120)
    throttle.record_failure("10.1.0.1")  # prunes the expired ones
    assert len(throttle) == 1


def test_eviction_keeps_recent_offenders(clock: FakeClock) -> None:
    throttle = Throttle(clock, max_keys=3, refuse_after=3)
    for _ in range(3):
        throttle.record_failure("192.0.2.1")
    for index in range(2):
        clock.advance(1)
        throttle.record_failure(f"10.0.0.{index}")
    clock.advance(1)
    throttle.record_failure("192.0.2.1")  # moves to the newest end
    clock.advance(1)
    throttle.record_failure("10.9.9.9")
    assert throttle.refused("192.0.2.1")
    assert len(throttle) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_delay": -1},
        {"refuse_after": 0},
        {"window": 0},
        {"max_keys": 0},
        {"ipv6_prefix": 129},
    ],
)
def test_invalid_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Throttle(FakeClock(), **kwargs)  # type: ignore[arg-type]


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["fail", "success", "wait"]),
            st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "junk"]),
            st.sampled_from([None, "alice", "bob"]),
            st.floats(min_value=0, max_value=400),
        ),
        max_size=40,
    )
)
def test_delay_is_always_within_bounds(events: list[tuple[str, str, str | None, float]]) -> None:
    clock = FakeClock()
    throttle = Throttle(clock, max_delay=15, refuse_after=5, window=300, max_keys=4)
    for action, address, login, seconds in events:
        if action == "fail":
            throttle.record_failure(address, login)
        elif action == "success":
            throttle.record_success(address, login)
        else:
            clock.advance(seconds)
        assert 0.0 <= throttle.delay_for(address, login) <= 15.0
        assert len(throttle) <= 4

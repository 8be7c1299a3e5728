"""IDLE sessions that move into the master (``imap_hibernate_timeout``), end to end.

With two workers and ``imap_hibernate_timeout = 1s`` a session in IDLE moves to the master
(``roost status``: ``hibernated.sessions``) and comes back into a worker for a delivery,
the client's DONE, a change by another program (the master's poll), and ends with the
daemon's ``* BYE``; it survives a worker killed with SIGKILL, still counts for
``mail_max_userip_connections``, and a TLS session never moves.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roost.daemon.control import request
from tests.e2e.daemon import roost_cli
from tests.e2e.instance import Instance
from tests.e2e.test_imap_helpers import (
    RawClient,
    add_user,
    connect,
    deliver,
    maildir,
    start_imap_instance,
    wait_log,
)

SETTINGS = (
    "worker_processes = 2\n"
    "imap_hibernate_timeout = 1s\n"
    "mailbox_idle_check_interval = 1s\n"
    "mail_max_userip_connections = 2\n"
)


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_imap_instance(tmp_path_factory.mktemp("hibernate-master"), SETTINGS)
    yield running
    running.daemon.stop()


def status(instance: Instance) -> dict[str, object]:
    return request(instance.directory / "lib" / "control.sock", "status")


def counter(instance: Instance, name: str = "taken") -> int:
    """A counter of the master's hibernated sessions (``sessions`` there now, ``taken``,
    ``woken`` for ``input``, ``change``, ``poll``...)."""
    counts = status(instance).get("hibernated")
    assert isinstance(counts, dict), counts
    return int(counts[name])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def idle(
    instance: Instance, user: tuple[str, str], *, tls: bool = False, starttls: bool = False
) -> RawClient:
    raw = RawClient(instance, service="imaps" if tls else "imap")
    if starttls:
        raw.starttls()
    assert raw.command("l", f'LOGIN "{user[0]}" "{user[1]}"')[-1].startswith(b"l OK")
    assert raw.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
    raw.send(b"i IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"
    raw.sock.settimeout(20)
    return raw


def moved(instance: Instance, before: int, sessions: int = 1) -> None:
    """Wait until ``sessions`` more sessions than ``before`` were taken by the master."""
    wait_for(lambda: counter(instance) >= before + sessions, "the move to the master")


def test_delivery_wakes_a_session_in_the_master_and_it_goes_on(instance: Instance) -> None:
    user = add_user(instance)
    deliver(instance, user[0], "one")
    taken = counter(instance)
    raw = idle(instance, user)
    moved(instance, taken)
    assert counter(instance, "sessions") == 1
    shown = roost_cli(instance.directory / "main.cf", "status")
    assert "  hibernated: sessions 1, " in shown.stdout, shown.stdout
    changes = counter(instance, "change")
    deliver(instance, user[0], "two")
    assert raw.line() == b"* 2 EXISTS\r\n"
    assert raw.line() == b"* 2 RECENT\r\n"
    assert counter(instance, "change") == changes + 1
    raw.send(b"DONE\r\n")
    assert raw.line() == b"i OK Idle completed.\r\n"
    reply = raw.command("f", "FETCH 1:* (FLAGS)")
    assert reply[-1].startswith(b"f OK") and len(reply) == 3, reply
    # IDLE again: it moves again, and the client's DONE brings it back at once.
    raw.send(b"j IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"
    moved(instance, taken, 2)
    raw.send(b"DONE\r\n")
    assert raw.line() == b"j OK Idle completed.\r\n"
    assert raw.command("o", "LOGOUT")[-1].startswith(b"o OK")
    # One logout line for the session, with what both processes counted.
    found = wait_log(
        instance, rf"imap\({re.escape(user[0])}\): Disconnected: Logged out in=(\d+) out=(\d+)"
    )
    sent = [b"s SELECT INBOX", b"i IDLE", b"DONE", b"f FETCH 1:* (FLAGS)", b"j IDLE", b"DONE"]
    assert int(found.group(1)) == sum(len(line) + 2 for line in [*sent, b"o LOGOUT"])
    assert len(re.findall(rf"imap\({re.escape(user[0])}\): Disconnected", instance.log())) == 1
    assert counter(instance, "sessions") == 0
    raw.close()


def test_flag_changes_and_expunges_reach_a_session_woken_from_the_master(
    instance: Instance,
) -> None:
    user = add_user(instance)
    for subject in ("one", "two", "three"):
        deliver(instance, user[0], subject)
    taken = counter(instance)
    raw = idle(instance, user)
    moved(instance, taken)
    other = connect(instance, *user)
    other.select("INBOX")
    other.store("2", "+FLAGS", "(\\Flagged)")
    assert re.match(rb"\* 2 FETCH \(FLAGS \(\\Flagged \\Recent\)\)\r\n", raw.line())
    moved(instance, taken, 2)  # back in the master, with the new flags in its view
    other.store("1", "+FLAGS", "(\\Deleted)")
    other.expunge()
    lines = [raw.line()]
    while lines[-1] != b"* 1 EXPUNGE\r\n":
        assert re.match(rb"\* 1 FETCH \(FLAGS \(\\Deleted \\Recent\)\)\r\n", lines[-1]), lines
        lines.append(raw.line())
    assert raw.line() == b"* 2 RECENT\r\n"
    raw.send(b"DONE\r\n")
    assert raw.line() == b"i OK Idle completed.\r\n"
    reply = raw.command("f", "FETCH 1:* (UID FLAGS)")
    assert reply[:-1] == [
        b"* 1 FETCH (UID 2 FLAGS (\\Flagged \\Recent))\r\n",
        b"* 2 FETCH (UID 3 FLAGS (\\Recent))\r\n",
    ], reply
    other.logout()
    raw.close()


def test_done_from_the_client_is_answered(instance: Instance) -> None:
    user = add_user(instance)
    taken, woken = counter(instance), counter(instance, "input")
    raw = idle(instance, user)
    moved(instance, taken)
    raw.send(b"DONE\r\nn NOOP\r\n")
    assert raw.line() == b"i OK Idle completed.\r\n"
    assert raw.until_tagged("n")[-1].startswith(b"n OK")
    assert counter(instance, "input") == woken + 1
    raw.close()


def test_a_change_by_another_program_is_found_by_the_masters_poll(instance: Instance) -> None:
    user = add_user(instance)
    deliver(instance, user[0], "one")
    taken, polls = counter(instance), counter(instance, "poll")
    raw = idle(instance, user)
    moved(instance, taken)
    new = maildir(instance, user[0]) / "new"
    name = f"{time.time_ns()}.P1Q1.other.example"
    (new.parent / "tmp" / name).write_bytes(b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n")
    (new.parent / "tmp" / name).rename(new / name)
    assert raw.line() == b"* 2 EXISTS\r\n"
    assert raw.line() == b"* 2 RECENT\r\n"
    assert counter(instance, "poll") == polls + 1
    raw.send(b"DONE\r\n")
    assert raw.line() == b"i OK Idle completed.\r\n"
    raw.close()


def test_a_client_that_closes_in_the_master_ends_its_session_once(instance: Instance) -> None:
    user = add_user(instance)
    taken = counter(instance)
    raw = idle(instance, user)
    moved(instance, taken)
    raw.close()
    pattern = rf"imap\({re.escape(user[0])}\): Disconnected: Connection closed in=24 "
    wait_log(instance, pattern)  # "s SELECT INBOX", "i IDLE": what the client sent
    wait_for(lambda: counter(instance, "sessions") == 0, "the master to let it go")
    assert len(re.findall(rf"imap\({re.escape(user[0])}\): Disconnected", instance.log())) == 1


def test_a_killed_worker_leaves_the_sessions_in_the_master(instance: Instance) -> None:
    user = add_user(instance)
    taken = counter(instance)
    raw = idle(instance, user)
    moved(instance, taken)
    workers = status(instance)["workers"]
    assert isinstance(workers, list)
    old = {int(w["pid"]) for w in workers}
    for pid in old:
        os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        now = status(instance)["workers"]
        assert isinstance(now, list)
        return len(now) == 2 and not old & {int(w["pid"]) for w in now}

    wait_for(replaced, "new workers")
    assert counter(instance, "sessions") == 1
    raw.send(b"DONE\r\n")
    assert raw.line() == b"i OK Idle completed.\r\n"
    assert raw.command("o", "LOGOUT")[-1].startswith(b"o OK")
    raw.close()


@pytest.mark.parametrize("how", ["imaps", "starttls"])
def test_a_tls_session_stays_in_its_worker(instance: Instance, how: str) -> None:
    user = add_user(instance)
    plain_user = add_user(instance)
    taken = counter(instance)
    tls = idle(instance, user, tls=how == "imaps", starttls=how == "starttls")
    plain = idle(instance, plain_user)
    moved(instance, taken)  # the plaintext one, started later, moved
    time.sleep(1.5)  # an ordering aid: the TLS session's timeout passed too
    assert counter(instance) == taken + 1
    assert counter(instance, "sessions") == 1
    for client in (tls, plain):
        client.send(b"DONE\r\n")
        assert client.line() == b"i OK Idle completed.\r\n"
        client.close()


def test_a_session_in_the_master_counts_for_the_user_limit(instance: Instance) -> None:
    user = add_user(instance)
    taken = counter(instance)
    first, second = idle(instance, user), idle(instance, user)
    moved(instance, taken, 2)
    assert counter(instance, "sessions") == 2
    third = RawClient(instance)
    reply = third.command("l", f'LOGIN "{user[0]}" "{user[1]}"')
    assert reply[-1].startswith(b"l NO [UNAVAILABLE] Maximum number of connections"), reply
    third.close()
    first.send(b"DONE\r\n")
    assert first.line() == b"i OK Idle completed.\r\n"
    assert first.command("o", "LOGOUT")[-1].startswith(b"o OK")
    first.close()
    wait_log(instance, rf"imap\({re.escape(user[0])}\): Disconnected: Logged out")
    fourth = RawClient(instance)
    assert fourth.command("l", f'LOGIN "{user[0]}" "{user[1]}"')[-1].startswith(b"l OK")
    fourth.close()
    second.close()


def test_stop_says_bye_to_the_sessions_in_the_master(tmp_path: Path) -> None:
    running = start_imap_instance(tmp_path, SETTINGS)
    try:
        user = add_user(running)
        raw = idle(running, user)
        moved(running, 0)
        running.daemon.stop()
        assert raw.line() == b"* BYE Server shutting down.\r\n"
        assert raw.line() == b""
        wait_log(running, rf"imap\({re.escape(user[0])}\): Disconnected: Server shutting down in=")
        raw.close()
    finally:
        running.daemon.stop()


def test_the_worker_a_session_left_is_replaced_and_the_session_wakes_in_another(
    tmp_path: Path,
) -> None:
    """``imap_hibernate_timeout`` and ``max_idle`` together (what 1,000 IDLE connections
    in little memory rely on): the session moves to the master, the worker it left has no
    client and is replaced by a new fork, and a delivery wakes the session into a worker
    that never had it; it goes on there."""
    from tests.e2e.test_workers import alive, serving_pid, worker_pids

    running = start_imap_instance(tmp_path / "roost", SETTINGS + "max_idle = 1s\n")
    try:
        user = add_user(running)
        deliver(running, user[0], "one")
        raw = RawClient(running)
        served = serving_pid(raw.sock, worker_pids(running))  # before it can move
        assert raw.command("l", f'LOGIN "{user[0]}" "{user[1]}"')[-1].startswith(b"l OK")
        assert raw.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        raw.send(b"i IDLE\r\n")
        assert raw.line() == b"+ idling\r\n"
        raw.sock.settimeout(20)
        moved(running, 0)
        # The worker the session left has no client now: it goes (replaced by a new
        # fork, or given up if the other worker is idle too).
        wait_for(lambda: served not in worker_pids(running) and not alive(served), "its exit")
        assert re.search(rf"worker \d pid {served} idle for \d+s: (replaced|exited)", running.log())
        assert counter(running, "sessions") == 1
        deliver(running, user[0], "two")
        assert raw.line() == b"* 2 EXISTS\r\n"
        assert raw.line() == b"* 2 RECENT\r\n"
        raw.send(b"DONE\r\n")
        assert raw.line() == b"i OK Idle completed.\r\n"
        reply = raw.command("f", "FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert reply[-1].startswith(b"f OK") and b"two" in b"".join(reply), reply
        assert raw.command("o", "LOGOUT")[-1].startswith(b"o OK")
        raw.close()
        assert "killed by signal" not in running.log()
    finally:
        running.daemon.stop()

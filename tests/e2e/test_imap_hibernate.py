"""IDLE sessions that hibernate (roost.imap.hibernate): every way out of it, end to end.

A session in IDLE with nothing to do ends its task once its mailbox is suspended; client
input, the connection's end, a change notification, a shutdown or its next deadline (the
``mailbox_idle_check_interval`` poll, the keepalive) starts a new one. Each test lets the
session settle (it hibernates within milliseconds of ``+ idling``) before the event, and
then checks that the session carries on as RFC 2177 asks, and hibernates again.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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

#: Long enough for the session to suspend its mailbox and hibernate (an ordering aid,
#: not a timed assertion: a session still awake must behave the same).
SETTLE = 0.3


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_imap_instance(
        tmp_path_factory.mktemp("hibernate"), "mailbox_idle_check_interval = 1s\n"
    )
    yield running
    running.daemon.stop()


def _idle(instance: Instance, user: tuple[str, str], mailbox: str = "INBOX") -> RawClient:
    raw = RawClient(instance)
    assert raw.command("l", f'LOGIN "{user[0]}" "{user[1]}"')[-1].startswith(b"l OK")
    assert raw.command("s", f"SELECT {mailbox}")[-1].startswith(b"s OK")
    raw.send(b"i IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"
    raw.sock.settimeout(10)
    time.sleep(SETTLE)
    return raw


def _drop_in_new(instance: Instance, login: str, subject: str) -> None:
    """Another program (not roost: no change notification) delivers into ``new/``."""
    new = maildir(instance, login) / "new"
    name = f"{time.time_ns()}.P1Q1.other.example"
    data = f"From: a@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    (new.parent / "tmp" / name).write_bytes(data)
    (new.parent / "tmp" / name).rename(new / name)


def _until(raw: RawClient, wanted: bytes) -> list[bytes]:
    """Lines up to ``wanted`` (included); the others may only be flag updates."""
    lines = [raw.line()]
    while lines[-1] != wanted:
        assert re.match(rb"\* \d+ FETCH \(FLAGS ", lines[-1]), lines
        lines.append(raw.line())
    return lines


def test_hibernated_idle_wakes_for_every_change(instance: Instance) -> None:
    user = add_user(instance)
    deliver(instance, user[0], "one")
    deliver(instance, user[0], "two")
    raw = _idle(instance, user)
    # A delivery (the bus wakes the session).
    deliver(instance, user[0], "three")
    assert raw.line() == b"* 3 EXISTS\r\n"
    assert raw.line() == b"* 3 RECENT\r\n"
    time.sleep(SETTLE)
    # Another session's STORE and EXPUNGE (sequence numbers from the packed view).
    other = connect(instance, *user)
    other.select("INBOX")
    other.store("2", "+FLAGS", "(\\Flagged)")
    assert re.match(rb"\* 2 FETCH \(FLAGS \(\\Flagged \\Recent\)\)\r\n", raw.line())
    time.sleep(SETTLE)
    other.store("1", "+FLAGS", "(\\Deleted)")
    other.expunge()
    _until(raw, b"* 1 EXPUNGE\r\n")  # (a FETCH of \\Deleted may come first)
    assert raw.line() == b"* 2 RECENT\r\n"
    time.sleep(SETTLE)
    # Another program: only the mailbox_idle_check_interval poll (a deadline) finds it.
    _drop_in_new(instance, user[0], "four")
    assert raw.line() == b"* 3 EXISTS\r\n"
    assert raw.line() == b"* 3 RECENT\r\n"
    time.sleep(SETTLE)
    # DONE, pipelined with the next command.
    raw.send(b"DONE\r\nf FETCH 1:* (FLAGS)\r\n")
    assert raw.line() == b"i OK Idle completed.\r\n"
    reply = raw.until_tagged("f")
    assert reply[-1].startswith(b"f OK"), reply
    assert len(reply) == 4, reply  # messages two, three and the other program's
    # And IDLE again: the session hibernates and wakes as many times as it needs.
    raw.send(b"j IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"
    time.sleep(SETTLE)
    other.store("1", "+FLAGS", "(\\Seen)")
    assert re.match(rb"\* 1 FETCH \(FLAGS \(\\Flagged \\Seen \\Recent\)\)\r\n", raw.line())
    raw.send(b"DONE\r\n")
    assert raw.line() == b"j OK Idle completed.\r\n"
    assert raw.command("o", "LOGOUT")[-1].startswith(b"o OK")
    other.logout()
    raw.close()


def test_a_line_other_than_done_ends_hibernated_idle(instance: Instance) -> None:
    user = add_user(instance)
    raw = _idle(instance, user)
    raw.send(b"NOT DONE\r\n")
    assert raw.line().startswith(b"i BAD")
    assert raw.command("n", "NOOP")[-1].startswith(b"n OK")
    raw.close()


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_dropped_connection_ends_a_hibernated_session(instance: Instance, how: str) -> None:
    user = add_user(instance)
    raw = _idle(instance, user)
    if how == "close":
        linger = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        raw.close()  # a reset
    else:
        raw.sock.shutdown(socket.SHUT_WR)  # EOF only
        assert raw.line() == b""
        raw.close()
    login = re.escape(user[0])
    wait_log(instance, rf"imap\({login}\): Disconnected: Connection closed in=\d+ out=\d+")
    # The session's mailbox is closed: its change subscription is gone, so a delivery
    # finds nobody to wake (and nothing fails).
    deliver(instance, user[0], "after")
    assert "session failed" not in instance.log()


def test_keepalives_and_shutdown_of_hibernated_sessions(tmp_path: Path) -> None:
    running = start_imap_instance(tmp_path, "imap_idle_notify_interval = 1s\n")
    try:
        user = add_user(running)
        raws = [_idle(running, user) for _ in range(3)]
        # The keepalive deadline wakes each session (one timer for all), again and again.
        for _ in range(2):
            for raw in raws:
                assert raw.line() == b"* OK Still here\r\n"
        running.daemon.stop()
        for raw in raws:
            rest = [raw.line(), raw.line()]
            while rest[0] == b"* OK Still here\r\n":
                rest = [rest[1], raw.line()]
            assert rest == [b"* BYE Server shutting down.\r\n", b""], rest
            raw.close()
        log = running.daemon.log_text()
        assert log.count("Disconnected: Server shutting down") == 3, log[-3000:]
    finally:
        running.daemon.stop()


def test_silent_sessions_hibernate_until_their_inactivity_timeout(tmp_path: Path) -> None:
    # Outside IDLE a session hibernates after 5 s of silence (its mailbox suspended), and
    # the inactivity timeout is its deadline.
    running = start_imap_instance(tmp_path, "imap_client_timeout = 7s\n")
    try:
        user = add_user(running)
        selected = RawClient(running, timeout=30)
        assert selected.command("l", f'LOGIN "{user[0]}" "{user[1]}"')[-1].startswith(b"l OK")
        assert selected.command("s", "SELECT INBOX")[-1].startswith(b"s OK")
        anonymous = RawClient(running, timeout=30)  # before login
        time.sleep(5.5)
        # A change notification wakes the selected session, which goes back to sleep:
        # the update waits for the next command (RFC 9051 §7.5.1).
        deliver(running, user[0], "while silent")
        time.sleep(SETTLE)
        reply = selected.command("n", "NOOP")
        assert reply == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n", b"n OK Noop completed.\r\n"]
        # Silent again: disconnected 7 s after the NOOP, asleep from the fifth second.
        assert selected.line() == b"* BYE Disconnected for inactivity.\r\n"
        assert selected.line() == b""
        assert anonymous.line() == b"* BYE Disconnected for inactivity.\r\n"
        assert anonymous.line() == b""
        wait_log(running, r"imap\(.*\): Disconnected: Inactivity - no input for 7 secs in=")
        wait_log(running, r"imap-login\[\d+\]: Disconnected: Inactivity \(no auth attempts")
        selected.close()
        anonymous.close()
    finally:
        running.daemon.stop()

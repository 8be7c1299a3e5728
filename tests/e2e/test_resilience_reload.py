"""Graceful reload and stop under load lose nothing.

While SMTP clients submit a stream of numbered messages, the daemon gets SIGHUP several
times (main.cf changed in between) and finally SIGTERM. After a restart every message that
got a ``250`` is delivered exactly once (a clean stop leaves no at-least-once window), no
message refused with a 4xx/5xx shows up in a Maildir, and an IMAP client sitting in IDLE
is not dropped by the reloads: it still gets ``* N EXISTS`` for a delivery after them.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.daemon import RoostDaemon
from tests.e2e.instance import USERS, Instance, start_instance
from tests.e2e.test_resilience_support import (
    FAST_RETRY,
    MessageFactory,
    Submitter,
    audit_maildirs,
    audit_spool,
    judge,
    log_problems,
    read_reply,
    wait_drained,
    wait_until,
)

RELOADS = 4


@dataclass(frozen=True)
class AliceOnly(MessageFactory):
    """The stream goes to alice only, so bob's IDLE sees just the deliveries we make."""

    def recipients(self, number: int) -> tuple[str, ...]:
        return ("alice",)


class IdleClient:
    """A raw IMAP client logged in as bob, INBOX selected, sitting in IDLE."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.lines: list[str] = []
        self.expect(b"* OK")
        self.command(b'a LOGIN bob@virtual.test "' + USERS["bob@virtual.test"].encode() + b'"')
        selected = self.command(b"b SELECT INBOX")
        found = [int(m.group(1)) for line in selected if (m := re.match(r"\* (\d+) EXISTS", line))]
        self.exists = found[-1] if found else 0
        self.sock.sendall(b"c IDLE\r\n")
        self.expect(b"+ ")

    def readline(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        while b"\r\n" not in self.buffer:
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionError(f"IMAP server closed the connection after {self.lines[-3:]}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        text = line.decode(errors="replace")
        self.lines.append(text)
        return text

    def expect(self, prefix: bytes, timeout: float = 10.0) -> list[str]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.readline(max(deadline - time.monotonic(), 0.01))
            if line is None:
                continue
            seen.append(line)
            if line.encode().startswith(prefix):
                return seen
        raise AssertionError(f"no {prefix!r} within {timeout}s; got {seen}")

    def command(self, line: bytes) -> list[str]:
        tag = line.split(b" ", 1)[0]
        self.sock.sendall(line + b"\r\n")
        seen = self.expect(tag + b" ")
        assert seen[-1].split(" ")[1] == "OK", seen
        return seen

    def drain(self) -> list[str]:
        """Lines the server sent meanwhile (without waiting)."""
        got = []
        while (line := self.readline(0.05)) is not None:
            got.append(line)
        return got

    def wait_exists(self, above: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.readline(max(deadline - time.monotonic(), 0.01))
            if line is None:
                continue
            assert not line.startswith("* BYE"), f"IDLE client dropped: {line}"
            match = re.match(r"\* (\d+) EXISTS", line)
            if match and int(match.group(1)) > above:
                return int(match.group(1))
        raise AssertionError(f"no * N EXISTS above {above} within {timeout}s: {self.lines[-10:]}")

    def close(self) -> None:
        self.sock.close()


def send_to_bob(instance: Instance, subject: str) -> None:
    with instance.smtp() as client:
        client.sendmail(
            "x@example.org", ["bob@virtual.test"], f"Subject: {subject}\r\n\r\n{subject}\r\n"
        )


def test_sighup_and_sigterm_under_load_lose_nothing_and_keep_idle(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    instance = start_instance(tmp_path, FAST_RETRY + "shutdown_grace_time = 3s\n")
    request.addfinalizer(lambda: instance.daemon.kill())  # whichever runs last
    main_cf = tmp_path / "main.cf"
    factory = AliceOnly("reload")
    submitter = Submitter(lambda: instance.ports["smtp"], factory, concurrency=4)
    idle = IdleClient(instance.ports["imap"])
    daemon = instance.daemon
    try:
        submitter.start()
        submitter.wait_for(20)
        for number in range(RELOADS):
            before = instance.log().count("reload -- version")
            # a real change each time: new sessions must see it, old ones keep theirs
            with main_cf.open("a") as config:
                config.write(f"smtpd_banner = $myhostname ESMTP reload{number}\n")
            daemon.signal(signal.SIGHUP)
            assert wait_until(
                lambda before=before: instance.log().count("reload -- version") > before, 10
            ), f"reload {number} not logged:\n{instance.log()[-2000:]}"
            time.sleep(0.4)
            assert not any(line.startswith("* BYE") for line in idle.drain())
        with socket.create_connection(("127.0.0.1", instance.ports["smtp"]), 10) as probe:
            greeting = read_reply(probe)
        assert f"reload{RELOADS - 1}" in greeting, f"new sessions miss the reload: {greeting}"
        send_to_bob(instance, "after the reloads")
        idle.wait_exists(idle.exists, timeout=10)
        before_stop = instance.log()
        accepted_before_stop = len(submitter.accepted())
        submitter.wait_for(accepted_before_stop + 20)
        daemon.signal(signal.SIGTERM)
        assert daemon.process.wait(60) == 0, instance.log()[-3000:]
        daemon.kill()
    finally:
        submitter.stop()
        idle.close()
    restarted = RoostDaemon(main_cf)
    instance.daemon = restarted
    try:
        restarted.wait_ready()
        final = wait_drained(instance.queue, 60)
        time.sleep(0.3)
    finally:
        restarted.stop()
    log = instance.log()
    assert not log_problems(log), log_problems(log)
    assert "imap(bob@virtual.test): Disconnected" not in before_stop, "IDLE session dropped"
    assert final.pending() == 0, final.messages
    spool = audit_spool(instance.queue)
    assert not spool.bad_envelopes and not spool.corrupt_queue and not spool.uncommitted, spool
    verdict = judge(
        submitter.outcomes.values(), audit_maildirs(instance.maildir, factory, ["alice"])
    )
    print(verdict.summary(), submitter.by_state())
    assert verdict.accepted > 40, verdict.summary()
    assert not verdict.lost, f"lost {verdict.lost}: {verdict.summary()}"
    assert not verdict.corrupt, verdict.corrupt
    assert not verdict.duplicates, f"delivered twice after a clean stop: {verdict.summary()}"
    # messages answered 421 at the stop but kept anyway: see the xfail test below


def test_sigterm_never_answers_421_for_a_message_it_keeps(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A message answered 421 at SIGTERM must not be delivered (the client will retry)."""
    for round_number in range(3):
        directory = tmp_path / f"round{round_number}"
        instance = start_instance(directory, "shutdown_grace_time = 0s\n")
        request.addfinalizer(instance.daemon.kill)
        factory = MessageFactory(f"sigterm{round_number}")
        port = instance.ports["smtp"]
        submitter = Submitter(lambda port=port: port, factory, concurrency=16)
        try:
            submitter.start()
            submitter.wait_for(50)
            instance.daemon.signal(signal.SIGTERM)
            assert instance.daemon.process.wait(30) == 0
            instance.daemon.kill()
        finally:
            submitter.stop()
        restarted = RoostDaemon(directory / "main.cf")
        request.addfinalizer(restarted.kill)
        try:
            restarted.wait_ready()
            wait_drained(instance.queue, 30)
        finally:
            restarted.stop()
        verdict = judge(submitter.outcomes.values(), audit_maildirs(instance.maildir, factory))
        assert not verdict.lost, verdict.summary()
        told = {o.number: o.reply for o in submitter.outcomes.values()}
        assert not verdict.unexpected, (
            f"round {round_number}: delivered although the client was told "
            f"{sorted({told[n] for _, n in verdict.unexpected})}: {verdict.unexpected}; "
            f"{verdict.summary()}"
        )


def test_sigterm_during_data_answers_the_message_then_421(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A session in the middle of DATA at SIGTERM gets its message answered (250) before
    the 421: the stop waits for the message (up to its grace), and the message is kept."""
    instance = start_instance(tmp_path, "shutdown_grace_time = 0s\n")
    request.addfinalizer(instance.daemon.kill)
    with socket.create_connection(("127.0.0.1", instance.ports["smtp"]), timeout=30) as conn:
        replies = conn.makefile("rb")

        def reply() -> bytes:
            while (line := replies.readline())[3:4] == b"-":
                pass
            return line

        assert reply().startswith(b"220 ")
        for command, code in (
            (b"EHLO client.example", b"250"),
            (b"MAIL FROM:<sender@example.org>", b"250"),
            (b"RCPT TO:<alice@virtual.test>", b"250"),
            (b"DATA", b"354"),
        ):
            conn.sendall(command + b"\r\n")
            assert reply().startswith(code), command
        conn.sendall(b"Subject: caught by the stop\r\n\r\nfirst line\r\n")
        instance.daemon.signal(signal.SIGTERM)
        instance.daemon.notify.wait_for("STOPPING=1")
        # Let the worker's stop reach the session (nothing signals it): its 421 must then
        # wait for this message. A slower stop cannot fail the test, only leave the 250
        # answered before the stop began (the rest is checked all the same).
        time.sleep(0.5)
        conn.sendall(b"last line\r\n.\r\n")
        answer = reply()
        assert answer.startswith(b"250 2.0.0 Ok: queued as "), answer
        assert reply().startswith(b"421 4.3.2 "), "no 421 after the message"
    assert instance.daemon.process.wait(30) == 0
    queue_id = answer.decode().split()[-1]
    assert f"{queue_id}: client=" in instance.log()
    kept = instance.queued() == [queue_id] or any(
        b"Subject: caught by the stop" in path.read_bytes() for path in instance.delivered("alice")
    )
    assert kept, "the message answered 250 is neither queued nor delivered"

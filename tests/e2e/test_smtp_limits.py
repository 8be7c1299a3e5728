"""SMTP server limits: error tarpit, junk commands, idle timeout, connection count and rate,
AUTH failure throttling, many idle connections, hop count.

See Also: Postfix smtpd(8) "TARPIT CONTROLS" and "RESOURCE AND RATE CONTROLS", anvil(8),
postconf(5) ``smtpd_*_error_limit``, ``smtpd_junk_command_limit``, ``smtpd_timeout``,
``smtpd_client_connection_*_limit``, ``hopcount_limit``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import resource
import select
import smtplib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.e2e.daemon import roost_cli
from tests.e2e.instance import PASSWORD, Instance, start_instance
from tests.e2e.test_smtp_input import Wire

HOST = "mx.roost.test"
TOO_MANY_ERRORS = f"421 4.7.0 {HOST} Error: too many errors"
TIMEOUT = f"421 4.4.2 {HOST} Error: timeout exceeded"
# The SMTP server commits messages to incoming/; without the queue manager they stay there.
KEEP_QUEUED = "master_service_disable = qmgr\n"
# `roost serve` runs on uvloop when it is installed (the "fast" extra); three bugs below
# exist only there.
UVLOOP = importlib.util.find_spec("uvloop") is not None

LIMITS = (
    KEEP_QUEUED + "smtpd_hard_error_limit = 5\n"
    "smtpd_soft_error_limit = 2\n"
    "smtpd_error_sleep_time = 1s\n"
    "smtpd_junk_command_limit = 3\n"
    "smtpd_timeout = 2s\n"
    "smtpd_client_connection_count_limit = 3\n"
    "submission/smtpd_client_connection_rate_limit = 3\n"
)


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(tmp_path_factory.mktemp("limits"), LIMITS)
    yield running
    running.daemon.stop()


@pytest.fixture(scope="module")
def unlimited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """No connection count limit; AUTH on port 25 without TLS (for the throttle tests).

    The daemon inherits this process's RLIMIT_NOFILE, so raise it before the start.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    running = start_instance(
        tmp_path_factory.mktemp("unlimited"),
        KEEP_QUEUED + "smtpd_client_connection_count_limit = 0\n"
        "smtpd_sasl_auth_enable = yes\n"
        "smtpd_tls_auth_only = no\n"
        "auth_failure_delay_max = 2s\n",  # keeps the throttle test short
    )
    yield running
    running.daemon.stop()


class Client(Wire):
    """A raw SMTP client that can also ask "is more coming?" and time a command."""

    def timed(self, text: str) -> tuple[float, list[str]]:
        start = time.monotonic()
        lines = self.command(text)
        return time.monotonic() - start, lines

    def more_within(self, seconds: float) -> bool:
        """True if the server sends something unasked within ``seconds``."""
        if self.buffer:
            return True
        readable, _, _ = select.select([self.sock], [], [], seconds)
        return bool(readable)


def greeted(client: Client) -> Client:
    assert client.line() == f"220 {HOST} ESMTP roost"
    assert client.command("EHLO client.example")[-1] == "250 SMTPUTF8"
    return client


def wait_until_idle(instance: Instance, timeout: float = 15.0) -> None:
    """Wait until the daemon has no SMTP session left (earlier tests' connections)."""
    deadline = time.monotonic() + timeout
    while True:
        status = roost_cli(instance.directory / "main.cf", "status", "--json")
        assert status.returncode == 0, status.stderr
        if json.loads(status.stdout)["services"]["smtpd"]["sessions"] == 0:
            return
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(0.2)


NEED_MAIL = "503 5.5.1 Error: need MAIL command"


# --- error limits ---------------------------------------------------------------------


def test_hard_error_limit_ends_the_session_with_421(instance: Instance) -> None:
    # RCPT before MAIL is a valid command that fails: each one also restarts the idle timer.
    with greeted(Client(instance.ports["smtp"])) as client:
        for _ in range(4):
            assert client.command("RCPT TO:<alice@virtual.test>") == [NEED_MAIL]
        assert client.command("RCPT TO:<alice@virtual.test>") == [NEED_MAIL]  # the 5th error
        assert client.line() == TOO_MANY_ERRORS
        assert client.rest() == b""
    assert "warning: too many errors after RCPT from unknown[127.0.0.1]" in instance.log()


def test_soft_error_limit_delays_later_error_replies(instance: Instance) -> None:
    with greeted(Client(instance.ports["smtp"])) as client:
        first = client.timed("RCPT TO:<a@example.org>")
        second = client.timed("DATA")
        third = client.timed("RCPT TO:<a@example.org>")  # error 3 > smtpd_soft_error_limit
        fourth = client.timed("MAIL FROM:<no-closing@example.org")
        assert [first[1], second[1], third[1], fourth[1]] == [
            [NEED_MAIL],
            [NEED_MAIL],
            [NEED_MAIL],
            ["501 5.1.7 Bad sender address syntax"],
        ]
        assert third[0] >= 0.9 and fourth[0] >= 0.9  # smtpd_error_sleep_time = 1s
        assert client.command("QUIT") == ["221 2.0.0 Bye"]


def test_successful_mail_does_not_need_the_error_budget(instance: Instance) -> None:
    with greeted(Client(instance.ports["smtp"])) as client:
        assert client.command("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]
        for _ in range(3):
            assert client.command("RCPT TO:<nobody@virtual.test>")[0].startswith("550 5.1.1 ")
        assert client.command("RCPT TO:<alice@virtual.test>") == ["250 2.1.5 Ok"]
        assert client.command("NOOP") == ["250 2.0.0 Ok"]
        assert client.command("QUIT") == ["221 2.0.0 Bye"]


# --- junk commands --------------------------------------------------------------------


def test_junk_commands_past_the_limit_count_as_errors(instance: Instance) -> None:
    # smtpd_junk_command_limit = 3: NOOPs 4..7 add to the error count, so fewer than
    # smtpd_hard_error_limit = 5 real errors end the session (one here; Postfix, which
    # counts from the 5th junk command, needs two).
    with greeted(Client(instance.ports["smtp"])) as client:
        for _ in range(7):
            assert client.command("NOOP") == ["250 2.0.0 Ok"]
        assert client.command("RCPT TO:<a@example.org>") == [NEED_MAIL]
        if not client.more_within(1.5):
            assert client.command("RCPT TO:<a@example.org>") == [NEED_MAIL]
        assert client.line() == TOO_MANY_ERRORS
        assert client.rest() == b""


def test_junk_commands_alone_reach_the_hard_error_limit(instance: Instance) -> None:
    with greeted(Client(instance.ports["smtp"])) as client:
        # Postfix counts junk commands 5..9 (junk_cmds++ > limit): 421 after the 9th
        for _ in range(9):
            assert client.command("NOOP") == ["250 2.0.0 Ok"]
            if client.more_within(0.5):
                break
        assert client.line() == TOO_MANY_ERRORS


# --- idle timeout ---------------------------------------------------------------------


def test_idle_client_is_disconnected_after_smtpd_timeout(instance: Instance) -> None:
    with greeted(Client(instance.ports["smtp"])) as client:
        start = time.monotonic()
        received = client.rest()
        waited = time.monotonic() - start
    assert waited >= 1.9  # smtpd_timeout = 2s
    # the exact 421 line is checked by test_idle_timeout_reply_is_421
    assert received in (b"", f"{TIMEOUT}\r\n".encode())


def test_idle_timeout_reply_is_421(instance: Instance) -> None:
    with greeted(Client(instance.ports["smtp"])) as client:
        assert client.line() == TIMEOUT
        assert client.rest() == b""
    assert "timeout after EHLO from unknown[127.0.0.1]" in instance.log()


def test_timeout_in_data_leaves_nothing_queued(instance: Instance) -> None:
    before = instance.queued()
    with greeted(Client(instance.ports["smtp"])) as client:
        assert client.command("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]
        assert client.command("RCPT TO:<alice@virtual.test>") == ["250 2.1.5 Ok"]
        assert client.command("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
        client.sock.sendall(b"Subject: stalled\r\n\r\nhalf a message")
        start = time.monotonic()
        received = client.rest()
        assert time.monotonic() - start >= 1.9
    assert received in (b"", f"{TIMEOUT}\r\n".encode())
    assert instance.queued() == before


# --- connection count and rate (anvil) --------------------------------------------------


def refused_at_connect(port: int, source: str) -> bytes:
    """Connect and return everything the server says before it closes (not a greeting)."""
    with socket.create_connection(("127.0.0.1", port), 10, (source, 0)) as sock:
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


def test_connection_count_limit(instance: Instance) -> None:
    wait_until_idle(instance)
    port = instance.ports["smtp"]
    held = [greeted(Client(port)) for _ in range(3)]
    try:
        # the 4th simultaneous connection from 127.0.0.1 gets no service
        assert not refused_at_connect(port, "127.0.0.1").startswith(b"220")
        # mynetworks (smtpd_client_event_limit_exceptions) is not limited
        trusted = [greeted(Client(port, "127.0.0.2")) for _ in range(5)]
        for client in trusted:
            client.close()
        # the three held sessions still work
        for client in held:
            assert client.command("NOOP") == ["250 2.0.0 Ok"]
        with held.pop() as leaving:
            assert leaving.command("QUIT") == ["221 2.0.0 Bye"]
        deadline = time.monotonic() + 10
        while True:  # the freed slot becomes available once the server saw the close
            with Client(port) as again:
                if again.line().startswith("220 "):
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for client in held:
            client.close()


def test_connection_count_limit_reply(instance: Instance) -> None:
    wait_until_idle(instance)
    port = instance.ports["smtp"]
    held = [greeted(Client(port)) for _ in range(3)]
    try:
        assert refused_at_connect(port, "127.0.0.1") == (
            f"421 4.7.0 {HOST} Error: too many connections from 127.0.0.1\r\n".encode()
        )
    finally:
        for client in held:
            client.close()


def test_connection_rate_limit(instance: Instance) -> None:
    # submission/smtpd_client_connection_rate_limit = 3 per anvil_rate_time_unit (60s)
    port = instance.ports["submission"]
    for _ in range(3):
        with Client(port, "127.0.0.9") as client:
            assert client.line() == f"220 {HOST} ESMTP roost"
    assert not refused_at_connect(port, "127.0.0.9").startswith(b"220")
    for _ in range(5):  # exempt: mynetworks
        with Client(port, "127.0.0.2") as client:
            assert client.line() == f"220 {HOST} ESMTP roost"
    with Client(instance.ports["smtp"], "127.0.0.9") as client:  # other services: no limit
        assert client.line() == f"220 {HOST} ESMTP roost"


def test_connection_rate_limit_reply(instance: Instance) -> None:
    port = instance.ports["submission"]
    for _ in range(3):
        with Client(port, "127.0.0.19") as client:
            client.line()
    assert refused_at_connect(port, "127.0.0.19") == (
        f"421 4.7.0 {HOST} Error: too many connections from 127.0.0.19\r\n".encode()
    )


# --- AUTH failures ---------------------------------------------------------------------

AUTH_FAILED = "535 5.7.8 Error: authentication failed: authentication failure"
AUTH_REFUSED = f"421 4.7.0 {HOST} Error: too many authentication failures"


def plain(login: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{login}\0{password}".encode()).decode()


@pytest.mark.timeout(300)
def test_auth_failures_are_throttled_across_connections(unlimited: Instance) -> None:
    """The shared throttle: 2**(n-1) s (at most auth_failure_delay_max, 2 s here) before the
    next answer, then 421 after 10 failures from one address, for 5 minutes, whatever the
    password."""
    port = unlimited.ports["smtp"]
    source = "127.0.0.10"
    delays: list[float] = []
    for connection in range(2):  # the count is per address, not per session
        with greeted(Client(port, source)) as client:
            for attempt in range(5):
                took, lines = client.timed(plain("mallory", f"guess {connection} {attempt}"))
                assert lines == [AUTH_FAILED]
                delays.append(took)
            assert client.command("QUIT") == ["221 2.0.0 Bye"]
    # attempt n waits what remains of min(2**(n-2), 2) s after failure n-1
    for n, took in enumerate(delays[1:], start=2):
        assert took >= min(2 ** (n - 2), 2) - 0.1, delays
    with greeted(Client(port, source)) as client:  # the right password does not help now
        assert client.command(plain("alice", PASSWORD)) == [AUTH_REFUSED]
        assert client.rest() == b""
    with greeted(Client(port, source)) as client:
        took, lines = client.timed(plain("alice", PASSWORD))
        assert lines == [AUTH_REFUSED]
        assert client.rest() == b""
    # another address is not refused, and alice's login name never failed
    with greeted(Client(port, "127.0.0.11")) as client:
        assert client.command(plain("alice", PASSWORD)) == ["235 2.7.0 Authentication successful"]
    log = unlimited.log()
    failed = (
        f"warning: unknown[{source}]: SASL PLAIN authentication failed: authentication"
        " failure, sasl_username=mallory"
    )
    assert log.count(failed) == 10
    assert (
        log.count(f"warning: unknown[{source}]: SASL authentication refused: too many failures")
        == 2
    )


def test_auth_failure_in_one_session_slows_the_next_attempt(unlimited: Instance) -> None:
    with greeted(Client(unlimited.ports["smtp"], "127.0.0.12")) as client:
        assert client.command(plain("nobody", "x")) == [AUTH_FAILED]
        took, lines = client.timed(plain("nobody", "y"))
        assert lines == [AUTH_FAILED]
        assert took >= 0.9  # 2**0 s after the first failure
        took, lines = client.timed(plain("bob", "bob's secret"))
        assert lines == ["235 2.7.0 Authentication successful"]
        assert took >= 1.9  # the address delay applies to every login
        assert client.command(plain("bob", "bob's secret")) == [
            "503 5.5.1 Error: already authenticated"
        ]


# --- many idle connections ----------------------------------------------------------------


@pytest.mark.timeout(300)
def test_thousand_idle_connections_do_not_block_a_sender(unlimited: Instance) -> None:
    port = unlimited.ports["smtp"]
    idle: list[socket.socket] = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", port), 30))
        start = time.monotonic()
        with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.3", 0), timeout=30) as s:
            s.ehlo("busy.example")
            assert s.mail("a@example.org") == (250, b"2.1.0 Ok")
            assert s.rcpt("alice@virtual.test") == (250, b"2.1.5 Ok")
            code, text = s.data(b"Subject: among many\r\n\r\nstill served\r\n")
        elapsed = time.monotonic() - start
        assert code == 250, text
        assert elapsed < 10, f"one message took {elapsed:.1f}s next to 1000 idle clients"
        queue_id = text.decode().rsplit(" ", 1)[1]
        assert unlimited.content(queue_id).endswith(b"Subject: among many\r\n\r\nstill served\r\n")
        for sock in idle:  # every idle client got its greeting too
            assert sock.recv(64) == f"220 {HOST} ESMTP roost\r\n".encode()
    finally:
        for sock in idle:
            sock.close()


# --- hop count ----------------------------------------------------------------------------


def received_headers(count: int) -> bytes:
    return b"".join(
        f"Received: from hop{n}.example (hop{n}.example [192.0.2.{n % 250}])\r\n"
        f"\tby hop{n + 1}.example; Sat, 1 Jan 2026 00:00:{n % 60:02d} +0000\r\n".encode()
        for n in range(count)
    )


def send(instance: Instance, message: bytes) -> tuple[int, bytes]:
    with instance.smtp() as client:
        client.ehlo("client.example")
        client.mail("a@example.org")
        client.rcpt("alice@virtual.test")
        return client.data(message)


def test_hopcount_limit(instance: Instance) -> None:
    before = instance.queued()
    # hopcount_limit = 50 (default) counts the Received header roost adds, as Postfix does:
    # 50 from the client make 51
    assert send(instance, received_headers(50) + b"Subject: loop\r\n\r\nbody\r\n") == (
        554,
        b"5.4.6 Too many hops",
    )
    assert instance.queued() == before
    assert "warning: unknown[127.0.0.1]: too many hops (50 Received headers)" in instance.log()
    code, text = send(instance, received_headers(49) + b"Subject: far\r\n\r\nbody\r\n")
    assert code == 250, text
    queue_id = text.decode().rsplit(" ", 1)[1]
    assert instance.queued() == sorted([*before, queue_id])


def test_received_lines_in_the_body_are_not_hops(instance: Instance) -> None:
    code, text = send(instance, b"Subject: quoted\r\n\r\n" + received_headers(60))
    assert code == 250, text

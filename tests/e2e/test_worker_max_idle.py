"""``max_idle``: a worker that has served and then had no client connection for
``max_idle`` seconds goes (Postfix's max_idle, for a pool of workers): replaced by a new
one while another worker has had a client, else the pool shrinks (never below one worker)
until a client comes, which brings it back to ``worker_processes``.

Which worker serves a connection is read from the kernel's socket tables (as in
test_workers.py); the workers' pids from ``roost status``; a replacement from the master's
log lines (``worker N pid P idle for Ss: replaced by pid Q`` or ``...: exited, ...``).
"""

from __future__ import annotations

import imaplib
import random
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.daemon import roost_cli
from tests.e2e.instance import PASSWORD, Instance, client_tls, start_instance
from tests.e2e.test_workers import alive, imap_in, serving_pid, status, wait_for, worker_pids

TWO = "worker_processes = 2\ndisable_plaintext_auth = no\n"
REPLACED = re.compile(r"worker (\d+) pid (\d+) idle for \d+s: replaced by pid (\d+)")
EXITED = re.compile(r"worker (\d+) pid (\d+) idle for \d+s: exited, (\d+) of (\d+) workers left")


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    running = start_instance(tmp_path / "roost", TWO + "max_idle = 1s\n")
    yield running
    running.daemon.stop()


def replacements(instance: Instance) -> list[tuple[int, int, int]]:
    """(index, old pid, new pid) of every replacement the master logged."""
    return [(int(a), int(b), int(c)) for a, b, c in REPLACED.findall(instance.daemon.log_text())]


def exits(instance: Instance) -> list[tuple[int, int]]:
    """(index, pid) of every worker the pool gave up while all were idle (logged)."""
    return [(int(a), int(b)) for a, b, _, _ in EXITED.findall(instance.daemon.log_text())]


def wait_gone(instance: Instance, pid: int, *, exited: bool = True) -> str:
    """Wait (bounded) until the master logged that worker ``pid`` went, replaced or given
    up (and, if ``exited``, until it is gone); return ``replaced`` or ``exited``."""

    def how() -> str | None:
        if any(old == pid for _, old, _ in replacements(instance)):
            return "replaced"
        if any(old == pid for _, old in exits(instance)):
            return "exited"
        return None

    wait_for(lambda: how() is not None, f"{pid} gone")
    if exited:
        wait_for(lambda: not alive(pid), f"{pid} exited")
    result = how()
    assert result is not None
    return result


def wait_replaced(instance: Instance, pid: int, *, exited: bool = True) -> int:
    """Wait (bounded) until worker ``pid`` is replaced (and, if ``exited``, gone); return
    the new worker's pid."""
    wait_for(lambda: any(old == pid for _, old, _ in replacements(instance)), f"{pid} replaced")
    (new,) = [n for _, old, n in replacements(instance) if old == pid]
    if exited:
        wait_for(lambda: not alive(pid), f"{pid} exited")
    wait_for(lambda: new in worker_pids(instance), f"{new} listed")
    return new


def greeting(instance: Instance, service: str) -> bytes:
    """Connect to ``service`` and return its greeting line (TLS for the implicit ones)."""
    sock = socket.create_connection(("127.0.0.1", instance.ports[service]), 30)
    if service in ("submissions", "imaps", "pop3s"):
        sock = client_tls().wrap_socket(sock)
    with sock:
        line = sock.recv(512)
    return line


def assert_every_listener_serves(instance: Instance) -> None:
    expected = {
        "smtp": b"220 ",
        "submission": b"220 ",
        "submissions": b"220 ",
        "imap": b"* OK",
        "imaps": b"* OK",
        "pop3": b"+OK",
        "pop3s": b"+OK",
    }
    for service, start in expected.items():
        for _ in range(4):  # several, so that both workers answer with a fair chance
            assert greeting(instance, service).startswith(start), service


def assert_no_death_logged(instance: Instance) -> None:
    log = instance.daemon.log_text()
    assert "killed by signal" not in log
    assert "exit status" not in log
    assert "died" not in log


def assert_the_pool_grows_back(instance: Instance) -> None:
    """One worker left: a client brings the pool back to worker_processes at once."""
    assert len(worker_pids(instance)) == 1
    assert greeting(instance, "imap").startswith(b"* OK")
    wait_for(lambda: len(worker_pids(instance)) == 2, "two workers again")
    assert "started again, a worker has clients" in instance.daemon.log_text()


def test_a_worker_leaves_the_pool_after_an_imap_session_ends(instance: Instance) -> None:
    """The other worker never had a client: the one that served goes without a
    replacement (the pool shrinks), and the next client brings the pool back."""
    pids = worker_pids(instance)
    client, served = imap_in(instance, None, pids)
    client.login("alice", PASSWORD)
    client.select("INBOX")
    client.logout()
    assert wait_gone(instance, served) == "exited"
    assert worker_pids(instance) == [p for p in pids if p != served]
    assert replacements(instance) == []
    assert_the_pool_grows_back(instance)
    assert_every_listener_serves(instance)
    assert_no_death_logged(instance)


def test_a_worker_leaves_the_pool_after_an_smtp_session_ends(instance: Instance) -> None:
    pids = worker_pids(instance)
    with instance.smtp() as client:
        served = serving_pid(client.sock, pids)
        client.sendmail("bob@example.org", ["alice@virtual.test"], b"Subject: x\r\n\r\nhi\r\n")
    assert wait_gone(instance, served) == "exited"
    assert len(instance.wait_delivered("alice", 1)) == 1
    assert_the_pool_grows_back(instance)
    assert_every_listener_serves(instance)
    assert_no_death_logged(instance)


def test_a_worker_with_an_open_idle_session_is_not_replaced(instance: Instance) -> None:
    pids = worker_pids(instance)
    client, busy = imap_in(instance, None, pids)
    client.login("alice", PASSWORD)
    client.select("INBOX")
    tag = client._new_tag().decode()  # type: ignore[attr-defined]
    client.send(f"{tag} IDLE\r\n".encode())
    assert client.readline().startswith(b"+ ")
    # a session in the other worker that ends: that worker is replaced after max_idle,
    # so at least max_idle passes while the IDLE session is open
    for _ in range(2):  # twice: the other worker, then its replacement
        other, quiet = imap_in(instance, None, worker_pids(instance), avoid=busy)
        other.logout()
        wait_replaced(instance, quiet)
    assert busy in worker_pids(instance)
    assert alive(busy)
    assert busy not in [old for _, old, _ in replacements(instance)]
    client.send(b"DONE\r\n")
    assert client.readline().startswith(f"{tag} OK".encode())
    client.logout()
    # once the session is gone it goes too, and the pool shrinks: the other worker is
    # the fresh replacement, without a client yet
    assert wait_gone(instance, busy) == "exited"
    assert_no_death_logged(instance)


def test_a_worker_that_never_served_stays(instance: Instance) -> None:
    pids = worker_pids(instance)
    client, served = imap_in(instance, None, pids)
    client.logout()
    assert wait_gone(instance, served) == "exited"
    (untouched,) = [p for p in pids if p != served]
    # the worker that never served is neither replaced nor given up (the pool keeps one
    # worker; a replacement would be the same). Several checks of max_idle pass.
    time.sleep(5)
    assert replacements(instance) == []
    assert [pid for _, pid in exits(instance)] == [served]
    assert worker_pids(instance) == [untouched]


def test_max_idle_0_never_replaces_until_a_reload_sets_it(tmp_path: Path) -> None:
    instance = start_instance(tmp_path / "roost", TWO + "max_idle = 0\n")
    try:
        pids = worker_pids(instance)
        for pid in pids:
            client, _ = imap_in(instance, pid, pids)
            client.logout()
        time.sleep(4)  # what max_idle = 1s replaced (tests above) stays
        assert sorted(worker_pids(instance)) == sorted(pids)
        assert replacements(instance) == []
        main_cf = instance.directory / "main.cf"
        main_cf.write_text(main_cf.read_text().replace("max_idle = 0\n", "max_idle = 1s\n"))
        assert roost_cli(main_cf, "reload").returncode == 0
        # Both served and both are idle: the first to retire leaves the pool (one
        # worker left), the last is replaced (the pool never goes below one).
        wait_for(lambda: len(exits(instance)) == 1 and len(replacements(instance)) == 1, "both")
        [(_, gone)] = exits(instance)
        [(_, replaced, new)] = replacements(instance)
        assert {gone, replaced} == set(pids)
        wait_for(lambda: worker_pids(instance) == [new], "one worker left")
        # A client brings the pool back to worker_processes at once.
        assert greeting(instance, "imap").startswith(b"* OK")
        wait_for(lambda: len(worker_pids(instance)) == 2, "two workers again")
        assert "started again, a worker has clients" in instance.daemon.log_text()
        assert_every_listener_serves(instance)
        assert_no_death_logged(instance)
    finally:
        instance.daemon.stop()


def test_connections_during_replacements_all_get_their_greeting(instance: Instance) -> None:
    """Bursts of connections at random moments, with pauses longer than max_idle: the
    workers retire and are replaced while connections arrive; none is refused, reset or
    left without a greeting."""
    rng = random.Random(6)
    services = ["smtp", "imap", "pop3", "imaps"]
    made = 0
    deadline = time.monotonic() + 120
    while len(replacements(instance)) + len(exits(instance)) < 4 and time.monotonic() < deadline:
        for _ in range(rng.randrange(5, 30)):
            service = rng.choice(services)
            line = greeting(instance, service)
            assert line.startswith((b"220 ", b"* OK", b"+OK")), (service, line)
            made += 1
        time.sleep(rng.uniform(0.9, 1.8))
    assert len(replacements(instance)) + len(exits(instance)) >= 4
    assert made > 0
    assert_every_listener_serves(instance)
    assert_no_death_logged(instance)
    wait_for(lambda: len(status(instance)["workers"]) == 2, "two workers")  # type: ignore[arg-type]


def test_imap_login_stays_possible(instance: Instance) -> None:
    """A login after replacements: the new workers have the user database and counts."""
    pids = worker_pids(instance)
    client, served = imap_in(instance, None, pids)
    client.logout()
    wait_gone(instance, served)
    for _ in range(4):
        with imaplib.IMAP4("127.0.0.1", instance.ports["imap"], timeout=30) as again:
            again.login("alice", PASSWORD)
            assert again.select("INBOX")[0] == "OK"


def test_a_tls_handshake_under_way_when_its_worker_retires_still_completes(
    instance: Instance,
) -> None:
    """A connection to imaps whose client has not sent its ClientHello is no session yet:
    its worker retires (no client connection), but waits for the handshake before it
    exits, and the session is served to its end (on the old code: never replaced)."""
    pids = worker_pids(instance)
    raw = socket.create_connection(("127.0.0.1", instance.ports["imaps"]), 30)
    served = serving_pid(raw, pids)
    wait_gone(instance, served, exited=False)
    assert alive(served)  # not accepting any more, but not gone
    with client_tls().wrap_socket(raw) as tls, tls.makefile("rb") as lines:
        assert lines.readline().startswith(b"* OK")
        tls.sendall(f'a LOGIN alice@virtual.test "{PASSWORD}"\r\n'.encode())
        assert lines.readline().startswith(b"a OK")
        tls.sendall(b"b LOGOUT\r\n")
        assert lines.readline().startswith(b"* BYE")
        assert lines.readline().startswith(b"b OK")
    # it exits once no handshake it took can still be under way: 60 s after the accept
    # (the handshake timeout), since a failed handshake leaves no session to wait for
    wait_for(lambda: not alive(served), f"{served} exited", timeout=120)
    assert_no_death_logged(instance)

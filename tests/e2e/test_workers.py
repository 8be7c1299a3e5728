"""Worker processes (``worker_processes``): one daemon, several processes serving the listeners.

Each test finds out which process serves a connection from the kernel's socket tables
(``/proc/net/tcp`` and ``/proc/PID/fd``), so it knows when two sessions are in different
workers, and checks what must then still hold: one failed-login throttle, IDLE woken by
deliveries and by other sessions' changes, one POP3 session per maildrop, reload, stop,
the replacement of a killed worker, and no other process with ``worker_processes = 1``.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import os
import poplib
import re
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roost.daemon.control import request
from tests.e2e.daemon import roost_cli
from tests.e2e.instance import PASSWORD, Instance, start_instance

TWO = "worker_processes = 2\n"


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(
        tmp_path_factory.mktemp("workers"),
        TWO + "smtpd_sasl_auth_enable = yes\n"
        "smtpd_tls_auth_only = no\n"
        "disable_plaintext_auth = no\n"
        "auth_failure_refuse_after = 3\n"
        "auth_failure_delay_max = 1s\n"
        # IDLE must learn of changes from the change bus: no polling within the test
        "mailbox_idle_check_interval = 1h\n"
        "imap_idle_notify_interval = 1h\n",
    )
    yield running
    running.daemon.stop()


# --- helpers -------------------------------------------------------------------------------


def status(instance: Instance) -> dict[str, object]:
    return request(instance.directory / "lib" / "control.sock", "status")


def worker_pids(instance: Instance) -> list[int]:
    workers = status(instance).get("workers")
    assert isinstance(workers, list)
    return [int(w["pid"]) for w in workers]


def _server_inode(client: socket.socket) -> int:
    """The inode of the server side of a loopback TCP connection (from /proc/net/tcp)."""
    host, port = client.getsockname()[:2]
    peer_host, peer_port = client.getpeername()[:2]

    def hexaddr(address: str, number: int) -> str:
        packed = socket.inet_aton(address)
        return f"{int.from_bytes(packed, 'little'):08X}:{number:04X}"

    local, remote = hexaddr(peer_host, peer_port), hexaddr(host, port)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[9])
    raise AssertionError(f"no server socket for {host}:{port}")


def serving_pid(client: socket.socket, pids: list[int]) -> int:
    """Which of ``pids`` holds the server side of ``client``'s connection."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # inode 0: still in the accept queue (the kernel completed the handshake)
        target = f"socket:[{_server_inode(client)}]"
        for pid in pids:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == target:
                        return pid
                except OSError:
                    continue
        time.sleep(0.01)
    raise AssertionError("the connection is not in any worker")


def imap_in(
    instance: Instance, pid: int | None, pids: list[int], avoid: int | None = None
) -> tuple[imaplib.IMAP4, int]:
    """An IMAP connection served by worker ``pid`` (or by any worker but ``avoid``)."""
    for _ in range(200):
        client = imaplib.IMAP4("127.0.0.1", instance.ports["imap"], timeout=30)
        served = serving_pid(client.sock, pids)
        if (pid is None or served == pid) and served != avoid:
            return client, served
        client.logout()
    raise AssertionError("the kernel never gave a connection to the wanted worker")


def pop3_in(instance: Instance, pid: int, pids: list[int]) -> poplib.POP3:
    for _ in range(200):
        client = poplib.POP3("127.0.0.1", instance.ports["pop3"], timeout=60)
        if serving_pid(client.sock, pids) == pid:
            return client
        client.quit()
    raise AssertionError("the kernel never gave a connection to the wanted worker")


def send(instance: Instance, to: str = "alice@virtual.test", subject: str = "hi") -> None:
    with instance.smtp() as client:
        client.sendmail("bob@example.org", [to], f"Subject: {subject}\r\n\r\nhello\r\n".encode())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(word) for word in out.split()]


# --- tests ---------------------------------------------------------------------------------


def test_two_workers_serve_connections_and_the_master_none(instance: Instance) -> None:
    answer = status(instance)
    pids = worker_pids(instance)
    assert len(set(pids)) == 2
    assert answer["pid"] not in pids
    # the master's only child is the fork server, whose children are the workers
    (forker,) = children(int(answer["pid"]))  # type: ignore[call-overload]
    assert sorted(children(forker)) == sorted(pids)
    served = set()
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", instance.ports["smtp"]), 30) as client:
            served.add(serving_pid(client, pids))
            assert client.recv(512).startswith(b"220 ")
        if len(served) == 2:
            break
    assert served == set(pids)
    # the log lines of the sessions carry each worker's pid
    for _ in range(20):
        send(instance)
    log = instance.daemon.log_text()
    logged = {int(p) for p in re.findall(r"roost/smtpd\[(\d+)\]: connect from", log)}
    assert logged == set(pids)
    services = answer["services"]
    assert isinstance(services, dict)
    assert {"qmgr", "smtpd", "imap", "pop3"} <= services.keys()


def test_failed_logins_in_one_worker_refuse_logins_in_every_worker(instance: Instance) -> None:
    source = "127.0.0.41"
    pids = worker_pids(instance)
    failed_in = []
    for _ in range(3):  # auth_failure_refuse_after = 3
        with socket.create_connection(
            ("127.0.0.1", instance.ports["smtp"]), 30, (source, 0)
        ) as client:
            failed_in.append(serving_pid(client, pids))
            stream = client.makefile("rwb")
            stream.readline()
            token = base64.b64encode(b"\0alice\0wrong").decode()
            stream.write(f"EHLO x\r\nAUTH PLAIN {token}\r\n".encode())
            stream.flush()
            while not (line := stream.readline()).startswith(b"250 "):
                pass
            line = stream.readline()
            assert line.startswith(b"535"), line
    # every worker now refuses IMAP logins from that address, including any worker
    # that saw fewer than three of the failures itself
    refused_in = set()
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", instance.ports["imap"]), 30, (source, 0))
        with sock:
            pid = serving_pid(sock, pids)
            stream = sock.makefile("rwb")
            stream.readline()
            stream.write(f'a LOGIN alice "{PASSWORD}"\r\n'.encode())
            stream.flush()
            while not (line := stream.readline()).startswith(b"a "):
                pass
            assert b"UNAVAILABLE" in line, line
            refused_in.add(pid)
        if len(refused_in) == 2:
            break
    assert refused_in == set(pids), failed_in


def test_idle_in_one_worker_sees_deliveries_and_changes_made_in_another(
    instance: Instance,
) -> None:
    pids = worker_pids(instance)
    send(instance, subject="first")
    wait_for(lambda: len(instance.delivered("alice")) >= 1, "first delivery")
    idler, idle_pid = imap_in(instance, None, pids)
    other, _ = imap_in(instance, None, pids, avoid=idle_pid)
    try:
        idler.login("alice", PASSWORD)
        _, data = idler.select("INBOX")
        exists = int(data[0] or b"0")
        other.login("alice", PASSWORD)
        other.select("INBOX")
        tag = idler._new_tag().decode()  # type: ignore[attr-defined]
        idler.send(f"{tag} IDLE\r\n".encode())
        assert idler.readline().startswith(b"+")
        # a delivery by the master's queue manager wakes the IDLE in a worker
        send(instance, subject="second")
        line = idler.readline()
        assert line == f"* {exists + 1} EXISTS\r\n".encode(), line
        # a flag change by a session in the other worker too
        other.store("1", "+FLAGS", "\\Flagged")
        line = idler.readline()
        while not line.startswith(b"* 1 FETCH"):
            line = idler.readline()
        assert b"\\Flagged" in line, line
        idler.send(b"DONE\r\n")
        assert idler.readline().startswith(f"{tag} OK".encode())
    finally:
        idler.logout()
        other.logout()


def test_changes_are_relayed_only_to_the_workers_watching_the_mailbox(
    instance: Instance,
) -> None:
    def bus() -> dict[str, int]:
        counts = status(instance)["bus"]
        assert isinstance(counts, dict)
        return counts

    def appended(client: imaplib.IMAP4, count: int) -> None:
        for n in range(count):
            client.append("INBOX", None, None, f"Subject: {n}\r\n\r\nrelay\r\n".encode())

    pids = worker_pids(instance)
    writer, writer_pid = imap_in(instance, None, pids)
    watcher, _ = imap_in(instance, None, pids, avoid=writer_pid)
    try:
        writer.login("bob", "bob's secret")
        start = bus()["watches"]
        writer.select("INBOX")
        wait_for(lambda: bus()["watches"] == start + 1, "the writer's worker watches INBOX")
        # no other worker watches bob's INBOX: its changes go to the master and stop there
        before = bus()
        appended(writer, 3)
        wait_for(lambda: bus()["from_workers"] >= before["from_workers"] + 3, "the notices")
        after = bus()
        assert after["relayed"] == before["relayed"], (before, after)
        assert after["unwatched"] - before["unwatched"] == (
            after["from_workers"] - before["from_workers"]
        )
        # a session in the other worker selects it: from then on each change goes there
        watcher.login("bob", "bob's secret")
        watcher.select("INBOX")
        wait_for(lambda: bus()["watches"] == start + 2, "the other worker watches INBOX")
        # SELECT again: the watch may go and come back (or stay): changes still arrive
        _, data = watcher.select("INBOX")
        exists = int(data[0] or b"0")
        wait_for(lambda: bus()["watches"] == start + 2, "the other worker watches INBOX")
        tag = watcher._new_tag().decode()  # type: ignore[attr-defined]
        watcher.send(f"{tag} IDLE\r\n".encode())
        assert watcher.readline().startswith(b"+")
        before = bus()
        appended(writer, 1)
        line = watcher.readline()
        assert line == f"* {exists + 1} EXISTS\r\n".encode(), line
        wait_for(lambda: bus()["from_workers"] > before["from_workers"], "the notice")
        after = bus()
        assert after["relayed"] - before["relayed"] == (
            after["from_workers"] - before["from_workers"]
        ), (before, after)
        watcher.send(b"DONE\r\n")
        line = watcher.readline()
        while line.startswith(b"* "):  # RECENT
            line = watcher.readline()
        assert line.startswith(f"{tag} OK".encode()), line
        watcher.close()  # CLOSE: the last subscriber in that worker goes, so does its watch
        wait_for(lambda: bus()["watches"] == start + 1, "the watch ends with the session")
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            watcher.logout()
        writer.logout()


def test_pop3_maildrop_lock_holds_across_workers(instance: Instance) -> None:
    pids = worker_pids(instance)
    send(instance)
    wait_for(lambda: len(instance.delivered("alice")) >= 1, "delivery")
    first = pop3_in(instance, pids[0], pids)
    second = pop3_in(instance, pids[1], pids)
    try:
        first.user("alice")
        first.pass_(PASSWORD)
        second.user("alice")
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_(PASSWORD)
    finally:
        first.quit()
        second.close()


def test_reload_reaches_every_worker(instance: Instance) -> None:
    pids = worker_pids(instance)
    main_cf = instance.directory / "main.cf"
    original = main_cf.read_text()
    main_cf.write_text(original + "smtpd_banner = $myhostname ESMTP reloaded-banner\n")
    try:
        assert roost_cli(main_cf, "reload").returncode == 0
        seen = set()
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", instance.ports["smtp"]), 30) as client:
                pid = serving_pid(client, pids)
                assert b"reloaded-banner" in client.recv(512)
                seen.add(pid)
            if len(seen) == 2:
                break
        assert seen == set(pids)
        # a bad configuration is refused by the master; the workers keep serving
        main_cf.write_text(original + "worker_processes = many\n")
        assert roost_cli(main_cf, "reload").returncode != 0
        assert worker_pids(instance) == pids
    finally:
        main_cf.write_text(original)
        roost_cli(main_cf, "reload")


def test_a_killed_worker_is_replaced_and_nothing_accepted_is_lost(instance: Instance) -> None:
    pids = worker_pids(instance)
    before = len(instance.delivered("bob"))
    accepted = 0
    victim = pids[0]
    for number in range(60):
        if number == 20:
            os.kill(victim, signal.SIGKILL)
        try:
            with instance.smtp() as client:
                client.sendmail("bob@example.org", ["bob@virtual.test"], b"Subject: k\r\n\r\nx\r\n")
            accepted += 1
        except (smtplib.SMTPException, OSError):
            pass  # a session cut by the kill: not accepted, the client retries later
    assert accepted >= 40
    wait_for(lambda: len(instance.delivered("bob")) == before + accepted, "deliveries")
    wait_for(lambda: len(worker_pids(instance)) == 2, "a replacement worker")
    now = worker_pids(instance)
    assert victim not in now and pids[1] in now
    assert f"pid {victim} killed by signal 9" in instance.daemon.log_text()
    with socket.create_connection(("127.0.0.1", instance.ports["smtp"]), 30) as client:
        assert client.recv(512).startswith(b"220 ")


def test_stop_ends_every_process(tmp_path: Path) -> None:
    running = start_instance(tmp_path, TWO + "shutdown_grace_time = 2s\n")
    pids = [running.daemon.process.pid, *worker_pids(running)]
    (forker,) = children(running.daemon.process.pid)
    client = running.smtp()
    client.ehlo()
    assert running.daemon.stop() == 0
    for pid in [*pids, forker]:
        wait_for(lambda pid=pid: not alive(pid), f"pid {pid} to exit")  # type: ignore[misc]
    client.close()


def test_workers_exit_when_the_master_dies(tmp_path: Path) -> None:
    running = start_instance(tmp_path, TWO)
    pids = worker_pids(running)
    (forker,) = children(running.daemon.process.pid)
    running.daemon.kill()  # SIGKILL: no clean-up by the master
    for pid in [*pids, forker]:
        wait_for(lambda pid=pid: not alive(pid), f"pid {pid} to exit")  # type: ignore[misc]


def test_one_worker_process_means_no_other_process(tmp_path: Path) -> None:
    running = start_instance(tmp_path, "worker_processes = 1\n")
    try:
        answer = status(running)
        assert "workers" not in answer
        assert children(running.daemon.process.pid) == []
        send(running)
        wait_for(lambda: len(running.delivered("alice")) == 1, "delivery")
        log = running.daemon.log_text()
        master = running.daemon.process.pid
        assert {int(p) for p in re.findall(r"roost/smtpd\[(\d+)\]", log)} == {master}
    finally:
        running.daemon.stop()


def test_bad_worker_processes_value_stops_the_start(tmp_path: Path) -> None:
    main_cf = tmp_path / "main.cf"
    main_cf.write_text(
        f"queue_directory = {tmp_path}/spool\ndata_directory = {tmp_path}/lib\n"
        "inet_interfaces = 127.0.0.1\nworker_processes = 0\n"
        "master_service_disable = smtp submission submissions imap imaps pop3 pop3s\n"
    )
    result = roost_cli(main_cf, "serve")
    assert result.returncode != 0
    assert "worker_processes" in result.stderr


def test_reload_with_new_listening_ports_replaces_the_workers(tmp_path: Path) -> None:
    from tests.e2e.instance import free_port

    running = start_instance(tmp_path, TWO + "shutdown_grace_time = 5s\n")
    try:
        old_pids = worker_pids(running)
        main_cf = running.directory / "main.cf"
        old_port, new_port = running.ports["pop3"], free_port()
        held = running.smtp()  # a transaction in progress in an old worker
        held.ehlo()
        held.mail("bob@example.org")
        held.rcpt("alice@virtual.test")
        main_cf.write_text(
            main_cf.read_text().replace(
                f"pop3_service_port = {old_port}", f"pop3_service_port = {new_port}"
            )
        )
        assert roost_cli(main_cf, "reload").returncode == 0

        def replaced() -> bool:  # both new workers registered, none of the old ones listed
            pids = set(worker_pids(running))
            return len(pids) == 2 and not pids & set(old_pids)

        wait_for(replaced, "two new workers")
        new_pids = worker_pids(running)
        assert len(new_pids) == 2
        served = set()
        for _ in range(100):
            client = poplib.POP3("127.0.0.1", new_port, timeout=30)
            served.add(serving_pid(client.sock, new_pids))
            client.quit()
            if len(served) == 2:
                break
        assert served == set(new_pids)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", old_port), 5)
        # the old worker lets the transaction in progress finish
        assert held.data(b"Subject: held\r\n\r\nacross the reload\r\n")[0] == 250
        held.quit()
        wait_for(lambda: len(running.delivered("alice")) == 1, "the held message")
        for pid in old_pids:
            wait_for(lambda pid=pid: not alive(pid), f"old worker {pid} to exit")  # type: ignore[misc]
        with socket.create_connection(("127.0.0.1", running.ports["smtp"]), 30) as smtp:
            assert smtp.recv(512).startswith(b"220 ")
    finally:
        running.daemon.stop()


def test_the_daemon_stops_with_an_error_when_the_fork_server_dies(tmp_path: Path) -> None:
    running = start_instance(tmp_path, TWO + "shutdown_grace_time = 2s\n")
    pids = worker_pids(running)
    (forker,) = children(running.daemon.process.pid)
    os.kill(forker, signal.SIGKILL)  # the workers die with it (PR_SET_PDEATHSIG)
    assert running.daemon.process.wait(60) == 1  # systemd's Restart=on-failure takes over
    running.daemon.stop()
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), f"worker {pid} to exit")  # type: ignore[misc]
    assert "fatal: the fork server exited" in running.daemon.log_text()

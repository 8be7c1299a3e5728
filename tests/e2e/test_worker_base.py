"""What the worker processes hold before any connection (docs/performance.md, "IMAP
memory: the base, session 4").

A worker serving only IMAP opens no spool (no spool thread), and the password hashing
libraries (libpass, argon2-cffi) are loaded only when the user database has passwords
that need them — then before the fork, so that the fork server and every worker share
them; so is the passwd-file, whose changes every worker still sees. Each test starts a
real daemon with two workers and reads its processes' threads and mappings from /proc.
"""

from __future__ import annotations

import imaplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.auth.schemes import hash_password
from roost.daemon.control import request
from tests.conftest import free_port
from tests.e2e.daemon import roost_cli
from tests.e2e.instance import PASSWORD, Instance, start_instance
from tests.e2e.test_workers import imap_in, wait_for

#: Only IMAP listens; two workers (a fork server and two workers below the master).
IMAP_ONLY = (
    "worker_processes = 2\n"
    "master_service_disable = smtp submission submissions imaps pop3 pop3s\n"
    "disable_plaintext_auth = no\n"
)


def _start(directory: Path, password_line: str) -> Instance:
    users = directory / "base-users"
    directory.mkdir(parents=True, exist_ok=True)
    users.write_text(f"alice@virtual.test:{password_line}::::::\n")
    return start_instance(directory, IMAP_ONLY + f"auth_backends = passwd-file:{users}\n")


def _processes(instance: Instance) -> tuple[int, int, list[int]]:
    """(master, fork server, workers)."""
    answer = request(instance.directory / "lib" / "control.sock", "status")
    workers = [int(w["pid"]) for w in answer["workers"]]  # type: ignore[index, union-attr]
    master = instance.daemon.process.pid
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True, check=False
    ).stdout
    forkers = [int(word) for word in out.split() if int(word) not in workers]
    assert len(forkers) == 1, (out, workers)
    return master, forkers[0], workers


def _maps(pid: int, word: str) -> bool:
    return word in Path(f"/proc/{pid}/maps").read_text()


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def _login(instance: Instance) -> None:
    client = imaplib.IMAP4("127.0.0.1", instance.ports["imap"], timeout=30)
    try:
        assert client.login("alice@virtual.test", PASSWORD)[0] == "OK"
        assert client.select("INBOX")[0] == "OK"
    finally:
        client.logout()


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Instance]:
    running = _start(tmp_path, "{PLAIN}" + PASSWORD)
    yield running
    running.daemon.stop()


def test_imap_only_workers_open_no_spool_and_load_no_argon2(plain: Instance) -> None:
    master, forker, workers = _processes(plain)
    assert len(workers) == 2
    for pid in workers:
        # the main thread and the log writer: no spool I/O thread
        assert _threads(pid) == 2, pid
    for pid in (master, forker, *workers):
        assert not _maps(pid, "_argon2_cffi_bindings"), pid
        assert not _maps(pid, "_cffi_backend"), pid
    _login(plain)  # PLAIN needs no libpass


def test_argon2_passwords_load_argon2_before_the_fork(tmp_path: Path) -> None:
    stored = hash_password(PASSWORD, "ARGON2ID")
    running = _start(tmp_path, stored)
    try:
        master, forker, workers = _processes(running)
        # in the fork server too: imported before the workers were forked, not in each
        for pid in (master, forker, *workers):
            assert _maps(pid, "_argon2_cffi_bindings"), pid
        _login(running)
    finally:
        running.daemon.stop()


def _login_in(instance: Instance, pid: int, pids: list[int], password: str) -> bool:
    """Whether ``alice`` logs in with ``password`` over a connection served by ``pid``."""
    client, _ = imap_in(instance, pid, pids)
    try:
        return client.login("alice@virtual.test", password)[0] == "OK"
    except imaplib.IMAP4.error:
        return False
    finally:
        client.logout()


def test_workers_start_from_the_passwd_file_read_before_the_fork(plain: Instance) -> None:
    """The master reads the passwd-file once before forking; the workers log users in from
    that read, and still see every later change of the file (and its removal)."""
    _, _, workers = _processes(plain)
    users = plain.directory / "base-users"
    for pid in workers:
        assert _login_in(plain, pid, workers, PASSWORD)
    assert plain.log().count("read 1 users") == 1  # the master's, before the fork
    users.write_text("alice@virtual.test:{PLAIN}a new password::::::\n")
    for pid in workers:
        assert not _login_in(plain, pid, workers, PASSWORD)
        assert _login_in(plain, pid, workers, "a new password")
    assert plain.log().count("read 1 users") == 3  # each worker read the new file
    # a reload builds a new user database in each worker: it starts from the latest read
    assert roost_cli(plain.directory / "main.cf", "reload").returncode == 0
    for pid in workers:
        assert _login_in(plain, pid, workers, "a new password")
    users.unlink()
    for pid in workers:
        assert not _login_in(plain, pid, workers, "a new password")
    assert plain.log().count(f"{users}: No such file or directory") >= 2


def test_a_missing_passwd_file_is_reported_in_the_workers_and_read_once_created(
    tmp_path: Path,
) -> None:
    users = tmp_path / "base-users"
    running = start_instance(tmp_path, IMAP_ONLY + f"auth_backends = passwd-file:{users}\n")
    try:
        _, _, workers = _processes(running)
        for pid in workers:
            assert not _login_in(running, pid, workers, PASSWORD)
        assert running.log().count(f"{users}: No such file or directory") >= 2
        users.write_text(f"alice@virtual.test:{{PLAIN}}{PASSWORD}::::::\n")
        for pid in workers:
            assert _login_in(running, pid, workers, PASSWORD)
    finally:
        running.daemon.stop()


def test_workers_forked_after_a_reload_start_from_the_file_as_it_is(tmp_path: Path) -> None:
    """A reload that changes the listeners replaces the workers; the fork server reads the
    passwd-file again first, so that the new ones start from its latest content."""
    running = _start(tmp_path, "{PLAIN}" + PASSWORD)
    try:
        _, _, old = _processes(running)
        (tmp_path / "base-users").write_text("alice@virtual.test:{PLAIN}changed::::::\n")
        main_cf = tmp_path / "main.cf"
        port = free_port()
        main_cf.write_text(main_cf.read_text() + f"imap_service_port = {port}\n")
        running.ports["imap"] = port
        assert roost_cli(main_cf, "reload").returncode == 0
        wait_for(lambda: len(set(_processes(running)[2]) - set(old)) == 2, "new workers")
        reads = running.log().count("read 1 users")
        _, _, workers = _processes(running)
        for pid in workers:
            assert _login_in(running, pid, workers, "changed")
            assert not _login_in(running, pid, workers, PASSWORD)
        assert running.log().count("read 1 users") == reads  # no worker read it again
        assert reads == 2  # the master's before the first fork, the fork server's now
    finally:
        running.daemon.stop()

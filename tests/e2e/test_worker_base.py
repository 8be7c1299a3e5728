"""What the worker processes hold before any connection (docs/performance.md, "IMAP
memory: the base, session 4").

A worker serving only IMAP opens no spool (no spool thread), and the password hashing
libraries (libpass, argon2-cffi) are loaded only when the user database has passwords
that need them — then before the fork, so that the fork server and every worker share
them. Each test starts a real daemon with two workers and reads its processes' threads
and mappings from /proc.
"""

from __future__ import annotations

import imaplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.auth.schemes import hash_password
from roost.daemon.control import request
from tests.e2e.instance import PASSWORD, Instance, start_instance

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

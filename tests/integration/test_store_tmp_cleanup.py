"""Files left in a Maildir's ``tmp/`` by dead writers are deleted at mailbox open, as
Dovecot does (ctime older than 36 hours, ``tmp/`` scanned at most every 8 hours)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from roost.store import ChangeBus, MailStore
from roost.store.mailbox import TMP_DELETE_SECONDS, TMP_SCAN_SECONDS, clean_tmp

_DAY_AGO = 36 * 3600 + 3600


def _age_atime(directory: Path, seconds: float) -> None:
    st = os.stat(directory)
    os.utime(directory, ns=(int((time.time() - seconds) * 1e9), st.st_mtime_ns))


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_open_scans_tmp_but_keeps_a_file_with_an_old_mtime(tmp_path: Path) -> None:
    """An APPEND with an old INTERNALDATE sets the mtime of its file in tmp/ before the
    rename: only the ctime tells a leftover, so that file stays."""
    store = MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus())
    store.create("Box")
    tmp = store.mailbox_path("Box") / "tmp"
    in_flight = tmp / "1700000000.M1P1.host"
    in_flight.write_bytes(b"Subject: old date\r\n\r\n")
    old = time.time() - 10 * 86400
    os.utime(in_flight, (old, old))
    _age_atime(tmp, TMP_SCAN_SECONDS + 60)
    before = time.time()
    with store.open("Box") as box:
        assert len(box) == 0
    assert os.stat(tmp).st_atime >= before - 1  # scanned: the atime is the scan's
    assert in_flight.exists()


def test_clean_tmp_deletes_leftovers_and_keeps_live_templates(tmp_path: Path) -> None:
    store = MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus())
    directory = store.mailbox_path("INBOX")
    tmp = directory / "tmp"
    with store.open("INBOX") as inbox:
        inbox.append(b"Subject: a\r\n\r\nbody\r\n")  # makes this process's template
        [template] = [name for name in os.listdir(tmp) if name.startswith(".")]
        leftover = tmp / "1600000000.M1P2.host"
        leftover.write_bytes(b"half a message")
        dead = tmp / template.replace(f".{os.getpid()}", f".{_dead_pid()}")
        dead.write_bytes(b"1:host")
        (tmp / "subdir").mkdir()
        _age_atime(tmp, TMP_SCAN_SECONDS + 60)
        # 37 hours from now every file here is as old as a leftover would be then.
        later = time.time() + _DAY_AGO
        assert clean_tmp(os.fspath(directory), later) == 2
        assert sorted(os.listdir(tmp)) == sorted([template, "subdir"])
        inbox.append(b"Subject: b\r\n\r\nbody\r\n")
    with store.open("INBOX", readonly=True) as inbox:
        assert len(inbox) == 2


def test_clean_tmp_scans_at_most_every_8_hours(tmp_path: Path) -> None:
    store = MailStore(tmp_path / "Maildir", fsync=False, bus=ChangeBus())
    directory = store.mailbox_path("INBOX")
    store.open("INBOX").close()
    tmp = directory / "tmp"
    leftover = tmp / "1600000000.M1P3.host"
    leftover.write_bytes(b"x")
    later = time.time() + TMP_DELETE_SECONDS + 60
    # tmp/ was just made (its atime is now): no scan before 8 hours passed.
    assert clean_tmp(os.fspath(directory), later - TMP_SCAN_SECONDS) == 0
    assert leftover.exists()
    _age_atime(tmp, TMP_SCAN_SECONDS + 60)
    assert clean_tmp(os.fspath(directory), later) == 1
    assert not leftover.exists()
    leftover.write_bytes(b"x")
    assert clean_tmp(os.fspath(directory), later + 60) == 0  # scanned a minute ago
    assert leftover.exists()

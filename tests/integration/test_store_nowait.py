"""Writes for a caller on an event loop (``nowait``): they never wait for another
writer's lock, and their index commit is made durable by ``sync_index``; the index
connection pool hands a connection out again only for the same file."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from roost.store import ChangeBus, LockTimeout, MailStore, StoreMode
from roost.store.dotlock import dotlock


@pytest.fixture
def mail(tmp_path: Path) -> MailStore:
    store = MailStore(tmp_path / "Maildir", fsync=True, bus=ChangeBus())
    with store.open("INBOX") as inbox:
        for n in range(3):
            inbox.append(b"Subject: %d\r\n\r\nbody\r\n" % n)
    return store


def test_nowait_store_and_expunge_are_seen_by_other_sessions(mail: MailStore) -> None:
    with mail.open("INBOX") as inbox, mail.open("INBOX") as other:
        first, second, third = (m.uid for m in inbox.messages())
        inbox.store_flags([first], ["\\Flagged"], StoreMode.ADD, nowait=True)
        inbox.sync_index()
        other.sync()
        assert "\\Flagged" in other.message(first).flags
        inbox.store_flags([second], ["\\Deleted"], StoreMode.ADD, nowait=True)
        assert inbox.expunge(nowait=True) == [second]
        inbox.sync_index()
        assert second in other.sync().expunged
    with mail.open("INBOX") as again:
        assert [m.uid for m in again.messages()] == [first, third]


def test_index_log_is_opened_for_a_sync_only_after_a_nowait_write(mail: MailStore) -> None:
    with mail.open("INBOX") as inbox:
        uid = inbox.messages()[0].uid
        assert inbox.open_index_log() is None
        inbox.store_flags([uid], ["\\Seen"], StoreMode.ADD)  # synced at commit
        assert inbox.open_index_log() is None
        inbox.store_flags([uid], ["\\Flagged"], StoreMode.ADD, nowait=True)
        log = inbox.open_index_log()
        assert log is not None
        log.close()  # closed without a sync: still owed
        log = inbox.open_index_log()
        assert log is not None
        log.sync()
        log.close()
        assert inbox.open_index_log() is None


def test_nowait_write_does_not_wait_for_another_writer(mail: MailStore) -> None:
    """The lock held by another thread (or process): LockTimeout at once, no change."""
    with mail.open("INBOX") as inbox:
        uid = inbox.messages()[0].uid
        held = threading.Event()
        release = threading.Event()

        def writer() -> None:
            with dotlock(mail.root / "dovecot-uidlist"):
                held.set()
                release.wait(10)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert held.wait(10)
            with pytest.raises(LockTimeout):
                inbox.store_flags([uid], ["\\Flagged"], StoreMode.ADD, nowait=True)
            with pytest.raises(LockTimeout):
                inbox.expunge(nowait=True)
        finally:
            release.set()
            thread.join()
        assert "\\Flagged" not in inbox.message(uid).flags
        inbox.store_flags([uid], ["\\Flagged"], StoreMode.ADD)  # and waiting works
        assert "\\Flagged" in inbox.message(uid).flags
    with mail.open("INBOX") as again:
        assert "\\Flagged" in again.message(uid).flags


def test_nowait_write_does_not_rescan_on_the_loop(mail: MailStore) -> None:
    """A mailbox that needs a rescan first (a delivery into new/: the rescan writes and
    fsyncs the uidlist) makes a nowait write give way to one that may wait."""
    with mail.open("INBOX") as inbox:
        uid = inbox.messages()[0].uid
        name = "1700000000.M1P1.host"
        (mail.root / "tmp" / name).write_bytes(b"Subject: new\n\nnew\n")
        os.rename(mail.root / "tmp" / name, mail.root / "new" / name)
        with pytest.raises(LockTimeout):
            inbox.store_flags([uid], ["\\Flagged"], StoreMode.ADD, nowait=True)
        assert not (mail.root / "dovecot-uidlist.lock").exists()
        inbox.store_flags([uid], ["\\Flagged"], StoreMode.ADD)
        assert len(inbox.sync().added) == 1
        assert "\\Flagged" in inbox.message(uid).flags


def test_nowait_writes_leave_the_uidlist_rewrite_to_a_threaded_one(mail: MailStore) -> None:
    """Rewriting the uidlist (dropping expunged records) fsyncs it: nowait writes never
    do it; once it is due they give way, and the write that may wait does it."""
    uidlist = mail.root / "dovecot-uidlist"
    with mail.open("INBOX") as inbox:
        for n in range(70):
            inbox.append(b"Subject: %d\r\n\r\nbody\r\n" % n)
        inbox.sync()
        uids = [m.uid for m in inbox.messages()]
        inbox.store_flags(uids[3:], ["\\Deleted"], StoreMode.ADD)
        assert inbox.expunge(nowait=True) == uids[3:]
        inbox.sync_index()
        assert len(uidlist.read_text().splitlines()) == 1 + 73  # no rewrite yet
        with pytest.raises(LockTimeout):
            inbox.store_flags([uids[0]], ["\\Seen"], StoreMode.ADD, nowait=True)
        inbox.store_flags([uids[0]], ["\\Seen"], StoreMode.ADD)
        assert len(uidlist.read_text().splitlines()) == 1 + 3
        inbox.store_flags([uids[1]], ["\\Seen"], StoreMode.ADD, nowait=True)
        inbox.sync_index()


def test_a_mailbox_created_again_gets_a_new_index_connection(mail: MailStore) -> None:
    """The pool keeps the connection of a closed mailbox; a new mailbox under the same
    name (a new index file) must not get the old file's connection."""
    mail.create("Work")
    with mail.open("Work") as work:
        work.append(b"Subject: old\r\n\r\nold\r\n")
    mail.delete("Work")
    mail.create("Work")
    with mail.open("Work") as work:
        assert work.messages() == []
        work.append(b"Subject: new\r\n\r\nnew\r\n")
        work.sync()
        assert len(work.messages()) == 1
    with mail.open("Work") as work:
        [message] = work.messages()
        assert work.read_message(message.uid).startswith(b"Subject: new")
    # What another process reads: the file on disk has the new mailbox's message.
    index = sqlite3.connect(mail.mailbox_path("Work") / "roost.index.sqlite")
    try:
        assert index.execute("SELECT count(*) FROM messages").fetchone() == (1,)
    finally:
        index.close()

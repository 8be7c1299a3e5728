"""Changes by other programs and other sessions reach every session; MODSEQ and the
expunge history behave as CONDSTORE/QRESYNC need (RFC 7162)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from roost.store import (
    ChangeBus,
    Mailbox,
    MailboxNotFound,
    MailStore,
    MessageNotFound,
    StoreMode,
)


@pytest.fixture
def bus() -> ChangeBus:
    return ChangeBus()


@pytest.fixture
def mail(tmp_path: Path, bus: ChangeBus) -> MailStore:
    return MailStore(tmp_path / "Maildir", fsync=False, bus=bus)


def deliver(root: Path, name: str, content: bytes = b"Subject: x\n\nbody\n") -> Path:
    """What an MDA (procmail, Dovecot LDA, roost local) does: tmp/ then new/."""
    temp = root / "tmp" / name
    temp.write_bytes(content)
    os.rename(temp, root / "new" / name)
    return root / "new" / name


def only_file(directory: Path) -> Path:
    [path] = list(directory.iterdir())
    return path


# ------------------------------------------------------------- other programs


def test_delivery_is_found_by_sync(mail: MailStore) -> None:
    root = mail.root
    with mail.open("INBOX") as inbox:
        assert not inbox.sync()
        deliver(root, "1700000000.A1.host")
        deliver(root, "1700000000.A0.host")
        changes = inbox.sync()
        assert [m.uid for m in changes.added] == [1, 2]
        assert [m.base_name for m in changes.added] == ["1700000000.A0.host", "1700000000.A1.host"]
        assert changes.recent == (1, 2)
        assert inbox.recent == {1, 2}
        assert not list((root / "new").iterdir())  # the selected session moved them to cur/
        assert inbox.read_message_crlf(1) == b"Subject: x\r\n\r\nbody\r\n"
        assert not inbox.sync()


def test_rename_by_another_program_is_a_flag_change(mail: MailStore) -> None:
    with mail.open("INBOX") as inbox:
        uid = inbox.append(b"x\n")
        inbox.sync()
        before = inbox.message(uid).modseq
        path = only_file(mail.root / "cur")
        os.rename(path, path.with_name(path.name + "RS"))  # like mutt marking it replied+seen
        changes = inbox.sync()
        [update] = changes.flags
        assert update.uid == uid
        assert update.flags == {"\\Answered", "\\Seen"}
        assert update.modseq > before
        assert inbox.message(uid).flags == {"\\Answered", "\\Seen"}
        assert inbox.read_message_crlf(uid) == b"x\r\n"  # found under its new name


def test_file_removed_by_another_program_is_expunged(mail: MailStore) -> None:
    with mail.open("INBOX") as inbox:
        first = inbox.append(b"1\n")
        second = inbox.append(b"2\n")
        inbox.sync()
        modseq = inbox.highest_modseq
        for path in (mail.root / "cur").iterdir():
            if path.read_bytes() == b"1\n":
                path.unlink()
        changes = inbox.sync()
        assert changes.expunged == (first,)
        assert [m.uid for m in inbox.messages()] == [second]
        assert inbox.expunged_since(modseq) == [first]
        assert inbox.expunged_since(inbox.highest_modseq) == []


def test_change_in_the_same_clock_tick_is_not_missed(mail: MailStore) -> None:
    """A rename that leaves cur/'s mtime as recorded (same timestamp tick) is still seen."""
    cur = mail.root / "cur"
    with mail.open("INBOX") as inbox:
        uid = inbox.append(b"x\n")
        inbox.sync()
        stamp = cur.stat().st_mtime_ns
        path = only_file(cur)
        os.rename(path, path.with_name(path.name + "F"))
        os.utime(cur, ns=(stamp, stamp))  # the tick did not advance
        assert inbox.sync().flags[0].flags == {"\\Flagged"}
        assert inbox.message(uid).flags == {"\\Flagged"}


def test_new_uidvalidity_voids_the_session(mail: MailStore) -> None:
    with mail.open("INBOX") as inbox:
        inbox.append(b"x\n")
        inbox.sync()
        uidlist = mail.root / "dovecot-uidlist"
        lines = uidlist.read_text().splitlines()
        temp = mail.root / "uidlist.new"
        temp.write_text(f"3 V{inbox.uid_validity + 100} N1 G{'0' * 32}\n")
        os.rename(temp, uidlist)
        changes = inbox.sync()
        assert changes.uid_validity_changed
        assert inbox.uid_validity == int(lines[0].split()[1][1:]) + 100
        assert [m.uid for m in changes.added] == [1]


def test_message_restored_after_expunge_gets_a_new_uid(mail: MailStore) -> None:
    with mail.open("INBOX") as inbox:
        uid = inbox.append(b"x\n", ["\\Deleted"])
        inbox.sync()
        path = only_file(mail.root / "cur")
        backup = path.read_bytes()
        assert inbox.expunge() == [uid]
        path.write_bytes(backup)  # restored from a backup under its old name
        changes = inbox.sync()
        assert [m.uid for m in changes.added] == [uid + 1]  # never the expunged UID again


# ------------------------------------------------------------ two sessions


def test_two_sessions_see_each_others_changes(mail: MailStore) -> None:
    with mail.open("INBOX") as one, mail.open("INBOX") as two:
        uid = one.append(b"hello\n")
        assert [m.uid for m in two.sync().added] == [uid]
        assert [m.uid for m in one.sync().added] == [uid]

        result = one.store_flags([uid], ["\\Seen", "$Important"], StoreMode.ADD)
        [update] = result.updated
        assert not one.sync()  # already reported by store_flags
        [seen] = two.sync().flags
        assert seen == update
        assert two.message(uid).flags == {"\\Seen", "$Important"}

        two.store_flags([uid], ["\\Deleted"], StoreMode.ADD)
        assert one.sync().flags[0].flags == {"\\Seen", "$Important", "\\Deleted"}
        assert two.expunge() == [uid]
        changes = one.sync()
        assert changes.expunged == (uid,)
        assert one.messages() == []


def test_expunged_by_another_session_cannot_be_read(mail: MailStore) -> None:
    with mail.open("INBOX") as one, mail.open("INBOX") as two:
        uid = one.append(b"x\n", ["\\Deleted"])
        one.sync()
        two.sync()
        one.expunge()
        with pytest.raises(MessageNotFound):
            two.read_message_crlf(uid)
        assert two.sync().expunged == (uid,)


def test_expunge_takes_deleted_from_the_index_not_the_stale_view(mail: MailStore) -> None:
    with mail.open("INBOX") as one, mail.open("INBOX") as two:
        uids = [one.append(f"{n}\n".encode()) for n in range(3)]
        one.sync()
        two.sync()
        two.store_flags(uids[:2], ["\\Deleted"], StoreMode.ADD)
        assert one.expunge([uids[1], uids[2]]) == [uids[1]]  # UID EXPUNGE: only \Deleted
        assert one.expunge() == [uids[0]]
        assert [m.uid for m in one.messages()] == [uids[2]]


def test_recent_goes_to_one_session_only(mail: MailStore) -> None:
    deliver(mail.root, "1.a.host")
    with mail.open("INBOX", readonly=True) as examine:
        assert examine.recent == {1}  # EXAMINE sees \Recent without taking it
    with mail.open("INBOX") as one, mail.open("INBOX") as two:
        assert one.recent == {1}
        assert two.recent == frozenset()
        deliver(mail.root, "2.b.host")
        assert two.sync().recent == (2,)
        assert one.sync().recent == ()
        assert 2 in two.recent and 2 not in one.recent


def _seen_by(box: Mailbox) -> tuple[object, ...]:
    return (
        [(m.uid, m.flags, m.modseq, m.filename) for m in box.messages()],
        box.recent,
        box.keywords(),
        box.uid_validity,
        box.uid_next,
        box.highest_modseq,
    )


@pytest.mark.parametrize("readonly", [False, True])
def test_reselect_sees_what_a_new_open_sees(mail: MailStore, readonly: bool) -> None:
    """SELECT of the selected mailbox reuses its object (:meth:`Mailbox.reselect`): the
    view and \\Recent are those of closing it and opening it again."""
    deliver(mail.root, "1.a.host")
    with mail.open("INBOX", readonly=readonly) as box:
        assert box.recent == {1}
        with mail.open("INBOX") as other:  # another session's changes meanwhile
            other.store_flags([1], ["\\Flagged", "$Work"], StoreMode.ADD)
            other.append(b"Subject: two\n\nx\n")
        deliver(mail.root, "3.c.host")  # a delivery nobody has seen yet
        box.reselect()
        after = _seen_by(box)
        box.reselect()  # nothing changed: the same again, nothing recent claimed twice
        again = _seen_by(box)
    with mail.open("INBOX", readonly=readonly) as fresh_after:
        fresh = _seen_by(fresh_after)
    uids = [uid for uid, *_ in after[0]]  # type: ignore[misc]
    assert uids == [1, 2, 3]
    # 1 was claimed by the first open (the other session's open would have had it);
    # 2 (appended by a session that has not synced since) and 3 nobody has claimed.
    assert after[1] == {2, 3}
    if readonly:  # EXAMINE claims nothing: they stay recent
        assert again[1] == {2, 3} == fresh[1]
    else:  # the reselect claimed them
        assert again[1] == frozenset() == fresh[1]
    assert after[2:] == fresh[2:]
    assert after[0] == fresh[0]


def test_reselect_of_a_deleted_mailbox_fails(mail: MailStore) -> None:
    mail.create("Work")
    with mail.open("Work") as box:
        mail.delete("Work")
        with pytest.raises(MailboxNotFound):
            box.reselect()


def test_bus_wakes_other_sessions_not_the_writer(mail: MailStore, bus: ChangeBus) -> None:
    woken: list[str] = []
    with mail.open("INBOX") as one, mail.open("INBOX") as two:
        one.watch(lambda path: woken.append("one"))
        two.watch(lambda path: woken.append("two"))
        one.append(b"x\n")
        assert woken == ["two"]
        one.sync()
        two.sync()
        two.store_flags([1], ["\\Seen"], StoreMode.ADD)
        assert woken == ["two", "one"]
    assert bus.subscriber_count(mail.root) == 0  # close() cancels


def test_concurrent_appends_get_distinct_uids(mail: MailStore) -> None:
    errors: list[BaseException] = []

    def worker(tag: str) -> None:
        try:
            with mail.open("INBOX") as box:
                for n in range(25):
                    box.append(f"{tag} {n}\n".encode())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(str(t),)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with mail.open("INBOX") as inbox:
        assert [m.uid for m in inbox.messages()] == list(range(1, 101))
        bodies = {inbox.read_message_crlf(m.uid) for m in inbox.messages()}
        assert len(bodies) == 100
    lines = (mail.root / "dovecot-uidlist").read_text().splitlines()[1:]
    assert [int(line.split()[0]) for line in lines] == list(range(1, 101))


def test_concurrent_processes_share_the_maildir(mail: MailStore, tmp_path: Path) -> None:
    """Two processes: the dot-lock and the index keep UIDs unique."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_append_many, args=(mail.root, p)) for p in range(2)]
    with mail.open("INBOX") as inbox:
        for process in processes:
            process.start()
        _append_many(mail.root, 9)
        for process in processes:
            process.join(60)
            assert process.exitcode == 0
        changes = inbox.sync()
        assert [m.uid for m in changes.added] == list(range(1, 31))


def _append_many(root: Path, tag: int) -> None:
    with MailStore(root, fsync=False, bus=ChangeBus()).open("INBOX") as box:
        for n in range(10):
            box.append(f"{tag}-{n}\n".encode())


# ---------------------------------------------------------------- CONDSTORE


def test_modseq_grows_on_every_change(mail: MailStore) -> None:
    with mail.open("INBOX") as inbox:
        seen = [inbox.highest_modseq]

        def step() -> None:
            inbox.sync()
            assert inbox.highest_modseq > seen[-1]
            seen.append(inbox.highest_modseq)

        uid = inbox.append(b"x\n")
        step()
        assert inbox.message(uid).modseq == seen[-1]
        inbox.store_flags([uid], ["\\Seen"], StoreMode.ADD)
        step()
        same = inbox.store_flags([uid], ["\\Seen"], StoreMode.ADD)  # no change: no new MODSEQ
        assert same.updated[0].modseq == seen[-1]
        assert not inbox.sync() and inbox.highest_modseq == seen[-1]
        other = inbox.append(b"y\n")
        step()
        inbox.store_flags([other], ["\\Deleted"], StoreMode.ADD)
        step()
        inbox.expunge()
        step()
        assert inbox.expunged_since(seen[-2]) == [other]
        assert [m.uid for m in inbox.changed_since(seen[1])] == [uid]
        assert inbox.changed_since(seen[-1]) == []
    with mail.open("INBOX") as again:  # persisted
        assert again.highest_modseq == seen[-1]
        assert again.expunged_since(seen[0]) == [other]


def test_unchanged_since_fails_messages_changed_meanwhile(mail: MailStore) -> None:
    with mail.open("INBOX") as one, mail.open("INBOX") as two:
        a = one.append(b"a\n")
        b = one.append(b"b\n")
        one.sync()
        two.sync()
        known = two.highest_modseq
        one.store_flags([a], ["$Label1"], StoreMode.ADD)
        result = two.store_flags([a, b], ["\\Flagged"], StoreMode.ADD, unchanged_since=known)
        assert result.failed == (a,)  # OK [MODIFIED a]
        assert [u.uid for u in result.updated] == [b]
        assert two.message(b).flags == {"\\Flagged"}
        assert two.sync().flags[0].flags == {"$Label1"}  # the client learns the news
        everything = two.store_flags([a, b], ["\\Seen"], StoreMode.ADD, unchanged_since=0)
        assert everything.failed == (a, b)


def test_replace_mode_and_keyword_case(mail: MailStore) -> None:
    with mail.open("INBOX") as inbox:
        uid = inbox.append(b"x\n", ["$Junk", "\\Seen"])
        inbox.sync()
        result = inbox.store_flags([uid], ["$JUNK", "\\flagged"], StoreMode.REPLACE)
        assert result.updated[0].flags == {"$Junk", "\\Flagged"}  # spelling already in use
        with pytest.raises(ValueError):
            inbox.store_flags([uid], ["\\Recent"], StoreMode.ADD)


# ----------------------------------------------------------- copy and move


def test_copy_hard_links_and_keeps_flags_and_date(mail: MailStore) -> None:
    mail.create("Archive")
    with mail.open("INBOX") as inbox, mail.open("Archive") as archive:
        archive.append(b"first\n", ["Other"])  # "Other" takes letter a in Archive
        uid = inbox.append(b"x\n", ["\\Seen", "$Junk"], internal_date=1_600_000_000)
        inbox.sync()
        pairs = inbox.copy([uid, 999], archive)
        assert pairs == [(uid, 2)]
        [_, copied] = archive.sync().added
        assert copied.uid == 2
        assert copied.flags == {"\\Seen", "$Junk"}
        assert copied.internal_date == 1_600_000_000
        source = Path(inbox.message(uid).fspath)
        target = Path(copied.fspath)
        assert source.stat().st_ino == target.stat().st_ino  # hard link, as Dovecot
        assert target.name.endswith(":2,Sb")  # $Junk is b in Archive's dovecot-keywords
        assert (mail.root / ".Archive" / "dovecot-keywords").read_text() == "0 Other\n1 $Junk\n"
        assert inbox.messages()[0].uid == uid  # the source is untouched


def test_move_copies_then_expunges(mail: MailStore) -> None:
    mail.create("Archive")
    with mail.open("INBOX") as inbox, mail.open("Archive") as archive:
        uids = [inbox.append(f"{n}\n".encode()) for n in range(3)]
        inbox.sync()
        modseq = inbox.highest_modseq
        assert inbox.move(uids[:2], archive) == [(uids[0], 1), (uids[1], 2)]
        assert [m.uid for m in inbox.messages()] == [uids[2]]
        assert inbox.expunged_since(modseq) == uids[:2]
        assert [m.uid for m in archive.sync().added] == [1, 2]
        assert archive.read_message_crlf(2) == b"1\r\n"


def test_append_keeps_internal_date_and_sizes(mail: MailStore) -> None:
    data = b"Subject: s\r\n\r\nline one\r\nline two\r\n"
    with mail.open("INBOX") as inbox:
        uid = inbox.append(data, internal_date=1_000_000_000.0)
        [message] = inbox.sync().added
        assert message.uid == uid
        assert message.internal_date == 1_000_000_000.0
        assert message.vsize == len(data)
        assert message.size == len(data) - data.count(b"\r\n")
        assert abs(message.save_date - time.time()) < 60
        assert inbox.read_message_crlf(uid) == data
        with inbox.open_message(uid) as handle:
            assert handle.read() == data.replace(b"\r\n", b"\n")


def test_cache_blobs_follow_the_message(mail: MailStore) -> None:
    with mail.open("INBOX") as inbox:
        uid = inbox.append(b"x\n", ["\\Deleted"])
        inbox.sync()
        inbox.cache_put(uid, "envelope", b'("date" "subject")')
        assert inbox.cache_get(uid, "envelope") == b'("date" "subject")'
        assert inbox.cache_get(uid, "bodystructure") is None
        inbox.expunge()
        assert inbox.cache_get(uid, "envelope") is None
        inbox.cache_put(uid, "envelope", b"late")  # expunged: ignored
        assert inbox.cache_get(uid, "envelope") is None


def test_readonly_session_is_a_mailbox_too(mail: MailStore) -> None:
    deliver(mail.root, "1.a.host")
    with mail.open("INBOX", readonly=True) as examine:
        assert isinstance(examine, Mailbox)
        assert [m.filename.split("/")[0] for m in examine.messages()] == ["new"]
        assert (mail.root / "new" / "1.a.host").exists()


# ------------------------------------------------ dovecot-uidlist upkeep


def test_restored_file_is_recognised_by_a_later_session(mail: MailStore) -> None:
    """A new session reads only the uidlist's tail; the index still knows old bases."""
    with mail.open("INBOX") as inbox:
        uid = inbox.append(b"x\n", ["\\Deleted"])
        inbox.append(b"y\n")
        inbox.sync()
        path = next(p for p in (mail.root / "cur").iterdir() if p.read_bytes() == b"x\n")
        inbox.expunge()
    path.write_bytes(b"x\n")  # restored from a backup
    with mail.open("INBOX") as later:
        restored = [m for m in later.messages() if later.read_message_crlf(m.uid) == b"x\r\n"]
        assert [m.uid for m in restored] == [uid + 2]
        assert restored[0].base_name != path.name.partition(":")[0]


def test_dovecot_appending_records_is_followed(mail: MailStore) -> None:
    """Dovecot saves a message: file into cur/, then a record appended under the lock."""
    with mail.open("INBOX") as inbox:
        inbox.append(b"roost\n")
        inbox.sync()
        (mail.root / "cur" / "1700000001.M5P5.dovecot,S=8,W=9:2,S").write_bytes(b"dovecot\n")
        with (mail.root / "dovecot-uidlist").open("a") as uidlist:
            uidlist.write("7 :1700000001.M5P5.dovecot,S=8,W=9\n")
        [added] = inbox.sync().added
        assert (added.uid, added.flags, added.vsize) == (7, {"\\Seen"}, 9)
        assert inbox.uid_next == 8
        assert inbox.append(b"next\n") == 8


def test_uidlist_drops_expunged_records_in_time(mail: MailStore) -> None:
    uidlist = mail.root / "dovecot-uidlist"
    with mail.open("INBOX") as inbox:
        uids = [inbox.append(f"{n}\n".encode(), ["\\Deleted"]) for n in range(100)]
        keep = inbox.append(b"keep\n")
        inbox.sync()
        header = uidlist.read_text().splitlines()[0]
        assert len(uidlist.read_text().splitlines()) == 102
        assert inbox.expunge() == uids
    lines = uidlist.read_text().splitlines()
    assert lines[0].split()[:2] == header.split()[:2]  # same version and UIDVALIDITY
    assert lines[0].split()[2] == "N102"
    assert [int(line.split()[0]) for line in lines[1:]] == [keep]
    with mail.open("INBOX") as again:
        assert [m.uid for m in again.messages()] == [keep]
        assert again.append(b"more\n") == 102


# ------------------------------------- programs that do not lock, at the worst moment


def test_store_flags_follows_a_file_renamed_in_between(
    mail: MailStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: a STORE is not lost when another program renames the file concurrently."""
    import roost.store.mailbox as mailbox_module

    with mail.open("INBOX") as inbox:
        uid = inbox.append(b"x\n", ["\\Draft"])
        inbox.sync()
        path = only_file(mail.root / "cur")
        real_rename = os.rename
        raced: list[str] = []

        def rename_after_mutt(source: str, target: str) -> None:
            if not raced and source == str(path):
                raced.append(source)
                real_rename(source, source.replace(":2,D", ":2,DR"))  # mutt: replied
            real_rename(source, target)

        monkeypatch.setattr(mailbox_module.os, "rename", rename_after_mutt)
        result = inbox.store_flags([uid], ["\\Seen"], StoreMode.ADD)
        assert raced
        assert result.updated[0].flags == {"\\Draft", "\\Answered", "\\Seen"}
        assert only_file(mail.root / "cur").name.endswith(":2,DRS")


def test_copy_follows_a_source_renamed_in_between(
    mail: MailStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: COPY finds a source file that another program renamed concurrently."""
    import roost.store.mailbox as mailbox_module

    mail.create("Archive")
    with mail.open("INBOX") as inbox, mail.open("Archive") as archive:
        uid = inbox.append(b"x\n")
        inbox.sync()
        path = only_file(mail.root / "cur")
        real_link = os.link

        def link_after_mutt(source: str, target: str) -> None:
            if source == str(path):
                os.rename(source, source + "S")
            real_link(source, target)

        monkeypatch.setattr(mailbox_module.os, "link", link_after_mutt)
        assert inbox.copy([uid], archive) == [(uid, 1)]
        assert archive.sync().added[0].flags == frozenset()  # flags as COPY saw them


# ------------------------------------------------------------- suspended sessions


def test_suspended_mailbox_sees_changes_made_meanwhile(mail: MailStore) -> None:
    """A session that released its index connection (IDLE) reopens it and misses nothing."""
    with mail.open("INBOX") as idle, mail.open("INBOX") as other:
        uid = other.append(b"Subject: one\r\n\r\nx\r\n")
        assert [m.uid for m in idle.sync().added] == [uid]
        idle.suspend()
        idle.suspend()  # twice is harmless
        second = other.append(b"Subject: two\r\n\r\ny\r\n")
        other.sync()
        other.store_flags([uid], ["\\Seen"], StoreMode.ADD)
        deliver(mail.root, "1700000000.B1.host")
        changes = idle.sync()
        assert [m.uid for m in changes.added] == [second, second + 1]
        assert [(f.uid, f.flags) for f in changes.flags] == [(uid, frozenset({"\\Seen"}))]
        idle.suspend()
        assert idle.store_flags([second], ["\\Flagged"], StoreMode.ADD).updated
        assert other.sync().flags[0].uid == second


def test_quiet_rescans_in_the_race_window_still_find_a_rename(mail: MailStore) -> None:
    """A flag change by a program that does not lock, right after a sync, is found even
    though the lock-free recheck of a recently changed directory is taken."""
    root = mail.root
    with mail.open("INBOX") as inbox:
        uid = inbox.append(b"Subject: one\r\n\r\nx\r\n")
        inbox.sync()
        assert not inbox.sync()  # lock-free: nothing changed
        path = only_file(root / "cur")
        os.rename(path, f"{path}S")  # ":2," + "S": \Seen
        os.utime(root / "cur", ns=(0, os.stat(root / "cur").st_mtime_ns))  # mtime kept
        changes = inbox.sync()
        assert [(f.uid, f.flags) for f in changes.flags] == [(uid, frozenset({"\\Seen"}))]


def test_a_sync_that_finds_nothing_reads_the_index_state_once(mail: MailStore) -> None:
    """The state row read to compare the Maildir with the index also tells that the
    view is current: no second read transaction (one per IMAP command otherwise)."""
    with mail.open("INBOX") as inbox:
        inbox.append(b"Subject: one\r\n\r\nx\r\n")
        inbox.sync()
        old = time.time_ns() - 10**9  # out of the race window: no listing either
        for subdir in ("new", "cur"):
            os.utime(mail.root / subdir, ns=(old, old))
        inbox.sync()  # rescans (the mtimes changed), records them
        statements: list[str] = []
        inbox._index.db.set_trace_callback(statements.append)
        assert not inbox.sync()
        assert [s.split()[0] for s in statements] == ["SELECT", "SELECT"]  # state, new/
        statements.clear()
        with mail.open("INBOX") as other:
            other.store_flags([1], ["\\Seen"], StoreMode.ADD)
        changes = inbox.sync()  # the index changed: its rows are read
        assert [(f.uid, f.flags) for f in changes.flags] == [(1, frozenset({"\\Seen"}))]
        assert "BEGIN" in statements


def test_own_writes_need_no_read_back_but_others_changes_are_seen(mail: MailStore) -> None:
    """A STORE or EXPUNGE on a current view leaves it current at the write's MODSEQ:
    the next sync reads no rows. A write on a view that lags still lets that sync
    report what the view lacks."""
    with mail.open("INBOX") as one, mail.open("INBOX") as two:
        for n in range(3):
            one.append(b"Subject: %d\r\n\r\nx\r\n" % n)
        one.sync()
        two.sync()
        statements: list[str] = []
        one._index.db.set_trace_callback(statements.append)
        one.store_flags([1], ["\\Deleted"], StoreMode.ADD)
        statements.clear()
        assert not one.sync()
        assert "BEGIN" not in statements  # its own change: nothing read back
        assert one.expunge() == [1]
        statements.clear()
        assert not one.sync()
        assert "BEGIN" not in statements
        assert one.highest_modseq == one.status().highest_modseq
        # two lags behind one's changes; its own write must not hide them.
        two.store_flags([2], ["\\Seen"], StoreMode.ADD)
        changes = two.sync()
        assert changes.expunged == (1,)
        assert [(m.uid, m.flags) for m in two.messages()] == [
            (2, frozenset({"\\Seen"})),
            (3, frozenset()),
        ]
        changes = one.sync()
        assert [(f.uid, f.flags) for f in changes.flags] == [(2, frozenset({"\\Seen"}))]

"""dovecot-keywords, subscriptions, dot-locks and the change bus."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from roost.store.bus import ChangeBus, notify_delivery
from roost.store.dotlock import (
    dotlock,
    keep_template,
    lock_content,
    release_template,
    remove_if_stale,
    replace_file,
)
from roost.store.errors import LockTimeout
from roost.store.keywords import Keywords
from roost.store.subscriptions import read_subscriptions, set_subscribed

# ----------------------------------------------------------------- dovecot-keywords


def test_keywords_read_dovecot_file(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-keywords"
    path.write_text("0 $Junk\n1 $NonJunk\n3 $Label1\nbroken\n")
    keywords = Keywords(path, fsync=False)
    assert keywords.refresh()
    assert keywords.keyword("a") == "$Junk"
    assert keywords.keyword("b") == "$NonJunk"
    assert keywords.keyword("c") is None
    assert keywords.keyword("d") == "$Label1"
    assert keywords.letter("$junk") == "a"  # case-insensitive, as Dovecot
    assert keywords.lookup("$NONJUNK") == "$NonJunk"
    assert keywords.letter("$Other") is None
    assert not keywords.refresh()


def test_keywords_assign_fills_free_letters_and_mtime_grows(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-keywords"
    path.write_text("0 $Junk\n2 Work\n")
    old = time.time() + 100  # a file from "the future": the next write must still grow
    os.utime(path, (old, old))
    keywords = Keywords(path, fsync=False)
    keywords.refresh()
    keywords.assign(["Home", "$junk", "Later"])
    assert path.read_text() == "0 $Junk\n1 Home\n2 Work\n3 Later\n"
    assert path.stat().st_mtime > old
    assert not (tmp_path / "dovecot-keywords.lock").exists()


def test_keywords_beyond_26_have_no_letter(tmp_path: Path) -> None:
    keywords = Keywords(tmp_path / "dovecot-keywords", fsync=False)
    keywords.refresh()
    keywords.assign([f"k{n}" for n in range(30)])
    assert keywords.letter("k25") == "z"
    assert keywords.letter("k26") is None
    assert len(keywords.names) == 26


def test_unknown_letter_gets_dovecot_name(tmp_path: Path) -> None:
    path = tmp_path / "dovecot-keywords"
    path.write_text("0 unknown-2\n")
    keywords = Keywords(path, fsync=False)
    keywords.refresh()
    assert keywords.name_unknown("c") == "unknown-2?"
    assert "2 unknown-2?" in path.read_text()


# -------------------------------------------------------------------- subscriptions


def test_new_subscriptions_file_is_version_2(tmp_path: Path) -> None:
    set_subscribed(tmp_path, "INBOX", True, fsync=False)
    set_subscribed(tmp_path, "Archive.2024", True, fsync=False)
    set_subscribed(tmp_path, "Entwürfe", True, fsync=False)
    assert (tmp_path / "subscriptions").read_text() == (
        "V\t2\n\nINBOX\nArchive\t2024\nEntw&APw-rfe\n"
    )
    assert read_subscriptions(tmp_path) == ["INBOX", "Archive.2024", "Entwürfe"]
    assert not set_subscribed(tmp_path, "archive.2024", False, fsync=False)  # case matters
    assert set_subscribed(tmp_path, "Archive.2024", False, fsync=False)
    assert read_subscriptions(tmp_path) == ["INBOX", "Entwürfe"]


def test_version_1_file_stays_version_1(tmp_path: Path) -> None:
    (tmp_path / "subscriptions").write_text("INBOX\nLists.dovecot\nTrash.\n")
    assert read_subscriptions(tmp_path) == ["INBOX", "Lists.dovecot", "Trash"]
    set_subscribed(tmp_path, "Sent", True, fsync=False)
    assert (tmp_path / "subscriptions").read_text() == "INBOX\nLists.dovecot\nTrash.\nSent\n"


def test_version_2_levels_are_unescaped_then_decoded(tmp_path: Path) -> None:
    (tmp_path / "subscriptions").write_text("V\t2\n\nA\x01tB\tC\nX\tY&-Z\nbad&\n")
    # "\x01t" is an escaped TAB: not possible in a modified UTF-7 name, so that line is
    # ignored, as is a line that is not modified UTF-7.
    assert read_subscriptions(tmp_path) == ["X.Y&Z"]


def test_inbox_is_case_insensitive(tmp_path: Path) -> None:
    set_subscribed(tmp_path, "inbox", True, fsync=False)
    assert read_subscriptions(tmp_path) == ["INBOX"]
    assert not set_subscribed(tmp_path, "Inbox", True, fsync=False)


# ------------------------------------------------------------------------ dot-locks


def test_dotlock_creates_and_removes_lock_file_with_pid(tmp_path: Path) -> None:
    target = tmp_path / "dovecot-uidlist"
    with dotlock(target):
        lock = tmp_path / "dovecot-uidlist.lock"
        pid, _, host = lock.read_text().partition(":")
        assert int(pid) == os.getpid() and host
        with dotlock(target):  # re-entrant in the same thread
            assert lock.exists()
        assert lock.exists()
    assert not lock.exists()


def test_dotlock_waits_for_a_live_holder_and_times_out(tmp_path: Path) -> None:
    lock = tmp_path / "f.lock"
    lock.write_text(f"{os.getppid()}:{os.uname().nodename}")  # a live process
    with pytest.raises(LockTimeout), dotlock(tmp_path / "f", timeout=0.2):
        pass
    assert lock.exists()


def test_dotlock_overrides_dead_holder_and_old_lock(tmp_path: Path) -> None:
    lock = tmp_path / "f.lock"
    lock.write_text(f"999999999:{os.uname().nodename}")  # no such pid
    with dotlock(tmp_path / "f", timeout=1):
        assert int(lock.read_text().partition(":")[0]) == os.getpid()
    lock.write_text("1:otherhost")
    old = time.time() - 1000
    os.utime(lock, (old, old))
    with dotlock(tmp_path / "f", timeout=1, stale_seconds=120):
        pass


def test_remove_if_stale_keeps_a_held_lock_and_says_what_it_removes(tmp_path: Path) -> None:
    lock = tmp_path / "f.lock"
    seen: list[bytes] = []
    assert remove_if_stale(lock, 120, own_pid_is_stale=False, on_stale=seen.append)  # none
    lock.write_bytes(lock_content())
    assert lock_content() == f"{os.getpid()}:{os.uname().nodename}".encode()
    # our pid, held by the caller: not stale
    assert not remove_if_stale(lock, 120, own_pid_is_stale=False, on_stale=seen.append)
    assert lock.exists() and seen == []
    # our pid, not held by the caller: a leftover of an earlier process with this pid
    assert remove_if_stale(lock, 120, own_pid_is_stale=True, on_stale=seen.append)
    assert not lock.exists() and seen == [lock_content()]


def test_dotlock_serialises_threads(tmp_path: Path) -> None:
    inside = 0
    overlap = False

    def work() -> None:
        nonlocal inside, overlap
        for _ in range(20):
            with dotlock(tmp_path / "f"):
                inside += 1
                if inside > 1:
                    overlap = True
                time.sleep(0.0005)
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not overlap


def test_dotlock_of_a_kept_template_is_a_fresh_link_to_it(tmp_path: Path) -> None:
    """With a user (an open mailbox), the lock is a hard link to this process's template
    in tmp/: Dovecot's content and a fresh mtime (staleness), removed at unlock; the
    template goes with the last user."""
    (tmp_path / "tmp").mkdir()
    target = tmp_path / "dovecot-uidlist"
    lock = tmp_path / "dovecot-uidlist.lock"
    keep_template(target)
    try:
        for _ in range(2):
            with dotlock(target):
                [template] = list((tmp_path / "tmp").iterdir())
                assert template.name.endswith(f".{os.getpid()}")
                assert os.path.samefile(lock, template)
                assert lock.read_text() == f"{os.getpid()}:{os.uname().nodename}"
                assert time.time() - lock.stat().st_mtime < 60
                os.utime(template, (1, 1))  # the next lock refreshes it
            assert not lock.exists()
            assert template.exists()
    finally:
        release_template(target)
    assert list((tmp_path / "tmp").iterdir()) == []
    with dotlock(target):  # no user: a file of its own again
        assert lock.stat().st_nlink == 1
    assert not lock.exists()


def test_dotlock_template_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    host = os.uname().nodename
    dead = tmp_path / "tmp" / f".f.lock.{host}.999999999"
    alive = tmp_path / "tmp" / f".f.lock.{host}.{os.getppid()}"
    dead.write_text(f"999999999:{host}")
    alive.write_text(f"{os.getppid()}:{host}")
    keep_template(tmp_path / "f")
    try:
        with dotlock(tmp_path / "f"):
            pass
        assert not dead.exists()
        assert alive.exists()
    finally:
        release_template(tmp_path / "f")


def test_dotlock_of_a_kept_template_waits_for_a_live_holder(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    lock = tmp_path / "f.lock"
    lock.write_text(f"{os.getppid()}:{os.uname().nodename}")  # a live process
    keep_template(tmp_path / "f")
    try:
        with pytest.raises(LockTimeout), dotlock(tmp_path / "f", timeout=0):
            pass
        assert lock.read_text().startswith(f"{os.getppid()}:")
        lock.unlink()
        with dotlock(tmp_path / "f", timeout=0):
            assert lock.read_text().startswith(f"{os.getpid()}:")
    finally:
        release_template(tmp_path / "f")


def test_replace_file_reads_under_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("1")

    def bump() -> None:
        for _ in range(25):
            replace_file(path, lambda: str(int(path.read_text()) + 1).encode(), fsync=False)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_text() == "101"
    assert not replace_file(path, lambda: None, fsync=False)
    assert not (tmp_path / "f.lock").exists()


# ----------------------------------------------------------------------- change bus


def test_bus_calls_subscribers_of_that_path_except_the_origin(tmp_path: Path) -> None:
    bus = ChangeBus()
    seen: list[tuple[str, Path]] = []
    me = object()
    (tmp_path / "a").mkdir()
    bus.subscribe(tmp_path / "a", lambda p: seen.append(("first", p)))
    second = bus.subscribe(
        tmp_path / "a" / ".." / "a", lambda p: seen.append(("mine", p)), owner=me
    )
    bus.subscribe(tmp_path / "b", lambda p: seen.append(("other", p)))
    bus.publish(tmp_path / "a", origin=me)
    assert seen == [("first", (tmp_path / "a").resolve())]
    notify_delivery(tmp_path / "a", bus=bus)
    assert [who for who, _ in seen] == ["first", "first", "mine"]
    second.cancel()
    second.cancel()
    assert bus.subscriber_count(tmp_path / "a") == 1


def test_bus_survives_a_failing_callback(tmp_path: Path) -> None:
    bus = ChangeBus()
    calls: list[Path] = []

    def broken(path: Path) -> None:
        raise RuntimeError("boom")

    bus.subscribe(tmp_path, broken)
    bus.subscribe(tmp_path, calls.append)
    bus.publish(tmp_path)
    assert calls == [tmp_path.resolve()]

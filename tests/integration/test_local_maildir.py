"""Maildir delivery on a real file system (tmp_path)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from roost.delivery.errors import DeliveryError, QuotaExceeded
from roost.delivery.headers import delivery_headers
from roost.delivery.maildir import (
    DirectorySync,
    MaildirDelivery,
    deliver_maildir,
    deliver_maildir_files,
    maildir_usage,
    unique_name,
)
from tests.conftest import FailingReader, in_forked_child

MESSAGE = b"Subject: hello\r\nFrom: bob@example.org\r\n\r\nline one\r\nline two\r\n"
NAME = re.compile(r"(\d+)\.M(\d+)P(\d+)Q(\d+)\.([^,]+),S=(\d+),W=(\d+)")
IS_ROOT = os.geteuid() == 0


def entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def deliver_maildir_batch(
    deliveries: list[MaildirDelivery], **options: DirectorySync
) -> list[Path | Exception]:
    """``deliver_maildir_files`` with the new files' paths as ``Path``s, as these tests
    read them."""
    return [
        Path(result) if isinstance(result, str) else result
        for result in deliver_maildir_files(deliveries, **options)
    ]


def test_delivery_creates_the_maildir_and_names_the_file(tmp_path: Path) -> None:
    maildir = tmp_path / "home" / "alice" / "Maildir"
    prepend = delivery_headers("bob@example.org", "alice@example.com")
    path = deliver_maildir(maildir, MESSAGE, prepend=prepend, hostname="mx.example.com")

    for sub in ("cur", "new", "tmp"):
        assert stat.S_IMODE((maildir / sub).stat().st_mode) == 0o700
    assert stat.S_IMODE(maildir.stat().st_mode) == 0o700
    assert path.parent == maildir / "new"
    assert entries(maildir / "tmp") == [] and entries(maildir / "cur") == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    content = path.read_bytes()
    assert content == (
        b"Return-Path: <bob@example.org>\nDelivered-To: alice@example.com\n"
        b"Subject: hello\nFrom: bob@example.org\n\nline one\nline two\n"
    )
    match = NAME.fullmatch(path.name)
    assert match is not None, path.name
    assert int(match.group(3)) == os.getpid()
    assert match.group(5) == "mx.example.com"
    assert int(match.group(6)) == len(content) == path.stat().st_size
    assert int(match.group(7)) == len(content) + content.count(b"\n")


def test_streams_from_a_file_and_keeps_bare_cr(tmp_path: Path) -> None:
    spool = tmp_path / "spool-file"
    body = b"A: b\r\n\r\n" + b"x" * 200_000 + b"\rbare cr\r\n" * 3
    spool.write_bytes(body)
    with spool.open("rb") as handle:
        path = deliver_maildir(tmp_path / "Maildir", handle)
    assert path.read_bytes() == body.replace(b"\r\n", b"\n")
    assert b"\rbare cr\n" in path.read_bytes()


def test_hostname_is_escaped() -> None:
    name = unique_name("weird/host:name", now=1700000000.25)
    assert name.startswith("1700000000.M250000P")
    assert name.endswith(".weird\\057host\\072name")


def test_a_forked_child_names_its_files_with_its_own_pid() -> None:
    """The pid part is computed once per process, so a worker or helper child forked
    after the first delivery must not reuse its parent's (qmail's uniqueness rule)."""
    assert f"P{os.getpid()}Q" in unique_name("mx")
    pid, child = in_forked_child(lambda: unique_name("mx"))
    assert f"P{pid}Q" in child and child.endswith(".mx")
    assert f"P{os.getpid()}Q" in unique_name("mx")  # the parent's own is unchanged


def test_names_are_unique_across_threads(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda i: deliver_maildir(maildir, MESSAGE), range(64)))
    assert len({p.name for p in paths}) == 64
    assert len(entries(maildir / "new")) == 64


def test_folder_autocreate_and_fallback_to_inbox(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    inbox = deliver_maildir(maildir, MESSAGE, folder="Lists.roost")
    assert inbox.parent == maildir / "new"
    assert not (maildir / ".Lists.roost").exists()

    path = deliver_maildir(maildir, MESSAGE, folder="Lists.roost", autocreate_folder=True)
    folder = maildir / ".Lists.roost"
    assert path.parent == folder / "new"
    assert (folder / "maildirfolder").is_file()
    assert stat.S_IMODE((folder / "tmp").stat().st_mode) == 0o700

    again = deliver_maildir(maildir, MESSAGE, folder="Lists.roost")
    assert again.parent == folder / "new"
    with pytest.raises(ValueError, match="bad Maildir"):
        deliver_maildir(maildir, MESSAGE, folder="../escape")


def test_quota_from_file_sizes(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    first = deliver_maildir(maildir, MESSAGE)
    used = maildir_usage(maildir)
    assert used == first.stat().st_size
    with pytest.raises(QuotaExceeded) as caught:
        deliver_maildir(maildir, MESSAGE, quota_bytes=used + 10)
    assert (caught.value.dsn, caught.value.temporary) == ("5.2.2", False)
    assert entries(maildir / "tmp") == []
    assert len(entries(maildir / "new")) == 1
    with pytest.raises(QuotaExceeded) as caught:
        deliver_maildir(maildir, MESSAGE, quota_bytes=used, quota_temporary=True)
    assert caught.value.dsn == "4.2.2"
    deliver_maildir(maildir, MESSAGE, quota_bytes=used * 3)
    assert len(entries(maildir / "new")) == 2


def test_quota_from_maildirsize_which_is_updated(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    deliver_maildir(maildir, b"")  # creates the Maildir
    (maildir / "maildirsize").write_text("1000S\n900 3\n50 1\n")
    path = deliver_maildir(maildir, b"x" * 40, quota_bytes=1000)
    assert path.name.endswith(",S=40,W=40")
    assert (maildir / "maildirsize").read_text() == "1000S\n900 3\n50 1\n40 1\n"
    assert maildir_usage(maildir) == 990
    with pytest.raises(QuotaExceeded):
        deliver_maildir(maildir, b"y" * 40, quota_bytes=1000)
    assert len(entries(maildir / "new")) == 2
    assert entries(maildir / "tmp") == []
    assert (maildir / "maildirsize").read_text().endswith("\n40 1\n")


def test_maildirsize_of_another_program_is_updated_without_a_roost_quota(
    tmp_path: Path,
) -> None:
    """The file carries its own quota (Dovecot's maildir backend, Courier's maildrop):
    every delivery adds to it, whatever roost's quota; none is made when absent, and a
    symlink is not followed."""
    maildir = tmp_path / "Maildir"
    deliver_maildir(maildir, b"x" * 10)
    assert not (maildir / "maildirsize").exists()
    (maildir / "maildirsize").write_text("5000S,10C\n0 0\n")
    deliver_maildir(maildir, b"x" * 25)
    assert (maildir / "maildirsize").read_text() == "5000S,10C\n0 0\n25 1\n"
    (maildir / "maildirsize").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("1S\n")
    (maildir / "maildirsize").symlink_to(elsewhere)
    deliver_maildir(maildir, b"x" * 5)
    assert elsewhere.read_text() == "1S\n"


def test_mailbox_size_limit_per_message(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    with pytest.raises(QuotaExceeded, match="size limit"):
        deliver_maildir(maildir, b"z\r\n" * 1000, size_limit=100)
    assert entries(maildir / "tmp") == [] and entries(maildir / "new") == []


def test_read_error_mid_message_leaves_nothing(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    data = b"Subject: x\r\n\r\n" + b"y" * 300_000
    reader = FailingReader(data, 100_000, OSError(5, "Input/output error"))
    with pytest.raises(DeliveryError) as caught:
        deliver_maildir(maildir, reader)  # type: ignore[arg-type]
    assert reader.position == 100_000  # really failed mid-way
    assert caught.value.temporary and caught.value.dsn == "4.3.0"
    assert "error reading message: Input/output error" in caught.value.text
    assert entries(maildir / "tmp") == [] and entries(maildir / "new") == []


def test_other_exception_mid_message_propagates_and_cleans_up(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    reader = FailingReader(b"a" * 200_000, 70_000, RuntimeError("spool vanished"))
    with pytest.raises(RuntimeError, match="spool vanished"):
        deliver_maildir(maildir, reader)  # type: ignore[arg-type]
    assert entries(maildir / "tmp") == [] and entries(maildir / "new") == []


def test_new_not_a_directory_fails_temporarily_and_cleans_tmp(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new").write_text("not a directory")
    with pytest.raises(DeliveryError) as caught:
        deliver_maildir(maildir, MESSAGE)
    assert caught.value.temporary
    assert entries(maildir / "tmp") == []


@pytest.mark.skipif(IS_ROOT, reason="root ignores directory permissions")
def test_read_only_new_fails_temporarily_and_cleans_tmp(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    deliver_maildir(maildir, MESSAGE)
    before = entries(maildir / "new")
    (maildir / "new").chmod(0o500)
    try:
        with pytest.raises(DeliveryError) as caught:
            deliver_maildir(maildir, MESSAGE)
    finally:
        (maildir / "new").chmod(0o700)
    assert caught.value.temporary and caught.value.dsn == "4.3.0"
    assert "Permission denied" in caught.value.text
    assert entries(maildir / "tmp") == []
    assert entries(maildir / "new") == before


@pytest.mark.skipif(not IS_ROOT, reason="changing owners needs root")
def test_owner_of_created_maildir_and_message(tmp_path: Path) -> None:
    maildir = tmp_path / "vmail" / "example.com" / "alice"
    path = deliver_maildir(maildir, MESSAGE, uid=65534, gid=65534)
    for item in (maildir.parent, maildir, maildir / "new", maildir / "tmp", path):
        info = item.stat()
        assert (info.st_uid, info.st_gid) == (65534, 65534), item


class GatedFsync:
    """A directory fsync that waits for a gate (the first call) and can fail once."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.gate = threading.Event()
        self.calls: list[str] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self, directory: str) -> None:
        with self.lock:
            self.calls.append(directory)
            first = len(self.calls) == 1
        if first:
            self.gate.wait(30)
            if self.fail_first:
                raise OSError(5, "Input/output error")


def wait_for_tickets(sync: DirectorySync, directory: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while (state := sync._states.get(directory)) is None or state.requested < count:
        assert time.monotonic() < deadline, "threads did not arrive"
        time.sleep(0.01)


def test_concurrent_deliveries_share_the_fsync_of_new(tmp_path: Path) -> None:
    fsync = GatedFsync()
    sync = DirectorySync(fsync)
    maildir = tmp_path / "Maildir"
    new = str(maildir / "new")
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(deliver_maildir, maildir, MESSAGE, directory_sync=sync)
        wait_for_tickets(sync, new, 1)  # the first delivery's fsync runs (held at the gate)
        rest = [
            pool.submit(deliver_maildir, maildir, MESSAGE, directory_sync=sync) for _ in range(5)
        ]
        wait_for_tickets(sync, new, 6)  # the other five have linked and wait
        assert not any(future.done() for future in rest)
        fsync.gate.set()
        paths = [first.result(), *(future.result() for future in rest)]
    assert sorted(p.name for p in (maildir / "new").iterdir()) == sorted(p.name for p in paths)
    assert fsync.calls == [new, new]  # one for the first, one shared by the other five
    assert sync.fsyncs == 2
    assert sync._states == {}  # nothing kept for an idle directory


def test_a_failed_shared_fsync_fails_only_its_runner_the_others_fsync_again(
    tmp_path: Path,
) -> None:
    fsync = GatedFsync(fail_first=True)
    sync = DirectorySync(fsync)
    directory = str(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        runner = pool.submit(sync.sync, directory)
        wait_for_tickets(sync, directory, 1)
        waiters = [pool.submit(sync.sync, directory) for _ in range(3)]
        wait_for_tickets(sync, directory, 4)
        fsync.gate.set()
        with pytest.raises(OSError):
            runner.result()
        for waiter in waiters:
            waiter.result()  # covered by a later, successful fsync
    assert len(fsync.calls) == 2


def test_a_maildir_removed_between_deliveries_is_created_again(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    deliver_maildir(maildir, MESSAGE)
    shutil.rmtree(maildir)  # the process remembers it as complete
    path = deliver_maildir(maildir, MESSAGE)
    assert path.parent == maildir / "new"
    assert sorted(p.name for p in maildir.iterdir()) == ["cur", "new", "tmp"]
    assert path.read_bytes().endswith(b"line two\n")


def test_names_sort_in_delivery_order_across_a_tenth_of_a_second() -> None:
    earlier = unique_name("mx", now=1700000000.0625)  # exact in binary floating point
    later = unique_name("mx", now=1700000000.125)
    assert ".M062500P" in earlier
    assert sorted([later, earlier]) == [earlier, later]


class CountingFsync:
    """A directory fsync that records its calls and may fail for some directories."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.calls: list[str] = []
        self.failing = failing

    def __call__(self, directory: str) -> None:
        self.calls.append(directory)
        if directory in self.failing:
            raise OSError(5, "Input/output error")
        os.close(os.open(directory, os.O_RDONLY))


def test_a_batch_writes_what_single_deliveries_write_with_one_fsync_per_new(
    tmp_path: Path,
) -> None:
    alice, bob = tmp_path / "alice" / "Maildir", tmp_path / "bob" / "Maildir"
    fsync = CountingFsync()
    sync = DirectorySync(fsync)
    big = b"Subject: big\r\n\r\n" + b"0123456789\r\n" * 20_000  # several writes
    prepend = delivery_headers("bob@example.org", "alice@example.com")
    with (tmp_path / "big.eml").open("wb") as handle:
        handle.write(big)
    with (tmp_path / "big.eml").open("rb") as from_file:
        results = deliver_maildir_batch(
            [
                MaildirDelivery(alice, MESSAGE, prepend=prepend, hostname="mx.example.com"),
                MaildirDelivery(bob, MESSAGE, hostname="mx.example.com"),
                MaildirDelivery(alice, from_file, hostname="mx.example.com"),  # type: ignore[arg-type]
            ],
            directory_sync=sync,
        )
    single = deliver_maildir(tmp_path / "single", MESSAGE, prepend=prepend, hostname="h")
    paths = [result for result in results if isinstance(result, Path)]
    assert len(paths) == 3
    assert paths[0].read_bytes() == single.read_bytes()
    assert paths[2].read_bytes() == big.replace(b"\r\n", b"\n")
    for path in paths:
        match = NAME.fullmatch(path.name)
        assert match is not None and int(match.group(6)) == path.stat().st_size
    assert [p.parent for p in paths] == [alice / "new", bob / "new", alice / "new"]
    assert entries(alice / "tmp") == [] and entries(bob / "tmp") == []
    assert sorted(fsync.calls) == sorted([str(alice / "new"), str(bob / "new")])


def test_a_failing_message_of_a_batch_fails_alone_and_leaves_nothing(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    reader = FailingReader(b"a" * 200_000, 70_000, OSError(5, "Input/output error"))
    results = deliver_maildir_batch(
        [
            MaildirDelivery(maildir, MESSAGE),
            MaildirDelivery(maildir, reader),  # type: ignore[arg-type]
            MaildirDelivery(maildir, b"z\r\n" * 1000, size_limit=100),
            MaildirDelivery(maildir, MESSAGE),
        ]
    )
    assert isinstance(results[0], Path) and isinstance(results[3], Path)
    assert isinstance(results[1], DeliveryError) and results[1].temporary
    assert "error reading message" in results[1].text
    assert isinstance(results[2], QuotaExceeded)
    assert entries(maildir / "tmp") == []
    assert entries(maildir / "new") == sorted([results[0].name, results[3].name])


def test_a_failed_fsync_of_new_fails_the_messages_renamed_into_it(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    sync = DirectorySync(CountingFsync(failing=(str(bad / "new"),)))
    results = deliver_maildir_batch(
        [
            MaildirDelivery(bad, MESSAGE),
            MaildirDelivery(good, MESSAGE),
            MaildirDelivery(bad, MESSAGE),
        ],
        directory_sync=sync,
    )
    assert isinstance(results[1], Path)
    for failed in (results[0], results[2]):
        assert isinstance(failed, DeliveryError) and failed.temporary
        assert "Input/output error" in failed.text
    assert entries(bad / "new") == [] and entries(bad / "tmp") == []
    assert entries(good / "new") == [results[1].name]


def test_a_batch_delivers_quota_messages_one_after_the_other(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    size = len(MESSAGE.replace(b"\r\n", b"\n"))
    results = deliver_maildir_batch(
        [MaildirDelivery(maildir, MESSAGE, quota_bytes=size * 2) for _ in range(3)]
    )
    assert isinstance(results[0], Path) and isinstance(results[1], Path)
    assert isinstance(results[2], QuotaExceeded)  # the first two filled the quota
    assert len(entries(maildir / "new")) == 2


def test_a_batch_creates_a_maildir_removed_since_the_last_delivery(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    deliver_maildir(maildir, MESSAGE)
    shutil.rmtree(maildir)  # the process remembers it as complete
    fsync = CountingFsync()
    results = deliver_maildir_batch(
        [MaildirDelivery(maildir, MESSAGE)] * 2, directory_sync=DirectorySync(fsync)
    )
    assert all(isinstance(result, Path) for result in results)
    assert len(entries(maildir / "new")) == 2
    # the first, delivered alone to create the Maildir again, used the batch's fsync too
    assert fsync.calls == [str(maildir / "new")] * 2


def test_a_batch_adds_each_message_to_an_existing_maildirsize(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    deliver_maildir(maildir, MESSAGE)
    (maildir / "maildirsize").write_text("1000000S\n0 0\n")
    results = deliver_maildir_batch(
        [MaildirDelivery(maildir, MESSAGE), MaildirDelivery(maildir, b"Subject: x\r\n\r\nyz\r\n")]
    )
    sizes = [path.stat().st_size for path in results if isinstance(path, Path)]
    assert len(sizes) == 2
    lines = (maildir / "maildirsize").read_text().splitlines()
    assert lines == ["1000000S", "0 0", f"{sizes[0]} 1", f"{sizes[1]} 1"]


@pytest.mark.skipif(not IS_ROOT, reason="changing owners needs root")
def test_a_batch_gives_each_maildir_and_message_its_owner(tmp_path: Path) -> None:
    alice, bob = tmp_path / "vmail" / "alice", tmp_path / "vmail" / "bob"
    results = deliver_maildir_batch(
        [
            MaildirDelivery(alice, MESSAGE, uid=65534, gid=65534),
            MaildirDelivery(bob, MESSAGE, uid=65533, gid=65533),
            MaildirDelivery(alice, MESSAGE, uid=65534, gid=65534),
        ]
    )
    paths = [result for result in results if isinstance(result, Path)]
    assert len(paths) == 3
    for owner, maildir, messages in ((65534, alice, paths[::2]), (65533, bob, paths[1:2])):
        for item in (maildir, maildir / "new", maildir / "tmp", maildir / "cur", *messages):
            info = item.stat()
            assert (info.st_uid, info.st_gid) == (owner, owner), item


@pytest.mark.parametrize(
    "message",
    [
        b"a\r\nb\r\n",
        b"lone\rCR\r\r\nand CR CR LF\r\n",
        b"ends with CR\r",
        b"\r\n\r\n\r\n",
        b"no line end",
        b"x" * (64 * 1024 - 3) + b"\r\n\r\ny\r\n",  # across the chunked reader's boundary
    ],
)
def test_a_message_in_memory_is_written_as_the_same_message_read_from_a_file(
    tmp_path: Path, message: bytes
) -> None:
    prepend = delivery_headers("bob@example.org", "alice@example.com")
    source = tmp_path / "queued"
    source.write_bytes(message)
    from_memory = deliver_maildir(tmp_path / "memory", message, prepend=prepend, hostname="h")
    with source.open("rb") as handle:
        from_file = deliver_maildir(tmp_path / "file", handle, prepend=prepend, hostname="h")

    expected = (prepend + message).replace(b"\r\n", b"\n")
    assert from_memory.read_bytes() == from_file.read_bytes() == expected
    # the S= and W= sizes in the names agree too
    assert from_memory.name.split(",", 1)[1] == from_file.name.split(",", 1)[1]


def test_a_batch_fsyncs_every_file_before_its_first_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each message file is fsynced before it is renamed into new/ (the Maildir rule), and
    the batch fsyncs them all before the first rename: on ext4 without a journal the fsync
    of a file new in tmp/ writes tmp/ too, so renames in between would make each fsync
    write tmp/ again."""
    maildir = tmp_path / "Maildir"
    calls: list[tuple[str, object]] = []
    names: dict[int, str] = {}
    real_open, real_fsync, real_rename = os.open, os.fsync, os.rename

    def recording_open(path: str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        if str(path).startswith(str(maildir / "tmp")):
            names[fd] = str(path)
        return fd

    def recording_fsync(fd: int) -> None:
        if fd in names:  # a message file (not a directory the Maildir's creation syncs)
            calls.append(("fsync", names[fd]))
        real_fsync(fd)

    def recording_rename(source: str, target: str) -> None:
        calls.append(("rename", source))
        real_rename(source, target)

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "rename", recording_rename)
    results = deliver_maildir_batch(
        [MaildirDelivery(maildir, MESSAGE, hostname="h") for _ in range(4)],
        directory_sync=DirectorySync(CountingFsync()),
    )
    assert all(isinstance(result, Path) for result in results)
    kinds = [kind for kind, _ in calls]
    assert kinds == ["fsync"] * 4 + ["rename"] * 4
    fsynced = [name for kind, name in calls if kind == "fsync"]
    renamed = [name for kind, name in calls if kind == "rename"]
    assert fsynced == renamed and len(set(renamed)) == 4
    assert entries(maildir / "tmp") == [] and len(entries(maildir / "new")) == 4


def test_a_failed_file_fsync_in_a_batch_fails_that_message_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    maildir = tmp_path / "Maildir"
    real_fsync = os.fsync
    files: list[int] = []

    def second_fails(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a message file, not a directory
            files.append(fd)
            if len(files) == 2:
                raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", second_fails)
    results = deliver_maildir_batch(
        [MaildirDelivery(maildir, MESSAGE) for _ in range(3)],
        directory_sync=DirectorySync(CountingFsync()),
    )
    assert isinstance(results[0], Path) and isinstance(results[2], Path)
    assert isinstance(results[1], DeliveryError) and results[1].temporary
    assert entries(maildir / "tmp") == []
    assert entries(maildir / "new") == sorted([results[0].name, results[2].name])

"""Start-up recovery: every state a crash can leave on disk is resolved without losing a
committed message and without delivering an uncommitted one (docs/spool.md)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from roost.queue import (
    Envelope,
    QueueDirectory,
    QueueIdGenerator,
    QueueName,
    Recipient,
    RecipientState,
    RecoveryReport,
    Spool,
    WithProtocol,
)
from roost.queue.directory import TRAILER_LENGTH

SRC = Path(__file__).resolve().parents[2] / "src"
MESSAGE = b"Subject: recovery\r\n\r\nbody\r\n"


def envelope() -> Envelope:
    return Envelope("a@example.org", (Recipient("b@example.net"),), 1e9, WithProtocol.ESMTP)


def files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@pytest.fixture
def queue(tmp_path: Path) -> Path:
    path = tmp_path / "queue"
    QueueDirectory(path).create()
    return path


def commit(queue: Path, where: QueueName = QueueName.INCOMING) -> str:
    """Commit a message through the synchronous API; return its queue ID."""
    queue_id = QueueIdGenerator()()
    with QueueDirectory(queue) as directory:
        stored = Envelope(
            "a@example.org",
            (Recipient("b@example.net"),),
            1e9,
            WithProtocol.ESMTP,
            queue_id=queue_id,
            size=len(MESSAGE),
        )
        directory.commit(where, queue_id, MESSAGE, stored)
    return queue_id


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


async def recover(queue: Path, orphan_age: float = 0.0) -> RecoveryReport:
    async with Spool(queue) as spool:
        return await spool.recover(orphan_age=orphan_age)


async def test_a_clean_queue_is_left_alone(queue: Path) -> None:
    kept = [
        commit(queue, where)
        for where in (QueueName.INCOMING, QueueName.DEFERRED, QueueName.HOLD, QueueName.MAILDROP)
    ]
    before = files(queue)
    assert await recover(queue) == RecoveryReport()
    assert files(queue) == before and len(kept) == 4


async def test_temp_files_are_deleted(queue: Path) -> None:
    queue_id = commit(queue)
    (queue / "incoming" / "4Wk3nB0h2Fz1x.env.tmp").write_text('{"v": 1, "queue_')
    (queue / "deferred" / f"{queue_id}.env.tmp").write_text("{}")
    report = await recover(queue)
    assert sorted(report.removed) == [
        "deferred/" + queue_id + ".env.tmp",
        "incoming/4Wk3nB0h2Fz1x.env.tmp",
    ]
    assert files(queue) == [f"incoming/{queue_id}"]


def update(queue: Path, queue_id: str, where: QueueName, state: RecipientState) -> Envelope:
    """Store a new envelope (``ID.env``) with the recipient in ``state``; return it."""
    with QueueDirectory(queue) as directory:
        loaded = directory.load_envelope(queue_id, where)
        changed = loaded.replace_recipient(0, Recipient("b@example.net", state=state))
        directory.update_envelope(queue_id, changed, where)
    return changed


def load(queue: Path, queue_id: str, where: QueueName) -> Envelope:
    with QueueDirectory(queue) as directory:
        return directory.load_envelope(queue_id, where)


async def test_a_queue_file_cut_short_by_a_crash_is_removed(queue: Path) -> None:
    # Killed while writing: the file ends anywhere before its trailer is complete.
    queue_id = commit(queue)
    data = (queue / "incoming" / queue_id).read_bytes()
    for cut in (0, len(MESSAGE) // 2, len(data) - TRAILER_LENGTH, len(data) - 1):
        (queue / "incoming" / queue_id).write_bytes(data[:cut])
        async with Spool(queue) as spool:
            assert await spool.scan(QueueName.INCOMING) == []  # never delivered
            report = await spool.recover()
        assert report.removed == (f"incoming/{queue_id}",)
        assert files(queue) == []


async def test_a_torn_queue_file_whose_trailer_survived_is_removed(queue: Path) -> None:
    # A crash before fdatasync returned may keep the trailer's page but not an earlier
    # one (zeros instead of content): the CRC-32 tells it from a committed file.
    queue_id = commit(queue)
    path = queue / "incoming" / queue_id
    data = bytearray(path.read_bytes())
    data[3:9] = bytes(6)
    path.write_bytes(bytes(data))
    report = await recover(queue)
    assert report.removed == (f"incoming/{queue_id}",)
    assert files(queue) == []


async def test_a_queue_file_without_trailer_outside_incoming_goes_to_corrupt(
    queue: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Only committed files are renamed into deferred/: a bad one there is not garbage.
    queue_id = commit(queue, QueueName.DEFERRED)
    path = queue / "deferred" / queue_id
    path.write_bytes(path.read_bytes()[:-1])
    with caplog.at_level(logging.WARNING, logger="roost.queue"):
        report = await recover(queue)
    assert report.corrupt == (queue_id,)
    assert files(queue) == [f"corrupt/{queue_id}"]
    assert "no valid queue file trailer" in caplog.text


async def test_messages_of_the_two_file_format_are_upgraded(queue: Path) -> None:
    queue_id = QueueIdGenerator()()
    stored = Envelope(
        "a@example.org",
        (Recipient("b@example.net"),),
        1e9,
        WithProtocol.ESMTP,
        queue_id=queue_id,
        size=len(MESSAGE),
    )
    (queue / "deferred" / queue_id).write_bytes(MESSAGE)  # as roost 0.x stored it
    (queue / "deferred" / f"{queue_id}.env").write_text(stored.to_json() + "\n")
    report = await recover(queue)
    assert report == RecoveryReport()
    assert load(queue, queue_id, QueueName.DEFERRED) == stored
    with QueueDirectory(queue) as directory:
        assert directory.scan(QueueName.DEFERRED) == [queue_id]
        with directory.open_content(queue_id, QueueName.DEFERRED) as content:
            assert content.read() == MESSAGE


async def test_content_without_envelope_is_garbage_never_a_message(queue: Path) -> None:
    orphan = queue / "incoming" / "4Wk3nB0h2Fz1x"
    orphan.write_bytes(MESSAGE)
    async with Spool(queue) as spool:
        assert await spool.scan(QueueName.INCOMING) == []  # never delivered
        report = await spool.recover()
    assert report.removed == ("incoming/4Wk3nB0h2Fz1x",)
    assert files(queue) == []


async def test_orphans_younger_than_orphan_age_are_kept(queue: Path) -> None:
    young = queue / "maildrop" / "4Wk3nB0h2Fz1x"
    old = queue / "maildrop" / "4Wk3nB0h2Fz1y"
    young.write_bytes(b"x")
    old.write_bytes(b"x")
    age(old, 7200)
    report = await recover(queue, orphan_age=3600)
    assert report.removed == ("maildrop/4Wk3nB0h2Fz1y",)
    assert files(queue) == ["maildrop/4Wk3nB0h2Fz1x"]


async def test_a_file_locked_by_a_live_writer_is_kept(queue: Path) -> None:
    path = queue / "maildrop" / "4Wk3nB0h2Fz1x"
    with path.open("wb") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # what another process's MessageWriter holds
        assert await recover(queue) == RecoveryReport()
    assert files(queue) == ["maildrop/4Wk3nB0h2Fz1x"]


async def test_a_message_being_written_by_this_process_is_kept(queue: Path) -> None:
    async with Spool(queue, buffer_size=16) as spool:
        async with spool.new_message() as writer:
            await writer.write(MESSAGE)  # flushed: the locked file exists
            assert (queue / "incoming" / writer.queue_id).exists()
            assert (await spool.recover()).removed == ()
            queue_id = await writer.commit(envelope())
        assert await spool.scan(QueueName.INCOMING) == [queue_id]


async def test_an_envelope_left_by_an_interrupted_removal_is_deleted(queue: Path) -> None:
    # remove: the queue file is unlinked first (the removal's commit), then ID.env.
    queue_id = commit(queue, QueueName.DEFERRED)
    update(queue, queue_id, QueueName.DEFERRED, RecipientState.DEFERRED)
    (queue / "deferred" / queue_id).unlink()
    report = await recover(queue)
    assert report.removed == (f"deferred/{queue_id}.env",)
    assert report.corrupt == ()
    assert files(queue) == []


async def test_active_messages_return_to_incoming_with_their_state(queue: Path) -> None:
    first = commit(queue, QueueName.ACTIVE)
    second = commit(queue, QueueName.ACTIVE)
    async with Spool(queue) as spool:
        loaded = await spool.load_envelope(first, QueueName.ACTIVE)
        done = loaded.replace_recipient(
            0, Recipient("b@example.net", state=RecipientState.DELIVERED)
        )
        await spool.update_envelope(first, done, QueueName.ACTIVE)
        report = await spool.recover()
        assert report.requeued == (first, second)
        assert await spool.scan(QueueName.ACTIVE) == []
        assert await spool.scan(QueueName.INCOMING) == [first, second]
        assert await spool.load_envelope(first, QueueName.INCOMING) == done  # not redelivered
        with await spool.open_content(second, QueueName.INCOMING) as content:
            assert content.read() == MESSAGE


async def test_move_interrupted_after_placing_the_envelope(queue: Path) -> None:
    # dst/ID.env is in place (a link to src/ID.env); the queue file was not renamed yet.
    queue_id = commit(queue)
    changed = update(queue, queue_id, QueueName.INCOMING, RecipientState.DEFERRED)
    os.link(queue / "incoming" / f"{queue_id}.env", queue / "active" / f"{queue_id}.env")
    report = await recover(queue)
    assert report.removed == (f"active/{queue_id}.env",)
    assert files(queue) == [f"incoming/{queue_id}", f"incoming/{queue_id}.env"]
    assert load(queue, queue_id, QueueName.INCOMING) == changed


async def test_move_interrupted_before_the_old_envelope_was_unlinked(queue: Path) -> None:
    # The queue file and its new envelope are in deferred/; the stale one in active/ stays.
    queue_id = commit(queue, QueueName.ACTIVE)
    update(queue, queue_id, QueueName.ACTIVE, RecipientState.PENDING)
    os.link(queue / "active" / f"{queue_id}.env", queue / "deferred" / f"{queue_id}.env")
    os.rename(queue / "active" / queue_id, queue / "deferred" / queue_id)
    report = await recover(queue)
    assert report.removed == (f"active/{queue_id}.env",)
    assert report.requeued == ()
    assert files(queue) == [f"deferred/{queue_id}", f"deferred/{queue_id}.env"]
    async with Spool(queue) as spool:
        with await spool.open_content(queue_id, QueueName.DEFERRED) as content:
            assert content.read() == MESSAGE


async def test_a_moved_queue_file_gets_back_the_envelope_it_left_behind(queue: Path) -> None:
    # The queue file's rename reached the disk, the envelope's placement did not: the
    # envelope left in the source queue is the message's and goes with it.
    queue_id = commit(queue, QueueName.ACTIVE)
    changed = update(queue, queue_id, QueueName.ACTIVE, RecipientState.DELIVERED)
    os.rename(queue / "active" / queue_id, queue / "deferred" / queue_id)
    report = await recover(queue)
    assert report.removed == ()
    assert files(queue) == [f"deferred/{queue_id}", f"deferred/{queue_id}.env"]
    assert load(queue, queue_id, QueueName.DEFERRED) == changed  # not delivered again


async def test_a_stale_envelope_in_the_target_queue_never_comes_into_force(queue: Path) -> None:
    queue_id = commit(queue)
    original = load(queue, queue_id, QueueName.INCOMING)
    stale = original.replace_recipient(
        0, Recipient("b@example.net", state=RecipientState.DELIVERED)
    )
    (queue / "active" / f"{queue_id}.env").write_text(stale.to_json() + "\n")
    async with Spool(queue) as spool:
        await spool.move(queue_id, QueueName.INCOMING, QueueName.ACTIVE)
        assert await spool.load_envelope(queue_id, QueueName.ACTIVE) == original
        with await spool.open_content(queue_id, QueueName.ACTIVE) as content:
            assert content.read() == MESSAGE
    assert files(queue) == [f"active/{queue_id}"]


async def test_update_interrupted_before_its_rename_keeps_the_old_envelope(queue: Path) -> None:
    queue_id = commit(queue, QueueName.DEFERRED)
    with QueueDirectory(queue) as directory:
        original = directory.read_envelope_data(QueueName.DEFERRED, queue_id)
    assert original is not None
    (queue / "deferred" / f"{queue_id}.env.tmp").write_bytes(original[:25])
    await recover(queue)
    with QueueDirectory(queue) as directory:
        assert directory.read_envelope_data(QueueName.DEFERRED, queue_id) == original
    assert files(queue) == [f"deferred/{queue_id}"]


_KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from roost.queue import Spool

    async def main():
        async with Spool(sys.argv[1], buffer_size=4096) as spool:
            writer = spool.new_message()
            for _ in range(100):
                await writer.write(b"x" * 1000)
            print(writer.queue_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # the daemon dies mid-DATA

    asyncio.run(main())
    """
)


async def test_a_writer_killed_mid_message_leaves_only_garbage(queue: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(queue)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    queue_id = child.stdout.strip()
    assert (queue / "incoming" / queue_id).stat().st_size > 0
    async with Spool(queue) as spool:
        assert await spool.scan(QueueName.INCOMING) == []
        report = await spool.recover()
    assert report.removed == (f"incoming/{queue_id}",)
    assert files(queue) == []


async def test_recovered_envelopes_are_still_valid_json(queue: Path) -> None:
    queue_id = commit(queue, QueueName.ACTIVE)
    await recover(queue)
    with QueueDirectory(queue) as directory:
        data = directory.read_envelope_data(QueueName.INCOMING, queue_id)
    assert data is not None
    document = json.loads(data)
    assert document["v"] == 1 and document["queue_id"] == queue_id


def test_a_file_committed_after_recovery_found_it_unfinished_is_kept(queue: Path) -> None:
    # Recovery deletes an unfinished file only under its lock, after reading it again:
    # a writer in another process may have finished it (and let go of the lock) since.
    queue_id = commit(queue)
    path = queue / "incoming" / queue_id
    age(path, 10)
    removed = QueueDirectory._remove_abandoned(str(path), time.time(), check=QueueName.INCOMING)
    assert not removed and path.exists()
    path.write_bytes(path.read_bytes()[:-1])  # unfinished after all
    age(path, 10)
    removed = QueueDirectory._remove_abandoned(str(path), time.time(), check=QueueName.INCOMING)
    assert removed and not path.exists()

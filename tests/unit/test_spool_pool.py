"""The pool of recycled queue files (``free/``, docs/spool.md "Recycled queue files"): the
queue manager's removals keep the emptied queue files, spare queue files are taken from
them, two processes racing for one file, the bound, and recovery after a crash."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
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
    Spool,
    WithProtocol,
)
from roost.queue.directory import POOL_DIRECTORY
from roost.queue.errors import SpoolErrorKind

SRC = Path(__file__).resolve().parents[2] / "src"
MESSAGE = b"Received: by mx.example (roost)\r\nSubject: hi\r\n\r\nbody\r\n"


def make_envelope(**changes: object) -> Envelope:
    envelope = Envelope(
        envelope_sender="a@example.org",
        recipients=(Recipient("b@example.net"),),
        arrival_time=1_738_404_000.25,
        protocol=WithProtocol.ESMTP,
    )
    return dataclasses.replace(envelope, **changes)  # type: ignore[arg-type]


def pool(queue: Path) -> dict[str, os.stat_result]:
    """The pool's files: name -> lstat."""
    directory = queue / POOL_DIRECTORY
    return {p.name: p.lstat() for p in directory.iterdir()}


def queue_files(queue: Path) -> list[str]:
    """Every file in the queues (the pool left out), as ``queue/name``."""
    return sorted(f"{q.value}/{p.name}" for q in QueueName for p in (queue / q.value).iterdir())


def commit(directory: QueueDirectory, queue: QueueName, content: bytes = MESSAGE) -> str:
    queue_id = QueueIdGenerator()()
    envelope = make_envelope(queue_id=queue_id, size=len(content))
    directory.commit(queue, queue_id, content, envelope)
    return queue_id


@pytest.fixture
def queue(tmp_path: Path) -> Path:
    path = tmp_path / "q"
    with QueueDirectory(path) as directory:
        directory.create()
    return path


def test_a_removal_without_fsync_recycles_the_queue_file_emptied(queue: Path) -> None:
    with QueueDirectory(queue) as directory:
        kept = commit(directory, QueueName.INCOMING)
        gone = commit(directory, QueueName.DEFERRED)
        directory.update_envelope(gone, make_envelope(queue_id=gone), QueueName.DEFERRED)
        inode = (queue / "deferred" / gone).stat().st_ino
        directory.remove(gone, QueueName.DEFERRED, durable=False)
        # the queue file is in the pool, empty, the same inode; its ID.env is gone
        assert {name: info.st_size for name, info in pool(queue).items()} == {gone: 0}
        assert pool(queue)[gone].st_ino == inode
        assert queue_files(queue) == [f"incoming/{kept}"]
        # the pool is no queue: scans and readers do not see it
        assert directory.scan(QueueName.DEFERRED) == []
        assert directory.scan(QueueName.INCOMING) == [kept]
        assert not directory.has_message(QueueName.DEFERRED, gone)
        # a durable removal (roost queue delete) unlinks, as before
        directory.remove(kept, QueueName.INCOMING)
        assert list(pool(queue)) == [gone]
        assert queue_files(queue) == []


def test_the_pool_is_bounded_beyond_it_removals_unlink(queue: Path) -> None:
    with QueueDirectory(queue, pool_limit=3) as directory:
        ids = [commit(directory, QueueName.INCOMING) for _ in range(5)]
        for queue_id in ids:
            directory.remove(queue_id, QueueName.INCOMING, durable=False)
        assert sorted(pool(queue)) == ids[:3]
        assert all(info.st_size == 0 for info in pool(queue).values())
        assert queue_files(queue) == []
    with QueueDirectory(queue, pool_limit=0) as directory:  # no pool at all
        queue_id = commit(directory, QueueName.INCOMING)
        directory.remove(queue_id, QueueName.INCOMING, durable=False)
        assert directory.take_pooled(QueueName.INCOMING, QueueIdGenerator()()) is None
    assert sorted(pool(queue)) == ids[:3]


def test_a_file_being_read_is_unlinked_not_recycled(queue: Path) -> None:
    with QueueDirectory(queue) as directory:
        queue_id = commit(directory, QueueName.INCOMING)
        with directory.open_content(queue_id, QueueName.INCOMING) as content:
            directory.remove(queue_id, QueueName.INCOMING, durable=False)
            assert pool(queue) == {}  # the reader's shared lock kept it out of the pool
            assert content.read() == MESSAGE  # and its content intact
        assert queue_files(queue) == []


def test_remove_many_does_what_remove_without_fsync_does_for_each_message(queue: Path) -> None:
    """The queue manager's batched removal: per message the outcome of
    ``remove(durable=False)`` (recycled while the pool has room, else unlinked; ``ID.env``
    removed unless the caller says there is none; a missing message is NOT_FOUND and the
    others go on); a malformed queue ID removes nothing."""
    with QueueDirectory(queue, pool_limit=2) as directory:
        plain = commit(directory, QueueName.INCOMING)
        updated = commit(directory, QueueName.DEFERRED)
        directory.update_envelope(updated, make_envelope(queue_id=updated), QueueName.DEFERRED)
        beyond = commit(directory, QueueName.INCOMING)  # the pool is full by then
        told = commit(directory, QueueName.INCOMING)
        (queue / "incoming" / f"{told}.env").write_bytes(b"{}")  # said not to exist
        missing = QueueIdGenerator()()
        with pytest.raises(ValueError):
            directory.remove_many([(plain, QueueName.INCOMING), ("../x", QueueName.INCOMING)])
        assert len(queue_files(queue)) == 6 and pool(queue) == {}  # nothing removed
        errors = directory.remove_many(
            [
                (plain, QueueName.INCOMING),
                (missing, QueueName.INCOMING),
                (updated, QueueName.DEFERRED),
                (beyond, QueueName.INCOMING),
                (told, QueueName.INCOMING),
            ],
            no_envelope_file={told},
        )
        assert errors[0] is None and errors[2:] == [None, None, None]
        assert errors[1] is not None and errors[1].kind is SpoolErrorKind.NOT_FOUND
        assert {name: info.st_size for name, info in pool(queue).items()} == {
            plain: 0,
            updated: 0,
        }
        assert queue_files(queue) == [f"incoming/{told}.env"]  # not looked for, as told


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_remove_many_recycles_through_the_descriptors_given_and_closes_them(
    queue: Path,
) -> None:
    """``open_files`` (the queue manager's descriptors from read_new_message): the same
    outcome as without them (recycled while the pool has room, else unlinked; a missing
    message NOT_FOUND), the file recycled being the one open, and every descriptor closed,
    also when a malformed queue ID makes the call refuse everything."""
    with QueueDirectory(queue, pool_limit=1) as directory:
        ids = [commit(directory, QueueName.INCOMING) for _ in range(3)]
        missing = QueueIdGenerator()()
        opened = {}
        for queue_id in ids:
            found = directory.read_new_message(QueueName.INCOMING, queue_id, 1 << 20)
            assert found is not None
            opened[queue_id] = found[2]
        inodes = {queue_id: os.fstat(fd).st_ino for queue_id, fd in opened.items()}
        with pytest.raises(ValueError):
            directory.remove_many([("../x", QueueName.INCOMING)], open_files=dict(opened))
        assert not any(is_open(fd) for fd in opened.values())
        assert len(queue_files(queue)) == 3  # nothing removed
        opened = {}
        for queue_id in ids:
            found = directory.read_new_message(QueueName.INCOMING, queue_id, 1 << 20)
            assert found is not None
            opened[queue_id] = found[2]
        stray = os.open(queue / "incoming" / ids[0], os.O_RDONLY)  # for a missing message
        errors = directory.remove_many(
            [(queue_id, QueueName.INCOMING) for queue_id in [*ids, missing]],
            no_envelope_file=set(ids),
            open_files={**opened, missing: stray},
        )
        assert errors[:3] == [None, None, None]
        assert errors[3] is not None and errors[3].kind is SpoolErrorKind.NOT_FOUND
        assert not any(is_open(fd) for fd in [*opened.values(), stray])
        assert queue_files(queue) == []
        # the pool (room for one) got the first file, emptied; the others were unlinked
        assert {name: (info.st_ino, info.st_size) for name, info in pool(queue).items()} == {
            ids[0]: (inodes[ids[0]], 0)
        }


def test_take_renames_a_pooled_file_to_the_new_queue_id_locked(queue: Path) -> None:
    with QueueDirectory(queue) as directory:
        old = commit(directory, QueueName.INCOMING)
        directory.remove(old, QueueName.INCOMING, durable=False)
        inode = pool(queue)[old].st_ino
        new = QueueIdGenerator()()
        fd = directory.take_pooled(QueueName.INCOMING, new)
        assert fd is not None
        try:
            assert pool(queue) == {}
            assert (queue / "incoming" / new).stat().st_ino == inode
            # locked like a created queue file: recovery in another process keeps it
            probe = os.open(queue / "incoming" / new, os.O_RDONLY)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(probe)
            assert directory.recover().removed == ()
            assert directory.take_pooled(QueueName.INCOMING, QueueIdGenerator()()) is None
        finally:
            os.close(fd)


async def test_spare_queue_files_come_from_the_pool_and_go_back_to_it(queue: Path) -> None:
    with QueueDirectory(queue) as directory:
        done = [commit(directory, QueueName.INCOMING) for _ in range(6)]
    async with Spool(queue, spare_files=4) as spool:
        errors = await spool.remove_many([(queue_id, QueueName.INCOMING) for queue_id in done])
        assert errors == [None] * 6
        pooled = {info.st_ino for info in pool(queue).values()}
        assert len(pooled) == 6
        # a stream: the spares are taken from the pool (no new inode)
        ids = [await spool.enqueue(make_envelope(), MESSAGE + b"%d" % i) for i in range(2)]
        incoming = queue / "incoming"
        # the second message made a stream: four spares (one fill) from the pool, the
        # first of them for that message itself
        while len(pool(queue)) > 2 or len(os.listdir(incoming)) < 2 + 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the fill has ended (with its fsyncs)
        spares = sorted(set(os.listdir(incoming)) - set(ids))
        assert len(spares) == 3 and spares > ids and ids[0] > done[-1]  # IDs in order
        assert {(incoming / name).stat().st_ino for name in [ids[1], *spares]} <= pooled
        assert all((incoming / name).stat().st_size == 0 for name in spares)
        third = await spool.enqueue(make_envelope(), MESSAGE + b"2")
        assert third == spares[0]
        assert (incoming / third).stat().st_ino in pooled  # a recycled inode
        with await spool.open_content(third, QueueName.INCOMING) as content:
            assert content.read() == MESSAGE + b"2"
        assert (await spool.load_envelope(third, QueueName.INCOMING)).queue_id == third
        assert await spool.scan(QueueName.INCOMING) == [*ids, third]
        ids.append(third)
    # close() put the unused spares back into the pool: nothing was freed
    assert sorted(os.listdir(incoming)) == ids
    assert {info.st_ino for info in pool(queue).values()} | {
        (incoming / name).stat().st_ino for name in ids
    } >= pooled
    assert all(info.st_size == 0 for info in pool(queue).values())


_TAKER = textwrap.dedent(
    """
    import json, os, sys, time
    from roost.queue import QueueDirectory, QueueIdGenerator, QueueName

    queue, go = sys.argv[1], sys.argv[2]
    ids = QueueIdGenerator()
    taken = []
    with QueueDirectory(queue) as directory:
        while not os.path.exists(go):
            time.sleep(0.001)
        misses = 0
        while misses < 3:
            queue_id = ids()
            fd = directory.take_pooled(QueueName.INCOMING, queue_id)
            if fd is None:
                misses += 1
                time.sleep(0.02)  # past the pause between two listings
                continue
            taken.append([queue_id, os.fstat(fd).st_ino])  # fd kept open: locked
        print(json.dumps(taken), flush=True)
    """
)


def test_two_processes_racing_for_pooled_files_never_share_one(queue: Path) -> None:
    with QueueDirectory(queue) as directory:
        ids = [commit(directory, QueueName.INCOMING) for _ in range(60)]
        for queue_id in ids:
            directory.remove(queue_id, QueueName.INCOMING, durable=False)
    pooled = {info.st_ino for info in pool(queue).values()}
    assert len(pooled) == 60
    go = queue.parent / "go"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    takers = [
        subprocess.Popen(
            [sys.executable, "-c", _TAKER, str(queue), str(go)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    time.sleep(0.5)  # both started (imports done): take at the same moment
    go.touch()
    results = []
    for taker in takers:
        out, _ = taker.communicate(timeout=60)
        assert taker.returncode == 0
        results.append(json.loads(out))
    taken = [inode for result in results for _, inode in result]
    assert sorted(taken) == sorted(pooled)  # every file taken, none twice
    assert pool(queue) == {}
    for result in results:
        for queue_id, inode in result:
            assert (queue / "incoming" / queue_id).stat().st_ino == inode


def test_recovery_keeps_empty_pool_files_and_deletes_the_rest(queue: Path) -> None:
    free = queue / POOL_DIRECTORY
    with QueueDirectory(queue) as directory:
        # a recycled file whose truncation was lost (non-empty in the pool)
        whole = commit(directory, QueueName.INCOMING)
        os.rename(queue / "incoming" / whole, free / whole)
        # a recycled file whose rename was lost: empty, in deferred/, with its ID.env
        emptied = commit(directory, QueueName.DEFERRED)
        directory.update_envelope(emptied, make_envelope(queue_id=emptied), QueueName.DEFERRED)
        os.truncate(queue / "deferred" / emptied, 0)
        # the same in incoming/ (also what a spare looks like)
        spare = commit(directory, QueueName.INCOMING)
        os.truncate(queue / "incoming" / spare, 0)
        # a message that stays
        message = commit(directory, QueueName.DEFERRED)
    generator = QueueIdGenerator()
    empty = sorted(generator() for _ in range(3))
    for name in empty:
        (free / name).touch()
    (free / "README").write_text("not ours")
    locked = generator()
    (free / locked).write_bytes(b"being recycled")  # a live process holds it
    holder = os.open(free / locked, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with QueueDirectory(queue, pool_limit=2) as directory:
            report = directory.recover()
            assert report.corrupt == ()  # an empty queue file is no corrupt message
            assert sorted(report.removed) == sorted(
                [
                    f"{POOL_DIRECTORY}/{whole}",
                    f"{POOL_DIRECTORY}/{empty[2]}",  # beyond the limit
                    f"deferred/{emptied}",
                    f"deferred/{emptied}.env",
                    f"incoming/{spare}",
                ]
            )
            assert sorted(pool(queue)) == sorted([*empty[:2], locked, "README"])
            assert queue_files(queue) == [f"deferred/{message}"]
            assert directory.scan(QueueName.DEFERRED) == [message]
    finally:
        os.close(holder)


_RECYCLER = textwrap.dedent(
    """
    import asyncio, sys
    from roost.queue import Envelope, QueueName, Recipient, Spool, WithProtocol

    async def main():
        envelope = Envelope(envelope_sender="a@example.org",
                            recipients=(Recipient("b@example.net"),),
                            arrival_time=1738404000.25, protocol=WithProtocol.ESMTP)
        async with Spool(sys.argv[1], spare_files=4) as spool:
            n = 0
            while True:  # a stream: spares from the pool, removals into it
                ids = await asyncio.gather(*(
                    spool.enqueue(envelope, b"Subject: %d\\r\\n\\r\\nbody\\r\\n" % i)
                    for i in range(6)))
                print("kept", ids[0], flush=True)  # committed: must survive
                await spool.remove_many([(i, QueueName.INCOMING) for i in ids[1:]])
                n += 1

    asyncio.run(main())
    """
)


async def test_a_process_killed_while_recycling_loses_nothing_and_leaves_a_clean_pool(
    queue: Path,
) -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    child = subprocess.Popen(
        [sys.executable, "-c", _RECYCLER, str(queue)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    kept = []
    assert child.stdout is not None
    while len(kept) < 150:
        line = child.stdout.readline()
        assert line, "the child stopped"
        kept.append(line.split()[1])
    child.send_signal(signal.SIGKILL)  # somewhere in a take, a commit or a recycle
    rest, _ = child.communicate(timeout=60)
    kept += [line.split()[1] for line in rest.splitlines()]
    assert child.returncode == -signal.SIGKILL
    async with Spool(queue) as spool:
        await spool.recover()
        messages = await spool.scan(QueueName.INCOMING)
        assert set(kept) <= set(messages)  # every acknowledged message is there
        for queue_id in kept:
            envelope = await spool.load_envelope(queue_id, QueueName.INCOMING)
            assert envelope.queue_id == queue_id
    # no empty file in the queues; the pool holds only empty files with one name
    for name in queue_files(queue):
        assert (queue / name).stat().st_size > 0, name
    assert all(info.st_size == 0 and info.st_nlink == 1 for info in pool(queue).values())


async def test_a_message_without_a_spare_takes_a_pooled_file_too(queue: Path) -> None:
    with QueueDirectory(queue) as directory:
        old = commit(directory, QueueName.INCOMING)
        directory.remove(old, QueueName.INCOMING, durable=False)
    inode = pool(queue)[old].st_ino
    async with Spool(queue, spare_files=0) as spool:  # each message gets its file at DATA
        queue_id = await spool.enqueue(make_envelope(), MESSAGE)
        assert queue_id > old
        assert (queue / "incoming" / queue_id).stat().st_ino == inode
        assert pool(queue) == {}
        with await spool.open_content(queue_id, QueueName.INCOMING) as content:
            assert content.read() == MESSAGE
        second = await spool.enqueue(make_envelope(), MESSAGE)  # the pool is empty: a create
        assert (queue / "incoming" / second).stat().st_ino != inode
        assert await spool.scan(QueueName.INCOMING) == [queue_id, second]


async def test_a_closed_spool_refuses_a_removal_and_closes_its_descriptors(queue: Path) -> None:
    with QueueDirectory(queue) as directory:
        queue_id = commit(directory, QueueName.INCOMING)
    spool = Spool(queue)
    await spool.start()
    found = spool.directory.read_new_message(QueueName.INCOMING, queue_id, 1 << 20)
    assert found is not None
    await spool.close()
    with pytest.raises(RuntimeError):
        await spool.remove_many([(queue_id, QueueName.INCOMING)], open_files={queue_id: found[2]})
    assert not is_open(found[2])

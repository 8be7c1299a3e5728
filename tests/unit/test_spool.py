"""The spool: queue IDs, envelopes, durable accept with group commit, the reading side,
and the mapping of real OS errors to SpoolError."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import roost.queue.spool as spool_module
from roost.queue import (
    BodyType,
    Envelope,
    EnvelopeError,
    Notify,
    QueueDirectory,
    QueueIdGenerator,
    QueueName,
    Recipient,
    RecipientState,
    Ret,
    Spool,
    SpoolError,
    SpoolErrorKind,
    WithProtocol,
    is_queue_id,
    queue_id_time,
)
from roost.queue.directory import TRAILER_LENGTH

SRC = Path(__file__).resolve().parents[2] / "src"
MESSAGE = (
    b"Received: from client.example (client.example [192.0.2.1])\r\n"
    b"\tby mx.example (roost) with ESMTPS; Sat, 1 Feb 2025 10:00:00 +0000\r\n"
    b"From: <a@example.org>\r\nTo: <b@example.net>\r\nSubject: hi\r\n\r\n"
    b"line one\r\n.line with a dot\r\nno final newline"
)


def make_envelope(**changes: object) -> Envelope:
    envelope = Envelope(
        envelope_sender="a@example.org",
        recipients=(
            Recipient("b@example.net", orcpt="rfc822;b@example.net", notify=(Notify.FAILURE,)),
            Recipient("c@example.net"),
        ),
        arrival_time=1_738_404_000.25,
        protocol=WithProtocol.ESMTPS,
        client_address="192.0.2.1",
        client_hostname="client.example",
        helo_name="client.example",
    )
    return dataclasses.replace(envelope, **changes)  # type: ignore[arg-type]


def files(directory: Path) -> list[str]:
    """All files under ``directory`` as sorted relative paths, without the pool of
    recycled queue files (``free/``: empty files, no messages; see :func:`pooled`)."""
    return sorted(
        name
        for p in directory.rglob("*")
        if p.is_file() and not (name := str(p.relative_to(directory))).startswith("free/")
    )


def pooled(directory: Path) -> dict[str, int]:
    """The pool of recycled queue files under the queue directory: name -> size."""
    pool = directory / "free"
    return {p.name: p.stat().st_size for p in pool.iterdir()} if pool.is_dir() else {}


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    # no spare queue files: these tests list the queue's files (spares: tests below)
    async with Spool(tmp_path / "queue", spare_files=0) as spool:
        yield spool


# -- queue IDs ---------------------------------------------------------------------------


def test_queue_ids_are_13_base52_characters_ending_in_the_process_tag() -> None:
    generate = QueueIdGenerator(tag="x7Q")
    queue_id = generate()
    assert len(queue_id) == 13 and is_queue_id(queue_id) and queue_id.endswith("x7Q")
    assert not set(queue_id) & set("AEIOUaeiou")


def test_queue_ids_sort_by_time_and_decode_back() -> None:
    times = iter([1_700_000_000.000001, 1_700_000_000.5, 1_700_000_001.0, 2_000_000_000.0])
    generate = QueueIdGenerator(tag="BBB", clock=lambda: next(times))
    ids = [generate() for _ in range(4)]
    assert ids == sorted(ids)
    assert queue_id_time(ids[1]) == pytest.approx(1_700_000_000.5, abs=1e-6)
    assert queue_id_time(ids[3]) == pytest.approx(2_000_000_000.0, abs=1e-6)


def test_queue_ids_stay_increasing_when_the_clock_stands_still_or_steps_back() -> None:
    times = iter([1_700_000_000.0] * 5 + [1_600_000_000.0] * 5)
    generate = QueueIdGenerator(tag="BBB", clock=lambda: next(times))
    ids = [generate() for _ in range(10)]
    assert ids == sorted(ids) and len(set(ids)) == 10


def test_queue_ids_are_unique_across_threads() -> None:
    generate = QueueIdGenerator()
    results: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        out.extend(generate() for _ in range(2000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [queue_id for out in results for queue_id in out]
    assert len(set(every)) == 8000
    assert all(out == sorted(out) for out in results)


@pytest.mark.parametrize(
    "text", ["", "4Wk3nB0h2Fz1", "4Wk3nB0h2Fz1xx", "4Wk3nB0h2Fz1a", "../etc/passw"]
)
def test_malformed_queue_ids_are_rejected(text: str) -> None:
    assert not is_queue_id(text)
    with pytest.raises(ValueError):
        queue_id_time(text)


# -- envelopes ---------------------------------------------------------------------------


def test_envelope_json_round_trip_keeps_every_field() -> None:
    envelope = make_envelope(
        queue_id="4Wk3nB0h2Fz1x",
        size=1234,
        body_type=BodyType.EIGHT_BIT_MIME,
        smtputf8=True,
        ret=Ret.HDRS,
        envid="QQ314159",
        sasl_method="PLAIN",
        sasl_username="jörg",
        envelope_sender="",
    )
    envelope = envelope.replace_recipient(
        1,
        Recipient(
            "пользователь@пример.рф",
            notify=(Notify.SUCCESS, Notify.DELAY),
            state=RecipientState.DEFERRED,
            reason="connect to mx.example[192.0.2.9]:25: Connection timed out",
            next_try=1_738_405_000.5,
            attempts=3,
            dsn_status="4.4.1",
        ),
    )
    text = envelope.to_json()
    assert "\n" not in text
    document = json.loads(text)
    assert document["v"] == 1 and document["envelope_sender"] == ""
    assert document["recipients"][1]["notify"] == ["SUCCESS", "DELAY"]
    assert Envelope.from_json(text) == envelope
    assert Envelope.from_json(text.encode()) == envelope


def test_from_json_ignores_unknown_keys_so_the_format_can_grow() -> None:
    document = json.loads(make_envelope(queue_id="4Wk3nB0h2Fz1x").to_json())
    document["added_in_a_later_release"] = {"x": 1}
    document["recipients"][0]["also_new"] = True
    assert Envelope.from_json(json.dumps(document)) == make_envelope(queue_id="4Wk3nB0h2Fz1x")


def _mutated(path: str, value: object, *, delete: bool = False) -> str:
    document = json.loads(make_envelope(queue_id="4Wk3nB0h2Fz1x").to_json())
    target = document
    keys: list[str | int] = []
    for part in path.replace("]", "").replace("[", ".").split("."):
        keys.append(int(part) if part.isdigit() else part)
    for key in keys[:-1]:
        target = target[key]
    if delete:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return json.dumps(document)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("v", 2, "v"),
        ("v", True, "v"),
        ("envelope_sender", None, "envelope_sender"),
        ("envelope_sender", "a@b\r\nRCPT TO:<x@y>", "envelope_sender"),
        ("arrival_time", "yesterday", "arrival_time"),
        ("arrival_time", -1, "arrival_time"),
        ("size", 1.5, "size"),
        ("protocol", "HTTP", "protocol"),
        ("body_type", "BINARYMIME", "body_type"),
        ("smtputf8", 1, "smtputf8"),
        ("ret", "ALL", "ret"),
        ("envid", "x" * 101, "envid"),
        ("client_address", "not-an-ip", "client_address"),
        ("queue_id", "../../etc/passwd", "queue_id"),
        ("recipients", [], "recipients"),
        ("recipients", {}, "recipients"),
        ("recipients[0]", "b@example.net", "recipients[0]"),
        ("recipients[0].address", "", "recipients[0].address"),
        ("recipients[0].orcpt", "b@example.net", "recipients[0].orcpt"),
        ("recipients[0].notify", ["NEVER", "FAILURE"], "recipients[0].notify"),
        ("recipients[0].notify", ["SOMETIMES"], "recipients[0].notify[0]"),
        ("recipients[0].notify", [], "recipients[0].notify"),
        ("recipients[1].state", "lost", "recipients[1].state"),
        ("recipients[1].attempts", -1, "recipients[1].attempts"),
        ("recipients[1].attempts", False, "recipients[1].attempts"),
        ("recipients[1].next_try", "soon", "recipients[1].next_try"),
        ("recipients[1].dsn_status", "550", "recipients[1].dsn_status"),
    ],
)
def test_a_bad_field_raises_value_error_naming_it(path: str, value: object, field: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        Envelope.from_json(_mutated(path, value))
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert field in str(caught.value)


@pytest.mark.parametrize("path", ["v", "envelope_sender", "recipients", "recipients[0].address"])
def test_a_missing_field_is_named(path: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        Envelope.from_json(_mutated(path, None, delete=True))
    assert caught.value.field == path


@pytest.mark.parametrize(
    "text",
    [b"", b"{", b"[]", b'"x"', b"\xff\xfe", b'{"v": NaN}', b'{"v": 1, "v": 1}'],
)
def test_junk_is_rejected_as_envelope_error(text: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_json(text)


def test_constructing_an_invalid_envelope_fails_early() -> None:
    with pytest.raises(EnvelopeError, match="notify"):
        Recipient("a@b", notify=(Notify.NEVER, Notify.DELAY))
    with pytest.raises(EnvelopeError, match="recipients"):
        make_envelope(recipients=())
    with pytest.raises(EnvelopeError, match="envelope_sender"):
        make_envelope(envelope_sender="a@\udcff")


_text = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=30)
_recipients = st.builds(
    Recipient,
    address=_text.filter(bool),
    orcpt=st.none() | _text.filter(bool).map(lambda t: "rfc822;" + t),
    notify=st.none()
    | st.just((Notify.NEVER,))
    | st.lists(
        st.sampled_from([Notify.SUCCESS, Notify.FAILURE, Notify.DELAY]), min_size=1, unique=True
    ).map(tuple),
    state=st.sampled_from(RecipientState),
    reason=st.none() | _text,
    next_try=st.none() | st.floats(0, 4e9),
    attempts=st.integers(0, 10**6),
    dsn_status=st.none() | st.from_regex(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
)
_envelopes = st.builds(
    Envelope,
    envelope_sender=_text,
    recipients=st.lists(_recipients, min_size=1, max_size=4).map(tuple),
    arrival_time=st.floats(0, 4e9),
    protocol=st.sampled_from(WithProtocol),
    queue_id=st.just("") | st.builds(QueueIdGenerator()),
    size=st.integers(0, 2**40),
    body_type=st.none() | st.sampled_from(BodyType),
    smtputf8=st.booleans(),
    ret=st.none() | st.sampled_from(Ret),
    envid=st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=100),
    client_address=st.none() | st.ip_addresses().map(str),
    client_hostname=st.none() | _text,
    helo_name=st.none() | _text,
    sasl_method=st.none() | _text,
    sasl_username=st.none() | _text,
)


@given(_envelopes)
def test_any_valid_envelope_survives_json(envelope: Envelope) -> None:
    assert Envelope.from_json(envelope.to_json().encode("utf-8")) == envelope


@given(_envelopes)
def test_the_envelope_text_is_what_json_dumps_writes(envelope: Envelope) -> None:
    # to_json's encoder is made once (json's C encoder); the text stays json.dumps's
    document = json.loads(envelope.to_json())
    expected = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    assert envelope.to_json() == expected


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_from_json_never_fails_with_anything_but_envelope_error(junk: bytes | str) -> None:
    with contextlib.suppress(EnvelopeError):
        Envelope.from_json(junk)


# -- accepting mail ----------------------------------------------------------------------


async def test_enqueue_stores_exact_bytes_and_a_versioned_envelope(
    spool: Spool, tmp_path: Path
) -> None:
    queue_id = await spool.enqueue(make_envelope(), MESSAGE)
    incoming = tmp_path / "queue" / "incoming"
    assert sorted(os.listdir(incoming)) == [queue_id]  # one queue file, nothing else
    data = (incoming / queue_id).read_bytes()
    # content, envelope (one JSON line), trailer: docs/spool.md "The queue file"
    envelope_line = data[len(MESSAGE) : -TRAILER_LENGTH]
    assert data.startswith(MESSAGE) and envelope_line.endswith(b"\n")
    crc = zlib.crc32(data[:-TRAILER_LENGTH])
    trailer = b"roost-queue-file 1 %016x %08x %08x\n" % (len(MESSAGE), len(envelope_line), crc)
    assert data[-TRAILER_LENGTH:] == trailer
    document = json.loads(envelope_line)
    assert document["v"] == 1
    assert document["queue_id"] == queue_id and document["size"] == len(MESSAGE)
    stored = await spool.load_envelope(queue_id, QueueName.INCOMING)
    assert stored == make_envelope(queue_id=queue_id, size=len(MESSAGE))
    assert oct((incoming / queue_id).stat().st_mode & 0o777) == "0o600"


async def test_start_creates_every_queue(tmp_path: Path) -> None:
    async with Spool(tmp_path / "q"):
        pass
    assert sorted(os.listdir(tmp_path / "q")) == sorted([*(q.value for q in QueueName), "free"])


async def test_streamed_message_crossing_buffer_boundaries_is_stored_exactly(
    tmp_path: Path,
) -> None:
    chunks = [os.urandom(n) + b"\r\n" for n in (1, 1000, 4095, 4096, 10_000, 3, 70_000)]
    async with Spool(tmp_path / "q", buffer_size=4096) as spool:
        async with spool.new_message() as writer:
            assert is_queue_id(writer.queue_id)
            for chunk in chunks:
                await writer.write(chunk)
            assert writer.size == sum(map(len, chunks))
            # Written so far, but not a message yet.
            assert await spool.scan(QueueName.INCOMING) == []
            queue_id = await writer.commit(make_envelope())
        assert queue_id == writer.queue_id
        with await spool.open_content(queue_id, QueueName.INCOMING) as content:
            assert content.read() == b"".join(chunks)
        envelope = await spool.load_envelope(queue_id, QueueName.INCOMING)
        assert envelope.size == writer.size


async def test_abort_deletes_the_uncommitted_file(tmp_path: Path) -> None:
    async with Spool(tmp_path / "q", buffer_size=1024) as spool:
        writer = spool.new_message()
        await writer.write(b"x" * 5000)
        assert (tmp_path / "q" / "incoming" / writer.queue_id).exists()
        await writer.abort()
        await writer.abort()  # idempotent
        assert files(tmp_path / "q") == []
        with pytest.raises(RuntimeError):
            await writer.write(b"more")
        with pytest.raises(RuntimeError):
            await writer.commit(make_envelope())


async def test_leaving_the_writer_block_by_exception_aborts(tmp_path: Path) -> None:
    async with Spool(tmp_path / "q", buffer_size=10) as spool:
        with pytest.raises(ConnectionResetError):
            async with spool.new_message() as writer:
                await writer.write(b"partial message data")
                raise ConnectionResetError
        assert files(tmp_path / "q") == []


async def test_commit_rejects_an_envelope_for_another_message(spool: Spool) -> None:
    async with spool.new_message() as writer:
        await writer.write(MESSAGE)
        with pytest.raises(ValueError, match="queue_id"):
            await writer.commit(make_envelope(queue_id="4Wk3nB0h2Fz1x"))


async def test_200_concurrent_enqueues_get_distinct_ids_in_order_and_notify(
    tmp_path: Path,
) -> None:
    notified: list[tuple[str, int]] = []
    loop_thread = threading.get_ident()
    batches = 0
    async with Spool(
        tmp_path / "q", on_commit=lambda qid: notified.append((qid, threading.get_ident()))
    ) as spool:
        run_batch = spool.directory.run_batch

        def counting(jobs: object) -> None:
            nonlocal batches
            batches += 1
            run_batch(jobs)  # type: ignore[arg-type]

        spool.directory.run_batch = counting  # type: ignore[method-assign]
        tasks = [
            asyncio.create_task(spool.enqueue(make_envelope(), MESSAGE + b"%d" % i))
            for i in range(200)
        ]
        ids = await asyncio.gather(*tasks)
        assert len(set(ids)) == 200
        assert ids == sorted(ids)  # the order the sessions started in
        assert await spool.scan(QueueName.INCOMING) == ids
        assert sorted(qid for qid, _ in notified) == ids
        assert {thread for _, thread in notified} == {loop_thread}
        for i in (0, 117, 199):
            with await spool.open_content(ids[i], QueueName.INCOMING) as content:
                assert content.read() == MESSAGE + b"%d" % i
    assert batches < 200  # fsyncs were shared
    assert not [name for name in files(tmp_path / "q") if name.endswith(".tmp")]


async def test_a_failing_on_commit_callback_does_not_fail_the_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(queue_id: str) -> None:
        raise RuntimeError("queue manager bug")

    async with Spool(tmp_path / "q", on_commit=broken) as spool:
        queue_id = await spool.enqueue(make_envelope(), MESSAGE)
        assert await spool.scan(QueueName.INCOMING) == [queue_id]
    assert "on_commit callback failed" in caplog.text


async def test_set_on_commit_installs_and_removes_the_callback(spool: Spool) -> None:
    seen: list[str] = []
    spool.set_on_commit(seen.append)
    first = await spool.enqueue(make_envelope(), MESSAGE)
    spool.set_on_commit(None)
    await spool.enqueue(make_envelope(), MESSAGE)
    assert seen == [first]


async def test_without_group_commit_results_are_the_same(tmp_path: Path) -> None:
    async with Spool(tmp_path / "q", group_commit=False) as spool:
        ids = await asyncio.gather(*(spool.enqueue(make_envelope(), MESSAGE) for _ in range(20)))
        assert await spool.scan(QueueName.INCOMING) == sorted(ids)


async def test_maildrop_commits_go_to_maildrop(spool: Spool, tmp_path: Path) -> None:
    queue_id = await spool.enqueue(
        make_envelope(protocol=WithProtocol.LOCAL), MESSAGE, QueueName.MAILDROP
    )
    assert await spool.scan(QueueName.MAILDROP) == [queue_id]
    assert await spool.scan(QueueName.INCOMING) == []


async def test_streaming_50_mb_keeps_memory_low(tmp_path: Path) -> None:
    chunk = (b"y" * 998 + b"\r\n") * 64  # 64,000 bytes
    count = 50_000_000 // len(chunk)
    async with Spool(tmp_path / "q") as spool:
        tracemalloc.start()
        try:
            async with spool.new_message() as writer:
                for _ in range(count):
                    await writer.write(chunk)
                queue_id = await writer.commit(make_envelope())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 5_000_000, f"peak {peak} bytes"
        path = spool.directory.content_path(QueueName.INCOMING, queue_id)
        assert path.stat().st_size > count * len(chunk) == writer.size
        with await spool.open_content(queue_id, QueueName.INCOMING) as content:
            crc, total = 0, 0
            while block := content.read(1 << 20):
                crc, total = zlib.crc32(block, crc), total + len(block)
        assert total == writer.size and crc == zlib.crc32(chunk * count)


# -- the queue manager's side ------------------------------------------------------------


async def test_update_envelope_replaces_it_durably(spool: Spool, tmp_path: Path) -> None:
    queue_id = await spool.enqueue(make_envelope(), MESSAGE)
    envelope = await spool.load_envelope(queue_id, QueueName.INCOMING)
    delivered = dataclasses.replace(
        envelope.recipients[0], state=RecipientState.DELIVERED, dsn_status="2.0.0", attempts=1
    )
    updated = envelope.replace_recipient(0, delivered)
    await spool.update_envelope(queue_id, updated, QueueName.INCOMING)
    assert await spool.load_envelope(queue_id, QueueName.INCOMING) == updated
    assert sorted(os.listdir(tmp_path / "queue" / "incoming")) == [queue_id, queue_id + ".env"]
    with pytest.raises(ValueError):
        await spool.update_envelope("4Wk3nB0h2Fz1x", updated, QueueName.INCOMING)


async def test_read_message_data_gives_envelope_and_small_content_in_one_read(
    spool: Spool,
) -> None:
    queue_id = await spool.enqueue(make_envelope(), MESSAGE)
    directory = spool.directory
    envelope_data = directory.read_envelope_data(QueueName.INCOMING, queue_id)
    assert envelope_data is not None
    # small enough: the content comes along, byte for byte as stored
    assert directory.read_message_data(QueueName.INCOMING, queue_id, 1 << 20) == (
        envelope_data,
        MESSAGE,
    )
    # too large for the limit: the envelope alone
    assert directory.read_message_data(QueueName.INCOMING, queue_id, 10) == (envelope_data, None)
    # an ID.env wins over the envelope inside the queue file, in both cases
    envelope = Envelope.from_json(envelope_data)
    delivered = dataclasses.replace(envelope.recipients[0], state=RecipientState.DELIVERED)
    await spool.update_envelope(
        queue_id, envelope.replace_recipient(0, delivered), QueueName.INCOMING
    )
    updated = directory.read_envelope_data(QueueName.INCOMING, queue_id)
    assert updated is not None and updated != envelope_data
    assert directory.read_message_data(QueueName.INCOMING, queue_id, 1 << 20) == (
        updated,
        MESSAGE,
    )
    assert directory.read_message_data(QueueName.INCOMING, queue_id, 10) == (updated, None)
    assert directory.read_message_data(QueueName.DEFERRED, queue_id, 1 << 20) is None
    # a just-committed message has no ID.env: without the probe, the queue file's envelope
    assert directory.read_message_data(
        QueueName.INCOMING, queue_id, 1 << 20, envelope_file=False
    ) == (envelope_data, MESSAGE)


async def test_read_new_message_reads_what_read_message_data_reads_and_keeps_the_file_open(
    spool: Spool, tmp_path: Path
) -> None:
    """The queue manager's read of a just-committed message: the same envelope and content
    as read_message_data(envelope_file=False), with the queue file left open for reading
    and writing (for its removal), whether the file is within the limit or not."""
    directory = spool.directory
    for message in (MESSAGE, MESSAGE * 5000):
        queue_id = await spool.enqueue(make_envelope(), message)
        path = tmp_path / "queue" / "incoming" / queue_id
        for limit in (1 << 20, 10, path.stat().st_size, path.stat().st_size - 1):
            expected = directory.read_message_data(
                QueueName.INCOMING, queue_id, limit, envelope_file=False
            )
            found = directory.read_new_message(QueueName.INCOMING, queue_id, limit)
            assert found is not None and expected is not None
            data, content, fd = found
            try:
                assert (data, content) == expected
                assert os.fstat(fd).st_ino == path.stat().st_ino
                assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
            finally:
                os.close(fd)
    assert directory.read_new_message(QueueName.DEFERRED, queue_id, 1 << 20) is None


async def test_read_new_message_ignores_an_uncommitted_queue_file_and_closes_it(
    spool: Spool, tmp_path: Path
) -> None:
    queue_id = "4Wk3nB0h2Fz1x"
    path = tmp_path / "queue" / "incoming" / queue_id
    assert spool.directory.read_new_message(QueueName.INCOMING, queue_id, 10) is None  # none
    before = len(os.listdir("/proc/self/fd"))  # the directory's descriptor is open by now
    for content in (MESSAGE, b"x", b"y" * 100_000):  # no trailer; too short; large, none
        path.write_bytes(content)
        assert spool.directory.read_new_message(QueueName.INCOMING, queue_id, 1 << 20) is None
        assert spool.directory.read_new_message(QueueName.INCOMING, queue_id, 10) is None
    assert len(os.listdir("/proc/self/fd")) == before  # nothing left open


async def test_read_message_data_ignores_an_uncommitted_queue_file(
    spool: Spool, tmp_path: Path
) -> None:
    queue_id = "4Wk3nB0h2Fz1x"
    path = tmp_path / "queue" / "incoming" / queue_id
    path.write_bytes(MESSAGE)  # being written: no trailer yet
    assert spool.directory.read_message_data(QueueName.INCOMING, queue_id, 1 << 20) is None
    assert spool.directory.read_message_data(QueueName.INCOMING, queue_id, 10) is None
    path.write_bytes(b"x")  # shorter than a trailer
    assert spool.directory.read_message_data(QueueName.INCOMING, queue_id, 1 << 20) is None


async def test_update_of_a_missing_message_is_not_found_and_creates_nothing(
    spool: Spool, tmp_path: Path
) -> None:
    envelope = make_envelope(queue_id="4Wk3nB0h2Fz1x")
    with pytest.raises(SpoolError) as caught:
        await spool.update_envelope("4Wk3nB0h2Fz1x", envelope, QueueName.DEFERRED)
    assert caught.value.kind is SpoolErrorKind.NOT_FOUND and not caught.value.temporary
    assert files(tmp_path / "queue") == []


async def test_move_takes_content_and_envelope_and_can_store_a_new_envelope(
    spool: Spool, tmp_path: Path
) -> None:
    queue_id = await spool.enqueue(make_envelope(), MESSAGE)
    await spool.move(queue_id, QueueName.INCOMING, QueueName.ACTIVE)
    envelope = await spool.load_envelope(queue_id, QueueName.ACTIVE)
    deferred = envelope.replace_recipient(
        1,
        dataclasses.replace(
            envelope.recipients[1], state=RecipientState.DEFERRED, next_try=time.time() + 300
        ),
    )
    await spool.move(queue_id, QueueName.ACTIVE, QueueName.DEFERRED, envelope=deferred)
    assert files(tmp_path / "queue") == [f"deferred/{queue_id}", f"deferred/{queue_id}.env"]
    assert await spool.load_envelope(queue_id, QueueName.DEFERRED) == deferred
    with await spool.open_content(queue_id, QueueName.DEFERRED) as content:
        assert content.read() == MESSAGE
    with pytest.raises(SpoolError) as caught:
        await spool.move(queue_id, QueueName.ACTIVE, QueueName.DEFERRED)
    assert caught.value.kind is SpoolErrorKind.NOT_FOUND
    with pytest.raises(ValueError):
        await spool.move(queue_id, QueueName.DEFERRED, QueueName.DEFERRED)


async def test_open_content_stays_readable_while_the_message_moves(spool: Spool) -> None:
    queue_id = await spool.enqueue(make_envelope(), MESSAGE)
    content = await spool.open_content(queue_id, QueueName.INCOMING)
    with content:
        await spool.move(queue_id, QueueName.INCOMING, QueueName.HOLD)
        await spool.remove(queue_id, QueueName.HOLD)
        assert content.read() == MESSAGE


async def test_remove_deletes_both_files(spool: Spool, tmp_path: Path) -> None:
    keep = await spool.enqueue(make_envelope(), MESSAGE)
    gone = await spool.enqueue(make_envelope(), MESSAGE)
    await spool.update_envelope(
        gone, await spool.load_envelope(gone, QueueName.INCOMING), QueueName.INCOMING
    )  # gone has an ID.env too
    await spool.remove(gone, QueueName.INCOMING)
    assert files(tmp_path / "queue") == [f"incoming/{keep}"]
    for call in (
        spool.remove(gone, QueueName.INCOMING),
        spool.load_envelope(gone, QueueName.INCOMING),
        spool.open_content(gone, QueueName.INCOMING),
    ):
        with pytest.raises(SpoolError) as caught:
            await call
        assert caught.value.kind is SpoolErrorKind.NOT_FOUND


@pytest.mark.parametrize("durable", [True, False])
async def test_remove_with_or_without_a_directory_fsync_deletes_both_files(
    spool: Spool, tmp_path: Path, durable: bool
) -> None:
    keep = await spool.enqueue(make_envelope(), MESSAGE)
    gone = await spool.enqueue(make_envelope(), MESSAGE)
    await spool.update_envelope(gone, make_envelope(queue_id=gone), QueueName.INCOMING)
    # the message has both of its files: the queue file and an updated ID.env
    assert sorted(files(tmp_path / "queue")) == sorted(
        [f"incoming/{keep}", f"incoming/{gone}", f"incoming/{gone}.env"]
    )
    await spool.remove(gone, QueueName.INCOMING, durable=durable)
    assert files(tmp_path / "queue") == [f"incoming/{keep}"]
    # without the fsync the queue file is recycled: kept, empty, in the pool
    assert pooled(tmp_path / "queue") == ({} if durable else {gone: 0})
    with pytest.raises(SpoolError) as caught:
        await spool.remove(gone, QueueName.INCOMING, durable=durable)
    assert caught.value.kind is SpoolErrorKind.NOT_FOUND


async def test_scan_lists_committed_messages_only(spool: Spool, tmp_path: Path) -> None:
    first = await spool.enqueue(make_envelope(), MESSAGE)
    writer = spool.new_message()
    await writer.write(MESSAGE)
    second = await spool.enqueue(make_envelope(), MESSAGE)
    (tmp_path / "queue" / "incoming" / "README").write_text("not mail")
    (tmp_path / "queue" / "incoming" / "4Wk3nB0h2Fz1x.env.tmp").write_text("{")
    assert await spool.scan(QueueName.INCOMING) == [first, second]
    await writer.abort()


async def test_a_corrupt_envelope_goes_to_corrupt_with_a_warning(
    spool: Spool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue_id = await spool.enqueue(make_envelope(), MESSAGE)
    path = tmp_path / "queue" / "incoming" / (queue_id + ".env")
    data = spool.directory.read_envelope_data(QueueName.INCOMING, queue_id)
    assert data is not None
    path.write_bytes(data[:40])  # torn by hand: the spool never does this
    with (
        caplog.at_level(logging.WARNING, logger="roost.queue"),
        pytest.raises(SpoolError) as caught,
    ):
        await spool.load_envelope(queue_id, QueueName.INCOMING)
    assert caught.value.kind is SpoolErrorKind.CORRUPT
    assert files(tmp_path / "queue") == [f"corrupt/{queue_id}", f"corrupt/{queue_id}.env"]
    assert f"{queue_id}: warning:" in caplog.text
    assert await spool.scan(QueueName.INCOMING) == []


async def test_an_envelope_naming_another_queue_id_is_corrupt(spool: Spool, tmp_path: Path) -> None:
    queue_id = await spool.enqueue(make_envelope(), MESSAGE)
    other = make_envelope(queue_id="4Wk3nB0h2Fz1x").to_json()
    (tmp_path / "queue" / "incoming" / (queue_id + ".env")).write_text(other)
    with pytest.raises(SpoolError) as caught:
        await spool.load_envelope(queue_id, QueueName.INCOMING)
    assert caught.value.kind is SpoolErrorKind.CORRUPT


def test_queue_directory_works_without_an_event_loop(tmp_path: Path) -> None:
    with QueueDirectory(tmp_path / "q") as directory:
        directory.create()
        queue_id = QueueIdGenerator()()
        envelope = make_envelope(queue_id=queue_id, size=len(MESSAGE))
        directory.commit(QueueName.MAILDROP, queue_id, MESSAGE, envelope)
        assert directory.scan(QueueName.MAILDROP) == [queue_id]
        directory.move(queue_id, QueueName.MAILDROP, QueueName.INCOMING)
        assert directory.load_envelope(queue_id, QueueName.INCOMING) == envelope
        directory.remove(queue_id, QueueName.INCOMING)
        assert files(tmp_path / "q") == []


# -- real OS errors become SpoolError ----------------------------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
async def test_unwritable_queue_is_a_temporary_local_error(tmp_path: Path) -> None:
    async with Spool(tmp_path / "q") as spool:
        incoming = tmp_path / "q" / "incoming"
        incoming.chmod(0o500)
        try:
            with pytest.raises(SpoolError) as caught:
                await spool.enqueue(make_envelope(), MESSAGE)
        finally:
            incoming.chmod(0o700)
        assert caught.value.errno == errno.EACCES
        assert caught.value.kind is SpoolErrorKind.LOCAL_ERROR and caught.value.temporary
        assert await spool.scan(QueueName.INCOMING) == []


def test_os_errors_map_to_kinds() -> None:
    cases = {
        errno.ENOSPC: (SpoolErrorKind.INSUFFICIENT_STORAGE, True),
        errno.EDQUOT: (SpoolErrorKind.INSUFFICIENT_STORAGE, True),
        errno.EFBIG: (SpoolErrorKind.MESSAGE_TOO_LARGE, False),
        errno.EIO: (SpoolErrorKind.LOCAL_ERROR, True),
        errno.EROFS: (SpoolErrorKind.LOCAL_ERROR, True),
    }
    for code, (kind, temporary) in cases.items():
        error = SpoolError.from_os_error(OSError(code, os.strerror(code)), "write", queue_id="q")
        assert (error.kind, error.temporary, error.errno) == (kind, temporary, code)


_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, resource, signal, sys, time
    from roost.queue import Envelope, Recipient, Spool, SpoolError, WithProtocol

    queue = sys.argv[1]
    limit, size, buffer_size = (int(arg) for arg in sys.argv[2:5])

    async def main():
        envelope = Envelope("a@example.org", (Recipient("b@example.net"),), time.time(),
                            WithProtocol.ESMTP)
        async with Spool(queue, buffer_size=buffer_size) as spool:
            if limit:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            result = {}
            try:
                async with spool.new_message() as writer:
                    for _ in range(size // 1000):
                        await writer.write(b"z" * 998 + b"\\r\\n")
                    await writer.commit(envelope)
                result["committed"] = True
            except SpoolError as exc:
                result.update(kind=exc.kind.name, temporary=exc.temporary, errno=exc.errno)
            result["incoming"] = sorted(os.listdir(os.path.join(queue, "incoming")))
            print(json.dumps(result))

    asyncio.run(main())
    """
)


def run_child(
    queue: Path, limit: int, size: int, buffer_size: int, wrap: list[str]
) -> dict[str, object]:
    """Run ``_CHILD`` (optionally under ``wrap``) and return the result it prints."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    command = [
        *wrap,
        sys.executable,
        "-c",
        _CHILD,
        str(queue),
        str(limit),
        str(size),
        str(buffer_size),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("buffer_size", [1 << 20, 8192], ids=["in-commit", "streaming"])
def test_file_size_limit_gives_efbig_and_leaves_nothing(tmp_path: Path, buffer_size: int) -> None:
    # RLIMIT_FSIZE is how Postfix's cleanup enforces message_size_limit; with SIGXFSZ
    # ignored, write(2) fails with EFBIG: a real OS error path, no root needed.
    result = run_child(tmp_path / "q", 50_000, 200_000, buffer_size, [])
    assert result == {
        "kind": "MESSAGE_TOO_LARGE",
        "temporary": False,
        "errno": errno.EFBIG,
        "incoming": [],
    }


def _private_tmpfs_wrapper() -> list[str] | None:
    """A prefix that runs a command in its own mount namespace, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for flags in (["--mount"], ["--mount", "--map-root-user"]):
        probe = subprocess.run(
            [unshare, *flags, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return [unshare, *flags]
    return None


def test_full_file_system_gives_insufficient_storage_and_leaves_nothing(tmp_path: Path) -> None:
    wrapper = _private_tmpfs_wrapper()
    if wrapper is None:
        pytest.skip("cannot mount a private tmpfs here (needs unshare and mount rights)")
    queue = tmp_path / "q"
    queue.mkdir()
    script = f'mount -t tmpfs -o size=256k tmpfs "{queue}" && exec "$@"'
    for buffer_size in (1 << 20, 8192):
        result = run_child(queue, 0, 1_000_000, buffer_size, [*wrapper, "sh", "-c", script, "sh"])
        assert result == {
            "kind": "INSUFFICIENT_STORAGE",
            "temporary": True,
            "errno": errno.ENOSPC,
            "incoming": [],
        }


async def test_a_commit_cancelled_before_its_batch_is_withdrawn(tmp_path: Path) -> None:
    notified: list[str] = []
    async with Spool(tmp_path / "q", buffer_size=16, on_commit=notified.append) as spool:
        writers = [spool.new_message() for _ in range(3)]
        for writer in writers:
            await writer.write(MESSAGE)  # flushed: each has its locked file
        tasks = [asyncio.create_task(writer.commit(make_envelope())) for writer in writers]
        await asyncio.sleep(0)  # all three are queued; the committer has not run yet
        tasks[1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], asyncio.CancelledError)
        kept = [writers[0].queue_id, writers[2].queue_id]
        assert results[0] == kept[0] and results[2] == kept[1]
        assert await spool.scan(QueueName.INCOMING) == kept
        assert notified == kept
        await writers[1].abort()  # a no-op now
    assert files(tmp_path / "q") == sorted(f"incoming/{qid}" for qid in kept)


async def test_a_queue_id_clash_fails_without_touching_the_other_file(tmp_path: Path) -> None:
    async with Spool(tmp_path / "q", queue_ids=lambda: "4Wk3nB0h2Fz1x") as spool:
        theirs = tmp_path / "q" / "incoming" / "4Wk3nB0h2Fz1x"
        theirs.write_bytes(b"another process's message")
        with pytest.raises(SpoolError) as caught:
            await spool.enqueue(make_envelope(), MESSAGE)
        assert caught.value.errno == errno.EEXIST and caught.value.temporary
        assert theirs.read_bytes() == b"another process's message"
        assert files(tmp_path / "q") == ["incoming/4Wk3nB0h2Fz1x"]


async def test_a_commit_whose_file_is_still_being_created_waits_for_it_or_is_withdrawn(
    tmp_path: Path,
) -> None:
    # The one I/O thread is held up: every create is still pending when its commit starts,
    # so the committer thread takes the create over (and a withdrawn commit deletes it).
    release = threading.Event()
    async with Spool(tmp_path / "q", io_threads=1) as spool:
        spool._io.submit(release.wait)
        writers = [spool.new_message() for _ in range(3)]
        for writer in writers:
            await writer.write(MESSAGE)  # stays in the buffer
        tasks = [asyncio.create_task(writer.commit(make_envelope())) for writer in writers]
        await asyncio.sleep(0)
        tasks[1].cancel()
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], asyncio.CancelledError)
        kept = [writers[0].queue_id, writers[2].queue_id]
        assert results[0] == kept[0] and results[2] == kept[1]
        assert await spool.scan(QueueName.INCOMING) == kept
        with await spool.open_content(kept[1], QueueName.INCOMING) as content:
            assert content.read() == MESSAGE
    assert files(tmp_path / "q") == sorted(f"incoming/{qid}" for qid in kept)


def directory_fsync_watcher(thread_names: list[str]) -> Callable[[int], None]:
    """An ``os.fsync`` that still syncs, and appends the name of the thread that fsyncs a
    directory to ``thread_names``."""
    real_fsync = os.fsync

    def watched_fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            thread_names.append(threading.current_thread().name)
        real_fsync(fd)

    return watched_fsync


async def test_a_lone_message_has_its_directory_fsynced_at_create_others_in_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory_syncs: list[str] = []
    watched_fsync = directory_fsync_watcher(directory_syncs)

    async with Spool(tmp_path / "q", spare_files=0) as spool:
        monkeypatch.setattr(os, "fsync", watched_fsync)
        await spool.enqueue(make_envelope(), MESSAGE)  # alone: synced by the create's thread
        assert [name.split("_")[0] for name in directory_syncs] == ["roost-spool-io"]
        directory_syncs.clear()
        writers = [spool.new_message() for _ in range(2)]  # together: one fsync in the batch
        for writer in writers:
            await writer.write(MESSAGE)
        await asyncio.gather(*(writer.commit(make_envelope()) for writer in writers))
        monkeypatch.undo()
        assert len(directory_syncs) == 2  # the first message's at create, the batch's
        assert directory_syncs[0].startswith("roost-spool-io")
        assert not directory_syncs[1].startswith("roost-spool-io")
        assert len(await spool.scan(QueueName.INCOMING)) == 3


async def test_a_stream_of_messages_uses_spare_queue_files_created_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory_syncs: list[str] = []
    watched_fsync = directory_fsync_watcher(directory_syncs)

    incoming = tmp_path / "q" / "incoming"
    async with Spool(tmp_path / "q", spare_files=4) as spool:
        ids = [await spool.enqueue(make_envelope(), MESSAGE + b"%d" % i) for i in range(2)]
        # the second message made a stream: spares are created (one directory fsync)
        while len(os.listdir(incoming)) < 2 + 3:
            await asyncio.sleep(0.01)
        spares = sorted(set(os.listdir(incoming)) - set(ids))
        assert all((incoming / name).stat().st_size == 0 for name in spares)
        assert await spool.scan(QueueName.INCOMING) == ids  # spares are no messages
        await asyncio.sleep(0.05)  # the spares' creation has ended (with its fsync)
        monkeypatch.setattr(os, "fsync", watched_fsync)
        third = await spool.enqueue(make_envelope(), MESSAGE + b"2")
        monkeypatch.undo()
        assert third == spares[0]  # the oldest spare, its ID after the earlier ones
        assert directory_syncs == []  # the spare's entry was durable already
        ids.append(third)
        assert await spool.scan(QueueName.INCOMING) == ids
        with await spool.open_content(third, QueueName.INCOMING) as content:
            assert content.read() == MESSAGE + b"2"
        envelope = await spool.load_envelope(third, QueueName.INCOMING)
        assert envelope.queue_id == third and envelope.size == len(MESSAGE) + 1
    assert sorted(os.listdir(incoming)) == ids  # close() deleted the unused spares


async def test_messages_on_spares_still_being_created_commit_abort_and_fail(
    tmp_path: Path,
) -> None:
    # The spares of one refill share one future: a writer that takes a spare before its
    # create has ended commits (the committer waits for the create), aborts (its file is
    # deleted once created), or fails with the refill's error, each on its own.
    incoming = tmp_path / "q" / "incoming"
    gate = threading.Event()
    async with Spool(tmp_path / "q", spare_files=6) as spool:
        create = spool.directory.create_content
        fail = False

        def slow_create(queue: QueueName, queue_id: str, **options: bool) -> int:
            gate.wait(30)
            if fail:
                raise SpoolError(f"create {queue_id}: no", SpoolErrorKind.INSUFFICIENT_STORAGE)
            return create(queue, queue_id, **options)

        spool.directory.create_content = slow_create  # type: ignore[method-assign]
        spool.directory.take_pooled = lambda queue, queue_id: None  # type: ignore[method-assign]
        first = spool.new_message()  # its own create (not a spare): waits for the gate too
        second = spool.new_message()  # a stream: this one starts the refill, takes a spare
        third = spool.new_message()
        assert second.queue_id < third.queue_id
        for writer in (first, second, third):
            await writer.write(MESSAGE)
        committing = asyncio.create_task(second.commit(make_envelope()))
        aborting = asyncio.create_task(third.abort())
        await asyncio.sleep(0.05)
        assert not committing.done() and not aborting.done()
        gate.set()
        assert await committing == second.queue_id
        await aborting
        await first.commit(make_envelope())
        assert await spool.scan(QueueName.INCOMING) == sorted([first.queue_id, second.queue_id])
        assert third.queue_id not in os.listdir(incoming)
        # a refill that fails: the messages on its spares fail, nothing is left behind
        await asyncio.sleep(spool_module.SPARE_MAX_AGE + 0.3)  # the old spares expire
        fail = True
        gate.clear()
        writers = [spool.new_message() for _ in range(3)]
        for writer in writers:
            await writer.write(MESSAGE)
        gate.set()
        for writer in writers:
            with pytest.raises(SpoolError):
                await writer.commit(make_envelope())
            await writer.abort()
        assert await spool.scan(QueueName.INCOMING) == sorted([first.queue_id, second.queue_id])
        assert sorted(os.listdir(incoming)) == sorted([first.queue_id, second.queue_id])


async def test_an_abort_cancelled_while_its_spare_is_queued_leaves_the_refill_alone(
    tmp_path: Path,
) -> None:
    # The one I/O thread is held up, so the refill is still queued when a writer on one of
    # its spares aborts and that abort is cancelled: the refill must still run for the
    # other spares (cancelling the shared future would fail their messages).
    release = threading.Event()
    async with Spool(tmp_path / "q", io_threads=1, spare_files=4) as spool:
        spool._io.submit(release.wait, 30)
        first = spool.new_message()  # its own create, queued behind the blocker
        second = spool.new_message()  # a stream: the refill is queued, this takes a spare
        third = spool.new_message()
        for writer in (first, second, third):
            await writer.write(MESSAGE)
        aborting = asyncio.create_task(second.abort())
        await asyncio.sleep(0.05)
        aborting.cancel()
        await asyncio.gather(aborting, return_exceptions=True)
        release.set()
        kept = [await first.commit(make_envelope()), await third.commit(make_envelope())]
        assert await spool.scan(QueueName.INCOMING) == kept


async def test_unused_spare_queue_files_are_deleted_and_ids_stay_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SPARE_MAX_AGE", 0.2)
    incoming = tmp_path / "q" / "incoming"
    async with Spool(tmp_path / "q", spare_files=8) as spool:
        tasks = [
            asyncio.create_task(spool.enqueue(make_envelope(), MESSAGE + b"%d" % i))
            for i in range(30)
        ]
        ids = await asyncio.gather(*tasks)
        assert ids == sorted(ids)  # spares or not, in the order the messages started
        assert await spool.scan(QueueName.INCOMING) == ids
        # the stream has ended: the spares left go after SPARE_MAX_AGE
        while sorted(os.listdir(incoming)) != ids:
            await asyncio.sleep(0.05)
        later = await spool.enqueue(make_envelope(), MESSAGE)
        assert later > ids[-1]
    assert sorted(os.listdir(incoming)) == [*ids, later]


async def test_a_commit_cancelled_once_its_batch_runs_still_commits_and_is_announced(
    tmp_path: Path,
) -> None:
    # A lone commit (its batch starts at once) whose caller goes away mid-flush: the
    # message is committed all the same, on_commit fires, and close() waits for it.
    notified: list[str] = []
    started, release = threading.Event(), threading.Event()
    async with Spool(tmp_path / "q", on_commit=notified.append) as spool:
        run_batch = spool.directory.run_batch

        def held(jobs: object) -> None:
            started.set()
            release.wait(30)
            run_batch(jobs)  # type: ignore[arg-type]

        spool.directory.run_batch = held  # type: ignore[method-assign]
        writer = spool.new_message()
        await writer.write(MESSAGE)
        task = asyncio.create_task(writer.commit(make_envelope()))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
    assert notified == [writer.queue_id]
    assert files(tmp_path / "q") == [f"incoming/{writer.queue_id}"]


async def test_a_failing_batch_engine_fails_its_callers_and_the_next_batch_runs(
    tmp_path: Path,
) -> None:
    async with Spool(tmp_path / "q") as spool:
        run_batch = spool.directory.run_batch
        calls = 0

        def broken_once(jobs: object) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug")
            run_batch(jobs)  # type: ignore[arg-type]

        spool.directory.run_batch = broken_once  # type: ignore[method-assign]
        with pytest.raises(SpoolError) as caught:
            await spool.enqueue(make_envelope(), MESSAGE)
        assert caught.value.kind is SpoolErrorKind.LOCAL_ERROR
        assert "committer stopped" in str(caught.value)
        queue_id = await spool.enqueue(make_envelope(), MESSAGE)
        assert await spool.scan(QueueName.INCOMING) == [queue_id]


async def test_a_committer_thread_that_cannot_start_fails_its_batch_and_removes_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: object) -> None:
        raise RuntimeError("can't start new thread")

    async with Spool(tmp_path / "q", spare_files=0) as spool:
        monkeypatch.setattr(spool_module._Committers, "_start_thread", refuse)
        with pytest.raises(SpoolError) as caught:
            await spool.enqueue(make_envelope(), MESSAGE)
        assert caught.value.kind is SpoolErrorKind.LOCAL_ERROR
        monkeypatch.undo()
        while files(tmp_path / "q"):  # the rollback runs in an I/O thread
            await asyncio.sleep(0.01)
        queue_id = await spool.enqueue(make_envelope(), MESSAGE)
        assert await spool.scan(QueueName.INCOMING) == [queue_id]
    assert files(tmp_path / "q") == [f"incoming/{queue_id}"]


def committer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("roost-spool-commit")]


async def test_close_stops_the_committer_threads(tmp_path: Path) -> None:
    before = committer_threads()
    async with Spool(tmp_path / "q") as spool:
        await spool.enqueue(make_envelope(), MESSAGE)
        started = [t for t in committer_threads() if t not in before]
        assert len(started) == 1  # group commit: one committer
    assert not [t for t in started if t.is_alive()]


async def test_without_group_commit_batches_run_in_parallel_committer_threads(
    tmp_path: Path,
) -> None:
    # Each of two commits waits in its batch for the other to start: they can only both
    # finish if two committer threads run at once (the barrier's timeout only ends a hang).
    barrier = threading.Barrier(2, timeout=30)
    names: list[str] = []
    before = committer_threads()
    async with Spool(tmp_path / "q", group_commit=False, io_threads=4) as spool:
        run_batch = spool.directory.run_batch

        def meeting(jobs: object) -> None:
            names.append(threading.current_thread().name)
            barrier.wait()
            run_batch(jobs)  # type: ignore[arg-type]

        spool.directory.run_batch = meeting  # type: ignore[method-assign]
        ids = await asyncio.gather(*(spool.enqueue(make_envelope(), MESSAGE) for _ in range(2)))
        assert await spool.scan(QueueName.INCOMING) == sorted(ids)
        assert len(set(names)) == 2
        started = [t for t in committer_threads() if t not in before]
    assert started and not [t for t in started if t.is_alive()]

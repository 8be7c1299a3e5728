"""Virtual deliveries ready together: one batch per thread hand-off (delivery/local.py).

The real transport, user database (a passwd-file), router and Maildirs in tmp_path; the
jobs are what the queue manager hands over (content already read into memory).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from roost.auth.passwdfile import PasswdFileBackend
from roost.auth.users import UserDatabase
from roost.delivery import maildir as maildir_module
from roost.delivery.aliasfile import open_alias_maps
from roost.delivery.local import BATCH_GATHER, BATCH_RUNNERS, LocalTransport
from roost.delivery.mailbox import LocalConfig
from roost.delivery.router import Router
from roost.queue.envelope import Envelope, Recipient, WithProtocol
from roost.queue.manager import DeliveryJob, Outcome, RecipientResult
from roost.queue.spool import Spool

MESSAGE = b"Subject: batch\r\nFrom: bob@example.org\r\n\r\nbody\r\n"


def make_transport(tmp_path: Path) -> LocalTransport:
    users = tmp_path / "users"
    users.write_text(
        "alice@virtual.test:{PLAIN}x::::::\n"
        "carol@virtual.test:{PLAIN}x::::::\n"
        "dave@virtual.test:{PLAIN}x::::::\n"
    )
    database = UserDatabase([PasswdFileBackend(users)])
    router = Router(mydestination=(), virtual_domains=("virtual.test",), users=database)
    config = LocalConfig(
        hostname="mx.example.test",
        mail_location=f"maildir:{tmp_path}/mail/%d/%n/Maildir",
        recipient_delimiter="+",
    )
    spool = Spool(tmp_path / "spool")  # only for forwarded mail, which these jobs have not
    return LocalTransport(config, router, open_alias_maps([]), database, spool)


def job(number: int, *addresses: str) -> DeliveryJob:
    envelope = Envelope(
        envelope_sender="bob@example.org",
        recipients=tuple(Recipient(address) for address in addresses),
        arrival_time=time.time(),
        protocol=WithProtocol.ESMTP,
    )

    def no_file() -> object:
        raise AssertionError("the content is in memory: no queue file to open")

    return DeliveryJob(
        queue_id=f"TESTID{number:07d}",
        envelope=envelope,
        recipients=tuple(enumerate(envelope.recipients)),
        open_content=no_file,  # type: ignore[arg-type]
        content_size=len(MESSAGE),
        content=MESSAGE,
    )


def maildir_new(tmp_path: Path, user: str) -> Path:
    return tmp_path / "mail" / "virtual.test" / user / "Maildir" / "new"


async def deliver_all(
    transport: LocalTransport, jobs: list[DeliveryJob]
) -> list[list[RecipientResult]]:
    return list(await asyncio.gather(*(transport.deliver(j) for j in jobs)))


def test_deliveries_ready_together_share_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = make_transport(tmp_path)
    sizes: list[int] = []
    real_batch = maildir_module.deliver_maildir_files

    def counting(deliveries, **options):  # type: ignore[no-untyped-def]
        sizes.append(len(deliveries))
        return real_batch(deliveries, **options)

    monkeypatch.setattr("roost.delivery.local.deliver_maildir_files", counting)
    jobs = [job(n, "alice@virtual.test") for n in range(40)]
    results = asyncio.run(deliver_all(transport, jobs))
    assert [r.status for rs in results for r in rs] == [Outcome.SENT] * 40
    assert all(
        r.reason == "delivered to maildir" and r.relay == "virtual" for rs in results for r in rs
    )
    files = sorted(maildir_new(tmp_path, "alice").iterdir())
    assert len(files) == 40
    assert (
        files[0]
        .read_bytes()
        .startswith(
            b"Return-Path: <bob@example.org>\nX-Original-To: alice@virtual.test\n"
            b"Delivered-To: alice@virtual.test\nSubject: batch\n"
        )
    )
    # 40 deliveries started in one loop iteration: at most BATCH_RUNNERS thread hand-offs
    assert sum(sizes) == 40 and len(sizes) <= BATCH_RUNNERS


def test_a_lone_delivery_starts_at_once_and_later_ones_gather(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = make_transport(tmp_path)
    sizes: list[int] = []
    gate = threading.Event()
    real_batch = maildir_module.deliver_maildir_files

    def held(deliveries, **options):  # type: ignore[no-untyped-def]
        sizes.append(len(deliveries))
        if len(sizes) == 1:
            gate.wait(30)  # the first batch is still being written
        return real_batch(deliveries, **options)

    monkeypatch.setattr("roost.delivery.local.deliver_maildir_files", held)

    async def until(condition: object) -> None:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
            await asyncio.sleep(0.01)

    async def scenario() -> list[list[RecipientResult]]:
        first = asyncio.create_task(transport.deliver(job(0, "alice@virtual.test")))
        await until(lambda: sizes == [1])
        assert sizes == [1]  # no waiting for company when nothing is being written
        later = [
            asyncio.create_task(transport.deliver(job(n, "alice@virtual.test")))
            for n in range(1, BATCH_GATHER)
        ]
        for _ in range(20):
            await asyncio.sleep(0)
        assert sizes == [1]  # fewer than BATCH_GATHER wait while a batch is written
        later.append(asyncio.create_task(transport.deliver(job(99, "alice@virtual.test"))))
        await until(lambda: len(sizes) == 2)
        assert sizes == [1, BATCH_GATHER]
        gate.set()
        return [await first, *[await task for task in later]]

    try:
        results = asyncio.run(scenario())
    finally:
        gate.set()
    assert [r.status for rs in results for r in rs] == [Outcome.SENT] * (BATCH_GATHER + 1)
    assert len(list(maildir_new(tmp_path, "alice").iterdir())) == BATCH_GATHER + 1


def test_a_batch_mixes_unknown_users_extensions_and_a_broken_maildir(tmp_path: Path) -> None:
    transport = make_transport(tmp_path)
    broken = tmp_path / "mail" / "virtual.test" / "dave"
    broken.mkdir(parents=True)
    (broken / "Maildir").write_text("a file where the Maildir should be")
    jobs = [
        job(1, "alice@virtual.test", "nobody@virtual.test"),
        job(2, "carol+lists@virtual.test"),
        job(3, "dave@virtual.test"),
        job(4, "carol@virtual.test"),
    ]
    results = asyncio.run(deliver_all(transport, jobs))
    alice, nobody = results[0]
    assert alice.status == Outcome.SENT and alice.index == 0
    assert nobody.status == Outcome.BOUNCED and nobody.dsn == "5.1.1" and nobody.index == 1
    (extension,) = results[1]
    assert extension.status == Outcome.SENT  # the old path: carol's INBOX (no such folder)
    (dave,) = results[2]
    assert dave.status == Outcome.DEFERRED and dave.dsn.startswith("4.")
    assert results[3][0].status == Outcome.SENT
    assert len(list(maildir_new(tmp_path, "alice").iterdir())) == 1
    carol = sorted(p.read_bytes() for p in maildir_new(tmp_path, "carol").iterdir())
    assert len(carol) == 2
    assert any(b"Delivered-To: carol+lists@virtual.test\n" in data for data in carol)

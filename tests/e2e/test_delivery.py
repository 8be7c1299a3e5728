"""Queue manager and local delivery end to end: SMTP in, Maildir/mbox/file/pipe out."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import shutil
import signal
import smtplib
import tempfile
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from roost.queue import Envelope, Recipient, Spool, WithProtocol
from tests.e2e.daemon import RoostDaemon
from tests.e2e.instance import Instance, start_instance


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    directory = tmp_path_factory.mktemp("delivery")
    # the pipe runs as default_privs (nobody): its outbox must be reachable by nobody
    outbox = Path(tempfile.mkdtemp(prefix="roost-outbox-"))
    outbox.chmod(0o777)
    (directory / "outbox").symlink_to(outbox)
    (directory / "team.list").write_text("alice@virtual.test\nbob@virtual.test\n")
    (directory / "aliases").write_text(
        "postmaster: alice@virtual.test\n"
        "team: alice@virtual.test, bob@virtual.test\n"
        f"archive: {outbox}/archive.mbox\n"
        f'pipe: "|cat > {outbox}/piped.txt; env > {outbox}/piped.env"\n'
        f"listed: :include:{directory}/team.list\n"
        "broken: nosuchuser\n"
        "loop1: loop2\n"
        "loop2: loop1\n"
    )
    running = start_instance(directory, "recipient_delimiter = +\n")
    yield running
    running.daemon.stop()
    shutil.rmtree(outbox)


def send(
    instance: Instance,
    to: list[str],
    body: str = "hello",
    sender: str = "sender@example.org",
    rcpt_options: list[str] | None = None,
    source: str = "127.0.0.1",
) -> str:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = body
    message.set_content(body)
    with instance.smtp(source=source) as client:
        client.ehlo("client.example")
        client.mail(sender)
        for address in to:
            code, text = client.rcpt(address, rcpt_options or [])
            assert code == 250, (address, text)
        code, text = client.data(message.as_bytes(policy=email.policy.SMTP))
        assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def read(path: Path) -> email.message.Message:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def test_virtual_user_gets_the_message_with_local8_headers(instance: Instance) -> None:
    before = len(instance.delivered("bob"))
    queue_id = send(instance, ["bob@virtual.test"], "for bob")
    [path] = instance.wait_delivered("bob", before + 1)[before:]
    raw = path.read_bytes()
    assert raw.startswith(
        b"Return-Path: <sender@example.org>\nX-Original-To: bob@virtual.test\n"
        b"Delivered-To: bob@virtual.test\nReceived: from client.example"
    )
    assert b"\r\n" not in raw  # Maildir files have LF line endings
    assert ",S=" in path.name and f",S={len(raw)}" in path.name
    assert read(path)["Subject"] == "for bob"
    log = instance.log()
    # Named after the delivery agent, as Postfix's virtual(8) logs it (not roost/qmgr)
    assert re.search(
        rf"roost/virtual\[\d+\]: {queue_id}: to=<bob@virtual\.test>, relay=virtual, delay=", log
    ), log
    assert "dsn=2.0.0, status=sent (delivered to maildir)" in log
    assert f"{queue_id}: removed" in log


@pytest.mark.parametrize("lines", [3, 3000])  # ~0.2 KB from memory, ~230 KB from the file
def test_small_and_large_messages_arrive_byte_for_byte(instance: Instance, lines: int) -> None:
    # the queue manager hands a small message's content to the transport from memory
    # (queue.manager.CONTENT_IN_MEMORY) and lets a large one be read from the queue file
    body = b"".join(b"line %05d of %d: %s\r\n" % (n, lines, b"x" * 60) for n in range(lines))
    data = b"From: <sender@example.org>\r\nSubject: size %d\r\n\r\n%s" % (lines, body)
    before = len(instance.delivered("bob"))
    with instance.smtp() as client:
        client.sendmail("sender@example.org", ["bob@virtual.test"], data)
    [path] = instance.wait_delivered("bob", before + 1)[before:]
    raw = path.read_bytes()
    assert b"Subject: size %d\n" % lines in raw
    assert raw.split(b"\n\n", 1)[1] == body.replace(b"\r\n", b"\n")


def test_team_alias_reaches_each_member_once(instance: Instance) -> None:
    alice, bob = len(instance.delivered("alice")), len(instance.delivered("bob"))
    send(instance, ["team@roost.test"], "team news")
    assert len(instance.wait_delivered("alice", alice + 1)) == alice + 1
    assert len(instance.wait_delivered("bob", bob + 1)) == bob + 1
    newest = instance.delivered("alice")[-1]
    assert read(newest)["Delivered-To"] == "alice@virtual.test"
    assert read(newest)["X-Original-To"] == "team@roost.test"


def test_include_file_and_pipe_targets(instance: Instance) -> None:
    alice = len(instance.delivered("alice"))
    send(instance, ["listed@roost.test"], "via include")
    assert len(instance.wait_delivered("alice", alice + 1)) == alice + 1
    send(instance, ["archive@roost.test"], "to a file")
    piped = send(instance, ["pipe@roost.test"], "to a pipe")
    outbox = instance.directory / "outbox"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (outbox / "piped.env").exists() and (outbox / "archive.mbox").exists():
            break
        time.sleep(0.05)
    mbox = (outbox / "archive.mbox").read_bytes()
    assert mbox.startswith(b"From sender@example.org ")
    assert b"Subject: to a file\n" in mbox and mbox.endswith(b"\n\n")
    assert b"Subject: to a pipe" in (outbox / "piped.txt").read_bytes()
    environment = (outbox / "piped.env").read_text().splitlines()
    assert "SENDER=sender@example.org" in environment
    assert "RECIPIENT=pipe@roost.test" in environment
    assert "USER=nobody" in environment
    assert re.search(
        rf"roost/local\[\d+\]: {piped}: to=<pipe@roost\.test>, relay=local, .*status=sent",
        instance.log(),
    )


def test_unknown_user_behind_an_alias_bounces_with_a_dsn(instance: Instance) -> None:
    alice = len(instance.delivered("alice"))
    queue_id = send(
        instance,
        ["broken@roost.test"],
        "will bounce",
        sender="alice@virtual.test",
        rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;broken@roost.test"],
    )
    [path] = instance.wait_delivered("alice", alice + 1)[alice:]
    dsn = read(path)
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert b"\nFrom: MAILER-DAEMON@mx.roost.test (Mail Delivery System)\n" in path.read_bytes()
    assert dsn["Return-Path"] == "<>"
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    notification, report, original = dsn.iter_parts()
    assert '<broken@roost.test>: unknown user: "nosuchuser"' in notification.get_content()
    per_message, per_recipient = report.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.roost.test"
    assert per_message["X-Roost-Queue-ID"] == queue_id
    assert per_recipient["Final-Recipient"] == "rfc822; broken@roost.test"
    assert per_recipient["Original-Recipient"] == "rfc822; broken@roost.test"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Diagnostic-Code"] == 'X-Roost; unknown user: "nosuchuser"'
    assert original.get_content_type() == "message/rfc822"
    assert original.get_payload()[0]["Subject"] == "will bounce"
    log = instance.log()
    assert re.search(rf"roost/bounce\[\d+\]: {queue_id}: sender non-delivery notification: ", log)
    assert re.search(
        rf"roost/local\[\d+\]: {queue_id}: to=<broken@roost\.test>, .*status=bounced", log
    ), log


def test_a_bounce_that_bounces_goes_to_postmaster_once(instance: Instance) -> None:
    # never a bounce to <>: the double bounce goes to 2bounce_notice_recipient (postmaster,
    # aliased to alice here), logged as Postfix's bounce(8) logs it
    alice = len(instance.delivered("alice"))
    queue_id = send(instance, ["broken@roost.test"], "bounce of a bounce", sender="")
    [path] = instance.wait_delivered("alice", alice + 1)[alice:]
    dsn = read(path)
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn["To"] == "postmaster"
    assert dsn["Return-Path"] == "<>"
    log = instance.log()
    assert f"{queue_id}: postmaster non-delivery notification: " in log
    assert f"{queue_id}: sender non-delivery notification: " not in log


def test_notify_success_gets_a_delivery_notice(instance: Instance) -> None:
    # a message delivered in one go is removed without its envelope being rewritten,
    # except when a recipient asked for a success DSN (RFC 3461 NOTIFY=SUCCESS)
    alice, bob = len(instance.delivered("alice")), len(instance.delivered("bob"))
    queue_id = send(
        instance,
        ["bob@virtual.test"],
        "tell me",
        sender="alice@virtual.test",
        rcpt_options=["NOTIFY=SUCCESS"],
    )
    instance.wait_delivered("bob", bob + 1)
    [path] = instance.wait_delivered("alice", alice + 1)[alice:]
    dsn = read(path)
    assert dsn.get_content_type() == "multipart/report"
    _, report, _ = dsn.iter_parts()
    per_message, per_recipient = report.get_payload()
    assert per_message["X-Roost-Queue-ID"] == queue_id
    assert per_recipient["Final-Recipient"] == "rfc822; bob@virtual.test"
    assert per_recipient["Action"] == "delivered"
    assert per_recipient["Status"] == "2.0.0"
    log = instance.log()
    assert f"{queue_id}: sender delivery status notification: " in log
    assert f"{queue_id}: removed" in log


def test_notify_never_means_no_bounce(instance: Instance) -> None:
    alice = len(instance.delivered("alice"))
    queue_id = send(
        instance,
        ["broken@roost.test"],
        "silent",
        sender="alice@virtual.test",
        rcpt_options=["NOTIFY=NEVER"],
    )
    bob = len(instance.delivered("bob"))
    send(instance, ["bob@virtual.test"], "marker")
    instance.wait_delivered("bob", bob + 1)
    assert f"{queue_id}: removed" in instance.log()
    assert len(instance.delivered("alice")) == alice


def test_alias_loop_bounces_instead_of_spinning(instance: Instance) -> None:
    alice = len(instance.delivered("alice"))
    send(instance, ["loop1@roost.test"], "loop", sender="alice@virtual.test")
    [path] = instance.wait_delivered("alice", alice + 1)[alice:]
    report = read(path).get_body(preferencelist=("plain",))
    assert report is not None
    assert "mail forwarding loop for loop1@roost.test" in report.get_content()


def test_recipient_delimiter_reaches_the_user_and_its_folder(instance: Instance) -> None:
    folder = instance.maildir("bob") / ".lists"
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    send(instance, ["bob+lists@virtual.test"], "a list message")
    [path] = instance.wait_delivered("bob", 1, folder="lists")
    assert read(path)["Delivered-To"] == "bob+lists@virtual.test"
    before = len(instance.delivered("bob"))
    send(instance, ["bob+nofolder@virtual.test"], "no such folder")
    assert len(instance.wait_delivered("bob", before + 1)) == before + 1


def test_restart_in_the_middle_of_a_batch_delivers_each_message_once(tmp_path: Path) -> None:
    held = start_instance(tmp_path, "master_service_disable = qmgr\n")
    count = 1000
    try:
        with held.smtp() as client:
            client.ehlo("batch.example")
            for number in range(count):
                client.sendmail(
                    "batch@example.org",
                    ["alice@virtual.test"],
                    f"Subject: {number}\r\nMessage-ID: <{number}@batch>\r\n\r\n{number}\r\n",
                )
    finally:
        held.daemon.stop()
    assert len(held.queued()) == count
    main_cf = tmp_path / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("master_service_disable = qmgr\n", ""))
    daemon = RoostDaemon(main_cf)
    daemon.wait_ready()
    held.wait_delivered("alice", 50)
    daemon.signal(signal.SIGTERM)
    assert daemon.process.wait(60) == 0
    partial = len(held.delivered("alice"))
    assert 50 <= partial < count, "the restart should come in the middle of the batch"
    daemon = RoostDaemon(main_cf)
    try:
        daemon.wait_ready()
        files = held.wait_delivered("alice", count, timeout=120)
    finally:
        daemon.stop()
    ids = [read(path)["Message-ID"] for path in files]
    assert len(ids) == count
    assert len(set(ids)) == count, "a message was delivered twice"
    assert not list((tmp_path / "spool" / "incoming").iterdir())
    assert not list((tmp_path / "spool" / "active").iterdir())


def test_smtplib_is_not_confused_by_pipelined_bounces(instance: Instance) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused), instance.smtp() as client:
        client.sendmail("a@example.org", ["ghost@virtual.test"], "Subject: x\r\n\r\nx\r\n")


def test_delay_warning_is_sent_once(tmp_path: Path) -> None:
    warned = start_instance(
        tmp_path,
        "delay_warning_time = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 1s\n"
        "queue_run_delay = 1s\n",
    )
    try:
        queue_id = send(
            warned,
            ["friend@remote.example"],
            "slow",
            sender="alice@virtual.test",
            source="127.0.0.2",  # mynetworks: may relay
        )
        [path] = warned.wait_delivered("alice", 1)
        report = read(path)
        assert report["Subject"] == "Delayed Mail (still being retried)"
        _, status, attached = report.iter_parts()
        per_message, per_recipient = status.get_payload()
        assert per_message["X-Roost-Queue-ID"] == queue_id
        assert per_recipient["Final-Recipient"] == "rfc822; friend@remote.example"
        assert per_recipient["Action"] == "delayed"
        assert per_recipient["Status"].startswith("4.")
        assert "Will-Retry-Until" in per_recipient
        assert attached.get_content_type() == "text/rfc822-headers"
        deadline = time.monotonic() + 4  # several more attempts: still one warning
        while time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(warned.delivered("alice")) == 1
        assert warned.log().count(f"{queue_id}: sender delay notification: ") == 1
    finally:
        warned.daemon.stop()


async def _commit_unannounced(queue: Path, recipient: str) -> str:
    """Commit a message into the daemon's ``incoming/`` as an SMTP worker does, from
    another process, without the commit notice (a worker killed between the two)."""
    async with Spool(queue, spare_files=0) as spool:
        async with spool.new_message() as writer:
            await writer.write(b"From: <sender@example.org>\r\nSubject: orphan\r\n\r\nhello\r\n")
            envelope = Envelope(
                envelope_sender="sender@example.org",
                recipients=(Recipient(recipient),),
                arrival_time=time.time(),
                protocol=WithProtocol.ESMTP,
                client_address="127.0.0.1",
                client_hostname="localhost",
                helo_name="client.example",
            )
            await writer.commit(envelope)
        return writer.queue_id


def test_a_committed_message_nobody_announced_is_taken_up_by_the_queue_scan(
    tmp_path: Path,
) -> None:
    scanned = start_instance(tmp_path, "queue_run_delay = 1s\n")
    try:
        queue_id = asyncio.run(_commit_unannounced(scanned.queue, "alice@virtual.test"))
        assert scanned.queued() == [queue_id]
        [path] = scanned.wait_delivered("alice", 1, timeout=20)
        assert read(path)["Subject"] == "orphan"
        deadline = time.monotonic() + 3  # more scans: neither taken up nor delivered again
        while time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(scanned.delivered("alice")) == 1
        assert scanned.queued() == []
        log = scanned.log()
        assert log.count(f"{queue_id}: taken up from incoming/ without a commit notice") == 1
        assert f"{queue_id}: to=<alice@virtual.test>" in log
    finally:
        scanned.daemon.stop()

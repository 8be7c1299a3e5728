"""The SMTP server with smtplib: dialogue, durable enqueue, AUTH, TLS (RFC 5321, 3207, 4954)."""

from __future__ import annotations

import json
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.instance import PASSWORD, Instance, client_tls, start_instance


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    # the queue manager stays off so the tests can read what was queued
    running = start_instance(
        tmp_path_factory.mktemp("smtp"),
        "smtpd_recipient_limit = 5\nmaster_service_disable = qmgr\n",
    )
    yield running
    running.daemon.stop()


def test_greeting_and_ehlo_keywords(instance: Instance) -> None:
    with socket.create_connection(("127.0.0.1", instance.ports["smtp"])) as sock:
        assert sock.recv(1024) == b"220 mx.roost.test ESMTP roost\r\n"
    with instance.smtp() as client:
        code, text = client.ehlo("client.example")
        assert code == 250
        assert text.decode().splitlines() == [
            "mx.roost.test",
            "PIPELINING",
            "SIZE 10240000",
            "VRFY",
            "STARTTLS",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "DSN",
            "SMTPUTF8",
        ]
        assert client.helo("client.example") == (250, b"mx.roost.test")


def test_message_is_queued_durably_with_received_header(instance: Instance) -> None:
    with instance.smtp() as client:
        client.ehlo("client.example")
        code, text = client.mail("sender@example.org", ["RET=HDRS", "ENVID=abc+2Bdef"])
        assert (code, text) == (250, b"2.1.0 Ok")
        code, text = client.rcpt(
            "alice@virtual.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;alice+2B1@virtual.test"]
        )
        assert (code, text) == (250, b"2.1.5 Ok")
        code, text = client.data(b"Subject: hi\r\n\r\nline one\r\n.leading dot\r\n")
    assert code == 250
    assert text.startswith(b"2.0.0 Ok: queued as ")
    queue_id = text.decode().rsplit(" ", 1)[1]
    assert queue_id in instance.queued()
    content = instance.content(queue_id)
    assert content.startswith(b"Received: from client.example (unknown [127.0.0.1])\r\n")
    assert f"by mx.roost.test (roost) with ESMTP id {queue_id}\r\n".encode() in content
    assert b"\tfor <alice@virtual.test>; " in content
    assert content.endswith(b"Subject: hi\r\n\r\nline one\r\n.leading dot\r\n")
    envelope = json.loads(instance.envelope(queue_id))
    assert envelope["envelope_sender"] == "sender@example.org"
    assert envelope["ret"] == "HDRS" and envelope["envid"] == "abc+def"
    [recipient] = envelope["recipients"]
    assert recipient["address"] == "alice@virtual.test"
    assert recipient["notify"] == ["SUCCESS", "FAILURE"]
    assert recipient["orcpt"] == "rfc822;alice+1@virtual.test"
    log = instance.log()
    assert f"{queue_id}: client=unknown[127.0.0.1]" in log
    assert (
        f"{queue_id}: from=<sender@example.org>, size={len(content)}, nrcpt=1 (queue active)" in log
    )


def test_unknown_virtual_and_local_users_are_refused_at_rcpt(instance: Instance) -> None:
    with instance.smtp() as client:
        client.ehlo("client.example")
        client.mail("sender@example.org")
        assert client.rcpt("nobody@virtual.test") == (
            550,
            b"5.1.1 <nobody@virtual.test>: Recipient address rejected:"
            b" User unknown in virtual mailbox table",
        )
        assert client.rcpt("no-such-user@roost.test")[0] == 550
        assert client.rcpt("postmaster@roost.test") == (250, b"2.1.5 Ok")
    assert (
        "NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 550 5.1.1 <nobody@virtual.test>:"
        " Recipient address rejected: User unknown in virtual mailbox table;"
        " from=<sender@example.org> to=<nobody@virtual.test> proto=ESMTP helo=<client.example>"
    ) in instance.log()


def test_relay_is_refused_for_untrusted_and_allowed_for_mynetworks(instance: Instance) -> None:
    with instance.smtp(source="127.0.0.1") as client:
        client.ehlo("client.example")
        client.mail("sender@example.org")
        assert client.rcpt("victim@remote.example") == (
            554,
            b"5.7.1 <victim@remote.example>: Relay access denied",
        )
    with instance.smtp(source="127.0.0.2") as client:
        client.ehlo("client.example")
        client.mail("sender@example.org")
        assert client.rcpt("friend@remote.example") == (250, b"2.1.5 Ok")


def test_sequence_errors_and_the_session_goes_on(instance: Instance) -> None:
    with instance.smtp() as client:
        assert client.docmd("RCPT TO:<alice@virtual.test>") == (
            503,
            b"5.5.1 Error: need MAIL command",
        )
        assert client.docmd("DATA") == (503, b"5.5.1 Error: need MAIL command")
        client.ehlo("client.example")
        client.mail("a@example.org")
        assert client.docmd("MAIL FROM:<b@example.org>") == (
            503,
            b"5.5.1 Error: nested MAIL command",
        )
        assert client.docmd("DATA") == (503, b"5.5.1 Error: need RCPT command")
        assert client.docmd("FOO bar") == (502, b"5.5.2 Error: command not recognized")
        assert client.docmd("MAIL", "TO:<x>")[0] == 503
        assert client.docmd("RSET") == (250, b"2.0.0 Ok")
        assert client.docmd("MAIL FROM:<no-closing@example.org") == (
            501,
            b"5.1.7 Bad sender address syntax",
        )
        assert client.docmd("MAIL FROM:<a@example.org> FOO=bar") == (
            555,
            b"5.5.4 Unsupported option: FOO",
        )
        assert client.docmd("NOOP") == (250, b"2.0.0 Ok")


def test_size_limit_at_mail_and_in_data(instance: Instance) -> None:
    before = instance.queued()
    with instance.smtp() as client:
        client.ehlo("client.example")
        assert client.mail("a@example.org", ["SIZE=999999999"]) == (
            552,
            b"5.3.4 Message size exceeds fixed limit",
        )
        client.mail("a@example.org")
        client.rcpt("alice@virtual.test")
        code, text = client.data(b"x" * 998 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 10400)
        assert (code, text) == (552, b"5.3.4 Message size exceeds fixed limit")
        assert client.noop() == (250, b"2.0.0 Ok")
    assert instance.queued() == before
    assert not [p for p in (instance.queue / "incoming").iterdir() if p.stem not in before]


def test_recipient_limit(instance: Instance) -> None:
    with instance.smtp() as client:
        client.ehlo("client.example")
        client.mail("a@example.org")
        for _ in range(5):
            assert client.rcpt("alice@virtual.test")[0] == 250
        assert client.rcpt("alice@virtual.test") == (452, b"4.5.3 Error: too many recipients")


def test_submission_requires_tls_then_auth(instance: Instance) -> None:
    with instance.smtp("submission") as client:
        client.ehlo("client.example")
        assert not client.has_extn("auth")
        assert client.mail("alice@virtual.test") == (
            530,
            b"5.7.0 Must issue a STARTTLS command first",
        )
        assert client.docmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")[0] == 538
        client.starttls(context=client_tls())
        client.ehlo("client.example")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert client.mail("alice@virtual.test") == (530, b"5.7.0 Authentication required")
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login("alice", "wrong password")
        assert failed.value.smtp_code == 535
        client.login("alice", PASSWORD)
        assert client.mail("alice@virtual.test") == (250, b"2.1.0 Ok")
        assert client.rcpt("anyone@remote.example") == (250, b"2.1.5 Ok")
        code, text = client.data(b"Subject: from submission\r\n\r\nbody\r\n")
        assert code == 250
    queue_id = text.decode().rsplit(" ", 1)[1]
    content = instance.content(queue_id)
    assert b"with ESMTPSA id" in content
    assert b"(using TLSv1.3 with cipher" in content
    assert b"Message-ID: <" in content and f".{queue_id}@mx.roost.test>".encode() in content
    assert b"\r\nDate: " in content
    log = instance.log()
    assert "roost/submission/smtpd" in log
    assert "SASL PLAIN authentication failed: authentication failure, sasl_username=alice" in log
    client = f"{queue_id}: client=unknown[127.0.0.1]"
    assert f"{client}, sasl_method=PLAIN, sasl_username=alice@virtual.test" in log


def test_submissions_is_implicit_tls_with_auth_login(instance: Instance) -> None:
    with instance.smtp("submissions") as client:
        client.ehlo("client.example")
        assert "STARTTLS" not in client.esmtp_features
        client.login("bob", "bob's secret")  # smtplib prefers... PLAIN; force LOGIN below
    with instance.smtp("submissions") as client:
        client.ehlo("client.example")
        client.user, client.password = "bob", "bob's secret"
        assert client.auth("LOGIN", client.auth_login)[0] == 235


def test_client_disconnect_mid_data_leaves_nothing(instance: Instance) -> None:
    before = set((instance.queue / "incoming").iterdir())
    with socket.create_connection(("127.0.0.1", instance.ports["smtp"])) as sock:
        sock.recv(1024)
        sock.sendall(
            b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@virtual.test>\r\nDATA\r\n"
        )
        received = b""
        while b"354" not in received:
            received += sock.recv(4096)
        sock.sendall(b"Subject: cut\r\n\r\n" + b"z" * 300_000)
    with instance.smtp() as client:  # the server goes on
        assert client.noop()[0] == 250
    # the session removes its unfinished queue file as it ends, a moment after the cut
    deadline = time.monotonic() + 10
    while (left := set((instance.queue / "incoming").iterdir())) != before:
        assert time.monotonic() < deadline, left
        time.sleep(0.05)


def test_pipelined_transaction_in_one_write(instance: Instance, tmp_path: Path) -> None:
    with socket.create_connection(("127.0.0.1", instance.ports["smtp"])) as sock:
        sock.settimeout(10)
        assert sock.recv(1024).startswith(b"220 ")
        sock.sendall(
            b"EHLO pipe.example\r\nMAIL FROM:<p@example.org>\r\nRCPT TO:<alice@virtual.test>\r\n"
            b"RCPT TO:<nobody@virtual.test>\r\nDATA\r\n"
        )
        replies = b""
        while b"354 " not in replies:
            replies += sock.recv(4096)
        sock.sendall(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        while b"221 " not in replies:
            chunk = sock.recv(4096)
            if not chunk:
                break
            replies += chunk
    lines = [
        line for line in replies.decode().split("\r\n") if line and not line.startswith("250-")
    ]
    assert [line[:3] for line in lines] == ["250", "250", "250", "550", "354", "250", "221"]

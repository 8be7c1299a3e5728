"""Real SMTP clients against the daemon: swaks (plain, STARTTLS, AUTH, pipelining, 8-bit,
SIZE) and the classic netcat dialogue; SMTPUTF8 over a raw socket (this swaks has no
SMTPUTF8 option).

See Also: swaks(1); nc(1) (netcat-openbsd); RFC 1870 (SIZE), RFC 2920 (PIPELINING),
RFC 3207 (STARTTLS), RFC 4954 (AUTH), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_program
from tests.e2e.instance import PASSWORD, Instance, start_instance

HOST = "mx.roost.test"
SIZE_LIMIT = 20000
# The SMTP server commits messages to incoming/; without the queue manager they stay there.
KEEP_QUEUED = "master_service_disable = qmgr\n"


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(
        tmp_path_factory.mktemp("programs"), KEEP_QUEUED + f"message_size_limit = {SIZE_LIMIT}\n"
    )
    yield running
    running.daemon.stop()


def swaks(instance: Instance, service: str, *args: str) -> tuple[int, list[str]]:
    """Run swaks against ``service``; return its exit status and transcript lines."""
    program = require_program("swaks")
    result = subprocess.run(
        [
            program,
            "--server",
            f"127.0.0.1:{instance.ports[service]}",
            "--helo",
            "client.example",
            "--timeout",
            "30",
            *args,
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    return result.returncode, output.splitlines()


def queue_id_in(lines: list[str]) -> str:
    """The queue ID from swaks's '<-  250 2.0.0 Ok: queued as ID' (or '<~' with TLS)."""
    found = [
        m.group(1)
        for line in lines
        if (m := re.fullmatch(r"<[-~]  250 2\.0\.0 Ok: queued as (\w+)", line))
    ]
    assert len(found) == 1, "\n".join(lines)
    return found[0]


def sent_data(lines: list[str]) -> bytes:
    """The message swaks says it sent: its transcript lines between 354 and the dot."""
    start = next(n for n, line in enumerate(lines) if line[4:].startswith("354 ")) + 1
    end = lines.index(" -> .", start) if " -> ." in lines else lines.index(" ~> .", start)
    return b"".join(line[4:].encode() + b"\r\n" for line in lines[start:end])


def stored(instance: Instance, queue_id: str) -> tuple[bytes, bytes, dict[str, object]]:
    """(the Received header the server added, the rest of the message, the envelope)."""
    content = instance.content(queue_id)
    end = 0
    while True:
        end = content.index(b"\r\n", end) + 2
        if content[end : end + 1] not in (b" ", b"\t"):
            break
    envelope: dict[str, object] = json.loads(instance.envelope(queue_id))
    return content[:end], content[end:], envelope


# --- swaks ------------------------------------------------------------------------------


@pytest.mark.parametrize("recipient", ["alice@virtual.test", "postmaster@roost.test"])
def test_swaks_plain_message_to_a_local_user(instance: Instance, recipient: str) -> None:
    status, lines = swaks(
        instance,
        "smtp",
        "--from",
        "sender@example.org",
        "--to",
        recipient,
        "--header",
        "Subject: swaks plain",
        "--body",
        "hello from swaks",
    )
    assert status == 0, "\n".join(lines)
    assert lines[2:5] == [
        f"<-  220 {HOST} ESMTP roost",
        " -> EHLO client.example",
        f"<-  250-{HOST}",
    ]
    assert "<-  250-SIZE 20000" in lines
    assert " -> MAIL FROM:<sender@example.org>" in lines
    assert "<-  250 2.1.0 Ok" in lines
    assert f" -> RCPT TO:<{recipient}>" in lines
    assert "<-  250 2.1.5 Ok" in lines
    assert "<-  354 End data with <CR><LF>.<CR><LF>" in lines
    assert lines[-3:] == [
        " -> QUIT",
        "<-  221 2.0.0 Bye",
        "=== Connection closed with remote host.",
    ]
    queue_id = queue_id_in(lines)
    received, message, envelope = stored(instance, queue_id)
    assert received.startswith(b"Received: from client.example (unknown [127.0.0.1])\r\n")
    assert f"by {HOST} (roost) with ESMTP id {queue_id}\r\n".encode() in received
    assert f"\tfor <{recipient}>; ".encode() in received
    assert b"\r\nSubject: swaks plain\r\n" in message
    assert f"\r\nTo: {recipient}\r\n".encode() in message
    assert b"\r\n\r\nhello from swaks\r\n" in message
    assert message == sent_data(lines)  # byte for byte what swaks sent
    assert envelope["envelope_sender"] == "sender@example.org"
    assert [r["address"] for r in envelope["recipients"]] == [recipient]  # type: ignore[attr-defined]


def test_swaks_starttls_on_port_25(instance: Instance) -> None:
    status, lines = swaks(
        instance, "smtp", "-tls", "--from", "sender@example.org", "--to", "alice@virtual.test"
    )
    assert status == 0, "\n".join(lines)
    assert "<-  250-STARTTLS" in lines
    assert " -> STARTTLS" in lines
    assert "<-  220 Ready to start TLS" in lines or "<-  220 2.0.0 Ready to start TLS" in lines
    assert any(line.startswith("=== TLS started with cipher TLSv1.3:") for line in lines)
    assert f'=== TLS peer DN="/CN={HOST}"' in lines
    # after STARTTLS the EHLO is repeated and STARTTLS is no longer offered
    assert " ~> EHLO client.example" in lines
    assert "<~  250-STARTTLS" not in lines
    queue_id = queue_id_in(lines)
    received, _, envelope = stored(instance, queue_id)
    assert f"with ESMTPS id {queue_id}".encode() in received
    assert b"(using TLSv1.3 with cipher " in received
    assert envelope["protocol"] == "ESMTPS"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth_on_submission(instance: Instance, mechanism: str) -> None:
    status, lines = swaks(
        instance,
        "submission",
        "-tls",
        "--auth",
        mechanism,
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
        "--from",
        "alice@virtual.test",
        "--to",
        "friend@remote.example",
    )
    assert status == 0, "\n".join(lines)
    assert "<-  250-AUTH PLAIN LOGIN" not in lines  # not offered before TLS
    assert "<~  250-AUTH PLAIN LOGIN" in lines
    assert any(line.startswith(f" ~> AUTH {mechanism}") for line in lines)
    if mechanism == "LOGIN":
        assert "<~  334 VXNlcm5hbWU6" in lines and "<~  334 UGFzc3dvcmQ6" in lines
    assert "<~  235 2.7.0 Authentication successful" in lines
    queue_id = queue_id_in(lines)
    received, message, envelope = stored(instance, queue_id)
    assert f"with ESMTPSA id {queue_id}".encode() in received
    assert envelope["sasl_method"] == mechanism
    assert envelope["sasl_username"] == "alice@virtual.test"
    assert b"\r\nMessage-Id: <" in message  # swaks's own; no second one is added
    assert message.count(b"Message-I") == 1
    assert (
        f"{queue_id}: client=unknown[127.0.0.1], sasl_method={mechanism},"
        " sasl_username=alice@virtual.test"
    ) in instance.log()


def test_swaks_auth_on_submissions_implicit_tls(instance: Instance) -> None:
    status, lines = swaks(
        instance,
        "submissions",
        "--tls-on-connect",
        "--auth",
        "LOGIN",
        "--auth-user",
        "bob",
        "--auth-password",
        "bob's secret",
        "--from",
        "bob@virtual.test",
        "--to",
        "friend@remote.example",
    )
    assert status == 0, "\n".join(lines)
    assert f"<~  220 {HOST} ESMTP roost" in lines  # the greeting is already encrypted
    assert "<~  235 2.7.0 Authentication successful" in lines
    queue_id = queue_id_in(lines)
    _, _, envelope = stored(instance, queue_id)
    assert envelope["sasl_username"] == "bob@virtual.test"


def test_swaks_wrong_password_is_refused(instance: Instance) -> None:
    before = instance.queued()
    status, lines = swaks(
        instance,
        "submission",
        "--local-interface",
        "127.0.0.30",
        "-tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "bob",
        "--auth-password",
        "not bob's secret",
        "--from",
        "bob@virtual.test",
        "--to",
        "friend@remote.example",
    )
    assert status != 0
    assert "<~* 535 5.7.8 Error: authentication failed: authentication failure" in lines
    assert instance.queued() == before
    assert (
        "warning: unknown[127.0.0.30]: SASL PLAIN authentication failed:"
        " authentication failure, sasl_username=bob"
    ) in instance.log()


def test_swaks_pipelining(instance: Instance) -> None:
    status, lines = swaks(
        instance,
        "smtp",
        "--pipeline",
        "--from",
        "sender@example.org",
        "--to",
        "alice@virtual.test,bob@virtual.test,nobody@virtual.test",
    )
    # one recipient refused: swaks still sends the message to the others
    start = lines.index(" -> MAIL FROM:<sender@example.org>")
    assert lines[start : start + 5] == [
        " -> MAIL FROM:<sender@example.org>",
        " -> RCPT TO:<alice@virtual.test>",
        " -> RCPT TO:<bob@virtual.test>",
        " -> RCPT TO:<nobody@virtual.test>",
        " -> DATA",
    ]  # all sent before any reply was read
    assert lines[start + 5 : start + 10] == [
        "<-  250 2.1.0 Ok",
        "<-  250 2.1.5 Ok",
        "<-  250 2.1.5 Ok",
        "<** 550 5.1.1 <nobody@virtual.test>: Recipient address rejected:"
        " User unknown in virtual mailbox table",
        "<-  354 End data with <CR><LF>.<CR><LF>",
    ]
    queue_id = queue_id_in(lines)
    _, _, envelope = stored(instance, queue_id)
    assert [r["address"] for r in envelope["recipients"]] == [  # type: ignore[attr-defined]
        "alice@virtual.test",
        "bob@virtual.test",
    ]
    assert status == 0  # some recipients were accepted


def test_swaks_relay_attempt(instance: Instance) -> None:
    status, lines = swaks(
        instance,
        "smtp",
        "--from",
        "sender@example.org",
        "--to",
        "victim@remote.example",
        "--quit-after",
        "RCPT",
    )
    assert status != 0
    assert "<** 554 5.7.1 <victim@remote.example>: Relay access denied" in lines


def test_swaks_8bit_body(instance: Instance) -> None:
    body = "Grüße aus Köln — ½ € ✓"
    status, lines = swaks(
        instance,
        "smtp",
        "--from",
        "sender@example.org",
        "--to",
        "alice@virtual.test",
        "--add-header",
        "Content-Type: text/plain; charset=utf-8",
        "--add-header",
        "Content-Transfer-Encoding: 8bit",
        "--body",
        body,
    )
    assert status == 0, "\n".join(lines)
    assert "<-  250-8BITMIME" in lines
    queue_id = queue_id_in(lines)
    _, message, _ = stored(instance, queue_id)
    assert f"\r\n\r\n{body}\r\n".encode() in message  # the octets as sent, not re-encoded
    assert message == sent_data(lines)


def test_swaks_message_over_the_size_limit(instance: Instance, tmp_path: Path) -> None:
    before = instance.queued()
    attachment = tmp_path / "big.bin"
    attachment.write_bytes(bytes(range(256)) * 100)  # 25600 octets, more in base64
    status, lines = swaks(
        instance,
        "smtp",
        "--protocol",
        "ESMTP",
        "--from",
        "sender@example.org",
        "--to",
        "alice@virtual.test",
        "--attach",
        f"@{attachment}",
        "--suppress-data",
    )
    assert status != 0
    assert f"<-  250-SIZE {SIZE_LIMIT}" in lines
    assert "<-  354 End data with <CR><LF>.<CR><LF>" in lines
    assert "<** 552 5.3.4 Message size exceeds fixed limit" in lines
    assert lines[-3:] == [
        " -> QUIT",
        "<-  221 2.0.0 Bye",
        "=== Connection closed with remote host.",
    ]
    assert instance.queued() == before
    assert re.search(
        rf"warning: unknown\[127\.0\.0\.1\]: message too large: \d+ bytes \(limit {SIZE_LIMIT}\)",
        instance.log(),
    )


# --- raw socket: SIZE=, BODY=8BITMIME, SMTPUTF8 --------------------------------------------


class Wire:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 30)
        self.file = self.sock.makefile("rb")
        assert self.file.readline() == f"220 {HOST} ESMTP roost\r\n".encode()

    def command(self, line: bytes) -> list[bytes]:
        self.sock.sendall(line + b"\r\n")
        lines = [self.file.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(self.file.readline())
        return [x.removesuffix(b"\r\n") for x in lines]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_size_parameter(instance: Instance) -> None:
    wire = Wire(instance.ports["smtp"])
    try:
        assert f"250-SIZE {SIZE_LIMIT}".encode() in wire.command(b"EHLO client.example")
        assert wire.command(f"MAIL FROM:<a@example.org> SIZE={SIZE_LIMIT + 1}".encode()) == [
            b"552 5.3.4 Message size exceeds fixed limit"
        ]
        assert wire.command(b"MAIL FROM:<a@example.org> SIZE=12x") == [
            b"501 5.5.4 Bad SIZE parameter value"
        ]
        assert wire.command(f"MAIL FROM:<a@example.org> SIZE={SIZE_LIMIT}".encode()) == [
            b"250 2.1.0 Ok"
        ]
    finally:
        wire.close()


def test_8bitmime_and_smtputf8(instance: Instance) -> None:
    wire = Wire(instance.ports["smtp"])
    try:
        assert wire.command(b"EHLO client.example")[-1] == b"250 SMTPUTF8"
        assert wire.command("MAIL FROM:<jörg@exämple.org> BODY=8BITMIME SMTPUTF8".encode()) == [
            b"250 2.1.0 Ok"
        ]
        assert wire.command(b"RCPT TO:<alice@virtual.test>") == [b"250 2.1.5 Ok"]
        assert wire.command(b"DATA") == [b"354 End data with <CR><LF>.<CR><LF>"]
        message = "From: Jörg <jörg@exämple.org>\r\nSubject: Grüße\r\n\r\nÜberall ✓\r\n".encode()
        [result] = wire.command(message + b".")
        assert result.startswith(b"250 2.0.0 Ok: queued as ")
        queue_id = result.decode().rsplit(" ", 1)[1]
        assert wire.command(b"QUIT") == [b"221 2.0.0 Bye"]
    finally:
        wire.close()
    received, stored_message, envelope = stored(instance, queue_id)
    assert stored_message == message
    assert f"with UTF8SMTP id {queue_id}".encode() in received
    assert envelope["envelope_sender"] == "jörg@exämple.org"
    assert envelope["smtputf8"] is True
    assert envelope["body_type"] == "8BITMIME"


# --- netcat -----------------------------------------------------------------------------

DIALOGUE = (
    r"HELO me\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@virtual.test>\r\n"
    r"DATA\r\nSubject: nc\r\n\r\nhi\r\n.\r\nQUIT\r\n"
)


def netcat(instance: Instance, *flags: str) -> list[str]:
    nc = require_program("nc")
    result = subprocess.run(
        [
            "bash",
            "-c",
            f"printf '{DIALOGUE}' | {nc} {' '.join(flags)} 127.0.0.1 {instance.ports['smtp']}",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().split("\r\n")


def check_netcat_transcript(instance: Instance, lines: list[str]) -> None:
    assert lines[:5] == [
        f"220 {HOST} ESMTP roost",
        f"250 {HOST}",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    assert re.fullmatch(r"250 2\.0\.0 Ok: queued as \w+", lines[5])
    assert lines[6:] == ["221 2.0.0 Bye", ""]
    queue_id = lines[5].rsplit(" ", 1)[1]
    received, message, envelope = stored(instance, queue_id)
    assert received.startswith(b"Received: from me (unknown [127.0.0.1])\r\n")
    assert f"by {HOST} (roost) with SMTP id {queue_id}\r\n".encode() in received
    assert message == b"Subject: nc\r\n\r\nhi\r\n"
    assert envelope["protocol"] == "SMTP"
    assert envelope["helo_name"] == "me"


def test_netcat_dialogue(instance: Instance) -> None:
    # netcat-openbsd without -q/-N keeps its socket open after stdin ends, reads until the
    # server closes after QUIT, then exits.
    check_netcat_transcript(instance, netcat(instance))


def test_netcat_dialogue_with_q(instance: Instance) -> None:
    check_netcat_transcript(instance, netcat(instance, "-q", "5"))

"""Bad input to the SMTP server: junk commands, long lines, NUL and 8-bit bytes, wrong order,
AUTH errors, disconnects, SMTP smuggling, bare newlines and dot-stuffing.

Everything goes over raw sockets so that the bytes on the wire are exactly the test's.

See Also: RFC 5321 §4.1.1.4, §4.5.2, §4.5.3.1; RFC 3207 §4.2; RFC 4954 §4;
https://www.postfix.org/smtp-smuggling.html (CVE-2023-51764).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Self

import pytest

from tests.e2e.instance import Instance, client_tls, start_instance

HOST = "mx.roost.test"
# What aiosmtpd says to STARTTLS today; test_starttls_reply_has_an_enhanced_status_code
# expects "220 2.0.0 Ready to start TLS".
READY_TLS = ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS")
# The SMTP server commits messages to incoming/; without the queue manager they stay there.
KEEP_QUEUED = "master_service_disable = qmgr\n"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(
        tmp_path_factory.mktemp("input"),
        KEEP_QUEUED + "smtpd_sasl_auth_enable = yes\nsmtpd_tls_auth_only = no\n",
    )
    yield running
    running.daemon.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(
        tmp_path_factory.mktemp("bare-lf"), KEEP_QUEUED + "smtpd_forbid_bare_newline = reject\n"
    )
    yield running
    running.daemon.stop()


class Wire:
    """A raw client: bytes out, reply lines in (its own buffer, no makefile)."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout, (source, 0))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        """One line without CRLF; "" at end of stream."""
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest.decode("utf-8", "replace")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self) -> list[str]:
        """All lines of the next reply."""
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return lines

    def command(self, data: bytes | str) -> list[str]:
        raw = data.encode() if isinstance(data, str) else data
        self.send(raw + b"\r\n")
        return self.reply()

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        data, self.buffer = self.buffer, b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def session(instance: Instance, source: str = "127.0.0.1", *, ehlo: bool = True) -> Wire:
    wire = Wire(instance.ports["smtp"], source)
    assert wire.line() == f"220 {HOST} ESMTP roost"
    if ehlo:
        assert wire.command("EHLO client.example")[-1] == "250 SMTPUTF8"
    return wire


def queued_id(line: str) -> str:
    assert line.startswith("250 2.0.0 Ok: queued as "), line
    return line.rsplit(" ", 1)[1]


def stored_body(instance: Instance, queue_id: str) -> bytes:
    """The message as stored, without the Received header the server added on top."""
    content = instance.content(queue_id)
    assert content.startswith(b"Received: ")
    end = 0
    while True:  # the header field ends at a line that is not a continuation
        end = content.index(b"\r\n", end) + 2
        if content[end : end + 1] not in (b" ", b"\t"):
            break
    assert f" id {queue_id}".encode() in content[:end]
    return content[end:]


# --- commands -------------------------------------------------------------------------

NOT_RECOGNIZED = ["502 5.5.2 Error: command not recognized"]


@pytest.mark.parametrize(
    "command",
    ["FOO", "FOO bar baz", "TURN", "ETRN example.org", "XCLIENT ADDR=192.0.2.1", "BDAT 10 LAST"],
)
def test_unknown_commands_are_refused_and_the_session_goes_on(
    instance: Instance, command: str
) -> None:
    with session(instance) as wire:
        assert wire.command(command) == NOT_RECOGNIZED
        assert wire.command("NOOP") == ["250 2.0.0 Ok"]


def test_refused_and_informational_commands(instance: Instance) -> None:
    with session(instance) as wire:
        assert wire.command("EXPN staff") == ["502 5.5.1 EXPN command is disabled"]
        assert wire.command("VRFY") == ["501 5.5.4 Syntax: VRFY address"]
        assert wire.command("VRFY alice") == ["252 2.0.0 alice"]
        assert wire.command("HELP") == [
            "214 2.0.0 See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"
        ]
        assert wire.command("RSET now") == ["501 5.5.4 Syntax: RSET"]
        assert wire.command("QUIT now") == ["501 5.5.4 Syntax: QUIT"]
        assert wire.command("quit") == ["221 2.0.0 Bye"]
        assert wire.rest() == b""


def test_command_line_length(instance: Instance) -> None:
    with session(instance) as wire:
        # RFC 5321 §4.5.3.1.4: 512 octets including CRLF must be accepted
        assert wire.command("NOOP " + "a" * 505) == ["250 2.0.0 Ok"]
        assert wire.command("NOOP " + "a" * 600) == ["500 5.5.2 Error: line too long"]
        assert wire.command("NOOP " + "a" * 5000) == ["500 5.5.2 Error: line too long"]
        assert wire.command("RCPT TO:<" + "b" * 70_000 + "@example.org>") == [
            "500 5.5.2 Error: line too long"
        ]
        assert wire.command("NOOP") == ["250 2.0.0 Ok"]  # the session goes on


# A MAIL command that ESMTP extensions make longer than 512 octets (RFC 1870 §3: +26 for
# SIZE; RFC 3461 §4: +100 for ENVID/RET; RFC 4954 §5: +500 for AUTH).
LONG_MAIL = (
    "MAIL FROM:<"
    + "s" * 64
    + "@"
    + ".".join(["d" * 60] * 4)
    + ".example> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID="
    + "e" * 90
    + " AUTH="
    + "a" * 64
    + "@"
    + "b" * 60
    + ".example"
)


def test_extended_mail_command_may_exceed_512_octets(instance: Instance) -> None:
    assert 512 < len(LONG_MAIL) + 2 < 700
    with session(instance) as wire:
        assert wire.command(LONG_MAIL) == ["250 2.1.0 Ok"]


def test_extended_mail_command_limit_survives_other_connections(instance: Instance) -> None:
    with session(instance) as wire, session(instance, "127.0.0.3", ehlo=False):
        assert wire.command(LONG_MAIL) == ["250 2.1.0 Ok"]


def test_nul_bytes_in_commands(instance: Instance) -> None:
    with session(instance) as wire:
        assert wire.command(b"NO\x00OP") == NOT_RECOGNIZED
        assert wire.command(b"MAIL FROM:<a\x00b@example.org>") == [
            "501 5.1.7 Bad sender address syntax"
        ]
        assert wire.command("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]
        assert wire.command(b"RCPT TO:<al\x00ice@virtual.test>") == [
            "501 5.1.3 Bad recipient address syntax"
        ]
        assert wire.command("NOOP") == ["250 2.0.0 Ok"]


def test_nul_byte_in_helo_is_refused(instance: Instance) -> None:
    with session(instance, ehlo=False) as wire:
        assert wire.command(b"HELO a\x00b") == ["500 5.5.2 Error: NUL character in command"]


@pytest.mark.parametrize("helo", [b"a\x00b.example", b"a\rb.example", b"a\x01b.example"])
def test_control_characters_in_helo_never_reach_a_queue_file(
    instance: Instance, helo: bytes
) -> None:
    before = instance.queued()
    with session(instance, ehlo=False) as wire:
        wire.command(b"HELO " + helo)
        assert wire.command("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]
        assert wire.command("RCPT TO:<alice@virtual.test>") == ["250 2.1.5 Ok"]
        assert wire.command("DATA") == [START_DATA]
        [result] = wire.command(b"Subject: helo\r\n\r\nx\r\n.")
        # refused (now 451) or stored without the control character in the header
        if result.startswith("250 "):
            header = instance.content(queued_id(result)).split(b"\r\n\r\n", 1)[0]
            assert not any(byte < 0x20 and byte not in b"\t\r\n" for byte in header)
            assert b"\r" not in header.replace(b"\r\n", b"")
        else:
            assert result[0] in "45"
            assert instance.queued() == before


def test_non_ascii_in_commands(instance: Instance) -> None:
    with session(instance) as wire:
        assert wire.command("NÖOP".encode()) == ["500 5.5.2 Error: bad syntax"]
        assert wire.command("MAIL FROM:<jörg@example.org>".encode()) == [
            "553 5.6.7 Error: address needs SMTPUTF8"
        ]
        assert wire.command(b"MAIL FROM:<\xff@example.org> SMTPUTF8") == [
            "501 5.1.7 Bad sender address syntax"
        ]
        assert wire.command("MAIL FROM:<jörg@exämple.org> SMTPUTF8".encode()) == ["250 2.1.0 Ok"]
        assert wire.command("RCPT TO:<alice@virtual.test>") == ["250 2.1.5 Ok"]
        assert wire.command("EHLO exämple.org".encode())[0] == f"250-{HOST}"


def test_empty_line_and_missing_arguments(instance: Instance) -> None:
    with session(instance, ehlo=False) as wire:
        assert wire.command("") == ["500 5.5.2 Error: bad syntax"]
        assert wire.command("HELO") == ["501 5.5.4 Syntax: HELO hostname"]
        assert wire.command("EHLO") == ["501 5.5.4 Syntax: EHLO hostname"]
        assert wire.command("HELO ") == ["501 5.5.4 Syntax: HELO hostname"]
        assert wire.command("EHLO two words") == ["501 5.5.4 Syntax: EHLO hostname"]
        assert wire.command("MAIL") == ["501 5.5.4 Syntax: MAIL FROM:<address>"]
        assert wire.command("MAIL TO:<a@example.org>") == ["501 5.5.4 Syntax: MAIL FROM:<address>"]
        assert wire.command("MAIL FROM:") == ["501 5.1.7 Bad sender address syntax"]
        assert wire.command("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]
        assert wire.command("RCPT") == ["501 5.5.4 Syntax: RCPT TO:<address>"]
        assert wire.command("RCPT TO:") == ["501 5.1.3 Bad recipient address syntax"]
        assert wire.command("RCPT TO:<>") == ["501 5.1.3 Bad recipient address syntax"]
        assert wire.command("STARTTLS now") == ["501 5.5.4 Syntax: STARTTLS"]
        assert wire.command("DATA now") == ["501 5.5.4 Syntax: DATA"]
        assert wire.command("NOOP") == ["250 2.0.0 Ok"]


def test_commands_in_the_wrong_order(instance: Instance) -> None:
    need_mail = ["503 5.5.1 Error: need MAIL command"]
    with session(instance) as wire:
        assert wire.command("DATA") == need_mail
        assert wire.command("RCPT TO:<alice@virtual.test>") == need_mail
        assert wire.command("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]
        assert wire.command("DATA") == ["503 5.5.1 Error: need RCPT command"]
        assert wire.command("MAIL FROM:<b@example.org>") == ["503 5.5.1 Error: nested MAIL command"]
        assert wire.command("AUTH PLAIN AGFsaWNlAHg=") == [
            "503 5.5.1 Error: MAIL transaction in progress"
        ]
        assert wire.command("RCPT TO:<nobody@virtual.test>")[0].startswith("550 5.1.1 ")
        assert wire.command("DATA") == ["554 5.5.1 Error: no valid recipients"]
        # EHLO resets the transaction (RFC 5321 §4.1.4)
        assert wire.command("EHLO again.example")[-1] == "250 SMTPUTF8"
        assert wire.command("RCPT TO:<alice@virtual.test>") == need_mail
        assert wire.command("MAIL FROM:<a@example.org>") == ["250 2.1.0 Ok"]
        assert wire.command("RSET") == ["250 2.0.0 Ok"]
        assert wire.command("RCPT TO:<alice@virtual.test>") == need_mail


def test_auth_before_ehlo_is_refused(instance: Instance) -> None:
    with session(instance, "127.0.0.20", ehlo=False) as wire:
        assert wire.command("AUTH PLAIN") == ["503 5.5.1 Error: send HELO/EHLO first"]
        assert wire.command("HELO client.example") == [f"250 {HOST}"]
        assert wire.command("AUTH PLAIN") == ["503 5.5.1 Error: send HELO/EHLO first"]


@pytest.mark.parametrize(
    ("dialogue", "expected"),
    [
        ([b"AUTH"], ["501 5.5.4 Syntax: AUTH mechanism [initial-response]"]),
        ([b"AUTH FOO"], ["504 5.5.4 Unrecognized authentication type"]),
        ([b"AUTH CRAM-MD5"], ["504 5.5.4 Unrecognized authentication type"]),
        ([b"AUTH PLAIN", b"*"], ["334 ", "501 5.7.0 Authentication aborted"]),
        ([b"AUTH LOGIN", b"*"], ["334 VXNlcm5hbWU6", "501 5.7.0 Authentication aborted"]),
        (
            [b"AUTH LOGIN YWxpY2U=", b"*"],
            ["334 UGFzc3dvcmQ6", "501 5.7.0 Authentication aborted"],
        ),
        ([b"AUTH PLAIN !!!notbase64"], ["501 5.5.2 Cannot decode response"]),
        ([b"AUTH LOGIN", b"%%%"], ["334 VXNlcm5hbWU6", "501 5.5.2 Cannot decode response"]),
        ([b"auth plain", b"*"], ["334 ", "501 5.7.0 Authentication aborted"]),
    ],
    ids=[
        "no-mechanism",
        "unknown",
        "not-offered",
        "plain-*",
        "login-*",
        "login-password-*",
        "bad-base64",
        "login-bad-base64",
        "lower-case",
    ],
)
def test_auth_errors(instance: Instance, dialogue: list[bytes], expected: list[str]) -> None:
    with session(instance, "127.0.0.21") as wire:
        got = []
        for step in dialogue:
            got.append(wire.command(step)[0])
        assert got == expected
        assert wire.command("NOOP") == ["250 2.0.0 Ok"]  # the session goes on


def test_auth_with_empty_or_malformed_credentials_fails(instance: Instance) -> None:
    failed = "535 5.7.8 Error: authentication failed: authentication failure"
    with session(instance, "127.0.0.22") as wire:
        assert wire.command("AUTH PLAIN =") == [failed]  # "=": empty initial response
        assert wire.command("AUTH PLAIN Zm9v") == [failed]  # "foo": no NUL separators
        assert wire.command("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=") == [
            "235 2.7.0 Authentication successful"
        ]
        assert wire.command("AUTH LOGIN") == ["503 5.5.1 Error: already authenticated"]


# --- STARTTLS -----------------------------------------------------------------------------


def test_plaintext_pipelined_after_starttls_is_discarded(instance: Instance) -> None:
    """RFC 3207 §4.2 (the CVE-2011-0411 injection): commands sent with STARTTLS in the
    clear must not run inside the TLS session."""
    with session(instance) as wire:
        wire.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        assert wire.line() in READY_TLS
        assert wire.buffer == b""
        tls = client_tls().wrap_socket(wire.sock, server_hostname=HOST)
        tls.sendall(b"EHLO client.example\r\n")
        replies = b""
        while not replies.endswith(b"250 SMTPUTF8\r\n"):
            replies += tls.recv(4096)
        assert replies.startswith(f"250-{HOST}\r\n".encode())  # no reply to the MAIL
        tls.sendall(b"RCPT TO:<alice@virtual.test>\r\n")
        assert tls.recv(4096) == b"503 5.5.1 Error: need MAIL command\r\n"
        tls.sendall(b"STARTTLS\r\n")
        assert tls.recv(4096) == b"554 5.5.1 Error: TLS already active\r\n"
        tls.close()


def test_starttls_reply_has_an_enhanced_status_code(instance: Instance) -> None:
    with session(instance) as wire:
        assert wire.command("STARTTLS") == ["220 2.0.0 Ready to start TLS"]


# --- DATA -------------------------------------------------------------------------------


def transaction(wire: Wire, recipient: str = "alice@virtual.test") -> None:
    assert wire.command("MAIL FROM:<sender@example.org>") == ["250 2.1.0 Ok"]
    assert wire.command(f"RCPT TO:<{recipient}>") == ["250 2.1.5 Ok"]
    assert wire.command("DATA") == [START_DATA]


def test_disconnect_mid_data_keeps_the_earlier_messages(instance: Instance) -> None:
    before = set(instance.queued())
    with session(instance) as wire:
        ids = []
        for n in (1, 2):
            transaction(wire)
            ids.append(queued_id(wire.command(f"Subject: kept {n}\r\n\r\nbody {n}\r\n.")[0]))
        transaction(wire)
        wire.send(b"Subject: cut\r\n\r\n" + b"z" * 200_000)
    with session(instance) as wire:  # the server goes on
        assert wire.command("NOOP") == ["250 2.0.0 Ok"]
    assert set(instance.queued()) == before | set(ids)
    for n, queue_id in enumerate(ids, 1):
        assert stored_body(instance, queue_id) == f"Subject: kept {n}\r\n\r\nbody {n}\r\n".encode()
    expected = sorted(before | set(ids))  # one queue file per message
    deadline = time.monotonic() + 10
    while (files := sorted(p.name for p in (instance.queue / "incoming").iterdir())) != expected:
        assert time.monotonic() < deadline, files  # the cut message's file is removed
        time.sleep(0.05)


SMUGGLING_PATTERNS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r.\r",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n.\r\r\n",
    b"\r\n .\r\n",
]
SMUGGLED = (
    b"MAIL FROM:<ceo@virtual.test>\r\nRCPT TO:<bob@virtual.test>\r\nDATA\r\n"
    b"From: ceo@virtual.test\r\nSubject: smuggled\r\n\r\nwire the money"
)


@pytest.mark.parametrize("pattern", SMUGGLING_PATTERNS, ids=repr)
def test_smtp_smuggling_yields_one_message(instance: Instance, pattern: bytes) -> None:
    before = set(instance.queued())
    with session(instance) as wire:
        transaction(wire)
        wire.send(b"Subject: real\r\n\r\nbody" + pattern + SMUGGLED + b"\r\n.\r\n")
        [result] = wire.reply()
        queue_id = queued_id(result)
        assert wire.command("QUIT") == ["221 2.0.0 Bye"]
        assert wire.rest() == b""
    assert set(instance.queued()) == before | {queue_id}
    body = stored_body(instance, queue_id)
    assert body.startswith(b"Subject: real\r\n\r\nbody")
    # the smuggled transaction is content of the one message, not a second message
    assert b"MAIL FROM:<ceo@virtual.test>\r\nRCPT TO:<bob@virtual.test>\r\nDATA\r\n" in body
    assert body.endswith(b"Subject: smuggled\r\n\r\nwire the money\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"")  # bare LF normalized (the default)


@pytest.mark.parametrize("pattern", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\n"], ids=repr)
def test_bare_lf_is_refused_with_reject(strict: Instance, pattern: bytes) -> None:
    before = strict.queued()
    with session(strict) as wire:
        transaction(wire)
        wire.send(b"Subject: lf\r\n\r\nbody" + pattern + SMUGGLED + b"\r\n.\r\n")
        assert wire.reply() == ["550 5.5.2 Error: bare <LF> received"]
        assert wire.command("NOOP") == ["250 2.0.0 Ok"]
        transaction(wire)  # a clean message in the same session is fine
        queue_id = queued_id(wire.command(b"Subject: clean\r\n\r\nok\r\n.")[0])
    assert strict.queued() == sorted([*before, queue_id])
    assert "warning: unknown[127.0.0.1]: bare <LF> received in DATA" in strict.log()


def test_bare_cr_is_content_even_with_reject(strict: Instance) -> None:
    with session(strict) as wire:
        transaction(wire)
        queue_id = queued_id(wire.command(b"Subject: cr\r\n\r\na\rb\r\n\r.\r\n.")[0])
    assert stored_body(strict, queue_id) == b"Subject: cr\r\n\r\na\rb\r\n\r.\r\n"


def test_dot_stuffing_round_trip(instance: Instance) -> None:
    lines = [b"Subject: dots", b"", b".", b"..", b"...", b".leading", b"..two", b"middle.dot"]
    lines += [b". space", b"", b".", b"last"]
    original = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    with session(instance) as wire:
        transaction(wire)
        wire.send(stuffed + b".\r\n")
        queue_id = queued_id(wire.line())
    assert stored_body(instance, queue_id) == original


def test_pipelined_commands_after_the_end_of_data(instance: Instance) -> None:
    """RFC 2920: what follows <CRLF>.<CRLF> in the same packet is the next commands."""
    with session(instance) as wire:
        transaction(wire)
        wire.send(
            b"Subject: one\r\n\r\n1\r\n.\r\nMAIL FROM:<a@example.org>\r\n"
            b"RCPT TO:<bob@virtual.test>\r\nDATA\r\nSubject: two\r\n\r\n2\r\n.\r\nQUIT\r\n"
        )
        first = queued_id(wire.line())
        assert [wire.line() for _ in range(3)] == ["250 2.1.0 Ok", "250 2.1.5 Ok", START_DATA]
        second = queued_id(wire.line())
        assert wire.line() == "221 2.0.0 Bye"
    assert stored_body(instance, first) == b"Subject: one\r\n\r\n1\r\n"
    assert stored_body(instance, second) == b"Subject: two\r\n\r\n2\r\n"


def test_half_closed_client_gets_every_reply(instance: Instance) -> None:
    with session(instance, ehlo=False) as wire:
        wire.send(
            b"HELO me\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@virtual.test>\r\n"
            b"DATA\r\nSubject: half\r\n\r\nhi\r\n.\r\nQUIT\r\n"
        )
        wire.sock.shutdown(socket.SHUT_WR)
        lines = wire.rest().decode().split("\r\n")
    assert lines[:4] == [f"250 {HOST}", "250 2.1.0 Ok", "250 2.1.5 Ok", START_DATA]
    queued_id(lines[4])
    assert lines[5:] == ["221 2.0.0 Bye", ""]


def test_tls_session_data(instance: Instance) -> None:
    """DATA over STARTTLS: the decoder works on the decrypted stream the same way."""
    with session(instance) as wire:
        [ready] = wire.command("STARTTLS")
        assert ready in READY_TLS
        tls = client_tls().wrap_socket(wire.sock, server_hostname=HOST)
        wire.sock = tls
        assert wire.command("EHLO client.example")[-1] == "250 SMTPUTF8"
        transaction(wire)
        wire.send(b"Subject: tls\r\n\r\n..dot\r\nbare\nlf\r\n.\r\n")
        queue_id = queued_id(wire.line())
        assert wire.command("QUIT") == ["221 2.0.0 Bye"]
    assert stored_body(instance, queue_id) == b"Subject: tls\r\n\r\n.dot\r\nbare\r\nlf\r\n"
    assert b"with ESMTPS id " + queue_id.encode() in instance.content(queue_id)

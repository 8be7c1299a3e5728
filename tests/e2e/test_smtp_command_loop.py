"""The SMTP session's own command loop (``SMTPSession._command_loop``): how command lines
are taken from the stream whatever the TCP segments, the line-length edge of the stream's
limit, replies to a client that does not read them, and the idle timer that is moved
lazily.

aiosmtpd's loop did one ``readuntil`` per line; ours takes a complete line straight from
the stream's buffer and falls back to ``readuntil`` for a partial or over-long one, so
both paths are driven here with the same bytes split in different ways.

See Also: RFC 5321 §4.5.3.1.4 (512-octet command lines), RFC 2920 (pipelining),
postconf(5) ``smtpd_timeout``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.instance import Instance, start_instance
from tests.e2e.test_smtp_input import (
    HOST,
    KEEP_QUEUED,
    START_DATA,
    Wire,
    queued_id,
    session,
    stored_body,
)

TOO_LONG = "500 5.5.2 Error: line too long"
TIMEOUT = f"421 4.4.2 {HOST} Error: timeout exceeded"


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(
        tmp_path_factory.mktemp("loop"),
        KEEP_QUEUED + "smtpd_timeout = 2s\nsmtpd_junk_command_limit = 100000\n",
    )
    yield running
    running.daemon.stop()


def trickle(wire: Wire, data: bytes, size: int) -> None:
    """Send ``data`` in pieces of ``size`` bytes, each in its own TCP segment."""
    wire.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for start in range(0, len(data), size):
        wire.send(data[start : start + size])
        time.sleep(0.002)


MESSAGE = b"Subject: split\r\n\r\n..dot-stuffed\r\nline two\r\n.\r\n"
STORED = b"Subject: split\r\n\r\n.dot-stuffed\r\nline two\r\n"


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_commands_and_data_split_into_small_segments(instance: Instance, size: int) -> None:
    """Every line arrives in pieces (CR and LF in different segments too)."""
    dialogue = [
        (b"MAIL FROM:<sender@example.org>\r\n", ["250 2.1.0 Ok"]),
        (b"RCPT TO:<alice@virtual.test>\r\n", ["250 2.1.5 Ok"]),
        (b"DATA\r\n", [START_DATA]),
    ]
    with session(instance) as wire:
        for data, expected in dialogue:
            trickle(wire, data, size)
            assert wire.reply() == expected
        trickle(wire, MESSAGE, size)
        queue_id = queued_id(wire.line())
        trickle(wire, b"QUIT\r\n", size)
        assert wire.line() == "221 2.0.0 Bye"
    assert stored_body(instance, queue_id) == STORED


def test_many_pipelined_commands_in_one_segment(instance: Instance) -> None:
    """RFC 2920: every line of one segment gets its reply, in order."""
    with session(instance) as wire:
        wire.send(
            b"NOOP\r\n" * 50
            + b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<alice@virtual.test>\r\nDATA\r\n"
            + MESSAGE
            + b"HELO again.example\r\nQUIT\r\n"
        )
        assert [wire.line() for _ in range(50)] == ["250 2.0.0 Ok"] * 50
        assert [wire.line() for _ in range(3)] == ["250 2.1.0 Ok", "250 2.1.5 Ok", START_DATA]
        queue_id = queued_id(wire.line())
        assert wire.line() == f"250 {HOST}"
        assert wire.line() == "221 2.0.0 Bye"
        assert wire.rest() == b""
    assert stored_body(instance, queue_id) == STORED


# aiosmtpd's stream limit is 1001 octets: longer lines take the LimitOverrunError path,
# shorter ones over 512 the length check; both say 500 and the session goes on.
@pytest.mark.parametrize("length", [515, 999, 1000, 1001, 1002, 1003, 1004, 4000, 70_000])
@pytest.mark.parametrize("split", [False, True])
def test_long_lines_around_the_stream_limit(instance: Instance, length: int, split: bool) -> None:
    line = b"NOOP " + b"a" * (length - 7) + b"\r\n"
    assert len(line) == length
    with session(instance) as wire:
        if split:
            trickle(wire, line, 500)
        else:
            wire.send(line)
        assert wire.reply() == [TOO_LONG]
        assert wire.command("NOOP") == ["250 2.0.0 Ok"]


def test_long_line_followed_by_pipelined_commands(instance: Instance) -> None:
    with session(instance) as wire:
        wire.send(b"NOOP " + b"x" * 3000 + b"\r\nNOOP\r\nHELO me.example\r\n")
        assert [wire.line() for _ in range(3)] == [TOO_LONG, "250 2.0.0 Ok", f"250 {HOST}"]


@pytest.mark.parametrize("length", [512, 514])
def test_lines_up_to_512_octets_are_accepted_whole_or_split(
    instance: Instance, length: int
) -> None:
    """512 octets with CRLF (RFC 5321), and aiosmtpd's 512 without it."""
    line = b"NOOP " + b"a" * (length - 7) + b"\r\n"
    assert len(line) == length
    with session(instance) as wire:
        wire.send(line)
        assert wire.reply() == ["250 2.0.0 Ok"]
        trickle(wire, line, 100)
        assert wire.reply() == ["250 2.0.0 Ok"]


def test_replies_to_a_client_that_reads_late_are_all_delivered(instance: Instance) -> None:
    """The client pipelines thousands of EHLOs before reading: the server's transport
    pauses (its buffer past the high-water mark) and every reply still arrives, in order."""
    count = 20_000
    with session(instance, ehlo=False) as wire:
        sender = threading.Thread(
            target=wire.send, args=(b"EHLO client.example\r\n" * count + b"QUIT\r\n",)
        )
        sender.start()
        time.sleep(1)  # let the replies pile up in the server
        replies = [wire.reply() for _ in range(count)]
        assert wire.line() == "221 2.0.0 Bye"
        sender.join()
    assert all(r[0] == f"250-{HOST}" and r[-1] == "250 SMTPUTF8" for r in replies)
    assert len({len(r) for r in replies}) == 1


def test_activity_keeps_the_session_past_smtpd_timeout(instance: Instance) -> None:
    """Each valid command moves the idle deadline (smtpd_timeout = 2s here); a session
    busy for longer than that stays, and times out once it is quiet."""
    with session(instance) as wire:
        for _ in range(8):  # 4 s of commands 0.5 s apart
            time.sleep(0.5)
            assert wire.command("NOOP") == ["250 2.0.0 Ok"]
        assert wire.line() == TIMEOUT
        assert wire.rest() == b""

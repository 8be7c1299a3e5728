"""The SMTP client connection's reply parser and EHLO extensions (no sockets)."""

from __future__ import annotations

import asyncio
import random

import pytest

from roost.delivery.smtpclient import (
    MAX_REPLY_BYTES,
    ClientLost,
    ClientProtocolError,
    ClientTimeout,
    _Protocol,
    parse_extensions,
)

PIPELINED = (
    b"250 2.1.0 Ok\r\n"
    b"250 2.1.5 Ok\r\n"
    b"550-5.1.1 no such\r\n550 5.1.1 user\r\n"
    b"354 End data with <CR><LF>.<CR><LF>\n"  # a bare LF ends a line too
)
EXPECTED = [
    (250, "2.1.0 Ok"),
    (250, "2.1.5 Ok"),
    (550, "5.1.1 no such\n5.1.1 user"),
    (354, "End data with <CR><LF>.<CR><LF>"),
]


def feed(data: bytes, pieces: list[int]) -> _Protocol:
    loop = asyncio.new_event_loop()  # the parser itself never uses it
    protocol = _Protocol(loop)
    loop.close()
    start = 0
    for end in [*pieces, len(data)]:
        protocol.data_received(data[start:end])
        start = end
    return protocol


def test_pipelined_replies_in_one_read_are_all_kept() -> None:
    assert list(feed(PIPELINED, []).replies) == EXPECTED


@pytest.mark.parametrize("seed", range(30))
def test_replies_split_anywhere(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(PIPELINED)), rng.randint(1, 20)))
    assert list(feed(PIPELINED, cuts).replies) == EXPECTED


def test_a_reply_without_text() -> None:
    assert list(feed(b"250\r\n", []).replies) == [(250, "")]


@pytest.mark.parametrize(
    "junk", [b"hello\r\n", b"25 short\r\n", b"2500 Ok\r\n", b"250x\r\n", b"-250 x\r\n"]
)
def test_junk_is_a_protocol_error(junk: bytes) -> None:
    protocol = feed(junk, [])
    assert isinstance(protocol.error, ClientProtocolError)
    assert not protocol.replies


def test_a_reply_too_long_is_a_protocol_error() -> None:
    endless = b"250-" + b"x" * 1000 + b"\r\n"
    protocol = feed(endless * (MAX_REPLY_BYTES // len(endless) + 2), [])
    assert isinstance(protocol.error, ClientProtocolError)
    no_line_end = feed(b"250 " + b"x" * (MAX_REPLY_BYTES + 10), [])
    assert isinstance(no_line_end.error, ClientProtocolError)


def test_end_of_input_keeps_the_replies_already_read() -> None:
    protocol = feed(b"421 4.3.2 closing\r\n", [])
    protocol.eof_received()
    assert list(protocol.replies) == [(421, "4.3.2 closing")]
    assert isinstance(protocol.error, ClientLost)


def test_extensions() -> None:
    text = "mx.example.org greets you\nPIPELINING\nSIZE 10240000\nAUTH PLAIN LOGIN\n8BITMIME"
    assert parse_extensions(text) == {
        "pipelining": "",
        "size": "10240000",
        "auth": "PLAIN LOGIN",
        "8bitmime": "",
    }
    # the pre-RFC 4954 form; the greeting line is never an extension
    assert parse_extensions("STARTTLS\nAUTH=LOGIN\nsmtputf8") == {
        "auth": "LOGIN",
        "smtputf8": "",
    }


async def test_each_wait_has_its_own_time_limit_with_one_timer() -> None:
    # the timer set for a short wait fires while a later, longer wait is in progress:
    # that wait goes on (the timer is set again for its own limit) until its reply arrives
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop)
    short = asyncio.create_task(protocol.wait(0.05))
    await asyncio.sleep(0)
    protocol.data_received(b"250 first\r\n")
    await short
    long = asyncio.create_task(protocol.wait(30.0))
    await asyncio.sleep(0.3)  # well past the first wait's limit
    assert not long.done()
    protocol.data_received(b"250 second\r\n")
    await long
    assert [code for code, _ in protocol.replies] == [250, 250]
    # and a short wait after a long one is not held to the long limit
    with pytest.raises(ClientTimeout):
        await protocol.wait(0.05)
    protocol.connection_lost(None)
    assert protocol._timer is None

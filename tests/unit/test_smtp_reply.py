"""Reply.wire: the bytes a reply is sent as, made once with the reply."""

from __future__ import annotations

import dataclasses

from roost.smtp import reply
from roost.smtp.reply import Reply


def test_wire_is_the_line_as_sent() -> None:
    assert reply.RCPT_OK.wire == b"250 2.1.5 Ok\r\n"
    assert Reply(250, "2.0.0", "Ok: queued as 4F2AB0C1D").wire == (
        b"250 2.0.0 Ok: queued as 4F2AB0C1D\r\n"
    )
    assert (reply.START_DATA + "\r\n").encode() == reply.START_DATA_WIRE


def test_wire_keeps_client_bytes_and_utf8() -> None:
    text = str(b"caf\xc3\xa9 \xff", "utf-8", "surrogateescape")  # as the command loop decodes
    assert Reply(252, "2.0.0", text).wire == b"252 2.0.0 caf\xc3\xa9 \xff\r\n"


def test_wire_is_empty_when_the_text_cannot_be_sent() -> None:
    assert Reply(250, "2.0.0", "\ud800").wire == b""  # a lone surrogate: not client bytes


def test_wire_takes_no_part_in_equality_and_follows_replace() -> None:
    assert Reply(250, "2.0.0", "Ok") == reply.OK
    assert hash(Reply(250, "2.0.0", "Ok")) == hash(reply.OK)
    changed = dataclasses.replace(reply.OK, text="Fine")
    assert changed.wire == b"250 2.0.0 Fine\r\n"
    assert reply.OK.prefixed("<a@b>: ").wire == b"250 2.0.0 <a@b>: Ok\r\n"

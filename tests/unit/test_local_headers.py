"""Delivery headers, the From_ line, DeliveryError, and the streaming CRLF/mboxrd converter."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.delivery._stream import UnixConverter
from roost.delivery.command import exit_status_error
from roost.delivery.errors import DeliveryError, QuotaExceeded
from roost.delivery.headers import delivered_to_addresses, delivery_headers, from_line


def test_delivery_headers_as_local_adds_them() -> None:
    assert delivery_headers("bob@example.org", "alice+x@example.com") == (
        b"Return-Path: <bob@example.org>\r\nDelivered-To: alice+x@example.com\r\n"
    )
    assert delivery_headers("", "alice@example.com", original_recipient="team@example.com") == (
        b"Return-Path: <>\r\nX-Original-To: team@example.com\r\nDelivered-To: alice@example.com\r\n"
    )


def test_delivery_headers_refuse_header_injection() -> None:
    with pytest.raises(ValueError, match="line break"):
        delivery_headers("a@b\r\nBcc: x", "alice@example.com")


def test_from_line() -> None:
    when = time.mktime((2024, 1, 5, 9, 3, 7, 0, 0, -1))
    assert from_line("bob@example.org", when) == b"From bob@example.org Fri Jan  5 09:03:07 2024\n"
    assert from_line("", when).startswith(b"From MAILER-DAEMON Fri Jan  5 ")


def test_delivered_to_addresses() -> None:
    header = (
        b"Received: from x\r\n"
        b"Delivered-To: Alice@Example.com\r\n"
        b"delivered-to:\r\n <bob@example.com>\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Delivered-To: not-a-header@example.com\r\n"
    )
    assert delivered_to_addresses(header) == {"alice@example.com", "bob@example.com"}


def test_delivery_error_status_must_match_temporary() -> None:
    assert DeliveryError(True, "4.2.2", "full").temporary
    with pytest.raises(ValueError):
        DeliveryError(True, "5.2.2", "full")
    with pytest.raises(ValueError):
        DeliveryError(False, "2.0.0", "ok")
    assert QuotaExceeded("x").dsn == "5.2.2"
    assert QuotaExceeded("x", temporary=True).dsn == "4.2.2"


def test_exit_status_mapping_like_postfix() -> None:
    assert exit_status_error(0, "cmd", "") is None
    tempfail = exit_status_error(75, "cmd", "try later")
    assert tempfail is not None and tempfail.temporary and tempfail.dsn == "4.3.0"
    assert tempfail.text == "temporary failure. Command output: try later"
    nouser = exit_status_error(67, "cmd", "")
    assert nouser is not None and (nouser.temporary, nouser.dsn) == (False, "5.1.1")
    other = exit_status_error(1, "cmd", "")
    assert other is not None and (other.temporary, other.dsn) == (False, "5.3.0")
    assert other.text == 'Command died with status 1: "cmd"'
    killed = exit_status_error(-9, "cmd", "")
    assert killed is not None and killed.temporary and "signal 9" in killed.text


def convert(pieces: list[bytes], *, quote: bool) -> bytes:
    converter = UnixConverter(quote_from=quote)
    out = b"".join(converter.feed(p) for p in pieces) + converter.finish()
    assert converter.size == len(out)
    assert converter.newlines == out.count(b"\n")
    return out


def reference(data: bytes, *, quote: bool) -> bytes:
    text = data.replace(b"\r\n", b"\n")
    if quote:
        text = re.sub(rb"(?m)^(>*From )", rb">\1", text)
    return text


def test_mboxrd_quoting_examples() -> None:
    data = b"From me\r\n>From you\r\n>>From them\r\nFrom\r\nFro\r\n Frommer\r\n>F\r\nFrom "
    assert convert([data], quote=True) == (
        b">From me\n>>From you\n>>>From them\nFrom\nFro\n Frommer\n>F\n>From "
    )


@given(
    st.lists(st.sampled_from([b"From ", b">", b"\r", b"\n", b"\r\n", b"x", b"F", b"rom"])),
    st.data(),
    st.booleans(),
)
def test_converter_is_independent_of_chunking(
    parts: list[bytes], data: st.DataObject, quote: bool
) -> None:
    whole = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=8)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    assert convert(pieces, quote=quote) == reference(whole, quote=quote)

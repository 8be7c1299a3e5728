"""Unit tests for roost.pop3.render: status lines, byte-stuffing, CRLF, streaming, CAPA."""

from __future__ import annotations

import io
import itertools
import poplib
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.pop3.render import (
    CHUNK_SIZE,
    MAX_RESPONSE_LINE,
    Failure,
    MultilineEncoder,
    RespCode,
    capa,
    capabilities,
    continuation,
    encode_message,
    encode_whole,
    err,
    failure,
    multiline,
    ok,
    printable,
    retr_status,
    wire_size,
)


def crlf(message: bytes) -> bytes:
    """The message with every bare LF made CRLF: what the client must receive."""
    return re.sub(rb"\r?\n", b"\r\n", message)


def poplib_decode(response: bytes) -> tuple[bytes, list[bytes], int]:
    """Read a multi-line response with the standard library's own POP3 client code."""
    client = poplib.POP3.__new__(poplib.POP3)
    client._debugging = 0
    client.file = io.BytesIO(response)
    status, lines, octets = client._getlongresp()
    assert client.file.read() == b"", "octets after the terminator"
    return status, lines, octets


def retr(message: bytes, *, body_lines: int | None = None, status: bytes = b"+OK\r\n") -> bytes:
    return status + b"".join(encode_message(message, body_lines=body_lines))


# --- status lines -------------------------------------------------------------------------


def test_ok_and_err() -> None:
    assert ok() == b"+OK\r\n"
    assert ok("2 320") == b"+OK 2 320\r\n"
    assert err("no such message") == b"-ERR no such message\r\n"


@pytest.mark.parametrize(
    ("code", "wire"),
    [
        (RespCode.IN_USE, b"-ERR [IN-USE] x\r\n"),
        (RespCode.LOGIN_DELAY, b"-ERR [LOGIN-DELAY] x\r\n"),
        (RespCode.SYS_TEMP, b"-ERR [SYS/TEMP] x\r\n"),
        (RespCode.SYS_PERM, b"-ERR [SYS/PERM] x\r\n"),
        (RespCode.AUTH, b"-ERR [AUTH] x\r\n"),
    ],
)
def test_response_codes(code: RespCode, wire: bytes) -> None:
    assert err("x", code) == wire


def test_status_lines_cannot_be_split_or_overlong() -> None:
    assert ok("a\r\nb") == b"+OK a  b\r\n"
    assert len(err("x" * 1000)) == MAX_RESPONSE_LINE
    assert err("x" * 1000).endswith(b"\r\n")
    # A cut never splits a UTF-8 sequence.
    line = err("ü" * 400)
    assert len(line) <= MAX_RESPONSE_LINE
    line.decode("utf-8")


def test_printable() -> None:
    assert printable(b"ok\x00\xff") == "ok??"
    assert printable("x" * 41) == "x" * 37 + "..."
    assert printable("x" * 40) == "x" * 40


@pytest.mark.parametrize(
    ("reason", "wire"),
    [
        (Failure.AUTH_FAILED, b"-ERR [AUTH] Authentication failed.\r\n"),
        (
            Failure.AUTH_UNAVAILABLE,
            b"-ERR [SYS/TEMP] Temporary authentication failure, try again later.\r\n",
        ),
        (Failure.IN_USE, b"-ERR [IN-USE] Maildrop is locked by another session.\r\n"),
        (Failure.LOGIN_DELAY, b"-ERR [LOGIN-DELAY] Logged in too recently, try again later.\r\n"),
        (Failure.TEMPORARY, b"-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n"),
        (Failure.PERMANENT, b"-ERR [SYS/PERM] Server failure, contact your administrator.\r\n"),
    ],
)
def test_failures(reason: Failure, wire: bytes) -> None:
    assert failure(reason) == wire


def test_continuation() -> None:
    assert continuation(b"") == b"+ \r\n"  # RFC 5034 §4: "+" SP, empty challenge
    assert continuation(b"Username:") == b"+ VXNlcm5hbWU6\r\n"


def test_multiline_stuffs_dots() -> None:
    assert multiline(ok(), ["1 a", ".x", "."]) == b"+OK\r\n1 a\r\n..x\r\n..\r\n.\r\n"
    assert multiline(ok("empty"), []) == b"+OK empty\r\n.\r\n"


# --- RETR: CRLF normalisation and byte-stuffing (RFC 1939 §3) -----------------------------


@pytest.mark.parametrize(
    ("message", "body"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),  # a CRLF is added before the terminator
        (b".", b"..\r\n.\r\n"),
        (b".\n", b"..\r\n.\r\n"),
        (b"a\n.\n..\nb.\n", b"a\r\n..\r\n...\r\nb.\r\n.\r\n"),
        (b"a\r\r\nb", b"a\r\r\nb\r\n.\r\n"),  # a bare CR stays, and is no line end
        (b"a\r.b\n", b"a\r.b\r\n.\r\n"),
        (b"\n\n", b"\r\n\r\n.\r\n"),
        (b"x\r", b"x\r\r\n.\r\n"),
    ],
)
def test_encode_message(message: bytes, body: bytes) -> None:
    assert b"".join(encode_message(message)) == body
    assert encode_whole(message) == body
    assert encode_whole(bytearray(message), status=b"+OK\r\n") == b"+OK\r\n" + body
    # The same octets whatever the chunking: byte by byte here.
    encoder = MultilineEncoder()
    pieces = [encoder.feed(message[i : i + 1]) for i in range(len(message))]
    assert b"".join(pieces) + encoder.end() == body
    assert encoder.octets == wire_size(message)


def test_stuffing_across_chunk_boundaries() -> None:
    encoder = MultilineEncoder()
    out = encoder.feed(b"line\r")  # the CR may start a CRLF: held back
    out += encoder.feed(b"\n")
    out += encoder.feed(b".dot\n")  # a dot at the start of a chunk that starts a line
    out += encoder.feed(b"mid.")
    out += encoder.feed(b".not-a-line-start\n")
    out += encoder.end()
    assert out == b"line\r\n..dot\r\nmid..not-a-line-start\r\n.\r\n"


def test_wire_size() -> None:
    assert wire_size(b"") == 0
    assert wire_size(b"a\nb\r\nc") == len(b"a\r\nb\r\nc")
    assert wire_size(b"\r\r\n\n") == len(b"\r\r\n\r\n")


def test_encoder_misuse() -> None:
    encoder = MultilineEncoder()
    encoder.end()
    with pytest.raises(RuntimeError):
        encoder.feed(b"x")
    with pytest.raises(RuntimeError):
        encoder.end()
    with pytest.raises(ValueError):
        MultilineEncoder(body_lines=-1)


# --- TOP (RFC 1939 §7) --------------------------------------------------------------------

MESSAGE = b"From: a@example.org\nSubject: hi\n\nline 1\n.line 2\nline 3\n"


@pytest.mark.parametrize(
    ("lines", "body"),
    [
        (0, b"From: a@example.org\r\nSubject: hi\r\n\r\n.\r\n"),
        (1, b"From: a@example.org\r\nSubject: hi\r\n\r\nline 1\r\n.\r\n"),
        (2, b"From: a@example.org\r\nSubject: hi\r\n\r\nline 1\r\n..line 2\r\n.\r\n"),
        (3, crlf(MESSAGE).replace(b"\n.", b"\n..") + b".\r\n"),
        (99, crlf(MESSAGE).replace(b"\n.", b"\n..") + b".\r\n"),
    ],
)
def test_top(lines: int, body: bytes) -> None:
    assert b"".join(encode_message(MESSAGE, body_lines=lines)) == body
    assert b"".join(encode_message(MESSAGE, body_lines=lines, chunk_size=1)) == body


def test_top_without_body_separator_sends_the_headers() -> None:
    assert b"".join(encode_message(b"Subject: x", body_lines=5)) == b"Subject: x\r\n.\r\n"
    assert b"".join(encode_message(b"\r\nbody\r\nmore", body_lines=1)) == b"\r\nbody\r\n.\r\n"


def test_top_stops_reading_when_complete() -> None:
    consumed = []

    def chunks() -> Iterator[bytes]:
        for index, chunk in enumerate([b"H: 1\n\n", b"one\n", b"two\n", b"three\n"]):
            consumed.append(index)
            yield chunk

    assert b"".join(encode_message(chunks(), body_lines=1)) == b"H: 1\r\n\r\none\r\n.\r\n"
    assert consumed == [0, 1]


# --- streaming a big message --------------------------------------------------------------


def test_big_message_is_streamed_in_bounded_pieces() -> None:
    line = b"." + b"x" * 98 + b"\n"  # every line stuffed, every LF doubled
    message = line * (3 * 1024 * 1024 // len(line))  # 3 MiB
    pieces = encode_message(message)
    first = next(pieces)
    assert len(first) <= 2 * CHUNK_SIZE + 2
    sizes = [len(first)] + [len(piece) for piece in pieces]
    assert len(sizes) > 40
    assert max(sizes) <= 2 * CHUNK_SIZE + 2
    assert sum(sizes) == wire_size(message) + message.count(b"\n.") + 1 + len(b".\r\n")


def test_chunk_source_is_consumed_lazily() -> None:
    consumed = []

    def chunks() -> Iterator[bytes]:
        for index in range(1000):
            consumed.append(index)
            yield b"x" * 1000 + b"\n"

    pieces = encode_message(chunks())
    next(pieces)
    assert consumed == [0]


# --- round trips through poplib -----------------------------------------------------------

_LINE = st.binary(max_size=120).map(lambda data: data.replace(b"\n", b""))
_MESSAGES = st.builds(
    lambda lines, endings, final: (
        b"".join(line + endings[index % len(endings)] for index, line in enumerate(lines)) + final
    ),
    st.lists(_LINE, max_size=30),
    st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=1, max_size=5),
    st.sampled_from([b"", b"tail", b".", b"\r"]),
)


@given(message=_MESSAGES)
def test_retr_round_trip_through_poplib(message: bytes) -> None:
    status, lines, octets = poplib_decode(retr(message, status=b"+OK 1 octets\r\n"))
    assert status == b"+OK 1 octets"
    expected = crlf(message)
    if not expected:
        assert lines == []
    elif expected.endswith(b"\r\n"):
        assert b"\r\n".join(lines) + b"\r\n" == expected
    else:
        assert b"\r\n".join(lines) == expected
    # poplib counts the octets without the stuffing: the size LIST reports, plus the CRLF
    # added when the message does not end with one.
    added = 0 if not expected or expected.endswith(b"\r\n") else 2
    assert octets == wire_size(message) + added


@given(message=_MESSAGES, cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_chunking_does_not_change_the_octets(message: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(message), *(cut % (len(message) + 1) for cut in cuts)})
    chunks = [message[a:b] for a, b in itertools.pairwise(points)]
    assert b"".join(encode_message(chunks)) == b"".join(encode_message(message))
    for lines in (0, 2):
        assert b"".join(encode_message(chunks, body_lines=lines)) == b"".join(
            encode_message(message, body_lines=lines)
        )


@given(message=_MESSAGES, body_lines=st.integers(min_value=0, max_value=40))
def test_top_round_trip_through_poplib(message: bytes, body_lines: int) -> None:
    _status, lines, _octets = poplib_decode(retr(message, body_lines=body_lines))
    expected = crlf(message).split(b"\r\n")
    if expected and expected[-1] == b"":
        expected.pop()
    header_end = expected.index(b"") if b"" in expected else len(expected)
    assert lines == expected[: header_end + 1 + body_lines]


@given(message=st.binary(max_size=3000), chunk_size=st.integers(min_value=1, max_value=64))
def test_random_octets_always_make_a_well_formed_response(message: bytes, chunk_size: int) -> None:
    body = b"".join(encode_message(message, chunk_size=chunk_size))
    assert body.endswith(b".\r\n")
    lines = body.split(b"\r\n")
    assert lines[-2:] == [b".", b""]
    assert b"\n" not in b"".join(lines)  # every LF is part of a CRLF
    assert all(
        line == b"." or not line.startswith(b".") or line.startswith(b"..") for line in lines
    )
    assert lines.index(b".") == len(lines) - 2  # the terminator comes only at the end


# --- CAPA (RFC 2449 §5) -------------------------------------------------------------------


def test_capa_full() -> None:
    wire = capa(user=True, sasl=["PLAIN", "LOGIN"], stls=True, implementation="roost")
    assert wire == (
        b"+OK Capability list follows\r\n"
        b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
        b"USER\r\nSASL PLAIN LOGIN\r\nSTLS\r\nIMPLEMENTATION roost\r\n.\r\n"
    )


def test_capa_minimal() -> None:
    assert capabilities(user=False, sasl=[], stls=False, implementation="") == (
        "TOP",
        "UIDL",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
    )


@given(message=st.one_of(_MESSAGES, st.binary(max_size=3000)))
def test_whole_message_encoding_equals_the_streaming_encoder(message: bytes) -> None:
    # encode_whole is the fast path for RETR; the streaming encoder is the reference.
    assert encode_whole(message) == b"".join(encode_message(message, chunk_size=7))
    assert encode_whole(memoryview(message), status=b"+OK x\r\n") == b"+OK x\r\n" + b"".join(
        encode_message(message)
    )


def test_retr_status() -> None:
    assert retr_status(4123) == ok("4123 octets") == b"+OK 4123 octets\r\n"
    assert retr_status(0) == b"+OK 0 octets\r\n"


def test_status_text_fast_and_slow_paths_agree() -> None:
    assert ok("plain text 123") == b"+OK plain text 123\r\n"
    assert ok("tab\there\x7f") == b"+OK tab here \r\n"
    assert err("caf\u00e9") == "-ERR caf\u00e9\r\n".encode()

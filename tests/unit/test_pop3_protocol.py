"""Unit tests for roost.pop3.protocol: octets in, POP3 command events out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.pop3.protocol import (
    MAX_AUTH_LINE,
    MAX_COMMAND_LINE,
    NEED_DATA,
    Apop,
    Auth,
    AuthResponse,
    BadCommand,
    Capa,
    Connection,
    ConnectionClosed,
    Dele,
    Event,
    LineTooLong,
    List,
    NeedData,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
    parse_command,
)


def events_of(conn: Connection) -> list[Event]:
    """Every event up to NEED_DATA or ConnectionClosed (that one included)."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def parse_all(data: bytes, *, close: bool = False) -> list[Event]:
    conn = Connection()
    conn.receive_data(data)
    if close:
        conn.receive_data(b"")
    return events_of(conn)


# --- every command -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"USER alice", User("alice")),
        (b"user alice@example.org", User("alice@example.org")),
        (b"USER  alice ", User("alice")),
        ("USER jürgen".encode(), User("jürgen")),
        (b"PASS secret", Pass("secret")),
        (b"PASS correct horse battery", Pass("correct horse battery")),  # RFC 1939 §7
        (b"PASS  lead and trail ", Pass(" lead and trail ")),
        (
            b"APOP mrose c4c9334bac560ecc979e58001b3e22fb",
            Apop("mrose", "c4c9334bac560ecc979e58001b3e22fb"),
        ),
        (
            b"APOP mrose C4C9334BAC560ECC979E58001B3E22FB",
            Apop("mrose", "c4c9334bac560ecc979e58001b3e22fb"),
        ),
        (b"STAT", Stat()),
        (b"stat", Stat()),
        (b"LIST", List(None)),
        (b"LIST 2", List(2)),
        (b"LIST 007", List(7)),
        (b"RETR 1", Retr(1)),
        (b"DELE 12", Dele(12)),
        (b"NOOP", Noop()),
        (b"RSET", Rset()),
        (b"QUIT", Quit()),
        (b"TOP 1 10", Top(1, 10)),
        (b"TOP 3 0", Top(3, 0)),
        (b"UIDL", Uidl(None)),
        (b"UIDL 4", Uidl(4)),
        (b"CAPA", Capa()),
        (b"STLS", Stls()),
        (b"AUTH", Auth(None, None)),
        (b"AUTH plain", Auth("PLAIN", None)),
        (b"AUTH PLAIN AGFsaWNlAHB3", Auth("PLAIN", b"AGFsaWNlAHB3")),
        (b"AUTH PLAIN =", Auth("PLAIN", b"=")),
        (b"AUTH SCRAM-SHA-256", Auth("SCRAM-SHA-256", None)),
        (b"STAT ", Stat()),  # a trailing space some clients send
        (b"LIST  1", List(1)),
    ],
)
def test_commands(line: bytes, expected: Event) -> None:
    assert parse_command(line) == expected
    assert parse_all(line + b"\r\n") == [expected]
    assert parse_all(line + b"\n") == [expected]  # bare LF accepted, as Dovecot


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"FOO", "Unknown command: FOO"),
        (b"FOO bar", "Unknown command: FOO"),
        (b"\xff\x01", "Unknown command: ??"),
        (b" STAT", "Unknown command"),
        (b"STATUS", "Unknown command: STATUS"),
        (b"STAT 1", "STAT takes no arguments"),
        (b"NOOP x", "NOOP takes no arguments"),
        (b"RSET 1", "RSET takes no arguments"),
        (b"QUIT now", "QUIT takes no arguments"),
        (b"CAPA x", "CAPA takes no arguments"),
        (b"STLS x", "STLS takes no arguments"),
        (b"USER", "USER needs a user name"),
        (b"USER ", "USER needs a user name"),
        (b"USER a\tb", "Invalid user name"),
        (b"USER \xff", "User name is not UTF-8"),
        (b"PASS", "PASS needs a password"),
        (b"PASS ", "PASS needs a password"),
        (b"PASS a\x00b", "Invalid password"),
        (b"PASS a\rb", "Invalid password"),
        (b"PASS \xc3", "Password is not UTF-8"),
        (b"APOP mrose", "APOP needs a user name and a digest"),
        (b"APOP mrose xyz", "APOP digest must be 32 hex digits"),
        (b"LIST 1 2", "LIST takes at most one message number"),
        (b"LIST one", "Invalid message number: one"),
        (b"LIST 0", "Invalid message number: 0"),
        (b"LIST -1", "Invalid message number: -1"),
        (b"LIST +1", "Invalid message number: +1"),
        (b"LIST 1.5", "Invalid message number: 1.5"),
        (b"LIST \xd9\xa1", "Invalid message number: ??"),  # Arabic-Indic digit one
        (b"UIDL x", "Invalid message number: x"),
        (b"RETR", "RETR needs one message number"),
        (b"RETR 1 2", "RETR needs one message number"),
        (b"RETR 0", "Invalid message number: 0"),
        (b"DELE", "DELE needs one message number"),
        (b"DELE a", "Invalid message number: a"),
        (b"TOP 1", "TOP needs a message number and a line count"),
        (b"TOP 1 -1", "Invalid line count: -1"),
        (b"TOP 1 x", "Invalid line count: x"),
        (b"TOP 0 1", "Invalid message number: 0"),
        (b"AUTH PLAIN a b", "AUTH takes a mechanism and an initial response"),
        (b"AUTH PL@IN", "Invalid SASL mechanism name: PL@IN"),
        (b"AUTH " + b"X" * 21, "Invalid SASL mechanism name: " + "X" * 21),
    ],
)
def test_bad_commands(line: bytes, reason: str) -> None:
    assert parse_command(line) == BadCommand(reason)
    conn = Connection()
    conn.receive_data(line + b"\r\n")
    assert events_of(conn) == [BadCommand(reason)]
    assert conn.bad_commands == 1


def test_long_client_text_is_cut_in_the_reason() -> None:
    event = parse_command(b"X" * 100)
    assert event == BadCommand("Unknown command: " + "X" * 37 + "...")


def test_secrets_are_not_in_repr() -> None:
    assert "hunter2" not in repr(Pass("hunter2"))
    assert "AGFsaWNl" not in repr(Auth("PLAIN", b"AGFsaWNlAHB3"))
    assert "c4c9" not in repr(Apop("mrose", "c4c9334bac560ecc979e58001b3e22fb"))
    assert "c2VjcmV0" not in repr(AuthResponse(b"c2VjcmV0"))


# --- framing ------------------------------------------------------------------------------


def test_pipelined_commands_in_one_packet() -> None:
    data = b"USER alice\r\nPASS pw\r\nSTAT\r\nLIST\r\nRETR 1\r\nTOP 1 5\r\nDELE 1\r\nQUIT\r\n"
    assert parse_all(data) == [
        User("alice"),
        Pass("pw"),
        Stat(),
        List(None),
        Retr(1),
        Top(1, 5),
        Dele(1),
        Quit(),
    ]


def test_need_data_until_the_line_ends() -> None:
    conn = Connection()
    conn.receive_data(b"LIS")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"T 1\r")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\n")
    assert conn.next_event() == List(1)
    assert conn.next_event() is NEED_DATA


def test_empty_lines_are_ignored() -> None:
    assert parse_all(b"\r\n\r\nNOOP\r\n\n") == [Noop()]


def test_connection_closed() -> None:
    assert parse_all(b"NOOP\r\n", close=True) == [Noop(), ConnectionClosed()]
    assert parse_all(b"NOOP\r\nST", close=True) == [Noop(), ConnectionClosed(incomplete=True)]


def test_data_after_close_is_a_bug() -> None:
    conn = Connection()
    conn.receive_data(b"")
    with pytest.raises(RuntimeError):
        conn.receive_data(b"NOOP\r\n")


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        Connection(max_line_size=2)


# --- limits (RFC 2449 §4) ----------------------------------------------------------------------


def test_command_line_of_255_octets_is_accepted() -> None:
    line = b"USER " + b"a" * (MAX_COMMAND_LINE - len(b"USER ") - 2) + b"\r\n"
    assert len(line) == MAX_COMMAND_LINE
    assert parse_all(line) == [User("a" * 248)]


def test_command_line_of_256_octets_is_too_long() -> None:
    line = b"USER " + b"a" * (MAX_COMMAND_LINE - len(b"USER ") - 1) + b"\r\n"
    assert len(line) == MAX_COMMAND_LINE + 1
    assert parse_all(line + b"NOOP\r\n") == [LineTooLong(MAX_COMMAND_LINE), Noop()]


def test_over_long_line_is_reported_before_its_end_and_skipped() -> None:
    conn = Connection()
    conn.receive_data(b"X" * 300)
    assert conn.next_event() == LineTooLong(MAX_COMMAND_LINE)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"Y" * 10_000)  # still the same line: not kept
    assert conn.buffered == 0
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"Z\r\nSTAT\r\n")
    assert events_of(conn) == [Stat()]
    assert conn.bad_commands == 1


def test_over_long_line_cut_by_close_is_incomplete() -> None:
    conn = Connection()
    conn.receive_data(b"X" * 300)
    conn.receive_data(b"")
    assert events_of(conn) == [LineTooLong(MAX_COMMAND_LINE), ConnectionClosed(incomplete=True)]


def test_auth_exchange_lines_and_their_limit() -> None:
    conn = Connection()
    long_response = b"A" * 4000
    conn.receive_data(b"AUTH PLAIN\r\n" + long_response + b"\r\n*\r\n\r\nNOOP\r\n")
    assert conn.next_event() == Auth("PLAIN")
    conn.start_auth_exchange()
    assert conn.in_auth_exchange
    assert conn.next_event() == AuthResponse(long_response)
    star = conn.next_event()
    assert star == AuthResponse(b"*")
    assert isinstance(star, AuthResponse)
    assert star.cancelled
    assert conn.next_event() == AuthResponse(b"")  # an empty line is an empty response
    conn.end_auth_exchange()
    assert conn.next_event() == Noop()


def test_auth_response_over_its_limit() -> None:
    conn = Connection()
    conn.start_auth_exchange()
    conn.receive_data(b"A" * MAX_AUTH_LINE)
    assert conn.next_event() == LineTooLong(MAX_AUTH_LINE)


def test_take_unprocessed_returns_and_drops_the_rest() -> None:
    conn = Connection()
    conn.receive_data(b"STLS\r\nUSER mallory\r\nPASS x")
    assert conn.next_event() == Stls()
    assert conn.take_unprocessed() == b"USER mallory\r\nPASS x"
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"CAPA\r\n")
    assert conn.next_event() == Capa()


def test_many_pipelined_lines_compact_the_buffer() -> None:
    conn = Connection()
    conn.receive_data(b"NOOP\r\n" * 20_000)
    assert events_of(conn) == [Noop()] * 20_000
    assert conn.buffered == 0


# --- properties -----------------------------------------------------------------------------

_LINES = st.sampled_from(
    [
        b"USER alice",
        b"PASS two words",
        b"STAT",
        b"LIST",
        b"LIST 3",
        b"RETR 2",
        b"TOP 1 0",
        b"UIDL",
        b"DELE 1",
        b"NOOP",
        b"RSET",
        b"CAPA",
        b"AUTH PLAIN AGFsaWNlAHB3",
        b"QUIT",
        b"LIST x",
        b"TOP 1 -1",
        b"BOGUS",
        b"",
        b"X" * 300,
    ]
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return [piece for piece in pieces if piece]


@given(
    lines=st.lists(_LINES, max_size=12),
    endings=st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=12, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_random_splits_give_the_same_events(
    lines: list[bytes], endings: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(line + ending for line, ending in zip(lines, endings, strict=False))
    whole = parse_all(data, close=True)
    conn = Connection()
    split: list[Event] = []
    for piece in _split(data, cuts):
        conn.receive_data(piece)
        split.extend(events_of(conn))
    conn.receive_data(b"")
    split.extend(events_of(conn))
    assert split == whole


@given(data=st.binary(max_size=2000))
def test_byte_by_byte_gives_the_same_events(data: bytes) -> None:
    whole = parse_all(data, close=True)
    conn = Connection()
    split: list[Event] = []
    for index in range(len(data)):
        conn.receive_data(data[index : index + 1])
        split.extend(events_of(conn))
    conn.receive_data(b"")
    split.extend(events_of(conn))
    assert split == whole


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=600), max_size=20),
    auth_toggles=st.lists(st.booleans(), max_size=40),
)
def test_random_bytes_never_raise(chunks: list[bytes], auth_toggles: list[bool]) -> None:
    conn = Connection()
    toggles = iter(auth_toggles)
    for chunk in chunks:
        conn.receive_data(chunk)
        while not isinstance(conn.next_event(), NeedData):
            if next(toggles, False):
                conn.start_auth_exchange()
            else:
                conn.end_auth_exchange()
        limit = conn.max_auth_line_size if conn.in_auth_exchange else conn.max_line_size
        assert conn.buffered < limit  # the buffer never grows past the line limit
    conn.receive_data(b"")
    assert isinstance(events_of(conn)[-1], ConnectionClosed)

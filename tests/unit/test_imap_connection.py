"""Unit tests for roost.imap.connection: framing, literals, limits, modes and states."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.imap.commands import (
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Command,
    Enable,
    Fetch,
    FetchAttribute,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Noop,
    Search,
    Select,
    StartTLS,
    Store,
    UidExpunge,
)
from roost.imap.connection import (
    LITERAL_MINUS_LIMIT,
    NEED_DATA,
    VALID_STATES,
    AuthenticateResponse,
    BadCommand,
    Connection,
    ConnectionClosed,
    ContinuationNeeded,
    Event,
    IdleDone,
    LineTooLong,
    NeedData,
    State,
    valid_in,
)
from roost.imap.grammar import COMMANDS, lookup_command
from roost.imap.response import TOOBIG, ResponseCode
from roost.imap.sequence import SequenceSet

EVENT_TYPES = (
    Command,
    ContinuationNeeded,
    BadCommand,
    LineTooLong,
    IdleDone,
    AuthenticateResponse,
    ConnectionClosed,
    NeedData,
)


def events(conn: Connection) -> list[Event]:
    """Every event up to NEED_DATA or the close."""
    found: list[Event] = []
    while True:
        event = conn.next_event()
        assert isinstance(event, EVENT_TYPES)
        if event is NEED_DATA:
            return found
        found.append(event)
        if isinstance(event, ConnectionClosed):
            return found
        assert len(found) < 10_000


def feed(conn: Connection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return events(conn)


class Session:
    """A minimal session: it does what a real one does to the connection's modes and state."""

    def __init__(self, **limits: int | bool) -> None:
        self.conn = Connection(**limits)  # type: ignore[arg-type]
        self.seen: list[Event] = []

    def feed(self, chunks: Iterable[bytes]) -> list[Event]:
        for chunk in chunks:
            self.conn.receive_data(chunk)
            self._drain()
        return self.seen

    def close(self) -> list[Event]:
        self.conn.receive_data(b"")
        self._drain()
        return self.seen

    def _drain(self) -> None:
        while True:
            event = self.conn.next_event()
            assert isinstance(event, EVENT_TYPES)
            if event is NEED_DATA:
                return
            self.seen.append(event)
            if isinstance(event, ConnectionClosed):
                return
            self._react(event)

    def _react(self, event: Event) -> None:
        conn = self.conn
        if isinstance(event, Login):
            conn.state = State.AUTHENTICATED
        elif isinstance(event, Authenticate):
            if event.initial_response is None:
                conn.start_authenticate()
            else:
                conn.state = State.AUTHENTICATED
        elif isinstance(event, AuthenticateResponse):
            conn.end_authenticate()
            conn.state = State.AUTHENTICATED
        elif isinstance(event, Select):
            conn.state = State.SELECTED
        elif isinstance(event, Idle):
            conn.start_idle(event.tag)
        elif isinstance(event, Enable) and "UTF8=ACCEPT" in event.capabilities:
            conn.utf8 = True
        elif isinstance(event, Logout):
            conn.state = State.LOGOUT


def run(data: bytes, splits: Iterable[int] | None = None, **limits: int | bool) -> list[Event]:
    """Feed ``data`` cut at ``splits`` (offsets) through a Session; return the events."""
    cuts = sorted(set(splits or ()))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return Session(**limits).feed(chunk for chunk in chunks if chunk)


# --- basic framing --------------------------------------------------------------------------


def test_commands_in_one_chunk() -> None:
    conn = Connection()
    assert feed(conn, b"1 CAPABILITY\r\n2 NOOP\r\n3 LOGOUT\r\n") == [
        Capability("1"),
        Noop("2"),
        Logout("3"),
    ]


def test_partial_line_needs_data() -> None:
    conn = Connection()
    assert feed(conn, b"1 CAPA") == []
    assert feed(conn, b"BILITY\r") == []
    assert feed(conn, b"\n") == [Capability("1")]


def test_bare_lf_and_empty_lines() -> None:
    conn = Connection()
    assert feed(conn, b"\r\n\n1 NOOP\n\r\n2 NOOP\r\n") == [Noop("1"), Noop("2")]


def test_connection_closed() -> None:
    conn = Connection()
    conn.receive_data(b"1 NOOP\r\n2 NO")
    conn.receive_data(b"")
    assert events(conn) == [Noop("1"), ConnectionClosed(incomplete=True)]
    assert conn.next_event() == ConnectionClosed(incomplete=True)
    with pytest.raises(RuntimeError):
        conn.receive_data(b"x")
    clean = Connection()
    clean.receive_data(b"")
    assert clean.next_event() == ConnectionClosed(incomplete=False)


# --- literals ---------------------------------------------------------------------------------


def test_synchronizing_literal_asks_for_continuation() -> None:
    conn = Connection()
    assert feed(conn, b"a LOGIN {3}\r\n") == [ContinuationNeeded(3, "a")]
    assert conn.awaiting_literal == 3
    assert feed(conn, b"bo") == []
    assert feed(conn, b"b {6}\r\n") == [ContinuationNeeded(6, "a")]
    assert feed(conn, b"secret\r\n") == [Login("a", "bob", "secret")]
    assert conn.awaiting_literal is None


def test_non_synchronizing_literal_needs_no_continuation() -> None:
    conn = Connection()
    assert feed(conn, b"a LOGIN {3+}\r\nbob {6+}\r\nsecret\r\n") == [Login("a", "bob", "secret")]


def test_literal_may_hold_crlf_and_look_like_commands() -> None:
    conn = Connection(state=State.AUTHENTICATED)
    message = b"b LOGOUT\r\n{5}\r\n"
    assert feed(conn, b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(message), message)) == [
        Append("a", "INBOX", (AppendMessage(message),))
    ]


def test_zero_length_literal() -> None:
    conn = Connection()
    assert feed(conn, b'a LOGIN {0}\r\n ""\r\n') == [
        ContinuationNeeded(0, "a"),
        Login("a", "", ""),
    ]


def test_oversized_synchronizing_literal_refused_before_data() -> None:
    conn = Connection(max_literal_size=100)
    [event] = feed(conn, b"a LOGIN {101}\r\n")
    assert event == BadCommand("a", "literal too large", "BAD", TOOBIG)
    # No continuation was sent, so the client sends the next command, not the data.
    assert feed(conn, b"b NOOP\r\n") == [Noop("b")]


def test_oversized_non_synchronizing_literal_is_discarded() -> None:
    conn = Connection(max_literal_size=100)
    junk = b"c LOGOUT\r\n" * 50
    data = b"a LOGIN {%d+}\r\n%s {3+}\r\nxyz\r\nb NOOP\r\n" % (len(junk), junk)
    [refused, noop] = feed(conn, data)
    assert refused == BadCommand("a", "literal too large", "BAD", TOOBIG)
    assert noop == Noop("b")


def test_discarding_keeps_nothing_in_memory() -> None:
    conn = Connection(max_literal_size=100)
    size = 8 * 1024 * 1024
    assert feed(conn, b"a LOGIN {%d+}\r\n" % size) == [
        BadCommand("a", "literal too large", "BAD", TOOBIG)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        for index in range(size // 65536):
            conn.receive_data(bytes([index % 251]) * 65536)
            assert conn.next_event() is NEED_DATA
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
    assert feed(conn, b"\r\nb NOOP\r\n") == [Noop("b")]


def test_literal_minus_limits_non_synchronizing_literals() -> None:
    conn = Connection(literal_plus=False, max_literal_size=10_000)
    ok = b"x" * LITERAL_MINUS_LIMIT
    assert feed(conn, b"a LOGIN {%d+}\r\n%s pw\r\n" % (len(ok), ok)) == [
        Login("a", ok.decode(), "pw")
    ]
    big = b"y" * (LITERAL_MINUS_LIMIT + 1)
    [refused, noop] = feed(conn, b"b LOGIN {%d+}\r\n%s pw\r\nc NOOP\r\n" % (len(big), big))
    assert isinstance(refused, BadCommand)
    assert (refused.tag, refused.status, refused.code) == ("b", "BAD", TOOBIG)
    assert noop == Noop("c")
    # A synchronizing literal of the same size is fine.
    assert feed(conn, b"d LOGIN {%d}\r\n" % len(big)) == [ContinuationNeeded(len(big), "d")]


def test_append_limit_is_separate_from_literal_limit() -> None:
    conn = Connection(state=State.AUTHENTICATED, max_literal_size=10, max_append_size=1000)
    message = b"m" * 500
    assert feed(conn, b"a APPEND {5}\r\n") == [ContinuationNeeded(5, "a")]
    assert feed(conn, b"INBOX {500}\r\n") == [ContinuationNeeded(500, "a")]
    assert feed(conn, message + b"\r\n") == [Append("a", "INBOX", (AppendMessage(message),))]
    # The mailbox literal is held to the small limit.
    [refused] = feed(conn, b"b APPEND {11}\r\n")
    assert refused == BadCommand("b", "literal too large", "BAD", TOOBIG)


def test_append_too_big_is_no_toobig() -> None:
    conn = Connection(state=State.AUTHENTICATED, max_append_size=1000)
    [refused] = feed(conn, b"a APPEND INBOX (\\Seen) {1001}\r\n")
    assert refused == BadCommand("a", "message too large", "NO", TOOBIG)
    assert bytes(refused.response()) == b"a NO [TOOBIG] message too large\r\n"
    assert feed(conn, b"b NOOP\r\n") == [Noop("b")]


def test_multiappend_total_limit() -> None:
    conn = Connection(state=State.AUTHENTICATED, max_append_size=10, max_append_total_size=15)
    data = b"a APPEND INBOX {8+}\r\n12345678 {8+}\r\n12345678 {1+}\r\nx\r\nb NOOP\r\n"
    [refused, noop] = feed(conn, data)
    assert refused == BadCommand("a", "messages too large", "NO", TOOBIG)
    assert noop == Noop("b")


def test_append_refused_before_login_without_reading_it() -> None:
    conn = Connection()
    [refused] = feed(conn, b"a APPEND INBOX {50000000}\r\n")
    assert refused == BadCommand("a", "APPEND is not valid in the not authenticated state")
    assert feed(conn, b"b NOOP\r\n") == [Noop("b")]


def test_unknown_command_literal_is_refused() -> None:
    conn = Connection()
    assert feed(conn, b"a XYZZY {5}\r\n") == [BadCommand("a", "unknown command")]
    assert feed(conn, b"+ x {5}\r\n") == [BadCommand(None, "invalid tag")]


def test_binary_literal_only_for_append_data() -> None:
    conn = Connection()
    assert feed(conn, b"a LOGIN ~{3}\r\n") == [
        BadCommand("a", "a binary literal is not allowed here")
    ]
    conn.state = State.AUTHENTICATED
    assert feed(conn, b"b APPEND INBOX ~{3+}\r\na\x00b\r\n") == [
        Append("b", "INBOX", (AppendMessage(b"a\x00b", binary=True),))
    ]


def test_command_size_limit() -> None:
    conn = Connection(max_command_size=40, max_literal_size=30)
    assert feed(conn, b"a LOGIN {20}\r\n") == [ContinuationNeeded(20, "a")]
    conn.refuse_literal()
    [refused] = feed(conn, b"a LOGIN {30}\r\n")
    assert refused == BadCommand("a", "command too long", "BAD", TOOBIG)
    [refused, noop] = feed(conn, b"a LOGIN " + b"x" * 40 + b" y\r\nb NOOP\r\n")
    assert refused == BadCommand("a", "command too long", "BAD", TOOBIG)
    assert noop == Noop("b")


def test_refuse_literal() -> None:
    conn = Connection(state=State.AUTHENTICATED)
    assert feed(conn, b"a APPEND INBOX {10}\r\n") == [ContinuationNeeded(10, "a")]
    conn.refuse_literal()
    assert feed(conn, b"b NOOP\r\n") == [Noop("b")]
    with pytest.raises(RuntimeError):
        conn.refuse_literal()


def test_large_append_costs_at_most_about_twice_its_size() -> None:
    size = 20 * 1024 * 1024
    chunk = 64 * 1024
    conn = Connection(state=State.AUTHENTICATED)
    gc.collect()
    tracemalloc.start()
    try:
        assert feed(conn, b"a APPEND INBOX {%d}\r\n" % size) == [ContinuationNeeded(size, "a")]
        for index in range(size // chunk):
            conn.receive_data(bytes([index % 251]) * chunk)
        conn.receive_data(b"\r\n")
        [command] = events(conn)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(command, Append)
    assert len(command.messages[0].data) == size
    assert command.messages[0].data[:chunk] == bytes(chunk)
    assert peak < 2.2 * size


def test_large_append_in_the_same_chunks_as_the_line() -> None:
    size = 4 * 1024 * 1024
    data = b"a APPEND INBOX {%d+}\r\n" % size + b"z" * size + b"\r\nb NOOP\r\n"
    conn = Connection(state=State.AUTHENTICATED)
    for start in range(0, len(data), 65000):
        conn.receive_data(data[start : start + 65000])
    append, noop = events(conn)
    assert isinstance(append, Append)
    assert append.messages[0].data == b"z" * size
    assert noop == Noop("b")


# --- long lines -----------------------------------------------------------------------------


def test_line_too_long_is_skipped() -> None:
    conn = Connection(max_line_size=100)
    line = b"a LOGIN " + b"x" * 200 + b" y\r\n"
    assert feed(conn, line + b"b NOOP\r\n") == [LineTooLong("a", 100), Noop("b")]


def test_line_limit_counts_crlf() -> None:
    conn = Connection(max_line_size=10)
    assert feed(conn, b"a NOOP  \r\n") == [BadCommand("a", "unexpected a space after the command")]
    assert feed(conn, b"a NOOP   \r\n") == [LineTooLong("a", 10)]


def test_line_too_long_then_non_synchronizing_literal_is_skipped() -> None:
    conn = Connection(max_line_size=100)
    data = b"a LOGIN " + b"x" * 200 + b" {12+}\r\nc LOGOUT\r\n\r\n rest\r\nb NOOP\r\n"
    assert feed(conn, data) == [LineTooLong("a", 100), Noop("b")]


def test_line_too_long_without_a_tag() -> None:
    conn = Connection(max_line_size=50)
    assert feed(conn, b"x" * 60) == [LineTooLong(None, 50)]
    assert feed(conn, b"x" * 60 + b"\r\na NOOP\r\n") == [Noop("a")]


# --- IDLE and AUTHENTICATE -------------------------------------------------------------------


def test_idle_done() -> None:
    conn = Connection(state=State.SELECTED)
    assert feed(conn, b"a IDLE\r\n") == [Idle("a")]
    conn.start_idle("a")
    assert feed(conn, b"done\r\nb NOOP\r\n") == [IdleDone("a"), Noop("b")]


def test_idle_other_than_done() -> None:
    conn = Connection(state=State.SELECTED)
    assert feed(conn, b"a IDLE\r\n") == [Idle("a")]
    conn.start_idle("a")
    assert feed(conn, b"b NOOP\r\n") == [BadCommand("a", "expected DONE to end IDLE")]
    assert feed(conn, b"c NOOP\r\n") == [Noop("c")]


def test_park_and_unpark_between_commands_and_in_idle() -> None:
    limits = {"max_line_size": 100, "max_literal_size": 100, "max_append_size": 1000}
    conn = Connection(state=State.SELECTED, utf8=True, literal_plus=False)
    assert feed(conn, b"a IDLE\r\n") == [Idle("a")]
    conn.start_idle("a")
    parked = conn.park()
    assert parked == (State.SELECTED, True, False, "a")
    again = Connection.unpark(parked, **limits)
    assert (again.state, again.utf8, again.literal_plus, again.max_line_size) == (
        State.SELECTED, True, False, 100,
    )  # fmt: skip
    assert feed(again, b"DONE\r\nb NOOP\r\n") == [IdleDone("a"), Noop("b")]
    parked = again.park()
    assert parked == (State.SELECTED, True, False, None)  # between commands
    assert feed(Connection.unpark(parked, **limits), b"c NOOP\r\n") == [Noop("c")]


def test_no_park_with_input_or_a_command_in_progress() -> None:
    conn = Connection(state=State.AUTHENTICATED)
    assert feed(conn, b"a NOO") == []
    assert conn.park() is None  # half a line
    assert feed(conn, b"P\r\nb SELECT {3}\r\n") == [Noop("a"), ContinuationNeeded(3, "b")]
    assert conn.park() is None  # a literal awaited
    other = Connection()
    assert feed(other, b"a AUTHENTICATE PLAIN\r\n") == [Authenticate("a", "PLAIN")]
    other.start_authenticate()
    assert other.park() is None
    closed = Connection()
    closed.receive_data(b"")
    assert closed.park() is None


def test_idle_only_between_commands() -> None:
    conn = Connection()
    feed(conn, b"a LOGIN {3}\r\n")
    with pytest.raises(RuntimeError):
        conn.start_idle("a")
    with pytest.raises(RuntimeError):
        conn.start_authenticate()


def test_authenticate_exchange() -> None:
    conn = Connection()
    assert feed(conn, b"a AUTHENTICATE PLAIN\r\n") == [Authenticate("a", "PLAIN")]
    conn.start_authenticate()
    [response] = feed(conn, b"AGJvYgBwdw==\r\n")
    assert response == AuthenticateResponse(b"AGJvYgBwdw==")
    assert "AGJv" not in repr(response)
    [cancel] = feed(conn, b"*\r\n")
    assert isinstance(cancel, AuthenticateResponse)
    assert cancel.cancelled
    conn.end_authenticate()
    assert feed(conn, b"b NOOP\r\n") == [Noop("b")]
    with pytest.raises(RuntimeError):
        conn.end_authenticate()


def test_take_unprocessed_after_starttls() -> None:
    conn = Connection()
    assert feed(conn, b"a STARTTLS\r\nb LOGIN bob pw\r\n") == [
        StartTLS("a"),
        Login("b", "bob", "pw"),
    ]
    conn = Connection()
    conn.receive_data(b"a STARTTLS\r\nb LOGIN bob pw\r\n")
    assert conn.next_event() == StartTLS("a")
    assert conn.take_unprocessed() == b"b LOGIN bob pw\r\n"
    assert conn.next_event() is NEED_DATA


def test_take_unprocessed_refused_mid_command() -> None:
    conn = Connection()
    feed(conn, b"a LOGIN {3}\r\n")
    with pytest.raises(RuntimeError):
        conn.take_unprocessed()


# --- states ---------------------------------------------------------------------------------


def test_every_command_has_states() -> None:
    assert set(COMMANDS.values()) | {UidExpunge} == set(VALID_STATES)


@pytest.mark.parametrize(
    ("state", "command", "valid"),
    [
        (State.NOT_AUTHENTICATED, Login("a", "u", "p"), True),
        (State.AUTHENTICATED, Login, False),
        (State.NOT_AUTHENTICATED, Select, False),
        (State.AUTHENTICATED, Select, True),
        (State.SELECTED, Select, True),
        (State.AUTHENTICATED, Fetch, False),
        (State.SELECTED, Fetch, True),
        (State.AUTHENTICATED, Enable, True),
        (State.SELECTED, Enable, False),
        (State.NOT_AUTHENTICATED, Capability, True),
        (State.NOT_AUTHENTICATED, Id, True),
        (State.SELECTED, StartTLS, False),
        (State.SELECTED, Idle, True),
        (State.LOGOUT, Capability, False),
        (State.LOGOUT, Noop, False),
    ],
)
def test_valid_in(state: State, command: Command | type[Command], valid: bool) -> None:
    assert valid_in(state, command) is valid


def test_wrong_state_is_bad() -> None:
    conn = Connection(state=State.AUTHENTICATED)
    [refused] = feed(conn, b"a FETCH 1 FLAGS\r\n")
    assert refused == BadCommand("a", "FETCH is not valid in the authenticated state")
    assert bytes(refused.response()) == (b"a BAD FETCH is not valid in the authenticated state\r\n")
    conn.state = State.SELECTED
    assert feed(conn, b"a FETCH 1 FLAGS\r\n") == [
        Fetch("a", SequenceSet(((1, 1),)), (FetchAttribute.FLAGS,))
    ]


def test_utf8_mailbox_names_follow_the_setting() -> None:
    conn = Connection(state=State.AUTHENTICATED)
    [refused] = feed(conn, 'a SELECT "Entwürfe"\r\n'.encode())
    assert isinstance(refused, BadCommand)
    conn.utf8 = True
    assert feed(conn, 'a SELECT "Entwürfe"\r\n'.encode()) == [Select("a", "Entwürfe")]


def test_badcharset_is_no() -> None:
    conn = Connection(state=State.SELECTED)
    [refused] = feed(conn, b"a SEARCH CHARSET KOI8-R TEXT x\r\n")
    assert refused == BadCommand(
        "a",
        "charset KOI8-R is not supported",
        "NO",
        ResponseCode.bad_charset(("UTF-8", "US-ASCII")),
    )
    assert bytes(refused.response()) == (
        b"a NO [BADCHARSET (UTF-8 US-ASCII)] charset KOI8-R is not supported\r\n"
    )


def test_bad_without_tag_is_untagged() -> None:
    conn = Connection()
    [refused] = feed(conn, b"+ NOOP\r\n")
    assert isinstance(refused, BadCommand)
    assert refused.tag is None
    assert bytes(refused.response()).startswith(b"* BAD ")


# --- malformed input ----------------------------------------------------------------------

MALFORMED: list[tuple[bytes, str | None, str]] = [
    (b"NOOP", None, "expected a space"),
    (b"a", None, "expected a space"),
    (b"+ NOOP", None, "expected a tag"),
    (b"a\x00 NOOP", None, "expected a space"),
    (b"a NOPE", "a", "unknown command NOPE"),
    (b"a  NOOP", "a", "expected an atom"),
    (b"a NOOP extra", "a", "after the command"),
    (b"a NOOP ", "a", "after the command"),
    (b"a CAPABILITY\x00", "a", "octet 0x00"),
    (b"a UID NOOP", "a", "unknown UID command NOOP"),
    (b"a UID", "a", "expected a space"),
    (b"a LOGIN bob", "a", "expected a space"),
    (b"a LOGIN bob pass word", "a", "after the command"),
    (b'a LOGIN "bob pw', "a", "quoted string"),
    (b'a LOGIN "b\\x" pw', "a", "quoted string"),
    (b"a LOGIN bob {3}\r\na\x00b", "a", "NUL"),
    (b"a LOGIN bob \xff", "a", "expected a string"),
    (b"a AUTHENTICATE", "a", "expected a space"),
    (b"a AUTHENTICATE PLAIN !!!", "a", "base64"),
    (b"a ENABLE", "a", "at least one capability"),
    (b"a SELECT", "a", "expected a space"),
    (b"a SELECT INBOX (FOO)", "a", "unknown or repeated SELECT parameter FOO"),
    (b"a SELECT INBOX ()", "a", "empty list"),
    (b"a SELECT INBOX (QRESYNC (0 1))", "a", "at least 1"),
    (b"a SELECT INBOX (QRESYNC (1))", "a", "expected a space"),
    (b'a SELECT "\x01x"', "a", "control characters"),
    (b"a SELECT {2}\r\n\r\n", "a", "control characters"),
    (b"a CREATE x (USE (Drafts))", "a", "special-use attribute"),
    (b"a RENAME a", "a", "expected a space"),
    (b'a LIST (FOO) "" *', "a", "unknown LIST selection option FOO"),
    (b'a LIST (RECURSIVEMATCH) "" *', "a", "RECURSIVEMATCH needs"),
    (b'a LIST "" * RETURN (FOO)', "a", "unknown LIST return option FOO"),
    (b'a LIST "" * FOO', "a", "expected RETURN"),
    (b"a STATUS INBOX ()", "a", "empty list"),
    (b"a STATUS INBOX (FOO)", "a", "unknown status item FOO"),
    (b"a STATUS INBOX MESSAGES", "a", "expected ("),
    (b'a APPEND INBOX "hello"', "a", "date-time"),
    (b"a APPEND INBOX (\\Recent) {1}\r\nx", "a", "\\Recent cannot be set"),
    (b"a APPEND INBOX", "a", "expected a space"),
    (b"a APPEND INBOX hello", "a", "must be a literal"),
    (b"a FETCH", "a", "expected a space"),
    (b"a FETCH 0 FLAGS", "a", "a zero"),
    (b"a FETCH 1:2:3 FLAGS", "a", "expected a space"),
    (b"a FETCH 1 (FLAGS", "a", "expected a space or )"),
    (b"a FETCH 1 ()", "a", "empty list"),
    (b"a FETCH 1 FOO", "a", "unknown fetch item FOO"),
    (b"a FETCH 1 (ALL)", "a", "unknown fetch item ALL"),
    (b"a FETCH 1 BODY[FOO]", "a", "invalid body section"),
    (b"a FETCH 1 BODY[1.MIME", "a", "expected ]"),
    (b"a FETCH 1 BODY[MIME]", "a", "MIME needs a part number"),
    (b"a FETCH 1 BODY[0]", "a", "invalid body part number"),
    (b"a FETCH 1 BODY[]<0.0>", "a", "at least 1"),
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]", "a", "empty list"),
    (b"a FETCH 1 BINARY[TEXT]", "a", "part number only"),
    (b"a FETCH 1 FLAGS[]", "a", "takes no section"),
    (b"a FETCH 1 FLAGS (VANISHED)", "a", "VANISHED needs UID FETCH and CHANGEDSINCE"),
    (b"a UID FETCH 1 FLAGS (CHANGEDSINCE x)", "a", "expected a number"),
    (b"a STORE 1 FLAGS", "a", "expected a space"),
    (b"a STORE 1 FLOGS (\\Seen)", "a", "expected FLAGS, +FLAGS or -FLAGS"),
    (b"a STORE 1 +FLAGS (\\Recent)", "a", "\\Recent cannot be set"),
    (b"a STORE 1 +FLAGS (\\Bogus)", "a", "unknown system flag"),
    (b"a STORE 1 (FOO 1) FLAGS ()", "a", "unknown or repeated STORE modifier"),
    (b"a SEARCH", "a", "expected a space"),
    (b"a SEARCH FOO", "a", "unknown search key FOO"),
    (b"a SEARCH BEFORE 31-Feb-2020", "a", "no such date"),
    (b"a SEARCH OR SEEN", "a", "expected a space"),
    (b"a SEARCH (SEEN", "a", "expected a space or )"),
    (b"a SEARCH LARGER -1", "a", "expected a number"),
    (b"a SEARCH RETURN (FOO) ALL", "a", "unknown SEARCH return option FOO"),
    (b"a SEARCH HEADER Fo:o x", "a", "invalid header field name"),
    (b"a COPY 1", "a", "expected a space"),
    (b"a UID EXPUNGE", "a", "expected a space"),
    (b'a ID ("name")', "a", "expected a space"),
    (b"a ID foo", "a", "expected ( or NIL"),
    (b'a SETQUOTA "" (STORAGE)', "a", "expected a space"),
    (b"a COMPRESS", "a", "expected a space"),
    (b"a GETQUOTAROOT", "a", "expected a space"),
]


def _state_for(line: bytes) -> State:
    _, kind = lookup_command(line)
    if kind is None:
        return State.AUTHENTICATED
    return min(VALID_STATES[kind], key=lambda state: list(State).index(state))


@pytest.mark.parametrize(
    ("data", "tag", "reason"), MALFORMED, ids=[d.decode("latin-1") for d, *_ in MALFORMED]
)
def test_malformed_input(data: bytes, tag: str | None, reason: str) -> None:
    conn = Connection(state=_state_for(data))
    found = [e for e in feed(conn, data + b"\r\n") if not isinstance(e, ContinuationNeeded)]
    assert len(found) == 1
    [event] = found
    assert isinstance(event, BadCommand)
    assert event.tag == tag
    assert event.status == "BAD"
    assert reason in event.reason
    # The connection goes on.
    assert feed(conn, b"z CAPABILITY\r\n") == [Capability("z")]


def test_enough_malformed_cases() -> None:
    assert len(MALFORMED) >= 40


# --- splitting and junk ---------------------------------------------------------------------

SCRIPT = b"".join(
    [
        b"1 CAPABILITY\r\n",
        b'2 ID ("name" "Thunderbird" "version" "115.6.0")\r\n',
        b"3 LOGIN {3}\r\nbob {6+}\r\nsecret\r\n",
        b"4 ENABLE CONDSTORE QRESYNC UTF8=ACCEPT\r\n",
        '5 SELECT "Entwürfe" (CONDSTORE)\r\n'.encode(),
        b"6 UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-TUID MESSAGE-ID)])\r\n",
        b"7 APPEND INBOX (\\Seen) {12}\r\nHello\r\nWorld (\\Draft) {3+}\r\nabc\r\n",
        b"8 SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR SUBJECT {5}\r\nGr\xc3\xbc\xc3 FROM x\r\n",
        b"9 BOGUS {4+}\r\nxxxx\r\n",
        b"10 IDLE\r\nDONE\r\n",
        b"11 UID STORE 1:3 (UNCHANGEDSINCE 9) +FLAGS.SILENT (\\Deleted)\r\n",
        b"12 LOGIN x\r\n",
        b"13 LOGOUT\r\n",
    ]
)


def test_script_events() -> None:
    found = run(SCRIPT)
    kinds = [type(event).__name__ for event in found if not isinstance(event, ContinuationNeeded)]
    assert kinds == [
        "Capability",
        "Id",
        "Login",
        "Enable",
        "Select",
        "Fetch",
        "Append",
        "BadCommand",  # the SUBJECT literal is cut inside a UTF-8 character
        "BadCommand",  # BOGUS
        "Idle",
        "IdleDone",
        "Store",
        "BadCommand",  # LOGIN when authenticated
        "Logout",
    ]
    assert [e for e in found if isinstance(e, ContinuationNeeded)] == [
        ContinuationNeeded(3, "3"),
        ContinuationNeeded(12, "7"),
        ContinuationNeeded(5, "8"),
    ]


def test_script_byte_by_byte() -> None:
    assert run(SCRIPT, range(1, len(SCRIPT))) == run(SCRIPT)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=len(SCRIPT) - 1), max_size=40))
def test_script_random_splits(cuts: list[int]) -> None:
    assert run(SCRIPT, cuts) == run(SCRIPT)


@settings(max_examples=100)
@given(st.lists(st.integers(min_value=1, max_value=200), max_size=10))
def test_limits_behave_the_same_whatever_the_splits(cuts: list[int]) -> None:
    data = (
        b"a LOGIN " + b"x" * 80 + b" {5+}\r\nhello\r\n"
        b'b ID ("k" {30+}\r\n' + b"y" * 30 + b")\r\n"
        b'c ID ("k" {31}\r\n'
        b"d NOOP\r\n"
    )
    limits = {"max_line_size": 60, "max_literal_size": 30}
    whole = run(data, **limits)
    assert whole == [
        LineTooLong("a", 60),
        Id("b", (("k", "y" * 30),)),
        BadCommand("c", "literal too large", "BAD", TOOBIG),
        Noop("d"),
    ]
    assert run(data, cuts, **limits) == whole


@settings(max_examples=300)
@given(
    st.binary(max_size=300),
    st.lists(st.integers(min_value=1, max_value=299), max_size=8),
    st.sampled_from(list(State)),
)
def test_random_bytes_only_yield_events(data: bytes, cuts: list[int], state: State) -> None:
    conn = Connection(state=state, max_line_size=128, max_literal_size=64)
    for piece in _pieces(data, cuts):
        conn.receive_data(piece)
        events(conn)
    conn.receive_data(b"")
    assert isinstance(events(conn)[-1], ConnectionClosed)


JUNK = st.text(
    alphabet=st.sampled_from(list('aA1 *:,()[]<>."\\{}+~$-%\r\n\tFLAGSBODYUIDNOOP')),
    max_size=300,
)


@settings(max_examples=300)
@given(JUNK.filter(bool), st.sampled_from(list(State)), st.booleans())
def test_printable_junk_only_yields_events(text: str, state: State, literal_plus: bool) -> None:
    conn = Connection(state=state, literal_plus=literal_plus, max_literal_size=50)
    conn.receive_data(text.encode("ascii"))
    found = events(conn)
    assert all(not isinstance(event, ConnectionClosed) for event in found)


@settings(max_examples=100)
@given(
    st.lists(
        st.sampled_from(
            [
                b"NOOP",
                b"FETCH 1:* (FLAGS)",
                b"SEARCH UNSEEN",
                b'LIST "" *',
                b"BOGUS",
                b"STORE 1 +FLAGS x",
                b"LOGIN {3+}\r\nbob pw",
                b"APPEND INBOX {2+}\r\nhi",
                b"SELECT INBOX",
            ]
        ),
        min_size=1,
        max_size=12,
    )
)
def test_valid_and_invalid_commands_keep_their_tags(commands: list[bytes]) -> None:
    data = b"".join(b"t%d %s\r\n" % (index, command) for index, command in enumerate(commands))
    found = Session().feed([data])
    tags = [getattr(event, "tag", None) for event in found]
    assert tags == [f"t{index}" for index in range(len(commands))]


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut for cut in cuts if 0 < cut < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if data[a:b]]


# --- what real clients send at login ---------------------------------------------------------

THUNDERBIRD = (
    b"1 capability\r\n"
    b"2 authenticate PLAIN\r\n"
    b"AGJvYgBzZWNyZXQ=\r\n"
    b'3 ID ("name" "Thunderbird" "version" "115.6.0")\r\n'
    b"4 ENABLE CONDSTORE QRESYNC\r\n"
    b'5 list (SUBSCRIBED) "" "*" RETURN (CHILDREN SPECIAL-USE)\r\n'
    b'6 select "INBOX" (CONDSTORE)\r\n'
    b"7 UID fetch 1:* (FLAGS)\r\n"
    b"8 IDLE\r\n"
    b"DONE\r\n"
    b"9 logout\r\n"
)
MUTT = (
    b"a0000 CAPABILITY\r\n"
    b"a0001 AUTHENTICATE PLAIN AGJvYgBzZWNyZXQ=\r\n"
    b'a0002 LIST "" ""\r\n'
    b'a0003 LSUB "" "*"\r\n'
    b'a0004 SELECT "INBOX"\r\n'
    b"a0005 FETCH 1:3 (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (DATE FROM "
    b"SUBJECT TO CC MESSAGE-ID REFERENCES CONTENT-TYPE IN-REPLY-TO REPLY-TO LINES)])\r\n"
    b"a0006 UID STORE 3 +FLAGS.SILENT (\\Seen)\r\n"
    b"a0007 LOGOUT\r\n"
)
APPLE_MAIL = (
    b"1.1 CAPABILITY\r\n"
    b'2.1 ID ("name" "Mac OS X Mail" "version" "16.0 (3774.300.61.1.2)" "os" "macOS" '
    b'"os-version" "14.2.1 (23C71)" "vendor" "Apple Inc.")\r\n'
    b"3.1 LOGIN {3}\r\nbob {6}\r\nsecret\r\n"
    b"4.1 ENABLE QRESYNC\r\n"
    b'5.1 LIST "" ""\r\n'
    b'6.1 LIST (SPECIAL-USE) "" "*"\r\n'
    b"7.1 SELECT INBOX (CONDSTORE)\r\n"
    b"8.1 UID SEARCH 1:* NOT DELETED\r\n"
    b"9.1 UID FETCH 1:* (FLAGS UID) (CHANGEDSINCE 1)\r\n"
    b"10.1 IDLE\r\n"
    b"DONE\r\n"
)
MBSYNC = (
    b"1 CAPABILITY\r\n"
    b'2 LOGIN "bob" {6+}\r\nsecret\r\n'
    b"3 NAMESPACE\r\n"
    b'4 LIST "" "*"\r\n'
    b'5 SELECT "INBOX"\r\n'
    b"6 UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-TUID MESSAGE-ID)])\r\n"
    b'7 APPEND "INBOX" (\\Seen) {12+}\r\nSubject: x\r\n\r\n'
    b"8 LOGOUT\r\n"
)


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        (
            THUNDERBIRD,
            [
                *("Capability", "Authenticate", "AuthenticateResponse", "Id", "Enable", "List"),
                *("Select", "Fetch", "Idle", "IdleDone", "Logout"),
            ],
        ),
        (
            MUTT,
            ["Capability", "Authenticate", "List", "Lsub", "Select", "Fetch", "Store", "Logout"],
        ),
        (
            APPLE_MAIL,
            [
                *("Capability", "Id", "ContinuationNeeded", "ContinuationNeeded", "Login"),
                *("Enable", "List", "List", "Select", "Search", "Fetch", "Idle", "IdleDone"),
            ],
        ),
        (
            MBSYNC,
            ["Capability", "Login", "Namespace", "List", "Select", "Fetch", "Append", "Logout"],
        ),
    ],
    ids=["thunderbird", "mutt", "apple-mail", "mbsync"],
)
def test_real_client_sessions(capture: bytes, expected: list[str]) -> None:
    whole = run(capture)
    assert [type(event).__name__ for event in whole] == expected
    assert run(capture, range(1, len(capture))) == whole


def test_mbsync_fetch_and_search_values() -> None:
    found = run(MBSYNC + b"")
    fetch = next(event for event in found if isinstance(event, Fetch))
    assert fetch.uid
    assert bytes(fetch.items[2]) == b"BODY.PEEK[HEADER.FIELDS (X-TUID MESSAGE-ID)]"
    apple = run(APPLE_MAIL)
    search = next(event for event in apple if isinstance(event, Search))
    assert search.uid
    store_free = [event for event in apple if isinstance(event, Store)]
    assert store_free == []
    listing = [event for event in apple if isinstance(event, List)]
    assert listing[1].selection == frozenset({"SPECIAL-USE"})


def test_constructor_validates_limits() -> None:
    with pytest.raises(ValueError):
        Connection(max_line_size=0)
    with pytest.raises(ValueError):
        Connection(max_append_total_size=0)

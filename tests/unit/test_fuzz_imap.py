"""Property-based fuzzing of the IMAP connection (sans-IO framing + grammar).

A grammar-aware generator builds command streams (tags, every command name, atoms,
quoted strings, synchronizing and non-synchronizing literals, literal8, lists, sequence
sets, section specs, IDLE/DONE and AUTHENTICATE exchanges) and mutates them; random bytes
are mixed in. A small session reacts to the events as the real one does (state changes,
IDLE, AUTHENTICATE, literal refusal). Properties:

- ``next_event`` never raises and returns only the documented events;
- the events do not depend on how the input was cut into chunks;
- every refusal renders as exactly one response line (no CR/LF from the client can split
  it), tagged with the command's tag or ``*``;
- a command the connection accepts is the one ``parse_command_bytes`` reads from the same
  octets.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.imap.commands import Authenticate, Command, Enable, Idle, Login, Logout, Select
from roost.imap.connection import (
    NEED_DATA,
    AuthenticateResponse,
    BadCommand,
    Connection,
    ConnectionClosed,
    ContinuationNeeded,
    Event,
    IdleDone,
    LineTooLong,
    State,
)
from roost.imap.grammar import COMMANDS, ParseError, parse_command_bytes

EXAMPLES = int(os.environ.get("ROOST_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
EVENTS = (
    Command,
    ContinuationNeeded,
    BadCommand,
    LineTooLong,
    IdleDone,
    AuthenticateResponse,
    ConnectionClosed,
)

# --- generators ---------------------------------------------------------------------------

tags = st.one_of(
    st.from_regex(rb"[A-Za-z0-9.]{1,6}", fullmatch=True),
    st.sampled_from([b"*", b"+", b"a{1}", b"t\x00", b"\xff", b"a%", b"(", b""]),
)
names = st.one_of(
    st.sampled_from(sorted(name.encode() for name in COMMANDS)),
    st.sampled_from([b"UID FETCH", b"UID STORE", b"UID SEARCH", b"UID COPY", b"UID EXPUNGE"]),
    st.from_regex(rb"[A-Za-z]{1,8}", fullmatch=True),
)
atoms = st.one_of(
    st.from_regex(rb"[A-Za-z0-9\\$.*:,<>\[\]-]{1,12}", fullmatch=True),
    st.sampled_from(
        [
            b"INBOX",
            b"NIL",
            b"1:*",
            b"$",
            b"1,3:5,7",
            b"\\Seen",
            b"\\Deleted",
            b"FLAGS",
            b"+FLAGS.SILENT",
            b"BODY[]",
            b"BODY.PEEK[HEADER.FIELDS (From Subject)]<0.100>",
            b"BODY[1.2.MIME]",
            b"BINARY[1]",
            b"RFC822.SIZE",
            b"ENVELOPE",
            b"UID",
            b"ALL",
            b"CHARSET",
            b"UTF-8",
            b"&AOQ-",
            b"UTF8=ACCEPT",
            b"PLAIN",
            b"DEFLATE",
            b"MESSAGES",
            b"(UIDNEXT UNSEEN)",
            b"RETURN (SPECIAL-USE)",
        ]
    ),
)
quoted = st.binary(max_size=12).map(
    lambda b: b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
)


@st.composite
def literals(draw: st.DrawFn) -> bytes:
    data = draw(st.binary(max_size=20))
    size = len(data) if draw(st.integers(0, 9)) else draw(st.integers(0, 200))
    marker = draw(st.sampled_from([b"{%d}", b"{%d+}", b"{%d-}", b"~{%d}", b"~{%d+}"]))
    return (marker % size) + b"\r\n" + data


arguments = st.recursive(
    st.one_of(atoms, quoted, literals(), st.integers(0, 2**33).map(lambda n: str(n).encode())),
    lambda inner: st.lists(inner, max_size=4).map(lambda xs: b"(" + b" ".join(xs) + b")"),
    max_leaves=8,
)


@st.composite
def commands(draw: st.DrawFn) -> bytes:
    args = draw(st.lists(arguments, max_size=5))
    line = draw(tags) + b" " + draw(names) + b"".join(b" " + a for a in args)
    return line + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b" \r\n"]))


astrings = st.one_of(
    st.from_regex(rb"[A-Za-z0-9._@-]{1,10}", fullmatch=True),
    quoted,
    st.binary(max_size=10).map(lambda b: b"{%d+}\r\n" % len(b) + b),
)
mailboxes = st.one_of(
    st.sampled_from([b"INBOX", b"inbox", b"Sent", b'"Sent Items"', b"&AOQ-bc", b"a/b", b".x"]),
    astrings,
)
sequence_sets = st.from_regex(
    rb"(\$|[1-9][0-9]{0,3}(:([1-9][0-9]{0,3}|\*))?)(,[1-9][0-9]{0,2})*", fullmatch=True
)
flag_lists = st.lists(
    st.sampled_from([b"\\Seen", b"\\Deleted", b"\\Flagged", b"$Junk", b"\\Recent", b"kw"]),
    max_size=3,
).map(lambda fs: b"(" + b" ".join(fs) + b")")
fetch_items = st.lists(
    st.sampled_from(
        [
            b"FLAGS",
            b"UID",
            b"INTERNALDATE",
            b"RFC822.SIZE",
            b"ENVELOPE",
            b"BODYSTRUCTURE",
            b"BODY",
            b"BODY[]",
            b"BODY.PEEK[HEADER]",
            b"BODY[HEADER.FIELDS (From To)]",
            b"BODY[HEADER.FIELDS.NOT (Received)]<0.50>",
            b"BODY[1.TEXT]",
            b"BINARY.PEEK[1]",
            b"BINARY.SIZE[1]",
            b"RFC822",
            b"MODSEQ",
        ]
    ),
    min_size=1,
    max_size=4,
).map(lambda xs: xs[0] if len(xs) == 1 else b"(" + b" ".join(xs) + b")")
search_keys = st.lists(
    st.one_of(
        st.sampled_from(
            [b"ALL", b"SEEN", b"UNSEEN", b"DELETED", b"NEW", b"OLD", b"RECENT", b"ANSWERED"]
        ),
        st.tuples(st.sampled_from([b"FROM", b"SUBJECT", b"BODY", b"TEXT", b"TO"]), astrings).map(
            b" ".join
        ),
        st.tuples(
            st.sampled_from([b"SINCE", b"BEFORE", b"ON"]),
            st.sampled_from([b"1-Jan-2024", b"31-Feb-2024", b"x"]),
        ).map(b" ".join),
        st.tuples(
            st.sampled_from([b"LARGER", b"SMALLER"]),
            st.integers(0, 2**40).map(lambda n: str(n).encode()),
        ).map(b" ".join),
        st.tuples(st.just(b"HEADER"), astrings, astrings).map(b" ".join),
        st.tuples(st.just(b"UID"), sequence_sets).map(b" ".join),
        sequence_sets,
        st.just(b"NOT SEEN"),
        st.just(b"OR SEEN DELETED"),
        st.just(b"(SEEN FLAGGED)"),
        st.just(b"CHARSET UTF-8"),
        st.just(b"CHARSET KOI8-R"),
    ),
    min_size=1,
    max_size=4,
).map(b" ".join)
SHAPES = {
    b"LOGIN": st.tuples(astrings, astrings),
    b"SELECT": st.tuples(mailboxes),
    b"EXAMINE": st.tuples(mailboxes),
    b"CREATE": st.tuples(mailboxes),
    b"DELETE": st.tuples(mailboxes),
    b"SUBSCRIBE": st.tuples(mailboxes),
    b"UNSUBSCRIBE": st.tuples(mailboxes),
    b"RENAME": st.tuples(mailboxes, mailboxes),
    b"LIST": st.tuples(mailboxes, st.sampled_from([b"*", b"%", b'""', b"INBOX.*", b"a%b"])),
    b"LSUB": st.tuples(mailboxes, st.sampled_from([b"*", b"%"])),
    b"STATUS": st.tuples(
        mailboxes, st.sampled_from([b"(MESSAGES)", b"(UIDNEXT UNSEEN SIZE)", b"()"])
    ),
    b"APPEND": st.tuples(
        mailboxes,
        flag_lists,
        st.sampled_from([b'"01-Jan-2024 10:00:00 +0000"', b'"bad date"']),
        st.binary(max_size=40).map(lambda b: b"{%d+}\r\n" % len(b) + b),
    ),
    b"FETCH": st.tuples(sequence_sets, fetch_items),
    b"UID FETCH": st.tuples(sequence_sets, fetch_items),
    b"STORE": st.tuples(
        sequence_sets, st.sampled_from([b"FLAGS", b"+FLAGS", b"-FLAGS.SILENT"]), flag_lists
    ),
    b"UID STORE": st.tuples(sequence_sets, st.sampled_from([b"+FLAGS"]), flag_lists),
    b"COPY": st.tuples(sequence_sets, mailboxes),
    b"MOVE": st.tuples(sequence_sets, mailboxes),
    b"UID COPY": st.tuples(sequence_sets, mailboxes),
    b"UID MOVE": st.tuples(sequence_sets, mailboxes),
    b"UID EXPUNGE": st.tuples(sequence_sets),
    b"SEARCH": st.tuples(search_keys),
    b"UID SEARCH": st.tuples(search_keys),
    b"ENABLE": st.tuples(st.sampled_from([b"UTF8=ACCEPT", b"CONDSTORE", b"IMAP4rev2", b"X"])),
    b"ID": st.tuples(st.sampled_from([b"NIL", b'("name" "fuzz")', b'("a")', b"()"])),
    b"AUTHENTICATE": st.tuples(
        st.sampled_from([b"PLAIN", b"PLAIN =", b"LOGIN", b"PLAIN AGFAYg==", b"X"])
    ),
    b"GETQUOTA": st.tuples(astrings),
    b"GETQUOTAROOT": st.tuples(mailboxes),
    b"SETQUOTA": st.tuples(astrings, st.sampled_from([b"(STORAGE 100)", b"()", b"(X)"])),
    b"COMPRESS": st.tuples(st.sampled_from([b"DEFLATE", b"X"])),
}
BARE = [b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS", b"IDLE", b"NAMESPACE", b"CHECK", b"CLOSE"]
BARE += [b"UNSELECT", b"EXPUNGE"]


@st.composite
def valid_commands(draw: st.DrawFn) -> bytes:
    """Commands shaped like the grammar's, for each command name (then maybe mutated)."""
    tag = draw(st.from_regex(rb"[A-Za-z0-9]{1,4}", fullmatch=True))
    name = draw(st.sampled_from(sorted(SHAPES) + BARE))
    args = draw(SHAPES[name]) if name in SHAPES else ()
    return tag + b" " + name + b"".join(b" " + a for a in args) + b"\r\n"


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(out)))
        new = draw(st.sampled_from(list(b'\r\n{}()[]" \\\x00\xff+~*%')))
        if draw(st.booleans()) or where == len(out):
            out.insert(where, new)
        else:
            out[where] = new
    return bytes(out)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    pieces = draw(
        st.lists(
            st.one_of(
                commands(),
                valid_commands(),
                valid_commands(),
                st.just(b"DONE\r\n"),
                st.just(b"*\r\n"),
                st.just(b"AGFsaWNlAHB3\r\n"),
                st.binary(max_size=30),
            ),
            max_size=8,
        )
    )
    return draw(mutated(b"".join(pieces)))


# --- a session-like driver ----------------------------------------------------------------


class Driver:
    """Feeds chunks and reacts to the events as :mod:`roost.imap.session` does."""

    def __init__(self, state: State, literal_plus: bool) -> None:
        self.conn = Connection(
            state=state,
            literal_plus=literal_plus,
            max_line_size=200,
            max_literal_size=64,
            max_append_size=100,
            max_command_size=400,
        )
        self.events: list[Event] = []

    def run(self, chunks: list[bytes]) -> list[Event]:
        for chunk in chunks:
            self.conn.receive_data(chunk)
            self._drain()
        self.conn.receive_data(b"")
        self._drain()
        return self.events

    def _drain(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return
            assert isinstance(event, EVENTS), event
            self.events.append(event)
            if isinstance(event, ConnectionClosed):
                return
            assert len(self.events) < 10_000
            self._react(event)

    def _react(self, event: Event) -> None:
        conn = self.conn
        if isinstance(event, ContinuationNeeded) and event.size % 3 == 2:
            conn.refuse_literal()  # deterministic: the same whatever the chunking
        elif isinstance(event, Login):
            conn.state = State.AUTHENTICATED
        elif isinstance(event, Authenticate):
            if event.initial_response is None:
                conn.start_authenticate()
        elif isinstance(event, AuthenticateResponse):
            conn.end_authenticate()
            conn.state = State.AUTHENTICATED
        elif isinstance(event, LineTooLong) and conn._mode.value == "authenticate":
            conn.end_authenticate()
        elif isinstance(event, Select):
            conn.state = State.SELECTED
        elif isinstance(event, Idle):
            conn.start_idle(event.tag)
        elif isinstance(event, Enable) and "UTF8=ACCEPT" in event.capabilities:
            conn.utf8 = True
        elif isinstance(event, Logout):
            conn.state = State.LOGOUT


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [piece for piece in pieces if piece]


def one_line(rendered: bytes) -> None:
    assert rendered.endswith(b"\r\n"), rendered
    body = rendered[:-2]
    assert b"\r" not in body and b"\n" not in body, f"response split by client data: {rendered!r}"


# --- properties ---------------------------------------------------------------------------


@FUZZ
@given(
    data=st.one_of(streams(), st.binary(max_size=300)),
    cuts=st.lists(st.integers(1, 400), max_size=10),
    state=st.sampled_from([State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED]),
    literal_plus=st.booleans(),
)
def test_connection_events_are_total_and_chunking_invariant(
    data: bytes, cuts: list[int], state: State, literal_plus: bool
) -> None:
    whole = Driver(state, literal_plus).run([data] if data else [])
    pieces = Driver(state, literal_plus).run(chunked(data, cuts))
    assert [repr(e) for e in pieces] == [repr(e) for e in whole]
    bytewise = Driver(state, literal_plus).run([data[i : i + 1] for i in range(len(data))])
    assert [repr(e) for e in bytewise] == [repr(e) for e in whole]
    for event in whole:
        if isinstance(event, BadCommand | LineTooLong):
            rendered = bytes(event.response())
            one_line(rendered)
            tag = rendered.split(b" ", 1)[0]
            assert tag == b"*" or tag == (event.tag or "").encode(), rendered
            assert b" BAD " in rendered or b" NO " in rendered, rendered


@FUZZ
@given(command=st.one_of(valid_commands(), commands()), state=st.sampled_from(list(State)))
def test_accepted_commands_are_what_the_grammar_reads(command: bytes, state: State) -> None:
    conn = Connection(state=state)
    conn.receive_data(command)
    conn.receive_data(b"")
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
        if isinstance(event, ContinuationNeeded):
            continue
        assert len(events) < 100
    accepted = [e for e in events if isinstance(e, Command)]
    if not accepted:
        return
    assert len(accepted) == 1, events
    framed = command if command.endswith(b"\r\n") else command.replace(b"\n", b"\r\n")
    try:
        expected = parse_command_bytes(framed.removesuffix(b"\r\n"))
    except ParseError:
        try:
            expected = parse_command_bytes(framed)
        except ParseError as exc:
            raise AssertionError(f"connection accepted {command!r}, grammar says {exc}") from exc
    assert repr(accepted[0]) == repr(expected)

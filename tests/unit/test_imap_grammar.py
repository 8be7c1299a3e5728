"""Unit tests for roost.imap.grammar, commands and sequence: parsing client commands."""

from __future__ import annotations

import contextlib
import datetime
import imaplib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.imap.commands import (
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Compress,
    Copy,
    Create,
    DateField,
    DateRelation,
    Delete,
    Enable,
    Examine,
    Expunge,
    Fetch,
    FetchAttribute,
    FetchBinarySize,
    FetchBody,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QResync,
    Rename,
    Search,
    SearchAll,
    SearchAnd,
    SearchBody,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchLarger,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchReturn,
    SearchSequence,
    SearchSmaller,
    SearchText,
    Section,
    SectionText,
    Select,
    SetQuota,
    StartTLS,
    Status,
    Store,
    StoreMode,
    Subscribe,
    UidExpunge,
    Unselect,
    Unsubscribe,
)
from roost.imap.grammar import (
    BadCharsetError,
    LiteralMarker,
    ParseError,
    Reader,
    find_literal_marker,
    lookup_command,
    parse_atom,
    parse_command,
    parse_command_bytes,
    parse_date,
    parse_date_time,
    parse_flag,
    parse_literal_marker,
    parse_number,
    parse_quoted,
    parse_sequence_set,
    parse_tag,
    split_command,
)
from roost.imap.sequence import MAX_NUMBER, SequenceSet, SequenceSetError

S = SequenceSet.parse
UTC = datetime.UTC
F = FetchAttribute


def parse(text: str | bytes, *, utf8: bool = False) -> Command:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return parse_command_bytes(data, utf8=utf8)


# --- element parsers ----------------------------------------------------------------------


class TestElements:
    def test_atom_stops_at_specials(self) -> None:
        assert parse_atom(b"FLAGS)", 0) == ("FLAGS", 5)
        assert parse_atom(b"x BODY[TEXT]", 2) == ("BODY[TEXT", 11)
        for special in b'(){ %*"\\]':
            with pytest.raises(ParseError):
                parse_atom(bytes([special]) + b"abc", 0)

    def test_atom_from_memoryview(self) -> None:
        assert parse_atom(memoryview(b"a NOOP"), 2) == ("NOOP", 6)

    def test_tag_excludes_plus_but_allows_bracket(self) -> None:
        assert parse_tag(b"a]1 NOOP", 0) == ("a]1", 3)
        assert parse_tag(b"a+1 NOOP", 0) == ("a", 1)
        with pytest.raises(ParseError, match="expected a tag"):
            parse_tag(b"+ x", 0)

    def test_number_ranges(self) -> None:
        assert parse_number(b"4294967295", 0) == (MAX_NUMBER, 10)
        with pytest.raises(ParseError, match="too large"):
            parse_number(b"4294967296", 0)
        with pytest.raises(ParseError, match="at least 1"):
            parse_number(b"0", 0, minimum=1)
        with pytest.raises(ParseError, match="too large"):
            parse_number(b"9" * 5000, 0)

    def test_quoted_escapes(self) -> None:
        assert parse_quoted(b'"a\\"b\\\\c" rest', 0) == (b'a"b\\c', 9)
        assert parse_quoted(b'""', 0) == (b"", 2)
        assert parse_quoted('"Grüße"'.encode(), 0)[0] == "Grüße".encode()

    @pytest.mark.parametrize("text", [b'"abc', b'"a\\xb"', b'"a\x00b"', b'"a\rb"', b"abc"])
    def test_quoted_invalid(self, text: bytes) -> None:
        with pytest.raises(ParseError):
            parse_quoted(text, 0)

    def test_literal_markers(self) -> None:
        assert parse_literal_marker(b"{12}", 0) == (LiteralMarker(12), 4)
        assert parse_literal_marker(b"{12+}", 0) == (LiteralMarker(12, synchronizing=False), 5)
        assert parse_literal_marker(b"~{3}", 0) == (LiteralMarker(3, binary=True), 4)
        assert bytes(LiteralMarker(7, synchronizing=False, binary=True)) == b"~{7+}"
        assert find_literal_marker(b"a LOGIN {5}") == LiteralMarker(5)
        assert find_literal_marker(b'a LOGIN "{5}"') is None
        assert find_literal_marker(b"a LOGIN {5} x") is None
        assert find_literal_marker(b"a {" + b"9" * 30 + b"}") == LiteralMarker(2**64)

    def test_date(self) -> None:
        assert parse_date(b"1-Feb-1994", 0) == (datetime.date(1994, 2, 1), 10)
        assert parse_date(b'"01-feb-1994"', 0) == (datetime.date(1994, 2, 1), 13)
        for bad in (b"31-Feb-2000", b"1-Foo-1994", b"1994-02-01", b'"1-Feb-1994'):
            with pytest.raises(ParseError):
                parse_date(bad, 0)

    def test_date_time(self) -> None:
        value, end = parse_date_time(b'"01-Feb-1994 12:00:00 +0000"', 0)
        assert value == datetime.datetime(1994, 2, 1, 12, tzinfo=UTC)
        assert end == 28
        value, _ = parse_date_time(b'" 7-Jul-1996 02:44:25 -0700"', 0)
        assert value.utcoffset() == datetime.timedelta(hours=-7)
        assert value.day == 7
        assert parse_date_time(b'"7-Jul-1996 02:44:25 +0530"', 0)[0].day == 7

    @pytest.mark.parametrize(
        "text",
        [
            b'"01-Feb-1994 25:00:00 +0000"',
            b'"01-Feb-1994 12:00:00 +0075"',
            b'"01-Feb-1994 12:00:00"',
            b"01-Feb-1994 12:00:00 +0000",
            b'"30-Feb-1994 12:00:00 +0000"',
        ],
    )
    def test_date_time_invalid(self, text: bytes) -> None:
        with pytest.raises(ParseError):
            parse_date_time(text, 0)

    def test_date_time_from_imaplib(self) -> None:
        """What the standard library client sends for APPEND parses to the same instant."""
        moment = datetime.datetime(2024, 3, 9, 8, 7, 6, tzinfo=datetime.UTC)
        text = imaplib.Time2Internaldate(moment).encode("ascii")
        assert parse_date_time(text, 0)[0] == moment

    def test_flags(self) -> None:
        assert parse_flag(b"\\SEEN", 0) == ("\\Seen", 5)
        assert parse_flag(b"$Forwarded)", 0) == ("$Forwarded", 10)
        assert parse_flag(b"\\*", 0, allow_wildcard=True) == ("\\*", 2)
        assert parse_flag(b"\\recent", 0, allow_recent=True) == ("\\Recent", 7)
        for bad in (b"\\*", b"\\Recent", b"\\Foo", b"(", b"\\"):
            with pytest.raises(ParseError):
                parse_flag(bad, 0)

    def test_reader_literal_moves_to_next_line(self) -> None:
        reader = Reader([b"{3}", b" rest"], [b"a\r\n"])
        assert reader.string() == b"a\r\n"
        reader.sp()
        assert reader.run(parse_atom) == "rest"
        assert reader.at_end()

    def test_reader_rejects_mismatched_framing(self) -> None:
        with pytest.raises(ValueError):
            Reader([b"a"], [b"x"])


# --- sequence sets ----------------------------------------------------------------------------


class TestSequenceSet:
    def test_parse_and_render(self) -> None:
        value = S("1:4,7,9:*")
        assert value.ranges == ((1, 4), (7, 7), (9, None))
        assert bytes(value) == b"1:4,7,9:*"
        assert str(S("$")) == "$"
        assert S("$").saved

    def test_star_is_the_largest_number(self) -> None:
        assert list(S("1:4,7,9:*").iter_numbers(10)) == [1, 2, 3, 4, 7, 9, 10]
        assert list(S("*").iter_numbers(5)) == [5]
        assert list(S("*:3").iter_numbers(5)) == [3, 4, 5]
        assert list(S("1:*").iter_numbers(0)) == []

    def test_range_beyond_largest_includes_last(self) -> None:
        # RFC 9051 §9 seq-range: "559:*" always includes the last message.
        assert list(S("559:*").iter_numbers(500)) == [500]
        assert S("559:*").contains(500, 500)
        assert not S("559:600").contains(500, 500)

    def test_reversed_and_overlapping_ranges_merge(self) -> None:
        assert S("5:2,3,4:8").intervals(100) == [(2, 8)]
        assert list(S("3,1,2,3").iter_numbers(9)) == [1, 2, 3]

    def test_contains_and_exceeds(self) -> None:
        value = S("2:4,9")
        assert value.contains(3, 10)
        assert not value.contains(5, 10)
        assert not value.contains(9, 8)
        assert value.exceeds(8)
        assert not value.exceeds(9)
        assert not S("1:*").exceeds(1)

    def test_saved_set_needs_substitution(self) -> None:
        with pytest.raises(ValueError):
            list(S("$").iter_numbers(3))
        with pytest.raises(ValueError):
            S("$").contains(1, 3)

    @pytest.mark.parametrize(
        "text", ["", "0", "1:", ":2", "1,,2", "1,", "4294967296", "01", "1:0", "a", "$,1"]
    )
    def test_invalid(self, text: str) -> None:
        with pytest.raises(SequenceSetError):
            S(text)

    def test_parse_sequence_set_reports_position(self) -> None:
        with pytest.raises(ParseError) as caught:
            parse_sequence_set(b"x 1:0", 2)
        assert caught.value.position == 4

    def test_of(self) -> None:
        assert bytes(SequenceSet.of([9, 1, 2, 3, 5, 6, 3])) == b"1:3,5:6,9"
        assert bytes(SequenceSet.of([])) == b""

    def test_constructor_validates(self) -> None:
        with pytest.raises(ValueError):
            SequenceSet(((0, 1),))
        with pytest.raises(ValueError):
            SequenceSet(((1, 1),), saved=True)


numbers = st.integers(min_value=1, max_value=MAX_NUMBER)
seq_numbers = st.one_of(st.none(), numbers)
sequence_sets = st.builds(
    lambda ranges: SequenceSet(tuple(ranges)),
    st.lists(
        st.one_of(numbers.map(lambda n: (n, n)), st.tuples(seq_numbers, seq_numbers)),
        min_size=1,
        max_size=8,
    ),
)


def _canonical(value: SequenceSet) -> SequenceSet:
    # A single number and n:n render alike; "*" stays "*".
    return SequenceSet(tuple((a, b) for a, b in value.ranges))


@given(sequence_sets)
def test_sequence_set_round_trip(value: SequenceSet) -> None:
    assert S(bytes(value)) == _canonical(value)
    assert parse_sequence_set(bytes(value) + b" rest", 0) == (value, len(bytes(value)))


@given(st.sets(st.integers(min_value=1, max_value=300), max_size=60))
def test_sequence_set_of_round_trip(values: set[int]) -> None:
    built = SequenceSet.of(values)
    assert set(built.iter_numbers(300)) == values
    if values:
        assert S(bytes(built)) == built


@given(sequence_sets, st.integers(min_value=0, max_value=60))
def test_sequence_set_iteration_matches_contains(value: SequenceSet, largest: int) -> None:
    small = SequenceSet(tuple((_clip(a), _clip(b)) for a, b in value.ranges))
    listed = list(small.iter_numbers(largest))
    assert listed == sorted(set(listed))
    assert listed == [n for n in range(1, largest + 1) if small.contains(n, largest)]


def _clip(number: int | None) -> int | None:
    return None if number is None else (number - 1) % 70 + 1


# --- commands -----------------------------------------------------------------------------

D = datetime.datetime(1994, 2, 1, 12, tzinfo=UTC)

COMMANDS: list[tuple[str, Command]] = [
    ("a CAPABILITY", Capability("a")),
    ("a noop", Noop("a")),
    ("a LOGOUT", Logout("a")),
    ("a STARTTLS", StartTLS("a")),
    ("a AUTHENTICATE plain", Authenticate("a", "PLAIN")),
    ("a AUTHENTICATE PLAIN AGJvYgBwdw==", Authenticate("a", "PLAIN", b"AGJvYgBwdw==")),
    ("a AUTHENTICATE EXTERNAL =", Authenticate("a", "EXTERNAL", b"=")),
    ("a LOGIN bob secret", Login("a", "bob", "secret")),
    ('a LOGIN "bob@example.org" "p \\"w\\\\"', Login("a", "bob@example.org", 'p "w\\')),
    ("a LOGIN {3}\r\nbob {6+}\r\nsecret", Login("a", "bob", "secret")),
    ('a LOGIN bob "pässword"', Login("a", "bob", "pässword")),
    ("a ENABLE CONDSTORE qresync", Enable("a", ("CONDSTORE", "QRESYNC"))),
    ("a ENABLE UTF8=ACCEPT", Enable("a", ("UTF8=ACCEPT",))),
    ("a SELECT inbox", Select("a", "INBOX")),
    ('a SELECT "INBOX/Sub"', Select("a", "INBOX/Sub")),
    ("a SELECT Inbox (CONDSTORE)", Select("a", "INBOX", condstore=True)),
    ("a EXAMINE Archive", Examine("a", "Archive")),
    (
        "a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))",
        Select("a", "INBOX", qresync=QResync(67890007, 20050715194045000, S("41,43:211,214:541"))),
    ),
    (
        "a SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500 15000,22500)))",
        Select(
            "a",
            "INBOX",
            qresync=QResync(
                67890007, 90060115194045000, S("1:29997"), (S("5000,7500"), S("15000,22500"))
            ),
        ),
    ),
    (
        "a EXAMINE INBOX (CONDSTORE QRESYNC (1 2 (3 4)))",
        Examine("a", "INBOX", True, QResync(1, 2, None, (S("3"), S("4")))),
    ),
    ("a CREATE Work", Create("a", "Work")),
    ('a CREATE "Sent" (USE (\\Sent))', Create("a", "Sent", ("\\Sent",))),
    ("a DELETE Work", Delete("a", "Work")),
    ("a RENAME Work Play", Rename("a", "Work", "Play")),
    ("a RENAME inbox Old", Rename("a", "INBOX", "Old")),
    ("a SUBSCRIBE Work", Subscribe("a", "Work")),
    ("a UNSUBSCRIBE Work", Unsubscribe("a", "Work")),
    ('a LIST "" *', List("a", "", ("*",))),
    ('a LIST "" ""', List("a", "", ("",))),
    ("a LIST ~/Mail/ %", List("a", "~/Mail/", ("%",))),
    ('a LIST "" INBOX.Sent]x', List("a", "", ("INBOX.Sent]x",))),
    (
        'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("%" "Work/*") RETURN (CHILDREN)',
        List(
            "a",
            "",
            ("%", "Work/*"),
            frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
            frozenset({"CHILDREN"}),
            (),
            True,
        ),
    ),
    (
        'a LIST "" % RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN))',
        List(
            "a",
            "",
            ("%",),
            frozenset(),
            frozenset({"SPECIAL-USE", "STATUS"}),
            ("MESSAGES", "UNSEEN"),
            True,
        ),
    ),
    ('a LIST () "" %', List("a", "", ("%",), extended=True)),
    ('a LSUB "" *', Lsub("a", "", "*")),
    ("a NAMESPACE", Namespace("a")),
    (
        "a STATUS Work (MESSAGES UIDNEXT uidvalidity UNSEEN DELETED SIZE RECENT)",
        Status(
            "a",
            "Work",
            ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT"),
        ),
    ),
    (
        "a STATUS INBOX (HIGHESTMODSEQ APPENDLIMIT MAILBOXID)",
        Status("a", "INBOX", ("HIGHESTMODSEQ", "APPENDLIMIT", "MAILBOXID")),
    ),
    ("a APPEND Sent {5}\r\nHello", Append("a", "Sent", (AppendMessage(b"Hello"),))),
    (
        'a APPEND Sent (\\Seen $Forwarded) "01-Feb-1994 12:00:00 +0000" {3+}\r\nHi\n',
        Append("a", "Sent", (AppendMessage(b"Hi\n", ("\\Seen", "$Forwarded"), D),)),
    ),
    ("a APPEND Sent () {0}\r\n", Append("a", "Sent", (AppendMessage(b""),))),
    (
        'a APPEND Drafts "01-Feb-1994 12:00:00 +0000" {2}\r\nab',
        Append("a", "Drafts", (AppendMessage(b"ab", (), D),)),
    ),
    (
        "a APPEND {4}\r\nSent {2}\r\nab",
        Append("a", "Sent", (AppendMessage(b"ab"),)),
    ),
    (
        "a APPEND Sent (\\Seen) {1}\r\nx (\\Draft) {1}\r\ny {1}\r\nz",
        Append(
            "a",
            "Sent",
            (
                AppendMessage(b"x", ("\\Seen",)),
                AppendMessage(b"y", ("\\Draft",)),
                AppendMessage(b"z"),
            ),
        ),
    ),
    ("a APPEND Sent ~{3}\r\na\x00b", Append("a", "Sent", (AppendMessage(b"a\x00b", binary=True),))),
    ("a IDLE", Idle("a")),
    ("a CHECK", Check("a")),
    ("a CLOSE", Close("a")),
    ("a UNSELECT", Unselect("a")),
    ("a EXPUNGE", Expunge("a")),
    ("a UID EXPUNGE 3:5,9", UidExpunge("a", S("3:5,9"))),
    ("a COPY 2:4 Trash", Copy("a", S("2:4"), "Trash")),
    ('a UID COPY 1:* "Old mail"', Copy("a", S("1:*"), "Old mail", uid=True)),
    ("a MOVE 1 Junk", Move("a", S("1"), "Junk")),
    ("a uid move $ Junk", Move("a", S("$"), "Junk", uid=True)),
    ("a STORE 1 FLAGS (\\Seen)", Store("a", S("1"), StoreMode.REPLACE, ("\\Seen",))),
    (
        "a STORE 1:3 +FLAGS.SILENT (\\Deleted \\Seen)",
        Store("a", S("1:3"), StoreMode.ADD, ("\\Deleted", "\\Seen"), silent=True),
    ),
    ("a STORE 1 -FLAGS ()", Store("a", S("1"), StoreMode.REMOVE, ())),
    (
        "a UID STORE 5 -flags $Junk \\flagged",
        Store("a", S("5"), StoreMode.REMOVE, ("$Junk", "\\Flagged"), uid=True),
    ),
    (
        "a STORE 7 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)",
        Store("a", S("7"), StoreMode.ADD, ("\\Deleted",), True, False, 320162338),
    ),
    ("a ID NIL", Id("a", None)),
    (
        'a ID ("name" "Thunderbird" "version" NIL)',
        Id("a", (("name", "Thunderbird"), ("version", None))),
    ),
    ("a ID ()", Id("a", ())),
    ('a GETQUOTA ""', GetQuota("a", "")),
    ("a GETQUOTAROOT inbox", GetQuotaRoot("a", "INBOX")),
    (
        'a SETQUOTA "" (STORAGE 512 message 1000)',
        SetQuota("a", "", (("STORAGE", 512), ("MESSAGE", 1000))),
    ),
    ('a SETQUOTA "" ()', SetQuota("a", "", ())),
    ("a COMPRESS deflate", Compress("a", "DEFLATE")),
    ("a SEARCH ALL", Search("a", SearchAll())),
    ("a UID SEARCH UNSEEN", Search("a", SearchFlag("\\Seen", False), uid=True)),
    (
        'a SEARCH CHARSET utf-8 SUBJECT "Grüße"',
        Search("a", SearchHeader("Subject", "Grüße"), charset="UTF-8"),
    ),
    (
        "a SEARCH RETURN (MIN MAX COUNT SAVE) UNDELETED",
        Search(
            "a",
            SearchFlag("\\Deleted", False),
            return_options=frozenset(
                {SearchReturn.MIN, SearchReturn.MAX, SearchReturn.COUNT, SearchReturn.SAVE}
            ),
        ),
    ),
    (
        "a UID SEARCH RETURN () CHARSET US-ASCII 1:*",
        Search(
            "a",
            SearchSequence(S("1:*")),
            uid=True,
            charset="US-ASCII",
            return_options=frozenset({SearchReturn.ALL}),
        ),
    ),
    ("a FETCH 1 FLAGS", Fetch("a", S("1"), (F.FLAGS,))),
    ("a FETCH 1:* fast", Fetch("a", S("1:*"), (F.FLAGS, F.INTERNALDATE, F.RFC822_SIZE))),
    (
        "a FETCH 1 ALL",
        Fetch("a", S("1"), (F.FLAGS, F.INTERNALDATE, F.RFC822_SIZE, F.ENVELOPE)),
    ),
    (
        "a FETCH 1 FULL",
        Fetch("a", S("1"), (F.FLAGS, F.INTERNALDATE, F.RFC822_SIZE, F.ENVELOPE, F.BODY)),
    ),
    (
        "a FETCH 2 (ENVELOPE BODY BODYSTRUCTURE UID MODSEQ RFC822.SIZE INTERNALDATE)",
        Fetch(
            "a",
            S("2"),
            (F.ENVELOPE, F.BODY, F.BODYSTRUCTURE, F.UID, F.MODSEQ, F.RFC822_SIZE, F.INTERNALDATE),
        ),
    ),
    (
        "a FETCH 2 (RFC822 RFC822.HEADER RFC822.TEXT SAVEDATE EMAILID THREADID)",
        Fetch(
            "a",
            S("2"),
            (F.RFC822, F.RFC822_HEADER, F.RFC822_TEXT, F.SAVEDATE, F.EMAILID, F.THREADID),
        ),
    ),
    ("a FETCH 1 BODY[]", Fetch("a", S("1"), (FetchBody(),))),
    ("a FETCH 1 body.peek[]<0.1024>", Fetch("a", S("1"), (FetchBody(Section(), True, (0, 1024)),))),
    (
        "a FETCH 1 (BODY[HEADER] BODY.PEEK[TEXT] BODY[1.2.MIME] BODY[3])",
        Fetch(
            "a",
            S("1"),
            (
                FetchBody(Section(text=SectionText.HEADER)),
                FetchBody(Section(text=SectionText.TEXT), peek=True),
                FetchBody(Section((1, 2), SectionText.MIME)),
                FetchBody(Section((3,))),
            ),
        ),
    ),
    (
        'a FETCH 1 BODY[2.HEADER.FIELDS.NOT (Received "X-Spam")]<10.20>',
        Fetch(
            "a",
            S("1"),
            (
                FetchBody(
                    Section((2,), SectionText.HEADER_FIELDS_NOT, ("Received", "X-Spam")),
                    partial=(10, 20),
                ),
            ),
        ),
    ),
    (
        "a FETCH 1 (BINARY[1] BINARY.PEEK[] BINARY.SIZE[1.2])",
        Fetch(
            "a",
            S("1"),
            (
                FetchBody(Section((1,)), binary=True),
                FetchBody(Section(), peek=True, binary=True),
                FetchBinarySize((1, 2)),
            ),
        ),
    ),
    (
        "a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        Fetch("a", S("1:*"), (F.FLAGS,), uid=True, changed_since=12345, vanished=True),
    ),
    (
        "a FETCH 1:* (FLAGS) (CHANGEDSINCE 0)",
        Fetch("a", S("1:*"), (F.FLAGS,), changed_since=0),
    ),
]


@pytest.mark.parametrize(("text", "expected"), COMMANDS, ids=[text for text, _ in COMMANDS])
def test_command_forms(text: str, expected: Command) -> None:
    assert parse(text) == expected
    assert parse(text + "\r\n") == expected


def test_every_command_type_is_covered() -> None:
    from roost.imap.grammar import COMMANDS as TABLE

    covered = {type(command) for _, command in COMMANDS}
    assert set(TABLE.values()) | {UidExpunge} <= covered


def test_append_literal_is_not_copied() -> None:
    data = b"x" * 1000
    command = parse_command([b"a APPEND INBOX {1000}", b""], [data])
    assert isinstance(command, Append)
    assert command.messages[0].data is data


def test_login_repr_hides_password() -> None:
    assert "secret" not in repr(parse("a LOGIN bob secret"))


def test_mailbox_names_ascii_unless_utf8() -> None:
    with pytest.raises(ParseError, match="7-bit"):
        parse('a SELECT "Grüße"')
    assert parse('a SELECT "Grüße"', utf8=True) == Select("a", "Grüße")
    assert parse("a SELECT &AMQ-rger") == Select("a", "&AMQ-rger")


def test_inbox_normalization_is_exact() -> None:
    assert parse("a DELETE iNbOx") == Delete("a", "INBOX")
    assert parse("a DELETE inbox.sub") == Delete("a", "inbox.sub")
    assert parse("a DELETE INBOXES") == Delete("a", "INBOXES")


def test_examine_is_read_only() -> None:
    assert parse("a EXAMINE INBOX").read_only  # type: ignore[attr-defined]
    assert not parse("a SELECT INBOX").read_only  # type: ignore[attr-defined]


# --- search keys --------------------------------------------------------------------------


def search_key(criteria: str) -> object:
    command = parse("a SEARCH " + criteria)
    assert isinstance(command, Search)
    return command.key


SEARCH_KEYS: list[tuple[str, object]] = [
    ("ALL", SearchAll()),
    ("ANSWERED", SearchFlag("\\Answered")),
    ("UNANSWERED", SearchFlag("\\Answered", False)),
    ("DELETED", SearchFlag("\\Deleted")),
    ("UNDELETED", SearchFlag("\\Deleted", False)),
    ("DRAFT", SearchFlag("\\Draft")),
    ("UNDRAFT", SearchFlag("\\Draft", False)),
    ("FLAGGED", SearchFlag("\\Flagged")),
    ("UNFLAGGED", SearchFlag("\\Flagged", False)),
    ("SEEN", SearchFlag("\\Seen")),
    ("UNSEEN", SearchFlag("\\Seen", False)),
    ("RECENT", SearchFlag("\\Recent")),
    ("OLD", SearchFlag("\\Recent", False)),
    ("NEW", SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False)))),
    ("KEYWORD $Junk", SearchFlag("$Junk")),
    ("UNKEYWORD $Junk", SearchFlag("$Junk", False)),
    ("BCC bob", SearchHeader("Bcc", "bob")),
    ("CC bob", SearchHeader("Cc", "bob")),
    ('FROM "Bob Smith"', SearchHeader("From", "Bob Smith")),
    ("SUBJECT {5}\r\nhello", SearchHeader("Subject", "hello")),
    ("TO bob", SearchHeader("To", "bob")),
    ('HEADER Message-ID "<a@b>"', SearchHeader("Message-ID", "<a@b>")),
    ('HEADER X-Spam ""', SearchHeader("X-Spam", "")),
    ("BODY invoice", SearchBody("invoice")),
    ("TEXT invoice", SearchText("invoice")),
    ("BEFORE 1-Feb-1994", SearchDate(DateField.INTERNAL, DateRelation.BEFORE, D.date())),
    ("ON 1-Feb-1994", SearchDate(DateField.INTERNAL, DateRelation.ON, D.date())),
    ('SINCE "1-Feb-1994"', SearchDate(DateField.INTERNAL, DateRelation.SINCE, D.date())),
    ("SENTBEFORE 1-Feb-1994", SearchDate(DateField.SENT, DateRelation.BEFORE, D.date())),
    ("SENTON 1-Feb-1994", SearchDate(DateField.SENT, DateRelation.ON, D.date())),
    ("SENTSINCE 1-Feb-1994", SearchDate(DateField.SENT, DateRelation.SINCE, D.date())),
    ("LARGER 1024", SearchLarger(1024)),
    ("SMALLER 1024", SearchSmaller(1024)),
    ("NOT SEEN", SearchNot(SearchFlag("\\Seen"))),
    (
        "OR FROM a (TO b CC c)",
        SearchOr(
            SearchHeader("From", "a"),
            SearchAnd((SearchHeader("To", "b"), SearchHeader("Cc", "c"))),
        ),
    ),
    ("(SEEN)", SearchFlag("\\Seen")),
    ("2:4,7", SearchSequence(S("2:4,7"))),
    ("*", SearchSequence(S("*"))),
    ("$", SearchSequence(S("$"))),
    ("UID 10:*", SearchSequence(S("10:*"), uid=True)),
    ("MODSEQ 620162338", SearchModSeq(620162338)),
    (
        'MODSEQ "/flags/\\\\draft" all 620162338',
        SearchModSeq(620162338, "/flags/\\draft", "all"),
    ),
    ('MODSEQ "/flags/$Junk" PRIV 5', SearchModSeq(5, "/flags/$Junk", "priv")),
    (
        "UNSEEN SINCE 1-Feb-1994 NOT FROM bob",
        SearchAnd(
            (
                SearchFlag("\\Seen", False),
                SearchDate(DateField.INTERNAL, DateRelation.SINCE, D.date()),
                SearchNot(SearchHeader("From", "bob")),
            )
        ),
    ),
]


@pytest.mark.parametrize(("criteria", "expected"), SEARCH_KEYS, ids=[c for c, _ in SEARCH_KEYS])
def test_search_keys(criteria: str, expected: object) -> None:
    assert search_key(criteria) == expected


def test_search_nesting_is_bounded() -> None:
    deep = "(" * 40 + "SEEN" + ")" * 40
    with pytest.raises(ParseError, match="nested too deeply"):
        parse("a SEARCH " + deep)
    with pytest.raises(ParseError, match="nested too deeply"):
        parse("a SEARCH " + "NOT " * 40 + "SEEN")
    assert search_key("(" * 10 + "SEEN" + ")" * 10) == SearchFlag("\\Seen")


def test_search_bad_charset() -> None:
    with pytest.raises(BadCharsetError) as caught:
        parse("a SEARCH CHARSET ISO-8859-1 TEXT x")
    assert caught.value.charset == "ISO-8859-1"
    assert isinstance(caught.value, ParseError)


def test_search_string_must_be_utf8() -> None:
    with pytest.raises(ParseError, match="UTF-8"):
        parse(b"a SEARCH TEXT {2}\r\n\xff\xfe")


# --- fetch items ----------------------------------------------------------------------------


def test_fetch_body_names() -> None:
    item = FetchBody(Section((1,), SectionText.HEADER_FIELDS, ("From", "X Y")), True, (0, 10))
    assert bytes(item) == b'BODY.PEEK[1.HEADER.FIELDS (From "X Y")]<0.10>'
    assert item.response_name() == b'BODY[1.HEADER.FIELDS (From "X Y")]<0>'
    assert not item.sets_seen
    assert FetchBody(binary=True).response_name() == b"BINARY[]"
    assert bytes(FetchBinarySize((1, 2))) == b"BINARY.SIZE[1.2]"
    assert bytes(F.RFC822_SIZE) == b"RFC822.SIZE"


# --- whole-client captures ------------------------------------------------------------------

THUNDERBIRD = [
    "1 capability",
    "2 authenticate PLAIN",
    '3 ID ("name" "Thunderbird" "version" "115.6.0")',
    "4 ENABLE CONDSTORE QRESYNC",
    '5 select "INBOX" (CONDSTORE)',
    "6 UID fetch 1:* (FLAGS)",
    "7 IDLE",
    '8 list (SUBSCRIBED) "" "*" RETURN (CHILDREN SPECIAL-USE)',
    "9 UID fetch 4 (UID RFC822.SIZE FLAGS BODY.PEEK[])",
    "10 UID fetch 1:4 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject "
    "Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type "
    "Reply-To)])",
    "11 uid store 4 +Flags (\\Seen)",
    '12 select "INBOX" (QRESYNC (1700000000 4711 1:40))',
    "13 UID fetch 41:* (FLAGS) (CHANGEDSINCE 4711 VANISHED)",
    '14 STATUS "Sent" (UIDNEXT MESSAGES UNSEEN RECENT)',
    "15 logout",
]
MUTT = [
    "a0000 CAPABILITY",
    "a0001 AUTHENTICATE PLAIN AGJvYgBzZWNyZXQ=",
    'a0002 LIST "" ""',
    'a0003 LSUB "" "*"',
    'a0004 STATUS "INBOX" (MESSAGES)',
    'a0005 SELECT "INBOX"',
    "a0006 FETCH 1:12 (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (DATE FROM "
    "SENDER SUBJECT TO CC MESSAGE-ID REFERENCES CONTENT-TYPE CONTENT-DESCRIPTION IN-REPLY-TO "
    "REPLY-TO LINES LIST-POST X-LABEL X-ORIGINAL-TO)])",
    "a0007 UID FETCH 3 BODY.PEEK[]",
    "a0008 UID STORE 3 +FLAGS.SILENT (\\Seen)",
    "a0009 NOOP",
    "a0010 EXPUNGE",
    "a0011 CLOSE",
    "a0012 LOGOUT",
]
APPLE_MAIL = [
    "1.1 CAPABILITY",
    '2.1 ID ("name" "Mac OS X Mail" "version" "16.0 (3774.300.61.1.2)" "os" "macOS" '
    '"os-version" "14.2.1 (23C71)" "vendor" "Apple Inc.")',
    "3.1 AUTHENTICATE PLAIN",
    "4.1 ENABLE QRESYNC",
    '5.1 LIST "" ""',
    '6.1 LIST (SPECIAL-USE) "" "*"',
    '7.1 LSUB "" "*"',
    "8.1 SELECT INBOX (CONDSTORE)",
    "9.1 UID SEARCH 1:* NOT DELETED",
    "10.1 UID FETCH 1:* (FLAGS UID) (CHANGEDSINCE 1)",
    "11.1 UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (from to "
    "cc bcc subject date message-id in-reply-to references content-type x-priority "
    "x-uniform-type-identifier x-universally-unique-identifier list-id list-unsubscribe)])",
    "12.1 UID FETCH 7 (BODYSTRUCTURE BODY.PEEK[1]<0.4096>)",
    "13.1 NAMESPACE",
    "14.1 IDLE",
]
MBSYNC = [
    "1 CAPABILITY",
    '2 LOGIN "bob" {6}\r\nsecret',
    "3 NAMESPACE",
    '4 LIST "" "*"',
    '5 SELECT "INBOX"',
    "6 UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-TUID MESSAGE-ID)])",
    '7 APPEND "Archive" (\\Seen) {12+}\r\nSubject: x\r\n',
    "8 UID STORE 5 +FLAGS.SILENT (\\Deleted)",
    "9 UID EXPUNGE 5",
    "10 LOGOUT",
]


@pytest.mark.parametrize(
    "line", THUNDERBIRD + MUTT + APPLE_MAIL + MBSYNC, ids=lambda line: line[:40]
)
def test_real_client_commands_parse(line: str) -> None:
    command = parse(line)
    assert command.tag == line.split(" ", 1)[0]


def test_mbsync_header_fetch() -> None:
    command = parse(MBSYNC[5])
    assert command == Fetch(
        "6",
        S("1:*"),
        (
            F.UID,
            F.FLAGS,
            FetchBody(
                Section(text=SectionText.HEADER_FIELDS, header_fields=("X-TUID", "MESSAGE-ID")),
                peek=True,
            ),
        ),
        uid=True,
    )


# --- helpers ----------------------------------------------------------------------------------


def test_lookup_command() -> None:
    assert lookup_command(b"a1 uid fetch 1 FLAGS") == ("a1", Fetch)
    assert lookup_command(b"a1 uid expunge 1") == ("a1", UidExpunge)
    assert lookup_command(b"a1 XYZZY") == ("a1", None)
    assert lookup_command(b"a1 uid LOGIN") == ("a1", None)
    assert lookup_command(b"+ a1 NOOP") == (None, None)
    assert lookup_command(b"a1") == (None, None)


def test_split_command() -> None:
    assert split_command(b"a LOGIN {3}\r\nbob pw\r\n") == ([b"a LOGIN {3}", b" pw"], [b"bob"])
    with pytest.raises(ParseError):
        split_command(b"a LOGIN {30}\r\nbob pw\r\n")
    with pytest.raises(ParseError):
        split_command(b"a NOOP\r\nb NOOP\r\n")


@given(st.binary(max_size=200))
def test_parse_command_raises_only_parse_errors(data: bytes) -> None:
    line = data.replace(b"\r", b"").replace(b"\n", b"")
    with contextlib.suppress(ParseError):
        parse_command([line])


@given(st.text(alphabet=st.sampled_from(list('a1 :*,()[]<>."\\{}+~$-ABCDEFHLNSTU0')), max_size=80))
def test_parse_command_on_grammar_junk(text: str) -> None:
    for prefix in ("a ", "a SEARCH ", "a FETCH 1 ", "a UID STORE 1 ", "a LIST ", "a APPEND x "):
        with contextlib.suppress(ParseError):
            parse_command([(prefix + text).encode("ascii")])

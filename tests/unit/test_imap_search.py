"""Unit tests for roost.imap.search: SEARCH criteria against messages (RFC 9051 §6.4.4).

Criteria are written as a client sends them and parsed by roost.imap.grammar, so these
tests also check that the parser's key tree means what the evaluator thinks it means.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.imap.commands import DateField, DateRelation, Search, SearchDate, SearchKey
from roost.imap.fetch import search_header
from roost.imap.grammar import parse_command_bytes
from roost.imap.message import ParsedMessage
from roost.imap.search import MessageContext, header_fields, matches, needs_message
from roost.imap.sequence import SequenceSet

UTC = datetime.UTC


def key(criteria: str) -> SearchKey:
    command = parse_command_bytes(b"a SEARCH CHARSET UTF-8 " + criteria.encode())
    assert isinstance(command, Search)
    return command.key


def crlf(text: bytes) -> bytes:
    return text.replace(b"\n", b"\r\n")


REPORT = crlf(
    b"""\
From: "Smith, John" <john.smith@example.com>
To: jane@example.com
Cc: Team <team@example.com>
Bcc: boss@example.com
Subject: =?UTF-8?Q?Quarterly_r=C3=A9port?=
Date: Wed, 6 Mar 2024 23:30:00 -0800
X-Priority: 1
X-Empty:
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Les chiffres sont pr=EAts.
--b
Content-Type: application/octet-stream
Content-Transfer-Encoding: base64

c2VjcmV0IGJpbmFyeQ==
--b
Content-Type: message/rfc822

From: archive@example.org
Subject: Attached minutes

Minutes of the meeting.
--b--
"""
)

PLAIN = crlf(
    b"""\
From: alice@example.org
To: bob@example.net
Subject: lunch
Date: 1 Mar 2024 12:00:00 +0000

See you at noon.
"""
)

NO_DATE = crlf(b"Subject: undated\n\nbody\n")

INTERNAL = datetime.datetime(2024, 3, 7, 6, 0, tzinfo=UTC).timestamp()


def context(
    raw: bytes = REPORT,
    *,
    msn: int = 3,
    uid: int = 30,
    flags: frozenset[str] = frozenset(),
    internal_date: float = INTERNAL,
    size: int | None = None,
    mod_seq: int = 7,
    max_msn: int = 5,
    max_uid: int = 50,
    zone: datetime.tzinfo = UTC,
    loads: list[int] | None = None,
) -> MessageContext:
    def load() -> ParsedMessage:
        if loads is not None:
            loads.append(1)
        return ParsedMessage.parse(raw)

    return MessageContext(
        msn=msn,
        uid=uid,
        flags=flags,
        internal_date=internal_date,
        size=len(raw) if size is None else size,
        max_msn=max_msn,
        max_uid=max_uid,
        message=load,
        mod_seq=mod_seq,
        zone=zone,
    )


def search(criteria: str, ctx: MessageContext | None = None) -> bool:
    return matches(key(criteria), context() if ctx is None else ctx)


# --- flags ------------------------------------------------------------------------------------

FLAGGED_SEEN = frozenset({"\\Flagged", "\\Seen", "$Forwarded", "\\Recent"})


@pytest.mark.parametrize(
    ("criteria", "flags", "expected"),
    [
        ("ALL", frozenset(), True),
        ("ANSWERED", frozenset({"\\Answered"}), True),
        ("ANSWERED", FLAGGED_SEEN, False),
        ("UNANSWERED", FLAGGED_SEEN, True),
        ("DELETED", frozenset({"\\Deleted"}), True),
        ("UNDELETED", frozenset({"\\Deleted"}), False),
        ("DRAFT", frozenset({"\\Draft"}), True),
        ("UNDRAFT", frozenset(), True),
        ("FLAGGED", FLAGGED_SEEN, True),
        ("UNFLAGGED", FLAGGED_SEEN, False),
        ("SEEN", FLAGGED_SEEN, True),
        ("UNSEEN", FLAGGED_SEEN, False),
        ("RECENT", FLAGGED_SEEN, True),
        ("RECENT", frozenset(), False),
        ("OLD", frozenset({"\\Recent"}), False),
        ("OLD", frozenset(), True),
        ("NEW", frozenset({"\\Recent"}), True),
        ("NEW", FLAGGED_SEEN, False),
        ("NEW", frozenset(), False),
        ("KEYWORD $Forwarded", FLAGGED_SEEN, True),
        ("KEYWORD $forwarded", FLAGGED_SEEN, True),
        ("KEYWORD $Junk", FLAGGED_SEEN, False),
        ("UNKEYWORD $Junk", FLAGGED_SEEN, True),
        ("UNKEYWORD $Forwarded", FLAGGED_SEEN, False),
    ],
)
def test_flag_keys(criteria: str, flags: frozenset[str], expected: bool) -> None:
    loads: list[int] = []
    assert search(criteria, context(flags=flags, loads=loads)) is expected
    assert loads == []


# --- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("3", True),
        ("1,2", False),
        ("2:4", True),
        ("4:2", True),
        ("*", False),
        ("3:*", True),
        ("UID 30", True),
        ("UID 1:29,31:*", False),
        ("UID *", False),
        ("UID 25:*", True),
        ("UID 99:*", False),
        ("MODSEQ 7", True),
        ("MODSEQ 8", False),
        ('MODSEQ "/flags/\\\\seen" all 5', True),
    ],
)
def test_number_keys(criteria: str, expected: bool) -> None:
    assert search(criteria) is expected


def test_star_is_the_largest_number() -> None:
    assert search("*", context(msn=5, max_msn=5))
    assert search("UID *", context(uid=50, max_uid=50))
    # 559:* includes the last message even when it is below 559 (RFC 9051 §9 seq-range).
    assert search("UID 559:*", context(uid=50, max_uid=50))


def test_saved_result_must_be_substituted() -> None:
    with pytest.raises(ValueError, match=r"\$"):
        search("$")
    assert not needs_message(key("$"))


@pytest.mark.parametrize(
    ("criteria", "size", "expected"),
    [
        ("LARGER 100", 101, True),
        ("LARGER 100", 100, False),
        ("SMALLER 100", 99, True),
        ("SMALLER 100", 100, False),
    ],
)
def test_size_keys_are_strict(criteria: str, size: int, expected: bool) -> None:
    assert search(criteria, context(size=size)) is expected


# --- dates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        # Internal date 7 Mar 2024 06:00 UTC.
        ("ON 7-Mar-2024", True),
        ("ON 6-Mar-2024", False),
        ("BEFORE 7-Mar-2024", False),
        ("BEFORE 8-Mar-2024", True),
        ("SINCE 7-Mar-2024", True),
        ("SINCE 8-Mar-2024", False),
        # Date: Wed, 6 Mar 2024 23:30:00 -0800 is 7 Mar 07:30 UTC, but the date in the
        # message's own zone is 6 March.
        ("SENTON 6-Mar-2024", True),
        ("SENTON 7-Mar-2024", False),
        ("SENTBEFORE 6-Mar-2024", False),
        ("SENTBEFORE 7-Mar-2024", True),
        ("SENTSINCE 6-Mar-2024", True),
        ("SENTSINCE 7-Mar-2024", False),
    ],
)
def test_date_keys(criteria: str, expected: bool) -> None:
    assert search(criteria) is expected


def test_internal_date_uses_the_context_zone() -> None:
    pacific = datetime.timezone(datetime.timedelta(hours=-8))
    ctx = context(zone=pacific)  # 7 Mar 06:00 UTC is 6 Mar 22:00 at -0800
    assert search("ON 6-Mar-2024", ctx)
    assert not search("ON 7-Mar-2024", ctx)


def test_sent_date_falls_back_to_internal_date() -> None:
    # RFC 5256 §2.2: without a usable Date field the internal date stands in.
    assert search("SENTON 7-Mar-2024", context(NO_DATE))
    assert search("SENTON 7-Mar-2024", context(crlf(b"Date: soon\n\n")))


def test_out_of_range_internal_date() -> None:
    assert search("SINCE 1-Jan-2024", context(internal_date=1e300))
    assert search("BEFORE 1-Jan-1970", context(internal_date=-1e300))


def test_date_key_values() -> None:
    assert key("SENTBEFORE 1-Feb-2024") == SearchDate(
        DateField.SENT, DateRelation.BEFORE, datetime.date(2024, 2, 1)
    )


# --- header and text keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ('FROM "john smith"', False),
        ('FROM "Smith, John"', True),
        ("FROM JOHN.SMITH@EXAMPLE", True),
        ("FROM jane", False),
        ("TO jane@example.com", True),
        ("TO team", False),
        ("CC team", True),
        ("CC Team@Example.Com", True),
        ("BCC boss", True),
        ("BCC jane", False),
        # Encoded words are decoded before matching, case folded.
        ('SUBJECT "quarterly RÉPORT"', True),
        ("SUBJECT =?UTF-8?Q?", False),
        ("SUBJECT minutes", False),  # the attached message's subject is body text
        ('HEADER X-Priority "1"', True),
        ('HEADER x-priority "2"', False),
        ('HEADER X-Priority ""', True),
        ('HEADER X-Empty ""', True),
        ('HEADER X-Missing ""', False),
        ('HEADER Content-Type "multipart"', True),
        # Quoted-printable ISO-8859-1 text is decoded.
        ('BODY "PRÊTS"', True),
        ("BODY pr=EAts", False),
        ('BODY "minutes of the meeting"', True),
        ('BODY "attached minutes"', True),  # header of the attached message
        ("BODY secret", False),  # application/octet-stream is not text
        ("BODY Quarterly", False),  # the message header is not body
        ("TEXT Quarterly", True),
        ("TEXT jane@example", True),
        ('TEXT "chiffres"', True),
        ("TEXT nowhere", False),
        ('BODY ""', True),
        ('TEXT ""', True),
    ],
)
def test_header_and_text_keys(criteria: str, expected: bool) -> None:
    assert search(criteria) is expected


def test_search_strings_in_literals_and_utf8() -> None:
    assert search('SUBJECT "réport"')
    command = parse_command_bytes(b"a SEARCH CHARSET UTF-8 BODY {6}\r\npr\xc3\xaats")
    assert isinstance(command, Search)
    assert matches(command.key, context())


def test_raw_utf8_header_matches() -> None:
    raw = crlf("Subject: Café à Paris\nFrom: Zoë <zoe@example.org>\n\nx\n".encode())
    assert search('SUBJECT "CAFÉ"', context(raw))
    assert search('FROM "zoë"', context(raw))


# --- combinations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("NOT SEEN", True),
        ("NOT NOT SEEN", False),
        ("OR SEEN FLAGGED", False),
        ("OR SEEN 3", True),
        ("OR 1 OR 2 3", True),
        ("(UNSEEN 3)", True),
        ("UNSEEN 3 FROM smith", True),
        ("UNSEEN 3 FROM nobody", False),
        ("(OR 1 2) UNSEEN", False),
        ("NOT (OR 1 2)", True),
        ("NOT OR BODY chiffres 1", False),
    ],
)
def test_combinations(criteria: str, expected: bool) -> None:
    assert search(criteria) is expected


def test_cheap_keys_decide_before_the_message_is_read() -> None:
    loads: list[int] = []
    ctx = context(flags=frozenset({"\\Seen"}), loads=loads)
    assert not search("FROM smith UNSEEN", ctx)
    assert not search("OR 1 2 BODY chiffres", ctx)
    assert search("OR SEEN BODY nothing", ctx)
    assert loads == []
    assert search("SEEN FROM smith BODY chiffres SENTON 6-Mar-2024", ctx)
    assert loads == [1]  # loaded once for three keys that need it


def test_needs_message() -> None:
    for cheap in ("ALL", "FLAGGED", "1:*", "UID 5", "LARGER 5", "SINCE 1-Jan-2024", "MODSEQ 3"):
        assert not needs_message(key(cheap)), cheap
    assert not needs_message(key("OR (NOT SEEN) (DELETED SMALLER 9)"))
    for costly in ("FROM a", "HEADER X y", "BODY x", "TEXT x", "SENTON 1-Jan-2024"):
        assert needs_message(key(costly)), costly
    assert needs_message(key("OR SEEN NOT (DELETED BODY x)"))


def test_many_messages_without_reading_any() -> None:
    loads: list[int] = []
    found = [
        msn
        for msn in range(1, 1001)
        if matches(
            key("FLAGGED"),
            context(
                msn=msn,
                uid=msn,
                flags=frozenset({"\\Flagged"}) if msn % 10 == 0 else frozenset(),
                max_msn=1000,
                max_uid=1000,
                loads=loads,
            ),
        )
    ]
    assert len(found) == 100 and loads == []


def test_plain_message() -> None:
    ctx = context(PLAIN)
    assert search("FROM alice TO bob SUBJECT LUNCH BODY noon SENTON 1-Mar-2024", ctx)
    assert not search("BODY alice", ctx)


def test_sequence_set_is_used_as_is() -> None:
    ctx = context(msn=3, max_msn=5)
    assert matches(key("2,4:5"), ctx) is False
    assert SequenceSet.parse("2,4:5").contains(4, 5)


CONTENT_KEYS = [
    key(criteria)
    for criteria in (
        "FROM a",
        'HEADER X-A ""',
        "SUBJECT x",
        "BODY x",
        "TEXT x",
        "SENTBEFORE 1-Jan-2024",
        "SENTON 1-Jan-2024",
        "SENTSINCE 1-Jan-2024",
    )
]


@settings(max_examples=200)
@given(st.binary(max_size=1000))
def test_content_keys_never_raise(raw: bytes) -> None:
    for content_key in CONTENT_KEYS:
        assert matches(content_key, context(raw)) in (True, False)


# --- the header cache: header keys answered from a few cached fields -----------------------


@pytest.mark.parametrize(
    ("criteria", "fields"),
    [
        ("FROM smith", frozenset({"from"})),
        ("OR SUBJECT x HEADER X-Priority 1", frozenset({"subject", "x-priority"})),
        ("NOT SENTSINCE 1-Jan-2024 FLAGGED", frozenset({"date"})),
        ("UNSEEN", frozenset()),
        ("OR FROM a BODY b", None),
        ("TEXT x", None),
    ],
)
def test_header_fields_names_what_a_key_reads(criteria: str, fields: frozenset[str] | None) -> None:
    assert header_fields(key(criteria)) == fields


@pytest.mark.parametrize(
    "criteria",
    [
        "FROM smith",
        "FROM john.smith@example.com",
        "TO jane",
        "CC team",
        "BCC boss",
        "SUBJECT quarterly",
        "SUBJECT minutes",  # only in the attached message: no match either way
        "SENTON 6-Mar-2024",
        "SENTBEFORE 7-Mar-2024",
        "NOT FROM alice",
        "HEADER Message-ID x",
    ],
)
def test_search_header_gives_the_same_answers(criteria: str) -> None:
    """A message cut down to the cached fields answers header keys as the whole does."""
    for raw in (REPORT, PLAIN, NO_DATE):
        cut = search_header(raw)
        assert b"Content-Type" not in cut and b"X-Priority" not in cut
        whole = parsed_context(ParsedMessage.parse(raw))
        part = parsed_context(ParsedMessage.parse(cut))
        assert matches(key(criteria), whole) == matches(key(criteria), part), criteria


def parsed_context(
    message: ParsedMessage,
    *,
    load: Callable[[], ParsedMessage] | None = None,
    header: bytes | None = None,
) -> MessageContext:
    """Message 1 of 1 (``load``: how the message is had, default ``message`` itself;
    ``header``: the cached header fields, as the index's search cache gives them)."""
    return MessageContext(
        msn=1,
        uid=1,
        flags=frozenset(),
        internal_date=1_700_000_000.0,
        size=len(message.raw),
        max_msn=1,
        max_uid=1,
        message=load or (lambda: message),
        header=header,
    )


_HEADER_TEXT = st.text(alphabet="abcAB7 \t\r\n:=?<>@.\u017f\u00e9", max_size=60)


@given(
    st.lists(st.tuples(st.sampled_from(["From", "To", "Subject", "X-Other"]), _HEADER_TEXT)),
    st.sampled_from(["FROM", "TO", "SUBJECT", "NOT FROM", "HEADER X-Other"]),
    st.text(alphabet="abcAB7 =?\u017f", min_size=0, max_size=4),
)
@settings(max_examples=400)
def test_header_key_answers_the_same_with_the_raw_header(
    fields: list[tuple[str, str]], name: str, needle: str
) -> None:
    """The shortcut on the raw cached header (no parse when the text cannot occur)
    never changes an answer: folding, encoded words, non-ASCII case folding included."""
    raw = b"".join(f"{field}: {value}\r\n".encode() for field, value in fields) + b"\r\n"
    message = ParsedMessage.parse(raw)
    criteria = f'{name} "{needle}"'
    parsed = parsed_context(message)
    shortcut = parsed_context(message, header=raw)
    assert matches(key(criteria), shortcut) == matches(key(criteria), parsed), (raw, criteria)


def test_header_key_shortcut_skips_the_parse() -> None:
    """A needle absent from the raw header is answered without parsing the message."""
    loads: list[int] = []
    raw = crlf(b"From: John Smith <john@example.com>\nSubject: hello\n\nbody\n")

    def load() -> ParsedMessage:
        loads.append(1)
        return ParsedMessage.parse(raw)

    ctx = parsed_context(ParsedMessage.parse(raw), load=load, header=search_header(raw))
    assert not matches(key("FROM nobody7"), ctx)
    assert loads == []
    assert matches(key("FROM smith"), ctx)
    assert loads == [1]

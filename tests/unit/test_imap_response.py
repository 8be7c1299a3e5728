"""Unit tests for roost.imap.response: rendering server responses."""

from __future__ import annotations

import datetime
import imaplib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.imap import response as r
from roost.imap.commands import FetchAttribute, FetchBody, Section, SectionText
from roost.imap.grammar import Reader, parse_date_time, parse_flag, split_command
from roost.imap.sequence import SequenceSet

S = SequenceSet.parse
PDT = datetime.timezone(datetime.timedelta(hours=-7))


# --- status responses ---------------------------------------------------------------------


def test_tagged_responses() -> None:
    assert bytes(r.TaggedResponse("a1", "OK", "LOGIN completed")) == b"a1 OK LOGIN completed\r\n"
    assert bytes(r.TaggedResponse("a2", "NO", "no such mailbox", r.NONEXISTENT)) == (
        b"a2 NO [NONEXISTENT] no such mailbox\r\n"
    )
    assert bytes(r.TaggedResponse("a3", "OK", "SELECT completed", r.READ_WRITE)) == (
        b"a3 OK [READ-WRITE] SELECT completed\r\n"
    )
    assert bytes(r.TaggedResponse("a4", "BAD")) == b"a4 BAD invalid\r\n"


def test_untagged_status_responses() -> None:
    assert bytes(r.UntaggedResponse("BYE", "logging out")) == b"* BYE logging out\r\n"
    assert bytes(r.UntaggedResponse("PREAUTH", "welcome")) == b"* PREAUTH welcome\r\n"
    assert bytes(r.UntaggedResponse("OK", "quota nearly full", r.ALERT)) == (
        b"* OK [ALERT] quota nearly full\r\n"
    )
    assert bytes(r.UntaggedResponse("OK", "", r.ResponseCode.uid_validity(3857529045))) == (
        b"* OK [UIDVALIDITY 3857529045] completed\r\n"
    )


def test_text_cannot_inject_lines() -> None:
    evil = r.TaggedResponse("a", "NO", "no mailbox x\r\n* OK [ALERT] pwned\x00")
    assert bytes(evil) == b"a NO no mailbox x  * OK [ALERT] pwned \r\n"
    assert bytes(evil).count(b"\r\n") == 1


def test_continuations() -> None:
    assert bytes(r.CONTINUE_LITERAL) == b"+ Ready for literal data\r\n"
    assert bytes(r.ContinuationResponse()) == b"+ \r\n"
    assert bytes(r.ContinuationResponse("idling")) == b"+ idling\r\n"


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (r.UNAVAILABLE, b"[UNAVAILABLE]"),
        (r.AUTHENTICATIONFAILED, b"[AUTHENTICATIONFAILED]"),
        (r.AUTHORIZATIONFAILED, b"[AUTHORIZATIONFAILED]"),
        (r.EXPIRED, b"[EXPIRED]"),
        (r.PRIVACYREQUIRED, b"[PRIVACYREQUIRED]"),
        (r.CONTACTADMIN, b"[CONTACTADMIN]"),
        (r.NOPERM, b"[NOPERM]"),
        (r.INUSE, b"[INUSE]"),
        (r.EXPUNGEISSUED, b"[EXPUNGEISSUED]"),
        (r.CORRUPTION, b"[CORRUPTION]"),
        (r.SERVERBUG, b"[SERVERBUG]"),
        (r.CLIENTBUG, b"[CLIENTBUG]"),
        (r.CANNOT, b"[CANNOT]"),
        (r.LIMIT, b"[LIMIT]"),
        (r.OVERQUOTA, b"[OVERQUOTA]"),
        (r.ALREADYEXISTS, b"[ALREADYEXISTS]"),
        (r.NONEXISTENT, b"[NONEXISTENT]"),
        (r.ALERT, b"[ALERT]"),
        (r.PARSE, b"[PARSE]"),
        (r.READ_ONLY, b"[READ-ONLY]"),
        (r.READ_WRITE, b"[READ-WRITE]"),
        (r.TRYCREATE, b"[TRYCREATE]"),
        (r.UIDNOTSTICKY, b"[UIDNOTSTICKY]"),
        (r.HASCHILDREN, b"[HASCHILDREN]"),
        (r.UNKNOWN_CTE, b"[UNKNOWN-CTE]"),
        (r.NOMODSEQ, b"[NOMODSEQ]"),
        (r.CLOSED, b"[CLOSED]"),
        (r.TOOBIG, b"[TOOBIG]"),
        (r.NOTSAVED, b"[NOTSAVED]"),
        (r.USEATTR, b"[USEATTR]"),
        (r.ResponseCode.uid_next(4392), b"[UIDNEXT 4392]"),
        (r.ResponseCode.uid_validity(3857529045), b"[UIDVALIDITY 3857529045]"),
        (
            r.ResponseCode.permanent_flags(("\\Deleted", "\\Seen", "\\*")),
            b"[PERMANENTFLAGS (\\Deleted \\Seen \\*)]",
        ),
        (r.ResponseCode.permanent_flags(()), b"[PERMANENTFLAGS ()]"),
        (r.ResponseCode.highest_mod_seq(715194045007), b"[HIGHESTMODSEQ 715194045007]"),
        (r.ResponseCode.append_uid(38505, S("3955")), b"[APPENDUID 38505 3955]"),
        (
            r.ResponseCode.copy_uid(38505, S("304,319:320"), S("3956:3958")),
            b"[COPYUID 38505 304,319:320 3956:3958]",
        ),
        (r.ResponseCode.modified(S("7,9")), b"[MODIFIED 7,9]"),
        (
            r.ResponseCode.capability(("IMAP4rev2", "IMAP4rev1", "AUTH=PLAIN")),
            b"[CAPABILITY IMAP4rev2 IMAP4rev1 AUTH=PLAIN]",
        ),
        (r.ResponseCode.bad_charset(("UTF-8", "US-ASCII")), b"[BADCHARSET (UTF-8 US-ASCII)]"),
        (r.ResponseCode.bad_charset(), b"[BADCHARSET]"),
        (r.ResponseCode.mailbox_id("F2212ea87"), b"[MAILBOXID (F2212ea87)]"),
    ],
)
def test_response_codes(code: r.ResponseCode, text: bytes) -> None:
    assert bytes(code) == text


def test_response_code_name_must_be_an_atom() -> None:
    with pytest.raises(ValueError):
        bytes(r.ResponseCode("NOT AN ATOM"))


# --- strings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("INBOX", b'"INBOX"'),
        ("", b'""'),
        ('say "hi"', b'"say \\"hi\\""'),
        ("back\\slash", b'"back\\\\slash"'),
        (b"two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        ("Entwürfe", b"{9}\r\nEntw\xc3\xbcrfe"),
        (b"nul\x00", b"{4}\r\nnul\x00"),
    ],
)
def test_render_string(value: str | bytes, rendered: bytes) -> None:
    assert r.render_string(value) == rendered


def test_render_quoted_refuses_what_it_cannot_quote() -> None:
    for value in (b"a\r\nb", "ü", b"\x00"):
        with pytest.raises(ValueError):
            r.render_quoted(value)


def test_render_nstring_and_literal() -> None:
    assert r.render_nstring(None) == b"NIL"
    assert r.render_nstring("NIL") == b'"NIL"'
    assert r.render_literal(b"abc") == b"{3}\r\nabc"
    assert r.render_literal(b"a\x00", binary=True) == b"~{2}\r\na\x00"


def test_render_flag_list() -> None:
    assert r.render_flag_list(()) == b"()"
    assert r.render_flag_list(("\\Seen", "$Forwarded")) == b"(\\Seen $Forwarded)"
    for bad in ("two words", "(", "", "ü"):
        for _ in range(2):  # a bad list is refused every time (only good ones are kept)
            with pytest.raises((ValueError, UnicodeEncodeError)):
                r.render_flag_list((bad,))
            with pytest.raises((ValueError, UnicodeEncodeError)):
                bytes(r.RawItem(bad, b"()"))
    # Lists (tuples kept, iterables not) and atoms render the same the second time.
    for _ in range(2):
        assert r.render_flag_list(("\\Seen", "$Forwarded")) == b"(\\Seen $Forwarded)"
        assert r.render_flag_list(iter(["\\Seen"])) == b"(\\Seen)"
        assert bytes(r.RawItem("ENVELOPE", b"(NIL)")) == b"ENVELOPE (NIL)"


def test_render_date_time() -> None:
    value = datetime.datetime(1996, 7, 7, 2, 44, 25, tzinfo=PDT)
    assert r.render_date_time(value) == b'" 7-Jul-1996 02:44:25 -0700"'
    india = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    value = datetime.datetime(2024, 12, 17, 23, 0, 1, tzinfo=india)
    assert r.render_date_time(value) == b'"17-Dec-2024 23:00:01 +0530"'
    with pytest.raises(ValueError):
        r.render_date_time(datetime.datetime(2024, 1, 1))


def test_date_time_read_by_imaplib() -> None:
    value = datetime.datetime(1996, 7, 7, 2, 44, 25, tzinfo=PDT)
    line = bytes(r.FetchResponse(1, (r.InternalDateItem(value),)))
    parsed = imaplib.Internaldate2tuple(line)
    assert parsed is not None
    assert datetime.datetime(*parsed[:6]) == value.astimezone().replace(tzinfo=None)


@given(st.binary(max_size=200).filter(lambda data: b"\x00" not in data))
def test_strings_round_trip_through_the_parser(value: bytes) -> None:
    lines, literals = split_command(b"x " + r.render_string(value))
    reader = Reader(lines, literals)
    reader.pos = 2
    assert reader.string() == value
    assert reader.at_end()


@given(
    st.datetimes(
        min_value=datetime.datetime(1900, 1, 1),
        max_value=datetime.datetime(9999, 12, 31),
        timezones=st.sampled_from([datetime.UTC, PDT]),
    )
)
def test_date_times_round_trip(value: datetime.datetime) -> None:
    value = value.replace(microsecond=0)
    assert parse_date_time(r.render_date_time(value), 0)[0] == value


@given(st.lists(st.from_regex(r"\$?[A-Za-z][A-Za-z0-9_-]{0,10}", fullmatch=True), max_size=6))
def test_flag_lists_round_trip(keywords: list[str]) -> None:
    flags = ("\\Seen", *keywords, "\\*")
    rendered = r.render_flag_list(flags)
    reader = Reader([rendered])
    parsed = reader.items(
        lambda: reader.run(lambda buf, pos: parse_flag(buf, pos, allow_wildcard=True))
    )
    assert tuple(parsed) == flags


# --- untagged data --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "wire"),
    [
        (r.ExistsResponse(23), b"* 23 EXISTS\r\n"),
        (r.RecentResponse(5), b"* 5 RECENT\r\n"),
        (r.ExpungeResponse(3), b"* 3 EXPUNGE\r\n"),
        (r.VanishedResponse(S("405,407,410:412")), b"* VANISHED 405,407,410:412\r\n"),
        (r.VanishedResponse(S("41,43:116"), earlier=True), b"* VANISHED (EARLIER) 41,43:116\r\n"),
        (
            r.FlagsResponse(("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")),
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
        ),
        (
            r.CapabilityResponse(("IMAP4rev1", "IMAP4rev2", "LITERAL+", "IDLE")),
            b"* CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ IDLE\r\n",
        ),
        (r.EnabledResponse(("CONDSTORE", "QRESYNC")), b"* ENABLED CONDSTORE QRESYNC\r\n"),
        (r.EnabledResponse(), b"* ENABLED\r\n"),
        (
            r.ListResponse("INBOX", "/", ("\\HasNoChildren",)),
            b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n',
        ),
        (r.ListResponse("", "/", ("\\Noselect",)), b'* LIST (\\Noselect) "/" ""\r\n'),
        (r.ListResponse("flat", None), b'* LIST () NIL "flat"\r\n'),
        (r.ListResponse("a\\b", "\\"), b'* LIST () "\\\\" "a\\\\b"\r\n'),
        (
            r.ListResponse("Foo", "/", ("\\NonExistent",), child_info=("SUBSCRIBED",)),
            b'* LIST (\\NonExistent) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        ),
        (
            r.ListResponse("New", "/", (), old_name="Old"),
            b'* LIST () "/" "New" ("OLDNAME" ("Old"))\r\n',
        ),
        (
            r.ListResponse("Entwürfe", "/", ("\\Drafts",)),
            b'* LIST (\\Drafts) "/" {9}\r\nEntw\xc3\xbcrfe\r\n',
        ),
        (r.LsubResponse("Work", ".", ()), b'* LSUB () "." "Work"\r\n'),
        (
            r.MailboxStatusResponse("blurdybloop", (("MESSAGES", 231), ("UIDNEXT", 44292))),
            b'* STATUS "blurdybloop" (MESSAGES 231 UIDNEXT 44292)\r\n',
        ),
        (
            r.MailboxStatusResponse("INBOX", (("HIGHESTMODSEQ", 7), ("MAILBOXID", "F1a"))),
            b'* STATUS "INBOX" (HIGHESTMODSEQ 7 MAILBOXID (F1a))\r\n',
        ),
        (r.SearchResponse(()), b"* SEARCH\r\n"),
        (r.SearchResponse((2, 84, 882)), b"* SEARCH 2 84 882\r\n"),
        (r.SearchResponse((2, 5), mod_seq=917162500), b"* SEARCH 2 5 (MODSEQ 917162500)\r\n"),
        (r.ESearchResponse("A282"), b'* ESEARCH (TAG "A282")\r\n'),
        (
            r.ESearchResponse("A283", True, 2, 9, 3, S("2,5:9")),
            b'* ESEARCH (TAG "A283") UID MIN 2 MAX 9 COUNT 3 ALL 2,5:9\r\n',
        ),
        (
            r.ESearchResponse("A284", count=0, all=SequenceSet()),
            b'* ESEARCH (TAG "A284") COUNT 0\r\n',
        ),
        (
            r.ESearchResponse(None, count=2, mod_seq=4),
            b"* ESEARCH COUNT 2 MODSEQ 4\r\n",
        ),
        (r.NamespaceResponse((("", "/"),)), b'* NAMESPACE (("" "/")) NIL NIL\r\n'),
        (
            r.NamespaceResponse((("", "."),), (("Other Users.", "."),), (("Shared.", None),)),
            b'* NAMESPACE (("" ".")) (("Other Users." ".")) (("Shared." NIL))\r\n',
        ),
        (r.IdResponse(None), b"* ID NIL\r\n"),
        (
            r.IdResponse((("name", "roost"), ("support-url", None))),
            b'* ID ("name" "roost" "support-url" NIL)\r\n',
        ),
        (
            r.QuotaResponse("", (("STORAGE", 10, 512), ("MESSAGE", 3, 1000))),
            b'* QUOTA "" (STORAGE 10 512 MESSAGE 3 1000)\r\n',
        ),
        (r.QuotaRootResponse("INBOX", ("",)), b'* QUOTAROOT "INBOX" ""\r\n'),
        (r.QuotaRootResponse("comp.mail"), b'* QUOTAROOT "comp.mail"\r\n'),
    ],
)
def test_untagged_data(response: r.Response, wire: bytes) -> None:
    assert bytes(response) == wire


# --- FETCH -------------------------------------------------------------------------------------


def test_fetch_response_items() -> None:
    internal = datetime.datetime(1996, 7, 17, 2, 44, 25, tzinfo=PDT)
    header = FetchBody(Section(text=SectionText.HEADER_FIELDS, header_fields=("X-TUID",)), True)
    response = r.FetchResponse(
        12,
        (
            r.FlagsItem(("\\Seen",)),
            r.UidItem(4827313),
            r.ModSeqItem(12121231000),
            r.InternalDateItem(internal),
            r.SizeItem(4286),
            r.RawItem("ENVELOPE", b'("date" NIL NIL NIL NIL NIL NIL NIL NIL NIL)'),
            r.BodyItem(header, b"X-TUID: abc\r\n\r\n"),
            r.BodyItem(FetchBody(Section((1,)), partial=(0, 4)), b"Hell"),
            r.BodyItem(FetchAttribute.RFC822_SIZE, None),
            r.SaveDateItem(None),
            r.EmailIdItem("M6d99ac3275bb4e"),
            r.ThreadIdItem(None),
            r.BinarySizeItem((1, 2), 77),
        ),
    )
    assert bytes(response) == (
        b"* 12 FETCH (FLAGS (\\Seen) UID 4827313 MODSEQ (12121231000) "
        b'INTERNALDATE "17-Jul-1996 02:44:25 -0700" RFC822.SIZE 4286 '
        b'ENVELOPE ("date" NIL NIL NIL NIL NIL NIL NIL NIL NIL) '
        b"BODY[HEADER.FIELDS (X-TUID)] {15}\r\nX-TUID: abc\r\n\r\n "
        b"BODY[1]<0> {4}\r\nHell RFC822.SIZE NIL SAVEDATE NIL EMAILID (M6d99ac3275bb4e) "
        b"THREADID NIL BINARY.SIZE[1.2] 77)\r\n"
    )


def test_fetch_rfc822_and_binary_data() -> None:
    assert bytes(r.FetchResponse(1, (r.BodyItem(FetchAttribute.RFC822, b"abc"),))) == (
        b"* 1 FETCH (RFC822 {3}\r\nabc)\r\n"
    )
    binary = FetchBody(Section((1,)), binary=True)
    assert bytes(r.BodyItem(binary, b"a\x00b")) == b"BINARY[1] ~{3}\r\na\x00b"
    assert bytes(r.BodyItem(binary, b"plain")) == b"BINARY[1] {5}\r\nplain"
    assert bytes(r.ThreadIdItem("T64b478a75b7ea9")) == b"THREADID (T64b478a75b7ea9)"
    saved = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert bytes(r.SaveDateItem(saved)) == b'SAVEDATE " 2-Jan-2024 03:04:05 +0000"'


def test_fetch_flags_read_by_imaplib() -> None:
    line = bytes(r.FetchResponse(3, (r.UidItem(9), r.FlagsItem(("\\Seen", "$Junk")))))
    assert imaplib.ParseFlags(line) == (b"\\Seen", b"$Junk")

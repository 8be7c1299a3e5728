"""Unit tests for roost.imap.message: ENVELOPE, BODYSTRUCTURE, sections, search text.

The corpus below is written with LF for legibility and turned into CRLF messages (as the
store keeps them) by :func:`crlf`. Every expected size was counted by hand from the
message text with CRLF line breaks; the comments show the counting for the tricky ones.
The conventions are Dovecot's (see the module docstring of roost.imap.message).
"""

from __future__ import annotations

import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.imap import response as r
from roost.imap.commands import FetchBody, Section, SectionText
from roost.imap.message import (
    MAX_DEPTH,
    ParsedMessage,
    binary,
    binary_size,
    body_structure,
    decode_header_value,
    envelope,
    fetch_body,
    parse_address_list,
    partial,
    section,
)


def crlf(text: bytes) -> bytes:
    """The message with CRLF line breaks."""
    return text.replace(b"\n", b"\r\n")


def parse(text: bytes) -> ParsedMessage:
    return ParsedMessage.parse(crlf(text))


def body(part: tuple[int, ...] = (), text: SectionText | None = None, *names: str) -> Section:
    return Section(part, text, names)


HEADER, TEXT, MIME = SectionText.HEADER, SectionText.TEXT, SectionText.MIME
FIELDS, FIELDS_NOT = SectionText.HEADER_FIELDS, SectionText.HEADER_FIELDS_NOT
US_ASCII = b'("charset" "us-ascii")'


# --- the corpus -------------------------------------------------------------------------------

SIMPLE = b"""\
From: Alice Example <alice@example.org>
To: Bob <bob@example.net>
Subject: Lunch
Date: Tue, 5 Mar 2024 12:34:56 +0100
Message-ID: <lunch-1@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Shall we meet at noon?
Alice
"""

ALTERNATIVE = b"""\
From: "Smith, John" <john.smith@example.com>
To: jane@example.com, "Doe, J." <jd@example.com>
Cc: team@example.com
Subject: Quarterly report
Date: Wed, 6 Mar 2024 09:00:00 -0500
Message-ID: <q1@example.com>
In-Reply-To: <q0@example.com>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="alt-boundary"

--alt-boundary
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable

The report is ready=2E
See attached figures.
--alt-boundary
Content-Type: text/html; charset=us-ascii
Content-Transfer-Encoding: quoted-printable

<p>The report is ready.</p>

--alt-boundary--
"""

MIXED = b"""\
From: Carol <carol@example.org>
To: Dave <dave@example.net>
Subject: Fwd: photos
Date: Thu, 7 Mar 2024 18:00:00 +0000
Message-ID: <fwd-7@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is a multi-part message in MIME format.

--outer
Content-Type: text/plain; charset=us-ascii

See below.

--outer
Content-Type: image/png; name="dot.png"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="dot.png"

iVBORw0KGgo=
--outer
Content-Type: message/rfc822

From: Erin <erin@example.com>
To: Carol <carol@example.org>
Subject: photos
Date: Wed, 6 Mar 2024 10:00:00 +0100
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="inner"

--inner
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Here they are.
--inner
Content-Type: application/pdf; name="list.pdf"
Content-Transfer-Encoding: base64

JVBERi0=
--inner--

--outer--
"""

RELATED = b"""\
From: news@example.com
To: reader@example.org
Subject: Newsletter
Date: Fri, 8 Mar 2024 07:15:00 +0000
MIME-Version: 1.0
Content-Type: multipart/related; boundary=rel; type="text/html"

--rel
Content-Type: text/html; charset=utf-8
Content-Language: en

<img src="cid:logo@example.com">
--rel
Content-Type: image/gif
Content-ID: <logo@example.com>
Content-Description: Logo
Content-Transfer-Encoding: base64
Content-Location: logo.gif

R0lGODlhAQABAAAAACw=
--rel--
"""

ENCODED_WORDS = b"""\
From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>
To: =?ISO-8859-1?Q?Fran=E7ois?= <francois@example.fr>
Subject: =?UTF-8?B?R3LDvMOfZQ==?= aus =?UTF-8?Q?M=C3=BCnchen?=
Date: Sat, 9 Mar 2024 08:00:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Sch=F6ne Gr=FC=DFe
"""

RAW_UTF8 = """\
From: Jürgen <juergen@example.de>
To: Zoë <zoe@example.org>
Subject: Café à Paris
Date: Sun, 10 Mar 2024 14:00:00 +0100
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Ça va?
""".encode()

GROUPS = b"""\
From: Mailer <mailer@example.com>
To: undisclosed-recipients:;
Cc: Friends: ann@example.com, Bob Jones <bob@example.com>;
Bcc: \n\
Subject: Hidden
Date: Mon, 11 Mar 2024 10:00:00 +0000

Hi.
"""

NO_DATE_NO_FROM = b"""\
To: someone@example.com
Subject: no sender

text
"""

UNTERMINATED = b"""\
From: a@example.com
Subject: unterminated
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain

first
--b1
Content-Type: text/plain

second, and the message ends without a close delimiter
"""

NO_BOUNDARY = b"""\
From: b@example.com
Subject: no boundary
MIME-Version: 1.0
Content-Type: multipart/mixed

--something
Content-Type: text/plain

lost
--something--
"""

BOUNCE = b"""\
From: MAILER-DAEMON@mx.example.com (Mail Delivery System)
To: alice@example.org
Subject: Undelivered Mail Returned to Sender
Date: Tue, 12 Mar 2024 03:04:05 +0000 (UTC)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="BOUNCE.1710212645/mx.example.com"
Auto-Submitted: auto-replied

This is a MIME-encapsulated message.

--BOUNCE.1710212645/mx.example.com
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--BOUNCE.1710212645/mx.example.com
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
Arrival-Date: Tue, 12 Mar 2024 03:04:00 +0000 (UTC)

Final-Recipient: rfc822; nobody@example.net
Action: failed
Status: 5.1.1

--BOUNCE.1710212645/mx.example.com
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: Alice Example <alice@example.org>
To: nobody@example.net
Subject: Hello

--BOUNCE.1710212645/mx.example.com--
"""

HEADERS_ONLY = b"""\
From: x@example.com
Subject: headers only
"""

FOLDED = b"""\
From: list@example.com
To: a@example.com,
 b@example.com,
\tc@example.com
Subject: This is a rather long subject line that has been folded
 across two lines by the sending client
References: <1@example.com>
 <2@example.com>
Date: Wed, 13 Mar 2024 11:11:11 +0200

body
"""

LATIN1 = b"""\
From: pierre@example.fr
Subject: =?iso-8859-1?q?R=E9sum=E9?=
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: 8bit
MIME-Version: 1.0

Voil\xe0 le r\xe9sum\xe9.
"""

EMPTY = b""

DIGEST = b"""\
From: digest@example.com
Subject: Digest
MIME-Version: 1.0
Content-Type: multipart/digest; boundary="dg"

--dg

From: one@example.com
Subject: first

one
--dg
Content-Type: text/plain

not a message
--dg--
"""

ODD = b"""\
From: "Joe Q. Public" <john.q.public@example.com>
Sender: <@relay.example.net:joe@example.com>
Reply-To: joe@example.com (Joe at home), broken address
To: "very.unusual.@.unusual.com"@example.com, user
Subject: Attachment
Content-Type: multipart/mixed; boundary=simple
MIME-Version: 1.0

--simple
Content-Type: application/octet-stream;
 name*0*=utf-8''r%C3%A9sum;
 name*1="e.pdf"
Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf
Content-Transfer-Encoding: base64

AAEC
--simple--
"""

CORPUS = {
    "simple": SIMPLE,
    "alternative": ALTERNATIVE,
    "mixed": MIXED,
    "related": RELATED,
    "encoded_words": ENCODED_WORDS,
    "raw_utf8": RAW_UTF8,
    "groups": GROUPS,
    "no_date_no_from": NO_DATE_NO_FROM,
    "unterminated": UNTERMINATED,
    "no_boundary": NO_BOUNDARY,
    "bounce": BOUNCE,
    "headers_only": HEADERS_ONLY,
    "folded": FOLDED,
    "latin1": LATIN1,
    "empty": EMPTY,
    "digest": DIGEST,
    "odd": ODD,
}


# --- ENVELOPE ---------------------------------------------------------------------------------

ALICE = b'(("Alice Example" NIL "alice" "example.org"))'
SMITH = b'(("Smith, John" NIL "john.smith" "example.com"))'
ERIN = b'(("Erin" NIL "erin" "example.com"))'
NEWS = b'((NIL NIL "news" "example.com"))'

ENVELOPES = {
    "simple": b'("Tue, 5 Mar 2024 12:34:56 +0100" "Lunch" '
    + b" ".join([ALICE] * 3)
    + b' (("Bob" NIL "bob" "example.net")) NIL NIL NIL "<lunch-1@example.org>")',
    # Quoted display names lose their quotes; the comma inside stays.
    "alternative": b'("Wed, 6 Mar 2024 09:00:00 -0500" "Quarterly report" '
    + b" ".join([SMITH] * 3)
    + b' ((NIL NIL "jane" "example.com")("Doe, J." NIL "jd" "example.com"))'
    + b' ((NIL NIL "team" "example.com")) NIL "<q0@example.com>" "<q1@example.com>")',
    "related": b'("Fri, 8 Mar 2024 07:15:00 +0000" "Newsletter" '
    + b" ".join([NEWS] * 3)
    + b' ((NIL NIL "reader" "example.org")) NIL NIL NIL NIL)',
    # RFC 2047 words stay encoded, as Dovecot sends them.
    "encoded_words": b'("Sat, 9 Mar 2024 08:00:00 +0100" '
    b'"=?UTF-8?B?R3LDvMOfZQ==?= aus =?UTF-8?Q?M=C3=BCnchen?=" '
    + b" ".join([b'(("=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?=" NIL "joerg" "example.de"))'] * 3)
    + b' (("=?ISO-8859-1?Q?Fran=E7ois?=" NIL "francois" "example.fr")) NIL NIL NIL NIL)',
    # 8-bit text cannot be quoted: "Caf\xc3\xa9 \xc3\xa0 Paris" is 14 octets, "J\xc3\xbcrgen"
    # 7 and "Zo\xc3\xab" 4, each sent as a literal.
    "raw_utf8": b'("Sun, 10 Mar 2024 14:00:00 +0100" {14}\r\n'
    + "Café à Paris".encode()
    + b" "
    + b" ".join([b"(({7}\r\n" + "Jürgen".encode() + b' NIL "juergen" "example.de"))'] * 3)
    + b" (({4}\r\n"
    + "Zoë".encode()
    + b' NIL "zoe" "example.org")) NIL NIL NIL NIL)',
    # "undisclosed-recipients:;" is a group start marker (host NIL, mailbox = the name)
    # followed at once by the end marker (all NIL); an empty Bcc is NIL.
    "groups": b'("Mon, 11 Mar 2024 10:00:00 +0000" "Hidden" '
    + b" ".join([b'(("Mailer" NIL "mailer" "example.com"))'] * 3)
    + b' ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'
    + b' ((NIL NIL "Friends" NIL)(NIL NIL "ann" "example.com")'
    + b'("Bob Jones" NIL "bob" "example.com")(NIL NIL NIL NIL)) NIL NIL NIL)',
    # No From: Sender and Reply-To have nothing to default to.
    "no_date_no_from": b'(NIL "no sender" NIL NIL NIL ((NIL NIL "someone" "example.com"))'
    b" NIL NIL NIL NIL)",
    # The comment after an addr-spec is the name; the Date comment stays in the date.
    "bounce": b'("Tue, 12 Mar 2024 03:04:05 +0000 (UTC)" "Undelivered Mail Returned to Sender" '
    + b" ".join([b'(("Mail Delivery System" NIL "MAILER-DAEMON" "mx.example.com"))'] * 3)
    + b' ((NIL NIL "alice" "example.org")) NIL NIL NIL NIL)',
    # Folding is removed: CRLF goes, the white space that started the next line stays.
    "folded": b'("Wed, 13 Mar 2024 11:11:11 +0200" "This is a rather long subject line that has'
    b' been folded across two lines by the sending client" '
    + b" ".join([b'((NIL NIL "list" "example.com"))'] * 3)
    + b' ((NIL NIL "a" "example.com")(NIL NIL "b" "example.com")(NIL NIL "c" "example.com"))'
    + b" NIL NIL NIL NIL)",
    "empty": b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)",
    # Sender has a source route; a Reply-To word without "@" is a name without address
    # (MISSING_MAILBOX, MISSING_DOMAIN); a bare "user" has no domain.
    "odd": b'(NIL "Attachment" (("Joe Q. Public" NIL "john.q.public" "example.com"))'
    b' ((NIL "@relay.example.net" "joe" "example.com"))'
    b' (("Joe at home" NIL "joe" "example.com")'
    b'("broken address" NIL "MISSING_MAILBOX" "MISSING_DOMAIN"))'
    b' ((NIL NIL "very.unusual.@.unusual.com" "example.com")(NIL NIL "user" "MISSING_DOMAIN"))'
    b" NIL NIL NIL NIL)",
}


@pytest.mark.parametrize("name", sorted(ENVELOPES))
def test_envelope(name: str) -> None:
    assert envelope(parse(CORPUS[name])) == ENVELOPES[name]


def test_envelope_in_a_fetch_response() -> None:
    # The literal announces its octet count; the rest of the line goes on after it.
    msg = parse(RAW_UTF8)
    line = bytes(r.FetchResponse(1, (r.RawItem("ENVELOPE", envelope(msg)),)))
    head, _, rest = line.partition(b"\r\n")
    assert head == b'* 1 FETCH (ENVELOPE ("Sun, 10 Mar 2024 14:00:00 +0100" {14}'
    assert rest[:14] == "Café à Paris".encode() and rest[14:16] == b" ("
    assert line.endswith(b" NIL NIL NIL NIL))\r\n")


def test_sender_and_reply_to_default_to_from_when_empty() -> None:
    msg = parse(b"From: a@example.com\nSender:\nReply-To:  \n\nx\n")
    assert envelope(msg) == (
        b'(NIL NIL ((NIL NIL "a" "example.com")) ((NIL NIL "a" "example.com"))'
        b' ((NIL NIL "a" "example.com")) NIL NIL NIL NIL NIL)'
    )


def test_envelope_strings_are_quoted_or_literals() -> None:
    msg = parse(b'Subject: say "hi" \\ bye\nMessage-ID: <a\x00b@x>\n\n')
    subject = b'"say \\"hi\\" \\\\ bye"'
    assert envelope(msg) == (
        b"(NIL " + subject + b" NIL NIL NIL NIL NIL NIL NIL {9}\r\n<a\xef\xbf\xbdb@x>)"
    )


def test_first_field_of_each_kind_counts() -> None:
    msg = parse(b"Subject: one\nSubject: two\n\n")
    assert envelope(msg).startswith(b'(NIL "one" ')


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"", b""),
        (b"user@example.com", b'(NIL NIL "user" "example.com")'),
        (b"<user@example.com>", b'(NIL NIL "user" "example.com")'),
        (b"Name <user@[192.0.2.1]>", b'("Name" NIL "user" "[192.0.2.1]")'),
        (b"John Q. Public <jqp@example.com>", b'("John Q. Public" NIL "jqp" "example.com")'),
        (b"a@b (one) (two)", b'("two" NIL "a" "b")'),
        (b"<@a.example,@b.example:u@c.example>", b'(NIL "@a.example,@b.example" "u" "c.example")'),
        (b"<>", b'(NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")'),
        (b"Name <broken", b'("Name" NIL "broken" "SYNTAX_ERROR")'),
        (b"Just A Name", b'("Just A Name" NIL "MISSING_MAILBOX" "MISSING_DOMAIN")'),
        (b"@example.com", b'(NIL NIL "MISSING_MAILBOX" "example.com")'),
        (b"a@b.example c@d.example", b'(NIL NIL "a" "b.example")'),
        (b"group:;", b'(NIL NIL "group" NIL)(NIL NIL NIL NIL)'),
        (b"g: (nobody) ;, x@y", b'(NIL NIL "g" NIL)(NIL NIL NIL NIL)(NIL NIL "x" "y")'),
        (b"open group: a@b", b'(NIL NIL "open group" NIL)(NIL NIL "a" "b")(NIL NIL NIL NIL)'),
        (b'"quoted \\" local"@example.com', b'(NIL NIL "quoted \\" local" "example.com")'),
    ],
)
def test_address_list(value: bytes, expected: bytes) -> None:
    assert b"".join(map(bytes, parse_address_list(value))) == expected


# --- BODYSTRUCTURE ----------------------------------------------------------------------------

# ALTERNATIVE: the line break before a boundary line belongs to the boundary
# (RFC 2046 §5.1.1), so part 1 is "The report is ready=2E" (22) CRLF (2) "See attached
# figures." (21) = 45 octets with 1 line feed; part 2 is "<p>The report is ready.</p>" (27)
# plus the CRLF of the line before the blank line = 29 octets, 1 line.
ALTERNATIVE_PARTS = (
    b'("text" "plain" ("charset" "us-ascii") NIL NIL "quoted-printable" 45 1{})'
    b'("text" "html" ("charset" "us-ascii") NIL NIL "quoted-printable" 29 1{})'
)

# MIXED part 3, the forwarded message, counted line by line with CRLF:
#   header: "From: Erin <erin@example.com>" 31, "To: Carol <carol@example.org>" 31,
#     "Subject: photos" 17, "Date: Wed, 6 Mar 2024 10:00:00 +0100" 38,
#     "MIME-Version: 1.0" 19, 'Content-Type: multipart/mixed; boundary="inner"' 49,
#     blank line 2: 187 octets, 7 lines;
#   body: "--inner" 9, "Content-Type: text/plain; charset=utf-8" 41,
#     "Content-Transfer-Encoding: 8bit" 33, blank 2, "Here they are." 16, "--inner" 9,
#     'Content-Type: application/pdf; name="list.pdf"' 48,
#     "Content-Transfer-Encoding: base64" 35, blank 2, "JVBERi0=" 10, "--inner--" 11:
#     216 octets, 11 lines (the blank line before "--outer--" is the boundary's).
# 187 + 216 = 403 octets, 18 lines. Inside, "Here they are." is 14 octets and 0 lines:
# its line break is the inner boundary's.
MIXED_INNER = (
    b'("Wed, 6 Mar 2024 10:00:00 +0100" "photos" '
    + b" ".join([ERIN] * 3)
    + b' (("Carol" NIL "carol" "example.org")) NIL NIL NIL NIL)'
)

BODYSTRUCTURES = {
    "simple": b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 31 2 NIL NIL NIL NIL)',
    "alternative": b"("
    + ALTERNATIVE_PARTS.replace(b"{}", b" NIL NIL NIL NIL")
    + b' "alternative" ("boundary" "alt-boundary") NIL NIL NIL)',
    "mixed": b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 1 NIL NIL NIL NIL)'
    b'("image" "png" ("name" "dot.png") NIL NIL "base64" 12 NIL'
    b' ("attachment" ("filename" "dot.png")) NIL NIL)'
    b'("message" "rfc822" NIL NIL NIL "7bit" 403 '
    + MIXED_INNER
    + b' (("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 14 0 NIL NIL NIL NIL)'
    b'("application" "pdf" ("name" "list.pdf") NIL NIL "base64" 8 NIL NIL NIL NIL)'
    b' "mixed" ("boundary" "inner") NIL NIL NIL) 18 NIL NIL NIL NIL)'
    b' "mixed" ("boundary" "outer") NIL NIL NIL)',
    # '<img src="cid:logo@example.com">' is 32 octets; Content-ID, Description and Location
    # fill their slots; the multipart keeps both parameters in order.
    "related": b'(("text" "html" ("charset" "utf-8") NIL NIL "7bit" 32 0 NIL NIL ("en") NIL)'
    b'("image" "gif" NIL "<logo@example.com>" "Logo" "base64" 20 NIL NIL NIL "logo.gif")'
    b' "related" ("boundary" "rel" "type" "text/html") NIL NIL NIL)',
    # "Sch=F6ne Gr=FC=DFe" is 18 octets, 20 with its CRLF.
    "encoded_words": b'("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable"'
    b" 20 1 NIL NIL NIL NIL)",
    # "\xc3\x87a va?" is 7 octets; no MIME-Version, but Content-Type makes it MIME.
    "raw_utf8": b'("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 9 1 NIL NIL NIL NIL)',
    "groups": b'("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 5 1 NIL NIL NIL NIL)',
    # Without a close delimiter the last part runs to the end of the message:
    # "second, and the message ends without a close delimiter" is 54 octets + CRLF.
    "unterminated": b'(("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 5 0 NIL NIL NIL NIL)'
    b'("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 56 1 NIL NIL NIL NIL)'
    b' "mixed" ("boundary" "b1") NIL NIL NIL)',
    # A multipart needs a part: without a boundary there is none, so an empty text/plain
    # part stands in (Dovecot does the same).
    "no_boundary": b'(("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'
    b' "mixed" NIL NIL NIL NIL)',
    # Part 1: 59 + 2 + 39 + 2 = 102 octets, 2 lines. Part 2 (message/delivery-status is
    # no encapsulated message): "Reporting-MTA: dns; mx.example.com" 36,
    # "Arrival-Date: Tue, 12 Mar 2024 03:04:00 +0000 (UTC)" 53, blank 2,
    # "Final-Recipient: rfc822; nobody@example.net" 45, "Action: failed" 16,
    # "Status: 5.1.1" 15 = 167. Part 3: 41 + 24 + 16 = 81 octets, 3 lines.
    "bounce": b'(("text" "plain" ' + US_ASCII + b' NIL "Notification" "7bit" 102 2'
    b" NIL NIL NIL NIL)"
    b'("message" "delivery-status" NIL NIL "Delivery report" "7bit" 167 NIL NIL NIL NIL)'
    b'("text" "rfc822-headers" ' + US_ASCII + b' NIL "Undelivered Message Headers" "7bit"'
    b" 81 3 NIL NIL NIL NIL)"
    b' "report" ("report-type" "delivery-status" "boundary" "BOUNCE.1710212645/mx.example.com")'
    b" NIL NIL NIL)",
    "headers_only": b'("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 0 0 NIL NIL NIL NIL)',
    # "Voil\xe0 le r\xe9sum\xe9." is 16 octets in ISO-8859-1, 18 with CRLF.
    "latin1": b'("text" "plain" ("charset" "iso-8859-1") NIL NIL "8bit" 18 1 NIL NIL NIL NIL)',
    "empty": b'("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 0 0 NIL NIL NIL NIL)',
    # In a digest a part without Content-Type is message/rfc822 (RFC 2046 §5.1.5). Its MIME
    # header is the blank line alone; the message is "From: one@example.com" 23,
    # "Subject: first" 16, blank 2, "one" 3 = 44 octets, 3 lines.
    "digest": b'(("message" "rfc822" NIL NIL NIL "7bit" 44'
    b' (NIL "first" ((NIL NIL "one" "example.com")) ((NIL NIL "one" "example.com"))'
    b' ((NIL NIL "one" "example.com")) NIL NIL NIL NIL NIL)'
    b' ("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 3 0 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)'
    b'("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 13 0 NIL NIL NIL NIL)'
    b' "digest" ("boundary" "dg") NIL NIL NIL)',
    # RFC 2231: name*0* and name*1 join into "name*"; the extended value keeps its
    # charset''encoding for the client to decode, the plain section is appended as is.
    "odd": b'(("application" "octet-stream" ("name*" "utf-8\'\'r%C3%A9sume.pdf") NIL NIL'
    b' "base64" 4 NIL ("attachment" ("filename*" "utf-8\'\'r%C3%A9sum%C3%A9.pdf")) NIL NIL)'
    b' "mixed" ("boundary" "simple") NIL NIL NIL)',
}

BODIES = {
    "simple": b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 31 2)',
    "alternative": b"(" + ALTERNATIVE_PARTS.replace(b"{}", b"") + b' "alternative")',
    "mixed": b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 1)'
    b'("image" "png" ("name" "dot.png") NIL NIL "base64" 12)'
    b'("message" "rfc822" NIL NIL NIL "7bit" 403 '
    + MIXED_INNER
    + b' (("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 14 0)'
    b'("application" "pdf" ("name" "list.pdf") NIL NIL "base64" 8) "mixed") 18) "mixed")',
    "no_boundary": b'(("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 0 0) "mixed")',
}


@pytest.mark.parametrize("name", sorted(BODYSTRUCTURES))
def test_bodystructure(name: str) -> None:
    assert body_structure(parse(CORPUS[name]), extensible=True) == BODYSTRUCTURES[name]


@pytest.mark.parametrize("name", sorted(BODIES))
def test_body(name: str) -> None:
    assert body_structure(parse(CORPUS[name]), extensible=False) == BODIES[name]


def test_every_corpus_message_renders() -> None:
    for text in CORPUS.values():
        msg = parse(text)
        assert envelope(msg).startswith(b"(")
        assert body_structure(msg, True).startswith(b"(")
        assert section(msg, body()) == crlf(text)


def test_results_are_cached() -> None:
    msg = parse(MIXED)
    assert envelope(msg) is envelope(msg)
    assert body_structure(msg, True) is body_structure(msg, True)
    assert body_structure(msg, False) is body_structure(msg, False)


def test_message_without_mime_version_ignores_content_fields() -> None:
    # RFC 2045 §4: without MIME-Version (or Content-Type) the message is not MIME.
    msg = parse(b"Content-Transfer-Encoding: base64\nContent-ID: <x>\n\nhello\n")
    assert body_structure(msg, True) == (
        b'("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 7 1 NIL NIL NIL NIL)'
    )


def test_invalid_content_type_means_text_plain() -> None:
    msg = parse(b"MIME-Version: 1.0\nContent-Type: garbage\n\nx")
    assert body_structure(msg, False) == b'("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 1 0)'


def test_invalid_transfer_encoding_is_7bit() -> None:
    msg = parse(b"MIME-Version: 1.0\nContent-Transfer-Encoding: ?invalid\n\nx")
    assert b'"7bit" 1 0' in body_structure(msg, False)


def test_text_parameters_keep_order_and_gain_charset() -> None:
    msg = parse(b"Content-Type: text/plain; format=flowed; DelSp=yes\n\nx")
    assert body_structure(msg, False) == (
        b'("text" "plain" ("format" "flowed" "DelSp" "yes" "charset" "us-ascii")'
        b' NIL NIL "7bit" 1 0)'
    )


def test_type_case_is_kept() -> None:
    msg = parse(b"Content-Type: TEXT/HTML; CHARSET=UTF-8\n\nx")
    assert body_structure(msg, False) == b'("TEXT" "HTML" ("CHARSET" "UTF-8") NIL NIL "7bit" 1 0)'


def test_eight_bit_parameter_is_a_literal() -> None:
    msg = parse(b'Content-Type: application/pdf; name="r\xc3\xa9sum\xc3\xa9.pdf"\n\n')
    assert b'("name" {12}\r\nr\xc3\xa9sum\xc3\xa9.pdf)' in body_structure(msg, False)


def test_rfc2231_gaps_keep_the_sections() -> None:
    msg = parse(b"Content-Type: application/x; a*0=x; a*2=z\n\n")
    assert b'("a*0" "x" "a*2" "z")' in body_structure(msg, False)


def test_rfc2231_plain_continuations_join() -> None:
    msg = parse(b'Content-Type: application/x; a*1="b"; a*0=a; b*0*=%41; b*1=50%\n\n')
    assert b'("a" "ab" "b*" "%4150%25")' in body_structure(msg, False)


def test_message_rfc822_at_top_level() -> None:
    msg = parse(b"MIME-Version: 1.0\nContent-Type: message/rfc822\n\nSubject: in\n\nhi\n")
    # The body "Subject: in" CRLF CRLF "hi" CRLF is 11 + 2 + 2 + 4 = 19 octets in 3 lines.
    assert body_structure(msg, False) == (
        b'("message" "rfc822" NIL NIL NIL "7bit" 19 (NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 4 1) 3)'
    )
    assert section(msg, body((1,))) == b"Subject: in\r\n\r\nhi\r\n"
    assert section(msg, body((1,), HEADER)) == b"Subject: in\r\n\r\n"
    assert section(msg, body((1, 1))) == b"hi\r\n"


def test_nested_boundaries_longest_prefix_wins() -> None:
    # "--=_a_1" also starts with the outer boundary "=_a"; the longer inner one wins.
    msg = parse(
        b"Content-Type: multipart/mixed; boundary==_a\n\n"
        b"--=_a\nContent-Type: multipart/alternative; boundary==_a_1\n\n"
        b"--=_a_1\n\none\n--=_a_1\n\ntwo\n--=_a_1--\n"
        b"--=_a\n\nthree\n--=_a--\n"
    )
    assert section(msg, body((1, 1))) == b"one"
    assert section(msg, body((1, 2))) == b"two"
    assert section(msg, body((2,))) == b"three"


def test_outer_boundary_ends_inner_multipart() -> None:
    msg = parse(
        b"Content-Type: multipart/mixed; boundary=out\n\n"
        b"--out\nContent-Type: multipart/mixed; boundary=in\n\n"
        b"--in\n\ninner\n--out\n\nsecond\n--out--\n"
    )
    assert section(msg, body((1, 1))) == b"inner"
    assert section(msg, body((2,))) == b"second"


def test_part_header_cut_short_by_boundary() -> None:
    msg = parse(
        b"Content-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: text/html\n--b\n\nsecond\n--b--\n"
    )
    assert section(msg, body((1,), MIME)) == b"Content-Type: text/html"
    assert section(msg, body((1,))) == b""
    assert section(msg, body((2,))) == b"second"
    assert b'("text" "html" ' + US_ASCII + b' NIL NIL "7bit" 0 0)' in body_structure(msg, False)


def test_lf_only_message() -> None:
    msg = ParsedMessage.parse(b"Subject: x\n\nline\n")
    assert section(msg, body((), TEXT)) == b"line\n"
    assert body_structure(msg, False) == b'("text" "plain" ' + US_ASCII + b' NIL NIL "7bit" 5 1)'


def test_deep_nesting_is_limited() -> None:
    # Levels 0 to MAX_DEPTH are multiparts; the deepest one is shown without parts and the
    # rest is its body.
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary==_%d_=\n\n--=_%d_=\n" % (level, level)
        for level in range(MAX_DEPTH + 20)
    )
    msg = parse(head + b"\ndeep\n")
    structure = body_structure(msg, True)
    assert structure.count(b'"mixed"') == MAX_DEPTH + 1
    assert structure.startswith(b"(" * (MAX_DEPTH + 1) + b'("text" "plain"')


def test_deep_message_rfc822_nesting_is_limited() -> None:
    depth = MAX_DEPTH + 20
    msg = parse(b"MIME-Version: 1.0\nContent-Type: message/rfc822\n\n" * depth + b"x\n")
    structure = body_structure(msg, True)
    assert structure.count(b'"message" "rfc822"') == MAX_DEPTH + 1
    assert b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)" in structure


def test_many_parts_are_limited() -> None:
    count = 10_050
    msg = parse(
        b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\nx\n" * count + b"--b--\n"
    )
    assert 9_000 < body_structure(msg, False).count(b'"plain"') <= 10_000


# --- sections ---------------------------------------------------------------------------------


def test_whole_header_text() -> None:
    msg = parse(SIMPLE)
    raw = crlf(SIMPLE)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert section(msg, body((), HEADER)) == head + b"\r\n\r\n"
    assert section(msg, body((), TEXT)) == rest
    assert section(msg, body((1,))) == rest
    assert section(msg, body((1,), MIME)) == head + b"\r\n\r\n"
    assert section(msg, body((2,))) == b""
    assert section(msg, body((1, 1))) == b""
    assert section(msg, body((1,), HEADER)) == b""
    assert section(msg, body((), MIME)) == b""


def test_numbered_parts_of_mixed() -> None:
    msg = parse(MIXED)
    assert section(msg, body((1,))) == b"See below.\r\n"
    assert section(msg, body((2,))) == b"iVBORw0KGgo="
    assert section(msg, body((2,), MIME)) == crlf(
        b'Content-Type: image/png; name="dot.png"\nContent-Transfer-Encoding: base64\n'
        b'Content-Disposition: attachment; filename="dot.png"\n\n'
    )
    encapsulated = section(msg, body((3,)))
    assert len(encapsulated) == 403
    assert encapsulated.startswith(b"From: Erin") and encapsulated.endswith(b"--inner--\r\n")
    header = section(msg, body((3,), HEADER))
    assert len(header) == 187 and header.endswith(b'"inner"\r\n\r\n')
    assert section(msg, body((3,), TEXT)) == encapsulated[187:]
    assert section(msg, body((3, 1))) == b"Here they are."
    assert section(msg, body((3, 2))) == b"JVBERi0="
    assert section(msg, body((3, 2), MIME)) == crlf(
        b'Content-Type: application/pdf; name="list.pdf"\nContent-Transfer-Encoding: base64\n\n'
    )
    assert section(msg, body((3,), FIELDS, "SUBJECT", "x-none")) == b"Subject: photos\r\n\r\n"
    assert section(msg, body((3, 1), HEADER)) == b""
    assert section(msg, body((3, 3))) == b""
    assert section(msg, body((4,))) == b""
    assert section(msg, body((2, 1))) == b""
    assert section(msg, body((0,))) == b""


def test_numbered_parts_of_digest() -> None:
    msg = parse(DIGEST)
    assert section(msg, body((1,), MIME)) == b"\r\n"
    assert section(msg, body((1,))) == b"From: one@example.com\r\nSubject: first\r\n\r\none"
    assert section(msg, body((1,), FIELDS, "subject")) == b"Subject: first\r\n\r\n"
    assert section(msg, body((1, 1))) == b"one"
    assert section(msg, body((2,))) == b"not a message"


def test_header_fields_keep_folding_and_order() -> None:
    msg = parse(FOLDED)
    assert section(msg, body((), FIELDS, "References", "TO")) == crlf(
        b"To: a@example.com,\n b@example.com,\n\tc@example.com\n"
        b"References: <1@example.com>\n <2@example.com>\n\n"
    )
    assert section(msg, body((), FIELDS_NOT, "to", "references", "subject")) == crlf(
        b"From: list@example.com\nDate: Wed, 13 Mar 2024 11:11:11 +0200\n\n"
    )
    assert section(msg, body((), FIELDS, "X-Missing")) == b"\r\n"


def test_header_fields_of_message_without_blank_line() -> None:
    # RFC 3501 §6.4.5: the blank line is included "except in the case of a message which
    # has no body and no blank line".
    msg = parse(HEADERS_ONLY)
    assert section(msg, body((), HEADER)) == crlf(HEADERS_ONLY)
    assert section(msg, body((), FIELDS, "subject")) == b"Subject: headers only\r\n"
    assert section(msg, body((), TEXT)) == b""


def test_header_field_names_allow_space_before_colon() -> None:
    msg = parse(b"Subject : spaced\nX-A: 1\nno colon line\n\n")
    assert section(msg, body((), FIELDS, "subject")) == b"Subject : spaced\r\n\r\n"
    assert section(msg, body((), FIELDS_NOT, "subject")) == b"X-A: 1\r\nno colon line\r\n\r\n"


def test_empty_message_sections() -> None:
    msg = parse(EMPTY)
    for spec in (body(), body((), HEADER), body((), TEXT), body((1,)), body((1,), MIME)):
        assert section(msg, spec) == b""


def test_partial() -> None:
    assert partial(b"0123456789", 2, 3) == b"234"
    assert partial(b"0123456789", 8, 10) == b"89"
    assert partial(b"0123456789", 20, 10) == b""
    assert partial(b"0123456789", 0, 0) == b""


def test_fetch_body_applies_partial() -> None:
    msg = parse(MIXED)
    item = FetchBody(Section((3,), SectionText.HEADER), peek=True, partial=(0, 5))
    assert fetch_body(msg, item) == b"From:"
    assert fetch_body(msg, FetchBody(Section((2,)), binary=True, partial=(1, 3))) == b"PNG"


# --- BINARY -----------------------------------------------------------------------------------


def test_binary_removes_transfer_encoding() -> None:
    msg = parse(MIXED)
    assert binary(msg, (2,)) == b"\x89PNG\r\n\x1a\n"
    assert binary(msg, (3, 2)) == b"%PDF-"
    assert binary(msg, (3, 1)) == b"Here they are."
    assert binary(msg, (3,)) == section(msg, body((3,)))
    assert binary(msg, ()) == crlf(MIXED)
    assert binary(msg, (9,)) == b""
    assert binary_size(msg, (2,)) == 8
    alternative = parse(ALTERNATIVE)
    assert binary(alternative, (1,)) == b"The report is ready.\r\nSee attached figures."
    assert binary(parse(ODD), (1,)) == b"\x00\x01\x02"


def test_binary_of_unknown_encoding_is_none() -> None:
    msg = parse(b"MIME-Version: 1.0\nContent-Transfer-Encoding: x-uuencode\n\nbegin\n")
    assert binary(msg, (1,)) is None
    assert binary_size(msg, (1,)) is None
    assert fetch_body(msg, FetchBody(Section((1,)), binary=True)) is None


def test_broken_base64_decodes_as_far_as_it_goes() -> None:
    msg = parse(b"MIME-Version: 1.0\nContent-Transfer-Encoding: base64\n\naGVs*bG8=\nd29y\nb")
    assert binary(msg, (1,)) == b"hello" + b"wor"


# --- text for SEARCH --------------------------------------------------------------------------


def test_decode_header_value() -> None:
    assert decode_header_value(b"=?UTF-8?B?R3LDvMOfZQ==?= aus =?UTF-8?Q?M=C3=BCnchen?=") == (
        "Grüße aus München"
    )
    # White space between adjacent encoded words goes (RFC 2047 §6.2).
    assert decode_header_value(b"=?utf-8?q?a?= \t =?utf-8?q?b?=") == "ab"
    # A character split between two encoded words in the same charset.
    assert decode_header_value(b"=?utf-8?b?w6k=?= =?utf-8?b?w6k=?=") == "éé"
    assert decode_header_value(b"=?utf-8?b?w?= =?utf-8?b?6Q==?=") == "é"
    assert decode_header_value(b"=?unknown-charset?q?caf=C3=A9?=") == "café"
    assert decode_header_value(b"=?iso-8859-1*fr?q?caf=E9?=") == "café"
    assert decode_header_value("Café".encode()) == "Café"
    assert decode_header_value(b"Caf\xe9") == "Café"
    assert decode_header_value(b"=?utf-8?q?unterminated") == "=?utf-8?q?unterminated"


def test_header_values() -> None:
    msg = parse(ENCODED_WORDS)
    assert msg.header_values("subject") == ["Grüße aus München"]
    assert msg.header_values("FROM") == ["Jörg Müller <joerg@example.de>"]
    assert msg.header_values("To") == ["François <francois@example.fr>"]
    assert msg.header_values("X-None") == []
    assert parse(FOLDED).header_values("subject") == [
        "This is a rather long subject line that has been folded across two lines by the"
        " sending client"
    ]
    assert parse(RAW_UTF8).header_values("subject") == ["Café à Paris"]


def test_sent_date() -> None:
    assert parse(SIMPLE).sent_date() == datetime.datetime(
        2024, 3, 5, 12, 34, 56, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    assert parse(NO_DATE_NO_FROM).sent_date() is None
    assert parse(b"Date: yesterday\n\n").sent_date() is None
    assert parse(b"Date: 31 Feb 2024 10:00 +0000\n\n").sent_date() is None
    assert parse(b"Date: 1 Jan 2024 10:00 +9999\n\n").sent_date() is None


def test_text_for_search() -> None:
    assert parse(ENCODED_WORDS).text_for_search() == "Schöne Grüße\r\n"
    assert parse(LATIN1).text_for_search() == "Voilà le résumé.\r\n"
    text = parse(MIXED).text_for_search()
    assert "See below." in text and "Here they are." in text
    assert "Subject: photos" in text  # the forwarded message's header is body text
    assert "iVBOR" not in text and "JVBER" not in text  # attachments are not text
    assert "The report is ready.\r\n" in parse(ALTERNATIVE).text_for_search()
    assert parse(EMPTY).text_for_search() == ""
    header = parse(ENCODED_WORDS).header_text_for_search()
    assert "Subject: Grüße aus München" in header.splitlines()


def test_text_with_wrong_charset_falls_back() -> None:
    msg = parse(b"Content-Type: text/plain; charset=us-ascii\n\nna\xc3\xafve\n")
    assert msg.text_for_search() == "naïve\r\n"
    msg = parse(b"Content-Type: text/plain; charset=base64\n\ncaf\xe9\n")
    assert msg.text_for_search() == "café\r\n"


def test_part_lookup() -> None:
    msg = parse(MIXED)
    part = msg.part((3, 2))
    assert part is not None and part.content.subtype == b"pdf"
    assert msg.part((3, 9)) is None
    assert msg.size == len(crlf(MIXED))
    assert repr(msg) == f"ParsedMessage(<{msg.size} octets>)"


# --- robustness -------------------------------------------------------------------------------

FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"--c\r\n",
    b"--c--",
    b"--",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/digest; boundary="c"\r\n',
    b"Content-Type: message/rfc822\r\n",
    b'Content-Type: text/plain; charset=utf-8; name*0*=x; name*1="y\r\n',
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: attachment; filename=(a\\\r\n",
    b"Content-Language: en, (x) de\r\n",
    b"MIME-Version: 1.0\r\n",
    b'From: "a\\" <b@c>, g: x@y;, <@r:u@h>, @, <\r\n',
    b"To: =?utf-8?b?w6k=?= <a@b>\r\n",
    b"Subject: \xff\x00\xc3\r\n",
    b" folded\r\n",
    b"\tfolded\r\n",
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n",
    b"=?x?q?=FF?= =C3=A9 aGVsbG8=\r\n",
    b"\x00\xff\r",
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    _exercise(raw)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60))
def test_random_mime_shapes_never_raise(pieces: list[bytes]) -> None:
    _exercise(b"".join(pieces))


def _exercise(raw: bytes) -> None:
    msg = ParsedMessage.parse(raw)
    assert envelope(msg).startswith(b"(")
    for extensible in (False, True):
        structure = body_structure(msg, extensible)
        assert structure.count(b"(") >= 1
    for spec in (
        body(),
        body((), HEADER),
        body((), TEXT),
        body((), FIELDS, "subject", "from"),
        body((), FIELDS_NOT, "subject"),
        body((1,)),
        body((1,), MIME),
        body((1,), HEADER),
        body((1, 1)),
        body((2,), TEXT),
        body((1, 2, 1), MIME),
    ):
        data = section(msg, spec)
        assert data in raw or spec.header_fields
    for part in ((), (1,), (2,), (1, 1)):
        binary(msg, part)
    msg.header_values("subject")
    msg.sent_date()
    msg.text_for_search()
    msg.header_text_for_search()


def test_parts_tile_the_message() -> None:
    # Header and body of every part are inside the message and in order.
    msg = parse(MIXED)
    stack = [msg.root]
    while stack:
        part = stack.pop()
        assert part.header_start <= part.fields_end <= part.header_end <= part.body_end
        assert part.body_end <= msg.size
        for child in part.children:
            assert part.header_end <= child.header_start and child.body_end <= part.body_end
        stack.extend(part.children)
        if part.message is not None:
            assert part.message.header_start == part.header_end
            assert part.message.body_end == part.body_end
            stack.append(part.message)

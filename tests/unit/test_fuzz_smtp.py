"""Property-based fuzzing of the SMTP command grammar and the DATA decoder.

Grammar-aware generators build plausible paths and parameter lists (quoted local parts,
source routes, address literals, UTF-8, xtext) and then mutate them, so the parsers are
driven deep as well as wide. Properties:

- the parsers raise nothing but :class:`AddressError`;
- what they accept obeys RFC 5321 (parameter values are esmtp-value octets; no control
  characters in addresses) and its canonical form parses back to the same value;
- the DATA decoder gives the same result as a line-by-line reference decoder of RFC 5321
  §4.1.1.4 and §4.5.2, whatever the chunking.

The suite runs short examples counts; bench/fuzz.py runs the same properties for longer
(``--examples``), reusing the strategies below.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.address import (
    Address,
    AddressError,
    NullPath,
    parse_esmtp_params,
    parse_path,
    split_command_argument,
)
from roost.smtp.data import DataDecoder

EXAMPLES = int(os.environ.get("ROOST_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- generators ---------------------------------------------------------------------------

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
NASTY = ' "\\<>@,;:[]().\t\x00\r\n\x7f\x80é\u00a0\u2028\ud800ü日本'

atoms = st.text(ATEXT, min_size=1, max_size=12)
quoted = st.text(ATEXT + ' .@<>,;:"\\', max_size=12).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
utf8_words = st.text(st.characters(min_codepoint=0xA0, max_codepoint=0x2FFF), min_size=1)
local_parts = st.one_of(
    st.lists(atoms, min_size=1, max_size=4).map(".".join),
    quoted,
    utf8_words,
    st.just("postmaster"),
)
labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
domains = st.one_of(
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.lists(labels, min_size=1, max_size=3).map(lambda parts: ".".join(parts) + "."),
    st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]"),
    st.from_regex(r"\[[0-9.:a-fA-FIPv6]{0,20}\]", fullmatch=True),
    utf8_words.map(lambda w: f"{w}.example"),
    st.text(ATEXT + ".-", max_size=70).map(lambda s: s + ".test"),
)
routes = st.lists(domains, max_size=3).map(
    lambda ds: ",".join(f"@{d}" for d in ds) + ":" if ds else ""
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """A plausible reverse- or forward-path, maybe mutated."""
    local = draw(local_parts)
    domain = draw(st.one_of(domains, st.just("")))
    inner = draw(routes) + local + (f"@{domain}" if domain else "")
    text = draw(st.sampled_from(["<{}>", "{}", "<{}", "{}>", "<<{}>>", " <{}> "])).format(inner)
    return draw(mutated(text))


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """Insert, delete or replace a few characters (often none)."""
    chars = list(text)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(chars)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        new = draw(st.sampled_from(NASTY + ATEXT[:10]))
        if action == "insert":
            chars.insert(where, new)
        elif chars and where < len(chars):
            if action == "delete":
                del chars[where]
            else:
                chars[where] = new
    return "".join(chars)


keywords = st.one_of(
    st.sampled_from(["SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH", "NOTIFY", "ORCPT"]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,10}", fullmatch=True),
)
values = st.one_of(
    st.from_regex(r"[!-<>-~]{1,20}", fullmatch=True),
    st.sampled_from(
        ["8BITMIME", "7BIT", "FULL", "HDRS", "1000", "rfc822;a+2Bb@c", "SUCCESS,DELAY"]
    ),
    utf8_words,
)


@st.composite
def parameter_texts(draw: st.DrawFn) -> str:
    items = draw(st.lists(st.tuples(keywords, st.one_of(st.none(), values)), max_size=5))
    separators = st.sampled_from([" ", "  ", "\t", " \t"])
    text = "".join(
        draw(separators) + (key if value is None else f"{key}={value}") for key, value in items
    )
    return draw(mutated(text))


# --- parsers ------------------------------------------------------------------------------


def _forbidden(ch: str) -> bool:
    return ord(ch) < 32 or ord(ch) == 127 or 0xD800 <= ord(ch) <= 0xDFFF


@FUZZ
@given(
    text=st.one_of(paths(), st.text(max_size=80)),
    allow_null=st.booleans(),
    smtputf8=st.booleans(),
    strict=st.booleans(),
    limits=st.booleans(),
)
def test_parse_path_accepts_only_what_it_can_render_back(
    text: str, allow_null: bool, smtputf8: bool, strict: bool, limits: bool
) -> None:
    try:
        result = parse_path(
            text,
            allow_null=allow_null,
            smtputf8=smtputf8,
            strict=strict,
            enforce_length_limits=limits,
        )
    except AddressError as exc:
        assert exc.reply_code in (501, 553)
        assert exc.enhanced_status(sender=True)[0] == "5"
        return
    if isinstance(result, NullPath):
        assert allow_null and text == "<>"
        return
    assert isinstance(result, Address)
    assert not any(_forbidden(ch) for ch in result.local_part + result.domain), repr(result)
    if not smtputf8:
        assert text.isascii()
    rendered = f"<{result.format(smtputf8=smtputf8)}>"
    again = parse_path(
        rendered,
        allow_null=allow_null,
        smtputf8=smtputf8,
        strict=False,
        enforce_length_limits=False,
    )
    assert again == result, (text, rendered, again)


@FUZZ
@given(text=st.one_of(paths().map(lambda p: p + " SIZE=10"), st.text(max_size=60)))
def test_split_command_argument_partitions_its_input(text: str) -> None:
    try:
        path, params = split_command_argument(text)
    except AddressError:
        return
    rest = text.lstrip(" \t")
    assert path and rest.startswith(path)
    tail = rest[len(path) :]
    assert tail == "" or tail[0] in " \t", (text, path)
    assert params == tail.strip(" \t")


@FUZZ
@given(text=st.one_of(parameter_texts(), st.text(max_size=60)), smtputf8=st.booleans())
def test_esmtp_parameters_are_rfc5321_and_reparse(text: str, smtputf8: bool) -> None:
    try:
        params = parse_esmtp_params(text, smtputf8=smtputf8)
    except AddressError:
        return
    for key, value in params.items():
        assert key == key.upper() and key[:1].isalnum() and key.isascii(), key
        if value is None:
            continue
        assert value, key
        for ch in value:  # esmtp-value = 1*(%d33-60 / %d62-126) / UTF8-non-ascii
            assert ch != "=" and (33 <= ord(ch) <= 126 or ord(ch) >= 0x80), (key, value)
            assert not _forbidden(ch), (key, value)
        if not (smtputf8 or "SMTPUTF8" in params):
            assert value.isascii()
    rebuilt = " ".join(key if value is None else f"{key}={value}" for key, value in params.items())
    assert parse_esmtp_params(rebuilt, smtputf8=smtputf8) == params


# --- DATA ---------------------------------------------------------------------------------


def reference_decode(stream: bytes, normalize: bool) -> tuple[bytes, bool, bytes, bool]:
    """RFC 5321 DATA, line by line: (content, done, leftover, saw_bare_lf).

    The data ends at a line ``.<CRLF>`` that follows a CRLF (or starts the data); a line
    starting with a dot loses it; a line ending in a bare LF is flagged and, when
    normalizing, ends with CRLF instead. An unterminated last line is not content yet.
    """
    out: list[bytes] = []
    previous_crlf = True
    saw_bare_lf = False
    position = 0
    while True:
        newline = stream.find(b"\n", position)
        if newline < 0:
            return b"".join(out), False, b"", saw_bare_lf
        line = stream[position : newline + 1]
        crlf = line.endswith(b"\r\n")
        if line == b".\r\n" and previous_crlf:
            return b"".join(out), True, stream[newline + 1 :], saw_bare_lf
        if line.startswith(b"."):
            line = line[1:]
        if not crlf:
            saw_bare_lf = True
            if normalize:
                line = line[:-1] + b"\r\n"
        out.append(line)
        previous_crlf = crlf
        position = newline + 1


data_streams = st.lists(
    st.sampled_from(
        [b"\r\n", b"\n", b"\r", b".", b"..", b".\r\n", b"\r\n.\r\n", b"a", b"xyz", b" "]
    ),
    max_size=60,
).map(b"".join)


@FUZZ
@given(
    stream=st.one_of(data_streams, st.binary(max_size=200)),
    cuts=st.lists(st.integers(min_value=0, max_value=250), max_size=12),
    normalize=st.booleans(),
)
def test_data_decoder_matches_the_reference_whatever_the_chunking(
    stream: bytes, cuts: list[int], normalize: bool
) -> None:
    decoder = DataDecoder(normalize_bare_lf=normalize)
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    content = b""
    for start, end in zip([0, *points], [*points, len(stream)], strict=True):
        content += decoder.feed(stream[start:end])
    want, done, leftover, saw = reference_decode(stream, normalize)
    assert decoder.done == done
    assert content == want, (stream, points)
    if done:
        assert decoder.leftover == leftover
    assert decoder.saw_bare_lf == saw

"""Unit tests for roost.smtp.data.DataDecoder: RFC 5321 §4.1.1.4 end of data, §4.5.2 dots.

The decoder is fed the bytes after ``354`` in arbitrary pieces, as TCP delivers them; its
output must not depend on where the pieces were cut. For well-formed input (every line
ends in CRLF) it must agree with a plain reference decoder; for any input it must never
raise, and it must end the data exactly at the first ``<CRLF>.<CRLF>`` (the CRLF after the
DATA command counts as the one before a leading ``.<CRLF>``), never at the bare-newline
variants that SMTP smuggling relies on.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.smtp import data as data_module
from roost.smtp.data import DataDecoder

END = b"\r\n.\r\n"


@dataclass(frozen=True)
class Decoded:
    content: bytes
    done: bool
    leftover: bytes
    saw_bare_lf: bool


def feed(pieces: Sequence[bytes], *, normalize_bare_lf: bool = True) -> Decoded:
    """Feed ``pieces`` one by one; return what the decoder produced in total."""
    decoder = DataDecoder(normalize_bare_lf=normalize_bare_lf)
    out = []
    for piece in pieces:
        out.append(decoder.feed(piece))
    return Decoded(b"".join(out), decoder.done, decoder.leftover, decoder.saw_bare_lf)


def split(blob: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Cut ``blob`` at the given offsets (any order); no piece is empty.

    The session never feeds an empty read (it means the client went away); see
    test_an_empty_feed_keeps_a_pending_cr for what an empty feed does.
    """
    points = sorted({0, len(blob), *(c % (len(blob) + 1) for c in cuts)})
    return [blob[a:b] for a, b in itertools.pairwise(points)]


def reference(blob: bytes) -> tuple[bytes, bool, bytes]:
    """A plain decoder for input whose lines all end in CRLF (no bare CR or LF).

    Returns the content of the complete lines (one leading dot removed from each), whether
    a lone ``.`` line ended the data, and the bytes after it (or the incomplete last line).
    """
    out = []
    pos = 0
    while True:
        end = blob.find(b"\r\n", pos)
        if end < 0:
            return b"".join(out), False, blob[pos:]
        line = blob[pos:end]
        if line == b".":
            return b"".join(out), True, blob[end + 2 :]
        out.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
        pos = end + 2


# Lines without CR or LF, rich in dots (the interesting case) and odd bytes.
line_text = st.one_of(
    st.sampled_from([b"", b".", b"..", b"...", b".x", b"..x", b"x.", b" .", b"\x00.", b"To: a"]),
    st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.lists(st.sampled_from([b".", b"a", b" ", b"\x00", b"\xff", b"\t"]), max_size=8).map(
        b"".join
    ),
)
crlf_lines = st.lists(line_text, max_size=30).map(
    lambda lines: b"".join(line + b"\r\n" for line in lines)
)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@settings(max_examples=400)
@given(body=crlf_lines, tail=line_text, cut_at=cuts)
def test_crlf_input_matches_the_reference_in_any_split(
    body: bytes, tail: bytes, cut_at: list[int]
) -> None:
    blob = body + tail  # maybe an incomplete last line
    content, done, rest = reference(blob)
    for pieces in ([blob], split(blob, cut_at), [bytes([b]) for b in blob]):
        decoded = feed(pieces)
        assert decoded.content == content
        assert decoded.done == done
        assert not decoded.saw_bare_lf
        if done:
            assert decoded.leftover == rest
        else:
            assert decoded.leftover == b""


@settings(max_examples=300)
@given(body=crlf_lines, after=st.binary(max_size=60), cut_at=cuts)
def test_the_end_marker_and_the_exact_leftover(
    body: bytes, after: bytes, cut_at: list[int]
) -> None:
    """What follows ``.<CRLF>`` (pipelined commands, RFC 2920) comes back byte for byte."""
    lines = [line for line in body.split(b"\r\n")[:-1] if line != b"."]
    clean = b"".join(line + b"\r\n" for line in lines)
    blob = clean + b".\r\n" + after
    decoded = feed(split(blob, cut_at))
    assert decoded.done
    assert decoded.leftover == after
    assert decoded.content == reference(clean)[0]
    assert decoded.content.count(b"\r\n") == len(lines)


random_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"x", b"\x00", b"..", b"\r\n.\r"])).map(
        b"".join
    ),
)


@settings(max_examples=500)
@given(blob=random_bytes, cut_at=cuts, normalize=st.booleans(), small=st.booleans())
def test_random_bytes_never_raise_and_end_only_at_crlf_dot_crlf(
    blob: bytes, cut_at: list[int], normalize: bool, small: bool
) -> None:
    """``small``: lines over 4 bytes are passed on before their end (MAX_PENDING_LINE)."""
    limit = 4 if small else data_module.MAX_PENDING_LINE
    with mock.patch.object(data_module, "MAX_PENDING_LINE", limit):
        whole = feed([blob], normalize_bare_lf=normalize)
        pieces = feed(split(blob, cut_at), normalize_bare_lf=normalize)
        bytewise = feed([bytes([b]) for b in blob], normalize_bare_lf=normalize)
    assert pieces == whole
    assert bytewise == whole
    # the CRLF that ended the DATA command is the CRLF before a leading ".\r\n"
    framed = b"\r\n" + blob
    marker = framed.find(END)
    assert whole.done == (marker >= 0)
    consumed = framed[: marker + 2] if marker >= 0 else framed
    if whole.done:
        assert whole.leftover == framed[marker + len(END) :]
    bare_lf = any(consumed[i - 1] != 0x0D for i in _newlines(consumed) if i >= 2)
    assert whole.saw_bare_lf == bare_lf
    if normalize:
        assert all(whole.content[i - 1] == 0x0D for i in _newlines(whole.content))


def _newlines(blob: bytes) -> list[int]:
    return [i for i, byte in enumerate(blob) if byte == 0x0A]


SMUGGLING = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r.\r",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n .\r\n",
]


SMUGGLED_LINES = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\n"


@pytest.mark.parametrize("pattern", SMUGGLING, ids=repr)
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "reject"])
def test_smuggling_patterns_do_not_end_the_data(pattern: bytes, normalize: bool) -> None:
    smuggled = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nevil"
    blob = b"Subject: real\r\n\r\nbody" + pattern + smuggled + END + b"QUIT\r\n"
    for pieces in ([blob], [bytes([b]) for b in blob]):
        decoded = feed(pieces, normalize_bare_lf=normalize)
        assert decoded.done
        assert decoded.leftover == b"QUIT\r\n"
        assert SMUGGLED_LINES in decoded.content
        assert decoded.content.endswith(b"evil\r\n")
        assert decoded.saw_bare_lf == (b"\n" in pattern.replace(b"\r\n", b""))


def test_bare_lf_is_normalized_or_kept_for_the_caller_to_refuse() -> None:
    blob = b"a\nb\r\n.\r\n"
    assert feed([blob]) == Decoded(b"a\r\nb\r\n", True, b"", True)
    assert feed([blob], normalize_bare_lf=False) == Decoded(b"a\nb\r\n", True, b"", True)


def test_a_bare_cr_is_content() -> None:
    assert feed([b"a\rb\r\n\r.\r\n.\r\n"]) == Decoded(b"a\rb\r\n\r.\r\n", True, b"", False)


def test_data_that_starts_with_the_end_marker_is_empty() -> None:
    assert feed([b".\r\nQUIT\r\n"]) == Decoded(b"", True, b"QUIT\r\n", False)
    assert feed([b".", b"\r", b"\n"]) == Decoded(b"", True, b"", False)


def test_dot_stuffing_removes_exactly_one_dot() -> None:
    blob = b"..\r\n...\r\n.a\r\n..a\r\na.\r\n.\r\n"
    assert feed([blob]).content == b".\r\n..\r\na\r\n.a\r\na.\r\n"


def test_bytes_after_the_end_are_kept_as_leftover() -> None:
    decoder = DataDecoder()
    assert decoder.feed(b"x\r\n.\r\nRSET\r\n") == b"x\r\n"
    assert decoder.done and decoder.leftover == b"RSET\r\n"
    assert decoder.feed(b"QUIT\r\n") == b""
    assert decoder.leftover == b"RSET\r\nQUIT\r\n"


@settings(max_examples=300)
@given(
    lines=st.lists(
        st.one_of(
            st.binary(min_size=5, max_size=40).map(
                lambda b: b.replace(b"\r", b"").replace(b"\n", b"")
            ),
            st.sampled_from([b".........", b"..", b".", b"", b"abcdefghij"]),
        ),
        max_size=12,
    ),
    cut_at=cuts,
)
def test_long_lines_passed_on_early_do_not_change_the_result(
    lines: list[bytes], cut_at: list[int]
) -> None:
    """Lines longer than MAX_PENDING_LINE go out before their end (memory bound); the
    result must be the same as when each line waits for its CRLF."""
    blob = b"".join(line + b"\r\n" for line in lines) + b".\r\n"
    expected = reference(blob)
    with mock.patch.object(data_module, "MAX_PENDING_LINE", 4):
        for pieces in (split(blob, cut_at), [bytes([b]) for b in blob], [blob]):
            decoded = feed(pieces)
            assert (decoded.content, decoded.done, decoded.leftover) == expected


def test_a_long_line_split_between_cr_and_lf_ends_with_crlf() -> None:
    with mock.patch.object(data_module, "MAX_PENDING_LINE", 4):
        decoded = feed([b".abcdefgh\r", b"\n.\r\n"])
    assert decoded == Decoded(b"abcdefgh\r\n", True, b"", False)


def test_an_empty_feed_keeps_a_pending_cr() -> None:
    with mock.patch.object(data_module, "MAX_PENDING_LINE", 4):
        decoded = feed([b"abcdefgh\r", b"", b"\n.\r\n"])
    assert decoded == Decoded(b"abcdefgh\r\n", True, b"", False)


def test_a_megabyte_line_in_small_pieces() -> None:
    line = b"." + b"x" * (3 * data_module.MAX_PENDING_LINE)
    blob = line + b"\r\n..\r\n.\r\nNOOP\r\n"
    pieces = [blob[i : i + 65536] for i in range(0, len(blob), 65536)]
    decoded = feed(pieces)
    assert decoded.content == line[1:] + b"\r\n.\r\n"
    assert decoded.done and decoded.leftover == b"NOOP\r\n"

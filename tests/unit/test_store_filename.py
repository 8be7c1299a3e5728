"""Maildir file names as Dovecot writes them: flags letters, S=/W= sizes, line ends."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.store.filename import (
    crlf_size,
    filename_letters,
    generate_base,
    normalize_flag,
    render_filename,
    size_from_base,
    split_filename,
    to_crlf,
    to_lf,
)
from tests.conftest import in_forked_child


def test_split_and_letters() -> None:
    base, info = split_filename("1234567890.M20046P2137.mailserver,S=4542,W=4642:2,Sb")
    assert base == "1234567890.M20046P2137.mailserver,S=4542,W=4642"
    assert info == "2,Sb"
    assert filename_letters(info) == "Sb"
    assert filename_letters("") == ""
    assert filename_letters("1,experimental") == ""
    assert filename_letters("2,FS,extra") == "FS"


def test_render_sorts_by_ascii_like_dovecot() -> None:
    assert render_filename("b", "TSa") == "b:2,STa"
    assert render_filename("b", "") == "b:2,"
    assert render_filename("b", "DFRST") == "b:2,DFRST"


def test_render_keeps_letters_dovecot_does_not_know_and_extra_fields() -> None:
    # P (passed) is no IMAP flag: kept. Text after a second comma is kept untouched.
    assert render_filename("b", "S", "2,PRS,xyz") == "b:2,PS,xyz"
    assert render_filename("b", "", "2,P") == "b:2,P"


def test_sizes_from_base() -> None:
    base = "1035478339.27041_118.foo.org,S=1000,W=1030"
    assert size_from_base(base, "S") == 1000
    assert size_from_base(base, "W") == 1030
    assert size_from_base("1.2.host", "S") is None
    assert size_from_base("1.2.host,S=12x", "S") is None


def test_a_forked_child_generates_bases_with_its_own_pid() -> None:
    assert f"P{os.getpid()}Q" in generate_base(1, 1)
    pid, child = in_forked_child(lambda: generate_base(1, 1))
    assert f"P{pid}Q" in child


def test_generated_bases_are_unique_and_carry_sizes() -> None:
    bases = {generate_base(10, 12) for _ in range(1000)}
    assert len(bases) == 1000
    base = bases.pop()
    assert re.fullmatch(r"\d+\.M\d+P\d+Q\d+R[0-9a-f]{8}\.[^/:,]+,S=10,W=12", base)
    assert size_from_base(base, "S") == 10
    assert size_from_base(base, "W") == 12


@pytest.mark.parametrize(
    ("flag", "canonical"),
    [("\\seen", "\\Seen"), ("\\DELETED", "\\Deleted"), ("$Junk", "$Junk"), ("NonJunk", "NonJunk")],
)
def test_normalize_flag(flag: str, canonical: str) -> None:
    assert normalize_flag(flag) == canonical


@pytest.mark.parametrize("flag", ["\\Recent", "\\Bogus", "", "two words", "a(b", "x\x01"])
def test_normalize_flag_rejects(flag: str) -> None:
    with pytest.raises(ValueError):
        normalize_flag(flag)


def test_crlf_conversion_and_size() -> None:
    stored = to_lf(b"Subject: x\r\n\r\nline\r\nbare\n")
    assert stored == b"Subject: x\n\nline\nbare\n"
    assert to_crlf(stored) == b"Subject: x\r\n\r\nline\r\nbare\r\n"
    assert crlf_size(stored) == len(to_crlf(stored))


@given(st.binary())
def test_crlf_size_is_the_length_of_the_crlf_form(data: bytes) -> None:
    assert crlf_size(data) == len(to_crlf(data))
    assert crlf_size(to_lf(data)) == len(to_crlf(to_lf(data)))
    assert b"\n" not in to_crlf(data).replace(b"\r\n", b"")

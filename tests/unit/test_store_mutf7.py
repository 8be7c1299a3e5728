"""Modified UTF-7 (RFC 3501 §5.1.3): known vectors, strictness, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.store.mutf7 import MUTF7Error, decode_mutf7, encode_mutf7

VECTORS = [
    ("INBOX", "INBOX"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("&", "&-"),
    ("Tom & Jerry", "Tom &- Jerry"),
    ("Ωmega", "&A6k-mega"),
    ("Gelöschte Elemente", "Gel&APY-schte Elemente"),
    ("📧", "&2D3c5w-"),  # outside the BMP: a UTF-16 surrogate pair
    ("", ""),
]


@pytest.mark.parametrize(("text", "encoded"), VECTORS)
def test_known_vectors_encode(text: str, encoded: str) -> None:
    assert encode_mutf7(text) == encoded


@pytest.mark.parametrize(("text", "encoded"), VECTORS)
def test_known_vectors_decode(text: str, encoded: str) -> None:
    assert decode_mutf7(encoded) == text


@pytest.mark.parametrize(
    "bad",
    [
        "Entw&APw",  # unterminated
        "&AGE-",  # encodes "a", which must stand for itself
        "&APw-&APw-",  # two adjacent runs: the encoder merges them
        "&APx-",  # non-zero padding bits
        "&AP-",  # a lone base64 digit: not whole bytes
        "&2D0-",  # half of a surrogate pair
        "&A/w-",  # "/" is not modified BASE64
        "caf\xe9",  # 8-bit text must be encoded
        "tab\there",  # control characters too
        "&A-",  # one byte: not UTF-16
    ],
)
def test_decoder_rejects_non_canonical_text(bad: str) -> None:
    with pytest.raises(MUTF7Error):
        decode_mutf7(bad)


def test_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode_mutf7("a\ud800b")


@given(st.text())
def test_round_trip_from_unicode(text: str) -> None:
    encoded = encode_mutf7(text)
    assert all(" " <= char <= "~" for char in encoded)
    assert decode_mutf7(encoded) == text


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_decoder_accepts_exactly_canonical_text(text: str) -> None:
    try:
        decoded = decode_mutf7(text)
    except MUTF7Error:
        return
    assert encode_mutf7(decoded) == text


@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E).filter(lambda c: c != "&")
    )
)
def test_printable_ascii_without_ampersand_is_unchanged(text: str) -> None:
    assert encode_mutf7(text) == text

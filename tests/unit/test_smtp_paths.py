"""The SMTP session's memo of parsed MAIL/RCPT paths (roost.smtp.session._parse_path): the
same answers as roost.address.parse_path, errors every time, a bounded table."""

from __future__ import annotations

import dataclasses

import pytest

from roost.address import NULL_PATH, AddressError, parse_path
from roost.queue.envelope import EnvelopeError, Recipient
from roost.smtp.session import _parse_path, _plain_recipient

FLAGS = [
    {"allow_null": True, "smtputf8": False, "strict": False, "enforce_length_limits": False},
    {"allow_null": False, "smtputf8": False, "strict": False, "enforce_length_limits": True},
    {"allow_null": False, "smtputf8": True, "strict": True, "enforce_length_limits": True},
]
PATHS = [
    "<user@example.com>",
    "user@example.com",
    "<USER@Example.COM.>",
    '<"john doe"@example.com>',
    "<@relay.example:user@example.com>",
    "<postmaster>",
    "<>",
    "<ü@exämple.de>",
    "<user@[192.0.2.1]>",
    "<" + "a" * 70 + "@example.com>",
    "<user@@example.com>",
    "<user@example..com>",
]


def _outcome(text: str, flags: dict[str, bool], parse: object) -> object:
    try:
        result = parse(text, **flags)  # type: ignore[operator]
    except AddressError as error:
        return ("error", error.kind, error.reply_code)
    return ("ok", result, str(result), getattr(result, "source_route", None))


@pytest.mark.parametrize("flags", FLAGS)
def test_the_memo_answers_as_parse_path_the_first_time_and_after(flags: dict[str, bool]) -> None:
    _parse_path.cache_clear()
    for _ in range(3):  # the first call parses, the others find it
        for text in PATHS:
            assert _outcome(text, flags, _parse_path) == _outcome(text, flags, parse_path), text


def test_the_flags_are_part_of_the_key() -> None:
    _parse_path.cache_clear()
    lenient = FLAGS[0]
    assert _parse_path("<>", **lenient) is NULL_PATH
    with pytest.raises(AddressError):  # the same text where the null path is not allowed
        _parse_path("<>", **FLAGS[1])
    long_path = "<" + "a" * 70 + "@example.com>"
    assert str(_parse_path(long_path, **lenient)) == long_path[1:-1]
    with pytest.raises(AddressError):  # over 64 octets with the length limits
        _parse_path(long_path, **FLAGS[1])


def test_bad_paths_are_not_remembered_and_the_table_stays_bounded() -> None:
    _parse_path.cache_clear()
    for _ in range(2):
        with pytest.raises(AddressError):
            _parse_path("<user@example..com>", **FLAGS[1])
    assert _parse_path.cache_info().currsize == 0
    maxsize = _parse_path.cache_info().maxsize
    assert maxsize == 1024
    for n in range(maxsize + 10):
        _parse_path(f"<user{n}@example.com>", **FLAGS[1])
    assert 0 < _parse_path.cache_info().currsize <= maxsize
    assert str(_parse_path("<user5@example.com>", **FLAGS[1])) == "user5@example.com"


def test_a_remembered_address_gives_its_text_every_time() -> None:
    for text in ("<user@example.com>", '<"john doe"@example.com>', "<postmaster>"):
        address = _parse_path(text, **FLAGS[1])
        fresh = parse_path(text, allow_null=False)
        assert str(address) == str(address) == fresh.format() == str(fresh)
    changed = dataclasses.replace(parse_path("<a@example.com>", allow_null=False), local_part="b")
    assert str(changed) == "b@example.com"  # not the text of the address it was made from


def test_plain_recipients_are_shared_and_equal_to_new_ones() -> None:
    first = _plain_recipient("user@example.com")
    assert first is _plain_recipient("user@example.com")
    assert first == Recipient("user@example.com")
    assert first.orcpt is None and first.notify is None
    for _ in range(2):  # a bad address raises every time
        with pytest.raises(EnvelopeError):
            _plain_recipient("bad\r\naddress")

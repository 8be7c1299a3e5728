"""Modified UTF-7 (IMAP-UTF-7): mailbox names on the wire and Dovecot's names on disk.

RFC 3501 §5.1.3: printable US-ASCII (0x20-0x7E) stands for itself, except ``&`` which is
written ``&-``; any other run of characters is UTF-16BE in a modified BASE64 (``,``
instead of ``/``, no ``=`` padding) between ``&`` and ``-``. Dovecot (without
``mailbox_list_utf8``) stores Maildir++ folder names this way: ``Entwürfe`` is the
directory ``.Entw&APw-rfe``.

The decoder is strict, like Dovecot's ``imap_utf7_to_utf8``: it accepts only what the
encoder produces (the canonical form), so ``encode_mutf7(decode_mutf7(s)) == s`` for every
``s`` it accepts.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

__all__ = ["MUTF7Error", "decode_mutf7", "encode_mutf7"]

_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


class MUTF7Error(ValueError):
    """The text is not canonical modified UTF-7 (RFC 3501 §5.1.3)."""


def _is_direct(char: str) -> bool:
    return " " <= char <= "~"


def _encode_run(run: str) -> str:
    data = run.encode("utf-16-be")  # UnicodeEncodeError (a ValueError) on lone surrogates
    text = base64.b64encode(data).rstrip(b"=").replace(b"/", b",").decode("ascii")
    return f"&{text}-"


def encode_mutf7(name: str) -> str:
    """Encode a Unicode mailbox name in modified UTF-7.

    See Also: RFC 3501 §5.1.3 (Mailbox International Naming Convention).

    Args:
        name: any Unicode text without lone surrogates, e.g. ``"Entwürfe"``.

    Returns:
        Printable US-ASCII text, e.g. ``"Entw&APw-rfe"``.

    Raises:
        ValueError: ``name`` holds a lone surrogate (not representable in UTF-16).
    """
    out: list[str] = []
    start = -1  # start of the current run of non-direct characters
    for index, char in enumerate(name):
        if _is_direct(char):
            if start >= 0:
                out.append(_encode_run(name[start:index]))
                start = -1
            out.append("&-" if char == "&" else char)
        elif start < 0:
            start = index
    if start >= 0:
        out.append(_encode_run(name[start:]))
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Decode canonical modified UTF-7 into Unicode.

    See Also: RFC 3501 §5.1.3.

    Args:
        text: e.g. ``"~peter/mail/&U,BTFw-/&ZeVnLIqe-"``.

    Returns:
        The Unicode name, e.g. ``"~peter/mail/台北/日本語"``.

    Raises:
        MUTF7Error: a character outside 0x20-0x7E, an unterminated or malformed BASE64
            run, non-zero padding bits, an odd number of bytes, a lone surrogate, a run
            that encodes printable US-ASCII, or two adjacent runs (non-canonical).
    """
    out: list[str] = []
    index = 0
    length = len(text)
    previous_was_run = False
    while index < length:
        char = text[index]
        if not _is_direct(char):
            raise MUTF7Error(f"character {char!r} must be encoded")
        if char != "&":
            out.append(char)
            index += 1
            previous_was_run = False
            continue
        end = text.find("-", index + 1)
        if end < 0:
            raise MUTF7Error("unterminated &...- sequence")
        if end == index + 1:
            out.append("&")
            index = end + 1
            previous_was_run = False
            continue
        if previous_was_run:
            raise MUTF7Error("adjacent encoded runs must be merged")
        out.append(_decode_run(text[index + 1 : end]))
        index = end + 1
        previous_was_run = True
    return "".join(out)


def _decode_run(run: str) -> str:
    if not _ALPHABET.issuperset(run) or len(run) % 4 == 1:
        raise MUTF7Error(f"malformed modified BASE64 {run!r}")
    padded = run.replace(",", "/") + "=" * (-len(run) % 4)
    try:
        data = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise MUTF7Error(f"malformed modified BASE64 {run!r}") from exc
    if base64.b64encode(data).rstrip(b"=").replace(b"/", b",").decode("ascii") != run:
        raise MUTF7Error(f"non-zero padding bits in {run!r}")
    if len(data) % 2:
        raise MUTF7Error(f"odd number of UTF-16 bytes in {run!r}")
    try:
        decoded = data.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise MUTF7Error(f"invalid UTF-16 in {run!r}") from exc
    if any(_is_direct(char) for char in decoded):
        raise MUTF7Error(f"{run!r} encodes printable US-ASCII")
    return decoded

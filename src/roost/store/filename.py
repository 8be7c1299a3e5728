"""Maildir file names as Dovecot writes and reads them, and the line-end arithmetic.

A message file is ``<base>:2,<flags>`` (or just ``<base>`` while in ``new/``):

- ``<base>`` is unique in the mailbox, e.g. ``1700000000.M20046P2137Q1R1f2e3d4c.mx,S=4542,W=4642``.
  Dovecot reads ``,S=<size>`` (bytes in the file) and ``,W=<vsize>`` (RFC822.SIZE, with
  CRLF line ends) from it, and so do we.
- ``<flags>`` are letters sorted by ASCII: ``D`` \\Draft, ``F`` \\Flagged, ``P`` passed
  (no IMAP flag; kept as is), ``R`` \\Answered, ``S`` \\Seen, ``T`` \\Deleted, and ``a``-``z``
  for the keywords listed in ``dovecot-keywords``. Anything after a further ``,`` is kept
  untouched, as Dovecot does.

See Also: Dovecot "Maildir Mailbox Format" (Maildir filename extensions); the Maildir
specification (cr.yp.to/proto/maildir.html).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import socket
import time
from collections.abc import Iterable
from typing import Final

__all__ = [
    "FLAG_LETTERS",
    "KEYWORD_LETTERS",
    "LETTER_FLAGS",
    "SYSTEM_FLAGS",
    "crlf_size",
    "filename_letters",
    "generate_base",
    "normalize_flag",
    "render_filename",
    "size_from_base",
    "split_filename",
    "to_crlf",
    "to_lf",
]

SEEN: Final = "\\Seen"
ANSWERED: Final = "\\Answered"
FLAGGED: Final = "\\Flagged"
DELETED: Final = "\\Deleted"
DRAFT: Final = "\\Draft"
RECENT: Final = "\\Recent"

#: The IMAP system flags a message can store (RFC 9051 §2.3.2); \\Recent is per session.
SYSTEM_FLAGS: Final = frozenset({SEEN, ANSWERED, FLAGGED, DELETED, DRAFT})
#: IMAP system flag -> Maildir info letter.
FLAG_LETTERS: Final = {DRAFT: "D", FLAGGED: "F", ANSWERED: "R", SEEN: "S", DELETED: "T"}
#: Maildir info letter -> IMAP system flag.
LETTER_FLAGS: Final = {letter: flag for flag, letter in FLAG_LETTERS.items()}
#: Letters for keywords: index 0 of ``dovecot-keywords`` is ``a``.
KEYWORD_LETTERS: Final = "abcdefghijklmnopqrstuvwxyz"

_SYSTEM_BY_LOWER: Final = {flag.lower(): flag for flag in SYSTEM_FLAGS}
_ATOM_SPECIALS: Final = frozenset('(){ %*"\\]')
_SIZE_RE: Final = {
    "S": re.compile(r",S=([0-9]+)(?=,|$)"),
    "W": re.compile(r",W=([0-9]+)(?=,|$)"),
}
_counter: Final = itertools.count(1)


def normalize_flag(flag: str) -> str:
    """Return the canonical spelling of a flag a client may store.

    System flags are case-insensitive (``\\seen`` is ``\\Seen``); keywords keep their
    spelling here (the mailbox folds case against the keywords it already has).

    See Also: RFC 9051 §2.3.2 (flags), §9 (``flag-keyword = atom``).

    Raises:
        ValueError: ``\\Recent``, an unknown ``\\`` flag, or a keyword that is not an
            IMAP atom.
    """
    if flag.startswith("\\"):
        canonical = _SYSTEM_BY_LOWER.get(flag.lower())
        if canonical is None:
            raise ValueError(f"flag {flag!r} cannot be stored")
        return canonical
    if not flag or any(c in _ATOM_SPECIALS or c <= " " or c == "\x7f" for c in flag):
        raise ValueError(f"keyword {flag!r} is not an IMAP atom")
    return flag


def split_filename(filename: str) -> tuple[str, str]:
    """Split a Maildir file name into its base and its info (after ``:``, or ``""``)."""
    base, _, info = filename.partition(":")
    return base, info


def filename_letters(info: str) -> str:
    """Return the flag letters of a ``2,<flags>[,<more>]`` info, or ``""``."""
    if not info.startswith("2,"):
        return ""
    return info[2:].partition(",")[0]


def render_filename(base: str, letters: Iterable[str], old_info: str = "") -> str:
    """Build ``<base>:2,<letters sorted by ASCII>``, keeping unknown letters and extras.

    Args:
        base: the base name.
        letters: the system and keyword letters the message has now.
        old_info: the previous info part; letters Dovecot does not know (``P``, digits,
            other upper case) and anything after a second ``,`` survive, as in
            Dovecot's ``maildir_filename_flags_full_set``.
    """
    kept: set[str] = set(letters)
    extra = ""
    if old_info.startswith("2,"):
        old_letters, comma, rest = old_info[2:].partition(",")
        kept.update(c for c in old_letters if c not in LETTER_FLAGS and c not in KEYWORD_LETTERS)
        extra = comma + rest
    return f"{base}:2,{''.join(sorted(kept))}{extra}"


def size_from_base(base: str, key: str) -> int | None:
    """Return the ``,S=`` (``key="S"``) or ``,W=`` (``key="W"``) size in a base name."""
    match = _SIZE_RE[key].search(base)
    return int(match.group(1)) if match else None


def _escaped_hostname() -> str:
    host = socket.gethostname() or "localhost"
    # Maildir: "/" and ":" must not appear; Dovecot escapes them as \057 and \072. A ","
    # would end the base before S=/W= parsing, so it is escaped the same way.
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


_HOSTNAME: Final = _escaped_hostname()
#: This process's pid, for new names (a forked child sets its own).
_pid = os.getpid()


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def generate_base(size: int, vsize: int) -> str:
    """Return a new unique base name with Dovecot's ``,S=`` and ``,W=`` fields.

    The shape is ``<seconds>.M<microseconds>P<pid>Q<counter>R<random>.<host>``: unique
    across processes, hosts and restarts (qmail's rule plus a random part).

    Args:
        size: bytes in the file.
        vsize: bytes with CRLF line ends (RFC822.SIZE).
    """
    now = time.time_ns()
    seconds, nanos = divmod(now, 1_000_000_000)
    unique = f"M{nanos // 1000}P{_pid}Q{next(_counter)}R{secrets.token_hex(4)}"
    return f"{seconds}.{unique}.{_HOSTNAME},S={size},W={vsize}"


def to_lf(data: bytes) -> bytes:
    """Turn CRLF line ends into LF, as Dovecot stores Maildir files (``mail_save_crlf=no``)."""
    return data.replace(b"\r\n", b"\n")


def to_crlf(data: bytes) -> bytes:
    """Turn bare LF line ends into CRLF (IMAP sends messages with CRLF, RFC 9051 §2.2)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_size(data: bytes) -> int:
    """Return ``len(to_crlf(data))`` without building it: the RFC822.SIZE of ``data``."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")

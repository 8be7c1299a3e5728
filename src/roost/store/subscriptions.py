"""The ``subscriptions`` file in the Maildir root, in Dovecot's formats.

Version 2 (what Dovecot 2.3 writes to a new file): the header ``V<TAB>2``, an empty
line, then one mailbox per line with the hierarchy levels separated by a TAB (each level
tab-escaped: ``\\x01`` -> ``\\x011``, TAB -> ``\\x01t``, CR -> ``\\x01r``, LF -> ``\\x01n``)::

    V	2

    INBOX
    Archive	2024

Version 1 (older Dovecot, Courier): no header, one name per line with the storage's own
separator (``.`` for Maildir++). A file is rewritten in the version it has.

Names are storage names: modified UTF-7 (RFC 3501 §5.1.3) without
``mailbox_list_utf8``. The file is replaced as a whole through ``subscriptions.lock``.

See Also: Dovecot ``src/lib-storage/list/subscription-file.c``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

from roost.store.dotlock import replace_file
from roost.store.mutf7 import MUTF7Error, decode_mutf7, encode_mutf7

__all__ = ["SUBSCRIPTIONS_NAME", "read_subscriptions", "set_subscribed"]

logger = logging.getLogger("roost.store")

SUBSCRIPTIONS_NAME: Final = "subscriptions"
_HEADER_V2: Final = "V\t2\n\n"
_SEPARATOR: Final = "."
_ESCAPES: Final = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}
_UNESCAPES: Final = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n"}


def _tab_escape(text: str) -> str:
    return "".join(_ESCAPES.get(char, char) for char in text)


def _tab_unescape(text: str) -> str:
    if "\x01" not in text:
        return text
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\x01":
            out.append(_UNESCAPES.get(next(chars, ""), ""))
        else:
            out.append(char)
    return "".join(out)


def _read(path: Path) -> tuple[int, list[str]]:
    """Return the file's version and its entries as storage names (``.`` separated)."""
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return 0, []
    if text.startswith(_HEADER_V2):
        lines = text[len(_HEADER_V2) :].split("\n")
        return 2, [
            _SEPARATOR.join(_tab_unescape(level) for level in line.split("\t"))
            for line in lines
            if line
        ]
    return 1, [line for line in text.split("\n") if line]


def _to_name(storage_name: str) -> str | None:
    storage_name = storage_name.rstrip(_SEPARATOR)  # old software added a trailing separator
    if storage_name.upper() == "INBOX":
        return "INBOX"
    try:
        return decode_mutf7(storage_name)
    except MUTF7Error:
        logger.warning("subscriptions: ignoring entry %r (not modified UTF-7)", storage_name)
        return None


def read_subscriptions(root: Path) -> list[str]:
    """Return the subscribed mailbox names (Unicode, ``.`` separated), in file order.

    Raises:
        OSError: the file exists but cannot be read.
    """
    _, entries = _read(root / SUBSCRIPTIONS_NAME)
    names: list[str] = []
    for entry in entries:
        name = _to_name(entry)
        if name is not None and name not in names:
            names.append(name)
    return names


def set_subscribed(
    root: Path,
    name: str,
    subscribed: bool,
    *,
    fsync: bool = True,
    file_mode: int = 0o600,
    chown: Callable[[int], None] | None = None,
) -> bool:
    """Add ``name`` to (or remove it from) the subscriptions file.

    Args:
        root: the Maildir root.
        name: Unicode mailbox name, ``.`` separated (``INBOX`` in any case is INBOX).
        subscribed: True to subscribe, False to unsubscribe.
        fsync: fsync the new file before renaming it into place.
        file_mode: permission bits of the file.
        chown: called with the new file's descriptor (ownership).

    Returns:
        True if the file changed.

    Raises:
        LockTimeout: another writer held ``subscriptions.lock`` too long.
        OSError: reading or writing failed.
    """
    path = root / SUBSCRIPTIONS_NAME
    storage_name = "INBOX" if name.upper() == "INBOX" else encode_mutf7(name)
    wanted = _to_name(storage_name)

    def content() -> bytes | None:
        version, entries = _read(path)
        if version == 0:
            version = 2  # Dovecot 2.3 writes new files in version 2
        present = [entry for entry in entries if _to_name(entry) == wanted]
        if subscribed == bool(present):
            return None
        if subscribed:
            entries.append(storage_name)
        else:
            entries = [entry for entry in entries if entry not in present]
        if version == 2:
            body = "".join(
                "\t".join(_tab_escape(level) for level in entry.split(_SEPARATOR)) + "\n"
                for entry in entries
            )
            text = _HEADER_V2 + body
        else:
            text = "".join(entry + "\n" for entry in entries)
        return text.encode("utf-8", "surrogateescape")

    return replace_file(path, content, fsync=fsync, mode=file_mode, stale_seconds=30.0, chown=chown)

"""New UIDVALIDITY values that never repeat for one user, as Dovecot hands them out.

Dovecot keeps ``dovecot-uidvalidity`` (the last value, 8 hex digits) and an empty marker
``dovecot-uidvalidity.<hex value>`` in the mail root. A process claims the next value by
``rename()``-ing the marker from the old value to the new one: only one process can win a
rename, so two mailboxes created at once never share a UIDVALIDITY. The first value is
the current time (seconds since the epoch); roost also never goes below the current time,
so a mailbox created again after ``dovecot-uidvalidity`` was lost still gets a new value
(RFC 9051 §2.3.1.1: a new mailbox with an old name needs a new UIDVALIDITY).

See Also: Dovecot ``src/lib-storage/mailbox-uidvalidity.c``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["UIDVALIDITY_NAME", "next_uid_validity"]

logger = logging.getLogger("roost.store")

UIDVALIDITY_NAME: Final = "dovecot-uidvalidity"
_RETRIES: Final = 10
_MAX: Final = 0xFFFFFFFF


def _scan(root: Path) -> int:
    prefix = UIDVALIDITY_NAME + "."
    best = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root):
            if name.startswith(prefix):
                with contextlib.suppress(ValueError):
                    best = max(best, int(name[len(prefix) :], 16))
    return best


def _read(root: Path) -> int:
    try:
        text = (root / UIDVALIDITY_NAME).read_text("ascii").strip()
        return int(text, 16)
    except (OSError, ValueError):
        return 0


def next_uid_validity(
    root: Path, *, file_mode: int = 0o600, chown: Callable[[int], None] | None = None
) -> int:
    """Claim a new UIDVALIDITY for a mailbox of the mail root ``root``.

    Args:
        root: the Maildir root (holds ``dovecot-uidvalidity``).
        file_mode: permission bits for the files created.
        chown: called with the descriptor of each file created (ownership).

    Returns:
        A value greater than every value claimed before under ``root`` and at least
        the current time, 1..2**32-1.
    """
    marker_prefix = f"{root / UIDVALIDITY_NAME}."
    for _ in range(_RETRIES):
        marker = _scan(root)
        wanted = max(marker + 1, _read(root) + 1, int(time.time()))
        if wanted > _MAX:
            wanted = 1
        new_marker = f"{marker_prefix}{wanted:08x}"
        try:
            if marker:
                # Claim by renaming: if another process renamed it first, look again.
                os.rename(f"{marker_prefix}{marker:08x}", new_marker)
            else:
                fd = os.open(new_marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
                if chown is not None:
                    chown(fd)
                os.close(fd)
        except (FileNotFoundError, FileExistsError):
            continue
        _write(root, wanted, file_mode, chown)
        return wanted
    logger.warning("%s: could not claim a UIDVALIDITY; using the time", root)
    return max(int(time.time()), _read(root) + 1)


def _write(root: Path, value: int, file_mode: int, chown: Callable[[int], None] | None) -> None:
    path = root / UIDVALIDITY_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, file_mode)
    except OSError as exc:
        logger.warning("cannot write %s: %s", path, exc.strerror)
        return
    try:
        os.pwrite(fd, f"{value:08x}".encode("ascii"), 0)
        if chown is not None:
            chown(fd)
    finally:
        os.close(fd)

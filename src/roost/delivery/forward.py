"""``~/.forward`` and ``:include:`` files: find, check and read them.

The file-reading side of :func:`roost.delivery.aliases.expand_recipient`: build its
``lookup_forward`` from :func:`find_forward` and its ``read_include`` from
:func:`read_include`. Blocking (``stat``/``open``); call it from a worker thread.

Safety rules, as Postfix local(8) applies them (and sendmail's for the home directory):

- ``.forward``: the first file of ``forward_path`` that exists is used; it must be a
  regular file (not a symbolic link), owned by the user or by root, and neither group- nor
  world-writable, and the home directory must not be world-writable. A file that breaks a
  rule is ignored with a warning, and mail goes to the mailbox.
- ``:include:``: an absolute path to a regular file (symbolic links allowed) that is not
  world-writable; otherwise the include fails with "mail system configuration error".

See Also: Postfix local(8) ".FORWARD FILES", postconf(5) ``forward_path``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from roost.config.expand import ExpansionError, expand
from roost.delivery.aliases import Forward, parse_target_lines

__all__ = [
    "DEFAULT_FORWARD_PATH",
    "ForwardLookup",
    "find_forward",
    "forward_paths",
    "parse_forward",
    "read_include",
]

#: Postfix's ``forward_path`` default.
DEFAULT_FORWARD_PATH: Final = "$home/.forward${recipient_delimiter}${extension}, $home/.forward"

#: The largest ``.forward`` or include file read, in bytes.
MAX_FILE_BYTES: Final = 1024 * 1024

# ``$name``, ``${name}``, ``$(name)``: a reference whose emptiness skips the element.
_PLAIN_REFERENCE: Final = re.compile(
    r"\$(?:\{([A-Za-z0-9_]+)\}|\(([A-Za-z0-9_]+)\)|([A-Za-z0-9_]+))"
)


@dataclass(frozen=True, slots=True)
class ForwardLookup:
    """What :func:`find_forward` found.

    Attributes:
        forward: the file's contents, or None (no usable file, or an empty one: deliver to
            the mailbox).
        warnings: files that were ignored and why, for the log (``file X is world
            writable``).
    """

    forward: Forward | None
    warnings: tuple[str, ...] = ()


def parse_forward(text: str) -> tuple[str, ...]:
    """Parse a ``.forward`` file: targets separated by commas or newlines, ``#`` comments.

    Args:
        text: the file's text.

    Returns:
        The targets (see :func:`roost.delivery.aliases.split_targets`).

    Raises:
        ValueError: ``line N: unbalanced quote ...``.
    """
    return parse_target_lines(text.splitlines())


def forward_paths(
    forward_path: str,
    *,
    user: str,
    home: str,
    shell: str = "",
    recipient: str = "",
    local: str = "",
    domain: str = "",
    extension: str | None = None,
    delimiter: str = "",
) -> list[tuple[Path, bool]]:
    """Expand Postfix's ``forward_path`` for one recipient.

    Each comma- or space-separated element is expanded with ``$user``, ``$home``,
    ``$shell``, ``$recipient``, ``$local``, ``$domain``, ``$extension``,
    ``$recipient_delimiter`` and the ``${name?text}`` / ``${name:text}`` forms. An element
    that refers to an attribute without a value in plain ``$name`` form is skipped (with
    no extension, ``$home/.forward${recipient_delimiter}${extension}`` is skipped), as
    Postfix does.

    Args:
        forward_path: the raw parameter value (``settings.raw("forward_path")``; Settings
            would expand ``$home`` as a main.cf parameter).
        user, home, shell: the recipient's account.
        recipient: the full recipient address; local, domain: its parts.
        extension: the address extension, None when there is none.
        delimiter: the delimiter character that separated the extension (Postfix's
            ``$recipient_delimiter`` attribute is that character, not the parameter).

    Returns:
        ``(path, uses_extension)`` for each element, in order; ``uses_extension`` is true
        when the element refers to ``$extension`` (so the extension is not propagated).

    Raises:
        ValueError: an element has unbalanced braces.
    """
    values: Mapping[str, str] = {
        "user": user,
        "home": home,
        "shell": shell,
        "recipient": recipient,
        "local": local,
        "domain": domain,
        "extension": extension or "",
        "recipient_delimiter": delimiter if extension is not None else "",
    }
    result: list[tuple[Path, bool]] = []
    for element in re.split(r"[\s,]+", forward_path.strip()):
        if not element:
            continue
        names = {next(g for g in m.groups() if g) for m in _PLAIN_REFERENCE.finditer(element)}
        if any(not values.get(name) for name in names):
            continue
        try:
            text = expand(element, lambda name: values.get(name, ""))
        except ExpansionError as exc:
            raise ValueError(f"forward_path: {exc}") from None
        if text:
            result.append((Path(text), "extension" in element))
    return result


def find_forward(
    paths: Iterable[tuple[Path, bool]],
    *,
    uid: int,
    home: Path,
    max_bytes: int = MAX_FILE_BYTES,
) -> ForwardLookup:
    """Find and read the user's ``.forward`` file.

    Args:
        paths: from :func:`forward_paths`; the first that exists is the one used.
        uid: the user's uid (the file must be owned by it or by root).
        home: the user's home directory (must not be world-writable).
        max_bytes: a larger file is ignored (a warning).

    Returns:
        The file's targets, or None and the reasons files were ignored. A file that
        exists but cannot be used is not skipped for the next path (Postfix).

    Raises:
        OSError: the file exists but reading it failed for a reason other than its
            permissions (EIO): the recipient should be deferred.
    """
    for path, uses_extension in paths:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            continue
        problem = _forward_problem(path, info, uid=uid, home=home, max_bytes=max_bytes)
        if problem is not None:
            return ForwardLookup(None, (problem,))
        try:
            text = _read_text(path, max_bytes)
        except PermissionError as exc:
            return ForwardLookup(None, (f"cannot open file {path}: {exc.strerror}",))
        try:
            targets = parse_forward(text)
        except ValueError as exc:
            return ForwardLookup(None, (f"file {path}: {exc}; ignored",))
        if not targets:
            return ForwardLookup(None)
        return ForwardLookup(Forward(str(path), targets, uses_extension))
    return ForwardLookup(None)


def _forward_problem(
    path: Path, info: os.stat_result, *, uid: int, home: Path, max_bytes: int
) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return f"file {path} is not a regular file; ignored"
    if info.st_uid not in (0, uid):
        return f"file {path} has bad owner uid {info.st_uid}; ignored"
    if info.st_mode & stat.S_IWOTH:
        return f"file {path} is world writable; ignored"
    if info.st_mode & stat.S_IWGRP:
        return f"file {path} is group writable; ignored"
    if info.st_size > max_bytes:
        return f"file {path} is larger than {max_bytes} bytes; ignored"
    try:
        home_info = home.stat()
    except OSError as exc:
        return f"cannot access home directory {home}: {exc.strerror}; {path} ignored"
    if home_info.st_mode & stat.S_IWOTH:
        return f"home directory {home} is world writable; {path} ignored"
    return None


def _read_text(path: Path, max_bytes: int) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes")
    return data.decode("utf-8", "replace")


def read_include(path: str, *, max_bytes: int = MAX_FILE_BYTES) -> list[str]:
    """Read an ``:include:`` file for the expansion (its ``read_include`` function).

    Args:
        path: the absolute path.
        max_bytes: the largest file read.

    Returns:
        The file's lines.

    Raises:
        OSError: missing or unreadable (ENOENT, EACCES), not absolute, not a regular
            file (EISDIR/EINVAL as EPERM), world-writable (EPERM) or too large (EFBIG);
            the expansion turns these into "mail system configuration error" (5.3.5),
            and other errors into a deferral.
    """
    if not path.startswith("/"):
        raise PermissionError(errno.EPERM, "not an absolute path", path)
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise PermissionError(errno.EPERM, "not a regular file", path)
    if info.st_mode & stat.S_IWOTH:
        raise PermissionError(errno.EPERM, "world writable", path)
    return _read_text(Path(path), max_bytes).splitlines()

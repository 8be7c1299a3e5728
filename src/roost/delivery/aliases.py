"""aliases(5) files and local(8) recipient expansion: aliases, ``:include:``, ``.forward``.

Sans-IO: the expansion asks injected functions for alias values, include-file lines and
``.forward`` contents, and never touches a file itself (:mod:`roost.delivery.forward` and
:mod:`roost.delivery.aliasfile` provide the file-reading ones).

Target syntax, shared by alias values, ``:include:`` files and ``.forward`` files
(:func:`split_targets`):

- targets are separated by commas and, outside commands, by whitespace;
- ``|command args``: pipe the message into a shell command (up to the next comma);
- ``/path/name``: append to a file (mbox format); ``/path/name/`` (trailing slash) is a
  Maildir, as in Postfix;
- ``:include:/path``: the targets listed in that file;
- ``\\user``: the user's own mailbox, with no alias or ``.forward`` lookup;
- anything else is an address; a bare name is qualified with ``origin`` (Postfix:
  ``$myorigin``) or the domain of the address being expanded;
- a target wholly in double quotes is unquoted (``"|/usr/bin/foo bar, baz"``); inside
  quotes, ``\\"`` and ``\\\\`` stand for ``"`` and ``\\``.

See Also: Postfix aliases(5), local(8) ("ALIAS DATABASE", ".FORWARD FILES", "EXTERNAL FILE
DELIVERY", "ADDRESS EXTENSION"), postconf(5) ``allow_mail_to_commands``,
``allow_mail_to_files``, ``propagate_unmatched_extensions``, ``owner_request_special``,
``expand_owner_alias``, ``recipient_delimiter``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from roost.address import split_extension as _split_extension

__all__ = [
    "AddressTarget",
    "CommandTarget",
    "Expansion",
    "ExpansionFailure",
    "ExpansionType",
    "FileTarget",
    "Forward",
    "LookupUnavailable",
    "Source",
    "Target",
    "expand_recipient",
    "parse_aliases",
    "parse_target_lines",
    "split_extension",
    "split_targets",
]

#: Postfix's nesting limit for aliases, includes and .forward files (local(8): 100).
MAX_DEPTH: Final = 100

_INCLUDE: Final = ":include:"


class LookupUnavailable(Exception):
    """A lookup function could not answer (LDAP down, unreadable table); defer (4.3.0)."""


class ExpansionType(enum.Enum):
    """Where a target was listed; the values are ``allow_mail_to_commands``'s class names."""

    ALIAS = "alias"
    FORWARD = "forward"
    INCLUDE = "include"


@dataclass(frozen=True, slots=True)
class Source:
    """The alias, ``.forward`` or ``:include:`` file a target was listed in.

    The caller derives the rights for ``|command`` and ``/file`` deliveries from it, as
    Postfix local(8) does ("DELIVERY RIGHTS"): FORWARD -> the rights of ``user``; INCLUDE ->
    ``user`` when the include was reached from a ``.forward`` file, else the owner of
    the include file ``name`` (``default_privs`` when root owns it); ALIAS -> the owner of
    the alias database (``default_privs`` when root owns it).

    Attributes:
        type: alias, forward or include.
        name: the alias name, or the path of the ``.forward`` or include file.
        user: the user whose ``.forward`` file (directly or through includes) listed the
            target; None for system aliases.
    """

    type: ExpansionType
    name: str
    user: str | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """The contents of a user's ``.forward`` file, as ``lookup_forward`` returns it.

    Attributes:
        path: the file's path (for logs, duplicate elimination and :class:`Source`).
        targets: the targets listed (see :func:`parse_target_lines`).
        extension_matched: the file's name contained the address extension
            (``.forward+ext``), so the extension is not propagated to the targets.
    """

    path: str
    targets: tuple[str, ...]
    extension_matched: bool = False


@dataclass(frozen=True, slots=True)
class AddressTarget:
    """Deliver to an address: a local user's mailbox, or forward to a remote address.

    Attributes:
        address: the full address; for local users the folded local part with its
            extension and the folded domain (``alice+lists@example.com``), as Postfix
            writes it in ``Delivered-To:``; for remote addresses as listed.
        is_local: True for a local user's mailbox; False for an address to route again
            (a remote domain).
        user: the user name (local part without the extension) of a local target; the
            local part of a remote one.
        extension: the address extension of a local target (``lists``), else None.
        domain: the domain (``""`` for an unqualified local name).
        chain: the addresses expanded on the way, outermost (the original recipient)
            first; empty when the recipient itself is the target.
        owner: where errors for this target go (the ``owner-NAME`` address of the
            nearest enclosing alias that has one), or None for the envelope sender.
        source: the alias or file that listed it; None for the recipient itself.
    """

    address: str
    is_local: bool
    user: str
    extension: str | None
    domain: str
    chain: tuple[str, ...] = ()
    owner: str | None = None
    source: Source | None = None

    @property
    def original_recipient(self) -> str:
        """The recipient as first given (Postfix logs it as ``orig_to=``)."""
        return self.chain[0] if self.chain else self.address

    @property
    def delivered_to(self) -> str:
        """The ``Delivered-To:`` value: this address for a mailbox, else the forwarder."""
        if self.is_local or not self.chain:
            return self.address
        return self.chain[-1]


@dataclass(frozen=True, slots=True)
class FileTarget:
    """Append to a file (``/path``, mbox format) or deliver to a Maildir (``/path/``).

    Attributes:
        path: the absolute path as listed.
        chain, owner, source: see :class:`AddressTarget`; ``chain`` is never empty.
    """

    path: str
    chain: tuple[str, ...]
    owner: str | None = None
    source: Source | None = None

    @property
    def is_maildir(self) -> bool:
        """True for ``/path/`` (trailing slash): Maildir delivery, as in Postfix."""
        return self.path.endswith("/")

    @property
    def original_recipient(self) -> str:
        """The recipient as first given."""
        return self.chain[0]

    @property
    def delivered_to(self) -> str:
        """The ``Delivered-To:`` value: the address whose expansion listed the file."""
        return self.chain[-1]


@dataclass(frozen=True, slots=True)
class CommandTarget:
    """Pipe the message into ``/bin/sh -c command``.

    Attributes:
        command: the command text after the ``|``.
        chain, owner, source: see :class:`AddressTarget`; ``chain`` is never empty.
    """

    command: str
    chain: tuple[str, ...]
    owner: str | None = None
    source: Source | None = None

    @property
    def original_recipient(self) -> str:
        """The recipient as first given."""
        return self.chain[0]

    @property
    def delivered_to(self) -> str:
        """The ``Delivered-To:`` value and ``$RECIPIENT``: the address expanded."""
        return self.chain[-1]


Target: TypeAlias = AddressTarget | FileTarget | CommandTarget


@dataclass(frozen=True, slots=True)
class ExpansionFailure:
    """One part of the expansion that cannot be delivered.

    Attributes:
        address: the address or target at fault.
        temporary: defer (True) or bounce (False).
        dsn: the RFC 3463 status, e.g. ``"5.4.6"``.
        text: the diagnostic, in Postfix's words (``mail forwarding loop for X``).
        chain: the addresses expanded on the way (see :class:`AddressTarget`).
        owner: where to report it (see :class:`AddressTarget`), None: the sender.
    """

    address: str
    temporary: bool
    dsn: str
    text: str
    chain: tuple[str, ...] = ()
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Expansion:
    """The result of expanding one recipient.

    Deliver every target; report every failure. Postfix defers or bounces each expanded
    recipient on its own; the original recipient is done when all its parts are.

    Attributes:
        recipient: the recipient expanded, as given.
        targets: the final targets, duplicates removed, in the order found.
        failures: the parts that failed.
        warnings: things the admin should see in the log (alias loops that were cut,
            ignored targets); not failures.
    """

    recipient: str
    targets: tuple[Target, ...]
    failures: tuple[ExpansionFailure, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def deferred(self) -> bool:
        """True when some part failed temporarily (the recipient must stay queued)."""
        return any(failure.temporary for failure in self.failures)


# --------------------------------------------------------------------------------------------
# Target syntax


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read a quoted string whose opening quote is at ``start``; return (content, end)."""
    out: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == '"':
            return "".join(out), pos + 1
        out.append(char)
        pos += 1
    raise ValueError(f"unbalanced quote in {text.strip()!r}")


def _read_raw(text: str, pos: int, stop: str) -> tuple[str, int]:
    """Read up to an unquoted character of ``stop`` (or the end), quotes kept as written."""
    start = pos
    while pos < len(text) and text[pos] not in stop:
        if text[pos] == '"':
            _, pos = _read_quoted(text, pos)
        else:
            pos += 1
    return text[start:pos].strip(), pos


def split_targets(value: str) -> tuple[str, ...]:
    """Split an alias value or a ``.forward``/include line into targets.

    Args:
        value: e.g. ``'alice, bob@example.org, "|/usr/bin/vacation alice", /var/log/x'``.

    Returns:
        The targets, unquoted when wholly quoted (see the module docs); empty items are
        dropped.

    Raises:
        ValueError: a quote is not closed.
    """
    targets: list[str] = []
    pos = 0
    length = len(value)
    while pos < length:
        char = value[pos]
        if char in ", \t\r\n":
            pos += 1
            continue
        if char == '"':
            content, end = _read_quoted(value, pos)
            if end >= length or value[end] in ", \t\r\n":
                targets.append(content)
                pos = end
                continue
            token, pos = _read_raw(value, pos, ", \t\r\n")
        elif char == "|":
            token, pos = _read_raw(value, pos, ",")
        else:
            token, pos = _read_raw(value, pos, ", \t\r\n")
            if token.lower() == _INCLUDE:
                while pos < length and value[pos] in " \t":
                    pos += 1
                path, pos = _read_raw(value, pos, ", \t\r\n")
                token += path
        if token:
            targets.append(token)
    return tuple(targets)


def parse_target_lines(lines: Iterable[str]) -> tuple[str, ...]:
    """Parse a ``.forward`` or ``:include:`` file: targets on lines, ``#`` comment lines.

    Args:
        lines: the file's lines (line endings optional).

    Returns:
        Every target in file order.

    Raises:
        ValueError: ``line N: unbalanced quote ...``.
    """
    targets: list[str] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            targets.extend(split_targets(stripped))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    return tuple(targets)


def _target_problem(target: str) -> str | None:
    """Return why a target can never be delivered, or None."""
    if target.lower().startswith(_INCLUDE):
        path = target[len(_INCLUDE) :]
        if not path:
            return ":include: without a file name"
        if not path.startswith("/"):
            return f":include: file {path!r} is not an absolute path"
        return None
    if target.startswith("|"):
        return "empty command after '|'" if not target[1:].strip() else None
    if target.startswith("/"):
        return None
    address = target[1:] if target.startswith("\\") else target
    local, domain = _split_address(address)
    if not local:
        return f"bad address {target!r}: empty local part"
    if domain == "":
        return f"bad address {target!r}: empty domain"
    return None


def parse_aliases(text: str, filename: str) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Parse an aliases(5) file.

    Syntax: ``name: target, target...``; lines starting with whitespace continue the
    previous entry; lines whose first non-blank character is ``#`` and blank lines are
    ignored; a name may be quoted (``"a b": ...``); names are folded to lower case. The
    first definition of a name wins, as with Postfix's postalias.

    Args:
        text: the file's text.
        filename: the file's name, for problem messages.

    Returns:
        ``(aliases, problems)``: each name's targets (see :func:`split_targets`; an
        ``:include:/path`` target is kept as such), and one ``FILE:LINE: reason`` string
        per bad line, in file order. Bad entries are left out of ``aliases``.

    See Also: Postfix aliases(5), postalias(1).
    """
    aliases: dict[str, tuple[str, ...]] = {}
    first_line: dict[str, int] = {}
    problems: list[str] = []
    entries: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t":
            if not entries:
                problems.append(f"{filename}:{number}: continuation line without an alias")
                continue
            start, logical = entries[-1]
            entries[-1] = (start, f"{logical} {stripped}")
            continue
        entries.append((number, stripped))

    for number, logical in entries:
        try:
            name, value = _split_entry(logical)
            targets = split_targets(value)
        except ValueError as exc:
            problems.append(f"{filename}:{number}: {exc}")
            continue
        if not targets:
            problems.append(f"{filename}:{number}: alias {name!r} has no targets")
            continue
        bad = [p for p in (_target_problem(t) for t in targets) if p is not None]
        if bad:
            problems.extend(f"{filename}:{number}: alias {name!r}: {reason}" for reason in bad)
            continue
        if name in aliases:
            problems.append(
                f"{filename}:{number}: duplicate alias {name!r} "
                f"(line {first_line[name]} is used, this one is ignored)"
            )
            continue
        aliases[name] = targets
        first_line[name] = number
    problems.sort(key=lambda p: int(p[len(filename) + 1 :].split(":", 1)[0]))
    return aliases, problems


def _split_entry(logical: str) -> tuple[str, str]:
    """Split ``name: value`` into the folded name and the value."""
    if logical.startswith('"'):
        name, end = _read_quoted(logical, 0)
        rest = logical[end:].lstrip()
        if not rest.startswith(":"):
            raise ValueError("need 'name: value' (no colon after the quoted name)")
        value = rest[1:]
    else:
        name, colon, value = logical.partition(":")
        if not colon:
            raise ValueError("need 'name: value' (no colon)")
        name = name.strip()
        if any(char in name for char in " \t"):
            raise ValueError(f"bad alias name {name!r}: whitespace (quote the name)")
    if not name:
        raise ValueError("empty alias name")
    if "@" in name:
        raise ValueError(f"bad alias name {name!r}: aliases are looked up by local part only")
    return name.lower(), value


def _split_address(text: str) -> tuple[str, str | None]:
    """Split ``local@domain`` at the last unquoted ``@``; unquote a quoted local part.

    Returns:
        ``(local, domain)``; domain is None when there is no ``@``.
    """
    at = -1
    pos = 0
    while pos < len(text):
        if text[pos] == '"':
            try:
                _, pos = _read_quoted(text, pos)
            except ValueError:
                break
            continue
        if text[pos] == "@":
            at = pos
        pos += 1
    if at < 0:
        local, domain = text, None
    else:
        local, domain = text[:at], text[at + 1 :]
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        with contextlib.suppress(ValueError):
            local = _read_quoted(local, 0)[0]
    return local, domain


def split_extension(
    local_part: str, delimiters: str, *, owner_request_special: bool = True
) -> tuple[str, str | None]:
    """Split ``user+ext`` into ``("user", "ext")`` at the first ``recipient_delimiter``.

    Delegates to :func:`roost.address.split_extension` (which never splits ``owner-*``
    and ``*-request`` when ``-`` is a delimiter); with ``owner_request_special = no``
    those names are split like any other.

    Args:
        local_part: the local part.
        delimiters: the ``recipient_delimiter`` characters (``""``: never split).
        owner_request_special: Postfix ``owner_request_special``.

    Returns:
        ``(user, extension)``; extension None when nothing was split.
    """
    if owner_request_special or "-" not in delimiters:
        return _split_extension(local_part, delimiters)
    folded = local_part.lower()
    if folded in ("postmaster", "mailer-daemon"):
        return local_part, None
    for index, char in enumerate(local_part):
        if char in delimiters:
            if index == 0:
                break
            return local_part[:index], local_part[index + 1 :]
    return local_part, None


# --------------------------------------------------------------------------------------------
# Expansion


@dataclass(frozen=True, slots=True)
class _Frame:
    """The state of one level of expansion (Postfix's ``state.msg_attr``)."""

    domain: str
    chain: tuple[str, ...] = ()
    owner: str | None = None
    source: Source | None = None
    exp_from: str | None = None
    depth: int = 0
    propagate: tuple[str, str] | None = None
    stack: frozenset[tuple[str, str]] = field(default_factory=frozenset)


#: (address, folded local part, user, extension, folded domain) of a local recipient.
_Names: TypeAlias = tuple[str, str, str, str | None, str]


def _join(local: str, domain: str) -> str:
    return f"{local}@{domain}" if domain else local


def _rights_key(source: Source | None) -> tuple[str, ...]:
    """Deliveries with the same rights are duplicates (Postfix: ``command UID CMD``)."""
    if source is None:
        return ()
    if source.user is not None:
        return ("user", source.user)
    if source.type is ExpansionType.INCLUDE:
        return ("include", source.name)
    return ("alias",)


_PERMANENT_INCLUDE_ERRORS: Final = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ELOOP,
        errno.ENOTDIR,
        errno.EFBIG,
    }
)


class _Expander:
    """One expansion: the injected lookups, the duplicate filter and the results."""

    def __init__(
        self,
        *,
        lookup_alias: Callable[[str], tuple[str, ...] | None],
        read_include: Callable[[str], list[str]],
        is_local_domain: Callable[[str], bool],
        lookup_forward: Callable[[str, str | None], Forward | None] | None,
        user_exists: Callable[[str], bool] | None,
        recipient_delimiter: str,
        propagate: frozenset[str],
        allow_commands: frozenset[str],
        allow_files: frozenset[str],
        owner_request_special: bool,
        expand_owner_alias: bool,
        delivered_to: frozenset[str],
        origin: str | None,
        max_depth: int,
    ) -> None:
        self.lookup_alias = lookup_alias
        self.read_include = read_include
        self.is_local_domain = is_local_domain
        self.lookup_forward = lookup_forward
        self.user_exists = user_exists
        self.delimiters = recipient_delimiter
        self.propagate = propagate
        self.allow_commands = allow_commands
        self.allow_files = allow_files
        self.owner_request_special = owner_request_special
        self.expand_owner_alias = expand_owner_alias
        self.delivered_to = delivered_to
        self.origin = origin
        self.max_depth = max_depth
        self.seen: set[tuple[str, ...]] = set()
        self.targets: list[Target] = []
        self.failures: list[ExpansionFailure] = []
        self.warnings: list[str] = []

    # --- results ----------------------------------------------------------------------------

    def fail(self, frame: _Frame, address: str, dsn: str, text: str) -> None:
        self.failures.append(
            ExpansionFailure(address, dsn[0] == "4", dsn, text, frame.chain, frame.owner)
        )

    def add(self, key: tuple[str, ...], target: Target) -> None:
        if key not in self.seen:
            self.seen.add(key)
            self.targets.append(target)

    # --- one target from an alias, include or .forward file ---------------------------------

    def token(self, token: str, frame: _Frame) -> None:
        if frame.depth > self.max_depth:
            self.fail(frame, token, "5.4.6", "recipient nesting limit exceeded")
            return
        kind = frame.source.type.value if frame.source is not None else ""
        if token.startswith("|"):
            command = token[1:].strip()
            if not command:
                self.fail(frame, token, "5.3.5", "mail system configuration error: empty command")
            elif kind not in self.allow_commands:
                self.fail(frame, token, "5.7.1", "mail to command is restricted")
            else:
                key = ("command", command, *_rights_key(frame.source))
                self.add(key, CommandTarget(command, frame.chain, frame.owner, frame.source))
        elif token.startswith("/"):
            if kind not in self.allow_files:
                self.fail(frame, token, "5.7.1", "mail to file is restricted")
            else:
                key = ("file", token)
                self.add(key, FileTarget(token, frame.chain, frame.owner, frame.source))
        elif token.lower().startswith(_INCLUDE):
            self.include(token[len(_INCLUDE) :].strip(), frame)
        else:
            mailbox_only = token.startswith("\\")
            local, domain = _split_address(token[1:] if mailbox_only else token)
            if domain is None:
                domain = self.origin if self.origin is not None else frame.domain
            if frame.propagate is not None and local:
                delimiter, extension = frame.propagate
                local = f"{local}{delimiter}{extension}"
            self.recipient(local, domain, frame, mailbox_only=mailbox_only)

    def include(self, path: str, frame: _Frame) -> None:
        if not path.startswith("/"):
            self.fail(
                frame,
                f"{_INCLUDE}{path}",
                "5.3.5",
                f"mail system configuration error: :include: file {path!r} is not absolute",
            )
            return
        if ("include", path) in frame.stack:
            self.warnings.append(f":include: loop: {path} includes itself; ignored")
            return
        key = ("include", path, *_rights_key(frame.source))
        if key in self.seen:
            return
        self.seen.add(key)
        try:
            targets = parse_target_lines(self.read_include(path))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.warnings.append(f"cannot open include file {path}: {reason}")
            if exc.errno in _PERMANENT_INCLUDE_ERRORS:
                self.fail(frame, f"{_INCLUDE}{path}", "5.3.5", "mail system configuration error")
            else:
                self.fail(frame, f"{_INCLUDE}{path}", "4.3.0", f"cannot read {path}: {reason}")
            return
        except ValueError as exc:
            self.warnings.append(f"include file {path}: {exc}")
            self.fail(frame, f"{_INCLUDE}{path}", "5.3.5", "mail system configuration error")
            return
        user = frame.source.user if frame.source is not None else None
        child = _Frame(
            domain=frame.domain,
            chain=frame.chain,
            owner=frame.owner,
            source=Source(ExpansionType.INCLUDE, path, user),
            exp_from=frame.exp_from,
            depth=frame.depth + 1,
            propagate=frame.propagate if "include" in self.propagate else None,
            stack=frame.stack | {("include", path)},
        )
        for target in targets:
            self.token(target, child)

    # --- one address ------------------------------------------------------------------------

    def recipient(self, local: str, domain: str, frame: _Frame, *, mailbox_only: bool) -> None:
        folded_domain = domain.lower()
        if folded_domain and not self.is_local_domain(folded_domain):
            address = _join(local, domain)
            target = AddressTarget(
                address, False, local, None, domain, frame.chain, frame.owner, frame.source
            )
            self.add(("address", address.lower()), target)
            return
        folded = local.lower()
        address = _join(folded, folded_domain)
        if address in self.delivered_to:
            self.fail(frame, address, "5.4.6", f"mail forwarding loop for {address}")
            return
        user, extension = split_extension(
            folded, self.delimiters, owner_request_special=self.owner_request_special
        )
        if extension is not None and "/" in extension:
            # Postfix: "address with illegal extension"; the extension is dropped.
            self.warnings.append(f"address with illegal extension: {address}")
            folded, extension = user, None
            address = _join(folded, folded_domain)
        if not user:
            self.fail(frame, address, "5.1.3", f'null username in "{address}"')
            return
        names = (address, folded, user, extension, folded_domain)
        if not mailbox_only and self.alias(names, frame):
            return
        if self.user_exists is not None:
            try:
                exists = self.user_exists(user)
            except (OSError, LookupUnavailable):
                self.fail(frame, address, "4.0.0", "user lookup error")
                return
            if not exists:
                self.fail(frame, address, "5.1.1", f'unknown user: "{user}"')
                return
        if not mailbox_only and self.forward(names, frame):
            return
        target = AddressTarget(
            address, True, user, extension, folded_domain, frame.chain, frame.owner, frame.source
        )
        self.add(("mailbox", folded), target)

    def alias(self, names: _Names, frame: _Frame) -> bool:
        """Expand an alias of the address; return False when there is none."""
        address, folded, user, extension, domain = names
        candidates = [(folded, False)]
        if extension is not None:
            candidates.append((user, True))
        for name, unmatched in candidates:
            if name == frame.exp_from:
                continue  # the alias lists itself: deliver to the user (Postfix, sendmail)
            try:
                values = self.lookup_alias(name)
            except (OSError, LookupUnavailable):
                self.fail(frame, address, "4.3.0", "alias database unavailable")
                return True
            if values is None:
                continue
            if ("alias", name) in frame.stack:
                loop = " -> ".join([*frame.chain, address])
                self.warnings.append(f"alias loop {loop} cut at {name!r}")
                return True
            if not values:
                self.fail(frame, address, "4.3.0", "alias database unavailable")
                return True
            owner = self.owner_of(name, frame)
            if isinstance(owner, ExpansionFailure):
                self.failures.append(owner)
                return True
            propagate = None
            if unmatched and "alias" in self.propagate and extension is not None:
                propagate = (folded[len(user)], extension)
            child = _Frame(
                domain=domain,
                chain=(*frame.chain, address),
                owner=owner,
                source=Source(ExpansionType.ALIAS, name),
                exp_from=name,
                depth=frame.depth + 1,
                propagate=propagate,
                stack=frame.stack | {("alias", name)},
            )
            for value in values:
                self.token(value, child)
            return True
        return False

    def owner_of(self, name: str, frame: _Frame) -> str | ExpansionFailure | None:
        """Return the error address for alias ``name``: its ``owner-name``, else inherited."""
        if not self.owner_request_special or name.startswith("owner-"):
            return frame.owner
        try:
            values = self.lookup_alias(f"owner-{name}")
        except (OSError, LookupUnavailable):
            return ExpansionFailure(
                name, True, "4.3.0", "alias database unavailable", frame.chain, frame.owner
            )
        if values is None:
            return frame.owner
        owner = f"owner-{name}"
        if self.expand_owner_alias and len(values) == 1 and values[0][:1] not in '|/:\\"':
            owner = values[0]
        if "@" not in owner:
            domain = self.origin if self.origin is not None else frame.domain
            owner = _join(owner, domain)
        return owner

    def forward(self, names: _Names, frame: _Frame) -> bool:
        """Expand the user's ``.forward`` file; return False when there is none to use."""
        address, folded, user, extension, domain = names
        if self.lookup_forward is None or ("forward", user) in frame.stack:
            return False
        try:
            found = self.lookup_forward(user, extension)
        except (OSError, LookupUnavailable) as exc:
            self.fail(frame, address, "4.3.0", f"cannot read .forward file of {user}: {exc}")
            return True
        if found is None or not found.targets:
            return False
        key = ("forward", found.path)
        if key in self.seen:
            return True
        self.seen.add(key)
        propagate = None
        if extension and not found.extension_matched and "forward" in self.propagate:
            propagate = (folded[len(user)], extension)
        child = _Frame(
            domain=domain,
            chain=(*frame.chain, address),
            owner=frame.owner,
            source=Source(ExpansionType.FORWARD, found.path, user),
            exp_from=folded,
            depth=frame.depth + 1,
            propagate=propagate,
            stack=frame.stack | {("forward", user)},
        )
        for target in found.targets:
            self.token(target, child)
        return True


def expand_recipient(
    address: str,
    *,
    lookup_alias: Callable[[str], tuple[str, ...] | None],
    read_include: Callable[[str], list[str]],
    is_local_domain: Callable[[str], bool],
    lookup_forward: Callable[[str, str | None], Forward | None] | None = None,
    user_exists: Callable[[str], bool] | None = None,
    recipient_delimiter: str = "",
    propagate_unmatched_extensions: Collection[str] = ("canonical", "virtual"),
    allow_mail_to_commands: Collection[str] = ("alias", "forward"),
    allow_mail_to_files: Collection[str] = ("alias", "forward"),
    owner_request_special: bool = True,
    expand_owner_alias: bool = False,
    delivered_to: Collection[str] = (),
    origin: str | None = None,
    max_depth: int = MAX_DEPTH,
) -> Expansion:
    """Expand a recipient through aliases, ``:include:`` files and ``.forward`` files.

    Follows Postfix local(8): for an address in a local domain, the alias of the whole
    local part (``alice+ext``) is tried, then that of the user (``alice``); an alias that
    lists its own name delivers that name to the user (``alice: alice, bob``); with no
    alias, the user's ``.forward`` is used, else the mailbox. ``\\user`` goes to the
    mailbox directly. Addresses in other domains become non-local targets. Every final
    target appears once (a message to a team alias reaches each member once).

    Loops: an alias, ``:include:`` or ``.forward`` reached again inside its own expansion
    is cut there (a warning); when nothing is left at all the result is the failure
    "mail forwarding loop for X" (5.4.6). An address already in the message's
    ``Delivered-To:`` headers is that failure too, as in Postfix.

    Args:
        address: the recipient, ``local@domain`` (or a bare local part).
        lookup_alias: returns the targets of an alias name (folded to lower case, the
            local part only), or None when there is no such alias. May raise
            :class:`LookupUnavailable` or ``OSError`` (the part is deferred, 4.3.0).
        read_include: returns the lines of an ``:include:`` file (an absolute path). May
            raise ``OSError``: ENOENT, EACCES and the like bounce as Postfix does (5.3.5
            "mail system configuration error"), others defer (4.3.0).
        is_local_domain: tells whether a folded domain is delivered here (Postfix
            ``mydestination``); only local addresses are looked up.
        lookup_forward: returns a user's ``.forward`` contents for (user, extension), or
            None; see :func:`roost.delivery.forward.find_forward`. None: ``.forward``
            files are not used.
        user_exists: tells whether a user name is a local account. None: every name
            is (the caller checks when delivering). False gives "unknown user" (5.1.1).
        recipient_delimiter: Postfix ``recipient_delimiter`` (``""``: no extensions).
        propagate_unmatched_extensions: Postfix's classes; ``alias``, ``forward`` and
            ``include`` append an unmatched extension to the addresses they list.
        allow_mail_to_commands: the classes (alias, forward, include) whose ``|command``
            targets are allowed; others fail "mail to command is restricted" (5.7.1).
        allow_mail_to_files: the same for ``/file`` targets.
        owner_request_special: Postfix ``owner_request_special``: use ``owner-NAME``
            aliases for errors, and do not split ``owner-*``/``*-request`` names.
        expand_owner_alias: report to the owner alias's value (a single address) instead
            of ``owner-NAME@domain``.
        delivered_to: the addresses of the message's ``Delivered-To:`` headers, folded
            (see :func:`roost.delivery.headers.delivered_to_addresses`).
        origin: the domain for bare names in aliases (Postfix ``$myorigin``); None: the
            domain of the address being expanded.
        max_depth: the nesting limit (Postfix: 100); deeper parts fail with 5.4.6.

    Returns:
        The targets, failures and warnings.
    """
    expander = _Expander(
        lookup_alias=lookup_alias,
        read_include=read_include,
        is_local_domain=is_local_domain,
        lookup_forward=lookup_forward,
        user_exists=user_exists,
        recipient_delimiter=recipient_delimiter,
        propagate=frozenset(c.lower() for c in propagate_unmatched_extensions),
        allow_commands=frozenset(c.lower() for c in allow_mail_to_commands),
        allow_files=frozenset(c.lower() for c in allow_mail_to_files),
        owner_request_special=owner_request_special,
        expand_owner_alias=expand_owner_alias,
        delivered_to=frozenset(a.lower() for a in delivered_to),
        origin=origin,
        max_depth=max_depth,
    )
    local, domain = _split_address(address.strip().strip("<>"))
    frame = _Frame(domain=(domain or "").lower())
    expander.recipient(local, domain or "", frame, mailbox_only=False)
    if not expander.targets and not expander.failures:
        folded = _join(local.lower(), (domain or "").lower())
        expander.fail(frame, folded, "5.4.6", f"mail forwarding loop for {folded}")
    return Expansion(
        address, tuple(expander.targets), tuple(expander.failures), tuple(expander.warnings)
    )

"""Dovecot passwd-file backend (Dovecot ``passdb``/``userdb { driver = passwd-file }``).

File format, one user a line::

    user:password:uid:gid:gecos:home:shell:extra_fields

* ``user`` is the login name (``alice`` or ``alice@example.com``), compared
  case-insensitively (see :mod:`roost.auth.users`).
* ``password`` is ``{SCHEME}data`` or bare data in ``default_scheme`` (``CRYPT``): see
  :mod:`roost.auth.schemes`. Empty: the user cannot log in (delivery still works).
* ``uid``/``gid``: numbers, or empty for the daemon's default owner. 0 is refused, as
  Dovecot refuses it for userdb lookups (``first_valid_uid`` is checked elsewhere).
* ``gecos`` and ``shell`` are ignored. ``home`` is an absolute path or empty.
* ``extra_fields`` (the rest of the line, which may contain ``:``) is a space-separated
  list of ``key=value`` or bare ``key`` fields. Interpreted here: ``userdb_uid``,
  ``userdb_gid``, ``userdb_home`` (override the columns), ``userdb_mail`` (the user's
  ``mail_location``, expanded with :func:`~roost.auth.users.expand_mail_location`),
  ``userdb_quota_rule`` (``*:storage=1G`` gives :attr:`User.quota_bytes`), ``nologin``
  (the password is checked, then the login is refused: ``DISABLED``; ``reason=`` is
  logged), ``allow_nets`` (checked by :class:`~roost.auth.users.UserDatabase` against the
  client address). ``nopassword`` is parsed but not honoured: such users need a password
  like everyone else, and the load reports a warning. ``pass``/``password`` fields are
  dropped; every other field is kept in :attr:`User.extra` under its own name.
* The old layout with an empty 8th field followed by the mail location
  (``...:shell::maildir:~/Mail``) is accepted, as Dovecot does.
* Fewer fields are fine (``alice:{PLAIN}secret``). Blank lines and lines starting with
  ``#`` are skipped.

A line with an error is skipped (its user is unknown) and reported as ``FILE:LINE:
reason`` in the log and in :attr:`PasswdFileBackend.problems`; the other lines work. The
first of two lines for the same user wins, as in Dovecot.

The file is read on first use (or before the worker processes are forked:
:meth:`PasswdFileBackend.preload`) and read again whenever ``(st_mtime_ns, st_size,
st_ino)`` changes (Dovecot checks mtime and size). What is kept of a read is the file's
bytes and where each user's line starts; a lookup parses that one line again. Password
checks ``stat`` the file every time; lookups (recipient validation, delivery) of users it
holds are answered from memory, in the event loop
(:meth:`PasswdFileBackend.lookup_nowait`), if the file was found unchanged less than
:data:`LOOKUP_RECHECK_SECONDS` ago; a removed user may thus still be found for that long. A
name not found in memory is always checked against the file (a user added a moment ago is
known at once). A missing or unreadable file is a backend error (temporary failure), not "no users".
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Final

from roost.auth.schemes import PasswordSchemeError, check_hash, hash_password, verify_password
from roost.auth.users import (
    FailureReason,
    LookupWouldBlock,
    User,
    UserBackendError,
    VerifyResult,
    allowed_by_nets,
    expand_mail_location,
    normalize_login,
)

__all__ = [
    "LineProblem",
    "PasswdEntry",
    "PasswdFile",
    "PasswdFileBackend",
    "hash_password",
    "parse_passwd_file",
    "parse_quota_rule",
    "retain_preloaded",
    "verify_password",
]

logger = logging.getLogger(__name__)

#: Files read before the worker processes were forked (:meth:`PasswdFileBackend.preload`),
#: by :attr:`PasswdFileBackend.key`: the parse and the ``(st_mtime_ns, st_size, st_ino)``
#: it was read at. A backend made for the same file in a forked worker starts from it, in
#: pages every worker shares, instead of each worker reading the file again at its first
#: login (docs/performance.md, "IMAP memory: base and first use, session 5"); its first use
#: still checks the file's stamp, as every use does.
_PRELOADED: dict[tuple[str, str | None, str, bool], tuple[tuple[int, int, int], PasswdFile]] = {}

_SECRET_FIELDS: Final = frozenset({"pass", "password", "userdb_pass", "userdb_password"})
_MAX_ID: Final = 2**32 - 2
_WHITESPACE_OR_CONTROL: Final = re.compile(r"[\s\x00-\x1f\x7f]")
_QUOTA_VALUE: Final = re.compile(r"(\d+)(.*)", re.DOTALL)
_QUOTA_UNITS: Final[Mapping[str, int]] = {
    "B": 1,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "T": 1024**4,
}


@dataclass(frozen=True, slots=True)
class LineProblem:
    """Something wrong on one line of a passwd-file.

    Attributes:
        path: the file.
        line: 1-based line number.
        reason: what is wrong; never contains the password field.
        skipped: whether the line was ignored (an error) or only noted (a warning).
    """

    path: str
    line: int
    reason: str
    skipped: bool = True

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    """One usable line: the user and what only verification needs.

    Attributes:
        user: the user record.
        password: the stored password (``{SCHEME}data``, bare data or empty); kept out of
            ``repr``.
        nologin: Dovecot ``nologin``: a right password still fails with ``DISABLED``.
        reason: Dovecot ``reason`` field, logged with ``nologin``.
        line: the line number, for messages.
    """

    user: User
    password: str = field(repr=False)
    nologin: bool = False
    reason: str | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class PasswdFile:
    """A parsed passwd-file.

    Attributes:
        entries: usable entries by lowercased login name.
        problems: errors and warnings in file order.
    """

    entries: Mapping[str, PasswdEntry]
    problems: tuple[LineProblem, ...]


class _LineError(Exception):
    pass


def parse_quota_rule(rule: str) -> int | None:
    """Read the storage limit from a Dovecot ``quota_rule`` value.

    ``*:storage=1G`` is 1 GiB. ``storage`` without a unit is in KiB, ``bytes`` in bytes;
    units are ``B``, ``K``, ``M``, ``G``, ``T`` (powers of 1024, only the first letter
    counts, any case). Several limits are separated by ``:`` (``*:storage=1G:messages=1000``).
    See Dovecot ``src/plugins/quota/quota-util.c``.

    Args:
        rule: the value, ``<mailbox mask>:<limits>``.

    Returns:
        The limit in bytes for the default rule (mask ``*`` or ``?``); ``None`` when the
        rule is for a particular mailbox, is ``ignore``, has no storage limit, or the limit
        is 0 (unlimited).

    Raises:
        ValueError: the rule is malformed, or the default rule has a ``+``/``-`` relative
            or ``%`` limit.
    """
    mask, colon, limits = rule.partition(":")
    if not colon:
        raise ValueError(f"invalid quota rule {rule!r}")
    if mask not in ("*", "?") or limits == "ignore" or limits.startswith("backend="):
        return None
    limit: int | None = None
    for item in limits.split(":"):
        key, _eq, value = item.partition("=")
        if key == "messages":
            if not value.isascii() or not value.isdigit():
                raise ValueError(f"invalid messages limit {value!r}")
            continue
        if key == "storage":
            multiplier = 1024
        elif key == "bytes":
            multiplier = 1
        else:
            raise ValueError(f"unknown quota limit {key!r}")
        match = _QUOTA_VALUE.fullmatch(value)
        if match is None or not value.isascii():
            raise ValueError(f"invalid {key} limit {value!r}")
        unit = match.group(2)[:1].upper()
        if unit:
            if unit not in _QUOTA_UNITS:
                raise ValueError(f"unknown unit in {key} limit {value!r}")
            multiplier = _QUOTA_UNITS[unit]
        limit = int(match.group(1)) * multiplier
    return limit or None


def _parse_id(text: str, what: str) -> int | None:
    if not text:
        return None
    if not text.isascii() or not text.isdigit():
        raise _LineError(f"{what} {text[:20]!r} is not a number")
    value = int(text)
    if not 0 < value <= _MAX_ID:
        raise _LineError(f"invalid {what} {value}")
    return value


def _parse_extra(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in text.split():
        key, _eq, value = item.partition("=")
        if not key:
            raise _LineError(f"extra field {item[:40]!r} has no name")
        fields[key] = value
    return fields


def _address(login: str, default_domain: str | None) -> str:
    local, at, domain = login.rpartition("@")
    if at:
        return f"{local}@{domain.lower()}"
    if default_domain:
        return f"{login}@{default_domain.lower()}"
    return login


def _parse_line(
    line: str, number: int, *, backend: str, default_domain: str | None
) -> tuple[PasswdEntry, list[str]]:
    """Parse one non-blank, non-comment line; return the entry and its warnings."""
    warnings: list[str] = []
    columns = line.split(":", 7)
    login = columns[0]
    if not login:
        raise _LineError("empty user name")
    if _WHITESPACE_OR_CONTROL.search(login) or normalize_login(login) is None:
        raise _LineError("invalid user name")
    columns += [""] * (8 - len(columns))
    password, uid_text, gid_text, _gecos, home_text, _shell, extra_text = columns[1:]

    if extra_text.startswith(":"):
        extra = {"userdb_mail": extra_text[1:]} if extra_text[1:] else {}
    else:
        extra = _parse_extra(extra_text)
    for secret in _SECRET_FIELDS & extra.keys():
        del extra[secret]

    uid = _parse_id(extra.get("userdb_uid", uid_text), "uid")
    gid = _parse_id(extra.get("userdb_gid", gid_text), "gid")
    home = extra.get("userdb_home", home_text) or None
    if home is not None and not home.startswith("/"):
        raise _LineError(f"home {home!r} is not an absolute path")

    domain = login.rpartition("@")[2] if "@" in login else ""
    mail_location = None
    if extra.get("userdb_mail"):
        try:
            mail_location = expand_mail_location(extra["userdb_mail"], login, domain, home or "")
        except ValueError as exc:
            raise _LineError(f"userdb_mail: {exc}") from None

    quota_bytes = None
    if "userdb_quota_rule" in extra:
        try:
            quota_bytes = parse_quota_rule(extra["userdb_quota_rule"])
        except ValueError as exc:
            raise _LineError(f"userdb_quota_rule: {exc}") from None

    if "allow_nets" in extra:
        try:
            allowed_by_nets(extra["allow_nets"], None)
        except ValueError as exc:
            raise _LineError(f"allow_nets: {exc}") from None

    if "nopassword" in extra:
        warnings.append(f"user {login}: nopassword is not supported; a password is required")

    user = User(
        login=login,
        address=_address(login, default_domain),
        uid=uid,
        gid=gid,
        home=home,
        mail_location=mail_location,
        quota_bytes=quota_bytes,
        extra=MappingProxyType(extra),
        backend=backend,
    )
    entry = PasswdEntry(
        user=user,
        password=password,
        nologin="nologin" in extra,
        reason=extra.get("reason"),
        line=number,
    )
    return entry, warnings


class _LineEntries(Mapping[str, PasswdEntry]):
    """A passwd-file's usable entries, kept as the file's bytes and where each user's line
    starts; an entry is parsed again from its line when it is read (about 15 us), except
    for the last :data:`_RECENT_ENTRIES` read, which are kept.

    The parse of every line (1.1 MiB for 1,000 users) is thrown away once checked. What is
    kept is one bytes object and one dictionary of names to numbers, which a lookup reads
    without writing to: read before the worker processes are forked
    (:meth:`PasswdFileBackend.preload`), it stays in pages they all share, where whole
    parsed records would be copied into each worker page by page as its logins touched
    their reference counts (docs/performance.md, "IMAP memory: base and first use,
    session 5").
    """

    __slots__ = ("_backend", "_data", "_default_domain", "_lock", "_places", "_recent")

    def __init__(
        self, data: bytes, places: dict[str, int], *, backend: str, default_domain: str | None
    ) -> None:
        self._data = data
        self._places = places  # lowercased login: line start << 32 | line number
        self._backend = backend
        self._default_domain = default_domain
        self._lock = threading.Lock()
        self._recent: dict[str, PasswdEntry] = {}

    def __getitem__(self, name: str) -> PasswdEntry:
        entry = self._recent.get(name)
        if entry is not None:
            return entry
        place = self._places[name]
        start = place >> 32
        end = self._data.find(b"\n", start)
        raw = self._data[start : None if end < 0 else end].removesuffix(b"\r")
        entry, _ = _parse_line(
            raw.decode("utf-8"),
            place & 0xFFFFFFFF,
            backend=self._backend,
            default_domain=self._default_domain,
        )
        with self._lock:
            if len(self._recent) >= _RECENT_ENTRIES:
                del self._recent[next(iter(self._recent))]
            self._recent[name] = entry
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._places)

    def __len__(self) -> int:
        return len(self._places)

    def __contains__(self, name: object) -> bool:
        return name in self._places


#: How many parsed entries a passwd-file keeps (the users read last).
_RECENT_ENTRIES: Final = 64


def parse_passwd_file(
    data: bytes,
    *,
    path: str = "<passwd-file>",
    backend: str | None = None,
    default_domain: str | None = None,
    default_scheme: str = "CRYPT",
    allow_weak_schemes: bool = False,
) -> PasswdFile:
    """Parse the contents of a passwd-file (pure: no I/O).

    Args:
        data: the file's bytes, UTF-8.
        path: the file name used in problems.
        backend: the value for :attr:`User.backend`; default ``passwd-file:<path>``.
        default_domain: the domain of :attr:`User.address` for logins without ``@``
            (e.g. ``$mydomain``); ``None`` leaves such addresses bare.
        default_scheme: the scheme of passwords without a ``{SCHEME}`` prefix; used to
            warn about unusable passwords.
        allow_weak_schemes: whether weak schemes are accepted (otherwise they are
            reported).

    Returns:
        The usable entries and the problems found.
    """
    backend_name = backend if backend is not None else f"passwd-file:{path}"
    places: dict[str, int] = {}  # lowercased login: line start << 32 | line number
    problems: list[LineProblem] = []
    start = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line_start, start = start, start + len(raw) + 1
        raw = raw.removesuffix(b"\r")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(LineProblem(path, number, "not valid UTF-8"))
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            entry, warnings = _parse_line(
                line, number, backend=backend_name, default_domain=default_domain
            )
        except _LineError as exc:
            problems.append(LineProblem(path, number, str(exc)))
            continue
        key = entry.user.login.lower()
        first = places.get(key)
        if first is not None:
            line_number = first & 0xFFFFFFFF
            reason = f"user {entry.user.login} exists more than once (line {line_number} is used)"
            problems.append(LineProblem(path, number, reason))
            continue
        for warning in warnings:
            problems.append(LineProblem(path, number, warning, skipped=False))
        if entry.password:
            try:
                check_hash(
                    entry.password, default_scheme=default_scheme, allow_weak=allow_weak_schemes
                )
            except PasswordSchemeError as exc:
                problems.append(
                    LineProblem(
                        path,
                        number,
                        f"user {entry.user.login}: {exc}; logins will fail",
                        skipped=False,
                    )
                )
        places[key] = line_start << 32 | number
    entries = _LineEntries(data, places, backend=backend_name, default_domain=default_domain)
    return PasswdFile(entries=entries, problems=tuple(problems))


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16), "SHA512-CRYPT")


#: Seconds a lookup may trust the file read last without checking it for changes.
LOOKUP_RECHECK_SECONDS: Final = 1.0


class PasswdFileBackend:
    """A :class:`~roost.auth.users.UserBackend` reading a Dovecot passwd-file.

    Thread-safe: the database calls it from worker threads.

    Args:
        path: the file, e.g. ``/etc/roost/users``.
        default_domain: domain for the addresses of logins without ``@``.
        default_scheme: scheme of passwords without ``{SCHEME}`` (Dovecot
            ``default_pass_scheme``, ``CRYPT``).
        allow_weak_schemes: accept weak schemes (Dovecot ``auth_allow_weak_schemes``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        default_domain: str | None = None,
        default_scheme: str = "CRYPT",
        allow_weak_schemes: bool = False,
    ) -> None:
        self._path = os.fspath(path)
        self._name = f"passwd-file:{self._path}"
        self._default_domain = default_domain
        self._default_scheme = default_scheme
        self._allow_weak = allow_weak_schemes
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._file: PasswdFile | None = None
        self._checked = -LOOKUP_RECHECK_SECONDS  # time.monotonic() of the last good stat
        if (preloaded := _PRELOADED.get(self.key)) is not None:
            self._stamp, self._file = preloaded  # checked at the first use, like any read

    @property
    def key(self) -> tuple[str, str | None, str, bool]:
        """What a preloaded parse is kept by: the path and the settings that shape it."""
        return (self._path, self._default_domain, self._default_scheme, self._allow_weak)

    def preload(self) -> bool:
        """Read the file now and keep the parse for every backend made later for the same
        file, with the same settings, in this process and the processes it forks (call
        before the worker processes are forked, so that they share it).

        A backend that starts from it checks the file's stamp at its first use, as at
        every use, and reads the file again if it changed; the new parse then replaces
        the kept one. Returns False when the file cannot be read: nothing is kept, and
        each backend reads the file at its first use and reports the error then.
        """
        try:
            parsed = self.load()
        except UserBackendError:
            _PRELOADED.pop(self.key, None)
            return False
        if self._stamp is not None:
            _PRELOADED[self.key] = (self._stamp, parsed)
        return True

    @property
    def name(self) -> str:
        """``passwd-file:<path>``."""
        return self._name

    @property
    def path(self) -> str:
        """The file's path."""
        return self._path

    @property
    def problems(self) -> tuple[LineProblem, ...]:
        """Problems found by the last read (empty before the first)."""
        current = self._file
        return () if current is None else current.problems

    def __repr__(self) -> str:
        return f"PasswdFileBackend({self._path!r})"

    def load(self) -> PasswdFile:
        """Return the parsed file, reading it again if it changed since the last read.

        Raises:
            UserBackendError: the file cannot be read.
        """
        with self._lock:
            try:
                stamp = _stamp(os.stat(self._path))
            except OSError as exc:
                raise UserBackendError(f"{self._name}: {exc.strerror}") from None
            if self._file is not None and stamp == self._stamp:
                self._checked = time.monotonic()
                return self._file
            try:
                with open(self._path, "rb") as handle:
                    stamp = _stamp(os.fstat(handle.fileno()))
                    data = handle.read()
            except OSError as exc:
                raise UserBackendError(f"{self._name}: {exc.strerror}") from None
            parsed = parse_passwd_file(
                data,
                path=self._path,
                backend=self._name,
                default_domain=self._default_domain,
                default_scheme=self._default_scheme,
                allow_weak_schemes=self._allow_weak,
            )
            for problem in parsed.problems:
                logger.warning("passwd-file %s", problem)
            logger.info("passwd-file %s: read %d users", self._path, len(parsed.entries))
            self._file, self._stamp = parsed, stamp
            self._checked = time.monotonic()
            if self.key in _PRELOADED:  # the kept parse is stale: keep this one instead
                _PRELOADED[self.key] = (stamp, parsed)
            return parsed

    def lookup(self, name: str) -> User | None:
        """Find a user (case-insensitive). See :meth:`UserBackend.lookup`.

        Raises:
            UserBackendError: the file cannot be read.
        """
        entry = self.load().entries.get(name.lower())
        return None if entry is None else entry.user

    def lookup_nowait(self, name: str) -> User | None:
        """Find a user from memory, if the file was found unchanged less than
        :data:`LOOKUP_RECHECK_SECONDS` ago. See :class:`roost.auth.users.CachedLookup`.

        Raises:
            LookupWouldBlock: the file must be checked (or read) first: call :meth:`lookup`.
        """
        current = self._file
        if current is None or time.monotonic() - self._checked >= LOOKUP_RECHECK_SECONDS:
            raise LookupWouldBlock(self._name)
        entry = current.entries.get(name.lower())
        return None if entry is None else entry.user

    def verify(self, login: str, password: str) -> VerifyResult:
        """Check a password. See :meth:`UserBackend.verify`.

        An unknown login still costs one SHA512-CRYPT verification so that response
        times do not tell which logins exist.
        """
        try:
            entry = self.load().entries.get(login.lower())
        except UserBackendError as exc:
            return VerifyResult.fail(FailureReason.BACKEND_ERROR, str(exc))
        if entry is None:
            verify_password(password, _dummy_hash())
            return VerifyResult.fail(FailureReason.UNKNOWN_USER)
        where = f"{self._path}:{entry.line}: user {entry.user.login}"
        if not entry.password:
            return VerifyResult.fail(FailureReason.BAD_PASSWORD, f"{where}: no password set")
        try:
            matched = verify_password(
                password,
                entry.password,
                default_scheme=self._default_scheme,
                allow_weak=self._allow_weak,
            )
        except PasswordSchemeError as exc:
            return VerifyResult.fail(FailureReason.BACKEND_ERROR, f"{where}: {exc}")
        if not matched:
            return VerifyResult.fail(FailureReason.BAD_PASSWORD)
        if entry.nologin:
            detail = f"{where}: nologin" + (f" ({entry.reason})" if entry.reason else "")
            return VerifyResult.fail(FailureReason.DISABLED, detail)
        return VerifyResult.success(entry.user)


def retain_preloaded(backends: Iterable[object]) -> None:
    """Drop the preloaded parses (:meth:`PasswdFileBackend.preload`) of files that none of
    ``backends`` reads with the same settings: after a reload that changed
    ``auth_backends``, the old files' users are not kept in memory for nothing.
    """
    wanted = {backend.key for backend in backends if isinstance(backend, PasswdFileBackend)}
    for key in [key for key in _PRELOADED if key not in wanted]:
        del _PRELOADED[key]


def _stamp(result: os.stat_result) -> tuple[int, int, int]:
    return (result.st_mtime_ns, result.st_size, result.st_ino)

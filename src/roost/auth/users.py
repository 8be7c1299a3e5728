"""Users: the record every protocol shares, the backend protocol and the async facade.

One :class:`UserDatabase` answers SMTP recipient validation, local delivery, SMTP AUTH
(RFC 4954), IMAP (RFC 9051) and POP3 (RFC 5034). It holds an ordered list of
:class:`UserBackend` objects (passwd-file, LDAP, PAM, ...). Backends are synchronous and may
block; the database runs each whole lookup or verification in one worker thread
(:func:`asyncio.to_thread`), never on the event loop.

Login names
-----------
Normalisation happens once, in :class:`UserDatabase`, before any backend sees the name:

* A name that is empty, longer than :data:`MAX_LOGIN_LENGTH` characters, or contains a
  control character or ``/`` is refused outright (unknown user; no backend is asked).
  ``/`` is refused because names end up in paths through ``%u``/``%n`` (Dovecot cuts
  passwd-file paths at ``/`` for the same reason).
* The domain part (after the last ``@``) is lowercased; the local part is kept as typed.
* With ``default_realm`` set (Dovecot's ``auth_default_realm``), a bare name ``alice`` is
  tried first as ``alice@realm`` in every backend, then as ``alice`` in every backend. A
  name that already has a domain is tried as is only.

Backends compare names case-insensitively (``str.lower`` on the whole name). This is the
effect of Dovecot's default ``auth_username_format = %Lu`` without rewriting what the
user typed: ``Alice@Example.COM`` finds the entry ``alice@example.com``, and
:attr:`User.login` is the spelling from the database, which is what logs, ``%u`` in
``mail_location`` and IMAP ``AUTHENTICATE`` results use.

Answers
-------
The first backend that knows the user answers: a wrong password there is final, later
backends are not asked (simpler than Dovecot's passdb ``result_*`` chains). A backend that
fails (LDAP down) is skipped and remembered: if no later backend knows the user, the caller
gets a temporary failure (:attr:`FailureReason.BACKEND_ERROR`; :class:`UserBackendError`
for lookups), never "unknown user", so SMTP answers 4xx and not 550 while a directory is
unreachable.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol

from roost.auth._net import IPAddress, parse_ip

__all__ = [
    "MAX_LOGIN_LENGTH",
    "CachedLookup",
    "FailureReason",
    "LookupWouldBlock",
    "User",
    "UserBackend",
    "UserBackendError",
    "UserDatabase",
    "VerifyResult",
    "allowed_by_nets",
    "expand_mail_location",
    "normalize_login",
]

logger = logging.getLogger(__name__)

MAX_LOGIN_LENGTH: Final = 320
"""Longest accepted login name in characters: RFC 5321 §4.5.3.1 local part (64) + ``@`` +
domain (255), rounded."""

_FORBIDDEN_IN_LOGIN: Final = re.compile(r"[\x00-\x1f\x7f-\x9f/]")


def _empty_extra() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class User:
    """One user as every protocol sees it. Holds no password and no password hash.

    Attributes:
        login: the login name as spelt in the backend (``alice@example.com`` or ``alice``).
        address: the canonical RFC 5322 address (``local@domain``, domain lowercased) that
            mail for this user is delivered to; a bare local part when the backend has no
            domain for the user.
        aliases: further addresses that deliver to this user, canonical form.
        uid: numeric user id that owns the mail (Dovecot userdb ``uid``), ``None`` = the
            daemon's ``mail_owner``/``vmail`` default.
        gid: numeric group id (Dovecot userdb ``gid``).
        home: home directory, absolute path (Dovecot userdb ``home``).
        mail_location: Dovecot ``mail_location`` for this user, variables and ``~`` already
            expanded (``maildir:/home/alice/Maildir``); ``None`` = the global default.
        quota_bytes: storage quota in bytes (from ``quota_rule=*:storage=...``); ``None`` =
            no per-user limit.
        extra: the backend's remaining fields (Dovecot extra fields) by name. Never holds
            passwords (backends drop ``pass``/``password`` fields).
        backend: the name of the backend that answered, e.g.
            ``passwd-file:/etc/roost/users``.
    """

    login: str
    address: str
    aliases: tuple[str, ...] = ()
    uid: int | None = None
    gid: int | None = None
    home: str | None = None
    mail_location: str | None = None
    quota_bytes: int | None = None
    extra: Mapping[str, str] = field(default_factory=_empty_extra, hash=False)
    backend: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.extra, MappingProxyType):
            object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        if not isinstance(self.aliases, tuple):
            object.__setattr__(self, "aliases", tuple(self.aliases))

    @property
    def domain(self) -> str:
        """The domain part of :attr:`login` (Dovecot ``%d``); empty without ``@``."""
        _local, at, domain = self.login.rpartition("@")
        return domain if at else ""


class FailureReason(enum.Enum):
    """Why a verification failed.

    Protocols map these in their own reply tables: every reason except
    :attr:`BACKEND_ERROR` is a permanent authentication failure (SMTP ``535 5.7.8``,
    IMAP ``NO [AUTHENTICATIONFAILED]``, POP3 ``-ERR [AUTH]``) with the same text, so a
    client cannot tell an unknown user from a wrong password. :attr:`BACKEND_ERROR` is
    temporary (SMTP ``454 4.7.0``, IMAP ``NO [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``).
    """

    UNKNOWN_USER = "unknown user"
    BAD_PASSWORD = "password mismatch"
    DISABLED = "login disabled"
    BACKEND_ERROR = "backend error"

    @property
    def temporary(self) -> bool:
        """Whether retrying later may succeed (only :attr:`BACKEND_ERROR`)."""
        return self is FailureReason.BACKEND_ERROR


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The answer to one password verification: a user, or a failure reason.

    Attributes:
        user: the authenticated user; set exactly when :attr:`failure` is ``None``.
        failure: why verification failed.
        message: detail for the log (never the password, never a hash); not for clients.
    """

    user: User | None = None
    failure: FailureReason | None = None
    message: str = ""

    def __post_init__(self) -> None:
        if (self.user is None) == (self.failure is None):
            raise ValueError("VerifyResult needs exactly one of user and failure")

    @property
    def ok(self) -> bool:
        """Whether the password was right and the user may log in."""
        return self.failure is None

    @classmethod
    def success(cls, user: User) -> VerifyResult:
        """Build a successful result for ``user``."""
        return cls(user=user)

    @classmethod
    def fail(cls, reason: FailureReason, message: str = "") -> VerifyResult:
        """Build a failed result; ``message`` goes to logs only."""
        return cls(failure=reason, message=message or reason.value)


class UserBackendError(Exception):
    """A backend could not answer (unreadable file, directory unreachable): temporary.

    Raised by :meth:`UserBackend.lookup` and :meth:`UserDatabase.lookup`. The message is
    for logs and never contains a password or a hash.
    """


class LookupWouldBlock(Exception):
    """A backend cannot answer :meth:`CachedLookup.lookup_nowait` from memory right now;
    ask it through :meth:`UserBackend.lookup` in a thread instead."""


class CachedLookup(Protocol):
    """A backend that can often answer a lookup from memory, without blocking (the
    passwd-file). :class:`UserDatabase` then answers in the event loop, with no thread hop;
    backends without it are always asked in a thread."""

    def lookup_nowait(self, name: str) -> User | None:
        """Like :meth:`UserBackend.lookup`, from memory only.

        Raises:
            LookupWouldBlock: the answer needs I/O (a first read, a check for changes).
        """
        ...


class UserBackend(Protocol):
    """One source of users: passwd-file, LDAP, PAM/system accounts.

    Methods are synchronous and may block (file reads, LDAP round trips, PAM):
    :class:`UserDatabase` calls them from a worker thread, possibly from several threads at
    once, so implementations must be thread-safe. Names arrive normalised (see the module
    docstring) and are compared case-insensitively.
    """

    @property
    def name(self) -> str:
        """Backend name for logs and :attr:`User.backend`, e.g. ``passwd-file:/etc/x``."""
        ...

    def lookup(self, name: str) -> User | None:
        """Find a user by login name (userdb lookup: delivery, recipient validation).

        Returns:
            The user, or ``None`` when this backend does not know the name.

        Raises:
            UserBackendError: the backend cannot answer now.
        """
        ...

    def verify(self, login: str, password: str) -> VerifyResult:
        """Check a password (passdb lookup). Never raises for bad input.

        Returns:
            Success with the user; or :attr:`FailureReason.UNKNOWN_USER` when this backend
            does not know ``login`` (the database then asks the next backend); or another
            failure reason, which is final.
        """
        ...


def normalize_login(name: str) -> str | None:
    """Normalise a login name as described in the module docstring.

    Args:
        name: the name as the client sent it (SASL authcid, ``USER``, RCPT local part).

    Returns:
        The name with its domain part lowercased, or ``None`` when it cannot be a login
        name (empty, too long, control characters, ``/``, empty local or domain part).
    """
    if not name or len(name) > MAX_LOGIN_LENGTH or _FORBIDDEN_IN_LOGIN.search(name):
        return None
    local, at, domain = name.rpartition("@")
    if not at:
        return name
    if not local or not domain:
        return None
    return f"{local}@{domain.lower()}"


def allowed_by_nets(spec: str, remote_address: str | None) -> bool:
    """Evaluate a Dovecot ``allow_nets`` passdb extra field.

    ``spec`` is a comma- or space-separated list of addresses and CIDR networks
    (``192.0.2.0/24,2001:db8::/32``); the word ``local`` matches connections without a
    remote IP (UNIX sockets, ``roost`` tools). IPv4-mapped IPv6 clients match IPv4 networks.

    Args:
        spec: the field's value.
        remote_address: the client's IP address as text, ``None`` when not known.

    Returns:
        Whether the client may log in.

    Raises:
        ValueError: ``spec`` contains something that is neither ``local`` nor a network.
    """
    address: IPAddress | None = None if remote_address is None else parse_ip(remote_address)
    for item in spec.replace(",", " ").split():
        if item == "local":
            if address is None:
                return True
            continue
        network = ipaddress.ip_network(item, strict=False)
        if address is not None and address.version == network.version and address in network:
            return True
    return False


class UserDatabase:
    """The async facade over an ordered list of backends.

    Args:
        backends: backends in the order they are asked; at least one.
        default_realm: Dovecot ``auth_default_realm``: the domain appended to bare login
            names (tried before the bare name); ``None`` to leave bare names alone.

    Raises:
        ValueError: no backends, or a realm that is empty or contains ``@``.
    """

    def __init__(
        self, backends: Sequence[UserBackend], *, default_realm: str | None = None
    ) -> None:
        if not backends:
            raise ValueError("UserDatabase needs at least one backend")
        if default_realm is not None and (not default_realm or "@" in default_realm):
            raise ValueError(f"invalid default realm {default_realm!r}")
        self._backends: tuple[UserBackend, ...] = tuple(backends)
        self._realm = None if default_realm is None else default_realm.lower()
        nowait = [getattr(backend, "lookup_nowait", None) for backend in self._backends]
        self._nowait: tuple[Callable[[str], User | None], ...] | None = (
            tuple(f for f in nowait if f is not None) if all(nowait) else None
        )

    @property
    def backends(self) -> tuple[UserBackend, ...]:
        """The backends in the order they are asked."""
        return self._backends

    @property
    def default_realm(self) -> str | None:
        """The realm appended to bare login names, lowercased."""
        return self._realm

    def candidates(self, name: str) -> tuple[str, ...]:
        """The names to try for ``name``, in order; empty when ``name`` is invalid.

        With ``default_realm="Example.COM"``, ``"Alice"`` gives
        ``("Alice@example.com", "Alice")`` and ``"Bob@Example.ORG"`` gives
        ``("Bob@example.org",)``.
        """
        normalized = normalize_login(name)
        if normalized is None:
            return ()
        if self._realm is not None and "@" not in normalized:
            return (f"{normalized}@{self._realm}", normalized)
        return (normalized,)

    def lookup_sync(self, name: str) -> User | None:
        """Blocking :meth:`lookup`, for worker threads and command-line tools.

        Answered from the backends' memory when they can (as :meth:`lookup` does: a
        passwd-file checked for changes at most once a second), else by asking them.
        """
        if self._nowait is not None:
            try:
                return self._lookup_nowait(name, self._nowait)
            except LookupWouldBlock:
                pass
        errors: list[str] = []
        for candidate in self.candidates(name):
            for backend in self._backends:
                try:
                    user = backend.lookup(candidate)
                except UserBackendError as exc:
                    logger.warning("%s: lookup %s failed: %s", backend.name, candidate, exc)
                    errors.append(f"{backend.name}: {exc}")
                    continue
                except Exception:
                    logger.exception("%s: lookup %s crashed", backend.name, candidate)
                    errors.append(f"{backend.name}: internal error")
                    continue
                if user is not None:
                    return user
        if errors:
            raise UserBackendError("; ".join(errors))
        return None

    def verify_sync(
        self, login: str, password: str, *, remote_address: str | None = None
    ) -> VerifyResult:
        """Blocking :meth:`verify`, for worker threads and command-line tools."""
        candidates = self.candidates(login)
        if not candidates:
            return VerifyResult.fail(FailureReason.UNKNOWN_USER, "invalid login name")
        backend_error: VerifyResult | None = None
        for candidate in candidates:
            for backend in self._backends:
                try:
                    result = backend.verify(candidate, password)
                except Exception:
                    logger.exception("%s: verify %s crashed", backend.name, candidate)
                    result = VerifyResult.fail(
                        FailureReason.BACKEND_ERROR, f"{backend.name}: internal error"
                    )
                if result.failure is FailureReason.UNKNOWN_USER:
                    continue
                if result.failure is FailureReason.BACKEND_ERROR:
                    logger.warning("%s: verify %s: %s", backend.name, candidate, result.message)
                    if backend_error is None:
                        backend_error = result
                    continue
                if result.user is not None:
                    return _check_allow_nets(result, result.user, remote_address)
                return result
        if backend_error is not None:
            return backend_error
        return VerifyResult.fail(FailureReason.UNKNOWN_USER)

    async def lookup(self, name: str) -> User | None:
        """Find a user for delivery or recipient validation (Dovecot userdb lookup).

        Args:
            name: login name or address local part as received; normalised here.

        Returns:
            The user from the first backend that knows a candidate name, else ``None``.

        Raises:
            UserBackendError: no backend knows the user and at least one could not answer;
                the caller should fail temporarily (SMTP ``451 4.3.0``).
        """
        if self._nowait is not None:
            try:
                return self._lookup_nowait(name, self._nowait)
            except LookupWouldBlock:
                pass
        return await asyncio.to_thread(self.lookup_sync, name)

    def _lookup_nowait(
        self, name: str, lookups: tuple[Callable[[str], User | None], ...]
    ) -> User | None:
        """:meth:`lookup_sync` answered from the backends' memory (see
        :class:`CachedLookup`), for users found there. Raises :class:`LookupWouldBlock`
        when a backend cannot answer from memory, and when no backend knows the name: a
        user added a moment ago is then found by the real lookup at once."""
        for candidate in self.candidates(name):
            for lookup in lookups:
                user = lookup(candidate)
                if user is not None:
                    return user
        raise LookupWouldBlock(name)

    async def verify(
        self, login: str, password: str, *, remote_address: str | None = None
    ) -> VerifyResult:
        """Check a login and password (SASL PLAIN/LOGIN, IMAP LOGIN, POP3 USER/PASS).

        Args:
            login: the authentication identity as received; normalised here.
            password: the password as received.
            remote_address: the client's IP address, checked against a user's
                ``allow_nets`` field (``None`` = not an IP connection, matches only
                ``local``).

        Returns:
            The result of the first backend that knows a candidate name. Never raises for
            backend failures: they come back as :attr:`FailureReason.BACKEND_ERROR`.
        """
        return await asyncio.to_thread(
            self.verify_sync, login, password, remote_address=remote_address
        )


def _check_allow_nets(result: VerifyResult, user: User, remote_address: str | None) -> VerifyResult:
    spec = user.extra.get("allow_nets")
    if spec is None:
        return result
    try:
        allowed = allowed_by_nets(spec, remote_address)
    except ValueError as exc:
        return VerifyResult.fail(
            FailureReason.BACKEND_ERROR, f"{user.backend}: user {user.login}: allow_nets: {exc}"
        )
    if allowed:
        return result
    return VerifyResult.fail(
        FailureReason.DISABLED,
        f"allow_nets check failed for {user.login} from {remote_address or 'local'}",
    )


# Dovecot mail_location variables ------------------------------------------------------

_LONG_NAMES: Final[Mapping[str, str]] = {
    "user": "user",
    "username": "username",
    "domain": "domain",
    "home": "home",
}
_SHORT_NAMES: Final[Mapping[str, str]] = {
    "u": "user",
    "n": "username",
    "d": "domain",
    "h": "home",
}
_VARIABLE: Final = re.compile(
    r"%(?:(?P<first>-?\d+)(?:\.(?P<second>-?\d+))?)?(?P<mods>[LU]*)"
    r"(?:\{(?P<long>[^{}]*)\}|(?P<short>.))?",
    re.DOTALL,
)
_SEGMENT_SPLIT: Final = re.compile(r"(?<!:):(?!:)")
_FORMAT: Final = re.compile(r"[A-Za-z0-9_-]+")
_KEY_PREFIX: Final = re.compile(r"[A-Za-z_]+=")


def expand_mail_location(template: str, user: str, domain: str, home: str) -> str:
    """Expand a Dovecot ``mail_location`` for one user.

    Variables (Dovecot 2.3 ``var_expand``): ``%u``/``%{user}`` the full login,
    ``%n``/``%{username}`` its part before ``@``, ``%d``/``%{domain}`` the domain,
    ``%h``/``%{home}`` the home directory, ``%%`` a percent sign. Modifiers ``L``
    (lowercase) and ``U`` (uppercase) go between ``%`` and the name (``%Ld``, ``%L{user}``);
    a substring is taken with ``%<width>x`` or ``%<offset>.<width>x`` (``%1n`` = first
    letter, ``%-2.2n`` = last two), negative numbers counting from the end.

    ``~`` is the home directory where a path starts: at the start of the root path
    (``~/Maildir``, ``maildir:~/Maildir``) and of a ``KEY=`` parameter value
    (``:INBOX=~/Maildir/.INBOX``), when followed by ``/`` or the end of the segment.
    Substituted values are never expanded again. Dovecot 2.4's new syntax
    (``%{user | lower}``) is not supported.

    Args:
        template: the location, e.g. ``maildir:~/Maildir`` or
            ``maildir:/var/vmail/%d/%n:LAYOUT=fs``.
        user: the login name (``%u``).
        domain: the domain (``%d``); empty for bare names.
        home: the home directory; empty when the user has none.

    Returns:
        The expanded location.

    Raises:
        ValueError: an unknown variable or modifier, a dangling ``%``, or a reference to
            the home directory (``~``, ``%h``) when ``home`` is empty.
    """
    values = {
        "user": user,
        "username": user.partition("@")[0],
        "domain": domain,
        "home": home,
    }
    segments = _SEGMENT_SPLIT.split(template)
    has_format = len(segments) > 1 and _FORMAT.fullmatch(segments[0]) is not None
    root_index = 1 if has_format else 0
    out: list[str] = []
    for index, segment in enumerate(segments):
        if index < root_index:
            out.append(_expand_variables(segment, values, template))
            continue
        prefix = ""
        if index > root_index:
            match = _KEY_PREFIX.match(segment)
            if match is not None:
                prefix = match.group()
        rest = segment[len(prefix) :]
        if rest == "~" or rest.startswith("~/"):
            if not home:
                raise ValueError(f"mail location {template!r} uses ~ but the home is not set")
            root = home.rstrip("/") or "/"
            tail = _expand_variables(rest[1:], values, template)
            path = root + tail if root != "/" or not tail else tail
            out.append(_expand_variables(prefix, values, template) + path)
        else:
            out.append(_expand_variables(segment, values, template))
    return ":".join(out)


def _expand_variables(text: str, values: Mapping[str, str], template: str) -> str:
    out: list[str] = []
    position = 0
    while True:
        percent = text.find("%", position)
        if percent < 0:
            out.append(text[position:])
            return "".join(out)
        out.append(text[position:percent])
        match = _VARIABLE.match(text, percent)
        assert match is not None  # the pattern matches any "%"
        position = match.end()
        short, long = match.group("short"), match.group("long")
        if short == "%":
            out.append("%")
            continue
        if long is not None:
            key = _LONG_NAMES.get(long)
        elif short is not None:
            key = _SHORT_NAMES.get(short)
        else:
            raise ValueError(f"mail location {template!r}: '%' at the end")
        if key is None:
            name = "%{" + long + "}" if long is not None else "%" + str(short)
            raise ValueError(f"mail location {template!r}: unknown variable {name}")
        value = values[key]
        if key == "home" and not value:
            raise ValueError(f"mail location {template!r} uses the home but it is not set")
        value = _substring(value, match.group("first"), match.group("second"))
        for modifier in match.group("mods"):
            value = value.lower() if modifier == "L" else value.upper()
        out.append(value)


def _substring(value: str, first: str | None, second: str | None) -> str:
    if first is None:
        return value
    if second is None:
        offset, width = 0, int(first)
    else:
        offset, width = int(first), int(second)
    length = len(value)
    start = offset if offset >= 0 else max(length + offset, 0)
    start = min(start, length)
    end = min(start + width, length) if width >= 0 else max(length + width, start)
    return value[start:end]

"""LDAP users and ``ldap:`` lookup tables (OpenLDAP, Active Directory), over ldap3.

One configuration file, in Postfix's ldap_table(5) syntax, describes a directory:
``name = value`` lines read by the main.cf reader (:func:`roost.config.parse_main_cf`), so
mistakes are reported as ``FILE:LINE: NAME: reason``. The same file serves two users:

* :class:`LdapBackend`, a :class:`~roost.auth.users.UserBackend` for
  ``auth_backends = ldap:/etc/roost/ldap.cf``: user lookups (delivery, recipient
  validation) with ``user_filter``, password checks (SMTP AUTH, IMAP, POP3) with
  ``login_filter`` followed by a bind as the entry found (Dovecot's ``auth_bind = yes``).
  Password hashes are never read: the server checks the password (RFC 4513 §5.1.3).
* :class:`LdapTable`, the ``ldap:`` lookup table type (``smtpd_sender_login_maps =
  ldap:/etc/roost/ldap-senders.cf``), like Postfix's ldap_table(5): ``query_filter``,
  ``result_attribute``, ``result_format``, ``domain``.

Parameters (Postfix's ldap_table(5) names and meanings unless marked roost):

==========================  ================================  ===============================
name                        default                           meaning
==========================  ================================  ===============================
server_host                 localhost                         ``ldap://h:p``, ``ldaps://h``,
                                                              ``host[:port]``, in order
server_port                 389                               port of hosts given without one
search_base                 (required)                        base DN; %s %u %d %1-%9 allowed
scope                       sub                               sub, one or base
query_filter                (mailacceptinggeneralid=%s)       ``ldap:`` table filter
result_attribute            maildrop                          ``ldap:`` table result values
result_format               %s                                each result value's format
domain                      (all)                             keys the table looks up
size_limit                  0                                 most entries per table search
dereference                 0                                 alias dereferencing, 0-3
bind                        yes                               bind as bind_dn (no: anonymous)
bind_dn, bind_pw            (empty)                           the service account
start_tls                   no                                StartTLS (RFC 4513 §3)
tls_ca_cert_file/_dir       (system CAs)                      trusted CAs, PEM
tls_cert, tls_key           (none)                            client certificate
tls_require_cert            yes (Postfix: no)                 verify the server certificate
version                     3                                 only 3 (RFC 4511)
timeout                     10                                seconds per network wait
connect_timeout             $timeout                          roost: seconds per TCP connect
server_pool_strategy        first                             roost: first or round_robin
server_offline_time         60                                roost: seconds a failed server
                                                              is skipped (0: retry at once)
connection_pool_size        4                                 roost: connections kept open
user_filter                 (mail=%s) or'ed with aliases      roost: user lookups
login_filter                $user_filter                      roost: password checks
login_attribute             $mail_attribute                   roost: User.login (entries
                                                              without it: the name typed)
mail_attribute              mail                              roost: User.address
alias_attributes            (none)                            roost: User.aliases; AD's
                                                              ``smtp:`` prefixes stripped
home_attribute              (none)                            roost: User.home
uid_attribute/gid_attribute (none)                            roost: User.uid / User.gid
quota_attribute             (none)                            roost: bytes or a quota rule
mail_location_attribute     (none)                            roost: Dovecot mail location
==========================  ================================  ===============================

Query expansion (ldap_table(5) "query_filter"): ``%%`` is ``%``; ``%s`` the whole key;
``%u`` its local part (the whole key when it has no ``@``); ``%d`` its domain; ``%1`` ..
``%9`` the domain's labels from the right (``%1`` = ``com``). A query whose ``%u`` is
empty (key ``@domain``) or whose ``%d``/``%1``-``%9`` do not exist is not sent: no match.
Every substituted value is escaped (RFC 4515 §3 in filters: ``*``, ``(``, ``)``, ``\\``,
NUL; RFC 4514 §2.4 in ``search_base``), so a login such as ``admin)(|(uid=*`` is a plain
value that matches nothing.

Failover: the servers form an ldap3 ``ServerPool`` (``FIRST`` or ``ROUND_ROBIN``) that
checks a server is reachable (a TCP connect) before using it and skips failed ones for
``server_offline_time`` seconds (ldap3's ``exhaust``). It tries each server once per
connection attempt (``active=1``: ldap3's ``active=True`` would loop forever when every
server is down, blocking the worker thread). A server that accepts connections but does not
answer within ``timeout`` is taken offline the same way, so a hung first server costs one
timeout, not one per request. Each request is retried once on a fresh connection after a
network failure (except a user's bind after a timeout: the server may already have counted
it towards an account lockout). Connections (bound as ``bind_dn``) are kept in a pool of
``connection_pool_size``; password checks use a second pool of the same size, whose
connections bind as the user.

Errors: anything that may succeed later (no server reachable, a timeout, a busy server, an
ambiguous search) is temporary: :class:`~roost.auth.users.UserBackendError` for lookups,
:attr:`~roost.auth.users.FailureReason.BACKEND_ERROR` for password checks,
:class:`LdapError` for table lookups. Messages never contain a password.

See Also:
    RFC 4511 (LDAPv3), RFC 4513 (authentication, StartTLS; §5.1.2 unauthenticated bind),
    RFC 4514 (DN strings), RFC 4515 (filter strings); Postfix ldap_table(5); Dovecot's
    auth-ldap documentation (``auth_bind``, ``user_filter``, ``pass_filter``).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import enum
import ipaddress
import logging
import os
import re
import ssl
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar
from urllib.parse import urlsplit

from ldap3 import (
    ANONYMOUS,
    AUTO_BIND_NONE,
    BASE,
    DEREF_ALWAYS,
    DEREF_BASE,
    DEREF_NEVER,
    DEREF_SEARCH,
    FIRST,
    LEVEL,
    NONE,
    ROUND_ROBIN,
    SIMPLE,
    SUBTREE,
    SYNC,
    Connection,
    Server,
    ServerPool,
    Tls,
)
from ldap3.core.exceptions import (
    LDAPBindError,
    LDAPCommunicationError,
    LDAPException,
    LDAPServerPoolExhaustedError,
)
from ldap3.operation.search import parse_filter
from ldap3.utils.config import set_config_parameter
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.log import set_library_log_hide_sensitive_data

from roost.auth.passwdfile import parse_quota_rule
from roost.auth.users import (
    FailureReason,
    User,
    UserBackendError,
    VerifyResult,
    expand_mail_location,
    normalize_login,
)
from roost.config.lookup import LookupTable, TableError, register_table_type
from roost.config.maincf import Problem, parse_main_cf
from roost.config.settings import ConfigError
from roost.config.types import parse_boolean, parse_integer, parse_list, parse_time

__all__ = [
    "LdapBackend",
    "LdapConfig",
    "LdapError",
    "LdapServerAddress",
    "LdapTable",
    "PoolStrategy",
    "Scope",
    "escape_dn_value",
    "escape_filter_value",
    "expand_query",
    "load_ldap_config",
    "parse_ldap_config",
]

logger = logging.getLogger(__name__)

V = TypeVar("V")

# ldap3 sleeps POOLING_LOOP_TIMEOUT (10 s) after each failed cycle over the pool, even the
# last one, before raising LDAPServerPoolExhaustedError. Roost tries one cycle and fails at
# once (the caller then answers "try again later"), so the sleep is turned off. This is a
# process-wide ldap3 setting; roost is its only user in the daemon.
set_config_parameter("POOLING_LOOP_TIMEOUT", 0)
# ldap3 logs nothing unless its detail level is raised; should anyone raise it, it must
# still not write bind passwords.
set_library_log_hide_sensitive_data(True)

_DEFAULT_PORTS: Final[Mapping[str, int]] = {"ldap": 389, "ldaps": 636}
_ATTRIBUTE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+")
_PREFIXED_ADDRESS: Final = re.compile(r"([A-Za-z][A-Za-z0-9-]*):(.*)", re.DOTALL)
_AD_DATA_CODE: Final = re.compile(r"\bdata ([0-9a-fA-F]{3,8})\b")
_BAD_IN_ADDRESS: Final = re.compile(r"[\s\x00-\x1f\x7f]")
_MAX_MESSAGE: Final = 300

#: Active Directory's sub-codes of invalidCredentials (49) that mean the password was
#: right but the account may not log in (``AcceptSecurityContext error, data 533``).
_AD_DISABLED: Final[Mapping[str, str]] = {
    "530": "logon not permitted at this time",
    "531": "logon not permitted from this workstation",
    "532": "password expired",
    "533": "account disabled",
    "701": "account expired",
    "773": "password must be reset",
    "775": "account locked out",
}


class Scope(enum.Enum):
    """Search scope (ldap_table(5) ``scope``; RFC 4511 §4.5.1.2)."""

    BASE = "base"
    ONE = "one"
    SUB = "sub"


class PoolStrategy(enum.Enum):
    """How the server pool picks a server for a new connection (roost)."""

    FIRST = "first"
    """The first reachable server in ``server_host`` order (failover only)."""

    ROUND_ROBIN = "round_robin"
    """The next reachable server after the last one used (load spreading)."""


_SCOPES: Final[Mapping[Scope, str]] = {Scope.BASE: BASE, Scope.ONE: LEVEL, Scope.SUB: SUBTREE}
_DEREF: Final[Sequence[str]] = (DEREF_NEVER, DEREF_SEARCH, DEREF_BASE, DEREF_ALWAYS)
_STRATEGIES: Final[Mapping[PoolStrategy, str]] = {
    PoolStrategy.FIRST: FIRST,
    PoolStrategy.ROUND_ROBIN: ROUND_ROBIN,
}


class LdapError(Exception):
    """The directory could not answer now (temporary): no server reachable, a timeout, an
    unexpected result code. Raised by :meth:`LdapTable.lookup`; the message names the server
    and never contains a password.
    """


@dataclass(frozen=True, slots=True)
class LdapServerAddress:
    """One entry of ``server_host``.

    Attributes:
        scheme: ``ldap`` (plain, or StartTLS with ``start_tls = yes``) or ``ldaps``
            (TLS from the first byte).
        host: host name or IP address, without brackets.
        port: TCP port.
    """

    scheme: str
    host: str
    port: int

    @property
    def uri(self) -> str:
        """The server as an LDAP URL (RFC 4516), e.g. ``ldaps://[2001:db8::1]:636``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Whether the server is this host (``localhost`` or a loopback address)."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


_DEFAULT_SERVERS: Final[tuple[LdapServerAddress, ...]] = (
    LdapServerAddress("ldap", "localhost", 389),
)


@dataclass(frozen=True, slots=True)
class LdapConfig:
    """One parsed LDAP configuration file (see the module docstring for each parameter).

    Build it with :func:`load_ldap_config` or :func:`parse_ldap_config`; the defaults here
    are those of an empty file, except ``search_base`` which a file must set.

    Attributes:
        path: the file it was read from (for messages and backend names).
        servers: ``server_host``, in order.
        search_base: ``search_base`` template.
        scope: ``scope``.
        query_filter: ``query_filter`` template (``ldap:`` tables).
        result_attributes: ``result_attribute`` names (``ldap:`` tables).
        result_format: ``result_format`` template (``ldap:`` tables).
        domains: ``domain`` list, lowercased; empty = every key.
        size_limit: ``size_limit``, entries; 0 = no limit.
        dereference: ``dereference``, 0 (never) to 3 (always).
        bind: ``bind``: bind as :attr:`bind_dn` on search connections.
        bind_dn: ``bind_dn``.
        bind_pw: ``bind_pw``; never in ``repr``.
        start_tls: ``start_tls``.
        tls_ca_cert_file: ``tls_ca_cert_file``; ``None`` = the system's CAs.
        tls_ca_cert_dir: ``tls_ca_cert_dir``.
        tls_cert: ``tls_cert`` (client certificate, PEM).
        tls_key: ``tls_key`` (its key, PEM).
        tls_require_cert: ``tls_require_cert``.
        timeout: ``timeout`` in whole seconds (each response wait; ldap3 sets
            ``SO_RCVTIMEO`` in whole seconds).
        connect_timeout: ``connect_timeout`` in seconds (each TCP connect).
        server_pool_strategy: ``server_pool_strategy``.
        server_offline_time: ``server_offline_time`` in seconds.
        connection_pool_size: ``connection_pool_size`` (per pool; there are two).
        user_filter: ``user_filter`` template.
        login_filter: ``login_filter`` template.
        login_attribute: ``login_attribute``; "" = :attr:`mail_attribute`. The login is
            the entry's value whichever filter term matched (so mail found by an alias and
            a login by ``sAMAccountName`` agree on ``%u``); the name as given, lowercased,
            when the entry has no such value.
        mail_attribute: ``mail_attribute``; "" = none.
        alias_attributes: ``alias_attributes``.
        home_attribute: ``home_attribute``; "" = none.
        uid_attribute: ``uid_attribute``; "" = none.
        gid_attribute: ``gid_attribute``; "" = none.
        quota_attribute: ``quota_attribute``; "" = none.
        mail_location_attribute: ``mail_location_attribute``; "" = none.
    """

    path: str = ""
    servers: tuple[LdapServerAddress, ...] = _DEFAULT_SERVERS
    search_base: str = ""
    scope: Scope = Scope.SUB
    query_filter: str = "(mailacceptinggeneralid=%s)"
    result_attributes: tuple[str, ...] = ("maildrop",)
    result_format: str = "%s"
    domains: tuple[str, ...] = ()
    size_limit: int = 0
    dereference: int = 0
    bind: bool = True
    bind_dn: str = ""
    bind_pw: str = field(default="", repr=False)
    start_tls: bool = False
    tls_ca_cert_file: str | None = None
    tls_ca_cert_dir: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_require_cert: bool = True
    timeout: int = 10
    connect_timeout: int = 10
    server_pool_strategy: PoolStrategy = PoolStrategy.FIRST
    server_offline_time: int = 60
    connection_pool_size: int = 4
    user_filter: str = "(mail=%s)"
    login_filter: str = "(mail=%s)"
    login_attribute: str = ""
    mail_attribute: str = "mail"
    alias_attributes: tuple[str, ...] = ()
    home_attribute: str = ""
    uid_attribute: str = ""
    gid_attribute: str = ""
    quota_attribute: str = ""
    mail_location_attribute: str = ""

    @property
    def user_attributes(self) -> tuple[str, ...]:
        """The attributes a user lookup requests (never a password attribute)."""
        names = [
            self.login_attribute,
            self.mail_attribute,
            *self.alias_attributes,
            self.home_attribute,
            self.uid_attribute,
            self.gid_attribute,
            self.quota_attribute,
            self.mail_location_attribute,
        ]
        unique: dict[str, str] = {}
        for name in names:
            if name:
                unique.setdefault(name.lower(), name)
        return tuple(unique.values())


# --- the configuration file ----------------------------------------------------------------

#: Every parameter a file may set, with its default as file text.
_DEFAULTS: Final[Mapping[str, str]] = {
    "server_host": "localhost",
    "server_port": "389",
    "search_base": "",
    "scope": "sub",
    "query_filter": "(mailacceptinggeneralid=%s)",
    "result_attribute": "maildrop",
    "result_format": "%s",
    "domain": "",
    "size_limit": "0",
    "dereference": "0",
    "bind": "yes",
    "bind_dn": "",
    "bind_pw": "",
    "start_tls": "no",
    "tls_ca_cert_file": "",
    "tls_ca_cert_dir": "",
    "tls_cert": "",
    "tls_key": "",
    "tls_require_cert": "yes",
    "version": "3",
    "timeout": "10",
    "connect_timeout": "",
    "server_pool_strategy": "first",
    "server_offline_time": "60",
    "connection_pool_size": "4",
    "user_filter": "",
    "login_filter": "",
    "login_attribute": "",
    "mail_attribute": "mail",
    "alias_attributes": "",
    "home_attribute": "",
    "uid_attribute": "",
    "gid_attribute": "",
    "quota_attribute": "",
    "mail_location_attribute": "",
}

#: Postfix ldap_table(5) parameters roost accepts and ignores (with a warning).
_IGNORED: Final = frozenset(
    {
        "cache",
        "cache_expiry",
        "cache_size",
        "chase_referrals",
        "debuglevel",
        "expansion_limit",
        "recursion_limit",
        "tls_cipher_suite",
        "tls_random_file",
    }
)

#: Postfix ldap_table(5) parameters whose effect roost does not implement (errors).
_UNSUPPORTED: Final = frozenset(
    {
        "leaf_result_attribute",
        "special_result_attribute",
        "terminal_result_attribute",
        "sasl_authz_id",
        "sasl_mechs",
        "sasl_minssf",
        "sasl_realm",
    }
)

_FILTER_CODES: Final = "sudSUD123456789"
_SAMPLE_KEY: Final = "user@a.b.c.d.e.f.g.mail.example.com"  # enough labels for %1-%9


class _Reader:
    """Typed access to the entries of one file, collecting problems as it goes."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        entries, problems = parse_main_cf(text, filename)
        self.problems: list[Problem] = problems
        self.entries = {entry.name: entry for entry in entries}
        for entry in entries:
            if entry.name in _DEFAULTS:
                continue
            if entry.name in _IGNORED:
                self.problems.append(
                    Problem(filename, entry.line, entry.name, "not supported; ignored", True)
                )
            elif entry.name in _UNSUPPORTED:
                self.problems.append(
                    Problem(filename, entry.line, entry.name, "not supported by roost")
                )
            else:
                close = difflib.get_close_matches(entry.name, _DEFAULTS, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                self.problems.append(
                    Problem(filename, entry.line, entry.name, f"unknown LDAP parameter{hint}")
                )

    def text(self, name: str) -> str:
        entry = self.entries.get(name)
        return entry.value if entry is not None else _DEFAULTS[name]

    def fail(self, name: str, reason: str, *, warning: bool = False) -> None:
        entry = self.entries.get(name)
        if entry is None:
            reason += " (default value)"
        self.problems.append(
            Problem(self.filename, entry.line if entry else 0, name, reason, warning)
        )

    def parse(self, name: str, parse: Callable[[str], V], fallback: V) -> V:
        try:
            return parse(self.text(name))
        except ValueError as exc:
            self.fail(name, str(exc))
            return fallback

    def attribute(self, name: str) -> str:
        value = self.text(name).strip()
        if value and not _ATTRIBUTE_NAME.fullmatch(value):
            self.fail(name, f"bad attribute name {value!r}")
            return ""
        return value

    def attributes(self, name: str) -> tuple[str, ...]:
        values = parse_list(self.text(name))
        for value in values:
            if not _ATTRIBUTE_NAME.fullmatch(value):
                self.fail(name, f"bad attribute name {value!r}")
                return ()
        return values

    def path(self, name: str) -> str | None:
        value = self.text(name).strip()
        if not value:
            return None
        if not os.access(value, os.R_OK):
            self.fail(name, f"{value}: cannot read it")
        return value


def _parse_servers(text: str, default_port: int) -> tuple[LdapServerAddress, ...]:
    servers: list[LdapServerAddress] = []
    for word in parse_list(text):
        scheme, has_scheme, _rest = word.partition("://")
        scheme = scheme.lower() if has_scheme else "ldap"
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"{word!r}: unsupported scheme {scheme!r} (use ldap:// or ldaps://)")
        parts = urlsplit(word if has_scheme else f"//{word}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{word!r}: give only scheme://host:port (no DN or filter)")
        if parts.username is not None or not parts.hostname:
            raise ValueError(f"{word!r}: no host name")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{word!r}: bad port") from None
        if port is None:
            port = _DEFAULT_PORTS["ldaps"] if scheme == "ldaps" else default_port
        servers.append(LdapServerAddress(scheme, parts.hostname, port))
    if not servers:
        raise ValueError("no server given")
    return tuple(servers)


def _parse_choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"bad value {text.strip()!r} (allowed: {', '.join(choices)})")
        return value

    return parse


def _check_template(template: str, codes: str) -> None:
    """Raise ValueError for a ``%`` sequence other than ``%%`` and ``%<code>``."""
    index = template.find("%")
    while index != -1:
        code = template[index + 1 : index + 2]
        if code != "%" and (not code or code not in codes):
            shown = f"%{code}" if code else "a trailing %"
            raise ValueError(f"bad {shown} (use %%, %s, %u, %d, %1-%9)")
        index = template.find("%", index + 2)


def _parse_format_template(text: str) -> str:
    template = text.strip()
    _check_template(template, _FILTER_CODES)
    return template


def _parse_filter_template(text: str) -> str:
    template = text.strip()
    _check_template(template, _FILTER_CODES)
    sample = expand_query(template, _SAMPLE_KEY)
    try:
        parse_filter(sample, None, False, True, None, False)
    except LDAPException as exc:
        raise ValueError(f"not an LDAP filter (RFC 4515): {exc}") from None
    return template


def _default_user_filter(mail_attribute: str, alias_attributes: Sequence[str]) -> str:
    terms = [f"({mail_attribute}=%s)"] if mail_attribute else []
    for name in alias_attributes:
        terms += [f"({name}=%s)", f"({name}=smtp:%s)"]
    if not terms:
        return ""
    return terms[0] if len(terms) == 1 else "(|" + "".join(terms) + ")"


def parse_ldap_config(text: str, filename: str) -> tuple[LdapConfig, list[Problem]]:
    """Parse an LDAP configuration file's text (no I/O except checking TLS file access).

    Args:
        text: the whole file.
        filename: the file's name, used in problems and as :attr:`LdapConfig.path`.

    Returns:
        The configuration and the warnings found (ignored or repeated parameters).

    Raises:
        ConfigError: syntax errors, unknown or unsupported parameters, bad values; every
            problem printable as ``FILE:LINE: NAME: reason``.
    """
    read = _Reader(text, filename)
    default_port = read.parse("server_port", lambda t: parse_integer(t, minimum=1), 389)
    if default_port > 65535:
        read.fail("server_port", f"port {default_port} is above 65535")
    servers = read.parse("server_host", lambda t: _parse_servers(t, default_port), _DEFAULT_SERVERS)
    search_base = read.text("search_base").strip()
    if not search_base:
        read.fail("search_base", "required: the DN searches start from")
    else:
        read.parse("search_base", lambda t: _check_template(t, _FILTER_CODES), None)
    scope = Scope(read.parse("scope", _parse_choice(("sub", "one", "base")), "sub"))
    timeout = read.parse("timeout", lambda t: parse_time(t), 10)
    if timeout < 1:
        read.fail("timeout", "must be at least 1 second")
        timeout = 1
    connect_timeout = timeout
    if read.text("connect_timeout").strip():
        connect_timeout = read.parse("connect_timeout", lambda t: parse_time(t), timeout)
        if connect_timeout < 1:
            read.fail("connect_timeout", "must be at least 1 second")
            connect_timeout = 1
    version = read.parse("version", lambda t: parse_integer(t), 3)
    if version != 3:
        read.fail("version", "only LDAP version 3 is supported (RFC 4511)")
    bind_mode = read.parse("bind", _parse_choice(("yes", "no", "true", "false", "sasl")), "yes")
    if bind_mode == "sasl":
        read.fail("bind", "SASL binds are not supported; use yes (simple bind) or no")
    mail_attribute = read.attribute("mail_attribute")
    alias_attributes = read.attributes("alias_attributes")
    user_filter_text = read.text("user_filter").strip() or _default_user_filter(
        mail_attribute, alias_attributes
    )
    user_filter = ""
    if not user_filter_text:
        read.fail("user_filter", "required when mail_attribute and alias_attributes are empty")
    else:
        try:
            user_filter = _parse_filter_template(user_filter_text)
        except ValueError as exc:
            read.fail("user_filter", str(exc))
    login_filter = user_filter
    if read.text("login_filter").strip():
        login_filter = read.parse("login_filter", _parse_filter_template, "")
    domains = tuple(word.lower().rstrip(".") for word in parse_list(read.text("domain")))
    for word in domains:
        if ":" in word or "/" in word:
            read.fail("domain", f"{word!r}: only domain names are supported here, not tables")
    result_format = read.parse("result_format", _parse_format_template, "%s")
    dereference = read.parse("dereference", lambda t: parse_integer(t, minimum=0), 0)
    if dereference > 3:
        read.fail("dereference", "must be 0 (never), 1 (searching), 2 (finding) or 3 (always)")
        dereference = 0
    tls_cert = read.path("tls_cert")
    tls_key = read.path("tls_key")
    if (tls_cert is None) != (tls_key is None):
        read.fail("tls_cert" if tls_cert is None else "tls_key", "tls_cert and tls_key go together")
    config = LdapConfig(
        path=filename,
        servers=servers,
        search_base=search_base,
        scope=scope,
        query_filter=read.parse("query_filter", _parse_filter_template, ""),
        result_attributes=read.attributes("result_attribute"),
        result_format=result_format,
        domains=domains,
        size_limit=read.parse("size_limit", lambda t: parse_integer(t, minimum=0), 0),
        dereference=dereference,
        bind=bind_mode in ("yes", "true"),
        bind_dn=read.text("bind_dn").strip(),
        bind_pw=read.text("bind_pw"),
        start_tls=read.parse("start_tls", parse_boolean, False),
        tls_ca_cert_file=read.path("tls_ca_cert_file"),
        tls_ca_cert_dir=read.path("tls_ca_cert_dir"),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_require_cert=read.parse("tls_require_cert", parse_boolean, True),
        timeout=timeout,
        connect_timeout=connect_timeout,
        server_pool_strategy=PoolStrategy(
            read.parse("server_pool_strategy", _parse_choice(("first", "round_robin")), "first")
        ),
        server_offline_time=read.parse("server_offline_time", lambda t: parse_time(t), 60),
        connection_pool_size=read.parse(
            "connection_pool_size", lambda t: parse_integer(t, minimum=1), 4
        ),
        user_filter=user_filter,
        login_filter=login_filter,
        login_attribute=read.attribute("login_attribute"),
        mail_attribute=mail_attribute,
        alias_attributes=alias_attributes,
        home_attribute=read.attribute("home_attribute"),
        uid_attribute=read.attribute("uid_attribute"),
        gid_attribute=read.attribute("gid_attribute"),
        quota_attribute=read.attribute("quota_attribute"),
        mail_location_attribute=read.attribute("mail_location_attribute"),
    )
    if config.bind and config.bind_dn and not config.bind_pw:
        read.fail("bind_pw", "empty: a bind as bind_dn without a password is anonymous")
    if not config.start_tls:
        for server in config.servers:
            if server.scheme == "ldap" and not server.loopback:
                read.fail(
                    "start_tls",
                    f"passwords go to {server.uri} in clear text; use ldaps:// or start_tls = yes",
                    warning=True,
                )
                break
    errors = [p for p in read.problems if not p.warning]
    if errors:
        raise ConfigError(errors)
    return config, [p for p in read.problems if p.warning]


def load_ldap_config(path: str | os.PathLike[str]) -> tuple[LdapConfig, list[Problem]]:
    """Read and parse an LDAP configuration file.

    Besides :func:`parse_ldap_config`'s warnings, warns when the file holds a ``bind_pw``
    and every user may read it.

    Returns:
        The configuration and the warnings.

    Raises:
        ConfigError: the file cannot be read, or :func:`parse_ldap_config` fails.
    """
    filename = os.fspath(path)
    try:
        with open(filename, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(filename, 0, "", f"cannot read: {reason}")]) from None
    config, warnings = parse_ldap_config(text, filename)
    if config.bind_pw and mode & stat.S_IROTH:
        warnings.append(
            Problem(
                filename,
                0,
                "bind_pw",
                f"every user can read this file (mode {stat.S_IMODE(mode):04o}); chmod o-r",
                True,
            )
        )
    return config, warnings


# --- query expansion -----------------------------------------------------------------------


def escape_filter_value(value: str) -> str:
    """Escape a value for an LDAP filter (RFC 4515 §3): ``*``, ``(``, ``)``, ``\\``, NUL.

    Uses ldap3's ``escape_filter_chars``: ``a*b`` becomes ``a\\2ab``.
    """
    return str(escape_filter_chars(value))


def escape_dn_value(value: str) -> str:
    """Escape a value for an attribute value in a DN string (RFC 4514 §2.4).

    ``\\ , + " < > ; =`` and NUL get a backslash, as do a leading ``#`` or space and a
    trailing space. The empty string stays empty.
    """
    if not value:
        return value
    for char in '\\,+"<>;=':
        value = value.replace(char, "\\" + char)
    value = value.replace("\x00", "\\00")
    if value[0] in "# ":
        value = "\\" + value
    if value.endswith(" ") and not value.endswith("\\ "):
        value = value[:-1] + "\\ "
    return value


def expand_query(
    template: str,
    key: str,
    *,
    escape: Callable[[str], str] = escape_filter_value,
    upper_key: str | None = None,
) -> str | None:
    """Expand ``%`` sequences the way Postfix's ldap_table(5) does.

    ``%s`` is ``key``, ``%u`` its local part (all of it without ``@``), ``%d`` its domain,
    ``%1``-``%9`` the domain's labels counted from the right; ``%%`` is ``%``. ``%S``,
    ``%U``, ``%D`` are the same for ``upper_key`` (default ``key``: in filters the upper
    case forms equal the lower case ones; in ``result_format`` they refer to the table key
    while the lower case forms refer to the result value).

    Args:
        template: a filter, base DN or result format.
        key: the lookup key (or the result value).
        escape: applied to every substituted value (RFC 4515 for filters, RFC 4514 for
            DNs, identity for result formats).
        upper_key: what the upper-case forms refer to.

    Returns:
        The expanded text, or ``None`` when the query must not be sent: ``%u`` of a key
        with an empty local part (``@example.com``), ``%d`` of a key without ``@``, or a
        ``%1``-``%9`` label the domain does not have.

    Raises:
        ValueError: an unknown ``%`` sequence (the file's reader rejects those first).
    """
    out: list[str] = []
    position = 0
    while True:
        index = template.find("%", position)
        if index == -1:
            out.append(template[position:])
            return "".join(out)
        out.append(template[position:index])
        code = template[index + 1 : index + 2]
        position = index + 2
        if code == "%":
            out.append("%")
            continue
        subject = key if code.islower() or code.isdigit() else (upper_key or key)
        local, at, domain = subject.rpartition("@")
        if code in ("s", "S"):
            value = subject
        elif code in ("u", "U"):
            if at and not local:
                return None
            value = local if at else subject
        elif code in ("d", "D"):
            if not at:
                return None
            value = domain
        elif code.isdigit() and code != "0":
            labels = domain.split(".") if at else []
            number = int(code)
            if number > len(labels) or not labels[-number]:
                return None
            value = labels[-number]
        else:
            raise ValueError(f"bad % sequence %{code}")
        out.append(escape(value))


# --- the connections -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    """One search result entry: its DN and its attributes by lowercased name."""

    dn: str
    attributes: Mapping[str, tuple[str, ...]]

    def values(self, name: str) -> tuple[str, ...]:
        return self.attributes.get(name.lower(), ()) if name else ()

    def first(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None


class _ResultError(Exception):
    """An LDAP result code that is neither success nor an expected refusal."""


class _OpenError(Exception):
    """Opening a connection to ``server`` failed with ldap3's ``error``."""

    def __init__(self, server: object, error: LDAPException) -> None:
        super().__init__(_describe(error))
        self.server = server
        self.error = error


class _Lease:
    """One connection taken from a pool; ``reused`` tells whether it was idle there."""

    __slots__ = ("connection", "reused")

    def __init__(self, connection: Connection, reused: bool) -> None:
        self.connection = connection
        self.reused = reused


class _ConnectionPool:
    """At most ``size`` open connections, reused LIFO; thread-safe."""

    def __init__(
        self,
        name: str,
        size: int,
        wait_seconds: float,
        opener: Callable[[], Connection],
        closer: Callable[[Connection], None],
    ) -> None:
        self._name = name
        self._size = size
        self._wait = wait_seconds
        self._open = opener
        self._close = closer
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[Connection] = []

    def acquire(self) -> _Lease:
        """Take an idle connection or open one.

        Raises:
            LdapError: every connection stayed busy for the wait time.
            LDAPException: opening failed (ldap3's error, for the caller to classify).
        """
        if not self._slots.acquire(timeout=self._wait):
            raise LdapError(f"all {self._size} {self._name} connections busy for {self._wait:g} s")
        with self._lock:
            idle = self._idle.pop() if self._idle else None
        if idle is not None:
            if not idle.closed:
                return _Lease(idle, True)
            self._close(idle)
        try:
            return _Lease(self._open(), False)
        except BaseException:
            self._slots.release()
            raise

    def release(self, lease: _Lease, *, broken: bool = False) -> None:
        """Give a connection back; a broken one is closed instead."""
        if broken or lease.connection.closed:
            self._close(lease.connection)
        else:
            with self._lock:
                self._idle.append(lease.connection)
        self._slots.release()

    def close(self) -> None:
        """Close the idle connections (leased ones close when they come back broken)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            self._close(connection)


def _describe(exc: BaseException) -> str:
    """A one-line reason from an ldap3 exception, for logs (ldap3 nests the socket error's
    text in tuple reprs: ``("('socket ssl wrapping error: ...',)",)``)."""
    text = str(exc).strip() or type(exc).__name__
    for _ in range(3):
        if not (text.startswith("(") and text.endswith(",)")):
            break
        try:
            inner = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            break
        if not (isinstance(inner, tuple) and inner and isinstance(inner[0], str)):
            break
        text = inner[0].strip()
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or "timed out" in str(exc).lower()


def _result_text(result: Mapping[str, object]) -> str:
    description = result.get("description") or "unknown"
    code = result.get("result")
    message = str(result.get("message") or "").strip()
    text = f"{description} ({code})" + (f": {message}" if message else "")
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


T = TypeVar("T")


class _Directory:
    """The servers of one configuration: failover, two connection pools, search and bind.

    Thread-safe. All ldap3 objects stay inside; public methods raise :class:`LdapError`.
    """

    def __init__(self, config: LdapConfig, name: str) -> None:
        self._config = config
        self._name = name
        servers = []
        self._uris: dict[int, str] = {}
        try:
            for address in config.servers:
                tls = None
                if address.scheme == "ldaps" or config.start_tls:
                    tls = Tls(
                        validate=ssl.CERT_REQUIRED if config.tls_require_cert else ssl.CERT_NONE,
                        ca_certs_file=config.tls_ca_cert_file,
                        ca_certs_path=config.tls_ca_cert_dir,
                        local_certificate_file=config.tls_cert,
                        local_private_key_file=config.tls_key,
                        sni=None if _is_ip(address.host) else address.host,
                    )
                server = Server(
                    address.host,
                    port=address.port,
                    use_ssl=address.scheme == "ldaps",
                    tls=tls,
                    get_info=NONE,
                    connect_timeout=config.connect_timeout,
                )
                self._uris[id(server)] = address.uri
                servers.append(server)
            self._pool = ServerPool(
                servers,
                pool_strategy=_STRATEGIES[config.server_pool_strategy],
                active=1,
                exhaust=config.server_offline_time,
            )
        except LDAPException as exc:
            raise ValueError(f"{name}: {_describe(exc)}") from None
        self._servers = tuple(servers)
        self._state_lock = threading.Lock()
        self._known_down: set[int] = set()
        self._last_error: dict[int, str] = {}
        self._search_pool = _ConnectionPool(
            "search",
            config.connection_pool_size,
            config.timeout,
            lambda: self._open(service_bind=True),
            self._close,
        )
        self._auth_pool = _ConnectionPool(
            "authentication",
            config.connection_pool_size,
            config.timeout,
            lambda: self._open(service_bind=False),
            self._close,
        )

    # connections

    def _open(self, *, service_bind: bool) -> Connection:
        config = self._config
        bound = service_bind and config.bind and bool(config.bind_dn)
        connection = Connection(
            self._pool,
            user=config.bind_dn if bound else None,
            password=config.bind_pw if bound else None,
            authentication=SIMPLE if bound else ANONYMOUS,
            client_strategy=SYNC,
            auto_bind=AUTO_BIND_NONE,
            version=3,
            read_only=True,
            raise_exceptions=False,
            receive_timeout=config.timeout,
            auto_referrals=False,
            auto_escape=False,
            check_names=False,
            return_empty_attributes=False,
        )
        try:
            connection.open(read_server_info=False)
            if config.start_tls and not connection.server.ssl:
                connection.start_tls(read_server_info=False)
            if bound and not connection.bind(read_server_info=False):
                raise _ResultError(
                    f"{self._uri(connection.server)}: bind as {config.bind_dn} refused:"
                    f" {_result_text(connection.result)}"
                )
        except LDAPServerPoolExhaustedError:
            self._close(connection)
            raise
        except LDAPException as exc:
            self._close(connection)
            raise _OpenError(connection.server, exc) from None
        except BaseException:
            self._close(connection)
            raise
        self._note_servers(connection.server)
        return connection

    def _close(self, connection: Connection) -> None:
        with contextlib.suppress(LDAPException, OSError):
            connection.unbind()
        # ldap3's ServerPool remembers every connection ever made with it; forget it.
        self._pool.pool_states.pop(connection, None)

    def _uri(self, server: object) -> str:
        return self._uris.get(id(server), str(server))

    def _server_states(self) -> list[object]:
        """ldap3's per-server availability records (``ServerPoolState.server_states``)."""
        state = getattr(self._pool, "_pool_state", None)
        return list(getattr(state, "server_states", None) or ())

    def _note_servers(self, chosen: object) -> None:
        """Log servers that became unreachable or reachable since the last connection."""
        down = {
            id(getattr(state, "server", None))
            for state in self._server_states()
            if not getattr(state, "available", True)
        }
        with self._state_lock:
            newly_down = down - self._known_down
            back = self._known_down - down
            self._known_down = down
            for key in back:
                self._last_error.pop(key, None)
        for key in newly_down:
            logger.warning(
                "%s: LDAP server %s is not reachable; using %s",
                self._name,
                self._uris.get(key, "?"),
                self._uri(chosen),
            )
        for key in back:
            logger.info("%s: LDAP server %s is reachable again", self._name, self._uris.get(key))

    def _take_offline(self, server: object, reason: str) -> None:
        """Mark a server unavailable for ``server_offline_time`` (ldap3's ``exhaust``)."""
        with self._state_lock:
            self._last_error[id(server)] = reason
            self._known_down.add(id(server))
        for state in self._server_states():
            if getattr(state, "server", None) is server:
                state.available = False  # type: ignore[attr-defined]
                state.last_checked_time = datetime.now()  # type: ignore[attr-defined]
        offline = self._config.server_offline_time
        logger.warning(
            "%s: LDAP server %s: %s; %s",
            self._name,
            self._uri(server),
            reason,
            f"not used for {offline} s" if offline else "trying the next server",
        )

    def _no_server(self) -> str:
        with self._state_lock:
            errors = dict(self._last_error)
        details = [
            f"{self._uri(server)} ({errors.get(id(server), 'not reachable')})"
            for server in self._servers
        ]
        return "no LDAP server available: " + ", ".join(details)

    def _run(
        self,
        pool: _ConnectionPool,
        operation: Callable[[Connection], T],
        *,
        idempotent: bool = True,
    ) -> T:
        """Run ``operation`` on a pooled connection, retrying once after a network failure.

        A failure to connect is always retried (on the next server). A failure during the
        operation is retried when the connection was an idle one the server may have
        closed, or when ``idempotent``; a user's bind is not retried after a timeout, since
        the server may have counted it (account lockout) before it hung.

        Raises:
            LdapError: no server, a timeout, a refused service bind, an unexpected result.
        """
        for attempt in (1, 2):
            try:
                lease = pool.acquire()
            except LDAPServerPoolExhaustedError:
                raise LdapError(self._no_server()) from None
            except _ResultError as exc:
                raise LdapError(str(exc)) from None
            except _OpenError as exc:
                reason = "timed out" if _timed_out(exc.error) else str(exc)
                self._take_offline(exc.server, reason)
                if attempt == 1:
                    continue
                raise LdapError(f"{self._uri(exc.server)}: {reason}") from None
            server = lease.connection.server
            try:
                result = operation(lease.connection)
            except (LDAPCommunicationError, LDAPBindError) as exc:
                pool.release(lease, broken=True)
                timed_out = _timed_out(exc)
                reason = "timed out" if timed_out else _describe(exc)
                if timed_out or not lease.reused:
                    self._take_offline(server, reason)
                if attempt == 1 and (idempotent or not timed_out):
                    continue
                raise LdapError(f"{self._uri(server)}: {reason}") from None
            except _ResultError as exc:
                pool.release(lease)
                raise LdapError(f"{self._uri(server)}: {exc}") from None
            except LDAPException as exc:
                pool.release(lease, broken=True)
                raise LdapError(f"{self._uri(server)}: {_describe(exc)}") from None
            except BaseException:
                pool.release(lease, broken=True)
                raise
            pool.release(lease)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    # operations

    def search(
        self, base: str, search_filter: str, attributes: Sequence[str], *, size_limit: int = 0
    ) -> tuple[list[_Entry], bool]:
        """Search from ``base`` with an already expanded and escaped filter.

        Args:
            base: the base DN.
            search_filter: the filter (RFC 4515).
            attributes: attribute names to return; none = only DNs (``1.1``).
            size_limit: most entries; 0 = the server's limit.

        Returns:
            The entries and whether the size limit cut the result short.

        Raises:
            LdapError: the search could not be done.
        """
        config = self._config

        def operation(connection: Connection) -> tuple[list[_Entry], bool]:
            connection.search(
                base,
                search_filter,
                search_scope=_SCOPES[config.scope],
                dereference_aliases=_DEREF[config.dereference],
                attributes=list(attributes) or ["1.1"],
                size_limit=size_limit,
                time_limit=config.timeout,
            )
            result = connection.result or {}
            code = result.get("result")
            if code not in (0, 4):  # success, sizeLimitExceeded
                raise _ResultError(f"search failed: {_result_text(result)}")
            entries = [
                _entry(response)
                for response in connection.response or ()
                if response.get("type") == "searchResEntry"
            ]
            return entries, code == 4

        return self._run(self._search_pool, operation)

    def check_password(self, dn: str, password: str) -> Mapping[str, object]:
        """Bind as ``dn`` with ``password`` (simple bind, RFC 4513 §5.1.3), sent as its
        UTF-8 bytes without SASLprep, as Dovecot and most clients do.

        Returns:
            ldap3's result of the bind (``result`` code, ``description``, ``message``).

        Raises:
            LdapError: no server could be asked.
        """

        secret = password.encode("utf-8")

        def operation(connection: Connection) -> Mapping[str, object]:
            connection.authentication = SIMPLE
            connection.user = dn
            # Bytes go out as they are; a str would be changed by SASLprep (RFC 4013), so a
            # password with e.g. a no-break space would fail where Dovecot's (raw) works.
            connection.password = secret
            try:
                connection.bind(read_server_info=False)
            finally:
                connection.password = None
            return dict(connection.result or {})

        return self._run(self._auth_pool, operation, idempotent=False)

    def close(self) -> None:
        """Close every idle connection."""
        self._search_pool.close()
        self._auth_pool.close()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _entry(response: Mapping[str, object]) -> _Entry:
    attributes: dict[str, tuple[str, ...]] = {}
    raw = response.get("raw_attributes")
    if isinstance(raw, Mapping):
        for name, values in raw.items():
            decoded: list[str] = []
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, bytes):
                    try:
                        decoded.append(value.decode("utf-8"))
                    except UnicodeDecodeError:
                        continue
            attributes[str(name).lower()] = tuple(decoded)
    return _Entry(str(response.get("dn") or ""), MappingProxyType(attributes))


# --- the user backend ----------------------------------------------------------------------


def _canonical_address(value: str) -> str | None:
    value = value.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or _BAD_IN_ADDRESS.search(value):
        return None
    return f"{local}@{domain.lower()}"


def _alias_values(values: Sequence[str]) -> tuple[list[str], str | None]:
    """Addresses from alias attribute values, and AD's primary (``SMTP:``) one if any.

    AD's ``proxyAddresses`` hold ``SMTP:primary@x``, ``smtp:other@x`` and non-mail
    types (``X500:``, ``SIP:``); only the ``smtp`` ones are addresses.
    """
    addresses: list[str] = []
    primary: str | None = None
    for value in values:
        match = _PREFIXED_ADDRESS.fullmatch(value)
        if match is not None and "@" not in match.group(1):
            if match.group(1).lower() != "smtp":
                continue
            address = _canonical_address(match.group(2))
            if address is not None and match.group(1) == "SMTP" and primary is None:
                primary = address
        else:
            address = _canonical_address(value)
        if address is not None:
            addresses.append(address)
    return addresses, primary


def _parse_id(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or not 0 <= int(text) <= 2**32 - 2:
        raise ValueError(f"{what} {text[:20]!r} is not a valid id")
    return int(text)


def _parse_quota(text: str | None) -> int | None:
    """Bytes (``1073741824``, ``1G``) or a Dovecot quota rule (``*:storage=1G``)."""
    if text is None:
        return None
    rule = text.strip() if ":" in text else f"*:bytes={text.strip()}"
    return parse_quota_rule(rule)


class LdapBackend:
    """A :class:`~roost.auth.users.UserBackend` on an LDAP directory or Active Directory.

    Thread-safe; its methods block (network round trips), so
    :class:`~roost.auth.users.UserDatabase` calls them from worker threads.

    Args:
        config: the directory's configuration (:func:`load_ldap_config`).
        default_domain: the domain of :attr:`User.address` for entries without a mail
            address whose login has no ``@`` (``auth_default_realm``).

    Raises:
        ValueError: the TLS settings cannot be used (e.g. an unreadable CA file).
    """

    def __init__(self, config: LdapConfig, *, default_domain: str | None = None) -> None:
        self._config = config
        self._name = f"ldap:{config.path}"
        self._default_domain = default_domain.lower() if default_domain else None
        self._directory = _Directory(config, self._name)

    @property
    def name(self) -> str:
        """``ldap:<path of the configuration file>``."""
        return self._name

    @property
    def config(self) -> LdapConfig:
        """The configuration."""
        return self._config

    def __repr__(self) -> str:
        return f"LdapBackend({self._config.path!r})"

    def close(self) -> None:
        """Close the idle connections (the backend stays usable)."""
        self._directory.close()

    def _find(self, template: str, name: str) -> _Entry | None:
        """Search with ``template`` expanded for ``name``; at most one entry may match.

        Raises:
            LdapError: the directory cannot answer, or several entries match.
        """
        search_filter = expand_query(template, name)
        base = expand_query(self._config.search_base, name, escape=escape_dn_value)
        if search_filter is None or base is None:
            return None
        entries, truncated = self._directory.search(
            base, search_filter, self._config.user_attributes, size_limit=2
        )
        if len(entries) > 1 or truncated:
            raise LdapError(f"{name!r} matches more than one entry under {base}")
        return entries[0] if entries else None

    def _user(self, name: str, entry: _Entry) -> User:
        """Build the user from an entry.

        Raises:
            ValueError: an attribute value is unusable (bad uid, relative home, ...).
        """
        config = self._config
        login = name.lower()
        login_attribute = config.login_attribute or config.mail_attribute
        value = entry.first(login_attribute)
        if value is not None:
            normalized = normalize_login(value.strip())
            if normalized is None:
                raise ValueError(f"{login_attribute} {value[:40]!r} is not a login name")
            login = normalized
        mails = [
            address
            for address in map(_canonical_address, entry.values(config.mail_attribute))
            if address is not None
        ]
        aliases, primary = _alias_values(
            [value for attribute in config.alias_attributes for value in entry.values(attribute)]
        )
        if mails:
            address = mails[0]
        elif primary is not None:
            address = primary
        elif aliases:
            address = aliases[0]
        elif "@" in login:
            address = _canonical_address(login) or login
        elif self._default_domain:
            address = f"{login}@{self._default_domain}"
        else:
            address = login
        unique = dict.fromkeys(a for a in (*mails, *aliases) if a.lower() != address.lower())
        home = entry.first(config.home_attribute)
        if home is not None and not home.startswith("/"):
            raise ValueError(f"{config.home_attribute} {home[:60]!r} is not an absolute path")
        domain = login.rpartition("@")[2] if "@" in login else ""
        location = entry.first(config.mail_location_attribute)
        mail_location = (
            expand_mail_location(location, login, domain, home or "")
            if location is not None
            else None
        )
        return User(
            login=login,
            address=address,
            aliases=tuple(unique),
            uid=_parse_id(entry.first(config.uid_attribute), config.uid_attribute),
            gid=_parse_id(entry.first(config.gid_attribute), config.gid_attribute),
            home=home,
            mail_location=mail_location,
            quota_bytes=_parse_quota(entry.first(config.quota_attribute)),
            extra=MappingProxyType({"dn": entry.dn}),
            backend=self._name,
        )

    def lookup(self, name: str) -> User | None:
        """Find a user with ``user_filter``. See :meth:`UserBackend.lookup`.

        Raises:
            UserBackendError: the directory cannot answer, several entries match, or the
                entry has an unusable attribute value.
        """
        try:
            entry = self._find(self._config.user_filter, name)
            return None if entry is None else self._user(name, entry)
        except LdapError as exc:
            raise UserBackendError(f"{self._name}: {exc}") from None
        except ValueError as exc:
            raise UserBackendError(f"{self._name}: user {name}: {exc}") from None

    def verify(self, login: str, password: str) -> VerifyResult:
        """Find the entry with ``login_filter``, then bind as it with ``password``.

        An empty password always fails (:attr:`FailureReason.BAD_PASSWORD`) without a bind:
        an LDAP simple bind with a DN and no password is an "unauthenticated bind" that
        many servers accept as anonymous (RFC 4513 §5.1.2). Active Directory's
        invalidCredentials sub-codes for disabled, locked or expired accounts (``data
        533``, ``775``, ``532``, ...) give :attr:`FailureReason.DISABLED`. See
        :meth:`UserBackend.verify`.
        """
        try:
            entry = self._find(self._config.login_filter, login)
            if entry is None:
                return VerifyResult.fail(FailureReason.UNKNOWN_USER)
            user = self._user(login, entry)
        except LdapError as exc:
            return VerifyResult.fail(FailureReason.BACKEND_ERROR, f"{self._name}: {exc}")
        except ValueError as exc:
            return VerifyResult.fail(
                FailureReason.BACKEND_ERROR, f"{self._name}: user {login}: {exc}"
            )
        if not password:
            return VerifyResult.fail(
                FailureReason.BAD_PASSWORD, f"{entry.dn}: empty password refused"
            )
        try:
            result = self._directory.check_password(entry.dn, password)
        except LdapError as exc:
            return VerifyResult.fail(FailureReason.BACKEND_ERROR, f"{self._name}: {exc}")
        failure = _bind_failure(entry.dn, result)
        if failure is None:
            return VerifyResult.success(user)
        if failure.failure is FailureReason.BACKEND_ERROR:
            return VerifyResult.fail(failure.failure, f"{self._name}: {failure.message}")
        return failure


def _bind_failure(dn: str, result: Mapping[str, object]) -> VerifyResult | None:
    """What a user's bind result means (RFC 4511 §4.1.9 result codes).

    Returns:
        ``None`` for success (0); otherwise a failed result: invalidCredentials (49) and
        inappropriateAuthentication (48) are a wrong password, except Active Directory's
        sub-codes in the diagnostic message (``AcceptSecurityContext error, data 533``)
        for disabled, locked or expired accounts, which are
        :attr:`FailureReason.DISABLED`, as are insufficientAccessRights (50) and
        unwillingToPerform (53); anything else (busy, unavailable, other) is
        :attr:`FailureReason.BACKEND_ERROR`.
    """
    code = result.get("result")
    if code == 0:
        return None
    detail = f"{dn}: bind refused: {_result_text(result)}"
    if code == 49:
        match = _AD_DATA_CODE.search(str(result.get("message") or ""))
        sub_code = match.group(1).lower() if match else ""
        if sub_code in _AD_DISABLED:
            return VerifyResult.fail(FailureReason.DISABLED, f"{dn}: {_AD_DISABLED[sub_code]}")
        return VerifyResult.fail(FailureReason.BAD_PASSWORD, detail)
    if code == 48:
        return VerifyResult.fail(FailureReason.BAD_PASSWORD, detail)
    if code in (50, 53):
        return VerifyResult.fail(FailureReason.DISABLED, detail)
    return VerifyResult.fail(FailureReason.BACKEND_ERROR, detail)


# --- the ldap: lookup table ----------------------------------------------------------------


class LdapTable:
    """The ``ldap:/path`` lookup table (Postfix ldap_table(5)).

    :meth:`lookup` blocks on the network: callers on the event loop must run it in a
    thread.

    Args:
        config: the table's configuration (:func:`load_ldap_config`).
        ref: the ``ldap:/path`` reference as written in main.cf.
    """

    def __init__(self, config: LdapConfig, ref: str) -> None:
        self._config = config
        self._ref = ref
        self._directory = _Directory(config, ref)

    @property
    def ref(self) -> str:
        """The table's ``ldap:/path``."""
        return self._ref

    def __repr__(self) -> str:
        return f"LdapTable({self._ref!r})"

    def close(self) -> None:
        """Close the idle connections (the table stays usable)."""
        self._directory.close()

    def lookup(self, key: str) -> str | None:
        """Search with ``query_filter`` and return the results, comma-separated.

        Every value of every ``result_attribute`` of every entry found is formatted with
        ``result_format``; values the format cannot use (``%d`` of a value without ``@``)
        are skipped. With ``domain`` set, only ``user@domain`` keys with a listed domain
        are looked up.

        Returns:
            ``"a@example.com,b@example.com"``, or ``None`` when nothing matched.

        Raises:
            LdapError: the directory cannot answer, or more than ``size_limit`` entries
                match (temporary, like Postfix's lookup error).
        """
        config = self._config
        if config.domains:
            local, at, domain = key.rpartition("@")
            if not at or not local or domain.lower().rstrip(".") not in config.domains:
                return None
        search_filter = expand_query(config.query_filter, key)
        base = expand_query(config.search_base, key, escape=escape_dn_value)
        if search_filter is None or base is None:
            return None
        entries, truncated = self._directory.search(
            base, search_filter, config.result_attributes, size_limit=config.size_limit
        )
        if truncated:
            raise LdapError(f"{self._ref}: {key!r}: more than {config.size_limit} entries")
        results: list[str] = []
        for entry in entries:
            for attribute in config.result_attributes:
                for value in entry.values(attribute):
                    formatted = expand_query(config.result_format, value, escape=str, upper_key=key)
                    if formatted is not None and formatted not in results:
                        results.append(formatted)
        return ",".join(results) if results else None


def open_ldap_table(kind: str, name: str) -> LookupTable:
    """The ``ldap:`` table factory for :func:`roost.config.lookup.register_table_type`.

    Raises:
        TableError: the file cannot be read or has errors (``FILE:LINE: NAME: reason``).
    """
    try:
        config, warnings = load_ldap_config(Path(name))
    except ConfigError as exc:
        raise TableError("; ".join(str(problem) for problem in exc.problems)) from None
    for warning in warnings:
        logger.warning("%s", warning)
    try:
        return LdapTable(config, f"{kind}:{name}")
    except ValueError as exc:
        raise TableError(str(exc)) from None


register_table_type("ldap", open_ldap_table)

"""Build the user database from ``auth_backends`` and ``auth_default_realm``.

``auth_backends`` lists backends in lookup order:

- ``passwd-file:/path``: a Dovecot passwd-file (``roost.auth.passwdfile``).
- ``ldap:/path``: an LDAP directory or Active Directory described by a Postfix
  ldap_table(5)-style file (``roost.auth.ldap``).
- ``pam``: system users, passwords checked by the PAM service ``auth_pam_service``, users
  from the passwd database with a uid of at least ``first_valid_uid``; ``user@domain``
  logins with a ``mydestination`` domain are the system user ``user``
  (``roost.auth.pam``).

The LDAP and PAM backends (and ldap3, python-pam) are imported only when
``auth_backends`` names them, so that a daemon without them does not carry their
modules in every process (docs/performance.md, "IMAP memory, session 3"). The ``ldap:``
lookup table type registers itself when first used (``roost.config.lookup``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from roost.auth.passwdfile import PasswdFileBackend, retain_preloaded
from roost.auth.users import UserBackend, UserBackendError, UserDatabase
from roost.config import ConfigError, Settings

if TYPE_CHECKING:
    from roost.auth.ldap import LdapBackend
    from roost.auth.pam import PamBackend

__all__ = [
    "build_user_database",
    "check_user_database",
    "password_modules",
    "preload_user_database",
]

logger = logging.getLogger(__name__)

_EXPECTED = "expected passwd-file:/path, ldap:/path or pam"


def _pam_backend(settings: Settings, realm: str | None) -> PamBackend:
    from roost.auth.pam import PamBackend  # only when configured

    local_domains = [
        word for word in settings.strings("mydestination") if ":" not in word and "/" not in word
    ]
    try:
        return PamBackend(
            settings.string("auth_pam_service"),
            default_domain=realm or settings.string("myorigin") or None,
            local_domains=local_domains,
            first_valid_uid=settings.integer("first_valid_uid"),
        )
    except ValueError as exc:
        raise settings.error("auth_pam_service", str(exc)) from None


def _ldap_backend(settings: Settings, path: str, realm: str | None) -> LdapBackend:
    from roost.auth.ldap import LdapBackend, load_ldap_config  # ldap3: only when configured

    try:
        config, warnings = load_ldap_config(Path(path))
    except ConfigError as exc:
        unreadable = [p for p in exc.problems if not p.line and not p.name]
        if unreadable:  # the file itself: point at the main.cf line that names it
            raise settings.error("auth_backends", f"ldap:{unreadable[0]}") from None
        raise
    for warning in warnings:
        logger.warning("%s", warning)
    try:
        return LdapBackend(config, default_domain=realm)
    except ValueError as exc:
        raise settings.error("auth_backends", str(exc)) from None


def _passwd_file_backend(word: str, realm: str | None) -> PasswdFileBackend | None:
    """The backend an ``auth_backends`` word ``passwd-file:PATH`` names (the same for the
    user database and its preload, so that the preloaded read is found); None for any
    other word."""
    kind, _, argument = word.partition(":")
    if kind == "passwd-file" and argument:
        return PasswdFileBackend(Path(argument), default_domain=realm)
    return None


def build_user_database(settings: Settings) -> UserDatabase | None:
    """Return the user database, or None when ``auth_backends`` is empty.

    Raises:
        ConfigError: an unknown backend type or a malformed entry, naming the main.cf
            line; or an error in an LDAP configuration file, naming that file's line.
    """
    backends: list[UserBackend] = []
    realm = settings.string("auth_default_realm") or None
    for word in settings.strings("auth_backends"):
        kind, _, argument = word.partition(":")
        if (passwd_file := _passwd_file_backend(word, realm)) is not None:
            backends.append(passwd_file)
        elif kind == "ldap" and argument:
            backends.append(_ldap_backend(settings, argument, realm))
        elif word == "pam":
            backends.append(_pam_backend(settings, realm))
        else:
            raise settings.error("auth_backends", f"unknown backend {word!r} ({_EXPECTED})")
    retain_preloaded(backends)  # a reload that changed the files: forget the old ones
    if not backends:
        return None
    return UserDatabase(backends, default_realm=realm)


def preload_user_database(settings: Settings) -> None:
    """Read the configured passwd-files now (:meth:`PasswdFileBackend.preload`), before
    the worker processes are forked: each worker's user database then starts from that
    read, in pages every process shares, instead of reading the file itself at its first
    login. A file that changes later is read again as always; one that cannot be read is
    reported at its first use, as before. Parses of files no longer configured are
    dropped (:func:`~roost.auth.passwdfile.retain_preloaded`).
    """
    realm = settings.string("auth_default_realm") or None
    backends = [
        backend
        for word in settings.strings("auth_backends")
        if (backend := _passwd_file_backend(word, realm)) is not None
    ]
    retain_preloaded(backends)
    for backend in backends:
        backend.preload()


def password_modules(settings: Settings) -> frozenset[str]:
    """The libpass modules the configured user database may need to check passwords
    (:func:`roost.auth.schemes.libpass_needs`), to import them before the worker processes
    are forked (:func:`roost.auth.schemes.preload_libpass`).

    A passwd-file's stored passwords are read for their schemes (plus SHA512-CRYPT, which
    an unknown login is checked against); LDAP may hold any scheme; PAM needs none. An
    unreadable file counts as needing nothing: a later change is still served, the module
    is then imported at its first use.
    """
    from roost.auth.schemes import libpass_needs, sha512_crypt

    modules: set[str] = set()
    for word in settings.strings("auth_backends"):
        kind, _, argument = word.partition(":")
        if kind == "passwd-file" and argument:
            modules.add(sha512_crypt.module)
            try:
                with open(argument, encoding="utf-8", errors="replace") as lines:
                    for line in lines:
                        fields = line.split(":", 2)
                        if len(fields) > 1 and fields[1] and not line.startswith("#"):
                            modules |= libpass_needs(fields[1])
            except OSError:
                continue
        elif kind == "ldap":
            modules |= libpass_needs("{CRYPT}") | libpass_needs("{ARGON2}")
    return frozenset(modules)


def check_user_database(settings: Settings) -> list[str]:
    """Return problems with the configured backends (for ``roost check``).

    Checks files only, never the network: an LDAP server that is down at boot must not
    stop the daemon from starting (``ExecStartPre=roost check``).
    """
    from roost.auth.pam import PamBackend  # see the module docstring

    try:
        database = build_user_database(settings)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    problems: list[str] = []
    for backend in database.backends if database is not None else ():
        if isinstance(backend, PasswdFileBackend):
            try:
                backend.load()
            except UserBackendError as exc:
                problems.append(str(exc))
                continue
            problems.extend(str(p) for p in backend.problems)
        elif (
            isinstance(backend, PamBackend)
            and not os.path.exists(backend.service_file)
            and not os.path.exists("/etc/pam.conf")
        ):
            problems.append(
                f"{backend.service_file}: missing (install etc/pam.d/roost there);"
                " PAM would use /etc/pam.d/other"
            )
    return problems

"""Build the user database from ``auth_backends`` and ``auth_default_realm``.

``auth_backends`` lists backends in lookup order:

- ``passwd-file:/path``: a Dovecot passwd-file (``roost.auth.passwdfile``).

LDAP (``ldap:/etc/roost/ldap.cf``) and PAM (``pam``) plug in here too.
"""

from __future__ import annotations

from pathlib import Path

from roost.auth.passwdfile import PasswdFileBackend
from roost.auth.users import UserBackend, UserBackendError, UserDatabase
from roost.config import ConfigError, Settings

__all__ = ["build_user_database", "check_user_database"]


def build_user_database(settings: Settings) -> UserDatabase | None:
    """Return the user database, or None when ``auth_backends`` is empty.

    Raises:
        ConfigError: an unknown backend type or a malformed entry, naming the line.
    """
    backends: list[UserBackend] = []
    realm = settings.string("auth_default_realm") or None
    for word in settings.strings("auth_backends"):
        kind, _, argument = word.partition(":")
        if kind == "passwd-file" and argument:
            backends.append(PasswdFileBackend(Path(argument), default_domain=realm))
        else:
            raise settings.error(
                "auth_backends",
                f"unknown backend {word!r} (expected passwd-file:/path)",
            )
    if not backends:
        return None
    return UserDatabase(backends, default_realm=realm)


def check_user_database(settings: Settings) -> list[str]:
    """Return problems with the configured backends (for ``roost check``)."""
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
    return problems

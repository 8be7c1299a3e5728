"""System users: passwords checked by PAM, accounts from the passwd database.

:class:`PamBackend` is the ``pam`` entry of ``auth_backends``, Dovecot's ``passdb pam`` +
``userdb passwd`` pair: a password check runs the PAM service ``auth_pam_service``
(default ``roost``, file ``/etc/pam.d/roost``) with python-pam — ``pam_authenticate`` then
``pam_acct_mgmt`` (expired or locked accounts fail), no ``pam_setcred`` and no session, as
a mail login needs none. Users, their uid, gid and home come from the passwd database
(:mod:`pwd`: /etc/passwd, or LDAP/SSSD through NSS).

Rules:

* Only accounts with a uid of at least ``first_valid_uid`` (Dovecot's parameter, default
  500) are users: root and daemon accounts never log in or receive mail here.
* A login ``user@domain`` whose domain is one of ``local_domains`` (``mydestination``) is
  the system user ``user``; the passwd database is first asked for the name as given (SSSD
  may use fully qualified names).
* An empty password fails without asking PAM (``pam_unix`` with ``nullok``, Debian's
  default in common-auth, would accept it for an account without a password).
* A name unknown to the passwd database is ``UNKNOWN_USER`` without a PAM conversation,
  so later backends are asked at once (``pam_unix`` waits about 2 s after a failure).

Privileges: ``pam_unix`` reads /etc/shadow, which only root can read; as any other user
it can check only that user's own password (through ``unix_chkpwd``), so every other
check fails. In roost's process model (docs/architecture.md, "Process model and
privileges") PAM checks run in the small privileged helper process, while the network
services run as ``mail_owner``: after the drop the daemon installs the helper's check
with :func:`use_privileged_check` and every backend sends its checks there
(docs/privsep.md). Without a helper (started as root with ``ROOST_STAY_ROOT=1``, or as an
ordinary user) PAM runs in the worker thread of this process, with a warning when that
process is not root.

See Also: Dovecot's ``passdb pam`` and ``userdb passwd`` documentation; pam(3),
pam_authenticate(3), pam_acct_mgmt(3); python-pam.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import threading
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Final

import pam

from roost.auth.users import FailureReason, User, VerifyResult

__all__ = ["DEFAULT_FIRST_VALID_UID", "DEFAULT_SERVICE", "PamBackend", "use_privileged_check"]

logger = logging.getLogger(__name__)

DEFAULT_SERVICE: Final = "roost"
"""The PAM service name, i.e. the file ``/etc/pam.d/roost`` (``auth_pam_service``)."""

DEFAULT_FIRST_VALID_UID: Final = 500
"""Dovecot's ``first_valid_uid`` default."""

_SERVICE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# PAM return codes (Linux-PAM <security/_pam_types.h>) and what they mean for a login.
_PAM_SUCCESS: Final = 0
_BAD_PASSWORD_CODES: Final = frozenset(
    {
        7,  # PAM_AUTH_ERR
        11,  # PAM_MAXTRIES
    }
)
_DISABLED_CODES: Final = frozenset(
    {
        6,  # PAM_PERM_DENIED
        12,  # PAM_NEW_AUTHTOK_REQD: the password has expired and must be changed
        13,  # PAM_ACCT_EXPIRED
        27,  # PAM_AUTHTOK_EXPIRED
    }
)
_UNKNOWN_USER_CODE: Final = 10  # PAM_USER_UNKNOWN

#: (service, user, password) -> (accepted, PAM code, reason text).
PrivilegedCheck = Callable[[str, str, str], tuple[bool, int, str]]
_privileged_check: PrivilegedCheck | None = None


def use_privileged_check(check: PrivilegedCheck | None) -> None:
    """Send every PAM check of this process to ``check`` (the privileged helper's client).

    Called once by the daemon when it drops root (:mod:`roost.daemon.privileges`); None
    goes back to calling PAM in this process.
    """
    global _privileged_check
    _privileged_check = check


# Everything else (PAM_CRED_INSUFFICIENT 8: not allowed to read /etc/shadow,
# PAM_AUTHINFO_UNAVAIL 9: a network source is down, PAM_SERVICE_ERR, PAM_SYSTEM_ERR,
# PAM_BUF_ERR, PAM_CONV_ERR, PAM_ABORT, ...) is temporary: BACKEND_ERROR.


class PamBackend:
    """A :class:`~roost.auth.users.UserBackend` for system accounts, checked by PAM.

    Thread-safe: every check uses its own PAM handle. Checks block (PAM modules add a
    delay of about 2 s after a wrong password), so
    :class:`~roost.auth.users.UserDatabase` calls them from worker threads.

    Args:
        service: the PAM service (``auth_pam_service``): ``/etc/pam.d/<service>``.
        default_domain: the domain of :attr:`User.address` (``auth_default_realm`` or
            ``myorigin``); ``None`` leaves addresses bare (``alice``).
        local_domains: domains whose ``user@domain`` logins are the system user ``user``
            (``mydestination``), compared case-insensitively.
        first_valid_uid: the smallest uid that is a user (Dovecot's ``first_valid_uid``).

    Raises:
        ValueError: ``service`` is not a PAM service name, or ``first_valid_uid`` < 0.
    """

    def __init__(
        self,
        service: str = DEFAULT_SERVICE,
        *,
        default_domain: str | None = None,
        local_domains: Iterable[str] = (),
        first_valid_uid: int = DEFAULT_FIRST_VALID_UID,
    ) -> None:
        if not _SERVICE_NAME.fullmatch(service):
            raise ValueError(f"invalid PAM service name {service!r}")
        if first_valid_uid < 0:
            raise ValueError(f"invalid first_valid_uid {first_valid_uid}")
        self._service = service
        self._name = f"pam:{service}"
        self._default_domain = default_domain.lower() if default_domain else None
        self._local_domains = frozenset(d.lower().rstrip(".") for d in local_domains if d)
        self._first_valid_uid = first_valid_uid
        self._warned_unprivileged = threading.Event()

    @property
    def name(self) -> str:
        """``pam:<service>``."""
        return self._name

    @property
    def service(self) -> str:
        """The PAM service name."""
        return self._service

    @property
    def service_file(self) -> str:
        """``/etc/pam.d/<service>``: the file PAM reads for the service."""
        return f"/etc/pam.d/{self._service}"

    def __repr__(self) -> str:
        return f"PamBackend({self._service!r})"

    def _account(self, name: str) -> pwd.struct_passwd | None:
        """The passwd entry of ``name`` (see the module docstring), or None."""
        candidates = [name]
        local, at, domain = name.rpartition("@")
        if at and local and domain.lower().rstrip(".") in self._local_domains:
            candidates.append(local)
        for candidate in list(candidates):
            if candidate.lower() != candidate:
                candidates.append(candidate.lower())
        for candidate in candidates:
            try:
                account = pwd.getpwnam(candidate)
            except (KeyError, ValueError):
                continue
            if account.pw_uid < self._first_valid_uid:
                return None
            return account
        return None

    def _user(self, account: pwd.struct_passwd) -> User:
        login = account.pw_name
        address = f"{login}@{self._default_domain}" if self._default_domain else login
        home = account.pw_dir if account.pw_dir.startswith("/") else None
        return User(
            login=login,
            address=address,
            uid=account.pw_uid,
            gid=account.pw_gid,
            home=home,
            extra=MappingProxyType({"shell": account.pw_shell}),
            backend=self._name,
        )

    def lookup(self, name: str) -> User | None:
        """Find a system user in the passwd database. See :meth:`UserBackend.lookup`."""
        account = self._account(name)
        return None if account is None else self._user(account)

    def verify(self, login: str, password: str) -> VerifyResult:
        """Check a password with PAM. See :meth:`UserBackend.verify`.

        Returns:
            Success; :attr:`FailureReason.UNKNOWN_USER` for names that are not users (no
            PAM conversation then); ``BAD_PASSWORD`` for a wrong or empty password;
            ``DISABLED`` for expired or locked accounts (``pam_acct_mgmt``);
            ``BACKEND_ERROR`` for PAM failures that are not about the password (no
            permission to read /etc/shadow, a module's network source down, no PAM).
        """
        account = self._account(login)
        if account is None:
            return VerifyResult.fail(FailureReason.UNKNOWN_USER)
        user = self._user(account)
        if not password:
            return VerifyResult.fail(
                FailureReason.BAD_PASSWORD, f"{user.login}: empty password refused"
            )
        if "\x00" in password:
            return VerifyResult.fail(FailureReason.BAD_PASSWORD, f"{user.login}: NUL in password")
        try:
            accepted, code, text = self._check(user.login, password)
        except Exception as exc:  # python-pam raises ValueError, OSError, TypeError
            return VerifyResult.fail(
                FailureReason.BACKEND_ERROR,
                f"{self._name}: PAM failed for {user.login}: {type(exc).__name__}",
            )
        if accepted and code == _PAM_SUCCESS:
            return VerifyResult.success(user)
        detail = f"{self._name}: {user.login}: {text} (PAM code {code})"
        if code in _BAD_PASSWORD_CODES:
            return VerifyResult.fail(FailureReason.BAD_PASSWORD, detail)
        if code in _DISABLED_CODES:
            return VerifyResult.fail(FailureReason.DISABLED, detail)
        if code == _UNKNOWN_USER_CODE:
            return VerifyResult.fail(FailureReason.UNKNOWN_USER, detail)
        return VerifyResult.fail(FailureReason.BACKEND_ERROR, detail)

    def _check(self, login: str, password: str) -> tuple[bool, int, str]:
        """Run PAM (through the privileged helper when there is one)."""
        check = _privileged_check
        if check is not None:
            return check(self._service, login, password)
        self._warn_if_unprivileged()
        authenticator = pam.PamAuthenticator()
        accepted = authenticator.authenticate(
            login, password, service=self._service, resetcreds=False, encoding="utf-8"
        )
        reason = authenticator.reason
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        return bool(accepted), int(authenticator.code), text

    def _warn_if_unprivileged(self) -> None:
        if os.geteuid() == 0 or self._warned_unprivileged.is_set():
            return
        self._warned_unprivileged.set()
        logger.warning(
            "%s: PAM runs as uid %d, not root: pam_unix cannot read /etc/shadow and can only"
            " check that user's own password (the privileged helper will do these checks)",
            self._name,
            os.geteuid(),
        )

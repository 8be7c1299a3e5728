"""``roost check``: validate the configuration and the files it names.

Checks main.cf's values, the queue and data directories (exist or can be created, not
writable by others), every service's TLS certificate and key (readable, matching, not
expired, key not readable by others), every lookup table that main.cf names, and that the
listening addresses are free (unless the daemon is running and holds them).

Owners and modes, as ``postfix check`` reports them (:func:`check_permissions`):

========================================================  ========  =========================
finding                                                   severity  when
========================================================  ========  =========================
queue, data directory or a queue subdirectory             error     always
writable by every user
queue or data directory group-writable                    warning   always
data directory readable by others                         warning   always
queue, data directory or queue subdirectory not owned by  warning   started as root
``mail_owner`` (``roost serve`` hands it over at start)
``mail_owner`` missing, root, or ``default_privs`` root   error     started as root
or equal to ``mail_owner``
main.cf or the configuration directory writable by        error     started as root
someone else than root (owner, group or others)           warning   otherwise
TLS key or certificate writable by others                 error     always
TLS key owned by another user than root (or than the      warning   always
user checking, when not root)
alias file writable by others                             error     always
========================================================  ========  =========================

"Started as root" means what ``roost serve`` would do when run as the user running
``roost check`` (root without ``ROOST_STAY_ROOT=1``): drop to ``mail_owner``
(docs/privsep.md). The privileged helper trusts main.cf for the TLS files it reads, so
main.cf must be root's alone then.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from collections.abc import Mapping
from pathlib import Path

from roost.config import PARAMETERS, ParamType, Settings, TableError, open_table
from roost.daemon.app import control_socket_path
from roost.daemon.control import ControlError, request
from roost.daemon.listeners import bind_socket, service_listeners
from roost.daemon.tlscontexts import tls_files
from roost.tls import check_certificate

__all__ = ["check", "check_permissions"]


def _privsep(environ: Mapping[str, str]) -> bool:
    from roost.daemon.privileges import STAY_ROOT_ENV

    return os.geteuid() == 0 and environ.get(STAY_ROOT_ENV) != "1"


def _owner_problems(settings: Settings) -> tuple[list[str], pwd.struct_passwd | None]:
    """mail_owner and default_privs as roost serve checks them when started as root."""
    from roost.daemon.privileges import PrivilegeError, default_privs_account

    errors: list[str] = []
    owner: pwd.struct_passwd | None = None
    name = settings.string("mail_owner")
    try:
        owner = pwd.getpwnam(name)
    except KeyError:
        errors.append(f"mail_owner = {name}: no such user; roost serve refuses to start as root"
                      " (roost setup creates it)")  # fmt: skip
    if owner is not None and (owner.pw_uid == 0 or owner.pw_gid == 0):
        errors.append(f"mail_owner = {name}: must not be root or group 0")
        owner = None
    try:
        default_privs_account(settings)
    except PrivilegeError as exc:
        errors.append(str(exc))
    return errors, owner


def _mode_of(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.lstat()
    except OSError:
        return None
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


def _directory_permissions(
    name: str, path: Path, owner: pwd.struct_passwd | None
) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    warnings: list[str] = []
    found = _mode_of(path)
    if found is None:
        return errors, warnings
    mode, uid, _ = found
    if mode & stat.S_IWGRP and not mode & stat.S_IWOTH:
        warnings.append(f"{path}: {name} is group-writable (mode {mode:04o}; 0700 expected)")
    if name == "data_directory" and mode & 0o007:
        warnings.append(f"{path}: {name} is accessible by other users (mode {mode:04o})")
    if owner is not None and uid != owner.pw_uid:
        warnings.append(
            f"{path}: {name} is owned by uid {uid}, not mail_owner {owner.pw_name}"
            " (roost serve hands it over when it starts; roost setup does now)"
        )
    if name == "queue_directory" and path.is_dir():
        for sub in sorted(path.iterdir()):
            sub_found = _mode_of(sub)
            if sub_found is None or not sub.is_dir() or sub.is_symlink():
                continue
            sub_mode, sub_uid, _ = sub_found
            if sub_mode & stat.S_IWOTH:
                errors.append(f"{sub}: queue subdirectory writable by every user ({sub_mode:04o})")
            if owner is not None and sub_uid != owner.pw_uid:
                warnings.append(f"{sub}: owned by uid {sub_uid}, not mail_owner {owner.pw_name}")
    return errors, warnings


def _config_permissions(settings: Settings) -> list[str]:
    """main.cf and its directory: writable by someone other than root?"""
    problems: list[str] = []
    euid = os.geteuid()
    paths = [settings.path] if settings.path is not None else []
    paths += [settings.path_of("config_directory")]
    for path in paths:
        found = _mode_of(path)
        if found is None:
            continue
        mode, uid, _ = found
        if uid not in (0, euid):
            problems.append(f"{path}: owned by uid {uid}: writable by a user other than root")
        if mode & 0o022:
            who = "every user" if mode & stat.S_IWOTH else "its group"
            problems.append(f"{path}: writable by {who} (mode {mode:04o})")
    return problems


def _tls_permissions(settings: Settings) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    warnings: list[str] = []
    euid = os.geteuid()
    files: set[Path] = set()
    for listener in service_listeners(settings):
        files.update(tls_files(settings, listener.service))
    keys = {tls_files(settings, listener.service)[1] for listener in service_listeners(settings)}
    for path in sorted(files):
        found = _mode_of(path) if not path.is_symlink() else _mode_of(path.resolve())
        if found is None:
            continue
        mode, uid, _ = found
        if mode & stat.S_IWOTH:
            errors.append(f"{path}: writable by every user (mode {mode:04o})")
        if path in keys and uid not in (0, euid):
            warnings.append(f"{path}: private key owned by uid {uid}, not root")
    return errors, warnings


def _alias_permissions(settings: Settings) -> list[str]:
    errors: list[str] = []
    for ref in settings.tables("alias_maps"):
        name = ref.partition(":")[2]
        if not name.startswith("/"):
            continue
        found = _mode_of(Path(name))
        if found is not None and found[0] & stat.S_IWOTH:
            errors.append(f"{name}: alias file writable by every user (mode {found[0]:04o})")
    return errors


def check_permissions(
    settings: Settings, environ: Mapping[str, str] = os.environ
) -> tuple[list[str], list[str]]:
    """Report unsafe owners and modes (the table in the module docstring).

    Returns:
        (errors, warnings), printable lines.
    """
    errors: list[str] = []
    warnings: list[str] = []
    privsep = _privsep(environ)
    owner: pwd.struct_passwd | None = None
    if privsep:
        owner_errors, owner = _owner_problems(settings)
        errors += owner_errors
    for name in ("queue_directory", "data_directory"):
        more_errors, more_warnings = _directory_permissions(name, settings.path_of(name), owner)
        errors += more_errors
        warnings += more_warnings
    (errors if privsep else warnings).extend(_config_permissions(settings))
    tls_errors, tls_warnings = _tls_permissions(settings)
    errors += tls_errors
    warnings += tls_warnings
    errors += _alias_permissions(settings)
    return errors, warnings


def _check_directory(name: str, path: Path) -> list[str]:
    if path.is_dir():
        mode = path.stat().st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            return [f"{path}: {name} is writable by every user (mode {mode & 0o7777:04o})"]
        return []
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{path}: {name} does not exist and {parent} is not writable"]
    return []


def _check_services(settings: Settings) -> list[str]:
    """Build each service's configuration as the daemon would, without starting it."""
    from roost.auth.factory import build_user_database, check_user_database
    from roost.daemon.service import Context
    from roost.daemon.tlscontexts import TLSContexts
    from roost.imap.server import check_imap
    from roost.pop3.server import check_pop3
    from roost.smtp.server import check_smtp

    problems = check_user_database(settings)
    if problems:
        return problems
    context = Context(
        settings=settings, tls=TLSContexts(settings), users=build_user_database(settings)
    )
    return check_smtp(settings, context) + check_imap(settings) + check_pop3(settings)


def _check_tables(settings: Settings) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    warnings: list[str] = []
    for name, parameter in sorted(PARAMETERS.items()):
        if parameter.type is not ParamType.TABLE:
            continue
        for ref in settings.tables(name):
            try:
                open_table(ref)
            except TableError as exc:
                text = f"{name}: {exc}"
                if "No such file" in str(exc) and not settings.is_set(name):
                    warnings.append(text)  # a default table that is simply absent
                else:
                    errors.append(text)
    return errors, warnings


def _check_listeners(settings: Settings) -> tuple[list[str], list[str]]:
    try:
        request(control_socket_path(settings), "status", timeout=2)
    except ControlError:
        pass
    else:
        return [], ["the daemon is running: listening addresses not checked"]
    errors: list[str] = []
    for listener in service_listeners(settings):
        try:
            bind_socket(listener).close()
        except OSError as exc:
            if exc.errno == errno.EACCES:
                reason = "permission denied (needs root or CAP_NET_BIND_SERVICE)"
            elif exc.errno == errno.EADDRINUSE:
                reason = "address already in use"
            else:
                reason = exc.strerror or str(exc)
            errors.append(f"{listener.service} on {listener}: cannot listen: {reason}")
    return errors, []


def check(settings: Settings, *, listeners: bool = True) -> tuple[list[str], list[str]]:
    """Run every check.

    Returns:
        (errors, warnings), each a list of printable lines; no errors means all is well.
    """
    errors: list[str] = []
    warnings: list[str] = []
    for name in ("queue_directory", "data_directory"):
        errors += _check_directory(name, settings.path_of(name))
    permission_errors, permission_warnings = check_permissions(settings)
    errors += permission_errors
    warnings += permission_warnings
    shared = (settings.path_of("tls_cert_file"), settings.path_of("tls_key_file"))
    seen: set[tuple[Path, Path]] = set()
    for listener in service_listeners(settings):
        files = tls_files(settings, listener.service)
        if files in seen:
            continue
        seen.add(files)
        if (
            files == shared
            and settings.boolean("tls_selfsigned_auto")
            and not files[0].exists()
            and not files[1].exists()
        ):
            warnings.append(
                f"{files[0]}: no certificate yet; roost serve will create a self-signed one"
            )
            continue
        for problem in check_certificate(*files):
            (warnings if "expires in" in problem else errors).append(problem)
    errors += _check_services(settings)
    table_errors, table_warnings = _check_tables(settings)
    errors += table_errors
    warnings += table_warnings
    if listeners:
        listen_errors, listen_warnings = _check_listeners(settings)
        errors += listen_errors
        warnings += listen_warnings
    return errors, warnings

"""``roost check``: validate the configuration and the files it names.

Checks main.cf's values, the queue and data directories (exist or can be created, not
writable by others), every service's TLS certificate and key (readable, matching, not
expired, key not readable by others), every lookup table that main.cf names, and that the
listening addresses are free (unless the daemon is running and holds them).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from roost.config import PARAMETERS, ParamType, Settings, TableError, open_table
from roost.daemon.app import control_socket_path
from roost.daemon.control import ControlError, request
from roost.daemon.listeners import bind_socket, service_listeners
from roost.daemon.tlscontexts import tls_files
from roost.tls import check_certificate

__all__ = ["check"]


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

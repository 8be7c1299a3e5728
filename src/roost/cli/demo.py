"""The embedded demo instance that ``make run`` creates under ``./var/``.

Layout: ``etc/main.cf`` (loopback only, unprivileged ports), ``etc/tls/`` (self-signed
certificate, created by the daemon at first start), ``etc/users`` (a Dovecot passwd-file
with the user ``demo``), ``demo.password`` (mode 0600), ``spool/`` (queue), ``lib/`` (state),
``mail/demo/Maildir`` (the demo user's mailbox).
"""

from __future__ import annotations

import getpass
import os
import secrets
from pathlib import Path
from typing import Final

from roost.config import Settings

__all__ = ["DEMO_PORTS", "create_instance", "tour"]

#: Unprivileged loopback ports of the demo instance.
DEMO_PORTS: Final = {
    "smtp": 2525,
    "submissions": 2465,
    "submission": 2587,
    "imap": 1143,
    "imaps": 1993,
    "pop3": 1110,
    "pop3s": 1995,
}
DEMO_DOMAIN: Final = "example.test"


def _main_cf(directory: Path) -> str:
    ports = "\n".join(f"{service}_service_port = {port}" for service, port in DEMO_PORTS.items())
    return f"""\
# Roost demo instance, created by `make run`. Edit freely: `make run` keeps this file.
# Show the effective settings with: .venv/bin/roost -c {directory}/etc conf -n
myhostname = localhost
mydomain = {DEMO_DOMAIN}
mydestination = localhost
virtual_mailbox_domains = $mydomain
inet_interfaces = loopback-only
mynetworks_style = host
queue_directory = {directory}/spool
data_directory = {directory}/lib
mail_owner = {getpass.getuser()}
auth_backends = passwd-file:$config_directory/users
auth_default_realm = $mydomain
mail_location = maildir:~/Maildir
alias_maps = texthash:$config_directory/aliases
alias_database = $alias_maps

# Unprivileged ports instead of 25, 587, 465, 143, 993, 110 and 995.
{ports}
"""


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def create_instance(directory: Path) -> bool:
    """Create the demo instance in ``directory`` unless it exists.

    Returns:
        True when it was created now, False when it already existed.

    Raises:
        OSError: a file cannot be written.
    """
    from roost.auth.passwdfile import hash_password

    main_cf = directory / "etc" / "main.cf"
    if main_cf.exists():
        return False
    for sub in ("etc", "spool", "lib", "mail/demo"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    _write(directory / "demo.password", password + "\n", 0o600)
    home = directory / "mail" / "demo"
    user_line = (
        f"demo@{DEMO_DOMAIN}:{hash_password(password, 'SHA512-CRYPT')}::"
        f"::{home}::userdb_mail=maildir:~/Maildir\n"
    )
    _write(directory / "etc" / "users", user_line, 0o600)
    _write(directory / "etc" / "aliases", "# name: target, ...\npostmaster: demo\n", 0o644)
    _write(main_cf, _main_cf(directory), 0o644)
    return True


def tour(directory: Path, settings: Settings, *, created: bool) -> str:
    """Return the text ``make run`` prints at start: how to send and read a first message."""
    rel = os.path.relpath(directory)
    state = "created now" if created else "existing"
    address = f"demo@{settings.string('mydomain')}"
    login = f'--user "demo:$(cat {rel}/demo.password)"'
    smtp = settings.integer("smtp_service_port")
    imaps = settings.integer("imaps_service_port")
    pop3s = settings.integer("pop3s_service_port")
    return f"""\
roost demo instance ({state}) in {rel}/ -- configuration {rel}/etc/main.cf
  user {address} (login: demo), password in {rel}/demo.password
  SMTP {smtp}, submission {settings.integer("submission_service_port")}, \
submissions {settings.integer("submissions_service_port")}, \
IMAP {settings.integer("imap_service_port")}, IMAPS {imaps}, \
POP3 {settings.integer("pop3_service_port")}, POP3S {pop3s} (loopback only)

Send a first message:
  swaks --server 127.0.0.1:{smtp} --from you@example.org --to {address} --header 'Subject: hello'
or by hand:
  printf 'HELO me\\r\\nMAIL FROM:<you@example.org>\\r\\nRCPT TO:<{address}>\\r\\nDATA\\r\\n\
Subject: hello\\r\\n\\r\\nHi!\\r\\n.\\r\\nQUIT\\r\\n' | nc 127.0.0.1 {smtp}
Read it:
  curl -k {login} 'imaps://127.0.0.1:{imaps}/INBOX;UID=1'
  curl -k {login} pop3s://127.0.0.1:{pop3s}/1
  mutt -f imaps://demo@127.0.0.1:{imaps}/INBOX
Manage it:
  .venv/bin/roost -c {rel}/etc status | reload | stop      (Ctrl-C stops it too)
"""

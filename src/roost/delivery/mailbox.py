"""Where a user's mail is: one answer for local delivery, IMAP and POP3.

- ``home_mailbox`` set (Postfix): ``Maildir/`` (trailing slash) is a Maildir under the
  home, anything else an mbox file under the home;
- otherwise ``mail_location`` (Dovecot syntax, ``%u %n %d %h`` and ``~``), from the user
  database's ``userdb_mail`` field or the global parameter: ``maildir:PATH`` or
  ``mbox:PATH:INBOX=FILE`` (the INBOX file gets the mail).

Kept apart from :mod:`roost.delivery.local` so that the IMAP and POP3 workers import this
without the queue manager and the delivery agents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from roost.auth.users import User, expand_mail_location
from roost.config import Settings
from roost.delivery.errors import DeliveryError

__all__ = ["Account", "LocalConfig", "Mailbox", "local_config", "resolve_mailbox", "user_mailbox"]


@dataclass(frozen=True, slots=True)
class LocalConfig:
    """The local delivery parameters (postconf(5) and Dovecot names)."""

    hostname: str
    home_mailbox: str = ""
    mail_spool_directory: str = "/var/mail"
    mail_location: str = "maildir:~/Maildir"
    recipient_delimiter: str = ""
    forward_path: str = "$home/.forward${recipient_delimiter}${extension}, $home/.forward"
    allow_mail_to_commands: tuple[str, ...] = ("alias", "forward")
    allow_mail_to_files: tuple[str, ...] = ("alias", "forward")
    propagate_unmatched_extensions: tuple[str, ...] = ("canonical", "virtual")
    owner_request_special: bool = True
    expand_owner_alias: bool = False
    default_privs: str = "nobody"
    mailbox_size_limit: int = 51200000
    command_time_limit: float = 1000.0
    autocreate_folder: bool = False
    lock_timeout: float = 20.0
    lock_delay: float = 1.0
    stale_lock_time: float = 500.0
    locks: tuple[str, ...] = ("fcntl", "dotlock")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """Where one user's mail goes.

    Attributes:
        kind: ``maildir`` or ``mbox``.
        path: the Maildir directory or the mbox file.
        uid: the owner of created files (None: the daemon's user).
        gid: their group.
        quota_bytes: the user's quota (0: none).
    """

    kind: str
    path: Path
    uid: int | None = None
    gid: int | None = None
    quota_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Account:
    """An account of the user database or of the system, as mailbox resolution needs it."""

    name: str
    home: str
    uid: int | None
    gid: int | None
    shell: str = "/bin/sh"
    user: User | None = None


def resolve_mailbox(account: Account, config: LocalConfig, domain: str) -> Mailbox:
    """Choose the mailbox of an account (see the module docstring).

    Raises:
        DeliveryError: the account has no home where one is needed (4.3.0, as Postfix).
    """
    quota = account.user.quota_bytes or 0 if account.user is not None else 0
    if config.home_mailbox and account.user is None:
        if not account.home:
            raise DeliveryError(True, "4.3.0", f"no home directory for user {account.name}")
        path = Path(account.home) / config.home_mailbox
        kind = "maildir" if config.home_mailbox.endswith("/") else "mbox"
        return Mailbox(kind, path, account.uid, account.gid, quota)
    if account.user is not None and account.user.mail_location:
        location = account.user.mail_location
    else:
        local = account.name.partition("@")[0]
        location = expand_mail_location(
            config.mail_location, f"{local}@{domain}" if domain else local, domain, account.home
        )
    kind, _, rest = location.partition(":")
    kind = kind.lower()
    if kind == "maildir":
        return Mailbox("maildir", Path(rest.split(":")[0]), account.uid, account.gid, quota)
    if kind == "mbox":
        inbox = [opt[6:] for opt in rest.split(":")[1:] if opt.upper().startswith("INBOX=")]
        path = Path(inbox[0]) if inbox else Path(config.mail_spool_directory) / account.name
        return Mailbox("mbox", path, account.uid, account.gid, quota)
    raise DeliveryError(True, "4.3.5", f"unsupported mail_location {location!r}")


def user_mailbox(user: User, config: LocalConfig) -> Mailbox:
    """Where a user of the user database keeps mail: the one answer for delivery, IMAP, POP3.

    Raises:
        DeliveryError: the location cannot be used (no home where one is needed, or an
            unsupported ``mail_location`` kind).
    """
    account = Account(user.login, user.home or "", user.uid, user.gid, user=user)
    return resolve_mailbox(account, config, user.domain)


def local_config(settings: Settings) -> LocalConfig:
    """The local transport's parameters (here, not with the transport, so that the IMAP and
    POP3 servers find mailboxes without importing the queue manager and its delivery
    agents)."""
    return LocalConfig(
        hostname=settings.string("myhostname"),
        home_mailbox=settings.string("home_mailbox"),
        mail_spool_directory=settings.string("mail_spool_directory"),
        mail_location=settings.string("mail_location"),
        recipient_delimiter=settings.string("recipient_delimiter"),
        forward_path=settings.raw("forward_path"),
        allow_mail_to_commands=settings.strings("allow_mail_to_commands"),
        allow_mail_to_files=settings.strings("allow_mail_to_files"),
        propagate_unmatched_extensions=settings.strings("propagate_unmatched_extensions"),
        owner_request_special=settings.boolean("owner_request_special"),
        expand_owner_alias=settings.boolean("expand_owner_alias"),
        default_privs=settings.string("default_privs"),
        mailbox_size_limit=settings.size("mailbox_size_limit"),
        command_time_limit=float(settings.seconds("command_time_limit")),
        autocreate_folder=settings.boolean("lda_mailbox_autocreate"),
        lock_timeout=float(settings.seconds("deliver_lock_delay"))
        * settings.integer("deliver_lock_attempts"),
        lock_delay=float(settings.seconds("deliver_lock_delay")),
        stale_lock_time=float(settings.seconds("stale_lock_time")),
        locks=settings.strings("mailbox_delivery_lock"),
    )

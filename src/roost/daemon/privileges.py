"""The privilege drop: started as root, the daemon becomes ``mail_owner`` before serving.

Order in :meth:`roost.daemon.app.Daemon.run` (as root, before anything network-facing
runs, and before any worker process is forked so that workers never hold root):

1. create the queue and data directories, and the self-signed certificate when asked;
2. :func:`separate_privileges`: check ``mail_owner`` and ``default_privs``, give the
   queue and data directories to ``mail_owner`` (mode 0700, like Postfix's queue and
   Dovecot's state directory), bind every listening socket (ports below 1024), connect the
   systemd notification socket, start the privileged helper
   (:mod:`roost.daemon.privhelper`), then switch the real, effective and saved uid and gid
   to ``mail_owner`` and its groups for good;
3. everything else: the control socket, the spool, the queue manager, SMTP, IMAP, POP3.

Started as an ordinary user nothing of this happens (no helper, no drop). Started as root
with ``mail_owner`` resolving to uid 0 the daemon refuses to run, as Postfix does. The
environment variable ``ROOST_STAY_ROOT=1`` keeps root without a helper (the previous
behaviour; the test suite and ``roost demo`` as root use it; never set it on a host that
faces the network).

See Also: Postfix ``mail_owner``, ``default_privs``; docs/privsep.md.
"""

from __future__ import annotations

import importlib
import logging
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from roost.config import Settings
from roost.daemon import listeners

if TYPE_CHECKING:  # the helper's modules are heavy; sendmail(1) needs none of them
    from roost.daemon.privhelper import HelperClient, HelperDelivery
    from roost.daemon.sdnotify import Notifier

__all__ = [
    "STAY_ROOT_ENV",
    "Account",
    "PrivilegeError",
    "Separation",
    "become_queue_owner",
    "drop_to",
    "mail_owner_account",
    "own_directories",
    "separate_privileges",
]

log = logging.getLogger("roost.master")

#: Set to ``1`` to keep root (no helper, no drop): tests and ``roost demo`` only.
STAY_ROOT_ENV: Final = "ROOST_STAY_ROOT"

#: Directories ``mail_owner`` owns, and their modes (Postfix's queue, Dovecot's state).
OWNED_DIRECTORIES: Final = (("queue_directory", 0o700), ("data_directory", 0o700))


class PrivilegeError(Exception):
    """``mail_owner`` or ``default_privs`` cannot be used; the daemon does not start."""


@dataclass(frozen=True, slots=True)
class Account:
    """A passwd entry: name, uid, gid (primary group) and home directory."""

    name: str
    uid: int
    gid: int
    home: str


def _account(settings: Settings, parameter: str) -> Account:
    name = settings.string(parameter)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(
            f"{parameter} = {name}: no such user (create it, e.g. with `roost setup`)"
        ) from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def mail_owner_account(settings: Settings) -> Account:
    """``mail_owner``'s account, checked as Postfix checks it.

    Raises:
        PrivilegeError: the user does not exist, or it (or its group) is root.
    """
    owner = _account(settings, "mail_owner")
    if owner.uid == 0 or owner.gid == 0:
        raise PrivilegeError(f"mail_owner = {owner.name}: must not be root or group 0")
    return owner


def default_privs_account(settings: Settings) -> Account:
    """``default_privs``' account (the rights of ``|command`` and ``/file`` aliases).

    Raises:
        PrivilegeError: unknown, root, or the same as ``mail_owner`` (Postfix refuses that).
    """
    privs = _account(settings, "default_privs")
    if privs.uid == 0:
        raise PrivilegeError(f"default_privs = {privs.name}: must not be root")
    if privs.name == settings.string("mail_owner"):
        raise PrivilegeError(f"default_privs = {privs.name}: must not be mail_owner")
    return privs


#: Standard modules that roost imports lazily (on first use): imported before the ids
#: change, because mail_owner may not be able to read the interpreter's files (a Python
#: installed under a 0700 /root, as on the CI machines).
LAZY_MODULES: Final = ("concurrent.futures.thread", "encodings.idna", "encodings.punycode")


def preload_lazy_modules() -> None:
    """Import :data:`LAZY_MODULES` now, while the interpreter's files are readable."""
    for name in LAZY_MODULES:
        importlib.import_module(name)


def become_queue_owner(settings: Settings) -> None:
    """Root's ``sendmail`` and ``roost queue``: write the queue as the queue's owner.

    The daemon runs as ``mail_owner`` and must be able to read and move what root's
    cron jobs and mail(1) leave in ``maildrop/`` (Postfix has its setgid postdrop for
    this). Only the effective ids change, so the real uid still names the sender. Does
    nothing unless running as root with a queue owned by another user.

    Raises:
        OSError: the ids cannot be changed.
    """
    if os.geteuid() != 0:
        return
    try:
        info = settings.path_of("queue_directory").stat()
    except OSError:
        return
    if info.st_uid == 0:
        return
    preload_lazy_modules()
    os.setegid(info.st_gid)
    os.seteuid(info.st_uid)


def own_directories(settings: Settings, owner: Account) -> None:
    """Give the queue and data directories to ``owner`` with mode 0700.

    A directory whose owner is already right is left alone below its top; one owned by
    someone else (a queue from a run as root) is handed over whole, without following
    symbolic links (``postfix set-permissions`` does the same).

    Raises:
        OSError: a directory cannot be changed.
    """
    for name, mode in OWNED_DIRECTORIES:
        path = settings.path_of(name)
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise OSError(f"{name} {path}: not a directory")
        if (info.st_uid, info.st_gid) != (owner.uid, owner.gid):
            log.info("giving %s %s to %s", name, path, owner.name)
            for top, dirs, files in os.walk(path, followlinks=False):
                for entry in (*dirs, *files):
                    os.lchown(os.path.join(top, entry), owner.uid, owner.gid)
            os.lchown(path, owner.uid, owner.gid)
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode)


def drop_to(owner: Account) -> None:
    """Become ``owner`` for good: supplementary groups, then gid, then uid (real, saved too).

    Raises:
        PrivilegeError: root could be regained afterwards (it must not).
        OSError: the kernel refused a change.
    """
    preload_lazy_modules()
    os.setgroups(os.getgrouplist(owner.name, owner.gid))
    os.setresgid(owner.gid, owner.gid, owner.gid)
    os.setresuid(owner.uid, owner.uid, owner.uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("root could be regained after dropping privileges")
    os.environ["HOME"] = owner.home
    os.environ["USER"] = os.environ["LOGNAME"] = owner.name


@dataclass(slots=True)
class Separation:
    """What the daemon keeps after the drop.

    Attributes:
        owner: ``mail_owner``'s account (what the daemon runs as now).
        helper: the privileged helper's client.
    """

    owner: Account
    helper: HelperClient

    @property
    def delivery(self) -> HelperDelivery:
        """Deliveries as system users, through the helper."""
        from roost.daemon.privhelper import HelperDelivery

        return HelperDelivery(self.helper)

    def close(self) -> None:
        """Stop the helper (the daemon is stopping)."""
        self.helper.close()


def separate_privileges(
    config: Path,
    settings: Settings,
    notifier: Notifier,
    environ: Mapping[str, str] = os.environ,
) -> Separation | None:
    """Drop root as described in the module docstring; None when nothing is to be done.

    Raises:
        PrivilegeError: ``mail_owner`` or ``default_privs`` is unusable.
        OSError: a listener cannot be bound, a directory changed, or the helper started.
    """
    if os.geteuid() != 0:
        return None
    if environ.get(STAY_ROOT_ENV) == "1":
        log.warning("%s=1: staying root, no privilege separation", STAY_ROOT_ENV)
        return None
    from roost.daemon.privhelper import pam_check, start_helper

    owner = mail_owner_account(settings)
    default_privs_account(settings)
    own_directories(settings, owner)
    listeners.bind_all(settings)  # bound by Daemon.prepare already; whatever is missing
    notifier.connect()
    helper = start_helper(config)
    from roost.auth import pam

    pam.use_privileged_check(pam_check(helper))
    from roost.daemon import handoff

    handoff.use_helper(helper)  # IMAP/POP3 sessions of system users (mail_process_per_user)
    try:
        drop_to(owner)
    except BaseException:
        helper.close()
        raise
    log.info("running as %s (uid %d); privileged helper pid %s", owner.name, owner.uid, helper.pid)
    return Separation(owner, helper)

"""``roost setup``: make a host ready to run roost, idempotently (``make install`` runs it).

What it does, each step only when needed (a second run changes nothing and says so):

1. main.cf: write a small default one when the file is missing;
2. the ``mail_owner`` account (default ``roost``): ``useradd --system --user-group`` with
   home ``data_directory`` and no login shell, when missing;
3. directories: the configuration directory (0755, root), ``queue_directory`` and
   ``data_directory`` (0700, ``mail_owner``: Postfix's queue, Dovecot's state directory),
   the TLS files' directory (0755, root);
4. the self-signed certificate when ``tls_cert_file`` and ``tls_key_file`` are both missing
   (key 0600, root);
5. ``sendmail``, ``mailq`` and ``newaliases`` as symbolic links to ``roost`` in
   ``PREFIX/sbin`` (default /usr/sbin), for cron, mail(1) and scripts. An existing file that
   is not such a link (Postfix's sendmail) is left alone unless ``--force-links``.

``--destdir DIR`` puts every file under ``DIR`` (a staged install, as ``make install
DESTDIR=...``), while main.cf and the links keep naming the final paths; accounts are
always the host's own.

See Also: ``postfix post-install`` and ``postfix set-permissions``, Debian's postfix
postinst; docs/install.md.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from roost.config import Settings, load_settings
from roost.tls import generate_selfsigned

__all__ = ["LINK_NAMES", "SetupError", "SetupReport", "default_main_cf", "setup"]

#: The programs ``roost`` behaves as when called by these names.
LINK_NAMES: Final = ("sendmail", "mailq", "newaliases")


class SetupError(Exception):
    """A step cannot be done (not root where root is needed, useradd failed, ...)."""


@dataclass
class SetupReport:
    """What :func:`setup` did (``changed``) and found already right (``kept``).

    Each entry is a printable line; ``warnings`` are things left for the administrator.
    """

    changed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def default_main_cf(hostname: str, mail_owner: str | None = None) -> str:
    """The main.cf ``roost setup`` writes when there is none: only what must be chosen."""
    owner = f"mail_owner = {mail_owner}\n" if mail_owner else ""
    return f"""\
# roost main.cf, written by `roost setup`. Postfix syntax; every parameter, its default
# and meaning: `roost conf -d` and docs/configuration.md. Check with `roost check`.
myhostname = {hostname}
mydestination = $myhostname, localhost.$mydomain, localhost
inet_interfaces = all
# Local users (system accounts, PAM) get mail in ~/Maildir; virtual users: see
# docs/install.md ("Virtual users only").
mail_location = maildir:~/Maildir
auth_backends = pam
{owner}"""


def _staged(destdir: Path | None, path: Path) -> Path:
    """``path`` under ``destdir`` (paths from ``$config_directory`` already are)."""
    if destdir is None or path.is_relative_to(destdir):
        return path
    return destdir / path.relative_to("/")


def _directory(path: Path, mode: int, uid: int, gid: int, report: SetupReport, what: str) -> None:
    if not path.exists():
        path.mkdir(mode=mode, parents=True)
        os.chown(path, uid, gid)
        path.chmod(mode)
        report.changed.append(f"created {what} {path} (mode {mode:04o})")
        return
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise SetupError(f"{path}: {what} exists and is not a directory")
    fixes = []
    if (info.st_uid, info.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
        fixes.append(f"owner {uid}:{gid}")
    if stat.S_IMODE(info.st_mode) != mode:
        path.chmod(mode)
        fixes.append(f"mode {mode:04o}")
    if fixes:
        report.changed.append(f"fixed {what} {path}: {', '.join(fixes)}")
    else:
        report.kept.append(f"{what} {path}")


def _mail_owner(name: str, home: Path, report: SetupReport) -> pwd.struct_passwd:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        pass
    else:
        report.kept.append(f"mail_owner {name} (uid {entry.pw_uid})")
        return entry
    if os.geteuid() != 0:
        raise SetupError(f"mail_owner {name} does not exist, and only root can create it")
    useradd = shutil.which("useradd", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if useradd is None:
        raise SetupError("useradd not found: create the mail_owner account by hand")
    command = [useradd, "--system", "--user-group", "--home-dir", str(home)]
    command += ["--no-create-home", "--shell", "/usr/sbin/nologin", "--comment", "roost"]
    result = subprocess.run([*command, name], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SetupError(f"useradd {name}: {result.stderr.strip()}")
    entry = pwd.getpwnam(name)
    report.changed.append(f"created mail_owner {name} (uid {entry.pw_uid}, group {name})")
    return entry


def _links(directory: Path, target: Path, force: bool, report: SetupReport) -> None:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in LINK_NAMES:
        link = directory / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            report.kept.append(f"link {link} -> {target}")
            continue
        if link.exists() or link.is_symlink():
            if not force:
                report.warnings.append(
                    f"{link} exists and is not a link to {target}: left alone"
                    " (remove the other MTA's, or run roost setup --force-links)"
                )
                continue
            link.unlink()
        link.symlink_to(target)
        report.changed.append(f"linked {link} -> {target}")


def setup(
    config: Path,
    *,
    destdir: Path | None = None,
    prefix: Path = Path("/usr"),
    roost: Path | None = None,
    mail_owner: str | None = None,
    hostname: str | None = None,
    force_links: bool = False,
    generate: Callable[[str, Path, Path], None] = generate_selfsigned,
) -> SetupReport:
    """Do the steps of the module docstring.

    Args:
        config: the final path of main.cf (``-c``).
        destdir: stage every file under this directory (None: the real paths).
        prefix: the links go into ``prefix/sbin``.
        roost: what the links point to (default: the running ``roost`` program).
        mail_owner: written into a new main.cf (an existing one keeps its value).
        hostname: ``myhostname`` of a new main.cf (default: the host's FQDN).
        force_links: replace files that are in the way of the links.
        generate: makes the self-signed certificate (hostname, cert, key).

    Returns:
        What changed and what was already right.

    Raises:
        SetupError: a step needs root, or a path is in the way.
        roost.config.ConfigError: main.cf is invalid.
        OSError: a file cannot be written.
    """
    report = SetupReport()
    staged_config = _staged(destdir, config)
    if not staged_config.exists():
        staged_config.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        text = default_main_cf(hostname or socket.getfqdn(), mail_owner)
        staged_config.write_text(text, encoding="utf-8")
        staged_config.chmod(0o644)
        report.changed.append(f"wrote {staged_config}")
    else:
        report.kept.append(f"main.cf {staged_config}")
    settings, _ = load_settings(staged_config)
    if mail_owner is not None and settings.string("mail_owner") != mail_owner:
        report.warnings.append(
            f"{staged_config} says mail_owner = {settings.string('mail_owner')};"
            f" --mail-owner {mail_owner} ignored"
        )
    data = settings.path_of("data_directory")
    owner = _mail_owner(settings.string("mail_owner"), data, report)
    root_gid = 0 if os.geteuid() == 0 else os.getegid()
    root_uid = os.geteuid()
    _directory(staged_config.parent, 0o755, root_uid, root_gid, report, "config directory")
    for name in ("queue_directory", "data_directory"):
        path = _staged(destdir, settings.path_of(name))
        _directory(path, 0o700, owner.pw_uid, owner.pw_gid, report, name)
    _certificate(settings, destdir, generate, report)
    _check_default_privs(settings, report)
    target = roost or Path(sys.argv[0]).absolute()
    if destdir is not None and target.is_relative_to(destdir):
        target = Path("/") / target.relative_to(destdir)
    _links(_staged(destdir, prefix / "sbin"), target, force_links, report)
    return report


def _certificate(
    settings: Settings,
    destdir: Path | None,
    generate: Callable[[str, Path, Path], None],
    report: SetupReport,
) -> None:
    cert = _staged(destdir, settings.path_of("tls_cert_file"))
    key = _staged(destdir, settings.path_of("tls_key_file"))
    if cert.exists() or key.exists():
        report.kept.append(f"certificate {cert}")
        if key.exists() and key.stat().st_mode & 0o077:
            report.warnings.append(f"{key}: private key readable by others; chmod 600 it")
        return
    generate(settings.string("myhostname"), cert, key)
    report.changed.append(f"created a self-signed certificate {cert} (key {key}, mode 0600)")


def _check_default_privs(settings: Settings, report: SetupReport) -> None:
    name = settings.string("default_privs")
    try:
        pwd.getpwnam(name)
    except KeyError:
        report.warnings.append(f"default_privs = {name}: no such user (|command aliases fail)")

"""``roost pw``, ``roost user ...`` and ``roost auth test``: the user database by hand.

- ``roost pw`` hashes a password like ``doveadm pw`` (``-s SCHEME``, ``-l`` lists schemes,
  ``-t HASH`` tests a password against a hash); the password is read without echo.
- ``roost user add|passwd|remove|list`` edit the first passwd-file of ``auth_backends``
  (or ``--file``), atomically, keeping every other line as it was.
- ``roost user lookup ADDRESS`` shows what the user database and the router answer for a
  recipient or login, like ``doveadm user``: which backend, which mailbox, and why not.
- ``roost auth test LOGIN [PASSWORD]`` checks a password like ``doveadm auth test``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path

from roost.auth.factory import build_user_database
from roost.auth.schemes import SCHEMES, PasswordSchemeError, hash_password, verify_password
from roost.config import Settings
from roost.files import existing_mode, write_atomically

__all__ = ["add_user_commands", "read_password"]


class CommandError(Exception):
    """A mistake the command reports on one line."""


def read_password(given: str | None, *, confirm: bool = True) -> str:
    """Return ``given``, or read a password from the terminal without echo (twice).

    Raises:
        CommandError: the two entries differ, or the password is empty.
    """
    if given is not None:
        return given
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Enter new password: ")
        if confirm and getpass.getpass("Retype new password: ") != password:
            raise CommandError("passwords don't match")
    if not password:
        raise CommandError("empty password")
    return password


def _settings(args: argparse.Namespace) -> Settings:
    from roost.config import config_path, load_settings

    path = config_path(args.config)
    if not path.exists():
        return Settings(path=path)
    return load_settings(path)[0]


def _passwd_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    for word in _settings(args).strings("auth_backends"):
        kind, _, name = word.partition(":")
        if kind == "passwd-file" and name:
            return Path(name)
    raise CommandError("no passwd-file in auth_backends (give one with --file)")


def _rewrite(path: Path, lines: list[str]) -> None:
    """Replace the file atomically (same mode; 0600 for a new file)."""
    write_atomically(path, "".join(lines).encode("utf-8"), existing_mode(path, 0o600))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []


def _login_of(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return stripped.split(":", 1)[0].lower()


def cmd_pw(args: argparse.Namespace) -> int:
    """doveadm pw: hash or test a password."""
    if args.list:
        print(" ".join(SCHEMES))
        return 0
    password = read_password(args.password, confirm=args.test is None)
    if args.test is not None:
        if verify_password(password, args.test):
            print(f"{args.test} (verified)")
            return 0
        print("roost: password mismatch", file=sys.stderr)
        return 1
    print(hash_password(password, args.scheme))
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    """Edit or query the user database."""
    if args.action == "lookup":
        return _lookup(args)
    if args.action == "list":
        path = _passwd_file(args)
        for line in _lines(path):
            login = _login_of(line)
            if login is not None:
                print(line.split(":", 1)[0])
        return 0
    if not args.login:
        raise CommandError(f"user {args.action}: name the user")
    path = _passwd_file(args)
    lines = _lines(path)
    login = args.login
    index = next((i for i, line in enumerate(lines) if _login_of(line) == login.lower()), None)
    if args.action == "remove":
        if index is None:
            raise CommandError(f"{path}: no user {login}")
        del lines[index]
        _rewrite(path, lines)
        print(f"roost: removed {login} from {path}")
        return 0
    hashed = hash_password(read_password(args.password), args.scheme)
    if args.action == "passwd":
        if index is None:
            raise CommandError(f"{path}: no user {login}")
        fields = lines[index].rstrip("\n").split(":")
        fields[1] = hashed
        lines[index] = ":".join(fields) + "\n"
        _rewrite(path, lines)
        print(f"roost: changed the password of {login} in {path}")
        return 0
    if index is not None:
        raise CommandError(f"{path}: user {login} exists (use roost user passwd)")
    extra = f"userdb_quota_rule=*:storage={args.quota}" if args.quota else ""
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines.append(f"{login}:{hashed}::::{args.home or ''}::{extra}\n")
    _rewrite(path, lines)
    print(f"roost: added {login} to {path}")
    return 0


def _lookup(args: argparse.Namespace) -> int:
    from roost.address import AddressError, parse_mailbox
    from roost.delivery.mailbox import local_config, user_mailbox
    from roost.delivery.router import router_from_settings
    from roost.queue.service import open_aliases

    settings = _settings(args)
    users = build_user_database(settings)
    name = args.login
    if not name:
        raise CommandError("user lookup: name the address or login")
    user = users.lookup_sync(name) if users is not None else None
    if user is None:
        print(f"userdb: {name}: no such user", end="")
        print("" if users is not None else " (auth_backends is empty)")
    else:
        print(f"userdb: {name}")
        print(f"  backend  : {user.backend}")
        print(f"  login    : {user.login}")
        print(f"  address  : {user.address}")
        for alias in user.aliases:
            print(f"  alias    : {alias}")
        if user.uid is not None:
            print(f"  uid/gid  : {user.uid}/{user.gid}")
        print(f"  home     : {user.home or '(none)'}")
        try:
            mailbox = user_mailbox(user, local_config(settings))
            print(f"  mail     : {mailbox.kind}:{mailbox.path}")
        except Exception as exc:
            print(f"  mail     : unusable: {exc}")
        if user.quota_bytes:
            print(f"  quota    : {user.quota_bytes} bytes")
    if "@" in name:
        try:
            address = parse_mailbox(name, smtputf8=True)
        except AddressError as exc:
            print(f"router: {name}: not an address: {exc}")
            return 1
        aliases = open_aliases(settings)
        router = router_from_settings(settings, None, lambda n: aliases.lookup(n) is not None)
        destination = router.destination(address)
        print(f"router: {name}: {destination.value} destination", end="")
        if destination.value == "local":
            targets = aliases.lookup(address.local_part.lower())
            print(f" (alias: {', '.join(targets)})" if targets else "")
        else:
            print()
    return 0 if user is not None else 1


def cmd_auth_test(args: argparse.Namespace) -> int:
    """doveadm auth test: check a login and password against the user database."""
    users = build_user_database(_settings(args))
    if users is None:
        raise CommandError("auth_backends is empty: there are no users")
    password = read_password(args.password, confirm=False)
    result = users.verify_sync(args.login, password)
    if result.ok and result.user is not None:
        user = result.user
        print(f"passdb: {args.login} auth succeeded")
        print(f"  user    : {user.login} ({user.backend})")
        print(f"  address : {user.address}")
        return 0
    reason = result.failure.value if result.failure is not None else "failed"
    detail = f": {result.message}" if result.message and result.message != reason else ""
    print(f"passdb: {args.login} auth failed: {reason}{detail}", file=sys.stderr)
    return 1


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (CommandError, PasswordSchemeError) as exc:
            print(f"roost: {exc}", file=sys.stderr)
            return 1

    return run


def add_user_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pw``, ``user`` and ``auth`` to the ``roost`` parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    pw = sub.add_parser(
        "pw",
        help="hash a password (like doveadm pw)",
        description="Hash a password for a passwd-file, or test one against a hash.",
        epilog="examples:\n  roost pw\n  roost pw -s BLF-CRYPT\n"
        "  roost pw -t '{SHA512-CRYPT}$6$...'\n  roost pw -l\n",
        formatter_class=formatter,
    )
    pw.add_argument("-s", "--scheme", default="SHA512-CRYPT", help="scheme (default SHA512-CRYPT)")
    pw.add_argument("-p", "--password", help="the password (default: ask without echo)")
    pw.add_argument("-t", "--test", metavar="HASH", help="test the password against HASH")
    pw.add_argument("-l", "--list", action="store_true", help="list the schemes")
    pw.set_defaults(func=_guarded(cmd_pw))

    user = sub.add_parser(
        "user",
        help="add, change, remove, list or look up users",
        description="Manage passwd-file users, or show what the user database answers.",
        epilog="examples:\n  roost user add alice@example.com --quota 1G\n"
        "  roost user passwd alice@example.com\n  roost user list\n"
        "  roost user lookup alice@example.com\n  roost user remove alice@example.com\n",
        formatter_class=formatter,
    )
    user.add_argument("action", choices=["add", "passwd", "remove", "list", "lookup"])
    user.add_argument("login", nargs="?", help="the login name or address")
    user.add_argument("-s", "--scheme", default="SHA512-CRYPT", help="password scheme")
    user.add_argument("-p", "--password", help="the password (default: ask without echo)")
    user.add_argument("--home", help="home directory (passwd-file field 6)")
    user.add_argument("--quota", help="storage quota, e.g. 1G (userdb_quota_rule)")
    user.add_argument("--file", help="the passwd-file (default: the first in auth_backends)")
    user.set_defaults(func=_guarded(cmd_user))

    auth = sub.add_parser(
        "auth",
        help="test a login (like doveadm auth test)",
        description="Check a login and password against the user database.",
        epilog="examples:\n  roost auth test alice@example.com\n  roost auth test alice secret\n",
        formatter_class=formatter,
    )
    auth.add_argument("action", choices=["test"])
    auth.add_argument("login")
    auth.add_argument("password", nargs="?", help="(default: ask without echo)")
    auth.set_defaults(func=_guarded(cmd_auth_test))

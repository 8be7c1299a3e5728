"""~/.forward and :include: files on a real file system, and the expansion reading them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from roost.delivery.aliases import AddressTarget, CommandTarget, Forward, expand_recipient
from roost.delivery.aliasfile import open_alias_maps
from roost.delivery.forward import (
    DEFAULT_FORWARD_PATH,
    find_forward,
    forward_paths,
    parse_forward,
    read_include,
)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="changing owners needs root")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "alice"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    return home


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def paths_for(home: Path, extension: str | None = None) -> list[tuple[Path, bool]]:
    return forward_paths(
        DEFAULT_FORWARD_PATH,
        user="alice",
        home=str(home),
        extension=extension,
        delimiter="+" if extension is not None else "",
    )


def test_parse_forward() -> None:
    text = '# forward\nalice@example.org, \\alice\n"|/usr/bin/vacation alice"\n/tmp/x\n'
    assert parse_forward(text) == (
        "alice@example.org",
        "\\alice",
        "|/usr/bin/vacation alice",
        "/tmp/x",
    )


def test_forward_path_expansion(home: Path) -> None:
    assert paths_for(home) == [(home / ".forward", False)]
    assert paths_for(home, "lists") == [(home / ".forward+lists", True), (home / ".forward", False)]
    custom = forward_paths(
        "/var/forward/${user}, $home/.fw${extension?-x}",
        user="bob",
        home="/home/bob",
        extension=None,
    )
    assert custom == [(Path("/var/forward/bob"), False), (Path("/home/bob/.fw"), True)]


def test_first_existing_forward_is_used(home: Path) -> None:
    write(home / ".forward", "bob@example.org\n")
    found = find_forward(paths_for(home, "lists"), uid=os.geteuid(), home=home)
    assert found.forward == Forward(str(home / ".forward"), ("bob@example.org",), False)
    write(home / ".forward+lists", "lists@example.org\n")
    found = find_forward(paths_for(home, "lists"), uid=os.geteuid(), home=home)
    assert found.forward is not None and found.forward.targets == ("lists@example.org",)
    assert found.forward.extension_matched


def test_no_forward_and_empty_forward(home: Path) -> None:
    assert find_forward(paths_for(home), uid=os.geteuid(), home=home).forward is None
    write(home / ".forward", "# nothing here\n\n")
    found = find_forward(paths_for(home), uid=os.geteuid(), home=home)
    assert found.forward is None and found.warnings == ()


@pytest.mark.parametrize(("mode", "reason"), [(0o664, "group writable"), (0o646, "world writable")])
def test_writable_forward_is_ignored(home: Path, mode: int, reason: str) -> None:
    write(home / ".forward", "evil@example.org\n", mode)
    found = find_forward(paths_for(home), uid=os.geteuid(), home=home)
    assert found.forward is None
    assert found.warnings == (f"file {home / '.forward'} is {reason}; ignored",)


def test_world_writable_home_is_ignored(home: Path) -> None:
    write(home / ".forward", "bob@example.org\n")
    home.chmod(0o777)
    found = find_forward(paths_for(home), uid=os.geteuid(), home=home)
    assert found.forward is None
    assert "home directory" in found.warnings[0] and "world writable" in found.warnings[0]


def test_symlinked_forward_is_ignored(home: Path, tmp_path: Path) -> None:
    write(tmp_path / "elsewhere", "bob@example.org\n")
    (home / ".forward").symlink_to(tmp_path / "elsewhere")
    found = find_forward(paths_for(home), uid=os.geteuid(), home=home)
    assert found.forward is None
    assert "not a regular file" in found.warnings[0]


@needs_root
def test_forward_owner_must_be_the_user_or_root(home: Path) -> None:
    forward = write(home / ".forward", "bob@example.org\n")
    os.chown(forward, 1000, 1000)
    assert find_forward(paths_for(home), uid=1000, home=home).forward is not None
    os.chown(forward, 0, 0)
    assert find_forward(paths_for(home), uid=1000, home=home).forward is not None
    os.chown(forward, 2000, 2000)
    found = find_forward(paths_for(home), uid=1000, home=home)
    assert found.forward is None
    assert found.warnings == (f"file {forward} has bad owner uid 2000; ignored",)


def test_read_include_rules(tmp_path: Path) -> None:
    members = write(tmp_path / "members", "# list\nalice\nbob, carol\n")
    assert read_include(str(members)) == ["# list", "alice", "bob, carol"]
    with pytest.raises(FileNotFoundError):
        read_include(str(tmp_path / "missing"))
    for bad in ("relative/path", str(tmp_path)):
        with pytest.raises(PermissionError) as caught:
            read_include(bad)
        assert caught.value.errno == errno.EPERM
    members.chmod(0o646)
    with pytest.raises(PermissionError, match="world writable"):
        read_include(str(members))


def test_expansion_with_real_files(home: Path, tmp_path: Path) -> None:
    """aliases file -> :include: file -> a user's .forward, all read from disk."""
    aliases = write(
        tmp_path / "aliases",
        f"team: :include:{tmp_path / 'members'}\nowner-team: alice\nbroken line\n",
    )
    write(tmp_path / "members", "alice\nbob@remote.example\n")
    write(home / ".forward", '\\alice, "|/usr/bin/procmail -a $EXTENSION"\n')
    maps = open_alias_maps([f"hash:{aliases}"])
    assert maps.problems == (f"{aliases}:3: need 'name: value' (no colon)",)

    def lookup_forward(user: str, extension: str | None) -> Forward | None:
        if user != "alice":
            return None
        return find_forward(
            forward_paths(DEFAULT_FORWARD_PATH, user=user, home=str(home), extension=extension),
            uid=os.geteuid(),
            home=home,
        ).forward

    result = expand_recipient(
        "Team@Example.com",
        lookup_alias=maps.lookup,
        read_include=read_include,
        is_local_domain=lambda domain: domain == "example.com",
        lookup_forward=lookup_forward,
    )
    assert result.failures == ()
    mailbox, command, remote = result.targets  # depth first: alice's .forward, then bob
    assert isinstance(mailbox, AddressTarget) and mailbox.is_local
    assert mailbox.address == "alice@example.com"
    assert mailbox.chain == ("team@example.com", "alice@example.com")
    assert mailbox.owner == "owner-team@example.com"
    assert isinstance(remote, AddressTarget) and not remote.is_local
    assert isinstance(command, CommandTarget)
    assert command.command == "/usr/bin/procmail -a $EXTENSION"
    assert command.source is not None and command.source.user == "alice"

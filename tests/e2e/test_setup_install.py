"""``roost setup`` and ``make install``, staged into a temp dir (DESTDIR / --destdir).

As root (CI) the ``mail_owner`` account is a new one that setup creates with useradd and
the test removes; as an ordinary user it is that user (nothing needs creating then).
"""

from __future__ import annotations

import os
import pwd
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOST, ROOT, require_program

TARGET = "/opt/roost/bin/roost"


@pytest.fixture
def owner() -> Iterator[str]:
    """The mail_owner name for the test (removed afterwards when setup made it)."""
    if os.geteuid() != 0:
        yield pwd.getpwuid(os.geteuid()).pw_name
        return
    name = f"rps{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def roost_setup(destdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ROOST_CONFIG"}
    return subprocess.run(
        [*ROOST, "setup", "--destdir", str(destdir), "--roost", TARGET, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def check_installed(destdir: Path, owner: str) -> None:
    """What a fresh setup leaves: main.cf, owned private dirs, the key 0600, the links."""
    account = pwd.getpwnam(owner)
    main_cf = destdir / "etc/roost/main.cf"
    assert f"mail_owner = {owner}\n" in main_cf.read_text()
    assert mode(main_cf) == 0o644
    for directory in ("var/spool/roost", "var/lib/roost"):
        info = (destdir / directory).stat()
        assert (info.st_uid, info.st_gid) == (account.pw_uid, account.pw_gid), directory
        assert mode(destdir / directory) == 0o700, directory
    assert mode(destdir / "etc/roost/tls/key.pem") == 0o600
    assert (destdir / "etc/roost/tls/cert.pem").read_text().startswith("-----BEGIN CERTIFICATE")
    for name in ("sendmail", "mailq", "newaliases"):
        link = destdir / "usr/sbin" / name
        assert link.is_symlink() and os.readlink(link) == TARGET, name


def test_setup_twice_does_everything_once(tmp_path: Path, owner: str) -> None:
    first = roost_setup(tmp_path, "--mail-owner", owner, "--hostname", "mx.setup.test")
    assert first.returncode == 0, first.stderr
    assert "wrote" in first.stdout and "linked" in first.stdout
    if os.geteuid() == 0:
        assert f"created mail_owner {owner}" in first.stdout
        assert pwd.getpwnam(owner).pw_shell == "/usr/sbin/nologin"
    check_installed(tmp_path, owner)
    key = (tmp_path / "etc/roost/tls/key.pem").read_bytes()
    second = roost_setup(tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == "roost setup: nothing to do, everything is in place\n"
    assert second.stderr == ""
    check_installed(tmp_path, owner)
    assert (tmp_path / "etc/roost/tls/key.pem").read_bytes() == key  # not regenerated


def test_setup_repairs_modes_and_owners(tmp_path: Path, owner: str) -> None:
    assert roost_setup(tmp_path, "--mail-owner", owner).returncode == 0
    queue = tmp_path / "var/spool/roost"
    queue.chmod(0o777)
    result = roost_setup(tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"fixed queue_directory {queue}: mode 0700" in result.stdout
    check_installed(tmp_path, owner)


def test_setup_leaves_another_mta_sendmail_alone_unless_forced(tmp_path: Path, owner: str) -> None:
    sbin = tmp_path / "usr/sbin"
    sbin.mkdir(parents=True)
    (sbin / "sendmail").write_text("#!/bin/sh\n# postfix's\n")
    result = roost_setup(tmp_path, "--mail-owner", owner)
    assert result.returncode == 0, result.stderr
    assert "sendmail exists and is not a link" in result.stderr
    assert (sbin / "sendmail").read_text() == "#!/bin/sh\n# postfix's\n"
    assert os.readlink(sbin / "mailq") == TARGET
    forced = roost_setup(tmp_path, "--force-links")
    assert forced.returncode == 0, forced.stderr
    assert os.readlink(sbin / "sendmail") == TARGET


def test_make_install_into_a_staging_directory(tmp_path: Path, owner: str) -> None:
    make = require_program("make")
    destdir = tmp_path / "stage"
    result = subprocess.run(
        [
            make,
            "-C",
            str(ROOT),
            "install",
            f"DESTDIR={destdir}",
            f"PYTHON={sys.executable}",
            f"SETUP_ARGS=--mail-owner {owner} --hostname mx.install.test",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "ROOST_CONFIG"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    roost = destdir / "opt/roost/bin/roost"
    version = subprocess.run([roost, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("roost ")
    check_installed(destdir, owner)
    assert (destdir / "opt/roost/share/roost/roost.service").is_file()
    assert (destdir / "etc/pam.d/roost").is_file()
    # the installed roost runs setup again: nothing left to do
    again = subprocess.run(
        [roost, "setup", "--destdir", str(destdir), "--roost", TARGET],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout

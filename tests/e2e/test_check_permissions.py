"""``roost check`` reports unsafe owners and modes, like ``postfix check``.

Each test starts from an instance that checks clean, breaks one thing, and looks for the
finding. The "started as root" findings (owners, mail_owner) need root and a real
``mail_owner`` made with useradd (removed afterwards); they are skipped otherwise.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.tls import generate_selfsigned
from tests.conftest import ROOST, ROOT, STAY_ROOT_ENV

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, chown)")


@pytest.fixture(scope="module")
def mail_owner() -> Iterator[str]:
    if os.geteuid() != 0:
        yield "roost"
        return
    name = f"rpc{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell",
         "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def instance(directory: Path, mail_owner: str, extra: str = "") -> Path:
    """A configuration whose files have the owners and modes roost setup gives them."""
    etc = directory / "etc"
    etc.mkdir(mode=0o755)
    (etc / "aliases").write_text("postmaster: root\n")
    generate_selfsigned("mx.check.test", etc / "tls/cert.pem", etc / "tls/key.pem")
    config = etc / "main.cf"
    config.write_text(
        "myhostname = mx.check.test\n"
        "inet_interfaces = 127.0.0.1\n"
        f"queue_directory = {directory}/spool\n"
        f"data_directory = {directory}/lib\n"
        f"alias_maps = texthash:{etc}/aliases\n"
        f"mail_owner = {mail_owner}\n"
        f"{extra}"
    )
    config.chmod(0o644)
    for name in ("spool", "spool/incoming", "lib"):
        (directory / name).mkdir(mode=0o700)
        if os.geteuid() == 0:
            subprocess.run(["chown", f"{mail_owner}:", str(directory / name)], check=True)
    return config


def check(config: Path, *, as_root_daemon: bool) -> tuple[int, str]:
    """Run ``roost check``; ``as_root_daemon``: as roost serve would run (privsep)."""
    env = dict(os.environ)
    if as_root_daemon:
        env.pop(STAY_ROOT_ENV, None)
    else:
        env[STAY_ROOT_ENV] = "1"
    result = subprocess.run(
        [*ROOST, "-c", str(config), "check", "--no-listen"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    return result.returncode, result.stderr


@pytest.fixture
def config(tmp_path: Path, mail_owner: str) -> Path:
    path = instance(tmp_path, mail_owner)
    for as_root_daemon in (False, True) if os.geteuid() == 0 else (False,):
        status, stderr = check(path, as_root_daemon=as_root_daemon)
        assert (status, stderr) == (0, ""), stderr  # the starting point is clean
    return path


def test_world_writable_queue_directory_is_an_error(config: Path) -> None:
    queue = config.parent.parent / "spool"
    queue.chmod(0o777)
    status, stderr = check(config, as_root_daemon=False)
    assert status == 1
    assert f"{queue}: queue_directory is writable by every user" in stderr


def test_world_writable_queue_subdirectory_is_an_error(config: Path) -> None:
    incoming = config.parent.parent / "spool/incoming"
    incoming.chmod(0o777)
    status, stderr = check(config, as_root_daemon=False)
    assert status == 1
    assert f"{incoming}: queue subdirectory writable by every user" in stderr


def test_group_writable_queue_and_open_data_directory_are_warnings(config: Path) -> None:
    base = config.parent.parent
    (base / "spool").chmod(0o770)
    (base / "lib").chmod(0o755)
    status, stderr = check(config, as_root_daemon=False)
    assert status == 0
    assert f"{base}/spool: queue_directory is group-writable" in stderr
    assert f"{base}/lib: data_directory is accessible by other users (mode 0755)" in stderr


def test_key_readable_by_others_is_an_error(config: Path) -> None:
    key = config.parent / "tls/key.pem"
    key.chmod(0o644)
    status, stderr = check(config, as_root_daemon=False)
    assert status == 1
    assert f"{key}: readable by other users (mode 0644)" in stderr


def test_certificate_writable_by_others_is_an_error(config: Path) -> None:
    cert = config.parent / "tls/cert.pem"
    cert.chmod(0o666)
    status, stderr = check(config, as_root_daemon=False)
    assert status == 1
    assert f"{cert}: writable by every user (mode 0666)" in stderr


def test_world_writable_alias_file_is_an_error(config: Path) -> None:
    aliases = config.parent / "aliases"
    aliases.chmod(0o666)
    status, stderr = check(config, as_root_daemon=False)
    assert status == 1
    assert f"{aliases}: alias file writable by every user" in stderr


def test_group_writable_main_cf_is_a_warning_and_an_error_for_a_root_daemon(
    config: Path,
) -> None:
    config.chmod(0o664)
    status, stderr = check(config, as_root_daemon=False)
    assert status == 0
    assert f"warning: {config}: writable by its group (mode 0664)" in stderr
    if os.geteuid() == 0:
        status, stderr = check(config, as_root_daemon=True)
        assert status == 1
        assert f"roost: {config}: writable by its group (mode 0664)" in stderr


@needs_root
def test_main_cf_owned_by_mail_owner_is_an_error(config: Path, mail_owner: str) -> None:
    subprocess.run(["chown", mail_owner, str(config)], check=True)
    status, stderr = check(config, as_root_daemon=True)
    assert status == 1
    assert f"{config}: owned by uid" in stderr and "writable by a user other than root" in stderr


@needs_root
def test_queue_not_owned_by_mail_owner_is_reported(config: Path, mail_owner: str) -> None:
    queue = config.parent.parent / "spool"
    os.chown(queue, 0, 0)
    status, stderr = check(config, as_root_daemon=True)
    assert status == 0
    assert f"{queue}: queue_directory is owned by uid 0, not mail_owner {mail_owner}" in stderr
    assert check(config, as_root_daemon=False) == (0, "")  # a daemon that stays root


@needs_root
@pytest.mark.parametrize(
    ("line", "finding"),
    [
        ("mail_owner = nosuchuser-rc\n", "mail_owner = nosuchuser-rc: no such user"),
        ("mail_owner = root\n", "mail_owner = root: must not be root"),
        ("default_privs = root\n", "default_privs = root: must not be root"),
    ],
)
def test_unusable_accounts_are_errors_for_a_root_daemon(
    tmp_path: Path, mail_owner: str, line: str, finding: str
) -> None:
    config = instance(tmp_path, mail_owner)
    with config.open("a") as handle:
        handle.write(line)
    status, stderr = check(config, as_root_daemon=True)
    assert status == 1
    assert finding in stderr


@needs_root
def test_default_privs_equal_to_mail_owner_is_an_error(tmp_path: Path, mail_owner: str) -> None:
    config = instance(tmp_path, mail_owner, f"default_privs = {mail_owner}\n")
    status, stderr = check(config, as_root_daemon=True)
    assert status == 1
    assert f"default_privs = {mail_owner}: must not be mail_owner" in stderr

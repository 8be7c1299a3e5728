"""PamBackend against the real Linux-PAM stack, with a system user created for the test.

Root only (skipped otherwise): the tests create a user with useradd (removed afterwards)
and install PAM service files /etc/pam.d/roost-test-* (removed afterwards):

* a pam_pwdfile service (Debian package ``libpam-pwdfile``) reading a password file the
  test writes with a SHA-512 crypt hash;
* a copy of the shipped etc/pam.d/roost (common-auth, common-account: pam_unix and
  /etc/shadow), the user's password set with chpasswd.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.auth.pam import PamBackend
from roost.auth.schemes import hash_password
from roost.auth.users import FailureReason, UserDatabase
from tests.conftest import ROOT, require_program

PASSWORD = "Pam-Test pässword 42"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="PAM tests create a user and files in /etc/pam.d: root only"
)


def require_pam_module(name: str) -> str:
    """The path of a PAM module; skip locally, fail in CI when it is not installed."""
    found = glob.glob(f"/lib/*/security/{name}") + glob.glob(f"/usr/lib/*/security/{name}")
    if not found:
        message = f"PAM module {name} is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, but .ci/run should have installed it")
        pytest.skip(message)
    return found[0]


@pytest.fixture(scope="module")
def system_user() -> Iterator[pwd.struct_passwd]:
    """A fresh system user (uid >= 1000, no home, nologin shell) with PASSWORD set."""
    useradd = require_program("useradd")
    userdel = require_program("userdel")
    chpasswd = require_program("chpasswd")
    name = f"roosttest{secrets.token_hex(4)}"
    subprocess.run(
        [
            useradd,
            "--no-create-home",
            "--home-dir",
            f"/nonexistent/{name}",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
    )
    try:
        subprocess.run([chpasswd], input=f"{name}:{PASSWORD}\n", text=True, check=True)
        yield pwd.getpwnam(name)
    finally:
        subprocess.run([userdel, name], check=False)


def install_service(text: str) -> Iterator[str]:
    service = f"roost-test-{secrets.token_hex(4)}"
    path = Path("/etc/pam.d") / service
    path.write_text(text)
    try:
        yield service
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def pwdfile_service(tmp_path: Path, system_user: pwd.struct_passwd) -> Iterator[str]:
    """A PAM service checking passwords against a file with the user's SHA-512 crypt hash."""
    require_pam_module("pam_pwdfile.so")
    crypt_hash = hash_password(PASSWORD, "SHA512-CRYPT").removeprefix("{SHA512-CRYPT}")
    pwdfile = tmp_path / "pwdfile"
    pwdfile.write_text(f"{system_user.pw_name}:{crypt_hash}\n")
    yield from install_service(
        f"auth required pam_pwdfile.so pwdfile={pwdfile} nodelay\naccount required pam_permit.so\n"
    )


@pytest.fixture
def shipped_service() -> Iterator[str]:
    """The shipped etc/pam.d/roost, installed under a test name."""
    require_pam_module("pam_unix.so")
    yield from install_service((ROOT / "etc" / "pam.d" / "roost").read_text())


def test_pwdfile_success(pwdfile_service: str, system_user: pwd.struct_passwd) -> None:
    backend = PamBackend(pwdfile_service, default_domain="roost.test")
    result = backend.verify(system_user.pw_name, PASSWORD)
    assert result.ok, result.message
    assert result.user is not None
    assert result.user.login == system_user.pw_name
    assert result.user.address == f"{system_user.pw_name}@roost.test"
    assert (result.user.uid, result.user.gid) == (system_user.pw_uid, system_user.pw_gid)
    assert result.user.backend == f"pam:{pwdfile_service}"
    assert result.user == backend.lookup(system_user.pw_name)


def test_pwdfile_wrong_password(pwdfile_service: str, system_user: pwd.struct_passwd) -> None:
    result = PamBackend(pwdfile_service).verify(system_user.pw_name, PASSWORD + "!")
    assert result.failure is FailureReason.BAD_PASSWORD
    assert PASSWORD not in result.message


def test_unknown_user_is_not_asked_to_pam(pwdfile_service: str) -> None:
    backend = PamBackend(pwdfile_service)
    assert backend.verify("roost-no-such-user", PASSWORD).failure is FailureReason.UNKNOWN_USER
    assert backend.lookup("roost-no-such-user") is None


def test_system_user_missing_from_the_pwdfile(
    tmp_path: Path, system_user: pwd.struct_passwd
) -> None:
    require_pam_module("pam_pwdfile.so")
    empty = tmp_path / "empty-pwdfile"
    empty.write_text("")
    for service in install_service(
        f"auth required pam_pwdfile.so pwdfile={empty} nodelay\naccount required pam_permit.so\n"
    ):
        result = PamBackend(service).verify(system_user.pw_name, PASSWORD)
        assert result.failure in (FailureReason.UNKNOWN_USER, FailureReason.BAD_PASSWORD)
        assert not result.ok


def test_empty_password_fails_without_pam(
    pwdfile_service: str, system_user: pwd.struct_passwd
) -> None:
    result = PamBackend(pwdfile_service).verify(system_user.pw_name, "")
    assert result.failure is FailureReason.BAD_PASSWORD
    assert "empty password" in result.message


def test_local_domain_logins(pwdfile_service: str, system_user: pwd.struct_passwd) -> None:
    backend = PamBackend(pwdfile_service, local_domains=["mx.roost.test", "localhost"])
    assert backend.verify(f"{system_user.pw_name}@MX.roost.test", PASSWORD).ok
    other = backend.verify(f"{system_user.pw_name}@elsewhere.test", PASSWORD)
    assert other.failure is FailureReason.UNKNOWN_USER


def test_first_valid_uid(pwdfile_service: str, system_user: pwd.struct_passwd) -> None:
    backend = PamBackend(pwdfile_service, first_valid_uid=system_user.pw_uid + 1)
    assert backend.lookup(system_user.pw_name) is None
    assert backend.verify(system_user.pw_name, PASSWORD).failure is FailureReason.UNKNOWN_USER
    assert PamBackend(pwdfile_service).lookup("root") is None  # uid 0 < 500


async def test_through_the_user_database(
    pwdfile_service: str, system_user: pwd.struct_passwd
) -> None:
    database = UserDatabase([PamBackend(pwdfile_service)], default_realm="roost.test")
    result = await database.verify(system_user.pw_name, PASSWORD)
    assert result.ok
    wrong = await database.verify(system_user.pw_name, "nope")
    assert wrong.failure is FailureReason.BAD_PASSWORD


def test_shipped_service_file_with_pam_unix(
    shipped_service: str, system_user: pwd.struct_passwd
) -> None:
    backend = PamBackend(shipped_service)
    assert backend.verify(system_user.pw_name, PASSWORD).ok
    wrong = backend.verify(system_user.pw_name, "Wrong-" + PASSWORD)  # pam_unix waits ~2 s
    assert wrong.failure is FailureReason.BAD_PASSWORD


def test_expired_account_is_disabled(tmp_path: Path, system_user: pwd.struct_passwd) -> None:
    """pam_acct_mgmt runs after a right password: pam_unix's account check sees expiry.

    (Through common-auth an expired account already fails in pam_authenticate, masked as
    a plain authentication failure by pam_deny, so the account stack is tested here with
    pam_pwdfile for the password and pam_unix for the account.)
    """
    require_pam_module("pam_pwdfile.so")
    usermod = require_program("usermod")
    crypt_hash = hash_password(PASSWORD, "SHA512-CRYPT").removeprefix("{SHA512-CRYPT}")
    pwdfile = tmp_path / "pwdfile"
    pwdfile.write_text(f"{system_user.pw_name}:{crypt_hash}\n")
    for service in install_service(
        f"auth required pam_pwdfile.so pwdfile={pwdfile} nodelay\naccount required pam_unix.so\n"
    ):
        backend = PamBackend(service)
        assert backend.verify(system_user.pw_name, PASSWORD).ok
        subprocess.run([usermod, "--expiredate", "1970-01-02", system_user.pw_name], check=True)
        try:
            result = backend.verify(system_user.pw_name, PASSWORD)
            assert result.failure is FailureReason.DISABLED, result.message
            assert "PAM code 13" in result.message  # PAM_ACCT_EXPIRED
        finally:
            subprocess.run([usermod, "--expiredate", "", system_user.pw_name], check=True)

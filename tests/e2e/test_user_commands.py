"""``roost pw``, ``roost user ...`` and ``roost auth test`` (doveadm pw/user/auth test)."""

from __future__ import annotations

from pathlib import Path

from roost.auth.schemes import verify_password
from tests.e2e.daemon import roost_cli


def config(tmp_path: Path) -> Path:
    main_cf = tmp_path / "main.cf"
    (tmp_path / "aliases").write_text("postmaster: alice@example.com\n")
    main_cf.write_text(
        f"auth_backends = passwd-file:{tmp_path}/users\n"
        "virtual_mailbox_domains = example.com\n"
        "mail_location = maildir:/var/vmail/%d/%n/Maildir\n"
        f"alias_maps = texthash:{tmp_path}/aliases\n"
    )
    return main_cf


def test_pw_hashes_like_doveadm_and_tests_a_hash(tmp_path: Path) -> None:
    made = roost_cli(config(tmp_path), "pw", "-p", "s3cret", "-s", "BLF-CRYPT")
    assert made.returncode == 0
    hashed = made.stdout.strip()
    assert hashed.startswith("{BLF-CRYPT}$2y$")
    assert verify_password("s3cret", hashed)
    assert roost_cli(config(tmp_path), "pw", "-p", "s3cret", "-t", hashed).returncode == 0
    wrong = roost_cli(config(tmp_path), "pw", "-p", "other", "-t", hashed)
    assert wrong.returncode == 1 and "password mismatch" in wrong.stderr
    listed = roost_cli(config(tmp_path), "pw", "-l").stdout.split()
    assert {"SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID", "PBKDF2", "SSHA512", "PLAIN"} <= set(listed)
    unknown = roost_cli(config(tmp_path), "pw", "-p", "x", "-s", "NOPE")
    assert unknown.returncode == 1 and "unknown password scheme" in unknown.stderr


def test_user_add_passwd_remove_list_keep_other_lines(tmp_path: Path) -> None:
    main_cf = config(tmp_path)
    users = tmp_path / "users"
    users.write_text("# users of example.com\nold@example.com:{PLAIN}x::::::\n")
    assert roost_cli(main_cf, "user", "add", "alice@example.com", "-p", "pw1", "--quota", "1G")
    assert roost_cli(main_cf, "user", "list").stdout.split() == [
        "old@example.com",
        "alice@example.com",
    ]
    lines = users.read_text().splitlines()
    assert lines[:2] == ["# users of example.com", "old@example.com:{PLAIN}x::::::"]
    assert lines[2].startswith("alice@example.com:{SHA512-CRYPT}$6$")
    assert lines[2].endswith(":::::userdb_quota_rule=*:storage=1G")
    assert users.stat().st_mode & 0o777 == 0o644  # the file's mode is kept
    fresh = tmp_path / "fresh-users"
    made = roost_cli(main_cf, "user", "add", "x@example.com", "-p", "x", "--file", str(fresh))
    assert made.returncode == 0
    assert fresh.stat().st_mode & 0o777 == 0o600  # a new file is private
    again = roost_cli(main_cf, "user", "add", "alice@example.com", "-p", "x")
    assert again.returncode == 1 and "exists" in again.stderr
    assert roost_cli(main_cf, "auth", "test", "alice@example.com", "pw1").returncode == 0
    assert roost_cli(main_cf, "user", "passwd", "alice@example.com", "-p", "pw2").returncode == 0
    failed = roost_cli(main_cf, "auth", "test", "alice@example.com", "pw1")
    assert failed.returncode == 1
    assert failed.stderr == "passdb: alice@example.com auth failed: password mismatch\n"
    assert roost_cli(main_cf, "auth", "test", "alice@example.com", "pw2").returncode == 0
    assert roost_cli(main_cf, "user", "remove", "old@example.com").returncode == 0
    assert roost_cli(main_cf, "user", "list").stdout.split() == ["alice@example.com"]


def test_user_lookup_explains_the_answer(tmp_path: Path) -> None:
    main_cf = config(tmp_path)
    roost_cli(main_cf, "user", "add", "alice@example.com", "-p", "pw", "--quota", "1G")
    found = roost_cli(main_cf, "user", "lookup", "alice@example.com")
    assert found.returncode == 0
    assert "  backend  : passwd-file:" in found.stdout
    assert "  mail     : maildir:/var/vmail/example.com/alice/Maildir" in found.stdout
    assert "  quota    : 1073741824 bytes" in found.stdout
    assert "router: alice@example.com: virtual destination" in found.stdout
    missing = roost_cli(main_cf, "user", "lookup", "postmaster@localhost")
    assert missing.returncode == 1
    assert "userdb: postmaster@localhost: no such user" in missing.stdout
    assert "local destination (alias: alice@example.com)" in missing.stdout
    unknown = roost_cli(main_cf, "auth", "test", "nobody@example.com", "x")
    assert unknown.returncode == 1 and "auth failed: unknown" in unknown.stderr

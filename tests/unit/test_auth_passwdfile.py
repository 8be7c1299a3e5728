"""Unit tests for roost.auth.passwdfile: the Dovecot passwd-file backend, on real files."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.auth.passwdfile import (
    LOOKUP_RECHECK_SECONDS,
    PasswdFileBackend,
    hash_password,
    parse_passwd_file,
    parse_quota_rule,
    retain_preloaded,
)
from roost.auth.users import (
    FailureReason,
    LookupWouldBlock,
    User,
    UserBackendError,
    UserDatabase,
)

SECRET = "Tr0ub4dor&3"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    sha = hash_password(SECRET, "SHA512-CRYPT")
    blf = hash_password(SECRET, "BLF-CRYPT")
    return write(
        tmp_path / "users",
        "# roost users\n"
        "\n"
        f"alice@example.com:{sha}:5000:5000:Alice:/home/alice::"
        "userdb_mail=maildir:~/Maildir userdb_quota_rule=*:storage=1G\n"
        f"bob:{{PLAIN}}{SECRET}\n"
        f"carol@example.com:{blf}:5001:5001::/var/vmail/carol::nologin reason=moved\n"
        f"dave@example.com:{{SSHA512}}{hash_password(SECRET, 'SSHA512').split('}')[1]}"
        ":5002:5002::/var/vmail/dave:/bin/false:"
        "userdb_mail=maildir:/var/vmail/%d/%n/Maildir allow_nets=192.0.2.0/24 extra=kept\n",
    )


# --- reading ------------------------------------------------------------------------------


def test_full_and_short_lines(users_file: Path) -> None:
    backend = PasswdFileBackend(users_file, default_domain="Example.COM")
    alice = backend.lookup("alice@example.com")
    assert alice is not None
    assert alice.login == "alice@example.com"
    assert alice.address == "alice@example.com"
    assert (alice.uid, alice.gid, alice.home) == (5000, 5000, "/home/alice")
    assert alice.mail_location == "maildir:/home/alice/Maildir"
    assert alice.quota_bytes == 1024**3
    assert alice.backend == f"passwd-file:{users_file}"
    assert alice.extra["userdb_quota_rule"] == "*:storage=1G"

    bob = backend.lookup("bob")
    assert bob is not None
    assert bob.address == "bob@example.com"
    assert (bob.uid, bob.gid, bob.home, bob.mail_location, bob.quota_bytes) == (None,) * 5

    dave = backend.lookup("dave@example.com")
    assert dave is not None
    assert dave.mail_location == "maildir:/var/vmail/example.com/dave/Maildir"
    assert dave.extra["extra"] == "kept"
    assert backend.problems == ()


def test_lookup_is_case_insensitive_and_keeps_file_spelling(tmp_path: Path) -> None:
    backend = PasswdFileBackend(write(tmp_path / "u", "Alice@Example.com:{PLAIN}x\n"))
    user = backend.lookup("alice@example.com")
    assert user is not None and user.login == "Alice@Example.com"
    assert user.address == "Alice@example.com"
    assert backend.lookup("ALICE@EXAMPLE.COM") == user
    assert backend.lookup("alice") is None


def test_bare_login_without_default_domain_keeps_bare_address(tmp_path: Path) -> None:
    backend = PasswdFileBackend(write(tmp_path / "u", "bob:{PLAIN}x\n"))
    user = backend.lookup("bob")
    assert user is not None and user.address == "bob"


def test_old_format_mail_field(tmp_path: Path) -> None:
    path = write(tmp_path / "u", "u:{PLAIN}x:1000:1000::/home/u:/bin/sh::maildir:~/Mail\n")
    user = PasswdFileBackend(path).lookup("u")
    assert user is not None and user.mail_location == "maildir:/home/u/Mail"


def test_userdb_fields_override_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "u",
        "u:{PLAIN}x:1000:1000::/home/u::userdb_uid=2000 userdb_gid=3000 userdb_home=/srv/u "
        "userdb_mail=maildir:~/M\n",
    )
    user = PasswdFileBackend(path).lookup("u")
    assert user is not None
    assert (user.uid, user.gid, user.home, user.mail_location) == (
        2000,
        3000,
        "/srv/u",
        "maildir:/srv/u/M",
    )


def test_crlf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "u"
    path.write_bytes(b"a:{PLAIN}x\r\nb:{PLAIN}y\r\n")
    backend = PasswdFileBackend(path)
    assert backend.verify("a", "x").ok and backend.verify("b", "y").ok


def test_secret_extra_fields_are_dropped(tmp_path: Path) -> None:
    path = write(tmp_path / "u", "u:{PLAIN}x::::::proxy pass=upstream-secret host=10.0.0.1\n")
    user = PasswdFileBackend(path).lookup("u")
    assert user is not None
    assert "pass" not in user.extra and user.extra["host"] == "10.0.0.1"
    assert user.extra["proxy"] == ""
    assert "upstream-secret" not in repr(user)


# --- errors on lines ---------------------------------------------------------------------


def test_bad_lines_are_reported_with_file_and_line_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path / "users",
        "good:{PLAIN}x\n"
        "baduid:{PLAIN}x:abc:1000\n"
        ":{PLAIN}nobody\n"
        "root:{PLAIN}x:0:0\n"
        "nohome:{PLAIN}x:1:1::::userdb_mail=maildir:~/Maildir\n"
        "relhome:{PLAIN}x:1:1::home/rel\n"
        "badquota:{PLAIN}x::::::userdb_quota_rule=*:storage=1Q\n"
        "badnets:{PLAIN}x::::::allow_nets=999.0.0.0/8\n"
        "badvar:{PLAIN}x:1:1::/h::userdb_mail=maildir:/x/%z\n"
        "good:{PLAIN}second\n"
        "also good:{PLAIN}x\n"
        "fine:{PLAIN}y\n",
    )
    backend = PasswdFileBackend(path)
    with caplog.at_level(logging.WARNING, logger="roost.auth.passwdfile"):
        assert backend.verify("good", "x").ok
    assert backend.verify("fine", "y").ok
    problems = {problem.line: str(problem) for problem in backend.problems}
    assert set(problems) == {2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
    assert problems[2] == f"{path}:2: uid 'abc' is not a number"
    assert problems[3] == f"{path}:3: empty user name"
    assert problems[4].startswith(f"{path}:4: invalid uid 0")
    assert "home" in problems[5]
    assert "absolute" in problems[6]
    assert "quota" in problems[7]
    assert "allow_nets" in problems[8]
    assert "%z" in problems[9]
    assert "more than once (line 1 is used)" in problems[10]
    assert "invalid user name" in problems[11]
    for name in ("baduid", "root", "nohome", "relhome", "badquota", "badnets", "badvar"):
        assert backend.lookup(name) is None
    assert not backend.verify("good", "second").ok  # the first line wins
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"{path}:2: uid 'abc' is not a number" in logged
    assert "nobody" not in logged


def test_invalid_utf8_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "u"
    path.write_bytes(b"a:{PLAIN}\xff\nb:{PLAIN}y\n")
    backend = PasswdFileBackend(path)
    assert backend.lookup("a") is None and backend.verify("b", "y").ok
    assert [str(p) for p in backend.problems] == [f"{path}:1: not valid UTF-8"]


def test_unusable_passwords_are_warned_about_but_users_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path / "u",
        "weak:{PLAIN-MD5}5f4dcc3b5aa765d61d8327deb882cf99\n"
        "odd:{NOPE}whatever\n"
        "np:::::::nopassword\n",
    )
    backend = PasswdFileBackend(path)
    assert backend.lookup("weak") is not None and backend.lookup("np") is not None
    messages = [str(p) for p in backend.problems]
    assert any("weak password scheme PLAIN-MD5" in m for m in messages)
    assert any("unknown password scheme 'NOPE'" in m for m in messages)
    assert any("nopassword is not supported" in m for m in messages)
    assert not any(p.skipped for p in backend.problems)
    assert "whatever" not in "".join(messages)


def test_parse_passwd_file_is_pure() -> None:
    parsed = parse_passwd_file(b"a:{PLAIN}x\n#c\n\n", path="mem")
    assert list(parsed.entries) == ["a"]
    assert parsed.entries["a"].line == 1


# --- verification -------------------------------------------------------------------------


def test_verify_outcomes(users_file: Path) -> None:
    backend = PasswdFileBackend(users_file)
    assert backend.verify("alice@example.com", SECRET).ok
    assert backend.verify("Alice@Example.com", SECRET).ok
    assert backend.verify("bob", SECRET).ok
    assert backend.verify("dave@example.com", SECRET).ok

    wrong = backend.verify("alice@example.com", SECRET + "x")
    assert wrong.failure is FailureReason.BAD_PASSWORD
    unknown = backend.verify("zoe@example.com", SECRET)
    assert unknown.failure is FailureReason.UNKNOWN_USER

    disabled = backend.verify("carol@example.com", SECRET)
    assert disabled.failure is FailureReason.DISABLED and "moved" in disabled.message
    # nologin does not reveal itself to someone without the password
    carol_wrong = backend.verify("carol@example.com", "guess")
    assert carol_wrong.failure is FailureReason.BAD_PASSWORD


def test_empty_password_field_never_logs_in(tmp_path: Path) -> None:
    backend = PasswdFileBackend(write(tmp_path / "u", "deliveryonly::1000:1000::/home/d\n"))
    assert backend.lookup("deliveryonly") is not None
    for attempt in ("", "x"):
        assert backend.verify("deliveryonly", attempt).failure is FailureReason.BAD_PASSWORD


def test_unusable_hash_is_a_backend_error_without_the_hash(tmp_path: Path) -> None:
    path = write(
        tmp_path / "u", "u:{NOPE}topsecrethash\nw:{PLAIN-MD5}5f4dcc3b5aa765d61d8327deb882cf99\n"
    )
    backend = PasswdFileBackend(path)
    result = backend.verify("u", "pw")
    assert result.failure is FailureReason.BACKEND_ERROR
    assert f"{path}:1" in result.message and "topsecrethash" not in result.message
    assert backend.verify("w", "password").failure is FailureReason.BACKEND_ERROR
    weak_ok = PasswdFileBackend(path, allow_weak_schemes=True)
    assert weak_ok.verify("w", "password").ok


def test_bare_hash_uses_crypt_default(tmp_path: Path) -> None:
    sha = hash_password(SECRET, "SHA512-CRYPT").removeprefix("{SHA512-CRYPT}")
    backend = PasswdFileBackend(write(tmp_path / "u", f"u:{sha}\n"))
    assert backend.verify("u", SECRET).ok
    plain_default = PasswdFileBackend(write(tmp_path / "p", "u:clear\n"), default_scheme="PLAIN")
    assert plain_default.verify("u", "clear").ok


def test_hash_never_in_repr(users_file: Path) -> None:
    backend = PasswdFileBackend(users_file)
    entry = backend.load().entries["bob"]
    assert SECRET not in repr(entry)
    assert SECRET not in repr(backend.load())
    assert SECRET not in repr(backend.verify("bob", SECRET))
    assert SECRET not in repr(backend)


# --- re-reading ---------------------------------------------------------------------------


def test_rereads_when_content_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "u", "a:{PLAIN}one\n")
    backend = PasswdFileBackend(path)
    assert backend.verify("a", "one").ok
    write(path, "a:{PLAIN}two\nb:{PLAIN}three\n")
    assert backend.verify("a", "two").ok
    assert backend.lookup("b") is not None


def test_rereads_on_same_size_when_mtime_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "u", "a:{PLAIN}one\n")
    backend = PasswdFileBackend(path)
    assert backend.verify("a", "one").ok
    before = path.stat()
    write(path, "a:{PLAIN}two\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert backend.verify("a", "two").ok


def test_rereads_on_new_inode_with_same_size_and_mtime(tmp_path: Path) -> None:
    path = write(tmp_path / "u", "a:{PLAIN}one\n")
    backend = PasswdFileBackend(path)
    assert backend.verify("a", "one").ok
    before = path.stat()
    replacement = write(tmp_path / "u.new", "a:{PLAIN}two\n")
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, path)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ino != before.st_ino
    assert backend.verify("a", "two").ok


def test_does_not_reread_unchanged_file(tmp_path: Path) -> None:
    path = write(tmp_path / "u", "a:{PLAIN}one\n")
    backend = PasswdFileBackend(path)
    first = backend.load()
    assert backend.load() is first


def test_missing_file_is_a_backend_error(tmp_path: Path) -> None:
    backend = PasswdFileBackend(tmp_path / "missing")
    result = backend.verify("a", "x")
    assert result.failure is FailureReason.BACKEND_ERROR
    with pytest.raises(UserBackendError):
        backend.lookup("a")


def test_file_removed_after_loading_is_a_backend_error(tmp_path: Path) -> None:
    path = write(tmp_path / "u", "a:{PLAIN}one\n")
    backend = PasswdFileBackend(path)
    assert backend.verify("a", "one").ok
    path.unlink()
    assert backend.verify("a", "one").failure is FailureReason.BACKEND_ERROR


def test_entries_are_parsed_again_from_their_lines() -> None:
    data = (
        b"# users\r\n"
        b"a@x.test:{PLAIN}one:1001:1001::/home/a::userdb_quota_rule=*:storage=1K\r\n"
        b"broken:{PLAIN}x:notanumber\n"
        b"\n"
        b"A@X.test:{PLAIN}second\n"
        b"b:{PLAIN}two::::::nologin reason=gone\n"
        b"c:{PLAIN}three"  # no newline at the end
    )
    parsed = parse_passwd_file(data, path="mem", default_domain="d.test")
    assert list(parsed.entries) == ["a@x.test", "b", "c"]
    assert len(parsed.entries) == 3 and "b" in parsed.entries and "zoe" not in parsed.entries
    assert parsed.entries.get("zoe") is None
    a = parsed.entries["a@x.test"]  # the first of the two lines, without its \r
    assert (a.line, a.password, a.user.uid, a.user.home) == (2, "{PLAIN}one", 1001, "/home/a")
    assert a.user.quota_bytes == 1024 and a.user.backend == "passwd-file:mem"
    b = parsed.entries["b"]
    assert (b.line, b.nologin, b.reason, b.user.address) == (6, True, "gone", "b@d.test")
    c = parsed.entries["c"]
    assert (c.line, c.password) == (7, "{PLAIN}three")
    assert parsed.entries["c"] == c  # each read is a new record of the same line
    assert [p.line for p in parsed.problems] == [3, 5]


# --- reading before the fork (preload) ----------------------------------------------------


@pytest.fixture
def no_preloaded() -> Iterator[None]:
    retain_preloaded([])
    yield
    retain_preloaded([])


def reads(caplog: pytest.LogCaptureFixture) -> int:
    return sum("read" in record.getMessage() for record in caplog.records)


def test_a_preloaded_file_is_not_read_again_by_later_backends(
    tmp_path: Path, no_preloaded: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "u", "a:{PLAIN}one\n")
    with caplog.at_level(logging.INFO, logger="roost.auth.passwdfile"):
        assert PasswdFileBackend(path, default_domain="d.test").preload()
        assert reads(caplog) == 1
        later = PasswdFileBackend(path, default_domain="d.test")
        assert later.verify("a", "one").ok
        user = later.lookup("a")
        assert user is not None and user.address == "a@d.test"
        assert reads(caplog) == 1
        # other settings shape the parse otherwise: that backend reads the file itself
        other = PasswdFileBackend(path, default_domain="e.test")
        user = other.lookup("a")
        assert user is not None and user.address == "a@e.test"
        assert reads(caplog) == 2


def test_a_preloaded_file_that_changed_is_read_again(
    tmp_path: Path, no_preloaded: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "u", "a:{PLAIN}one\n")
    assert PasswdFileBackend(path).preload()
    write(path, "a:{PLAIN}two\nb:{PLAIN}three\n")
    with caplog.at_level(logging.INFO, logger="roost.auth.passwdfile"):
        backend = PasswdFileBackend(path)
        assert not backend.verify("a", "one").ok
        assert backend.verify("a", "two").ok
        assert backend.lookup("b") is not None
        assert reads(caplog) == 1
        # the new read replaced the kept one: the next backend starts from it
        assert PasswdFileBackend(path).verify("b", "three").ok
        assert reads(caplog) == 1


def test_a_preloaded_file_removed_later_is_a_backend_error(
    tmp_path: Path, no_preloaded: None
) -> None:
    path = write(tmp_path / "u", "a:{PLAIN}one\n")
    assert PasswdFileBackend(path).preload()
    path.unlink()
    backend = PasswdFileBackend(path)
    assert backend.verify("a", "one").failure is FailureReason.BACKEND_ERROR
    with pytest.raises(LookupWouldBlock):  # a preloaded parse is not trusted unchecked
        backend.lookup_nowait("a")
    with pytest.raises(UserBackendError):
        backend.lookup("a")


def test_preloading_a_missing_file_keeps_nothing(tmp_path: Path, no_preloaded: None) -> None:
    path = tmp_path / "u"
    write(path, "a:{PLAIN}one\n")
    assert PasswdFileBackend(path).preload()
    path.unlink()
    assert not PasswdFileBackend(path).preload()  # and the old parse is forgotten
    backend = PasswdFileBackend(path)
    result = backend.verify("a", "one")
    assert result.failure is FailureReason.BACKEND_ERROR and str(path) in result.message
    write(path, "a:{PLAIN}two\n")  # created later: read at the next use
    assert backend.verify("a", "two").ok


def test_retain_preloaded_forgets_the_files_no_backend_reads(
    tmp_path: Path, no_preloaded: None, caplog: pytest.LogCaptureFixture
) -> None:
    kept = write(tmp_path / "kept", "a:{PLAIN}one\n")
    dropped = write(tmp_path / "dropped", "b:{PLAIN}two\n")
    assert PasswdFileBackend(kept).preload() and PasswdFileBackend(dropped).preload()
    retain_preloaded([PasswdFileBackend(kept)])
    with caplog.at_level(logging.INFO, logger="roost.auth.passwdfile"):
        assert PasswdFileBackend(kept).verify("a", "one").ok
        assert reads(caplog) == 0
        assert PasswdFileBackend(dropped).verify("b", "two").ok
        assert reads(caplog) == 1


# --- through the database -----------------------------------------------------------------


async def test_user_database_with_passwd_file_and_realm(tmp_path: Path) -> None:
    path = write(
        tmp_path / "u",
        f"alice@example.com:{hash_password(SECRET, 'SSHA512')}\n"
        f"postmaster:{hash_password(SECRET, 'PBKDF2')}\n",
    )
    database = UserDatabase([PasswdFileBackend(path)], default_realm="example.com")
    assert (await database.verify("alice", SECRET)).ok
    assert (await database.verify("ALICE@EXAMPLE.COM", SECRET)).ok
    assert (await database.verify("postmaster", SECRET)).ok
    user = await database.lookup("alice")
    assert user is not None and user.login == "alice@example.com"


# --- quota rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("*:storage=1G", 1024**3),
        ("*:storage=100M", 100 * 1024**2),
        ("*:storage=1GB", 1024**3),
        ("*:storage=512", 512 * 1024),  # storage without a unit is KiB
        ("*:storage=10k", 10 * 1024),
        ("*:bytes=1000", 1000),
        ("*:bytes=2M", 2 * 1024**2),
        ("*:storage=1T:messages=1000", 1024**4),
        ("?:storage=1b", 1),
        ("*:storage=0", None),
        ("*:messages=10", None),
        ("*:ignore", None),
        ("Trash:storage=+100M", None),
    ],
)
def test_parse_quota_rule(rule: str, expected: int | None) -> None:
    assert parse_quota_rule(rule) == expected


@pytest.mark.parametrize(
    "rule",
    ["storage=1G", "*:storage=1Q", "*:storage=+1G", "*:storage=50%", "*:space=1", "*:messages=x"],
)
def test_parse_quota_rule_errors(rule: str) -> None:
    with pytest.raises(ValueError):
        parse_quota_rule(rule)


async def test_lookups_are_answered_in_the_event_loop_from_memory(tmp_path: Path) -> None:
    path = write(tmp_path / "users", f"alice@example.com:{{PLAIN}}{SECRET}\n")
    backend = PasswdFileBackend(path)
    database = UserDatabase([backend])
    with pytest.raises(LookupWouldBlock):
        backend.lookup_nowait("alice@example.com")  # never read yet
    first = await database.lookup("alice@example.com")  # reads the file (in a thread)
    assert first is not None
    assert backend.lookup_nowait("alice@example.com") == first  # from memory now
    threads = {threading.get_ident()}
    original = backend.lookup

    def lookup_in_thread(name: str) -> User | None:
        threads.add(threading.get_ident())
        return original(name)

    backend.lookup = lookup_in_thread  # type: ignore[method-assign]
    assert await database.lookup("Alice@Example.COM") == first
    assert threads == {threading.get_ident()}  # no thread hop for a known user


async def test_a_user_added_a_moment_ago_is_found_at_once(tmp_path: Path) -> None:
    path = write(tmp_path / "users", f"alice@example.com:{{PLAIN}}{SECRET}\n")
    database = UserDatabase([PasswdFileBackend(path)])
    assert await database.lookup("alice@example.com") is not None
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"bob@example.com:{{PLAIN}}{SECRET}\n")
    os.utime(path, ns=(1, 1))  # a new stamp even on a coarse clock
    found = await database.lookup("bob@example.com")  # unknown in memory: read again
    assert found is not None and found.login == "bob@example.com"


async def test_a_memory_answer_is_at_most_a_second_old(tmp_path: Path) -> None:
    path = write(tmp_path / "users", f"alice@example.com:{{PLAIN}}{SECRET}\n")
    backend = PasswdFileBackend(path)
    backend.lookup("alice@example.com")
    backend._checked -= LOOKUP_RECHECK_SECONDS  # as if a second went by
    with pytest.raises(LookupWouldBlock):
        backend.lookup_nowait("alice@example.com")
    write(path, "")  # alice removed: the thread path sees it
    assert await UserDatabase([backend]).lookup("alice@example.com") is None

"""Unit tests for roost.auth.users: the User record, name rules and the async facade."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from roost.auth.users import (
    MAX_LOGIN_LENGTH,
    FailureReason,
    User,
    UserBackendError,
    UserDatabase,
    VerifyResult,
    allowed_by_nets,
    expand_mail_location,
    normalize_login,
)


@dataclass
class FakeBackend:
    """A backend with a dict of login -> (password, user); records every call."""

    name: str
    users: dict[str, tuple[str, User]] = field(default_factory=dict)
    fail: bool = False
    crash: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)

    def add(self, login: str, password: str, **fields: object) -> User:
        user = User(login=login, address=login, backend=self.name, **fields)  # type: ignore[arg-type]
        self.users[login.lower()] = (password, user)
        return user

    def lookup(self, name: str) -> User | None:
        self.calls.append(("lookup", name))
        self.threads.append(threading.get_ident())
        if self.crash:
            raise RuntimeError("bug")
        if self.fail:
            raise UserBackendError("directory unreachable")
        found = self.users.get(name.lower())
        return None if found is None else found[1]

    def verify(self, login: str, password: str) -> VerifyResult:
        self.calls.append(("verify", login))
        self.threads.append(threading.get_ident())
        if self.crash:
            raise RuntimeError("bug")
        if self.fail:
            return VerifyResult.fail(FailureReason.BACKEND_ERROR, "directory unreachable")
        found = self.users.get(login.lower())
        if found is None:
            return VerifyResult.fail(FailureReason.UNKNOWN_USER)
        if found[0] != password:
            return VerifyResult.fail(FailureReason.BAD_PASSWORD)
        return VerifyResult.success(found[1])


# --- User / VerifyResult -------------------------------------------------------------------


def test_user_is_frozen_and_extra_is_read_only() -> None:
    source = {"userdb_mail": "maildir:~/Maildir"}
    user = User(login="alice", address="alice@example.com", extra=source, aliases=["a@x"])  # type: ignore[arg-type]
    source["userdb_mail"] = "changed"
    assert user.extra["userdb_mail"] == "maildir:~/Maildir"
    assert user.aliases == ("a@x",)
    with pytest.raises(AttributeError):
        user.login = "bob"  # type: ignore[misc]
    with pytest.raises(TypeError):
        user.extra["x"] = "y"  # type: ignore[index]
    assert hash(user) == hash(User(login="alice", address="alice@example.com", aliases=("a@x",)))


def test_user_domain() -> None:
    assert User(login="alice@example.com", address="alice@example.com").domain == "example.com"
    assert User(login="alice", address="alice").domain == ""


def test_verify_result_needs_exactly_one_of_user_and_failure() -> None:
    user = User(login="a", address="a")
    with pytest.raises(ValueError):
        VerifyResult()
    with pytest.raises(ValueError):
        VerifyResult(user=user, failure=FailureReason.DISABLED)
    assert VerifyResult.success(user).ok
    failed = VerifyResult.fail(FailureReason.BACKEND_ERROR, "ldap down")
    assert not failed.ok and failed.failure is not None and failed.failure.temporary
    assert failed.message == "ldap down"
    assert not FailureReason.BAD_PASSWORD.temporary
    assert VerifyResult.fail(FailureReason.UNKNOWN_USER).message == "unknown user"


# --- login names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("alice", "alice"),
        ("Alice@Example.COM", "Alice@example.com"),
        ("user@domain@Realm", "user@domain@realm"),
        ("", None),
        ("@example.com", None),
        ("alice@", None),
        ("al\x00ice", None),
        ("alice\r\n", None),
        ("../etc/passwd", None),
        ("a" * (MAX_LOGIN_LENGTH + 1), None),
    ],
)
def test_normalize_login(name: str, expected: str | None) -> None:
    assert normalize_login(name) == expected


def test_candidates_with_and_without_realm() -> None:
    plain = UserDatabase([FakeBackend("f")])
    assert plain.candidates("Alice") == ("Alice",)
    realm = UserDatabase([FakeBackend("f")], default_realm="Example.COM")
    assert realm.default_realm == "example.com"
    assert realm.candidates("Alice") == ("Alice@example.com", "Alice")
    assert realm.candidates("bob@Other.ORG") == ("bob@other.org",)
    assert realm.candidates("bad/name") == ()


@pytest.mark.parametrize("realm", ["", "a@b"])
def test_invalid_realm_rejected(realm: str) -> None:
    with pytest.raises(ValueError):
        UserDatabase([FakeBackend("f")], default_realm=realm)


def test_database_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        UserDatabase([])


# --- UserDatabase ---------------------------------------------------------------------------


async def test_first_backend_that_knows_the_user_answers() -> None:
    first, second = FakeBackend("first"), FakeBackend("second")
    first.add("alice", "one")
    bob = second.add("bob", "two")
    alice_elsewhere = second.add("alice", "two")
    database = UserDatabase([first, second])

    result = await database.verify("alice", "two")
    assert result.failure is FailureReason.BAD_PASSWORD  # first knows alice: final
    assert ("verify", "alice") not in second.calls
    assert (await database.verify("bob", "two")).user == bob
    assert (await database.lookup("alice")) != alice_elsewhere
    assert (await database.lookup("nobody")) is None
    assert (await database.verify("nobody", "x")).failure is FailureReason.UNKNOWN_USER


async def test_backends_run_off_the_event_loop_thread() -> None:
    backend = FakeBackend("f")
    backend.add("alice", "pw")
    database = UserDatabase([backend])
    await database.verify("alice", "pw")
    await database.lookup("alice")
    assert backend.threads and threading.get_ident() not in backend.threads


async def test_realm_tries_qualified_name_first_then_bare() -> None:
    backend = FakeBackend("f")
    qualified = backend.add("alice@example.com", "pw")
    bare = backend.add("bob", "pw")
    database = UserDatabase([backend], default_realm="example.com")

    assert (await database.verify("Alice", "pw")).user == qualified
    assert (await database.verify("bob", "pw")).user == bare
    assert backend.calls[-2:] == [("verify", "bob@example.com"), ("verify", "bob")]
    assert (await database.lookup("alice")) == qualified


async def test_domain_is_lowercased_before_backends_see_it() -> None:
    backend = FakeBackend("f")
    backend.add("alice@example.com", "pw")
    database = UserDatabase([backend])
    assert (await database.verify("alice@EXAMPLE.com", "pw")).ok
    assert backend.calls == [("verify", "alice@example.com")]


async def test_invalid_login_never_reaches_a_backend() -> None:
    backend = FakeBackend("f")
    database = UserDatabase([backend])
    result = await database.verify("bad\nname", "pw")
    assert result.failure is FailureReason.UNKNOWN_USER
    assert await database.lookup("a/b") is None
    assert backend.calls == []


async def test_backend_error_is_temporary_unless_another_backend_knows_the_user() -> None:
    down, files = FakeBackend("ldap", fail=True), FakeBackend("files")
    carol = files.add("carol", "pw")
    database = UserDatabase([down, files])

    assert (await database.verify("carol", "pw")).user == carol
    result = await database.verify("dave", "pw")
    assert result.failure is FailureReason.BACKEND_ERROR
    assert (await database.lookup("carol")) == carol
    with pytest.raises(UserBackendError, match="ldap"):
        await database.lookup("dave")


async def test_crashing_backend_becomes_backend_error() -> None:
    database = UserDatabase([FakeBackend("buggy", crash=True)])
    result = await database.verify("alice", "secret-password")
    assert result.failure is FailureReason.BACKEND_ERROR
    assert "secret-password" not in result.message
    with pytest.raises(UserBackendError):
        await database.lookup("alice")


async def test_allow_nets_checked_against_remote_address() -> None:
    backend = FakeBackend("f")
    backend.add("svc", "pw", extra={"allow_nets": "192.0.2.0/24,2001:db8::/32"})
    backend.add("local-only", "pw", extra={"allow_nets": "local"})
    backend.add("broken", "pw", extra={"allow_nets": "not-a-net"})
    database = UserDatabase([backend])

    assert (await database.verify("svc", "pw", remote_address="192.0.2.7")).ok
    assert (await database.verify("svc", "pw", remote_address="::ffff:192.0.2.7")).ok
    assert (await database.verify("svc", "pw", remote_address="2001:db8::5")).ok
    denied = await database.verify("svc", "pw", remote_address="198.51.100.1")
    assert denied.failure is FailureReason.DISABLED
    assert (await database.verify("svc", "pw")).failure is FailureReason.DISABLED
    assert (await database.verify("local-only", "pw")).ok
    local = await database.verify("local-only", "pw", remote_address="192.0.2.7")
    assert local.failure is FailureReason.DISABLED
    broken = await database.verify("broken", "pw", remote_address="192.0.2.7")
    assert broken.failure is FailureReason.BACKEND_ERROR


def test_allowed_by_nets() -> None:
    assert allowed_by_nets("10.0.0.0/8 ::1", "10.1.2.3")
    assert allowed_by_nets("10.0.0.0/8 ::1", "[::1]")
    assert not allowed_by_nets("10.0.0.0/8", "11.0.0.1")
    assert not allowed_by_nets("10.0.0.0/8", None)
    assert allowed_by_nets("local,10.0.0.0/8", None)
    assert not allowed_by_nets("", "10.0.0.1")
    with pytest.raises(ValueError):
        allowed_by_nets("10.0.0.0/33", "10.0.0.1")


# --- expand_mail_location ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("maildir:~/Maildir", "maildir:/home/alice/Maildir"),
        ("~/Maildir", "/home/alice/Maildir"),
        ("maildir:~", "maildir:/home/alice"),
        ("maildir:/var/vmail/%d/%n", "maildir:/var/vmail/example.com/Alice"),
        ("maildir:/var/vmail/%Ld/%Ln/Maildir", "maildir:/var/vmail/example.com/alice/Maildir"),
        ("maildir:/var/vmail/%{domain}/%{username}", "maildir:/var/vmail/example.com/Alice"),
        ("maildir:/var/vmail/%L{user}", "maildir:/var/vmail/alice@example.com"),
        ("maildir:%{home}/Mail", "maildir:/home/alice/Mail"),
        (
            "mbox:~/mail:INBOX=/var/mail/%u",
            "mbox:/home/alice/mail:INBOX=/var/mail/Alice@example.com",
        ),
        ("maildir:~/Maildir:INDEX=~/index", "maildir:/home/alice/Maildir:INDEX=/home/alice/index"),
        ("maildir:/srv/%1Ln/%Ln", "maildir:/srv/a/alice"),
        ("maildir:/srv/%1.2n", "maildir:/srv/li"),
        ("maildir:/srv/%-2.2n", "maildir:/srv/ce"),
        ("maildir:/srv/%Un", "maildir:/srv/ALICE"),
        ("maildir:/srv/100%%", "maildir:/srv/100%"),
        ("maildir:/srv/~alice", "maildir:/srv/~alice"),
        ("maildir:/srv/a::b/%n", "maildir:/srv/a::b/Alice"),
    ],
)
def test_expand_mail_location(template: str, expected: str) -> None:
    assert (
        expand_mail_location(template, "Alice@example.com", "example.com", "/home/alice")
        == expected
    )


def test_expand_mail_location_does_not_expand_substituted_values() -> None:
    assert expand_mail_location("maildir:%h/M", "a%ub", "", "/h/%u") == "maildir:/h/%u/M"
    assert expand_mail_location("maildir:/m/%u", "x%%y", "", "/h") == "maildir:/m/x%%y"


def test_expand_mail_location_trailing_slash_in_home() -> None:
    assert (
        expand_mail_location("maildir:~/Maildir", "a", "", "/home/a/") == "maildir:/home/a/Maildir"
    )
    assert expand_mail_location("maildir:~/Maildir", "a", "", "/") == "maildir:/Maildir"


@pytest.mark.parametrize(
    "template", ["maildir:~/Maildir", "maildir:%h/Mail", "maildir:/x:INBOX=~/in", "%{home}"]
)
def test_expand_mail_location_needs_home_when_used(template: str) -> None:
    with pytest.raises(ValueError, match="home"):
        expand_mail_location(template, "alice", "", "")


@pytest.mark.parametrize("template", ["maildir:/x/%z", "maildir:/x/%{uid}", "maildir:/x/%", "/%Q"])
def test_expand_mail_location_rejects_unknown_variables(template: str) -> None:
    with pytest.raises(ValueError):
        expand_mail_location(template, "alice", "", "/home/alice")

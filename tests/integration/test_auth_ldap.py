"""LdapBackend and the ldap: table against a real slapd on loopback (tests/integration/slapd.py).

Needs the Debian package ``slapd``. Covers lookups by mail and by AD-style alias,
password checks by binding, AD logins (sAMAccountName, userPrincipalName), filter
injection, failover, timeouts, TLS and the ldap: lookup table read from main.cf.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.auth.ldap import LdapBackend, LdapError, parse_ldap_config
from roost.auth.users import FailureReason, UserBackendError, UserDatabase
from roost.config import load_settings, open_table
from tests.conftest import free_port, require_program
from tests.integration.slapd import (
    PEOPLE,
    SERVICE_DN,
    SERVICE_PW,
    SUFFIX,
    Entry,
    Slapd,
    person,
)

ALICE_PW = "Alice-Pa55 word"
BOB_PW = "pässwörd-ß-€"
ADMIN_PW = "admin-secret"
SHARED_PW = "shared-pw"

AD_LOGIN_FILTER = "(&(objectClass=person)(|(mail=%s)(sAMAccountName=%u)(userPrincipalName=%s)))"


def sample_entries() -> list[Entry]:
    return [
        person(
            "alice",
            ALICE_PW,
            mail="alice@roost.test",
            ad={
                "sAMAccountName": "alice",
                "userPrincipalName": "alice@corp.roost.test",
                "proxyAddresses": [
                    "SMTP:alice@roost.test",
                    "smtp:alias@roost.test",
                    "smtp:Alice.Liddell@Example.ORG",
                    "X500:/o=Roost/ou=Exchange/cn=Recipients/cn=alice",
                    "SIP:alice@roost.test",
                ],
                "roostMailQuota": "1G",
            },
            posix=(5000, 5000, "/var/vmail/alice"),
        ),
        person("bob", BOB_PW, mail="bob@roost.test"),
        person(
            "carol",
            "carol-pw",
            ad={"sAMAccountName": "carol", "proxyAddresses": ["SMTP:carol@roost.test"]},
        ),
        person("admin", ADMIN_PW, mail="admin@roost.test"),
        person("dup1", SHARED_PW, mail="shared@roost.test"),
        person("dup2", SHARED_PW, mail="shared@roost.test"),
    ]


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    program = require_program("slapd")
    with Slapd(tmp_path_factory.mktemp("slapd"), program=program) as server:
        server.add_entries(sample_entries())
        yield server


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP listener that accepts connections and never answers: a hung LDAP server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"ldap://127.0.0.1:{listener.getsockname()[1]}"


def backend(slapd: Slapd, extra: str = "", *, hosts: str | None = None) -> LdapBackend:
    config, _warnings = parse_ldap_config(
        f"server_host = {hosts or slapd.uri}\n"
        f"search_base = {SUFFIX}\n"
        f"bind_dn = {SERVICE_DN}\n"
        f"bind_pw = {SERVICE_PW}\n"
        "timeout = 2\n"
        "alias_attributes = proxyAddresses\n"
        "home_attribute = homeDirectory\n"
        "uid_attribute = uidNumber\n"
        "gid_attribute = gidNumber\n"
        "quota_attribute = roostMailQuota\n"
        f"{extra}",
        "/etc/roost/ldap.cf",
    )
    return LdapBackend(config, default_domain="roost.test")


# --- lookups -------------------------------------------------------------------------------


def test_lookup_by_mail(slapd: Slapd) -> None:
    user = backend(slapd).lookup("alice@roost.test")
    assert user is not None
    assert user.login == "alice@roost.test"
    assert user.address == "alice@roost.test"
    # smtp: prefixes stripped, domains lowercased, X500:/SIP: values and the address dropped
    assert user.aliases == ("alias@roost.test", "Alice.Liddell@example.org")
    assert (user.uid, user.gid, user.home) == (5000, 5000, "/var/vmail/alice")
    assert user.quota_bytes == 1024**3
    assert user.extra["dn"] == f"uid=alice,{PEOPLE}"
    assert user.backend == "ldap:/etc/roost/ldap.cf"


def test_lookup_by_alias_gives_the_same_user(slapd: Slapd) -> None:
    ldap = backend(slapd)
    by_mail = ldap.lookup("alice@roost.test")
    for name in ("alias@roost.test", "ALIAS@roost.test", "Alice.Liddell@example.org"):
        assert ldap.lookup(name) == by_mail, name


def test_address_from_the_ad_primary_proxy_address(slapd: Slapd) -> None:
    user = backend(slapd).lookup("carol@roost.test")
    assert user is not None
    assert (user.login, user.address, user.aliases) == ("carol@roost.test", "carol@roost.test", ())


def test_lookup_of_an_unknown_user(slapd: Slapd) -> None:
    assert backend(slapd).lookup("nobody@roost.test") is None


def test_ambiguous_lookup_is_a_temporary_error(slapd: Slapd) -> None:
    ldap = backend(slapd)
    with pytest.raises(UserBackendError, match="matches more than one entry"):
        ldap.lookup("shared@roost.test")
    result = ldap.verify("shared@roost.test", SHARED_PW)
    assert result.failure is FailureReason.BACKEND_ERROR


# --- passwords -----------------------------------------------------------------------------


def test_password_check_by_binding(slapd: Slapd) -> None:
    ldap = backend(slapd)
    result = ldap.verify("alice@roost.test", ALICE_PW)
    assert result.ok
    assert result.user == ldap.lookup("alice@roost.test")
    assert ldap.verify("bob@roost.test", BOB_PW).ok  # non-ASCII, sent as UTF-8


def test_wrong_password(slapd: Slapd) -> None:
    result = backend(slapd).verify("alice@roost.test", ALICE_PW + "x")
    assert result.failure is FailureReason.BAD_PASSWORD
    assert "invalidCredentials" in result.message
    assert ALICE_PW not in result.message


def test_unknown_user(slapd: Slapd) -> None:
    assert backend(slapd).verify("ghost@roost.test", "x").failure is FailureReason.UNKNOWN_USER


def test_empty_password_never_binds(slapd: Slapd) -> None:
    """RFC 4513 §5.1.2: a bind with a DN and no password is an anonymous bind."""
    result = backend(slapd).verify("alice@roost.test", "")
    assert result.failure is FailureReason.BAD_PASSWORD
    assert "empty password" in result.message


def test_passwords_stay_out_of_logs_and_messages(
    slapd: Slapd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ldap = backend(slapd, hosts=f"ldap://127.0.0.1:{closed_port()} {slapd.uri}")
    results = [
        ldap.verify("alice@roost.test", ALICE_PW),
        ldap.verify("alice@roost.test", "Wrong-" + ALICE_PW),
    ]
    text = caplog.text + repr(ldap) + "".join(repr(r) for r in results)
    for secret in (ALICE_PW, SERVICE_PW):
        assert secret not in text


def test_ad_logins(slapd: Slapd) -> None:
    ldap = backend(slapd, f"login_filter = {AD_LOGIN_FILTER}\n")
    for login in ("alice", "alice@corp.roost.test", "alice@roost.test"):
        result = ldap.verify(login, ALICE_PW)
        assert result.ok, login
        assert result.user is not None
        assert result.user.login == "alice@roost.test"  # one identity whatever was typed
    assert ldap.verify("alice", "wrong").failure is FailureReason.BAD_PASSWORD


def test_login_attribute_user_principal_name(slapd: Slapd) -> None:
    ldap = backend(
        slapd, f"login_filter = {AD_LOGIN_FILTER}\nlogin_attribute = userPrincipalName\n"
    )
    result = ldap.verify("alice", ALICE_PW)
    assert result.user is not None
    assert result.user.login == "alice@corp.roost.test"
    assert result.user.address == "alice@roost.test"


async def test_through_the_user_database(slapd: Slapd) -> None:
    database = UserDatabase(
        [backend(slapd, f"login_filter = {AD_LOGIN_FILTER}\n")], default_realm="roost.test"
    )
    result = await database.verify("alice", ALICE_PW)  # tried as alice@roost.test first
    assert result.ok
    user = await database.lookup("alias@roost.test")
    assert user is not None and user.login == "alice@roost.test"


@pytest.mark.parametrize(
    "login",
    [
        "*",
        "*)(",
        ")(",
        "\x00",
        r"\00",
        "admin)(|(uid=*",
        "admin)(|(mail=*",
        "admin*",
        "*@roost.test",
        "(mail=*)",
        "admin\\",
    ],
)
def test_filter_injection_is_escaped(slapd: Slapd, login: str) -> None:
    ldap = backend(slapd, f"login_filter = {AD_LOGIN_FILTER}\n")
    assert ldap.lookup(login) is None
    result = ldap.verify(login, ADMIN_PW)
    assert result.failure is FailureReason.UNKNOWN_USER, result.message


# --- failover, timeouts, reconnection ------------------------------------------------------


def test_down_first_server_fails_over_to_the_second(
    slapd: Slapd, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"ldap://127.0.0.1:{closed_port()}"
    caplog.set_level(logging.WARNING, logger="roost.auth.ldap")
    ldap = backend(slapd, hosts=f"{down} {slapd.uri}")
    assert ldap.verify("alice@roost.test", ALICE_PW).ok
    assert ldap.lookup("bob@roost.test") is not None
    assert f"{down} is not reachable; using {slapd.uri}" in caplog.text


def test_every_server_down_is_a_temporary_error(slapd: Slapd) -> None:
    first, second = f"ldap://127.0.0.1:{closed_port()}", f"ldap://127.0.0.1:{closed_port()}"
    ldap = backend(slapd, hosts=f"{first} {second}")
    started = time.monotonic()
    result = ldap.verify("alice@roost.test", ALICE_PW)
    assert time.monotonic() - started < 1.5  # no ldap3 10 s pool sleep
    assert result.failure is FailureReason.BACKEND_ERROR
    assert result.failure.temporary
    assert first in result.message and second in result.message
    with pytest.raises(UserBackendError, match="no LDAP server available"):
        ldap.lookup("alice@roost.test")


def test_silent_server_times_out_within_the_timeout(slapd: Slapd, silent_server: str) -> None:
    ldap = backend(slapd, "timeout = 1\n", hosts=silent_server)
    started = time.monotonic()
    result = ldap.verify("alice@roost.test", ALICE_PW)
    elapsed = time.monotonic() - started
    assert result.failure is FailureReason.BACKEND_ERROR
    assert "timed out" in result.message
    assert 0.9 < elapsed < 2.5
    started = time.monotonic()
    with pytest.raises(UserBackendError, match="timed out"):
        ldap.lookup("alice@roost.test")
    assert time.monotonic() - started < 2.5


def test_silent_first_server_costs_one_timeout(slapd: Slapd, silent_server: str) -> None:
    ldap = backend(slapd, "timeout = 1\n", hosts=f"{silent_server} {slapd.uri}")
    started = time.monotonic()
    assert ldap.verify("alice@roost.test", ALICE_PW).ok  # after one timeout, on slapd
    assert time.monotonic() - started < 3
    started = time.monotonic()
    for _ in range(3):
        assert ldap.lookup("alice@roost.test") is not None
    assert time.monotonic() - started < 0.9  # the silent server is skipped now


async def test_concurrent_logins_share_a_small_pool(slapd: Slapd) -> None:
    """Worker threads wait for one of connection_pool_size connections (thread safety)."""
    ldap = backend(slapd, f"connection_pool_size = 2\nlogin_filter = {AD_LOGIN_FILTER}\n")
    database = UserDatabase([ldap])
    logins = [("alice", ALICE_PW), ("bob@roost.test", BOB_PW), ("alice", "wrong")] * 8
    results = await asyncio.gather(*(database.verify(name, pw) for name, pw in logins))
    for (name, password), result in zip(logins, results, strict=True):
        expected = None if password != "wrong" else FailureReason.BAD_PASSWORD
        assert result.failure is expected, (name, result.message)


def test_pooled_connections_survive_a_server_restart(tmp_path: Path) -> None:
    program = require_program("slapd")
    with Slapd(tmp_path / "slapd", tls=False, program=program) as server:
        server.add_entries(sample_entries())
        ldap = backend(server, "server_offline_time = 0\n")
        assert ldap.verify("alice@roost.test", ALICE_PW).ok
        assert ldap.lookup("bob@roost.test") is not None
        server.restart()  # every pooled connection is now dead
        assert ldap.lookup("bob@roost.test") is not None
        assert ldap.verify("alice@roost.test", ALICE_PW).ok


def test_wrong_service_password_is_reported_without_it(slapd: Slapd) -> None:
    config, _ = parse_ldap_config(
        f"server_host = {slapd.uri}\nsearch_base = {SUFFIX}\n"
        f"bind_dn = {SERVICE_DN}\nbind_pw = not-the-service-pw\n",
        "ldap.cf",
    )
    result = LdapBackend(config).verify("alice@roost.test", ALICE_PW)
    assert result.failure is FailureReason.BACKEND_ERROR
    assert f"bind as {SERVICE_DN} refused: invalidCredentials" in result.message
    assert "not-the-service-pw" not in result.message


def test_anonymous_search_with_bind_no(slapd: Slapd) -> None:
    config, _ = parse_ldap_config(
        f"server_host = {slapd.uri}\nsearch_base = {SUFFIX}\nbind = no\n", "ldap.cf"
    )
    assert LdapBackend(config).verify("bob@roost.test", BOB_PW).ok


# --- TLS -----------------------------------------------------------------------------------


def test_ldaps(slapd: Slapd) -> None:
    ldap = backend(slapd, f"tls_ca_cert_file = {slapd.ca_file}\n", hosts=slapd.ldaps_uri)
    assert ldap.verify("alice@roost.test", ALICE_PW).ok


def test_start_tls(slapd: Slapd) -> None:
    ldap = backend(
        slapd,
        f"start_tls = yes\ntls_ca_cert_file = {slapd.ca_file}\n",
        hosts=slapd.uri.replace("127.0.0.1", "localhost"),
    )
    assert ldap.verify("alice@roost.test", ALICE_PW).ok


def test_untrusted_certificate_is_refused(slapd: Slapd) -> None:
    result = backend(slapd, hosts=slapd.ldaps_uri).verify("alice@roost.test", ALICE_PW)
    assert result.failure is FailureReason.BACKEND_ERROR
    assert "CERTIFICATE_VERIFY_FAILED" in result.message


# --- the ldap: table -----------------------------------------------------------------------


def write_table(path: Path, slapd: Slapd, extra: str) -> Path:
    path.write_text(
        f"server_host = {slapd.uri}\nsearch_base = {SUFFIX}\n"
        f"bind_dn = {SERVICE_DN}\nbind_pw = {SERVICE_PW}\n{extra}"
    )
    path.chmod(0o640)
    return path


def test_ldap_table_from_main_cf(slapd: Slapd, tmp_path: Path) -> None:
    senders = write_table(
        tmp_path / "ldap-senders.cf",
        slapd,
        "query_filter = (|(mail=%s)(proxyAddresses=smtp:%s))\n"
        "result_attribute = userPrincipalName, sAMAccountName\n",
    )
    main_cf = tmp_path / "main.cf"
    main_cf.write_text(f"smtpd_sender_login_maps = ldap:{senders}\n")
    settings, warnings = load_settings(main_cf)
    assert warnings == []
    [ref] = settings.tables("smtpd_sender_login_maps")
    table = open_table(ref)
    assert table.ref == f"ldap:{senders}"
    assert table.lookup("alias@roost.test") == "alice@corp.roost.test,alice"
    assert table.lookup("alice@roost.test") == "alice@corp.roost.test,alice"
    assert table.lookup("bob@roost.test") is None  # found, but no result attribute
    assert table.lookup("nobody@roost.test") is None
    assert table.lookup("*") is None


def test_ldap_table_results_domain_and_format(slapd: Slapd, tmp_path: Path) -> None:
    table = open_table(
        "ldap:"
        + str(
            write_table(
                tmp_path / "t.cf",
                slapd,
                "domain = roost.test\nquery_filter = (mail=%u@%d)\n"
                "result_attribute = uid\nresult_format = %s+%U\n",
            )
        )
    )
    value = table.lookup("shared@roost.test")
    assert value is not None
    assert sorted(value.split(",")) == ["dup1+shared", "dup2+shared"]
    assert table.lookup("alice@other.test") is None  # not a listed domain
    assert table.lookup("@roost.test") is None  # empty local part
    assert table.lookup("alice") is None  # no domain


def test_ldap_table_size_limit_is_an_error(slapd: Slapd, tmp_path: Path) -> None:
    table = open_table(
        "ldap:"
        + str(
            write_table(
                tmp_path / "t.cf",
                slapd,
                "query_filter = (mail=%s)\nresult_attribute = uid\nsize_limit = 1\n",
            )
        )
    )
    with pytest.raises(LdapError, match="more than 1 entries"):
        table.lookup("shared@roost.test")


def test_ldap_table_server_down(tmp_path: Path) -> None:
    path = tmp_path / "t.cf"
    path.write_text(f"server_host = ldap://127.0.0.1:{closed_port()}\nsearch_base = {SUFFIX}\n")
    with pytest.raises(LdapError, match="no LDAP server available"):
        open_table(f"ldap:{path}").lookup("alice@roost.test")


def test_the_ldap_table_type_is_known_without_importing_ldap3() -> None:
    code = (
        "import sys\n"
        "import roost.auth.factory\n"
        "from roost.config.lookup import table_types\n"
        "assert 'ldap' in table_types(), table_types()\n"
        "assert 'ldap3' not in sys.modules and 'roost.auth.ldap' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

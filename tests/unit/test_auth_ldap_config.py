"""Unit tests for roost.auth.ldap's configuration file, query expansion and escaping, and
for the ldap:/pam entries of auth_backends (roost.auth.factory). No network."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from roost.auth.factory import build_user_database, check_user_database
from roost.auth.ldap import (
    LdapBackend,
    LdapServerAddress,
    PoolStrategy,
    Scope,
    _bind_failure,
    escape_dn_value,
    escape_filter_value,
    expand_query,
    load_ldap_config,
    parse_ldap_config,
)
from roost.auth.pam import PamBackend
from roost.auth.passwdfile import PasswdFileBackend
from roost.auth.users import FailureReason
from roost.config import ConfigError, Settings, TableError, open_table, parse_main_cf

BASE = "search_base = dc=example,dc=com\n"


def problems_of(text: str, filename: str = "ldap.cf") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_ldap_config(text, filename)
    return [str(problem) for problem in info.value.problems]


# --- the file ------------------------------------------------------------------------------


def test_defaults_of_a_minimal_file() -> None:
    config, warnings = parse_ldap_config(BASE, "ldap.cf")
    assert warnings == []
    assert config.path == "ldap.cf"
    assert config.servers == (LdapServerAddress("ldap", "localhost", 389),)
    assert config.scope is Scope.SUB
    assert config.query_filter == "(mailacceptinggeneralid=%s)"  # Postfix's default
    assert config.result_attributes == ("maildrop",)
    assert (config.bind, config.start_tls, config.tls_require_cert) == (True, False, True)
    assert (config.timeout, config.connect_timeout) == (10, 10)
    assert config.server_pool_strategy is PoolStrategy.FIRST
    assert (config.server_offline_time, config.connection_pool_size) == (60, 4)
    assert config.user_filter == config.login_filter == "(mail=%s)"
    assert config.user_attributes == ("mail",)


def test_active_directory_file() -> None:
    config, warnings = parse_ldap_config(
        "# Active Directory\n"
        "server_host = ldaps://dc1.corp.example.com ldaps://dc2.corp.example.com:3269,\n"
        "    ldap://dc3.corp.example.com\n"
        "search_base = DC=corp,DC=example,DC=com\n"
        "bind_dn = CN=roost,OU=Services,DC=corp,DC=example,DC=com\n"
        "bind_pw = s3cret=with#chars\n"
        "start_tls = yes\n"
        "timeout = 5\n"
        "connect_timeout = 2\n"
        "server_pool_strategy = round_robin\n"
        "server_offline_time = 2m\n"
        "connection_pool_size = 8\n"
        "login_filter = (&(objectClass=person)(|(sAMAccountName=%u)(userPrincipalName=%s)))\n"
        "login_attribute = userPrincipalName\n"
        "alias_attributes = proxyAddresses, otherMailbox\n"
        "home_attribute = homeDirectory\n"
        "uid_attribute = uidNumber\n"
        "gid_attribute = gidNumber\n"
        "quota_attribute = mailQuota\n"
        "scope = one\n",
        "/etc/roost/ldap.cf",
    )
    assert warnings == []
    assert [s.uri for s in config.servers] == [
        "ldaps://dc1.corp.example.com:636",
        "ldaps://dc2.corp.example.com:3269",
        "ldap://dc3.corp.example.com:389",
    ]
    assert config.bind_pw == "s3cret=with#chars"
    assert (config.timeout, config.connect_timeout, config.server_offline_time) == (5, 2, 120)
    assert config.server_pool_strategy is PoolStrategy.ROUND_ROBIN
    assert config.scope is Scope.ONE
    assert config.user_filter == (
        "(|(mail=%s)(proxyAddresses=%s)(proxyAddresses=smtp:%s)"
        "(otherMailbox=%s)(otherMailbox=smtp:%s))"
    )
    assert config.login_filter.startswith("(&(objectClass=person)")
    assert config.user_attributes == (
        "userPrincipalName",
        "mail",
        "proxyAddresses",
        "otherMailbox",
        "homeDirectory",
        "uidNumber",
        "gidNumber",
        "mailQuota",
    )
    assert "userPassword" not in config.user_attributes


def test_bind_pw_is_never_in_the_repr() -> None:
    config, _ = parse_ldap_config(BASE + "bind_dn = cn=x\nbind_pw = TopSecret42\n", "f")
    assert "TopSecret42" not in repr(config)
    assert "TopSecret42" not in repr(LdapBackend(config))


def test_server_host_forms() -> None:
    config, _ = parse_ldap_config(
        BASE + "server_port = 1389\n"
        "server_host = a.example, b.example:2389 ldap://c.example ldaps://[2001:db8::1]\n",
        "f",
    )
    assert [s.uri for s in config.servers] == [
        "ldap://a.example:1389",
        "ldap://b.example:2389",
        "ldap://c.example:1389",
        "ldaps://[2001:db8::1]:636",
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("server_host = ldapi:///run/slapd.sock", "unsupported scheme 'ldapi'"),
        ("server_host = ldap://h/dc=x??sub", "give only scheme://host:port"),
        ("server_host = ldap://h:99999", "bad port"),
        ("server_host =", "no server given"),
        ("scope = deep", "bad value 'deep' (allowed: sub, one, base)"),
        ("version = 2", "only LDAP version 3 is supported"),
        ("timeout = soon", "bad time value"),
        ("timeout = 0", "must be at least 1 second"),
        ("bind = sasl", "SASL binds are not supported"),
        ("connection_pool_size = 0", "below the minimum 1"),
        ("dereference = 4", "must be 0 (never)"),
        ("query_filter = (mail=%s", "not an LDAP filter (RFC 4515)"),
        ("query_filter = mail=%s", "not an LDAP filter (RFC 4515)"),
        ("login_filter = (uid=%n)", "bad %n"),
        ("result_format = %s%", "bad a trailing %"),
        ("mail_attribute = mail address", "bad attribute name"),
        ("alias_attributes = proxyAddresses, bad(name", "bad attribute name"),
        ("special_result_attribute = member", "not supported by roost"),
        ("domain = hash:/etc/domains", "only domain names are supported here"),
        ("tls_ca_cert_file = /nonexistent/ca.pem", "/nonexistent/ca.pem: cannot read it"),
    ],
)
def test_bad_values_name_file_line_and_parameter(line: str, reason: str) -> None:
    problems = problems_of(BASE + "# comment\n" + line + "\n", "/etc/roost/ldap.cf")
    name = line.partition("=")[0].strip()
    assert any(p.startswith(f"/etc/roost/ldap.cf:3: {name}: ") and reason in p for p in problems), (
        problems
    )


def test_missing_search_base_and_unknown_names() -> None:
    problems = problems_of("serverhost = ldap://x\nbind_pw = x\n", "ldap.cf")
    assert "ldap.cf:1: serverhost: unknown LDAP parameter; did you mean server_host?" in problems
    assert any("search_base: required" in p and "(default value)" in p for p in problems)


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(BASE + "scope = deep\ntimeout = x\nversion = 2\n")
    assert len(problems) == 3


def test_syntax_errors_come_from_the_main_cf_reader() -> None:
    problems = problems_of(BASE + "server_host ldap://x\n")
    assert problems == ["ldap.cf:2: missing '=' after parameter name 'server_host ldap://x'"]


def test_ignored_postfix_parameters_and_clear_text_warn() -> None:
    config, warnings = parse_ldap_config(
        BASE + "cache = yes\nserver_host = ldap://ldap.example.com\nserver_host = ldap://x\n",
        "f",
    )
    texts = [str(w) for w in warnings]
    assert "warning: f:2: cache: not supported; ignored" in texts
    assert "warning: f:4: server_host: overrides the setting on line 3" in texts
    assert any("in clear text" in t for t in texts)
    assert [s.host for s in config.servers] == ["x"]


def test_no_clear_text_warning_for_loopback_or_tls() -> None:
    for extra in ("server_host = ldap://127.0.0.1 ldap://localhost\n", "start_tls = yes\n"):
        _, warnings = parse_ldap_config(BASE + extra, "f")
        assert not any("clear text" in str(w) for w in warnings), extra


def test_bind_dn_without_password_is_an_error() -> None:
    problems = problems_of(BASE + "bind_dn = cn=roost,dc=example,dc=com\n")
    assert any("bind_pw: empty" in p for p in problems)


def test_world_readable_file_with_bind_pw_warns(tmp_path: Path) -> None:
    path = tmp_path / "ldap.cf"
    path.write_text(BASE + "bind_dn = cn=x\nbind_pw = pw\n")
    os.chmod(path, 0o644)
    _, warnings = load_ldap_config(path)
    assert any("every user can read this file (mode 0644)" in str(w) for w in warnings)
    os.chmod(path, 0o640)
    _, warnings = load_ldap_config(path)
    assert warnings == []


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_ldap_config(tmp_path / "missing.cf")


# --- expansion and escaping ----------------------------------------------------------------


def test_expansion_like_postfix() -> None:
    key = "john.doe@mail.example.com"
    assert expand_query("(mail=%s)", key) == "(mail=john.doe@mail.example.com)"
    assert expand_query("(uid=%u)(dc=%d)", key) == "(uid=john.doe)(dc=mail.example.com)"
    assert expand_query("%1.%2.%3 100%%", key) == "com.example.mail 100%"
    assert expand_query("(uid=%U)", key) == "(uid=john.doe)"
    assert expand_query("(uid=%u)", "alice") == "(uid=alice)"


@pytest.mark.parametrize(
    ("template", "key"),
    [
        ("(uid=%u)", "@example.com"),  # empty local part
        ("(dc=%d)", "alice"),  # no domain
        ("(dc=%4)", "a@example.com"),  # not enough labels
    ],
)
def test_expansion_suppresses_impossible_queries(template: str, key: str) -> None:
    assert expand_query(template, key) is None


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("*", r"\2a"),
        ("a)(b", r"a\29\28b"),
        ("admin)(|(uid=*", r"admin\29\28|\28uid=\2a"),
        ("back\\slash", r"back\5cslash"),
        ("nul\x00byte", r"nul\00byte"),
        (r"\00", r"\5c00"),
        ("jöhn@exämple.com", "jöhn@exämple.com"),
    ],
)
def test_filter_values_are_escaped_rfc4515(value: str, escaped: str) -> None:
    assert escape_filter_value(value) == escaped
    assert expand_query("(mail=%s)", value) == f"(mail={escaped})"


def test_result_format_upper_case_forms_refer_to_the_key() -> None:
    assert (
        expand_query("%u+%D", "bob@x.org", escape=str, upper_key="alice@example.com")
        == "bob+example.com"
    )


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain", "plain"),
        ("a,b+c", r"a\,b\+c"),
        ('q"<>;=', r"q\"\<\>\;\="),
        ("#lead", r"\#lead"),
        (" both ", r"\ both\ "),
        ("nul\x00", r"nul\00"),
        ("", ""),
    ],
)
def test_dn_values_are_escaped_rfc4514(value: str, escaped: str) -> None:
    assert escape_dn_value(value) == escaped


def test_search_base_expansion_escapes_as_dn() -> None:
    assert (
        expand_query("ou=%d,dc=example", "x@evil,dc=com", escape=escape_dn_value)
        == r"ou=evil\,dc\=com,dc=example"
    )


# --- the ldap: table type ------------------------------------------------------------------


def test_ldap_table_type_is_registered(tmp_path: Path) -> None:
    path = tmp_path / "senders.cf"
    path.write_text(BASE + "query_filter = (mail=%s)\nresult_attribute = uid\n")
    table = open_table(f"ldap:{path}")
    assert table.ref == f"ldap:{path}"


def test_ldap_table_errors_name_the_file_line(tmp_path: Path) -> None:
    path = tmp_path / "senders.cf"
    path.write_text(BASE + "scope = deep\n")
    with pytest.raises(TableError, match=rf"^{path}:2: scope: bad value 'deep'"):
        open_table(f"ldap:{path}")
    with pytest.raises(TableError, match="cannot read"):
        open_table(f"ldap:{tmp_path}/missing.cf")


# --- auth_backends -------------------------------------------------------------------------


def settings_of(text: str, directory: Path) -> Settings:
    main_cf = directory / "main.cf"
    main_cf.write_text(text)
    entries, problems = parse_main_cf(text, str(main_cf))
    assert problems == []
    return Settings(entries, path=main_cf)


def test_backends_are_built_in_order(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("bob:{PLAIN}x\n")
    ldap_cf = tmp_path / "ldap.cf"
    ldap_cf.write_text(BASE + "server_host = ldap://127.0.0.1:1\n")
    settings = settings_of(
        f"mydestination = mx.example.com, localhost, hash:/etc/x\n"
        f"auth_backends = passwd-file:{users}, ldap:{ldap_cf}, pam\n"
        "auth_pam_service = roost-test\n"
        "first_valid_uid = 1000\n",
        tmp_path,
    )
    database = build_user_database(settings)
    assert database is not None
    kinds = [type(b) for b in database.backends]
    assert kinds == [PasswdFileBackend, LdapBackend, PamBackend]
    assert [b.name for b in database.backends] == [
        f"passwd-file:{users}",
        f"ldap:{ldap_cf}",
        "pam:roost-test",
    ]


def test_unknown_backend_names_the_main_cf_line(tmp_path: Path) -> None:
    settings = settings_of("myhostname = x.example\nauth_backends = sql:/etc/x\n", tmp_path)
    with pytest.raises(ConfigError, match=r"main.cf:2: auth_backends: unknown backend 'sql:"):
        build_user_database(settings)


def test_ldap_file_errors_name_the_ldap_file_line(tmp_path: Path) -> None:
    ldap_cf = tmp_path / "ldap.cf"
    ldap_cf.write_text(BASE + "timeout = never\n")
    settings = settings_of(f"auth_backends = ldap:{ldap_cf}\n", tmp_path)
    with pytest.raises(ConfigError, match=rf"{ldap_cf}:2: timeout: bad time value"):
        build_user_database(settings)
    [problem] = check_user_database(settings)
    assert problem.startswith(f"{ldap_cf}:2: timeout: bad time value: 'never'")


def test_missing_ldap_file_names_the_main_cf_line(tmp_path: Path) -> None:
    settings = settings_of(f"auth_backends = ldap:{tmp_path}/nope.cf\n", tmp_path)
    with pytest.raises(ConfigError, match=r"main.cf:1: auth_backends: ldap:.*nope.cf: cannot read"):
        build_user_database(settings)


def test_bad_pam_service_name(tmp_path: Path) -> None:
    settings = settings_of("auth_backends = pam\nauth_pam_service = ../../etc/x\n", tmp_path)
    with pytest.raises(ConfigError, match="main.cf:2: auth_pam_service: invalid PAM service"):
        build_user_database(settings)


def test_check_reports_a_missing_pam_service_file(tmp_path: Path) -> None:
    settings = settings_of(
        "auth_backends = pam\nauth_pam_service = roost-no-such-service\n", tmp_path
    )
    problems = check_user_database(settings)
    if os.path.exists("/etc/pam.conf"):
        assert problems == []
    else:
        assert problems == [
            "/etc/pam.d/roost-no-such-service: missing (install etc/pam.d/roost there);"
            " PAM would use /etc/pam.d/other"
        ]


def test_check_does_not_contact_ldap_servers(tmp_path: Path) -> None:
    ldap_cf = tmp_path / "ldap.cf"
    ldap_cf.write_text(BASE + "server_host = ldap://127.0.0.1:1\n")
    settings = settings_of(f"auth_backends = ldap:{ldap_cf}\n", tmp_path)
    assert check_user_database(settings) == []


def test_the_examples_in_the_documentation_parse() -> None:
    text = (Path(__file__).parents[2] / "docs" / "authentication.md").read_text()
    blocks = [block.partition("```")[0] for block in text.split("```\n# /etc/roost/")[1:]]
    assert len(blocks) == 2  # OpenLDAP and Active Directory
    bodies = [  # the CA files of the examples do not exist here
        re.sub(r"(?m)^(tls_ca_cert_file = ).*$", rf"\g<1>{__file__}", block.partition("\n")[2])
        for block in blocks
    ]
    for body in bodies:
        config, _warnings = parse_ldap_config(body, "example.cf")
        assert config.search_base
    ad, _ = parse_ldap_config(bodies[1], "ad.cf")
    assert ad.login_filter.startswith("(&(objectCategory=person)(objectClass=user) (!(")
    assert expand_query(ad.login_filter, "alice") is not None


# --- what a bind result means --------------------------------------------------------------

AD_49 = "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data {}, v4563"


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ({"result": 0, "description": "success"}, None),
        ({"result": 49, "description": "invalidCredentials"}, FailureReason.BAD_PASSWORD),
        (
            {"result": 49, "description": "invalidCredentials", "message": AD_49.format("52e")},
            FailureReason.BAD_PASSWORD,
        ),
        (
            {"result": 49, "description": "invalidCredentials", "message": AD_49.format("533")},
            FailureReason.DISABLED,
        ),
        (
            {"result": 49, "description": "invalidCredentials", "message": AD_49.format("775")},
            FailureReason.DISABLED,
        ),
        (
            {"result": 49, "description": "invalidCredentials", "message": AD_49.format("532")},
            FailureReason.DISABLED,
        ),
        ({"result": 48, "description": "inappropriateAuthentication"}, FailureReason.BAD_PASSWORD),
        ({"result": 53, "description": "unwillingToPerform"}, FailureReason.DISABLED),
        ({"result": 51, "description": "busy"}, FailureReason.BACKEND_ERROR),
        ({"result": 52, "description": "unavailable"}, FailureReason.BACKEND_ERROR),
    ],
)
def test_bind_results(result: dict[str, object], reason: FailureReason | None) -> None:
    outcome = _bind_failure("uid=alice,dc=example,dc=com", result)
    if reason is None:
        assert outcome is None
    else:
        assert outcome is not None and outcome.failure is reason
        assert outcome.message.startswith("uid=alice,dc=example,dc=com: ")

"""main.cf syntax, expansion and typed values (postconf(5))."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.config import ConfigError, Settings, load_settings, parse_main_cf
from roost.config.expand import ExpansionError, expand
from roost.config.types import (
    parse_boolean,
    parse_integer,
    parse_list,
    parse_size,
    parse_table_refs,
    parse_time,
)


def settings_of(text: str) -> Settings:
    entries, problems = parse_main_cf(text, "main.cf")
    assert problems == []
    return Settings(entries, path=Path("/etc/roost/main.cf"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "main.cf"
    path.write_text(text)
    return path


# --- syntax ---------------------------------------------------------------------------


def test_continuation_lines_join_with_one_space_and_skip_comments() -> None:
    entries, problems = parse_main_cf(
        "mydestination = a,\n    b\n# a comment inside\n\tc\nrelayhost=x\n", "main.cf"
    )
    assert problems == []
    assert [(e.name, e.value, e.line, e.end_line) for e in entries] == [
        ("mydestination", "a, b c", 1, 4),
        ("relayhost", "x", 5, 5),
    ]


def test_whitespace_around_equals_and_value_is_dropped() -> None:
    entries, _ = parse_main_cf("  \nmyhostname   =   mx.example.com   \n", "f")
    assert entries[0].value == "mx.example.com"


def test_empty_value_is_allowed() -> None:
    entries, problems = parse_main_cf("relayhost =\n", "f")
    assert problems == [] and entries[0].value == ""


def test_missing_equals_is_an_error_with_file_and_line() -> None:
    _, problems = parse_main_cf("# x\nmyhostname mx.example.com\n", "/etc/roost/main.cf")
    assert [str(p) for p in problems] == [
        "/etc/roost/main.cf:2: missing '=' after parameter name 'myhostname mx.example.com'"
    ]


def test_leading_continuation_is_an_error() -> None:
    _, problems = parse_main_cf("  orphan = 1\n", "main.cf")
    assert [str(p) for p in problems] == [
        "main.cf:1: continuation line with no parameter before it"
    ]


def test_bad_parameter_name() -> None:
    _, problems = parse_main_cf("my hostname = x\n", "main.cf")
    assert [str(p) for p in problems] == ["main.cf:1: bad parameter name 'my hostname'"]


def test_repeated_parameter_warns_and_last_wins() -> None:
    entries, problems = parse_main_cf("relayhost = a\nrelayhost = b\n", "main.cf")
    assert [str(p) for p in problems] == [
        "warning: main.cf:2: relayhost: overrides the setting on line 1"
    ]
    assert Settings(entries).string("relayhost") == "b"


# --- expansion ------------------------------------------------------------------------


def test_dollar_forms_expand_lazily() -> None:
    s = settings_of(
        "myhostname = mx.example.com\nmydestination = $myhostname, ${mydomain}, $(myorigin)\n"
    )
    assert s.strings("mydestination") == ("mx.example.com", "example.com", "mx.example.com")
    assert s.raw("mydestination") == "$myhostname, ${mydomain}, $(myorigin)"


def test_expansion_uses_later_definitions() -> None:
    s = settings_of("myorigin = $mydomain\nmydomain = example.org\n")
    assert s.string("myorigin") == "example.org"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${set?yes}", "yes"),
        ("${empty?yes}", ""),
        ("${set:no}", ""),
        ("${empty:no}", "no"),
        ("${undefined:fallback}", "fallback"),
        ("${set?{a $set}:{b}}", "a v"),
        ("${empty?{a}:{b $set}}", "b v"),
        ("${set?${set}x}", "vx"),
        ("$$set", "$set"),
        ("cost $", "cost $"),
        ("$undefined!", "!"),
    ],
)
def test_conditional_and_literal_forms(text: str, expected: str) -> None:
    values = {"set": "v", "empty": ""}
    assert expand(text, lambda name: values.get(name, "")) == expected


def test_unbalanced_brace_is_an_error() -> None:
    with pytest.raises(ExpansionError, match="missing '}'"):
        expand("${name", lambda name: "")


def test_bad_operator_is_an_error() -> None:
    with pytest.raises(ExpansionError, match="expected \\? or :"):
        expand("${name!x}", lambda name: "")


def test_reference_loop_is_reported_not_a_hang(tmp_path: Path) -> None:
    path = write(tmp_path, "myhostname = $myorigin\nmyorigin = $myhostname\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert f"{path}:1: myhostname: parameter refers to itself:" in str(info.value)


def test_mydomain_default_is_myhostname_minus_first_label() -> None:
    assert settings_of("myhostname = a.b.example\n").string("mydomain") == "b.example"
    assert settings_of("myhostname = localhost\n").string("mydomain") == "localdomain"


def test_config_directory_follows_the_file() -> None:
    s = Settings(path=Path("/srv/roost/main.cf"))
    assert s.string("tls_cert_file") == "/srv/roost/tls/cert.pem"


# --- types ----------------------------------------------------------------------------


def test_integer() -> None:
    assert parse_integer(" 50 ") == 50
    assert parse_integer("-1") == -1
    with pytest.raises(ValueError, match="bad integer value: '5x'"):
        parse_integer("5x")
    with pytest.raises(ValueError, match="below the minimum 0"):
        parse_integer("-3", minimum=0)


@pytest.mark.parametrize("text", ["yes", "YES", "true"])
def test_boolean_true(text: str) -> None:
    assert parse_boolean(text) is True


def test_boolean() -> None:
    assert parse_boolean("no") is False
    with pytest.raises(ValueError, match=r"bad boolean value: 'maybe' \(use yes or no\)"):
        parse_boolean("maybe")


@pytest.mark.parametrize(
    ("text", "unit", "seconds"),
    [
        ("300s", "s", 300),
        ("5m", "s", 300),
        ("2h", "s", 7200),
        ("5d", "s", 432000),
        ("1w", "s", 604800),
        ("1h30m", "s", 5400),
        ("300", "s", 300),
        ("5", "d", 432000),
    ],
)
def test_time(text: str, unit: str, seconds: int) -> None:
    assert parse_time(text, default_unit=unit) == seconds


@pytest.mark.parametrize("text", ["", "5y", "s", "1.5h", "-3s"])
def test_time_errors(text: str) -> None:
    with pytest.raises(ValueError, match="time value"):
        parse_time(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10240000", 10240000),
        ("512k", 524288),
        ("10M", 10485760),
        ("1G", 1073741824),
        ("2 MB", 2097152),
    ],
)
def test_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "10x", "-5", "1.5M"])
def test_size_errors(text: str) -> None:
    with pytest.raises(ValueError, match="bad size value"):
        parse_size(text)


def test_list_splits_on_commas_and_whitespace_keeping_braces() -> None:
    assert parse_list("a, b c,,\td") == ("a", "b", "c", "d")
    assert parse_list("inline:{ a=1, b=2 }, static:{x y}") == (
        "inline:{ a=1, b=2 }",
        "static:{x y}",
    )
    assert parse_list("") == ()


def test_table_refs() -> None:
    assert parse_table_refs("texthash:/etc/a, cidr:/etc/b") == ("texthash:/etc/a", "cidr:/etc/b")
    with pytest.raises(ValueError, match="bad lookup table '/etc/aliases'"):
        parse_table_refs("/etc/aliases")


# --- load_settings: every error names file, line and parameter -----------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("message_size_limit = huge", "message_size_limit: bad size value: 'huge'"),
        ("smtp_service_port = 25x", "smtp_service_port: bad integer value: '25x'"),
        ("smtp_service_port = -1", "smtp_service_port: value -1 is below the minimum 0"),
        ("tls_selfsigned_auto = perhaps", "tls_selfsigned_auto: bad boolean value: 'perhaps'"),
        ("shutdown_grace_time = soon", "shutdown_grace_time: bad time value: 'soon'"),
        ("alias_maps = /etc/aliases", "alias_maps: bad lookup table '/etc/aliases'"),
        ("mynetworks_style = galaxy", "mynetworks_style: bad value 'galaxy' (allowed: host,"),
        ("inet_protocols = ipv4, ipv5", "inet_protocols: bad value 'ipv5' (allowed: all,"),
        ("ssl_min_protocol = SSLv3", "ssl_min_protocol: bad value 'SSLv3'"),
        ("myhostname = ${oops", "myhostname: missing '}'"),
        ("smtp/message_size_limit = big", "smtp/message_size_limit: bad size value: 'big'"),
        ("mars/myhostname = x", "mars/myhostname: unknown service 'mars'"),
    ],
)
def test_invalid_values_name_file_line_and_parameter(
    tmp_path: Path, line: str, message: str
) -> None:
    path = write(tmp_path, f"# first line\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}:2: {message}")


def test_bad_reference_is_reported_at_the_referring_default(tmp_path: Path) -> None:
    path = write(tmp_path, "tls_selfsigned_auto = $mydomain\n")
    with pytest.raises(ConfigError, match="tls_selfsigned_auto: bad boolean value"):
        load_settings(path)


def test_unknown_parameter_warns_with_closest_name(tmp_path: Path) -> None:
    path = write(tmp_path, "message_size_limt = 5\nmyhostname = mx.example.com\n")
    settings, warnings = load_settings(path)
    assert [str(w) for w in warnings] == [
        f"warning: {path}:1: message_size_limt: unknown parameter; did you mean message_size_limit?"
    ]
    assert settings.string("myhostname") == "mx.example.com"


def test_user_defined_parameter_referenced_elsewhere_does_not_warn(tmp_path: Path) -> None:
    path = write(tmp_path, "my_domains = a.test b.test\nmydestination = $my_domains\n")
    settings, warnings = load_settings(path)
    assert warnings == []
    assert settings.strings("mydestination") == ("a.test", "b.test")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="main.cf: configuration file does not exist"):
        load_settings(tmp_path / "main.cf")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.mkdir()
    with pytest.raises(ConfigError, match="main.cf: cannot read: Is a directory"):
        load_settings(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_bytes(b"myhostname = \xff\xfe\n")
    with pytest.raises(ConfigError, match="main.cf: cannot read: 'utf-8' codec"):
        load_settings(path)


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "message_size_limit = x\nsmtp_service_port = y\nbroken line\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert [p.line for p in info.value.problems] == [1, 2, 3]


# --- per-service overrides ------------------------------------------------------------


def test_service_override_applies_only_to_its_service() -> None:
    s = settings_of("message_size_limit = 1000\nsubmission/message_size_limit = 5000\n")
    assert s.size("message_size_limit") == 1000
    assert s.for_service("submission").size("message_size_limit") == 5000
    assert s.for_service("smtp").size("message_size_limit") == 1000


def test_override_changes_expansion_of_dependent_defaults() -> None:
    s = settings_of("imaps/tls_cert_file = /other/cert.pem\n")
    assert s.for_service("imaps").string("imap_tls_cert_file") == "/other/cert.pem"
    assert s.string("imap_tls_cert_file") == "/etc/roost/tls/cert.pem"


def test_typed_accessor_refuses_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="message_size_limit is a size, not a integer"):
        settings_of("").integer("message_size_limit")

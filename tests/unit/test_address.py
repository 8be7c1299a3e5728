"""Unit tests for roost.address: RFC 5321 paths, ESMTP parameters, xtext, relay helpers."""

from __future__ import annotations

import contextlib
import ipaddress
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.address import (
    NULL_PATH,
    Address,
    AddressError,
    AddressErrorKind,
    NullPath,
    addresses_from_headers,
    decode_xtext,
    domain_matches,
    encode_xtext,
    has_routing_characters,
    is_fqdn,
    is_valid_hostname,
    normalize_domain,
    parse_esmtp_params,
    parse_mailbox,
    parse_path,
    quote_local_part,
    split_command_argument,
    split_extension,
)

K = AddressErrorKind
UTF8 = {"smtputf8": True}
STRICT = {"strict": True}
RCPT = {"allow_null": False}
NO_LIMITS = {"enforce_length_limits": False}

LONG_LOCAL_64 = "a" * 64
LABEL_63 = "b" * 63
# "<" + local + "@" + domain + ">" == 256 octets exactly.
DOMAIN_FOR_256 = ".".join(["c" * 63, "d" * 63, "e" * 63, "f" * 56]) + ".org"  # 252 octets
assert len(DOMAIN_FOR_256) == 252
DOMAIN_256 = ".".join([LABEL_63] * 4)  # 255 octets: the longest domain
assert len(DOMAIN_256) == 255


def _p(text: str, expected: Any, **kwargs: Any) -> Any:
    return pytest.param(text, kwargs, expected, id=repr(text)[:60] + repr(kwargs))


# expected: (local_part, domain, domain_key, source_route) or an AddressErrorKind.
PATH_TABLE = [
    # --- valid, RFC 5321 grammar
    _p("<user@example.com>", ("user", "example.com", "example.com", ())),
    _p("<User.Name@Example.COM>", ("User.Name", "Example.COM", "example.com", ())),
    _p(
        "<a!#$%&'*+-/=?^_`{|}~z@example.com>",
        ("a!#$%&'*+-/=?^_`{|}~z", "example.com", "example.com", ()),
    ),
    _p('<"john doe"@example.com>', ("john doe", "example.com", "example.com", ())),
    _p('<"a\\"b"@example.com>', ('a"b', "example.com", "example.com", ())),
    _p('<"a\\\\b"@example.com>', ("a\\b", "example.com", "example.com", ())),
    _p('<"a\\xb"@example.com>', ("axb", "example.com", "example.com", ())),
    _p('<"john.doe"@example.com>', ("john.doe", "example.com", "example.com", ())),
    _p('<""@example.com>', ("", "example.com", "example.com", ())),
    _p('<"a>b"@example.com>', ("a>b", "example.com", "example.com", ())),
    _p('<"@"@example.com>', ("@", "example.com", "example.com", ())),
    _p("<user@[192.0.2.1]>", ("user", "[192.0.2.1]", "[192.0.2.1]", ())),
    _p(
        "<user@[IPv6:2001:DB8::1]>",
        ("user", "[IPv6:2001:DB8::1]", "[ipv6:2001:db8::1]", ()),
    ),
    _p(
        "<user@[ipv6:0:0:0:0:0:0:0:1]>",
        ("user", "[ipv6:0:0:0:0:0:0:0:1]", "[ipv6:::1]", ()),
    ),
    _p("<user@[001.002.003.004]>", ("user", "[001.002.003.004]", "[1.2.3.4]", ())),
    _p(
        "<@relay.example:user@example.com>",
        ("user", "example.com", "example.com", ("relay.example",)),
    ),
    _p(
        "<@a.example,@b.example:user@example.com>",
        ("user", "example.com", "example.com", ("a.example", "b.example")),
    ),
    _p("<postmaster>", ("postmaster", "", "", ())),
    _p("<PostMaster>", ("PostMaster", "", "", ()), **STRICT),
    _p("<x@a-b.example>", ("x", "a-b.example", "a-b.example", ())),
    _p("<x@123.example>", ("x", "123.example", "123.example", ())),
    _p("<x@localhost>", ("x", "localhost", "localhost", ())),
    _p(
        "<x@XN--BCHER-KVA.example>",
        ("x", "XN--BCHER-KVA.example", "xn--bcher-kva.example", ()),
    ),
    _p(f"<{LONG_LOCAL_64}@example.com>", (LONG_LOCAL_64, "example.com", "example.com", ())),
    _p(f"<a@{DOMAIN_FOR_256}>", ("a", DOMAIN_FOR_256, DOMAIN_FOR_256, ())),
    _p(f"<a@{LABEL_63}.example>", ("a", f"{LABEL_63}.example", f"{LABEL_63}.example", ())),
    _p(f"<a@{DOMAIN_256}>", ("a", DOMAIN_256, DOMAIN_256, ()), **NO_LIMITS),
    _p("<user@example.com>", ("user", "example.com", "example.com", ()), **STRICT),
    _p("<>", NULL_PATH),
    _p("<>", NULL_PATH, **STRICT),
    # --- valid, SMTPUTF8 (RFC 6531)
    _p(
        "<jöran@bücher.example>",
        ("jöran", "bücher.example", "xn--bcher-kva.example", ()),
        **UTF8,
    ),
    _p("<user@BÜCHER.example>", ("user", "BÜCHER.example", "xn--bcher-kva.example", ()), **UTF8),
    _p('<"jö ran"@example.com>', ("jö ran", "example.com", "example.com", ()), **UTF8),
    _p("<用户@例子.广告>", ("用户", "例子.广告", "xn--fsqu00a.xn--4rr70v", ()), **UTF8),
    _p("<user@faß.de>", ("user", "faß.de", "xn--fa-hia.de", ()), **UTF8),
    _p("<user@example.com>", ("user", "example.com", "example.com", ()), **UTF8),
    # --- valid only with Postfix leniency (strict=False, the default)
    _p("user@example.com", ("user", "example.com", "example.com", ())),
    _p('"john doe"@example.com', ("john doe", "example.com", "example.com", ())),
    _p("<user@example.com.>", ("user", "example.com.", "example.com", ())),
    _p("<a..b@docomo.ne.jp>", ("a..b", "docomo.ne.jp", "docomo.ne.jp", ())),
    _p("<.a@example.jp>", (".a", "example.jp", "example.jp", ())),
    _p("<a.@example.jp>", ("a.", "example.jp", "example.jp", ())),
    _p("<user@remote@local>", ("user@remote", "local", "local", ())),
    _p("<localuser>", ("localuser", "", "", ())),
    _p("@relay:user@example.com", ("user", "example.com", "example.com", ("relay",))),
    # --- invalid: structure
    _p("<>", K.SYNTAX, **RCPT),
    _p("", K.SYNTAX),
    _p("<", K.SYNTAX),
    _p(">", K.SYNTAX),
    _p("<user@example.com", K.SYNTAX),
    _p("user@example.com>", K.SYNTAX),
    _p("<<user@example.com>>", K.SYNTAX),
    _p("<user@example.com> ", K.SYNTAX),
    _p("< user@example.com>", K.SYNTAX),
    _p("<user@>", K.SYNTAX),
    _p("<@example.com>", K.SYNTAX),
    _p("<@>", K.SYNTAX),
    _p('<"">', K.SYNTAX),
    # --- invalid: local part
    _p("<a b@example.com>", K.SYNTAX),
    _p("<a(b)@example.com>", K.SYNTAX),
    _p("<a,b@example.com>", K.SYNTAX),
    _p('<"unterminated@example.com>', K.SYNTAX),
    _p('<"a"b@example.com>', K.SYNTAX),
    _p('<"a".b@example.com>', K.SYNTAX),
    _p('<a"b"@example.com>', K.SYNTAX),
    _p('<"a\\"@example.com>', K.SYNTAX),
    _p('<"a\tb"@example.com>', K.SYNTAX),
    _p("<user\x00@example.com>", K.SYNTAX),
    _p("<user@example.com\r\n>", K.SYNTAX),
    _p('<"a"@b@c>', K.SYNTAX),
    # --- invalid: domain
    _p("<user@-example.com>", K.SYNTAX),
    _p("<user@example-.com>", K.SYNTAX),
    _p("<user@exa_mple.com>", K.SYNTAX),
    _p("<user@example..com>", K.SYNTAX),
    _p("<user@.example.com>", K.SYNTAX),
    _p("<user@example.com..>", K.SYNTAX),
    _p("<user@.>", K.SYNTAX),
    _p("<user@1.2.3.4>", K.SYNTAX),
    _p("<user@exa mple.com>", K.SYNTAX),
    _p("<user@☃.example>", K.SYNTAX, **UTF8),
    _p("<user@a。b>", K.SYNTAX, **UTF8),
    _p("<user@example.com\ud800>", K.SYNTAX, **UTF8),
    _p("<us\u0085er@example.com>", K.SYNTAX, **UTF8),
    _p("<us\u2028er@example.com>", K.SYNTAX, **UTF8),
    # --- invalid: address literals
    _p("<user@[1.2.3]>", K.BAD_ADDRESS_LITERAL),
    _p("<user@[256.1.1.1]>", K.BAD_ADDRESS_LITERAL),
    _p("<user@[1.2.3.4.5]>", K.BAD_ADDRESS_LITERAL),
    _p("<user@[IPv6:1::2::3]>", K.BAD_ADDRESS_LITERAL),
    _p("<user@[IPv6:fe80::1%eth0]>", K.BAD_ADDRESS_LITERAL),
    _p("<user@[IPv6:1.2.3.4]>", K.BAD_ADDRESS_LITERAL),
    _p("<user@[2001:db8::1]>", K.BAD_ADDRESS_LITERAL),
    _p("<user@[x400:c=us;a=b]>", K.BAD_ADDRESS_LITERAL),
    _p("<user@[1.2.3.4>", K.BAD_ADDRESS_LITERAL),
    _p("<user@[]>", K.BAD_ADDRESS_LITERAL),
    _p("<user@[example.com]>", K.BAD_ADDRESS_LITERAL),
    # --- invalid: lengths (RFC 5321 §4.5.3.1)
    _p(f"<a{LONG_LOCAL_64}@example.com>", K.LOCAL_PART_TOO_LONG),
    _p(f'<"{LONG_LOCAL_64[:63]}"@example.com>', K.LOCAL_PART_TOO_LONG),
    _p(f"<ab@{DOMAIN_FOR_256}>", K.TOO_LONG),
    _p(f"<@relay.example:a@{DOMAIN_FOR_256}>", K.TOO_LONG),
    _p(f"<a@{LABEL_63}b.example>", K.DOMAIN_TOO_LONG),
    _p(f"<a@{DOMAIN_256}.x>", K.DOMAIN_TOO_LONG, **NO_LIMITS),
    _p(f"<a@{'ü' * 60}.example>", K.DOMAIN_TOO_LONG, **UTF8),
    # --- invalid: UTF-8 without SMTPUTF8 (RFC 6531 §3.2)
    _p("<jöran@example.com>", K.NON_ASCII_WITHOUT_SMTPUTF8),
    _p("<user@bücher.example>", K.NON_ASCII_WITHOUT_SMTPUTF8),
    _p('<"jö ran"@example.com>', K.NON_ASCII_WITHOUT_SMTPUTF8),
    # --- invalid only in strict mode (Postfix strict_rfc821_envelopes = yes)
    _p("user@example.com", K.SYNTAX, **STRICT),
    _p("<user@example.com.>", K.SYNTAX, **STRICT),
    _p("<a..b@example.jp>", K.SYNTAX, **STRICT),
    _p("<.a@example.jp>", K.SYNTAX, **STRICT),
    _p("<user@remote@local>", K.SYNTAX, **STRICT),
    _p("<localuser>", K.SYNTAX, **STRICT),
    _p("<@relay.example.:user@example.com>", K.SYNTAX, **STRICT),
    # --- invalid: source routes
    _p("<@relay:postmaster>", K.SYNTAX),
    _p('<@relay:"a@b">', K.SYNTAX),
    _p("<@relay user@example.com>", K.SYNTAX),
    _p("<@relay:>", K.SYNTAX),
    _p("<@:user@example.com>", K.SYNTAX),
    _p("<@a,b:user@example.com>", K.SYNTAX),
    _p("<@a,,@b:user@example.com>", K.SYNTAX),
    _p("<@[1.2.3.4]:user@example.com>", K.SYNTAX),
    _p("<relay:user@example.com>", K.SYNTAX),
]


def test_path_table_is_big_enough() -> None:
    assert len(PATH_TABLE) >= 60


@pytest.mark.parametrize(("text", "kwargs", "expected"), PATH_TABLE)
def test_parse_path_table(text: str, kwargs: dict[str, Any], expected: Any) -> None:
    options: dict[str, Any] = {"allow_null": True, **kwargs}
    if isinstance(expected, AddressErrorKind):
        with pytest.raises(AddressError) as info:
            parse_path(text, **options)
        assert info.value.kind is expected, info.value.reason
        return
    result = parse_path(text, **options)
    if isinstance(expected, NullPath):
        assert result is NULL_PATH
        return
    assert isinstance(result, Address)
    local_part, domain, key, route = expected
    assert result.local_part == local_part
    assert result.domain == domain
    assert result.domain_key == key
    assert result.source_route == route
    assert result.had_source_route is bool(route)
    assert not result.is_null
    # The canonical form is strict RFC 5321 (minus a trailing dot kept as given) and reparses
    # to the same address.
    again = parse_path(f"<{result}>", allow_null=False, **{**kwargs, "strict": False})
    assert again == result


def test_length_limits_can_be_lifted_for_srs_and_verp() -> None:
    srs = "SRS0=HHH=TT=" + "example.org=" + "x" * 80
    with pytest.raises(AddressError) as info:
        parse_path(f"<{srs}@forwarder.example>", allow_null=True)
    assert info.value.kind is K.LOCAL_PART_TOO_LONG
    address = parse_path(f"<{srs}@forwarder.example>", allow_null=True, **NO_LIMITS)
    assert isinstance(address, Address)
    assert address.local_part == srs


# --------------------------------------------------------------------------------------------
# Relay tricks: every form parses to something the policy can judge.

RELAY_TRICKS = [
    # text, domain_key, has_routing_characters, had_source_route
    ("<user%remote@local.example>", "local.example", True, False),
    ('<"user@remote"@local.example>', "local.example", True, False),
    ("<@local.example:user@remote.example>", "remote.example", False, True),
    ("<user@remote.example@local.example>", "local.example", True, False),
    ("<user!remote@local.example>", "local.example", True, False),
    ("<remote!user@local.example>", "local.example", True, False),
    ('<"user%remote"@local.example>', "local.example", True, False),
    ("<user@LOCAL.EXAMPLE.>", "local.example", False, False),
    ("<user@[1.2.3.4]>", "[1.2.3.4]", False, False),
    ("<user@local.example>", "local.example", False, False),
]


@pytest.mark.parametrize(("text", "key", "routing", "routed"), RELAY_TRICKS)
def test_relay_tricks_are_judgeable(text: str, key: str, routing: bool, routed: bool) -> None:
    address = parse_path(text, allow_null=False)
    assert address.domain_key == key
    assert has_routing_characters(address) is routing
    assert address.had_source_route is routed


def test_relay_tricks_against_local_domains() -> None:
    local = ["local.example"]
    # The domain part says "local", but the routing characters make it a relay attempt.
    for text in ("<user%remote@local.example>", "<user@remote@local.example>"):
        address = parse_path(text, allow_null=False)
        assert domain_matches(address.domain, local)
        assert has_routing_characters(address)
    routed = parse_path("<@local.example:user@remote.example>", allow_null=False)
    assert not domain_matches(routed.domain, local)
    assert routed.source_route == ("local.example",)
    dotted = parse_path("<user@LOCAL.example.>", allow_null=False)
    assert domain_matches(dotted.domain, local)


def test_ip_literal() -> None:
    address = parse_path("<user@[1.2.3.4]>", allow_null=False)
    assert address.ip_literal == ipaddress.IPv4Address("1.2.3.4")
    v6 = parse_path("<user@[IPv6:2001:db8::1]>", allow_null=False)
    assert v6.ip_literal == ipaddress.IPv6Address("2001:db8::1")
    assert parse_path("<user@example.com>", allow_null=False).ip_literal is None


def test_has_routing_characters_null_path() -> None:
    assert has_routing_characters(NULL_PATH) is False


# --------------------------------------------------------------------------------------------
# Address values


def test_null_path() -> None:
    assert NULL_PATH.is_null
    assert not NULL_PATH.had_source_route
    assert str(NULL_PATH) == ""
    assert NULL_PATH.format(smtputf8=False) == ""
    assert NullPath() == NULL_PATH


def test_canonical_form_quotes_only_when_needed() -> None:
    assert str(Address("user", "example.com")) == "user@example.com"
    assert str(Address("john doe", "example.com")) == '"john doe"@example.com'
    assert str(Address('a"b\\c', "example.com")) == '"a\\"b\\\\c"@example.com'
    assert str(Address("a..b", "example.jp")) == '"a..b"@example.jp'
    assert str(Address("", "example.com")) == '""@example.com'
    assert str(Address("postmaster", "")) == "postmaster"
    assert str(Address("jöran", "bücher.example")) == "jöran@bücher.example"
    assert quote_local_part("a.b") == "a.b"
    assert quote_local_part(".a") == '".a"'


def test_source_route_is_not_part_of_equality() -> None:
    routed = parse_path("<@relay.example:user@example.com>", allow_null=False)
    plain = parse_path("<user@example.com>", allow_null=False)
    assert routed == plain
    assert hash(routed) == hash(plain)
    assert routed.had_source_route and not plain.had_source_route
    assert str(routed) == "user@example.com"


def test_address_is_frozen() -> None:
    address = Address("user", "example.com")
    with pytest.raises(AttributeError):
        address.local_part = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("local_part", "domain", "kind"),
    [
        ("", "", K.SYNTAX),
        ("a\nb", "example.com", K.SYNTAX),
        ("user", "exa mple.com", K.SYNTAX),
        ("user", "example.com\r", K.SYNTAX),
        ("user", "[1.2.3]", K.BAD_ADDRESS_LITERAL),
        ("user", "a" * 64 + ".com", K.DOMAIN_TOO_LONG),
    ],
)
def test_address_constructor_validates(
    local_part: str, domain: str, kind: AddressErrorKind
) -> None:
    with pytest.raises(AddressError) as info:
        Address(local_part, domain)
    assert info.value.kind is kind


def test_idna_domain_forms() -> None:
    address = parse_path("<user@Bücher.Example.>", allow_null=False, **UTF8)
    assert address.domain == "Bücher.Example."
    assert address.ascii_domain == "xn--bcher-kva.Example."
    assert address.domain_key == "xn--bcher-kva.example"
    assert address.utf8_domain == "Bücher.Example."
    assert address.format(smtputf8=False) == "user@xn--bcher-kva.Example."
    assert not address.requires_smtputf8

    ace = parse_path("<user@xn--bcher-kva.example>", allow_null=False)
    assert ace.utf8_domain == "bücher.example"
    assert ace.ascii_domain == "xn--bcher-kva.example"
    assert ace.domain_key == address.domain_key
    # An ACE label that is not valid punycode stays as is.
    bogus = parse_path("<user@xn--zz.example>", allow_null=False)
    assert bogus.utf8_domain == "xn--zz.example"


def test_idna_smtputf8_off_and_on() -> None:
    with pytest.raises(AddressError) as info:
        parse_path("<user@bücher.example>", allow_null=False)
    assert info.value.kind is K.NON_ASCII_WITHOUT_SMTPUTF8
    assert info.value.reply_code == 553
    assert info.value.enhanced_status(sender=False) == "5.6.7"
    address = parse_path("<user@bücher.example>", allow_null=False, smtputf8=True)
    assert address.domain_key == "xn--bcher-kva.example"
    # The A-label form needs no SMTPUTF8 at all.
    ascii_form = parse_path(f"<{address.format(smtputf8=False)}>", allow_null=False)
    assert ascii_form.domain_key == address.domain_key


def test_non_ascii_local_part_cannot_be_downgraded() -> None:
    address = parse_path("<jöran@example.com>", allow_null=False, smtputf8=True)
    assert address.requires_smtputf8
    with pytest.raises(AddressError) as info:
        address.format(smtputf8=False)
    assert info.value.kind is K.NON_ASCII_WITHOUT_SMTPUTF8


def test_error_hints() -> None:
    with pytest.raises(AddressError) as info:
        parse_path("<a b@example.com>", allow_null=True)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.reply_code == 501
    assert error.enhanced_status(sender=True) == "5.1.7"
    assert error.enhanced_status(sender=False) == "5.1.3"
    assert "a b" not in error.reason
    with pytest.raises(AddressError) as params:
        parse_esmtp_params("SIZE=1 SIZE=2")
    assert params.value.enhanced_status(sender=True) == "5.5.4"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user@example.com", Address("user", "example.com")),
        ('"john doe"@example.com', Address("john doe", "example.com")),
        ("postmaster", Address("postmaster", "")),
        ("user@[192.0.2.1]", Address("user", "[192.0.2.1]")),
    ],
)
def test_parse_mailbox(text: str, expected: Address) -> None:
    assert parse_mailbox(text) == expected


@pytest.mark.parametrize("text", ["", "<user@example.com>", "@relay:user@example.com", "a b"])
def test_parse_mailbox_rejects(text: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(text)


# --------------------------------------------------------------------------------------------
# Command arguments and ESMTP parameters


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<a@b.example>", ("<a@b.example>", "")),
        ("<a@b.example> SIZE=100 BODY=8BITMIME", ("<a@b.example>", "SIZE=100 BODY=8BITMIME")),
        (" <a@b.example>", ("<a@b.example>", "")),
        ("\t <a@b.example>  SIZE=1  ", ("<a@b.example>", "SIZE=1")),
        ("<>", ("<>", "")),
        ("<> BODY=7BIT", ("<>", "BODY=7BIT")),
        ('<"a>b c"@x.example> SIZE=1', ('<"a>b c"@x.example>', "SIZE=1")),
        ('<"a\\"> b"@x.example>', ('<"a\\"> b"@x.example>', "")),
        ("a@b.example SIZE=1", ("a@b.example", "SIZE=1")),
        ('"john doe"@x.example SIZE=1', ('"john doe"@x.example', "SIZE=1")),
        ("<@r.example:a@b.example>", ("<@r.example:a@b.example>", "")),
    ],
)
def test_split_command_argument(arg: str, expected: tuple[str, str]) -> None:
    assert split_command_argument(arg) == expected


@pytest.mark.parametrize("arg", ["", "   ", "<a@b.example", "<a@b.example>x", '<"a>@b', "<a@b>>"])
def test_split_command_argument_rejects(arg: str) -> None:
    with pytest.raises(AddressError) as info:
        split_command_argument(arg)
    assert info.value.kind is K.SYNTAX


def test_split_then_parse_with_quoted_bracket() -> None:
    path, params = split_command_argument(' <"x> y"@example.com> NOTIFY=NEVER')
    address = parse_path(path, allow_null=False)
    assert address.local_part == "x> y"
    assert parse_esmtp_params(params) == {"NOTIFY": "NEVER"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("   ", {}),
        ("SIZE=1000", {"SIZE": "1000"}),
        ("size=1000 body=8bitmime", {"SIZE": "1000", "BODY": "8bitmime"}),
        ("SMTPUTF8", {"SMTPUTF8": None}),
        ("RET=HDRS ENVID=QQ314159", {"RET": "HDRS", "ENVID": "QQ314159"}),
        ("AUTH=<>", {"AUTH": "<>"}),
        ("X-Vendor-1=a\tY=b", {"X-VENDOR-1": "a", "Y": "b"}),
        ("ORCPT=rfc822;a+2Bb@example.com", {"ORCPT": "rfc822;a+2Bb@example.com"}),
        ("SMTPUTF8 X=ü", {"SMTPUTF8": None, "X": "ü"}),
    ],
)
def test_parse_esmtp_params(text: str, expected: dict[str, str | None]) -> None:
    assert parse_esmtp_params(text) == expected


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("SIZE=1 size=2", K.PARAMETER_SYNTAX),
        ("SIZE=", K.PARAMETER_SYNTAX),
        ("=1", K.PARAMETER_SYNTAX),
        ("-X=1", K.PARAMETER_SYNTAX),
        ("X_Y=1", K.PARAMETER_SYNTAX),
        ("X=a=b", K.PARAMETER_SYNTAX),
        ("X=a\x00", K.PARAMETER_SYNTAX),
        ("X=ü", K.NON_ASCII_WITHOUT_SMTPUTF8),
    ],
)
def test_parse_esmtp_params_rejects(text: str, kind: AddressErrorKind) -> None:
    with pytest.raises(AddressError) as info:
        parse_esmtp_params(text)
    assert info.value.kind is kind


def test_parse_esmtp_params_utf8_in_rcpt_of_smtputf8_transaction() -> None:
    assert parse_esmtp_params("X=ü", smtputf8=True) == {"X": "ü"}


# --------------------------------------------------------------------------------------------
# xtext (RFC 3461 §4)


@pytest.mark.parametrize(
    ("decoded", "encoded"),
    [
        ("", ""),
        ("abc", "abc"),
        ("a+b", "a+2Bb"),
        ("a=b", "a+3Db"),
        ("a b", "a+20b"),
        ("user@example.com", "user@example.com"),
        ("\r\n", "+0D+0A"),
        ("é", "+C3+A9"),
        ("<>;!~", "<>;!~"),
    ],
)
def test_xtext_vectors(decoded: str, encoded: str) -> None:
    assert encode_xtext(decoded) == encoded
    assert decode_xtext(encoded) == decoded


def test_decode_xtext_accepts_lowercase_hex() -> None:
    assert decode_xtext("a+2bb") == "a+b"


@pytest.mark.parametrize("text", ["+", "+2", "+G0", "a=b", "a b", "ü", "+FF", "+C3"])
def test_decode_xtext_rejects(text: str) -> None:
    with pytest.raises(AddressError) as info:
        decode_xtext(text)
    assert info.value.kind is K.PARAMETER_SYNTAX


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_xtext_round_trip(text: str) -> None:
    encoded = encode_xtext(text)
    assert encoded.isascii()
    assert all("!" <= ch <= "~" and ch != "=" for ch in encoded)
    assert decode_xtext(encoded) == text


# --------------------------------------------------------------------------------------------
# Policy helpers


@pytest.mark.parametrize(
    ("domain", "patterns", "parent", "expected"),
    [
        ("example.com", ["example.com"], False, True),
        ("EXAMPLE.COM.", ["example.com"], False, True),
        ("example.com", ["Example.Com."], False, True),
        ("sub.example.com", ["example.com"], False, False),
        ("sub.example.com", ["example.com"], True, True),
        ("deep.sub.example.com", ["example.com"], True, True),
        ("badexample.com", ["example.com"], True, False),
        ("sub.example.com", [".example.com"], False, True),
        ("sub.example.com", [".example.com"], True, True),
        ("example.com", [".example.com"], False, False),
        ("example.com", [".example.com"], True, False),
        ("other.org", ["example.com", "other.org"], False, True),
        ("bad.example.com", ["!bad.example.com", ".example.com"], False, False),
        ("good.example.com", ["!bad.example.com", ".example.com"], False, True),
        ("bücher.example", ["xn--bcher-kva.example"], False, True),
        ("xn--bcher-kva.example", ["BÜCHER.example"], False, True),
        ("[1.2.3.4]", ["[1.2.3.4]"], False, True),
        ("[001.2.3.4]", ["[1.2.3.4]"], True, True),
        ("[1.2.3.4]", ["3.4]"], True, False),
        ("", ["example.com"], True, False),
        ("example.com", [], False, False),
        ("example.com", ["", "  "], False, False),
    ],
)
def test_domain_matches(domain: str, patterns: list[str], parent: bool, expected: bool) -> None:
    assert domain_matches(domain, patterns, parent_matches_subdomains=parent) is expected


@pytest.mark.parametrize(
    ("domain", "kwargs", "expected"),
    [
        ("example.com", {}, True),
        ("example.com.", {}, True),
        ("mail.example.co.uk", {}, True),
        ("localhost", {}, False),
        ("", {}, False),
        ("example..com", {}, False),
        ("example.com..", {}, False),
        ("-bad.example", {}, False),
        ("under_score.example", {}, True),
        ("1.2.3.4", {}, False),
        ("[1.2.3.4]", {}, True),
        ("[1.2.3.4]", {"allow_address_literal": False}, False),
        ("[1.2.3]", {}, False),
        ("bücher.example", {}, False),
        ("bücher.example", {"smtputf8": True}, True),
        ("☃.example", {"smtputf8": True}, False),
        ("x" * 64 + ".example", {}, False),
    ],
)
def test_is_fqdn(domain: str, kwargs: dict[str, Any], expected: bool) -> None:
    assert is_fqdn(domain, **kwargs) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mail.example.com", True),
        ("mail.example.com.", True),
        ("localhost", True),
        ("WIN_PC", True),
        ("[192.0.2.1]", True),
        ("[IPv6:2001:db8::1]", True),
        ("192.0.2.1", True),
        ("2001:db8::1", True),
        ("", False),
        ("bad host", False),
        ("-bad", False),
        ("bad-", False),
        ("a..b", False),
        ("a.b..", False),
        ("123", False),
        ("[192.0.2]", False),
        ("[mail.example.com]", False),
        ("bücher.example", False),
        ("x" * 64, False),
        (".".join(["x" * 63] * 4) + ".x", False),
    ],
)
def test_is_valid_hostname(name: str, expected: bool) -> None:
    assert is_valid_hostname(name) is expected


@pytest.mark.parametrize(
    ("local_part", "delimiters", "expected"),
    [
        ("user+tag", "+", ("user", "tag")),
        ("user+tag+more", "+", ("user", "tag+more")),
        ("user-tag+x", "+-", ("user", "tag+x")),
        ("user+tag-x", "+-", ("user", "tag-x")),
        ("user", "+", ("user", None)),
        ("user+", "+", ("user", "")),
        ("+user", "+", ("+user", None)),
        ("user+tag", "", ("user+tag", None)),
        ("PostMaster+x", "+", ("PostMaster", "x")),  # only the exact name is reserved
        ("PostMaster", "+", ("PostMaster", None)),
        ("postmaster", "+", ("postmaster", None)),
        ("MAILER-DAEMON", "-", ("MAILER-DAEMON", None)),
        ("owner-list", "-", ("owner-list", None)),
        ("list-request", "-", ("list-request", None)),
        ("owner-list", "+", ("owner-list", None)),
        ("owner+x", "+", ("owner", "x")),
        ("list-request+x", "+", ("list-request", "x")),
        ("-request", "-", ("-request", None)),
    ],
)
def test_split_extension(
    local_part: str, delimiters: str, expected: tuple[str, str | None]
) -> None:
    assert split_extension(local_part, delimiters) == expected


def test_normalize_domain() -> None:
    assert normalize_domain("Example.COM.") == "example.com"
    assert normalize_domain("BÜCHER.example") == "xn--bcher-kva.example"
    assert normalize_domain("[IPv6:2001:DB8:0::1]") == "[ipv6:2001:db8::1]"
    for bad in ("", ".", "a..b", "exa mple.com", "[1.2.3]"):
        with pytest.raises(AddressError):
            normalize_domain(bad)


# --------------------------------------------------------------------------------------------
# RFC 5322 header addresses


def test_addresses_from_headers() -> None:
    values = [
        'Alice <alice@example.com>, "Bob Smith" <bob@example.org>',
        "undisclosed-recipients:;",
        "Team: carol@example.net, dave@example.net;, erin@example.com (Erin)",
        "root",
        '"john doe"@example.com',
        "=?utf-8?q?J=C3=B6?= <jo@example.com>",
        "Folded <folded@example.com>,\r\n frank@example.com",
        "<@route.example:grace@example.com>",
        "jöran@bücher.example",
    ]
    assert addresses_from_headers(values) == [
        Address("alice", "example.com"),
        Address("bob", "example.org"),
        Address("carol", "example.net"),
        Address("dave", "example.net"),
        Address("erin", "example.com"),
        Address("root", ""),
        Address("john doe", "example.com"),
        Address("jo", "example.com"),
        Address("folded", "example.com"),
        Address("frank", "example.com"),
        Address("grace", "example.com"),
        Address("jöran", "bücher.example"),
    ]
    assert addresses_from_headers([]) == []


@pytest.mark.parametrize(
    "value",
    [
        "garbage <<<",
        "a@",
        "<>",
        "a@b@c",
        "a b c",
        "alice@example.org)<bob@example.org>",
        "x@exa mple.com",
        "x@-bad.example",
        "bare\rcr@example.com",
        "bare\nlf@example.com",
    ],
)
def test_addresses_from_headers_rejects(value: str) -> None:
    with pytest.raises(AddressError):
        addresses_from_headers([value])


# --------------------------------------------------------------------------------------------
# Property tests

_ATEXT = "abcxyzABCXYZ0189!#$%&'*+-/=?^_`{|}~"
atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=8)
dot_atoms = st.lists(atoms, min_size=1, max_size=4).map(".".join)
quoted_contents = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
utf8_contents = st.text(
    alphabet=st.characters(min_codepoint=32, exclude_categories=["Cs", "Cc", "Zl", "Zp"]),
    max_size=12,
)
_LDH = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789"
labels = st.builds(
    lambda head, middle, tail: head + middle + tail,
    st.sampled_from(_LDH),
    st.text(alphabet=_LDH + "-", max_size=10),
    st.sampled_from(_LDH),
) | st.sampled_from(_LDH)
tlds = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6)
domains = st.builds(lambda ls, tld: ".".join([*ls, tld]), st.lists(labels, max_size=3), tlds)
idn_labels = st.sampled_from(["bücher", "例子", "faß", "пример", "ελληνικά", "mañana"])
idn_domains = st.builds(
    lambda ls, tld: ".".join([*ls, tld]),
    st.lists(idn_labels | labels, min_size=1, max_size=3),
    tlds,
)
ip_literals = st.ip_addresses(v=4).map(lambda ip: f"[{ip}]") | st.ip_addresses(v=6).map(
    lambda ip: f"[IPv6:{ip}]"
)


@given(local_part=dot_atoms | quoted_contents, domain=domains | ip_literals)
def test_round_trip_ascii(local_part: str, domain: str) -> None:
    address = Address(local_part, domain)
    text = f"<{address}>"
    for strict in (False, True):
        again = parse_path(text, allow_null=False, strict=strict, **NO_LIMITS)
        assert again == address
        assert str(again) == str(address)


@given(local_part=dot_atoms | utf8_contents, domain=idn_domains)
def test_round_trip_utf8(local_part: str, domain: str) -> None:
    address = Address(local_part, domain)
    again = parse_path(f"<{address}>", allow_null=False, strict=True, smtputf8=True, **NO_LIMITS)
    assert again == address
    assert again.domain_key == address.domain_key
    # The A-label form names the same domain.
    ascii_again = parse_path(f"<x@{address.ascii_domain}>", allow_null=False)
    assert ascii_again.domain_key == address.domain_key


@given(
    route=st.lists(domains, max_size=3),
    local_part=dot_atoms
    | quoted_contents.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    domain=domains | ip_literals,
    bracketed=st.booleans(),
)
def test_generated_paths_reparse_equal(
    route: list[str], local_part: str, domain: str, bracketed: bool
) -> None:
    inner = f"{local_part}@{domain}"
    if route:
        inner = ",".join("@" + hop for hop in route) + ":" + inner
    text = f"<{inner}>" if bracketed else inner
    first = parse_path(text, allow_null=False, **NO_LIMITS)
    assert first.source_route == tuple(route)
    second = parse_path(f"<{first}>", allow_null=False, strict=True, **NO_LIMITS)
    assert second == first
    assert second.domain_key == first.domain_key


_JUNK_ALPHABET = (
    st.sampled_from(list('<>@"\\.:,[]aZ09-+%! \t\r\n\x00ü例。=;IPv6')) | st.characters()
)
junk = st.text(alphabet=_JUNK_ALPHABET, max_size=40) | st.text(max_size=40)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(text=junk, smtputf8=st.booleans(), strict=st.booleans(), allow_null=st.booleans())
def test_parse_path_junk_raises_only_address_error(
    text: str, smtputf8: bool, strict: bool, allow_null: bool
) -> None:
    try:
        result = parse_path(text, allow_null=allow_null, smtputf8=smtputf8, strict=strict)
    except AddressError:
        return
    # Anything accepted renders and reparses to itself.
    if isinstance(result, Address):
        again = parse_path(f"<{result}>", allow_null=False, smtputf8=True, **NO_LIMITS)
        assert again == result


@settings(max_examples=200)
@given(text=junk)
def test_other_parsers_junk_raise_only_address_error(text: str) -> None:
    for call in (
        lambda: split_command_argument(text),
        lambda: parse_esmtp_params(text),
        lambda: decode_xtext(text),
        lambda: normalize_domain(text),
        lambda: parse_mailbox(text, smtputf8=True),
        lambda: Address(text, "example.com"),
        lambda: Address("user", text),
        lambda: addresses_from_headers([text]),
    ):
        with contextlib.suppress(AddressError):
            call()
    # Predicates never raise.
    is_fqdn(text, smtputf8=True)
    is_valid_hostname(text)
    domain_matches(text, [text, "." + text, "!" + text])
    split_extension(text, "+-")


@settings(max_examples=200)
@given(addr=st.emails())
def test_headers_accept_generated_emails(addr: str) -> None:
    local_part, domain = addr.rsplit("@", 1)
    assert addresses_from_headers([addr]) == [Address(local_part, domain)]
    assert addresses_from_headers([f"Someone <{addr}>"]) == [Address(local_part, domain)]


def test_unquoted_index_without_quotes_finds_what_the_scan_finds() -> None:
    from roost.address import _unquoted_index, _unquoted_scan

    chooser = random.Random(5321)
    for _ in range(20_000):
        text = "".join(chooser.choice('ab"\\> \t@<,:') for _ in range(chooser.randint(0, 12)))
        start = chooser.randint(0, len(text))
        for stops in (">", " \t", ",:"):
            expected = _unquoted_scan(text, start, stops)
            assert _unquoted_index(text, start, stops) == expected, (text, start, stops)

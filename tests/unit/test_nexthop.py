"""Next-hop logic on values alone: routes, MX-then-A resolution, replies, attempts, scheduling."""

from __future__ import annotations

import random

import pytest

from roost.delivery.destinations import DeadDestinations, split_recipients
from roost.delivery.nexthop import (
    Attempt,
    DnsAnswer,
    DnsQuery,
    DnsStatus,
    Failure,
    HostResolution,
    Nexthop,
    NexthopError,
    Reply,
    RouteKind,
    Status,
    Target,
    domain_nexthop,
    parse_nexthop,
    parse_nexthops,
    parse_transport,
    route_for,
    transport_keys,
)

OK = DnsStatus.OK


def mx(*records: tuple[int, str]) -> DnsAnswer:
    return DnsAnswer(OK, mx=records)


def addresses(*values: str) -> DnsAnswer:
    return DnsAnswer(OK, addresses=values)


NODATA = DnsAnswer(DnsStatus.NODATA)
NXDOMAIN = DnsAnswer(DnsStatus.NXDOMAIN)
TEMPFAIL = DnsAnswer(DnsStatus.TEMPFAIL, detail="timed out")


ASKED: list[tuple[str, str]] = []


def run(resolution: HostResolution, zone: dict[tuple[str, str], DnsAnswer]) -> object:
    """Drive a resolution against a dict zone (missing entries: NODATA); ASKED lists the
    queries."""
    ASKED.clear()
    while (query := resolution.next_query()) is not None:
        ASKED.append((query.name, query.rdtype))
        resolution.give(query, zone.get((query.name, query.rdtype), NODATA))
    return resolution.result()


def relays(result: object) -> list[str]:
    assert isinstance(result, tuple), result
    return [target.relay for target in result]


# --- next hops --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[relay.example]:587", Nexthop("relay.example", 587, False)),
        ("[Relay.Example]", Nexthop("relay.example", None, False)),
        ("relay.example", Nexthop("relay.example", None, True)),
        ("relay.example:2525", Nexthop("relay.example", 2525, True)),
        ("[127.0.0.9]:25", Nexthop("127.0.0.9", 25, False)),
        ("[ipv6:::1]:25", Nexthop("::1", 25, False)),
        ("[::1]", Nexthop("::1", None, False)),
        ("[relay.example]:submission", Nexthop("relay.example", 587, False)),
    ],
)
def test_parse_nexthop_postfix_forms(text: str, expected: Nexthop) -> None:
    assert parse_nexthop(text) == expected


@pytest.mark.parametrize(
    "text", ["", "[relay", "[relay]x", "relay:99999", "relay:abc", "127.0.0.1", "bad..name"]
)
def test_parse_nexthop_refuses_junk(text: str) -> None:
    with pytest.raises(NexthopError):
        parse_nexthop(text)


def test_nexthop_renders_as_written() -> None:
    assert str(parse_nexthop("[relay.example]:587")) == "[relay.example]:587"
    assert str(parse_nexthop("relay.example")) == "relay.example"
    assert parse_nexthops("[a.example]:587, [b.example]:587") == (
        Nexthop("a.example", 587, False),
        Nexthop("b.example", 587, False),
    )
    assert parse_nexthops("") == ()


def test_domain_nexthop_of_address_literals() -> None:
    assert domain_nexthop("[127.0.0.9]") == Nexthop("127.0.0.9", None, False)
    assert domain_nexthop("[ipv6:::1]") == Nexthop("::1", None, False)
    assert domain_nexthop("example.org") == Nexthop("example.org", None, True)


# --- routes -----------------------------------------------------------------------------------


def test_transport_keys_in_postfix_order() -> None:
    assert transport_keys("Bob", "Sub.Example.Org") == [
        "bob@sub.example.org",
        "sub.example.org",
        ".example.org",
        ".org",
        "*",
    ]


def test_parse_transport() -> None:
    assert parse_transport("smtp:[relay]:25") == ("smtp", "[relay]:25")
    assert parse_transport("smtp") == ("smtp", "")
    assert parse_transport(":[relay]") == ("", "[relay]")
    assert parse_transport("error:5.1.1 gone: really") == ("error", "5.1.1 gone: really")


def test_route_defaults_to_the_recipient_domain_mx() -> None:
    route = route_for("bob", "remote.test", lookup=lambda key: None)
    assert route.kind is RouteKind.SMTP
    assert route.nexthops == (Nexthop("remote.test"),)
    assert not route.configured
    assert route.key == "remote.test"


def test_relayhost_replaces_the_domain() -> None:
    relay = parse_nexthops("[relay.test]:2525")
    route = route_for("bob", "remote.test", lookup=lambda key: None, relayhost=relay)
    assert route.nexthops == relay and route.configured
    assert route.key == "[relay.test]:2525"


def test_transport_maps_entries() -> None:
    table = {
        "alice@remote.test": "error:5.1.1 alice left",
        "remote.test": "smtp:[127.0.0.9]:2525",
        ".remote.test": "discard:",
        "retry.test": "retry:4.3.2 maintenance",
        "local.test": "local:",
        "empty.test": "smtp:",
    }
    relay = parse_nexthops("[relay.test]")

    def route(local: str, domain: str) -> object:
        return route_for(local, domain, lookup=table.get, relayhost=relay)

    error = route("alice", "remote.test")
    assert error.kind is RouteKind.ERROR and error.text == "5.1.1 alice left"  # type: ignore[attr-defined]
    smtp = route("bob", "remote.test")
    assert smtp.nexthops == (Nexthop("127.0.0.9", 2525, False),)  # type: ignore[attr-defined]
    assert route("bob", "sub.remote.test").kind is RouteKind.DISCARD  # type: ignore[attr-defined]
    assert route("bob", "retry.test").kind is RouteKind.RETRY  # type: ignore[attr-defined]
    assert route("bob", "local.test").kind is RouteKind.UNSUPPORTED  # type: ignore[attr-defined]
    assert route("bob", "empty.test").nexthops == relay  # type: ignore[attr-defined]
    assert route("bob", "other.test").nexthops == relay  # type: ignore[attr-defined]


def test_transport_maps_wildcard_and_bad_nexthop() -> None:
    route = route_for("x", "a.test", lookup={"*": "smtp:[127.0.0.5]"}.get)
    assert route.nexthops == (Nexthop("127.0.0.5", None, False),)
    with pytest.raises(NexthopError):
        route_for("x", "a.test", lookup={"*": "smtp:[broken"}.get)


# --- MX-then-A resolution (RFC 5321 §5.1) ------------------------------------------------------


def resolution(domain: str = "remote.test", **options: object) -> HostResolution:
    nexthop = options.pop("nexthop", Nexthop(domain))
    options.setdefault("default_port", 2525)
    return HostResolution(nexthop, **options)  # type: ignore[arg-type]


def test_mx_hosts_in_preference_order_ipv4_first() -> None:
    zone = {
        ("remote.test", "MX"): mx((20, "mx2.remote.test."), (10, "mx1.remote.test")),
        ("mx1.remote.test", "A"): addresses("127.0.0.10"),
        ("mx1.remote.test", "AAAA"): addresses("::1"),
        ("mx2.remote.test", "A"): addresses("127.0.0.11", "127.0.0.12"),
    }
    assert relays(run(resolution(), zone)) == [
        "mx1.remote.test[127.0.0.10]:2525",
        "mx1.remote.test[::1]:2525",
        "mx2.remote.test[127.0.0.11]:2525",
        "mx2.remote.test[127.0.0.12]:2525",
    ]


def test_equal_preferences_are_shuffled() -> None:
    zone = {("remote.test", "MX"): mx(*((10, f"mx{i}.remote.test") for i in range(6)))}
    zone |= {(f"mx{i}.remote.test", "A"): addresses(f"127.0.0.{10 + i}") for i in range(6)}
    orders = {
        tuple(relays(run(resolution(rng=random.Random(seed), ip_versions=(4,)), zone)))
        for seed in range(20)
    }
    assert len(orders) > 1
    assert all(len(order) == 6 for order in orders)


def test_address_limit_and_ip_versions() -> None:
    zone = {
        ("remote.test", "MX"): mx((10, "mx1.remote.test")),
        ("mx1.remote.test", "A"): addresses("127.0.0.10", "127.0.0.11", "127.0.0.12"),
        ("mx1.remote.test", "AAAA"): addresses("::1"),
    }
    result = run(resolution(address_limit=2, ip_versions=(4, 6)), zone)
    assert relays(result) == [
        "mx1.remote.test[127.0.0.10]:2525",
        "mx1.remote.test[127.0.0.11]:2525",
    ]
    result = run(resolution(ip_versions=(6,)), zone)
    assert relays(result) == ["mx1.remote.test[::1]:2525"]
    assert ("mx1.remote.test", "A") not in ASKED


def test_no_mx_means_the_domain_itself() -> None:
    zone = {("remote.test", "A"): addresses("127.0.0.10")}
    assert relays(run(resolution(), zone)) == ["remote.test[127.0.0.10]:2525"]


def test_null_mx_bounces_at_once() -> None:
    result = run(resolution(), {("remote.test", "MX"): mx((0, ""))})
    assert result == Failure(False, "5.1.10", "Domain remote.test does not accept mail (nullMX)")
    assert ASKED == [("remote.test", "MX")]


def test_nxdomain_bounces_and_servfail_defers() -> None:
    result = run(resolution(), {("remote.test", "MX"): NXDOMAIN})
    assert isinstance(result, Failure) and not result.soft and result.dsn == "5.1.2"
    assert result.reason == (
        "Host or domain name not found. Name service error for name=remote.test type=MX: "
        "Host not found"
    )
    result = run(resolution(), {("remote.test", "MX"): TEMPFAIL})
    assert isinstance(result, Failure) and result.soft and result.dsn == "4.4.3"
    assert result.reason.endswith("Host not found, try again")


def test_mx_host_without_address() -> None:
    zone = {
        ("remote.test", "MX"): mx((10, "mx1.remote.test"), (20, "mx2.remote.test")),
        ("mx1.remote.test", "A"): NXDOMAIN,
        ("mx2.remote.test", "A"): addresses("127.0.0.11"),
    }
    assert relays(run(resolution(ip_versions=(4,)), zone)) == ["mx2.remote.test[127.0.0.11]:2525"]
    zone[("mx2.remote.test", "A")] = NXDOMAIN
    result = run(resolution(ip_versions=(4,)), zone)
    assert isinstance(result, Failure) and not result.soft and result.dsn == "5.4.4"
    zone[("mx2.remote.test", "A")] = TEMPFAIL
    result = run(resolution(ip_versions=(4,)), zone)
    assert isinstance(result, Failure) and result.soft and result.dsn == "4.4.3"


def test_implicit_mx_without_address_bounces() -> None:
    result = run(resolution(), {})
    assert isinstance(result, Failure) and not result.soft
    assert "name=remote.test type=AAAA: Host found but no data record" in result.reason


def test_bracketed_host_skips_mx() -> None:
    zone = {("relay.test", "A"): addresses("127.0.0.9")}
    result = run(resolution(nexthop=Nexthop("relay.test", 587, False)), zone)
    assert relays(result) == ["relay.test[127.0.0.9]:587"]
    assert ("relay.test", "MX") not in ASKED
    result = run(resolution(nexthop=Nexthop("127.0.0.9", None, False)), {})
    assert relays(result) == ["127.0.0.9[127.0.0.9]:2525"]
    assert ASKED == []


def test_mx_to_myself_by_name_loops() -> None:
    zone = {("remote.test", "MX"): mx((10, "mx.roost.test"))}
    result = run(resolution(myhostname="mx.roost.test", default_port=25), zone)
    assert result == Failure(False, "5.4.6", "mail for remote.test loops back to myself")
    assert ASKED == [("remote.test", "MX")]


def test_mx_to_myself_by_address_loops() -> None:
    zone = {
        ("remote.test", "MX"): mx((10, "mx1.remote.test")),
        ("mx1.remote.test", "A"): addresses("127.0.0.1"),
    }
    result = run(
        resolution(is_myself=lambda address: address == "127.0.0.1", default_port=25), zone
    )
    assert isinstance(result, Failure) and result.dsn == "5.4.6" and not result.soft


def test_loop_rule_applies_only_at_port_25() -> None:
    # Postfix smtp_connect.c: SMTP_MISC_FLAG_LOOP_DETECT only for IPPORT_SMTP; a content
    # filter on one of our own addresses at another port is an ordinary target
    def myself(address: str) -> bool:
        return address == "127.0.0.1"

    for nexthop in (Nexthop("127.0.0.1", 25, False), Nexthop("127.0.0.1", None, False)):
        result = run(resolution(nexthop=nexthop, is_myself=myself, default_port=25), {})
        assert result == Failure(False, "5.4.6", f"mail for {nexthop} loops back to myself")
    for nexthop, default_port in (
        (Nexthop("127.0.0.1", 10024, False), 25),  # smtp:[127.0.0.1]:10024
        (Nexthop("127.0.0.1", None, False), 10025),  # smtp_tcp_port = 10025
    ):
        result = run(resolution(nexthop=nexthop, is_myself=myself, default_port=default_port), {})
        port = nexthop.port or default_port
        assert relays(result) == [f"127.0.0.1[127.0.0.1]:{port}"]
    # by name and by address through MX records: the same rule
    zone = {
        ("remote.test", "MX"): mx((10, "mx.roost.test"), (20, "mx2.remote.test")),
        ("mx.roost.test", "A"): addresses("127.0.0.1"),
        ("mx2.remote.test", "A"): addresses("127.0.0.20"),
    }
    at_25 = run(resolution(myhostname="mx.roost.test", is_myself=myself, default_port=25), zone)
    assert at_25 == Failure(False, "5.4.6", "mail for remote.test loops back to myself")
    elsewhere = run(
        resolution(myhostname="mx.roost.test", is_myself=myself, ip_versions=(4,)), zone
    )
    assert relays(elsewhere) == [
        "mx.roost.test[127.0.0.1]:2525",
        "mx2.remote.test[127.0.0.20]:2525",
    ]


def test_loop_for_our_own_domain_is_a_configuration_error() -> None:
    zone = {("relay.test", "MX"): mx((10, "mx.roost.test"))}
    result = run(
        resolution("relay.test", myhostname="mx.roost.test", configured=True, default_port=25),
        zone,
    )
    assert result == Failure(True, "4.3.5", "mail for relay.test loops back to myself")


def test_backup_mx_delivers_only_to_better_hosts() -> None:
    # we are the backup MX (20): only the primary (10) is a target; 30 is dropped
    zone = {
        ("remote.test", "MX"): mx(
            (10, "mx1.remote.test"), (20, "me.test"), (30, "mx3.remote.test")
        ),
        ("mx1.remote.test", "A"): addresses("127.0.0.10"),
        ("me.test", "A"): addresses("127.0.0.1"),
        ("mx3.remote.test", "A"): addresses("127.0.0.30"),
    }
    result = run(
        resolution(ip_versions=(4,), is_myself=lambda a: a == "127.0.0.1", default_port=25),
        zone,
    )
    assert relays(result) == ["mx1.remote.test[127.0.0.10]:25"]


def test_give_checks_the_query() -> None:
    resolving = resolution()
    with pytest.raises(ValueError):
        resolving.give(DnsQuery("other.test", "MX"), NODATA)
    with pytest.raises(RuntimeError):
        resolving.result()


# --- replies and attempts ----------------------------------------------------------------------


def test_reply_enhanced_codes_and_text() -> None:
    assert Reply.of(550, "5.1.1 <bob@x>: no such user\nsecond line").dsn == "5.1.1"
    assert str(Reply.of(550, "5.1.1 no\nmore")) == "550 5.1.1 no more"
    assert Reply(550, "no such user").dsn == "5.0.0"
    assert Reply(451, "5.1.1 mismatched class").dsn == "4.0.0"
    assert Reply(250, "2.0.0 Ok").ok and Reply(421, "x").soft and not Reply(554, "x").soft
    assert Reply.of(550, "bad\x00\tbytes \udcff").text == "bad bytes \ufffd"


def test_attempt_soft_failures_wait_for_the_next_server() -> None:
    attempt = Attempt([0, 1, 2])
    relay = "mx1[127.0.0.10]:25"
    attempt.refused(0, Reply(450, "4.2.0 busy"), relay)
    attempt.refused(1, Reply(550, "5.1.1 unknown"), relay)
    attempt.sent(2, Reply(250, "2.0.0 Ok: queued as A"), relay)
    assert attempt.pending == (0,)
    attempt.sent(0, Reply(250, "Ok"), "mx2[127.0.0.11]:25")
    verdicts = attempt.verdicts()
    assert [(v.index, v.status, v.dsn) for v in verdicts] == [
        (0, Status.SENT, "2.0.0"),
        (1, Status.BOUNCED, "5.1.1"),
        (2, Status.SENT, "2.0.0"),
    ]
    assert verdicts[1].reason == "550 5.1.1 unknown" and verdicts[1].remote_reply
    assert verdicts[0].relay == "mx2[127.0.0.11]:25"


def test_attempt_defers_what_no_server_took_with_the_last_reason() -> None:
    attempt = Attempt([0, 1])
    attempt.soft(0, "4.4.1", "connect to a: Connection refused")
    attempt.soft(0, "4.4.1", "connect to b: Connection refused")
    [first, second] = attempt.verdicts()
    assert first.status is Status.DEFERRED and first.reason == "connect to b: Connection refused"
    assert second.status is Status.DEFERRED and second.dsn == "4.4.1"
    attempt.fail(Failure(False, "5.1.10", "nullMX"))
    assert [v.status for v in attempt.verdicts()] == [Status.BOUNCED, Status.BOUNCED]
    assert attempt.pending == ()


def test_target_texts() -> None:
    target = Target("mx.remote.test", "127.0.0.9", 25)
    assert target.relay == "mx.remote.test[127.0.0.9]:25"
    assert target.host_text == "mx.remote.test[127.0.0.9]"


# --- scheduling --------------------------------------------------------------------------------


def test_split_recipients() -> None:
    assert split_recipients([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert split_recipients([1, 2], 50) == [[1, 2]]
    assert split_recipients([], 50) == []


def test_dead_destination_after_consecutive_failures() -> None:
    dead = DeadDestinations(failure_limit=2, dead_time=300)
    assert not dead.failed("remote.test", "4.4.1", "connect: refused", now=1000)
    assert dead.suspended("remote.test", 1000) is None
    assert dead.failed("remote.test", "4.4.1", "connect: refused", now=1001)
    assert dead.suspended("remote.test", 1002) == (
        "4.4.1",
        "delivery temporarily suspended: connect: refused",
    )
    assert dead.suspended("other.test", 1002) is None
    assert dead.suspended("remote.test", 1302) is None  # after dead_time
    dead.failed("remote.test", "4.4.1", "again", now=2000)
    dead.revive("remote.test")
    assert dead.suspended("remote.test", 2001) is None
    dead.succeeded("remote.test")
    assert not dead.failed("remote.test", "4.4.1", "x", now=3000)  # the count starts over

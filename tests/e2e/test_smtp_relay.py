"""Relay control: the classic relay tricks, access tables, HELO/sender checks, login maps.

The instance trusts 127.0.0.2 only (``mynetworks = 127.0.0.2/32``); the tests bind the
client to 127.0.0.1 (untrusted) or 127.0.0.2 (trusted). Local domains: ``roost.test``,
``mx.roost.test`` and ``localhost`` (mydestination) and ``virtual.test`` (virtual mailbox
domain with alice and bob). Everything else is remote.

See Also: Postfix SMTPD_ACCESS_README, ADDRESS_CLASS_README, postconf(5)
``smtpd_relay_restrictions``, ``allow_untrusted_routing``, access(5).
"""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import ROOST, ROOT, write_instance
from tests.e2e.instance import PASSWORD, Instance, client_tls, start_instance

UNTRUSTED = "127.0.0.1"
TRUSTED = "127.0.0.2"
SENDER = "sender@example.org"
HELO = "client.example"

Reply = tuple[int, str]
OK: Reply = (250, "2.1.5 Ok")
SYNTAX: Reply = (501, "5.1.3 Bad recipient address syntax")


def relay_denied(shown: str) -> Reply:
    return (554, f"5.7.1 <{shown}>: Relay access denied")


def unknown_local(shown: str) -> Reply:
    return (
        550,
        f"5.1.1 <{shown}>: Recipient address rejected: User unknown in local recipient table",
    )


def unknown_virtual(shown: str) -> Reply:
    return (
        550,
        f"5.1.1 <{shown}>: Recipient address rejected: User unknown in virtual mailbox table",
    )


class Probe(NamedTuple):
    """One RCPT TO path and what each kind of client gets for it.

    ``untrusted`` is the reply to 127.0.0.1, ``trusted`` the reply to 127.0.0.2; ``why``
    says why the untrusted outcome is safe (or why acceptance is local delivery).
    """

    path: str
    untrusted: Reply
    trusted: Reply
    why: str
    smtputf8: bool = False


# Every refusal below happens at RCPT time, before any data is accepted. Addresses with
# routing characters (%, !, @ in the local part) or a source route are refused for relay by
# reject_unauth_destination even when the domain is ours (Postfix: allow_untrusted_routing
# = no): a later hop or a percent-hack/bang-path rewrite could turn them into a remote
# destination. From mynetworks roost does no such rewriting (Postfix would apply
# allow_percent_hack, swap_bangpath and resolve_dequoted_address and relay them): the
# address stays a local part with odd characters, which no user has -> 550 user unknown.
PROBES = [
    Probe(
        "user%remote.example@roost.test",
        relay_denied("user%remote.example@roost.test"),
        unknown_local("user%remote.example@roost.test"),
        "percent hack into a local domain: routed, so not an authorized destination",
    ),
    Probe(
        "user%remote.example@virtual.test",
        relay_denied("user%remote.example@virtual.test"),
        unknown_virtual("user%remote.example@virtual.test"),
        "percent hack into the virtual domain",
    ),
    Probe(
        "alice%remote.example@virtual.test",
        relay_denied("alice%remote.example@virtual.test"),
        unknown_virtual("alice%remote.example@virtual.test"),
        "percent hack that starts with a real user's name is still routed",
    ),
    Probe(
        "user%remote.example%relay.example@roost.test",
        relay_denied("user%remote.example%relay.example@roost.test"),
        unknown_local("user%remote.example%relay.example@roost.test"),
        "two percent hops",
    ),
    Probe(
        '"user@remote.example"@roost.test',
        relay_denied('"user@remote.example"@roost.test'),
        unknown_local('"user@remote.example"@roost.test'),
        "quoted local part hiding an @: a dequoting hop would relay it",
    ),
    Probe(
        '"user%remote.example"@roost.test',
        relay_denied("user%remote.example@roost.test"),
        unknown_local("user%remote.example@roost.test"),
        "quoted percent hack (the quotes are not needed, so the reply drops them)",
    ),
    Probe(
        '"alice@remote.example"@virtual.test',
        relay_denied('"alice@remote.example"@virtual.test'),
        unknown_virtual('"alice@remote.example"@virtual.test'),
        "quoted @ in the virtual domain",
    ),
    Probe(
        "user@remote.example@roost.test",
        relay_denied('"user@remote.example"@roost.test'),
        unknown_local('"user@remote.example"@roost.test'),
        "double @: split at the last @, so the local part carries the remote address",
    ),
    Probe(
        "alice@remote.example@virtual.test",
        relay_denied('"alice@remote.example"@virtual.test'),
        unknown_virtual('"alice@remote.example"@virtual.test'),
        "double @ into the virtual domain",
    ),
    Probe(
        "user@roost.test@remote.example",
        relay_denied('"user@roost.test"@remote.example'),
        OK,
        "double @ whose real domain is remote: plain relaying, allowed only to mynetworks",
    ),
    Probe(
        "remote.example!user@roost.test",
        relay_denied("remote.example!user@roost.test"),
        unknown_local("remote.example!user@roost.test"),
        "UUCP bang path host!user",
    ),
    Probe(
        "user!remote.example@roost.test",
        relay_denied("user!remote.example@roost.test"),
        unknown_local("user!remote.example@roost.test"),
        "bang path the other way round",
    ),
    Probe(
        "remote.example!alice@virtual.test",
        relay_denied("remote.example!alice@virtual.test"),
        unknown_virtual("remote.example!alice@virtual.test"),
        "bang path into the virtual domain",
    ),
    Probe(
        "remote.example!user",
        relay_denied("remote.example!user"),
        unknown_local("remote.example!user"),
        "bang path without a domain (a local address)",
    ),
    Probe(
        "user%remote.example",
        relay_denied("user%remote.example"),
        unknown_local("user%remote.example"),
        "percent hack without a domain",
    ),
    Probe(
        "@roost.test:user@remote.example",
        relay_denied("user@remote.example"),
        OK,
        "source route through us to a remote domain (the reply shows the route dropped)",
    ),
    Probe(
        "@roost.test,@virtual.test:user@remote.example",
        relay_denied("user@remote.example"),
        OK,
        "source route with two hops",
    ),
    Probe(
        "@remote.example:alice@virtual.test",
        relay_denied("alice@virtual.test"),
        OK,
        "any source route is sender-specified routing, even to a local user",
    ),
    Probe(
        "user@remote.example.",
        relay_denied("user@remote.example."),
        OK,
        "a trailing dot does not make a remote domain ours",
    ),
    Probe(
        "user@localhost.remote.example",
        relay_denied("user@localhost.remote.example"),
        OK,
        "a local name as the first label of a remote domain",
    ),
    Probe(
        "user@roost.test.remote.example",
        relay_denied("user@roost.test.remote.example"),
        OK,
        "our domain as a prefix of a remote one",
    ),
    Probe(
        "user@sub.roost.test",
        relay_denied("user@sub.roost.test"),
        OK,
        "a subdomain of a local domain is not local (mydestination lists names exactly)",
    ),
    Probe(
        "user@[1.2.3.4]",
        relay_denied("user@[1.2.3.4]"),
        OK,
        "an IPv4 address literal is a remote destination",
    ),
    Probe(
        "postmaster@[127.0.0.1]",
        relay_denied("postmaster@[127.0.0.1]"),
        OK,
        "even our own address as a literal is treated as remote (Postfix would call it local)",
    ),
    Probe(
        "user@[IPv6:2001:db8::1]",
        relay_denied("user@[IPv6:2001:db8::1]"),
        OK,
        "an IPv6 address literal",
    ),
    Probe(
        "user@[IPv6:::1]",
        relay_denied("user@[IPv6:::1]"),
        OK,
        "the IPv6 loopback literal",
    ),
    Probe(
        "user@bücher.example",
        relay_denied("user@bücher.example"),
        OK,
        "an IDN remote domain (U-labels with SMTPUTF8)",
        smtputf8=True,
    ),
    Probe(
        "user@xn--bcher-kva.example",
        relay_denied("user@xn--bcher-kva.example"),
        OK,
        "the same IDN remote domain as A-labels",
    ),
    Probe(
        "user@remote.example%roost.test",
        SYNTAX,
        SYNTAX,
        "a percent sign in the domain is not a domain at all",
    ),
    Probe(
        "alice@virtual..test",
        SYNTAX,
        SYNTAX,
        "an empty label",
    ),
    Probe(
        "user@localhost",
        unknown_local("user@localhost"),
        unknown_local("user@localhost"),
        "localhost is in mydestination: an unknown local user, not relaying",
    ),
    # Local delivery, not relaying: acceptance is correct for anyone.
    Probe("alice@VIRTUAL.Test", OK, OK, "domain case does not matter"),
    Probe("ALICE@virtual.test", OK, OK, "the user database is case-insensitive"),
    Probe("postmaster@ROOST.TEST.", OK, OK, "odd case and a trailing dot on a local domain"),
    Probe("postmaster@LOCALHOST.", OK, OK, "localhost with a trailing dot"),
    Probe("alice@MX.roost.test", OK, OK, "$myhostname is local; alice is a user"),
    Probe('"alice"@virtual.test', OK, OK, "needless quotes around a real user"),
    Probe("postmaster", OK, OK, "RFC 5321 §4.1.1.3: postmaster without a domain"),
]


def rcpt(instance: Instance, source: str, probe: Probe) -> Reply:
    with instance.smtp(source=source) as client:
        client.command_encoding = "utf-8"
        assert client.ehlo(HELO)[0] == 250
        options = ["SMTPUTF8"] if probe.smtputf8 else []
        assert client.mail(SENDER, options) == (250, b"2.1.0 Ok")
        code, text = client.docmd(f"RCPT TO:<{probe.path}>")
    return code, text.decode()


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(tmp_path_factory.mktemp("relay"))
    yield running
    running.daemon.stop()


def test_battery_has_enough_relay_tricks() -> None:
    refused = [p for p in PROBES if p.untrusted[0] != 250]
    assert len(refused) >= 20
    assert len({p.path for p in PROBES}) == len(PROBES)


@pytest.mark.parametrize("probe", PROBES, ids=[p.path for p in PROBES])
def test_untrusted_client(instance: Instance, probe: Probe) -> None:
    assert rcpt(instance, UNTRUSTED, probe) == probe.untrusted, probe.why
    code, text = probe.untrusted
    if code in (550, 554):  # policy refusals are logged like Postfix's
        shown = text.split("<", 1)[1].split(">:", 1)[0]
        assert (
            f"NOQUEUE: reject: RCPT from unknown[{UNTRUSTED}]: {code} {text};"
            f" from=<{SENDER}> to=<{shown}> proto=ESMTP helo=<{HELO}>"
        ) in instance.log()


@pytest.mark.parametrize("probe", PROBES, ids=[p.path for p in PROBES])
def test_trusted_client(instance: Instance, probe: Probe) -> None:
    assert rcpt(instance, TRUSTED, probe) == probe.trusted, probe.why


@pytest.mark.parametrize("source", [UNTRUSTED, TRUSTED])
def test_virtual_user_with_trailing_dot_is_local_delivery(instance: Instance, source: str) -> None:
    # Postfix strips the trailing dot (trivial-rewrite) and finds alice in the
    # virtual mailbox table; postmaster@ROOST.TEST. (a local domain) already works.
    probe = Probe("alice@virtual.test.", OK, OK, "a trailing dot on the virtual domain")
    assert rcpt(instance, source, probe) == OK


def test_refused_relay_leaves_the_transaction_usable(instance: Instance) -> None:
    with instance.smtp(source=UNTRUSTED) as client:
        client.ehlo(HELO)
        client.mail(SENDER)
        assert client.rcpt("victim@remote.example") == (
            554,
            b"5.7.1 <victim@remote.example>: Relay access denied",
        )
        assert client.rcpt("user%victim.example@roost.test")[0] == 554
        assert client.rcpt("alice@virtual.test") == (250, b"2.1.5 Ok")
        code, text = client.data(b"Subject: only the local copy\r\n\r\nhi\r\n")
        assert code == 250, text
    queue_id = text.decode().rsplit(" ", 1)[1]
    assert (
        f"{queue_id}: from=<{SENDER}>, size=" in instance.log()
        and "nrcpt=1 (queue active)" in instance.log()
    )


# --- configurations that would make an open relay are refused ---------------------------

OPEN_RELAY = (
    "smtpd_relay_restrictions: neither it nor smtpd_recipient_restrictions has"
    " reject_unauth_destination, defer_unauth_destination or reject:"
    " that would make an open relay"
)


def run_roost(config: Path, command: str) -> subprocess.CompletedProcess[str]:
    """``roost -c CONFIG COMMAND`` with a time limit (a valid ``serve`` would not exit)."""
    return subprocess.run(
        [*ROOST, "-c", str(config), command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )


def line_of(config: Path, prefix: str) -> int:
    lines = config.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.startswith(prefix))


@pytest.mark.parametrize(
    "extra",
    [
        "smtpd_relay_restrictions = permit\nsmtpd_recipient_restrictions =\n",
        "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated\n",
        "smtpd_relay_restrictions = permit_mynetworks, reject_unlisted_recipient, permit\n",
    ],
    ids=["permit", "no-final-reject", "only-recipient-checks"],
)
@pytest.mark.parametrize("command", ["check", "serve"])
def test_open_relay_configuration_is_refused(tmp_path: Path, extra: str, command: str) -> None:
    config = write_instance(tmp_path / "etc", "mynetworks = 127.0.0.2/32\n" + extra)
    line = line_of(config, "smtpd_relay_restrictions")
    result = run_roost(config, command)
    assert result.returncode == 1
    assert f"{config}:{line}: {OPEN_RELAY}\n" in result.stderr
    assert "Traceback" not in result.stderr


def test_open_relay_through_a_service_override_is_refused(tmp_path: Path) -> None:
    config = write_instance(
        tmp_path / "etc", "submission/smtpd_relay_restrictions = permit_sasl_authenticated\n"
    )
    line = line_of(config, "submission/smtpd_relay_restrictions")
    result = run_roost(config, "check")
    assert result.returncode == 1
    assert f"{config}:{line}: submission/{OPEN_RELAY}\n" in result.stderr


def test_relay_control_in_recipient_restrictions_is_enough(tmp_path: Path) -> None:
    # The Postfix < 2.10 layout: smtpd_relay_restrictions permits, the recipient list
    # carries reject_unauth_destination.
    config = write_instance(
        tmp_path / "etc",
        "smtpd_relay_restrictions = permit\n"
        "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination\n",
    )
    result = run_roost(config, "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"roost: {config}: configuration OK\n"


# --- access tables, HELO and sender checks, login maps ----------------------------------

CLIENTS_CIDR = """\
# client address -> action (cidr_table(5))
127.0.0.3/32  REJECT
127.0.0.4/32  DEFER
127.0.0.5/32  550 5.7.1 custom client refusal
127.0.0.6/32  REJECT Your network is not welcome
127.0.0.7/32  OK
"""
HELO_TABLE = "bad.helo.example  REJECT\ngood.helo.example  OK\n"
SENDERS_TABLE = """\
blocked@example.net   REJECT
custom@example.net    REJECT Go away, custom text
later@example.net     DEFER
coded@example.net     550 5.7.1 custom sender refusal
friend@example.com    OK
dunno@example.com     DUNNO
example.com           REJECT
"""
SENDERS_REGEXP = """\
/^numbers[0-9]+@/      REJECT Numbered senders are not welcome
/@(.*)\\.invalid$/      451 4.7.1 no $1 please
"""
RECIPIENTS_TABLE = "closed@roost.test  REJECT This mailbox is closed\nremote.example  OK\n"
LOGIN_MAPS = """\
alice@virtual.test   alice@virtual.test
bob@virtual.test     bob@virtual.test
shared@virtual.test  alice@virtual.test, bob@virtual.test
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    tables = tmp_path_factory.mktemp("tables")
    for name, text in [
        ("clients.cidr", CLIENTS_CIDR),
        ("helo", HELO_TABLE),
        ("senders", SENDERS_TABLE),
        ("senders.regexp", SENDERS_REGEXP),
        ("recipients", RECIPIENTS_TABLE),
        ("login_maps", LOGIN_MAPS),
    ]:
        (tables / name).write_text(text)
    extra = (
        f"smtpd_client_restrictions = check_client_access cidr:{tables}/clients.cidr\n"
        "smtpd_helo_restrictions = permit_mynetworks,\n"
        f"    check_helo_access texthash:{tables}/helo,\n"
        "    reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname\n"
        "smtpd_sender_restrictions = reject_non_fqdn_sender,\n"
        f"    check_sender_access texthash:{tables}/senders,\n"
        f"    check_sender_access regexp:{tables}/senders.regexp\n"
        "smtpd_recipient_restrictions = reject_non_fqdn_recipient,\n"
        f"    check_recipient_access texthash:{tables}/recipients\n"
        f"smtpd_sender_login_maps = texthash:{tables}/login_maps\n"
        "submission/smtpd_sender_restrictions = reject_sender_login_mismatch\n"
    )
    running = start_instance(tmp_path_factory.mktemp("policy"), extra)
    yield running
    running.daemon.stop()


def attempt(
    instance: Instance,
    *,
    source: str = UNTRUSTED,
    helo: str = HELO,
    sender: str = SENDER,
    recipient: str = "alice@virtual.test",
) -> Reply:
    """One transaction up to RCPT; the policy decides at RCPT (smtpd_delay_reject)."""
    with instance.smtp(source=source) as client:
        assert client.ehlo(helo)[0] == 250
        assert client.docmd(f"MAIL FROM:<{sender}>") == (250, b"2.1.0 Ok")
        code, text = client.docmd(f"RCPT TO:<{recipient}>")
    return code, text.decode()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("127.0.0.3", (554, "5.7.1 <unknown[127.0.0.3]>: Client host rejected: Access denied")),
        ("127.0.0.4", (450, "4.7.1 <unknown[127.0.0.4]>: Client host rejected: Access denied")),
        (
            "127.0.0.6",
            (554, "5.7.1 <unknown[127.0.0.6]>: Client host rejected: Your network is not welcome"),
        ),
        ("127.0.0.7", OK),
        ("127.0.0.8", OK),
    ],
)
def test_check_client_access_cidr(policy: Instance, source: str, expected: Reply) -> None:
    assert attempt(policy, source=source) == expected
    if expected != OK:
        assert (
            f"NOQUEUE: reject: RCPT from unknown[{source}]: {expected[0]} {expected[1]};"
            f" from=<{SENDER}> to=<alice@virtual.test> proto=ESMTP helo=<{HELO}>"
        ) in policy.log()


def test_check_client_access_numeric_result_names_the_restriction(policy: Instance) -> None:
    assert attempt(policy, source="127.0.0.5") == (
        550,
        "5.7.1 <unknown[127.0.0.5]>: Client host rejected: custom client refusal",
    )


def test_ok_from_check_client_access_ends_only_the_client_list(policy: Instance) -> None:
    # 127.0.0.7 is OK in the client table: the HELO, sender and relay lists still apply.
    assert attempt(policy, source="127.0.0.7", helo="bad_helo!") == (
        501,
        "5.5.2 <bad_helo!>: Helo command rejected: Invalid name",
    )
    assert attempt(policy, source="127.0.0.7", recipient="victim@elsewhere.example") == (
        554,
        "5.7.1 <victim@elsewhere.example>: Relay access denied",
    )


@pytest.mark.parametrize(
    ("helo", "expected"),
    [
        (
            "bad.helo.example",
            (554, "5.7.1 <bad.helo.example>: Helo command rejected: Access denied"),
        ),
        ("bad_helo!", (501, "5.5.2 <bad_helo!>: Helo command rejected: Invalid name")),
        ("[300.0.0.1]", (501, "5.5.2 <[300.0.0.1]>: Helo command rejected: Invalid name")),
        (
            "-leading.example",
            (501, "5.5.2 <-leading.example>: Helo command rejected: Invalid name"),
        ),
        (
            "localhost",
            (504, "5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname"),
        ),
        ("client", (504, "5.5.2 <client>: Helo command rejected: need fully-qualified hostname")),
        ("[127.0.0.1]", OK),
        ("[IPv6:::1]", OK),
        ("mx.roost.test.", OK),
        ("good.helo.example", OK),
    ],
)
def test_helo_restrictions(policy: Instance, helo: str, expected: Reply) -> None:
    assert attempt(policy, helo=helo) == expected


def test_helo_restrictions_spare_mynetworks(policy: Instance) -> None:
    assert attempt(policy, source=TRUSTED, helo="localhost") == OK


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        (
            "blocked@example.net",
            (554, "5.7.1 <blocked@example.net>: Sender address rejected: Access denied"),
        ),
        (
            "BLOCKED@Example.NET",
            (554, "5.7.1 <BLOCKED@Example.NET>: Sender address rejected: Access denied"),
        ),
        (
            "custom@example.net",
            (554, "5.7.1 <custom@example.net>: Sender address rejected: Go away, custom text"),
        ),
        (
            "later@example.net",
            (450, "4.7.1 <later@example.net>: Sender address rejected: Access denied"),
        ),
        ("friend@example.com", OK),
        ("dunno@example.com", OK),  # DUNNO stops the lookup: the domain's REJECT is not used
        (
            "other@example.com",
            (554, "5.7.1 <other@example.com>: Sender address rejected: Access denied"),
        ),
        (
            "other@sub.example.com",
            (554, "5.7.1 <other@sub.example.com>: Sender address rejected: Access denied"),
        ),
        (
            "numbers42@example.org",
            (
                554,
                "5.7.1 <numbers42@example.org>: Sender address rejected:"
                " Numbered senders are not welcome",
            ),
        ),
        ("a", (504, "5.5.2 <a>: Sender address rejected: need fully-qualified address")),
        (
            "a@localhost",
            (504, "5.5.2 <a@localhost>: Sender address rejected: need fully-qualified address"),
        ),
        ("", OK),  # the null sender is fully qualified by definition
        ("a@[192.0.2.1]", OK),
    ],
)
def test_sender_restrictions(policy: Instance, sender: str, expected: Reply) -> None:
    assert attempt(policy, sender=sender) == expected


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        (
            "coded@example.net",
            (550, "5.7.1 <coded@example.net>: Sender address rejected: custom sender refusal"),
        ),
        (
            "x@spam.invalid",
            (451, "4.7.1 <x@spam.invalid>: Sender address rejected: no spam please"),
        ),
    ],
)
def test_sender_access_numeric_result_names_the_restriction(
    policy: Instance, sender: str, expected: Reply
) -> None:
    assert attempt(policy, sender=sender) == expected


def test_access_ok_never_opens_the_relay(policy: Instance) -> None:
    # OK for the sender (sender list) and for remote.example (recipient list) come
    # after or outside smtpd_relay_restrictions: relaying stays refused.
    assert attempt(policy, sender="friend@example.com", recipient="victim@remote.example") == (
        554,
        "5.7.1 <victim@remote.example>: Relay access denied",
    )
    assert attempt(policy, source=TRUSTED, recipient="victim@remote.example") == OK


@pytest.mark.parametrize(
    ("recipient", "source", "expected"),
    [
        (
            "closed@roost.test",
            UNTRUSTED,
            (554, "5.7.1 <closed@roost.test>: Recipient address rejected: This mailbox is closed"),
        ),
        (
            "closed@roost.test",
            TRUSTED,
            (554, "5.7.1 <closed@roost.test>: Recipient address rejected: This mailbox is closed"),
        ),
        (
            "postmaster",
            UNTRUSTED,
            (504, "5.5.2 <postmaster>: Recipient address rejected: need fully-qualified address"),
        ),
        (
            "someone@elsewhere",
            TRUSTED,
            (
                504,
                "5.5.2 <someone@elsewhere>: Recipient address rejected:"
                " need fully-qualified address",
            ),
        ),
        ("postmaster@roost.test", UNTRUSTED, OK),
        ("someone@elsewhere.example", TRUSTED, OK),
    ],
)
def test_recipient_restrictions(
    policy: Instance, recipient: str, source: str, expected: Reply
) -> None:
    assert attempt(policy, source=source, recipient=recipient) == expected


def submission_login(instance: Instance, login: str, password: str) -> smtplib.SMTP:
    client = instance.smtp("submission")
    client.ehlo(HELO)
    client.starttls(context=client_tls())
    client.ehlo(HELO)
    client.login(login, password)
    return client


@pytest.mark.parametrize(
    ("login", "password", "sender", "expected"),
    [
        (
            "alice",
            PASSWORD,
            "bob@virtual.test",
            (
                553,
                "5.7.1 <bob@virtual.test>: Sender address rejected:"
                " not owned by user alice@virtual.test",
            ),
        ),
        (
            "alice",
            PASSWORD,
            "stranger@example.org",
            (
                553,
                "5.7.1 <stranger@example.org>: Sender address rejected:"
                " not owned by user alice@virtual.test",
            ),
        ),
        ("alice", PASSWORD, "alice@virtual.test", OK),
        ("alice", PASSWORD, "ALICE@Virtual.Test", OK),
        ("alice", PASSWORD, "shared@virtual.test", OK),
        ("bob", "bob's secret", "shared@virtual.test", OK),
        (
            "bob",
            "bob's secret",
            "alice@virtual.test",
            (
                553,
                "5.7.1 <alice@virtual.test>: Sender address rejected:"
                " not owned by user bob@virtual.test",
            ),
        ),
    ],
)
def test_reject_sender_login_mismatch_on_submission(
    policy: Instance, login: str, password: str, sender: str, expected: Reply
) -> None:
    with submission_login(policy, login, password) as client:
        assert client.mail(sender) == (250, b"2.1.0 Ok")
        code, text = client.rcpt("anyone@remote.example")
    assert (code, text.decode()) == expected
    if code != 250:
        line = (  # the pid is a worker process's (or the master's with one process)
            f"]: NOQUEUE: reject: RCPT from"
            f" unknown[127.0.0.1]: {code} {expected[1]}; from=<{sender}>"
            f" to=<anyone@remote.example> proto=ESMTP helo=<{HELO}>"
        )
        assert any(
            pid_line.startswith("roost/submission/smtpd[") and pid_line.endswith(line)
            for pid_line in (text.split(" ", 1)[-1] for text in policy.log().splitlines())
        )


def test_login_mismatch_is_a_submission_rule_only(policy: Instance) -> None:
    # Port 25 has its own sender restrictions; bob@virtual.test is not refused there.
    assert attempt(policy, sender="bob@virtual.test") == OK


def test_unknown_recipients_are_refused_on_port_25(instance: Instance) -> None:
    probe = Probe("nobody-here@virtual.test", OK, OK, "")
    assert rcpt(instance, UNTRUSTED, probe) == unknown_virtual("nobody-here@virtual.test")


def test_submission_does_not_reject_unlisted_recipients(instance: Instance) -> None:
    with submission_login(instance, "alice", PASSWORD) as client:
        assert client.mail("alice@virtual.test") == (250, b"2.1.0 Ok")
        assert client.rcpt("nobody-here@virtual.test") == (250, b"2.1.5 Ok")

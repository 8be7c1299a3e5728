"""The smtp transport against a loopback DNS server and aiosmtpd sinks on 127.0.0.x.

Every MX host here is a sink (or nothing) on 127.0.0.10 and up, all on one unprivileged
port (``smtp_tcp_port``); the DNS server hands out loopback addresses only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from roost.delivery.nexthop import parse_nexthops
from roost.delivery.resolver import DnsResolver
from roost.delivery.smtp import (
    ROUTE_CACHE_SECONDS,
    LocalAddresses,
    SmtpConfig,
    SmtpTransport,
    TlsLevel,
)
from roost.queue.envelope import (
    BodyType,
    Envelope,
    Notify,
    Recipient,
    RecipientState,
    Ret,
    WithProtocol,
)
from roost.queue.manager import DeliveryJob, RecipientResult
from roost.tls import generate_selfsigned, make_server_context
from tests.conftest import free_port_for
from tests.integration.dnsserver import DnsServer
from tests.integration.smtpsink import Sink

MX1, MX2, MX3, RELAY = "127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"
HOSTS = [f"127.0.0.{n}" for n in range(10, 21)]
MESSAGE = b"From: alice@roost.test\r\nTo: bob@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.mx("remote.test", 10, "mx1.remote.test")
        server.mx("remote.test", 20, "mx2.remote.test")
        server.a("mx1.remote.test", MX1)
        server.a("mx2.remote.test", MX2)
        yield server


@pytest.fixture
def port() -> int:
    return free_port_for(HOSTS)


@pytest.fixture
def sinks() -> Iterator[list[Sink]]:
    started: list[Sink] = []
    yield started


@pytest.fixture
async def stop_sinks(sinks: list[Sink]) -> AsyncIterator[None]:
    yield
    for sink in sinks:
        await sink.stop()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_selfsigned("mx1.remote.test", cert, key)
    return cert, key


async def sink(sinks: list[Sink], host: str, port: int, **options: object) -> Sink:
    started = await Sink(host, port, **options).start()  # type: ignore[arg-type]
    sinks.append(started)
    return started


def make_transport(dns: DnsServer, port: int, **options: object) -> SmtpTransport:
    extra = {k: options.pop(k) for k in list(options) if k not in SmtpConfig.__slots__}
    config = SmtpConfig(
        myhostname="mx.roost.test",
        helo_name="mx.roost.test",
        default_port=port,
        ip_versions=(4,),
        **options,  # type: ignore[arg-type]
    )
    return SmtpTransport(
        config,
        dns=DnsResolver([dns.address], timeout=float(extra.pop("dns_timeout", 3.0))),  # type: ignore[arg-type]
        is_myself=LocalAddresses(["127.0.0.1"]),
        **extra,  # type: ignore[arg-type]
    )


def make_job(
    *recipients: str | Recipient,
    sender: str = "alice@roost.test",
    content: bytes = MESSAGE,
    **envelope: object,
) -> DeliveryJob:
    rcpts = tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients)
    env = Envelope(
        envelope_sender=sender,
        recipients=rcpts,
        arrival_time=time.time(),
        protocol=WithProtocol.ESMTP,
        size=len(content),
        **envelope,  # type: ignore[arg-type]
    )
    return DeliveryJob(
        queue_id="4ZxYwV1abc",
        envelope=env,
        recipients=tuple(enumerate(rcpts)),
        open_content=lambda: io.BytesIO(content),
        content_size=len(content),
    )


def statuses(results: list[RecipientResult]) -> list[str]:
    return [result.status for result in results]


pytestmark = pytest.mark.usefixtures("stop_sinks")


# --- MX selection -----------------------------------------------------------------------------


async def test_delivers_to_the_best_mx(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    mx1 = await sink(sinks, MX1, port)
    mx2 = await sink(sinks, MX2, port)
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test"))
    assert result.status == "sent" and result.dsn == "2.0.0"
    assert result.relay == f"mx1.remote.test[{MX1}]:{port}"
    assert result.reason.startswith("250 2.0.0 Ok: queued as ") and result.remote_reply
    assert [m.rcpt_tos for m in mx1.messages] == [["bob@remote.test"]]
    assert mx1.messages[0].content.endswith(b"hello\r\n")
    assert mx1.messages[0].helo == "mx.roost.test"
    assert mx2.messages == []


async def test_content_read_with_the_envelope_is_sent_as_it_is(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    # the queue manager hands small messages over already read (DeliveryJob.content): the
    # transport must send those bytes and not open the queue file again
    mx1 = await sink(sinks, MX1, port)
    content = b"Subject: read once\r\n\r\n.leading dot\r\nbody\r\n"

    def no_second_open() -> io.BytesIO:
        raise AssertionError("the content was opened although the job carried it")

    job = dataclasses.replace(
        make_job("bob@remote.test", content=content), content=content, open_content=no_second_open
    )
    [result] = await make_transport(dns, port).deliver(job)
    assert result.status == "sent"
    assert mx1.messages[0].content == content


async def test_best_mx_down_second_mx(
    dns: DnsServer, port: int, sinks: list[Sink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "roost.smtp")
    mx2 = await sink(sinks, MX2, port)
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test"))
    assert result.status == "sent" and result.relay == f"mx2.remote.test[{MX2}]:{port}"
    assert mx2.recipients() == ["bob@remote.test"]
    assert f"connect to mx1.remote.test[{MX1}]:{port}: Connection refused" in caplog.text


async def test_all_mx_down_defers_with_the_last_reason(dns: DnsServer, port: int) -> None:
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test"))
    assert result.status == "deferred" and result.dsn == "4.4.1"
    assert result.reason == f"connect to mx2.remote.test[{MX2}]:{port}: Connection refused"
    assert result.relay == "none" and not result.remote_reply


async def test_4xx_at_the_best_mx_tries_the_next(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    mx1 = await sink(sinks, MX1, port)
    mx2 = await sink(sinks, MX2, port)
    mx1.reply("bob@remote.test", "450 4.2.0 mailbox busy")
    results = await make_transport(dns, port).deliver(
        make_job("bob@remote.test", "carol@remote.test")
    )
    assert statuses(results) == ["sent", "sent"]
    assert results[0].relay.startswith("mx2.") and results[1].relay.startswith("mx1.")
    assert mx1.recipients() == ["carol@remote.test"]
    assert mx2.recipients() == ["bob@remote.test"]


async def test_4xx_at_the_last_mx_defers_with_the_reply(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    for host in (MX1, MX2):
        (await sink(sinks, host, port)).reply("bob@remote.test", "451 4.3.0 try later")
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test"))
    assert result.status == "deferred" and result.dsn == "4.3.0"
    assert result.reason == "451 4.3.0 try later" and result.remote_reply
    assert result.relay.startswith("mx2.")


async def test_550_for_one_of_three_recipients(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    mx1 = await sink(sinks, MX1, port)
    mx1.reply("carol@remote.test", "550 5.1.1 <carol@remote.test>: Recipient address rejected")
    results = await make_transport(dns, port).deliver(
        make_job("bob@remote.test", "carol@remote.test", "dave@remote.test")
    )
    assert statuses(results) == ["sent", "bounced", "sent"]
    assert results[1].dsn == "5.1.1" and results[1].remote_reply
    assert results[1].reason == "550 5.1.1 <carol@remote.test>: Recipient address rejected"
    assert [m.rcpt_tos for m in mx1.messages] == [["bob@remote.test", "dave@remote.test"]]


async def test_5xx_to_mail_from_bounces_everyone(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    (await sink(sinks, MX1, port)).refuse_mail("553 5.7.1 sender rejected")
    mx2 = await sink(sinks, MX2, port)
    results = await make_transport(dns, port).deliver(make_job("bob@remote.test", "x@remote.test"))
    assert statuses(results) == ["bounced", "bounced"]
    assert results[0].reason == "553 5.7.1 sender rejected"
    assert mx2.messages == []


async def test_dropped_connection_tries_the_next_mx(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    (await sink(sinks, MX1, port)).reply("bob@remote.test", "drop")
    mx2 = await sink(sinks, MX2, port)
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test"))
    assert result.status == "sent" and result.relay.startswith("mx2.")
    assert mx2.recipients() == ["bob@remote.test"]


async def test_rejected_data_applies_to_the_accepted_recipients(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    (await sink(sinks, MX1, port)).refuse_data("554 5.6.0 content rejected")
    results = await make_transport(dns, port).deliver(make_job("bob@remote.test", "c@remote.test"))
    assert statuses(results) == ["bounced", "bounced"]
    assert results[0].reason == "554 5.6.0 content rejected" and results[0].dsn == "5.6.0"


async def test_implicit_mx(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    dns.a("implicit.test", MX3)
    mx3 = await sink(sinks, MX3, port)
    [result] = await make_transport(dns, port).deliver(make_job("bob@implicit.test"))
    assert result.status == "sent" and result.relay == f"implicit.test[{MX3}]:{port}"
    assert mx3.recipients() == ["bob@implicit.test"]
    assert dns.count("implicit.test", "MX") == 1


async def test_mx_host_behind_a_cname(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    dns.mx("alias.test", 10, "mail.alias.test")
    dns.cname("mail.alias.test", "real.alias.test")
    dns.a("real.alias.test", MX3)
    await sink(sinks, MX3, port)
    [result] = await make_transport(dns, port).deliver(make_job("bob@alias.test"))
    assert result.status == "sent" and result.relay == f"mail.alias.test[{MX3}]:{port}"


async def test_address_literal_recipient(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    mx3 = await sink(sinks, MX3, port)
    [result] = await make_transport(dns, port).deliver(make_job(f"bob@[{MX3}]"))
    assert result.status == "sent" and mx3.recipients() == [f"bob@[{MX3}]"]
    assert dns.queries == []


# --- DNS failures -----------------------------------------------------------------------------


async def test_null_mx_bounces_without_connecting(dns: DnsServer, port: int) -> None:
    dns.null_mx("nullmx.test")
    [result] = await make_transport(dns, port).deliver(make_job("bob@nullmx.test"))
    assert (result.status, result.dsn) == ("bounced", "5.1.10")
    assert result.reason == "Domain nullmx.test does not accept mail (nullMX)"


async def test_nxdomain_bounces(dns: DnsServer, port: int) -> None:
    [result] = await make_transport(dns, port).deliver(make_job("bob@nowhere.test"))
    assert (result.status, result.dsn) == ("bounced", "5.1.2")
    assert result.reason == (
        "Host or domain name not found. Name service error for name=nowhere.test type=MX: "
        "Host not found"
    )


async def test_servfail_defers(dns: DnsServer, port: int) -> None:
    dns.fail("broken.test")
    [result] = await make_transport(dns, port).deliver(make_job("bob@broken.test"))
    assert (result.status, result.dsn) == ("deferred", "4.4.3")
    assert result.reason.endswith("type=MX: Host not found, try again")


async def test_slow_dns_defers(dns: DnsServer, port: int) -> None:
    dns.mx("slow.test", 10, "mx1.remote.test")
    dns.delay("slow.test", 3)
    started = time.monotonic()
    transport = make_transport(dns, port, dns_timeout=0.5)
    [result] = await transport.deliver(make_job("bob@slow.test"))
    assert (result.status, result.dsn) == ("deferred", "4.4.3")
    assert time.monotonic() - started < 2.5


async def test_mx_pointing_to_myself_loops(dns: DnsServer, port: int) -> None:
    dns.mx("loop.test", 10, "loop-mx.loop.test")
    dns.a("loop-mx.loop.test", "127.0.0.1")
    dns.mx("byname.test", 10, "mx.roost.test")
    transport = make_transport(dns, 25)  # the loop rule is for port 25 only; no connection
    [result] = await transport.deliver(make_job("bob@loop.test"))
    assert (result.status, result.dsn) == ("bounced", "5.4.6")
    assert result.reason == "mail for loop.test loops back to myself"
    [result] = await transport.deliver(make_job("bob@byname.test"))
    assert (result.status, result.dsn) == ("bounced", "5.4.6")
    # a domain we relay for, whose best MX is this host: a configuration error, deferred
    ours = make_transport(dns, 25, relay_domains=("loop.test",))
    [result] = await ours.deliver(make_job("bob@loop.test"))
    assert (result.status, result.dsn) == ("deferred", "4.3.5")


# --- routes -----------------------------------------------------------------------------------


async def test_transport_maps_routes(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    relay = await sink(sinks, RELAY, port)
    table = {
        "gone@remote.test": "error:5.1.1 gone for good",
        "remote.test": f"smtp:[{RELAY}]",
        "void.test": "discard:testing",
        "later.test": "retry:4.3.2 maintenance",
        "local.test": "local:",
    }
    transport = make_transport(dns, port, transport_lookup=table.get)
    results = await transport.deliver(
        make_job(
            "gone@remote.test", "bob@remote.test", "x@void.test", "y@later.test", "z@local.test"
        )
    )
    assert statuses(results) == ["bounced", "sent", "sent", "deferred", "deferred"]
    assert (results[0].dsn, results[0].reason) == ("5.1.1", "gone for good")
    assert results[1].relay == f"{RELAY}[{RELAY}]:{port}"
    assert results[2].reason == "discarded: testing"
    assert (results[3].dsn, results[3].reason) == ("4.3.2", "maintenance")
    assert "'local' transport" in results[4].reason
    assert relay.recipients() == ["bob@remote.test"]
    assert dns.count("remote.test") == 0


async def test_relayhost_with_auth_over_starttls(
    dns: DnsServer, port: int, sinks: list[Sink], certificate: tuple[Path, Path]
) -> None:
    context = make_server_context(*certificate)
    relay = await sink(sinks, RELAY, port, tls=context, users={"roost": "s3cret"})
    passwords = {f"[{RELAY}]:{port}": "roost:s3cret"}
    transport = make_transport(
        dns,
        port,
        relayhost=parse_nexthops(f"[{RELAY}]:{port}"),
        sasl_enable=True,
        password_lookup=passwords.get,
    )
    [result] = await transport.deliver(make_job("bob@remote.test"))
    assert result.status == "sent", result
    [message] = relay.messages
    assert message.login == "roost" and message.tls
    assert dns.queries == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_auth_needs_tls_by_default(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    relay = await sink(sinks, RELAY, port, users={"roost": "s3cret"})
    transport = make_transport(
        dns,
        port,
        relayhost=parse_nexthops(f"[{RELAY}]:{port}"),
        sasl_enable=True,
        password_lookup={f"[{RELAY}]": "roost:s3cret"}.get,
    )
    [result] = await transport.deliver(make_job("bob@remote.test"))
    assert result.status == "deferred"
    assert result.reason.endswith("no mechanism available")
    assert relay.messages == []
    plain = make_transport(
        dns,
        port,
        relayhost=parse_nexthops(f"[{RELAY}]:{port}"),
        sasl_enable=True,
        sasl_options=frozenset({"noanonymous"}),
        password_lookup={f"[{RELAY}]": "roost:s3cret"}.get,
    )
    [result] = await plain.deliver(make_job("bob@remote.test"))
    assert result.status == "sent" and relay.messages[0].login == "roost"


async def test_wrong_password_defers(
    dns: DnsServer, port: int, sinks: list[Sink], certificate: tuple[Path, Path]
) -> None:
    await sink(sinks, RELAY, port, tls=make_server_context(*certificate), users={"roost": "x"})
    transport = make_transport(
        dns,
        port,
        relayhost=parse_nexthops(f"[{RELAY}]:{port}"),
        sasl_enable=True,
        password_lookup={RELAY: "roost:wrong"}.get,
    )
    [result] = await transport.deliver(make_job("bob@remote.test"))
    assert result.status == "deferred" and result.dsn.startswith("4.")
    assert result.reason.startswith(
        f"SASL authentication failed; server {RELAY}[{RELAY}] said: 535"
    )


# --- extensions -------------------------------------------------------------------------------


async def test_8bit_to_a_peer_without_8bitmime_is_sent_as_is(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    content = "Subject: caf\u00e9\r\n\r\nna\u00efve body\r\n".encode()
    mx1 = await sink(sinks, MX1, port, eightbit=False)
    job = make_job("bob@remote.test", content=content, body_type=BodyType.EIGHT_BIT_MIME)
    [result] = await make_transport(dns, port).deliver(job)
    assert result.status == "sent"
    assert mx1.messages[0].content == content
    assert "BODY=" not in mx1.messages[0].mail_line


async def test_8bitmime_passed_on_when_offered(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    content = b"Subject: x\r\n\r\n\xc3\xa9\r\n"
    mx1 = await sink(sinks, MX1, port)
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test", content=content))
    assert result.status == "sent"
    assert "BODY=8BITMIME" in mx1.messages[0].mail_line
    assert f"SIZE={len(content)}" in mx1.messages[0].mail_line


async def test_smtputf8_needed_but_not_offered_bounces(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    mx1 = await sink(sinks, MX1, port, smtputf8=False)
    job = make_job("j\u00f6rg@remote.test", smtputf8=True)
    [result] = await make_transport(dns, port).deliver(job)
    assert (result.status, result.dsn) == ("bounced", "5.6.7")
    assert (
        result.reason == f"SMTPUTF8 is required, but was not offered by host mx1.remote.test[{MX1}]"
    )
    assert mx1.messages == []
    # ASCII addresses and header: the SMTPUTF8 flag alone does not need it
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test", smtputf8=True))
    assert result.status == "sent" and "SMTPUTF8" not in mx1.messages[0].mail_line


async def test_smtputf8_passed_on_when_offered(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    mx1 = await sink(sinks, MX1, port)
    [result] = await make_transport(dns, port).deliver(
        make_job("j\u00f6rg@remote.test", smtputf8=True)
    )
    assert result.status == "sent"
    assert "SMTPUTF8" in mx1.messages[0].mail_line
    assert mx1.recipients() == ["j\u00f6rg@remote.test"]


async def test_dsn_parameters_passed_on(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    mx1 = await sink(sinks, MX1, port, dsn=True)
    recipient = Recipient(
        "bob@remote.test",
        orcpt="rfc822;bob+x@remote.test",
        notify=(Notify.SUCCESS, Notify.FAILURE),
    )
    job = make_job(recipient, ret=Ret.HDRS, envid="id=1")
    [result] = await make_transport(dns, port).deliver(job)
    assert result.status == "sent"
    [message] = mx1.messages
    assert "RET=HDRS" in message.mail_line and "ENVID=id+3D1" in message.mail_line
    assert message.rcpt_lines == [
        "TO:<bob@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Bx@remote.test"
    ]


async def test_no_dsn_parameters_without_dsn(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    mx1 = await sink(sinks, MX1, port)
    job = make_job(Recipient("bob@remote.test", notify=(Notify.NEVER,)), ret=Ret.FULL)
    [result] = await make_transport(dns, port).deliver(job)
    assert result.status == "sent"
    assert "RET=" not in mx1.messages[0].mail_line
    assert mx1.messages[0].rcpt_lines == ["TO:<bob@remote.test>"]


async def test_size_too_big_bounces_before_mail(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    mx1 = await sink(sinks, MX1, port, size=100)
    content = b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n"
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test", content=content))
    assert (result.status, result.dsn) == ("bounced", "5.3.4")
    assert result.reason == (
        f"message size {len(content)} exceeds size limit 100 of server mx1.remote.test[{MX1}]"
    )
    assert not any(command.startswith("MAIL") for command in mx1.commands)


# --- TLS --------------------------------------------------------------------------------------


async def test_starttls_may_is_opportunistic(
    dns: DnsServer,
    port: int,
    sinks: list[Sink],
    certificate: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "roost.smtp")
    mx1 = await sink(sinks, MX1, port, tls=make_server_context(*certificate))
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test"))
    assert result.status == "sent" and mx1.messages[0].tls
    assert (
        f"Untrusted TLS connection established to mx1.remote.test[{MX1}]:{port}: TLSv1."
        in caplog.text
    )
    assert mx1.commands.count("EHLO mx.roost.test") == 2


async def test_tls_handshake_failure_with_may_retries_in_plaintext(
    dns: DnsServer, port: int, sinks: list[Sink], certificate: tuple[Path, Path]
) -> None:
    context = make_server_context(*certificate)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED  # wants a client certificate we do not have
    context.load_verify_locations(certificate[0])
    mx1 = await sink(sinks, MX1, port, tls=context)
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test"))
    assert result.status == "sent"
    assert mx1.connections == 2 and not mx1.messages[0].tls


async def test_encrypt_without_starttls_defers(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    await sink(sinks, MX1, port)
    await sink(sinks, MX2, port)
    transport = make_transport(dns, port, tls_level=TlsLevel.ENCRYPT)
    [result] = await transport.deliver(make_job("bob@remote.test"))
    assert (result.status, result.dsn) == ("deferred", "4.7.4")
    assert result.reason == f"TLS is required, but was not offered by host mx2.remote.test[{MX2}]"


async def test_verify_checks_the_certificate(
    dns: DnsServer,
    port: int,
    sinks: list[Sink],
    certificate: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from roost.delivery.smtp import client_tls_context

    caplog.set_level(logging.INFO, "roost.smtp")
    mx1 = await sink(sinks, MX1, port, tls=make_server_context(*certificate))
    trusting = client_tls_context(TlsLevel.VERIFY, ca_file=str(certificate[0]))
    transport = make_transport(dns, port, tls_level=TlsLevel.VERIFY, tls_context=trusting)
    [result] = await transport.deliver(make_job("bob@remote.test"))
    assert result.status == "sent" and mx1.messages[0].tls
    assert f"Verified TLS connection established to mx1.remote.test[{MX1}]" in caplog.text
    # a CA that did not sign the certificate: not verified, deferred
    other_cert, other_key = certificate[0].with_name("o.pem"), certificate[0].with_name("k.pem")
    generate_selfsigned("other.test", other_cert, other_key)
    strangers = client_tls_context(TlsLevel.VERIFY, ca_file=str(other_cert))
    strict = make_transport(dns, port, tls_level=TlsLevel.VERIFY, tls_context=strangers)
    dns.mx("one.test", 10, "mx1.remote.test")
    [result] = await strict.deliver(make_job("bob@one.test"))
    assert (result.status, result.dsn) == ("deferred", "4.7.5")
    assert "Server certificate not verified" in result.reason


# --- scheduling -------------------------------------------------------------------------------


async def test_connection_reuse_with_rset(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    mx1 = await sink(sinks, MX1, port)
    transport = make_transport(dns, port, cache_time_limit=5.0)
    for _ in range(3):
        [result] = await transport.deliver(make_job("bob@remote.test"))
        assert result.status == "sent"
    assert mx1.connections == 1 and len(mx1.messages) == 3
    assert mx1.commands.count("RSET") == 2
    assert dns.count("remote.test", "MX") == 1
    await transport.close()
    await asyncio.sleep(0.1)
    assert mx1.commands[-1] == "QUIT"


async def test_idle_connection_closes_after_the_cache_time(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    mx1 = await sink(sinks, MX1, port)
    transport = make_transport(dns, port, cache_time_limit=0.2)
    await transport.deliver(make_job("bob@remote.test"))
    await asyncio.sleep(0.6)
    assert mx1.active == 0 and mx1.commands[-1] == "QUIT"
    await transport.deliver(make_job("bob@remote.test"))
    assert mx1.connections == 2


async def test_recipient_limit_splits_transactions(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    mx1 = await sink(sinks, MX1, port)
    transport = make_transport(dns, port, recipient_limit=2)
    rcpts = [f"user{i}@remote.test" for i in range(5)]
    results = await transport.deliver(make_job(*rcpts))
    assert statuses(results) == ["sent"] * 5
    assert [len(m.rcpt_tos) for m in mx1.messages] == [2, 2, 1]
    assert mx1.connections == 1


async def test_destination_concurrency_limit(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    mx1 = await sink(sinks, MX1, port)
    mx1.slow_data(0.3)
    transport = make_transport(dns, port, concurrency_limit=2)
    results = await asyncio.gather(
        *(transport.deliver(make_job(f"u{i}@remote.test")) for i in range(6))
    )
    assert all(statuses(r) == ["sent"] for r in results)
    assert mx1.max_active == 2 and len(mx1.messages) == 6


async def test_dead_destination_is_backed_off_while_others_flow(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    dns.mx("dead.test", 10, "mx.dead.test")
    dns.a("mx.dead.test", "127.0.0.19")
    mx1 = await sink(sinks, MX1, port)
    transport = make_transport(dns, port, failed_cohort_limit=1, dead_time=600)
    [first] = await transport.deliver(make_job("bob@dead.test"))
    assert first.status == "deferred" and "Connection refused" in first.reason
    [second] = await transport.deliver(make_job("carol@dead.test"))
    assert second.status == "deferred"
    assert second.reason == f"delivery temporarily suspended: {first.reason}"
    assert dns.count("dead.test", "MX") == 1  # not even looked up again
    [alive] = await transport.deliver(make_job("bob@remote.test"))
    assert alive.status == "sent" and mx1.recipients() == ["bob@remote.test"]
    # a flush (recipients handed over before their next try) tries the dead one again
    flushed = Recipient(
        "carol@dead.test", state=RecipientState.DEFERRED, next_try=time.time() + 3600
    )
    [third] = await transport.deliver(make_job(flushed))
    assert third.status == "deferred" and "Connection refused" in third.reason
    assert dns.count("dead.test", "MX") == 2


async def test_session_limit(dns: DnsServer, port: int, sinks: list[Sink]) -> None:
    dns.mx("many.test", 10, "mx1.remote.test")
    dns.mx("many.test", 20, "mx2.remote.test")
    dns.mx("many.test", 30, "mx3.many.test")
    dns.a("mx3.many.test", MX3)
    for host in (MX1, MX2, MX3):
        (await sink(sinks, host, port)).reply("bob@many.test", "450 4.2.1 not now")
    [result] = await make_transport(dns, port, session_limit=2).deliver(make_job("bob@many.test"))
    assert result.status == "deferred" and result.relay.startswith("mx2.")
    assert sinks[2].connections == 0


def test_config_slots_match_the_fields() -> None:
    names = {f.name for f in dataclasses.fields(SmtpConfig)}
    assert set(SmtpConfig.__slots__) == names


# --- construction from main.cf -----------------------------------------------------------------


def test_built_from_settings(tmp_path: Path) -> None:
    from roost.config import ConfigError, load_settings
    from roost.delivery.nexthop import Nexthop
    from roost.delivery.smtp import smtp_transport_from_settings

    (tmp_path / "transport").write_text("example.org smtp:[127.0.0.9]:2525\n")
    (tmp_path / "passwd").write_text("[relay.test]:587 user:pass:word\n")
    main_cf = tmp_path / "main.cf"
    main_cf.write_text(
        "myhostname = mx.roost.test\n"
        "inet_interfaces = 127.0.0.1\n"
        "relayhost = [relay.test]:587\n"
        f"transport_maps = texthash:{tmp_path}/transport\n"
        "smtp_sasl_auth_enable = yes\n"
        f"smtp_sasl_password_maps = texthash:{tmp_path}/passwd\n"
        "dns_nameservers = 127.0.0.1:5353\n"
        "smtp_destination_concurrency_limit = 3\n"
        "smtp_tls_security_level = encrypt\n"
        "smtp_tcp_port = submission\n"
    )
    settings, _ = load_settings(main_cf)
    transport = smtp_transport_from_settings(settings)
    config = transport.config
    assert config.relayhost == (Nexthop("relay.test", 587, False),)
    assert config.concurrency_limit == 3 and config.recipient_limit == 50
    assert config.tls_level is TlsLevel.ENCRYPT and config.helo_name == "mx.roost.test"
    assert config.default_port == 587 and config.connect_timeout == 30
    assert transport._transport_lookup("example.org") == "smtp:[127.0.0.9]:2525"
    assert transport._credentials(config.relayhost[0], "relay.test") == ("user", "pass:word")
    assert transport._is_myself("127.0.0.1") and not transport._is_myself("127.0.0.2")

    main_cf.write_text("relayhost = [relay.test\n")
    settings, _ = load_settings(main_cf)
    with pytest.raises(ConfigError, match="relayhost"):
        smtp_transport_from_settings(settings)


def test_local_addresses_with_a_wildcard() -> None:
    everything = LocalAddresses(["0.0.0.0"])
    assert everything("127.0.0.1") and everything("127.0.0.77")
    assert not everything("192.0.2.1")  # TEST-NET-1: never an address of this host
    assert not everything("::1")  # IPv6 not listened on
    assert not LocalAddresses(["127.0.0.1"])("127.0.0.77")


# --- servers aiosmtpd cannot imitate: a scripted one -------------------------------------------


class Scripted:
    """A line-by-line SMTP server whose replies per command verb the test chooses
    (``None``: never answer)."""

    def __init__(self, greeting: str = "220 scripted ESMTP", **replies: str | None) -> None:
        self.greeting = greeting
        self.replies: dict[str, str | None] = {
            "EHLO": "250-scripted\r\n250 8BITMIME",
            "HELO": "250 scripted",
            "MAIL": "250 2.1.0 Ok",
            "RCPT": "250 2.1.5 Ok",
            "DATA": "354 go ahead",
            "RSET": "250 Ok",
            "QUIT": "221 Bye",
            **replies,
        }
        self.commands: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> Scripted:
        self.server = await asyncio.start_server(self._client, host, port)
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.greeting.encode() + b"\r\n")
        try:
            while line := await reader.readline():
                command = line.decode().strip()
                self.commands.append(command)
                verb = command.split(" ", 1)[0].upper()
                reply = self.replies.get(verb, "502 5.5.2 unknown")
                if reply is None:
                    await asyncio.sleep(3600)
                writer.write(str(reply).encode() + b"\r\n")
                if verb == "DATA" and str(reply).startswith("354"):
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    writer.write(b"250 2.0.0 Ok: queued\r\n")
                if verb == "QUIT" or str(reply).startswith("421"):
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def scripted() -> AsyncIterator[list[Scripted]]:
    servers: list[Scripted] = []
    yield servers
    for server in servers:
        await server.stop()


async def test_5xx_greeting_tries_the_next_mx(
    dns: DnsServer, port: int, sinks: list[Sink], scripted: list[Scripted]
) -> None:
    scripted.append(await Scripted("554 5.3.2 not now").start(MX1, port))
    mx2 = await sink(sinks, MX2, port)
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test"))
    assert result.status == "sent" and mx2.recipients() == ["bob@remote.test"]
    # alone, with smtp_skip_5xx_greeting = no: bounced
    dns.mx("greet.test", 10, "mx1.remote.test")
    transport = make_transport(dns, port, skip_5xx_greeting=False)
    [result] = await transport.deliver(make_job("bob@greet.test"))
    assert (result.status, result.dsn) == ("bounced", "5.3.2")
    assert result.reason == f"host mx1.remote.test[{MX1}] refused to talk to me: 554 5.3.2 not now"


async def test_helo_when_ehlo_is_refused(
    dns: DnsServer, port: int, scripted: list[Scripted]
) -> None:
    server = await Scripted(EHLO="502 5.5.1 no ESMTP here").start(MX1, port)
    scripted.append(server)
    content = b"Subject: x\r\n\r\n\xc3\xa9\r\n"
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test", content=content))
    assert result.status == "sent"
    assert server.commands[:3] == [
        "EHLO mx.roost.test",
        "HELO mx.roost.test",
        "MAIL FROM:<alice@roost.test>",
    ]


async def test_rcpt_timeout_defers(dns: DnsServer, port: int, scripted: list[Scripted]) -> None:
    scripted.append(await Scripted(RCPT=None).start(MX1, port))
    dns.mx("stuck.test", 10, "mx1.remote.test")
    transport = make_transport(dns, port, rcpt_timeout=0.3)
    [result] = await transport.deliver(make_job("bob@stuck.test"))
    assert (result.status, result.dsn) == ("deferred", "4.4.2")
    assert result.reason == (
        f"conversation with mx1.remote.test[{MX1}] timed out while sending RCPT TO"
    )


async def test_421_at_data_end_tries_the_next_mx(
    dns: DnsServer, port: int, sinks: list[Sink], scripted: list[Scripted]
) -> None:
    scripted.append(await Scripted(DATA="421 4.3.2 shutting down").start(MX1, port))
    mx2 = await sink(sinks, MX2, port)
    [result] = await make_transport(dns, port).deliver(make_job("bob@remote.test"))
    assert result.status == "sent" and mx2.recipients() == ["bob@remote.test"]


# --- PIPELINING (RFC 2920) ----------------------------------------------------------------------


def envelope_writes(sink: Sink) -> list[bytes]:
    return [chunk for chunk in sink.chunks if b"MAIL FROM:" in chunk or b"RCPT TO:" in chunk]


async def test_pipelining_sends_the_envelope_in_one_write(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    mx1 = await sink(sinks, MX1, port)
    mx1.reply("carol@remote.test", "550 5.1.1 no such user")
    transport = make_transport(dns, port, cache_time_limit=5.0)
    job = make_job("bob@remote.test", "carol@remote.test", "dave@remote.test")
    results = await transport.deliver(job)
    assert statuses(results) == ["sent", "bounced", "sent"]
    assert results[1].reason == "550 5.1.1 no such user"
    # the reused connection: its RSET goes in the same write
    [result] = await transport.deliver(make_job("erin@remote.test"))
    assert result.status == "sent"
    first, second = envelope_writes(mx1)
    assert first.startswith(b"MAIL FROM:<alice@roost.test>")
    assert first.count(b"\r\nRCPT TO:") == 3 and first.endswith(b"\r\nDATA\r\n")
    assert second.startswith(b"RSET\r\nMAIL FROM:") and second.endswith(b"\r\nDATA\r\n")
    assert mx1.connections == 1
    assert [m.rcpt_tos for m in mx1.messages] == [
        ["bob@remote.test", "dave@remote.test"],
        ["erin@remote.test"],
    ]
    await transport.close()


async def test_without_pipelining_one_command_per_write(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    mx1 = await sink(sinks, MX1, port, pipelining=False)
    results = await make_transport(dns, port).deliver(make_job("bob@remote.test", "c@remote.test"))
    assert statuses(results) == ["sent", "sent"]
    writes = envelope_writes(mx1)
    assert len(writes) == 3 and all(chunk.count(b"\r\n") == 1 for chunk in writes)


async def test_pipelined_rcpt_timeout_names_the_stage(
    dns: DnsServer, port: int, scripted: list[Scripted]
) -> None:
    scripted.append(
        await Scripted(EHLO="250-scripted\r\n250 PIPELINING", RCPT=None).start(MX1, port)
    )
    dns.mx("stuck.test", 10, "mx1.remote.test")
    transport = make_transport(dns, port, rcpt_timeout=0.3)
    [result] = await transport.deliver(make_job("bob@stuck.test"))
    assert (result.status, result.dsn) == ("deferred", "4.4.2")
    assert result.reason == (
        f"conversation with mx1.remote.test[{MX1}] timed out while sending RCPT TO"
    )


async def test_dead_cached_connection_is_replaced(
    dns: DnsServer, port: int, scripted: list[Scripted]
) -> None:
    # the folded RSET of a reused connection gets 421: nothing was attempted on it, and the
    # message goes over a new connection
    server = await Scripted(
        EHLO="250-scripted\r\n250 PIPELINING", RSET="421 4.4.2 idle for too long"
    ).start(MX1, port)
    scripted.append(server)
    dns.mx("again.test", 10, "mx1.remote.test")
    transport = make_transport(dns, port, cache_time_limit=5.0, session_limit=1)
    for _ in range(2):
        [result] = await transport.deliver(make_job("bob@again.test"))
        assert result.status == "sent", result.reason
    assert server.commands.count("EHLO mx.roost.test") == 2
    assert server.commands.count("RSET") == 1
    assert server.commands.count("DATA") == 2
    await transport.close()


async def test_line_endings_and_leading_dots_on_the_wire(
    dns: DnsServer, port: int, sinks: list[Sink]
) -> None:
    # CRLF content goes as it is; bare LF or CR is turned into CRLF; a leading dot is
    # doubled on the wire (RFC 5321 4.5.2) and undone by the receiver; large content is
    # read in a thread, small content inline: the same bytes either way
    mx1 = await sink(sinks, MX1, port)
    transport = make_transport(dns, port, cache_time_limit=5.0)
    crlf = b"Subject: a\r\n\r\n.dot\r\nline\r\n"
    bare = b"Subject: b\n\n.dot\nline\rend"
    large = b"Subject: c\n\n" + b".x\n" * 30000
    for content in (crlf, bare, large):
        [result] = await transport.deliver(make_job("bob@remote.test", content=content))
        assert result.status == "sent"
    assert [m.content for m in mx1.messages] == [
        crlf,
        b"Subject: b\r\n\r\n.dot\r\nline\r\nend\r\n",
        b"Subject: c\r\n\r\n" + b".x\r\n" * 30000,
    ]
    wire = b"".join(mx1.chunks)
    assert b"\r\n..dot\r\n" in wire and b"\r\n..x\r\n" in wire
    await transport.close()


async def test_routes_are_cached_for_a_few_seconds(dns: DnsServer, port: int) -> None:
    table = {"cached.test": "error:5.7.1 first"}
    now = [1000.0]
    transport = make_transport(dns, port, transport_lookup=table.get, clock=lambda: now[0])
    [result] = await transport.deliver(make_job("bob@cached.test"))
    assert result.reason == "first"
    table["cached.test"] = "error:5.7.1 second"
    [result] = await transport.deliver(make_job("bob@cached.test"))
    assert result.reason == "first"  # a table change takes effect within ROUTE_CACHE_SECONDS
    now[0] += ROUTE_CACHE_SECONDS + 1
    [result] = await transport.deliver(make_job("bob@cached.test"))
    assert result.reason == "second"

"""Outbound delivery end to end: the daemon relays to SMTP sinks found through a loopback DNS.

The instance's ``dns_nameservers`` is the test DNS server (so nothing looks anything up on
the internet), every MX host is a sink on 127.0.0.x at ``smtp_tcp_port``, and mail is
submitted from 127.0.0.2 (``mynetworks``) by alice@virtual.test, a user of the instance,
so bounces land in her Maildir.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from roost.tls import generate_selfsigned, make_server_context
from tests.conftest import ROOST, free_port_for
from tests.e2e.instance import Instance, start_instance
from tests.integration.dnsserver import DnsServer
from tests.integration.smtpsink import ThreadedSink

HOSTS = [f"127.0.0.{n}" for n in range(10, 30)]
SENDER = "alice@virtual.test"


@dataclass
class World:
    instance: Instance
    dns: DnsServer
    port: int
    directory: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("outbound")
    (directory / "transport").write_text(
        "error.test   error:5.7.1 we do not deliver there\n"
        "void.test    discard:testing discard\n"
        "later.test   smtp:\n"
    )
    port = free_port_for(HOSTS)
    with DnsServer() as dns:
        instance = start_instance(
            directory,
            f"dns_nameservers = {dns.address}\n"
            f"smtp_tcp_port = {port}\n"
            "inet_protocols = ipv4\n"
            f"transport_maps = texthash:{directory}/transport\n"
            "smtp_connection_cache_time_limit = 0s\n",
        )
        try:
            yield World(instance, dns, port, directory)
        finally:
            instance.daemon.stop()


@pytest.fixture
def sinks() -> Iterator[list[ThreadedSink]]:
    started: list[ThreadedSink] = []
    yield started
    for sink in started:
        sink.stop()


def start_sink(sinks: list[ThreadedSink], host: str, port: int, **options: object) -> ThreadedSink:
    sink = ThreadedSink(host, port, **options)
    sinks.append(sink)
    return sink


def send(instance: Instance, to: list[str], subject: str = "hello") -> str:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message.set_content(f"{subject}\n")
    with instance.smtp(source="127.0.0.2") as client:
        client.ehlo("client.example")
        client.mail(SENDER)
        for address in to:
            code, text = client.rcpt(address)
            assert code == 250, (address, text)
        code, text = client.data(message.as_bytes(policy=email.policy.SMTP))
        assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def wait_log(instance: Instance, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, instance.log(), re.MULTILINE)
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line {pattern!r}:\n{instance.log()[-4000:]}")
        time.sleep(0.05)


def dsn_for(instance: Instance, before: int) -> email.message.Message:
    files = instance.wait_delivered("alice", before + 1)
    assert len(files) > before, instance.log()[-4000:]
    return email.message_from_bytes(files[before].read_bytes(), policy=email.policy.default)


def delivery_status(dsn: email.message.Message) -> str:
    for part in dsn.walk():
        if part.get_content_type() == "message/delivery-status":
            # one line per field, whatever folding the renderer chose
            text = "\n".join(str(block) for block in part.get_payload())
            return re.sub(r"\n[ \t]+", " ", text)
    raise AssertionError("no message/delivery-status part")


def test_delivery_via_the_best_mx_with_starttls(
    world: World, sinks: list[ThreadedSink], tmp_path: Path
) -> None:
    world.dns.mx("remote.test", 10, "mx1.remote.test")
    world.dns.mx("remote.test", 20, "mx2.remote.test")
    world.dns.a("mx1.remote.test", "127.0.0.10")
    world.dns.a("mx2.remote.test", "127.0.0.11")
    generate_selfsigned("mx1.remote.test", tmp_path / "cert.pem", tmp_path / "key.pem")
    context = make_server_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    mx1 = start_sink(sinks, "127.0.0.10", world.port, tls=context)
    mx2 = start_sink(sinks, "127.0.0.11", world.port)
    queue_id = send(world.instance, ["bob@remote.test"])
    [message] = mx1.wait_messages(1)
    assert message.rcpt_tos == ["bob@remote.test"] and message.mail_from == SENDER
    assert message.tls and message.helo == "mx.roost.test"
    assert b"Subject: hello" in message.content
    relay = f"mx1.remote.test[127.0.0.10]:{world.port}"
    line = wait_log(
        world.instance,
        rf"roost/smtp\[\d+\]: {queue_id}: to=<bob@remote\.test>, relay={re.escape(relay)}, "
        r"delay=[\d.]+, "
        r"delays=[\d./]+, dsn=2\.0\.0, status=sent \(250 2\.0\.0 Ok: queued as \w+\)",
    )
    assert line
    wait_log(
        world.instance,
        rf"roost/smtp\[\d+\]: Untrusted TLS connection established to {re.escape(relay)}: "
        r"TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)",
    )
    wait_log(world.instance, rf"{queue_id}: removed")
    assert mx2.sink.messages == []


def test_all_mx_down_deferred_then_delivered_once_by_a_flush(
    world: World, sinks: list[ThreadedSink]
) -> None:
    world.dns.mx("later.test", 10, "mx1.later.test")
    world.dns.mx("later.test", 20, "mx2.later.test")
    world.dns.a("mx1.later.test", "127.0.0.12")
    world.dns.a("mx2.later.test", "127.0.0.13")
    queue_id = send(world.instance, ["bob@later.test"])
    wait_log(
        world.instance,
        rf"{queue_id}: to=<bob@later\.test>, relay=none, .*status=deferred "
        rf"\(connect to mx2\.later\.test\[127\.0\.0\.13\]:{world.port}: Connection refused\)",
    )
    assert list((world.instance.queue / "deferred").glob(f"{queue_id}*"))
    mx2 = start_sink(sinks, "127.0.0.13", world.port)
    subprocess.run(
        [*ROOST, "-c", str(world.directory / "main.cf"), "queue", "flush"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    [message] = mx2.wait_messages(1)
    assert message.rcpt_tos == ["bob@later.test"]
    wait_log(
        world.instance, rf"{queue_id}: to=<bob@later\.test>, relay=mx2\.later\.test.*status=sent"
    )
    wait_log(world.instance, rf"{queue_id}: removed")
    subprocess.run(
        [*ROOST, "-c", str(world.directory / "main.cf"), "queue", "flush"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    time.sleep(1)
    assert len(mx2.sink.messages) == 1
    assert not list((world.instance.queue / "deferred").glob(f"{queue_id}*"))


def test_550_for_one_of_three_bounces_to_the_sender(
    world: World, sinks: list[ThreadedSink]
) -> None:
    world.dns.mx("three.test", 10, "mx.three.test")
    world.dns.a("mx.three.test", "127.0.0.14")
    mx = start_sink(sinks, "127.0.0.14", world.port)
    mx.sink.reply("carol@three.test", "550 5.1.1 <carol@three.test>: Recipient address rejected")
    before = len(world.instance.delivered("alice"))
    queue_id = send(world.instance, ["bob@three.test", "carol@three.test", "dave@three.test"])
    [message] = mx.wait_messages(1)
    assert message.rcpt_tos == ["bob@three.test", "dave@three.test"]
    dsn = dsn_for(world.instance, before)
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    status = delivery_status(dsn)
    assert "Final-Recipient: rfc822; carol@three.test" in status
    assert "Status: 5.1.1" in status
    assert (
        "Diagnostic-Code: smtp; 550 5.1.1 <carol@three.test>: Recipient address rejected" in status
    )
    assert "bob@three.test" not in status
    wait_log(world.instance, rf"{queue_id}: to=<carol@three\.test>, .*dsn=5\.1\.1, status=bounced")


def test_null_mx_and_transport_maps_bounce(world: World) -> None:
    world.dns.null_mx("nullmx.test")
    before = len(world.instance.delivered("alice"))
    queue_id = send(world.instance, ["a@nullmx.test", "c@error.test", "d@void.test"])
    dsn = dsn_for(world.instance, before)
    status = delivery_status(dsn)
    assert "Final-Recipient: rfc822; a@nullmx.test" in status
    assert "Status: 5.1.10" in status
    assert "Domain nullmx.test does not accept mail (nullMX)" in status
    assert "Status: 5.7.1" in status and "we do not deliver there" in status
    assert "d@void.test" not in status
    wait_log(
        world.instance,
        rf"roost/discard\[\d+\]: {queue_id}: to=<d@void\.test>, relay=none, "
        r".*status=sent \(discarded: testing discard\)",
    )
    wait_log(
        world.instance, rf"roost/error\[\d+\]: {queue_id}: to=<c@error\.test>, .*status=bounced"
    )


def test_loop_rule_only_at_port_25(tmp_path: Path, sinks: list[ThreadedSink]) -> None:
    # A content filter on an address roost listens on (127.0.0.1), at another port, is an
    # ordinary next hop; at port 25 the same address is a loop (Postfix smtp_connect.c
    # applies SMTP_MISC_FLAG_LOOP_DETECT only to IPPORT_SMTP).
    filter_port = free_port_for(["127.0.0.1"])
    content_filter = start_sink(sinks, "127.0.0.1", filter_port)
    (tmp_path / "transport").write_text(
        f"filter.test  smtp:[127.0.0.1]:{filter_port}\nloop.test    smtp:[127.0.0.1]:25\n"
    )
    with DnsServer() as dns:  # answers nothing: neither route needs a lookup
        instance = start_instance(
            tmp_path / "instance",
            f"dns_nameservers = {dns.address}\ntransport_maps = texthash:{tmp_path}/transport\n",
        )
        try:
            assert "inet_interfaces = 127.0.0.1" in (instance.directory / "main.cf").read_text()
            queue_id = send(instance, ["someone@filter.test", "other@loop.test"])
            [message] = content_filter.wait_messages(1)
            assert message.rcpt_tos == ["someone@filter.test"]
            wait_log(
                instance,
                rf"{queue_id}: to=<someone@filter\.test>, "
                rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{filter_port}, .*status=sent",
            )
            wait_log(
                instance,
                rf"{queue_id}: to=<other@loop\.test>, relay=none, .*dsn=4\.3\.5, "
                r"status=deferred \(mail for \[127\.0\.0\.1\]:25 loops back to myself\)",
            )
            assert dns.queries == []
        finally:
            instance.daemon.stop()


def test_relayhost_with_auth(tmp_path: Path, sinks: list[ThreadedSink]) -> None:
    generate_selfsigned("relay.test", tmp_path / "cert.pem", tmp_path / "key.pem")
    context = make_server_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    relay_port = free_port_for(["127.0.0.15"])
    relay = start_sink(
        sinks, "127.0.0.15", relay_port, tls=context, users={"roost-out": "relay secret"}
    )
    (tmp_path / "sasl_passwd").write_text(f"[127.0.0.15]:{relay_port} roost-out:relay secret\n")
    with DnsServer() as dns:  # answers nothing: the relayhost needs no lookup
        instance = start_instance(
            tmp_path / "instance",
            f"dns_nameservers = {dns.address}\n"
            f"relayhost = [127.0.0.15]:{relay_port}\n"
            "smtp_sasl_auth_enable = yes\n"
            f"smtp_sasl_password_maps = texthash:{tmp_path}/sasl_passwd\n",
        )
        try:
            queue_id = send(instance, ["someone@anywhere.test"])
            [message] = relay.wait_messages(1)
            assert message.login == "roost-out" and message.tls
            assert message.rcpt_tos == ["someone@anywhere.test"]
            wait_log(
                instance,
                rf"{queue_id}: to=<someone@anywhere\.test>, "
                rf"relay=127\.0\.0\.15\[127\.0\.0\.15\]:{relay_port}, .*status=sent",
            )
            assert dns.queries == []
        finally:
            instance.daemon.stop()


# --- a real Postfix as the receiving MX (optional: skipped without postfix) -------------------

_MASTER_CF = """\
{listen} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class PostfixMx:
    """A separate Postfix instance (own config, queue and data directories under ``base``,
    never the system instance) receiving mail for postfix.test into one Maildir."""

    def __init__(self, base: Path, host: str, port: int) -> None:
        from tests.conftest import require_program

        self.postfix = require_program("postfix")  # CI installs it; a skip elsewhere
        import os
        import pwd

        if os.geteuid() != 0:
            pytest.skip("a Postfix instance needs root")
        try:
            postfix_uid = pwd.getpwnam("postfix").pw_uid
        except KeyError:
            pytest.skip("no postfix account")
        self.base = base
        self.conf = base / "etc"
        self.mail = base / "mail"
        data = base / "data"
        for directory in (self.conf, base / "spool", data, self.mail):
            directory.mkdir(parents=True)
        os.chown(data, postfix_uid, -1)
        os.chown(self.mail, 65534, 65534)
        cert, key = self.conf / "cert.pem", self.conf / "key.pem"
        generate_selfsigned("mx.postfix.test", cert, key)
        (self.conf / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"config_directory = {self.conf}\n"
            f"queue_directory = {base}/spool\n"
            f"data_directory = {data}\n"
            "multi_instance_name = postfix-roost-outbound-test\n"
            "myhostname = mx.postfix.test\n"
            "mydomain = postfix.test\n"
            "mydestination =\n"
            "inet_interfaces = 127.0.0.1\n"  # an interface address; master.cf binds {host}
            "inet_protocols = ipv4\n"
            "mynetworks = 127.0.0.0/8\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
            "smtpd_recipient_restrictions = check_recipient_access "
            "inline:{ { refused@postfix.test = REJECT no such user } }\n"
            "smtp_dns_support_level = disabled\n"
            "smtpd_peername_lookup = no\n"
            f"maillog_file = {base}/maillog\nmaillog_file_prefixes = {base}\n"
            "alias_maps =\nalias_database =\nlocal_recipient_maps =\n"
            "virtual_mailbox_domains = postfix.test\n"
            f"virtual_mailbox_base = {self.mail}\n"
            "virtual_mailbox_maps = static:inbox/\n"
            "virtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n"
            "virtual_minimum_uid = 100\n"
            "default_transport = error:outbound disabled in this test instance\n"
            "relay_transport = error:outbound disabled in this test instance\n"
            "smtpd_tls_security_level = may\nsmtpd_tls_loglevel = 1\n"
            f"smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n"
            "smtputf8_enable = yes\n"
        )
        (self.conf / "master.cf").write_text(_MASTER_CF.format(listen=f"{host}:{port}"))
        self._postfix("check")
        subprocess.run(
            ["script", "-qc", f"{self.postfix} -c {self.conf} start", "/dev/null"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((host, port), 1):
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"postfix did not start:\n{self.log()}")

    def _postfix(self, *args: str) -> None:
        assert self.postfix is not None
        subprocess.run([self.postfix, "-c", str(self.conf), *args], capture_output=True, timeout=60)

    def log(self) -> str:
        path = self.base / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def delivered(self, count: int, timeout: float = 30.0) -> list[Path]:
        new = self.mail / "inbox" / "new"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = sorted(new.iterdir()) if new.is_dir() else []
            if len(files) >= count:
                return files
            time.sleep(0.1)
        raise AssertionError(f"postfix delivered nothing:\n{self.log()}")

    def stop(self) -> None:
        self._postfix("stop")


def test_real_postfix_as_the_receiving_mx(world: World) -> None:
    import shutil
    import tempfile

    # Postfix's daemons run as "postfix" and "nobody": the base must be reachable by them
    base = Path(tempfile.mkdtemp(prefix="roost-postfix-"))
    base.chmod(0o755)
    try:
        postfix = PostfixMx(base / "postfix", "127.0.0.21", world.port)
    except BaseException:
        shutil.rmtree(base)
        raise
    try:
        world.dns.mx("postfix.test", 10, "mx.postfix.test")
        world.dns.a("mx.postfix.test", "127.0.0.21")
        before = len(world.instance.delivered("alice"))
        queue_id = send(world.instance, ["bob@postfix.test", "refused@postfix.test"], "to pf")
        [path] = postfix.delivered(1)
        content = path.read_bytes()
        assert b"Subject: to pf" in content and b"Delivered-To: bob@postfix.test" in content
        relay = re.escape(f"mx.postfix.test[127.0.0.21]:{world.port}")
        wait_log(
            world.instance,
            rf"{queue_id}: to=<bob@postfix\.test>, relay={relay}, .*dsn=2\.0\.0, "
            r"status=sent \(250 2\.0\.0 Ok: queued as \w+\)",
        )
        wait_log(world.instance, rf"Untrusted TLS connection established to {relay}: TLSv1\.3")
        status = delivery_status(dsn_for(world.instance, before))
        assert (
            "Diagnostic-Code: smtp; 554 5.7.1 <refused@postfix.test>: "
            "Recipient address rejected: no such user" in status
        )
        assert "TLS connection established from unknown[127.0.0." in postfix.log()
    finally:
        postfix.stop()
        shutil.rmtree(base)

"""One user database and one failed-login throttle for SMTP, IMAP and POP3 together."""

from __future__ import annotations

import base64
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.auth.schemes import verify_password
from tests.conftest import require_program
from tests.e2e.instance import PASSWORD, Instance, start_instance

SOURCE = "127.0.0.20"  # one client address for every protocol


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(
        tmp_path_factory.mktemp("authshared"),
        "smtpd_sasl_auth_enable = yes\n"
        "smtpd_tls_auth_only = no\n"
        "disable_plaintext_auth = no\n"
        "auth_failure_delay_max = 4s\n",
    )
    yield running
    running.daemon.stop()


class Line:
    """A line-oriented client bound to SOURCE."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 30, (SOURCE, 0))
        self.file = self.sock.makefile("rb")

    def read(self) -> str:
        return self.file.readline().decode().rstrip("\r\n")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def smtp_fail(instance: Instance) -> str:
    client = Line(instance.ports["smtp"])
    client.read()
    client.send("EHLO shared.example")
    while not client.read().startswith("250 "):
        pass
    token = base64.b64encode(b"\0alice\0wrong smtp").decode()
    client.send(f"AUTH PLAIN {token}")
    reply = client.read()
    client.close()
    return reply


def imap_fail(instance: Instance) -> str:
    client = Line(instance.ports["imap"])
    client.read()
    client.send('a LOGIN alice "wrong imap"')
    reply = client.read()
    while not reply.startswith("a "):
        reply = client.read()
    client.close()
    return reply


def pop3_login(instance: Instance, password: str) -> tuple[float, str]:
    client = Line(instance.ports["pop3"])
    client.read()
    client.send("USER alice")
    client.read()
    start = time.monotonic()
    client.send(f"PASS {password}")
    reply = client.read()
    took = time.monotonic() - start
    client.close()
    return took, reply


def test_failures_over_smtp_and_imap_slow_down_pop3(instance: Instance) -> None:
    assert smtp_fail(instance).startswith("535 5.7.8 ")
    assert imap_fail(instance).startswith("a NO [AUTHENTICATIONFAILED]")
    assert smtp_fail(instance).startswith("535 5.7.8 ")
    # three failures from SOURCE, whatever the protocol: the next answer waits
    # min(2**(3-1), auth_failure_delay_max) = 4 s minus the time already passed
    took, reply = pop3_login(instance, PASSWORD)
    assert reply.startswith("+OK"), reply
    assert took >= 2.0, f"POP3 answered after {took:.2f} s: the throttle is not shared"
    log = instance.log()
    smtp_line = (  # any pid: the master's, or a worker process's
        rf"roost/smtpd\[\d+\]: warning: unknown\[{re.escape(SOURCE)}\]: SASL PLAIN"
        " authentication failed: authentication failure, sasl_username=alice"
    )
    assert len(re.findall(smtp_line, log)) == 2
    assert re.search(r"roost/imap-login\[\d+\]: Disconnected \(auth failed, 1 attempts", log)
    assert f"user=<alice>, method=PLAIN, rip={SOURCE}, lip=127.0.0.1" in log


def test_the_same_user_database_answers_every_protocol(instance: Instance) -> None:
    client = Line(instance.ports["imap"])
    client.read()
    client.send(f'b LOGIN alice@virtual.test "{PASSWORD}"')
    reply = client.read()
    while not reply.startswith("b "):
        reply = client.read()
    assert reply.startswith("b OK")
    client.close()
    _, reply = pop3_login(instance, "bob's secret")  # wrong for alice
    assert reply.startswith("-ERR [AUTH]")


@pytest.mark.parametrize(
    "scheme", ["SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "ARGON2ID", "PBKDF2", "SSHA512"]
)
def test_hashes_written_by_doveadm_pw_verify(scheme: str, tmp_path: Path) -> None:
    doveadm = require_program("doveadm")
    made = subprocess.run(
        [doveadm, "pw", "-s", scheme, "-p", "dovecot's password"],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0 and "Unknown scheme" in made.stderr:
        pytest.skip(f"this Dovecot has no {scheme}")
    assert made.returncode == 0, made.stderr
    hashed = made.stdout.strip()
    assert hashed.startswith("{" + scheme + "}")
    assert verify_password("dovecot's password", hashed)
    assert not verify_password("another password", hashed)

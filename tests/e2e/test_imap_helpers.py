"""Helpers for the IMAP end-to-end tests (no tests here): users, delivery, clients.

Each test gets a user of its own (added to the instance's passwd-file, which the daemon
re-reads when it changes), so tests do not see each other's mail.
"""

from __future__ import annotations

import imaplib
import itertools
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.instance import Instance, client_tls, start_instance

DOMAIN = "virtual.test"
_counter = itertools.count(1)


def start_imap_instance(directory: Path, extra: str = "") -> Instance:
    """A daemon whose IMAP services run (the default) with short test timeouts."""
    return start_instance(directory, extra)


@pytest.fixture(scope="module")
def imap_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """One running daemon per test module."""
    running = start_imap_instance(tmp_path_factory.mktemp("imap"))
    yield running
    running.daemon.stop()


def add_user(instance: Instance, prefix: str = "user") -> tuple[str, str]:
    """Add a virtual user to the passwd-file; returns (login, password)."""
    from roost.auth.passwdfile import hash_password

    name = f"{prefix}{next(_counter)}x{int(time.time() * 1000) % 100000}"
    password = f"pw-{name}"
    users = instance.directory / "users"
    with users.open("a") as handle:
        handle.write(f"{name}@{DOMAIN}:{hash_password(password, 'SHA256-CRYPT')}::::::\n")
    return f"{name}@{DOMAIN}", password


def maildir(instance: Instance, login: str) -> Path:
    """The Maildir of a virtual user."""
    local, _, domain = login.partition("@")
    return instance.directory / "mail" / domain / local / "Maildir"


def deliver(
    instance: Instance,
    login: str,
    subject: str = "hello",
    body: str = "hello world\r\n",
    *,
    headers: str = "",
    raw: bytes | None = None,
    timeout: float = 30.0,
) -> str:
    """Send one message over SMTP and wait until it is in the Maildir; returns the queue ID."""
    message = (
        raw
        or (
            f"From: Sender <sender@example.org>\r\nTo: {login}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}.{time.time_ns()}@example.org>\r\n"
            f"{headers}\r\n{body}"
        ).encode()
    )
    with instance.smtp() as client:
        client.ehlo("client.example")
        client.mail("sender@example.org")
        client.rcpt(login)
        code, reply = client.data(message)
        assert code == 250, reply
    match = re.search(rb"queued as ([0-9A-Za-z]+)", reply)
    assert match is not None, reply
    queue_id = match.group(1).decode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(rf"{queue_id}: to=<{re.escape(login)}>.*status=sent", instance.log()):
            return queue_id
        time.sleep(0.02)
    raise AssertionError(f"{queue_id} not delivered:\n{instance.log()[-3000:]}")


def connect(instance: Instance, login: str, password: str) -> imaplib.IMAP4:
    """An imaplib client logged in over port 143 (from 127.0.0.1: a secured connection)."""
    client = imaplib.IMAP4("127.0.0.1", instance.ports["imap"], timeout=30)
    client.login(login, password)
    return client


def connect_tls(instance: Instance, login: str, password: str) -> imaplib.IMAP4_SSL:
    """An imaplib client logged in over imaps."""
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", instance.ports["imaps"], ssl_context=client_tls(), timeout=30
    )
    client.login(login, password)
    return client


def wait_log(instance: Instance, pattern: str, timeout: float = 10.0) -> re.Match[str]:
    """Wait until the daemon log has a line matching ``pattern``."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, instance.log(), re.MULTILINE)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line {pattern!r}:\n{instance.log()[-3000:]}")
        time.sleep(0.05)


class RawClient:
    """A line-level IMAP client on a plain socket, for exact wire checks."""

    def __init__(
        self,
        instance: Instance,
        *,
        service: str = "imap",
        source: str = "127.0.0.1",
        timeout: float = 15.0,
    ) -> None:
        sock = socket.create_connection(
            ("127.0.0.1", instance.ports[service]), timeout=timeout, source_address=(source, 0)
        )
        if service == "imaps":
            sock = client_tls().wrap_socket(sock, server_hostname="mx.roost.test")
        self.sock: socket.socket = sock
        self.buffer = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line, CRLF included (b"" at EOF)."""
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def read_literal(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def until_tagged(self, tag: str) -> list[bytes]:
        """Lines (literals inlined) up to and including the tagged reply."""
        lines: list[bytes] = []
        while True:
            line = self.line()
            if not line:
                raise AssertionError(f"connection closed; got {lines!r}")
            literal = re.search(rb"\{(\d+)\}\r\n$", line)
            while literal is not None:
                line += self.read_literal(int(literal.group(1)))
                more = self.line()
                line += more
                literal = re.search(rb"\{(\d+)\}\r\n$", more)
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    def command(self, tag: str, text: str | bytes) -> list[bytes]:
        data = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + data + b"\r\n")
        return self.until_tagged(tag)

    def starttls(self) -> None:
        reply = self.command("tls", "STARTTLS")
        assert reply[-1].startswith(b"tls OK"), reply
        context: ssl.SSLContext = client_tls()
        self.sock = context.wrap_socket(self.sock, server_hostname="mx.roost.test")

    def close(self) -> None:
        self.sock.close()

"""A roost instance for protocol tests: config, users, free ports, the daemon running."""

from __future__ import annotations

import smtplib
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from roost.config import SERVICES
from roost.queue import QueueDirectory, QueueName
from tests.conftest import free_port
from tests.e2e.daemon import RoostDaemon

PASSWORD = "correct horse"
USERS = {
    "alice@virtual.test": PASSWORD,
    "bob@virtual.test": "bob's secret",
}


@dataclass
class Instance:
    """A running daemon and what a test needs to talk to it."""

    directory: Path
    ports: dict[str, int]
    daemon: RoostDaemon
    extra: str = ""
    queue: Path = field(init=False)

    def __post_init__(self) -> None:
        self.queue = self.directory / "spool"

    def smtp(self, service: str = "smtp", source: str = "127.0.0.1") -> smtplib.SMTP:
        """An smtplib client connected to ``service`` from ``source``."""
        if service == "submissions":
            return smtplib.SMTP_SSL(
                "127.0.0.1",
                self.ports[service],
                source_address=(source, 0),
                context=client_tls(),
                timeout=30,
            )
        return smtplib.SMTP(
            "127.0.0.1", self.ports[service], source_address=(source, 0), timeout=30
        )

    def maildir(self, user: str, domain: str = "virtual.test") -> Path:
        """The Maildir of a virtual user (mail_location of the instance)."""
        return self.directory / "mail" / domain / user / "Maildir"

    def delivered(self, user: str, domain: str = "virtual.test", folder: str = "") -> list[Path]:
        """Files in the user's Maildir new/ (or a folder's), sorted."""
        base = self.maildir(user, domain)
        new = (base / f".{folder}" if folder else base) / "new"
        if not new.is_dir():
            return []
        # by delivery time: Maildir names do not sort (the microseconds are not padded)
        return sorted(new.iterdir(), key=lambda path: (path.stat().st_mtime_ns, path.name))

    def wait_delivered(
        self,
        user: str,
        count: int,
        *,
        domain: str = "virtual.test",
        folder: str = "",
        timeout: float = 30.0,
    ) -> list[Path]:
        """Wait (bounded) until the user's Maildir holds ``count`` new messages."""
        deadline = time.monotonic() + timeout
        while True:
            files = self.delivered(user, domain, folder)
            if len(files) >= count or time.monotonic() > deadline:
                return files
            time.sleep(0.05)

    def log(self) -> str:
        return self.daemon.log_text()

    def queued(self) -> list[str]:
        """Queue IDs of committed messages in incoming/."""
        with QueueDirectory(self.queue) as directory:
            return directory.scan(QueueName.INCOMING)

    def content(self, queue_id: str) -> bytes:
        with (
            QueueDirectory(self.queue) as directory,
            directory.open_content(queue_id, QueueName.INCOMING) as handle,
        ):
            return handle.read()

    def envelope(self, queue_id: str) -> str:
        with QueueDirectory(self.queue) as directory:
            data = directory.read_envelope_data(QueueName.INCOMING, queue_id)
        assert data is not None, f"{queue_id} is not in incoming/"
        return data.decode("utf-8")


def client_tls() -> ssl.SSLContext:
    """A client context that accepts the instance's self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def start_instance(directory: Path, extra: str = "") -> Instance:
    """Write main.cf and a passwd-file, start the daemon and wait for READY=1."""
    from roost.auth.passwdfile import hash_password

    directory.mkdir(parents=True, exist_ok=True)
    aliases = directory / "aliases"
    if not aliases.exists():
        aliases.write_text("postmaster: alice@virtual.test\n")
    users = directory / "users"
    users.write_text(
        "".join(f"{name}:{hash_password(pw, 'SHA256-CRYPT')}::::::\n" for name, pw in USERS.items())
    )
    ports = {service: free_port() for service in SERVICES}
    port_lines = "".join(f"{service}_service_port = {port}\n" for service, port in ports.items())
    main_cf = directory / "main.cf"
    main_cf.write_text(
        "myhostname = mx.roost.test\n"
        "mydestination = $myhostname, localhost, roost.test\n"
        "virtual_mailbox_domains = virtual.test\n"
        "inet_interfaces = 127.0.0.1\n"
        "mynetworks = 127.0.0.2/32\n"
        f"queue_directory = {directory}/spool\n"
        f"data_directory = {directory}/lib\n"
        f"auth_backends = passwd-file:{users}\n"
        "auth_default_realm = virtual.test\n"
        "smtpd_peername_lookup = no\n"
        # no DNS server: outbound mail (bounces to example.org) stays deferred at once
        "dns_nameservers = 127.0.0.1:1\n"
        "dns_lookup_timeout = 1s\n"
        f"mail_location = maildir:{directory}/mail/%d/%n/Maildir\n"
        f"alias_maps = hash:{directory}/aliases\n"
        "alias_database = $alias_maps\n"
        f"{port_lines}{extra}"
    )
    daemon = RoostDaemon(main_cf)
    daemon.wait_ready()
    return Instance(directory, ports, daemon, extra)

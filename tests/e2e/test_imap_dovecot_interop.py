"""Roost and Dovecot serve the same Maildir and show the same mailboxes.

* roost -> Dovecot: roost delivers mail over SMTP, an imaplib session against roost sets
  flags and keywords, expunges a message, creates folders (and roost creates its
  special-use folders at login), APPENDs into a folder; roost stops. A Dovecot instance
  started by the test on the same Maildir then shows the same UIDVALIDITY, UIDNEXT, UIDs,
  flags, keywords, sizes, internal dates, message bytes, folders and subscriptions.
* Dovecot -> roost: the same done through Dovecot (APPEND with flags and dates, STORE,
  EXPUNGE, CREATE, SUBSCRIBE), then served by roost.

The Dovecot instance is separate from the system's: its own configuration, base_dir,
state_dir and log under ``tmp_path`` (never ``/etc/dovecot``), ``ssl = no``, listening
only on 127.0.0.1 on a free port, a passwd-file user, ``mail_location`` pointing at the
Maildir roost uses. Its master starts as root; mail is owned by uid/gid 5000 on both
sides (roost's passwd-file gives the user uid 5000 too), so Dovecot's imap processes can
read and write what roost wrote. Needs Debian's ``dovecot-core`` and ``dovecot-imapd``.
"""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import os
import re
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, require_program
from tests.e2e.instance import Instance, start_instance

pytestmark = pytest.mark.program("dovecot")

LOGIN = "carol@virtual.test"
PASSWORD = "carol's password"
VMAIL = 5000
NOT_COMPARED = {"\\Recent"}  # per session, not stored state

DOVECOT_CONF = """\
# a test's own Dovecot instance (tests/e2e/test_imap_dovecot_interop.py)
instance_name = roost-interop-{tag}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {uid}
mail_location = maildir:{maildir}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={home}
}}
namespace inbox {{
  inbox = yes
  separator = .
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


# --- a Dovecot instance of the test's own ----------------------------------------------------


def traversable(path: Path) -> None:
    """Let other users (Dovecot's auth and mail processes) pass through the temporary
    directories above ``path`` (pytest creates them 0700)."""
    for directory in [path, *path.parents]:
        info = directory.stat()
        if info.st_uid == os.geteuid() and not info.st_mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)


class Dovecot:
    """``dovecot -c CONFIG`` serving ``maildir`` to one passwd-file user on 127.0.0.1."""

    def __init__(self, directory: Path, maildir: Path) -> None:
        self.program = require_program("dovecot")
        if not Path("/usr/lib/dovecot/imap").exists():
            if os.environ.get("CI"):
                pytest.fail("Dovecot's imap is missing (apt-get install dovecot-imapd)")
            pytest.skip("Dovecot's imap is not installed (apt-get install dovecot-imapd)")
        if os.geteuid() != 0:
            pytest.skip("Dovecot's master must start as root")
        self.directory = directory
        self.port = free_port()
        for sub in ("run", "state"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        users = directory / "users"
        users.write_text(f"{LOGIN}:{{PLAIN}}{PASSWORD}::::::\n")
        users.chmod(0o644)  # read by the auth process as user "dovecot"
        self.config = directory / "dovecot.conf"
        self.config.write_text(
            DOVECOT_CONF.format(
                d=directory,
                tag=directory.parent.name[-20:],
                uid=VMAIL,
                maildir=maildir,
                home=maildir.parent,
                port=self.port,
            )
        )
        traversable(directory)
        traversable(maildir.parent)

    def _run(self, *args: str) -> int:
        """``dovecot -c CONFIG ARGS``; the output goes to a file, not a pipe (the master
        stays in the background and would keep a pipe open)."""
        with (self.directory / "dovecot.out").open("ab") as out:
            return subprocess.run(
                [self.program, "-c", str(self.config), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=30,
                check=False,
            ).returncode

    def log(self) -> str:
        path = self.directory / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.directory / "run" / "master.pid").read_text().split()[0])
        return None

    def start(self) -> None:
        output = self.directory / "dovecot.out"
        assert self._run() == 0, output.read_text(errors="replace") + self.log()
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock,
            ):
                if sock.recv(1024).startswith(b"* OK"):
                    return
            assert time.monotonic() < deadline, f"no greeting from Dovecot:\n{self.log()}"
            time.sleep(0.05)

    def stop(self) -> None:
        pid = self.master_pid()
        self._run("stop")
        deadline = time.monotonic() + 20
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def client(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        client.login(LOGIN, PASSWORD)
        return client


@contextlib.contextmanager
def dovecot_running(directory: Path, maildir: Path) -> Iterator[Dovecot]:
    server = Dovecot(directory, maildir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
    errors = [line for line in server.log().splitlines() if "Error" in line or "Fatal" in line]
    assert not errors, "\n".join(errors)


# --- roost ------------------------------------------------------------------------------------


def roost_with_carol(directory: Path, extra: str = "") -> Instance:
    """A roost instance with the test user, owned by uid/gid 5000 as Dovecot's."""
    instance = start_instance(directory, extra)
    with (directory / "users").open("a") as users:
        users.write(f"{LOGIN}:{{PLAIN}}{PASSWORD}:{VMAIL}:{VMAIL}::::\n")
    return instance


def roost_client(instance: Instance) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", instance.ports["imap"], timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the daemon reads the passwd-file again when it changes
        try:
            client.login(LOGIN, PASSWORD)
            return client
        except imaplib.IMAP4.error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def carol_maildir(instance_dir: Path) -> Path:
    return instance_dir / "mail" / "virtual.test" / "carol" / "Maildir"


# --- what a client sees -----------------------------------------------------------------------


def ok(result: tuple[str, Sequence[Any]]) -> list[Any]:
    typ, data = result
    assert typ == "OK", data
    return list(data)


def mailbox_names(lines: list[object]) -> list[str]:
    """Names from LIST/LSUB lines (quoted or atoms), sorted."""
    names = []
    for line in lines:
        if not isinstance(line, bytes):
            continue
        found = re.match(rb'\([^)]*\) (?:"[^"]*"|NIL) (.*)$', line)
        assert found is not None, line
        name = found.group(1)
        if name.startswith(b'"'):
            name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
        names.append(name.decode())
    return sorted(names)


def untagged_number(client: imaplib.IMAP4, name: str) -> int:
    """The number of the ``* OK [NAME n]`` response of the last SELECT."""
    _, data = client.response(name)
    assert data and isinstance(data[0], bytes), (name, data)
    return int(data[0])


def fetch_item(pattern: bytes, line: bytes) -> bytes:
    found = re.search(pattern, line)
    assert found is not None, (pattern, line)
    return found.group(1)


def mailbox_state(client: imaplib.IMAP4, name: str) -> dict[str, Any]:
    """UIDVALIDITY, UIDNEXT and per UID: flags, size, internal date (as a time stamp),
    a hash of the message bytes."""
    ok(client.select(name, readonly=True))
    uid_validity = untagged_number(client, "UIDVALIDITY")
    uid_next = untagged_number(client, "UIDNEXT")
    messages: dict[int, tuple[object, ...]] = {}
    for line in ok(client.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)")):
        if not isinstance(line, bytes):
            continue
        uid = int(fetch_item(rb"UID (\d+)", line))
        flags = fetch_item(rb"FLAGS \(([^)]*)\)", line).decode().split()
        size = int(fetch_item(rb"RFC822\.SIZE (\d+)", line))
        text = fetch_item(rb'INTERNALDATE "([^"]+)"', line).decode()
        # the same instant; " 1-Feb-2024" and "01-Feb-2024" are both RFC 9051's date-time
        date = datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z").timestamp()
        data = ok(client.uid("FETCH", str(uid), "(BODY.PEEK[])"))
        body = next(part[1] for part in data if isinstance(part, tuple))
        assert len(body) == size
        digest = hashlib.sha256(body).hexdigest()[:16]
        messages[uid] = (sorted(set(flags) - NOT_COMPARED), size, date, digest)
    ok(client.close())  # EXAMINEd: expunges nothing
    return {"uidvalidity": uid_validity, "uidnext": uid_next, "messages": messages}


def snapshot(client: imaplib.IMAP4, folders: list[str]) -> dict[str, Any]:
    """What a client sees: folders, subscriptions, and the state of ``folders``."""
    return {
        "list": mailbox_names(ok(client.list('""', "*"))),
        "lsub": mailbox_names(ok(client.lsub('""', "*"))),
        **{folder: mailbox_state(client, folder) for folder in folders},
    }


def message(subject: str, body: str = "Hello.\r\n") -> bytes:
    return (
        f"From: Ann <ann@example.org>\r\nTo: {LOGIN}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}.{time.time_ns()}@example.org>\r\n"
        f"Date: Tue, 02 Jan 2024 10:00:00 +0100\r\n\r\n{body}"
    ).encode()


# --- the tests --------------------------------------------------------------------------------


def test_maildir_written_by_roost_is_served_by_dovecot(tmp_path: Path) -> None:
    require_program("dovecot")
    roost = roost_with_carol(tmp_path / "roost")
    try:
        with roost.smtp() as smtp:
            for number in range(1, 5):
                smtp.sendmail("ann@example.org", [LOGIN], message(f"delivered {number}"))
        assert len(roost.wait_delivered("carol", 4)) == 4
        client = roost_client(roost)
        ok(client.select("INBOX"))
        ok(client.store("1", "+FLAGS", "(\\Seen \\Flagged)"))
        ok(client.store("2", "+FLAGS", "(\\Deleted)"))
        ok(client.expunge())  # UIDs 1, 3, 4 stay; UIDNEXT 5
        ok(client.store("2", "+FLAGS", "(\\Answered project-x $Forwarded)"))
        ok(client.store("3", "+FLAGS", "(project-x)"))
        ok(client.create("Projects"))
        ok(client.create("Projects.Roost"))
        ok(client.subscribe("Projects"))
        ok(client.append("Projects", "(\\Seen $Important)", None, message("appended")))
        ok(client.append("Projects", "", None, message("appended 2")))
        folders = ["INBOX", "Projects", "Projects.Roost", "Trash"]
        by_roost = snapshot(client, folders)
        client.logout()
    finally:
        roost.daemon.stop()
    inbox = by_roost["INBOX"]["messages"]
    assert sorted(inbox) == [1, 3, 4] and by_roost["INBOX"]["uidnext"] == 5
    assert inbox[1][0] == ["\\Flagged", "\\Seen"]
    assert inbox[3][0] == ["$Forwarded", "\\Answered", "project-x"]
    assert inbox[4][0] == ["project-x"]
    assert by_roost["Projects"]["messages"][1][0] == ["$Important", "\\Seen"]
    assert {"INBOX", "Projects", "Projects.Roost", "Trash"} <= set(by_roost["list"])
    assert {"Projects", "Trash"} <= set(by_roost["lsub"])

    with dovecot_running(tmp_path / "dovecot", carol_maildir(roost.directory)) as dovecot:
        client = dovecot.client()
        by_dovecot = snapshot(client, folders)
        client.logout()
    assert by_dovecot == by_roost


def test_maildir_written_by_dovecot_is_served_by_roost(tmp_path: Path) -> None:
    require_program("dovecot")
    instance_dir = tmp_path / "roost"
    maildir = carol_maildir(instance_dir)
    maildir.parent.mkdir(parents=True)
    for directory in (maildir.parent, maildir.parent.parent, maildir.parent.parent.parent):
        os.chown(directory, VMAIL, VMAIL)
    dates = ['"01-Feb-2024 08:00:00 +0000"', '"15-Mar-2024 12:30:00 +0100"']
    with dovecot_running(tmp_path / "dovecot", maildir) as dovecot:
        client = dovecot.client()
        for number in range(1, 5):
            flags = "(\\Seen)" if number % 2 else ""
            ok(client.append("INBOX", flags, dates[number % 2], message(f"appended {number}")))
        ok(client.select("INBOX"))
        ok(client.store("1", "+FLAGS", "(\\Flagged $Label1)"))
        ok(client.store("3", "+FLAGS", "(\\Deleted)"))
        ok(client.expunge())
        ok(client.store("3", "+FLAGS", "(\\Draft $Label1 todo)"))
        ok(client.create("Projects"))
        ok(client.create("Projects.Dovecot"))
        ok(client.subscribe("Projects.Dovecot"))
        ok(client.append("Projects", "(\\Answered todo)", dates[0], message("in a folder")))
        folders = ["INBOX", "Projects", "Projects.Dovecot"]
        by_dovecot = snapshot(client, folders)
        client.logout()
    inbox = by_dovecot["INBOX"]["messages"]
    assert sorted(inbox) == [1, 2, 4] and by_dovecot["INBOX"]["uidnext"] == 5
    assert inbox[1][0] == ["$Label1", "\\Flagged", "\\Seen"]
    assert inbox[4][0] == ["$Label1", "\\Draft", "todo"]
    assert by_dovecot["lsub"] == ["Projects.Dovecot"]
    assert by_dovecot["list"] == ["INBOX", "Projects", "Projects.Dovecot"]

    # no special-use folders created at login: the folder lists must be Dovecot's
    roost = roost_with_carol(instance_dir, "special_use_folders =\n")
    try:
        client = roost_client(roost)
        by_roost = snapshot(client, folders)
        client.logout()
    finally:
        roost.daemon.stop()
    assert by_roost == by_dovecot

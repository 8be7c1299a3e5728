"""POP3 on the mail store: what a message looks like on the wire, UIDLs as Dovecot makes
them, and POP3 next to IMAP on the same INBOX.

* A message delivered over SMTP (8-bit, long lines, lines starting with ".") comes back
  from RETR byte for byte: the Maildir file with CRLF line ends, dot-stuffed on the wire.
* A Maildir written by Dovecot (``dovecot-uidlist`` with UIDVALIDITY, UIDs and a ``P``
  field from a migration) keeps its UIDs and UIDLs (``%08Xu%08Xv``: lowercase hex, as
  Dovecot's ``X`` modifier prints them); with Dovecot installed the same Maildir is also
  served by a real Dovecot and the UIDL listings are compared.
* A message deleted over POP3 disappears from an IMAP session that has INBOX selected
  (``EXPUNGE``); RETR sets ``\\Seen``, which IMAP sees.

See Also: RFC 1939 §7 (UIDL); Dovecot's ``pop3_uidl_format``; RFC 9051 §7.5.1 (EXPUNGE).
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, require_program, write_instance
from tests.e2e.daemon import roost_cli
from tests.e2e.instance import PASSWORD, USERS, Instance, start_instance

ALICE = "alice@virtual.test"
BOB = "bob@virtual.test"


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(tmp_path_factory.mktemp("pop3-store"))
    yield running
    running.daemon.stop()


def login(instance: Instance, user: str = ALICE) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", instance.ports["pop3"], timeout=30)
    client.user(user)
    client.pass_(USERS[user])
    return client


def deliver_subjects(instance: Instance, *subjects: str) -> None:
    """Deliver a short message per subject to alice (whose INBOX is empty) and wait for
    them all."""
    with instance.smtp() as smtp:
        for subject in subjects:
            smtp.sendmail(
                "sender@example.org", [ALICE], f"Subject: {subject}\r\n\r\nbody\r\n".encode()
            )
    instance.wait_delivered("alice", len(subjects))


def expunge_by_imap(instance: Instance, subject: str) -> None:
    """Expunge alice's message with ``subject`` in an IMAP session."""
    imap = imaplib.IMAP4("127.0.0.1", instance.ports["imap"], timeout=30)
    imap.login(ALICE, PASSWORD)
    imap.select("INBOX")
    _, found = imap.search(None, "SUBJECT", f'"{subject}"')
    imap.store(found[0].decode(), "+FLAGS", "\\Deleted")
    imap.expunge()
    imap.logout()


def wire(stored: bytes) -> bytes:
    """What RETR must send after its status line: CRLF line ends, dot-stuffing, ``.``."""
    lines = stored.split(b"\n")
    last = lines.pop()  # after the final LF: b"" (or a last line without one)
    if last:
        lines.append(last)
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return body + b".\r\n"


def retr_raw(instance: Instance, user: str, msg: int) -> bytes:
    """RETR over a raw socket: the octets exactly as sent, status line included."""
    with socket.create_connection(("127.0.0.1", instance.ports["pop3"]), 30) as raw:
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(f"USER {user}\r\nPASS {USERS[user]}\r\nRETR {msg}\r\nQUIT\r\n".encode())
        reader.readline()
        reader.readline()
        data = reader.read()
    end = data.rindex(b"+OK roost POP3 server signing off")
    return data[:end]


# --- byte for byte ------------------------------------------------------------------------


MESSAGE_8BIT = (
    "From: Jürgen <sender@example.org>\r\n"
    "To: alice@virtual.test\r\n"
    "Subject: 8-bit, long lines, dots\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Grüße aus Köln: ÄÖÜ äöü ß € — 8-bit all the way.\r\n"
    ".a line that starts with a dot\r\n"
    "..two dots\r\n"
    ".\r\n"
    f"{'long ' * 190}end\r\n"
    "\r\n"
    "last line\r\n"
).encode()


def test_message_from_smtp_is_retrieved_byte_for_byte(instance: Instance) -> None:
    with instance.smtp() as smtp:
        smtp.sendmail("sender@example.org", [ALICE], MESSAGE_8BIT, mail_options=["BODY=8BITMIME"])
    (path,) = instance.wait_delivered("alice", 1)
    stored = path.read_bytes()
    assert stored.endswith(MESSAGE_8BIT.replace(b"\r\n", b"\n"))  # the store keeps LF
    client = login(instance)
    size = len(stored) + stored.count(b"\n")  # the size with CRLF line ends
    assert client.stat() == (1, size)
    status, lines, _ = client.retr(1)
    assert status == f"+OK {size} octets".encode()
    assert b"\n".join(lines) + b"\n" == stored  # poplib undoes the stuffing
    client.quit()
    sent = retr_raw(instance, ALICE, 1)
    assert sent == f"+OK {size} octets\r\n".encode() + wire(stored)
    assert b"\r\n..a line that starts with a dot\r\n...two dots\r\n..\r\n" in sent
    client = login(instance)
    client.dele(1)
    client.quit()


# --- UIDLs of a Dovecot Maildir -----------------------------------------------------------


VALIDITY = 1_234_567_890  # 0x499602d2
STORED = {
    # base name: (uidlist line before the base name, flags, content)
    "1700000001.M1P100.olddovecot": (
        "3",
        "S",
        b"Subject: seen\nX-Note: LF only\n\nbody\n.dot\n",
    ),
    "1700000002.M2P100.olddovecot": (
        "7 Plegacy-uidl-0007",
        "",
        b"Subject: migrated\n\nno final newline",
    ),
    "1700000003.M3P100.olddovecot": (
        "",  # in new/, not in the uidlist yet: gets UID 8 (N8)
        "",
        b"Subject: new\r\n\r\nstored with CRLF\r\n",
    ),
}


def build_dovecot_maildir(root: Path) -> None:
    """A Maildir as Dovecot leaves it: cur/ and new/ files and a dovecot-uidlist."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = [f"3 V{VALIDITY} N8 G0123456789abcdef0123456789abcdef"]
    for base, (record, flags, content) in STORED.items():
        if record:
            (root / "cur" / f"{base}:2,{flags}").write_bytes(content)
            lines.append(f"{record} :{base}")
        else:
            (root / "new" / base).write_bytes(content)
    (root / "dovecot-uidlist").write_text("\n".join(lines) + "\n")


def test_uidls_of_a_dovecot_maildir(instance: Instance) -> None:
    root = instance.maildir("bob")
    assert not root.exists()  # bob's Maildir is this test's alone
    build_dovecot_maildir(root)
    client = login(instance, BOB)
    assert client.uidl()[1] == [
        b"1 00000003499602d2",  # %08Xu%08Xv: UID 3, UIDVALIDITY 0x499602d2
        b"2 legacy-uidl-0007",  # the P field wins
        b"3 00000008499602d2",  # new/ got the next UID
    ]
    contents = [content for _, _, content in STORED.values()]
    sizes = [len(c) + c.count(b"\n") - c.count(b"\r\n") for c in contents]
    assert [int(line.split()[1]) for line in client.list()[1]] == sizes
    for msg, content in enumerate(contents, start=1):
        _, lines, _ = client.retr(msg)
        crlf = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").removesuffix(b"\r\n")
        assert b"\r\n".join(lines) == crlf
    assert client.top(1, 0)[1] == [b"Subject: seen", b"X-Note: LF only", b""]
    assert client.top(1, 1)[1] == [b"Subject: seen", b"X-Note: LF only", b"", b"body"]
    assert client.top(2, 5)[1] == [b"Subject: migrated", b"", b"no final newline"]
    client.quit()
    assert "3 V1234567890 " in (root / "dovecot-uidlist").read_text()  # UIDVALIDITY kept
    sent = retr_raw(instance, BOB, 2)
    assert sent.endswith(b"\r\nno final newline\r\n.\r\n")  # CRLF added before the end
    client = login(instance, BOB)
    assert client.uidl(2) == b"+OK 2 legacy-uidl-0007"  # stable across sessions
    client.quit()


DOVECOT_CONF = """\
instance_name = roost-pop3-test
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
first_valid_uid = 100
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={base}/home/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


def dovecot_uidls(maildir: Path) -> list[bytes]:
    """Serve ``maildir`` with a separate Dovecot instance; return its UIDL listing."""
    dovecot = require_program("dovecot")
    if os.geteuid() != 0:
        pytest.skip("Dovecot's master must start as root")
    base = Path(tempfile.mkdtemp(prefix="roost-dvc-"))  # short: unix socket paths
    base.chmod(0o755)  # Dovecot's auth process reads the users file as "dovecot"
    port = free_port()
    try:
        for sub in ("run", "state", "home/user"):
            (base / sub).mkdir(parents=True)
        (base / "users").write_text("user:{PLAIN}pw::::::\n")
        (base / "dovecot.conf").write_text(DOVECOT_CONF.format(base=base, port=port, uid=5000))
        shutil.copytree(maildir, base / "home/user/Maildir")
        subprocess.run(["chown", "-R", "5000:5000", str(base / "home")], check=True)
        config = str(base / "dovecot.conf")
        subprocess.run([dovecot, "-c", config], check=True, timeout=30)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client = poplib.POP3("127.0.0.1", port, timeout=30)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            client.user("user")
            client.pass_("pw")
            listing: list[bytes] = client.uidl()[1]
            client.quit()
        finally:
            subprocess.run([dovecot, "-c", config, "stop"], check=False, timeout=30)
        # what Dovecot left behind (its uidlist with the new UID) is what roost gets next
        shutil.rmtree(maildir)
        shutil.copytree(base / "home/user/Maildir", maildir)
        return listing
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_uidls_match_a_real_dovecot(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    build_dovecot_maildir(maildir)
    expected = dovecot_uidls(maildir)
    assert expected[1] == b"2 legacy-uidl-0007"
    running = start_instance(tmp_path / "roost")
    try:
        target = running.maildir("alice")
        target.parent.mkdir(parents=True)
        shutil.copytree(maildir, target)
        (target / "dovecot-pop3-session.lock").unlink(missing_ok=True)
        client = login(running)
        assert client.uidl()[1] == expected
        client.quit()
    finally:
        running.daemon.stop()


# --- POP3 next to IMAP --------------------------------------------------------------------


def test_pop3_deletions_and_seen_reach_an_imap_session(instance: Instance) -> None:
    deliver_subjects(instance, "to read", "to delete")
    imap = imaplib.IMAP4("127.0.0.1", instance.ports["imap"], timeout=30)
    imap.login(ALICE, PASSWORD)
    typ, data = imap.select("INBOX")
    assert typ == "OK" and data == [b"2"]
    _, found = imap.fetch("1:2", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    by_subject = {
        re.search(rb"Subject: ([\w ]+)", item[1]).group(1).decode(): int(  # type: ignore[union-attr]
            re.search(rb"UID (\d+)", item[0]).group(1)  # type: ignore[union-attr]
        )
        for item in found
        if isinstance(item, tuple)
    }
    client = login(instance)
    numbers = {}
    for msg in (1, 2):
        _, lines, _ = client.top(msg, 0)
        subject = next(line for line in lines if line.startswith(b"Subject: "))
        numbers[subject[9:].decode()] = msg
    client.retr(numbers["to read"])
    client.dele(numbers["to delete"])
    _, data = imap.noop()
    assert not any(b"EXPUNGE" in line for line in data if isinstance(line, bytes))
    client.quit()
    deadline = time.monotonic() + 10
    untagged: list[bytes] = []
    while time.monotonic() < deadline:
        imap.noop()
        untagged += imap.untagged_responses.pop("EXPUNGE", [])
        if untagged:
            break
        time.sleep(0.05)
    assert untagged  # the message is gone for IMAP too
    _, flags = imap.uid("FETCH", str(by_subject["to read"]), "(FLAGS)")
    assert b"\\Seen" in flags[0]  # type: ignore[operator]
    typ, data = imap.search(None, "ALL")
    assert data == [b"1"]
    imap.logout()
    client = login(instance)
    assert client.stat()[0] == 1
    client.dele(1)
    client.quit()


def test_other_uidl_formats(tmp_path: Path) -> None:
    running = start_instance(tmp_path / "roost", "pop3_uidl_format = %v.%u\n")  # Dovecot 0.99
    try:
        build_dovecot_maildir(running.maildir("bob"))
        client = login(running, BOB)
        assert client.uidl()[1] == [
            b"1 1234567890.3",
            b"2 legacy-uidl-0007",
            b"3 1234567890.8",
        ]
        client.quit()
    finally:
        running.daemon.stop()


def test_unsupported_uidl_format_stops_the_start(tmp_path: Path) -> None:
    main_cf = write_instance(tmp_path, "pop3_uidl_format = %m\n")  # the header MD5
    result = roost_cli(main_cf, "serve")
    assert result.returncode != 0
    assert re.search(r"main\.cf:\d+: pop3_uidl_format: unsupported variable %m", result.stderr)


def test_message_expunged_by_imap_during_a_pop3_session(instance: Instance) -> None:
    deliver_subjects(instance, "stays", "expunged by imap")
    client = login(instance)
    assert client.stat()[0] == 2
    numbers = {}
    for msg in (1, 2):
        subject = next(line for line in client.top(msg, 0)[1] if line.startswith(b"Subject"))
        numbers[subject[9:].decode()] = msg
    expunge_by_imap(instance, "expunged by imap")
    gone = numbers["expunged by imap"]
    with pytest.raises(poplib.error_proto, match=f"-ERR Message {gone} expunged."):
        client.retr(gone)
    assert client.retr(numbers["stays"])[0].startswith(b"+OK")
    client.dele(gone)
    assert client.quit().startswith(b"+OK")  # already gone counts as deleted
    client = login(instance)
    assert client.stat()[0] == 1
    client.dele(1)
    client.quit()


def test_message_read_ahead_then_expunged_by_imap(instance: Instance) -> None:
    """After RETR n the server reads message n+1 ahead; if IMAP expunges it meanwhile,
    RETR n+1 must still answer that it is gone, not send what was read ahead."""
    deliver_subjects(instance, "first", "second")
    client = login(instance)
    assert client.stat()[0] == 2
    assert b"Subject: first" in client.retr(1)[1]  # message 2 is read ahead now
    expunge_by_imap(instance, "second")
    with pytest.raises(poplib.error_proto, match="-ERR Message 2 expunged."):
        client.retr(2)
    client.dele(1)
    client.dele(2)
    assert client.quit().startswith(b"+OK")
    client = login(instance)
    assert client.stat()[0] == 0
    client.quit()


def test_many_pipelined_retrs_before_reading(instance: Instance) -> None:
    """Responses far bigger than the socket buffers, asked for in one write: the server
    stops answering while the client does not read (flow control), and every response
    arrives whole and in order once it does."""
    body = "".join(f"line {i} of a big message\n" for i in range(6000))  # ~150 KB
    with instance.smtp() as smtp:
        for number in range(1, 41):
            smtp.sendmail(
                "sender@example.org",
                [ALICE],
                f"Subject: big {number}\r\n\r\n.dotted\r\n{body}".encode(),
            )
    instance.wait_delivered("alice", 40)
    with socket.create_connection(("127.0.0.1", instance.ports["pop3"]), 30) as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
        assert reader.readline() == b"+OK\r\n"
        assert reader.readline().startswith(b"+OK Logged in")
        retrs = "".join(f"RETR {n}\r\n" for n in range(1, 41))
        raw.sendall(f"{retrs}LIST 40\r\n".encode())
        time.sleep(0.5)  # the server fills the buffers and must wait for us
        found = []
        for _ in range(40):
            status = reader.readline()
            assert status.startswith(b"+OK ") and status.endswith(b" octets\r\n"), status
            lines = []
            while (line := reader.readline()) != b".\r\n":
                lines.append(line)
            assert sum(len(line) for line in lines) - 1 == int(status.split()[1])  # one ".."
            assert b"..dotted\r\n" in lines
            found += [line for line in lines if line.startswith(b"Subject: big ")]
        assert sorted(found) == sorted(f"Subject: big {n}\r\n".encode() for n in range(1, 41))
        assert reader.readline().startswith(b"+OK 40 ")
        raw.sendall(b"DELE 1\r\nRSET\r\nQUIT\r\n")
        assert reader.readline() == b"+OK message 1 deleted\r\n"
    client = login(instance)
    for msg in range(1, client.stat()[0] + 1):
        client.dele(msg)
    client.quit()

"""The POP3 server of the running daemon, driven by poplib and raw sockets.

Every command in each RFC 1939 state with its exact reply, STLS (RFC 2595) and implicit
TLS, SASL PLAIN/LOGIN (RFC 5034), response codes (RFC 2449, RFC 3206), pipelining, a
dropped connection, the session lock ([IN-USE]), and the limits: bad commands, line
length, failed-login delay, inactivity, logins per user and address.

Clients connect from 127.0.0.2 where plaintext must be refused: from 127.0.0.1 to
127.0.0.1 both ends have the same address, which counts as secured (as in Dovecot).

See Also: RFC 1939, RFC 2449, RFC 2595, RFC 3206, RFC 5034.
"""

from __future__ import annotations

import base64
import poplib
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.instance import PASSWORD, USERS, Instance, client_tls, start_instance
from tests.e2e.test_resilience_support import process_tree

ALICE = "alice@virtual.test"
BOB = "bob@virtual.test"
REMOTE = "127.0.0.2"  # not the server's address: plaintext needs TLS from here


class POP3From(poplib.POP3):
    """poplib.POP3 connecting from a chosen source address."""

    def __init__(self, host: str, port: int, source: str, timeout: float = 30.0) -> None:
        self.source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(tmp_path_factory.mktemp("pop3"))
    yield running
    running.daemon.stop()


def connect(instance: Instance, source: str = "127.0.0.1") -> POP3From:
    return POP3From("127.0.0.1", instance.ports["pop3"], source)


def login(instance: Instance, user: str = ALICE, source: str = "127.0.0.1") -> POP3From:
    client = connect(instance, source)
    if source != "127.0.0.1":
        client.stls(client_tls())  # plaintext needs TLS from another address
    client.user(user)
    client.pass_(USERS[user])
    return client


def empty(instance: Instance, user: str = ALICE) -> None:
    """Delete every message of ``user`` over POP3."""
    client = login(instance, user)
    count, _ = client.stat()
    for msg in range(1, count + 1):
        client.dele(msg)
    client.quit()


def deliver(instance: Instance, user: str, subjects: list[str], body: str = "hello\r\n") -> None:
    """Send one message per subject over SMTP and wait until all are in new/."""
    local = user.partition("@")[0]
    before = len(instance.delivered(local))
    with instance.smtp() as smtp:
        for subject in subjects:
            smtp.sendmail(
                "sender@example.org",
                [user],
                f"From: sender@example.org\r\nSubject: {subject}\r\n\r\n{body}".encode(),
            )
    files = instance.wait_delivered(local, before + len(subjects))
    assert len(files) == before + len(subjects)


@pytest.fixture
def alice(instance: Instance) -> Iterator[Instance]:
    """Alice's maildrop, empty at the start of the test."""
    empty(instance)
    yield instance


def subjects(client: poplib.POP3, count: int) -> list[str]:
    found = []
    for msg in range(1, count + 1):
        _, lines, _ = client.top(msg, 0)
        found += [line.decode()[9:] for line in lines if line.startswith(b"Subject: ")]
    return found


def logged(instance: Instance, pattern: str, timeout: float = 10.0) -> re.Match[str]:
    """Wait (bounded) for a daemon log line matching ``pattern``; return the match."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, instance.log())
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line matches {pattern!r}")
        time.sleep(0.05)


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# --- AUTHORIZATION: greeting, CAPA, plaintext policy, TLS --------------------------------------


def test_greeting_and_capabilities_depend_on_tls(instance: Instance) -> None:
    client = connect(instance, REMOTE)
    assert client.getwelcome() == b"+OK roost ready."
    caps = client.capa()
    for name in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS"):
        assert name in caps
    assert "USER" not in caps  # no plaintext before TLS (disable_plaintext_auth = yes)
    assert "SASL" not in caps
    assert caps["IMPLEMENTATION"] == ["roost"]
    assert client.stls(client_tls()).startswith(b"+OK")
    caps = client.capa()
    assert "USER" in caps and caps["SASL"] == ["PLAIN", "LOGIN"]
    assert "STLS" not in caps
    with pytest.raises(poplib.error_proto, match=r"-ERR Command not permitted when TLS active"):
        client._shortcmd("STLS")
    client.user(ALICE)
    assert client.pass_(PASSWORD).startswith(b"+OK Logged in")
    assert "USER" in client.capa()  # the same list in TRANSACTION (RFC 2449 §5)
    client.quit()


def test_plaintext_refused_before_tls(instance: Instance) -> None:
    client = connect(instance, REMOTE)
    refused = r"-ERR \[AUTH\] Plaintext authentication disallowed on non-secure"
    with pytest.raises(poplib.error_proto, match=refused):
        client.user(ALICE)
    with pytest.raises(poplib.error_proto, match=refused):
        client.pass_(PASSWORD)
    with pytest.raises(poplib.error_proto, match=refused):
        client._shortcmd("AUTH PLAIN " + plain(ALICE, PASSWORD))
    with pytest.raises(poplib.error_proto, match=refused):
        client._shortcmd("AUTH LOGIN")
    client.stls(client_tls())
    assert client._shortcmd("AUTH PLAIN " + plain(ALICE, PASSWORD)).startswith(b"+OK Logged in")
    client.quit()
    assert "tried to use disallowed" not in instance.log()  # the login succeeded after all


def test_same_address_on_both_ends_counts_as_secured(instance: Instance) -> None:
    client = connect(instance)  # 127.0.0.1 -> 127.0.0.1
    assert "USER" in client.capa()
    client.user(ALICE)
    assert client.pass_(PASSWORD).startswith(b"+OK Logged in")
    client.quit()


def test_stls_discards_plaintext_pipelined_behind_it(instance: Instance) -> None:
    """CVE-2011-0411: a command sent with STLS must not run after the handshake."""
    with socket.create_connection(
        ("127.0.0.1", instance.ports["pop3"]), 30, source_address=(REMOTE, 0)
    ) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        raw.sendall(b"STLS\r\nCAPA\r\n")
        assert reader.readline() == b"+OK Begin TLS negotiation\r\n"
        with client_tls().wrap_socket(raw) as tls:
            tls.sendall(b"NOOP\r\n")
            answer = tls.recv(1024)
            # CAPA's listing never comes: NOOP in AUTHORIZATION is answered first
            assert answer == b"-ERR NOOP not valid in the AUTHORIZATION state\r\n"
            tls.sendall(b"QUIT\r\n")
            assert tls.recv(1024).startswith(b"+OK")
    logged(instance, "discarded 6 octets sent before the TLS handshake")


def test_pop3s_is_tls_from_the_first_octet(instance: Instance) -> None:
    client = poplib.POP3_SSL("127.0.0.1", instance.ports["pop3s"], context=client_tls(), timeout=30)
    assert client.getwelcome() == b"+OK roost ready."
    caps = client.capa()
    assert "STLS" not in caps and "USER" in caps
    client.user(BOB)
    assert client.pass_(USERS[BOB]).startswith(b"+OK Logged in")
    client.quit()
    logged(
        instance,
        r"roost/pop3-login\[\d+\]: Login: user=<bob@virtual.test>, method=PLAIN, "
        r"rip=127\.0\.0\.1, lip=127\.0\.0\.1, mpid=\d+, TLS, session=<[\w-]+>",
    )


def test_sasl_plain_login_and_continuations(instance: Instance) -> None:
    client = connect(instance)
    # PLAIN with an empty initial response: the credentials follow the "+ " challenge
    assert client._shortcmd("AUTH PLAIN") == b"+ "
    assert client._shortcmd(plain(ALICE, PASSWORD)).startswith(b"+OK Logged in")
    client.quit()
    client = connect(instance)
    assert client._shortcmd("AUTH LOGIN") == b"+ " + base64.b64encode(b"Username:")
    client._shortcmd(base64.b64encode(BOB.encode()).decode())
    assert client._shortcmd(base64.b64encode(USERS[BOB].encode()).decode()).startswith(b"+OK")
    client.quit()
    client = connect(instance)
    client._shortcmd("AUTH PLAIN")
    with pytest.raises(poplib.error_proto, match="-ERR Authentication cancelled"):
        client._shortcmd("*")
    with pytest.raises(poplib.error_proto, match="-ERR Unsupported authentication mechanism"):
        client._shortcmd("AUTH CRAM-MD5")
    listing = client._longcmd("AUTH")  # the pre-RFC 5034 listing Outlook asks for
    assert listing[1] == [b"PLAIN", b"LOGIN"]
    client.quit()


def test_wrong_password_gets_auth_code_and_a_delay(instance: Instance) -> None:
    source = "127.0.0.3"  # failures are throttled per address: keep them off 127.0.0.1
    client = connect(instance, source)
    client.stls(client_tls())
    client.user("mallory@virtual.test")
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\] Authentication failed\.'$"):
        client.pass_("guess")
    started = time.monotonic()
    client.user(ALICE)  # the AUTHORIZATION state again (RFC 1939 §7): the client may retry
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("wrong")
    assert time.monotonic() - started >= 0.9  # one failure: one second (Dovecot's penalty)
    client.quit()
    logged(
        instance,
        r"pop3-login\[\d+\]: Disconnected: Logged out \(auth failed, 2 attempts in \d+ secs\): "
        r"user=<alice@virtual.test>, method=PLAIN, rip=127\.0\.0\.3",
    )
    client = connect(instance, source)  # the right password still works afterwards
    client.stls(client_tls())
    client.user(ALICE)
    assert client.pass_(PASSWORD).startswith(b"+OK")
    client.quit()


def test_commands_outside_their_state(instance: Instance) -> None:
    client = connect(instance)
    for command in ("STAT", "LIST", "UIDL", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 0"):
        keyword = command.split()[0]
        with pytest.raises(
            poplib.error_proto, match=f"-ERR {keyword} not valid in the AUTHORIZATION state"
        ):
            client._shortcmd(command)
    with pytest.raises(poplib.error_proto, match="-ERR No user name given"):
        client.pass_(PASSWORD)
    with pytest.raises(poplib.error_proto, match="-ERR APOP not enabled"):
        client._shortcmd("APOP alice 0123456789abcdef0123456789abcdef")
    client.user(ALICE)
    client.pass_(PASSWORD)
    for command in ("USER alice", "PASS x", "STLS", "AUTH PLAIN"):
        keyword = command.split()[0]
        with pytest.raises(
            poplib.error_proto, match=f"-ERR {keyword} not valid in the TRANSACTION state"
        ):
            client._shortcmd(command)
    assert client.quit().startswith(b"+OK")


# --- TRANSACTION and UPDATE ---------------------------------------------------------------------


def test_every_transaction_command(alice: Instance) -> None:
    deliver(alice, ALICE, ["first", "second", "third"])
    client = login(alice)
    count, octets = client.stat()
    assert count == 3
    status, listing, _ = client.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert status == f"+OK 3 messages ({octets} octets)".encode()
    assert [int(line.split()[0]) for line in listing] == [1, 2, 3] and sum(sizes) == octets
    assert client.list(2) == f"+OK 2 {sizes[1]}".encode()
    status, uidls, _ = client.uidl()
    assert status == b"+OK" and len(uidls) == 3
    uidl_2 = uidls[1].split()[1].decode()
    assert re.fullmatch(r"[0-9a-f]{16}", uidl_2)
    assert client.uidl(2) == f"+OK 2 {uidl_2}".encode()
    names = subjects(client, 3)  # UIDs follow Maildir names, not the order of delivery
    assert sorted(names) == ["first", "second", "third"]
    status, lines, _ = client.retr(1)
    assert status == f"+OK {sizes[0]} octets".encode()
    assert f"Subject: {names[0]}".encode() in lines and lines[-1] == b"hello"
    status, lines, _ = client.top(3, 0)
    assert status == b"+OK" and lines[-1] == b"" and b"hello" not in lines
    assert client.top(3, 1)[1][-1] == b"hello"
    assert client.noop() == b"+OK"
    assert client.dele(2) == b"+OK message 2 deleted"
    assert client.stat() == (2, octets - sizes[1])
    for command, text in (
        (lambda: client.retr(2), "-ERR message 2 already deleted"),
        (lambda: client.dele(2), "-ERR message 2 already deleted"),
        (lambda: client.list(2), "-ERR message 2 already deleted"),
        (lambda: client.retr(4), "-ERR no such message, only 3 messages in maildrop"),
        (lambda: client.top(9, 1), "-ERR no such message"),
        (lambda: client._shortcmd("RETR 0"), "-ERR Invalid message number: 0"),
        (lambda: client._shortcmd("RETR x"), "-ERR Invalid message number: x"),
        (lambda: client._shortcmd("TOP 1"), "-ERR TOP needs a message number and a line count"),
        (lambda: client._shortcmd("STAT 1"), "-ERR STAT takes no arguments"),
        (lambda: client._shortcmd("XYZZY"), "-ERR Unknown command: XYZZY"),
    ):
        with pytest.raises(poplib.error_proto, match=re.escape(text)):
            command()
    assert [line.split()[0] for line in client.list()[1]] == [b"1", b"3"]
    assert client.rset() == f"+OK maildrop has 3 messages ({octets} octets)".encode()
    assert client.list()[1] == listing
    client.dele(1)
    client.dele(3)
    assert client.quit() == b"+OK roost POP3 server signing off (1 message left)"
    client = login(alice)
    assert client.stat() == (1, sizes[1])
    assert subjects(client, 1) == [names[1]]
    assert client.uidl(1) == f"+OK 1 {uidl_2}".encode()  # UIDLs are stable across sessions
    client.quit()


def test_quit_in_authorization_deletes_nothing_and_says_goodbye(alice: Instance) -> None:
    deliver(alice, ALICE, ["kept"])
    client = connect(alice)
    assert client.quit() == b"+OK roost POP3 server signing off"
    client = login(alice)
    assert client.stat()[0] == 1
    client.quit()


def test_pipelined_commands_in_one_write(alice: Instance) -> None:
    deliver(alice, ALICE, ["one", "two"])
    commands = (
        f"CAPA\r\nUSER {ALICE}\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST\r\nUIDL 1\r\nRETR 2\r\n"
        "TOP 1 0\r\nDELE 1\r\nNOOP\r\nQUIT\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", alice.ports["pop3"]), 30) as raw:
        reader = raw.makefile("rb")
        assert reader.readline() == b"+OK roost ready.\r\n"
        raw.sendall(commands)
        transcript = reader.read()  # until the server closes after QUIT
    lines = transcript.split(b"\r\n")
    statuses = [line for line in lines if line.startswith((b"+OK", b"-ERR"))]
    assert [status.split()[0] for status in statuses] == [b"+OK"] * 11, statuses
    assert statuses[1] == b"+OK"  # USER
    assert statuses[2].startswith(b"+OK Logged in, maildrop has 2 messages")
    assert statuses[-1] == b"+OK roost POP3 server signing off (1 message left)"
    retrieved = re.search(rb" octets\r\n.*?\r\nSubject: (\w+)\r\n", transcript, re.DOTALL)
    assert retrieved is not None  # RETR 2's message
    assert transcript.endswith(
        b".\r\n+OK message 1 deleted\r\n+OK\r\n"
        b"+OK roost POP3 server signing off (1 message left)\r\n"
    )
    client = login(alice)
    assert subjects(client, client.stat()[0]) == [retrieved.group(1).decode()]
    client.quit()


def test_dropped_connection_deletes_nothing(alice: Instance) -> None:
    deliver(alice, ALICE, ["a", "b"])
    client = login(alice)
    client.retr(1)
    client.dele(1)
    client.dele(2)
    client.sock.shutdown(socket.SHUT_RDWR)  # no QUIT: no UPDATE state (RFC 1939 §6)
    client.close()
    client = login(alice)  # the lock is free again at once
    assert client.stat()[0] == 2
    assert sorted(subjects(client, 2)) == ["a", "b"]
    client.quit()
    cur = sorted(path.name for path in (alice.maildir("alice") / "cur").iterdir())
    assert len(cur) == 2
    assert sum(name.endswith(":2,S") for name in cur) == 1  # RETR's \Seen is kept
    logged(
        alice,
        r"roost/pop3\[\d+\]: pop3\(alice@virtual.test\): Connection closed "
        r"top=0/0, retr=1/\d+, del=0/2, size=\d+",
    )


def test_quit_deletes_and_logs_like_dovecot(alice: Instance) -> None:
    deliver(alice, ALICE, ["gone"])
    client = login(alice)
    size = client.stat()[1]
    client.retr(1)
    client.dele(1)
    client.quit()
    assert not list((alice.maildir("alice") / "cur").iterdir())
    assert not list((alice.maildir("alice") / "new").iterdir())
    logged(
        alice,
        rf"roost/pop3\[\d+\]: pop3\(alice@virtual.test\): Disconnected: Logged out "
        rf"top=0/0, retr=1/{size + len(f'+OK {size} octets') + 2}, del=1/1, size={size}\n",
    )


def test_second_session_gets_in_use(alice: Instance) -> None:
    deliver(alice, ALICE, ["locked"])
    first = login(alice)
    lock = alice.maildir("alice") / "dovecot-pop3-session.lock"
    assert lock_owner(lock) in process_tree(alice.daemon.process.pid)
    second = connect(alice, "127.0.0.4")
    second.stls(client_tls())
    second.user(ALICE)
    started = time.monotonic()
    with pytest.raises(
        poplib.error_proto, match=r"-ERR \[IN-USE\] Maildrop is locked by another session\."
    ):
        second.pass_(PASSWORD)
    assert time.monotonic() - started >= 9  # Dovecot waits 10 s for the lock too
    deliver(alice, ALICE, ["delivered while locked"])  # the lock does not stop delivery
    first.quit()
    assert not lock.exists()
    second.user(ALICE)  # the client may try again in the same connection
    assert second.pass_(PASSWORD).startswith(b"+OK Logged in, maildrop has 2 messages")
    second.quit()
    logged(alice, "Maildrop in use by another POP3 session: user=<alice@virtual.test>")


def test_stale_lock_of_a_dead_process_is_taken_over(alice: Instance) -> None:
    lock = alice.maildir("alice") / "dovecot-pop3-session.lock"
    lock.write_text(f"999999:{socket.gethostname()}")  # no such process
    client = login(alice)
    assert lock_owner(lock) in process_tree(alice.daemon.process.pid)
    client.quit()
    assert not lock.exists()


# --- limits -------------------------------------------------------------------------------------


def test_too_many_bad_commands_close_the_connection(instance: Instance) -> None:
    with socket.create_connection(("127.0.0.1", instance.ports["pop3"]), 30) as raw:
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(b"BOGUS\r\n" * 25)
        lines = reader.read().split(b"\r\n")
    assert lines[:19] == [b"-ERR Unknown command: BOGUS"] * 19
    assert lines[19:] == [b"-ERR Too many bad commands.", b""]


def test_long_line_is_refused_and_skipped(instance: Instance) -> None:
    with socket.create_connection(("127.0.0.1", instance.ports["pop3"]), 30) as raw:
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(b"USER " + b"x" * 5000 + b"\r\nNOOP\r\nQUIT\r\n")
        assert reader.readline() == b"-ERR Line too long (limit 255 octets)\r\n"
        assert reader.readline() == b"-ERR NOOP not valid in the AUTHORIZATION state\r\n"
        assert reader.readline().startswith(b"+OK")


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """An instance with short timeouts, 2 logins per user and address, no session lock,
    and no flag updates."""
    running = start_instance(
        tmp_path_factory.mktemp("pop3-strict"),
        "pop3_client_timeout = 2s\n"
        "mail_max_userip_connections = 2\n"
        "pop3_lock_session = no\n"
        "pop3_no_flag_updates = yes\n",
    )
    yield running
    running.daemon.stop()


def test_inactivity_ends_the_session(strict: Instance) -> None:
    client = login(strict, BOB)
    started = time.monotonic()
    line = client.file.readline()  # nothing sent: the server gives up
    assert line == b"-ERR Disconnected for inactivity.\r\n"
    assert 1.5 <= time.monotonic() - started < 10
    assert client.file.readline() == b""
    logged(
        strict,
        r"pop3\(bob@virtual.test\): Disconnected for inactivity top=0/0",
    )


def test_logins_per_user_and_address_are_limited(strict: Instance) -> None:
    first, second = login(strict, BOB), login(strict, BOB)
    third = connect(strict)
    third.user(BOB)
    with pytest.raises(
        poplib.error_proto,
        match=r"-ERR \[SYS/TEMP\] Maximum number of connections from user\+IP exceeded "
        r"\(mail_max_userip_connections=2\)",
    ):
        third.pass_(USERS[BOB])
    other = login(strict, BOB, source="127.0.0.5")  # another address: its own count
    other.quit()
    first.quit()
    third.user(BOB)
    assert third.pass_(USERS[BOB]).startswith(b"+OK")
    second.quit()
    third.quit()


def test_no_flag_updates_leaves_new_mail_alone(strict: Instance) -> None:
    deliver(strict, ALICE, ["unread"])
    client = login(strict)
    client.retr(1)
    client.quit()
    maildir: Path = strict.maildir("alice")
    assert len(list((maildir / "new").iterdir())) == 1  # not moved to cur/, no \Seen
    assert not list((maildir / "cur").iterdir())


def test_tls_handshake_failure_is_only_a_disconnect(instance: Instance) -> None:
    with socket.create_connection(("127.0.0.1", instance.ports["pop3s"]), 30) as raw:
        raw.sendall(b"USER alice\r\n")  # plaintext on the TLS port
        with pytest.raises((ConnectionError, ssl.SSLError, TimeoutError)):
            raw.settimeout(5)
            if raw.recv(1024) == b"":
                raise ConnectionResetError
    client = login(instance, BOB)  # the service still works
    client.quit()


def test_quit_after_the_client_shut_down_its_side(alice: Instance) -> None:
    """``printf 'USER..\\r\\n...QUIT\\r\\n' | nc -N``: the replies still come, QUIT still counts."""
    deliver(alice, ALICE, ["half-closed"])
    with socket.create_connection(("127.0.0.1", alice.ports["pop3"]), 30) as raw:
        raw.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nDELE 1\r\nQUIT\r\n".encode())
        raw.shutdown(socket.SHUT_WR)
        transcript = raw.makefile("rb").read()
    assert transcript.endswith(b"+OK roost POP3 server signing off (maildrop empty)\r\n")
    client = login(alice)
    assert client.stat() == (0, 0)
    client.quit()


def test_shutdown_ends_sessions_without_deleting(tmp_path: Path) -> None:
    running = start_instance(tmp_path / "roost", "shutdown_grace_time = 5s\n")
    try:
        deliver(running, ALICE, ["survives"])
        client = login(running)
        client.dele(1)
        running.daemon.stop()
        assert client.file.readline() == b"-ERR [SYS/TEMP] Server shutting down.\r\n"
        assert client.file.readline() == b""
    finally:
        running.daemon.kill()
    maildir = running.maildir("alice")
    assert len(list((maildir / "cur").iterdir())) == 1
    assert not (maildir / "dovecot-pop3-session.lock").exists()
    assert "pop3(alice@virtual.test): Server shutting down top=0/0" in running.log()


def test_login_without_domain_uses_the_default_realm(instance: Instance) -> None:
    client = connect(instance)
    client.user("bob")  # auth_default_realm = virtual.test
    assert client.pass_(USERS[BOB]).startswith(b"+OK Logged in")
    client.quit()
    logged(instance, r"Login: user=<bob@virtual.test>, method=PLAIN, rip=127\.0\.0\.1")


def lock_owner(lock: Path) -> int:
    """The pid in a POP3 session lock (a worker process's, or the master's)."""
    return int(lock.read_text().split(":", 1)[0])

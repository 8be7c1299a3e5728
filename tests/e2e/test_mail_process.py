# ruff: noqa: F811 - the fixtures of test_privsep.py are imported, then used by name
"""Per-user mail processes: IMAP and POP3 sessions of system users run as those users.

The daemon runs as root with privilege separation (as in ``test_privsep.py``, whose
fixtures make real accounts with useradd and remove them after). Alice's home is mode
0700, as Debian 12 makes homes: ``mail_owner`` cannot read her Maildir, so what IMAP and
POP3 serve here can only come from a process running as alice
(``mail_process_per_user``, docs/privsep.md). They need root: skipped otherwise.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import pwd
import re
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_privsep import (  # noqa: F401 - fixtures
    PASSWORD,
    Accounts,
    RootDaemon,
    accounts,
    base,
    descendants,
    ids,
    new_files,
    wait_for,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, setuid)")

OTHER_PASSWORD = "other horse 7"


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
def homeless(accounts: Accounts) -> Iterator[pwd.struct_passwd]:
    """A system user whose home directory does not exist."""
    name = accounts.users["alice"].pw_name.replace("rpa", "rpn")
    subprocess.run(["useradd", "--no-create-home", "--home-dir", f"/nonexistent-{name}",
                    "--shell", "/bin/sh", name], check=True, capture_output=True)  # fmt: skip
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{PASSWORD}\n", text=True, check=True)
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def _passwd_file(base: Path, accounts: Accounts) -> str:
    """main.cf lines adding a passwd-file before PAM: a uid-0 user (which the
    passwd-file refuses itself) and one below ``first_valid_uid``."""
    from roost.auth.passwdfile import hash_password

    users = base / "etc" / "users"
    users.parent.mkdir(exist_ok=True)
    hashed = hash_password(OTHER_PASSWORD, "SHA256-CRYPT")
    users.write_text(f"zero:{hashed}:0:0::/root::\nlow:{hashed}:1:1::{base}/low::\n")
    return f"auth_backends = passwd-file:{users} pam\n"


@pytest.fixture
def daemon(base: Path, accounts: Accounts) -> Iterator[RootDaemon]:
    running = RootDaemon(
        base, accounts, extra=_passwd_file(base, accounts) + "mailbox_idle_check_interval = 1h\n"
    )
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _owned_by(root: Path, uid: int) -> list[Path]:
    """Every file and directory below ``root`` that is not ``uid``'s (expected: none)."""
    wrong = []
    for top, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(top) / name
            if path.lstat().st_uid != uid:
                wrong.append(path)
    return wrong


def _mail_processes(daemon: RootDaemon, uid: int) -> list[int]:
    return [pid for pid in descendants(daemon.process.pid) if ids(pid)[0][0] == uid]


def test_imap_starttls_session_runs_as_the_user_and_its_files_are_the_users(
    daemon: RootDaemon, accounts: Accounts
) -> None:
    alice = accounts.users["alice"]
    maildir = Path(alice.pw_dir) / "Maildir"
    daemon.send(f"{alice.pw_name}@localhost", "first message")
    wait_for(lambda: new_files(alice.pw_dir), "delivery to alice", daemon)
    with imaplib.IMAP4("127.0.0.1", daemon.ports["imap"], timeout=30) as client:
        client.starttls(_client_tls())
        typ, data = client.login(alice.pw_name, PASSWORD)
        assert typ == "OK", data
        # the session's process runs as alice, below the privileged helper
        login = re.search(r"Login: user=<" + alice.pw_name + r">.*mpid=(\d+)", daemon.log_text())
        assert login is not None, daemon.log_text()
        mail_process = int(login.group(1))
        assert mail_process in _mail_processes(daemon, alice.pw_uid)
        assert ids(mail_process)[0] == [alice.pw_uid] * 4
        assert ids(mail_process)[1] == [alice.pw_gid] * 4
        typ, data = client.select("INBOX")
        assert (typ, data) == ("OK", [b"1"])
        typ, data = client.fetch("1", "(BODY[])")
        assert typ == "OK"
        assert b"first message" in data[0][1]  # type: ignore[index]
        typ, data = client.append("INBOX", r"(\Flagged)", None, b"Subject: appended\r\n\r\nx\r\n")
        assert typ == "OK", data
        typ, data = client.store("1", "+FLAGS", r"(\Seen)")
        assert typ == "OK", data
        typ, data = client.create("Projects")
        assert typ == "OK", data
        typ, data = client.copy("1", "Projects")
        assert typ == "OK", data
        client.logout()
    cur = sorted((maildir / "cur").iterdir())
    assert len(cur) == 2
    assert any(name.name.endswith(":2,S") for name in cur)
    assert any(name.name.endswith(":2,F") for name in cur)
    assert (maildir / "dovecot-uidlist").stat().st_uid == alice.pw_uid
    assert (maildir / ".Projects").is_dir()
    assert _owned_by(maildir, alice.pw_uid) == []
    wait_for(lambda: not _mail_processes(daemon, alice.pw_uid), "the mail process's end", daemon)
    assert re.search(r"imap\(" + alice.pw_name + r"\).*Disconnected: Logged out", daemon.log_text())


def test_imaps_session_and_idle_sees_a_new_delivery(daemon: RootDaemon, accounts: Accounts) -> None:
    alice = accounts.users["alice"]
    daemon.send(f"{alice.pw_name}@localhost", "before idle")
    wait_for(lambda: new_files(alice.pw_dir), "delivery to alice", daemon)
    raw = socket.create_connection(("127.0.0.1", daemon.ports["imaps"]), timeout=30)
    with _client_tls().wrap_socket(raw) as tls:
        reader = tls.makefile("rb")

        def command(line: bytes, tag: bytes) -> list[bytes]:
            tls.sendall(line + b"\r\n")
            lines = []
            while True:
                got = reader.readline()
                assert got, lines
                lines.append(got)
                if got.startswith(tag + b" "):
                    return lines

        assert reader.readline().startswith(b"* OK")
        # the login and a command pipelined behind it: both reach the mail process
        tls.sendall(f"a LOGIN {alice.pw_name} {{{len(PASSWORD)}+}}\r\n{PASSWORD}\r\n".encode()
                    + b"b SELECT INBOX\r\n")  # fmt: skip
        lines = []
        while not (lines and lines[-1].startswith(b"b ")):
            lines.append(reader.readline())
            assert lines[-1], lines
        assert any(line.startswith(b"a OK [CAPABILITY") for line in lines), lines
        assert b"* 1 EXISTS\r\n" in lines
        assert lines[-1].startswith(b"b OK [READ-WRITE]"), lines
        tls.sendall(b"c IDLE\r\n")
        assert reader.readline().startswith(b"+ ")
        daemon.send(f"{alice.pw_name}@localhost", "during idle")
        assert reader.readline() == b"* 2 EXISTS\r\n"  # not polled: mailbox_idle_check = 1h
        assert command(b"DONE", b"c")[-1].startswith(b"c OK")
        lines = command(b"d FETCH 2 BODY[]", b"d")
        assert b"during idle" in b"".join(lines)
        assert command(b"e LOGOUT", b"e")[-1].startswith(b"e OK")
        reader.close()


def test_pop3_stls_and_pop3s_sessions_run_as_the_user(
    daemon: RootDaemon, accounts: Accounts
) -> None:
    alice = accounts.users["alice"]
    maildir = Path(alice.pw_dir) / "Maildir"
    daemon.send(f"{alice.pw_name}@localhost", "for pop")
    wait_for(lambda: new_files(alice.pw_dir), "delivery to alice", daemon)
    client = poplib.POP3("127.0.0.1", daemon.ports["pop3"], timeout=30)
    try:
        client.stls(_client_tls())
        client.user(alice.pw_name)
        assert client.pass_(PASSWORD).startswith(b"+OK")
        assert client.stat()[0] == 1
        _, lines, _ = client.retr(1)
        assert b"for pop" in b"\n".join(lines)
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()
    (message,) = (maildir / "cur").iterdir()  # RETR marked it seen, as alice
    assert message.name.endswith(":2,S")
    assert _owned_by(maildir, alice.pw_uid) == []
    client = poplib.POP3_SSL("127.0.0.1", daemon.ports["pop3s"], timeout=30,
                             context=_client_tls())  # fmt: skip
    try:
        client.user(alice.pw_name)
        assert client.pass_(PASSWORD).startswith(b"+OK")
        assert client.stat()[0] == 1
        client.dele(1)
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()
    assert list((maildir / "cur").iterdir()) == []
    assert re.search(r"pop3\(" + alice.pw_name + r"\).*Logged out", daemon.log_text())


def test_uid_0_a_low_uid_and_a_user_without_home_are_refused(
    daemon: RootDaemon, homeless: pwd.struct_passwd
) -> None:
    # uid 0: the user database refuses it already (Dovecot does too)
    with (
        imaplib.IMAP4_SSL(
            "127.0.0.1", daemon.ports["imaps"], timeout=30, ssl_context=_client_tls()
        ) as client,
        pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"),
    ):
        client.login("zero", OTHER_PASSWORD)
    # below first_valid_uid, and a home that does not exist: the helper refuses
    for login, password in (("low", OTHER_PASSWORD), (homeless.pw_name, PASSWORD)):
        with imaplib.IMAP4_SSL("127.0.0.1", daemon.ports["imaps"], timeout=30,
                               ssl_context=_client_tls()) as client:  # fmt: skip
            with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):
                client.login(login, password)
            # the session goes on in the worker, not logged in
            assert client.noop()[0] == "OK"
            assert b"AUTH=PLAIN" in client.capability()[1][0]
        client = poplib.POP3_SSL("127.0.0.1", daemon.ports["pop3s"], timeout=30,
                                 context=_client_tls())  # fmt: skip
        try:
            client.user(login)
            with pytest.raises(poplib.error_proto, match=r"SYS/PERM"):
                client.pass_(password)
            assert client.capa()  # still in AUTHORIZATION, in the worker
        finally:
            client.close()
    log = daemon.log_text()
    assert "uid 1 is below first_valid_uid" in log
    assert f"/nonexistent-{homeless.pw_name}" in log
    assert not Path(f"/nonexistent-{homeless.pw_name}").exists()
    assert not (daemon.base / "low").exists()


def test_the_helper_checks_the_login_of_a_session_request_itself(
    base: Path, accounts: Accounts, capfd: pytest.CaptureFixture[str]
) -> None:
    """A taken-over worker cannot have a session of a user whose password it lacks."""
    from roost.auth.passwdfile import hash_password
    from roost.daemon.privhelper import start_helper

    alice, bob = accounts.users["alice"], accounts.users["bob"]
    maildir = Path(alice.pw_dir) / "Maildir"
    (base / "etc").mkdir(exist_ok=True)
    users = base / "etc" / "users"
    hashed = hash_password(OTHER_PASSWORD, "SHA256-CRYPT")
    uid, gid = alice.pw_uid, alice.pw_gid
    # passwd-file users with alice's uid whose mail would be outside her home
    evil2 = f"evil2:{hashed}:{uid}:{gid}::{alice.pw_dir}::userdb_mail=maildir:/etc/Mx"
    users.write_text(f"evil:{hashed}:{uid}:{gid}::/etc::\n{evil2}\n")
    config = base / "etc" / "main.cf"
    config.write_text("mail_location = maildir:~/Maildir\n"
                      f"auth_backends = passwd-file:{users} pam\n"
                      f"auth_pam_service = {accounts.pam_service}\n")  # fmt: skip
    client = start_helper(config)

    def session(uid: int, auth: dict[str, object] | None) -> dict[str, object]:
        state = {"tag": "a", "remote_ip": "127.0.0.1", "local_ip": "127.0.0.1",
                 "session_id": "s", "method": "PLAIN", "login": "x"}  # fmt: skip
        request: dict[str, object] = {"op": "session", "protocol": "imap", "service": "imap",
                                      "uid": uid, "state": state}  # fmt: skip
        if auth is not None:
            request["auth"] = auth
        mine, theirs = socket.socketpair()
        try:
            reply, control = client.open_session(request, [theirs.fileno()])
            if reply["ok"] is True:
                pid = reply["pid"]
                assert isinstance(pid, int)
                assert ids(pid)[0] == [alice.pw_uid] * 4
                theirs.close()
                assert mine.recv(100).startswith(b"a OK [CAPABILITY")
            control.close()
        finally:
            mine.close()
            theirs.close()
        return reply

    def refusal(uid: int, auth: dict[str, object] | None, kind: str = "refused") -> str:
        reply = session(uid, auth)
        assert reply["ok"] is False and reply["kind"] == kind, reply
        return str(reply["text"])

    try:
        good = {"login": alice.pw_name, "password": PASSWORD}
        assert "uid 0" in refusal(0, good)
        assert "no login and password" in refusal(uid, None)
        assert "must be strings" in refusal(uid, {"login": alice.pw_name})
        assert refusal(uid, {"login": alice.pw_name, "password": "wrong"}, "auth-failed")
        assert refusal(uid, {"login": bob.pw_name, "password": PASSWORD}, "auth-failed")
        assert refusal(uid, {"login": "evil", "password": "wrong"}, "auth-failed")
        for login in ("evil", "evil2"):  # the right password, but outside the home
            assert "outside" in refusal(uid, {"login": login, "password": OTHER_PASSWORD})
        assert not maildir.exists()  # no session process has opened alice's store
        # the same request with alice's own login and password is served, as alice
        assert session(uid, good)["ok"] is True
        assert maildir.stat().st_uid == alice.pw_uid  # made by her session process
    finally:
        client.close()
    assert not Path("/etc/Mx").exists()
    log = capfd.readouterr().err
    refused = re.findall(r"imap-login: session refused \(auth failed\): user=<(\w+)>", log)
    assert refused == [alice.pw_name, bob.pw_name, "evil"], log
    assert PASSWORD not in log and OTHER_PASSWORD not in log


def test_a_login_the_helper_refuses_counts_as_a_failed_login(
    base: Path, accounts: Accounts
) -> None:
    """The worker's user database accepts zed (a passwd-file user with alice's uid), the
    helper's (main.cf as it is now on disk, not reloaded) does not know him: each refused
    hand-off, IMAP and POP3, counts in the failed-login throttle, so after two of them
    the address is refused, even alice with her right password."""
    from roost.auth.passwdfile import hash_password

    alice = accounts.users["alice"]
    users = base / "etc" / "users"
    users.parent.mkdir(exist_ok=True)
    hashed = hash_password(OTHER_PASSWORD, "SHA256-CRYPT")
    users.write_text(f"zed:{hashed}:{alice.pw_uid}:{alice.pw_gid}::{alice.pw_dir}::\n")
    backends = f"auth_backends = passwd-file:{users} pam\n"
    daemon = RootDaemon(
        base,
        accounts,
        extra=backends + "worker_processes = 1\n"
        "auth_failure_refuse_after = 2\nauth_failure_delay_max = 0\n",
    )
    try:
        daemon.wait_ready()
        text = daemon.config.read_text()
        daemon.config.write_text(text.replace(backends, "auth_backends = pam\n"))
        with (
            imaplib.IMAP4("127.0.0.1", daemon.ports["imap"], timeout=30) as imap,
            pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"),
        ):
            imap.login("zed", OTHER_PASSWORD)
        pop3 = poplib.POP3("127.0.0.1", daemon.ports["pop3"], timeout=30)
        try:
            pop3.user("zed")
            with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
                pop3.pass_(OTHER_PASSWORD)
        finally:
            pop3.quit()
        with (
            imaplib.IMAP4("127.0.0.1", daemon.ports["imap"], timeout=30) as imap,
            pytest.raises(imaplib.IMAP4.error, match=r"Too many failed login attempts"),
        ):
            imap.login(alice.pw_name, PASSWORD)
        assert _mail_processes(daemon, alice.pw_uid) == []
        log = daemon.log_text()
        assert re.search(r"imap-login: session refused \(auth failed\): user=<zed>", log)
        assert re.search(r"pop3-login: session refused \(auth failed\): user=<zed>", log)
    finally:
        daemon.stop()


def test_switched_off_sessions_stay_in_the_worker(base: Path, accounts: Accounts) -> None:
    alice = accounts.users["alice"]
    daemon = RootDaemon(base, accounts, extra="mail_process_per_user = no\n")
    try:
        daemon.wait_ready()
        daemon.send(f"{alice.pw_name}@localhost")
        wait_for(lambda: new_files(alice.pw_dir), "delivery to alice", daemon)
        with (
            imaplib.IMAP4_SSL(
                "127.0.0.1", daemon.ports["imaps"], timeout=30, ssl_context=_client_tls()
            ) as client,
            pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"),
        ):
            client.login(alice.pw_name, PASSWORD)  # mail_owner cannot enter the 0700 home
        assert _mail_processes(daemon, alice.pw_uid) == []
        assert "cannot open the mail store" in daemon.log_text()
    finally:
        daemon.stop()


def test_stop_ends_a_handed_over_idle_session_with_bye(
    daemon: RootDaemon, accounts: Accounts
) -> None:
    alice = accounts.users["alice"]
    raw = socket.create_connection(("127.0.0.1", daemon.ports["imaps"]), timeout=30)
    with _client_tls().wrap_socket(raw) as tls:
        reader = tls.makefile("rb")
        assert reader.readline().startswith(b"* OK")
        tls.sendall(f'a LOGIN {alice.pw_name} "{PASSWORD}"\r\nb SELECT INBOX\r\n'.encode())
        while not reader.readline().startswith(b"b OK"):
            pass
        tls.sendall(b"c IDLE\r\n")
        assert reader.readline().startswith(b"+ ")
        daemon.process.send_signal(signal.SIGTERM)
        rest = reader.read()
        reader.close()
    assert b"* BYE Server shutting down." in rest
    assert daemon.process.wait(60) == 0
    assert _mail_processes(daemon, alice.pw_uid) == []

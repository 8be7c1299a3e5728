"""Privilege separation, for real: the daemon started as root runs as ``mail_owner``.

Each test creates real accounts with useradd (an unprivileged ``mail_owner`` and system
users with homes in a temp dir) and removes them afterwards, runs ``roost serve`` as root
and looks at the processes in /proc and at the owners of what was delivered. They need
root: skipped otherwise (CI runs as root).
"""

from __future__ import annotations

import base64
import grp
import os
import pwd
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from roost.config import SERVICES
from tests.conftest import ROOST, ROOT, STAY_ROOT_ENV, free_port
from tests.e2e.daemon import NotifySocket

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, setuid)")

PASSWORD = "privsep horse 42"


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _traversable(path: Path) -> bool:
    """True when every directory above ``path`` can be entered by any user."""
    for parent in Path(os.path.realpath(path)).parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    return True


def python_command() -> tuple[list[str], dict[str, str]]:
    """A Python that ``mail_owner`` can run roost with, and the environment it needs.

    The test's own interpreter may live where other users cannot read it (pyenv under
    /root); then the system's python3 of the same version runs roost from this checkout
    and this venv's site-packages (pure Python or the same ABI).
    """
    if _traversable(Path(sys.executable)) and _traversable(Path(sys.prefix) / "lib"):
        return [sys.executable], {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/bin:/usr/local/bin")
    if system is None:
        pytest.skip(f"no {version} that an unprivileged user can run")
    paths = [str(ROOT / "src"), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if not all(_traversable(Path(p) / "x") for p in paths):
        pytest.skip("this checkout is not readable by other users")
    return [system, "-I", "-c", _BOOT], {"ROOST_PRIVSEP_PATH": os.pathsep.join(paths)}


# -I ignores PYTHONPATH; the paths come in through a variable of our own.
_BOOT = (
    "import os, sys, runpy; sys.path[:0] = os.environ['ROOST_PRIVSEP_PATH'].split(os.pathsep);"
    " sys.argv[0] = 'roost'; runpy.run_module('roost', run_name='__main__')"
)


@dataclass
class Accounts:
    """The accounts made for one test: mail_owner and system users (name -> passwd)."""

    owner: pwd.struct_passwd
    users: dict[str, pwd.struct_passwd]
    pam_service: str


@pytest.fixture
def base() -> Iterator[Path]:
    """A temp dir every user can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="roost-privsep-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def accounts(base: Path) -> Iterator[Accounts]:
    """mail_owner ``rpo<hex>`` and system users ``rpa<hex>``/``rpb<hex>``; removed after."""
    tag = secrets.token_hex(3)
    owner, alice, bob = f"rpo{tag}", f"rpa{tag}", f"rpb{tag}"
    (base / "home").mkdir(mode=0o755)
    created: list[str] = []
    pam_file = Path(f"/etc/pam.d/roost-pt-{tag}")
    try:
        _run("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", owner)  # fmt: skip
        created.append(owner)
        for user in (alice, bob):
            _run("useradd", "--create-home", "--home-dir", str(base / "home" / user),
                 "--shell", "/bin/sh", user)  # fmt: skip
            created.append(user)
            subprocess.run(["chpasswd"], input=f"{user}:{PASSWORD}\n", text=True, check=True)
            (base / "home" / user).chmod(0o700)
        pam_file.write_text("@include common-auth\n@include common-account\n")
        yield Accounts(
            pwd.getpwnam(owner),
            {"alice": pwd.getpwnam(alice), "bob": pwd.getpwnam(bob)},
            pam_file.name,
        )
    finally:
        pam_file.unlink(missing_ok=True)
        for name in reversed(created):
            subprocess.run(["userdel", name], capture_output=True, check=False)
            subprocess.run(["groupdel", name], capture_output=True, check=False)


class RootDaemon:
    """``roost serve`` started as root without ROOST_STAY_ROOT (or as ``as_user``)."""

    def __init__(
        self,
        base: Path,
        accounts: Accounts,
        extra: str = "",
        as_user: pwd.struct_passwd | None = None,
    ) -> None:
        self.base = base
        self.ports = {service: free_port() for service in SERVICES}
        etc = base / "etc"
        etc.mkdir(exist_ok=True)
        out = base / "out"  # where default_privs (nobody) may write
        out.mkdir(mode=0o777, exist_ok=True)
        out.chmod(0o1777)
        (etc / "aliases").write_text(
            f"postmaster: {accounts.users['alice'].pw_name}\n"
            f'piper: "|/usr/bin/id -u > {out}/piper"\n'
        )
        self.config = etc / "main.cf"
        ports = "".join(f"{s}_service_port = {p}\n" for s, p in self.ports.items())
        self.config.write_text(
            "myhostname = mx.privsep.test\n"
            "mydestination = $myhostname, localhost\n"
            "inet_interfaces = 127.0.0.1\n"
            f"queue_directory = {base}/spool\n"
            f"data_directory = {base}/lib\n"
            f"mail_owner = {accounts.owner.pw_name}\n"
            "mail_location = maildir:~/Maildir\n"
            f"alias_maps = texthash:{etc}/aliases\n"
            f"tls_cert_file = {etc}/cert.pem\n"
            f"tls_key_file = {etc}/key.pem\n"
            "auth_backends = pam\n"
            f"auth_pam_service = {accounts.pam_service}\n"
            "smtpd_peername_lookup = no\n"
            "dns_nameservers = 127.0.0.1:1\n"
            "dns_lookup_timeout = 1s\n"
            f"{ports}{extra}"
        )
        self.notify = NotifySocket(base / "notify.sock")
        self.log = base / "daemon.log"
        ids: dict[str, object] = {}
        if as_user is not None:  # an ordinary user's instance: its files are its own
            for path in (etc, base / "spool", base / "lib"):
                path.mkdir(exist_ok=True)
                os.chown(path, as_user.pw_uid, as_user.pw_gid)
            self.notify.path.chmod(0o777)
            ids = {"user": as_user.pw_uid, "group": as_user.pw_gid, "extra_groups": []}
        command, env = python_command()
        environment = {k: v for k, v in os.environ.items() if k != STAY_ROOT_ENV}
        environment.update(env, NOTIFY_SOCKET=str(self.notify.path))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "-c", str(self.config), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd="/",
                **ids,  # type: ignore[arg-type]
            )

    def wait_ready(self) -> None:
        try:
            self.notify.wait_for("READY=1", 60)
        except TimeoutError:
            raise AssertionError(f"daemon not ready:\n{self.log.read_text()}") from None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.notify.close()

    def helper_pid(self) -> int:
        """The privileged helper: the daemon's child running roost.daemon.privhelper."""
        for pid in children(self.process.pid):
            if b"roost.daemon.privhelper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        raise AssertionError(f"no privileged helper among {children(self.process.pid)}")

    def send(self, recipient: str, body: str = "hello") -> None:
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as client:
            client.sendmail(
                "sender@example.org", [recipient], f"Subject: privsep\r\n\r\n{body}\r\n".encode()
            )


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: the helper, the fork server and the workers."""
    found = []
    todo = [pid]
    while todo:
        below = children(todo.pop())
        found.extend(below)
        todo.extend(below)
    return found


def ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    """(Uid, Gid, Groups) of /proc/PID/status: real, effective, saved, filesystem ids."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields["Uid"], fields["Gid"], fields["Groups"]


def wait_for(predicate: object, what: str, daemon: RootDaemon, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s; log:\n{daemon.log_text()}")
        time.sleep(0.05)


@pytest.fixture
def daemon(base: Path, accounts: Accounts) -> Iterator[RootDaemon]:
    running = RootDaemon(base, accounts)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def new_files(home: str) -> list[Path]:
    new = Path(home) / "Maildir" / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def test_network_processes_run_as_mail_owner_and_the_helper_as_root(
    daemon: RootDaemon, accounts: Accounts
) -> None:
    owner = accounts.owner
    uids, gids, groups = ids(daemon.process.pid)
    assert uids == [owner.pw_uid] * 4
    assert gids == [owner.pw_gid] * 4
    assert 0 not in groups
    helper = daemon.helper_pid()
    assert ids(helper)[0] == [0, 0, 0, 0]
    # every other process of the daemon (the fork server and the workers) is mail_owner's
    helpers = {helper, *descendants(helper)}  # its per-request children are root too
    for pid in descendants(daemon.process.pid):
        if pid not in helpers:
            assert ids(pid)[0] == [owner.pw_uid] * 4, pid
    # what it created is mail_owner's, private
    for name in ("spool", "lib"):
        info = (daemon.base / name).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (owner.pw_uid, 0o700)
    for entry in (daemon.base / "spool").iterdir():
        assert entry.stat().st_uid == owner.pw_uid, entry


def test_maildir_delivered_for_a_system_user_belongs_to_that_user(
    daemon: RootDaemon, accounts: Accounts
) -> None:
    alice = accounts.users["alice"]
    daemon.send(f"{alice.pw_name}@localhost")
    wait_for(lambda: new_files(alice.pw_dir), "delivery to alice", daemon)
    (message,) = new_files(alice.pw_dir)
    info = message.stat()
    assert (info.st_uid, info.st_gid) == (alice.pw_uid, alice.pw_gid)
    assert stat.S_IMODE(info.st_mode) == 0o600
    maildir = Path(alice.pw_dir) / "Maildir"
    assert maildir.stat().st_uid == alice.pw_uid
    assert b"hello" in message.read_bytes()


def test_forward_is_read_and_its_command_run_as_the_user(
    daemon: RootDaemon, accounts: Accounts
) -> None:
    bob = accounts.users["bob"]
    home = Path(bob.pw_dir)  # mode 0700: mail_owner cannot even look for .forward here
    out = home / "ran-as.txt"
    forward = home / ".forward"
    forward.write_text(f'"|/usr/bin/id -u > {out}"\n')
    os.chown(forward, bob.pw_uid, bob.pw_gid)
    daemon.send(f"{bob.pw_name}@localhost")
    wait_for(lambda: out.exists() and out.read_text().strip(), "the .forward command", daemon)
    assert out.read_text().strip() == str(bob.pw_uid)
    assert out.stat().st_uid == bob.pw_uid
    assert new_files(bob.pw_dir) == []  # the .forward replaced the mailbox


def test_alias_command_runs_as_default_privs(daemon: RootDaemon) -> None:
    out = daemon.base / "out" / "piper"
    daemon.send("piper@localhost")
    wait_for(lambda: out.exists() and out.read_text().strip(), "the alias command", daemon)
    nobody = pwd.getpwnam("nobody")
    assert out.read_text().strip() == str(nobody.pw_uid)
    assert out.stat().st_uid == nobody.pw_uid


def test_pam_login_goes_through_the_helper(daemon: RootDaemon, accounts: Accounts) -> None:
    alice = accounts.users["alice"]
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=30) as client:
        client.starttls(context=context)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(alice.pw_name, "wrong password")
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=30) as client:
        client.starttls(context=context)
        code, _ = client.login(alice.pw_name, PASSWORD)
        assert code == 235


def _served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_reload_reads_a_root_only_key_through_the_helper(daemon: RootDaemon) -> None:
    from roost.tls import generate_selfsigned

    etc = daemon.base / "etc"
    assert stat.S_IMODE((etc / "key.pem").stat().st_mode) == 0o600
    assert (etc / "key.pem").stat().st_uid == 0
    before = _served_certificate(daemon.ports["submissions"])
    generate_selfsigned("renewed.privsep.test", etc / "cert.pem", etc / "key.pem", overwrite=True)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING=1", 30)
    daemon.notify.wait_for("READY=1", 30)
    assert "reload failed" not in daemon.log_text()
    after = _served_certificate(daemon.ports["submissions"])
    assert after != before
    assert b"renewed.privsep.test" in after


def test_started_as_an_ordinary_user_nothing_changes(base: Path, accounts: Accounts) -> None:
    owner = accounts.owner
    daemon = RootDaemon(base, accounts, as_user=owner)
    try:
        daemon.wait_ready()
        assert ids(daemon.process.pid)[0] == [owner.pw_uid] * 4
        # no privileged helper: every process below (fork server, workers) is the user's
        below = descendants(daemon.process.pid)
        assert all(ids(pid)[0] == [owner.pw_uid] * 4 for pid in below), below
        assert "privileged helper" not in daemon.log_text()
        daemon.send("postmaster@localhost")  # alice's home is not ours: deferred, kept
        wait_for(lambda: "status=deferred" in daemon.log_text(), "the deferral", daemon)
    finally:
        daemon.stop()


def test_root_as_mail_owner_is_refused(base: Path, accounts: Accounts) -> None:
    daemon = RootDaemon(base, accounts, extra="mail_owner = root\n")
    try:
        assert daemon.process.wait(60) == 1
    finally:
        daemon.stop()
    assert "mail_owner = root: must not be root" in daemon.log_text()


# --- the helper itself, driven directly ------------------------------------------------------


@pytest.fixture
def helper(base: Path, accounts: Accounts) -> Iterator[object]:
    from roost.daemon.privhelper import start_helper

    (base / "etc").mkdir(exist_ok=True)
    config = base / "etc" / "main.cf"
    config.write_text(f"mail_spool_directory = {base}/spool\n")
    client = start_helper(config)
    try:
        yield client
    finally:
        client.close()


def _maildir_request(uid: int, path: str) -> dict[str, object]:
    return {"op": "maildir", "uid": uid, "path": path, "prepend": "", "hostname": "h"}


def test_helper_refuses_uid_0_symlinks_and_paths_outside_home(
    helper: object, accounts: Accounts, base: Path
) -> None:
    from roost.daemon.privhelper import HelperClient, Refused

    assert isinstance(helper, HelperClient)
    alice = accounts.users["alice"]
    home = Path(alice.pw_dir)
    (home / "evil").symlink_to("/etc")
    message = base / "message"
    message.write_bytes(b"Subject: x\r\n\r\nbody\r\n")

    def call(request: dict[str, object]) -> str:
        with message.open("rb") as handle, pytest.raises(Refused) as refused:
            helper.call(request, [handle.fileno()])
        return str(refused.value)

    assert "uid 0" in call(_maildir_request(0, "/root/Maildir"))
    assert "symbolic link" in call(_maildir_request(alice.pw_uid, f"{home}/evil/Maildir"))
    assert "outside" in call(_maildir_request(alice.pw_uid, "/etc/Maildir"))
    assert "not normalised" in call(_maildir_request(alice.pw_uid, f"{home}/../../etc/x"))
    with message.open("rb") as handle, pytest.raises(Refused, match="uid 0"):
        helper.call({"op": "command", "uid": 0, "command": "id", "environment": {}},
                    [handle.fileno()])  # fmt: skip
    with message.open("rb") as handle, pytest.raises(Refused, match="no alias file"):
        helper.call(  # a command that no alias file and no .forward of alice asks for
            {"op": "command", "uid": alice.pw_uid, "command": "touch /tmp/pwned-rp",
             "environment": {}},
            [handle.fileno()],
        )  # fmt: skip
    assert not Path("/tmp/pwned-rp").exists()
    with pytest.raises(Refused, match="first_valid_uid"):
        helper.call({"op": "pam", "service": "login", "user": "root", "password": "x"})
    with pytest.raises(Refused, match="not a TLS file"):
        helper.call({"op": "tls", "paths": ["/etc/shadow"]})
    assert not Path("/etc/Maildir").exists()
    assert not Path("/etc/new").exists()
    # and the same request without the trick is done, with alice's rights
    with message.open("rb") as handle:
        reply = helper.call(_maildir_request(alice.pw_uid, f"{home}/Maildir"), [handle.fileno()])
    written = Path(str(reply["written"]))
    assert written.stat().st_uid == alice.pw_uid
    assert written.read_bytes() == b"Subject: x\n\nbody\n"


def test_roots_sendmail_reaches_a_daemon_running_as_mail_owner(
    daemon: RootDaemon, accounts: Accounts
) -> None:
    alice = accounts.users["alice"]
    result = subprocess.run(
        [*ROOST, "-c", str(daemon.config), "sendmail", f"{alice.pw_name}@localhost"],
        input=b"Subject: from cron\n\nroot's cron job\n",
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    wait_for(lambda: new_files(alice.pw_dir), "root's sendmail mail", daemon)
    (message,) = new_files(alice.pw_dir)
    assert b"root's cron job" in message.read_bytes()
    assert list((daemon.base / "spool" / "maildrop").iterdir()) == []


def test_the_helper_exits_when_the_daemon_is_killed(daemon: RootDaemon) -> None:
    helper = daemon.helper_pid()
    daemon.process.kill()
    daemon.process.wait()
    proc = Path(f"/proc/{helper}")
    wait_for(
        lambda: not proc.exists() or "\nState:\tZ" in (proc / "status").read_text(),
        "the helper's exit",
        daemon,
    )


def test_helper_appends_to_a_spool_mbox_with_the_spool_group(
    helper: object, accounts: Accounts, base: Path
) -> None:
    from roost.daemon.privhelper import HelperClient

    assert isinstance(helper, HelperClient)
    mail = grp.getgrnam("mail")
    spool = base / "spool"  # like Debian's /var/mail: root:mail 2775
    spool.mkdir()
    os.chown(spool, 0, mail.gr_gid)
    spool.chmod(0o2775)
    alice = accounts.users["alice"]
    message = base / "message"
    message.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    with message.open("rb") as handle:
        helper.call(
            {
                "op": "mbox",
                "uid": alice.pw_uid,
                "path": f"{spool}/{alice.pw_name}",
                "envelope_sender": "s@example.org",
                "prepend": base64.b64encode(b"Delivered-To: a@localhost\r\n").decode(),
            },
            [handle.fileno()],
        )
    mbox = spool / alice.pw_name
    info = mbox.stat()
    assert (info.st_uid, info.st_gid) == (alice.pw_uid, mail.gr_gid)
    text = mbox.read_text()
    assert text.startswith("From s@example.org ")
    assert "Delivered-To: a@localhost\nSubject: x\n\nbody\n" in text

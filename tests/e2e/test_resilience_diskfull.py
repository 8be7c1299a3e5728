"""Disk full: the queue or the mailbox partition on a tiny tmpfs.

Each test mounts a small tmpfs in a *private* mount namespace held open by a helper
process (``unshare --mount --propagation private ... sleep``); the daemon is started inside
that namespace with ``nsenter``, so it survives restarts while the host never sees the
mount, and the test reads and writes the tmpfs through ``/proc/HOLDER/root``. Needs root
and ``unshare``/``nsenter`` (util-linux); skipped otherwise.

- queue full: SMTP answers ``452 4.3.1 Insufficient system storage``; what was accepted
  before is still delivered (even while the queue stays full); once space returns the
  next message gets ``250``.
- mailbox full: delivery is deferred (``status=deferred``, 4.3.1/4.2.2), nothing
  half-written stays in the Maildir, and after freeing space ``roost queue flush``
  delivers it exactly once.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOST, ROOT
from tests.e2e.daemon import NotifySocket, RoostDaemon, roost_cli
from tests.e2e.instance import Instance, start_instance
from tests.e2e.test_resilience_support import (
    DOMAIN,
    FAST_RETRY,
    MessageFactory,
    audit_maildirs,
    audit_spool,
    log_problems,
    maildir_files,
    wait_until,
)

UNSHARE = ("unshare", "--mount", "--propagation", "private", "--")


class PrivateTmpfs:
    """A tmpfs of ``size`` mounted on ``mountpoint`` in a private mount namespace."""

    def __init__(self, mountpoint: Path, size: str) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        script = 'mount -t tmpfs -o size="$1",mode=0755 roost-resilience "$0" || exit 97; '
        script += "echo mounted; exec sleep 900"
        self.holder = subprocess.Popen(
            [*UNSHARE, "sh", "-c", script, str(mountpoint), size],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().strip()
        if line != "mounted":
            self.holder.kill()
            _, err = self.holder.communicate(timeout=10)
            pytest.skip(f"cannot mount a tmpfs in a private namespace: {err.strip()}")

    def view(self, path: Path) -> Path:
        """``path`` as the namespace sees it (through /proc/PID/root)."""
        return Path(f"/proc/{self.holder.pid}/root{path.resolve()}")

    def fill(self, name: str = "filler", leave: int = 0) -> list[Path]:
        """Fill the tmpfs until ENOSPC; with ``leave``, free that many bytes again."""
        made = []
        reserve = None
        if leave:
            reserve = self.view(self.mountpoint / f"{name}.reserve")
            reserve.write_bytes(b"r" * leave)
        filler = self.view(self.mountpoint / name)
        with filler.open("wb", buffering=0) as out:
            for chunk in (65536, 4096, 512, 1):
                try:
                    while True:
                        out.write(b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        made.append(filler)
        if reserve is not None:
            reserve.unlink()
        return made

    def free(self) -> None:
        for path in self.view(self.mountpoint).glob("filler*"):
            path.unlink()

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(10)
        if self.holder.stdout:
            self.holder.stdout.close()
        if self.holder.stderr:
            self.holder.stderr.close()


class NamespacedDaemon(RoostDaemon):
    """``roost serve`` inside the mount namespace of a :class:`PrivateTmpfs`."""

    @staticmethod
    def enter(tmpfs: PrivateTmpfs) -> list[str]:
        return ["nsenter", f"--mount=/proc/{tmpfs.holder.pid}/ns/mnt", f"--wd={ROOT}", "--"]

    def __init__(self, config: Path, tmpfs: PrivateTmpfs) -> None:
        self.config = config
        self.notify = NotifySocket(config.parent / "notify.sock")
        self.log = config.parent / "daemon.log"
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path)}
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            [*self.enter(tmpfs), *ROOST, "-c", str(config), "serve"],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )


@pytest.fixture
def privileged() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    for program in ("unshare", "nsenter", "mount"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} (util-linux) is not installed")


def prepared(directory: Path, extra: str) -> Instance:
    """Write the instance's configuration (start and stop it once, outside the namespace)."""
    instance = start_instance(directory, extra)
    assert instance.daemon.stop() == 0
    return instance


def restart_in(instance: Instance, tmpfs: PrivateTmpfs) -> None:
    if instance.daemon.process.poll() is None:
        instance.daemon.signal(signal.SIGTERM)
        assert instance.daemon.process.wait(30) == 0
        instance.daemon.kill()
    daemon = NamespacedDaemon(instance.directory / "main.cf", tmpfs)
    daemon.wait_ready()
    instance.daemon = daemon


@pytest.fixture
def stack() -> Iterator[list[PrivateTmpfs | Instance]]:
    """Stops what a test started, daemons first."""
    things: list[PrivateTmpfs | Instance] = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, Instance):
            thing.daemon.kill()
        else:
            thing.close()


def send(instance: Instance, factory: MessageFactory, number: int) -> tuple[int, str]:
    """Send numbered message ``number``; return the reply to the end of DATA."""
    with instance.smtp() as client:
        client.ehlo("diskfull.example")
        assert client.mail("soak@example.org")[0] == 250
        for user in factory.recipients(number):
            assert client.rcpt(f"{user}@{DOMAIN}")[0] == 250
        try:
            code, text = client.data(factory.build(number))
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
        # the session goes on after a refusal
        assert client.noop()[0] == 250
    return code, text.decode(errors="replace")


def copies(audit_copies: dict[tuple[str, int], list[Path]]) -> dict[int, int]:
    found: dict[int, int] = {}
    for (_, number), paths in audit_copies.items():
        found[number] = found.get(number, 0) + len(paths)
    return found


def test_queue_full_answers_452_keeps_what_it_accepted_and_recovers(
    tmp_path: Path, privileged: None, stack: list[PrivateTmpfs | Instance]
) -> None:
    instance = prepared(tmp_path, "master_service_disable = qmgr\n")
    tmpfs = PrivateTmpfs(instance.queue, "2m")
    stack.append(tmpfs)
    restart_in(instance, tmpfs)
    stack.append(instance)
    factory = MessageFactory("qfull")
    accepted = []
    for number in range(5):
        code, text = send(instance, factory, number)
        assert code == 250, text
        accepted.append(number)
    tmpfs.fill()
    refused = []
    for number in range(5, 8):
        code, text = send(instance, factory, number)
        assert (code, text.split(" ", 1)[0]) == (452, "4.3.1"), (code, text)
        assert "Insufficient system storage" in text
        refused.append(number)
    assert "queue file write error" in instance.log()
    # the queue manager comes back while the disk is still full: the accepted mail leaves
    main_cf = tmp_path / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("master_service_disable = qmgr\n", ""))
    restart_in(instance, tmpfs)
    spool = tmpfs.view(instance.queue)
    assert wait_until(lambda: audit_spool(spool).pending() == 0, 30), audit_spool(spool)
    tmpfs.fill("filler-again")  # the delivered messages freed their space: take it
    code, text = send(instance, factory, 8)
    assert code == 452, f"the queue is full again, yet: {code} {text}"
    refused.append(8)
    tmpfs.free()
    code, text = send(instance, factory, 9)
    assert code == 250, f"space is back, yet: {code} {text}"
    accepted.append(9)
    assert wait_until(lambda: audit_spool(spool).pending() == 0, 30), audit_spool(spool)
    audit = audit_maildirs(instance.maildir, factory)
    found = copies(audit.copies)
    owed = {n: len(factory.recipients(n)) for n in accepted}
    assert {n: found.get(n, 0) for n in accepted} == owed, f"accepted {owed}, found {found}"
    assert not any(found.get(n) for n in refused), f"refused mail was delivered: {found}"
    assert not audit.corrupt and not audit.tmp_leftovers, audit
    # Spare queue files (empty, created ahead while mail streams in) are deleted after a
    # second unused (docs/spool.md); anything else uncommitted stays and fails below.
    wait_until(lambda: not audit_spool(spool).uncommitted, 10)
    left = audit_spool(spool)
    assert not (left.bad_envelopes or left.uncommitted or left.corrupt_queue), left
    assert not log_problems(instance.log()), log_problems(instance.log())


def test_mailbox_full_defers_without_partial_files_and_flush_delivers(
    tmp_path: Path, privileged: None, stack: list[PrivateTmpfs | Instance]
) -> None:
    mailfs = tmp_path / "mailfs"
    instance = prepared(tmp_path, f"mail_location = maildir:{mailfs}/%d/%n/Maildir\n")
    tmpfs = PrivateTmpfs(mailfs, "1m")
    stack.append(tmpfs)
    restart_in(instance, tmpfs)
    stack.append(instance)
    factory = MessageFactory("mfull")

    def maildir(user: str) -> Path:
        return tmpfs.view(mailfs / DOMAIN / user / "Maildir")

    assert send(instance, factory, 0)[0] == 250  # alice: creates her Maildir
    assert wait_until(lambda: len(list(maildir_files(maildir("alice")))) == 1, 15)
    # leave 160 KB: the 300 KB message 96 runs out of space in the middle of its file
    tmpfs.fill(leave=160 * 1024)
    code, text = send(instance, factory, 96)
    assert code == 250, text
    queue_id = text.rsplit(" ", 1)[-1]
    deferred = re.compile(
        rf"{queue_id}: to=<alice@{DOMAIN}>, .*dsn=4\.(3\.1|2\.2), status=deferred \((.*)\)"
    )
    assert wait_until(lambda: deferred.search(instance.log()) is not None, 20), instance.log()[
        -3000:
    ]
    reason = deferred.search(instance.log())
    assert reason is not None
    news = list(maildir_files(maildir("alice")))
    assert len(news) == 1, f"a partial file was left: {news}"
    assert not list((maildir("alice") / "tmp").iterdir()), "tmp/ keeps a half-written file"
    assert queue_id in audit_spool(instance.queue).messages, "the deferred message left the queue"
    tmpfs.free()
    result = roost_cli(tmp_path / "main.cf", "queue", "flush")
    assert result.returncode == 0, result.stderr
    assert wait_until(lambda: len(list(maildir_files(maildir("alice")))) == 2, 20), instance.log()[
        -2000:
    ]
    assert wait_until(lambda: audit_spool(instance.queue).pending() == 0, 10)
    audit = audit_maildirs(maildir, factory, ["alice"])
    assert copies(audit.copies) == {0: 1, 96: 1}, audit.copies
    assert not audit.corrupt and not audit.tmp_leftovers, audit
    assert f"{queue_id}: to=<alice@{DOMAIN}>" in instance.log()
    assert re.search(rf"{queue_id}: to=<alice@{DOMAIN}>, .*status=sent", instance.log())
    assert not log_problems(instance.log()), log_problems(instance.log())
    print(f"deferred with: {reason.group(0)}")


def test_queue_full_while_deferring_does_not_strand_the_message(
    tmp_path: Path, privileged: None, stack: list[PrivateTmpfs | Instance]
) -> None:
    shared = tmp_path / "fs"  # queue and mailboxes on one small file system
    instance = prepared(
        tmp_path,
        FAST_RETRY
        + "master_service_disable = qmgr\n"
        + f"queue_directory = {shared}/spool\n"
        + f"mail_location = maildir:{shared}/mail/%d/%n/Maildir\n",
    )
    instance.queue = shared / "spool"
    tmpfs = PrivateTmpfs(shared, "2m")
    stack.append(tmpfs)
    restart_in(instance, tmpfs)
    stack.append(instance)
    factory = MessageFactory("strand")
    assert send(instance, factory, 0)[0] == 250
    tmpfs.fill()
    main_cf = tmp_path / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("master_service_disable = qmgr\n", ""))
    restart_in(instance, tmpfs)  # delivery fails (mailbox full) and so does the defer
    assert wait_until(lambda: "status=deferred" in instance.log(), 15), instance.log()[-2000:]
    time.sleep(0.5)
    tmpfs.free()
    assert roost_cli(main_cf, "queue", "flush").returncode == 0
    maildir = tmpfs.view(shared / "mail" / DOMAIN / "alice" / "Maildir")
    delivered = wait_until(lambda: len(list(maildir_files(maildir))) == 1, 5)
    spool = audit_spool(tmpfs.view(instance.queue))
    problems = log_problems(instance.log())
    assert delivered, (
        f"space is back and the queue was flushed, but the message is still in {spool.messages}"
        f" and not delivered; log: {problems}"
    )

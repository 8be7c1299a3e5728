"""sendmail(1), mailq and newaliases as cron, mail(1), PHP and mutt use them (real processes).

roost answers to the names ``sendmail``, ``mailq`` and ``newaliases`` (a symlink to the
``roost`` program, as /usr/sbin/sendmail would be); the configuration comes from
``ROOST_CONFIG`` as it would for a cron job. Messages go through ``maildrop/`` whether the
daemon runs or not.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.queue import QueueDirectory, QueueName
from tests.conftest import ROOT, require_program, write_instance
from tests.e2e.daemon import roost_cli
from tests.e2e.instance import start_instance

CRON_MESSAGE = (
    b"From root Sat Nov 21 06:00:00 2026\n"  # an mbox envelope line: dropped
    b"To: Alice <alice@virtual.test>\n"
    b"Cc: cc-only@remote.example\n"
    b"Bcc: bob@virtual.test\n"
    b"Subject: Cron <root@mx> run-parts /etc/cron.daily\n"
    b"\n"
    b"first line\n"
    b".\n"  # with -i a lone dot does not end the message
    b"..two dots stay two dots\n"
    b"last line\n"
)


def program(directory: Path, name: str) -> Path:
    """``name`` as a symlink to the roost program (or a stand-in script when not installed)."""
    directory.mkdir(exist_ok=True)
    link = directory / name
    installed = Path(sys.executable).parent / "roost"
    if installed.exists():
        link.symlink_to(installed)
    else:
        link.write_text(
            f"#!{sys.executable}\nimport sys\nfrom roost.cli.main import main\nsys.exit(main())\n"
        )
        link.chmod(0o755)
    return link


def run(
    directory: Path,
    config: Path,
    program_name: str,
    *args: str,
    stdin: bytes = b"",
    name: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``program_name`` (sendmail, mailq, newaliases) as cron would: config from the env.

    ``name`` is the user's full name (``$NAME``, which sendmail prefers to the GECOS field).
    """
    env = {**os.environ, "ROOST_CONFIG": str(config)}
    env.pop("NAME", None)
    if name is not None:
        env["NAME"] = name
    completed = subprocess.run(
        [str(program_path(directory, program_name)), *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    return subprocess.CompletedProcess(
        completed.args,
        completed.returncode,
        completed.stdout.decode(errors="replace"),
        completed.stderr.decode(errors="replace"),
    )


def program_path(directory: Path, name: str) -> Path:
    link = directory / "bin" / name
    return link if link.exists() else program(directory / "bin", name)


def wait_for_files(directory: Path, count: int = 1, timeout: float = 5.0) -> list[Path]:
    """Wait (bounded, small sleeps) until ``directory`` holds ``count`` files."""
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(p for p in directory.glob("*") if p.is_file()) if directory.is_dir() else []
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{directory}: {len(found)} files after {timeout}s, not {count}")
        time.sleep(0.05)


def maildir(directory: Path, user: str) -> Path:
    return directory / "mail" / "virtual.test" / user / "new"


def mail_location(directory: Path) -> str:
    return f"mail_location = maildir:{directory}/mail/%d/%n\n"


def login() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An instance directory with main.cf and no daemon running: (directory, main.cf)."""
    yield tmp_path, write_instance(tmp_path, mail_location(tmp_path))


def test_sendmail_t_i_from_cron_waits_in_maildrop_then_is_delivered_at_start(
    tmp_path: Path,
) -> None:
    config = write_instance(tmp_path, mail_location(tmp_path))
    submitted = run(
        tmp_path, config, "sendmail", "-t", "-i", stdin=CRON_MESSAGE, name="Cron Daemon"
    )
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout == submitted.stderr == ""

    # the daemon is down: the message waits in maildrop/, and mailq shows it
    [queue_id] = QueueDirectory(tmp_path / "spool").scan(QueueName.MAILDROP)
    listing = run(tmp_path, config, "mailq")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    assert lines[1].startswith(f"{queue_id} ") and lines[1].endswith(f"  {login()}@mx.roost.test")
    assert [line.strip() for line in lines[2:5]] == [
        "alice@virtual.test",
        "cc-only@remote.example",
        "bob@virtual.test",
    ]
    assert lines[-1] == "-- 0 Kbytes in 1 Request."

    instance = start_instance(tmp_path, mail_location(tmp_path))
    try:
        [alice_file] = wait_for_files(maildir(tmp_path, "alice"))
        [bob_file] = wait_for_files(maildir(tmp_path, "bob"))
    finally:
        instance.daemon.stop()
    message = alice_file.read_bytes().replace(b"\r\n", b"\n")
    bob_message = bob_file.read_bytes().replace(b"\r\n", b"\n")
    assert b"Bcc" not in bob_message
    header, _, body = message.partition(b"\n\n")
    header += b"\n"
    assert (
        f"Received: by mx.roost.test (roost, from userid {os.getuid()})\n\tid {queue_id}; ".encode()
        in header
    )
    assert b"Message-ID: <" in header and f".{queue_id}@mx.roost.test>".encode() in header
    assert b"\nDate: " in header
    assert f"\nFrom: Cron Daemon <{login()}@mx.roost.test>\n".encode() in header  # from $NAME
    assert b"\nTo: Alice <alice@virtual.test>\n" in header
    assert b"Bcc" not in message and b"From root" not in message
    assert body == b"first line\n.\n..two dots stay two dots\nlast line\n"
    assert bob_message.endswith(body)
    assert f"Return-Path: <{login()}@mx.roost.test>".encode() in header
    assert not list((tmp_path / "spool" / "maildrop").iterdir())
    log = instance.log()
    assert f"roost/pickup[{instance.daemon.process.pid}]: {queue_id}: uid={os.getuid()}" in log


def test_with_the_daemon_running_mail_is_delivered_at_once(tmp_path: Path) -> None:
    instance = start_instance(tmp_path, mail_location(tmp_path))
    try:
        config = tmp_path / "main.cf"
        # PHP's mail(): sendmail -t -i, plus -f for the envelope sender
        submitted = run(
            tmp_path,
            config,
            "sendmail",
            "-t",
            "-i",
            "-fwebmaster@example.org",
            "-F",
            "Web Site",
            stdin=b"To: alice@virtual.test\nSubject: contact form\n\nHello from PHP\n",
        )
        assert submitted.returncode == 0, submitted.stderr
        [delivered] = wait_for_files(maildir(tmp_path, "alice"))
        message = delivered.read_bytes().replace(b"\r\n", b"\n")
        assert message.startswith(b"Return-Path: <webmaster@example.org>\n")
        assert b"\nFrom: Web Site <webmaster@example.org>\n" in message
        assert message.endswith(b"\n\nHello from PHP\n")

        # mail(1)-style: recipients as arguments, no -i, a lone dot ends the message;
        # -v reports the queue ID and the pickup on stderr
        verbose = run(
            tmp_path,
            config,
            "sendmail",
            "-v",
            "-oem",
            "-odi",
            "bob@virtual.test",
            stdin=b"Subject: dot\n\nbefore\n.\nafter the end\n",
        )
        assert verbose.returncode == 0, verbose.stderr
        assert "the daemon picked up the message" in verbose.stderr
        [bob_mail] = wait_for_files(maildir(tmp_path, "bob"))
        assert bob_mail.read_bytes().replace(b"\r\n", b"\n").endswith(b"\n\nbefore\n")
    finally:
        instance.daemon.stop()


def test_sendmail_bs_speaks_smtp_on_stdin_and_stdout(tmp_path: Path) -> None:
    instance = start_instance(tmp_path, mail_location(tmp_path))
    try:
        session = subprocess.Popen(
            [str(program_path(tmp_path, "sendmail")), "-bs"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "ROOST_CONFIG": str(tmp_path / "main.cf")},
        )
        assert session.stdin is not None and session.stdout is not None

        def reply() -> list[bytes]:
            lines = []
            while True:
                line = session.stdout.readline()  # type: ignore[union-attr]
                lines.append(line.rstrip(b"\r\n"))
                if line[3:4] != b"-":
                    return lines

        def command(text: bytes) -> list[bytes]:
            session.stdin.write(text + b"\r\n")  # type: ignore[union-attr]
            session.stdin.flush()  # type: ignore[union-attr]
            return reply()

        assert reply() == [b"220 mx.roost.test ESMTP roost"]
        assert command(b"EHLO client.example")[-1] == b"250 SMTPUTF8"
        assert command(b"RCPT TO:<alice@virtual.test>") == [b"503 5.5.1 Error: need MAIL command"]
        assert command(b"MAIL FROM:<bob@virtual.test>") == [b"250 2.1.0 Ok"]
        assert command(b"RCPT TO:<alice@virtual.test>") == [b"250 2.1.5 Ok"]
        assert command(b"DATA") == [b"354 End data with <CR><LF>.<CR><LF>"]
        [queued] = command(b"Subject: over stdio\r\n\r\n..leading dot\r\nbare\r\n.")
        assert queued.startswith(b"250 2.0.0 Ok: queued as ")
        queue_id = queued.rsplit(b" ", 1)[1].decode()
        # a second message in the same session
        assert command(b"MAIL FROM:<>") == [b"250 2.1.0 Ok"]
        assert command(b"RCPT TO:<bob@virtual.test>") == [b"250 2.1.5 Ok"]
        assert command(b"DATA")[0].startswith(b"354")
        assert command(b"Subject: second\r\n\r\nsecond\r\n.")[0].startswith(b"250 2.0.0 Ok")
        assert command(b"QUIT") == [b"221 2.0.0 Bye"]
        assert session.wait(10) == 0

        [delivered] = wait_for_files(maildir(tmp_path, "alice"))
        message = delivered.read_bytes().replace(b"\r\n", b"\n")
        assert f"id {queue_id}; ".encode() in message
        assert message.endswith(b"\n\n.leading dot\nbare\n")
        assert b"\nFrom: bob@virtual.test\n" in message
        [second] = wait_for_files(maildir(tmp_path, "bob"))
        bounce_like = second.read_bytes().replace(b"\r\n", b"\n")
        assert bounce_like.startswith(b"Return-Path: <>\n")
        assert b"\nFrom: MAILER-DAEMON@mx.roost.test (Mail Delivery System)\n" in bounce_like
    finally:
        instance.daemon.stop()


def test_mutt_reads_the_delivered_maildir(tmp_path: Path) -> None:
    mutt = require_program("mutt")
    instance = start_instance(tmp_path, mail_location(tmp_path))
    try:
        message = b"To: alice@virtual.test\nSubject: read me with mutt\n\nmutt body\n"
        submitted = run(tmp_path, tmp_path / "main.cf", "sendmail", "-t", "-i", stdin=message)
        assert submitted.returncode == 0, submitted.stderr
        wait_for_files(maildir(tmp_path, "alice"))
    finally:
        instance.daemon.stop()
    home = tmp_path / "home"
    (home / "Mail").mkdir(parents=True)
    piped = tmp_path / "piped.txt"
    screen = run_in_terminal(
        [
            mutt,
            "-n",
            "-F",
            "/dev/null",
            "-R",
            "-f",
            str(maildir(tmp_path, "alice").parent),
            "-e",
            f"set folder={home / 'Mail'} wait_key=no",
            "-e",
            f"push '<pipe-message>cat > {piped}<enter><quit>'",
        ],
        env={**os.environ, "HOME": str(home), "TERM": "vt100"},
    )
    assert b"read me with mutt" in screen  # the index line
    shown = piped.read_bytes()
    assert b"Subject: read me with mutt\n" in shown
    assert b"\nMessage-ID: <" in shown and b"\nDate: " in shown
    assert shown.endswith(b"\n\nmutt body\n")


def run_in_terminal(argv: list[str], env: dict[str, str], timeout: float = 30.0) -> bytes:
    """Run a full-screen program on a pseudo-terminal until it exits; return its output."""
    import pty
    import select

    master, slave = pty.openpty()
    process = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the program exited and closed the terminal
                break
            if not data:
                break
            output += data
        assert process.wait(timeout=5) == 0, bytes(output)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return bytes(output)


def test_newaliases_reports_bad_lines_and_reloads_the_daemon(tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("postmaster: alice@virtual.test\n")
    tables = f"alias_maps = texthash:{aliases}\nalias_database = texthash:{aliases}\n"
    instance = start_instance(tmp_path, mail_location(tmp_path) + tables)
    config = tmp_path / "main.cf"
    try:
        aliases.write_text(
            "# roost aliases\n"
            "postmaster: alice@virtual.test\n"
            "this line has no colon\n"
            "team: alice@virtual.test, bob@virtual.test\n"
        )
        checked = run(tmp_path, config, "newaliases")
        assert checked.returncode == 1
        assert f"roost/newaliases: {aliases}:3: " in checked.stderr
        assert checked.stdout.splitlines() == [
            f"roost/newaliases: {aliases}: 2 aliases, longest 36 bytes, 68 bytes total",
            "roost/newaliases: the daemon reloaded its alias tables",
        ]
        # the reload made the new alias live
        submitted = run(
            tmp_path, config, "sendmail", "team", stdin=b"Subject: to the team\n\nhi team\n"
        )
        assert submitted.returncode == 0, submitted.stderr
        wait_for_files(maildir(tmp_path, "alice"))
        wait_for_files(maildir(tmp_path, "bob"))

        aliases.write_text("team: alice@virtual.test\n")
        fixed = roost_cli(config, "newaliases")
        assert fixed.returncode == 0, fixed.stderr
        assert f"{aliases}: 1 aliases" in fixed.stdout
        # sendmail -bi is newaliases too
        assert run(tmp_path, config, "sendmail", "-bi").returncode == 0
    finally:
        instance.daemon.stop()


@pytest.mark.parametrize(
    ("args", "stdin", "status", "message"),
    [
        ((), b"Subject: x\n\nx\n", 64, "Recipient addresses must be specified"),
        (("-t",), b"Subject: x\n\nx\n", 64, "No recipient addresses found in message header"),
        (("-t",), b"To: a@@b\n\nx\n", 65, "bad address in the To: header"),
        (("a@@b",), b"x\n", 67, "bad recipient address"),
        (("-bx",), b"", 64, "unsupported: -bx"),
        (("-Z",), b"", 64, "invalid option -- 'Z'"),
        (("-f",), b"", 64, "option requires an argument -- 'f'"),
    ],
)
def test_sendmail_failures_exit_like_postfix(
    stopped: tuple[Path, Path], args: tuple[str, ...], stdin: bytes, status: int, message: str
) -> None:
    directory, config = stopped
    result = run(directory, config, "sendmail", *args, stdin=stdin)
    assert result.returncode == status, result.stderr
    assert result.stderr.startswith("roost/sendmail: fatal: ")
    assert message in result.stderr
    assert not list((directory / "spool" / "maildrop").glob("*"))


def test_sendmail_refuses_too_big_and_unwritable_queue(tmp_path: Path) -> None:
    small = write_instance(tmp_path / "small", "message_size_limit = 100\n")
    result = run(tmp_path, small, "sendmail", "a@example.org", stdin=b"x" * 200 + b"\n")
    assert result.returncode == 65
    assert "message file too big" in result.stderr

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the queue directory should be\n")
    broken = write_instance(tmp_path / "broken", f"queue_directory = {blocked}/spool\n")
    result = run(tmp_path, broken, "sendmail", "a@example.org", stdin=b"Subject: x\n\nx\n")
    assert result.returncode == 75
    assert "cannot write to" in result.stderr


def test_roost_sendmail_subcommand_and_mailq_when_empty(stopped: tuple[Path, Path]) -> None:
    directory, config = stopped
    submitted = subprocess.run(
        [sys.executable, "-m", "roost", "-c", str(config), "sendmail", "-oi", "alice"],
        input=b"Subject: x\n\n.\n",
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    assert submitted.returncode == 0, submitted.stderr
    spool = QueueDirectory(directory / "spool")
    [queue_id] = spool.scan(QueueName.MAILDROP)
    envelope = spool.read_envelope_data(QueueName.MAILDROP, queue_id)
    assert envelope is not None
    assert b'"address":"alice@mx.roost.test"' in envelope  # append_at_myorigin
    deleted = roost_cli(config, "queue", "delete", queue_id)
    assert deleted.returncode == 0, deleted.stderr
    assert run(directory, config, "mailq").stdout == "Mail queue is empty\n"
    assert run(directory, config, "sendmail", "-bp").stdout == "Mail queue is empty\n"

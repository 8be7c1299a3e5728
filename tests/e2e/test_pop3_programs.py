"""Real POP3 clients against the daemon: curl, fetchmail and getmail6.

* curl: ``pop3://`` LIST, RETR, UIDL, DELE, over STLS (``--ssl-reqd``) and ``pop3s://``.
* fetchmail: POP3 (with STLS) and POP3S, ``keep`` with ``uidl`` fetching only new mail
  across runs, and without ``keep`` deleting what it fetched; delivering into an MDA
  (``cat >> FILE``).
* getmail6: ``SimplePOP3Retriever`` and ``SimplePOP3SSLRetriever`` into a Maildir,
  ``read_all = false`` (UIDL-based) across two runs, then ``delete = true``.

The clients connect from 127.0.0.1 to 127.0.0.1: the same address on both ends counts
as secured, so plaintext logins work without TLS too (as in Dovecot).

See Also: curl(1) POP3; fetchmail(1); getmail6's documentation (getmailrc).
"""

from __future__ import annotations

import os
import poplib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_program
from tests.e2e.instance import PASSWORD, Instance, start_instance

ALICE = "alice@virtual.test"
BOB = "bob@virtual.test"


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(tmp_path_factory.mktemp("pop3-programs"))
    yield running
    running.daemon.stop()


@pytest.fixture
def alice(instance: Instance) -> Iterator[Instance]:
    """Alice's maildrop, empty at the start and the end of the test."""
    empty(instance)
    yield instance
    empty(instance)


def empty(instance: Instance) -> None:
    client = poplib.POP3("127.0.0.1", instance.ports["pop3"], timeout=30)
    client.user(ALICE)
    client.pass_(PASSWORD)
    for msg in range(1, client.stat()[0] + 1):
        client.dele(msg)
    client.quit()


def deliver(instance: Instance, *subjects: str) -> None:
    before = len(instance.delivered("alice"))
    with instance.smtp() as smtp:
        for subject in subjects:
            smtp.sendmail(
                "sender@example.org",
                [ALICE],
                f"Subject: {subject}\r\n\r\n.body of {subject}\r\n".encode(),
            )
    assert len(instance.wait_delivered("alice", before + len(subjects))) == before + len(subjects)


def count_on_server(instance: Instance) -> int:
    client = poplib.POP3("127.0.0.1", instance.ports["pop3"], timeout=30)
    client.user(ALICE)
    client.pass_(PASSWORD)
    count: int = client.stat()[0]
    client.quit()
    return count


def subjects_in(text: str) -> list[str]:
    return sorted(line[9:] for line in text.splitlines() if line.startswith("Subject: "))


# --- curl -------------------------------------------------------------------------------------


def curl(instance: Instance, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    program = require_program("curl")
    return subprocess.run(
        [program, "-sS", "--max-time", "30", "-u", f"{ALICE}:{PASSWORD}", *args, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_curl_list_retr_uidl_dele(alice: Instance) -> None:
    deliver(alice, "curl-1", "curl-2")
    base = f"pop3://127.0.0.1:{alice.ports['pop3']}/"
    listing = curl(alice, base)
    assert listing.returncode == 0, listing.stderr
    sizes = [line.split() for line in listing.stdout.splitlines()]
    assert [number for number, _ in sizes] == ["1", "2"]
    message = curl(alice, base + "1")
    assert message.returncode == 0
    assert len(message.stdout.replace("\n", "\r\n")) == int(sizes[0][1])
    assert "\n.body of curl-" in message.stdout  # curl undoes the dot-stuffing
    uidl = curl(alice, f"pop3s://127.0.0.1:{alice.ports['pop3s']}/", "-k", "-X", "UIDL")
    assert uidl.returncode == 0 and len(uidl.stdout.split()) == 4
    secured = curl(alice, base, "--ssl-reqd", "-k")  # STLS
    assert secured.stdout == listing.stdout
    deleted = curl(alice, base + "1", "-X", "DELE", "-I")
    assert deleted.returncode == 0, deleted.stderr
    assert count_on_server(alice) == 1
    denied = curl(alice, base, "-u", f"{ALICE}:wrong")
    assert denied.returncode == 67  # CURLE_LOGIN_DENIED


# --- fetchmail ----------------------------------------------------------------------------------


def fetchmail(instance: Instance, home: Path, options: str, *, ssl: bool = False) -> int:
    """Run fetchmail once against ``pop3`` (STLS) or ``pop3s``; return its exit status
    (0: mail fetched, 1: no mail)."""
    program = require_program("fetchmail")
    home.mkdir(exist_ok=True)
    port = instance.ports["pop3s" if ssl else "pop3"]
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\n"
        f"poll 127.0.0.1 service {port} protocol pop3 uidl:\n"
        f'  user "{ALICE}" there with password "{PASSWORD}" is root here\n'
        f"  {'ssl' if ssl else ''} no sslcertck\n"
        f'  mda "cat >> {home}/delivered"\n'
        f"  {options}\n"
    )
    rc.chmod(0o600)
    result = subprocess.run(
        [program, "-f", str(rc), "--nosyslog", "--nodetach", "-v"],
        env={**os.environ, "FETCHMAILHOME": str(home), "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode


def delivered(home: Path) -> list[str]:
    path = home / "delivered"
    return subjects_in(path.read_text()) if path.exists() else []


@pytest.mark.parametrize("ssl", [False, True], ids=["pop3-stls", "pop3s"])
def test_fetchmail_keep_fetches_only_new_mail(alice: Instance, tmp_path: Path, ssl: bool) -> None:
    home = tmp_path / "fetchmail"
    deliver(alice, "fm-1", "fm-2")
    assert fetchmail(alice, home, "keep", ssl=ssl) == 0
    assert delivered(home) == ["fm-1", "fm-2"]
    assert count_on_server(alice) == 2  # kept
    assert fetchmail(alice, home, "keep", ssl=ssl) == 1  # nothing new: UIDLs remembered
    deliver(alice, "fm-3")
    assert fetchmail(alice, home, "keep", ssl=ssl) == 0
    assert delivered(home) == ["fm-1", "fm-2", "fm-3"]  # fm-3 only, once
    assert count_on_server(alice) == 3


@pytest.mark.parametrize("ssl", [False, True], ids=["pop3-stls", "pop3s"])
def test_fetchmail_without_keep_deletes(alice: Instance, tmp_path: Path, ssl: bool) -> None:
    home = tmp_path / "fetchmail"
    deliver(alice, "gone-1", "gone-2")
    assert fetchmail(alice, home, "no keep", ssl=ssl) == 0
    assert delivered(home) == ["gone-1", "gone-2"]
    assert count_on_server(alice) == 0
    assert fetchmail(alice, home, "no keep", ssl=ssl) == 1


# --- getmail6 -----------------------------------------------------------------------------------


def getmail(instance: Instance, directory: Path, *, ssl: bool, delete: bool) -> str:
    program = require_program("getmail")
    maildir = directory / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    # getmail refuses to deliver as root: it switches to "user" for the Maildir
    as_user = ""
    if os.geteuid() == 0:
        as_user = "user = nobody\n"
        for path in (maildir, *maildir.iterdir()):
            path.chmod(0o777)
    rc = directory / "getmailrc"
    rc.write_text(
        "[retriever]\n"
        f"type = {'SimplePOP3SSLRetriever' if ssl else 'SimplePOP3Retriever'}\n"
        "server = 127.0.0.1\n"
        f"port = {instance.ports['pop3s' if ssl else 'pop3']}\n"
        f"username = {ALICE}\n"
        f"password = {PASSWORD}\n"
        "[destination]\n"
        "type = Maildir\n"
        f"path = {maildir}/\n"
        f"{as_user}"
        "[options]\n"
        f"delete = {'true' if delete else 'false'}\n"
        "read_all = false\n"
    )
    result = subprocess.run(
        [program, "--getmaildir", str(directory), "--rcfile", str(rc)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def maildir_subjects(directory: Path) -> list[str]:
    found: list[str] = []
    for path in (directory / "Maildir" / "new").iterdir():
        found += subjects_in(path.read_text())
    return sorted(found)


@pytest.fixture
def getmail_dir(tmp_path: Path) -> Iterator[Path]:
    """getmail's directory; as root one that ``nobody`` can reach (see :func:`getmail`)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="roost-getmail-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("ssl", [False, True], ids=["pop3", "pop3s"])
def test_getmail_new_mail_only_then_delete(alice: Instance, getmail_dir: Path, ssl: bool) -> None:
    tmp_path = getmail_dir
    deliver(alice, "gm-1", "gm-2")
    output = getmail(alice, tmp_path, ssl=ssl, delete=False)
    assert "2 messages" in output
    assert maildir_subjects(tmp_path) == ["gm-1", "gm-2"]
    deliver(alice, "gm-3")
    output = getmail(alice, tmp_path, ssl=ssl, delete=False)
    assert "1 messages" in output and "2 skipped" in output
    assert maildir_subjects(tmp_path) == ["gm-1", "gm-2", "gm-3"]
    assert count_on_server(alice) == 3
    getmail(alice, tmp_path, ssl=ssl, delete=True)  # nothing new, but deletes what it has
    assert maildir_subjects(tmp_path) == ["gm-1", "gm-2", "gm-3"]
    assert count_on_server(alice) == 0

"""Real IMAP clients against the daemon: aioimaplib, curl, mbsync (isync), mutt."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_program
from tests.e2e import test_imap_helpers
from tests.e2e.instance import Instance, client_tls
from tests.e2e.test_imap_helpers import (
    add_user,
    connect,
    deliver,
)

imap_instance = test_imap_helpers.imap_instance


@pytest.fixture
def user(imap_instance: Instance) -> tuple[str, str]:
    return add_user(imap_instance)


# --- aioimaplib ------------------------------------------------------------------------------


async def test_aioimaplib_session_with_idle(imap_instance: Instance, user: tuple[str, str]) -> None:
    import aioimaplib

    await asyncio.to_thread(deliver, imap_instance, user[0], "async one")
    client = aioimaplib.IMAP4_SSL(
        "127.0.0.1", imap_instance.ports["imaps"], ssl_context=client_tls(), timeout=30
    )
    await client.wait_hello_from_server()
    response = await client.login(*user)
    assert response.result == "OK"
    assert client.has_capability("IDLE")
    response = await client.select("INBOX")
    assert response.result == "OK"
    assert b"1 EXISTS" in response.lines
    response = await client.fetch("1", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert response.result == "OK"
    assert any(b"Subject: async one" in bytes(line) for line in response.lines)
    idle = await client.idle_start(timeout=20)
    await asyncio.to_thread(deliver, imap_instance, user[0], "async two")
    pushed = await asyncio.wait_for(client.wait_server_push(), 5)
    assert b"2 EXISTS" in pushed
    client.idle_done()
    await asyncio.wait_for(idle, 10)
    response = await client.uid_search("ALL")
    assert response.lines[0] == b"1 2"
    response = await client.logout()
    assert response.result == "OK"


# --- curl --------------------------------------------------------------------------------------


def _curl(instance: Instance, user: tuple[str, str], url: str, *args: str) -> str:
    curl = require_program("curl")
    result = subprocess.run(
        [curl, "-sS", "-k", "--user", f"{user[0]}:{user[1]}", *args, url],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode(errors="replace")


def test_curl_fetch_list_search(imap_instance: Instance, user: tuple[str, str]) -> None:
    deliver(imap_instance, user[0], "for curl", "body seen by curl\r\n")
    base = f"imaps://127.0.0.1:{imap_instance.ports['imaps']}"
    # With -X curl shows the untagged lines only, not the literal that follows.
    body = _curl(imap_instance, user, f"{base}/INBOX", "-X", "FETCH 1 BODY.PEEK[]")
    assert re.match(r"\* 1 FETCH \(BODY\[\] \{\d+\}", body), body
    listing = _curl(imap_instance, user, f"{base}/")
    assert '"INBOX"' in listing and '"Sent"' in listing
    found = _curl(imap_instance, user, f"{base}/INBOX?SUBJECT%20curl")
    assert found.strip() == "* SEARCH 1"
    message = _curl(imap_instance, user, f"{base}/INBOX;UID=1")
    assert "body seen by curl" in message
    # STARTTLS on 143 (--ssl-reqd) works the same.
    plain = f"imap://127.0.0.1:{imap_instance.ports['imap']}/INBOX"
    body = _curl(imap_instance, user, plain, "--ssl-reqd", "-X", "FETCH 1 (FLAGS)")
    assert "FLAGS (\\Seen" in body


def test_curl_append(imap_instance: Instance, user: tuple[str, str], tmp_path: Path) -> None:
    message = tmp_path / "message.eml"
    message.write_bytes(b"From: curl@example.org\r\nSubject: uploaded\r\n\r\nup\r\n")
    base = f"imaps://127.0.0.1:{imap_instance.ports['imaps']}"
    _curl(imap_instance, user, f"{base}/Drafts", "-T", str(message))
    client = connect(imap_instance, *user)
    assert client.select("Drafts")[1] == [b"1"]
    client.logout()


# --- mbsync (isync) ------------------------------------------------------------------------


def _mbsync(config: Path) -> str:
    mbsync = require_program("mbsync")
    result = subprocess.run(
        [mbsync, "-c", str(config), "-a"],
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, "HOME": str(config.parent)},
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output
    return output


def _local_messages(folder: Path) -> list[Path]:
    return sorted(
        path
        for sub in ("cur", "new")
        if (folder / sub).is_dir()
        for path in (folder / sub).iterdir()
    )


def _subject(path: Path) -> str:
    found = re.search(rb"^Subject: (.*?)\r?$", path.read_bytes(), re.MULTILINE)
    assert found is not None
    return found.group(1).decode()


def test_mbsync_two_way_sync_survives_a_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.e2e.daemon import RoostDaemon
    from tests.e2e.test_imap_helpers import start_imap_instance

    require_program("mbsync")
    instance = start_imap_instance(tmp_path_factory.mktemp("mbsync"))
    user = add_user(instance)
    home = tmp_path_factory.mktemp("mbsync-home")
    local = home / "Mail"
    local.mkdir()
    config = home / "mbsyncrc"
    config.write_text(
        "IMAPAccount roost\n"
        "Host 127.0.0.1\n"
        f"Port {instance.ports['imaps']}\n"
        f"User {user[0]}\n"
        f"Pass {user[1]}\n"
        "SSLType IMAPS\n"
        f"CertificateFile {instance.directory / 'tls' / 'cert.pem'}\n"
        "\n"
        "IMAPStore remote\n"
        "Account roost\n"
        "\n"
        "MaildirStore local\n"
        f"Path {local}/\n"
        f"Inbox {local}/INBOX\n"
        "SubFolders Verbatim\n"
        "\n"
        "Channel everything\n"
        "Far :remote:\n"
        "Near :local:\n"
        "Patterns *\n"
        "Create Both\n"
        "Expunge Both\n"
        "SyncState *\n"
    )
    try:
        for number in range(3):
            deliver(instance, user[0], f"inbox {number}")
        client = connect(instance, *user)
        client.create("Lists.Python")
        for number in range(2):
            client.append(
                "Lists.Python", "(\\Seen)", None, f"Subject: list {number}\r\n\r\nx\r\n".encode()
            )
        client.logout()

        _mbsync(config)
        assert len(_local_messages(local / "INBOX")) == 3
        python = local / "Lists" / "Python"
        assert len(_local_messages(python)) == 2
        assert (local / "Sent").is_dir() and (local / "Trash").is_dir()

        # Local changes: read one inbox message, delete another, add one to the list.
        inbox = _local_messages(local / "INBOX")
        read, gone = inbox[0], inbox[1]
        read_subject = _subject(read)
        gone_subject = _subject(gone)
        target = read.parent.parent / "cur" / (read.name.split(":2,")[0] + ":2,S")
        read.rename(target)
        gone.unlink()
        (python / "new" / f"{time.time_ns()}.local.host").write_bytes(
            b"From: me@example.org\r\nSubject: written offline\r\n\r\nhi\r\n"
        )
        # A server change: a new message in INBOX.
        deliver(instance, user[0], "inbox late")
        _mbsync(config)

        client = connect(instance, *user)
        client.select("INBOX")
        assert client.search(None, "ALL")[1] == [b"1 2 3"]
        seen = client.search(None, "SEEN")[1]
        assert client.search(None, "SUBJECT", f'"{read_subject}"')[1] == seen
        assert len(seen[0].split()) == 1
        assert client.search(None, "SUBJECT", f'"{gone_subject}"')[1] == [b""]
        client.select("Lists.Python")
        assert client.search(None, "SUBJECT", '"written offline"')[1] == [b"3"]
        state = client.status("INBOX", "(UIDVALIDITY UIDNEXT)")[1][0]
        client.logout()
        assert len(_local_messages(local / "INBOX")) == 3
    finally:
        instance.daemon.stop()

    # After a restart nothing is new: UIDVALIDITY and UIDs are as they were.
    snapshot = {path.name for path in local.rglob("*") if path.is_file()}
    instance.daemon = RoostDaemon(instance.directory / "main.cf")
    instance.daemon.wait_ready()
    try:
        output = _mbsync(config)
        assert "UIDVALIDITY" not in output, output
        after = {path.name for path in local.rglob("*") if path.is_file()}
        changed = {
            n for n in after ^ snapshot if not n.startswith((".mbsyncstate", ".uidvalidity"))
        }
        assert not changed, (changed, output)
        client = connect(instance, *user)
        assert client.status("INBOX", "(UIDVALIDITY UIDNEXT)")[1][0] == state
        client.logout()
    finally:
        instance.daemon.stop()


# --- mutt ----------------------------------------------------------------------------------------


def test_mutt_reads_a_mailbox_in_batch_mode(
    imap_instance: Instance, user: tuple[str, str], tmp_path: Path
) -> None:
    mutt = require_program("mutt")
    script = shutil.which("script")
    if script is None:
        pytest.skip("script(1) is needed to give mutt a terminal")
    deliver(imap_instance, user[0], "for mutt", "mutt was here\r\n")
    muttrc = tmp_path / "muttrc"
    saved = tmp_path / "saved.mbox"
    local, _, domain = user[0].partition("@")
    muttrc.write_text(
        f'set folder="imaps://{local}%40{domain}@127.0.0.1:{imap_instance.ports["imaps"]}/"\n'
        f'set imap_pass="{user[1]}"\n'
        "set ssl_verify_host=no\n"
        "set ssl_verify_dates=no\n"
        f"set certificate_file={tmp_path}/certificates\n"
        "set imap_check_subscribed=no\n"
        "set mail_check=1\n"
        "set confirmappend=no\nset confirmcreate=no\nset wait_key=no\n"
        "set mbox_type=mbox\n"
        "set imap_keepalive=30\n"
        "set delete=yes\nset quit=yes\nset move=no\n"
    )
    # Accept the self-signed certificate permanently, as a user would with "a".
    cert = (imap_instance.directory / "tls" / "cert.pem").read_text()
    (tmp_path / "certificates").write_text(cert)
    command = (
        f"{mutt} -n -F {muttrc} -f '=INBOX' "
        f"-e 'push \"<save-message>{saved}<enter><sync-mailbox><quit>\"'"
    )
    env = {**os.environ, "TERM": "vt100", "HOME": str(tmp_path)}
    result = subprocess.run(
        [script, "-qec", command, "/dev/null"],
        capture_output=True,
        timeout=30,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert saved.exists(), output[-2000:]
    assert b"mutt was here" in saved.read_bytes()
    # <save-message> moved it: the INBOX is empty now (mutt expunged on sync).
    client = connect(imap_instance, *user)
    assert client.select("INBOX")[1] == [b"0"]
    client.logout()
    assert re.search(r"Login: user=<" + re.escape(user[0]), imap_instance.log())

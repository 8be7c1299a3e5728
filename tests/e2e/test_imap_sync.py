"""IMAP change reporting end to end: IDLE, CONDSTORE, QRESYNC, restarts keep UIDs."""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e import test_imap_helpers
from tests.e2e.instance import Instance
from tests.e2e.test_imap_helpers import (
    RawClient,
    add_user,
    connect,
    deliver,
)

imap_instance = test_imap_helpers.imap_instance


@pytest.fixture
def user(imap_instance: Instance) -> tuple[str, str]:
    return add_user(imap_instance)


def _login(instance: Instance, user: tuple[str, str]) -> RawClient:
    raw = RawClient(instance)
    assert raw.command("l", f'LOGIN "{user[0]}" "{user[1]}"')[-1].startswith(b"l OK")
    return raw


def test_idle_reports_a_delivery_within_a_second(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    deliver(imap_instance, user[0], "before")
    raw = _login(imap_instance, user)
    raw.command("s", "SELECT INBOX")
    raw.send(b"i IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"
    queue_id = deliver(imap_instance, user[0], "during idle")
    delivered = time.monotonic()
    raw.sock.settimeout(5)
    line = raw.line()
    elapsed = time.monotonic() - delivered
    assert line == b"* 2 EXISTS\r\n", (line, queue_id)
    assert raw.line() == b"* 2 RECENT\r\n"  # both are new to this session
    assert elapsed < 1.0, f"EXISTS {elapsed:.2f}s after the delivery was logged"
    raw.send(b"DONE\r\n")
    assert raw.line() == b"i OK Idle completed.\r\n"
    # The new message is there.
    reply = b"".join(raw.command("f", "FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]"))
    assert b"Subject: during idle" in reply
    raw.close()


def test_idle_reports_flags_and_expunges_of_another_session(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    deliver(imap_instance, user[0], "one")
    deliver(imap_instance, user[0], "two")
    raw = _login(imap_instance, user)
    raw.command("s", "SELECT INBOX")
    raw.send(b"i IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"
    other = connect(imap_instance, *user)
    other.select("INBOX")
    other.store("2", "+FLAGS", "(\\Flagged)")
    raw.sock.settimeout(5)
    assert re.match(rb"\* 2 FETCH \(FLAGS \(\\Flagged \\Recent\)\)\r\n", raw.line())
    other.store("1", "+FLAGS", "(\\Deleted)")
    other.expunge()
    lines = [raw.line(), raw.line()]
    assert b"* 1 EXPUNGE\r\n" in lines
    raw.send(b"DONE\r\n")
    assert raw.until_tagged("i")[-1] == b"i OK Idle completed.\r\n"
    other.logout()
    raw.close()


def test_select_of_the_selected_mailbox_starts_over(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    """SELECT of the mailbox already selected (answered without reopening it) reports
    what a new selection would: counts, \\Recent taken by the first SELECT, another
    session's changes, a delivery; EXAMINE then SELECT switch the mode; a deleted
    mailbox leaves nothing selected."""
    deliver(imap_instance, user[0], "one")
    deliver(imap_instance, user[0], "two")
    raw = _login(imap_instance, user)
    first = raw.command("s1", "SELECT INBOX")
    assert b"* 2 EXISTS\r\n" in first and b"* 2 RECENT\r\n" in first
    assert b"* OK [UNSEEN 1] First unseen.\r\n" in first
    other = connect(imap_instance, *user)
    other.select("INBOX")
    other.store("1", "+FLAGS", "(\\Seen $Later)")
    other.logout()
    deliver(imap_instance, user[0], "three")
    again = raw.command("s2", "SELECT INBOX")
    assert again[0] == b"* OK [CLOSED] Previous mailbox closed.\r\n"
    assert b"* 3 EXISTS\r\n" in again
    assert b"* 1 RECENT\r\n" in again  # only the delivery: 1 and 2 were taken before
    assert b"* OK [UNSEEN 2] First unseen.\r\n" in again
    assert any(line.startswith(b"* FLAGS (") and b"$Later" in line for line in again)
    assert again[-1].startswith(b"s2 OK [READ-WRITE]")
    fetched = raw.command("f", "FETCH 1:* (FLAGS)")
    assert fetched[:3] == [
        b"* 1 FETCH (FLAGS (\\Seen $Later))\r\n",
        b"* 2 FETCH (FLAGS ())\r\n",
        b"* 3 FETCH (FLAGS (\\Recent))\r\n",
    ]
    assert raw.command("r", "SEARCH RECENT")[0] == b"* SEARCH 3\r\n"
    assert raw.command("k", "SEARCH KEYWORD $Later")[0] == b"* SEARCH 1\r\n"
    third = raw.command("s3", "SELECT INBOX")
    assert b"* 0 RECENT\r\n" in third
    examined = raw.command("e", "EXAMINE INBOX")
    assert b"* 3 EXISTS\r\n" in examined and examined[-1].startswith(b"e OK [READ-ONLY]")
    assert raw.command("x", "STORE 1 +FLAGS (\\Flagged)")[-1].startswith(b"x NO")
    assert raw.command("s4", "SELECT INBOX")[-1].startswith(b"s4 OK [READ-WRITE]")
    assert raw.command("c", 'CREATE "Gone"')[-1].startswith(b"c OK")
    assert raw.command("s5", 'SELECT "Gone"')[-1].startswith(b"s5 OK")
    remover = connect(imap_instance, *user)
    remover.delete("Gone")
    remover.logout()
    assert raw.command("s6", 'SELECT "Gone"')[-1].startswith(b"s6 NO")
    assert raw.command("n", "FETCH 1 (FLAGS)")[-1].startswith(b"n BAD")  # nothing selected
    raw.close()


def test_idle_without_a_selected_mailbox_and_bad_done(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    raw = _login(imap_instance, user)
    raw.send(b"i IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"
    raw.send(b"NOT DONE\r\n")
    assert raw.line().startswith(b"i BAD")
    assert raw.command("n", "NOOP")[-1].startswith(b"n OK")
    raw.close()


def test_idle_keepalive_and_inactivity_timeout(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.e2e.test_imap_helpers import start_imap_instance, wait_log

    instance = start_imap_instance(
        tmp_path_factory.mktemp("keepalive"),
        "imap_idle_notify_interval = 1s\nimap_client_timeout = 2s\n",
    )
    try:
        user = add_user(instance)
        raw = _login(instance, user)
        raw.send(b"i IDLE\r\n")
        assert raw.line() == b"+ idling\r\n"
        raw.sock.settimeout(5)
        # IDLE outlives imap_client_timeout; keepalives go out meanwhile.
        for _ in range(3):
            assert raw.line() == b"* OK Still here\r\n"
        raw.send(b"DONE\r\n")
        assert raw.line().startswith(b"i OK")
        # Silent outside IDLE: disconnected.
        assert raw.line() == b"* BYE Disconnected for inactivity.\r\n"
        assert raw.line() == b""
        raw.close()
        wait_log(instance, r"imap\(.*\): Disconnected: Inactivity - no input for 2 secs in=")
        silent = RawClient(instance)  # before login too
        assert silent.line() == b"* BYE Disconnected for inactivity.\r\n"
        silent.close()
        wait_log(instance, r"imap-login\[\d+\]: Disconnected: Inactivity \(no auth attempts")
    finally:
        instance.daemon.stop()


def test_condstore(imap_instance: Instance, user: tuple[str, str]) -> None:
    for subject in ("a", "b", "c"):
        deliver(imap_instance, user[0], subject)
    raw = _login(imap_instance, user)
    reply = b"".join(raw.command("s", "SELECT INBOX (CONDSTORE)"))
    modseq = int(re.search(rb"\[HIGHESTMODSEQ (\d+)\]", reply).group(1))  # type: ignore[union-attr]
    reply = b"".join(raw.command("f", "FETCH 1:* (UID MODSEQ)"))
    assert len(re.findall(rb"MODSEQ \(\d+\)", reply)) == 3
    reply = b"".join(raw.command("st", "STORE 2 +FLAGS (\\Flagged)"))
    found = re.search(rb"\* 2 FETCH \(FLAGS \(\\Flagged \\Recent\) MODSEQ \((\d+)\)\)", reply)
    assert found is not None, reply
    changed = int(found.group(1))
    assert changed > modseq
    reply = b"".join(raw.command("c", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq})"))
    pattern = rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged \\Recent\) MODSEQ \(\d+\)\)"
    assert re.search(pattern, reply), reply
    assert b"* 1 FETCH" not in reply and b"* 3 FETCH" not in reply
    # UNCHANGEDSINCE: message 2 changed after modseq, so it is left alone.
    reply = b"".join(raw.command("u", f"STORE 1:3 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Seen)"))
    assert reply.endswith(b"u OK [MODIFIED 2] Conditional store failed.\r\n"), reply
    reply = b"".join(raw.command("se", f"SEARCH MODSEQ {changed}"))
    assert re.search(rb"\* SEARCH 1 2 3 \(MODSEQ \d+\)", reply), reply
    reply = b"".join(raw.command("st2", "STATUS Drafts (HIGHESTMODSEQ)"))
    assert re.search(rb'\* STATUS "Drafts" \(HIGHESTMODSEQ \d+\)', reply)
    raw.close()


def test_qresync_select_reports_vanished_and_changes(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    for subject in ("a", "b", "c", "d"):
        deliver(imap_instance, user[0], subject)
    raw = _login(imap_instance, user)
    raw.command("e", "ENABLE QRESYNC")
    reply = b"".join(raw.command("s", "SELECT INBOX"))
    validity = int(re.search(rb"\[UIDVALIDITY (\d+)\]", reply).group(1))  # type: ignore[union-attr]
    modseq = int(re.search(rb"\[HIGHESTMODSEQ (\d+)\]", reply).group(1))  # type: ignore[union-attr]
    raw.command("u", "UNSELECT")
    # Meanwhile, another client expunges 2 and flags 3.
    other = connect(imap_instance, *user)
    other.select("INBOX")
    other.store("2", "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.store("2", "+FLAGS", "(\\Answered)")  # UID 3, now number 2
    other.logout()
    reply = b"".join(raw.command("q", f"SELECT INBOX (QRESYNC ({validity} {modseq} 1:4))"))
    assert b"* VANISHED (EARLIER) 2\r\n" in reply, reply
    assert re.search(rb"\* 2 FETCH \(UID 3 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)", reply), reply
    assert b"* 3 EXISTS" in reply
    # UID FETCH ... (CHANGEDSINCE m VANISHED)
    reply = b"".join(raw.command("v", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)"))
    assert b"* VANISHED (EARLIER) 2\r\n" in reply
    # An expunge now comes as VANISHED, not EXPUNGE (RFC 7162 §3.2.10).
    raw.command("st", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    reply = b"".join(raw.command("x", "EXPUNGE"))
    assert b"* VANISHED 1\r\n" in reply and b"EXPUNGE\r\n" not in reply.replace(b"x OK", b"")
    # Another session's expunge reaches a QRESYNC client during UID FETCH, as VANISHED.
    other = connect(imap_instance, *user)
    other.select("INBOX")
    other.uid("STORE", "4", "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.logout()
    reply = b"".join(raw.command("uf", "UID FETCH 1:* (FLAGS)"))
    assert b"* VANISHED 4\r\n" in reply, reply
    reply = b"".join(raw.command("ff", "FETCH 1:* (FLAGS)"))
    assert b"VANISHED" not in reply
    # A wrong UIDVALIDITY: a plain SELECT.
    raw.command("u2", "UNSELECT")
    reply = b"".join(raw.command("w", f"SELECT INBOX (QRESYNC ({validity + 1} {modseq}))"))
    assert b"VANISHED" not in reply and b"w OK" in reply
    raw.close()


def test_enable_imap4rev2_changes_responses(imap_instance: Instance, user: tuple[str, str]) -> None:
    deliver(imap_instance, user[0], "rev2")
    raw = _login(imap_instance, user)
    reply = raw.command("e", "ENABLE IMAP4rev2")
    assert reply[0] == b"* ENABLED IMAP4rev2\r\n"
    reply = b"".join(raw.command("s", "SELECT INBOX"))
    assert b"RECENT" not in reply
    assert b'* LIST () "." "INBOX"\r\n' in reply
    reply = b"".join(raw.command("f", "FETCH 1 FLAGS"))
    assert b"\\Recent" not in reply
    reply = raw.command("se", "SEARCH ALL")
    assert reply[0] == b'* ESEARCH (TAG "se") ALL 1\r\n'
    raw.close()


def test_uids_survive_a_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.e2e.daemon import RoostDaemon
    from tests.e2e.test_imap_helpers import start_imap_instance

    instance = start_imap_instance(tmp_path_factory.mktemp("restart"))
    user = add_user(instance)
    try:
        for subject in ("a", "b", "c"):
            deliver(instance, user[0], subject)
        client = connect(instance, *user)
        client.select("INBOX")
        client.store("2", "+FLAGS", "(\\Deleted)")
        client.expunge()
        before = client.status("INBOX", "(UIDVALIDITY UIDNEXT MESSAGES)")[1][0]
        uids = client.uid("SEARCH", "ALL")[1]
        client.logout()
    finally:
        instance.daemon.stop()
    instance.daemon = RoostDaemon(instance.directory / "main.cf")
    instance.daemon.wait_ready()
    try:
        client = connect(instance, *user)
        assert client.status("INBOX", "(UIDVALIDITY UIDNEXT MESSAGES)")[1][0] == before
        client.select("INBOX")
        assert client.uid("SEARCH", "ALL")[1] == uids == [b"1 3"]
        client.logout()
    finally:
        instance.daemon.stop()


def test_graceful_stop_says_bye(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.e2e.test_imap_helpers import start_imap_instance

    instance = start_imap_instance(tmp_path_factory.mktemp("stop"))
    user = add_user(instance)
    raw = _login(instance, user)
    raw.command("s", "SELECT INBOX")
    raw.send(b"i IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"
    instance.daemon.stop()
    raw.sock.settimeout(10)
    assert raw.line() == b"* BYE Server shutting down.\r\n"
    raw.close()
    assert re.search(r"imap\(.*\): Disconnected: Server shutting down in=", instance.log())


def test_reload_keeps_sessions_and_applies_to_new_ones(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import signal

    from tests.e2e.test_imap_helpers import start_imap_instance, wait_log

    instance = start_imap_instance(tmp_path_factory.mktemp("reload"))
    try:
        user = add_user(instance)
        raw = _login(instance, user)
        raw.command("s", "SELECT INBOX")
        main_cf = instance.directory / "main.cf"
        main_cf.write_text(main_cf.read_text() + "login_greeting = Reloaded.\n")
        instance.daemon.signal(signal.SIGHUP)
        wait_log(instance, r"reload -- version")
        assert raw.command("n", "NOOP")[-1].startswith(b"n OK")
        fresh = RawClient(instance)
        assert fresh.greeting.endswith(b"] Reloaded.\r\n")
        fresh.close()
        raw.close()
    finally:
        instance.daemon.stop()

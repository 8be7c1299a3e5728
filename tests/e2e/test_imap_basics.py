"""The IMAP server end to end with imaplib: login, TLS, capabilities, mailboxes, messages."""

from __future__ import annotations

import email.utils
import imaplib
import re
import time
from pathlib import Path

import pytest

from tests.e2e import test_imap_helpers
from tests.e2e.instance import Instance, client_tls
from tests.e2e.test_imap_helpers import (
    RawClient,
    add_user,
    connect,
    connect_tls,
    deliver,
    maildir,
    wait_log,
)

imap_instance = test_imap_helpers.imap_instance

MESSAGE = (
    b"From: Ann Example <ann@example.org>\r\n"
    b"To: Bob <bob@example.com>, carol@example.com\r\n"
    b"Cc: dave@example.net\r\n"
    b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from the test\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0100\r\n"
    b"Message-ID: <multi.1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Sch=C3=B6ne Gr=C3=BC=C3=9Fe, the word zebra is here.\r\n"
    b"--XYZ\r\n"
    b"Content-Type: application/octet-stream; name=data.bin\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=data.bin\r\n"
    b"\r\n"
    b"AAECAwQ=\r\n"
    b"--XYZ--\r\n"
)


@pytest.fixture
def user(imap_instance: Instance) -> tuple[str, str]:
    return add_user(imap_instance)


def _ok(result: tuple[str, list[object]]) -> list[object]:
    typ, data = result
    assert typ == "OK", data
    return data


# --- greeting, capabilities, login ---------------------------------------------------------


def test_greeting_advertises_capabilities_and_login_shows_more(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    client = imaplib.IMAP4("127.0.0.1", imap_instance.ports["imap"], timeout=30)
    assert client.welcome.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    assert client.welcome.endswith(b"] roost ready.")
    before = set(client.capabilities)
    assert {"STARTTLS", "AUTH=PLAIN", "AUTH=LOGIN", "SASL-IR", "ID", "ENABLE", "IDLE"} <= before
    assert "LITERAL+" in before
    assert "LOGINDISABLED" not in before  # 127.0.0.1 to 127.0.0.1 is secured, like Dovecot
    typ, data = client.login(*user)
    assert typ == "OK"
    assert b"[CAPABILITY IMAP4rev1 IMAP4rev2" in data[0]
    after = set(_ok(client.capability())[0].decode().split())  # type: ignore[union-attr]
    expected = {
        *("NAMESPACE", "UNSELECT", "UIDPLUS", "MOVE", "CHILDREN", "SPECIAL-USE"),
        *("CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "ESEARCH", "SEARCHRES"),
        *("CONDSTORE", "QRESYNC", "UTF8=ACCEPT", "QUOTA", "QUOTA=RES-STORAGE", "STATUS=SIZE"),
        *("BINARY", "MULTIAPPEND", "IDLE", "ID", "ENABLE", "LITERAL+"),
    }
    assert expected <= after
    assert "STARTTLS" not in after and "AUTH=PLAIN" not in after
    assert any(name.startswith("APPENDLIMIT=") for name in after)
    client.logout()
    wait_log(
        imap_instance,
        rf"roost/imap-login\[\d+\]: Login: user=<{re.escape(user[0])}>, method=PLAIN, "
        r"rip=127\.0\.0\.1, lip=127\.0\.0\.1, mpid=\d+, secured, session=<[^>]+>",
    )
    wait_log(
        imap_instance,
        rf"roost/imap\[\d+\]: imap\({re.escape(user[0])}\): Disconnected: Logged out "
        r"in=\d+ out=\d+ deleted=0 expunged=0",
    )


def test_plaintext_login_is_disabled_on_an_unsecured_connection(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    # From 127.0.0.2 to 127.0.0.1: neither TLS nor the same address.
    raw = RawClient(imap_instance, source="127.0.0.2")
    assert b"LOGINDISABLED" in raw.greeting and b"AUTH=" not in raw.greeting
    reply = raw.command("a1", f'LOGIN "{user[0]}" "{user[1]}"')
    assert reply[-1].startswith(b"a1 NO [PRIVACYREQUIRED]")
    reply = raw.command("a2", "AUTHENTICATE PLAIN")
    assert reply[-1].startswith(b"a2 NO [PRIVACYREQUIRED]")
    raw.starttls()
    caps = raw.command("a3", "CAPABILITY")
    assert b"AUTH=PLAIN" in caps[0] and b"LOGINDISABLED" not in caps[0]
    assert b"STARTTLS" not in caps[0]
    reply = raw.command("a4", f'LOGIN "{user[0]}" "{user[1]}"')
    assert reply[-1].startswith(b"a4 OK [CAPABILITY")
    raw.command("a5", "LOGOUT")
    raw.close()
    wait_log(
        imap_instance,
        rf"Login: user=<{re.escape(user[0])}>, method=PLAIN, rip=127\.0\.0\.2, "
        r"lip=127\.0\.0\.1, mpid=\d+, TLS",
    )


def test_starttls_discards_pipelined_plaintext(imap_instance: Instance) -> None:
    raw = RawClient(imap_instance)
    # CVE-2011-0411: a command injected behind STARTTLS must not run after the handshake.
    raw.send(b"t1 STARTTLS\r\nt2 CAPABILITY\r\n")
    assert raw.line().startswith(b"t1 OK")
    raw.sock = client_tls().wrap_socket(raw.sock, server_hostname="mx.roost.test")
    raw.send(b"t3 NOOP\r\n")
    reply = raw.until_tagged("t3")
    assert not any(line.startswith(b"t2 ") for line in reply), reply
    assert reply[-1].startswith(b"t3 OK")
    raw.close()


def test_imaps_implicit_tls_and_authenticate_plain_with_initial_response(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    import base64

    client = imaplib.IMAP4_SSL(
        "127.0.0.1", imap_instance.ports["imaps"], ssl_context=client_tls(), timeout=30
    )
    assert "STARTTLS" not in client.capabilities
    token = base64.b64encode(f"\0{user[0]}\0{user[1]}".encode())
    typ, _ = client._simple_command("AUTHENTICATE", "PLAIN", token.decode())  # SASL-IR
    assert typ == "OK"
    client.logout()
    wait_log(imap_instance, rf"Login: user=<{re.escape(user[0])}>, method=PLAIN, .*, TLS, ")


def test_big_responses_over_tls_arrive_whole_and_in_order(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    # Over TLS the session writes in pieces of TLS_WRITE_SIZE (views of one buffer):
    # every octet must arrive once, in order, on 993 and after STARTTLS on 143.
    messages = [
        b"Subject: big %d\r\n\r\n" % number
        + b"".join(b"%07d line of message %d\r\n" % (line, number) for line in range(9000))
        for number in range(3)
    ]  # about 250 KB each: a FETCH batch of many TLS_WRITE_SIZE pieces
    client = connect_tls(imap_instance, *user)
    for message in messages:
        _ok(client.append("INBOX", None, None, message))
    client.select("INBOX", readonly=True)
    data = _ok(client.fetch("1:3", "(BODY.PEEK[])"))
    assert [part[1] for part in data if isinstance(part, tuple)] == messages
    client.logout()
    plain = imaplib.IMAP4("127.0.0.1", imap_instance.ports["imap"], timeout=30)
    plain.starttls(client_tls())
    plain.login(*user)
    plain.select("INBOX", readonly=True)
    data = _ok(plain.fetch("2", "(BODY.PEEK[])"))
    assert data[0][1] == messages[1]  # type: ignore[index]
    plain.logout()


def test_authenticate_login_mechanism_with_challenges(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    client = imaplib.IMAP4("127.0.0.1", imap_instance.ports["imap"], timeout=30)
    answers = iter([user[0].encode(), user[1].encode()])
    typ, _ = client.authenticate("LOGIN", lambda challenge: next(answers))
    assert typ == "OK"
    client.logout()


def test_failed_login_is_authenticationfailed_and_logged(imap_instance: Instance) -> None:
    # Another address, so the throttle's delay does not slow the other tests.
    raw = RawClient(imap_instance, source="127.0.0.9")
    raw.starttls()
    reply = raw.command("f1", 'LOGIN "nobody@virtual.test" "wrong"')
    assert reply[-1] == b"f1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    raw.command("f2", "LOGOUT")
    raw.close()
    wait_log(
        imap_instance,
        r"roost/imap-login\[\d+\]: Disconnected \(auth failed, 1 attempts in \d+ secs\): "
        r"user=<nobody@virtual\.test>, method=PLAIN, rip=127\.0\.0\.9, lip=127\.0\.0\.1, TLS",
    )


def test_authenticate_cancelled_and_unknown_mechanism(imap_instance: Instance) -> None:
    raw = RawClient(imap_instance)
    reply = raw.command("c1", "AUTHENTICATE CRAM-NOPE")
    assert reply[-1].startswith(b"c1 NO")
    raw.send(b"c2 AUTHENTICATE PLAIN\r\n")
    assert raw.line() == b"+ \r\n"
    raw.send(b"*\r\n")
    assert raw.line().startswith(b"c2 BAD")
    assert raw.command("c3", "NOOP")[-1].startswith(b"c3 OK")
    raw.close()


def test_userip_connection_limit(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.e2e.test_imap_helpers import start_imap_instance

    instance = start_imap_instance(
        tmp_path_factory.mktemp("imaplimit"),
        "mail_max_userip_connections = 2\nimap_client_connection_count_limit = 4\n",
    )
    try:
        login, password = add_user(instance)
        first, second = connect(instance, login, password), connect(instance, login, password)
        third = imaplib.IMAP4("127.0.0.1", instance.ports["imap"], timeout=30)
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE.*mail_max_userip"):
            third.login(login, password)
        fourth = RawClient(instance)
        fifth = RawClient(instance)  # the fifth connection from 127.0.0.1
        assert fifth.greeting == b"* BYE Too many connections from your address.\r\n"
        fifth.close()
        fourth.close()
        first.logout()
        time.sleep(0.2)
        third.login(login, password)  # a slot is free again
        for client in (second, third):
            client.logout()
    finally:
        instance.daemon.stop()


def test_mbox_users_are_not_served_yet(imap_instance: Instance, tmp_path: Path) -> None:
    from roost.auth.passwdfile import hash_password

    login = f"mboxer{int(time.time() * 1000) % 100000}@virtual.test"
    with (imap_instance.directory / "users").open("a") as handle:
        hashed = hash_password("mbox pw", "SHA256-CRYPT")
        handle.write(f"{login}:{hashed}::::::userdb_mail=mbox:{tmp_path}:INBOX={tmp_path}/in\n")
    client = imaplib.IMAP4("127.0.0.1", imap_instance.ports["imap"], timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\]"):
        client.login(login, "mbox pw")
    client.logout()


# --- bad input -----------------------------------------------------------------------------------


def test_bad_commands_get_bad_and_the_session_goes_on(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    raw = RawClient(imap_instance)
    assert raw.command("b1", "FROBNICATE")[-1].startswith(b"b1 BAD")
    assert raw.command("b2", "SELECT INBOX")[-1].startswith(b"b2 BAD")  # not logged in
    raw.send(b"\r\n")  # an empty line is ignored
    raw.send(b"garbage without a tag at all((\r\n")
    assert raw.line().startswith(b"garbage BAD") or raw.buffer == b""
    assert raw.command("b3", f'LOGIN "{user[0]}" "{user[1]}"')[-1].startswith(b"b3 OK")
    assert raw.command("b4", "FETCH 1 FLAGS")[-1].startswith(b"b4 BAD")  # not selected
    raw.command("b5", "SELECT INBOX")
    assert raw.command("b6", "FETCH 99 FLAGS")[-1].startswith(b"b6 BAD")
    assert raw.command("b7", "FETCH 1:* (FLAGS")[-1].startswith(b"b7 BAD")
    assert raw.command("b8", "SEARCH CHARSET KOI8-R ALL")[-1].startswith(b"b8 NO [BADCHARSET")
    assert raw.command("b9", "NOOP")[-1].startswith(b"b9 OK")
    raw.close()


def test_too_many_bad_commands_end_the_session(imap_instance: Instance) -> None:
    raw = RawClient(imap_instance)
    for number in range(19):
        assert raw.command(f"x{number}", "BOGUS")[-1].startswith(f"x{number} BAD".encode())
    raw.send(b"last BOGUS\r\n")
    assert raw.line().startswith(b"last BAD")
    assert raw.line() == b"* BYE Too many invalid IMAP commands.\r\n"
    assert raw.line() == b""
    raw.close()


def test_long_line_is_refused(imap_instance: Instance) -> None:
    raw = RawClient(imap_instance)
    raw.send(b"l1 NOOP " + b"x" * 70000 + b"\r\n")
    assert raw.line().startswith(b"l1 BAD")
    assert raw.command("l2", "NOOP")[-1].startswith(b"l2 OK")
    raw.close()


def test_client_sending_tiny_random_pieces(imap_instance: Instance, user: tuple[str, str]) -> None:
    import random

    deliver(imap_instance, user[0], "pieces")
    script = (
        f'p1 LOGIN {{{len(user[0])}+}}\r\n{user[0]} "{user[1]}"\r\n'
        "p2 SELECT INBOX\r\n"
        "p3 FETCH 1 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n"
        "p4 APPEND INBOX (\\Flagged) {5+}\r\nhello\r\n"
        "p5 UID SEARCH ALL\r\n"
        "p6 LOGOUT\r\n"
    ).encode()
    raw = RawClient(imap_instance)
    rng = random.Random(42)
    position = 0
    while position < len(script):
        size = rng.randint(1, 7)
        raw.send(script[position : position + size])
        position += size
        time.sleep(0.001)
    replies: list[bytes] = []
    for tag in ("p1", "p2", "p3", "p4", "p5", "p6"):
        replies += raw.until_tagged(tag)
        assert replies[-1].startswith(f"{tag} OK".encode()), replies
    text = b"".join(replies)
    assert b"Subject: pieces" in text
    assert re.search(rb"\* SEARCH 1 2\r\n", text)
    raw.close()


# --- mailboxes -------------------------------------------------------------------------------


def test_special_use_mailboxes_created_at_first_login(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    client = connect(imap_instance, *user)
    listing = b"\n".join(_ok(client.list()))  # type: ignore[arg-type]
    for name, attribute in [
        (b"Drafts", b"\\Drafts"),
        (b"Sent", b"\\Sent"),
        (b"Trash", b"\\Trash"),
        (b"Junk", b"\\Junk"),
        (b"Archive", b"\\Archive"),
    ]:
        assert re.search(rb"\(.*" + re.escape(attribute) + rb".*\) \".\" \"" + name + b'"', listing)
    subscribed = b"\n".join(_ok(client.lsub()))  # type: ignore[arg-type]
    assert b'"Sent"' in subscribed and b'"Trash"' in subscribed
    typ, data = client._simple_command("LIST", "(SPECIAL-USE)", '""', '"*"')
    listed = client._untagged_response(typ, data, "LIST")[1]
    assert len(listed) == 5
    client.logout()


def test_create_delete_rename_subscribe(imap_instance: Instance, user: tuple[str, str]) -> None:
    client = connect(imap_instance, *user)
    _ok(client.create("Projects"))
    _ok(client.create("Projects.Alpha"))
    _ok(client.create("Entwürfe".encode("utf-7").decode().replace("+", "&")))
    typ, data = client.create("Projects")
    assert typ == "NO" and b"[ALREADYEXISTS]" in data[0]
    _ok(client.rename("Projects", "Work"))
    names = b"\n".join(_ok(client.list()))  # type: ignore[arg-type]
    assert b'"Work.Alpha"' in names and b'"Projects' not in names
    assert b'(\\HasChildren) "." "Work"' in names
    assert b"&APw-" in names  # modified UTF-7 on the wire
    typ, data = client.rename("Nope", "Other")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    typ, data = client.delete("INBOX")
    assert typ == "NO" and b"[CANNOT]" in data[0]
    _ok(client.subscribe("Work.Alpha"))
    subscribed = b"\n".join(d for d in _ok(client.lsub('""', "Work.*")) if d)  # type: ignore[misc]
    assert b'"Work.Alpha"' in subscribed
    _ok(client.unsubscribe("Work.Alpha"))
    _ok(client.delete("Work.Alpha"))
    typ, data = client.delete("Work.Alpha")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    # CREATE-SPECIAL-USE (RFC 6154)
    typ, data = client._simple_command("CREATE", '"Stuff"', "(USE (\\Flagged))")
    assert typ == "OK", data
    typ, data = client._simple_command("CREATE", '"Stuff2"', "(USE (\\Bogus))")
    assert typ == "NO"
    client.logout()


def test_rename_inbox_moves_its_messages(imap_instance: Instance, user: tuple[str, str]) -> None:
    deliver(imap_instance, user[0], "one")
    deliver(imap_instance, user[0], "two")
    client = connect(imap_instance, *user)
    _ok(client.rename("INBOX", "Old-Inbox"))
    assert _ok(client.select("INBOX")) == [b"0"]
    assert _ok(client.select("Old-Inbox")) == [b"2"]
    client.logout()


def test_list_extended_and_list_status(imap_instance: Instance, user: tuple[str, str]) -> None:
    deliver(imap_instance, user[0], "counted")
    client = connect(imap_instance, *user)
    _ok(client.create("Lists.Python"))
    _ok(client.subscribe("Lists.Python"))
    _ok(client.subscribe("Gone.Away"))
    # LIST (SUBSCRIBED) with RECURSIVEMATCH: "Lists" is not subscribed but a child is.
    typ, data = client._simple_command(
        "LIST", "(SUBSCRIBED RECURSIVEMATCH)", '""', '"%"', "RETURN", "(CHILDREN)"
    )
    lines = client._untagged_response(typ, data, "LIST")[1]
    text = b"\n".join(line for line in lines if isinstance(line, bytes))
    assert b'"Lists" ("CHILDINFO" ("SUBSCRIBED"))' in text
    assert b'"Gone" ("CHILDINFO" ("SUBSCRIBED"))' in text
    typ, data = client._simple_command("LIST", "(SUBSCRIBED)", '""', '"*"')
    lines = client._untagged_response(typ, data, "LIST")[1]
    text = b"\n".join(line for line in lines if isinstance(line, bytes))
    assert b'(\\NonExistent \\Subscribed) "." "Gone.Away"' in text
    # LIST-STATUS (RFC 5819): a STATUS after each selectable mailbox.
    typ, data = client._simple_command(
        "LIST", '""', '"*"', "RETURN", "(STATUS (MESSAGES UNSEEN UIDNEXT SIZE))"
    )
    statuses = client.untagged_responses.pop("STATUS", [])
    client.untagged_responses.pop("LIST", None)
    inbox = [s for s in statuses if s.startswith(b'"INBOX"')]
    assert inbox and re.match(rb'"INBOX" \(MESSAGES 1 UNSEEN 1 UIDNEXT 2 SIZE \d+\)', inbox[0])
    assert not any(s.startswith(b'"Lists"') for s in statuses)  # \Noselect: no STATUS
    # Several patterns at once.
    typ, data = client._simple_command("LIST", '""', '("INBOX" "Lists.*")')
    lines = client._untagged_response(typ, data, "LIST")[1]
    assert len(lines) == 2
    # LIST "" "" gives the delimiter.
    assert _ok(client.list('""', '""')) == [b'(\\Noselect) "." ""']
    # % stops at the delimiter.
    text = b"\n".join(_ok(client.list('""', "Lists.%")))  # type: ignore[arg-type]
    assert b'"Lists.Python"' in text
    client.logout()


def test_status_namespace_id_enable_quota(imap_instance: Instance, user: tuple[str, str]) -> None:
    deliver(imap_instance, user[0], "status")
    client = connect(imap_instance, *user)
    typ, data = client.enable("CONDSTORE UTF8=ACCEPT")
    assert typ == "OK"
    assert client.untagged_responses.pop("ENABLED") == [b"CONDSTORE UTF8=ACCEPT"]
    status = _ok(
        client.status(
            "INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE HIGHESTMODSEQ)"
        )
    )[0]
    assert re.match(
        rb'"INBOX" \(MESSAGES 1 RECENT 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1 DELETED 0 '
        rb"SIZE \d+ HIGHESTMODSEQ \d+\)",
        status,  # type: ignore[arg-type]
    )
    typ, data = client.status("Missing", "(MESSAGES)")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    assert _ok(client.namespace()) == [b'(("" ".")) NIL NIL']
    typ, data = client.xatom("ID", '("name" "imaplib" "version" "3")')
    assert typ == "OK"
    assert client.untagged_responses.pop("ID") == [b'("name" "roost")']
    typ, data = client.enable("CONDSTORE")  # already: nothing new is enabled
    assert client.untagged_responses.pop("ENABLED") in ([b""], [None])
    typ, data = client.getquotaroot("INBOX")
    assert typ == "OK"  # no quota for this user: no root
    typ, data = client.getquota('"User quota"')
    assert typ == "NO"
    client.logout()


def test_quota_of_a_user_with_a_quota(imap_instance: Instance) -> None:
    from roost.auth.passwdfile import hash_password

    login = f"quota{int(time.time() * 1000) % 100000}@virtual.test"
    with (imap_instance.directory / "users").open("a") as handle:
        hashed = hash_password("quota pw", "SHA256-CRYPT")
        handle.write(f"{login}:{hashed}::::::userdb_quota_rule=*:storage=10k\n")
    client = connect(imap_instance, login, "quota pw")
    typ, data = client.getquotaroot("INBOX")
    assert typ == "OK", data
    assert data[0] == [b'"INBOX" "User quota"']
    assert re.match(rb'"User quota" \(STORAGE \d+ 10\)', data[1][0])
    big = b"Subject: big\r\n\r\n" + b"x" * 20000 + b"\r\n"
    typ, data = client.append("INBOX", None, None, big)
    assert typ == "NO" and b"[OVERQUOTA]" in data[0]
    client.logout()


def test_utf8_accept_mailbox_names(imap_instance: Instance, user: tuple[str, str]) -> None:
    raw = RawClient(imap_instance)
    raw.command("u0", f'LOGIN "{user[0]}" "{user[1]}"')
    name = "Entwürfe".encode()
    reply = raw.command("u1", b"CREATE {%d+}\r\n%s" % (len(name), name))
    assert reply[-1].startswith(b"u1 BAD")  # 8-bit names need UTF8=ACCEPT
    assert raw.command("u1", 'CREATE "Entw&APw-rfe"')[-1].startswith(b"u1 OK")
    reply = b"".join(raw.command("u2", 'LIST "" "Entw*"'))
    assert b'"Entw&APw-rfe"' in reply  # modified UTF-7 by default
    assert raw.command("u3", "ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT\r\n"
    reply = b"".join(raw.command("u4", 'LIST "" "Entw*"'))
    assert name in reply and b"&APw-" not in reply
    assert raw.command("u5", b"SELECT {%d+}\r\n%s" % (len(name), name))[-1].startswith(b"u5 OK")
    raw.close()


# --- messages ------------------------------------------------------------------------------------


def test_select_examine_and_unselect(imap_instance: Instance, user: tuple[str, str]) -> None:
    deliver(imap_instance, user[0], "first")
    deliver(imap_instance, user[0], "second")
    raw = RawClient(imap_instance)
    raw.command("s0", f'LOGIN "{user[0]}" "{user[1]}"')
    reply = b"".join(raw.command("s1", "EXAMINE INBOX"))
    assert b"* 2 EXISTS\r\n" in reply and b"* 2 RECENT\r\n" in reply
    assert b"* OK [PERMANENTFLAGS ()]" in reply
    assert re.search(rb"\* OK \[UIDVALIDITY \d+\]", reply)
    assert b"* OK [UIDNEXT 3]" in reply
    assert b"* OK [UNSEEN 1]" in reply
    assert b"s1 OK [READ-ONLY]" in reply
    reply = b"".join(raw.command("s2", "SELECT INBOX"))
    assert b"* OK [CLOSED]" in reply
    assert b"* 2 RECENT" in reply  # EXAMINE did not claim \Recent: SELECT does
    assert b"\\*)] Flags permitted." in reply and b"s2 OK [READ-WRITE]" in reply
    assert raw.command("s3", "UNSELECT")[-1].startswith(b"s3 OK")
    assert raw.command("s4", "FETCH 1 FLAGS")[-1].startswith(b"s4 BAD")
    raw.close()


def test_fetch_every_item(imap_instance: Instance, user: tuple[str, str]) -> None:
    deliver(imap_instance, user[0], raw=MESSAGE)
    client = connect(imap_instance, *user)
    client.select("INBOX")
    data = _ok(client.fetch("1", "(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)"))
    line = data[0]
    assert isinstance(line, bytes)
    assert re.search(rb"UID 1 FLAGS \(\\Recent\) INTERNALDATE \"[ 0-9]{2}-\w{3}-\d{4} ", line)
    assert b'ENVELOPE ("Mon, 01 Jan 2024 10:00:00 +0100" "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from' in line
    assert b'(("Ann Example" NIL "ann" "example.org"))' in line
    data = _ok(client.fetch("1", "(BODY BODYSTRUCTURE)"))
    line = data[0]
    assert isinstance(line, bytes)
    assert b'BODY (("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable"' in line
    assert b'"mixed" ("boundary" "XYZ") NIL NIL NIL)' in line  # BODYSTRUCTURE extension
    data = _ok(client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[1]<0.10>)"))
    assert data[0][1] == (  # type: ignore[index]
        b"From: Ann Example <ann@example.org>\r\n"
        b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from the test\r\n\r\n"
    )
    assert data[1][1] == b"Sch=C3=B6n"  # type: ignore[index]
    data = _ok(client.fetch("1", "(BODY.PEEK[2.MIME] BINARY.PEEK[2] BINARY.SIZE[2])"))
    assert data[0][1].startswith(b"Content-Type: application/octet-stream")  # type: ignore[index]
    assert data[1][1] == b"\x00\x01\x02\x03\x04"  # type: ignore[index]
    assert b"BINARY.SIZE[2] 5" in data[2]  # type: ignore[operator]
    assert b"\\Seen" not in b"".join(_ok(client.fetch("1", "FLAGS")))  # type: ignore[arg-type]
    data = _ok(client.fetch("1", "(RFC822.HEADER RFC822.TEXT)"))
    assert b"\r\nFrom: Ann Example" in data[0][1]  # type: ignore[index]
    assert data[0][1].endswith(b"\r\n\r\n")  # type: ignore[index]
    assert data[1][1].startswith(b"preamble")  # type: ignore[index]
    # RFC822.TEXT set \Seen and the FETCH said so.
    assert b"FLAGS (\\Seen \\Recent)" in b"".join(
        x if isinstance(x, bytes) else x[0]
        for x in data  # type: ignore[misc]
    )
    data = _ok(client.fetch("1", "(RFC822)"))
    assert data[0][1].endswith(b"--XYZ--\r\n")  # type: ignore[index]
    data = _ok(client.fetch("1", "FAST"))
    assert re.search(rb"FLAGS \(\\Seen \\Recent\) INTERNALDATE .* RFC822.SIZE \d+", data[0])  # type: ignore[arg-type]
    data = _ok(client.fetch("1", "ALL"))
    assert b"ENVELOPE" in data[0]  # type: ignore[operator]
    data = _ok(client.fetch("1", "FULL"))
    assert b"BODY (" in data[0]  # type: ignore[operator]
    data = _ok(client.fetch("1", "(BODY[TEXT]<5.8> BODY[HEADER])"))
    assert data[0][0].endswith(b"BODY[TEXT]<5> {8}")  # type: ignore[index]
    assert data[0][1] == b"ble\r\n--X"  # type: ignore[index]
    client.logout()


def test_fetch_body_sets_seen_but_not_in_examine(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    deliver(imap_instance, user[0], "seen")
    client = connect(imap_instance, *user)
    client.select("INBOX", readonly=True)
    data = _ok(client.fetch("1", "(BODY[])"))
    assert b"\\Seen" not in data[0][0]  # type: ignore[index]
    client.select("INBOX")
    data = _ok(client.fetch("1", "(BODY[TEXT])"))
    flat = b" ".join(part if isinstance(part, bytes) else part[0] for part in data)  # type: ignore[misc]
    assert b"FLAGS (\\Seen" in flat
    data = _ok(client.fetch("1", "FLAGS"))
    assert b"\\Seen" in data[0]  # type: ignore[operator]
    client.logout()


def test_search_keys(imap_instance: Instance, user: tuple[str, str]) -> None:
    client = connect(imap_instance, *user)
    client.select("INBOX")
    # A sync after each delivery: UIDs in delivery order (files found together are
    # numbered in the order of their names, which need not be the delivery order).
    deliver(imap_instance, user[0], raw=MESSAGE)
    client.noop()
    deliver(imap_instance, user[0], "plain one", "nothing special\r\n")
    client.noop()
    deliver(imap_instance, user[0], "plain two", "zebra crossing\r\n")
    client.noop()
    client.store("2", "+FLAGS", "(\\Flagged)")
    assert _ok(client.search(None, "ALL")) == [b"1 2 3"]
    assert _ok(client.search(None, "FLAGGED")) == [b"2"]
    assert _ok(client.search(None, "NOT", "FLAGGED")) == [b"1 3"]
    assert _ok(client.search(None, "OR", "FLAGGED", "SUBJECT", '"two"')) == [b"2 3"]
    assert _ok(client.search(None, "BODY", "zebra")) == [b"1 3"]
    assert _ok(client.search(None, "TEXT", "plain")) == [b"2 3"]
    assert _ok(client.search(None, "FROM", "ann")) == [b"1"]
    assert _ok(client.search(None, "HEADER", "Message-ID", "multi.1")) == [b"1"]
    assert _ok(client.search(None, "SENTON", "1-Jan-2024")) == [b"1"]
    assert _ok(client.search(None, "LARGER", "100000")) == [b""]
    assert _ok(client.search(None, "2:*", "UNFLAGGED")) == [b"3"]
    assert _ok(client.uid("SEARCH", "UID", "2:3")) == [b"2 3"]
    # CHARSET UTF-8 with a literal: the decoded subject and body.
    client.literal = "Grüße".encode()
    assert _ok(client.search("UTF-8", "SUBJECT")) == [b"1"]
    client.literal = "Schöne".encode()
    assert _ok(client.search("UTF-8", "BODY")) == [b"1"]
    # ESEARCH (RFC 4731) and SEARCHRES (RFC 5182).
    typ, data = client._simple_command("SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "ALL")
    assert typ == "OK"
    esearch = client.untagged_responses.pop("ESEARCH")
    assert esearch[0].endswith(b"MIN 1 MAX 3 COUNT 3 ALL 1:3")
    typ, data = client._simple_command("UID", "SEARCH", "RETURN", "(SAVE)", "FLAGGED")
    assert typ == "OK" and "ESEARCH" not in client.untagged_responses
    data = _ok(client.fetch("$", "(UID)"))
    assert data == [b"2 (UID 2)"]
    typ, _ = client._simple_command("SEARCH", "RETURN", "(COUNT)", "NOT", "$")
    assert client.untagged_responses.pop("ESEARCH")[0].endswith(b"COUNT 2")
    client.logout()


def test_store_and_flags(imap_instance: Instance, user: tuple[str, str]) -> None:
    deliver(imap_instance, user[0], "flags")
    client = connect(imap_instance, *user)
    client.select("INBOX")
    data = _ok(client.store("1", "+FLAGS", "(\\Flagged $Important)"))
    assert re.search(rb"FLAGS \(.*\\Flagged .*\$Important\)", data[0])  # type: ignore[arg-type]
    data = _ok(client.store("1", "-FLAGS", "(\\Flagged)"))
    assert b"\\Flagged" not in data[0]  # type: ignore[operator]
    data = _ok(client.store("1", "FLAGS.SILENT", "(\\Answered)"))
    assert data == [None]
    data = _ok(client.uid("STORE", "1", "+FLAGS", "(\\Draft)"))
    assert b"UID 1" in data[0] and b"\\Draft" in data[0]  # type: ignore[operator]
    # The new keyword was announced with * FLAGS (RFC 9051 §7.3.5).
    assert any(b"$Important" in flags for flags in client.untagged_responses.get("FLAGS", []))
    with pytest.raises(imaplib.IMAP4.error, match="Invalid messageset"):
        client.store("5", "+FLAGS", "(\\Seen)")
    client.select("INBOX", readonly=True)
    typ, data = client.store("1", "+FLAGS", "(\\Seen)")
    assert typ == "NO"
    client.logout()
    # The flags are in the Maildir file name, as Dovecot keeps them.
    names = [p.name for p in (maildir(imap_instance, user[0]) / "cur").iterdir()]
    assert any(name.endswith(":2,DR") for name in names), names


def test_append_with_flags_and_date(imap_instance: Instance, user: tuple[str, str]) -> None:
    client = connect(imap_instance, *user)
    date = email.utils.parsedate_to_datetime("Tue, 02 Jan 2024 03:04:05 +0000")
    typ, data = client.append(
        "Drafts", "(\\Draft \\Seen)", imaplib.Time2Internaldate(date.timestamp()), MESSAGE
    )
    assert typ == "OK"
    match = re.match(rb"\[APPENDUID (\d+) 1\] Append completed\.", data[0])
    assert match, data
    typ, data = client.append("Nowhere", None, None, MESSAGE)
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    status = _ok(client.status("Drafts", "(UIDVALIDITY MESSAGES)"))[0]
    assert f"UIDVALIDITY {match.group(1).decode()}".encode() in status  # type: ignore[operator]
    client.select("Drafts")
    data = _ok(client.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE)"))
    assert b"FLAGS (\\Seen \\Draft \\Recent)" in data[0]  # type: ignore[operator]
    assert b'"02-Jan-2024' in data[0] or b"Jan-2024" in data[0]  # type: ignore[operator]
    assert f"RFC822.SIZE {len(MESSAGE)}".encode() in data[0]  # type: ignore[operator]
    # MULTIAPPEND (RFC 3502): two messages in one command.
    raw = RawClient(imap_instance)
    raw.command("m0", f'LOGIN "{user[0]}" "{user[1]}"')
    reply = raw.command("m1", b"APPEND Drafts {5+}\r\nhello (\\Seen) {5+}\r\nworld")
    assert re.match(rb"m1 OK \[APPENDUID \d+ 2:3\]", reply[-1]), reply
    raw.close()
    client.logout()


def test_copy_move_expunge(imap_instance: Instance, user: tuple[str, str]) -> None:
    for number in range(5):
        deliver(imap_instance, user[0], f"message {number}")
    client = connect(imap_instance, *user)
    client.select("INBOX")
    typ, data = client.copy("1:2", "Archive")
    assert typ == "OK"
    assert re.match(rb"\[COPYUID \d+ 1:2 1:2\]", data[0])  # type: ignore[arg-type]
    typ, data = client.copy("1", "Missing")
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    typ, data = client.uid("MOVE", "3", "Trash")
    assert typ == "OK"
    assert client.untagged_responses.pop("EXPUNGE") == [b"3"]
    ok = b" ".join(client.untagged_responses.pop("OK", []))
    assert re.search(rb"\[COPYUID \d+ 3 1\]", ok)
    client.store("1", "+FLAGS", "(\\Deleted)")
    client.store("3", "+FLAGS", "(\\Deleted)")  # UID 4 now
    typ, data = client.uid("EXPUNGE", "4")  # UIDPLUS: only UID 4
    assert typ == "OK"
    assert client.untagged_responses.pop("EXPUNGE") == [b"3"]
    assert _ok(client.uid("SEARCH", "ALL")) == [b"1 2 5"]
    data = _ok(client.expunge())
    assert data == [b"1"]
    assert _ok(client.uid("SEARCH", "ALL")) == [b"2 5"]
    client.store("1", "+FLAGS", "(\\Deleted)")
    _ok(client.close())  # expunges silently
    assert _ok(client.select("INBOX")) == [b"1"]
    assert _ok(client.select("Archive")) == [b"2"]
    assert _ok(client.select("Trash")) == [b"1"]
    client.logout()
    wait_log(imap_instance, rf"imap\({re.escape(user[0])}\): .* deleted=3 expunged=4 trashed=1")


def test_other_sessions_changes_reach_the_client(
    imap_instance: Instance, user: tuple[str, str]
) -> None:
    deliver(imap_instance, user[0], "a")
    deliver(imap_instance, user[0], "b")
    watcher = connect(imap_instance, *user)
    watcher.select("INBOX")
    watcher.untagged_responses.clear()
    actor = connect(imap_instance, *user)
    actor.select("INBOX")
    actor.store("1", "+FLAGS", "(\\Flagged \\Deleted)")
    actor.expunge()
    deliver(imap_instance, user[0], "c")
    # No EXPUNGE during FETCH (RFC 9051 §7.5.1): the numbers stay as the client knows them.
    data = _ok(watcher.fetch("1:2", "(UID)"))
    assert b"1 (UID 1)" in data and b"2 (UID 2)" in data
    _ok(watcher.uid("FETCH", "1:*", "(FLAGS)"))
    _ok(watcher.uid("SEARCH", "ALL"))
    assert "EXPUNGE" not in watcher.untagged_responses
    assert watcher.untagged_responses.pop("EXISTS") == [b"3"]
    # NOOP delivers the expunge and the new message.
    watcher.noop()
    assert watcher.untagged_responses.pop("EXPUNGE") == [b"1"]
    data = _ok(watcher.fetch("1:*", "(UID)"))
    assert data == [b"1 (UID 2)", b"2 (UID 3)"]
    actor.store("1", "+FLAGS", "(\\Seen)")
    watcher.noop()
    assert re.match(rb"1 \(FLAGS \(\\Seen", watcher.untagged_responses.pop("FETCH")[0])
    for client in (watcher, actor):
        client.logout()


def test_imaps_session_with_all_basics(imap_instance: Instance, user: tuple[str, str]) -> None:
    deliver(imap_instance, user[0], "over tls")
    client = connect_tls(imap_instance, *user)
    assert _ok(client.select("INBOX")) == [b"1"]
    assert b"over tls" in _ok(client.fetch("1", "BODY.PEEK[]"))[0][1]  # type: ignore[index]
    client.logout()

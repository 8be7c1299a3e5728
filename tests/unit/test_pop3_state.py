"""Unit tests for roost.pop3.state: the RFC 1939 state machine, AUTH, STLS, the maildrop."""

from __future__ import annotations

import base64
import io
import poplib
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.auth.sasl import Credentials
from roost.pop3.maildrop import MaildropMessage
from roost.pop3.protocol import (
    MAX_AUTH_LINE,
    Apop,
    Auth,
    Capa,
    Command,
    Dele,
    List,
    NeedData,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)
from roost.pop3.render import Failure, wire_size
from roost.pop3.state import (
    TRANSITIONS,
    VALID_STATES,
    Action,
    Close,
    LocalProtocolError,
    MaildropView,
    Pop3State,
    Retrieve,
    Send,
    ServerSettings,
    ServerState,
    StartTls,
    Update,
    VerifyLogin,
    valid_in,
)

RAW = {
    10: b"From: a@example.org\nSubject: one\n\nHello.\n.dot line\nBye.\n",
    11: b"Subject: two\r\n\r\nbody\r\n",
    12: b"Subject: three\n\nno final newline",
}
MESSAGES = [MaildropMessage(uid, wire_size(raw), f"uidl-{uid}") for uid, raw in RAW.items()]
SIZES = [message.size for message in MESSAGES]
TOTAL = sum(SIZES)

PLAIN_ALICE = base64.b64encode(b"\x00alice\x00pw").decode()


def drive(server: ServerState, data: bytes = b"") -> list[Action]:
    """Feed ``data``; return the actions up to NEED_DATA or one that needs a result."""
    if data:
        server.receive_data(data)
    actions: list[Action] = []
    while True:
        action = server.next_action()
        if isinstance(action, NeedData):
            return actions
        actions.append(action)
        if not isinstance(action, (Send, Retrieve)):
            return actions


def sent(actions: list[Action]) -> bytes:
    """The octets of the Send actions."""
    return b"".join(action.data for action in actions if isinstance(action, Send))


def reply(server: ServerState, line: bytes) -> bytes:
    """The one reply to one command line."""
    actions = drive(server, line + b"\r\n")
    assert len(actions) == 1, actions
    action = actions[0]
    assert isinstance(action, (Send, Close, StartTls)), action
    return action.data


def authorization(
    *,
    tls_active: bool = False,
    secure_channel: bool = False,
    tls_available: bool = False,
    disable_plaintext_auth: bool = True,
    mechanisms: tuple[str, ...] | None = None,
    max_bad_commands: int = 20,
) -> ServerState:
    settings = ServerSettings(
        tls_available=tls_available,
        disable_plaintext_auth=disable_plaintext_auth,
        mechanisms=mechanisms,
        max_bad_commands=max_bad_commands,
    )
    return ServerState(settings, tls_active=tls_active, secure_channel=secure_channel)


def transaction(messages: list[MaildropMessage] | None = None) -> ServerState:
    listing = MESSAGES if messages is None else messages
    server = authorization(tls_active=True)
    actions = drive(server, b"USER alice\r\nPASS pw\r\n")
    assert actions[-1] == VerifyLogin(Credentials("alice", "pw"), "USER")
    summary = MaildropView(listing).summary()
    assert server.login_succeeded(listing) == Send(f"+OK Logged in, {summary}\r\n".encode())
    assert server.state is Pop3State.TRANSACTION
    return server


def poplib_lines(response: bytes) -> tuple[bytes, list[bytes], int]:
    client = poplib.POP3.__new__(poplib.POP3)
    client._debugging = 0
    client.file = io.BytesIO(response)
    return client._getlongresp()


def retrieve(server: ServerState, line: bytes) -> bytes:
    (action,) = drive(server, line + b"\r\n")
    assert isinstance(action, Retrieve), action
    return b"".join(action.response(RAW[action.uid]))


# --- the tables ---------------------------------------------------------------------------


def test_state_table() -> None:
    auth = {Capa, Quit, User, Pass, Apop, Stls, Auth}
    trans = {Capa, Quit, Stat, List, Retr, Dele, Noop, Rset, Top, Uidl}
    for kind in VALID_STATES:
        assert valid_in(Pop3State.AUTHORIZATION, kind) == (kind in auth)
        assert valid_in(Pop3State.TRANSACTION, kind) == (kind in trans)
        assert not valid_in(Pop3State.UPDATE, kind)
    assert set(VALID_STATES) == auth | trans
    assert TRANSITIONS[Pop3State.AUTHORIZATION] == {Pop3State.TRANSACTION}
    assert TRANSITIONS[Pop3State.TRANSACTION] == {Pop3State.UPDATE}
    assert not TRANSITIONS[Pop3State.UPDATE]


# --- AUTHORIZATION ------------------------------------------------------------------------


def test_greeting() -> None:
    assert ServerState().greeting() == b"+OK roost ready.\r\n"


@pytest.mark.parametrize(
    ("line", "keyword"),
    [
        (b"STAT", "STAT"),
        (b"LIST", "LIST"),
        (b"LIST 1", "LIST"),
        (b"RETR 1", "RETR"),
        (b"DELE 1", "DELE"),
        (b"NOOP", "NOOP"),
        (b"RSET", "RSET"),
        (b"TOP 1 1", "TOP"),
        (b"UIDL", "UIDL"),
        (b"UIDL 1", "UIDL"),
    ],
)
def test_transaction_commands_in_authorization(line: bytes, keyword: str) -> None:
    server = authorization()
    expected = f"-ERR {keyword} not valid in the AUTHORIZATION state\r\n".encode()
    assert reply(server, line) == expected
    assert server.state is Pop3State.AUTHORIZATION
    assert server.bad_commands == 1


@pytest.mark.parametrize(
    ("line", "keyword"),
    [
        (b"USER alice", "USER"),
        (b"PASS pw", "PASS"),
        (b"APOP a c4c9334bac560ecc979e58001b3e22fb", "APOP"),
        (b"STLS", "STLS"),
        (b"AUTH PLAIN", "AUTH"),
        (b"AUTH", "AUTH"),
    ],
)
def test_authorization_commands_in_transaction(line: bytes, keyword: str) -> None:
    server = transaction()
    expected = f"-ERR {keyword} not valid in the TRANSACTION state\r\n".encode()
    assert reply(server, line) == expected
    assert server.state is Pop3State.TRANSACTION


def test_capa_without_tls() -> None:
    server = authorization(tls_available=True)
    assert reply(server, b"CAPA") == (
        b"+OK Capability list follows\r\n"
        b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
        b"STLS\r\nIMPLEMENTATION roost\r\n.\r\n"
    )


def test_capa_without_tls_plaintext_allowed() -> None:
    server = authorization(tls_available=True, disable_plaintext_auth=False)
    assert reply(server, b"CAPA") == (
        b"+OK Capability list follows\r\n"
        b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
        b"USER\r\nSASL PLAIN LOGIN\r\nSTLS\r\nIMPLEMENTATION roost\r\n.\r\n"
    )


def test_capa_with_tls() -> None:
    server = authorization(tls_available=True, tls_active=True)
    assert reply(server, b"CAPA") == (
        b"+OK Capability list follows\r\n"
        b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
        b"USER\r\nSASL PLAIN LOGIN\r\nIMPLEMENTATION roost\r\n.\r\n"
    )


def test_capa_enabled_mechanisms_and_no_tls_configured() -> None:
    server = authorization(secure_channel=True, mechanisms=("plain",))
    assert reply(server, b"CAPA") == (
        b"+OK Capability list follows\r\n"
        b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
        b"USER\r\nSASL PLAIN\r\nIMPLEMENTATION roost\r\n.\r\n"
    )


def test_capa_is_the_same_in_transaction() -> None:
    # RFC 2449 §5: capabilities of AUTHORIZATION are announced in both states.
    before = reply(authorization(tls_active=True), b"CAPA")
    assert reply(transaction(), b"CAPA") == before


def test_quit_in_authorization() -> None:
    server = authorization()
    (action,) = drive(server, b"QUIT\r\nNOOP\r\n")
    assert action == Close(b"+OK roost POP3 server signing off\r\n")
    with pytest.raises(LocalProtocolError):
        server.next_action()


def test_user_pass_login() -> None:
    server = authorization(tls_active=True)
    actions = drive(server, b"USER alice\r\nPASS correct horse\r\n")
    assert actions == [
        Send(b"+OK\r\n"),
        VerifyLogin(Credentials("alice", "correct horse"), "USER"),
    ]
    with pytest.raises(LocalProtocolError):  # the result must come first
        server.next_action()
    assert server.login_succeeded(MESSAGES) == Send(
        b"+OK Logged in, maildrop has 3 messages (%d octets)\r\n" % TOTAL
    )
    assert server.state is Pop3State.TRANSACTION


def test_pass_without_user() -> None:
    assert reply(authorization(tls_active=True), b"PASS pw") == b"-ERR No user name given.\r\n"


def test_user_is_forgotten_after_a_failed_pass() -> None:
    server = authorization(tls_active=True)
    drive(server, b"USER alice\r\nPASS wrong\r\n")
    assert server.login_failed(Failure.AUTH_FAILED) == Send(
        b"-ERR [AUTH] Authentication failed.\r\n"
    )
    assert server.state is Pop3State.AUTHORIZATION
    assert reply(server, b"PASS again") == b"-ERR No user name given.\r\n"


@pytest.mark.parametrize("line", [b"USER alice", b"PASS pw"])
def test_plaintext_login_refused_without_tls(line: bytes) -> None:
    assert reply(authorization(), line) == (
        b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
    )


def test_plaintext_login_allowed_on_a_secure_channel_or_by_setting() -> None:
    assert reply(authorization(secure_channel=True), b"USER a") == b"+OK\r\n"
    assert reply(authorization(disable_plaintext_auth=False), b"USER a") == b"+OK\r\n"


@pytest.mark.parametrize(
    ("failure", "wire"),
    [
        (Failure.AUTH_FAILED, b"-ERR [AUTH] Authentication failed.\r\n"),
        (
            Failure.AUTH_UNAVAILABLE,
            b"-ERR [SYS/TEMP] Temporary authentication failure, try again later.\r\n",
        ),
        (Failure.IN_USE, b"-ERR [IN-USE] Maildrop is locked by another session.\r\n"),
        (Failure.LOGIN_DELAY, b"-ERR [LOGIN-DELAY] Logged in too recently, try again later.\r\n"),
    ],
)
def test_login_failures_keep_authorization(failure: Failure, wire: bytes) -> None:
    server = authorization(tls_active=True)
    drive(server, b"USER alice\r\nPASS pw\r\n")
    assert server.login_failed(failure) == Send(wire)
    assert server.state is Pop3State.AUTHORIZATION
    assert reply(server, b"USER alice") == b"+OK\r\n"  # the client may try again


def test_results_out_of_turn_are_local_errors() -> None:
    server = authorization()
    with pytest.raises(LocalProtocolError):
        server.login_succeeded(MESSAGES)
    with pytest.raises(LocalProtocolError):
        server.login_failed(Failure.AUTH_FAILED)
    with pytest.raises(LocalProtocolError):
        server.tls_established()
    with pytest.raises(LocalProtocolError):
        server.update_finished()


def test_a_login_verified_elsewhere_enters_transaction() -> None:
    # a session handed over to a process running as the user (roost.daemon.handoff)
    server = authorization(tls_active=True)
    server.await_login()
    with pytest.raises(LocalProtocolError):
        server.await_login()  # one login at a time
    assert server.login_succeeded(MESSAGES).data.startswith(b"+OK Logged in, ")
    assert server.state is Pop3State.TRANSACTION
    assert reply(server, b"STAT").startswith(b"+OK 3 ")
    with pytest.raises(LocalProtocolError):
        server.await_login()  # not in TRANSACTION


def test_invalid_listing_leaves_the_login_pending() -> None:
    server = authorization(tls_active=True)
    drive(server, b"USER alice\r\nPASS pw\r\n")
    with pytest.raises(ValueError, match="invalid UIDL"):
        server.login_succeeded([MaildropMessage(1, 10, "has space")])
    assert server.login_failed(Failure.PERMANENT) == Send(
        b"-ERR [SYS/PERM] Server failure, contact your administrator.\r\n"
    )


def test_apop_is_not_enabled() -> None:
    line = b"APOP mrose c4c9334bac560ecc979e58001b3e22fb"
    assert reply(authorization(), line) == b"-ERR APOP not enabled.\r\n"


# --- STLS (RFC 2595 §4) -------------------------------------------------------------------


def test_stls_discards_pipelined_plaintext() -> None:
    server = authorization(tls_available=True)
    actions = drive(server, b"STLS\r\nUSER mallory\r\nPASS x\r\n")
    assert actions == [StartTls(b"+OK Begin TLS negotiation\r\n")]
    with pytest.raises(LocalProtocolError):
        server.next_action()
    assert server.tls_established() == b"USER mallory\r\nPASS x\r\n"
    assert server.tls_active
    assert drive(server) == []
    assert reply(server, b"STLS") == b"-ERR Command not permitted when TLS active\r\n"
    assert reply(server, b"USER alice") == b"+OK\r\n"


def test_stls_forgets_a_user_given_before() -> None:
    server = authorization(tls_available=True, disable_plaintext_auth=False)
    drive(server, b"USER alice\r\nSTLS\r\n")
    server.tls_established()
    assert reply(server, b"PASS pw") == b"-ERR No user name given.\r\n"


def test_stls_without_tls_configured() -> None:
    assert reply(authorization(), b"STLS") == b"-ERR TLS support isn't enabled.\r\n"


# --- AUTH (RFC 5034) ----------------------------------------------------------------------


def test_auth_plain_with_initial_response() -> None:
    server = authorization(tls_active=True)
    actions = drive(server, f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())
    assert actions == [VerifyLogin(Credentials("alice", "pw"), "PLAIN")]


def test_auth_plain_with_empty_challenge() -> None:
    server = authorization(tls_active=True)
    assert drive(server, b"AUTH PLAIN\r\n") == [Send(b"+ \r\n")]
    assert server.connection.in_auth_exchange
    actions = drive(server, PLAIN_ALICE.encode() + b"\r\n")
    assert actions == [VerifyLogin(Credentials("alice", "pw"), "PLAIN")]
    assert not server.connection.in_auth_exchange


def test_auth_login() -> None:
    server = authorization(tls_active=True)
    assert drive(server, b"AUTH LOGIN\r\n") == [Send(b"+ VXNlcm5hbWU6\r\n")]
    assert drive(server, b"YWxpY2U=\r\n") == [Send(b"+ UGFzc3dvcmQ6\r\n")]
    assert drive(server, b"cHc=\r\n") == [VerifyLogin(Credentials("alice", "pw"), "LOGIN")]


def test_auth_login_with_initial_response() -> None:
    server = authorization(tls_active=True)
    assert drive(server, b"AUTH LOGIN YWxpY2U=\r\n") == [Send(b"+ UGFzc3dvcmQ6\r\n")]
    assert drive(server, b"cHc=\r\n") == [VerifyLogin(Credentials("alice", "pw"), "LOGIN")]


def test_auth_cancelled() -> None:
    # RFC 5034 §4: "*" cancels; the server rejects the AUTH command with -ERR.
    server = authorization(tls_active=True)
    drive(server, b"AUTH LOGIN\r\n")
    actions = drive(server, b"*\r\nCAPA\r\n")
    assert actions[0] == Send(b"-ERR Authentication cancelled by the client.\r\n")
    assert isinstance(actions[1], Send)
    assert actions[1].data.startswith(b"+OK Capability list follows\r\n")
    assert server.state is Pop3State.AUTHORIZATION


def test_auth_cancelled_in_the_initial_response() -> None:
    server = authorization(tls_active=True)
    assert reply(server, b"AUTH PLAIN *") == b"-ERR Authentication cancelled by the client.\r\n"


def test_auth_bad_base64() -> None:
    server = authorization(tls_active=True)
    drive(server, b"AUTH PLAIN\r\n")
    (action,) = drive(server, b"not base64!\r\n")
    assert action == Send(b"-ERR Invalid SASL response: SASL response is not base64\r\n")
    assert not server.connection.in_auth_exchange


def test_auth_empty_initial_response_for_plain() -> None:
    server = authorization(tls_active=True)
    assert reply(server, b"AUTH PLAIN =") == (
        b"-ERR Invalid SASL response: PLAIN message is not authzid NUL authcid NUL passwd\r\n"
    )


def test_auth_other_authzid() -> None:
    server = authorization(tls_active=True)
    response = base64.b64encode(b"root\x00alice\x00pw")
    assert reply(server, b"AUTH PLAIN " + response) == b"-ERR [AUTH] Authentication failed.\r\n"


def test_auth_unknown_mechanism() -> None:
    server = authorization(tls_active=True)
    assert reply(server, b"AUTH CRAM-MD5") == b"-ERR Unsupported authentication mechanism.\r\n"


def test_auth_disabled_mechanism() -> None:
    server = authorization(tls_active=True, mechanisms=("PLAIN",))
    assert reply(server, b"AUTH LOGIN") == b"-ERR Unsupported authentication mechanism.\r\n"


def test_auth_plaintext_mechanism_without_tls() -> None:
    assert reply(authorization(), b"AUTH PLAIN") == (
        b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
    )


def test_auth_without_mechanism_lists_them() -> None:
    assert reply(authorization(tls_active=True), b"AUTH") == b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    assert reply(authorization(), b"AUTH") == b"+OK\r\n.\r\n"


def test_auth_response_too_long() -> None:
    server = authorization(tls_active=True)
    drive(server, b"AUTH PLAIN\r\n")
    (action,) = drive(server, b"A" * (MAX_AUTH_LINE + 10) + b"\r\n")
    assert action == Send(b"-ERR Line too long (limit %d octets)\r\n" % MAX_AUTH_LINE)
    assert not server.connection.in_auth_exchange
    assert reply(server, b"NOOP") == b"-ERR NOOP not valid in the AUTHORIZATION state\r\n"


def test_auth_exchange_cut_by_close() -> None:
    server = authorization(tls_active=True)
    drive(server, b"AUTH PLAIN\r\n")
    server.receive_data(b"")
    assert drive(server) == [Close(b"")]


# --- TRANSACTION (RFC 1939 §5, §7) --------------------------------------------------------


def test_stat() -> None:
    assert reply(transaction(), b"STAT") == b"+OK 3 %d\r\n" % TOTAL


def test_list() -> None:
    server = transaction()
    assert reply(server, b"LIST") == (
        b"+OK 3 messages (%d octets)\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % (TOTAL, *SIZES)
    )
    assert reply(server, b"LIST 2") == b"+OK 2 %d\r\n" % SIZES[1]
    assert reply(server, b"LIST 4") == b"-ERR no such message, only 3 messages in maildrop\r\n"


def test_uidl() -> None:
    server = transaction()
    assert reply(server, b"UIDL") == b"+OK\r\n1 uidl-10\r\n2 uidl-11\r\n3 uidl-12\r\n.\r\n"
    assert reply(server, b"UIDL 3") == b"+OK 3 uidl-12\r\n"
    assert reply(server, b"UIDL 9") == b"-ERR no such message, only 3 messages in maildrop\r\n"


def test_dele_and_its_effects() -> None:
    server = transaction()
    assert reply(server, b"DELE 2") == b"+OK message 2 deleted\r\n"
    assert reply(server, b"DELE 2") == b"-ERR message 2 already deleted\r\n"
    assert reply(server, b"STAT") == b"+OK 2 %d\r\n" % (SIZES[0] + SIZES[2])
    assert reply(server, b"LIST") == (
        b"+OK 2 messages (%d octets)\r\n1 %d\r\n3 %d\r\n.\r\n"
        % (SIZES[0] + SIZES[2], SIZES[0], SIZES[2])
    )
    assert reply(server, b"UIDL") == b"+OK\r\n1 uidl-10\r\n3 uidl-12\r\n.\r\n"
    for line in (b"LIST 2", b"UIDL 2", b"RETR 2", b"TOP 2 0"):
        assert reply(server, line) == b"-ERR message 2 already deleted\r\n"
    assert reply(server, b"DELE 4") == b"-ERR no such message, only 3 messages in maildrop\r\n"


def test_rset_unmarks() -> None:
    server = transaction()
    drive(server, b"DELE 1\r\nDELE 3\r\n")
    assert reply(server, b"RSET") == b"+OK maildrop has 3 messages (%d octets)\r\n" % TOTAL
    assert reply(server, b"STAT") == b"+OK 3 %d\r\n" % TOTAL
    (action,) = drive(server, b"QUIT\r\n")
    assert action == Update(())


def test_noop() -> None:
    assert reply(transaction(), b"NOOP") == b"+OK\r\n"


def test_retr() -> None:
    server = transaction()
    assert retrieve(server, b"RETR 1") == (
        b"+OK %d octets\r\n" % SIZES[0]
        + b"From: a@example.org\r\nSubject: one\r\n\r\nHello.\r\n..dot line\r\nBye.\r\n.\r\n"
    )
    assert retrieve(server, b"RETR 3") == (
        b"+OK %d octets\r\nSubject: three\r\n\r\nno final newline\r\n.\r\n" % SIZES[2]
    )
    assert reply(server, b"RETR 4") == b"-ERR no such message, only 3 messages in maildrop\r\n"


def test_top() -> None:
    server = transaction()
    assert retrieve(server, b"TOP 1 0") == (
        b"+OK\r\nFrom: a@example.org\r\nSubject: one\r\n\r\n.\r\n"
    )
    assert retrieve(server, b"TOP 1 2") == (
        b"+OK\r\nFrom: a@example.org\r\nSubject: one\r\n\r\nHello.\r\n..dot line\r\n.\r\n"
    )
    assert reply(server, b"TOP 7 1") == b"-ERR no such message, only 3 messages in maildrop\r\n"


def test_retrieve_with_a_chunked_source() -> None:
    server = transaction()
    (action,) = drive(server, b"RETR 1\r\n")
    assert isinstance(action, Retrieve)
    encoder = action.encoder()
    raw = RAW[action.uid]
    body = b"".join(encoder.feed(raw[i : i + 3]) for i in range(0, len(raw), 3)) + encoder.end()
    assert action.status + body == b"".join(action.response(raw))


def test_wrong_arguments_in_transaction() -> None:
    server = transaction()
    assert reply(server, b"RETR x") == b"-ERR Invalid message number: x\r\n"
    assert reply(server, b"TOP 1 -1") == b"-ERR Invalid line count: -1\r\n"
    assert reply(server, b"LIST 0") == b"-ERR Invalid message number: 0\r\n"
    assert reply(server, b"FOO") == b"-ERR Unknown command: FOO\r\n"
    assert reply(server, b"X" * 300) == b"-ERR Line too long (limit 255 octets)\r\n"
    assert server.bad_commands == 5
    assert server.state is Pop3State.TRANSACTION


def test_empty_maildrop() -> None:
    server = transaction([])
    assert reply(server, b"STAT") == b"+OK 0 0\r\n"
    assert reply(server, b"LIST") == b"+OK 0 messages (0 octets)\r\n.\r\n"
    assert reply(server, b"UIDL") == b"+OK\r\n.\r\n"
    assert reply(server, b"RETR 1") == b"-ERR no such message, only 0 messages in maildrop\r\n"


# --- QUIT and UPDATE (RFC 1939 §6) --------------------------------------------------------


def test_quit_in_transaction_enters_update() -> None:
    server = transaction()
    actions = drive(server, b"DELE 3\r\nDELE 1\r\nQUIT\r\nNOOP\r\n")
    assert actions[-1] == Update((10, 12))
    assert server.state is Pop3State.UPDATE
    with pytest.raises(LocalProtocolError):
        server.next_action()
    assert server.update_finished() == Close(
        b"+OK roost POP3 server signing off (1 message left)\r\n"
    )
    with pytest.raises(LocalProtocolError):  # nothing is valid in UPDATE: the session closes
        server.handle(Noop())


def test_quit_everything_deleted() -> None:
    server = transaction()
    drive(server, b"DELE 1\r\nDELE 2\r\nDELE 3\r\nQUIT\r\n")
    assert server.update_finished() == Close(
        b"+OK roost POP3 server signing off (maildrop empty)\r\n"
    )


@pytest.mark.parametrize(
    ("failure", "wire"),
    [
        (Failure.TEMPORARY, b"-ERR [SYS/TEMP] Some deleted messages not removed.\r\n"),
        (Failure.IN_USE, b"-ERR [SYS/TEMP] Some deleted messages not removed.\r\n"),
        (Failure.PERMANENT, b"-ERR [SYS/PERM] Some deleted messages not removed.\r\n"),
    ],
)
def test_update_failed(failure: Failure, wire: bytes) -> None:
    server = transaction()
    drive(server, b"DELE 1\r\nQUIT\r\n")
    assert server.update_finished(failure) == Close(wire)


def test_dropped_connection_deletes_nothing() -> None:
    server = transaction()
    actions = drive(server, b"DELE 1\r\nDELE 2\r\n")
    server.receive_data(b"")
    actions += drive(server)
    assert actions[-1] == Close(b"")
    assert not any(isinstance(action, Update) for action in actions)
    assert server.state is Pop3State.TRANSACTION  # never UPDATE


def test_commands_in_update_are_refused_by_the_table() -> None:
    for kind in VALID_STATES:
        assert not valid_in(Pop3State.UPDATE, kind)


# --- limits -------------------------------------------------------------------------------


def test_too_many_bad_commands_close_the_connection() -> None:
    server = authorization(max_bad_commands=3)
    actions = drive(server, b"FOO\r\nSTAT\r\nX" + b"x" * 300 + b"\r\nNOOP\r\n")
    assert actions == [
        Send(b"-ERR Unknown command: FOO\r\n"),
        Send(b"-ERR STAT not valid in the AUTHORIZATION state\r\n"),
        Close(b"-ERR Too many bad commands.\r\n"),
    ]


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        ServerSettings(max_bad_commands=0)


def test_need_data_is_not_an_event() -> None:
    with pytest.raises(TypeError):
        ServerState().handle(NeedData())


# --- pipelining (RFC 2449 §6.6) -----------------------------------------------------------


def test_pipelined_session() -> None:
    server = authorization(tls_active=True)
    server.receive_data(b"CAPA\r\nUSER alice\r\nPASS pw\r\nSTAT\r\nLIST\r\nRETR 2\r\nQUIT\r\n")
    out = bytearray()
    while not isinstance(action := server.next_action(), NeedData):
        if isinstance(action, VerifyLogin):
            out += server.login_succeeded(MESSAGES).data
        elif isinstance(action, Retrieve):
            for piece in action.response(RAW[action.uid]):
                out += piece
        elif isinstance(action, Update):
            out += server.update_finished().data
            break
        else:
            assert isinstance(action, Send)
            out += action.data
    replies = bytes(out)
    assert replies.startswith(b"+OK Capability list follows\r\n")
    assert b"+OK\r\n+OK Logged in, maildrop has 3 messages" in replies
    assert b"+OK 3 %d\r\n+OK 3 messages" % TOTAL in replies
    assert b"+OK %d octets\r\nSubject: two\r\n\r\nbody\r\n.\r\n" % SIZES[1] in replies
    assert replies.endswith(b"+OK roost POP3 server signing off (3 messages left)\r\n")


# --- sizes: LIST/STAT equal the RETR payload ----------------------------------------------

_RAW_MESSAGES = st.lists(
    st.lists(
        st.binary(max_size=80).map(lambda data: data.replace(b"\n", b"")),
        max_size=12,
    ).flatmap(
        lambda lines: st.sampled_from([b"\n", b"\r\n"]).map(
            lambda ending: b"".join(line + ending for line in lines)
        )
    ),
    min_size=1,
    max_size=6,
)


@given(raws=_RAW_MESSAGES)
def test_list_and_stat_sizes_equal_the_retr_payload(raws: list[bytes]) -> None:
    store = {uid: raw for uid, raw in enumerate(raws, start=100)}
    listing = [MaildropMessage(uid, wire_size(raw), f"u{uid}") for uid, raw in store.items()]
    server = transaction(listing)
    _status, lines, _octets = poplib_lines(reply(server, b"LIST"))
    listed = {int(n): int(size) for n, size in (line.split() for line in lines)}
    stat = reply(server, b"STAT").split()
    assert int(stat[1]) == len(raws)
    assert int(stat[2]) == sum(listed.values())
    for msg in listed:
        (action,) = drive(server, b"RETR %d\r\n" % msg)
        assert isinstance(action, Retrieve)
        status, body, octets = poplib_lines(b"".join(action.response(store[action.uid])))
        assert status == b"+OK %d octets" % listed[msg]
        # poplib counts the octets without the stuffing and the terminator.
        assert octets == listed[msg]
        assert sum(len(line) + 2 for line in body) == listed[msg]


# --- never an exception on any input ------------------------------------------------------

_NOISE = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"USER alice\r\n",
            b"PASS pw\r\n",
            b"AUTH PLAIN\r\n",
            b"AUTH LOGIN\r\n",
            b"*\r\n",
            f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode(),
            b"STLS\r\n",
            b"STAT\r\n",
            b"LIST 1\r\n",
            b"RETR 2\r\n",
            b"TOP 3 1\r\n",
            b"DELE 1\r\n",
            b"RSET\r\n",
            b"QUIT\r\n",
            b"\r\n",
        ]
    ),
)


@settings(max_examples=300)
@given(chunks=st.lists(_NOISE, max_size=25), outcomes=st.lists(st.booleans(), max_size=25))
def test_random_input_never_raises(chunks: list[bytes], outcomes: list[bool]) -> None:
    server = authorization(tls_available=True, disable_plaintext_auth=False, max_bad_commands=50)
    results = iter(outcomes)
    closed = False
    for chunk in [*chunks, b""]:
        server.receive_data(chunk)
        while not closed and not isinstance(action := server.next_action(), NeedData):
            data = b""
            if isinstance(action, Send):
                data = action.data
            elif isinstance(action, Close):
                data, closed = action.data, True
            elif isinstance(action, StartTls):
                server.tls_established()
            elif isinstance(action, VerifyLogin):
                if next(results, True):
                    data = server.login_succeeded(MESSAGES).data
                else:
                    data = server.login_failed(Failure.AUTH_FAILED).data
            elif isinstance(action, Retrieve):
                data = b"".join(action.response(RAW[action.uid]))
            else:
                assert isinstance(action, Update)
                data, closed = server.update_finished().data, True
            assert data == b"" or data.startswith((b"+OK", b"-ERR ", b"+ "))
            assert data == b"" or data.endswith(b"\r\n")
        if closed:
            break


def _command_examples() -> list[Command]:
    return [
        User("a"),
        Pass("p"),
        Apop("a", "0" * 32),
        Stat(),
        List(),
        Retr(1),
        Dele(1),
        Noop(),
        Rset(),
        Quit(),
        Top(1, 0),
        Uidl(),
        Capa(),
        Stls(),
        Auth("PLAIN"),
    ]


def test_every_command_type_has_a_handler_and_a_state_entry() -> None:
    for command in _command_examples():
        assert type(command) in VALID_STATES
        server = transaction() if valid_in(Pop3State.TRANSACTION, command) else authorization()
        server.handle(command)  # no TypeError: a handler exists


# --- sans-IO ------------------------------------------------------------------------------


def test_pop3_core_is_sans_io() -> None:
    code = (
        "import sys, roost.pop3, roost.pop3.protocol, roost.pop3.state, roost.pop3.render, "
        "roost.pop3.maildrop; "
        "bad = {'asyncio', 'socket', 'ssl', 'roost.auth.users', 'roost.store.errors'} "
        "& set(sys.modules); print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Property-based fuzzing of the POP3 parser and server state machine.

Command streams are built from every POP3 command with plausible and broken arguments
(message numbers out of range, huge numbers, UTF-8, NUL, long lines, SASL exchanges)
plus random bytes; a fake session answers the state machine's actions the way
:mod:`roost.pop3.session` does (logins succeed or fail deterministically, STLS completes,
RETR/TOP return a message, QUIT's UPDATE finishes). Properties:

- :class:`roost.pop3.protocol.Connection` and :class:`roost.pop3.state.ServerState` never
  raise; every action is one of the documented ones;
- every reply is well formed: one status line starting ``+OK``, ``-ERR`` or ``+ `` (a SASL
  challenge) with no CR or LF from the client inside it; multi-line replies end with
  ``.<CRLF>`` and are dot-stuffed;
- the actions do not depend on how the input was cut into chunks;
- after ``Close`` nothing more happens; no command but QUIT leads to ``Update``, and
  ``Update`` only lists messages the client marked with DELE.
"""

from __future__ import annotations

import os
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.pop3.maildrop import MaildropMessage
from roost.pop3.protocol import MAX_COMMAND_LINE, NEED_DATA, Connection, ConnectionClosed
from roost.pop3.render import Failure
from roost.pop3.state import (
    Close,
    Pop3State,
    Retrieve,
    Send,
    ServerSettings,
    ServerState,
    StartTls,
    Update,
    VerifyLogin,
)

EXAMPLES = int(os.environ.get("ROOST_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MESSAGES = [
    MaildropMessage(uid=10 + n, size=len(body), uidl=f"uid{n:04d}")
    for n, body in enumerate([b"a\r\n", b"Subject: x\r\n\r\n.dot\r\nline\r\n", b"\r\n" * 5])
]
BODIES = {
    10: b"a\r\n",
    11: b"Subject: x\r\n\r\n.dot\r\nline\r\n",
    12: b"\r\n" * 5,
}

numbers = st.one_of(
    st.integers(0, 5).map(str),
    st.sampled_from(["-1", "+1", "1.0", "0x1", "99999999999999999999999", "", "١"]),
)
arguments = st.one_of(
    numbers,
    st.sampled_from(
        ["alice", "alice@virtual.test", "pw", "pw word", "PLAIN", "LOGIN", "X", "=", "*"]
    ),
    st.text(max_size=8),
)
keywords = st.sampled_from(
    [
        *("USER", "PASS", "APOP", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT"),
        *("TOP", "UIDL", "CAPA", "STLS", "AUTH", "user", "Retr", "XTND", "LAST", ""),
    ]
)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    words = [draw(keywords), *draw(st.lists(arguments, max_size=3))]
    text = draw(st.sampled_from([" ", "  ", "\t"])).join(words)
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 20)) == 0:
        data += b"x" * draw(st.integers(200, 600))  # over the 255-octet command limit
    return data + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r\r\n"]))


noise = st.lists(
    st.one_of(
        lines(),
        st.sampled_from([b"AGFsaWNlAHB3\r\n", b"*\r\n", b"=\r\n", b"!!\r\n", b"\r\n"]),
        st.binary(max_size=20),
    ),
    max_size=14,
).map(b"".join)
logins = st.sampled_from(
    [
        b"USER alice\r\nPASS pw\r\n",
        b"user alice\r\npass pw\r\n",
        b"AUTH PLAIN AGFsaWNlAHB3\r\n",
        b"AUTH PLAIN\r\nAGFsaWNlAHB3\r\n",
        b"AUTH LOGIN\r\nYWxpY2U=\r\ncHc=\r\n",
        b"USER alice\r\nPASS wrong\r\nUSER alice\r\nPASS pw\r\n",
        b"STLS\r\nUSER alice\r\nPASS pw\r\n",
    ]
)
transaction = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["STAT", "LIST", "UIDL", "RETR", "DELE", "NOOP", "RSET", "TOP"]),
            st.lists(st.integers(0, 5).map(str), max_size=2),
        ).map(lambda c: " ".join([c[0], *c[1]]).encode() + b"\r\n"),
        lines(),
    ),
    max_size=10,
).map(b"".join)
streams = st.one_of(
    noise,
    st.tuples(logins, transaction, st.sampled_from([b"QUIT\r\n", b"", b"QUIT\r\nNOOP\r\n"])).map(
        b"".join
    ),
)


class FakeSession:
    """Answers the actions as the session does; the result depends only on the action."""

    def __init__(self, *, tls: bool, secure: bool) -> None:
        self.server = ServerState(
            ServerSettings(tls_available=True, max_bad_commands=8),
            tls_active=tls,
            secure_channel=secure,
        )
        self.actions: list[str] = []
        self.closed = False
        self.deleted: set[int] = set()

    def run(self, chunks: list[bytes]) -> list[str]:
        check_reply(self.server.greeting())
        for chunk in [*chunks, b""]:
            if self.closed:
                break
            self.server.receive_data(chunk)
            self._drain()
        return self.actions

    def _drain(self) -> None:
        while not self.closed:
            action = self.server.next_action()
            if action is NEED_DATA:
                return
            self.actions.append(repr(action))
            assert len(self.actions) < 1000
            if isinstance(action, Send):
                check_reply(action.data)
                self._note_dele(action.data)
            elif isinstance(action, StartTls):
                check_reply(action.data)
                # what followed STLS in the same packets is dropped (CVE-2011-0411); how
                # much that is depends on the chunking, so the run ends at the handshake
                self.server.tls_established()
                assert self.server.tls_active
                self.closed = True
            elif isinstance(action, VerifyLogin):
                if action.credentials.password.endswith("pw"):
                    result = self.server.login_succeeded(MESSAGES)
                else:
                    result = self.server.login_failed(Failure.AUTH_FAILED)
                check_reply(result.data)
                self.actions.append(repr(result))
            elif isinstance(action, Retrieve):
                assert action.uid in BODIES, action
                reply = b"".join(action.response(BODIES[action.uid]))
                check_multiline(reply)
            elif isinstance(action, Update):
                assert self.server.state is Pop3State.UPDATE
                marked = {MESSAGES[n - 1].uid for n in self.deleted}
                assert set(action.uids) == marked, (action.uids, marked)
                close = self.server.update_finished()
                check_reply(close.data)
                self.closed = True
            elif isinstance(action, Close):
                if action.data:
                    check_reply(action.data)
                self.closed = True
            else:
                raise AssertionError(f"unknown action {action!r}")

    def _note_dele(self, data: bytes) -> None:
        view = self.server.maildrop
        if view is not None:
            self.deleted = {n for n, m in enumerate(view.messages, 1) if n in view.deleted}


STATUS = re.compile(rb"(\+OK|-ERR|\+)( [^\r\n]*)?\r\n")


def check_reply(data: bytes) -> None:
    first, _, rest = data.partition(b"\r\n")
    assert STATUS.fullmatch(first + b"\r\n"), f"bad status line {data!r}"
    if rest:
        check_multiline(data)


def check_multiline(data: bytes) -> None:
    assert data.endswith(b"\r\n.\r\n"), data[-40:]
    body = data.split(b"\r\n", 1)[1][: -len(b".\r\n")]
    for line in body.split(b"\r\n")[:-1]:
        assert not line.startswith(b".") or line.startswith(b".."), f"not dot-stuffed: {line!r}"
    assert b"\n" not in body.replace(b"\r\n", b""), "bare LF in a multi-line reply"


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [piece for piece in pieces if piece]


@FUZZ
@given(
    data=st.one_of(streams, st.binary(max_size=300)),
    cuts=st.lists(st.integers(1, 400), max_size=10),
    tls=st.booleans(),
    secure=st.booleans(),
)
def test_server_state_is_total_well_formed_and_chunking_invariant(
    data: bytes, cuts: list[int], tls: bool, secure: bool
) -> None:
    whole = FakeSession(tls=tls, secure=secure).run([data] if data else [])
    pieces = FakeSession(tls=tls, secure=secure).run(chunked(data, cuts))
    assert pieces == whole


@FUZZ
@given(data=st.one_of(streams, st.binary(max_size=400)), cuts=st.lists(st.integers(1, 400)))
def test_parser_only_yields_events(data: bytes, cuts: list[int]) -> None:
    connection = Connection()
    seen = []
    for chunk in [*chunked(data, cuts), b""]:
        connection.receive_data(chunk)
        while (event := connection.next_event()) is not NEED_DATA:
            seen.append(event)
            assert len(seen) < 1000
            if isinstance(event, ConnectionClosed):
                break
        assert connection.buffered <= MAX_COMMAND_LINE, "the parser buffers past its line limit"
    assert isinstance(seen[-1], ConnectionClosed)

"""Live-server fuzzing: hypothesis-generated command lines sent to a running daemon.

For SMTP, IMAP and POP3 each example opens a connection and sends a few generated lines
(grammar-shaped commands from tests/unit/test_fuzz_*.py, mutated, plus random bytes and
over-long lines). After each line a *sentinel* command with a unique tag or argument is
sent; the probe reads until the sentinel is answered, so however many commands the line
really held (embedded LFs, literals), every reply before it is checked:

- SMTP: every reply line is ``ddd`` or ``ddd-``/``ddd `` with 200 <= ddd <= 599, one code
  per reply; 354 gets an empty message, 334 a ``*``; 220 (after STARTTLS), 221 and 421
  end the connection and the probe reconnects;
- IMAP: every line is untagged (``*``), a continuation (``+``) or tagged; a continuation
  gets the next sentinel (ending IDLE or an AUTHENTICATE exchange);
- POP3: every status line is ``+OK``/``-ERR``/``+ ``;

the connection is closed only after a goodbye (SMTP 221/421, IMAP ``* BYE``, POP3 QUIT's
``+OK`` or ``-ERR`` for too many bad commands); the server never hangs (timeouts); and at
the end the daemon log holds no ``Traceback`` and no ``unexpected error``.

``ROOST_FUZZ_EXAMPLES`` sets the number of examples per protocol (bench/fuzz.py).
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.instance import Instance, start_instance
from tests.e2e.test_resilience_support import log_problems
from tests.unit.test_fuzz_imap import commands as imap_commands
from tests.unit.test_fuzz_imap import mutated as imap_mutated
from tests.unit.test_fuzz_imap import valid_commands as imap_valid_commands
from tests.unit.test_fuzz_pop3 import lines as pop3_lines
from tests.unit.test_fuzz_pop3 import logins as pop3_logins
from tests.unit.test_fuzz_smtp import parameter_texts, paths

EXAMPLES = int(os.environ.get("ROOST_FUZZ_EXAMPLES", "120"))
LIVE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="ROOST_FUZZ_EXAMPLES" not in os.environ,  # the suite: the same examples each run
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
TIMEOUT = 15.0

FUZZ_CONFIG = (
    "smtpd_soft_error_limit = 100000\n"
    "smtpd_hard_error_limit = 100000\n"
    "smtpd_junk_command_limit = 100000\n"
    "smtpd_error_sleep_time = 0s\n"
    "auth_failure_delay_max = 0s\n"
    "auth_failure_refuse_after = 100000\n"
    "smtpd_client_connection_count_limit = 0\n"
    "imap_client_connection_count_limit = 0\n"
    "disable_plaintext_auth = no\n"
)


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(tmp_path_factory.mktemp("fuzz"), FUZZ_CONFIG)
    yield running
    running.daemon.stop()
    problems = log_problems(running.log())
    assert not problems, "daemon log after fuzzing:\n" + "\n".join(problems[:20])


class Closed(Exception):
    """The server closed the connection."""


class Probe:
    """A raw line-oriented connection with a deadline on every read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""
        self.transcript: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.transcript.append(b"C: " + data[:300])
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise Closed(str(exc)) from None

    def line(self, timeout: float = TIMEOUT) -> bytes | None:
        """The next line without CRLF; None after ``timeout`` seconds of silence."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed(self.buffer.decode(errors="replace"))
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        line = line.removesuffix(b"\r")
        self.transcript.append(b"S: " + line[:300])
        return line

    def close(self) -> None:
        self.sock.close()

    def story(self) -> str:
        return "\n".join(entry.decode(errors="replace") for entry in self.transcript[-40:])

    def exchange(self, data: bytes) -> bool:
        """Send ``data`` and a sentinel; check every answer; False once the session ended."""
        raise NotImplementedError

    def said_goodbye(self) -> bool:
        """Whether the server said the protocol's goodbye before it closed."""
        raise NotImplementedError

    def play(self, session: list[bytes]) -> None:
        """Exchange each input of ``session`` (STARTTLS/STLS as NOOP) until the session
        ends; a connection the server closes must have had its goodbye. Closes the probe."""
        try:
            for data in map(without_tls, session):
                try:
                    if not self.exchange(data):
                        break
                except Closed as exc:
                    assert self.said_goodbye(), f"closed without goodbye ({exc}):\n{self.story()}"
                    break
        finally:
            self.close()


counter = itertools.count()


def without_tls(data: bytes) -> bytes:
    """STARTTLS/STLS would need a handshake in the middle of the fuzzing: those are tested
    in test_resilience_tls.py; here they become NOOP."""
    return re.sub(rb"(?i)starttls|stls", b"NOOP", data)


# --- SMTP -----------------------------------------------------------------------------------

SMTP_REPLY = re.compile(rb"([2-5][0-9][0-9])([ -].*)?")
SMTP_VERBS = [
    *("HELO", "EHLO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "QUIT", "VRFY"),
    *("EXPN", "HELP", "AUTH PLAIN", "AUTH LOGIN", "AUTH", "BDAT 10", "ETRN", "XCLIENT"),
]
smtp_arguments = st.one_of(
    paths().map(lambda p: p.encode("utf-8", "surrogatepass")),
    st.tuples(paths(), parameter_texts()).map(
        lambda t: f"{t[0]} {t[1]}".encode("utf-8", "surrogatepass")
    ),
    st.sampled_from([b"<alice@virtual.test>", b"<>", b"client.example", b"AGFsaWNlAHB3"]),
    st.binary(max_size=40),
    st.integers(500, 70000).map(lambda n: b"x" * n),  # over the line limits
)


@st.composite
def smtp_lines(draw: st.DrawFn) -> bytes:
    verb = draw(st.one_of(st.sampled_from(SMTP_VERBS), st.text(max_size=6))).encode(
        "utf-8", "surrogatepass"
    )
    argument = draw(st.one_of(st.just(b""), smtp_arguments))
    glue = b"" if verb.endswith(b":") else b" "
    line = verb + (glue + argument if argument else b"")
    return line + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r\r\n"]))


smtp_sessions = st.lists(
    st.one_of(
        smtp_lines(),
        st.sampled_from(
            [
                b"EHLO fuzz.example\r\n",
                b"MAIL FROM:<fuzz@example.org>\r\n",
                b"RCPT TO:<alice@virtual.test>\r\n",
                b"DATA\r\n",
                b"RSET\r\n",
            ]
        ),
    ),
    min_size=1,
    max_size=8,
)


class SMTPProbe(Probe):
    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.reply()  # the greeting

    def said_goodbye(self) -> bool:
        last = self.transcript[-1] if self.transcript else b""
        return re.match(rb"S: (221|421)", last) is not None

    def reply(self) -> tuple[int, list[bytes]]:
        lines = []
        while True:
            line = self.line()
            if line is None:
                raise AssertionError(f"SMTP server silent for {TIMEOUT}s:\n{self.story()}")
            match = SMTP_REPLY.fullmatch(line)
            assert match, f"malformed SMTP reply line {line!r}:\n{self.story()}"
            assert not lines or line[:3] == lines[0][:3], (
                f"code changed in a reply:\n{self.story()}"
            )
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), lines

    def exchange(self, data: bytes) -> bool:
        """Send ``data`` and a sentinel; check every reply; False once the session ended."""
        token = f"sentinel{next(counter)}".encode()
        self.send(data)
        self.send(b"VRFY " + token + b"\r\n")
        while True:
            code, lines = self.reply()
            if code == 252 and token in lines[-1]:
                return True
            if code == 354:  # our sentinel became message content: end it, ask again
                self.send(b"\r\n.\r\n")
                self.send(b"VRFY " + token + b"\r\n")
            elif code == 334:  # a SASL challenge took the sentinel: cancel, ask again
                self.send(b"*\r\n")
                self.send(b"VRFY " + token + b"\r\n")
            elif code in (220, 221) or code == 421:
                return False  # STARTTLS handshake expected, QUIT, or shutting down


@LIVE
@given(session=smtp_sessions)
def test_smtp_answers_every_line(instance: Instance, session: list[bytes]) -> None:
    SMTPProbe(instance.ports["smtp"]).play(session)


# --- IMAP -----------------------------------------------------------------------------------

IMAP_LINE = re.compile(rb"(\* |\+|[!#$&'+-\[\]-z|}~0-9A-Z.]+ (OK|NO|BAD)\b)")
imap_inputs = st.one_of(
    imap_valid_commands(),
    imap_valid_commands().flatmap(imap_mutated),
    imap_commands(),
    st.binary(max_size=60).map(lambda b: b + b"\r\n"),
    st.sampled_from(
        [
            b'a LOGIN alice@virtual.test "correct horse"\r\n',
            b"b SELECT INBOX\r\n",
            b"c IDLE\r\n",
            b"d AUTHENTICATE PLAIN\r\n",
            b"e APPEND INBOX {5}\r\n",
        ]
    ),
)


class IMAPProbe(Probe):
    def __init__(self, port: int) -> None:
        super().__init__(port)
        greeting = self.line()
        assert greeting is not None and greeting.startswith(b"* OK"), greeting

    def said_goodbye(self) -> bool:
        return any(entry.startswith(b"S: * BYE") for entry in self.transcript)

    def exchange(self, data: bytes) -> bool:
        sentinels: set[bytes] = set()

        def sentinel() -> None:
            tag = f"zz{next(counter)}".encode()
            sentinels.add(tag)
            self.send(tag + b" NOOP" + b" " * 240 + b"\r\n")  # padding fills a short literal

        self.send(data)
        sentinel()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            line = self.line(timeout=1.0)
            if line is None:
                sentinel()  # a literal still wants octets, or the sentinel was eaten
                continue
            assert IMAP_LINE.match(line) or line.startswith(b"+"), (
                f"malformed IMAP response {line!r}:\n{self.story()}"
            )
            if line.startswith(b"* BYE"):
                return False
            if line.startswith(b"+"):
                sentinel()  # IDLE, AUTHENTICATE or a literal: the next line answers it
                continue
            tag = line.split(b" ", 1)[0]
            if tag in sentinels:
                return True
        raise AssertionError(f"IMAP server never answered a sentinel:\n{self.story()}")


@LIVE
@given(session=st.lists(imap_inputs, min_size=1, max_size=6))
def test_imap_answers_every_command(instance: Instance, session: list[bytes]) -> None:
    IMAPProbe(instance.ports["imap"]).play(session)


# --- POP3 -----------------------------------------------------------------------------------

pop3_inputs = st.one_of(
    pop3_lines(),
    pop3_logins,
    st.binary(max_size=60).map(lambda b: b + b"\r\n"),
    st.sampled_from([b"RETR 1\r\n", b"TOP 1 0\r\n", b"LIST\r\n", b"UIDL\r\n", b"DELE 1\r\n"]),
)
POP3_GOODBYE = re.compile(
    rb"S: (\+OK .*(Logging out|signing off|maildrop)|-ERR .*(bad commands|Too many))", re.I
)


class POP3Probe(Probe):
    def __init__(self, port: int) -> None:
        super().__init__(port)
        greeting = self.line()
        assert greeting is not None and greeting.startswith(b"+OK"), greeting

    def said_goodbye(self) -> bool:
        return any(POP3_GOODBYE.match(entry) for entry in self.transcript)

    def exchange(self, data: bytes) -> bool:
        """Send ``data`` then CAPA; read to the end of CAPA's list (the sentinel)."""
        self.send(data)
        self.send(b"CAPA\r\n")
        deadline = time.monotonic() + TIMEOUT
        in_list = False
        statuses = 0
        while time.monotonic() < deadline:
            line = self.line(timeout=1.0)
            if line is None:
                self.send(b"CAPA\r\n")  # the sentinel went into a SASL exchange
                continue
            if in_list:
                if line == b".":
                    return True
                continue
            if line.startswith(b"+OK Capability list follows"):
                in_list = True
                continue
            if line.startswith(b"+ ") or line == b"+":
                self.send(b"*\r\nCAPA\r\n")  # cancel the SASL exchange, then the sentinel
                continue
            if line.startswith((b"+OK", b"-ERR")):
                statuses += 1
                continue
            # lines of a multi-line answer (LIST, UIDL, RETR, TOP) up to its "."
        raise AssertionError(f"POP3 server never answered the CAPA sentinel:\n{self.story()}")


@LIVE
@given(session=st.lists(pop3_inputs, min_size=1, max_size=6))
def test_pop3_answers_every_command(instance: Instance, session: list[bytes]) -> None:
    POP3Probe(instance.ports["pop3"]).play(session)


def test_server_still_serves_after_the_fuzzing(instance: Instance) -> None:
    """Runs last in this module: normal mail still flows."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", instance.ports["smtp"], timeout=10) as client:
        client.sendmail("a@example.org", ["bob@virtual.test"], b"Subject: ok\r\n\r\nok\r\n")
    assert instance.wait_delivered("bob", 1, timeout=10)
    assert instance.daemon.process.poll() is None


def test_client_bytes_never_reach_the_log_raw(tmp_path: Path) -> None:
    fresh = start_instance(tmp_path)
    try:
        probe = SMTPProbe(fresh.ports["smtp"])
        try:
            probe.send(b"EVIL\x1b[2J\rroost/smtpd[1]: forged\r\n")
            code, _ = probe.reply()
        finally:
            probe.close()
        assert code == 502
        time.sleep(0.3)
    finally:
        fresh.daemon.stop()
    stamped = re.compile(r"\S+ roost/[\w./-]+\[\d+\]: ")
    raw = [
        line
        for line in fresh.log().splitlines()
        if not stamped.match(line) and not line.startswith("roost: ")
    ]
    controls = [
        line for line in fresh.log().splitlines() if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", line)
    ]
    assert not raw and not controls, f"raw log lines {raw!r}; with control characters {controls!r}"

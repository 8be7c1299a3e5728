"""Shared machinery of the resilience tests (no tests here): numbered messages, concurrent
SMTP submitters that record every ``250``, and audits of Maildirs, spool and memory.

Used by tests/e2e/test_resilience_*.py and by the long runs in bench/soak.py. Every message
carries a unique ``Message-ID`` and a body that can be recomputed from its number, so an
audit tells, per recipient, whether each accepted message arrived once, twice, or never,
and whether its body is intact.
"""

from __future__ import annotations

import collections
import contextlib
import email
import email.policy
import hashlib
import itertools
import os
import random
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from roost.queue.directory import QueueDirectory, QueueName
from roost.queue.envelope import Envelope

USERS = ("alice", "bob")
DOMAIN = "virtual.test"
#: the queues a committed message can sit in (docs/spool.md)
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")
#: main.cf lines that make retries quick, so a delivery deferred by a crash is retried
#: within the test instead of after Postfix's five minutes
FAST_RETRY = "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nqueue_run_delay = 1s\n"


# --- numbered messages --------------------------------------------------------------------


@dataclass(frozen=True)
class MessageFactory:
    """Numbered test messages of one run: headers, a checkable body, the recipients.

    Message ``n`` goes to alice (n % 3 == 0), bob (1) or both (2); every 97th message is
    about 300 KB (past the spool writer's 256 KB buffer, so it is written before the commit)
    and every 7th has lines starting with a dot (dot-stuffing).
    """

    run: str

    def message_id(self, number: int) -> str:
        return f"<{self.run}.{number}@resilience.test>"

    def number_of(self, message_id: str) -> int | None:
        prefix, suffix = f"<{self.run}.", "@resilience.test>"
        if not (message_id.startswith(prefix) and message_id.endswith(suffix)):
            return None
        digits = message_id[len(prefix) : -len(suffix)]
        return int(digits) if digits.isdigit() else None

    def recipients(self, number: int) -> tuple[str, ...]:
        return (
            ("alice",),
            ("bob",),
            ("alice", "bob"),
        )[number % 3]

    def body_lines(self, number: int) -> list[str]:
        count = 3500 if number % 97 == 96 else 1 + number % 40
        lines = []
        for index in range(count):
            digest = hashlib.sha256(f"{self.run}:{number}:{index}".encode()).hexdigest()
            dot = "." if number % 7 == 0 and index % 5 == 0 else ""
            lines.append(f"{dot}{number:07d} {index:05d} {digest}")
        return lines

    def body(self, number: int) -> str:
        """The body as it must read in the Maildir file (LF line ends)."""
        return "\n".join(self.body_lines(number)) + "\n"

    def build(self, number: int) -> bytes:
        """The message as sent (CRLF; smtplib dot-stuffs it)."""
        to = ", ".join(f"{user}@{DOMAIN}" for user in self.recipients(number))
        head = (
            f"From: soak@example.org\r\nTo: {to}\r\n"
            f"Subject: resilience {self.run} #{number}\r\n"
            f"Message-ID: {self.message_id(number)}\r\n"
            f"X-Resilience-Number: {number}\r\n\r\n"
        )
        return (head + "\r\n".join(self.body_lines(number)) + "\r\n").encode()


# --- submitting ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one numbered message on the SMTP side."""

    number: int
    recipients: tuple[str, ...]
    state: str  # accepted | rejected | uncertain
    queue_id: str = ""
    reply: str = ""
    when: float = field(default_factory=time.monotonic)


class Submitter:
    """``concurrency`` threads, each an SMTP session sending numbered messages until
    stopped; every result is recorded.

    ``accepted``: the client read ``250`` after the data (the server owes the message).
    ``rejected``: any other reply to DATA or a refused RCPT (nothing owed).
    ``uncertain``: the connection broke after the data was sent but before the reply was
    read (the message may or may not have been committed; delivered at most once).
    A connection that fails is retried (the daemon may be restarting) until :meth:`stop`.
    """

    def __init__(
        self,
        port_of: Callable[[], int],
        factory: MessageFactory,
        *,
        concurrency: int = 4,
        source: Callable[[int], str] = lambda worker: "127.0.0.1",
        pause: float = 0.0,
        limit: int | None = None,
    ) -> None:
        self.port_of = port_of
        self.factory = factory
        self.concurrency = concurrency
        self.source = source
        self.pause = pause
        self.limit = limit
        self.outcomes: dict[int, Outcome] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Submitter:
        for worker in range(self.concurrency):
            thread = threading.Thread(
                target=self._worker, args=(worker,), name=f"submitter-{worker}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"submitter threads hang: {alive}"

    def wait_for(self, accepted: int, timeout: float = 30.0) -> None:
        """Wait (bounded) until at least ``accepted`` messages got their 250."""
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < accepted and time.monotonic() < deadline:
            time.sleep(0.02)

    def accepted(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes.values() if o.state == "accepted"]

    def by_state(self) -> dict[str, int]:
        with self._lock:
            return dict(collections.Counter(o.state for o in self.outcomes.values()))

    def _next(self) -> int | None:
        with self._lock:
            number = next(self._numbers)
        if self.limit is not None and number >= self.limit:
            return None
        return number

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes[outcome.number] = outcome

    def _connect(self, worker: int) -> smtplib.SMTP | None:
        while not self._stop.is_set():
            try:
                client = smtplib.SMTP(
                    "127.0.0.1",
                    self.port_of(),
                    source_address=(self.source(worker), 0),
                    timeout=20,
                )
                code, _ = client.ehlo(f"worker{worker}.example")
                if code == 250:
                    return client
                client.close()
            except (OSError, smtplib.SMTPException) as exc:
                self.errors[type(exc).__name__] += 1
            time.sleep(0.05)
        return None

    def _worker(self, worker: int) -> None:
        client: smtplib.SMTP | None = None
        try:
            while not self._stop.is_set():
                if client is None:
                    client = self._connect(worker)
                    if client is None:
                        return
                number = self._next()
                if number is None:
                    return
                if not self._send(client, number):
                    client.close()
                    client = None
                if self.pause:
                    time.sleep(self.pause)
        finally:
            if client is not None:
                try:
                    client.quit()
                except (OSError, smtplib.SMTPException):
                    client.close()

    def _send(self, client: smtplib.SMTP, number: int) -> bool:
        """Send one message; return False when the connection is no longer usable."""
        recipients = self.factory.recipients(number)
        try:
            code, text = client.mail("soak@example.org")
            if code != 250:
                self._record(Outcome(number, recipients, "rejected", reply=f"{code} {text!r}"))
                client.rset()
                return code < 421
            for user in recipients:
                code, text = client.rcpt(f"{user}@{DOMAIN}")
                if code != 250:
                    self._record(Outcome(number, recipients, "rejected", reply=f"{code} {text!r}"))
                    client.rset()
                    return code != 421
        except (OSError, smtplib.SMTPException) as exc:
            self.errors[type(exc).__name__] += 1
            return False  # nothing was sent yet: the number is simply unused
        try:
            code, text = client.data(self.factory.build(number))
        except (OSError, smtplib.SMTPException) as exc:
            self.errors[type(exc).__name__] += 1
            self._record(Outcome(number, recipients, "uncertain", reply=repr(exc)))
            return False
        reply = text.decode(errors="replace")
        if code == 250:
            self._record(Outcome(number, recipients, "accepted", reply.rsplit(" ", 1)[-1], reply))
            return True
        self._record(Outcome(number, recipients, "rejected", reply=f"{code} {reply}"))
        return code != 421


# --- auditing Maildirs ----------------------------------------------------------------------


@dataclass
class MaildirAudit:
    """What the users' Maildirs hold for one run."""

    copies: dict[tuple[str, int], list[Path]] = field(default_factory=dict)
    corrupt: list[str] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)
    tmp_leftovers: list[Path] = field(default_factory=list)
    files: int = 0


def maildir_files(maildir: Path) -> Iterator[Path]:
    """Every message file in ``new/`` and ``cur/`` of a Maildir and its ++ folders."""
    if not maildir.is_dir():
        return
    folders = [maildir] + [p for p in maildir.iterdir() if p.name.startswith(".") and p.is_dir()]
    for folder in folders:
        for sub in ("new", "cur"):
            directory = folder / sub
            if directory.is_dir():
                yield from (p for p in directory.iterdir() if p.is_file())


def audit_maildirs(
    maildir_of: Callable[[str], Path], factory: MessageFactory, users: Iterable[str] = USERS
) -> MaildirAudit:
    """Parse every delivered file: its Message-ID, and its body against the expected one."""
    audit = MaildirAudit()
    for user in users:
        maildir = maildir_of(user)
        tmp = maildir / "tmp"
        if tmp.is_dir():
            audit.tmp_leftovers += list(tmp.iterdir())
        for path in maildir_files(maildir):
            audit.files += 1
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # expunged meanwhile
                continue
            message = email.message_from_bytes(raw, policy=email.policy.default)
            number = factory.number_of(str(message.get("Message-ID", "")))
            if number is None:
                audit.foreign.append(path)
                continue
            problem = _check_message(message, raw, factory, number, user)
            if problem:
                audit.corrupt.append(f"{path}: {problem}")
            audit.copies.setdefault((user, number), []).append(path)
    return audit


def _check_message(
    message: email.message.EmailMessage, raw: bytes, factory: MessageFactory, number: int, user: str
) -> str:
    if message.defects:
        return f"defects {message.defects!r}"
    if message.get("X-Resilience-Number") != str(number):
        return "X-Resilience-Number header damaged"
    if message.get("Delivered-To") != f"{user}@{DOMAIN}":
        return f"Delivered-To is {message.get('Delivered-To')!r}"
    try:
        body = message.get_content()
    except (LookupError, ValueError) as exc:
        return f"body cannot be decoded: {exc}"
    if body != factory.body(number):
        return f"body differs (got {len(body)} chars, want {len(factory.body(number))})"
    if b"\r\n" in raw:
        return "CRLF in a Maildir file"
    return ""


@dataclass
class DeliveryVerdict:
    """Accepted messages against the Maildirs: every figure the tests report."""

    accepted: int = 0
    uncertain: int = 0
    rejected: int = 0
    expected_copies: int = 0
    lost: list[tuple[str, int]] = field(default_factory=list)
    duplicates: dict[tuple[str, int], int] = field(default_factory=dict)
    uncertain_delivered: int = 0
    unexpected: list[tuple[str, int]] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    tmp_leftovers: int = 0

    @property
    def extra_copies(self) -> int:
        return sum(count - 1 for count in self.duplicates.values())

    def summary(self) -> str:
        return (
            f"accepted={self.accepted} (copies owed {self.expected_copies}), "
            f"uncertain={self.uncertain} (delivered {self.uncertain_delivered}), "
            f"rejected={self.rejected}, lost={len(self.lost)}, "
            f"duplicated={len(self.duplicates)} (+{self.extra_copies} copies), "
            f"unexpected={len(self.unexpected)}, corrupt={len(self.corrupt)}, "
            f"maildir tmp leftovers={self.tmp_leftovers}"
        )


def judge(outcomes: Iterable[Outcome], audit: MaildirAudit) -> DeliveryVerdict:
    verdict = DeliveryVerdict(corrupt=list(audit.corrupt), tmp_leftovers=len(audit.tmp_leftovers))
    owed: dict[tuple[str, int], str] = {}
    for outcome in outcomes:
        if outcome.state == "accepted":
            verdict.accepted += 1
        elif outcome.state == "uncertain":
            verdict.uncertain += 1
        else:
            verdict.rejected += 1
        for user in outcome.recipients:
            owed[(user, outcome.number)] = outcome.state
    for key, state in owed.items():
        count = len(audit.copies.get(key, []))
        if state == "accepted":
            verdict.expected_copies += 1
            if count == 0:
                verdict.lost.append(key)
        elif state == "uncertain" and count:
            verdict.uncertain_delivered += 1
        elif state == "rejected" and count:
            verdict.unexpected.append(key)
        if count > 1:
            verdict.duplicates[key] = count
    verdict.unexpected += [key for key in audit.copies if key not in owed]
    return verdict


# --- auditing the spool -------------------------------------------------------------------


@dataclass
class SpoolAudit:
    """The queue directory's files: committed messages and what a crash may leave."""

    messages: dict[str, str] = field(default_factory=dict)  # queue ID -> queue
    bad_envelopes: list[str] = field(default_factory=list)
    # ID.env without its queue file: normal right after a kill (an interrupted move or
    # removal), gone once recovery has run
    envelope_without_content: list[str] = field(default_factory=list)
    uncommitted: list[str] = field(default_factory=list)  # queue files without trailer, *.tmp
    corrupt_queue: list[str] = field(default_factory=list)

    def pending(self) -> int:
        return sum(1 for queue in self.messages.values() if queue != "corrupt")


def audit_spool(queue_directory: Path) -> SpoolAudit:
    """Read every queue file of every queue (docs/spool.md) and parse its envelope with
    ``Envelope.from_json``."""
    audit = SpoolAudit()
    envelopes: list[tuple[str, str]] = []
    with QueueDirectory(queue_directory) as spool:
        for queue in QUEUES:
            directory = queue_directory / queue
            try:
                names = {p.name for p in directory.iterdir()}
            except FileNotFoundError:
                continue
            for name in sorted(names):
                if queue == "corrupt":
                    audit.corrupt_queue.append(name)
                    continue
                if name.endswith(".tmp"):
                    audit.uncommitted.append(f"{queue}/{name}")
                    continue
                if name.endswith(".env"):
                    envelopes.append((queue, name[: -len(".env")]))
                    continue
                queue_id = name
                try:
                    data = spool.read_envelope_data(QueueName(queue), queue_id)
                except FileNotFoundError:
                    continue  # moved or removed by the running daemon meanwhile
                except ValueError as exc:
                    audit.bad_envelopes.append(f"{queue}/{name}: {exc}")
                    continue
                if data is None:
                    if (directory / name).exists():
                        audit.uncommitted.append(f"{queue}/{name}")
                    continue
                try:
                    envelope = Envelope.from_json(data)
                except ValueError as exc:
                    audit.bad_envelopes.append(f"{queue}/{name}: {exc}")
                    continue
                if envelope.queue_id != queue_id:
                    audit.bad_envelopes.append(f"{queue}/{name}: queue_id {envelope.queue_id}")
                audit.messages[queue_id] = queue
        for queue, queue_id in envelopes:
            if audit.messages.get(queue_id) != queue:
                audit.envelope_without_content.append(f"{queue}/{queue_id}.env")
    return audit


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def wait_drained(queue_directory: Path, timeout: float = 60.0) -> SpoolAudit:
    """Wait (bounded) until no message is left in incoming/, active/ or deferred/."""
    last = audit_spool(queue_directory)

    def drained() -> bool:
        nonlocal last
        last = audit_spool(queue_directory)
        return last.pending() == 0

    wait_until(drained, timeout, 0.2)
    return last


# --- the daemon process ---------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the daemon's fork server and worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (status), Pss and Rss (smaps_rollup) in KiB, summed over the daemon's processes
    (``pid`` and its descendants: with worker processes the sessions live there)."""
    figures: dict[str, int] = {}
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
            with contextlib.suppress(FileNotFoundError):  # kernels before 4.14
                lines += Path(f"/proc/{member}/smaps_rollup").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited meanwhile
        for line in lines:
            if line.startswith(("VmRSS:", "VmHWM:", "Threads:", "Pss:", "Rss:")):
                name, value = line.split(":", 1)
                figures[name] = figures.get(name, 0) + int(value.split()[0])
    return figures


def open_fds(pid: int) -> int:
    """Open file descriptors of the daemon's processes together."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += len(os.listdir(f"/proc/{member}/fd"))
    return total


def log_problems(text: str) -> list[str]:
    """Lines of a daemon log that show a bug: tracebacks and unexpected errors."""
    markers = ("Traceback", "unexpected error", "Internal error", "CRITICAL", "panic")
    return [line for line in text.splitlines() if any(m in line for m in markers)]


def read_reply(sock: socket.socket, *, timeout: float = 10.0) -> str:
    """Read one complete SMTP reply (all continuation lines) from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed; got {data!r}")
        data += chunk
        lines = data.split(b"\r\n")
        for line in lines[:-1]:
            if len(line) >= 4 and line[3:4] == b" ":
                return data.decode(errors="replace")
            if len(line) == 3:
                return data.decode(errors="replace")


def seeded(seed: int | None) -> random.Random:
    return random.Random(seed if seed is not None else time.time_ns())

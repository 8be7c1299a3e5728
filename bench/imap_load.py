"""An asyncio IMAP load generator: N concurrent clients, one mixed workload, no external tool.

Every client runs the same cycle of commands against its own user's INBOX (client ``i``
logs in as ``logins[i % len(logins)]``)::

    LOGIN                                   (mode "cycle" only: a new connection per cycle)
    SELECT INBOX
    FETCH 1:* (FLAGS ENVELOPE)              FETCH_ENVELOPE
    FETCH n BODY.PEEK[]  x --bodies         FETCH_BODY (random messages)
    STORE n +FLAGS (\\Flagged) / -FLAGS ...  STORE x 2 (random messages, toggled)
    SEARCH FLAGGED | UNSEEN | FROM "..."    SEARCH (in turn)
    APPEND INBOX (\\Seen) {~3 KB}            APPEND (synchronizing literal)
    UID STORE <APPENDUID> +FLAGS.SILENT (\\Deleted)   STORE
    EXPUNGE                                 EXPUNGE (the appended message: the size stays)
    LOGOUT                                  (mode "cycle" only)

Modes: ``cycle`` connects, logs in and logs out every cycle; ``session`` logs every client
in once before the timed window (not counted), repeats the cycle without LOGIN/LOGOUT,
and logs out after the window (not counted). The run is bounded by ``seconds`` (every
client stops at its next command after the deadline; only commands completed before it
count) or by ``cycles`` per client, whichever comes first, and stops by itself.

The result counts completed commands per type, commands per second per type and in all,
latency percentiles, errors (``NO``/``BAD``/timeouts/disconnects; the client reconnects),
and the CPU the load generator itself used (on a 2-core machine it competes with the
server: a client near 1 CPU-second per second is the bottleneck; use ``--processes``).

Also here: :func:`open_idle_sessions` (many connections logged in, SELECTed and in IDLE,
for memory measurements), :func:`timed_select` (SELECT/FETCH timings on a big mailbox)
and ``--fill`` (APPEND messages until every user's INBOX has N), so the generator can be
pointed at any server by itself::

    .venv/bin/python bench/imap_load.py --port 10143 --user 'bench%d' --users 10 \\
        --password benchpass --fill 75 --clients 10 --mode cycle --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import ssl
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

COMMAND_TYPES = (
    "LOGIN",
    "SELECT",
    "FETCH_ENVELOPE",
    "FETCH_BODY",
    "STORE",
    "SEARCH",
    "APPEND",
    "EXPUNGE",
    "LOGOUT",
)
SEARCHES = (b"SEARCH FLAGGED", b"SEARCH UNSEEN", b'SEARCH FROM "sender7"')
_LITERAL = re.compile(rb"\{(\d+)\+?\}$")
_APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]")
_EXISTS = re.compile(rb"^\* (\d+) (EXISTS|EXPUNGE)")


class ImapError(Exception):
    """A command answered NO/BAD, an unexpected reply, or a lost connection."""


def quote(text: str) -> bytes:
    """An IMAP quoted string."""
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def make_message(
    number: int, size: int, *, user: str = "user", domain: str = "bench.test"
) -> bytes:
    """A plain-text message of about ``size`` octets (CRLF), with a full set of headers."""
    head = (
        f"Return-Path: <sender{number % 13}@example.org>\r\n"
        f"From: Sender {number % 13} <sender{number % 13}@example.org>\r\n"
        f"To: {user} <{user}@{domain}>\r\n"
        f'Cc: list{number % 5}@example.net, "Some One" <someone@example.com>\r\n'
        f"Subject: report {number}: the quarterly figures, part {number % 7}\r\n"
        f"Date: Mon, 01 Jan 2024 {number % 24:02d}:{number % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{number}.{size}.bench@example.org>\r\n"
        f"In-Reply-To: <{number - 1}.bench@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


# --- the client ---------------------------------------------------------------------------------


class Client:
    """One IMAP connection on asyncio streams; reads responses in chunks, literals included."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buffer = bytearray()
        self.tag_number = 0
        self.exists = 0
        self.capabilities = b""

    async def connect(
        self,
        host: str,
        port: int,
        source: str | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        starttls: bool = False,
    ) -> bytes:
        """Connect and read the greeting; with ``tls``, over TLS: implicit (port 993's
        way), or after STARTTLS when ``starttls``."""
        local = (source, 0) if source else None
        implicit = tls if not starttls else None
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=local, limit=1 << 20, ssl=implicit),
            self.timeout,
        )
        greeting = await asyncio.wait_for(self._logical_line(), self.timeout)
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting {greeting[:200]!r}")
        if starttls and tls is not None:
            await self.command(b"STARTTLS")
            await asyncio.wait_for(self.writer.start_tls(tls), self.timeout)
        return greeting

    async def _fill(self) -> None:
        assert self.reader is not None
        data = await self.reader.read(1 << 18)
        if not data:
            raise ImapError("connection closed by the server")
        self.buffer += data

    async def _logical_line(self) -> bytes:
        """The first segment (up to the first literal or CRLF) of the next response line;
        consumes the whole line, literals included."""
        start = 0
        first: bytes | None = None
        while True:
            end = self.buffer.find(b"\r\n", start)
            if end < 0:
                start = max(len(self.buffer) - 1, start)
                await self._fill()
                continue
            segment_end = end
            literal = None
            if end > 0 and self.buffer[end - 1] == 0x7D:  # "}"
                opening = self.buffer.rfind(b"{", start, end)
                if opening >= 0:
                    literal = _LITERAL.search(bytes(self.buffer[opening:end]))
            if first is None:
                first = bytes(self.buffer[:segment_end])
            if literal is None:
                del self.buffer[: end + 2]
                return first
            after = end + 2 + int(literal.group(1))
            while len(self.buffer) < after:
                await self._fill()
            start = after

    async def _until_tagged(self, tag: bytes) -> tuple[bytes, list[bytes]]:
        untagged: list[bytes] = []
        prefix = tag + b" "
        while True:
            line = await self._logical_line()
            if line.startswith(prefix):
                return line, untagged
            if line.startswith(b"* "):
                found = _EXISTS.match(line)
                if found is not None:
                    if found.group(2) == b"EXISTS":
                        self.exists = int(found.group(1))
                    else:
                        self.exists -= 1
                untagged.append(line)

    def _next_tag(self) -> bytes:
        self.tag_number += 1
        return b"a%d" % self.tag_number

    async def command(self, text: bytes, literal: bytes | None = None) -> tuple[bytes, list[bytes]]:
        """Send one command (with a synchronizing literal at its end if given); return the
        tagged line and the first segments of the untagged ones. NO/BAD raise ImapError."""
        assert self.writer is not None
        tag = self._next_tag()
        if literal is None:
            self.writer.write(tag + b" " + text + b"\r\n")
        else:
            self.writer.write(tag + b" " + text + b" {%d}\r\n" % len(literal))
            while True:
                line = await asyncio.wait_for(self._logical_line(), self.timeout)
                if line.startswith(b"+"):
                    break
                if line.startswith(tag + b" "):
                    raise ImapError(f"{text.split()[0].decode()}: {line[:200]!r}")
            self.writer.write(literal + b"\r\n")
        tagged, untagged = await asyncio.wait_for(self._until_tagged(tag), self.timeout)
        if not tagged.startswith(tag + b" OK"):
            raise ImapError(f"{text.split()[0].decode()}: {tagged[:200]!r}")
        return tagged, untagged

    async def login(self, user: str, password: str) -> None:
        await self.command(b"LOGIN " + quote(user) + b" " + quote(password))

    async def select(self, mailbox: str = "INBOX") -> int:
        self.exists = 0
        await self.command(b"SELECT " + quote(mailbox))
        return self.exists

    async def idle(self) -> bytes:
        """Start IDLE; returns the tag (the continuation has arrived)."""
        assert self.writer is not None
        tag = self._next_tag()
        self.writer.write(tag + b" IDLE\r\n")
        while True:
            line = await asyncio.wait_for(self._logical_line(), self.timeout)
            if line.startswith(b"+"):
                return tag
            if line.startswith(tag + b" "):
                raise ImapError(f"IDLE: {line[:200]!r}")

    async def done(self, tag: bytes) -> None:
        assert self.writer is not None
        self.writer.write(b"DONE\r\n")
        tagged, _ = await asyncio.wait_for(self._until_tagged(tag), self.timeout)
        if not tagged.startswith(tag + b" OK"):
            raise ImapError(f"IDLE: {tagged[:200]!r}")

    async def logout(self) -> None:
        with contextlib.suppress(ImapError):
            await self.command(b"LOGOUT")
        await self.close()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 5)
            self.writer = None


# --- the mixed load -----------------------------------------------------------------------------


@dataclass
class LoadConfig:
    """What to run; ``logins`` are (user, password) pairs shared out to the clients."""

    port: int
    logins: Sequence[tuple[str, str]]
    host: str = "127.0.0.1"
    clients: int = 10
    mode: str = "cycle"  # or "session"
    seconds: float | None = 10.0
    cycles: int | None = None
    bodies: int = 3
    append_size: int = 3000
    seed: int = 1
    timeout: float = 60.0
    first_client: int = 0  # for --processes: this process runs clients first..first+clients
    start_at: float = 0.0  # wall-clock start (time.time()); 0: now


@dataclass
class LoadResult:
    """Counts and rates of one load run (possibly merged from several processes)."""

    mode: str
    clients: int
    elapsed: float
    counts: dict[str, int] = field(default_factory=dict)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    cycles: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    client_cpu: float = 0.0

    @property
    def commands(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        return self.commands / self.elapsed if self.elapsed > 0 else float("nan")

    def type_rate(self, name: str) -> float:
        return self.counts.get(name, 0) / self.elapsed if self.elapsed > 0 else float("nan")

    def percentile(self, name: str, share: float) -> float:
        values = sorted(self.latencies_ms.get(name, ()))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(len(values) * share))]

    def merge(self, other: LoadResult) -> None:
        self.clients += other.clients
        self.elapsed = max(self.elapsed, other.elapsed)
        for name, count in other.counts.items():
            self.counts[name] = self.counts.get(name, 0) + count
        for name, values in other.latencies_ms.items():
            self.latencies_ms.setdefault(name, []).extend(values)
        self.cycles += other.cycles
        self.errors += other.errors
        self.error_samples = (self.error_samples + other.error_samples)[:10]
        self.client_cpu += other.client_cpu

    def summary(self) -> dict[str, object]:
        """Rates and latencies without the raw samples (for JSON and tables)."""
        return {
            "mode": self.mode,
            "clients": self.clients,
            "elapsed": round(self.elapsed, 3),
            "commands": self.commands,
            "commands_per_second": round(self.rate, 1),
            "cycles": self.cycles,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "client_cpu_seconds": round(self.client_cpu, 2),
            "per_type": {
                name: {
                    "count": self.counts.get(name, 0),
                    "per_second": round(self.type_rate(name), 1),
                    "p50_ms": round(self.percentile(name, 0.5), 2),
                    "p99_ms": round(self.percentile(name, 0.99), 2),
                }
                for name in COMMAND_TYPES
                if self.counts.get(name)
            },
            "connect_to_greeting_ms": {
                "p50": round(self.percentile("CONNECT", 0.5), 2),
                "p99": round(self.percentile("CONNECT", 0.99), 2),
            },
        }

    def table(self) -> str:
        lines = [
            f"{self.mode}, {self.clients} clients, {self.elapsed:.1f} s: {self.commands} commands,"
            f" {self.rate:.0f}/s, {self.cycles} cycles, {self.errors} errors,"
            f" client CPU {self.client_cpu:.1f} s",
            f"  {'command':<15} {'count':>8} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8}",
        ]
        for name in COMMAND_TYPES:
            if self.counts.get(name):
                lines.append(
                    f"  {name:<15} {self.counts[name]:>8} {self.type_rate(name):>9.1f}"
                    f" {self.percentile(name, 0.5):>8.2f} {self.percentile(name, 0.99):>8.2f}"
                )
        if self.latencies_ms.get("CONNECT"):
            lines.append(
                f"  {'(connect)':<15} {len(self.latencies_ms['CONNECT']):>8} {'':>9}"
                f" {self.percentile('CONNECT', 0.5):>8.2f} {self.percentile('CONNECT', 0.99):>8.2f}"
            )
        for sample in self.error_samples:
            lines.append(f"  error: {sample}")
        return "\n".join(lines)


class _Worker:
    """One simulated client."""

    def __init__(self, index: int, config: LoadConfig, result: LoadResult) -> None:
        self.index = index
        self.config = config
        self.result = result
        self.user, self.password = config.logins[index % len(config.logins)]
        self.random = random.Random(config.seed * 100003 + index)
        self.client: Client | None = None
        self.search_turn = index
        self.flag_turn = 0
        self.deadline = float("inf")
        self.message = make_message(1_000_000 + index, config.append_size, user=self.user)

    async def timed(self, name: str, call: Coroutine[Any, Any, T]) -> T:
        """Await ``call`` and count it under ``name`` when it completes before the deadline."""
        if time.monotonic() >= self.deadline:
            call.close()
            raise _Stop
        began = time.monotonic()
        value = await call
        done = time.monotonic()
        if done <= self.deadline:
            self.result.counts[name] = self.result.counts.get(name, 0) + 1
            self.result.latencies_ms.setdefault(name, []).append(1000 * (done - began))
        return value

    async def connect_and_login(self) -> None:
        self.client = Client(self.config.timeout)
        began = time.monotonic()
        await self.client.connect(self.config.host, self.config.port)
        # connect to greeting: a latency, not a command
        self.result.latencies_ms.setdefault("CONNECT", []).append(1000 * (time.monotonic() - began))
        await self.timed("LOGIN", self.client.login(self.user, self.password))

    async def cycle(self) -> None:
        client = self.client
        assert client is not None
        exists = await self.timed("SELECT", client.select("INBOX"))
        if exists:
            await self.timed("FETCH_ENVELOPE", client.command(b"FETCH 1:* (FLAGS ENVELOPE)"))
            for _ in range(self.config.bodies):
                number = self.random.randint(1, exists)
                await self.timed("FETCH_BODY", client.command(b"FETCH %d BODY.PEEK[]" % number))
            for flag in (b"\\Flagged", b"\\Seen"):
                number = self.random.randint(1, exists)
                sign = b"+" if self.flag_turn % 2 == 0 else b"-"
                await self.timed(
                    "STORE", client.command(b"STORE %d %sFLAGS (%s)" % (number, sign, flag))
                )
            self.flag_turn += 1
        self.search_turn += 1
        await self.timed("SEARCH", client.command(SEARCHES[self.search_turn % len(SEARCHES)]))
        reply = await self.timed(
            "APPEND", client.command(b"APPEND INBOX (\\Seen)", literal=self.message)
        )
        found = _APPENDUID.search(reply[0])
        if found is not None:
            store = b"UID STORE %s +FLAGS.SILENT (\\Deleted)" % found.group(1)
        else:  # no UIDPLUS: the newest message is ours (one client per user)
            store = b"STORE %d +FLAGS.SILENT (\\Deleted)" % client.exists
        await self.timed("STORE", client.command(store))
        await self.timed("EXPUNGE", client.command(b"EXPUNGE"))

    async def drop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def run(self, start: float, deadline: float) -> None:
        config = self.config
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        self.deadline = deadline
        done = 0
        try:
            while time.monotonic() < deadline and (config.cycles is None or done < config.cycles):
                try:
                    if self.client is None:
                        await self.connect_and_login()
                    await self.cycle()
                    if config.mode == "cycle":
                        assert self.client is not None
                        await self.timed("LOGOUT", self.client.command(b"LOGOUT"))
                        await self.drop()
                    done += 1
                    self.result.cycles += 1
                except _Stop:
                    break
                except (ImapError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    self.error(exc)
                    await self.drop()
                    await asyncio.sleep(0.05)
        finally:
            self.deadline = float("inf")
            if self.client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.client.logout(), config.timeout)
                await self.drop()

    async def with_retries(self, call: Callable[[], Coroutine[Any, Any, None]]) -> None:
        for attempt in range(5):
            try:
                await call()
                return
            except (ImapError, OSError, TimeoutError) as exc:
                self.error(exc)
                await self.drop()
                await asyncio.sleep(0.2 * (attempt + 1))

    def error(self, exc: BaseException) -> None:
        self.result.errors += 1
        if len(self.result.error_samples) < 10:
            self.result.error_samples.append(f"client {self.index}: {type(exc).__name__}: {exc}")


class _Stop(Exception):
    """The deadline passed before the next command."""


async def run_load(config: LoadConfig) -> LoadResult:
    """Run the mixed load (see the module docs) and return what it counted."""
    if config.mode not in ("cycle", "session"):
        raise ValueError(f"mode {config.mode!r}: cycle or session")
    result = LoadResult(mode=config.mode, clients=config.clients, elapsed=0.0)
    workers = [_Worker(config.first_client + i, config, result) for i in range(config.clients)]
    cpu_before = time.process_time()
    if config.start_at:
        start = time.monotonic() + max(0.0, config.start_at - time.time())
    else:
        start = time.monotonic() + (0.2 if config.mode == "cycle" else 0.0)
    if config.mode == "session":
        # log every client in first (not timed), then start the window together
        ready = asyncio.Event()
        logged_in = 0

        async def login_then_wait(worker: _Worker) -> None:
            nonlocal logged_in
            await worker.with_retries(worker.connect_and_login)
            logged_in += 1
            if logged_in == len(workers):
                ready.set()
            await ready.wait()

        await asyncio.gather(*(login_then_wait(worker) for worker in workers))
        result.counts.clear()
        result.latencies_ms.clear()  # the logins before the window
        start = max(start, time.monotonic())
    seconds = config.seconds if config.seconds is not None else float("inf")
    deadline = start + seconds
    await asyncio.gather(*(worker.run(start, deadline) for worker in workers))
    ended = time.monotonic()
    result.elapsed = min(ended, deadline) - start
    result.client_cpu = time.process_time() - cpu_before
    return result


def _run_in_process(config: LoadConfig) -> LoadResult:
    return event_loop_run(run_load(config))


def event_loop_run(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with uvloop when it is installed (a cheaper client)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def run_load_processes(config: LoadConfig, processes: int) -> LoadResult:
    """Run the load split over ``processes`` client processes (they start together)."""
    if processes <= 1:
        return _run_in_process(config)
    start_at = time.time() + 1.0 + 0.02 * config.clients
    parts = []
    first = 0
    for index in range(processes):
        count = config.clients // processes + (1 if index < config.clients % processes else 0)
        if count:
            parts.append(LoadConfig(**{**asdict(config), "clients": count, "first_client": first}))
            first += count
    for part in parts:
        part.start_at = start_at
    with ProcessPoolExecutor(len(parts)) as pool:
        results = list(pool.map(_run_in_process, parts))
    merged = LoadResult(mode=config.mode, clients=0, elapsed=0.0)
    for result in results:
        merged.merge(result)
    return merged


# --- helpers for the benchmark: fill, idle sessions, one timed SELECT ------------------------


async def fill(
    host: str, port: int, logins: Sequence[tuple[str, str]], count: int, size: int = 4000
) -> None:
    """APPEND messages until every user's INBOX holds at least ``count``."""
    for number, (user, password) in enumerate(logins):
        client = Client()
        await client.connect(host, port)
        await client.login(user, password)
        exists = await client.select("INBOX")
        for index in range(exists, count):
            data = make_message(number * 1000 + index, size + 97 * (index % 31), user=user)
            flags = b" (\\Seen)" if index % 3 else b""
            await client.command(b"APPEND INBOX" + flags, literal=data)
        await client.logout()


def client_tls_context() -> ssl.SSLContext:
    """A client context for the benchmark's servers on loopback: their certificates are
    self-signed, so none is verified (never use this beyond 127.0.0.1)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class IdleSessions:
    """Connections logged in, with INBOX selected, in IDLE."""

    clients: list[tuple[Client, bytes]]
    errors: list[str]
    seconds: float

    async def close(self, concurrency: int = 50) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def end(client: Client, tag: bytes) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await client.done(tag)
                    await client.logout()
                await client.close()

        await asyncio.gather(*(end(client, tag) for client, tag in self.clients))


async def open_idle_sessions(
    host: str,
    port: int,
    logins: Sequence[tuple[str, str]],
    count: int,
    *,
    concurrency: int = 20,
    sources: Sequence[str] = (),
    timeout: float = 120.0,
    tls: ssl.SSLContext | None = None,
    starttls: bool = False,
) -> IdleSessions:
    """Open ``count`` connections (login ``i % len(logins)``, source address ``i %
    len(sources)`` when given), each LOGIN, SELECT INBOX, IDLE; ``concurrency`` at a time;
    ``tls`` and ``starttls`` as for :meth:`Client.connect`."""
    gate = asyncio.Semaphore(concurrency)
    opened: list[tuple[Client, bytes]] = []
    errors: list[str] = []
    began = time.monotonic()

    async def one(index: int) -> None:
        user, password = logins[index % len(logins)]
        source = sources[index % len(sources)] if sources else None
        async with gate:
            client = Client(timeout)
            try:
                await client.connect(host, port, source, tls=tls, starttls=starttls)
                await client.login(user, password)
                await client.select("INBOX")
                opened.append((client, await client.idle()))
            except (ImapError, OSError, TimeoutError) as exc:
                errors.append(f"{index}: {type(exc).__name__}: {exc}")
                await client.close()

    await asyncio.gather(*(one(index) for index in range(count)))
    return IdleSessions(opened, errors, time.monotonic() - began)


@dataclass
class SelectTiming:
    """Seconds of one session's commands on a (big) mailbox."""

    login: float
    select: float
    fetch_flags: float
    exists: int


async def timed_select(
    host: str, port: int, user: str, password: str, *, timeout: float = 900.0
) -> SelectTiming:
    """A new session: LOGIN, SELECT INBOX, FETCH 1:* (FLAGS), LOGOUT, each timed."""
    client = Client(timeout)
    await client.connect(host, port)
    began = time.monotonic()
    await client.login(user, password)
    logged_in = time.monotonic()
    exists = await client.select("INBOX")
    selected = time.monotonic()
    _, untagged = await client.command(b"FETCH 1:* (FLAGS)")
    fetched = time.monotonic()
    await client.logout()
    if sum(1 for line in untagged if line.endswith(b")") and b" FETCH " in line) != exists:
        raise ImapError(f"FETCH 1:* (FLAGS) gave {len(untagged)} lines for {exists} messages")
    return SelectTiming(logged_in - began, selected - logged_in, fetched - selected, exists)


# --- command line -------------------------------------------------------------------------------


def logins_from(args: argparse.Namespace) -> list[tuple[str, str]]:
    if "%d" in args.user:
        return [(args.user.replace("%d", str(i)), args.password) for i in range(1, args.users + 1)]
    return [(args.user, args.password)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=143)
    parser.add_argument("--user", default="bench%d", help="login; %%d: 1..--users")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--password", default="benchpass")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--mode", choices=("cycle", "session"), default="cycle")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--cycles", type=int, help="cycles per client (with --seconds 0: no time bound)"
    )
    parser.add_argument("--bodies", type=int, default=3, help="BODY.PEEK[] fetches per cycle")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--fill", type=int, default=0, help="first APPEND up to N messages")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    if args.host not in ("localhost", "::1") and not args.host.startswith("127."):
        sys.exit("loopback targets only (127.0.0.0/8)")
    logins = logins_from(args)
    if args.fill:
        asyncio.run(fill(args.host, args.port, logins, args.fill))
    config = LoadConfig(
        port=args.port,
        logins=logins,
        host=args.host,
        clients=args.clients,
        mode=args.mode,
        seconds=None if args.cycles and args.seconds <= 0 else args.seconds,
        cycles=args.cycles,
        bodies=args.bodies,
    )
    result = run_load_processes(config, args.processes)
    if args.json:
        print(json.dumps(result.summary(), indent=1))
    else:
        print(result.table())
    if result.errors and not result.commands:
        sys.exit(1)


if __name__ == "__main__":
    main()


__all__ = [
    "COMMAND_TYPES",
    "Client",
    "IdleSessions",
    "ImapError",
    "LoadConfig",
    "LoadResult",
    "SelectTiming",
    "client_tls_context",
    "fill",
    "make_message",
    "open_idle_sessions",
    "run_load",
    "run_load_processes",
    "timed_select",
]

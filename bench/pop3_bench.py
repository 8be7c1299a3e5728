"""POP3, side by side: roost against a separate Dovecot pop3 instance on the same machine.

Workloads (``--quick``: 10x fewer messages, 3 s of short sessions):

- ``4k``: one session retrieves 1,000 messages of 4 KB (RETR 1..N, one at a time, as
  fetchmail does), then QUIT (which records ``\\Seen`` on all of them in both servers).
- ``1m``: the same with 100 messages of 1 MB.
- ``short``: short sessions (connect, USER/PASS, STAT, QUIT) from ``--concurrency``
  clients in parallel for ``--seconds``; each client rotates over 4 users (10 messages
  each) so the POP3 session lock of one session never delays the next.

Each run gets a *fresh* server and mail directory: the messages are written into the
users' ``new/`` (the same bytes for both servers, LF line ends, some lines starting with
"."), the server starts, an untimed first session (USER/PASS, STAT, QUIT) lets it index
the new mail (moving it to ``cur/``), then the timed session runs. Runs alternate (roost,
dovecot, roost, ...); the table gives medians, msg/s and MB/s of the RETR loop, the QUIT
time, the server CPU per message of the RETR loop (QUIT's CPU, which sets ``\\Seen`` on
every message, is printed apart as ``quit_cpu_ms``), and the ratio roost/Dovecot (of the
medians, and the median of the ratios of the runs done next to each other). CPU comes
from /proc in clock ticks (10 ms): about +-0.01 ms per message for 1,000 messages.

Both servers as shipped, plain TCP on 127.0.0.1, passwords in a passwd-file as {PLAIN}
(no hashing cost on either side), ``pop3_lock_session = yes`` on both (roost's default;
Dovecot's is no). Dovecot is a *separate* instance with its own configuration, base_dir
and state under ``--dir`` (never ``/etc/dovecot`` or the system instance); its master
must start as root. roost runs a snapshot of ``src/roost`` (others may edit the tree).
Server CPU comes from /proc: on each side the master and every process below it (roost's
fork server and workers; Dovecot's login and pop3 processes), with the children it reaped.

Usage (as root)::

    .venv/bin/python bench/pop3_bench.py [--quick] [--rounds 5] [--workloads 4k,1m,short]
        [--servers roost,dovecot] [--concurrency 16] [--seconds 10] [--dir /var/tmp]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import common

DOMAIN = common.DOMAIN
PASSWORD = "bench"


@dataclass(frozen=True)
class Load:
    """One workload: ``messages`` of ``size`` octets per user, or short sessions."""

    name: str
    kind: str  # "retr" or "short"
    messages: int
    size: int

    def describe(self, args: argparse.Namespace) -> str:
        if self.kind == "short":
            return f"{args.concurrency} clients x {args.seconds:g} s, login+STAT+QUIT"
        size = f"{self.size // 2**20} MB" if self.size >= 2**20 else f"{self.size // 1024} KB"
        return f"{self.messages} x {size}"


LOADS = {
    load.name: load
    for load in (
        Load("4k", "retr", 1000, 4096),
        Load("1m", "retr", 100, 2**20),
        Load("short", "short", 10, 2048),
    )
}


# --- messages ---------------------------------------------------------------------------------


def make_message(number: int, size: int) -> bytes:
    """A text message of about ``size`` octets, LF line ends, some lines starting with '.'."""
    head = (
        f"Return-Path: <sender@example.org>\n"
        f"From: Sender <sender@example.org>\n"
        f"To: user@{DOMAIN}\n"
        f"Subject: benchmark message {number}\n"
        f"Message-ID: <{number}.bench@example.org>\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\n"
    dotted = b".A line that starts with a dot, so the server has to stuff it for POP3.\n"
    lines = [head]
    total = len(head)
    index = 0
    while total < size:
        chunk = dotted if index % 40 == 39 else line
        lines.append(chunk)
        total += len(chunk)
        index += 1
    return b"".join(lines)[:size].rstrip(b"\n") + b"\n"


def fill_maildir(maildir: Path, count: int, size: int) -> int:
    """Write ``count`` messages into ``maildir/new``; returns the octets written."""
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    total = 0
    for number in range(1, count + 1):
        data = make_message(number, size)
        (maildir / "new" / f"1700000000.M{number:06d}P1.bench").write_bytes(data)
        total += len(data)
    return total


# --- servers ----------------------------------------------------------------------------------


def make_server(kind: str, base: Path, label: str, users: Sequence[str]) -> common.MailboxServer:
    """roost or Dovecot serving POP3 to ``users``, ``pop3_lock_session = yes`` on both."""
    return common.make_mailbox_server(
        kind,
        base,
        label,
        users,
        protocol="pop3",
        password=PASSWORD,
        roost_settings="mail_max_userip_connections = 1000\n",
        dovecot_settings="mail_max_userip_connections = 1000\npop3_lock_session = yes\n",
    )


# --- a small POP3 client ------------------------------------------------------------------------


class Client:
    """A blocking POP3 client that reads multi-line responses in big chunks.

    The same client measures both servers; it finds the terminator with ``bytes.find``
    instead of reading line by line (poplib would be the bottleneck for 1 MB messages).
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.greeting = self._line()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 18)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buffer += data

    def _line(self) -> bytes:
        start = 0
        while True:
            end = self.buffer.find(b"\r\n", start)
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            start = max(len(self.buffer) - 1, 0)
            self._fill()

    def command(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        status = self._line()
        if not status.startswith(b"+OK"):
            raise RuntimeError(f"{line.split()[0]}: {status!r}")
        return status

    def multiline(self, line: str) -> int:
        """Send a command with a multi-line answer; return the octets of the body."""
        self.command(line)
        start = 0
        while True:
            if self.buffer.startswith(b".\r\n"):
                del self.buffer[:3]
                return 0
            end = self.buffer.find(b"\r\n.\r\n", start)
            if end >= 0:
                del self.buffer[: end + 5]
                return end + 2
            start = max(len(self.buffer) - 4, 0)
            self._fill()

    def login(self, user: str) -> int:
        self.command(f"USER {user}")
        self.command(f"PASS {PASSWORD}")
        return int(self.command("STAT").split()[1])

    def quit(self) -> None:
        self.command("QUIT")
        self.sock.close()


# --- runs -------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run of one server on one workload."""

    server: str
    workload: str
    round: int
    count: int  # messages retrieved, or sessions completed
    octets: int  # message octets retrieved (on the wire, stuffing included)
    seconds: float  # the RETR loop, or the whole short-session window
    quit_seconds: float
    first_session_seconds: float
    cpu_seconds: float
    load_before: float
    errors: int = 0
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")

    @property
    def megabytes_per_second(self) -> float:
        return self.octets / 2**20 / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.count if self.count else float("nan")


def users_for(load: Load, args: argparse.Namespace) -> list[str]:
    if load.kind == "short":
        return [f"bench{i}" for i in range(1, args.concurrency * 4 + 1)]
    return ["bench1"]


def run_once(kind: str, load: Load, round_: int, args: argparse.Namespace, base: Path) -> Run:
    users = users_for(load, args)
    server = make_server(kind, base, load.name, users)
    try:
        server.setup()
        for user in users:
            fill_maildir(server.maildir(user), load.messages, load.size)
        server.own_mail()
        server.start()
        time.sleep(0.3)
        started = time.monotonic()
        for user in users:  # untimed: the server indexes the new mail
            client = Client(server.port)
            client.login(server.login(user))
            client.quit()
        first = (time.monotonic() - started) / len(users)
        if load.kind == "short":
            return short_sessions(server, load, round_, args, first)
        return retrieve(server, load, round_, first)
    finally:
        server.stop()
        server.remove()


def retrieve(server: common.MailboxServer, load: Load, round_: int, first: float) -> Run:
    client = Client(server.port)
    count = client.login(server.login("bench1"))
    assert count == load.messages, count
    load_before = common.load_average()
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    octets = 0
    for msg in range(1, count + 1):
        octets += client.multiline(f"RETR {msg}")
    retrieved = time.monotonic()
    cpu_retrieved = server.cpu_seconds()
    client.quit()
    done = time.monotonic()
    return Run(
        server=server.name,
        workload=load.name,
        round=round_,
        count=count,
        octets=octets,
        seconds=retrieved - started,
        quit_seconds=done - retrieved,
        first_session_seconds=first,
        cpu_seconds=cpu_retrieved - cpu_before,  # the RETR loop only, not QUIT
        load_before=load_before,
        extra={"quit_cpu_ms": 1000 * (server.cpu_seconds() - cpu_retrieved)},
    )


def short_sessions(
    server: common.MailboxServer, load: Load, round_: int, args: argparse.Namespace, first: float
) -> Run:
    stop_at = 0.0
    counts = [0] * args.concurrency
    errors = [0] * args.concurrency
    latencies: list[list[float]] = [[] for _ in range(args.concurrency)]
    barrier = threading.Barrier(args.concurrency + 1)

    def worker(index: int) -> None:
        mine = [server.login(f"bench{index * 4 + k + 1}") for k in range(4)]
        barrier.wait()
        turn = 0
        while time.monotonic() < stop_at:
            began = time.monotonic()
            try:
                client = Client(server.port)
                client.login(mine[turn % 4])
                client.quit()
            except (OSError, RuntimeError):
                errors[index] += 1
            else:
                counts[index] += 1
                latencies[index].append(time.monotonic() - began)
            turn += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    load_before = common.load_average()
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    stop_at = started + args.seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    every = sorted(latency for per in latencies for latency in per)
    extra = {}
    if every:
        extra = {
            "p50_ms": 1000 * every[len(every) // 2],
            "p99_ms": 1000 * every[min(len(every) - 1, int(len(every) * 0.99))],
        }
    return Run(
        server=server.name,
        workload=load.name,
        round=round_,
        count=sum(counts),
        octets=0,
        seconds=elapsed,
        quit_seconds=0.0,
        first_session_seconds=first,
        cpu_seconds=server.cpu_seconds() - cpu_before,
        load_before=load_before,
        errors=sum(errors),
        extra=extra,
    )


# --- report -------------------------------------------------------------------------------------


def table(runs: Sequence[Run], loads: Sequence[Load], args: argparse.Namespace) -> str:
    lines = [
        "| workload | server | runs | rate median (min-max) | MB/s | QUIT ms | first session ms "
        "| CPU ms/unit | ratio roost/dovecot (of medians; median of pairs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for load in loads:
        mine = [run for run in runs if run.workload == load.name and not run.note]
        base = {run.round: run.rate for run in mine if run.server == "dovecot"}
        unit = "sessions/s" if load.kind == "short" else "msg/s"
        for name in ("roost", "dovecot"):
            own = [run for run in mine if run.server == name]
            if not own:
                continue
            rates = [run.rate for run in own]
            rate = common.median(rates)
            ratio = ""
            if name == "roost" and base:
                ratio = common.ratio_text(((run.round, run.rate) for run in own), base)
            mbps = quit_ms = "-"
            if load.kind == "retr":
                mbps = f"{common.median(run.megabytes_per_second for run in own):.1f}"
                quit_ms = f"{1000 * common.median(run.quit_seconds for run in own):.0f}"
            first_ms = 1000 * common.median(run.first_session_seconds for run in own)
            errors = sum(run.errors for run in own)
            note = f" ({errors} errors)" if errors else ""
            lines.append(
                f"| {load.name} ({load.describe(args)}) | {name} | {len(own)} | "
                f"{rate:.0f} {unit} ({common.spread(rates)}){note} | {mbps} | {quit_ms} | "
                f"{first_ms:.0f} | {common.median(run.cpu_ms for run in own):.2f} | {ratio} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer messages, 3 s windows")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default="4k,1m,short")
    parser.add_argument("--servers", default="roost,dovecot")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--live", action="store_true", help="run src/roost, not a snapshot")
    args = parser.parse_args()
    loads = [LOADS[name] for name in args.workloads.split(",")]
    if args.quick:
        loads = [
            load
            if load.kind == "short"
            else Load(load.name, load.kind, load.messages // 10, load.size)
            for load in loads
        ]
        args.seconds = min(args.seconds, 3.0)
    servers = args.servers.split(",")
    common.check_mailbox_servers(servers)
    if "dovecot" in servers and (why := common.dovecot_usable("pop3")) is not None:
        sys.exit(f"cannot run Dovecot: {why}")
    base = common.mailbox_bench_base(args.dir, "pop3-bench-", live=args.live)
    machine = common.machine_description(base)
    if version := common.dovecot_version():
        machine["dovecot"] = version
    print(json.dumps(machine, indent=1))
    runs: list[Run] = []
    try:
        for load in loads:
            for round_, kind in common.alternating(servers, args.rounds):
                run = run_once(kind, load, round_, args, base)
                runs.append(run)
                extra = " ".join(f"{k}={v:.1f}" for k, v in run.extra.items())
                print(
                    f"{load.name} round {round_} {kind}: {run.rate:.0f}/s"
                    f" {run.megabytes_per_second:.1f} MB/s"
                    f" quit={run.quit_seconds * 1000:.0f}ms cpu={run.cpu_ms:.2f}ms/unit"
                    f" errors={run.errors} load={run.load_before:.2f} {extra}",
                    flush=True,
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(runs, loads, args))
    if args.json is not None:
        data = {"machine": machine, "runs": [asdict(run) for run in runs]}
        args.json.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()

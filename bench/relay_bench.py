"""Outbound relay, side by side: smtp-source -> server -> smtp-sink on loopback.

The relay benchmark. smtp-source sends ``--messages`` (20,000) messages of 4 KB over 20
sessions to ``user@sink.test``; the server routes ``sink.test`` with ``transport_maps`` to
an ``smtp-sink`` on a loopback port (``smtp:[127.0.0.1]:PORT``: no MX lookup, no DNS), at
most ``default_destination_concurrency_limit = 20`` connections to it, for both servers.
The clock runs from smtp-source's start (its first connection) until the sink has counted
every message (``smtp-sink -c`` prints ``sess=N quit=N mesg=N`` after each ``.``; a thread
reads it and notes the moment the count is reached). The rate is messages over that time.

- roost: ``roost serve`` with its queue manager, ``mynetworks = 127.0.0.0/8``,
  ``relay_domains = sink.test``, ``transport_maps = inline:{ sink.test=smtp:[127.0.0.1]:P }``,
  ``dns_nameservers = 127.0.0.1:1`` (nothing listens there: any DNS lookup would fail at
  once instead of leaving the machine).
- Postfix: a separate instance (common.PostfixInstance: own config, queue and data
  directories, ``error:`` default and relay transports, no DNS) plus ``relay_domains =
  sink.test``, ``transport_maps = texthash:`` with the same route, and the ``smtp`` service
  in master.cf. Postfix's slow start (``initial_destination_concurrency = 5``) and its
  on-demand connection cache are left at their defaults.

The sink listens on 127.0.0.1, an address both servers listen on (``inet_interfaces``):
both apply their "loops back to myself" rule only when the next hop's port is 25 (Postfix
smtp_connect.c; roost since issue #8 -- before that, roost deferred every message here and
the benchmark used 127.0.0.2). ``--sink-address`` picks another loopback address.

Every run has a fresh server instance (fresh queue) and a fresh sink; runs alternate roost,
postfix, roost, ... Every half second a sampler counts the sink's messages, the server's
queue and the established TCP connections to the sink port (from /proc/net/tcp), to check
that both servers keep to the concurrency limit. Server CPU comes from /proc (roost: the
daemon, all threads; Postfix: the master and every process below it, exited ones
included); the sink's and smtp-source's CPU is not counted. A run fails if the sink gets
fewer or more messages than were sent, or nothing new for ``--stall`` seconds after
smtp-source is done; the failure names the first deferral or bounce in the server's log.

``--mode drain`` measures the relay alone: smtp-source first fills the queue while nothing
is relayed (roost without its queue manager, Postfix holding every message), then the queue
is released (roost restarted with its queue manager; ``postsuper -H ALL`` and ``postqueue
-f``) and the rate is taken from the sink's first message to its last. The fill phase's
rate and CPU per message are printed too (accept-only, for comparison).

Usage (as root, so that Postfix's master can start)::

    .venv/bin/python bench/relay_bench.py [--quick] [--rounds 3] [--messages N]
        [--mode e2e|drain] [--servers roost,postfix] [--limit 20] [--dir /var/tmp]
        [--json out.json] [--profile DIR]   # one extra roost run under py-spy (not counted)

``--quick``: 2,000 messages (the default is 20,000). ``--servers roost:PATCH[+PATCH]`` runs
a what-if variant of the daemon: ``ROOST_PATCHES`` in common.py (``trace`` prints timings
from inside the daemon) and :data:`RELAY_PATCHES` below.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pwd
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
from common import Instance, RunRecord, Workload

SINK_DOMAIN = "sink.test"
SINK_RECIPIENT = f"user@{SINK_DOMAIN}"
WORKLOAD = Workload("relay-4k", sessions=20, messages=20_000, size=4096)
#: the issue's target: roost's rate at least this many times Postfix's
TARGET = 1.5
#: seconds between two samples of the sink, the queue and the connections
SAMPLE_INTERVAL = 0.5
_COUNTER = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


# --- the sink ------------------------------------------------------------------------------


class Sink:
    """``smtp-sink -c`` on address:port; a thread follows its counters.

    ``smtp-sink`` writes ``sess=N quit=N mesg=N\\r`` to stdout whenever a message's ``.``
    arrives or a session ends; :attr:`messages` is the last ``mesg`` seen, and
    :attr:`reached_at` the monotonic time at which it first reached :attr:`expected`.
    """

    def __init__(self, expected: int, address: str) -> None:
        self.expected = expected
        self.address = address
        self.port = common.free_port(address)
        self.messages = 0
        self.sessions = 0
        self.first_at: float | None = None
        self.reached_at: float | None = None
        self.reached = threading.Event()
        # smtp-sink's warnings go to a file: an unread pipe could fill up and stop it
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        program = common.find_program("smtp-sink")
        if program is None:
            sys.exit("smtp-sink not found: apt-get install postfix (it ships in /usr/sbin)")
        command = [program, "-c", "-4", "-h", "sink.localdomain", "-m", "512"]
        if os.geteuid() == 0:  # smtp-sink refuses to run as root without -u
            command += ["-u", _unprivileged_user()]
        command += [f"{address}:{self.port}", "1024"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._errors, bufsize=0
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._errors.seek(0)
                error = self._errors.read().decode(errors="replace")
                raise RuntimeError(f"smtp-sink exited: {error}")
            if self.port in listening_ports():
                return
            time.sleep(0.05)
        raise RuntimeError("smtp-sink is not listening after 10 s")

    def _read(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        while chunk := self.process.stdout.read(65536):
            pending += chunk
            records = pending.split(b"\r")
            pending = records.pop()
            for record in reversed(records):
                match = _COUNTER.search(record)
                if match:
                    self.sessions, self.messages = int(match[1]), int(match[3])
                    break
            if self.first_at is None and self.messages:
                self.first_at = time.monotonic()
            if self.reached_at is None and self.messages >= self.expected:
                self.reached_at = time.monotonic()
                self.reached.set()

    def stop(self) -> None:
        common.end_process(self.process, timeout=10)
        self._reader.join(5)
        self._errors.close()


def _unprivileged_user() -> str:
    for name in ("nobody", "postfix"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    sys.exit("smtp-sink needs an unprivileged user (-u) when run as root: none found")


def listening_ports() -> set[int]:
    """Local ports in state LISTEN on IPv4 (from /proc/net/tcp)."""
    return {local for local, _, _, state in _tcp_sockets() if state == "0A"}


def connections_to(address: str, port: int) -> int:
    """Established IPv4 connections to ``address:port`` (clients of the sink; other
    programs' connections to the same port number on other loopback addresses are not
    counted)."""
    return sum(
        1
        for _, remote_address, remote, state in _tcp_sockets()
        if state == "01" and remote == port and remote_address == address
    )


def _tcp_sockets() -> list[tuple[int, str, int, str]]:
    """``(local port, remote address, remote port, state)`` of every IPv4 TCP socket."""
    found = []
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            remote_hex, _, remote_port = remote.partition(":")
            remote_address = socket.inet_ntoa(int(remote_hex, 16).to_bytes(4, "little"))
            found.append(
                (int(local.rsplit(":", 1)[1], 16), remote_address, int(remote_port, 16), state)
            )
    return found


# --- the servers, with the route to the sink -----------------------------------------------

#: What-if variants for this benchmark, on top of ``common.ROOST_PATCHES`` (experiments to
#: measure a proposed src/ change, never configurations): Python run in the daemon before
#: ``roost serve``. ``--servers roost:nosyncactivate+nosyncremove``.
RELAY_PATCHES: dict[str, str] = {
    # the smtp transport reads every message through a thread, as before issue #8 (today
    # content up to 64 KB is read on the event loop)
    "threadread": """
import roost.delivery.smtp as _smtp
_smtp.INLINE_READ_LIMIT = -1
""",
    # the queue manager's incoming -> active move without a directory fsync: recovery moves
    # active/ back to incoming/ after a crash anyway, so the fsync buys nothing (Postfix's
    # qmgr renames into active/ without one)
    "nosyncactivate": """
import roost.queue.directory as _qdir
_move_apply = _qdir._MoveJob.apply
def _move_apply_nosync(self, qd):
    _move_apply(self, qd)
    if self.src is _qdir.QueueName.INCOMING and self.dst is _qdir.QueueName.ACTIVE:
        self.touched.clear()
_qdir._MoveJob.apply = _move_apply_nosync
""",
    # removal after delivery without a directory fsync: after a crash a delivered message
    # may come back and be delivered twice (what Postfix accepts: it never fsyncs a removal)
    "nosyncremove": """
import roost.queue.directory as _qdir
_remove_apply = _qdir._RemoveJob.apply
def _remove_apply_nosync(self, qd):
    _remove_apply(self, qd)
    self.touched.clear()
_qdir._RemoveJob.apply = _remove_apply_nosync
""",
    # incoming -> active moves and removals after delivery off the single spool committer
    # thread: plain link/rename/unlink calls in the spool's I/O threads, in parallel and
    # without fsync (what Postfix's qmgr does). Only new mail's commits stay serialized.
    # EXPERIMENT: crash consistency of this shortcut is not worked out.
    "offcommitter": """
import asyncio as _asyncio
import os as _os
import roost.queue.spool as _spool
from roost.queue.directory import QueueName as _QueueName
from roost.queue.errors import SpoolError as _SpoolError, SpoolErrorKind as _Kind
_spool_move = _spool.Spool.move
_spool_remove = _spool.Spool.remove
def _activate(qd, queue_id):
    src_content = qd.content_path(_QueueName.INCOMING, queue_id)
    dst_content = qd.content_path(_QueueName.ACTIVE, queue_id)
    _os.link(src_content, dst_content)
    _os.rename(
        qd.envelope_path(_QueueName.INCOMING, queue_id),
        qd.envelope_path(_QueueName.ACTIVE, queue_id),
    )
    _os.unlink(src_content)
def _remove(qd, queue, queue_id):
    _os.unlink(qd.envelope_path(queue, queue_id))
    try:
        _os.unlink(qd.content_path(queue, queue_id))
    except FileNotFoundError:
        pass
async def _fast_move(self, queue_id, from_queue, to_queue, *, envelope=None):
    if envelope is not None or (from_queue, to_queue) != (_QueueName.INCOMING, _QueueName.ACTIVE):
        return await _spool_move(self, queue_id, from_queue, to_queue, envelope=envelope)
    loop = _asyncio.get_running_loop()
    try:
        await loop.run_in_executor(self._io, _activate, self.directory, queue_id)
    except FileNotFoundError:
        raise _SpoolError("no such message", _Kind.NOT_FOUND, queue_id=queue_id) from None
async def _fast_remove(self, queue_id, queue):
    loop = _asyncio.get_running_loop()
    try:
        await loop.run_in_executor(self._io, _remove, self.directory, queue, queue_id)
    except FileNotFoundError:
        raise _SpoolError("no such message", _Kind.NOT_FOUND, queue_id=queue_id) from None
_spool.Spool.move = _fast_move
_spool.Spool.remove = _fast_remove
""",
}
PATCHES = {**common.ROOST_PATCHES, **RELAY_PATCHES}


class RelayRoost(common.RoostInstance):
    """roost with ``transport_maps`` pointing ``sink.test`` at the sink.

    ``deliver=False`` (drain mode) starts it without its queue manager; :meth:`release`
    restarts it with the queue manager, which takes up everything in ``incoming/``.
    """

    patch_table = PATCHES

    def __init__(
        self,
        directory: Path,
        sink: str,
        limit: int,
        *,
        deliver: bool,
        patches: Sequence[str] = (),
    ) -> None:
        super().__init__(directory, deliver=deliver, patches=patches)
        self.sink = sink
        self.limit = limit

    def setup(self) -> None:
        super().setup()
        with open(self.directory / "main.cf", "a") as config:
            config.write(
                "# relay benchmark (bench/relay_bench.py)\n"
                f"relay_domains = {SINK_DOMAIN}\n"
                f"transport_maps = inline:{{ {SINK_DOMAIN}=smtp:{self.sink} }}\n"
                "dns_nameservers = 127.0.0.1:1\n"
                "dns_lookup_timeout = 1s\n"
                f"default_destination_concurrency_limit = {self.limit}\n"
            )

    def hold(self) -> None:
        """Drain mode: stop the daemon (the queue stays in ``incoming/``)."""
        self.stop()

    def release(self) -> None:
        """Drain mode: start the daemon again, with its queue manager."""
        config = self.directory / "main.cf"
        lines = []
        for line in config.read_text().splitlines():
            if line.startswith("master_service_disable"):
                name, _, services = line.partition("=")
                kept = [s.strip() for s in services.split(",") if s.strip() not in ("qmgr", "")]
                line = f"{name.strip()} = {', '.join(kept)}"
            lines.append(line)
        config.write_text("\n".join(lines) + "\n")
        self.deliver = True
        self.processes = []
        for socket_file in self.directory.glob("notify*.sock"):
            socket_file.unlink()
        self.start()


class RelayPostfix(common.PostfixInstance):
    """The common Postfix instance plus the route to the sink and the smtp service.

    ``deliver=False`` (drain mode) puts every message on hold as it arrives
    (``header_checks = static:HOLD``); :meth:`release` is ``postsuper -H ALL`` and
    ``postqueue -f``.
    """

    def __init__(self, directory: Path, sink: str, limit: int, *, deliver: bool) -> None:
        super().__init__(directory, deliver=deliver)
        self.sink = sink
        self.limit = limit

    def setup(self) -> None:
        super().setup()
        (self.conf / "transport").write_text(f"{SINK_DOMAIN} smtp:{self.sink}\n")
        with open(self.conf / "main.cf", "a") as config:
            config.write(
                "# relay benchmark (bench/relay_bench.py)\n"
                f"relay_domains = {SINK_DOMAIN}\n"
                f"transport_maps = texthash:{self.conf}/transport\n"
                f"default_destination_concurrency_limit = {self.limit}\n"
            )
        with open(self.conf / "master.cf", "a") as master:
            master.write(
                "smtp      unix  -       -       n       -       -       smtp\n"
                "relay     unix  -       -       n       -       -       smtp\n"
            )

    def hold(self) -> None:
        """Drain mode: nothing to do, the messages are on hold already."""

    def release(self) -> None:
        """Drain mode: move every message from ``hold/`` to ``deferred/`` and flush."""
        for command in ("postsuper", "postqueue"):
            program = common.find_program(command) or command
            option = "-H" if command == "postsuper" else "-f"
            argv = [program, "-c", str(self.conf), option, *(["ALL"] if option == "-H" else [])]
            subprocess.run(argv, capture_output=True, text=True, check=True)
        self.deliver = True

    def queue_counts(self) -> dict[str, int]:
        return {
            **super().queue_counts(),
            "hold": common.count_files(self.queue / "hold", recursive=True),
        }


RelayInstance = RelayRoost | RelayPostfix


def make_instance(kind: str, base: Path, sink: str, limit: int, *, deliver: bool) -> RelayInstance:
    """``roost``, ``roost:PATCH[+PATCH...]`` (:data:`PATCHES`) or ``postfix``,
    relaying ``sink.test`` to ``sink`` (``[address]:port``)."""
    directory = Path(tempfile.mkdtemp(prefix=f"relay-{kind.replace(':', '-')}-", dir=base))
    directory.rmdir()  # setup() creates it
    if kind == "postfix":
        return RelayPostfix(directory, sink, limit, deliver=deliver)
    name, _, patch_text = kind.partition(":")
    patches = patch_text.split("+") if patch_text else []
    if name != "roost" or any(patch not in PATCHES for patch in patches):
        raise ValueError(f"unknown server {kind!r} (patches: {', '.join(PATCHES)})")
    return RelayRoost(directory, sink, limit, deliver=deliver, patches=patches)


def smtp_source_command(port: int, workload: Workload) -> list[str]:
    """common.smtp_source_command's load (one connection per message, HELO, one recipient,
    no pipelining), addressed to the sink's domain."""
    command = common.smtp_source_command(port, workload)
    command[command.index("-t") + 1] = SINK_RECIPIENT
    return command


# --- one run -------------------------------------------------------------------------------


class Sampler:
    """Every :data:`SAMPLE_INTERVAL`: (seconds, sink's messages, queue, connections to it)."""

    def __init__(self, instance: Instance, sink: Sink, started: float) -> None:
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(SAMPLE_INTERVAL):
                with contextlib.suppress(OSError):
                    queue = sum(instance.queue_counts().values())
                    self.samples.append(
                        (
                            time.monotonic() - started,
                            sink.messages,
                            queue,
                            connections_to(sink.address, sink.port),
                        )
                    )

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wait_for_sink(
    sink: Sink, deadline: float, stall: float, source: subprocess.Popen[str] | None = None
) -> tuple[float | None, str]:
    """Wait until the sink has every message; return (when smtp-source ended, failure)."""
    started = time.monotonic()
    ingest_end: float | None = None if source is not None else started
    progress = (started, 0)  # when the sink's count last moved, and to what
    while not sink.reached.wait(0.05):
        now = time.monotonic()
        if sink.messages != progress[1]:
            progress = (now, sink.messages)
        if ingest_end is None and source is not None and source.poll() is not None:
            ingest_end = now
            if source.returncode:
                stderr = source.stderr.read() if source.stderr else ""
                return ingest_end, f"smtp-source exit {source.returncode}: {stderr.strip()[-300:]}"
        if now > deadline:
            return ingest_end, f"the sink has {sink.messages} of {sink.expected} at the time limit"
        if ingest_end is not None and now - progress[0] > stall:
            return ingest_end, (
                f"stalled: the sink has {sink.messages} of {sink.expected}, none new for "
                f"{stall:.0f} s"
            )
    if source is not None and ingest_end is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            source.wait(30)
        ingest_end = time.monotonic()
    return ingest_end, ""


def run_once(
    server: str,
    workload: Workload,
    round_: int,
    args: argparse.Namespace,
    *,
    profile: Path | None = None,
) -> RunRecord:
    """Fresh sink and instance; send the workload; wait until the sink has every message.

    ``e2e``: the clock runs from smtp-source's start until the sink has them all. ``drain``:
    smtp-source fills the queue first (nothing is relayed meanwhile); the clock runs from the
    sink's first message to its last, after the queue is released.
    """
    drain = args.mode == "drain"
    sink = Sink(workload.messages, args.sink_address)
    instance = make_instance(
        server, args.dir, f"[{sink.address}]:{sink.port}", args.limit, deliver=not drain
    )
    profiler = None
    source: subprocess.Popen[str] | None = None
    sampler: Sampler | None = None
    extra: dict[str, Any] = {}
    try:
        if common.SETTLE:
            common.settle_filesystem()
        instance.setup()
        instance.start()
        time.sleep(0.5)  # let start-up work (process spawns, first queue scan) finish
        load = common.load_average()
        if drain:
            began, cpu_began = time.monotonic(), instance.cpu_seconds()
            filled = subprocess.run(
                smtp_source_command(instance.port, workload),
                capture_output=True,
                text=True,
                timeout=args.timeout,
                check=False,
            )
            extra["ingest_seconds"] = time.monotonic() - began
            extra["ingest_cpu_ms"] = 1000 * (instance.cpu_seconds() - cpu_began) / workload.messages
            queued = sum(instance.queue_counts().values())
            if filled.returncode or queued != workload.messages:
                raise RuntimeError(
                    f"filling the queue: smtp-source exit {filled.returncode} "
                    f"{filled.stderr.strip()[-300:]}; {queued} of {workload.messages} queued"
                )
            instance.hold()
        cpu_before = instance.cpu_seconds()  # roost in drain mode: 0, it is not running
        master_pid = None if drain else _master_pid(instance)
        master_before = common.process_cpu_seconds(master_pid) if master_pid else 0.0
        started = time.monotonic()
        sampler = Sampler(instance, sink, started)
        if drain:
            instance.release()
            extra["release_seconds"] = time.monotonic() - started
        if profile is not None and instance.profile_pid() is not None:
            profiler = common.Profiler(instance.profile_pid() or 0, profile)
        if not drain:
            source = subprocess.Popen(
                smtp_source_command(instance.port, workload),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        ingest_end, failure = wait_for_sink(sink, started + args.timeout, args.stall, source)
        cpu = instance.cpu_seconds() - cpu_before
        if master_pid:  # the master alone (queue manager, deliveries), without its children
            master_cpu = common.process_cpu_seconds(master_pid) - master_before
            extra["master_cpu_ms"] = 1000 * master_cpu / workload.messages
        if drain:
            first, last = sink.first_at or started, sink.reached_at or time.monotonic()
            seconds = last - first
            extra["first_message_seconds"] = first - started
        else:
            seconds = (sink.reached_at or time.monotonic()) - started
            extra["ingest_seconds"] = ingest_end - started if ingest_end else None
        sampler.stop()
        extra["queue_left"] = _wait_queue_empty(instance, 5.0)
        # more than were sent would be messages relayed twice
        if not failure and sink.messages != workload.messages:
            failure = f"the sink has {sink.messages} messages, {workload.messages} sent"
        if failure:
            failure += _first_problem(instance.directory / "maillog")
        # the sink counts a session when it ends: stop the server (roost QUITs its cached
        # connections) before reading how many connections were used in all
        if profiler is not None:
            profiler.stop()
            profiler = None
        instance.stop()
        time.sleep(0.3)
        return RunRecord(
            server=server,
            workload=f"{workload.name}-{args.mode}",
            round=round_,
            messages=workload.messages,
            seconds=seconds,
            cpu_seconds=cpu,
            load_before=load,
            ok=not failure,
            note=failure,
            extra={
                **extra,
                "sink_messages": sink.messages,
                "sink_sessions": sink.sessions,
                "queue_max": max((s[2] for s in sampler.samples), default=0),
                "connections_max": max((s[3] for s in sampler.samples), default=0),
                "series": [(round(t, 1), n, q, c) for t, n, q, c in sampler.samples],
            },
        )
    finally:
        if source is not None and source.poll() is None:
            source.kill()
            source.wait()
        if sampler is not None:
            sampler.stop()
        if profiler is not None:
            profiler.stop()
        instance.stop()
        sink.stop()
        instance.remove()
        trace = instance.take_trace()  # the ``trace`` what-if patch's figures, if asked
        if trace:
            print(common.trace_lines(trace))


def _master_pid(instance: Instance) -> int | None:
    """roost's master process (queue manager, deliveries); None for Postfix."""
    return instance.profile_pid() if isinstance(instance, common.RoostInstance) else None


def _first_problem(maillog: Path) -> str:
    """The first deferral or bounce in the server's log, to say why mail did not arrive."""
    with contextlib.suppress(OSError), open(maillog, errors="replace") as lines:
        for line in lines:
            if "status=deferred" in line or "status=bounced" in line:
                return f"; first problem in the log: {line.strip()[-240:]}"
    return ""


def _wait_queue_empty(instance: Instance, timeout: float) -> int:
    """Wait (bounded) until the server's queue is empty; return what is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = sum(instance.queue_counts().values())
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# --- report --------------------------------------------------------------------------------


def series_line(series: Sequence[tuple[float, int, int, int]], width: int = 12) -> str:
    """``Ns:sink/queue/connections`` at about ``width`` evenly spaced moments."""
    picked = common.evenly_spaced(series, width)
    return " ".join(f"{t:.0f}s:{n}/{q}/{c}" for t, n, q, c in picked) if picked else "(no samples)"


def summary_lines(records: Sequence[RunRecord], servers: Sequence[str], mode: str) -> list[str]:
    what = "accepted while relaying" if mode == "e2e" else "filled the queue, nothing relayed"
    lines = ["", f"per server, medians (smtp-source's rate: {what}):"]
    for server in servers:
        runs = [r for r in records if r.server == server and r.ok]
        if not runs:
            continue
        ingest = [r.messages / r.extra["ingest_seconds"] for r in runs if r.extra["ingest_seconds"]]
        fill_cpu = [r.extra["ingest_cpu_ms"] for r in runs if "ingest_cpu_ms" in r.extra]
        cpu = f" at {common.median(fill_cpu):.2f} ms CPU/msg" if fill_cpu else ""
        lines.append(
            f"  {server:<15} smtp-source {common.median(ingest):6.0f} msg/s{cpu};"
            f" sink sessions {common.median(r.extra['sink_sessions'] for r in runs):.0f};"
            f" most connections to the sink {max(r.extra['connections_max'] for r in runs)};"
            f" largest queue {max(r.extra['queue_max'] for r in runs)}"
        )
    return lines


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 messages, not 20,000")
    parser.add_argument("--messages", type=int, help="messages per run")
    parser.add_argument("--sessions", type=int, default=WORKLOAD.sessions)
    parser.add_argument("--size", type=int, default=WORKLOAD.size, help="body bytes")
    parser.add_argument(
        "--mode",
        choices=("e2e", "drain"),
        default="e2e",
        help="e2e: injection and relay together (default); drain: relay a full queue",
    )
    parser.add_argument(
        "--limit", type=int, default=20, help="default_destination_concurrency_limit (both)"
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=60,
        help="give up a run when the sink got nothing new for this long after smtp-source ended",
    )
    parser.add_argument(
        "--sink-address",
        default="127.0.0.1",
        help="loopback address of smtp-sink (default 127.0.0.1; see the module docs)",
    )
    common.add_comparison_arguments(parser)
    args = parser.parse_args(argv)

    messages = args.messages or (WORKLOAD.messages // 10 if args.quick else WORKLOAD.messages)
    workload = Workload(WORKLOAD.name, args.sessions, messages, args.size)
    servers, machine = common.prepare_comparison(args)
    print(
        f"mode: {args.mode}; servers: {', '.join(servers)}; rounds: {args.rounds}; smtp-source "
        f"{workload.describe()} to {SINK_RECIPIENT}; smtp-sink on {args.sink_address}; "
        f"{args.limit} connections per destination",
        flush=True,
    )
    try:
        records = common.run_alternating(
            servers,
            args.rounds,
            lambda server, round_: run_once(server, workload, round_, args),
            record_line,
        )
        if args.profile is not None:
            record, raw = common.profiled_run(
                args.profile,
                f"relay-{args.mode}",
                lambda raw: run_once("roost", workload, 0, args, profile=raw),
            )
            print(record_line(record) + f"\n  (profiled run, not counted; profile {raw})")
    finally:
        common.drop_roost_snapshot()
    print()
    reported = Workload(f"{workload.name}-{args.mode}", *dataclasses.astuple(workload)[1:])
    # the target is for the end-to-end figure
    targets = {reported.name: TARGET} if args.mode == "e2e" else {}
    table = common.comparison_table(records, [reported], servers, targets=targets)
    print(table.replace("msg/s median", "msg/s at the sink, median"))
    print("\n".join(summary_lines(records, servers, args.mode)))
    if args.quick:
        print("\n(--quick: short runs; judge the target on full runs)")
    if args.json:
        common.write_json(args.json, machine, records)
    return 0 if all(r.ok for r in records) else 1


def record_line(record: RunRecord) -> str:
    extra = record.extra
    if "release_seconds" in extra:
        timing = (
            f"first..last message at the sink (queue filled in {extra['ingest_seconds']:.1f} s"
            f" at {extra['ingest_cpu_ms']:.2f} ms CPU/msg; released in"
            f" {extra['release_seconds']:.1f} s,"
            f" first message {extra['first_message_seconds']:.1f} s later)"
        )
    else:
        ingest = extra.get("ingest_seconds") or float("nan")
        timing = f"(smtp-source done at {ingest:.1f} s)"
    status = "" if record.ok else f"\n    FAILED: {record.note}"
    master = f" (master {extra['master_cpu_ms']:.2f})" if "master_cpu_ms" in extra else ""
    return (
        f"  round {record.round} {record.server:<15} {record.rate:6.0f} msg/s at the sink"
        f"  {record.seconds:7.2f} s {timing}\n"
        f"    CPU {record.cpu_ms_per_message:5.2f} ms/msg{master}  load {record.load_before:4.1f}"
        f"  sink sessions {extra.get('sink_sessions')}  max conns {extra.get('connections_max')}"
        f"  queue left {extra.get('queue_left')}{status}\n"
        f"    sink/queue/conns: {series_line(extra.get('series', []))}"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

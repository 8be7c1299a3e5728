"""IMAP, side by side: roost against a separate Dovecot imap instance on the same machine.

Workloads (``--quick``: 1 round, 4 s windows, 200 idle connections, a 10,000-message
mailbox):

- ``mixed``: the load of ``bench/imap_load.py`` (LOGIN, SELECT INBOX, FETCH 1:* (FLAGS
  ENVELOPE), 3 x BODY.PEEK[], 2 x STORE, SEARCH, APPEND, UID STORE \\Deleted, EXPUNGE,
  LOGOUT) from 10 and 50 clients (``--clients``), each on its own user with a
  ``--messages`` (75) message INBOX, in two modes (``--modes``): ``cycle`` (a connection,
  LOGIN and LOGOUT every cycle) and ``session`` (long-lived sessions). Commands per second
  per type, logins per second, server CPU per command.
- ``idle``: memory of ``--idle-connections`` (1,000) connections, each its own user (a
  10-message INBOX), logged in, INBOX SELECTed, in IDLE: PSS summed over every server
  process (``/proc/PID/smaps_rollup``), before and with the connections. ``--tls
  implicit`` connects to the imaps port instead, ``--tls starttls`` sends STARTTLS first
  (both servers with a self-signed certificate; the workload is then named
  ``idle-N-implicit`` or ``idle-N-starttls``).
- ``big``: one INBOX of ``--big-messages`` (100,000) messages written straight into
  ``cur/`` (names with ``,S=`` and ``,W=``, a third unseen): a first session's SELECT and
  FETCH 1:* (FLAGS) (cold: the server builds its index), then ``--warm`` (3) new sessions
  timing LOGIN, SELECT INBOX (warm) and FETCH 1:* (FLAGS); medians.

Each run gets a *fresh* server and mail directory, with the same message bytes for both
servers (LF line ends, as delivery writes them). In ``mixed`` an untimed first pass
(each user: LOGIN, SELECT, FETCH 1:* (FLAGS ENVELOPE), LOGOUT) lets both servers index the
mail and cache envelopes first. Runs alternate (roost, dovecot, roost, ...); tables give
medians, min-max and the ratio roost/Dovecot (of the medians; and the median of the ratios
of the runs done next to each other).

Both servers as shipped except: plain TCP on 127.0.0.1, passwords in a passwd-file as
{PLAIN} (no hashing cost on either side), per-user and per-address connection limits
raised for the ``idle`` workload, and Dovecot's ``mail_fsync`` (``--dovecot-fsync``,
default ``always``, because roost fsyncs every APPEND; Dovecot's default ``optimized``
does not). Dovecot is a *separate* instance with its own configuration, base_dir and state
under ``--dir`` (never ``/etc/dovecot`` or the system instance); its master must start as
root; its mail processes run as uid/gid 5000. roost runs a snapshot of ``src/roost``
(others may edit the tree), with only its imap service. Server CPU and memory come from
/proc: roost's daemon process; Dovecot's master and every process below it (CPU: with the
children it reaped).

With 1,000 IDLE connections Dovecot's imap processes (all uid 5000) run out of inotify
instances (the kernel's ``fs.inotify.max_user_instances``, 128 here) and fall back to
polling the mailbox; the run notes it from Dovecot's log. Machine-wide settings are left
alone. RLIMIT_NOFILE is raised to the hard limit for the client and both servers.

Usage (as root)::

    .venv/bin/python bench/imap_bench.py --quick
    .venv/bin/python bench/imap_bench.py --workloads mixed --modes cycle --rounds 3
    .venv/bin/python bench/imap_bench.py --workloads idle,big --rounds 3
        [--servers roost,dovecot] [--seconds 15] [--dir /var/tmp] [--json out.json]
        [--profile DIR]   (one extra roost run per mixed load under py-spy, not counted)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
import imap_load

DOMAIN = common.DOMAIN
PASSWORD = "benchpass"
ROOT = Path(__file__).resolve().parent.parent


# --- mail ---------------------------------------------------------------------------------------


def message_bytes(number: int, size: int, user: str) -> bytes:
    """A message of about ``size`` octets with LF line ends, as it is stored in a Maildir."""
    return imap_load.make_message(number, size, user=user, domain=DOMAIN).replace(b"\r\n", b"\n")


def maildir_name(number: int, data: bytes, flags: str) -> str:
    """A Dovecot-style file name ``<base>,S=<size>,W=<vsize>:2,<flags>``."""
    vsize = len(data) + data.count(b"\n")
    return f"{1700000000 + number}.M{number}P1.bench,S={len(data)},W={vsize}:2,{flags}"


def fill_maildir(maildir: Path, user: str, count: int, *, base_size: int = 2000) -> None:
    """``count`` messages of 2-10 KB in ``cur/`` (two thirds \\Seen), one per second of age."""
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for number in range(1, count + 1):
        data = message_bytes(number, base_size + 997 * (number % 9), user)
        name = maildir_name(number, data, "S" if number % 3 else "")
        fd = os.open(maildir / "cur" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def fill_big_maildir(maildir: Path, user: str, count: int) -> None:
    """``count`` small messages (~1 KB) in ``cur/``, written directly (quickly)."""
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    template = message_bytes(0, 900, user)
    cur = str(maildir / "cur")
    for number in range(1, count + 1):
        data = template.replace(b"<0.900.bench@", b"<%d.900.bench@" % number, 1)
        name = maildir_name(number, data, "S" if number % 3 else "")
        fd = os.open(f"{cur}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


# --- limits ------------------------------------------------------------------------------------


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


# --- servers ------------------------------------------------------------------------------------

#: dovecot.conf additions: INBOX and the special-use mailboxes, as Debian ships them
#: Dovecot with TLS (``--tls``): STARTTLS on its IMAP port and implicit TLS on ``port``,
#: the certificate of :func:`dovecot_certificate` (these lines override ``ssl = no``)
DOVECOT_TLS = """\
ssl = yes
ssl_cert = <{d}/dovecot-tls/cert.pem
ssl_key = <{d}/dovecot-tls/key.pem
service imap-login {{
  inet_listener imaps_bench {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
"""


def dovecot_certificate(base: Path) -> None:
    """A self-signed certificate and key for Dovecot under ``base/dovecot-tls`` (once)."""
    from roost.tls import generate_selfsigned

    directory = base / "dovecot-tls"
    if not (directory / "cert.pem").exists():
        generate_selfsigned("localhost", directory / "cert.pem", directory / "key.pem")


DOVECOT_NAMESPACE = """\
namespace inbox {
  inbox = yes
  separator = .
  mailbox Drafts {
    special_use = \\Drafts
  }
  mailbox Sent {
    special_use = \\Sent
  }
  mailbox Trash {
    special_use = \\Trash
  }
  mailbox Junk {
    special_use = \\Junk
  }
}
"""


#: roost's ``imap_hibernate_timeout`` and ``max_idle`` (``--hibernate-timeout``,
#: ``--max-idle``; set by main(), the defaults roost's). A base without a parameter
#: ignores it (unknown parameters warn).
IDLE_SETTINGS = {"imap_hibernate_timeout": "30s", "max_idle": "100s"}


def split_memory(server: common.MailboxServer) -> dict[str, float]:
    """PSS and anonymous PSS (KiB) of the server's first process (roost: the master) and
    of the others (the fork server and the workers), from ``/proc/PID/smaps_rollup``."""
    root = server.root_pid()
    totals = dict.fromkeys(("master_pss", "master_anon", "others_pss", "others_anon"), 0.0)
    if root is None:
        return totals
    for pid in common.descendants(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                text = rollup.read()
        except OSError:
            continue
        who = "master" if pid == root else "others"
        for line in text.splitlines():
            if line.startswith("Pss:"):
                totals[f"{who}_pss"] += int(line.split()[1])
            elif line.startswith("Pss_Anon:"):
                totals[f"{who}_anon"] += int(line.split()[1])
    return totals


def roost_status(server: common.MailboxServer) -> dict[str, Any]:
    """``roost status`` of a roost server through its control socket ({} otherwise)."""
    path = getattr(server, "directory", None)
    if path is None or not (path / "lib" / "control.sock").exists():
        return {}
    from roost.daemon.control import request

    try:
        return dict(request(path / "lib" / "control.sock", "status"))
    except OSError:
        return {}


def make_server(
    kind: str,
    base: Path,
    label: str,
    users: Sequence[str],
    *,
    fsync: str = "always",
    tls_port: int | None = None,
) -> common.MailboxServer:
    """roost or Dovecot serving IMAP to ``users``; ``fsync``: Dovecot's ``mail_fsync``;
    ``tls_port``: TLS as well (STARTTLS on the IMAP port, implicit TLS on this one), with
    a self-signed certificate."""
    roost = "mail_max_userip_connections = 2000\nimap_client_connection_count_limit = 0\n"
    # Explicit, so that runs of bases without the parameter are told apart in the output.
    roost += "".join(f"{name} = {value}\n" for name, value in IDLE_SETTINGS.items())
    if processes := os.environ.get("ROOST_WORKER_PROCESSES"):  # 1 vs N (docs/performance)
        roost += f"worker_processes = {processes}\n"
    dovecot = f"mail_fsync = {fsync}\nmail_max_userip_connections = 2000\n{DOVECOT_NAMESPACE}"
    if tls_port is not None:  # roost makes its certificate at start (tls_selfsigned_auto)
        others = [s for s in common.ROOST_SERVICES if s not in ("imap", "imaps")]
        roost += f"imaps_service_port = {tls_port}\nmaster_service_disable = {', '.join(others)}\n"
        dovecot += DOVECOT_TLS.format(port=tls_port, d=base)
    return common.make_mailbox_server(
        kind,
        base,
        label,
        users,
        protocol="imap",
        password=PASSWORD,
        roost_settings=roost,
        dovecot_settings=dovecot,
    )


# --- runs ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run of one server on one workload."""

    server: str
    workload: str
    round: int
    seconds: float
    load_before: float
    cpu_seconds: float = 0.0
    values: dict[str, float] = field(default_factory=dict)
    load: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: int = 0


async def warm_up(server: common.MailboxServer, concurrency: int = 10) -> None:
    """Every user once: LOGIN, SELECT INBOX, FETCH 1:* (FLAGS ENVELOPE), LOGOUT (untimed)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(user: str, password: str) -> None:
        async with gate:
            client = imap_load.Client()
            await client.connect("127.0.0.1", server.port)
            await client.login(user, password)
            if await client.select("INBOX"):
                await client.command(b"FETCH 1:* (FLAGS ENVELOPE)")
            await client.logout()

    await asyncio.gather(*(one(user, password) for user, password in server.logins()))


def run_mixed(
    kind: str, mode: str, clients: int, round_: int, args: argparse.Namespace, base: Path
) -> Run:
    users = [f"bench{i}" for i in range(1, clients + 1)]
    server = make_server(kind, base, f"{mode}{clients}", users, fsync=args.dovecot_fsync)
    try:
        server.setup()
        for user in users:
            fill_maildir(server.maildir(user), user, args.messages)
        server.own_mail()
        server.start()
        imap_load.event_loop_run(warm_up(server))
        config = imap_load.LoadConfig(
            port=server.port,
            logins=server.logins(),
            clients=clients,
            mode=mode,
            seconds=args.seconds,
            seed=round_,
        )
        load_before = common.load_average()
        cpu_before = server.cpu_seconds()
        result = imap_load.run_load_processes(config, args.processes)
        cpu = server.cpu_seconds() - cpu_before
        summary = result.summary()
        values = {
            "commands_per_second": result.rate,
            "logins_per_second": result.type_rate("LOGIN"),
            "cycles_per_second": result.cycles / result.elapsed if result.elapsed else 0.0,
            "cpu_ms_per_command": 1000 * cpu / result.commands if result.commands else 0.0,
            "client_cpu_share": result.client_cpu / result.elapsed if result.elapsed else 0.0,
        }
        for name in imap_load.COMMAND_TYPES:
            if result.counts.get(name):
                values[f"{name}_per_second"] = result.type_rate(name)
                values[f"{name}_p50_ms"] = result.percentile(name, 0.5)
        if result.latencies_ms.get("CONNECT") and mode == "cycle":
            values["connect_p50_ms"] = result.percentile("CONNECT", 0.5)
        return Run(
            server=kind,
            workload=f"{mode}-{clients}",
            round=round_,
            seconds=result.elapsed,
            load_before=load_before,
            cpu_seconds=cpu,
            values=values,
            load=summary,
            notes=server.notes()[:5],
            errors=result.errors,
        )
    finally:
        server.stop()
        server.remove()


@contextlib.contextmanager
def idle_server(
    kind: str, base: Path, count: int, *, fsync: str = "always", tls_port: int | None = None
) -> Iterator[common.MailboxServer]:
    """The ``idle`` workload's server, started: ``count`` users ``idle1``... with 10
    messages each in INBOX; stopped and removed on the way out. ``tls_port``: see
    :func:`make_server`."""
    users = [f"idle{i}" for i in range(1, count + 1)]
    server = make_server(kind, base, "idle", users, fsync=fsync, tls_port=tls_port)
    try:
        server.setup()
        for user in users:
            fill_maildir(server.maildir(user), user, 10)
        server.own_mail()
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()


def run_idle(kind: str, round_: int, args: argparse.Namespace, base: Path) -> Run:
    count = args.idle_connections
    tls_port = None if args.tls == "none" else common.free_port()
    if tls_port is not None and kind == "dovecot":
        dovecot_certificate(base)
    with idle_server(kind, base, count, fsync=args.dovecot_fsync, tls_port=tls_port) as server:
        port = tls_port if args.tls == "implicit" and tls_port is not None else server.port
        tls = None if args.tls == "none" else imap_load.client_tls_context()
        time.sleep(1.0)
        before = server.memory()
        split_before = split_memory(server)
        load_before = common.load_average()
        cpu_before = server.cpu_seconds()

        split: dict[str, dict[str, float]] = {"before": split_before}
        waited: dict[str, float] = {}  # after --idle-wait: PSS (MiB), sessions in the master

        async def measure() -> tuple[imap_load.IdleSessions, common.Memory]:
            sessions = await imap_load.open_idle_sessions(
                "127.0.0.1",
                port,
                server.logins(),
                count,
                concurrency=args.idle_concurrency,
                tls=tls,
                starttls=args.tls == "starttls",
            )
            await asyncio.sleep(args.idle_settle)
            memory = server.memory()
            split["setup"] = split_memory(server)
            if args.idle_wait > 0:  # e.g. past imap_hibernate_timeout
                await asyncio.sleep(args.idle_wait)
                split["waited"] = split_memory(server)
                waited["pss_mib_waited"] = server.memory().pss_mib
                parked = roost_status(server).get("hibernated", {})
                waited["hibernated"] = float(parked.get("sessions", 0))
            await sessions.close()
            return sessions, memory

        sessions, with_idle = imap_load.event_loop_run(measure())
        opened = len(sessions.clients)
        cpu = server.cpu_seconds() - cpu_before
        values = {
            "connections": float(opened),
            "pss_mib_before": before.pss_mib,
            "pss_mib": with_idle.pss_mib,
            "rss_mib": with_idle.rss_kib / 1024,
            "processes": float(with_idle.processes),
            "kib_per_connection": (with_idle.pss_kib - before.pss_kib) / max(opened, 1),
            "setup_seconds": sessions.seconds,
            "setup_cpu_ms_per_connection": 1000 * cpu / max(opened, 1),
        }
        for stage, parts in split.items():
            for name, kib in parts.items():
                values[f"{stage}_{name}_kib"] = kib
        values.update(waited)
        return Run(
            server=kind,
            workload=f"idle-{count}" + ("" if args.tls == "none" else f"-{args.tls}"),
            round=round_,
            seconds=sessions.seconds,
            load_before=load_before,
            cpu_seconds=cpu,
            values=values,
            notes=sessions.errors[:3] + server.notes()[:5],
            errors=len(sessions.errors),
        )


def run_big(kind: str, round_: int, args: argparse.Namespace, base: Path) -> Run:
    server = make_server(kind, base, "big", ["big"], fsync=args.dovecot_fsync)
    try:
        server.setup()
        began = time.monotonic()
        fill_big_maildir(server.maildir("big"), "big", args.big_messages)
        server.own_mail()
        written = time.monotonic() - began
        server.start()
        user, password = server.logins()[0]
        load_before = common.load_average()
        cpu_before = server.cpu_seconds()

        async def measure() -> list[imap_load.SelectTiming]:
            timings = []
            for _ in range(1 + args.warm):
                timings.append(
                    await imap_load.timed_select("127.0.0.1", server.port, user, password)
                )
            return timings

        cold, *warm = imap_load.event_loop_run(measure())
        cpu = server.cpu_seconds() - cpu_before
        if cold.exists != args.big_messages:
            raise RuntimeError(f"{kind}: SELECT shows {cold.exists} of {args.big_messages}")
        values = {
            "cold_select_s": cold.select,
            "cold_fetch_flags_s": cold.fetch_flags,
            "warm_login_s": common.median(t.login for t in warm),
            "warm_select_s": common.median(t.select for t in warm),
            "warm_fetch_flags_s": common.median(t.fetch_flags for t in warm),
            "write_maildir_s": written,
        }
        return Run(
            server=kind,
            workload=f"big-{args.big_messages}",
            round=round_,
            seconds=cold.select,
            load_before=load_before,
            cpu_seconds=cpu,
            values=values,
            notes=server.notes()[:5],
        )
    finally:
        server.stop()
        server.remove()


# --- profiling (py-spy on roost) ---------------------------------------------------------------

#: Where roost's Python time goes, by the first rule whose text is in a sample's stack
#: (frames as py-spy prints them).
IMAP_CATEGORIES: Sequence[tuple[str, tuple[str, ...]]] = (
    ("logging", ("(logging/", "logsetup.py")),
    ("authentication (LOGIN: user database, password check)", ("roost/auth/",)),
    ("SQLite index (queries, commits)", ("roost/store/index.py",)),
    ("dovecot-uidlist / keywords / dotlock", ("uidlist.py", "keywords.py", "dotlock.py")),
    ("Maildir sync, files, mailbox objects", ("roost/store/",)),
    ("FETCH: ENVELOPE/BODY parsing and rendering", ("imap/fetch.py", "imap/message.py")),
    ("SEARCH", ("imap/search.py",)),
    ("responses (serialize)", ("imap/response.py",)),
    ("command parsing", ("imap/grammar.py", "imap/connection.py", "imap/sequence.py")),
    ("session logic (imap/session.py, selected.py, ...)", ("roost/imap/",)),
    ("thread pool hand-off (submit, wake, futures)", ("concurrent/futures", "threading.py")),
    ("asyncio/uvloop machinery (tasks, events, transports)", ("asyncio/", "uvloop")),
    ("other", ("",)),
)


def summarize_gil_profile(raw: Path, seconds: float, rate: int, top: int = 30) -> str:
    """A ``py-spy record --gil`` profile: how busy the GIL was, the share of each
    :data:`IMAP_CATEGORIES` entry, and the functions with most self and total samples."""
    categories: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    for stack, thread, frames, count in common.raw_stacks(raw):
        threads["store threads" if "imap-store" in thread else thread.split(":")[-1]] += count
        if name := common.first_rule(stack, IMAP_CATEGORIES):
            categories[name] += count
        if frames:
            own[frames[-1]] += count
        for frame in dict.fromkeys(frames):
            total[frame] += count
    samples = sum(threads.values()) or 1
    busy = 100 * samples / max(seconds * rate, 1)
    out = [f"GIL held in {busy:.0f} % of the samples ({samples} samples at {rate}/s)", ""]
    out.append("by thread:")
    out += [f"  {100 * n / samples:5.1f} %  {name.strip()}" for name, n in threads.most_common(6)]
    out.append("by activity (first matching rule):")
    out += [f"  {100 * n / samples:5.1f} %  {name}" for name, n in categories.most_common()]
    out.append("functions (self %, total %):")
    ranked = sorted(total, key=lambda frame: (own[frame], total[frame]), reverse=True)
    for frame in ranked[:top]:
        out.append(
            f"  {100 * own[frame] / samples:5.1f} {100 * total[frame] / samples:6.1f}  {frame}"
        )
    return "\n".join(out)


def profile_mixed(mode: str, clients: int, args: argparse.Namespace, base: Path) -> str:
    """One extra roost run under ``py-spy record --gil`` (not counted); returns a summary
    of where the Python time went (the daemon is one process: its GIL is the limit)."""
    args.profile.mkdir(parents=True, exist_ok=True)
    raw = args.profile / f"roost-{mode}-{clients}.txt"
    users = [f"bench{i}" for i in range(1, clients + 1)]
    server = make_server("roost", base, f"profile{mode}{clients}", users)
    rate = 200
    try:
        server.setup()
        for user in users:
            fill_maildir(server.maildir(user), user, args.messages)
        server.start()
        imap_load.event_loop_run(warm_up(server))
        pid = server.root_pid()
        assert pid is not None
        profiler = common.Profiler(pid, raw, rate=rate, gil=True, subprocesses=True)
        time.sleep(1.0)
        began = time.monotonic()
        try:
            config = imap_load.LoadConfig(
                port=server.port,
                logins=server.logins(),
                clients=clients,
                mode=mode,
                seconds=args.seconds,
            )
            result = imap_load.run_load_processes(config, args.processes)
        finally:
            recorded = time.monotonic() - began + 1.0
            profiler.stop()
    finally:
        server.stop()
        server.remove()
    head = f"profile of roost, {mode}, {clients} clients: {result.rate:.0f} commands/s"
    text = head + "\n" + summarize_gil_profile(raw, recorded, rate)
    (args.profile / f"roost-{mode}-{clients}.summary.txt").write_text(text + "\n")
    return text


# --- report -------------------------------------------------------------------------------------


def ratio_cell(runs: Sequence[Run], key: str) -> str:
    """``ratio of medians; median of pairwise ratios`` of roost to dovecot."""
    roost = {run.round: run.values[key] for run in runs if run.server == "roost"}
    dovecot = {run.round: run.values[key] for run in runs if run.server == "dovecot"}
    return common.ratio_text(roost.items(), dovecot) if roost and dovecot else ""


def groups(runs: Sequence[Run]) -> Iterator[tuple[str, list[Run], str, list[Run]]]:
    """``(workload, its runs, server, that server's runs)`` for each workload in the order
    of the runs, roost before dovecot."""
    for workload in dict.fromkeys(run.workload for run in runs):
        mine = [run for run in runs if run.workload == workload]
        for name in ("roost", "dovecot"):
            own = [run for run in mine if run.server == name]
            if own:
                yield workload, mine, name, own


def cell(runs: Sequence[Run], key: str, digits: int = 0) -> str:
    values = [run.values[key] for run in runs if key in run.values]
    if not values:
        return "-"
    middle = common.median(values)
    if len(values) == 1:
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def mixed_table(runs: Sequence[Run]) -> str:
    lines = [
        "| load | server | runs | commands/s | logins/s | connect to greeting p50 ms "
        "| server CPU ms/command | client CPU share "
        "| ratio commands/s roost/dovecot (of medians; median of pairs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, mine, name, own in groups(runs):
        errors = sum(run.errors for run in own)
        note = f" ({errors} errors)" if errors else ""
        ratio = ratio_cell(mine, "commands_per_second") if name == "roost" else ""
        logins = cell(own, "logins_per_second") if workload.startswith("cycle") else "-"
        lines.append(
            f"| {workload} | {name} | {len(own)} | {cell(own, 'commands_per_second')}{note}"
            f" | {logins} | {cell(own, 'connect_p50_ms', 1)}"
            f" | {cell(own, 'cpu_ms_per_command', 2)}"
            f" | {cell(own, 'client_cpu_share', 2)} | {ratio} |"
        )
    lines += ["", "Per command type (median commands/s; p50 ms):", ""]
    header = "| load | server | " + " | ".join(imap_load.COMMAND_TYPES) + " |"
    lines += [header, "|---|---|" + "---|" * len(imap_load.COMMAND_TYPES)]
    for workload, _, name, own in groups(runs):
        cells = []
        for kind in imap_load.COMMAND_TYPES:
            rate = cell(own, f"{kind}_per_second").split(" ")[0]
            p50 = cell(own, f"{kind}_p50_ms", 1).split(" ")[0]
            cells.append("-" if rate == "-" else f"{rate}; {p50}")
        lines.append(f"| {workload} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def idle_split_table(runs: Sequence[Run]) -> str:
    """The master's and the other processes' PSS (anonymous PSS) in MiB: before the
    connections, right after their set-up and after ``--idle-wait``."""
    lines = [
        ", ".join(f"{name} = {value}" for name, value in IDLE_SETTINGS.items()) + " (roost)",
        "",
        "| load | server | runs | stage | master PSS (anon) MiB | others PSS (anon) MiB "
        "| total PSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, _, name, own in groups(runs):
        for stage in ("before", "setup", "waited"):
            if f"{stage}_master_pss_kib" not in own[0].values:
                continue

            def mib(field: str, stage: str = stage, own: Sequence[Run] = own) -> str:
                values = sorted(run.values.get(f"{stage}_{field}_kib", 0.0) for run in own)
                return f"{values[len(values) // 2] / 1024:.1f}"

            total = float(mib("master_pss")) + float(mib("others_pss"))
            lines.append(
                f"| {workload} | {name} | {len(own)} | {stage} | {mib('master_pss')} "
                f"({mib('master_anon')}) | {mib('others_pss')} ({mib('others_anon')}) "
                f"| {total:.1f} |"
            )
    return "\n".join(lines)


def idle_table(runs: Sequence[Run]) -> str:
    """PSS with the connections set up; with ``--idle-wait``, also after that wait (the
    sessions in IDLE moved to roost's master, idle workers replaced: ``max_idle``)."""
    lines = [
        "| load | server | runs | connections | PSS MiB total (before) | KiB/connection | "
        "PSS MiB after --idle-wait (sessions in the master) | "
        "RSS MiB | processes | setup s | ratio PSS roost/dovecot |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, mine, name, own in groups(runs):
        ratio = ratio_cell(mine, "pss_mib") if name == "roost" else ""
        waited = "-"
        if all("pss_mib_waited" in run.values for run in own):
            waited = f"{cell(own, 'pss_mib_waited', 1)} ({cell(own, 'hibernated').split()[0]})"
        lines.append(
            f"| {workload} | {name} | {len(own)} | {cell(own, 'connections')} | "
            f"{cell(own, 'pss_mib', 1)} ({cell(own, 'pss_mib_before', 1).split()[0]}) | "
            f"{cell(own, 'kib_per_connection')} | {waited} | {cell(own, 'rss_mib')} | "
            f"{cell(own, 'processes')} | {cell(own, 'setup_seconds', 1)} | {ratio} |"
        )
    return "\n".join(lines)


def big_table(runs: Sequence[Run]) -> str:
    lines = [
        "| mailbox | server | runs | cold SELECT s | cold FETCH 1:* (FLAGS) s | warm LOGIN ms "
        "| warm SELECT ms | warm FETCH 1:* (FLAGS) ms | ratio warm SELECT roost/dovecot |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, mine, name, own in groups(runs):
        ms = [
            Run(
                run.server,
                run.workload,
                run.round,
                0,
                0,
                values={k: 1000 * v for k, v in run.values.items()},
            )
            for run in own
        ]
        ratio = ratio_cell(mine, "warm_select_s") if name == "roost" else ""
        lines.append(
            f"| {workload} | {name} | {len(own)} | {cell(own, 'cold_select_s', 2)} | "
            f"{cell(own, 'cold_fetch_flags_s', 2)} | {cell(ms, 'warm_login_s')} | "
            f"{cell(ms, 'warm_select_s')} | {cell(ms, 'warm_fetch_flags_s')} | {ratio} |"
        )
    return "\n".join(lines)


def targets(runs: Sequence[Run], args: argparse.Namespace) -> list[str]:
    """The issue's targets, judged from the medians."""
    out = []

    def median_of(server: str, workload: str, key: str) -> float:
        return common.median(
            run.values[key] for run in runs if run.server == server and run.workload == workload
        )

    for workload in dict.fromkeys(run.workload for run in runs):
        servers = {r.server for r in runs if r.workload == workload}
        if "roost" not in servers:
            continue
        if workload.startswith(("cycle", "session")) and "dovecot" in servers:
            wanted = 1.0 if workload.startswith("cycle") else 0.5
            ratio = median_of("roost", workload, "commands_per_second") / median_of(
                "dovecot", workload, "commands_per_second"
            )
            verdict = "met" if ratio >= wanted else "NOT met"
            out.append(f"{workload}: roost/dovecot {ratio:.2f}x, target >= {wanted}x: {verdict}")
        elif workload.startswith("idle"):
            count = int(median_of("roost", workload, "connections"))
            for key, when in (("pss_mib", "set up"), ("pss_mib_waited", "after --idle-wait")):
                if not all(
                    key in run.values
                    for run in runs
                    if run.server == "roost" and run.workload == workload
                ):
                    continue
                pss = median_of("roost", workload, key)
                if count < 1000:  # a quick run: extrapolate linearly
                    before = median_of("roost", workload, "pss_mib_before")
                    pss = before + (pss - before) * 1000 / max(count, 1)
                verdict = "met" if pss < 50 else "NOT met"
                how = "" if count >= 1000 else f" (extrapolated from {count})"
                out.append(
                    f"{workload}: roost {pss:.1f} MiB PSS for 1000 IDLE connections, {when}"
                    f"{how}, target < 50 MiB: {verdict}"
                )
        elif workload.startswith("big"):
            select = median_of("roost", workload, "warm_select_s")
            verdict = "met" if select < 1.0 else "NOT met"
            out.append(
                f"{workload}: roost warm SELECT {select * 1000:.0f} ms, target < 1 s: {verdict}"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small and short: a first look")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", default="mixed,idle,big")
    parser.add_argument("--modes", default="cycle,session")
    parser.add_argument("--clients", default="10,50")
    parser.add_argument("--servers", default="roost,dovecot")
    parser.add_argument("--seconds", type=float, default=15.0, help="mixed: timed window")
    parser.add_argument("--messages", type=int, default=75, help="mixed: INBOX size per user")
    parser.add_argument("--processes", type=int, default=1, help="mixed: client processes")
    parser.add_argument("--idle-connections", type=int, default=1000)
    parser.add_argument("--idle-concurrency", type=int, default=20, help="logins at a time")
    parser.add_argument("--idle-settle", type=float, default=5.0, help="seconds before reading")
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=0.0,
        help="idle: seconds after the first reading before a second one (hibernation)",
    )
    parser.add_argument("--hibernate-timeout", default="30s", help="roost's imap_hibernate_timeout")
    parser.add_argument("--max-idle", default="100s", help="roost's max_idle")
    parser.add_argument(
        "--tls",
        default="none",
        choices=("none", "implicit", "starttls"),
        help="idle: connect over TLS (implicit: the imaps port; starttls: STARTTLS on imap)",
    )
    parser.add_argument("--big-messages", type=int, default=100_000)
    parser.add_argument("--warm", type=int, default=3, help="big: warm sessions timed")
    parser.add_argument("--dovecot-fsync", default="always", choices=("always", "optimized", "no"))
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--live", action="store_true", help="run src/roost, not a snapshot")
    parser.add_argument(
        "--roost-src", type=Path, help="run the roost package in this directory (PYTHONPATH)"
    )
    parser.add_argument("--profile", type=Path, help="py-spy roost once per mixed load")
    args = parser.parse_args()
    IDLE_SETTINGS.update(imap_hibernate_timeout=args.hibernate_timeout, max_idle=args.max_idle)
    if args.quick:
        args.rounds = min(args.rounds, 1)
        args.seconds = min(args.seconds, 4.0)
        args.idle_connections = min(args.idle_connections, 200)
        args.big_messages = min(args.big_messages, 10_000)
        args.idle_settle = min(args.idle_settle, 2.0)
    workloads = args.workloads.split(",")
    modes = args.modes.split(",")
    concurrencies = [int(n) for n in args.clients.split(",")]
    servers = args.servers.split(",")
    common.check_mailbox_servers(servers, hint=" (another roost source: --roost-src DIR)")
    if "dovecot" in servers and (why := common.dovecot_usable("imap")) is not None:
        sys.exit(f"cannot run Dovecot: {why}")
    nofile = raise_nofile()
    base = common.mailbox_bench_base(
        args.dir, "imap-bench-", live=args.live or args.roost_src is not None
    )
    if args.roost_src is not None:  # e.g. a `git archive` of an older commit's src/
        common.use_roost_source(base, snapshot=False, source=args.roost_src)
    machine = common.machine_description(base)
    if version := common.dovecot_version():
        machine["dovecot"] = version
    machine["roost_source"] = common.source_fingerprint(
        (common.RoostDaemon.python_path or ROOT / "src") / "roost"
    )
    machine["rlimit_nofile"] = str(nofile)
    machine["dovecot_mail_fsync"] = args.dovecot_fsync
    with contextlib.suppress(OSError):
        machine["inotify_max_user_instances"] = (
            Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip()
        )
    print(json.dumps(machine, indent=1), flush=True)
    runs: list[Run] = []
    profiles: list[str] = []

    def show(run: Run) -> None:
        runs.append(run)
        shown = " ".join(f"{k}={v:.4g}" for k, v in run.values.items() if "_p50" not in k)
        print(
            f"{run.workload} round {run.round} {run.server}: {shown} errors={run.errors}"
            f" load={run.load_before:.2f}",
            flush=True,
        )
        for note in run.notes:
            print(f"    note: {note}", flush=True)

    try:
        if "mixed" in workloads:
            for mode in modes:
                for clients in concurrencies:
                    for round_, kind in common.alternating(servers, args.rounds):
                        show(run_mixed(kind, mode, clients, round_, args, base))
                    if args.profile is not None:
                        profiles.append(profile_mixed(mode, clients, args, base))
                        print(profiles[-1], flush=True)
        if "idle" in workloads:
            for round_, kind in common.alternating(servers, args.rounds):
                show(run_idle(kind, round_, args, base))
        if "big" in workloads:
            for round_, kind in common.alternating(servers, args.rounds):
                show(run_big(kind, round_, args, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    mixed = [run for run in runs if run.workload.startswith(("cycle", "session"))]
    if mixed:
        print(mixed_table(mixed), end="\n\n")
    idle = [run for run in runs if run.workload.startswith("idle")]
    if idle:
        print(idle_table(idle), end="\n\n")
        print(idle_split_table(idle), end="\n\n")
    big = [run for run in runs if run.workload.startswith("big")]
    if big:
        print(big_table(big), end="\n\n")
    with contextlib.suppress(ZeroDivisionError, KeyError):
        for line in targets(runs, args):
            print(line)
    if args.json is not None:
        data = {"machine": machine, "runs": [asdict(run) for run in runs], "profiles": profiles}
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()

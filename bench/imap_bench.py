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
  process (``/proc/PID/smaps_rollup``), before and with the connections.
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
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import common
import imap_load

DOMAIN = "bench.test"
PASSWORD = "benchpass"
VMAIL_UID = 5000
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


# --- memory from /proc --------------------------------------------------------------------------


@dataclass
class Memory:
    """PSS and RSS (KiB) summed over a server's processes."""

    pss_kib: int
    rss_kib: int
    processes: int

    @property
    def pss_mib(self) -> float:
        return self.pss_kib / 1024


def tree_memory(root: int) -> Memory:
    pss = rss = count = 0
    for pid in common.descendants(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                text = rollup.read()
        except OSError:
            continue
        count += 1
        for line in text.splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
            elif line.startswith("Rss:"):
                rss += int(line.split()[1])
    return Memory(pss, rss, count)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


# --- servers ------------------------------------------------------------------------------------


class Server:
    """An IMAP server in ``directory`` with ``users`` (local parts)."""

    name = "server"

    def __init__(self, directory: Path, users: Sequence[str]) -> None:
        self.directory = directory
        self.users = list(users)
        self.port = common.free_port()

    def login(self, user: str) -> str:
        raise NotImplementedError

    def maildir(self, user: str) -> Path:
        raise NotImplementedError

    def setup(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def root_pid(self) -> int | None:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        pid = self.root_pid()
        return 0.0 if pid is None else common.tree_cpu_seconds(pid)

    def memory(self) -> Memory:
        pid = self.root_pid()
        return Memory(0, 0, 0) if pid is None else tree_memory(pid)

    def logins(self) -> list[tuple[str, str]]:
        return [(self.login(user), PASSWORD) for user in self.users]

    def own_mail(self) -> None:
        """Give the mail files to whoever the server reads them as."""

    def notes(self) -> list[str]:
        """Things worth noting from the server's log."""
        return []

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def wait_for_greeting(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        ):
            if sock.recv(4096).startswith(b"* OK"):
                sock.sendall(b"a LOGOUT\r\n")
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no IMAP greeting on port {port}")
        time.sleep(0.1)


class RoostServer(Server):
    """``roost serve`` with only the imap service; readiness by NOTIFY_SOCKET (READY=1)."""

    name = "roost"
    python_path: Path | None = None

    def __init__(self, directory: Path, users: Sequence[str]) -> None:
        super().__init__(directory, users)
        self.process: subprocess.Popen[bytes] | None = None

    def login(self, user: str) -> str:
        return f"{user}@{DOMAIN}"

    def maildir(self, user: str) -> Path:
        return self.directory / "mail" / DOMAIN / user / "Maildir"

    def setup(self) -> None:
        d = self.directory
        d.mkdir(parents=True)
        (d / "users").write_text(
            "".join(f"{user}@{DOMAIN}:{{PLAIN}}{PASSWORD}::::::\n" for user in self.users)
        )
        (d / "aliases").write_text("")
        (d / "main.cf").write_text(
            textwrap.dedent(f"""\
                # roost IMAP benchmark instance (bench/imap_bench.py)
                myhostname = roost-bench.localdomain
                mydestination =
                virtual_mailbox_domains = {DOMAIN}
                inet_interfaces = 127.0.0.1
                queue_directory = {d}/spool
                data_directory = {d}/lib
                auth_backends = passwd-file:{d}/users
                auth_default_realm = {DOMAIN}
                mail_location = maildir:{d}/mail/%d/%n/Maildir
                alias_maps = hash:{d}/aliases
                alias_database = $alias_maps
                maillog_file = {d}/maillog
                shutdown_grace_time = 2s
                mail_max_userip_connections = 2000
                imap_client_connection_count_limit = 0
                imap_service_port = {self.port}
                master_service_disable = smtp, submission, submissions, imaps, pop3, pop3s, qmgr
                """)
        )
        if processes := os.environ.get("ROOST_WORKER_PROCESSES"):  # 1 vs N (docs/performance)
            with (d / "main.cf").open("a") as config:
                config.write(f"worker_processes = {processes}\n")

    def start(self, timeout: float = 60.0) -> None:
        notify_path = self.directory / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        try:
            env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
            env.setdefault("ROOST_STAY_ROOT", "1")  # as root: no mail_owner account needed
            if self.python_path is not None:
                env["PYTHONPATH"] = str(self.python_path)
            command = [sys.executable, "-m", "roost", "-c", str(self.directory / "main.cf")]
            with open(self.directory / "daemon.out", "ab") as out:
                self.process = subprocess.Popen(
                    [*command, "serve"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
                )
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    log = (self.directory / "daemon.out").read_text(errors="replace")
                    raise RuntimeError(f"roost did not start; its output:\n{log[-2000:]}")
                notify.settimeout(min(remaining, 0.5))
                with contextlib.suppress(TimeoutError):
                    if "READY=1" in notify.recv(65536).decode().splitlines():
                        return
        finally:
            notify.close()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def root_pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def notes(self) -> list[str]:
        log = self.directory / "maillog"
        if not log.exists():
            return []
        lines = log.read_text(errors="replace").splitlines()
        return [
            line
            for line in lines
            if (" error" in line.lower() or "warning" in line.lower())
            and "self-signed certificate" not in line
        ]


DOVECOT_CONF = """\
# Dovecot IMAP benchmark instance (bench/imap_bench.py); not the system instance
instance_name = dovecot-imapbench-{tag}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 100
mail_location = maildir:~/Maildir
mail_fsync = {fsync}
mail_max_userip_connections = 2000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={d}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = .
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_limit = 2000
}}
service imap {{
  process_limit = 2000
}}
service anvil {{
  client_limit = 5000
}}
service auth {{
  client_limit = 5000
}}
default_client_limit = 5000
"""


class DovecotServer(Server):
    """A separate Dovecot instance (own config, base_dir, state, log) serving IMAP only."""

    name = "dovecot"
    fsync = "always"

    def login(self, user: str) -> str:
        return user

    def maildir(self, user: str) -> Path:
        return self.directory / "home" / user / "Maildir"

    def setup(self) -> None:
        d = self.directory
        for sub in ("run", "state", "home"):
            (d / sub).mkdir(parents=True)
        d.chmod(0o755)  # the auth process reads the users file as "dovecot"
        (d / "users").write_text(
            "".join(f"{user}:{{PLAIN}}{PASSWORD}::::::\n" for user in self.users)
        )
        (d / "dovecot.conf").write_text(
            DOVECOT_CONF.format(d=d, port=self.port, uid=VMAIL_UID, tag=d.name, fsync=self.fsync)
        )

    def own_mail(self) -> None:
        subprocess.run(
            ["chown", "-R", f"{VMAIL_UID}:{VMAIL_UID}", str(self.directory / "home")], check=True
        )

    def _dovecot(self, *args: str) -> int:
        """``dovecot -c CONFIG ARGS``; output to ``dovecot.out`` (not a pipe: the master
        stays in the background and would hold it open)."""
        program = common.find_program("dovecot") or "dovecot"
        with open(self.directory / "dovecot.out", "ab") as out:
            return subprocess.run(
                [program, "-c", str(self.directory / "dovecot.conf"), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=60,
            ).returncode

    def root_pid(self) -> int | None:
        try:
            return int((self.directory / "run" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        if self._dovecot() != 0:
            output = (self.directory / "dovecot.out").read_text(errors="replace")
            raise RuntimeError(f"dovecot did not start: {output[-2000:]}")
        wait_for_greeting(self.port)

    def stop(self) -> None:
        pid = self.root_pid()
        self._dovecot("stop")
        deadline = time.monotonic() + 60
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def notes(self) -> list[str]:
        log = self.directory / "dovecot.log"
        if not log.exists():
            return []
        counts: collections.Counter[str] = collections.Counter()
        for line in log.read_text(errors="replace").splitlines():
            if "Warning" in line or "Error" in line or "Fatal" in line:
                # group by the message without pids, users and numbers
                key = re.sub(r"\d+", "N", line.split(": ", 1)[-1])[:160]
                counts[key] += 1
        return [f"{count} x {key}" for key, count in counts.most_common(8)]


def dovecot_usable() -> str | None:
    """Why the Dovecot side cannot run here, or None when it can."""
    if common.find_program("dovecot") is None:
        return "dovecot is not installed (apt-get install dovecot-imapd)"
    if not Path("/usr/lib/dovecot/imap").exists():
        return "Dovecot's imap is not installed (apt-get install dovecot-imapd)"
    if os.geteuid() != 0:
        return "Dovecot's master must start as root: run the benchmark as root"
    return None


def make_server(kind: str, base: Path, label: str, users: Sequence[str]) -> Server:
    directory = Path(tempfile.mkdtemp(prefix=f"imap-{kind}-{label}-", dir=base))
    directory.rmdir()  # setup() creates it
    if kind == "roost":
        return RoostServer(directory, users)
    return DovecotServer(directory, users)


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


async def warm_up(server: Server, concurrency: int = 10) -> None:
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
    server = make_server(kind, base, f"{mode}{clients}", users)
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


def run_idle(kind: str, round_: int, args: argparse.Namespace, base: Path) -> Run:
    count = args.idle_connections
    users = [f"idle{i}" for i in range(1, count + 1)]
    server = make_server(kind, base, "idle", users)
    try:
        server.setup()
        for user in users:
            fill_maildir(server.maildir(user), user, 10)
        server.own_mail()
        server.start()
        time.sleep(1.0)
        before = server.memory()
        load_before = common.load_average()
        cpu_before = server.cpu_seconds()

        async def measure() -> tuple[imap_load.IdleSessions, Memory]:
            sessions = await imap_load.open_idle_sessions(
                "127.0.0.1", server.port, server.logins(), count, concurrency=args.idle_concurrency
            )
            await asyncio.sleep(args.idle_settle)
            memory = server.memory()
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
        return Run(
            server=kind,
            workload=f"idle-{count}",
            round=round_,
            seconds=sessions.seconds,
            load_before=load_before,
            cpu_seconds=cpu,
            values=values,
            notes=sessions.errors[:3] + server.notes()[:5],
            errors=len(sessions.errors),
        )
    finally:
        server.stop()
        server.remove()


def run_big(kind: str, round_: int, args: argparse.Namespace, base: Path) -> Run:
    server = make_server(kind, base, "big", ["big"])
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
    with open(raw) as lines:
        for line in lines:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            thread, *frames = stack.split(";")
            threads["store threads" if "imap-store" in thread else thread.split(":")[-1]] += count
            for name, needles in IMAP_CATEGORIES:
                if any(needle in stack for needle in needles):
                    categories[name] += count
                    break
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
    spy = common.find_program("py-spy", str(Path(sys.executable).parent))
    if spy is None:
        raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
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
        command = [spy, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "--threads"]
        command += ["--gil", "--subprocesses", "-o", str(raw)]  # the worker processes too
        profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
            profiler.send_signal(signal.SIGINT)
            try:
                profiler.wait(60)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait()
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
    if not roost or not dovecot:
        return ""
    of_medians = common.median(roost.values()) / common.median(dovecot.values())
    pairs = [roost[r] / dovecot[r] for r in roost if dovecot.get(r)]
    return f"{of_medians:.2f}x; {common.median(pairs):.2f}x"


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
    for workload in dict.fromkeys(run.workload for run in runs):
        mine = [run for run in runs if run.workload == workload]
        for name in ("roost", "dovecot"):
            own = [run for run in mine if run.server == name]
            if not own:
                continue
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
    for workload in dict.fromkeys(run.workload for run in runs):
        for name in ("roost", "dovecot"):
            own = [run for run in runs if run.workload == workload and run.server == name]
            if not own:
                continue
            cells = []
            for kind in imap_load.COMMAND_TYPES:
                rate = cell(own, f"{kind}_per_second").split(" ")[0]
                p50 = cell(own, f"{kind}_p50_ms", 1).split(" ")[0]
                cells.append("-" if rate == "-" else f"{rate}; {p50}")
            lines.append(f"| {workload} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def idle_table(runs: Sequence[Run]) -> str:
    lines = [
        "| load | server | runs | connections | PSS MiB total (before) | KiB/connection | "
        "RSS MiB | processes | setup s | ratio PSS roost/dovecot |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for workload in dict.fromkeys(run.workload for run in runs):
        mine = [run for run in runs if run.workload == workload]
        for name in ("roost", "dovecot"):
            own = [run for run in mine if run.server == name]
            if not own:
                continue
            ratio = ratio_cell(mine, "pss_mib") if name == "roost" else ""
            lines.append(
                f"| {workload} | {name} | {len(own)} | {cell(own, 'connections')} | "
                f"{cell(own, 'pss_mib', 1)} ({cell(own, 'pss_mib_before', 1).split()[0]}) | "
                f"{cell(own, 'kib_per_connection')} | {cell(own, 'rss_mib')} | "
                f"{cell(own, 'processes')} | {cell(own, 'setup_seconds', 1)} | {ratio} |"
            )
    return "\n".join(lines)


def big_table(runs: Sequence[Run]) -> str:
    lines = [
        "| mailbox | server | runs | cold SELECT s | cold FETCH 1:* (FLAGS) s | warm LOGIN ms "
        "| warm SELECT ms | warm FETCH 1:* (FLAGS) ms | ratio warm SELECT roost/dovecot |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workload in dict.fromkeys(run.workload for run in runs):
        mine = [run for run in runs if run.workload == workload]
        for name in ("roost", "dovecot"):
            own = [run for run in mine if run.server == name]
            if not own:
                continue
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
            pss = median_of("roost", workload, "pss_mib")
            count = int(median_of("roost", workload, "connections"))
            if count < 1000:  # a quick run: extrapolate linearly
                before = median_of("roost", workload, "pss_mib_before")
                pss = before + (pss - before) * 1000 / max(count, 1)
            verdict = "met" if pss < 50 else "NOT met"
            how = "" if count >= 1000 else f" (extrapolated from {count})"
            out.append(
                f"{workload}: roost {pss:.1f} MiB PSS for 1000 IDLE connections{how}, "
                f"target < 50 MiB: {verdict}"
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
    parser.add_argument("--big-messages", type=int, default=100_000)
    parser.add_argument("--warm", type=int, default=3, help="big: warm sessions timed")
    parser.add_argument("--dovecot-fsync", default="always", choices=("always", "optimized", "no"))
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--live", action="store_true", help="run src/roost, not a snapshot")
    parser.add_argument("--profile", type=Path, help="py-spy roost once per mixed load")
    args = parser.parse_args()
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
    DovecotServer.fsync = args.dovecot_fsync
    if "dovecot" in servers and (why := dovecot_usable()) is not None:
        sys.exit(f"cannot run Dovecot: {why}")
    nofile = raise_nofile()
    base = Path(tempfile.mkdtemp(prefix="imap-bench-", dir=args.dir))
    base.chmod(0o755)
    if not args.live:
        RoostServer.python_path = common.snapshot_source(base)
    machine = common.machine_description(base)
    dovecot = common.find_program("dovecot")
    if dovecot:
        version = subprocess.run([dovecot, "--version"], capture_output=True, text=True)
        machine["dovecot"] = version.stdout.strip()
    machine["roost_source"] = common.source_fingerprint(
        (RoostServer.python_path or ROOT / "src") / "roost"
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
                    for round_ in range(1, args.rounds + 1):
                        for kind in servers:
                            show(run_mixed(kind, mode, clients, round_, args, base))
                    if args.profile is not None:
                        profiles.append(profile_mixed(mode, clients, args, base))
                        print(profiles[-1], flush=True)
        if "idle" in workloads:
            for round_ in range(1, args.rounds + 1):
                for kind in servers:
                    show(run_idle(kind, round_, args, base))
        if "big" in workloads:
            for round_ in range(1, args.rounds + 1):
                for kind in servers:
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

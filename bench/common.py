"""Shared machinery of the side-by-side benchmarks: bench/smtp_ingest.py,
bench/local_delivery.py and bench/relay_bench.py against Postfix, bench/imap_bench.py and
bench/pop3_bench.py against Dovecot.

Each run gets a *fresh* server instance in a new directory (queue, Maildir, logs), so no run
inherits a big directory from the one before (BENCHMARKING pitfall: a Maildir that once held
20,000 files makes later runs ~40 % slower on ext4). Every roost daemon is a
:class:`RoostDaemon` (started with a NOTIFY_SOCKET, ready at ``READY=1``; it runs the code
chosen by :func:`use_roost_source`). For the SMTP benchmarks:

- :class:`RoostInstance`: ``roost -c DIR/main.cf serve`` with a passwd-file user
  ``user@bench.test``, Maildir delivery, loopback only. ``deliver=False`` sets
  ``master_service_disable = qmgr``: mail is accepted (durably, before the ``250``) and left
  in ``incoming/``.
- :class:`PostfixInstance`: a *separate* Postfix instance (own ``config_directory``,
  ``queue_directory`` and ``data_directory``; never ``/etc/postfix``) on a loopback port,
  virtual(8) Maildir delivery for ``bench.test`` and ``error:`` default transports, so
  nothing leaves the machine and no DNS query is made. ``deliver=False`` keeps the queue
  manager running but puts every message on hold (``header_checks = static:HOLD``):
  cleanup(8) still writes and fsyncs the queue file before smtpd answers ``250``, then
  renames it into ``hold/`` instead of waking the queue manager. (Disabling Postfix's qmgr
  instead makes every cleanup(8) sleep after a failed trigger: 20 msg/s, not a fair
  comparison.)

Server CPU is read from ``/proc``: for roost the daemon's process tree (all threads); for
Postfix the master and every process below it, plus what the master has reaped from exited
children (``cutime + cstime``), so smtpd/cleanup processes that exit during a run count.

Load is generated with ``smtp-source`` (Debian's ``postfix`` package, ``/usr/sbin``).
:func:`run_workloads` runs the servers alternating; :func:`comparison_table` reports.

For the IMAP and POP3 benchmarks, :class:`MailboxServer`: :class:`RoostMailbox` (only the
one protocol's service) and :class:`DovecotMailbox` (a separate Dovecot instance, never
``/etc/dovecot``), users with ``{PLAIN}`` passwords; memory as PSS from
``/proc/PID/smaps_rollup`` (:func:`tree_memory`).

Ports come from :func:`free_port` (below the ephemeral range, never twice).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import platform
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DOMAIN = "bench.test"
RECIPIENT = f"user@{DOMAIN}"
SENDER = "sender@example.com"
CLIENT_HELO = "client.example"
#: numeric owner of the mail Postfix's virtual(8) delivers (need not exist as a user)
VMAIL_UID = 5000


# --- tools and the machine -------------------------------------------------------------------


def find_program(name: str, *extra_dirs: str) -> str | None:
    """Return the path of ``name`` on PATH, in /usr/sbin, or in ``extra_dirs``; else None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", *extra_dirs])
    return shutil.which(name, path=path)


def smtp_source() -> str:
    """Return the path of ``smtp-source``; exit with a hint when it is missing."""
    found = find_program("smtp-source")
    if found is None:
        sys.exit("smtp-source not found: apt-get install postfix (it ships in /usr/sbin)")
    return found


def postfix_usable() -> str | None:
    """Return why the Postfix side cannot run here, or None when it can."""
    if find_program("postfix") is None:
        return "postfix is not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return "Postfix's master must start as root: run the benchmark as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no 'postfix' user (install Debian's postfix package)"
    return None


# Ports for the servers and sinks the benchmarks start, as tests/conftest.py chooses them
# (bench does not import pytest): from below the kernel's ephemeral range (32768-60999 by
# default), since a port taken from that range is closed again before the server binds it
# and any outgoing connection may be given it meanwhile; never the same port twice.
_PORT_RANGE = range(20000, 32768)
_ports_given: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (IPv4 or IPv6 address).

    The port is below the ephemeral range and was not returned before by this process.
    Raises OSError when no port of the range is free.
    """
    for _ in range(1000):
        port = random.choice(_PORT_RANGE)
        if port in _ports_given:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise OSError(f"no free port on {host} in {_PORT_RANGE}")


def filesystem_of(path: Path) -> str:
    """Return ``fstype device`` of the mount holding ``path`` (from /proc/mounts)."""
    best, found = "", "unknown"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            device, mount_point, fstype, *_ = line.split()
            inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, found = mount_point, f"{fstype} {device} on {mount_point}"
    return found


def load_average() -> float:
    """The 1-minute load average (other work on a shared machine shows here)."""
    return os.getloadavg()[0]


def source_fingerprint(package: Path) -> str:
    """A short hash of every ``*.py`` under ``package``: which roost code was measured."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def snapshot_source(base: Path) -> Path:
    """Copy ``src/roost`` under ``base`` and return the directory to put on PYTHONPATH.

    Others may edit the tree while a long benchmark runs: every run then uses the same
    code, the one of this moment.
    """
    target = Path(tempfile.mkdtemp(prefix="roost-src-", dir=base))
    shutil.copytree(
        ROOT / "src" / "roost", target / "roost", ignore=shutil.ignore_patterns("__pycache__")
    )
    return target


def use_roost_source(base: Path, *, snapshot: bool, source: Path | None = None) -> str:
    """Make every :class:`RoostDaemon` run a snapshot of src/roost, the tree itself, or
    ``source`` (a directory holding a ``roost`` package); return a description with the
    code's fingerprint."""
    package = ROOT / "src" / "roost"
    if source is not None:
        RoostDaemon.python_path = source.resolve()
        RoostDaemon.keep_python_path = True
        return f"{source / 'roost'} (given), {source_fingerprint(source / 'roost')}"
    if not snapshot:
        return f"{package} (live tree) {source_fingerprint(package)}"
    RoostDaemon.python_path = snapshot_source(base)
    copy = RoostDaemon.python_path / "roost"
    return f"snapshot {copy} of {package}, {source_fingerprint(copy)}"


def drop_roost_snapshot() -> None:
    if RoostDaemon.python_path is not None and not RoostDaemon.keep_python_path:
        shutil.rmtree(RoostDaemon.python_path, ignore_errors=True)
        RoostDaemon.python_path = None


def machine_description(base: Path) -> dict[str, str]:
    """What the figures depend on: CPU, cores, kernel, file system, versions."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    postfix = "not installed"
    postconf = find_program("postconf")
    if postconf:
        result = subprocess.run(
            [postconf, "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
        )
        postfix = result.stdout.strip() or postfix
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "kernel": platform.release(),
        "os": _os_name(),
        "python": sys.version.split()[0],
        "postfix": postfix,
        "filesystem": filesystem_of(base),
        "load_1min_at_start": f"{load_average():.2f}",
    }


def _os_name() -> str:
    with contextlib.suppress(OSError), open("/etc/os-release") as release:
        for line in release:
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def warn_if_tmpfs(base: Path) -> None:
    """fsync is free on tmpfs: durable-acceptance figures would mean nothing there."""
    if filesystem_of(base).startswith("tmpfs"):
        print(
            f"warning: {base} is on tmpfs; fsync costs nothing there. Use --dir on a real disk.",
            file=sys.stderr,
        )


#: whether :func:`settle_filesystem` runs before each SMTP run (``--no-settle`` turns it off)
SETTLE = True
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
#: the programs Postfix's master starts on demand, read back into the cache after a settle
POSTFIX_DAEMONS = Path("/usr/lib/postfix/sbin")


def settle_filesystem() -> None:
    """Before a run: write every dirty buffer out (``sync``) and drop the clean caches
    (``/proc/sys/vm/drop_caches``, root only; a warning if that is refused), then read
    Postfix's daemon programs back in.

    Why: on ext4 *without a journal* (this machine's root file system), each new inode's
    allocation skips every inode of the group deleted in the last 60 s, or 360 s while its
    inode-table block is dirty, as long as that block is still in the buffer cache (the
    kernel's ``recently_deleted()`` in fs/ext4/ialloc.c). A run that follows the removal of
    the previous run's instance (20,000 files and more) then pays 0.3-0.6 ms of kernel CPU
    per file it creates, for the earlier run's files, and more or less depending on which
    server ran before it. After a sync and a drop of the caches every run starts from the
    same state; the files a server deletes during its own run still cost it (they are its
    work). With a journal, ext4 does not make this check. docs/performance.md, "Method".
    """
    os.sync()
    try:
        DROP_CACHES.write_text("1\n")
    except OSError as error:
        print(f"warning: caches not dropped ({DROP_CACHES}: {error.strerror})", file=sys.stderr)
        return
    for program in sorted(POSTFIX_DAEMONS.glob("*")) if POSTFIX_DAEMONS.is_dir() else []:
        with contextlib.suppress(OSError):
            program.read_bytes()  # a server started on demand is not read from disk mid-run


# --- CPU accounting from /proc -------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    return text[text.rindex(")") + 2 :].split()


def process_cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of ``pid`` (all its threads), plus cutime + cstime if asked."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # after "pid (comm) ": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def process_cpu_split(pid: int, *, reaped_children: bool = False) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (all its threads) in seconds: user space and kernel;
    with ``reaped_children``, (utime + cutime, stime + cstime)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
    user, system = int(fields[11]), int(fields[12])
    if reaped_children:
        user, system = user + int(fields[13]), system + int(fields[14])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def tree_cpu_split(roots: Iterable[int]) -> tuple[float, float]:
    """(user, kernel) CPU seconds of the process trees below ``roots``, reaped children
    included (as :func:`tree_cpu_seconds`)."""
    user = system = 0.0
    for root in roots:
        for pid in descendants(root):
            u, s = process_cpu_split(pid, reaped_children=True)
            user, system = user + u, system + s
    return user, system


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children[int(fields[1])].append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process tree, including children already exited and reaped.

    A process that exits adds its whole CPU time to its parent's ``cutime``/``cstime`` when
    the parent reaps it, so summing utime + stime + cutime + cstime over the live processes
    counts every process of the tree once.
    """
    return sum(process_cpu_seconds(pid, reaped_children=True) for pid in descendants(root))


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
    """PSS and RSS of ``root`` and every process below it (``/proc/PID/smaps_rollup``).

    PSS (proportional set size) counts a page shared by N processes as 1/N in each: the
    honest sum for servers of many processes (RSS counts shared libraries once each).
    """
    pss = rss = count = 0
    for pid in descendants(root):
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


# --- directory counting --------------------------------------------------------------------


def _non_empty(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.stat().st_size > 0
    except FileNotFoundError:  # a spare deleted meanwhile
        return False


def count_queue_files(directory: Path) -> int:
    """Count the queue files (names of 13 characters, no dot) in a queue directory.

    Empty files are left out: roost's spare queue files, created ahead while mail streams
    in, are no messages (docs/spool.md); a committed queue file is never empty.
    """
    try:
        with os.scandir(directory) as entries:
            return sum(
                1 for e in entries if len(e.name) == 13 and "." not in e.name and _non_empty(e)
            )
    except FileNotFoundError:
        return 0


def count_files(directory: Path, *, suffix: str = "", recursive: bool = False) -> int:
    """Count regular files (ending in ``suffix``) in ``directory``; 0 if it is missing."""
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        total += count_files(Path(entry.path), suffix=suffix, recursive=True)
                elif entry.name.endswith(suffix):
                    total += 1
    except FileNotFoundError:
        return 0
    return total


def count_names(directory: Path) -> int:
    """Count the entries of ``directory`` (cheaper than :func:`count_files`); 0 if missing."""
    try:
        return len(os.listdir(directory))
    except FileNotFoundError:
        return 0


# --- processes -------------------------------------------------------------------------------


def end_process(
    process: subprocess.Popen[Any], how: int = signal.SIGTERM, timeout: float = 60.0
) -> None:
    """Send ``how`` to ``process`` if it still runs and wait; SIGKILL it after ``timeout`` s."""
    if process.poll() is None:
        process.send_signal(how)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_gone(pid: int | None, timeout: float = 60.0) -> None:
    """Wait (bounded) until process ``pid`` has exited (a daemon's master, after its stop)."""
    deadline = time.monotonic() + timeout
    while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_for_greeting(
    port: int, greeting: bytes, goodbye: bytes = b"", timeout: float = 60.0
) -> bool:
    """Connect to 127.0.0.1:``port`` until the server's first line starts with ``greeting``
    (then send ``goodbye``, if any); False when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=2) as sock,
        ):
            if sock.recv(4096).startswith(greeting):
                if goodbye:
                    sock.sendall(goodbye)
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


# --- server instances ----------------------------------------------------------------------


def roost_config(directory: Path, title: str, settings: Mapping[str, str]) -> str:
    """The text of a benchmark instance's main.cf: what every roost benchmark instance has
    (loopback only, passwd-file users in ``directory/users``, Maildirs under
    ``directory/mail``, its own spool and maillog), then ``settings`` (which win)."""
    d = directory
    shared = {
        "myhostname": "roost-bench.localdomain",
        "mydestination": "",
        "virtual_mailbox_domains": DOMAIN,
        "inet_interfaces": "127.0.0.1",
        "queue_directory": f"{d}/spool",
        "data_directory": f"{d}/lib",
        "auth_backends": f"passwd-file:{d}/users",
        "auth_default_realm": DOMAIN,
        "mail_location": f"maildir:{d}/mail/%d/%n/Maildir",
        "alias_maps": f"hash:{d}/aliases",
        "alias_database": "$alias_maps",
        "maillog_file": f"{d}/maillog",
        "shutdown_grace_time": "2s",
    }
    lines = [f"{name} = {value}".rstrip() for name, value in {**shared, **settings}.items()]
    return f"# {title}\n" + "\n".join(lines) + "\n"


class RoostDaemon:
    """The process side of a roost instance: ``roost serve`` started with a NOTIFY_SOCKET
    (ready at ``READY=1``), stopped with SIGTERM; its CPU over its process tree.

    Subclasses set :attr:`directory` (output goes to ``directory/daemon.out``) and fill
    :attr:`processes` through :meth:`spawn`; it comes first in their bases, before the
    server class whose ``__init__`` it passes its arguments on to.
    """

    #: where ``roost`` is imported from (see :func:`use_roost_source`); None: the venv's
    python_path: Path | None = None
    keep_python_path = False

    directory: Path
    processes: list[subprocess.Popen[bytes]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.processes = []

    def spawn(
        self,
        command: Sequence[str],
        notify_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> subprocess.Popen[bytes]:
        """Start ``command``; return once it has sent ``READY=1`` to ``notify_path``.

        Raises RuntimeError (with the end of its output) when it exits or is not ready
        within ``timeout`` seconds.
        """
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        try:
            environment = {**os.environ, "NOTIFY_SOCKET": str(notify_path), **(env or {})}
            # run as root without a mail_owner account, as the test suite does (docs/privsep.md)
            environment.setdefault("ROOST_STAY_ROOT", "1")
            if self.python_path is not None:  # this instance's, else the class's
                environment["PYTHONPATH"] = str(self.python_path)
            with open(self.directory / "daemon.out", "ab") as out:
                process = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=ROOT
                )
            self.processes.append(process)
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or process.poll() is not None:
                    log = (self.directory / "daemon.out").read_text(errors="replace")
                    raise RuntimeError(f"roost did not start; its output:\n{log[-2000:]}")
                notify.settimeout(min(remaining, 0.5))
                with contextlib.suppress(TimeoutError):
                    if "READY=1" in notify.recv(65536).decode().splitlines():
                        return process
        finally:
            notify.close()

    def stop(self) -> None:
        running = [p for p in self.processes if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            end_process(process, timeout=60)

    def cpu_seconds(self) -> float:
        """CPU of every daemon started, over its process tree (master, fork server and
        worker processes), in seconds."""
        return sum(tree_cpu_seconds(p.pid) for p in self.processes)


class Server:
    """A server set up in its own ``directory``, listening on :attr:`port` (127.0.0.1)."""

    name = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()

    def setup(self) -> None:
        """Create :attr:`directory` with the configuration."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server; return once it accepts connections."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        """CPU used so far by the server's processes (seconds)."""
        raise NotImplementedError

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class Instance(Server):
    """A mail server instance for the SMTP benchmarks; see the module docs."""

    def __init__(self, directory: Path, *, deliver: bool) -> None:
        super().__init__(directory)
        self.deliver = deliver

    def queue_counts(self) -> dict[str, int]:
        """Messages in each queue that matters right now."""
        raise NotImplementedError

    def maildir_new(self) -> Path:
        """The recipient's Maildir ``new/``."""
        raise NotImplementedError

    def profile_pid(self) -> int | None:
        """The process to profile with py-spy (None: not a Python server)."""
        return None

    def take_trace(self) -> dict[str, Any] | None:
        """Timings from inside the server (roost's ``trace`` patch), once stopped."""
        return None

    def accepted(self) -> int:
        """Messages accepted and still queued or already delivered."""
        return sum(self.queue_counts().values()) + count_names(self.maildir_new())


#: What-if variants of the roost daemon, to measure a proposed src/ change before anyone
#: makes it: each is Python run in the daemon process before ``roost serve`` starts.
#: ``--servers roost:syncfs+nolog`` combines them. Experiments only, never for production.
ROOST_PATCHES: Mapping[str, str] = {
    # the spool's flush: one syncfs(2) per batch instead of fdatasync per file
    "syncfs": """
import roost.queue.spool as _spool
from roost.queue.directory import SyncMethod as _SyncMethod
_spool_init = _spool.Spool.__init__
def _patched_spool_init(self, *args, **kwargs):
    _spool_init(self, *args, **{**kwargs, "sync_method": _SyncMethod.SYNCFS})
_spool.Spool.__init__ = _patched_spool_init
""",
    # no batching: every commit on its own, 32 at a time in 32 threads (like 32 cleanups)
    "nobatch": """
import roost.queue.spool as _spool
_spool_init = _spool.Spool.__init__
def _patched_spool_init(self, *args, **kwargs):
    _spool_init(self, *args, **{**kwargs, "group_commit": False, "io_threads": 32})
_spool.Spool.__init__ = _patched_spool_init
""",
    # write each new message's files in the spool's I/O threads *before* it joins a batch
    # (what QueueDirectory.prepare_job's docstring intends), so the single committer thread
    # only flushes, renames and fsyncs the directory
    "earlyprepare": """
import asyncio as _asyncio
import roost.queue.spool as _spool
from roost.queue.directory import _CommitJob
_spool_submit = _spool.Spool._submit
async def _early_submit(self, job):
    if isinstance(job, _CommitJob) and not job.prepared:
        loop = _asyncio.get_running_loop()
        if not await loop.run_in_executor(self._io, self.directory.prepare_job, job):
            raise job.error
    await _spool_submit(self, job)
_spool.Spool._submit = _early_submit
""",
    # ("onefile", the cost model of a one-file queue entry, is gone: the spool has had
    # one queue file per message since; "fastinit" and "inlinelookup" are in src/ now and
    # change nothing measurable any more.)
    # what logging costs: only warnings and errors are logged
    "nolog": """
import logging as _logging
import roost.daemon.logsetup as _logsetup
_setup_logging = _logsetup.setup_logging
def _patched_setup_logging(**kwargs):
    _setup_logging(**kwargs)
    _logging.getLogger("roost").setLevel(_logging.WARNING)
_logsetup.setup_logging = _patched_setup_logging
""",
    # aiosmtpd's SMTP.__init__ runs inspect.getmembers(self) (every attribute, properties
    # included) for each connection, only to find auth_* methods: look the names up once
    # per class instead
    "fastinit": """
import inspect as _inspect
import types as _types
import aiosmtpd.smtp as _aiosmtpd_smtp
_auth_names = {}
def _getmembers(obj, predicate=None):
    kind = type(obj)
    names = _auth_names.get(kind)
    if names is None:
        names = _auth_names[kind] = [n for n in dir(kind) if n.startswith("auth_")]
    return [(name, getattr(obj, name)) for name in names]
_aiosmtpd_smtp.inspect = _types.SimpleNamespace(
    getmembers=_getmembers, signature=_inspect.signature
)
""",
    # diagnostics, not a change: time commits, spool batches, DATA, and the event loop's
    # lag (how late a 10 ms timer fires); written to $ROOST_BENCH_TRACE at exit
    "trace": """
import asyncio as _asyncio
import atexit as _atexit
import json as _json
import os as _os
import time as _time
import roost.daemon.app as _app
import roost.queue.directory as _directory
import roost.queue.spool as _spool
import roost.smtp.session as _session
_trace = {
    "data": [], "commit": [], "batch": [], "batch_size": [], "prepare": [], "prepare_cpu": [],
    "flush": [], "lag": [],
}
def _timed_coroutine(owner, name, key):
    original = getattr(owner, name)
    async def timed(*args, **kwargs):
        started = _time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            _trace[key].append(_time.perf_counter() - started)
    setattr(owner, name, timed)
_timed_coroutine(_spool.MessageWriter, "commit", "commit")
_timed_coroutine(_session.SMTPSession, "smtp_DATA", "data")
_run_batch = _directory.QueueDirectory.run_batch
def _timed_run_batch(self, jobs):
    started = _time.perf_counter()
    try:
        return _run_batch(self, jobs)
    finally:
        _trace["batch"].append(_time.perf_counter() - started)
        _trace["batch_size"].append(len(jobs))
        for job in jobs:
            _trace.setdefault("jobs " + type(job).__name__.strip("_"), []).append(1)
_directory.QueueDirectory.run_batch = _timed_run_batch
def _timed_function(owner, name, key):
    original = getattr(owner, name)
    def timed(*args, **kwargs):
        started = _time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _trace[key].append(_time.perf_counter() - started)
    setattr(owner, name, timed)
_prepare_job = _directory.QueueDirectory.prepare_job
def _timed_prepare_job(self, job, **kwargs):
    started, cpu = _time.perf_counter(), _time.thread_time()
    try:
        return _prepare_job(self, job, **kwargs)
    finally:
        _trace["prepare"].append(_time.perf_counter() - started)
        _trace["prepare_cpu"].append(_time.thread_time() - cpu)
_directory.QueueDirectory.prepare_job = _timed_prepare_job
_commit_prepare = _directory._CommitJob.prepare
def _counted_commit_prepare(self, qd):
    _commit_prepare(self, qd)
    if self.sync_dirs:  # its directory entry was not durable yet: the batch fsyncs it
        _trace.setdefault("jobs with a directory fsync", []).append(1)
_directory._CommitJob.prepare = _counted_commit_prepare
_timed_function(_directory.QueueDirectory, "_flush_files", "flush")
_daemon_run = _app.Daemon.run
async def _traced_daemon_run(self):
    async def lag():
        while True:
            started = _time.perf_counter()
            await _asyncio.sleep(0.01)
            _trace["lag"].append(_time.perf_counter() - started - 0.01)
    task = _asyncio.get_running_loop().create_task(lag())
    try:
        return await _daemon_run(self)
    finally:
        task.cancel()
_app.Daemon.run = _traced_daemon_run
def _write_trace():
    with open(_os.environ["ROOST_BENCH_TRACE"], "w") as out:
        _json.dump(_trace, out)
_atexit.register(_write_trace)
""",
    # GIL hand-over: a thread back from a system call waits up to the switch interval
    # (5 ms) for the event loop thread to let go; 0.5 ms shows how much that costs
    "switch": """
import sys as _sys
_sys.setswitchinterval(0.0005)
""",
    # listeners with SO_REUSEPORT, so that several daemons share one port (``roost:w2``)
    "reuseport": """
import socket as _socket
import roost.daemon.listeners as _listeners
import roost.smtp.server as _smtp_server
_bind_socket = _listeners.bind_socket
def _bind_reuseport(listener, *, backlog=512):
    family = _socket.AF_INET6 if ":" in listener.host else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
    sock.bind((listener.host, listener.port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
_listeners.bind_socket = _bind_reuseport
_smtp_server.bind_socket = _bind_reuseport
""",
    # recipient lookups in the loop instead of a thread hop (the passwd-file is cached)
    "inlinelookup": """
import roost.auth.users as _users
async def _lookup(self, name):
    return self.lookup_sync(name)
_users.UserDatabase.lookup = _lookup
""",
}


class RoostInstance(RoostDaemon, Instance):
    """``roost serve`` in ``directory``; readiness through a NOTIFY_SOCKET (READY=1).

    Args:
        directory: created; holds main.cf, users, spool, Maildirs, maillog.
        deliver: run the queue manager (local delivery); False disables it (accept only).
        patches: keys of :data:`ROOST_PATCHES` (what-if experiments); empty for roost as is.
        workers: what-if: this many daemons on the same port (``SO_REUSEPORT``) and the same
            queue directory, each with its own event loop; only the first runs a queue
            manager. For acceptance only (the others do not wake the queue manager).
            Each of these daemons runs with ``worker_processes = 1``.
        worker_processes: the ``worker_processes`` parameter (``roost:pN`` / ``roost:pauto``
            in ``--servers``); None leaves the default (``auto``).
    """

    name = "roost"
    #: where the names of ``patches`` are looked up
    patch_table: Mapping[str, str] = ROOST_PATCHES

    def __init__(
        self,
        directory: Path,
        *,
        deliver: bool,
        patches: Sequence[str] = (),
        workers: int = 1,
        worker_processes: str | None = None,
    ) -> None:
        super().__init__(directory, deliver=deliver)
        if workers > 1:
            worker_processes = "1"
        self.worker_processes = worker_processes
        self.patches = tuple(patches) + (("reuseport",) if workers > 1 else ())
        self.workers = workers
        self.trace_path = directory.parent / f"{directory.name}.trace.json"

    def setup(self) -> None:
        from roost.auth.passwdfile import hash_password

        d = self.directory
        d.mkdir(parents=True)
        (d / "users").write_text(f"{RECIPIENT}:{hash_password('bench', 'SHA256-CRYPT')}::::::\n")
        (d / "aliases").write_text(f"postmaster: {RECIPIENT}\n")
        for worker in range(self.workers):
            disabled = ["submission", "submissions", "imap", "imaps", "pop3", "pop3s"]
            if not self.deliver or worker > 0:
                disabled.append("qmgr")
            settings = {
                "mynetworks": "127.0.0.0/8",
                "data_directory": f"{d}/lib{worker or ''}",
                "smtpd_peername_lookup": "no",
                "smtp_service_port": str(self.port),
                "master_service_disable": ", ".join(disabled),
            }
            if self.worker_processes is not None:
                settings["worker_processes"] = self.worker_processes
            self._config(worker).write_text(
                roost_config(d, "roost benchmark instance (bench/common.py)", settings)
            )

    def _config(self, worker: int) -> Path:
        return self.directory / f"main{worker or ''}.cf"

    def _command(self, worker: int) -> list[str]:
        config = str(self._config(worker))
        if not self.patches:
            return [sys.executable, "-m", "roost", "-c", config, "serve"]
        code = "".join(self.patch_table[name] for name in self.patches)
        code += "import sys\nfrom roost.cli.main import main\n"
        code += f"sys.argv = ['roost', '-c', {config!r}, 'serve']\nsys.exit(main())\n"
        return [sys.executable, "-c", code]

    def start(self, timeout: float = 60.0) -> None:
        for worker in range(self.workers):
            self.spawn(
                self._command(worker),
                self.directory / f"notify{worker}.sock",
                env={"ROOST_BENCH_TRACE": f"{self.trace_path}.{worker}"},
                timeout=timeout,
            )

    def profile_pid(self) -> int | None:
        return self.processes[0].pid if self.processes else None

    def queue_counts(self) -> dict[str, int]:
        spool = self.directory / "spool"
        return {  # one queue file per message, named by its 13-character queue ID
            queue: count_queue_files(spool / queue) for queue in ("incoming", "active", "deferred")
        }

    def maildir_new(self) -> Path:
        return self.directory / "mail" / DOMAIN / "user" / "Maildir" / "new"

    def take_trace(self) -> dict[str, Any] | None:
        """The ``trace`` patch's figures after :meth:`stop` (None without it), summarized."""
        raw: dict[str, list[float]] = collections.defaultdict(list)
        for worker in range(self.workers):
            path = Path(f"{self.trace_path}.{worker}")
            try:
                for key, values in json.loads(path.read_text()).items():
                    raw[key] += values
                path.unlink()
            except (OSError, ValueError):
                continue
        if not raw:
            return None
        summary: dict[str, Any] = {}
        for key, values in raw.items():
            if not values:
                continue
            ordered = sorted(values)
            pick = [ordered[min(int(len(ordered) * q), len(ordered) - 1)] for q in (0.5, 0.9, 0.99)]
            scale = 1 if key == "batch_size" or key.startswith("jobs ") else 1000  # s to ms
            summary[key] = {
                "n": len(values),
                "mean": scale * statistics.fmean(values),
                "p50": scale * pick[0],
                "p90": scale * pick[1],
                "p99": scale * pick[2],
                "max": scale * ordered[-1],
            }
        return summary


class PostfixInstance(Instance):
    """A separate Postfix instance in ``directory`` (config, queue, data, mail, maillog).

    Follows the reference recipe: ``inet_interfaces = 127.0.0.1``, no DNS, virtual(8)
    Maildir delivery for ``bench.test``, ``error:`` for everything else.

    Args:
        directory: created; ``etc/``, ``spool/``, ``data/``, ``mail/``, ``maillog``.
        deliver: deliver into the Maildir; False holds every message (accept only).
    """

    name = "postfix"

    def __init__(self, directory: Path, *, deliver: bool) -> None:
        super().__init__(directory, deliver=deliver)
        self.conf = directory / "etc"
        self.queue = directory / "spool"

    def setup(self) -> None:
        d = self.directory
        data, mail = d / "data", d / "mail"
        for path in (self.conf, self.queue, data, mail / DOMAIN):
            path.mkdir(parents=True)
        os.chown(mail, VMAIL_UID, VMAIL_UID)
        os.chown(mail / DOMAIN, VMAIL_UID, VMAIL_UID)
        shutil.chown(data, "postfix")
        hold = "" if self.deliver else "header_checks = static:HOLD\n"
        (self.conf / "main.cf").write_text(
            textwrap.dedent(f"""\
                # Postfix benchmark instance (bench/common.py); not the system instance
                compatibility_level = 3.6
                config_directory = {self.conf}
                queue_directory = {self.queue}
                data_directory = {data}
                multi_instance_name = postfix-bench
                myhostname = postfix-bench.localdomain
                mydomain = localdomain
                myorigin = $myhostname
                mydestination =
                inet_interfaces = 127.0.0.1
                inet_protocols = ipv4
                mynetworks = 127.0.0.0/8
                smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
                biff = no
                append_dot_mydomain = no
                disable_dns_lookups = yes
                smtp_dns_support_level = disabled
                smtp_host_lookup = native
                smtpd_peername_lookup = no
                maillog_file = {d}/maillog
                maillog_file_prefixes = {d}
                alias_maps =
                alias_database =
                local_recipient_maps =
                virtual_mailbox_domains = {DOMAIN}
                virtual_mailbox_base = {mail}
                virtual_mailbox_maps = texthash:{self.conf}/vmailbox
                virtual_uid_maps = static:{VMAIL_UID}
                virtual_gid_maps = static:{VMAIL_UID}
                virtual_minimum_uid = 100
                virtual_mailbox_limit = 0
                message_size_limit = 52428800
                default_transport = error:postfix-bench: outbound disabled
                relay_transport = error:postfix-bench: outbound disabled
                """)
            + hold
        )
        (self.conf / "vmailbox").write_text(f"{RECIPIENT} {DOMAIN}/user/\n")
        (self.conf / "master.cf").write_text(_POSTFIX_MASTER_CF.format(port=self.port))

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [find_program("postfix") or "postfix", "-c", str(self.conf), *args]
        script = find_program("script")
        if script is not None and args[:1] == ("start",):
            # postfix reports start-up errors only to a tty or syslog: give it a tty
            command = [script, "-qec", " ".join(command), "/dev/null"]
        return subprocess.run(command, capture_output=True, text=True, check=check)

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self, timeout: float = 30.0) -> None:
        started = self._postfix("start", check=False)
        if wait_for_greeting(self.port, b"220", timeout=timeout):
            return
        log = (self.directory / "maillog").read_text(errors="replace") if started else ""
        raise RuntimeError(f"postfix did not start: {started.stdout}{started.stderr}{log[-2000:]}")

    def stop(self) -> None:
        pid = self.master_pid()
        self._postfix("stop", check=False)
        wait_gone(pid)

    def cpu_seconds(self) -> float:
        pid = self.master_pid()
        assert pid is not None, "postfix is not running"
        return tree_cpu_seconds(pid)

    def queue_counts(self) -> dict[str, int]:
        queues = ("incoming", "active", "deferred") + (() if self.deliver else ("hold",))
        return {queue: count_files(self.queue / queue, recursive=True) for queue in queues}

    def maildir_new(self) -> Path:
        return self.directory / "mail" / DOMAIN / "user" / "new"


# the reference recipe's master.cf, without the services these benchmarks never use
_POSTFIX_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class FloorInstance(Instance):
    """``bench/smtp_floor.py``: the least server for smtp-source's ingest load, in
    ``directory`` (its message files and counts); ``floor[:raw|:streams][+sync]`` in
    ``--servers`` (docs/performance.md, "The aiosmtpd floor, session 8").

    Args:
        directory: created by the server.
        deliver: must be False (the floor delivers nothing).
        engine: ``aiosmtpd`` (its stock SMTP class), ``streams`` (a StreamReaderProtocol and a
            coroutine per connection, aiosmtpd's shape) or ``raw`` (an asyncio.Protocol).
        sync: a new file and ``fdatasync`` per message before its ``250``.
        workers: worker processes sharing the listening socket (roost's default: 2 here).
    """

    name = "floor"

    def __init__(
        self, directory: Path, *, deliver: bool, engine: str, sync: bool, workers: int = 2
    ) -> None:
        if deliver:
            raise ValueError("the floor server accepts only (--mode accept)")
        super().__init__(directory, deliver=deliver)
        self.engine, self.sync, self.workers = engine, sync, workers
        self.process: subprocess.Popen[bytes] | None = None

    def setup(self) -> None:
        self.directory.mkdir(parents=True)

    def start(self, timeout: float = 30.0) -> None:
        command = [sys.executable, str(ROOT / "bench" / "smtp_floor.py"), "--port", str(self.port)]
        command += ["--dir", str(self.directory), "--workers", str(self.workers)]
        command += ["--engine", self.engine] + (["--sync"] if self.sync else [])
        with open(self.directory.parent / f"{self.directory.name}.out", "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        if not wait_for_greeting(self.port, b"220", b"QUIT\r\n", timeout=timeout):
            raise RuntimeError(f"the floor server did not start: {' '.join(command)}")

    def stop(self) -> None:
        if self.process is not None:
            end_process(self.process, timeout=30)

    def remove(self) -> None:
        super().remove()
        Path(self.directory.parent / f"{self.directory.name}.out").unlink(missing_ok=True)

    def master_pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def cpu_seconds(self) -> float:
        assert self.process is not None, "the floor server is not running"
        return tree_cpu_seconds(self.process.pid)

    def profile_pid(self) -> int | None:
        return self.master_pid()

    def queue_counts(self) -> dict[str, int]:
        """The workers' counts of ``250`` replies (the greeting check's session has none)."""
        try:
            counts = (self.directory / "counts").read_bytes()
        except OSError:
            return {"accepted": 0}
        return {
            "accepted": sum(
                int.from_bytes(counts[i : i + 8], sys.byteorder) for i in range(0, len(counts), 8)
            )
        }

    def maildir_new(self) -> Path:
        return self.directory / "no-maildir"


def make_instance(kind: str, base: Path, label: str, *, deliver: bool) -> Instance:
    """``kind``: ``roost``, ``roost:PATCH[+PATCH...]``, ``postfix`` or
    ``floor[:raw|:streams][+sync]`` (:class:`FloorInstance`).

    A PATCH is a key of :data:`ROOST_PATCHES`, or ``wN``: N daemons sharing the port.
    ``roost@DIR`` (patches after it as usual) runs the ``roost`` package in DIR instead
    of ``--roost-src`` or the snapshot, so that one invocation alternates two sources
    (``--servers roost@/var/tmp/base/src,roost,postfix``).
    """
    source: Path | None = None
    if kind.startswith("roost@"):
        head, _, patch_text = kind.partition(":")
        source = Path(head[len("roost@") :]).resolve()
        if not (source / "roost").is_dir():
            raise ValueError(f"{kind!r}: no roost package in {source}")
        kind = "roost" + (f":{patch_text}" if patch_text else "")
    if ":" in str(base.resolve()):
        raise ValueError(f"{base}: no ':' please, it separates mail_location's fields")
    # no ':' in the path: it separates the fields of mail_location (maildir:PATH:...)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    directory = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=base))
    directory.rmdir()  # setup() creates it
    if kind == "postfix":
        return PostfixInstance(directory, deliver=deliver)
    if kind == "floor" or kind.startswith("floor:"):
        options = set(kind.partition(":")[2].split("+")) - {""}
        engines = options & {"raw", "streams"}
        if options - {"raw", "streams", "sync"} or len(engines) > 1:
            raise ValueError(f"unknown server {kind!r} (floor[:raw|:streams][+sync])")
        engine = engines.pop() if engines else "aiosmtpd"
        return FloorInstance(directory, deliver=deliver, engine=engine, sync="sync" in options)
    name, _, patch_text = kind.partition(":")
    patches = patch_text.split("+") if patch_text else []
    workers = [int(p[1:]) for p in patches if p[:1] == "w" and p[1:].isdigit()]
    patches = [p for p in patches if not (p[:1] == "w" and p[1:].isdigit())]
    processes = [p[1:] for p in patches if p[:1] == "p" and (p[1:].isdigit() or p == "pauto")]
    patches = [p for p in patches if p[1:] not in processes or p[:1] != "p"]
    if name != "roost" or any(patch not in ROOST_PATCHES for patch in patches):
        raise ValueError(
            f"unknown server {kind!r} (patches: {', '.join(ROOST_PATCHES)}, wN, pN, pauto)"
        )
    instance = RoostInstance(
        directory,
        deliver=deliver,
        patches=patches,
        workers=max(workers or [1]),
        worker_processes=processes[-1] if processes else None,
    )
    if source is not None:
        instance.python_path = source
    return instance


# --- IMAP and POP3 servers (bench/imap_bench.py, bench/pop3_bench.py) ---------------------

#: what a server of each protocol greets with, and the command that ends the session
GREETINGS: Mapping[str, tuple[bytes, bytes]] = {
    "imap": (b"* OK", b"a LOGOUT\r\n"),
    "pop3": (b"+OK", b"QUIT\r\n"),
}
#: roost's services; a mailbox server runs only its protocol's
ROOST_SERVICES = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "qmgr")


class MailboxServer(Server):
    """An IMAP or POP3 server in ``directory`` with ``users`` (local parts), each with
    ``password`` (stored as ``{PLAIN}``: no hashing cost on either side).

    Args:
        directory: created by :meth:`setup`.
        users: local parts; their Maildirs are :meth:`maildir`, their login names
            :meth:`login`.
        protocol: ``imap`` or ``pop3``: the one service served, on :attr:`port`
            (127.0.0.1).
        password: every user's password.
        settings: configuration lines of this server's own (main.cf or dovecot.conf)
            added to what every instance has.
    """

    def __init__(
        self,
        directory: Path,
        users: Sequence[str],
        *,
        protocol: str,
        password: str,
        settings: str = "",
    ) -> None:
        super().__init__(directory)
        self.users = list(users)
        self.protocol = protocol
        self.password = password
        self.settings = settings

    def login(self, user: str) -> str:
        raise NotImplementedError

    def maildir(self, user: str) -> Path:
        raise NotImplementedError

    def root_pid(self) -> int | None:
        """The server's first process (None: not running)."""
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        """CPU of the server's process tree, with the children it reaped (seconds)."""
        pid = self.root_pid()
        return 0.0 if pid is None else tree_cpu_seconds(pid)

    def memory(self) -> Memory:
        pid = self.root_pid()
        return Memory(0, 0, 0) if pid is None else tree_memory(pid)

    def logins(self) -> list[tuple[str, str]]:
        return [(self.login(user), self.password) for user in self.users]

    def own_mail(self) -> None:
        """Give the mail files to whoever the server reads them as."""

    def notes(self) -> list[str]:
        """Things worth noting from the server's log."""
        return []


class RoostMailbox(RoostDaemon, MailboxServer):
    """``roost serve`` with only the ``protocol`` service and no queue manager; users
    ``USER@bench.test`` in a passwd-file."""

    name = "roost"

    def login(self, user: str) -> str:
        return f"{user}@{DOMAIN}"

    def maildir(self, user: str) -> Path:
        return self.directory / "mail" / DOMAIN / user / "Maildir"

    def setup(self) -> None:
        d = self.directory
        d.mkdir(parents=True)
        (d / "users").write_text(
            "".join(f"{user}@{DOMAIN}:{{PLAIN}}{self.password}::::::\n" for user in self.users)
        )
        (d / "aliases").write_text("")
        settings = {
            f"{self.protocol}_service_port": str(self.port),
            "master_service_disable": ", ".join(s for s in ROOST_SERVICES if s != self.protocol),
        }
        title = f"roost {self.protocol.upper()} benchmark instance (bench/{self.protocol}_bench.py)"
        (d / "main.cf").write_text(roost_config(d, title, settings) + self.settings)

    def start(self, timeout: float = 60.0) -> None:
        command = [sys.executable, "-m", "roost", "-c", str(self.directory / "main.cf"), "serve"]
        self.spawn(command, self.directory / "notify.sock", timeout=timeout)

    def root_pid(self) -> int | None:
        return self.processes[0].pid if self.processes else None

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
# Dovecot {upper} benchmark instance (bench/{protocol}_bench.py); not the system instance
instance_name = dovecot-{protocol}bench-{tag}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = {protocol}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 100
mail_location = maildir:~/Maildir
{settings}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={d}/home/%u
}}
service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {protocol}s {{
    port = 0
  }}
  process_limit = 2000
}}
service {protocol} {{
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


class DovecotMailbox(MailboxServer):
    """A separate Dovecot instance (own config, base_dir, state, log; never /etc/dovecot)
    serving only ``protocol``; mail in ``home/USER/Maildir`` owned by uid/gid 5000;
    ``settings`` go before the passdb. Its master starts as root."""

    name = "dovecot"

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
            "".join(f"{user}:{{PLAIN}}{self.password}::::::\n" for user in self.users)
        )
        (d / "dovecot.conf").write_text(
            DOVECOT_CONF.format(
                d=d,
                port=self.port,
                uid=VMAIL_UID,
                tag=d.name,
                protocol=self.protocol,
                upper=self.protocol.upper(),
                settings=self.settings,
            )
        )

    def own_mail(self) -> None:
        subprocess.run(
            ["chown", "-R", f"{VMAIL_UID}:{VMAIL_UID}", str(self.directory / "home")], check=True
        )

    def _dovecot(self, *args: str) -> int:
        """``dovecot -c CONFIG ARGS``; output to ``dovecot.out`` (not a pipe: the master
        stays in the background and would hold it open)."""
        program = find_program("dovecot") or "dovecot"
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
        if not wait_for_greeting(self.port, *GREETINGS[self.protocol]):
            raise RuntimeError(f"no {self.protocol.upper()} greeting on port {self.port}")

    def stop(self) -> None:
        pid = self.root_pid()
        self._dovecot("stop")
        wait_gone(pid)

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


def dovecot_usable(protocol: str) -> str | None:
    """Why the Dovecot side of a ``protocol`` benchmark cannot run here, or None."""
    package = f"dovecot-{protocol}d"
    if find_program("dovecot") is None:
        return f"dovecot is not installed (apt-get install {package})"
    if not Path(f"/usr/lib/dovecot/{protocol}").exists():
        return f"Dovecot's {protocol} is not installed (apt-get install {package})"
    if os.geteuid() != 0:
        return "Dovecot's master must start as root: run the benchmark as root"
    return None


def dovecot_version() -> str | None:
    """``dovecot --version``, or None when it is not installed."""
    dovecot = find_program("dovecot")
    if dovecot is None:
        return None
    return subprocess.run([dovecot, "--version"], capture_output=True, text=True).stdout.strip()


MAILBOX_SERVERS: tuple[str, ...] = ("roost", "dovecot")


def check_mailbox_servers(servers: Sequence[str], *, hint: str = "") -> None:
    """Exit with a message unless every one of ``servers`` is ``roost`` or ``dovecot`` (the
    IMAP and POP3 benchmarks take no ``roost@DIR`` and no patches); ``hint`` ends it."""
    if unknown := [s for s in servers if s not in MAILBOX_SERVERS]:
        sys.exit(f"unknown server {', '.join(unknown)}: roost or dovecot{hint}")


def make_mailbox_server(
    kind: str,
    base: Path,
    label: str,
    users: Sequence[str],
    *,
    protocol: str,
    password: str,
    roost_settings: str,
    dovecot_settings: str,
) -> MailboxServer:
    """``kind``: ``roost`` or ``dovecot``, in a new directory under
    ``base``, serving ``protocol``; the settings are the servers' own (see the classes)."""
    directory = Path(tempfile.mkdtemp(prefix=f"{protocol}-{kind}-{label}-", dir=base))
    directory.rmdir()  # setup() creates it
    if kind == "roost":
        return RoostMailbox(
            directory, users, protocol=protocol, password=password, settings=roost_settings
        )
    if kind == "dovecot":
        return DovecotMailbox(
            directory, users, protocol=protocol, password=password, settings=dovecot_settings
        )
    raise ValueError(f"unknown server {kind!r} (roost or dovecot)")


def mailbox_bench_base(directory: Path, prefix: str, *, live: bool) -> Path:
    """A new directory for a mailbox benchmark's servers (readable by Dovecot's
    processes); unless ``live``, roost runs a snapshot of src/roost taken into it."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    base.chmod(0o755)
    if not live:
        RoostDaemon.python_path = snapshot_source(base)
    return base


# --- load generation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One smtp-source load: ``sessions`` in parallel, ``messages`` in all, ``size`` bytes."""

    name: str
    sessions: int
    messages: int
    size: int

    def scaled(self, divisor: int) -> Workload:
        return Workload(self.name, self.sessions, max(self.messages // divisor, 1), self.size)

    def describe(self) -> str:
        size = f"{self.size // 1024} KB" if self.size % 1024 == 0 else f"{self.size} B"
        return f"{self.sessions} x {self.messages} x {size}"


def smtp_source_command(port: int, workload: Workload) -> list[str]:
    """smtp-source: one connection per message (no -d), HELO, one recipient, no pipelining.

    ``-m`` is the total number of messages, spread over ``-s`` parallel sessions; ``-l`` is
    the body size (smtp-source adds a few header lines).
    """
    return [
        smtp_source(),
        "-s",
        str(workload.sessions),
        "-m",
        str(workload.messages),
        "-l",
        str(workload.size),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        "-M",
        CLIENT_HELO,
        f"127.0.0.1:{port}",
    ]


# --- sampling, profiling, statistics -------------------------------------------------------


class Sampler:
    """Call ``probe`` every ``interval`` seconds in a thread; keep ``(seconds, value)``."""

    def __init__(self, probe: Callable[[], dict[str, int]], interval: float = 1.0) -> None:
        self.probe = probe
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def start(self, started: float) -> None:
        self._started = started
        self._thread.start()

    def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic() - self._started, self.probe()))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Profiler:
    """``py-spy record`` attached to a running process, raw (collapsed) stacks per thread."""

    def __init__(
        self,
        pid: int,
        output: Path,
        *,
        rate: int = 100,
        idle: bool = False,
        gil: bool = False,
        subprocesses: bool = False,
    ) -> None:
        """Record ``pid`` at ``rate`` samples per second; ``idle``: idle threads' samples
        too; ``gil``: only samples of the thread holding the GIL; ``subprocesses``: its
        child processes too (roost's workers)."""
        spy = find_program("py-spy", str(Path(sys.executable).parent))
        if spy is None:
            raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
        command = [spy, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "--threads"]
        options = {"--idle": idle, "--gil": gil, "--subprocesses": subprocesses}
        command += ["-o", str(output), *(option for option, wanted in options.items() if wanted)]
        self.output = output
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def stop(self) -> None:
        """Stop recording (py-spy writes its file on SIGINT)."""
        end_process(self.process, signal.SIGINT)


def raw_stacks(raw: Path) -> Iterator[tuple[str, str, list[str], int]]:
    """``(stack, thread, frames, samples)`` for each line of a py-spy raw (collapsed)
    profile: the line's stack text (the thread, then the frames outermost first, ``;``
    between), the thread alone, the frames alone and the number of samples."""
    with open(raw) as lines:
        for line in lines:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if stack and count_text.isdigit():
                thread, *frames = stack.split(";")
                yield stack, thread, frames, int(count_text)


def first_rule(stack: str, rules: Sequence[tuple[str, tuple[str, ...]]]) -> str | None:
    """The name of the first of ``rules`` (name, texts) with a text found in ``stack``."""
    for name, needles in rules:
        if any(needle in stack for needle in needles):
            return name
    return None


def summarize_profile(raw: Path, top: int = 15) -> str:
    """Per thread: samples, and the functions with most self and total samples."""
    threads: collections.Counter[str] = collections.Counter()
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for _, thread_text, frames, count in raw_stacks(raw):
        thread = thread_text.split(":")[-1].strip() or thread_text
        threads[thread] += count
        if frames:
            own[thread][frames[-1]] += count
        for frame in dict.fromkeys(frames):
            total[thread][frame] += count
    all_samples = sum(threads.values()) or 1
    out = [f"{raw}: {all_samples} samples", "", "## MainThread by activity"]
    out += [f"  {share:5.1f} %  {name}" for name, share in categorize_thread(raw)]
    for thread, samples in threads.most_common():
        out.append(f"\n## {thread}: {samples} samples ({100 * samples / all_samples:.1f} %)")
        out.append("   self%  total%  function")
        ranked = sorted(total[thread], key=lambda f: (own[thread][f], total[thread][f]))
        for frame in list(reversed(ranked))[:top]:
            self_share = 100 * own[thread][frame] / samples
            total_share = 100 * total[thread][frame] / samples
            out.append(f"  {self_share:5.1f}  {total_share:6.1f}  {frame}")
    return "\n".join(out)


#: Where the event loop thread's time goes, by the first rule whose text is in a sample's
#: stack (rules in this order; frames as py-spy prints them).
MAIN_THREAD_CATEGORIES: Sequence[tuple[str, tuple[str, ...]]] = (
    ("logging (records, format, write to maillog)", ("(logging/", "logsetup.py")),
    ("socket writes of replies (StreamWriter.write)", ("StreamWriter.write",)),
    ("session object per connection (SMTP.__init__)", ("SMTP.__init__", "SMTPSession.__init__")),
    ("RCPT (parse, policy, user lookup)", ("smtp_RCPT",)),
    ("MAIL (parse)", ("smtp_MAIL",)),
    ("DATA (decode, Received, spool write, commit)", ("smtp_DATA",)),
    ("HELO, QUIT", ("smtp_HELO", "smtp_EHLO", "smtp_QUIT")),
    ("connect/disconnect bookkeeping", ("connection_made", "connection_lost")),
    ("aiosmtpd command loop (read line, dispatch)", ("_handle_client",)),
    ("spool committer task (in the loop)", ("_commit_loop", "Spool._answer")),
    ("event loop itself (uvloop C code: accept, recv, epoll, callbacks)", ("",)),
)


def categorize_thread(raw: Path, thread_name: str = "MainThread") -> list[tuple[str, float]]:
    """Share of ``thread_name``'s samples per :data:`MAIN_THREAD_CATEGORIES` entry."""
    counts: collections.Counter[str] = collections.Counter()
    for stack, thread, _, count in raw_stacks(raw):
        if thread_name in thread and (name := first_rule(stack, MAIN_THREAD_CATEGORIES)):
            counts[name] += count
    total = sum(counts.values()) or 1
    return [(name, 100 * counts[name] / total) for name, _ in MAIN_THREAD_CATEGORIES]


def trace_lines(trace: Mapping[str, Mapping[str, float]]) -> str:
    """The ``trace`` patch's summary, one line per measured thing (ms; batch size in jobs)."""
    names = {
        "data": "DATA command to 250 (ms)",
        "commit": "MessageWriter.commit (ms)",
        "batch": "spool run_batch (ms)",
        "batch_size": "jobs per batch",
        "prepare": "  prepare (1 job: create+write, ms)",
        "prepare_cpu": "  ... of which its thread's CPU",
        "flush": "  flush files (1 batch, ms)",
        "lag": "event loop lag (ms)",
    }
    return "\n".join(
        f"    {key:<34} n={v['n']:.0f}"
        if key.startswith("jobs ")
        else f"    {names.get(key, key):<34} n={v['n']:<7.0f} mean {v['mean']:7.2f}"
        f"  p50 {v['p50']:7.2f}  p90 {v['p90']:7.2f}  p99 {v['p99']:7.2f}  max {v['max']:8.2f}"
        for key, v in trace.items()
    )


def evenly_spaced(series: Sequence[Any], width: int) -> list[Any]:
    """About ``width`` items of ``series`` at even steps, always with its last item."""
    if not series:
        return []
    picked = list(series[:: max(len(series) // width, 1)])
    if picked[-1] != series[-1]:
        picked.append(series[-1])
    return picked


def median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else float("nan")


def spread(values: Sequence[float]) -> str:
    """``min-max`` of a few values, for the reader to judge the noise."""
    return f"{min(values):.0f}-{max(values):.0f}" if values else "-"


def ratio_text(values: Iterable[tuple[int, float]], base: Mapping[int, float]) -> str:
    """``R.RRx; P.PPx``: the ratio of the median of ``values`` (``(round, value)`` pairs)
    to the median of ``base`` (value by round), then the median of the ratios of each value
    to the base's value of the same round (runs done next to each other in time)."""
    values = list(values)
    of_medians = median(value for _, value in values) / median(base.values())
    pairs = [value / base[round_] for round_, value in values if base.get(round_)]
    return f"{of_medians:.2f}x; {median(pairs):.2f}x"


@dataclass
class RunRecord:
    """One run of one server on one workload."""

    server: str
    workload: str
    round: int
    messages: int
    seconds: float
    cpu_seconds: float
    load_before: float
    ok: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.cpu_seconds / self.messages if self.messages else float("nan")


def alternating(servers: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """A B A B ...: every round runs each server once, in the same order."""
    return [(round_, server) for round_ in range(1, rounds + 1) for server in servers]


def run_alternating(
    servers: Sequence[str],
    rounds: int,
    run: Callable[[str, int], RunRecord],
    line: Callable[[RunRecord], str],
) -> list[RunRecord]:
    """``run(server, round)`` for every server in every round (:func:`alternating`),
    printing ``line(record)`` after each; return the records."""
    records = []
    for round_, server in alternating(servers, rounds):
        records.append(run(server, round_))
        print(line(records[-1]), flush=True)
    return records


def profiled_run(
    directory: Path, name: str, run: Callable[[Path], RunRecord]
) -> tuple[RunRecord, Path]:
    """One extra run (not counted) under py-spy: ``run(raw)`` records its raw stacks in
    ``directory/NAME.txt``; their summary goes beside (``NAME.summary.txt``)."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / f"{name}.txt"
    record = run(raw)
    raw.with_suffix(".summary.txt").write_text(summarize_profile(raw) + "\n")
    return record, raw


def run_workloads(
    args: argparse.Namespace,
    workloads: Sequence[Workload],
    servers: Sequence[str],
    run_once: Callable[..., RunRecord],
    *,
    name: str,
    deliver: bool,
    line: Callable[[RunRecord], str],
    to: str = "",
) -> list[RunRecord]:
    """Each workload with the servers alternating (``--rounds``), every run on a new
    instance (:func:`make_instance`, ``deliver``), ``line(record)`` printed after it; then,
    with ``--profile``, one more roost run under py-spy (not counted), its stacks in
    ``NAME-WORKLOAD.txt``. ``to`` ends the line that introduces a workload."""

    def run(workload: Workload, server: str, round_: int, profile: Path | None = None) -> RunRecord:
        label = f"{name}-profile" if profile else f"{name}-{server}"
        instance = make_instance(server, args.dir, label, deliver=deliver)
        return run_once(instance, server, workload, round_, timeout=args.timeout, profile=profile)

    records: list[RunRecord] = []
    for workload in workloads:
        print(f"\n{workload.name}: smtp-source {workload.describe()}{to}", flush=True)
        each = functools.partial(run, workload)
        records += run_alternating(servers, args.rounds, each, line)
        if args.profile is not None:
            raw_name = f"{name}-{workload.name}"
            record, raw = profiled_run(args.profile, raw_name, functools.partial(each, "roost", 0))
            print(f"  profiled run (not counted): {record.rate:.0f} msg/s; profile {raw}")
    return records


@contextlib.contextmanager
def serving(instance: Instance, profile: Path | None = None) -> Iterator[Instance]:
    """Set up and start ``instance`` (py-spy recording it into ``profile`` if given and it
    is roost); afterwards stop it, remove its directory and print the ``trace`` patch's
    figures, if any. Unless ``--no-settle``, :func:`settle_filesystem` first."""
    if SETTLE:
        settle_filesystem()
    instance.setup()
    instance.start()
    profiler = None
    try:
        time.sleep(0.5)  # let start-up work (certificates, process spawns) finish
        if profile is not None and (pid := instance.profile_pid()) is not None:
            profiler = Profiler(pid, profile)
            time.sleep(1)  # py-spy needs a moment to attach
        yield instance
    finally:
        if profiler is not None:
            profiler.stop()
        instance.stop()
        instance.remove()
        trace = instance.take_trace()
        if trace:
            print(trace_lines(trace))


def add_workload_arguments(parser: argparse.ArgumentParser, workloads: Iterable[str]) -> None:
    """``--quick``, ``--messages``, ``--workloads`` (see :func:`chosen_workloads`)."""
    parser.add_argument("--quick", action="store_true", help="10x fewer messages")
    parser.add_argument("--messages", type=int, help="messages per run, for every workload")
    parser.add_argument("--workloads", default=",".join(workloads), help="comma-separated")


def chosen_workloads(args: argparse.Namespace, workloads: Mapping[str, Workload]) -> list[Workload]:
    """The workloads named by ``--workloads``, scaled by ``--quick`` and ``--messages``."""
    chosen = [workloads[name] for name in args.workloads.split(",")]
    if args.quick:
        chosen = [w.scaled(10) for w in chosen]
    if args.messages:
        chosen = [dataclasses.replace(w, messages=args.messages) for w in chosen]
    return chosen


def add_comparison_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every benchmark against Postfix (see :func:`prepare_comparison`)."""
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server (default 3)")
    parser.add_argument("--servers", default="roost,postfix", help="comma-separated, in order")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--profile", type=Path, help="py-spy one extra roost run per workload")
    parser.add_argument(
        "--no-snapshot", action="store_true", help="run src/ live, not a copy taken at start"
    )
    parser.add_argument(
        "--roost-src", type=Path, help="run the roost package in this directory (PYTHONPATH)"
    )
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="no sync and cache drop before each run (see common.settle_filesystem)",
    )


def prepare_comparison(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """Check that the servers of ``--servers`` can run (exit if not), choose roost's code
    (:func:`use_roost_source`) and print the machine; return the servers and the machine
    description. Call :func:`drop_roost_snapshot` at the end."""
    servers = args.servers.split(",")
    if "postfix" in servers and (problem := postfix_usable()):
        sys.exit(f"cannot run Postfix: {problem} (or leave it out with --servers roost)")
    warn_if_tmpfs(args.dir)
    global SETTLE
    SETTLE = not args.no_settle
    machine = machine_description(args.dir)
    machine["before_each_run"] = "sync, drop caches" if SETTLE else "nothing (--no-settle)"
    machine["roost_source"] = use_roost_source(
        args.dir, snapshot=not args.no_snapshot, source=args.roost_src
    )
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()))
    return servers, machine


def write_json(path: Path, machine: Mapping[str, str], records: Sequence[RunRecord]) -> None:
    data = {"machine": dict(machine), "runs": [asdict(r) for r in records]}
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"results written to {path}")


def comparison_table(
    records: Sequence[RunRecord],
    workloads: Sequence[Workload],
    servers: Sequence[str],
    *,
    baseline: str | None = None,
    targets: Mapping[str, float] | None = None,
) -> str:
    """A Markdown table: medians per server, ratios to ``baseline`` (of medians and of pairs).

    The pairwise ratio takes each round's run against the baseline's run of the same round
    (neighbours in time), then the median of those ratios. The baseline is ``postfix`` when
    it ran, else the first server; ``targets`` (minimum ratios) are judged against Postfix.
    """
    if baseline is None:
        baseline = "postfix" if "postfix" in servers else servers[0]
    if baseline != "postfix":
        targets = None
    lines = [
        "| workload | server | runs | msg/s median (min-max) | CPU ms/msg | ratio msg/s to "
        f"{baseline} (of medians; median of pairs) | CPU ratio | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workload in workloads:
        mine = [r for r in records if r.workload == workload.name and r.ok]
        base = {r.round: r for r in mine if r.server == baseline}
        base_rates = {round_: r.rate for round_, r in base.items()}
        base_rate = median(base_rates.values())
        base_cpu = median(r.cpu_ms_per_message for r in base.values())
        for server in servers:
            runs = [r for r in mine if r.server == server]
            if not runs:
                continue
            rates = [r.rate for r in runs]
            rate, cpu = median(rates), median(r.cpu_ms_per_message for r in runs)
            ratio = cpu_ratio = target = ""
            if server != baseline and base:
                ratio = ratio_text(((r.round, r.rate) for r in runs), base_rates)
                cpu_ratio = f"{cpu / base_cpu:.2f}x"
                wanted = (targets or {}).get(workload.name)
                if wanted is not None:
                    verdict = "met" if rate / base_rate >= wanted else "NOT met"
                    target = f">= {wanted:.1f}x: {verdict}"
            lines.append(
                f"| {workload.name} ({workload.describe()}) | {server} | {len(runs)} | "
                f"{rate:.0f} ({spread(rates)}) | {cpu:.2f} | {ratio} | {cpu_ratio} | {target} |"
            )
    return "\n".join(lines)

"""Worker processes: the network services on every CPU, like nginx's workers.

``worker_processes`` (default ``auto``: one per CPU the daemon may run on) processes serve
the listeners (smtp, submission, submissions, imap, imaps, pop3, pop3s); the master keeps
what must be one: the control socket, systemd notification, queue recovery, pickup, the
queue manager and every delivery, signals, reload and stop. ``worker_processes = 1``
runs everything in the master, as before (no other process).

How the processes come to be (see docs/architecture.md, "Process model and privileges"):

1. The master binds every listening socket and loads the TLS keys before any event loop
   exists (:meth:`roost.daemon.app.Daemon.prepare`).
2. It gives the C heap's free pages back (:func:`release_free_heap`), calls
   :func:`gc.freeze` and forks the *fork server* (:class:`Forker`): a small
   process without threads or event loop that forks every worker, at start and whenever
   one must be replaced. A process with a running loop and threads (the master) never
   forks, and every worker starts from the same clean, shared memory pages.
3. Each worker inherits the listening sockets (one accept queue per address shared by
   every worker: the kernel hands each connection to one of them, and connections queued
   while a worker restarts are taken by the others), builds its own loop, user database
   and, when an SMTP service is enabled, spool writer (:func:`needs_spool`), and serves.

The master and each worker talk over a socket pair (:class:`~roost.daemon.channel.Channel`,
JSON lines). Worker to master:

* ``ready``: the worker's services listen;
* ``commit {id}``: a message is in ``incoming/``: wake the queue manager;
* ``throttle {e}``, ``anvil {e}``, ``count {n, k, d}``: the shared counters (the
  failed-login throttle, SMTP connection counts and rates, IMAP/POP3 connection counts).
  Workers send these straight to each other too (:class:`Mesh`, datagrams), so they take
  effect before the client sees the answer; the master keeps each worker's share, to bring
  a new worker up to date and to take back the counts of a worker that died;
* ``sub {p}``, ``unsub {p}``: mailbox ``p`` got its first subscriber in this worker (an
  IMAP session selected it, a handed-over session watches it), or lost its last (sent at
  the end of a loop pass: a mailbox selected again meanwhile costs none). The
  master answers ``sub`` with a ``bus {p}`` to that worker: the subscription takes effect
  in the master only then, so the worker's subscribers sync once more, after every change
  the master did not relay to it (see :meth:`WorkerPool.watching`);
* ``bus {p}``: a mailbox changed (IMAP IDLE): the master forwards it to the other workers
  that watch ``p`` and publishes it to its own subscribers; the master's own deliveries go
  to every worker that watches the mailbox;
* ``status {id, services}``, ``reloaded {id, ok}``: answers;
* ``idle {s}``: the worker has served a connection and then had none for ``s`` seconds,
  at least ``max_idle``; ``busy`` and ``retiring {s}`` answer ``retire`` (see below);
* ``active``: the worker's first connection since it started or said ``idle``.

Master to worker: the forwarded shared state, ``sync`` (a snapshot for a new worker),
``status {id}``, ``reload {id}``, ``stop {grace}``, ``retire``. Beside the channel, a
second socket pair per worker (``SOCK_SEQPACKET``) carries IMAP sessions idle in IDLE to
the master and back, one packet and one descriptor per session (``imap_hibernate_timeout``,
:mod:`roost.daemon.hibernation`); the master keeps those sessions and their connection
counts while no worker has them.

``max_idle`` (Postfix's parameter: "the maximum amount of time that an idle Postfix daemon
process waits for an incoming connection before terminating voluntarily", master(5)),
for a pool of up to ``worker_processes`` workers: a worker that has had no client
connection for ``max_idle`` seconds goes, so that what its sessions dirtied (copied
pages of the image, heap) goes back to the system: replaced by a new fork while another
worker is busy (said ``active`` and not ``idle`` since), else not replaced, never the last
one, until a worker says ``active`` again (then the master forks the missing ones: as
Postfix's master starts daemons on demand). The worker says
``idle``; the master answers ``retire`` only when no other replacement is under way and
every worker is ready; the worker, in that same callback, checks that it still has no
client connection and accepted none since (else ``busy``), closes its listening sockets
and says ``retiring``; the master forks the replacement at once (as for a reload that
replaces the workers) and lets the next worker retire only once it is ready. The
connections that arrive meanwhile wait in the shared accept queues for the other
workers; one the retiring worker had just accepted is served to its end before it
exits. Its exit is not a death: nothing is logged but an info line, and there is no
restart pause. A session handed to the master is no longer the worker's client, and the
master hands sessions back only to a worker it has not asked to retire. When the master
dies, the fork server and
the workers are killed at once (``PR_SET_PDEATHSIG`` with SIGKILL; a worker also exits when
its channel ends without a ``stop``): a worker must not go on committing messages while a
restarted master recovers the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import errno
import functools
import gc
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from roost.auth.factory import build_user_database, preload_user_database
from roost.auth.throttle import Throttle, ThrottleEvent
from roost.config import ConfigError, Settings, load_settings
from roost.daemon.channel import Channel, Message, commit_line
from roost.daemon.compose import WORKER_FACTORIES, build_services
from roost.daemon.hibernation import (
    RECV_SIZE,
    HibernatedSessions,
    HibernationLink,
    decode_packet,
    encode_packet,
    header_counts,
)
from roost.daemon.listeners import BOUND, Listener, service_listeners
from roost.daemon.logsetup import start_log_writer, stop_log_writer
from roost.daemon.service import Context, Service
from roost.daemon.serving import ListeningService
from roost.daemon.shared import SharedCounts, decode_key, share_registry
from roost.daemon.tlscontexts import TLSContexts
from roost.queue.spool import Spool
from roost.smtp import anvil
from roost.store.bus import DEFAULT_BUS
from roost.tls import TLSError

__all__ = [
    "Forker",
    "Mesh",
    "WorkerMain",
    "WorkerPool",
    "libc",
    "needs_spool",
    "release_free_heap",
    "run_worker",
    "worker_count",
]

log = logging.getLogger("roost.master")
worker_log = logging.getLogger("roost.worker")

_PR_SET_PDEATHSIG: Final = 1
#: A worker that dies younger than this many seconds is restarted after a pause.
_YOUNG: Final = 5.0
_RESTART_PAUSE: Final = 1.0

#: How long a worker that stopped accepting to be replaced (``max_idle``) lets
#: connections it accepted just before become sessions (seconds; many loop passes).
_SETTLE: Final = 0.05
#: A connection to an implicit-TLS listener (smtps, imaps, pop3s) becomes a session only
#: at the end of its TLS handshake, which the event loop gives this long at most
#: (seconds: asyncio's and uvloop's ``ssl_handshake_timeout`` default, which roost keeps).
_HANDSHAKE_TIMEOUT: Final = 60.0


#: How long the master gathers mailbox change notices before relaying them to the
#: workers (seconds): IMAP IDLE and POP3 learn of a delivery this much later at most.
BUS_RELAY_DELAY: Final = 0.02


def worker_count(settings: Settings) -> int:
    """Return how many worker processes ``worker_processes`` asks for (1: none).

    ``auto`` is the number of CPUs this process may run on (``os.sched_getaffinity``).

    Raises:
        ConfigError: the value is neither ``auto`` nor a whole number from 1.
    """
    text = settings.string("worker_processes").strip().lower()
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise settings.error("worker_processes", f"expected auto or a number from 1, not {text!r}")


#: The worker services that queue mail (the others need no spool in the workers).
_SPOOL_SERVICES: Final = frozenset({"smtp", "submission", "submissions"})


def needs_spool(settings: Settings) -> bool:
    """Whether a worker serving ``settings`` needs the spool: an SMTP service listens.

    A worker that serves only IMAP and POP3 opens no spool, and so has none of its worker
    threads and their memory (docs/performance.md, "IMAP memory: the base, session 4").
    """
    return any(listener.service in _SPOOL_SERVICES for listener in service_listeners(settings))


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library's functions (prctl, mallopt, malloc_trim), or None if not found.

    Looked up among the symbols already loaded (``dlopen(NULL)``), and only then by
    ``ctypes.util.find_library``, which runs ``ldconfig -p`` in a child process: the
    master calls this before forking, and the fork server and every worker use the
    same handle without a lookup of their own (a worker that ran ``find_library`` at its
    start wrote to pages of the subprocess and regular expression code that the fork
    server then kept copies of).
    """
    with contextlib.suppress(OSError, AttributeError):
        loaded = ctypes.CDLL(None, use_errno=True)
        if loaded.prctl and loaded.malloc_trim:  # glibc's, in this process already
            return loaded
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def _set_parent_death_signal(signum: int) -> None:
    """Ask Linux to send ``signum`` when the parent process exits (prctl(2))."""
    library = libc()
    if library is not None:
        library.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim(0)``).

    Called just before the fork server is forked. A free page left in the heap is part of
    the image every later process starts from: the first process to reuse it copies it
    and the fork server keeps the old copy, which nothing uses any more. Released, the
    page comes back as a new zero page in the process that uses it, and no copy is left
    behind (2.6 MiB less before any connection with IMAP and two workers: docs/performance.md,
    "IMAP memory: the base, session 4"). Returns False where there is no glibc
    ``malloc_trim`` (another C library): nothing changes then.
    """
    try:
        trim = libc().malloc_trim  # type: ignore[union-attr]
    except AttributeError:
        return False
    trim(0)
    return True


def immortalize_image() -> int:
    """Make every object that exists now immortal (CPython 3.12 and 3.13, 64-bit, with
    the GIL; elsewhere nothing is done and 0 returned). Called just before the fork
    server is forked; returns how many objects were made immortal.

    CPython writes an object's reference count each time a reference is taken or
    dropped, even to read the object: each process forked from this image copies every
    page holding an object its code merely uses (a function it calls, a string constant
    it loads, the type of an instance it makes), then holds the copy for good. Since
    3.12 (PEP 683) an object whose count has the immortal value is never counted: its
    page stays shared. This sets that value, through ``ctypes``, on every object the
    collector tracks and everything they refer to (code objects' constants and names
    too), as Instagram's Cinder does for its pre-fork servers.

    An immortal object is never freed: what the image holds and a process later
    replaces (e.g. the settings at a reload) stays allocated, once. Objects whose type
    has a finalizer (``__del__``: sockets, files) are left mortal, so that dropping the
    last reference still closes them. Measured in docs/performance.md, "IMAP memory:
    the base, session 7".
    """
    if not (
        sys.implementation.name == "cpython"
        and (3, 12) <= sys.version_info[:2] <= (3, 13)
        and sys.maxsize > 2**32
        and getattr(sys, "_is_gil_enabled", lambda: True)()  # not free-threaded 3.13
    ):
        return 0
    immortal = 0xFFFFFFFF  # _Py_IMMORTAL_REFCNT on 64-bit builds (3.12, 3.13)
    code_type = types.CodeType
    stack: list[object] = gc.get_objects()
    mortal: set[int] = set()  # objects with a finalizer, seen (left mortal)
    count = 0
    while stack:
        obj = stack.pop()
        cell = ctypes.c_ssize_t.from_address(id(obj))
        if cell.value & 0x80000000 or id(obj) in mortal:
            continue  # immortal already (static, or seen)
        if type(obj) is code_type:
            stack.extend((obj.co_consts, obj.co_names, obj.co_varnames, obj.co_cellvars))
            stack.extend((obj.co_freevars, obj.co_filename, obj.co_name, obj.co_qualname))
            stack.extend((obj.co_linetable, obj.co_exceptiontable))
        else:
            stack.extend(gc.get_referents(obj))
        if hasattr(type(obj), "__del__"):
            mortal.add(id(obj))  # its finalizer must still run
            continue
        cell.value = immortal
        count += 1
    return count


# --- the fork server ---------------------------------------------------------------------


class WorkerMain:
    """What the fork server runs in each new worker: the settings and TLS contexts new
    workers start with (replaced when a reload changes the listeners).

    Args:
        config: the main.cf path.
        settings: its settings, validated by the master.
        tls: the TLS contexts the master loaded.
    """

    def __init__(self, config: Path, settings: Settings, tls: TLSContexts) -> None:
        self.config = config
        self.settings = settings
        self.tls = tls

    def __call__(
        self, index: int, sock: socket.socket, hibernation: socket.socket | None = None
    ) -> int:
        """Run worker ``index`` in this (new) process (``sock``: its channel's end,
        ``hibernation``: its end of the hibernation socket pair); return its exit status."""
        return run_worker(self.config, self.settings, self.tls, index, sock, hibernation)

    def reconfigure(self) -> None:
        """Re-read main.cf and the certificates for the workers forked from now on (the
        master validated them just before; on an error the old ones stay)."""
        try:
            settings, _ = load_settings(self.config)
            tls = TLSContexts(settings)
            tls.preload(sorted({listener.service for listener in service_listeners(settings)}))
        except (ConfigError, TLSError, OSError) as exc:
            log.error("fork server: keeping the old settings: %s", str(exc).replace("\n", "; "))
            return
        self.settings, self.tls = settings, tls
        preload_user_database(settings)  # the new workers start from the files as they are


class Forker:
    """The master's handle on the fork server process.

    Args:
        pid: the fork server's process ID.
        sock: the master's end of their SOCK_SEQPACKET pair.
    """

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    @classmethod
    def start(cls, worker_main: WorkerMain) -> Forker:
        """Fork the fork server (call this before any event loop or thread exists).

        Args:
            worker_main: runs one worker in a new child: called with the worker's index
                and its end of the channel; returns the exit status.
        """
        master_end, forker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(ImportError):  # the workers' loop: import it once, shared
            import uvloop  # noqa: F401
        gc.collect()
        immortalize_image()  # CPython 3.12+: the image's pages stay shared
        release_free_heap()  # free heap pages: not part of the image the workers copy
        gc.freeze()  # what exists now stays in pages shared by every worker
        pid = os.fork()
        if pid == 0:  # the fork server
            status = 1
            try:
                master_end.close()
                status = _forker_main(forker_end, worker_main)
            except BaseException:
                log.exception("fork server failed")
            finally:
                os._exit(status)
        forker_end.close()
        return cls(pid, master_end)

    def spawn(self, index: int) -> None:
        """Ask for a new worker with this index (answered by a ``spawned`` report)."""
        self.sock.send(json.dumps({"t": "spawn", "index": index}).encode())

    def change_listeners(
        self, added: Mapping[Listener, socket.socket], removed: list[Listener]
    ) -> None:
        """Hand the fork server new listening sockets and the ones to close, and have it
        re-read main.cf, for the workers it forks from now on."""
        request = {
            "t": "listeners",
            "add": [[lst.service, lst.host, lst.port] for lst in added],
            "remove": [[lst.service, lst.host, lst.port] for lst in removed],
        }
        fds = [sock.fileno() for sock in added.values()]
        socket.send_fds(self.sock, [json.dumps(request).encode()], fds)

    def close(self) -> None:
        """Tell the fork server to exit (end of stream) and reap it."""
        self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _forker_main(sock: socket.socket, worker_main: WorkerMain) -> int:
    """The fork server's loop: fork workers on request, report their exits."""
    _set_parent_death_signal(signal.SIGKILL)  # the master died: the workers see EOF
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # the master decides; EOF ends us
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        while True:
            try:
                readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
            except InterruptedError:
                continue
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(sock)
            if sock.fileno() in readable:
                data, fds, _, _ = socket.recv_fds(sock, 65536, 256)
                if not data:
                    return 0
                request = json.loads(data)
                if request.get("t") == "spawn":
                    _spawn(sock, int(request["index"]), worker_main, (wake_r, wake_w))
                elif request.get("t") == "listeners":
                    _change_listeners(request, fds)
                    worker_main.reconfigure()
                else:
                    for fd in fds:
                        os.close(fd)
    finally:
        signal.set_wakeup_fd(-1)


def _change_listeners(request: Mapping[str, list[list[object]]], fds: list[int]) -> None:
    """Take the new listening sockets into BOUND and close the removed ones (fork server)."""
    for service, host, port in request.get("remove", []):
        sock = BOUND.pop(Listener(str(service), str(host), int(port)), None)  # type: ignore[call-overload]
        if sock is not None:
            sock.close()
    for (service, host, port), fd in zip(request.get("add", []), fds, strict=False):
        old = BOUND.pop(Listener(str(service), str(host), int(port)), None)  # type: ignore[call-overload]
        if old is not None:
            old.close()
        BOUND[Listener(str(service), str(host), int(port))] = socket.socket(fileno=fd)  # type: ignore[call-overload]


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        report = {"t": "exited", "pid": pid, "status": status}
        with contextlib.suppress(OSError):
            sock.send(json.dumps(report).encode())


def _spawn(sock: socket.socket, index: int, worker_main: WorkerMain, wake: tuple[int, int]) -> None:
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # IMAP sessions moving to the master and back, with their descriptors
    # (roost.daemon.hibernation): one packet per session.
    hib_parent, hib_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the worker
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for fd in wake:
                os.close(fd)
            sock.close()
            parent_end.close()
            hib_parent.close()
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the master
            # The master (and so the fork server) died: go at once, like the rest of the
            # daemon. A worker that went on committing messages while a restarted master
            # recovers the queue could lose one it had answered 250 for.
            _set_parent_death_signal(signal.SIGKILL)
            if os.getppid() == 1:  # the fork server died meanwhile
                os._exit(1)
            status = worker_main(index, child_end, hib_child)
        except BaseException:
            worker_log.exception("worker %d failed", index)
        finally:
            stop_log_writer()
            logging.shutdown()
            os._exit(status)
    child_end.close()
    hib_child.close()
    report = {"t": "spawned", "index": index, "pid": pid}
    try:
        socket.send_fds(
            sock, [json.dumps(report).encode()], [parent_end.fileno(), hib_parent.fileno()]
        )
    finally:
        parent_end.close()
        hib_parent.close()


# --- a worker process --------------------------------------------------------------------


class _Link:
    """This worker's connected datagram socket to one other worker, and what waits for it."""

    __slots__ = ("path", "pending", "sock", "waiting")

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.pending: collections.deque[bytes] = collections.deque()
        self.waiting = False


#: Events kept for a worker whose queue is full before they are dropped.
_MAX_PENDING: Final = 200_000


class Mesh(asyncio.DatagramProtocol):
    """Direct datagrams between the workers: the shared counters' events.

    Each worker binds ``$data_directory/worker-N.sock`` (the directory is mode 0700: only the
    daemon's user can send) and sends every throttle, anvil and count event straight to the
    other workers' sockets, synchronously, before the session answers its client. So a
    client that saw the answer and connects again, whichever worker takes the new
    connection, is judged with the event counted: the datagram is queued on that worker
    before the new connection exists, and its loop reads ready sockets in the order they
    became ready. (A relay through the master would leave a race: the master's loop must run
    in between.) When a worker's queue is full (a burst of thousands of connections closing),
    events wait in order and go when it has room. Events to a worker that is being replaced
    are dropped; the master's snapshot brings the new one up to date.

    Args:
        directory: where the sockets are (``data_directory``).
        index: this worker's number.
        count: how many workers there are.
        handler: called with every message received.
    """

    def __init__(
        self, directory: Path, index: int, count: int, handler: Callable[[Message], None]
    ) -> None:
        self.path = directory / f"worker-{index}.sock"
        self.links = [
            _Link(str(directory / f"worker-{i}.sock")) for i in range(count) if i != index
        ]
        self._handler = handler
        self._in: socket.socket | None = None
        self._inode = 0
        self._dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> bool:
        """Bind this worker's socket (before the event loop serves anything)."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.bind(str(self.path))
            sock.setblocking(False)
            self._inode = os.stat(self.path).st_ino
        except OSError as exc:
            worker_log.warning(
                "%s: cannot bind (%s): this worker does not share throttle and connection"
                " counts with the others",
                self.path,
                exc.strerror or exc,
            )
            return False
        self._in = sock
        return True

    async def start(self) -> None:
        """Start receiving on the running loop."""
        self._loop = asyncio.get_running_loop()
        if self._in is not None:
            await self._loop.create_datagram_endpoint(lambda: self, sock=self._in)

    def send(self, message: Message) -> None:
        """Send to every other worker now (never blocks; waits in order when one is full)."""
        if self._in is None:
            return
        data = json.dumps(message, separators=(",", ":")).encode()
        for link in self.links:
            if link.pending:
                self._queue(link, data)
                continue
            sock = self._connected(link)
            if sock is None:
                continue
            try:
                sock.send(data)
            except BlockingIOError:
                self._queue(link, data)
            except OSError:  # that worker is being replaced
                self._disconnect(link)

    def _connected(self, link: _Link) -> socket.socket | None:
        if link.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(link.path)
            except OSError:
                sock.close()
                return None
            link.sock = sock
        return link.sock

    def _disconnect(self, link: _Link) -> None:
        if link.sock is not None:
            if link.waiting and self._loop is not None:
                self._loop.remove_writer(link.sock.fileno())
            link.sock.close()
        link.sock = None
        link.waiting = False
        link.pending.clear()

    def _queue(self, link: _Link, data: bytes) -> None:
        if len(link.pending) >= _MAX_PENDING:
            self._dropped += 1
            if self._dropped in (1, 1000, 1000000):
                worker_log.warning("%s: %d events dropped: queue full", link.path, self._dropped)
            return
        link.pending.append(data)
        if not link.waiting and link.sock is not None and self._loop is not None:
            link.waiting = True
            self._loop.add_writer(link.sock.fileno(), self._flush, link)

    def _flush(self, link: _Link) -> None:
        sock = link.sock
        while link.pending and sock is not None:
            try:
                sock.send(link.pending[0])
            except BlockingIOError:
                return
            except OSError:
                self._disconnect(link)
                return
            link.pending.popleft()
        if link.waiting and sock is not None and self._loop is not None:
            self._loop.remove_writer(sock.fileno())
        link.waiting = False

    def datagram_received(self, data: bytes, addr: object) -> None:
        """Apply a peer's event."""
        try:
            message = json.loads(data)
            if isinstance(message, dict):
                self._handler(message)
        except Exception:
            worker_log.exception("worker event %.80r", data)

    def close(self) -> None:
        """Close the links and remove this worker's socket file (if it is still ours)."""
        for link in self.links:
            self._disconnect(link)
        with contextlib.suppress(OSError):
            if self._inode and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)


def run_worker(
    config: Path,
    settings: Settings,
    tls: TLSContexts,
    index: int,
    sock: socket.socket,
    hibernation: socket.socket | None = None,
) -> int:
    """Run one worker's event loop until it is told to stop; return the exit status."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    start_log_writer()  # forked: lines are formatted and written by a thread of our own
    worker = Worker(config, settings, tls, index, sock, hibernation)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(worker.run())


class Worker:
    """The network services of one worker process.

    Args:
        config: the main.cf path (re-read on reload).
        settings: the settings the master validated.
        tls: the TLS contexts the master loaded (before privileges were dropped).
        index: the worker's number, 0 to ``worker_processes`` - 1.
        sock: its end of the channel to the master.
        hibernation: its end of the hibernation socket pair (IMAP sessions idle in IDLE
            move to the master and back: :mod:`roost.daemon.hibernation`); None: none.
    """

    def __init__(
        self,
        config: Path,
        settings: Settings,
        tls: TLSContexts,
        index: int,
        sock: socket.socket,
        hibernation: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.tls = tls
        self.index = index
        self.services: list[Service] = []
        self.spool: Spool | None = None
        self.throttle = Throttle(
            max_delay=float(settings.seconds("auth_failure_delay_max")),
            refuse_after=settings.integer("auth_failure_refuse_after"),
            window=float(settings.seconds("auth_failure_window")),
        )
        self.counts: dict[str, SharedCounts] = {}
        self._stop = asyncio.Event()
        self._grace = float(settings.seconds("shutdown_grace_time"))
        self._channel = Channel(sock, self._message, on_close=self._master_gone)
        self._stopping = False
        self._max_idle = float(settings.seconds("max_idle"))
        self._idle_since: float | None = None  # when the idle watch first saw no client
        self._idle_accepted = 0  # connections accepted when it did
        #: What the master believes: no client since this worker started or said ``idle``
        #: (the first connection after that says ``active``: :meth:`_in_use`).
        self._master_sees_idle = True
        self._retiring = False
        self._reconfigured = asyncio.Event()
        self.mesh = Mesh(
            settings.path_of("data_directory"), index, worker_count(settings), self._message
        )
        self.hibernation = HibernationLink(hibernation) if hibernation is not None else None

    async def run(self) -> int:
        """Serve until ``stop``, SIGTERM/SIGINT or the master's end; return the status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        channel = self._channel
        self.throttle.on_event = lambda event: self._share({"t": "throttle", "e": list(event)})

        # What the master was told (sub/unsub), and the changes since, sent at the end of
        # a loop pass: a mailbox that loses its last subscriber and gets a new one in
        # between (a session that SELECTs the same mailbox again) costs no message, and the
        # master relays its changes all along.
        told: set[str] = set()
        watch_changes: dict[str, bool] = {}
        watch_lock = threading.Lock()

        def send_watches() -> None:
            with watch_lock:
                changes = list(watch_changes.items())
                watch_changes.clear()
            for key, watched in changes:
                if watched != (key in told):
                    (told.add if watched else told.discard)(key)
                    channel.send({"t": "sub" if watched else "unsub", "p": key})

        def watch(key: str, watched: bool) -> None:  # under the bus's lock, any thread
            with watch_lock:
                wake = not watch_changes
                watch_changes[key] = watched
            if wake:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(send_watches)

        anvil.PEERS.emit = lambda event: self._share({"t": "anvil", "e": event})

        def relay(key: str) -> None:  # store threads publish too
            message: Message = {"t": "bus", "p": key}
            loop.call_soon_threadsafe(channel.send, message)

        DEFAULT_BUS.relay = relay
        try:
            if needs_spool(self.settings):  # the SMTP services only: not for IMAP/POP3
                self.spool = Spool(
                    self.settings.path_of("queue_directory"),
                    on_commit=lambda queue_id: channel.send_line(commit_line(queue_id)),
                )
                await self.spool.start()
            self.services = build_services(self._context(self.settings), WORKER_FACTORIES)
            for service in self.services:
                for table in share_registry(service, self._emit_count):
                    self.counts[table.name] = table
            # the shared tables exist: now take the master's snapshot and the peers' events
            if self.mesh.open():
                await self.mesh.start()
            await channel.start()
            if self.hibernation is not None:
                self.hibernation.start()
            DEFAULT_BUS.set_watch_hook(watch)  # before any session can subscribe
            for listening in self._listening():
                listening.on_accept = self._in_use
            for service in self.services:
                await service.start()
        except (OSError, TLSError, ConfigError) as exc:
            worker_log.critical("worker %d: %s", self.index, str(exc).replace("\n", "; "))
            await self._shutdown(0)
            return 1
        channel.send({"t": "ready", "pid": os.getpid()})
        idle_watch = loop.create_task(self._watch_idle())
        await self._stop.wait()
        self._stopping = True
        idle_watch.cancel()
        await self._shutdown(self._grace)
        return 0

    # --- max_idle: a worker with no client connection goes --------------------------------

    def _listening(self) -> list[ListeningService[object]]:
        return [s for s in self.services if isinstance(s, ListeningService)]

    def _clients(self) -> int:
        """The client connections this worker serves now (the one place that says).

        Every listening service's open sessions: SMTP, submission, IMAP, POP3 (a session
        handed over to a mail process of its user counts until its proxy ends). A
        connection whose implicit-TLS handshake is still going on is not a session yet
        (see :meth:`_drain`).
        """
        return sum(service.connections() for service in self._listening())

    def _accepted(self) -> int:
        """Connections accepted since this worker started, on every listener."""
        return sum(service.accepted for service in self._listening())

    def _idle_for(self, now: float) -> float | None:
        """Seconds this worker has had no client connection, as the idle watch saw it
        last (None: it has a client, accepted one since, or never served one)."""
        if self._idle_since is None or self._clients() or self._accepted() != self._idle_accepted:
            return None
        return now - self._idle_since

    async def _watch_idle(self) -> None:
        """Postfix's ``max_idle`` (master(5), the daemons' idle timer) for a pool of
        workers: a worker that has served a connection and then had none for ``max_idle``
        seconds tells the master (``idle {s}``), every check, until the master answers
        ``retire`` (:meth:`_retire`). A worker that never served stays: its replacement
        would be the same.

        The check runs every quarter of ``max_idle`` (0.25 to 5 seconds): a worker asks
        between ``max_idle`` and that much later after its last connection ended. With
        ``max_idle = 0`` nothing runs until a reload sets it.
        """
        while True:
            if self._max_idle <= 0:
                self._reconfigured.clear()
                await self._reconfigured.wait()
                continue
            await asyncio.sleep(min(5.0, max(0.25, self._max_idle / 4)))
            if self._retiring:
                return
            accepted = self._accepted()
            if not accepted or self._clients() or accepted != self._idle_accepted:
                self._idle_since = None
                self._idle_accepted = accepted
                continue
            now = time.monotonic()
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= self._max_idle:
                self._master_sees_idle = True
                self._channel.send({"t": "idle", "s": round(now - self._idle_since, 1)})

    def _in_use(self) -> None:
        """A connection came (accepted, or a session woken from the master): the first
        since this worker started or said ``idle`` tells the master (``active``), which
        then brings the pool back to ``worker_processes`` if it had shrunk."""
        if self._master_sees_idle:
            self._master_sees_idle = False
            self._channel.send({"t": "active"})

    def _retire(self) -> None:
        """The master's ``retire``: if this worker still has no client connection and
        accepted none since it said it was idle, it stops accepting at once (in this
        same callback: no connection can come in between), says ``retiring`` (the
        master forks its replacement) and exits once what it accepted is served
        (:meth:`_drain`). Otherwise it says ``busy`` and serves on. The connections
        waiting in the shared accept queues are taken by the other workers.
        """
        if self._retiring or self._stop.is_set():
            return
        if self.hibernation is not None:
            # A session the master woke into this worker before it asked may still be
            # in the hibernation socket: take it first (it makes this worker busy).
            self.hibernation.poll()
        idle = self._idle_for(time.monotonic())
        if idle is None or idle < self._max_idle or self._max_idle <= 0:
            self._channel.send({"t": "busy"})
            return
        self._retiring = True
        for service in self._listening():
            service.stop_accepting()
        self._channel.send({"t": "retiring", "s": round(idle, 1)})
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Exit once no connection this worker accepted is left: one accepted just before
        it stopped accepting becomes a session within a few loop passes (:data:`_SETTLE`),
        one on an implicit-TLS listener at the end of its handshake (at most
        :data:`_HANDSHAKE_TIMEOUT` seconds after it was accepted); every session ends
        as it would have (no ``* BYE``, no 421)."""
        await asyncio.sleep(_SETTLE)
        while True:
            handshake = max((s.last_tls_accept for s in self._listening()), default=0.0)
            in_handshake = handshake and time.monotonic() - handshake < _HANDSHAKE_TIMEOUT
            if not self._clients() and not in_handshake:
                break
            await asyncio.sleep(0.1)
        self._stop.set()

    def _master_gone(self) -> None:
        if not self._stopping and not self._stop.is_set():
            # the master died (or closed the channel): no graceful stop (see _spawn)
            worker_log.error("worker %d: the master has gone: exiting", self.index)
            stop_log_writer()
            logging.shutdown()
            os._exit(1)
        self._stop.set()

    def _context(self, settings: Settings) -> Context:
        return Context(
            settings=settings,
            tls=self.tls,
            spool=self.spool,
            users=build_user_database(settings),
            throttle=self.throttle,
            hibernation=self.hibernation,
        )

    def _share(self, message: Message) -> None:
        """A shared-counter event: to the other workers now, and to the master (which
        keeps every worker's share for new workers and takes back a dead worker's)."""
        self.mesh.send(message)
        self._channel.send(message)

    def _emit_count(self, name: str, key: Hashable, delta: int) -> None:
        self._share({"t": "count", "n": name, "k": key, "d": delta})

    async def _shutdown(self, grace: float) -> None:
        for service in reversed(self.services):
            try:
                await service.stop(grace)
            except Exception:
                worker_log.exception("error stopping %s", service.name)
        DEFAULT_BUS.set_watch_hook(None)
        if self.hibernation is not None:
            self.hibernation.close()
        if self.spool is not None:
            await self.spool.close()
        self.mesh.close()
        await self._channel.close()

    def _message(self, message: Message) -> None:
        kind = message.get("t")
        if kind == "throttle":
            self.throttle.apply(_throttle_event(message["e"]))
        elif kind == "anvil":
            anvil.PEERS.apply(list(message["e"]))  # type: ignore[call-overload]
        elif kind == "count":
            table = self.counts.get(str(message["n"]))
            if table is not None:
                table.apply(decode_key(message["k"]), int(message["d"]))  # type: ignore[call-overload]
        elif kind == "bus":
            DEFAULT_BUS.publish_relayed(str(message["p"]))
        elif kind == "sync":
            self._sync(message)
        elif kind == "status":
            services = {s.name: dict(s.status()) for s in self.services}
            self._channel.send({"t": "status", "id": message["id"], "services": services})
        elif kind == "reload":
            asyncio.get_running_loop().create_task(self._reload(message["id"]))
        elif kind == "retire":
            self._retire()
        elif kind == "stop":
            self._grace = float(message.get("grace", self._grace))  # type: ignore[arg-type]
            self._stop.set()

    def _sync(self, message: Message) -> None:
        records = message.get("throttle")
        if isinstance(records, list):
            self.throttle.restore([tuple(r) for r in records])
        for event in message.get("anvil", []):  # type: ignore[attr-defined]
            anvil.PEERS.apply(list(event))
        for name, key, delta in message.get("counts", []):  # type: ignore[attr-defined]
            table = self.counts.get(str(name))
            if table is not None:
                table.apply(decode_key(key), int(delta))

    async def _reload(self, request: object) -> None:
        try:
            settings, _ = load_settings(self.config)
            tls = TLSContexts(settings)
            tls.preload(sorted({listener.service for listener in service_listeners(settings)}))
            self.tls = tls
            context = self._context(settings)
        except (ConfigError, TLSError, OSError) as exc:
            reason = str(exc).replace("\n", "; ")
            worker_log.error("worker %d: reload failed: %s", self.index, reason)
            self._channel.send({"t": "reloaded", "id": request, "ok": False, "error": reason})
            return
        self.settings = settings
        self._grace = float(settings.seconds("shutdown_grace_time"))
        self._max_idle = float(settings.seconds("max_idle"))
        self._reconfigured.set()
        for service in self.services:
            await service.reload(context)
        self._channel.send({"t": "reloaded", "id": request, "ok": True})


def _add_count(counts: dict[tuple[str, Hashable], int], key: tuple[str, Hashable], d: int) -> None:
    value = counts.get(key, 0) + d
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)


def _throttle_event(raw: object) -> ThrottleEvent:
    if not isinstance(raw, list) or len(raw) != 4:
        raise ValueError(f"not a throttle event: {raw!r}")
    kind, address, login, at = raw
    return (str(kind), str(address), None if login is None else str(login), float(at))


# --- the master's side -------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Handle:
    """The master's view of one worker."""

    index: int
    pid: int
    channel: Channel
    started: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    anvil_active: dict[tuple[str, str], int] = field(default_factory=dict)
    counts: dict[tuple[str, Hashable], int] = field(default_factory=dict)
    watching: set[str] = field(default_factory=set)  # mailbox keys (``sub``)
    retiring: bool = False
    hibernation: socket.socket | None = None  # the master's end of the hibernation pair
    #: It has had a client since it started or last said ``idle`` (it said ``active``).
    busy: bool = False


class WorkerPool:
    """Starts, watches, restarts and stops the worker processes; relays their shared state.

    Args:
        forker: the fork server.
        count: how many workers.
        throttle: the master's replica of the failed-login throttle (for new workers).
        on_commit: wakes the queue manager for a queue ID a worker committed.
        on_fatal: called when the fork server died (the workers died with it): the daemon
            stops and exits non-zero, so that systemd restarts it whole.
    """

    def __init__(
        self,
        forker: Forker,
        count: int,
        throttle: Throttle,
        on_commit: Callable[[str], None],
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        self.forker = forker
        self.on_fatal = on_fatal
        self.count = count
        self.throttle = throttle
        self.on_commit = on_commit
        self.workers: dict[int, _Handle] = {}
        self._stopping = False
        self._forker_gone = asyncio.Event()
        self._requests: dict[int, asyncio.Future[Message]] = {}
        self._request_ids = 0
        self._anvil_arrivals: list[list[object]] = []
        self._last_start: dict[int, float] = {}
        self._all_gone = asyncio.Event()
        self._starting = False
        self._failed_start = False
        self._retiring: set[_Handle] = set()
        #: max_idle: the worker asked to retire (its answer pending), and the index whose
        #: replacement is not ready yet with the old pid and its idle seconds; one
        #: replacement at a time (see :meth:`_idle`).
        self._recycle: _Handle | None = None
        self._recycled: tuple[int, int, float] | None = None
        #: Indexes of the workers the pool gave up while every worker was idle.
        self._vacant: set[int] = set()
        self._watchers: dict[str, set[_Handle]] = {}  # mailbox key -> workers watching it
        #: Change notices: received ``from_workers`` and ``from_master`` (the master's own
        #: publishes, deliveries mostly, after gathering), ``relayed`` (lines sent to
        #: workers), ``unwatched`` (received and sent to no worker).
        self.bus_counts: dict[str, int] = dict.fromkeys(
            ("from_workers", "from_master", "relayed", "unwatched"), 0
        )
        #: IMAP sessions idle in IDLE that the workers moved here.
        self.hibernated = HibernatedSessions(self._send_woken, self._release_counts)
        #: The connection counts those sessions hold (taken from the workers' shares).
        self._parked_counts: dict[tuple[str, Hashable], int] = {}

    async def start(self, timeout: float = 60.0) -> None:
        """Fork every worker and wait until each listens.

        Raises:
            OSError: a worker did not become ready (it logged why).
        """
        loop = asyncio.get_running_loop()
        self.forker.sock.setblocking(False)
        loop.add_reader(self.forker.sock.fileno(), self._forker_readable)

        # Local delivery publishes from its threads, one change per delivered message.
        # Changes are gathered for BUS_RELAY_DELAY and each mailbox's go out as one
        # message: it leaves after every one of those changes is on disk, so the receivers
        # sync past all of them (one loop wake-up and one line per worker for a burst, not
        # one per delivered message).
        pending: dict[str, None] = {}
        pending_lock = threading.Lock()

        def send_pending() -> None:
            with pending_lock:
                keys = list(pending)
                pending.clear()
            for key in keys:
                self.bus_counts["from_master"] += 1
                self._relay_change(key, None)

        def relay(key: str) -> None:
            with pending_lock:
                if key in pending:
                    return
                wake = not pending
                pending[key] = None
            if wake:
                loop.call_soon_threadsafe(loop.call_later, BUS_RELAY_DELAY, send_pending)

        DEFAULT_BUS.relay = relay
        self._starting = True
        for index in range(self.count):
            self._spawn(index)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if len(self.workers) == self.count and all(
                    h.ready.is_set() for h in self.workers.values()
                ):
                    return
                if self._failed_start or self._forker_gone.is_set():
                    break
                await asyncio.sleep(0.02)
        finally:
            self._starting = False
        raise OSError(errno.ECHILD, "the worker processes did not start (see above)")

    def _spawn(self, index: int) -> None:
        self._last_start[index] = time.monotonic()
        try:
            self.forker.spawn(index)
        except OSError as exc:
            log.error("cannot reach the fork server to start worker %d: %s", index, exc)

    def _forker_readable(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.forker.sock, 65536, 2)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            asyncio.get_running_loop().remove_reader(self.forker.sock.fileno())
            self._forker_gone.set()
            if not self._stopping:
                log.critical("fatal: the fork server exited: stopping")
                if self.on_fatal is not None:
                    self.on_fatal()
            return
        report = json.loads(data)
        if report.get("t") == "spawned" and fds:
            sock = socket.socket(fileno=fds[0])
            hib = socket.socket(fileno=fds[1]) if len(fds) > 1 else None
            asyncio.get_running_loop().create_task(
                self._attach(int(report["index"]), int(report["pid"]), sock, hib)
            )
        elif report.get("t") == "exited":
            self._note_exit(int(report["pid"]), int(report["status"]))
        else:
            for fd in fds:
                os.close(fd)

    async def _attach(
        self, index: int, pid: int, sock: socket.socket, hib: socket.socket | None = None
    ) -> None:
        handle: _Handle | None = None

        def handler(message: Message) -> None:
            assert handle is not None
            self._message(handle, message)

        def closed() -> None:
            assert handle is not None
            self._gone(handle)

        channel = Channel(sock, handler, on_close=closed)
        handle = _Handle(index, pid, channel, time.monotonic(), hibernation=hib)
        self.workers[index] = handle
        if hib is not None:
            hib.setblocking(False)
            asyncio.get_running_loop().add_reader(hib.fileno(), self._hibernation_readable, handle)
        await channel.start()
        channel.send(
            {
                "t": "sync",
                "throttle": [list(r) for r in self.throttle.snapshot()],
                "anvil": self._anvil_snapshot(),
                "counts": self._counts_snapshot(),
            }
        )

    def _note_exit(self, pid: int, status: int) -> None:
        index = next((h.index for h in self.workers.values() if h.pid == pid), None)
        what = f"roost worker {index}" if index is not None else "roost worker"
        if os.WIFSIGNALED(status):
            log.warning("process %s pid %d killed by signal %d", what, pid, os.WTERMSIG(status))
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
            log.warning("process %s pid %d exit status %d", what, pid, os.WEXITSTATUS(status))

    def _gone(self, handle: _Handle) -> None:
        """A worker's channel closed: it exited. Take back its counts; replace it."""
        if self._recycle is handle:
            self._recycle = None  # it died before it answered: replaced as a death
        if self.workers.get(handle.index) is handle:
            del self.workers[handle.index]
        if handle.hibernation is not None:
            # Sessions it sent before it died are the master's (and so are their counts).
            self._hibernation_readable(handle)
            self._close_hibernation(handle)
        for (name, address), active in handle.anvil_active.items():
            for _ in range(active):
                self.broadcast({"t": "anvil", "e": ["leave", name, address, 0.0]}, handle)
        for (name, key), value in handle.counts.items():
            if value:
                self.broadcast({"t": "count", "n": name, "k": key, "d": -value}, handle)
        for key in handle.watching:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(handle)
                if not watchers:
                    del self._watchers[key]
        handle.watching.clear()
        if handle.retiring:
            self._retiring.discard(handle)
        if not self.workers and not self._retiring:
            self._all_gone.set()
        if handle.retiring:
            return  # replaced already
        if self._starting and not handle.ready.is_set():
            self._failed_start = True  # the start fails; no restart loop
        if self._stopping or self._forker_gone.is_set() or self._failed_start:
            return
        loop = asyncio.get_running_loop()
        age = time.monotonic() - self._last_start.get(handle.index, 0.0)
        if age < _YOUNG:
            log.warning(
                "roost worker %d: died %.1fs after start -- restarting in %.0fs",
                handle.index,
                age,
                _RESTART_PAUSE,
            )
            loop.call_later(_RESTART_PAUSE, self._respawn, handle.index)
        else:
            self._respawn(handle.index)

    def _respawn(self, index: int) -> None:
        if not self._stopping and index not in self.workers:
            self._spawn(index)

    def broadcast(self, message: Message, origin: _Handle | None) -> None:
        """Send to every worker but ``origin``."""
        for handle in list(self.workers.values()):
            if handle is not origin:
                handle.channel.send(message)

    def watching(self, key: str) -> list[int]:
        """The indexes of the workers watching mailbox ``key`` (a resolved Maildir path).

        A worker watches a mailbox from its ``sub`` to its ``unsub`` (or its end). A change
        is relayed only to the workers watching it when the master handles it; the answer
        to a ``sub`` (a ``bus`` notice) makes up for the changes handled before: a
        session subscribes, then reads the mailbox; a change written after that read is
        published after it, so either the master handles it after the ``sub`` (relayed)
        or before (then it is on disk before the answer, and the sync the answer causes
        finds it).
        """
        return sorted(h.index for h in self._watchers.get(key, ()))

    def bus_status(self) -> dict[str, int]:
        """The change-relay counters (:attr:`bus_counts`) and ``watches``: how many
        (worker, mailbox) subscriptions the master knows of."""
        watches = sum(len(handles) for handles in self._watchers.values())
        return {**self.bus_counts, "watches": watches}

    def _relay_change(self, key: str, origin: _Handle | None) -> None:
        """Send a change notice to the workers watching ``key`` but ``origin``, and wake
        the sessions hibernated here that have it selected."""
        sent = 0
        if self.hibernated.watches(key):
            self.hibernated.changed(key)
            sent += 1
        watchers = self._watchers.get(key)
        if watchers:
            message: Message = {"t": "bus", "p": key}
            for handle in watchers:
                if handle is not origin:
                    handle.channel.send(message)
                    sent += 1
        self.bus_counts["relayed"] += sent
        if not sent:
            self.bus_counts["unwatched"] += 1

    def _watch(self, handle: _Handle, key: str, watched: bool) -> None:
        if watched:
            handle.watching.add(key)
            self._watchers.setdefault(key, set()).add(handle)
            handle.channel.send({"t": "bus", "p": key})  # see watching()
        else:
            handle.watching.discard(key)
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(handle)
                if not watchers:
                    del self._watchers[key]

    def _message(self, handle: _Handle, message: Message) -> None:
        kind = message.get("t")
        if kind == "commit":
            self.on_commit(str(message["id"]))
        elif kind == "bus":
            mailbox = str(message["p"])
            self.bus_counts["from_workers"] += 1
            self._relay_change(mailbox, handle)
            DEFAULT_BUS.publish_relayed(mailbox)
        elif kind in ("sub", "unsub"):
            if handle in self._retiring or self.workers.get(handle.index) is handle:
                self._watch(handle, str(message["p"]), kind == "sub")
        elif kind == "throttle":  # the workers have it already (Mesh): keep count only
            self.throttle.apply(_throttle_event(message["e"]))
        elif kind == "anvil":
            self._account_anvil(handle, list(message["e"]))  # type: ignore[call-overload]
        elif kind == "count":
            key = (str(message["n"]), decode_key(message["k"]))
            _add_count(handle.counts, key, int(message["d"]))  # type: ignore[call-overload]
        elif kind == "ready":
            handle.ready.set()
            worker_log.debug("worker %d ready, pid %s", handle.index, message.get("pid"))
            if self._recycled is not None and self._recycled[0] == handle.index:
                _, old, idle = self._recycled
                self._recycled = None
                log.info(
                    "worker %d pid %d idle for %.0fs: replaced by pid %d",
                    handle.index,
                    old,
                    idle,
                    handle.pid,
                )
        elif kind == "idle":
            handle.busy = False
            self._idle(handle)
        elif kind == "active":
            handle.busy = True
            self._grow()
        elif kind == "busy":
            if self._recycle is handle:
                self._recycle = None
        elif kind == "retiring":
            self._retired(handle, float(message.get("s", 0.0)))  # type: ignore[arg-type]
        elif kind in ("status", "reloaded"):
            future = self._requests.pop(int(message["id"]), None)  # type: ignore[call-overload]
            if future is not None and not future.done():
                future.set_result(message)

    def _idle(self, handle: _Handle) -> None:
        """A worker has had no client connection for ``max_idle`` seconds (Postfix's
        max_idle): ask it to retire, unless a replacement is under way already or the
        pool is not whole and ready (then it asks again at its next check). One worker at
        a time, and the next only once the replacement is ready: the other workers keep
        accepting all along (with ``worker_processes = 2``, one always does).

        Work the master gives a worker itself (not through the listening sockets) must
        go to a handle in :attr:`workers` other than the one asked to retire and not yet
        answered: the worker's answer would not see it.
        """
        if (
            self._stopping
            or self._starting
            or self._recycle is not None
            or self._recycled is not None
            or self.workers.get(handle.index) is not handle
            or len(self.workers) + len(self._vacant) < self.count
            or not all(h.ready.is_set() for h in self.workers.values())
        ):
            return
        self._recycle = handle
        handle.channel.send({"t": "retire"})

    def _retired(self, handle: _Handle, idle: float) -> None:
        """The worker stopped accepting to be replaced: fork its replacement now (its
        sessions, if any came in at the last moment, finish in it; its exit is not a
        death: nothing is logged, no pause)."""
        if self._recycle is handle:
            self._recycle = None
        if self.workers.get(handle.index) is not handle:
            return  # retiring already (a reload replaces every worker)
        handle.retiring = True
        self._retiring.add(handle)
        del self.workers[handle.index]
        if self._stopping:
            return
        if self.workers and not any(h.busy for h in self.workers.values()):
            # No other worker has had a client since it started or was idle for
            # max_idle: the pool shrinks (as Postfix's idle daemons exit, and its master
            # starts one again when a client comes: _grow).
            self._vacant.add(handle.index)
            log.info(
                "worker %d pid %d idle for %.0fs: exited, %d of %d workers left",
                handle.index,
                handle.pid,
                idle,
                len(self.workers),
                self.count,
            )
            return
        self._recycled = (handle.index, handle.pid, idle)
        self._spawn(handle.index)

    def _grow(self) -> None:
        """A worker has a client again: fork the workers the pool gave up when all were
        idle (:meth:`_retired`), back to ``worker_processes``."""
        if self._stopping or not self._vacant:
            return
        for index in sorted(self._vacant):
            log.info("worker %d: started again, a worker has clients", index)
            self._spawn(index)
        self._vacant.clear()

    def _account_anvil(self, handle: _Handle, event: list[object]) -> None:
        kind, name, address, at = event
        key = (str(name), str(address))
        if kind == "arrive":
            handle.anvil_active[key] = handle.anvil_active.get(key, 0) + 1
        elif kind == "leave":
            left = handle.anvil_active.get(key, 0) - 1
            if left > 0:
                handle.anvil_active[key] = left
            else:
                handle.anvil_active.pop(key, None)
        if kind in ("arrive", "refuse"):
            self._anvil_arrivals.append(["refuse", name, address, at])
            cutoff = time.monotonic() - 3600.0  # longer than any sensible anvil_rate_time_unit
            while self._anvil_arrivals and float(self._anvil_arrivals[0][3]) < cutoff:  # type: ignore[arg-type]
                self._anvil_arrivals.pop(0)
            del self._anvil_arrivals[:-10000]

    def _anvil_snapshot(self) -> list[list[object]]:
        events: list[list[object]] = list(self._anvil_arrivals)  # the rates
        for handle in self.workers.values():  # the counts
            for (name, address), active in handle.anvil_active.items():
                events.extend(["hold", name, address, 0.0] for _ in range(active))
        return events

    def _counts_snapshot(self) -> list[list[object]]:
        snapshot: list[list[object]] = [
            [name, key, value]
            for handle in self.workers.values()
            for (name, key), value in handle.counts.items()
        ]
        snapshot += [[name, key, value] for (name, key), value in self._parked_counts.items()]
        return snapshot

    # --- hibernated IMAP sessions (roost.daemon.hibernation) ------------------------------

    def _hibernation_readable(self, handle: _Handle) -> None:
        """Take the sessions ``handle``'s worker sends (all its pending packets)."""
        sock = handle.hibernation
        if sock is None:
            return
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, RECV_SIZE, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._close_hibernation(handle)
                for fd in fds:
                    os.close(fd)
                return
            self._take_hibernated(handle, data, fds)

    def _take_hibernated(self, handle: _Handle, data: bytes, fds: list[int]) -> None:
        try:
            kind, header, blob = decode_packet(data)
            if kind != b"H" or not fds:
                raise ValueError("not a hibernation request")
            ok = self.hibernated.take(header, blob, fds[0])
        except (ValueError, KeyError, TypeError) as exc:
            log.error("worker %d: bad hibernation packet: %s", handle.index, exc)
            for fd in fds:
                os.close(fd)
            return
        if ok:
            for count_key in header_counts(header):
                _add_count(handle.counts, count_key, -1)
                _add_count(self._parked_counts, count_key, 1)
        else:
            os.close(fds[0])
        if handle.hibernation is not None:
            answer = encode_packet(b"A", {"id": header.get("id"), "ok": ok})
            with contextlib.suppress(OSError):
                handle.hibernation.send(answer)

    def _close_hibernation(self, handle: _Handle) -> None:
        sock, handle.hibernation = handle.hibernation, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _load(self, handle: _Handle) -> int:
        return sum(v for (name, _), v in handle.counts.items() if name.endswith(".per_ip"))

    def _send_woken(self, packet: bytes, fd: int, counts: list[tuple[str, Hashable]]) -> bool:
        """Hand a woken session to the least loaded worker (never a retiring one); move
        its counts to that worker's share. False when none can take it now."""
        candidates = [
            h
            for h in self.workers.values()
            if h.hibernation is not None
            and h.ready.is_set()
            and not h.retiring
            and h is not self._recycle  # asked to retire (max_idle), not answered yet
        ]
        for handle in sorted(candidates, key=self._load):
            assert handle.hibernation is not None
            try:
                socket.send_fds(handle.hibernation, [packet], [fd])
            except OSError:
                continue
            for key in counts:
                _add_count(self._parked_counts, key, -1)
                _add_count(handle.counts, key, 1)
            return True
        return False

    def _release_counts(self, counts: list[tuple[str, Hashable]]) -> None:
        """A session ended in the master: its counts go, in every worker too."""
        for name, key in counts:
            _add_count(self._parked_counts, (name, key), -1)
            self.broadcast({"t": "count", "n": name, "k": key, "d": -1}, None)

    async def _ask(self, handle: _Handle, message: Message, timeout: float) -> Message | None:
        self._request_ids += 1
        request = self._request_ids
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._requests[request] = future
        handle.channel.send({**message, "id": request})
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._requests.pop(request, None)

    async def status(self) -> list[Mapping[str, object]]:
        """Every worker's index, pid and service status."""
        handles = sorted(self.workers.values(), key=lambda h: h.index)
        answers = await asyncio.gather(*(self._ask(h, {"t": "status"}, 5.0) for h in handles))
        return [
            {
                "index": h.index,
                "pid": h.pid,
                "uptime": round(time.monotonic() - h.started, 1),
                "services": (answer or {}).get("services", {}),
            }
            for h, answer in zip(handles, answers, strict=True)
        ]

    async def reload(self) -> list[str]:
        """Have every worker re-read main.cf; return the errors of those that failed."""
        handles = list(self.workers.values())
        answers = await asyncio.gather(*(self._ask(h, {"t": "reload"}, 60.0) for h in handles))
        errors = []
        for handle, answer in zip(handles, answers, strict=True):
            if answer is None:
                errors.append(f"worker {handle.index}: no answer")
            elif not answer.get("ok"):
                errors.append(f"worker {handle.index}: {answer.get('error')}")
        return errors

    def replace(self, grace: float) -> None:
        """Replace every worker by a new one (forked with what the fork server has now);
        the old ones stop accepting at once and let their sessions finish for ``grace``
        seconds. Used when a reload changes the listening addresses."""
        self._recycle = self._recycled = None  # every worker is replaced now
        for handle in list(self.workers.values()):
            handle.retiring = True
            self._retiring.add(handle)
            handle.channel.send({"t": "stop", "grace": grace})
            del self.workers[handle.index]
            self._spawn(handle.index)

    async def stop(self, grace: float) -> None:
        """Stop every worker gracefully: ``grace`` seconds for sessions, then SIGKILL."""
        self._stopping = True
        self.hibernated.stop()
        self.broadcast({"t": "stop", "grace": grace}, None)
        for handle in self._retiring:  # a max_idle retirement may still serve a session
            handle.channel.send({"t": "stop", "grace": grace})
        if self.workers or self._retiring:
            self._all_gone.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), grace + 10.0)
        for handle in [*self.workers.values(), *self._retiring]:
            log.warning("roost worker %d pid %d did not stop: killing it", handle.index, handle.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signal.SIGKILL)
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.forker.sock.fileno())
        DEFAULT_BUS.relay = None

"""The daemon's lifecycle: start, reload on SIGHUP, graceful stop on SIGTERM/SIGINT.

``roost serve`` runs, in this order (see docs/architecture.md, "Process model and
privileges"):

1. :meth:`Daemon.prepare`, synchronous, before any event loop or thread exists: read and
   validate main.cf (the CLI did), raise the open-files limit, create the queue and data
   directories, create a self-signed certificate when none exists
   (``tls_selfsigned_auto``), refuse to start when another daemon answers on the control
   socket, bind every listening socket and load the TLS keys;
2. :meth:`Daemon.drop_privileges`, the privilege drop point: started as root, start the
   privileged helper and become ``mail_owner`` (:mod:`roost.daemon.privileges`); called by
   :func:`roost.cli.main.run_daemon` between steps 1 and 3;
3. :meth:`Daemon.fork_workers`: with ``worker_processes`` above 1, fork the fork server that
   forks the worker processes (:mod:`roost.daemon.workers`);
4. :meth:`Daemon.run` on the event loop: open the control socket, recover the queue and
   pick up what sendmail(1) left in ``maildrop/``, build the services in the composition
   root and start them (with workers: the queue manager here, the listeners in every
   worker), then tell systemd ``READY=1``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from roost import __version__
from roost.auth.factory import build_user_database
from roost.auth.throttle import Throttle
from roost.config import ConfigError, Settings, load_settings
from roost.daemon.compose import FACTORIES, MASTER_FACTORIES, build_services, preload
from roost.daemon.control import ControlServer, daemon_running
from roost.daemon.listeners import BOUND, Listener, bind_all, bind_socket, service_listeners
from roost.daemon.logsetup import reopen_logs
from roost.daemon.privileges import PrivilegeError, Separation, separate_privileges
from roost.daemon.sdnotify import Notifier
from roost.daemon.service import Context, Service
from roost.daemon.tlscontexts import TLSContexts, set_default_loader, tls_files
from roost.daemon.workers import Forker, WorkerMain, WorkerPool, libc, worker_count
from roost.queue.errors import SpoolError
from roost.queue.pickup import Pickup
from roost.queue.queue_id import is_queue_id
from roost.queue.spool import Spool
from roost.tls import TLSError, generate_selfsigned

if TYPE_CHECKING:
    from roost.queue.manager import QueueManager

__all__ = ["Daemon", "control_socket_path", "prepare_directories"]

log = logging.getLogger("roost.master")


def control_socket_path(settings: Settings) -> Path:
    """Return the control socket's path: ``$data_directory/control.sock``."""
    return settings.path_of("data_directory") / "control.sock"


def prepare_directories(settings: Settings) -> None:
    """Create ``queue_directory`` (0755) and ``data_directory`` (0700) when missing.

    Raises:
        OSError: a directory cannot be created.
    """
    for name, mode in (("queue_directory", 0o755), ("data_directory", 0o700)):
        path = settings.path_of(name)
        if not path.is_dir():
            path.mkdir(mode=mode, parents=True)
            log.info("created %s %s", name, path)


def _generate_apart(hostname: str, cert: Path, key: Path) -> None:
    """Run :func:`~roost.tls.generate_selfsigned` in a child process (forked before any
    thread or event loop exists), so that cryptography (about 10 MiB) is never loaded
    into the daemon's own processes.

    Raises:
        OSError: the child failed; the error's text is the child's.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: generate, report, exit without running the parent's cleanups
        status = 1
        try:
            os.close(read_end)
            try:
                generate_selfsigned(hostname, cert, key)
                status = 0
            except Exception as exc:
                os.write(write_end, str(exc).encode(errors="replace")[:4096])
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(message or f"the child process ended with status {status}")


def ensure_certificate(settings: Settings) -> None:
    """Create the shared self-signed certificate when ``tls_selfsigned_auto`` and none exists.

    Raises:
        TLSError: the certificate cannot be written.
    """
    cert, key = settings.path_of("tls_cert_file"), settings.path_of("tls_key_file")
    if not settings.boolean("tls_selfsigned_auto") or cert.exists() or key.exists():
        return
    hostname = settings.string("myhostname")
    try:
        _generate_apart(hostname, cert, key)
    except OSError as exc:
        raise TLSError(cert, f"cannot create a self-signed certificate: {exc}") from None
    log.warning(
        "created a self-signed certificate for %s in %s (key %s); replace it with a real one",
        hostname,
        cert,
        key,
    )


def raise_file_limit() -> None:
    """Raise the soft open-files limit to the hard one (up to 65536): one per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


#: glibc's mallopt(3) parameter for the number of malloc arenas.
_M_ARENA_MAX: Final = -8
#: Arenas for the daemon's processes: glibc's default (8 per CPU) gives each store thread
#: an arena of its own, whose freed pages stay with the process (about 10 MiB more with
#: 1,000 IDLE sessions; docs/performance.md, "IMAP memory, session 3"). The threads do
#: little in malloc besides SQLite; two arenas keep them from queueing on one lock.
MALLOC_ARENAS: Final = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (``MALLOC_ARENA_MAX``; inherited by forked children).

    Call before any thread starts. Returns False where there is no glibc ``mallopt``
    (another C library): nothing changes then.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):  # the administrator's choice wins
        return False
    try:
        mallopt = libc().mallopt  # type: ignore[union-attr]
    except AttributeError:
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


#: glibc's mallopt(3) parameters: the size from which malloc maps memory of its own, and
#: the free memory at the top of the heap above which free() gives it back.
_M_MMAP_THRESHOLD: Final = -3
_M_TRIM_THRESHOLD: Final = -1
#: The daemon's fixed mmap threshold (bytes): glibc's initial value, no longer allowed to
#: rise. By default glibc raises the threshold to the size of each mapped block freed
#: (up to 32 MiB), after which blocks that size come from the heap instead: with TLS,
#: the event loop's 256 KiB read buffer of each connection (uvloop's ``SSLProtocol``)
#: then often lands on heap pages that earlier use had made resident, about 24 KiB
#: more per idle TLS connection on average (docs/performance.md, "IMAP idle memory over
#: TLS, session 9"). A mapped block's untouched pages cost nothing and its pages go back
#: to the kernel when it is freed. The trim threshold, which glibc raises along with it
#: (to twice the mmap threshold: megabytes of free but resident pages at the top of the
#: heap, which the next blocks are carved from), is fixed at its initial value too.
MMAP_THRESHOLD: Final = 128 * 1024
TRIM_THRESHOLD: Final = 128 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD, trim: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (``MALLOC_MMAP_THRESHOLD_``) and
    its trim threshold at ``trim`` bytes (``MALLOC_TRIM_THRESHOLD_``), inherited by forked
    children: blocks of ``threshold`` bytes or more are mapped, not carved from the heap,
    free memory above ``trim`` bytes at the top of the heap goes back to the kernel, and
    neither threshold rises as mapped blocks are freed.

    Call at start, before the workers are forked. Returns False where there is no glibc
    ``mallopt`` (another C library) or when the environment already sets a threshold:
    nothing changes then.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        os.environ.get("MALLOC_MMAP_THRESHOLD_")
        or os.environ.get("MALLOC_TRIM_THRESHOLD_")
        or "mmap_threshold" in tunables
        or "trim_threshold" in tunables
    ):  # the administrator's choice wins
        return False
    try:
        mallopt = libc().mallopt  # type: ignore[union-attr]
    except AttributeError:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


def tls_services(settings: Settings) -> list[str]:
    """Return the services whose listeners need a TLS context."""
    return sorted({listener.service for listener in service_listeners(settings)})


class Daemon:
    """One roost daemon process.

    Args:
        config: the main.cf path.
        settings: its validated settings (the CLI loads them first to report errors).
        notifier: systemd notification, from ``NOTIFY_SOCKET``.
    """

    def __init__(self, config: Path, settings: Settings, notifier: Notifier) -> None:
        self.config = config
        self.settings = settings
        self.settings_at_start = settings
        self.notifier = notifier
        self.services: list[Service] = []
        self.started = time.time()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._control: ControlServer | None = None
        self.spool: Spool | None = None
        self.pickup: Pickup | None = None
        self.privsep: Separation | None = None
        self.throttle = Throttle(
            max_delay=float(settings.seconds("auth_failure_delay_max")),
            refuse_after=settings.integer("auth_failure_refuse_after"),
            window=float(settings.seconds("auth_failure_window")),
        )
        self.worker_processes = 1
        self._prepared = False
        self._tls: TLSContexts | None = None
        self._forker: Forker | None = None
        self.pool: WorkerPool | None = None
        self._listeners: set[Listener] = set()
        self._failed = False

    def _context(self, settings: Settings, tls: TLSContexts | None = None) -> Context:
        privsep = self.privsep
        if tls is None:
            tls = TLSContexts(settings)
            tls.preload(tls_services(settings))
        return Context(
            settings=settings,
            tls=tls,
            spool=self.spool,
            users=build_user_database(settings),
            throttle=self.throttle,
            system_delivery=privsep.delivery if privsep else None,
        )

    def prepare(self) -> int:
        """The synchronous part of the start, before any event loop or thread exists.

        Creates the directories and the self-signed certificate, binds every listening
        socket (:data:`roost.daemon.listeners.BOUND`) and loads the TLS keys: what needs
        root when started as root. Errors are logged.

        Returns:
            0, or the exit status 1 after an error.
        """
        try:
            self.worker_processes = worker_count(self.settings)
            limit_malloc_arenas()
            fix_mmap_threshold()
            raise_file_limit()
            prepare_directories(self.settings)
            ensure_certificate(self.settings)
            control = control_socket_path(self.settings)
            if daemon_running(control):
                raise OSError(f"{control}: another roost daemon is running")
            bind_all(self.settings)
            self._listeners = set(service_listeners(self.settings))
            self._tls = TLSContexts(self.settings)
            self._tls.preload(tls_services(self.settings))
            if self.worker_processes > 1:
                problems = check_worker_services(self.settings, self._tls)
                if problems:  # fail here, not in every worker again and again
                    raise OSError("; ".join(problems))
        except (OSError, TLSError, ConfigError) as exc:
            log.critical("%s", str(exc).replace("\n", "; "))
            _close_bound()
            return 1
        self._prepared = True
        return 0

    def drop_privileges(self) -> int:
        """The privilege drop point: started as root, start the helper, become ``mail_owner``.

        Call after :meth:`prepare` (sockets bound, TLS keys loaded) and before
        :meth:`fork_workers`, so that workers never run as root. Certificates loaded later
        (SIGHUP) are read through the privileged helper. A no-op when not root.

        Returns:
            0, or the exit status 1 after an error (logged).
        """
        try:
            self.privsep = separate_privileges(self.config, self.settings, self.notifier)
        except (OSError, PrivilegeError) as exc:
            log.critical("%s", str(exc).replace("\n", "; "))
            _close_bound()
            return 1
        if self.privsep is not None:
            from roost.daemon.privhelper import tls_loader  # only with a helper (root)

            set_default_loader(tls_loader(self.privsep.helper))
        return 0

    def fork_workers(self) -> None:
        """Fork the fork server of the worker processes when ``worker_processes`` > 1.

        Call after :meth:`prepare` (and after privileges are dropped), before the event
        loop starts. The master then closes its copies of the listening sockets: only the
        workers accept.
        """
        if self.worker_processes <= 1 or self._tls is None or not BOUND:
            return  # one process, or nothing to listen on: no workers
        preload(self.settings)  # the workers' modules, in pages every process shares
        self._forker = Forker.start(WorkerMain(self.config, self.settings, self._tls))
        _close_bound()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT or ``roost stop``; return the exit status."""
        loop = asyncio.get_running_loop()
        if not self._prepared and (self.prepare() or self.drop_privileges()):
            return 1
        try:
            self._control = ControlServer(control_socket_path(self.settings), self._command)
            await self._control.start()
            self.spool = Spool(self.settings.path_of("queue_directory"))
            await self.spool.start()
            report = await self.spool.recover()
            if report.removed or report.requeued or report.corrupt:
                log.info("queue recovery: %s", report)
            self.pickup = Pickup(
                self.spool,
                hostname=self.settings.string("myhostname"),
                mail_name=self.settings.string("mail_name"),
                notify=self._notify_queue_manager,
            )
            await self.pickup.run()  # before the queue manager takes up incoming/
            context = self._context(self.settings, self._tls)
            factories = MASTER_FACTORIES if self._forker is not None else FACTORIES
            self.services = build_services(context, factories)
            for service in self.services:
                await service.start()
            if self._forker is not None:
                self.pool = WorkerPool(
                    self._forker,
                    self.worker_processes,
                    self.throttle,
                    self._notify_queue_manager,
                    on_fatal=self._fatal,
                )
                await self.pool.start()
            self.pickup.start()
        except (OSError, TLSError, ConfigError, SpoolError, PrivilegeError) as exc:
            log.critical("%s", str(exc).replace("\n", "; "))
            await self._shutdown(grace=0)
            return 1
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        names = ", ".join(s.name for s in self.services) or "no services"
        if self.pool is not None:
            names += f"; {self.worker_processes} worker processes"
        log.info("daemon started -- version %s, configuration %s", __version__, self.config)
        self.notifier.ready(f"serving: {names}")
        await self._stop.wait()
        log.info("terminating on signal or stop request")
        self.notifier.stopping()
        await self._shutdown(grace=float(self.settings.seconds("shutdown_grace_time")))
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        log.info("daemon stopped")
        return 1 if self._failed else 0

    def stop(self) -> None:
        """Ask :meth:`run` to stop gracefully."""
        self._stop.set()

    def _fatal(self) -> None:
        """Stop and exit non-zero (the fork server and with it every worker died)."""
        self._failed = True
        self._stop.set()

    async def reload(self) -> Mapping[str, object]:
        """Re-read main.cf and certificates; keep the old settings if the new ones are bad."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                settings, warnings = load_settings(self.config)
                for warning in warnings:
                    log.warning("%s", str(warning).removeprefix("warning: "))
                worker_count(settings)
                ensure_certificate(settings)
                context = self._context(settings)
                added: dict[Listener, socket.socket] = {}
                removed: list[Listener] = []
                if self._forker is not None:
                    assert isinstance(context.tls, TLSContexts)
                    problems = check_worker_services(settings, context.tls)
                    if problems:
                        raise OSError("; ".join(problems))
                    added, removed = self._bind_changes(settings)
            except (ConfigError, TLSError, OSError) as exc:
                reason = str(exc).replace("\n", "; ")
                log.error("reload failed, keeping the running configuration: %s", reason)
                self.notifier.ready("reload failed: keeping the running configuration")
                return {"ok": False, "error": reason}
            self.settings = settings
            reopen_logs()
            if self.pickup is not None:
                self.pickup.reconfigure(
                    hostname=settings.string("myhostname"), mail_name=settings.string("mail_name")
                )
            for service in self.services:
                await service.reload(context)
            errors: list[str] = []
            new_listeners = set(service_listeners(settings))
            if self.pool is not None and self._forker is not None and (added or removed):
                # new listening addresses: the fork server takes the new sockets and
                # settings, and every worker is replaced (the old ones finish their sessions)
                self._forker.change_listeners(added, removed)
                for sock in added.values():
                    sock.close()
                self._listeners = new_listeners
                log.info(
                    "listening addresses changed (%d new, %d gone): replacing the workers",
                    len(added),
                    len(removed),
                )
                self.pool.replace(float(settings.seconds("shutdown_grace_time")))
            elif self.pool is not None:
                errors = await self.pool.reload()
            elif new_listeners != self._listeners:
                log.warning(
                    "listening addresses changed: they take effect at the next start"
                    " (worker_processes = 1)"
                )
            for error in errors:
                log.error("reload failed in %s", error)
            if worker_count_text(settings) != worker_count_text(self.settings_at_start):
                log.warning("worker_processes: a change takes effect at the next start")
            log.info("reload -- version %s, configuration %s", __version__, self.config)
            self.notifier.ready("reloaded")
            if errors:
                return {"ok": False, "error": "; ".join(errors)}
            return {"ok": True}

    def _bind_changes(
        self, settings: Settings
    ) -> tuple[dict[Listener, socket.socket], list[Listener]]:
        """Bind the listeners ``settings`` adds; list those it drops.

        Raises:
            OSError: a new address cannot be bound (nothing stays bound).
        """
        wanted = set(service_listeners(settings))
        added: dict[Listener, socket.socket] = {}
        try:
            for listener in sorted(wanted - self._listeners, key=str):
                try:
                    added[listener] = bind_socket(listener)
                except OSError as exc:
                    raise OSError(
                        exc.errno,
                        f"{listener.service} on {listener}: cannot listen: {exc.strerror}",
                    ) from None
        except OSError:
            for sock in added.values():
                sock.close()
            raise
        return added, sorted(self._listeners - wanted, key=str)

    async def _shutdown(self, grace: float) -> None:
        if self.pickup is not None:
            await self.pickup.stop()
        if self.pool is not None:
            await self.pool.stop(grace)
        for service in reversed(self.services):
            try:
                await service.stop(grace)
            except Exception:  # one broken service must not keep the others running
                log.exception("error stopping %s", service.name)
        if self._control is not None:
            await self._control.close()
        if self.spool is not None:
            await self.spool.close()
        if self._forker is not None:
            self._forker.close()
            self._forker = None
        _close_bound()
        if self.privsep is not None:
            self.privsep.close()

    def _queue_manager(self) -> QueueManager | None:
        module = sys.modules.get("roost.queue.service")  # imported when qmgr is enabled
        if module is None:
            return None
        for service in self.services:
            if isinstance(service, module.QueueService):
                manager: QueueManager = service.manager
                return manager
        return None

    def _notify_queue_manager(self, queue_id: str) -> None:
        """A new message was committed (a worker's commit notice, pickup)."""
        manager = self._queue_manager()
        if manager is not None:
            manager.committed(queue_id)

    async def _queue_command(self, word: str, arguments: list[str]) -> Mapping[str, object]:
        """The queue's control commands: pickup, flush, notify ID..., forget ID..., active."""
        if word == "pickup":
            if self.pickup is None:
                return {"ok": False, "error": "the daemon is starting"}
            return {"ok": True, "picked_up": await self.pickup.run()}
        manager = self._queue_manager()
        if manager is None:
            return {"ok": False, "error": "the queue manager is not running"}
        queue_ids = [a for a in arguments if is_queue_id(a)]
        if word == "active":
            return {"ok": True, "active": sorted(manager.active_ids())}
        if word == "flush":
            if self.pickup is not None:
                await self.pickup.run()
            manager.flush()
        elif word == "notify":
            for queue_id in queue_ids:
                manager.notify(queue_id)
        elif word == "forget":  # deleted or held: their retry timers must not fire
            for queue_id in queue_ids:
                manager.forget(queue_id)
        return {"ok": True}

    async def _command(self, command: str) -> Mapping[str, object]:
        word, *arguments = command.split(" ")
        if command == "reload":
            return await self.reload()
        if command == "stop":
            self._stop.set()
            return {"ok": True}
        if word in ("pickup", "flush", "notify", "forget", "active"):
            return await self._queue_command(word, arguments)
        cert, _ = tls_files(self.settings, "smtp")
        services: dict[str, object] = {s.name: dict(s.status()) for s in self.services}
        answer: dict[str, object] = {
            "ok": True,
            "pid": os.getpid(),
            "version": __version__,
            "config": str(self.config),
            "uptime": round(time.time() - self.started, 1),
            "tls_cert_file": str(cert),
            "services": services,
        }
        if self.pool is not None:
            workers = await self.pool.status()
            answer["workers"] = workers
            answer["bus"] = self.pool.bus_status()
            answer["hibernated"] = self.pool.hibernated.status()
            services.update(merge_worker_status(workers))
        return answer


def check_worker_services(settings: Settings, tls: TLSContexts) -> list[str]:
    """Build the workers' services' configuration as they will, without starting them
    (what ``roost check`` does; the user database is left for the workers to open)."""
    enabled = {listener.service for listener in service_listeners(settings)}
    context = Context(settings=settings, tls=tls)
    problems: list[str] = []
    if enabled & {"smtp", "submission", "submissions"}:  # imported only when enabled
        from roost.smtp.server import check_smtp

        problems += check_smtp(settings, context)
    if enabled & {"imap", "imaps"}:
        from roost.imap.server import check_imap

        problems += check_imap(settings)
    if enabled & {"pop3", "pop3s"}:
        from roost.pop3.server import check_pop3

        problems += check_pop3(settings)
    return problems


def worker_count_text(settings: Settings) -> str:
    """The ``worker_processes`` value as written (to notice a change on reload)."""
    return settings.string("worker_processes").strip().lower()


def merge_worker_status(workers: list[Mapping[str, object]]) -> dict[str, object]:
    """The services of every worker as one: numbers summed, other values from the first."""
    merged: dict[str, dict[str, object]] = {}
    for worker in workers:
        services = worker.get("services")
        if not isinstance(services, dict):
            continue
        for name, status in services.items():
            if not isinstance(status, dict):
                continue
            into = merged.setdefault(str(name), {})
            for key, value in status.items():
                old = into.get(key)
                if isinstance(value, int) and isinstance(old, int):
                    into[key] = old + value
                elif old is None:
                    into[key] = value
    return dict(merged)


def _close_bound() -> None:
    for sock in BOUND.values():
        sock.close()
    BOUND.clear()

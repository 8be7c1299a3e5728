"""The daemon's lifecycle: start, reload on SIGHUP, graceful stop on SIGTERM/SIGINT.

``roost serve`` runs :meth:`Daemon.run`. Start-up order: read and validate main.cf, set up
logging, create the queue and data directories, create a self-signed certificate when none
exists (``tls_selfsigned_auto``), build TLS contexts, recover the queue and pick up what
sendmail(1) left in ``maildrop/``, build services in the composition root and start them,
open the control socket, then tell systemd ``READY=1``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from roost import __version__
from roost.auth.factory import build_user_database
from roost.auth.throttle import Throttle
from roost.config import ConfigError, Settings, load_settings
from roost.daemon.compose import build_services
from roost.daemon.control import ControlServer
from roost.daemon.listeners import service_listeners
from roost.daemon.logsetup import reopen_logs
from roost.daemon.sdnotify import Notifier
from roost.daemon.service import Context, Service
from roost.daemon.tlscontexts import TLSContexts, tls_files
from roost.queue.errors import SpoolError
from roost.queue.manager import QueueManager
from roost.queue.pickup import Pickup
from roost.queue.queue_id import is_queue_id
from roost.queue.service import QueueService
from roost.queue.spool import Spool
from roost.tls import TLSError, generate_selfsigned

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
        generate_selfsigned(hostname, cert, key)
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
        self.notifier = notifier
        self.services: list[Service] = []
        self.started = time.time()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._control: ControlServer | None = None
        self.spool: Spool | None = None
        self.pickup: Pickup | None = None
        self.throttle = Throttle(
            max_delay=float(settings.seconds("auth_failure_delay_max")),
            refuse_after=settings.integer("auth_failure_refuse_after"),
            window=float(settings.seconds("auth_failure_window")),
        )

    def _context(self, settings: Settings) -> Context:
        tls = TLSContexts(settings)
        tls.preload(tls_services(settings))
        return Context(
            settings=settings,
            tls=tls,
            spool=self.spool,
            users=build_user_database(settings),
            throttle=self.throttle,
        )

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT or ``roost stop``; return the exit status."""
        loop = asyncio.get_running_loop()
        try:
            raise_file_limit()
            prepare_directories(self.settings)
            ensure_certificate(self.settings)
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
            context = self._context(self.settings)
            self.services = build_services(context)
            for service in self.services:
                await service.start()
            self.pickup.start()
        except (OSError, TLSError, ConfigError, SpoolError) as exc:
            log.critical("%s", str(exc).replace("\n", "; "))
            await self._shutdown(grace=0)
            return 1
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        names = ", ".join(s.name for s in self.services) or "no services"
        log.info("daemon started -- version %s, configuration %s", __version__, self.config)
        self.notifier.ready(f"serving: {names}")
        await self._stop.wait()
        log.info("terminating on signal or stop request")
        self.notifier.stopping()
        await self._shutdown(grace=float(self.settings.seconds("shutdown_grace_time")))
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        log.info("daemon stopped")
        return 0

    def stop(self) -> None:
        """Ask :meth:`run` to stop gracefully."""
        self._stop.set()

    async def reload(self) -> Mapping[str, object]:
        """Re-read main.cf and certificates; keep the old settings if the new ones are bad."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                settings, warnings = load_settings(self.config)
                for warning in warnings:
                    log.warning("%s", str(warning).removeprefix("warning: "))
                ensure_certificate(settings)
                context = self._context(settings)
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
            log.info("reload -- version %s, configuration %s", __version__, self.config)
            self.notifier.ready("reloaded")
            return {"ok": True}

    async def _shutdown(self, grace: float) -> None:
        if self.pickup is not None:
            await self.pickup.stop()
        for service in reversed(self.services):
            try:
                await service.stop(grace)
            except Exception:  # one broken service must not keep the others running
                log.exception("error stopping %s", service.name)
        if self._control is not None:
            await self._control.close()
        if self.spool is not None:
            await self.spool.close()

    def _queue_manager(self) -> QueueManager | None:
        for service in self.services:
            if isinstance(service, QueueService):
                return service.manager
        return None

    def _notify_queue_manager(self, queue_id: str) -> None:
        manager = self._queue_manager()
        if manager is not None:
            manager.notify(queue_id)

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
        return {
            "ok": True,
            "pid": os.getpid(),
            "version": __version__,
            "config": str(self.config),
            "uptime": round(time.time() - self.started, 1),
            "tls_cert_file": str(cert),
            "services": {s.name: dict(s.status()) for s in self.services},
        }

"""Run ``roost serve`` as a subprocess, with readiness through a real NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.conftest import ROOST, ROOT


class NotifySocket:
    """A systemd-like notify socket: a bound AF_UNIX datagram socket in a temp dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path.unlink(missing_ok=True)
        self.sock.bind(str(path))

    def wait_for(self, field: str, timeout: float = 30.0) -> dict[str, str]:
        """Return the next datagram holding ``field`` (e.g. "READY=1"), as a dict."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {field} from the daemon within {timeout}s")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536).decode()
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            if field in data.splitlines():
                return fields

    def close(self) -> None:
        self.sock.close()


class RoostDaemon:
    """``roost -c CONFIG serve`` as a child process; waits for READY=1 on start."""

    def __init__(self, config: Path, *, extra_env: dict[str, str] | None = None) -> None:
        self.config = config
        self.notify = NotifySocket(config.parent / "notify.sock")
        self.log = config.parent / "daemon.log"
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **(extra_env or {})}
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            [*ROOST, "-c", str(config), "serve"],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 30.0) -> dict[str, str]:
        try:
            return self.notify.wait_for("READY=1", timeout)
        except TimeoutError:
            raise AssertionError(f"daemon not ready; log:\n{self.log_text()}") from None

    def log_text(self) -> str:
        """The daemon's log so far.

        The daemon writes its lines from a thread a moment after logging them (so does
        Postfix, through postlogd): first wait, bounded, until the file has stopped
        growing for 100 ms (a loaded machine may not run the writer threads sooner).
        """
        size = -1
        deadline = time.monotonic() + 3.0
        while self.process.poll() is None and time.monotonic() < deadline:
            now = self.log.stat().st_size
            if now == size:
                break
            size = now
            time.sleep(0.1)
        return self.log.read_text(errors="replace")

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()

    def _close(self) -> None:
        self.notify.close()
        self._log_file.close()

    def __enter__(self) -> RoostDaemon:
        self.wait_ready()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()


def roost_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``roost -c CONFIG ARGS`` and return the finished process."""
    return subprocess.run(
        [*ROOST, "-c", str(config), *args], capture_output=True, text=True, cwd=ROOT, check=False
    )

"""The control socket: ``roost reload``, ``roost stop`` and ``roost status`` talk to the daemon.

A Unix stream socket ``control.sock`` in ``data_directory``, mode 0600 (only the owner, or
root, may use it). One request per connection: the client sends a command word, maybe
arguments separated by spaces, and a newline; the daemon answers one JSON object and a
newline, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. The words:

* ``status``, ``reload``, ``stop``: the daemon itself;
* ``pickup``: take what sendmail(1) left in ``maildrop/`` now (Postfix's postdrop kick);
* ``flush``: retry deferred mail now (``roost queue flush``, ``postqueue -f``);
* ``notify ID...``: these messages were put into ``incoming/`` (``roost queue release``,
  ``requeue``): deliver them;
* ``forget ID...``: these messages left ``deferred/`` (``roost queue delete``, ``hold``):
  drop their retry timers;
* ``active``: the queue IDs being delivered now (``{"ok": true, "active": [IDs]}``), which
  ``mailq`` marks ``*`` and ``roost queue`` leaves alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final

__all__ = ["COMMANDS", "ControlError", "ControlServer", "daemon_running", "request"]

COMMANDS: Final = (
    "status",
    "reload",
    "stop",
    "pickup",
    "flush",
    "notify",
    "forget",
    "active",
)
_MAX_REQUEST: Final = 4096  # a command word and up to a few hundred queue IDs

Handler = Callable[[str], Awaitable[Mapping[str, object]]]


class ControlError(Exception):
    """The daemon cannot be reached, or it refused the request."""


class ControlServer:
    """Serves control requests on a Unix socket.

    Args:
        path: the socket's file name.
        handler: called with the command word (lower case) and its arguments, separated
            by single spaces; returns the JSON answer.
    """

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Create the socket (replacing a stale one) with mode 0600.

        Raises:
            OSError: the directory is not writable, or another daemon is using the socket.
        """
        if self.path.exists():
            if _alive(self.path):
                raise OSError(f"{self.path}: another roost daemon is running")
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        """Stop serving and remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            text = line[:_MAX_REQUEST].decode("ascii", "replace").strip()
            word, _, arguments = text.partition(" ")
            command = word.lower()
            if command not in COMMANDS:
                answer: Mapping[str, object] = {
                    "ok": False,
                    "error": f"unknown command {command!r} (known: {', '.join(COMMANDS)})",
                }
            else:  # arguments (queue IDs) keep their case
                answer = await self._handler(f"{command} {arguments.strip()}".strip())
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def daemon_running(path: Path) -> bool:
    """Whether a daemon answers on the control socket ``path`` (blocking; at start-up)."""
    return path.exists() and _alive(path)


def _alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def request(path: Path, command: str, *, timeout: float = 30.0) -> dict[str, object]:
    """Send one command to the daemon and return its answer (blocking; for the CLI).

    Raises:
        ControlError: no daemon listens on ``path``, or the answer is not valid JSON.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(command.encode("ascii") + b"\n")
            chunks: list[bytes] = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except FileNotFoundError:
            raise ControlError(f"{path}: no such socket: is the roost daemon running?") from None
        except ConnectionRefusedError:
            raise ControlError(f"{path}: connection refused: the daemon is not running") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as root or mail_owner)") from None
        except OSError as exc:
            raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"{path}: the daemon sent a malformed answer") from None
    if not isinstance(answer, dict):
        raise ControlError(f"{path}: the daemon sent a malformed answer")
    return answer

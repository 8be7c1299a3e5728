"""The link between the master and one worker process: JSON lines over a socket pair.

Every message is one JSON object on one line, with its type under ``"t"``. Both sides
read with a task on their event loop and write through the transport's buffer, so neither
loop ever blocks on the other process. Messages sent during one pass of the event loop go
out in one write (a spool batch's commit notices, say: one system call on each side
instead of one per message). See :mod:`roost.daemon.workers` for the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from typing import Final

__all__ = ["MAX_MESSAGE", "Channel", "Message", "commit_line"]

#: A message as sent: a JSON object (the type in ``"t"``).
Message = dict[str, object]

#: The longest message line in bytes (a throttle snapshot of many clients is the biggest).
MAX_MESSAGE: Final = 64 * 1024 * 1024
#: Bytes taken from the socket's buffer per read.
_READ_SIZE: Final = 256 * 1024

log = logging.getLogger("roost.master")


def _encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def commit_line(queue_id: str) -> bytes:
    """The line of ``{"t": "commit", "id": queue_id}``, as :meth:`Channel.send` encodes it,
    made without ``json.dumps`` when the ID is ASCII letters and digits (a queue ID:
    nothing to escape), else with it."""
    if not (queue_id.isascii() and queue_id.isalnum()):
        return _encode({"t": "commit", "id": queue_id})
    return b'{"t":"commit","id":"' + queue_id.encode("ascii") + b'"}\n'


class Channel:
    """One end of a master-worker socket pair.

    Args:
        sock: a connected AF_UNIX stream socket.
        handler: called on the event loop with every message received; exceptions are
            logged and the channel goes on.
        on_close: called once when the other side has gone (end of stream or error).
    """

    def __init__(
        self,
        sock: socket.socket,
        handler: Callable[[Message], None],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._sock = sock
        self._handler = handler
        self._on_close = on_close
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._outgoing: list[bytes] = []  # lines waiting for the end of this loop pass
        self.closed = asyncio.Event()

    async def start(self) -> None:
        """Start reading (on the running loop)."""
        self._sock.setblocking(False)
        reader, self._writer = await asyncio.open_unix_connection(
            sock=self._sock, limit=MAX_MESSAGE
        )
        self._task = asyncio.get_running_loop().create_task(self._read(reader))

    def send(self, message: Message) -> None:
        """Queue one message (never blocks; dropped when the other side is gone).

        It is written when the event loop has run what is ready now, together with the
        other messages sent meanwhile, in order.
        """
        self.send_line(_encode(message))

    def send_line(self, line: bytes) -> None:
        """Queue one message already encoded: a JSON object on one line, ending in
        ``\n`` (what :meth:`send` would make of it). For a message sent very often, so
        that its encoding can be made without ``json.dumps`` (a worker's commit notices,
        :func:`commit_line`); otherwise as :meth:`send`."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(line)

    def _flush(self) -> None:
        lines, self._outgoing = self._outgoing, []
        writer = self._writer
        if lines and writer is not None and not writer.is_closing():
            writer.write(b"".join(lines))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        # what has arrived is taken in one read and split into lines here: a batch of
        # commit notices costs one wake-up of this task, not one readline() each
        partial: list[bytes] = []  # the start of a line whose end has not arrived
        partial_size = 0
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                end = data.rfind(b"\n")
                if end < 0:
                    partial.append(data)
                    partial_size += len(data)
                    if partial_size > MAX_MESSAGE:
                        raise ValueError("a message line over the limit")
                    continue
                if partial:
                    if partial_size + data.find(b"\n") > MAX_MESSAGE:  # the line it ends
                        raise ValueError("a message line over the limit")
                    partial.append(data[:end])
                    lines = b"".join(partial).split(b"\n")
                else:
                    lines = data[:end].split(b"\n")
                rest = data[end + 1 :]
                partial = [rest] if rest else []
                partial_size = len(rest)
                for line in lines:
                    self._receive(line)
            if partial:  # the last line, unterminated (as readline() returned it)
                self._receive(b"".join(partial))
        except (ConnectionError, ValueError, OSError):  # ValueError: a line over the limit
            pass
        finally:
            self.closed.set()
            if self._writer is not None:
                self._writer.close()
            if self._on_close is not None:
                self._on_close()

    def _receive(self, line: bytes) -> None:
        """Hand one received line's message to the handler (a bad line is logged)."""
        try:
            message = json.loads(line)
        except ValueError:
            log.error("worker channel: malformed message %.80r", line)
            return
        if not isinstance(message, dict):
            return
        try:
            self._handler(message)
        except Exception:
            log.exception("worker channel: cannot handle %.80r", line)

    async def close(self) -> None:
        """Send what is queued, close the socket and stop reading."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

"""The floor: the least SMTP server that can take smtp-source's ingest load (a tool).

Not product code: a measuring stick for ``bench/smtp_ingest.py`` (``--servers
roost,postfix,floor,floor:sync,floor:raw,floor:raw+sync``). It runs as roost does at
ingest: one listening socket bound before the fork, shared by ``--workers`` processes (2),
each a uvloop event loop. Per message it does only what the variant says:

- ``--engine aiosmtpd`` (default): aiosmtpd's stock ``SMTP`` protocol class (its own
  command loop, line-by-line DATA, no logging configured, so its ``log.info`` calls stop
  at the level check) with a handler whose ``handle_DATA`` answers ``250 2.0.0 Ok: queued
  as X``.
- ``--engine streams``: aiosmtpd's shape without its code: an ``asyncio.StreamReaderProtocol``
  and a session coroutine per connection (``readuntil`` per command, ``read`` for the
  content, ``write`` and ``drain`` per reply), the same replies as ``raw``. Roost's session
  keeps this shape (it subclasses aiosmtpd's ``SMTP``), so this is the floor of any server
  built on aiosmtpd, however much of aiosmtpd's code it replaces.
- ``--engine raw``: an ``asyncio.Protocol`` with the least state machine that answers
  smtp-source (banner, HELO/EHLO, MAIL, RCPT, DATA up to ``CRLF.CRLF``, RSET, NOOP, QUIT);
  no library under it: what aiosmtpd's layer costs is the difference. (It answers
  commands that arrive during a flush before the ``250``: fine for smtp-source, which does
  not pipeline; not a server.)
- ``--sync``: before the ``250``, the message is written to a new file in ``DIR/PID/`` and
  ``fdatasync``'d, then closed, in the loop's default thread pool (the durability every
  acceptable server pays; Postfix's cleanup(8) fsyncs each queue file). The files are
  left for the bench to count and remove.

Each worker counts its ``250``s into its 8-byte slot of ``DIR/counts`` (a shared file
mapping), so the bench can check the number of messages accepted.

Usage::

    python bench/smtp_floor.py --port 2525 --dir /var/tmp/floor [--workers 2]
        [--engine aiosmtpd|streams|raw] [--sync]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import mmap
import os
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOSTNAME = "floor.localdomain"
#: roost's listen(2) backlog (roost.daemon.listeners.LISTEN_BACKLOG)
BACKLOG = 512
COUNT = struct.Struct("=Q")


class Store:
    """What happens to a message before its ``250``: nothing, or a durable file."""

    def __init__(self, directory: Path, sync: bool) -> None:
        self.directory = directory
        self.sync = sync
        self.serial = 0

    def _write(self, name: str, content: bytes) -> None:
        fd = os.open(
            os.path.join(self.directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )
        try:
            os.write(fd, content)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def next_id(self) -> str:
        self.serial += 1
        return f"{os.getpid():X}{self.serial:06X}"


def counter(directory: Path, index: int) -> Any:
    """A function that adds one to this worker's slot of ``directory/counts``."""
    with open(directory / "counts", "r+b") as file:
        mapped = mmap.mmap(file.fileno(), 0)
    offset = index * COUNT.size
    count = 0

    def add() -> None:
        nonlocal count
        count += 1
        COUNT.pack_into(mapped, offset, count)

    return add


# --- aiosmtpd -----------------------------------------------------------------------------


class Handler:
    """aiosmtpd handler: ``250`` for every message, after ``store``'s flush if any."""

    def __init__(self, store: Store, count: Any) -> None:
        self.store = store
        self.count = count

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        queue_id = self.store.next_id()
        if self.store.sync:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.store._write, queue_id, envelope.original_content)
        self.count()
        return f"250 2.0.0 Ok: queued as {queue_id}"


def aiosmtpd_factory(store: Store, count: Any) -> Any:
    from aiosmtpd.smtp import SMTP

    handler = Handler(store, count)
    loop = asyncio.get_running_loop()
    # hostname given: aiosmtpd would call socket.getfqdn() for every session otherwise
    return lambda: SMTP(handler, hostname=HOSTNAME, ident="floor", loop=loop)


# --- asyncio streams (aiosmtpd's shape without its code) ----------------------------------


def streams_factory(store: Store, count: Any) -> Any:
    """A ``StreamReaderProtocol`` and a coroutine per connection, as aiosmtpd's ``SMTP`` is
    built (and roost's session, which keeps that base): ``readuntil`` per command, the
    content read with ``read`` until ``CRLF.CRLF``, each reply written and drained."""
    loop = asyncio.get_running_loop()

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 " + HOSTNAME.encode() + b" ESMTP floor\r\n")
        await writer.drain()
        try:
            while True:
                line = await reader.readuntil(b"\r\n")
                verb = line[:4].upper()
                if verb == b"DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    await writer.drain()
                    content = b"\r\n"  # the content's first line may be the lone dot
                    while (end := content.find(b"\r\n.\r\n")) < 0:
                        data = await reader.read(65536)
                        if not data:
                            return
                        content += data
                    # smtp-source waits for the 250: nothing follows the dot in the buffer
                    message = content[: end + 2].replace(b"\r\n..", b"\r\n.")[2:]
                    queue_id = store.next_id()
                    if store.sync:
                        await loop.run_in_executor(None, store._write, queue_id, message)
                    count()
                    writer.write(f"250 2.0.0 Ok: queued as {queue_id}\r\n".encode())
                elif verb == b"MAIL":
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    writer.write(b"250 2.1.5 Ok\r\n")
                elif verb in (b"HELO", b"EHLO"):
                    writer.write(b"250 " + HOSTNAME.encode() + b"\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    break
                elif verb in (b"RSET", b"NOOP"):
                    writer.write(b"250 2.0.0 Ok\r\n")
                else:
                    writer.write(b"502 5.5.2 Error: command not recognized\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def factory() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=1001, loop=loop), session)

    return factory


# --- raw asyncio.Protocol -----------------------------------------------------------------


class RawSMTP(asyncio.Protocol):
    """The least SMTP responder for smtp-source: one buffer, commands or DATA."""

    def __init__(self, store: Store, count: Any) -> None:
        self.store = store
        self.count = count
        self.buffer = b""
        self.in_data = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(b"220 " + HOSTNAME.encode() + b" ESMTP floor\r\n")

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while True:
            if self.in_data:
                end = buffer.find(b"\r\n.\r\n")
                if end < 0:
                    break
                content, buffer = buffer[: end + 2], buffer[end + 5 :]
                self.in_data = False
                self.message(content)
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            line, buffer = buffer[:end], buffer[end + 2 :]
            verb = line[:4].upper()
            if verb == b"DATA":
                self.in_data = True
                buffer = b"\r\n" + buffer  # the content's first line may be the lone dot
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"MAIL":
                self.transport.write(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                self.transport.write(b"250 2.1.5 Ok\r\n")
            elif verb in (b"HELO", b"EHLO"):
                self.transport.write(b"250 " + HOSTNAME.encode() + b"\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
                return
            elif verb in (b"RSET", b"NOOP"):
                self.transport.write(b"250 2.0.0 Ok\r\n")
            else:
                self.transport.write(b"502 5.5.2 Error: command not recognized\r\n")
        self.buffer = buffer

    def message(self, content: bytes) -> None:
        content = content.replace(b"\r\n..", b"\r\n.")[2:]  # without the CRLF added at DATA
        queue_id = self.store.next_id()
        reply = f"250 2.0.0 Ok: queued as {queue_id}\r\n".encode()
        if not self.store.sync:
            self.count()
            self.transport.write(reply)
            return
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(None, self.store._write, queue_id, content)
        done.add_done_callback(lambda future: self.flushed(future, reply))

    def flushed(self, future: asyncio.Future[None], reply: bytes) -> None:
        if future.exception() is not None:
            reply = b"451 4.3.0 Error: queue file write error\r\n"
        else:
            self.count()
        if not self.transport.is_closing():
            self.transport.write(reply)


# --- processes ----------------------------------------------------------------------------


async def serve(sock: socket.socket, args: argparse.Namespace, index: int) -> None:
    loop = asyncio.get_running_loop()
    directory = args.dir / str(os.getpid())
    directory.mkdir()
    store = Store(directory, args.sync)
    count = counter(args.dir, index)
    if args.engine == "raw":
        factory: Any = lambda: RawSMTP(store, count)  # noqa: E731
    elif args.engine == "streams":
        factory = streams_factory(store, count)
    else:
        factory = aiosmtpd_factory(store, count)
    server = await loop.create_server(factory, sock=sock, backlog=BACKLOG)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def worker(sock: socket.socket, args: argparse.Namespace, index: int) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(sock, args, index))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="counts and stored messages")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engine", choices=("aiosmtpd", "streams", "raw"), default="aiosmtpd")
    parser.add_argument("--sync", action="store_true", help="a file + fdatasync per message")
    args = parser.parse_args(argv)

    args.dir.mkdir(parents=True, exist_ok=True)
    (args.dir / "counts").write_bytes(bytes(COUNT.size * args.workers))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    children = []
    for index in range(args.workers):
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                worker(sock, args, index)
            except BaseException:
                import traceback

                traceback.print_exc()
                status = 1
            finally:
                os._exit(status)
        children.append(pid)
    sock.close()

    def forward(signum: int, _frame: Any) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for pid in children:
        while True:
            try:
                _, code = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        status = status or os.waitstatus_to_exitcode(code)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

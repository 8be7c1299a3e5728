"""IMAP sessions idle in IDLE, parked in the master: Dovecot's ``imap_hibernate_timeout``.

A worker's IMAP session that has been in IDLE (RFC 2177) for ``imap_hibernate_timeout``
seconds with nothing pending, on a plaintext connection, is moved out of the worker into
the master, as Dovecot moves such a connection from its ``imap`` process to its
``imap-hibernate`` process. The master keeps the client's socket and a few hundred bytes
(the session's state, packed by the worker and opaque to the master) and no task, future,
transport or timer of its own per connection; it hands the session back to a worker when
something happens. So 1,000 idle clients cost the master about 1 KiB each (one
:class:`_Parked`: some 400 bytes of state with a 10-message INBOX and its Python
objects) and the workers nothing, once a worker that has no connections left is
replaced (its heap keeps the pages the sessions used: docs/performance.md, "IMAP
hibernation into the master, session 9").

The move (over a ``SOCK_SEQPACKET`` socket pair per worker beside the JSON channel of
:mod:`roost.daemon.channel`; descriptors go as ``SCM_RIGHTS``):

1. worker: the session stops reading, checks that nothing is buffered either way, and
   sends ``H`` + a JSON header + ``\\n`` + its packed state, with the socket's descriptor
   (:meth:`HibernationLink.hand_over`). The header holds what the master needs: the
   mailbox key of the change bus (its resolved Maildir directory), the stamps of the
   Maildir (:func:`maildir_stamps`), the keepalive's due time and interval, the poll
   interval, the connection counts the session holds, and its logout line's values;
2. master: keeps the descriptor and the bytes (:class:`HibernatedSessions`), moves the
   session's connection counts from that worker's share to its own, answers ``A`` (taken
   or refused), then watches the descriptor in an epoll set of its own (one
   registration in the kernel, no Python object per descriptor) and compares the
   Maildir's stamps once at once (a change that was made during the move);
3. worker: on ``A`` taken, it forgets the session (its own descriptor closed: the
   connection stays open in the master) without a log line; refused, it reads again and
   goes on.

The master wakes a session (``W`` + header + state, with the descriptor, to the least
loaded worker, which adopts the socket and syncs: untagged updates first, then what the
client sent) when the client sends anything or closes (it reads nothing itself), when a
change notice for its mailbox passes through the master (a worker's or its own
deliveries'), or when the ``mailbox_idle_check_interval`` poll finds the Maildir's stamps
changed (a few ``stat`` calls per mailbox in the master, no wake-up when nothing changed).
It writes the ``imap_idle_notify_interval`` keepalive ``* OK Still here`` itself, and at
the daemon's stop ``* BYE Server shutting down.`` with the session's
``Disconnected: ...`` line. As in a worker, IDLE has no inactivity limit
(``imap_client_timeout`` does not apply during IDLE, docs/imap.md): keepalives find dead
peers.

The master never decodes the packed state (a ``pickle`` that only workers read); of
the header it reads JSON, stats the key's Maildir, and writes nothing but the keepalive
and ``* BYE`` to the descriptor.

A session being moved when its worker dies is either in the master (the packet was sent:
the master reads it before it takes back the dead worker's counts) or closed with the
worker's descriptors. Sessions in the master outlive any worker and a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import select
import socket
import time
import zlib
from collections.abc import Callable, Hashable, Iterable
from typing import Final

from roost.config.parameters import PARAMETERS

__all__ = [
    "MAX_PACKET",
    "RECV_SIZE",
    "HibernatedSessions",
    "HibernationLink",
    "decode_packet",
    "encode_packet",
    "header_counts",
    "maildir_stamps",
]

log = logging.getLogger("roost.master")
log_imap = logging.getLogger("roost.imap")

#: The largest hibernation packet (header and state), in bytes: a session whose state is
#: bigger (a selected mailbox of many thousand messages) stays in its worker.
MAX_PACKET: Final = 48 * 1024
#: Bytes a receiver reads per packet (more than :data:`MAX_PACKET` plus the header).
RECV_SIZE: Final = 64 * 1024
#: Seconds between attempts to wake sessions no worker could take (none running, or
#: its socket buffer full).
_RETRY: Final = 0.2
#: Dovecot's default ``imap_logout_format`` (the parameter table's): a worker leaves
#: it out of the header.
DEFAULT_LOGOUT_FORMAT: Final = str(PARAMETERS["imap_logout_format"].default)
#: Dovecot's shutdown reply, sent by a worker's session and by the master.
BYE_SHUTDOWN: Final = b"* BYE Server shutting down.\r\n"
KEEPALIVE: Final = b"* OK Still here\r\n"

#: ``(table name, key)`` of a connection count (:mod:`roost.daemon.shared`).
CountKey = tuple[str, Hashable]


def maildir_stamps(directory: str) -> list[int]:
    """What tells that a Maildir changed: ``new/`` and ``cur/`` mtimes and the
    ``dovecot-uidlist`` mtime, size and inode (nanoseconds, bytes; -1 when missing).

    A delivery changes ``new/``, a flag change or an expunge (a rename or unlink)
    ``cur/``, a new UID ``dovecot-uidlist``. Three ``stat`` calls.
    """
    stamps: list[int] = []
    for name in ("new", "cur"):
        try:
            stamps.append(os.stat(os.path.join(directory, name)).st_mtime_ns)
        except OSError:
            stamps.append(-1)
    try:
        st = os.stat(os.path.join(directory, "dovecot-uidlist"))
        stamps += [st.st_mtime_ns, st.st_size, st.st_ino]
    except OSError:
        stamps += [-1, -1, -1]
    return stamps


def encode_packet(kind: bytes, header: dict[str, object], blob: bytes = b"") -> bytes:
    """One packet of the hibernation socket pair: ``kind`` (``H`` a session to the
    master, ``A`` the master's answer, ``W`` a woken session to a worker), the JSON
    ``header``, a newline, the session's packed ``blob``."""
    return kind + json.dumps(header, separators=(",", ":")).encode() + b"\n" + blob


def decode_packet(data: bytes) -> tuple[bytes, dict[str, object], bytes]:
    """``(kind, header, blob)`` of a packet of :func:`encode_packet`.

    Raises:
        ValueError: the header is not a JSON object.
    """
    head, _, blob = data[1:].partition(b"\n")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("not a hibernation header")
    return data[:1], header, blob


def _close(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# --- the worker's side ------------------------------------------------------------------


#: Adopts a woken session: called with its header, its state and the socket's descriptor
#: (the callee owns the descriptor).
WakeHandler = Callable[[dict[str, object], bytes, int], None]


class HibernationLink:
    """A worker's end of its hibernation socket pair (``SOCK_SEQPACKET``).

    Args:
        sock: the worker's end.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.on_wake: WakeHandler | None = None
        self._waiting: dict[int, asyncio.Future[bool]] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Read the master's packets on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        """Stop reading; pending hand-overs count as refused (the master has gone)."""
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self._refuse_all()

    def _refuse_all(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_result(False)
        self._waiting.clear()

    async def hand_over(self, header: dict[str, object], blob: bytes, fd: int) -> bool:
        """Send a session (``header``, its packed state ``blob``) and its socket's
        descriptor ``fd`` to the master; True once the master holds it, False when it
        refused or the packet could not be sent (the session stays here).

        Not cancelled by a timeout: a session the master took must not go on here.
        """
        if self._loop is None:
            return False
        request = next(self._ids)
        packet = encode_packet(b"H", {**header, "id": request}, blob)
        if len(packet) > MAX_PACKET:
            return False
        future = self._loop.create_future()
        self._waiting[request] = future
        try:
            socket.send_fds(self.sock, [packet], [fd])
        except OSError:
            del self._waiting[request]
            return False
        return bool(await future)

    def poll(self) -> None:
        """Handle what the master has sent and this worker has not read yet (answers
        and woken sessions), as the loop's reader would."""
        if self._loop is not None:
            self._readable()

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, RECV_SIZE, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self.close()
                return
            try:
                kind, header, blob = decode_packet(data)
            except ValueError:
                log.error("hibernation: a bad packet from the master")
                _close(fds)
                continue
            if kind == b"A":
                future = self._waiting.pop(int(header.get("id", 0)), None)  # type: ignore[call-overload]
                if future is not None and not future.done():
                    future.set_result(bool(header.get("ok")))
                _close(fds)
            elif kind == b"W" and fds and self.on_wake is not None:
                try:
                    self.on_wake(header, blob, fds[0])
                except Exception:
                    log_imap.exception("adopting a hibernated session failed")
                    _close(fds)
            else:
                _close(fds)


# --- the master's side -------------------------------------------------------------------


class _Parked:
    """One session in the master: its descriptor and bytes (see the module docstring).

    ``key`` is the mailbox key (one string object per mailbox), ``stamps`` the hash of
    its :func:`maildir_stamps` when it came, ``notify_at`` when the keepalive is due
    (``time.monotonic()``), ``data`` the rest of the worker's header (:data:`_COLD`,
    zlib-compressed JSON, its first ``cut`` bytes) and the session's packed state, ``out``
    the octets the master wrote to the client. About 150 bytes besides ``data``.
    """

    __slots__ = ("cut", "data", "fd", "key", "notify_at", "out", "stamps")

    def __init__(self, fd: int, key: str, stamps: int, notify_at: float) -> None:
        self.fd = fd
        self.key = key
        self.stamps = stamps
        self.notify_at = notify_at
        self.data = b""
        self.cut = 0
        self.out = 0

    @property
    def blob(self) -> bytes:
        """The session's packed state (opaque here)."""
        return self.data[self.cut :]

    def cold(self) -> dict[str, object]:
        """The header fields the master needs only at a wake, a keepalive or the end."""
        header = json.loads(zlib.decompress(memoryview(self.data)[: self.cut]))
        assert isinstance(header, dict)
        return header

    def keep(self, header: dict[str, object], blob: bytes) -> None:
        """Keep ``header`` (compressed) and ``blob``, as one ``bytes``."""
        cold = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
        self.data = cold + blob
        self.cut = len(cold)


#: The header fields kept compressed (:meth:`_Parked.cold`).
_COLD: Final = ("counts", "prefix", "format", "values", "notify", "out", "pending", "why")


def _stamp_hash(stamps: Iterable[int]) -> int:
    """The stamps of :func:`maildir_stamps` as one int (Python's tuple hash: the same in
    every process for ints; a collision, 2**-64, would only leave a change to the next
    notice or wake-up)."""
    return hash(tuple(stamps))


#: Sends a woken session to a worker: ``(packet, fd)``; False when no worker can take it
#: now (none running, or its socket buffer is full).
Sender = Callable[[bytes, int, list[CountKey]], bool]


class HibernatedSessions:
    """The master's hibernated IMAP sessions (see the module docstring).

    Args:
        send: hands a woken session to a worker (chooses it, moves the counts).
        release: the session ended in the master: take its connection counts back
            (called with its ``(table, key)`` counts).

    Use on the master's event loop only.
    """

    def __init__(self, send: Sender, release: Callable[[list[CountKey]], None]) -> None:
        self._send = send
        self._release = release
        self._by_fd: dict[int, _Parked] = {}
        # mailbox key -> the descriptor of its one session here, or a list when several
        self._by_key: dict[str, int | list[int]] = {}
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._retry: list[int] = []
        self._retry_timer: asyncio.TimerHandle | None = None
        self._interval = 5.0
        self.stopping = False
        #: ``taken``, ``woken`` (by ``input``, ``change``, ``poll``), ``keepalives``.
        self.counters: dict[str, int] = dict.fromkeys(
            ("taken", "refused", "woken", "input", "change", "poll", "keepalives", "ended"), 0
        )

    def __len__(self) -> int:
        return len(self._by_fd)

    def status(self) -> dict[str, int]:
        """``sessions`` now in the master, ``bytes`` of state they keep (compressed
        headers and packed states), and the counters."""
        kept = sum(len(p.data) for p in self._by_fd.values())
        return {"sessions": len(self._by_fd), "bytes": kept, **self.counters}

    def watches(self, key: str) -> bool:
        """Whether a session here has mailbox ``key`` selected."""
        return key in self._by_key

    # --- taking -------------------------------------------------------------------------

    def take(self, header: dict[str, object], blob: bytes, fd: int) -> bool:
        """Keep a session a worker sent (``header`` as parsed, ``blob`` its state);
        False (the caller closes ``fd``) when the daemon stops."""
        if self.stopping:
            self.counters["refused"] += 1
            return False
        loop = asyncio.get_running_loop()
        if self._epoll is None:
            self._epoll = select.epoll()
            self._loop = loop
            loop.add_reader(self._epoll.fileno(), self._ready)
        key = str(header["key"])
        stamps = _stamp_hash(int(s) for s in header["stamps"])  # type: ignore[attr-defined]
        now = time.monotonic()
        parked = _Parked(fd, key, stamps, now + _number(header["notify_in"]))
        parked.keep({name: header[name] for name in _COLD if name in header}, blob)
        self._interval = min(self._interval, max(1.0, _number(header["check"])))
        self._by_fd[fd] = parked
        self._index(parked)
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self.counters["taken"] += 1
        if self._sweep_timer is None:
            self._sweep_timer = loop.call_later(self._interval, self._sweep)
        # A change made while the session moved: on disk before its notice, so seen now.
        loop.call_soon(self._check_one, fd)
        return True

    def _index(self, parked: _Parked) -> None:
        """Enter ``parked`` in the index by mailbox key."""
        known = self._by_key.get(parked.key)
        if known is None:
            self._by_key[parked.key] = parked.fd
            return
        first = known if isinstance(known, int) else known[0]
        parked.key = self._by_fd[first].key  # one string per mailbox
        if isinstance(known, int):
            self._by_key[parked.key] = [known, parked.fd]
        else:
            known.append(parked.fd)

    def _unindex(self, parked: _Parked) -> None:
        known = self._by_key.get(parked.key)
        if known is None:
            return
        if isinstance(known, int):
            if known == parked.fd:
                del self._by_key[parked.key]
            return
        with contextlib.suppress(ValueError):
            known.remove(parked.fd)
        if len(known) == 1:
            self._by_key[parked.key] = known[0]
        elif not known:
            del self._by_key[parked.key]

    def _check_one(self, fd: int) -> None:
        parked = self._by_fd.get(fd)
        if parked is not None and _stamp_hash(maildir_stamps(parked.key)) != parked.stamps:
            self.wake(fd, "poll")

    # --- waking ------------------------------------------------------------------------

    def changed(self, key: str) -> None:
        """A change notice for mailbox ``key``: wake its sessions."""
        known = self._by_key.get(key)
        for fd in [known] if isinstance(known, int) else list(known or ()):
            self.wake(fd, "change")

    def _ready(self) -> None:
        if self._epoll is None:
            return
        for fd, _ in self._epoll.poll(0, 1024):
            self.wake(fd, "input")

    def _forget(self, fd: int) -> _Parked | None:
        parked = self._by_fd.pop(fd, None)
        if parked is None:
            return None
        self._unindex(parked)
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
        return parked

    def wake(self, fd: int, why: str, pending: bytes = b"") -> None:
        """Send session ``fd`` to a worker (``why``: ``input``, ``change``, ``poll``);
        ``pending``: keepalive octets the master could not write, for the worker to write
        first. When no worker can take it now, it waits (not watched) and is tried again."""
        parked = self._forget(fd)
        if parked is None:
            return
        header = parked.cold()
        header["out"] = int(_number(header.get("out", 0))) + parked.out
        header["pending"] = pending.decode("latin-1")
        header["why"] = why
        blob = parked.blob
        packet = encode_packet(b"W", header, blob)
        counts = header_counts(header)
        if self._send(packet, fd, counts):
            os.close(fd)
            self.counters["woken"] += 1
            self.counters[why] = self.counters.get(why, 0) + 1
            return
        # Kept, unwatched, until a worker can take it.
        parked.keep(header, blob)
        parked.out = 0
        self._by_fd[fd] = parked
        self._retry.append(fd)
        if self._retry_timer is None and self._loop is not None:
            self._retry_timer = self._loop.call_later(_RETRY, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_timer = None
        fds, self._retry = self._retry, []
        for fd in fds:
            parked = self._by_fd.get(fd)
            if parked is None:
                continue
            self._index(parked)  # as _forget expects
            header = parked.cold()
            why = str(header.get("why", "input"))
            self.wake(fd, why, str(header.get("pending", "")).encode("latin-1"))

    # --- the poll and the keepalive ------------------------------------------------------

    def _sweep(self) -> None:
        self._sweep_timer = None
        now = time.monotonic()
        seen: dict[str, int] = {}
        for fd, parked in list(self._by_fd.items()):
            if fd in self._retry:
                continue
            stamps = seen.get(parked.key)
            if stamps is None:
                stamps = seen[parked.key] = _stamp_hash(maildir_stamps(parked.key))
            if stamps != parked.stamps:
                self.wake(fd, "poll")
            elif now >= parked.notify_at:
                self._keepalive(parked, now)
        if self._by_fd and self._loop is not None:
            self._sweep_timer = self._loop.call_later(self._interval, self._sweep)

    def _keepalive(self, parked: _Parked, now: float) -> None:
        parked.notify_at = now + _number(parked.cold()["notify"])
        try:
            written = os.write(parked.fd, KEEPALIVE)
        except BlockingIOError:
            written = 0
        except OSError:
            self.wake(parked.fd, "input")  # the worker finds the connection gone
            return
        parked.out += written
        self.counters["keepalives"] += 1
        if written < len(KEEPALIVE):
            self.wake(parked.fd, "input", KEEPALIVE[written:])

    # --- the end -----------------------------------------------------------------------

    def stop(self) -> None:
        """The daemon stops: ``* BYE`` to every session here, its ``Disconnected`` line,
        its counts released; nothing is taken from now on."""
        self.stopping = True
        for timer in (self._sweep_timer, self._retry_timer):
            if timer is not None:
                timer.cancel()
        self._sweep_timer = self._retry_timer = None
        for fd in list(self._by_fd):
            parked = self._forget(fd)
            if parked is None:
                continue
            with contextlib.suppress(OSError):
                parked.out += os.write(fd, BYE_SHUTDOWN)
            os.close(fd)
            self.counters["ended"] += 1
            header = parked.cold()
            self._release(header_counts(header))
            _log_end(
                header, int(_number(header.get("out", 0))) + parked.out, "Server shutting down"
            )
        self._retry.clear()
        if self._epoll is not None:
            if self._loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None


def _number(value: object) -> float:
    """A number from a JSON header (0.0 for anything else)."""
    return float(value) if isinstance(value, int | float) else 0.0


def header_counts(header: dict[str, object]) -> list[CountKey]:
    """The connection counts a session's header says it holds (``(table, key)``)."""
    from roost.daemon.shared import decode_key

    return [(str(name), decode_key(key)) for name, key in header.get("counts", [])]  # type: ignore[attr-defined]


def _log_end(header: dict[str, object], out: int, reason: str) -> None:
    """The session's ``imap(user): Disconnected: <reason> in=... out=...`` line (the
    header's ``values`` are those a worker counted that are not 0)."""
    from roost.imap.session import LOGOUT_VARIABLES, format_logout

    values = dict.fromkeys(LOGOUT_VARIABLES, 0)
    values.update({str(k): int(v) for k, v in dict(header.get("values", {})).items()})  # type: ignore[call-overload]
    values["output"] += out
    line = format_logout(str(header.get("format", DEFAULT_LOGOUT_FORMAT)), values)
    log_imap.info("%s: Disconnected: %s %s", header.get("prefix", "imap()"), reason, line)

"""The privileged helper: the few operations a daemon running as ``mail_owner`` cannot do.

Started as root, ``roost serve`` starts this helper (``python -m roost.daemon.privhelper``)
before it drops its privileges (:mod:`roost.daemon.privileges`), and keeps one end of a
``SOCK_SEQPACKET`` socket pair to it. Everything else of the daemon then runs as
``mail_owner``; the helper keeps root and does only this narrow, validated request set:

* ``pam``: a PAM password check (``pam_unix`` reads /etc/shadow), as root;
* ``maildir`` and ``mbox``: deliver a message into a Maildir or append it to an mbox file
  with the rights of a user (the recipient, or ``default_privs`` for ``/file`` aliases);
* ``command``: run a ``|command`` delivery with the rights of a user;
* ``forward``: read a user's ``~/.forward`` with the user's rights;
* ``tls``: read the TLS certificate and key files that main.cf names (for SIGHUP);
* ``session``: run an IMAP or POP3 session of a user after its login, as that user
  (:mod:`roost.daemon.handoff`; the child checks the login and password again against the
  user database, answers, then serves the session).

Each request gets its own connection: the client makes a fresh ``SOCK_STREAM`` socket pair
and sends one end over the helper's channel (``SCM_RIGHTS``); the helper forks a child per
connection, which reads one request frame, checks it, switches to the user's uid and gid
(never 0), does the work and answers one reply frame. A frame is a 4-byte big-endian
length and a JSON object; the message of a delivery comes as a file descriptor with the
request (the spool file, read from its position). docs/privsep.md has the protocol.

Checks (a failure is a ``refused`` reply, nothing is done): the uid exists in the passwd
database and neither it nor its group is 0; paths are absolute, normalised, and inside the
user's home directory or ``mail_spool_directory``; no path component below that root is a
symbolic link (each is opened with ``O_PATH | O_NOFOLLOW`` relative to its parent); PAM
logins name an existing account of at least ``first_valid_uid``; sessions are only for a
user whose login and password the child verified itself; TLS files are only those
main.cf (re-read by the helper) names. The writes then happen with the user's own rights,
so a race with the checks gains a user nothing they could not do already.

The helper exits when the daemon's end of the channel closes (the daemon stopped or died).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import json
import logging
import os
import pwd
import re
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final

from roost.config import SERVICES, Settings, load_settings
from roost.daemon.privileges import Account
from roost.daemon.tlscontexts import tls_files
from roost.delivery.aliases import Forward
from roost.delivery.command import CommandEnvironment
from roost.delivery.forward import ForwardLookup
from roost.tls import TLSError, make_server_context

__all__ = [
    "HelperClient",
    "HelperDelivery",
    "HelperError",
    "Refused",
    "check_path",
    "pam_check",
    "serve",
    "start_helper",
    "tls_loader",
]

log = logging.getLogger("roost.privhelper")

#: The largest frame, in bytes (a ``.forward`` reply is at most 1 MiB of text).
MAX_FRAME: Final = 4 * 1024 * 1024
_HEADER: Final = struct.Struct("!I")
_OPS: Final = frozenset({"pam", "maildir", "mbox", "command", "forward", "tls", "session"})
_PAM_SERVICE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class HelperError(Exception):
    """The helper could not be reached, or answered with an error that is not a refusal."""


class Refused(Exception):
    """The helper refused a request (bad uid, a path outside the allowed roots, a symlink)."""


# --- frames ------------------------------------------------------------------------------


def send_frame(sock: socket.socket, obj: Mapping[str, object], fds: Sequence[int] = ()) -> None:
    """Send one frame (length + JSON), with ``fds`` attached to its first byte.

    Raises:
        OSError: the socket failed.
    """
    data = json.dumps(obj, separators=(",", ":")).encode()
    frame = _HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else sock.send(frame)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def recv_frame(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, object], list[int]]:
    """Receive one frame and the descriptors that came with it.

    Raises:
        HelperError: the peer closed the connection early, or the frame is not a JSON
            object of at most :data:`MAX_FRAME` bytes (descriptors are closed then).
        OSError: the socket failed.
    """
    fds: list[int] = []
    buffer = bytearray()
    try:
        while len(buffer) < _HEADER.size or len(buffer) < _HEADER.size + _length(buffer):
            if max_fds and not buffer:
                data, got, _, _ = socket.recv_fds(sock, 65536, max_fds)
                fds.extend(got)
            else:
                data = sock.recv(65536)
            if not data:
                raise HelperError("connection closed in the middle of a frame")
            buffer += data
        size = _length(buffer)
        obj = json.loads(bytes(buffer[_HEADER.size : _HEADER.size + size]))
        if not isinstance(obj, dict):
            raise HelperError("a frame is not a JSON object")
    except (HelperError, ValueError, OSError) as exc:
        for fd in fds:
            os.close(fd)
        if isinstance(exc, ValueError):
            raise HelperError(f"bad frame: {exc}") from None
        raise
    return obj, fds


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes. Raises HelperError at an early end of stream."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise HelperError("connection closed in the middle of a frame")
        data += chunk
    return bytes(data)


def _length(buffer: bytearray) -> int:
    if len(buffer) < _HEADER.size:
        return 0
    (size,) = _HEADER.unpack_from(buffer)
    if size > MAX_FRAME:
        raise HelperError(f"frame of {size} bytes is larger than {MAX_FRAME}")
    return int(size)


# --- the client (in the daemon, as mail_owner) ---------------------------------------------


class HelperClient:
    """The daemon's side of the channel; thread-safe, blocking (call it from worker threads).

    Args:
        channel: the daemon's end of the ``SOCK_SEQPACKET`` pair.
        process: the helper process (for :meth:`close`), if this object started it.
    """

    def __init__(
        self, channel: socket.socket, process: subprocess.Popen[bytes] | None = None
    ) -> None:
        self._channel = channel
        self._process = process
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The helper's process id."""
        return None if self._process is None else self._process.pid

    def call(
        self,
        request: Mapping[str, object],
        fds: Sequence[int] = (),
        timeout: float | None = 120.0,
    ) -> dict[str, object]:
        """Send one request and return the helper's ``ok`` reply.

        Args:
            request: the JSON request (``op`` and its fields, docs/privsep.md).
            fds: descriptors to pass (the message of a delivery).
            timeout: seconds to wait for the reply (None: no limit).

        Raises:
            Refused: the helper refused the request.
            roost.delivery.errors.DeliveryError: a delivery failed (the helper's reply
                carries its status and text).
            HelperError: the helper is gone or answered nonsense.
        """
        try:
            with self._connect(request, fds, timeout) as mine:
                reply, extra = recv_frame(mine)
        except OSError as exc:
            raise HelperError(f"privileged helper: {exc}") from None
        for fd in extra:
            os.close(fd)
        if reply.get("ok") is True:
            return reply
        kind, text = reply.get("kind"), str(reply.get("text", "?"))
        if kind == "refused":
            raise Refused(text)
        if kind == "delivery":
            from roost.delivery.errors import DeliveryError

            raise DeliveryError(bool(reply.get("temporary")), str(reply.get("dsn")), text)
        raise HelperError(f"privileged helper: {text}")

    def open_session(
        self, request: Mapping[str, object], fds: Sequence[int], timeout: float = 60.0
    ) -> tuple[dict[str, object], socket.socket]:
        """Send a ``session`` request; return the reply and the connection, kept open.

        The helper's child answers one frame, then the connection carries JSON lines
        between the session's process and the caller (:mod:`roost.daemon.handoff`).
        The reply is read to its last byte and no further, so nothing of what follows is
        lost. A reply that is not ``ok`` closes the connection (the caller reads its
        ``kind`` and ``text``).

        Raises:
            HelperError: the helper is gone or answered nonsense.
        """
        mine: socket.socket | None = None
        try:
            mine = self._connect(request, fds, timeout)
            header = _recv_exactly(mine, _HEADER.size)
            (size,) = _HEADER.unpack(header)
            if size > MAX_FRAME:
                raise HelperError(f"frame of {size} bytes is larger than {MAX_FRAME}")
            reply = json.loads(_recv_exactly(mine, size))
            if not isinstance(reply, dict):
                raise HelperError("a frame is not a JSON object")
        except (OSError, ValueError) as exc:
            if mine is not None:
                mine.close()
            raise HelperError(f"privileged helper: {exc}") from None
        except BaseException:
            if mine is not None:
                mine.close()
            raise
        if reply.get("ok") is not True:
            mine.close()
        return reply, mine

    def _connect(
        self, request: Mapping[str, object], fds: Sequence[int], timeout: float | None
    ) -> socket.socket:
        """Open a connection of its own to the helper (which forks a child for it) and
        send ``request`` on it, with ``fds``; the connection, for the reply.

        Raises:
            OSError: the helper is gone, or the request could not be sent.
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                socket.send_fds(self._channel, [b"R"], [theirs.fileno()])
            theirs.close()
            mine.settimeout(timeout)
            send_frame(mine, request, fds)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return mine

    def close(self) -> None:
        """Close the channel (the helper exits) and reap the helper."""
        self._channel.close()
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


class HelperDelivery:
    """A :class:`roost.delivery.privileged.SystemDelivery` through the helper.

    A refusal or a helper that cannot be reached is a temporary failure (4.3.0): the mail
    stays queued and the log says why.
    """

    def __init__(self, client: HelperClient) -> None:
        self._client = client

    def _call(
        self, request: dict[str, object], message: BinaryIO | None, timeout: float
    ) -> dict[str, object]:
        from roost.delivery.errors import DeliveryError

        fds = [message.fileno()] if message is not None else []
        try:
            return self._client.call(request, fds, timeout=timeout)
        except (Refused, HelperError) as exc:
            raise DeliveryError(True, "4.3.0", f"privileged helper: {exc}") from None

    def maildir(
        self,
        path: Path,
        message: BinaryIO,
        *,
        uid: int,
        prepend: bytes,
        folder: str | None,
        quota_bytes: int,
        size_limit: int,
        autocreate_folder: bool,
        hostname: str,
    ) -> Path:
        """Deliver into a Maildir as ``uid``; return the file written."""
        reply = self._call(
            {
                "op": "maildir",
                "uid": uid,
                "path": str(path),
                "prepend": base64.b64encode(prepend).decode(),
                "folder": folder,
                "quota_bytes": quota_bytes,
                "size_limit": size_limit,
                "autocreate_folder": autocreate_folder,
                "hostname": hostname,
            },
            message,
            120.0,
        )
        return Path(str(reply["written"]))

    def mbox(
        self,
        path: Path,
        message: BinaryIO,
        *,
        uid: int,
        envelope_sender: str,
        prepend: bytes,
        lock_timeout: float,
        lock_delay: float,
        stale_lock_time: float,
        locks: Sequence[str],
        size_limit: int,
        arrival_time: float | None,
    ) -> None:
        """Append to an mbox file as ``uid``."""
        self._call(
            {
                "op": "mbox",
                "uid": uid,
                "path": str(path),
                "envelope_sender": envelope_sender,
                "prepend": base64.b64encode(prepend).decode(),
                "lock_timeout": lock_timeout,
                "lock_delay": lock_delay,
                "stale_lock_time": stale_lock_time,
                "locks": list(locks),
                "size_limit": size_limit,
                "arrival_time": arrival_time,
            },
            message,
            lock_timeout + 120.0,
        )

    def command(
        self,
        command: str,
        message: BinaryIO,
        *,
        uid: int,
        environment: CommandEnvironment,
        prepend: bytes,
        time_limit: float,
    ) -> None:
        """Run a ``|command`` delivery as ``uid``."""
        fields: dict[str, object] = {
            name: getattr(environment, name)
            for name in CommandEnvironment.__dataclass_fields__
            if name != "extra"
        }
        fields["extra"] = [list(pair) for pair in environment.extra]
        self._call(
            {
                "op": "command",
                "uid": uid,
                "command": command,
                "environment": fields,
                "prepend": base64.b64encode(prepend).decode(),
                "time_limit": time_limit,
            },
            message,
            time_limit + 120.0,
        )

    def forward(self, paths: Sequence[tuple[Path, bool]], *, uid: int) -> ForwardLookup:
        """Find and read ``uid``'s ``.forward`` with its rights."""
        reply = self._call(
            {"op": "forward", "uid": uid, "paths": [[str(p), e] for p, e in paths]}, None, 60.0
        )
        found = reply.get("forward")
        warnings = tuple(str(w) for w in reply.get("warnings") or [])  # type: ignore[attr-defined]
        if not isinstance(found, dict):
            return ForwardLookup(None, warnings)
        forward = Forward(
            str(found["path"]),
            tuple(str(t) for t in found["targets"]),
            bool(found["extension_matched"]),
        )
        return ForwardLookup(forward, warnings)


def pam_check(client: HelperClient) -> Callable[[str, str, str], tuple[bool, int, str]]:
    """A PAM checker for :class:`roost.auth.pam.PamBackend` that asks the helper.

    The function takes (service, user, password) and returns (accepted, PAM code, reason);
    a refusal is PAM_USER_UNKNOWN (10); an unreachable helper raises :class:`HelperError`.
    """

    def check(service: str, user: str, password: str) -> tuple[bool, int, str]:
        try:
            reply = client.call(
                {"op": "pam", "service": service, "user": user, "password": password}
            )
        except Refused as exc:
            return False, 10, str(exc)
        return bool(reply["accepted"]), int(str(reply["code"])), str(reply["reason"])

    return check


def tls_loader(client: HelperClient) -> Callable[[Path, Path, str], ssl.SSLContext]:
    """A server-context builder that reads the certificate and key through the helper.

    The files' bytes go into anonymous memory files (``memfd_create``) that
    :func:`roost.tls.make_server_context` loads as ``/proc/self/fd/N``; nothing is written
    to disk and the key never has to be readable by ``mail_owner``.
    """

    def load(cert: Path, key: Path, min_version: str) -> ssl.SSLContext:
        try:
            reply = client.call({"op": "tls", "paths": sorted({str(cert), str(key)})})
        except (Refused, HelperError) as exc:
            raise TLSError(key, f"cannot read through the privileged helper: {exc}") from None
        files = reply["files"]
        assert isinstance(files, dict)
        fds: dict[Path, int] = {}
        try:
            for path in (cert, key):
                if path not in fds:
                    fd = os.memfd_create(f"roost-tls-{path.name}", os.MFD_CLOEXEC)
                    fds[path] = fd
                    os.write(fd, base64.b64decode(files[str(path)]))
            proc = {path: Path(f"/proc/self/fd/{fd}") for path, fd in fds.items()}
            try:
                return make_server_context(proc[cert], proc[key], min_version=min_version)
            except TLSError as exc:
                original = cert if exc.path == proc[cert] else key
                raise TLSError(original, exc.problem.replace(str(proc[cert]), str(cert))) from None
        finally:
            for fd in fds.values():
                os.close(fd)

    return load


def start_helper(config: Path) -> HelperClient:
    """Start the helper as a child process (call it as root, before dropping privileges).

    Args:
        config: the main.cf the helper reads (``mail_spool_directory``,
            ``first_valid_uid``, the TLS files).

    Raises:
        OSError: the process cannot be started.
    """
    ours, helpers = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roost.daemon.privhelper",
                "--fd",
                str(helpers.fileno()),
                "--config",
                str(config),
            ],
            pass_fds=[helpers.fileno()],
            stdin=subprocess.DEVNULL,
            # the helper imports the same roost as the daemon, however that was started
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            close_fds=True,
        )
    except OSError:
        ours.close()
        raise
    finally:
        helpers.close()
    ours.set_inheritable(False)
    return HelperClient(ours, process)


# --- checks (in the helper, as root) -------------------------------------------------------


def account_of(uid: object) -> Account:
    """The passwd entry of ``uid``.

    Raises:
        Refused: not an int, unknown, or uid or primary gid 0.
    """
    if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
        raise Refused(f"bad uid {uid!r}")
    if uid == 0:
        raise Refused("refusing to act as uid 0")
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise Refused(f"uid {uid} is not in the passwd database") from None
    if entry.pw_gid == 0:
        raise Refused(f"refusing to act as user {entry.pw_name}: primary group 0")
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _roots(account: Account, spool: str) -> list[str]:
    roots = []
    for root in (account.home, spool):
        if root.startswith("/") and os.path.normpath(root) != "/":
            roots.append(os.path.normpath(root))
    return roots


def check_path(path: object, roots: Sequence[str]) -> tuple[str, str]:
    """Check that ``path`` lies under one of ``roots`` without a symbolic link below it.

    The root itself is opened following links (the administrator's choice, e.g. /home on
    another disk); every existing component below it is opened with ``O_PATH |
    O_NOFOLLOW`` relative to its parent, and a symbolic link is refused. Components that
    do not exist yet are fine: the delivery creates them with the user's rights.

    Args:
        path: the requested absolute path (a trailing slash is allowed).
        roots: absolute, normalised directories (the user's home, the mail spool).

    Returns:
        (the normalised path, the root it is under).

    Raises:
        Refused: not an absolute normalised path, outside every root, or a link below it.
    """
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise Refused(f"bad path {path!r}")
    normal = os.path.normpath(path)
    if normal != path.rstrip("/") or "/../" in f"{path}/" or "/./" in f"{path}/":
        raise Refused(f"path {path!r} is not normalised")
    root = next((r for r in roots if normal.startswith(r + "/")), None)
    if root is None:
        raise Refused(f"path {normal} is outside the user's home and the mail spool")
    parts = normal[len(root) + 1 :].split("/")
    try:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"cannot open {root}: {exc.strerror}") from None
    try:
        for part in parts:
            try:
                child = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                break
            except NotADirectoryError:
                raise Refused(f"{normal}: a component is not a directory") from None
            os.close(fd)
            fd = child
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise Refused(f"{normal}: {part} is a symbolic link")
    finally:
        os.close(fd)
    return normal, root


def become(account: Account, extra_groups: Sequence[int] = ()) -> None:
    """Switch this (child) process to ``account`` for good: groups, gid, then uid."""
    groups = sorted(set(os.getgrouplist(account.name, account.gid)) | set(extra_groups))
    if 0 in groups:
        groups.remove(0)
    os.setgroups(groups)
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    if os.geteuid() == 0 or os.getegid() == 0:  # pragma: no cover - the kernel said yes
        raise Refused("could not drop root")
    os.umask(0o077)
    os.chdir("/")


# --- the server (the helper process) -------------------------------------------------------


class _Handler:
    """One request in a forked child of the helper."""

    def __init__(self, settings: Settings, config: Path) -> None:
        self.settings = settings
        self.config = config
        self.spool = os.path.normpath(settings.string("mail_spool_directory"))

    def handle(self, request: Mapping[str, object], fds: list[int]) -> dict[str, object]:
        op = request.get("op")
        if op not in _OPS:
            raise Refused(f"unknown operation {op!r}")
        if op in ("maildir", "mbox", "command") and len(fds) != 1:
            raise Refused(f"{op} needs the message as one descriptor")
        if op not in ("maildir", "mbox", "command") and fds:
            raise Refused(f"{op} takes no descriptor")
        if op == "pam":
            return self.pam(request)
        if op == "tls":
            return self.tls(request)
        account = account_of(request.get("uid"))
        if op == "forward":
            return self.forward(request, account)
        message = os.fdopen(fds[0], "rb", closefd=True)
        if op == "command":
            return self.command(request, account, message)
        path, root = check_path(request.get("path"), _roots(account, self.spool))
        extra: list[int] = []
        if root == self.spool:  # /var/mail is root:mail 2775 on Debian: join its group
            info = os.stat(root)
            if info.st_mode & stat.S_IWGRP and info.st_gid != 0:
                extra.append(info.st_gid)
        become(account, extra)
        if op == "maildir":
            return self.maildir(request, Path(path), message)
        return self.mbox(request, Path(path), message)

    def pam(self, request: Mapping[str, object]) -> dict[str, object]:
        import pam

        service, user, password = (request.get(k) for k in ("service", "user", "password"))
        if not isinstance(service, str) or not _PAM_SERVICE.fullmatch(service):
            raise Refused(f"bad PAM service {service!r}")
        if not isinstance(user, str) or not isinstance(password, str):
            raise Refused("user and password must be strings")
        if not password or "\x00" in password or "\x00" in user:
            raise Refused("empty password or NUL")
        try:
            entry = pwd.getpwnam(user)
        except (KeyError, ValueError):
            raise Refused(f"{user!r} is not a system account") from None
        if entry.pw_uid < self.settings.integer("first_valid_uid"):
            raise Refused(f"{user!r} is below first_valid_uid")
        authenticator = pam.PamAuthenticator()
        accepted = authenticator.authenticate(
            user, password, service=service, resetcreds=False, encoding="utf-8"
        )
        reason = authenticator.reason
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        return {
            "ok": True,
            "accepted": bool(accepted),
            "code": int(authenticator.code),
            "reason": text,
        }

    def tls(self, request: Mapping[str, object]) -> dict[str, object]:
        info = os.stat(self.config)
        if info.st_uid != 0 or info.st_mode & 0o022:  # mail_owner must not name the files
            raise Refused(f"{self.config} is writable by a user other than root: not trusted")
        settings, _ = load_settings(self.config)  # the configuration as of this reload
        allowed = {str(settings.path_of("tls_cert_file")), str(settings.path_of("tls_key_file"))}
        for service in SERVICES:
            allowed.update(str(p) for p in tls_files(settings, service))
        paths = request.get("paths")
        if not isinstance(paths, list) or not paths:
            raise Refused("tls needs a list of paths")
        files: dict[str, str] = {}
        for path in paths:
            if path not in allowed:
                raise Refused(f"{path!r} is not a TLS file named in main.cf")
            try:
                files[path] = base64.b64encode(Path(path).read_bytes()).decode()
            except OSError as exc:
                return {"ok": False, "kind": "error", "text": f"{path}: {exc.strerror}"}
        return {"ok": True, "files": files}

    def forward(self, request: Mapping[str, object], account: Account) -> dict[str, object]:
        from roost.delivery.forward import find_forward

        entries = request.get("paths")
        if not isinstance(entries, list):
            raise Refused("forward needs a list of [path, uses_extension]")
        roots = _roots(account, "")
        checked: list[tuple[Path, bool]] = []
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise Refused("forward needs a list of [path, uses_extension]")
            path, _ = check_path(entry[0], roots)
            checked.append((Path(path), bool(entry[1])))
        become(account)
        found = find_forward(checked, uid=account.uid, home=Path(account.home))
        forward = found.forward
        return {
            "ok": True,
            "forward": None
            if forward is None
            else {
                "path": forward.path,
                "targets": list(forward.targets),
                "extension_matched": forward.extension_matched,
            },
            "warnings": list(found.warnings),
        }

    def maildir(
        self, request: Mapping[str, object], path: Path, message: object
    ) -> dict[str, object]:
        from roost.delivery.maildir import deliver_maildir

        folder = _opt_str(request, "folder")
        if folder is not None and not request.get("autocreate_folder"):
            folder = folder if (path / f".{folder}").is_dir() else None
        written = deliver_maildir(
            path,
            message,  # type: ignore[arg-type]
            prepend=_bytes(request, "prepend"),
            folder=folder,
            quota_bytes=_int(request, "quota_bytes"),
            size_limit=_int(request, "size_limit"),
            autocreate_folder=bool(request.get("autocreate_folder")),
            hostname=_opt_str(request, "hostname"),
        )
        return {"ok": True, "written": str(written)}

    def mbox(self, request: Mapping[str, object], path: Path, message: object) -> dict[str, object]:
        from roost.delivery.mbox import LOCK_TYPES, deliver_mbox

        locks = request.get("locks", ["fcntl", "dotlock"])
        if not isinstance(locks, list) or not set(locks) <= LOCK_TYPES:
            raise Refused(f"bad locks {locks!r}")
        arrival = request.get("arrival_time")
        written = deliver_mbox(
            path,
            message,  # type: ignore[arg-type]
            envelope_sender=str(request.get("envelope_sender", "")),
            prepend=_bytes(request, "prepend"),
            lock_timeout=_float(request, "lock_timeout", 20.0),
            lock_delay=_float(request, "lock_delay", 1.0),
            stale_lock_time=_float(request, "stale_lock_time", 500.0),
            locks=locks,
            size_limit=_int(request, "size_limit"),
            arrival_time=float(arrival) if isinstance(arrival, (int, float)) else None,
        )
        return {"ok": True, "written": written}

    def command(
        self, request: Mapping[str, object], account: Account, message: object
    ) -> dict[str, object]:
        from roost.delivery.command import CommandEnvironment, deliver_command

        command = request.get("command")
        if not isinstance(command, str) or not command or "\x00" in command:
            raise Refused("bad command")
        if not self.command_listed(command, account):
            raise Refused(
                f"command {command!r} is in no alias file and no .forward of {account.name}"
            )
        env = request.get("environment")
        if not isinstance(env, dict) or not all(
            isinstance(v, str) for k, v in env.items() if k != "extra"
        ):
            raise Refused("bad environment")
        extra = tuple((str(k), str(v)) for k, v in env.get("extra", []))
        fields = {k: v for k, v in env.items() if k != "extra"}
        try:
            environment = CommandEnvironment(**fields, extra=extra)
        except TypeError as exc:
            raise Refused(f"bad environment: {exc}") from None
        become(account)
        result = asyncio.run(
            deliver_command(
                command,
                message,  # type: ignore[arg-type]
                environment=environment,
                prepend=_bytes(request, "prepend"),
                time_limit=_float(request, "time_limit", 1000.0),
            )
        )
        return {"ok": True, "output": result.output}

    def command_listed(self, command: str, account: Account) -> bool:
        """Whether ``command`` is written in a file that may ask for it: an ``alias_maps``
        file (or an ``:include:`` file it names), or ``account``'s own ``~/.forward*``.

        A daemon taken over cannot run commands of its choosing as a user this way. Alias
        maps that are not files (``ldap:``) cannot be searched: with one of those, any
        command is allowed for ``default_privs`` (logged).
        """
        settings, _ = load_settings(self.config)
        texts: list[str] = []
        unsearchable = False
        for ref in settings.tables("alias_maps"):
            name = ref.partition(":")[2]
            if not name.startswith("/"):
                unsearchable = True
                continue
            text = _read_owned(Path(name), None)
            texts.append(text)
            for include in re.findall(r":include:\s*(/[^\s,]+)", text):
                texts.append(_read_owned(Path(include), None))
        if account.home.startswith("/") and os.path.normpath(account.home) != "/":
            try:
                names = os.listdir(account.home)
            except OSError:
                names = []
            for name in names:
                if name.startswith(".forward"):
                    texts.append(_read_owned(Path(account.home) / name, account.uid))
        if any(command in text for text in texts):
            return True
        if unsearchable and account.name == settings.string("default_privs"):
            log.warning("command %r allowed unchecked: alias_maps has non-file maps", command)
            return True
        return False


def _read_owned(path: Path, uid: int | None) -> str:
    """The text of a regular file (not a link) owned by root or ``uid``; "" otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid not in (0, uid):
            return ""
        return handle.read(4 * 1024 * 1024).decode("utf-8", "replace")


def _int(request: Mapping[str, object], key: str) -> int:
    value = request.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Refused(f"bad {key} {value!r}")
    return value


def _float(request: Mapping[str, object], key: str, default: float) -> float:
    value = request.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise Refused(f"bad {key} {value!r}")
    return float(value)


def _opt_str(request: Mapping[str, object], key: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise Refused(f"bad {key} {value!r}")
    return value


def _bytes(request: Mapping[str, object], key: str) -> bytes:
    value = request.get(key, "")
    if not isinstance(value, str):
        raise Refused(f"bad {key}")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise Refused(f"bad {key}: not base64") from None


def _answer(conn: socket.socket, handler: _Handler) -> None:
    """Read one request from ``conn``, do it, and answer (in a forked child)."""
    from roost.delivery.errors import DeliveryError

    conn.settimeout(60)
    try:
        request, fds = recv_frame(conn, max_fds=4)
    except (HelperError, OSError) as exc:
        log.warning("bad request: %s", exc)
        return
    if request.get("op") == "session":  # answers, then serves the session as the user
        from roost.daemon.handoff import serve_session

        serve_session(handler.settings, handler.config, request, fds, conn)
        return
    reply: dict[str, object]
    try:
        reply = handler.handle(request, fds)
    except Refused as exc:
        log.warning("refused %s request: %s", request.get("op"), exc)
        reply = {"ok": False, "kind": "refused", "text": str(exc)}
    except DeliveryError as exc:
        reply = {
            "ok": False,
            "kind": "delivery",
            "temporary": exc.temporary,
            "dsn": exc.dsn,
            "text": exc.text,
        }
    except Exception as exc:  # answer whatever happened; the daemon defers
        log.exception("%s request failed", request.get("op"))
        reply = {"ok": False, "kind": "error", "text": f"{type(exc).__name__}: {exc}"}
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
    conn.settimeout(None)
    send_frame(conn, reply)


def _reap(signum: int, frame: object) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _preload() -> None:
    """Import now what the children use after switching users: the interpreter's files
    may be where those users cannot read (a Python under /root, a venv under /opt)."""
    import asyncio.subprocess  # noqa: F401
    import concurrent.futures.thread  # noqa: F401

    import pam  # noqa: F401

    import roost.delivery.command
    import roost.delivery.forward
    import roost.delivery.maildir
    import roost.delivery.mbox  # noqa: F401


def _preload_sessions(settings: Settings) -> None:
    """With ``mail_process_per_user``, import the IMAP and POP3 session code once, so
    that each session's child starts from it (see :mod:`roost.daemon.handoff`)."""
    if settings.boolean("mail_process_per_user"):
        from roost.daemon.handoff import preload

        preload()


def serve(channel: socket.socket, config: Path) -> int:
    """The helper's main loop: one forked child per connection received on ``channel``.

    Returns:
        0 when the daemon closed its end of the channel.
    """
    if os.geteuid() != 0:
        log.error("the privileged helper must run as root")
        return 1
    settings, _ = load_settings(config)
    handler = _Handler(settings, config)
    _preload()
    _preload_sessions(settings)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon's Ctrl-C is the daemon's
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(channel, 16, 1)
        except OSError as exc:
            log.error("channel: %s", exc)
            return 1
        if not data and not fds:
            return 0
        if not fds:
            continue
        conn = socket.socket(fileno=fds[0])
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                channel.close()
                _answer(conn, handler)
            except BaseException:
                log.exception("helper child failed")
                status = 1
            finally:
                os._exit(status)
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m roost.daemon.privhelper --fd N --config MAIN_CF`` (started by the daemon)."""
    parser = argparse.ArgumentParser(prog="roost-privhelper")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="roost/privhelper[%(process)d]: %(levelname)s: %(message)s"
    )
    channel = socket.socket(fileno=args.fd)
    try:
        return serve(channel, args.config)
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main())

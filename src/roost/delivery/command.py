"""``|command`` deliveries: pipe the message into ``/bin/sh -c command``.

As Postfix local(8) "EXTERNAL COMMAND DELIVERY": the command gets the message on standard
input with LF line endings (a ``From_`` line and the delivery headers first), a clean
environment (:class:`CommandEnvironment`), the recipient's (or ``default_privs``') uid and
gid, and ``command_time_limit`` seconds. Its exit status decides the outcome like
Postfix's ``pipe_command()``:

============================  =========  =============================================
exit                          result     status
============================  =========  =============================================
0                             delivered  (a command that does not read all its input
                                         and exits 0 has still taken the message)
64-78 (sysexits.h)            per table  EX_TEMPFAIL 75, EX_OSERR 71: defer (4.3.0);
                                         others bounce (EX_NOUSER 67: 5.1.1, EX_NOPERM
                                         77: 5.7.0, EX_CONFIG 78: 5.3.5, ...: 5.x.x)
any other status              bounce     5.3.0 "Command died with status N"
killed by a signal            defer      4.3.0 "Command died with signal N"
over the time limit           bounce     5.3.0 "Command time limit exceeded" (the whole
                                         process group is killed)
cannot start, write error     defer      4.3.0
============================  =========  =============================================

The reason text ends with the tail of the command's output (standard output and error),
as Postfix's "Command output:".

See Also: Postfix local(8), pipe(8) and ``sys_exits.c``; postconf(5)
``command_time_limit``, ``default_privs``, ``allow_mail_to_commands``; sysexits.h.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from roost.delivery._stream import (
    CHUNK_BYTES,
    MessageReadError,
    MessageSource,
    UnixConverter,
)
from roost.delivery.errors import DeliveryError
from roost.delivery.headers import from_line

__all__ = [
    "DEFAULT_PATH",
    "CommandEnvironment",
    "CommandResult",
    "deliver_command",
    "exit_status_error",
]

#: ``PATH`` for commands (Postfix: ``_PATH_DEFPATH``).
DEFAULT_PATH: Final = "/usr/bin:/bin"
#: Environment variables passed through from roost's own (Postfix ``export_environment``).
EXPORTED: Final = ("TZ", "LANG")
#: Output bytes kept for the reason text.
OUTPUT_TAIL_BYTES: Final = 1024

# sysexits.h: status -> (RFC 3463 status, text), Postfix's sys_exits table.
_SYSEXITS: Final[dict[int, tuple[str, str]]] = {
    64: ("5.3.0", "command line usage error"),
    65: ("5.6.0", "data format error"),
    66: ("5.3.0", "cannot open input"),
    67: ("5.1.1", "user unknown"),
    68: ("5.1.2", "host name unknown"),
    69: ("5.3.0", "service unavailable"),
    70: ("5.3.0", "internal software error"),
    71: ("4.3.0", "system resource problem"),
    72: ("5.3.0", "critical OS file missing"),
    73: ("5.2.0", "can't create user output file"),
    74: ("5.3.0", "input/output error"),
    75: ("4.3.0", "temporary failure"),
    76: ("5.5.0", "remote error in protocol"),
    77: ("5.7.0", "permission denied"),
    78: ("5.3.5", "local configuration error"),
}


@dataclass(frozen=True, slots=True)
class CommandEnvironment:
    """The environment of a command, as Postfix local(8) sets it.

    Attributes:
        sender: ``SENDER``, the envelope sender (``""`` for the null path).
        recipient: ``RECIPIENT``, the full address delivered to (``alice+x@example.com``).
        original_recipient: ``ORIGINAL_RECIPIENT``, the recipient before aliases and
            ``.forward``.
        local: ``LOCAL``, the recipient's local part (with the extension).
        extension: ``EXTENSION``, the address extension (``""``: none).
        domain: ``DOMAIN``, the recipient's domain.
        user: ``USER`` and ``LOGNAME``, the account the command runs as.
        home: ``HOME``, that account's home directory.
        shell: ``SHELL``, that account's shell.
        extra: more ``(NAME, value)`` pairs (``ENVID``, ``CLIENT_ADDRESS``...).
    """

    sender: str
    recipient: str
    original_recipient: str
    local: str
    extension: str
    domain: str
    user: str
    home: str
    shell: str = "/bin/sh"
    extra: tuple[tuple[str, str], ...] = ()

    def variables(self) -> dict[str, str]:
        """Return the whole environment: the fields, ``PATH``, and ``TZ``/``LANG``."""
        env = {name: os.environ[name] for name in EXPORTED if name in os.environ}
        env.update(
            {
                "PATH": DEFAULT_PATH,
                "SENDER": self.sender,
                "RECIPIENT": self.recipient,
                "ORIGINAL_RECIPIENT": self.original_recipient,
                "LOCAL": self.local,
                "EXTENSION": self.extension,
                "DOMAIN": self.domain,
                "USER": self.user,
                "LOGNAME": self.user,
                "HOME": self.home,
                "SHELL": self.shell,
            }
        )
        env.update(self.extra)
        for name, value in env.items():
            if "\x00" in name or "=" in name or "\x00" in value:
                raise ValueError(f"bad environment variable {name!r}")
        return env


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A command that took the message.

    Attributes:
        exit_status: always 0.
        output: the tail of its output, cleaned to one line (for the log).
    """

    exit_status: int
    output: str


def _clean(output: bytes) -> str:
    text = output.decode("utf-8", "replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def exit_status_error(returncode: int, command: str, output: str) -> DeliveryError | None:
    """Map a command's exit to Postfix's outcome (see the module table).

    Args:
        returncode: ``Process.returncode``: the exit status, or minus the signal number.
        command: the command, for the reason text.
        output: the tail of its output (cleaned), possibly empty.

    Returns:
        None for success, else the error to report.
    """
    tail = f". Command output: {output}" if output else ""
    if returncode == 0:
        return None
    if returncode < 0:
        return DeliveryError(
            True, "4.3.0", f'Command died with signal {-returncode}: "{command}"{tail}'
        )
    if returncode in _SYSEXITS:
        dsn, text = _SYSEXITS[returncode]
        return DeliveryError(dsn[0] == "4", dsn, f"{text}{tail}")
    text = f'Command died with status {returncode}: "{command}"{tail}'
    return DeliveryError(False, "5.3.0", text)


async def _feed(
    stdin: asyncio.StreamWriter,
    message: MessageSource,
    head: bytes,
) -> None:
    """Write the message into the command; a command that stops reading is not an error."""
    converter = UnixConverter()
    try:
        stdin.write(head)
        if isinstance(message, bytes | bytearray | memoryview):
            view = memoryview(message)
            for start in range(0, len(view), CHUNK_BYTES):
                stdin.write(converter.feed(bytes(view[start : start + CHUNK_BYTES])))
                await stdin.drain()
        else:
            while True:
                try:
                    chunk = await asyncio.to_thread(message.read, CHUNK_BYTES)
                except OSError as exc:
                    raise MessageReadError(exc.strerror or str(exc)) from exc
                if not chunk:
                    break
                stdin.write(converter.feed(chunk))
                await stdin.drain()
        stdin.write(converter.finish())
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # EPIPE: Postfix accepts it; the exit status decides
    except RuntimeError:
        if not stdin.is_closing():  # uvloop reports a write after EPIPE this way
            raise
    finally:
        stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            await stdin.wait_closed()


async def _collect(stdout: asyncio.StreamReader, kept: bytearray, limit: int) -> None:
    """Read all output into ``kept``, keeping only its last ``limit`` bytes."""
    while chunk := await stdout.read(CHUNK_BYTES):
        kept += chunk
        if len(kept) > limit:
            del kept[: len(kept) - limit]


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _child_setup(uid: int | None, gid: int | None, groups: list[int] | None) -> Callable[[], None]:
    """Return the function the child runs before exec: umask 077, then drop to uid/gid."""

    def setup() -> None:
        os.umask(0o077)
        if gid is not None:
            os.setgid(gid)
            os.setgroups(groups or [])
        if uid is not None:
            os.setuid(uid)

    return setup


async def deliver_command(
    command: str,
    message: MessageSource,
    *,
    environment: CommandEnvironment,
    prepend: bytes = b"",
    uid: int | None = None,
    gid: int | None = None,
    time_limit: float = 1000.0,
    cwd: Path | None = None,
    from_line_time: float | None = None,
    output_limit: int = OUTPUT_TAIL_BYTES,
) -> CommandResult:
    """Run ``/bin/sh -c command`` with the message on its standard input.

    Standard input gets, with LF line endings: ``From sender date``, ``prepend`` (the
    delivery headers, :func:`roost.delivery.headers.delivery_headers`) and the message.

    Args:
        command: the shell command (what follows ``|`` in the alias or ``.forward``).
        message: the message (CRLF line endings, as spooled): an open binary file (read
            from its position, in a worker thread) or bytes.
        environment: the command's environment variables.
        prepend: header lines to put first, CRLF endings.
        uid, gid: the account to run as. Used only when roost runs as root (then both are
            required, and neither may be 0: pass ``default_privs``' ids instead); the
            supplementary groups are cleared. Ignored otherwise (the command runs as
            roost's own user).
        time_limit: seconds before the command's process group is killed
            (``command_time_limit``).
        cwd: the working directory (None: ``/``; Postfix ``command_execution_directory``).
        from_line_time: the ``From_`` line's time (None: now).
        output_limit: the bytes of output kept for the reason text.

    Returns:
        The exit status (0) and the output tail.

    Raises:
        DeliveryError: the exit status or signal says so, the time limit passed, the
            command could not be started (4.3.0), or the message could not be read
            (4.3.0). See the module table.
        ValueError: running as root without a non-root uid and gid, or a bad environment.
    """
    env = environment.variables()
    head = from_line(environment.sender, from_line_time) + UnixConverter().feed(prepend)
    run_uid: int | None = None
    run_gid: int | None = None
    run_groups: list[int] | None = None
    if os.geteuid() == 0:
        if uid is None or gid is None or uid == 0 or gid == 0:
            raise ValueError("running as root: commands need a non-root uid and gid")
        run_uid, run_gid, run_groups = uid, gid, []
    try:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=str(cwd) if cwd is not None else "/",
            start_new_session=True,
            close_fds=True,
            # preexec_fn rather than user=/group=/umask=: uvloop supports only this form
            preexec_fn=_child_setup(run_uid, run_gid, run_groups),
        )
    except OSError as exc:
        raise DeliveryError(
            True, "4.3.0", f'cannot run command "{command}": {exc.strerror or exc}'
        ) from exc
    assert process.stdin is not None and process.stdout is not None
    kept = bytearray()
    feeder = asyncio.create_task(_feed(process.stdin, message, head))
    collector = asyncio.create_task(_collect(process.stdout, kept, output_limit))
    waiter = asyncio.create_task(process.wait())
    tasks = (feeder, collector, waiter)
    try:
        _, pending = await asyncio.wait(
            tasks, timeout=time_limit, return_when=asyncio.FIRST_EXCEPTION
        )
        failed = feeder.exception() if feeder.done() and not feeder.cancelled() else None
        if failed is not None:
            raise failed
        if pending:
            _kill_group(process)
            await waiter
            feeder.cancel()
            # The group is dead, so its output ends: keep what it wrote for the reason.
            await asyncio.wait([collector], timeout=5)
            tail = _clean(bytes(kept))
            text = f'Command time limit exceeded: "{command}"'
            raise DeliveryError(False, "5.3.0", f"{text}. Command output: {tail}" if tail else text)
        collector.result()
    except MessageReadError as exc:
        raise DeliveryError(True, "4.3.0", f"error reading message: {exc}") from exc
    except OSError as exc:
        text = f'Command failed: {exc.strerror or exc}: "{command}"'
        raise DeliveryError(True, "4.3.0", text) from exc
    finally:
        if not waiter.done():
            _kill_group(process)
            with contextlib.suppress(BaseException):
                await asyncio.shield(waiter)
        for task in tasks:
            task.cancel()
    tail = _clean(bytes(kept))
    error = exit_status_error(process.returncode or 0, command, tail)
    if error is not None:
        raise error
    return CommandResult(0, tail)

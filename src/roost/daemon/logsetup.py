"""Logging like Postfix: one line per event, ``roost/smtpd[PID]: message``.

Every module logs through a logger under ``roost``; the part after ``roost.`` becomes the
program name after ``syslog_name`` (logger ``roost.smtpd`` logs as ``roost/smtpd``, logger
``roost`` itself as ``roost/master``), so grep habits, pflogsumm and fail2ban filters
written for Postfix keep working. Warnings, errors and critical events get Postfix's
``warning:``, ``error:`` and ``fatal:`` prefixes.

Lines go to syslog (``/dev/log``, read by journald or rsyslog), to ``maillog_file``, or to
stderr in the foreground. Parameters: ``syslog_name``, ``syslog_facility``,
``maillog_file`` (Postfix >= 3.4).

The event loop only queues each record (a ``QueueHandler``: the message's ``%`` arguments
are merged at once, nothing else; :func:`log_info` queues a finished line's record itself,
with less work); one thread formats the lines and writes them, so a
slow ``write`` to a busy disk never holds up the sessions. Once the thread has written
what was queued it sleeps :data:`WRITER_PAUSE` before it waits for more, so the records of
a busy stream gather meanwhile and queueing one wakes no thread (a wake-up per record was
an eighth of an SMTP worker's Python time); a crash loses at most the lines of the last
few milliseconds; a normal exit, :func:`close_logging` and :func:`flush_logs` wait until
every queued line is written.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import logging.handlers
import os
import queue
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Final, TextIO

__all__ = [
    "close_logging",
    "flush_logs",
    "log_info",
    "log_infos",
    "program_name",
    "reopen_logs",
    "setup_logging",
]

ROOT_LOGGER: Final = "roost"
DEFAULT_SYSLOG_ADDRESS: Final = "/dev/log"

#: Postfix's severity words, put before the message. Info and debug lines have none.
_SEVERITY_PREFIX: Final[dict[int, str]] = {
    logging.WARNING: "warning: ",
    logging.ERROR: "error: ",
    logging.CRITICAL: "fatal: ",
}

# Control characters (except tab) would let a client's text forge or split log lines;
# Postfix prints them as "?".
_UNPRINTABLE: Final = {c: "?" for c in (*range(0x20), 0x7F) if c != 0x09}

_lock = threading.Lock()
_handlers: list[logging.Handler] = []  # the destinations, fed by _listener
_front: list[logging.Handler] = []  # on the roost logger: the QueueHandler
_listener: _Writer | None = None
_log_queue: queue.SimpleQueue[logging.LogRecord] | None = None
#: What :func:`log_info` needs to queue a record itself: the queue, the ``roost`` logger
#: and its only handler (the queue's front); None while lines are not queued.
_fast: tuple[queue.SimpleQueue[logging.LogRecord], logging.Logger, logging.Handler] | None = None
#: Per logger name: the attributes of an info record without arguments (see
#: :func:`log_info`), all but the message and the times.
_info_records: dict[str, dict[str, Any]] = {}
#: This process's ID for the lines' ``[PID]`` (kept at fork; a ``getpid`` per line before).
_pid = os.getpid()


def program_name(logger_name: str, syslog_name: str = "roost") -> str:
    """Map a logger name to the program name of its log lines.

    ``"roost"`` is ``"roost/master"``, ``"roost.smtpd"`` is ``"roost/smtpd"``,
    ``"roost.smtpd.tls"`` is ``"roost/smtpd.tls"``; a logger outside ``roost`` (say
    ``"asyncio"``) keeps its whole name: ``"roost/asyncio"``.

    Args:
        logger_name: the ``logging`` logger name.
        syslog_name: the prefix (Postfix's ``syslog_name``, e.g. ``"postfix-out"``).

    Returns:
        ``syslog_name + "/" + service``.
    """
    if logger_name == ROOT_LOGGER:
        service = "master"
    elif logger_name.startswith(ROOT_LOGGER + "."):
        service = logger_name[len(ROOT_LOGGER) + 1 :]
    else:
        service = logger_name
    return f"{syslog_name}/{service}"


class _PostfixFormatter(logging.Formatter):
    """``[timestamp ]program[pid]: [warning: ]message``, always one line.

    The timestamp is ``datetime.fromtimestamp(created).astimezone().isoformat(timespec=
    "microseconds")``; its date, time and offset are computed once per second and the
    microseconds filled in.
    """

    def __init__(self, syslog_name: str, *, timestamps: bool) -> None:
        super().__init__()
        self._syslog_name = syslog_name
        self._timestamps = timestamps
        self._programs: dict[str, str] = {}
        self._second: tuple[int, str, str] = (-1, "", "")  # second, date+time, offset

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {_describe_exception(record.exc_info[1])}"
        if not message.isprintable():  # the usual line has no control character: skip
            message = message.translate(_UNPRINTABLE)  # the per-character table lookups
        program = self._programs.get(record.name)
        if program is None:
            program = self._programs[record.name] = program_name(record.name, self._syslog_name)
        pid = record.process if record.process is not None else _pid
        prefix = _SEVERITY_PREFIX.get(record.levelno, "")
        if record.levelno > logging.CRITICAL:
            prefix = "fatal: "
        line = f"{program}[{pid}]: {prefix}{message}"
        if self._timestamps:
            line = f"{self._timestamp(record.created)} {line}"
        return line

    def _timestamp(self, created: float) -> str:
        """``2026-11-21T06:00:00.123456+01:00`` for ``created`` (seconds since the epoch),
        exactly as ``datetime.fromtimestamp(created).astimezone().isoformat(...)``."""
        second = int(created // 1)
        micro = round((created - second) * 1e6)  # datetime rounds half to even too
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        cached = self._second
        if cached[0] != second:
            when = dt.datetime.fromtimestamp(second).astimezone()
            text = when.isoformat(timespec="seconds")
            cut = 19  # YYYY-MM-DDTHH:MM:SS, then the offset
            cached = self._second = (second, text[:cut], text[cut:])
        return f"{cached[1]}.{micro:06d}{cached[2]}"


def _describe_exception(error: BaseException) -> str:
    """``ValueError: bad (traceback: file.py:12 in f -> other.py:40 in g)`` on one line.

    Dovecot does the same with its backtraces: one line per event, frames joined by ``->``.
    """
    frames = traceback.extract_tb(error.__traceback__)
    where = " -> ".join(f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in frames)
    text = "".join(traceback.format_exception_only(error)).strip()
    return f"{text} (traceback: {where})" if where else text


class _SyslogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler sending glibc's shape: ``<22>roost/smtpd[PID]: message``, no NUL."""

    append_nul = False


class _MaillogHandler(logging.StreamHandler[TextIO]):
    """Appends lines to ``maillog_file``; :meth:`reopen` after log rotation.

    Each line is written to the file at once (one ``write`` per line), except while the
    writer thread writes a batch (:attr:`batching`): then the lines wait in the stream's
    buffer until the batch's :meth:`flush_batch`, one ``write`` for all of them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batching = False
        super().__init__(self._open())

    def _open(self) -> TextIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        # Block-buffered, flushed after every line (flush()) or every batch (flush_batch).
        return open(fd, "a", encoding="utf-8", errors="backslashreplace")

    def flush(self) -> None:
        if not self.batching:
            super().flush()

    def flush_batch(self) -> None:
        """Write what the current batch left in the buffer, and end the batch."""
        self.batching = False
        super().flush()

    def reopen(self) -> None:
        """Open the path again (a rotated file was renamed away); keep the old on failure."""
        try:
            stream = self._open()
        except OSError as error:
            # Say so in the file still open, in the shape of every other line.
            self.handle(_reopen_failure(self.path, error))
            return
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        old.close()

    def close(self) -> None:
        self.acquire()
        try:
            if not self.stream.closed:
                self.stream.close()  # flushes
        finally:
            self.release()
            super().close()


def _reopen_failure(path: Path, error: OSError) -> logging.LogRecord:
    return logging.LogRecord(
        ROOT_LOGGER, logging.WARNING, __file__, 0, f"cannot reopen {path}: {error}", None, None
    )


def setup_logging(
    *,
    syslog_name: str = "roost",
    facility: str = "mail",
    to_syslog: bool,
    maillog_file: Path | None,
    debug: bool = False,
    to_stderr: bool | None = None,
    syslog_address: str | Path = DEFAULT_SYSLOG_ADDRESS,
) -> None:
    """Configure the ``roost`` logger; a second call replaces the first one's handlers.

    Destinations, each with one line per event:

    - syslog (*to_syslog*): datagrams ``<PRI>roost/smtpd[PID]: message`` to
      *syslog_address*; if it cannot be reached, stderr instead, with a warning.
    - *maillog_file*: ``2026-11-21T06:00:00.123456+00:00 roost/smtpd[PID]: message``
      (local time with its offset) appended line-buffered; :func:`reopen_logs` reopens it.
    - stderr: the same shape as *maillog_file*.

    Records stop at the ``roost`` logger (``propagate`` is turned off) so they are not
    logged twice by handlers on the root logger.

    Args:
        syslog_name: the program-name prefix (Postfix's ``syslog_name``).
        facility: the syslog facility (``syslog_facility``): ``"mail"``, ``"daemon"``,
            ``"local0"``... ``"local7"`` and the rest of syslog(3)'s names.
        to_syslog: log to syslog.
        maillog_file: log to this file (``maillog_file``), or not at all when ``None``.
        debug: log debug events too; otherwise info and above.
        to_stderr: log to stderr; by default only when neither syslog nor a file is used
            (the foreground, ``make run``).
        syslog_address: the syslog socket path; ``/dev/log`` except in tests.

    Raises:
        ValueError: *facility* is not a syslog facility name (the message lists them).
        OSError: *maillog_file* cannot be opened for appending.
    """
    facility_code = logging.handlers.SysLogHandler.facility_names.get(facility)
    if facility_code is None:
        allowed = ", ".join(sorted(logging.handlers.SysLogHandler.facility_names))
        raise ValueError(f"unknown syslog facility {facility!r}; use one of: {allowed}")
    if to_stderr is None:
        to_stderr = not to_syslog and maillog_file is None

    timestamped = _PostfixFormatter(syslog_name, timestamps=True)
    handlers: list[logging.Handler] = []
    fallback_warning: str | None = None
    if maillog_file is not None:
        handlers.append(_MaillogHandler(maillog_file))
    if to_syslog:
        address = os.fspath(syslog_address)
        problem = _unreachable(address)
        if problem is None:
            # SysLogHandler reconnects by itself if syslog restarts later.
            syslog = _SyslogHandler(address=address, facility=facility_code)
            syslog.setFormatter(_PostfixFormatter(syslog_name, timestamps=False))
            handlers.append(syslog)
        else:
            fallback_warning = f"cannot log to syslog at {address}: {problem}; using stderr"
            to_stderr = True
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        if handler.formatter is None:
            handler.setFormatter(timestamped)

    logger = logging.getLogger(ROOT_LOGGER)
    with _lock:
        old = _replace_handlers(logger, handlers)
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        logger.propagate = False
        _route_library_loggers()
        _lighten_records()
    for handler in old:
        handler.close()
    if fallback_warning is not None:
        logger.warning(fallback_warning)


def _lighten_records() -> None:
    """Skip what every ``LogRecord`` would compute and roost's lines never show: the
    caller's file and line (a stack walk per record), the process ID (a ``getpid`` system
    call per record: the formatter asks once per line in the writer thread instead), the
    thread and the multiprocessing names. See the logging HOWTO, "Optimization"."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class _QueueFront(logging.handlers.QueueHandler):
    """Queues a record for the writer thread; the event loop does no more than this."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Merge the arguments now (they may change later); formatting, the exception's
        # description included, happens in the writer thread.
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        return record


class _FlushMark(logging.LogRecord):
    """Not a line: the writer thread sets :attr:`written` when it reaches this record."""

    def __init__(self) -> None:
        super().__init__(ROOT_LOGGER, logging.DEBUG, __file__, 0, "", None, None)
        self.written = threading.Event()


#: Seconds the writer thread pauses after it has emptied the queue, before it waits for
#: the next record (the longest a line waits for its write beyond the thread's own work).
WRITER_PAUSE: Final = 0.005


class _Writer(logging.handlers.QueueListener):
    """The writer thread: formats each queued record and hands it to the destinations.

    It takes every record queued by the time it wakes up as one batch and writes the
    batch's lines to ``maillog_file`` with one ``write`` (a busy process queues several
    lines per wake-up: a relayed message's ``status=sent`` and ``removed``, an SMTP
    session's lines), instead of one system call per line. After a batch it pauses
    :data:`WRITER_PAUSE` before it waits for the next record: a ``put()`` while it sleeps
    (rather than waits on the queue) wakes nobody, and the next batch is larger.
    """

    def __init__(
        self,
        log_queue: queue.SimpleQueue[logging.LogRecord],
        *handlers: logging.Handler,
        respect_handler_level: bool = False,
    ) -> None:
        super().__init__(log_queue, *handlers, respect_handler_level=respect_handler_level)
        self._records = log_queue

    def _monitor(self) -> None:
        log_queue = self._records
        batched = [h for h in self.handlers if isinstance(h, _MaillogHandler)]
        while True:
            record: logging.LogRecord | None = log_queue.get()
            for handler in batched:
                handler.batching = True
            direct = self._direct()
            if direct is not None:
                # the batch's lines straight into the file's buffer, under the handler's
                # lock for the whole batch (reopen() waits for it): what handle() does
                # per record (filters, a lock, emit's calls) without its per-line calls
                direct.acquire()
                write = direct.stream.write
                format_line = direct.formatter.format  # type: ignore[union-attr]
                level, end = direct.level, direct.terminator
            try:
                while True:
                    if record is None:  # QueueListener's sentinel: stop()
                        return
                    if isinstance(record, _FlushMark):
                        _flush_batch(batched, record)
                        for handler in batched:
                            handler.batching = True
                        record.written.set()
                    elif direct is not None:
                        if record.levelno >= level:
                            try:
                                write(format_line(record) + end)
                            except Exception:
                                direct.handleError(record)
                    else:
                        self.handle(record)
                    try:
                        record = log_queue.get_nowait()
                    except queue.Empty:
                        break
            finally:
                if direct is not None:
                    direct.release()
                _flush_batch(batched, record)
            time.sleep(WRITER_PAUSE)

    def _direct(self) -> _MaillogHandler | None:
        """The one destination when records can skip :meth:`handle`: a ``maillog_file``
        (the only handler, no filters, a formatter set, handler levels respected or
        none set); None otherwise."""
        if len(self.handlers) != 1:
            return None
        handler = self.handlers[0]
        if (
            type(handler) is not _MaillogHandler
            or handler.filters
            or handler.formatter is None
            or (not self.respect_handler_level and handler.level != logging.NOTSET)
        ):
            return None
        return handler


def _flush_batch(handlers: list[_MaillogHandler], record: logging.LogRecord | None) -> None:
    """Write the batch's lines; a failure (a full disk) is reported as ``emit`` reports."""
    for handler in handlers:
        try:
            handler.flush_batch()
        except Exception:
            if record is not None:
                handler.handleError(record)


def flush_logs(timeout: float = 10.0) -> None:
    """Wait until every line logged so far is written (for a clean exit, and for tests).

    Must not be called from the writer thread itself (a handler).

    Args:
        timeout: give up after this many seconds (a wedged destination).
    """
    with _lock:
        log_queue, listener = _log_queue, _listener
    if log_queue is None or listener is None:
        return
    mark = _FlushMark()
    log_queue.put_nowait(mark)
    mark.written.wait(timeout)


def log_info(logger: logging.Logger, message: str) -> None:
    """``logger.info(message)`` for a finished line (no ``%`` arguments), with less work.

    While the writer thread takes the lines (:func:`setup_logging`) and nothing else would
    see the record (``logger`` a direct child of ``roost`` without handlers or filters,
    ``roost``'s one handler the queue's front, the standard record factory), the record is
    made from a per-logger copy of an info record's attributes and queued directly: the
    same record, queued in the same order, as ``logger.info`` would queue, without
    ``Logger._log``, ``makeRecord``, ``LogRecord.__init__`` (a file-name split per record)
    and the handler's lock. Otherwise it is ``logger.info(message)``.

    Args:
        logger: a logger under ``roost`` (``roost.smtpd``).
        message: the whole line's message; ``%`` in it is kept, as ``logger.info``
            keeps it without arguments.
    """
    log_queue = _direct_queue(logger)
    if log_queue is None:
        logger.info(message)
        return
    log_queue.put_nowait(_info_record(logger, message, time.time()))


def log_infos(*lines: tuple[logging.Logger, str]) -> None:
    """:func:`log_info` for each (logger, message) of ``lines``, in order: the same
    records (their times taken once), with the checks that do not depend on the logger
    made once for the call."""
    if not lines:
        return
    log_queue = _direct_queue(lines[0][0])
    if log_queue is None or not all(_plain(logger) for logger, _ in lines[1:]):
        for logger, message in lines:
            log_info(logger, message)
        return
    created = time.time()
    for logger, message in lines:
        log_queue.put_nowait(_info_record(logger, message, created))


def _direct_queue(logger: logging.Logger) -> queue.SimpleQueue[logging.LogRecord] | None:
    """The writer thread's queue when :func:`log_info` may queue ``logger``'s info
    records itself (see there), else None."""
    fast = _fast
    if (
        fast is None
        or len(fast[1].handlers) != 1
        or fast[1].handlers[0] is not fast[2]
        or fast[2].filters
        or fast[2].level > logging.INFO
        or logging.getLogRecordFactory() is not logging.LogRecord
        or not _plain(logger)
    ):
        return None
    return fast[0]


def _plain(logger: logging.Logger) -> bool:
    """Whether ``logger``'s info records go to ``roost``'s handlers and nowhere else
    (:func:`_direct_queue`'s checks of the logger itself)."""
    fast = _fast
    return (
        fast is not None
        and logger.parent is fast[1]
        and not logger.handlers
        and not logger.filters
        and logger.propagate
        and logger.isEnabledFor(logging.INFO)
    )


def _info_record(logger: logging.Logger, message: str, created: float) -> logging.LogRecord:
    """The record ``logger.info(message)`` would queue at ``created`` (``time.time()``)."""
    attributes = _info_records.get(logger.name)
    if attributes is None:
        attributes = _info_records[logger.name] = vars(
            logging.LogRecord(
                logger.name,
                logging.INFO,
                "(unknown file)",
                0,
                "",
                (),
                None,
                "(unknown function)",
                None,
            )
        ).copy()
        attributes["args"] = None  # as _QueueFront.prepare leaves a record it merged
    record = logging.LogRecord.__new__(logging.LogRecord)
    fields = record.__dict__
    fields.update(attributes)
    # as LogRecord.__init__ sets the three times
    fields["msg"] = message
    fields["created"] = created
    fields["msecs"] = int((created - int(created)) * 1000) + 0.0
    fields["relativeCreated"] = (created - _START_TIME) * 1000
    return record


#: logging's start time, from which records count ``relativeCreated``.
_START_TIME: Final[float] = logging._startTime  # type: ignore[attr-defined]


#: Libraries whose records go through roost's handlers (one line, control characters
#: escaped) instead of Python's raw last-resort stderr output.
_LIBRARY_LOGGERS: Final = ("asyncio", "mail.log", "ldap3")


def _route_library_loggers() -> None:
    """Send library warnings through the ``roost`` logger; drop their chatter.

    aiosmtpd's ``mail.log`` repeats what roost/smtpd logs, with client bytes unescaped, so
    only its errors are kept.
    """
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.addHandler(_Forward(f"{ROOT_LOGGER}.{name}"))
        library.setLevel(logging.ERROR if name == "mail.log" else logging.WARNING)
        library.propagate = False


class _Forward(logging.Handler):
    """Re-log a library's record on a ``roost.*`` logger (same level, message and args)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = logging.getLogger(target)

    def emit(self, record: logging.LogRecord) -> None:
        record.name = self.target.name
        self.target.handle(record)


def _unreachable(address: str) -> str | None:
    """Why the syslog socket cannot be reached, or ``None`` when it can.

    SysLogHandler itself ignores a failed connect (as openlog(3) does), so probe first.
    """
    problem = "no socket"
    for socktype in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # SysLogHandler's order
        with socket.socket(socket.AF_UNIX, socktype) as probe:
            try:
                probe.connect(address)
            except OSError as error:
                problem = str(error)
            else:
                return None
    return problem


def _replace_handlers(logger: logging.Logger, new: list[logging.Handler]) -> list[logging.Handler]:
    """Install ``new`` behind a fresh queue and writer thread; stop the old thread after
    it has written every line queued so far. Return the old handlers (to close)."""
    global _listener, _log_queue, _fast
    _fast = None
    _info_records.clear()  # made again with the current record settings
    for front in _front:
        logger.removeHandler(front)
    _front.clear()
    for handler in _handlers:  # on the logger itself since stop_log_writer or a fork
        logger.removeHandler(handler)
    if _listener is not None:
        _listener.stop()  # writes what is queued, then ends the thread
        _listener = _log_queue = None
    old = list(_handlers)
    _handlers[:] = new
    if new:
        _log_queue = queue.SimpleQueue()  # put() is C code: the cheapest hand-off
        _listener = _Writer(_log_queue, *new, respect_handler_level=True)
        _listener.start()
        front = _QueueFront(_log_queue)
        _front.append(front)
        logger.addHandler(front)
        _fast = (_log_queue, logger, front)
    return old


@atexit.register
def stop_log_writer() -> None:
    """Write every queued line and stop the writer thread; lines logged afterwards are
    written at once, in the logging thread.

    Runs when the interpreter exits (registered after logging's own ``shutdown``, so it
    runs before the handlers are closed); a forked worker that leaves by ``os._exit``
    calls it itself.
    """
    global _listener, _log_queue, _fast
    with _lock:
        listener, _listener, _log_queue, _fast = _listener, None, None, None
        logger = logging.getLogger(ROOT_LOGGER)
        for front in _front:  # lines logged from now on are written at once
            logger.removeHandler(front)
        _front.clear()
        for handler in _handlers:
            logger.addHandler(handler)
    if listener is not None:
        listener.stop()


def _after_fork_in_child() -> None:
    """In a forked child (fork server, worker) the writer thread does not exist: log
    synchronously, with fresh locks, until :func:`start_log_writer`. Lines the parent had
    queued but not written stay the parent's (no duplicates)."""
    global _listener, _log_queue, _lock, _fast, _pid
    _lock = threading.Lock()  # another thread may have held it at the fork
    _listener = _log_queue = _fast = None
    _pid = os.getpid()
    _info_records.clear()  # their ``process`` and ``thread`` are the parent's
    logger = logging.getLogger(ROOT_LOGGER)
    for front in _front:
        logger.removeHandler(front)
    _front.clear()
    for handler in _handlers:
        logger.addHandler(handler)


os.register_at_fork(after_in_child=_after_fork_in_child)


def start_log_writer() -> None:
    """Start a writer thread for this process's handlers (a forked worker calls it once
    its event loop is about to run; see :func:`_after_fork_in_child`)."""
    logger = logging.getLogger(ROOT_LOGGER)
    with _lock:
        if _listener is not None or not _handlers:
            return
        for handler in _handlers:
            logger.removeHandler(handler)
        _replace_handlers(logger, list(_handlers))


def reopen_logs() -> None:
    """Reopen ``maillog_file`` after log rotation (on SIGHUP or ``roost reload``).

    A file that cannot be reopened is reported on the handler's error path and the old
    file stays in use. Syslog and stderr need nothing. Lines logged before the call go to
    the old file.
    """
    flush_logs()
    with _lock:
        handlers = list(_handlers)
    for handler in handlers:
        if isinstance(handler, _MaillogHandler):
            handler.reopen()


def close_logging() -> None:
    """Remove and close the handlers :func:`setup_logging` installed; ``roost`` propagates
    to the root logger again. For a clean exit and for tests."""
    logger = logging.getLogger(ROOT_LOGGER)
    with _lock:
        old = _replace_handlers(logger, [])
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    for handler in old:
        handler.close()

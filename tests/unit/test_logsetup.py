"""Tests for roost.daemon.logsetup: Postfix-shaped lines to a file, stderr and syslog."""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.daemon import logsetup
from roost.daemon.logsetup import (
    close_logging,
    flush_logs,
    program_name,
    reopen_logs,
    setup_logging,
)

PID = os.getpid()
# "2026-11-21T06:00:00.123456+01:00 roost/smtpd[123]: message"
LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d) "
    r"(?P<program>[\w./-]+)\[(?P<pid>\d+)\]: (?P<message>.*)"
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave the ``roost`` logger as other tests expect it (propagating, no handlers)."""
    yield
    close_logging()


@pytest.fixture
def syslog_receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "log"
    if len(os.fsencode(path)) >= 108:
        pytest.skip("tmp_path too long for an AF_UNIX socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.fspath(path))
    sock.settimeout(5)
    yield sock, path
    sock.close()


def parsed(path: Path) -> list[re.Match[str]]:
    flush_logs()  # the lines are written by a thread
    lines = path.read_text().splitlines()
    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    return [m for m in matches if m]


@pytest.mark.parametrize(
    ("logger", "syslog_name", "program"),
    [
        ("roost", "roost", "roost/master"),
        ("roost.smtpd", "roost", "roost/smtpd"),
        ("roost.imap", "roost", "roost/imap"),
        ("roost.smtpd.tls", "roost", "roost/smtpd.tls"),
        ("roost.smtp", "postfix-out", "postfix-out/smtp"),
        ("roosty", "roost", "roost/roosty"),
        ("asyncio", "roost", "roost/asyncio"),
    ],
)
def test_program_name(logger: str, syslog_name: str, program: str) -> None:
    assert program_name(logger, syslog_name) == program


def test_maillog_file_lines(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    before = dt.datetime.now().astimezone()
    logging.getLogger("roost.smtpd").info("connect from %s[%s]", "client.example", "192.0.2.1")
    logging.getLogger("roost").info("daemon started")
    logging.getLogger("roost.smtpd").debug("not shown without debug")
    after = dt.datetime.now().astimezone()

    first, second = parsed(maillog)
    assert first["program"] == "roost/smtpd"
    assert first["pid"] == str(PID)
    assert first["message"] == "connect from client.example[192.0.2.1]"
    assert (second["program"], second["message"]) == ("roost/master", "daemon started")
    when = dt.datetime.fromisoformat(first["time"])
    assert when.utcoffset() == before.utcoffset()
    assert before - dt.timedelta(seconds=1) <= when <= after


def test_severity_prefixes(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog, debug=True)
    log = logging.getLogger("roost.smtpd")
    log.debug("a debug line")
    log.info("an info line")
    log.warning("hostname nowhere.example does not resolve to address 192.0.2.1")
    log.error("queue file write error")
    log.critical("out of disk space")
    assert [m["message"] for m in parsed(maillog)] == [
        "a debug line",
        "an info line",
        "warning: hostname nowhere.example does not resolve to address 192.0.2.1",
        "error: queue file write error",
        "fatal: out of disk space",
    ]


def test_one_line_per_event_even_with_newlines_and_exceptions(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    log = logging.getLogger("roost.smtpd")
    # A client's text must not start a forged line of its own.
    log.info("bad command: %s", "NOOP\r\nroost/smtpd[1]: warning: forged")
    try:
        raise ValueError("broken\nvalue")
    except ValueError:
        log.exception("while handling %s", "DATA")

    injected, failure = parsed(maillog)
    assert injected["message"] == "bad command: NOOP??roost/smtpd[1]: warning: forged"
    assert failure["message"].startswith("error: while handling DATA: ValueError: broken?value")
    assert "(traceback: " in failure["message"]
    assert "test_logsetup.py:" in failure["message"]


def test_setup_twice_replaces_handlers(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    setup_logging(to_syslog=False, maillog_file=first)
    setup_logging(to_syslog=False, maillog_file=second)
    setup_logging(to_syslog=False, maillog_file=second)
    logging.getLogger("roost.pop3").info("once")
    assert first.read_text() == ""
    assert [m["message"] for m in parsed(second)] == ["once"]
    assert len(logging.getLogger("roost").handlers) == 1


def test_reopen_after_rotation(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    log = logging.getLogger("roost.smtpd")
    log.info("before rotation")
    maillog.rename(tmp_path / "maillog.1")
    log.info("still to the old file")
    reopen_logs()
    log.info("after rotation")
    assert [m["message"] for m in parsed(tmp_path / "maillog.1")] == [
        "before rotation",
        "still to the old file",
    ]
    assert [m["message"] for m in parsed(maillog)] == ["after rotation"]


def test_failed_reopen_keeps_old_file(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    maillog = directory / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    directory.rename(tmp_path / "gone")  # the path cannot be created again
    reopen_logs()
    logging.getLogger("roost.smtpd").info("goes on")
    messages = [m["message"] for m in parsed(tmp_path / "gone" / "maillog")]
    assert messages[0].startswith(f"warning: cannot reopen {maillog}: ")
    assert messages[1:] == ["goes on"]


def test_stderr_in_the_foreground(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(to_syslog=False, maillog_file=None)
    logging.getLogger("roost.imap").warning("disconnected for inactivity")
    flush_logs()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    match = LINE.fullmatch(err[0])
    assert match
    assert match["program"] == "roost/imap"
    assert match["message"] == "warning: disconnected for inactivity"


def test_no_stderr_when_logging_to_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(to_syslog=False, maillog_file=tmp_path / "maillog")
    logging.getLogger("roost").info("quiet")
    flush_logs()
    assert capsys.readouterr().err == ""


def test_does_not_propagate_to_root(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    setup_logging(to_syslog=False, maillog_file=tmp_path / "maillog")
    logging.getLogger("roost.smtpd").warning("only once")
    assert caplog.records == []
    close_logging()
    logging.getLogger("roost.smtpd").warning("to the root again")
    assert [r.getMessage() for r in caplog.records] == ["to the root again"]


def test_syslog_receiver(syslog_receiver: tuple[socket.socket, Path]) -> None:
    sock, path = syslog_receiver
    setup_logging(to_syslog=True, maillog_file=None, syslog_address=path)
    logging.getLogger("roost.smtpd").info("hello")
    logging.getLogger("roost.smtpd").warning("careful")
    logging.getLogger("roost").error("bad")
    assert sock.recv(4096) == f"<22>roost/smtpd[{PID}]: hello".encode()  # mail=2, info=6
    assert sock.recv(4096) == f"<20>roost/smtpd[{PID}]: warning: careful".encode()
    assert sock.recv(4096) == f"<19>roost/master[{PID}]: error: bad".encode()


def test_syslog_facility_and_name(syslog_receiver: tuple[socket.socket, Path]) -> None:
    sock, path = syslog_receiver
    setup_logging(
        syslog_name="postfix-out",
        facility="local3",
        to_syslog=True,
        maillog_file=None,
        syslog_address=path,
    )
    logging.getLogger("roost.smtp").critical("cannot bind")
    # local3=19, crit=2: 19*8+2
    assert sock.recv(4096) == f"<154>postfix-out/smtp[{PID}]: fatal: cannot bind".encode()


def test_missing_syslog_socket_falls_back_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-log"
    setup_logging(to_syslog=True, maillog_file=None, syslog_address=missing)
    logging.getLogger("roost.smtpd").info("still logged")
    flush_logs()
    err = [LINE.fullmatch(line) for line in capsys.readouterr().err.splitlines()]
    warning = f"warning: cannot log to syslog at {missing}: [Errno 2] No such file or directory"
    assert [(m["program"], m["message"]) for m in err if m] == [
        ("roost/master", f"{warning}; using stderr"),
        ("roost/smtpd", "still logged"),
    ]


def test_unknown_facility() -> None:
    with pytest.raises(ValueError, match=r"'maill'.*local7"):
        setup_logging(facility="maill", to_syslog=True, maillog_file=None)


_EXITING = """
import logging, sys
from pathlib import Path
from roost.daemon.logsetup import setup_logging
setup_logging(to_syslog=False, maillog_file=Path(sys.argv[1]))
log = logging.getLogger("roost.smtpd")
for n in range(2000):
    log.info("line %d", n)
if sys.argv[2] == "raise":
    raise SystemExit("stopping")
"""


@pytest.mark.parametrize("how", ["return", "raise"])
def test_every_queued_line_is_written_before_the_process_exits(tmp_path: Path, how: str) -> None:
    maillog = tmp_path / "maillog"
    child = subprocess.run(
        [sys.executable, "-c", _EXITING, str(maillog), how],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == (1 if how == "raise" else 0), child.stderr
    messages = [m["message"] for m in parsed(maillog)]
    assert messages == [f"line {n}" for n in range(2000)]


def test_lines_keep_their_order_and_values_across_the_writer_thread(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    log = logging.getLogger("roost.smtpd")
    changing = ["before"]
    log.info("value %s", changing)
    changing[0] = "after"  # the line shows the value at the time of the call
    assert [m["message"] for m in parsed(maillog)] == ["value ['before']"]


def test_lines_queued_meanwhile_go_to_the_file_in_one_write(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    handler = logsetup._handlers[0]
    writes: list[bytes] = []

    class Recorder(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: object) -> int:
            chunk = bytes(data)  # type: ignore[call-overload]
            writes.append(chunk)
            return len(chunk)

    handler.acquire()  # the writer thread waits for it at its first line
    try:
        assert isinstance(handler, logging.StreamHandler)
        handler.stream = io.TextIOWrapper(io.BufferedWriter(Recorder()), encoding="utf-8")
        log = logging.getLogger("roost.qmgr")
        for n in range(50):
            log.info("line %d", n)
    finally:
        handler.release()
    flush_logs()
    assert len(writes) == 1
    lines = writes[0].decode().splitlines()
    assert [LINE.fullmatch(line)["message"] for line in lines] == [  # type: ignore[index]
        f"line {n}" for n in range(50)
    ]


def test_without_the_writer_thread_each_line_is_written_at_once(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    logsetup.stop_log_writer()  # as at exit: lines are written by the caller
    logging.getLogger("roost.qmgr").info("at once")
    assert maillog.read_text().endswith(f"roost/qmgr[{PID}]: at once\n")


def test_timestamps_are_those_of_datetime(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    record = logging.LogRecord("roost.smtpd", logging.INFO, __file__, 1, "x", None, None)
    for created in (1_700_000_000.0, 1_700_000_000.9999996, 1_700_000_001.0000004, 1e9 + 0.5):
        record.created = created
        expected = dt.datetime.fromtimestamp(created).astimezone()
        line = logsetup._handlers[0].format(record)  # the maillog file's formatter
        assert line.startswith(expected.isoformat(timespec="microseconds") + " ")


def _record_fields(record: logging.LogRecord) -> dict[str, object]:
    """A record's attributes but its times."""
    times = {"created", "msecs", "relativeCreated"}
    return {k: v for k, v in vars(record).items() if k not in times}


def test_log_info_queues_the_record_logger_info_would_queue(tmp_path: Path) -> None:
    setup_logging(to_syslog=False, maillog_file=tmp_path / "maillog")
    queued: list[logging.LogRecord] = []
    assert logsetup._log_queue is not None
    writer = logsetup._log_queue
    log = logging.getLogger("roost.smtpd")

    class Spy:  # in place of the queue: what each way hands to the writer thread
        def put_nowait(self, record: logging.LogRecord) -> None:
            queued.append(record)

    logsetup._fast = (Spy(), *logsetup._fast[1:])  # type: ignore[arg-type,misc]
    logsetup._front[0].queue = Spy()  # type: ignore[attr-defined]
    try:
        log.info("4F2AB0C1D: client=%s%s", "unknown[127.0.0.1]", "")
        logsetup.log_info(log, "4F2AB0C1D: client=unknown[127.0.0.1]")
        log.info("100%s sure", "%")  # a % in the finished line stays as it is
        logsetup.log_info(log, "100% sure")
    finally:
        logsetup._fast = (writer, *logsetup._fast[1:])  # type: ignore[misc]
        logsetup._front[0].queue = writer  # type: ignore[attr-defined]
    assert len(queued) == 4
    assert _record_fields(queued[0]) == _record_fields(queued[1])
    assert _record_fields(queued[2]) == _record_fields(queued[3])
    assert queued[1].getMessage() == "4F2AB0C1D: client=unknown[127.0.0.1]"
    assert queued[3].getMessage() == "100% sure"
    assert queued[0].created <= queued[1].created <= queued[0].created + 5
    assert queued[1].relativeCreated == pytest.approx(
        (queued[1].created - logging._startTime) * 1000  # type: ignore[attr-defined]
    )


def test_log_info_lines_in_the_file(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    logsetup.log_info(logging.getLogger("roost.cleanup"), "4F2AB0C1D: message-id=<a@b>")
    logging.getLogger("roost.qmgr").info("between")
    logsetup.log_info(logging.getLogger("roost.smtpd"), "disconnect from x[1.2.3.4] ehlo=1")
    assert [(m["program"], int(m["pid"]), m["message"]) for m in parsed(maillog)] == [
        ("roost/cleanup", PID, "4F2AB0C1D: message-id=<a@b>"),
        ("roost/qmgr", PID, "between"),
        ("roost/smtpd", PID, "disconnect from x[1.2.3.4] ehlo=1"),
    ]


def test_log_info_takes_the_usual_way_when_others_would_see_the_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    log = logging.getLogger("roost.smtpd")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keep = Keep()
    log.addHandler(keep)
    try:
        logsetup.log_info(log, "to both")
    finally:
        log.removeHandler(keep)
    log.setLevel(logging.WARNING)
    try:
        logsetup.log_info(log, "below the level")
    finally:
        log.setLevel(logging.NOTSET)
    assert seen == ["to both"]
    assert [m["message"] for m in parsed(maillog)] == ["to both"]
    close_logging()  # no writer thread: the record goes to the root logger's handlers
    with caplog.at_level(logging.INFO):
        logsetup.log_info(log, "unconfigured")
    assert [r.getMessage() for r in caplog.records] == ["unconfigured"]


def test_log_infos_writes_the_lines_in_order_as_log_info(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    logsetup.log_infos(
        (logging.getLogger("roost.smtpd"), "4F2AB0C1D: client=x[1.2.3.4]"),
        (logging.getLogger("roost.cleanup"), "4F2AB0C1D: message-id=<a@b>"),
        (logging.getLogger("roost.qmgr"), "4F2AB0C1D: from=<a@b>, size=1, nrcpt=1"),
    )
    logsetup.log_infos()  # nothing
    assert [(m["program"], int(m["pid"]), m["message"]) for m in parsed(maillog)] == [
        ("roost/smtpd", PID, "4F2AB0C1D: client=x[1.2.3.4]"),
        ("roost/cleanup", PID, "4F2AB0C1D: message-id=<a@b>"),
        ("roost/qmgr", PID, "4F2AB0C1D: from=<a@b>, size=1, nrcpt=1"),
    ]


def test_log_infos_takes_the_usual_way_for_a_logger_others_would_see(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    cleanup = logging.getLogger("roost.cleanup")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keep = Keep()
    cleanup.addHandler(keep)  # the second line's logger: not the first's checks
    try:
        logsetup.log_infos(
            (logging.getLogger("roost.smtpd"), "one"), (cleanup, "two"), (cleanup, "three")
        )
    finally:
        cleanup.removeHandler(keep)
    assert seen == ["two", "three"]
    assert [m["message"] for m in parsed(maillog)] == ["one", "two", "three"]


def test_control_characters_become_question_marks_and_the_rest_stays(tmp_path: Path) -> None:
    maillog = tmp_path / "maillog"
    setup_logging(to_syslog=False, maillog_file=maillog)
    log = logging.getLogger("roost.smtpd")
    log.info("tab\there, escape\x1b, delete\x7f, nul\x00, bell\x07, été and \xa0")
    log.info("printable: été ünïcode <a@b> 100%")
    first, second = parsed(maillog)
    assert first["message"] == "tab\there, escape?, delete?, nul?, bell?, été and \xa0"
    assert second["message"] == "printable: été ünïcode <a@b> 100%"

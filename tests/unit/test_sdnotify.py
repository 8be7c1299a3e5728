"""Tests for roost.daemon.sdnotify against real AF_UNIX datagram sockets."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.daemon.sdnotify import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in tmp_path standing in for systemd's notify socket."""
    path = tmp_path / "notify"
    if len(os.fsencode(path)) >= 108:  # sun_path limit; pytest's tmp_path is usually short
        pytest.skip("tmp_path too long for an AF_UNIX socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.fspath(path))
    sock.settimeout(5)
    yield sock, os.fspath(path)
    sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    name = f"roost-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    yield sock, "@" + name
    sock.close()


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on *sock*."""
    datagrams = []
    sock.setblocking(False)
    try:
        while True:
            datagrams.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return datagrams


def test_filesystem_socket_receives_exact_datagrams(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready()
    notifier.ready("accepting connections")
    notifier.status("queue: 3 messages\nactive: 1")
    notifier.stopping()
    notifier.send(MAINPID=1234, STATUS="x")
    notifier.close()
    assert received(sock) == [
        b"READY=1\n",
        b"READY=1\nSTATUS=accepting connections\n",
        b"STATUS=queue: 3 messages active: 1\n",
        b"STOPPING=1\n",
        b"MAINPID=1234\nSTATUS=x\n",
    ]


def test_reloading_sends_monotonic_usec(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [datagram] = received(sock)
    first, second, end = datagram.split(b"\n")
    assert first == b"RELOADING=1"
    assert end == b""
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_socket(abstract_receiver: tuple[socket.socket, str]) -> None:
    sock, address = abstract_receiver
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    notifier.ready("up")
    notifier.close()
    assert received(sock) == [b"READY=1\nSTATUS=up\n"]


def test_from_os_environ_and_unset(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier.from_environ(unset=True)
    assert "NOTIFY_SOCKET" not in os.environ
    notifier.stopping()
    assert received(sock) == [b"STOPPING=1\n"]


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_no_socket_is_a_noop(environ: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environ(environ)
    assert not notifier.enabled
    notifier.ready("up")
    notifier.reloading()
    notifier.stopping()
    notifier.status("x")
    assert notifier._socket is None  # no socket was even created
    assert caplog.records == []


def test_send_failure_warns_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(os.fspath(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="roost"):
        notifier.ready()
        notifier.stopping()
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot notify systemd at {tmp_path / 'nobody-listens'}: "
        "[Errno 2] No such file or directory"
    ]


def test_unsupported_address_warns_and_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="roost"):
        notifier = Notifier("vsock:2:1234")
        notifier.ready()
    assert not notifier.enabled
    assert len(caplog.records) == 1
    assert "vsock:2:1234" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "fields", [{"ready": 1}, {"READY=1\nX": 1}, {"STATUS": "two\nlines"}, {"1A": 1}]
)
def test_malformed_fields_are_refused(
    receiver: tuple[socket.socket, str], fields: dict[str, str | int]
) -> None:
    sock, path = receiver
    with pytest.raises(ValueError):
        Notifier(path).send(**fields)
    assert received(sock) == []

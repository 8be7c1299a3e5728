"""Shared test helpers: real programs, free ports, roost instances in tmp_path."""

from __future__ import annotations

import io
import os
import random
import shutil
import socket
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import hypothesis
import pytest

# Property tests check answers, never speed: hypothesis's default 200 ms deadline per
# example is a timed assertion that fails on a busy machine (one did, under load).
hypothesis.settings.register_profile("roost", deadline=None)
hypothesis.settings.load_profile("roost")

ROOT = Path(__file__).resolve().parent.parent
ROOST = [sys.executable, "-m", "roost"]

# Daemons the tests start as root keep root (their files are in root's tmp_path); the
# privilege separation tests (tests/e2e/test_privsep.py) take this out of their daemon's
# environment to run it as a real mail_owner.
STAY_ROOT_ENV = "ROOST_STAY_ROOT"
os.environ.setdefault(STAY_ROOT_ENV, "1")


def require_program(name: str) -> str:
    """Return the path of a program the test needs.

    Outside CI a missing program skips the test; in CI (``CI`` set) it fails, because
    .ci/run installs every program the tests use.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, but .ci/run should have installed it")
        pytest.skip(message)
    return path


# Ports handed to daemons the tests start. They come from below the kernel's ephemeral
# range (net.ipv4.ip_local_port_range, 32768-60999 by default): a port taken from the
# ephemeral range is closed again before the daemon binds it, and in that gap any
# outgoing connection of the test run may be given it (CI failed that way once with
# "Address already in use"). Ports are never handed out twice in one test process.
_PORT_RANGE = range(20000, 32768)
_ports_given: set[int] = set()


def free_port_for(hosts: Iterable[str]) -> int:
    """Return a TCP port that is free on every one of ``hosts`` right now.

    The port is below the ephemeral range and was not returned before by this process.
    Raises OSError when no port of the range is free.
    """
    hosts = list(hosts)
    for _ in range(1000):
        port = random.choice(_PORT_RANGE)
        if port in _ports_given:
            continue
        sockets: list[socket.socket] = []
        try:
            for host in hosts:
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                sockets.append(sock)
                sock.bind((host, port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        _ports_given.add(port)
        return port
    raise OSError(f"no free port on {hosts} in {_PORT_RANGE}")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (see free_port_for)."""
    return free_port_for([host])


def in_forked_child(make: Callable[[], str]) -> tuple[int, str]:
    """Fork; the child returns ``make()`` through a pipe and exits without pytest's
    clean-up. Returns the child's pid and what it made."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, make().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        made = pipe.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    return pid, made


class FailingReader(io.RawIOBase):
    """A message whose read() raises ``error`` after ``good`` bytes (a spool file that
    fails under a delivery)."""

    def __init__(self, data: bytes, good: int, error: BaseException) -> None:
        self.data, self.good, self.error, self.position = data, good, error, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.position >= self.good:
            raise self.error
        end = min(self.good, self.position + (size if size > 0 else self.good))
        chunk = self.data[self.position : end]
        self.position = end
        return chunk


def write_instance(directory: Path, extra: str = "") -> Path:
    """Write a main.cf for a loopback-only instance under ``directory``; return its path.

    Every service gets a free port; TLS files are created by the daemon at first start.
    """
    from roost.config import SERVICES

    directory.mkdir(parents=True, exist_ok=True)
    ports = "\n".join(f"{service}_service_port = {free_port()}" for service in SERVICES)
    main_cf = directory / "main.cf"
    main_cf.write_text(
        "myhostname = mx.roost.test\n"
        "inet_interfaces = 127.0.0.1\n"
        "dns_nameservers = 127.0.0.1:1\n"
        "dns_lookup_timeout = 1s\n"
        f"queue_directory = {directory}/spool\n"
        f"data_directory = {directory}/lib\n"
        f"{ports}\n{extra}"
    )
    return main_cf

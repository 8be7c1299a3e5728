"""Shared test helpers: real programs, free ports, roost instances in tmp_path."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

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


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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

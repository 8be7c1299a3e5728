"""mbox delivery on a real file system: mboxrd, fcntl and dot locks, truncation on failure."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from roost.delivery.errors import DeliveryError, QuotaExceeded
from roost.delivery.headers import delivery_headers
from roost.delivery.mbox import deliver_mbox
from tests.conftest import FailingReader

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = b"Subject: hi\r\n\r\nFrom the start\r\n>From quoted\r\nplain\r\n"
FROM_LINE = re.compile(rb"From (\S+) \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n")


@pytest.fixture
def mbox(tmp_path: Path) -> Path:
    """An mbox that already holds one message."""
    path = tmp_path / "alice"
    deliver_mbox(path, b"Subject: first\r\n\r\nbody\r\n", envelope_sender="x@example.org")
    return path


def test_append_in_mboxrd_form(tmp_path: Path) -> None:
    path = tmp_path / "mail" / "alice"
    path.parent.mkdir()
    prepend = delivery_headers("bob@example.org", "alice@example.com")
    written = deliver_mbox(path, MESSAGE, envelope_sender="bob@example.org", prepend=prepend)
    content = path.read_bytes()
    assert written == len(content)
    match = FROM_LINE.match(content)
    assert match is not None and match.group(1) == b"bob@example.org"
    assert content[match.end() :] == (
        b"Return-Path: <bob@example.org>\n"
        b"Delivered-To: alice@example.com\n"
        b"Subject: hi\n\n>From the start\n>>From quoted\nplain\n\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not Path(f"{path}.lock").exists()

    deliver_mbox(path, b"No newline at end", envelope_sender="")
    second = path.read_bytes()[len(content) :]
    assert FROM_LINE.match(second) is not None
    assert second.startswith(b"From MAILER-DAEMON ")
    assert second.endswith(b"\nNo newline at end\n\n")


def test_character_device_needs_no_lock() -> None:
    assert deliver_mbox(Path("/dev/null"), MESSAGE, envelope_sender="a@b") > len(MESSAGE)


def test_symbolic_link_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(target)
    if os.geteuid() == 0:
        os.lchown(link, 65534, 65534)
    with pytest.raises(DeliveryError) as caught:
        deliver_mbox(link, MESSAGE, envelope_sender="a@b")
    assert (caught.value.dsn, caught.value.temporary) == ("5.2.0", False)
    assert not target.exists()


def test_hard_linked_mbox_is_refused(mbox: Path) -> None:
    os.link(mbox, mbox.with_name("other"))
    before = mbox.read_bytes()
    with pytest.raises(DeliveryError, match="links"):
        deliver_mbox(mbox, MESSAGE, envelope_sender="a@b")
    assert mbox.read_bytes() == before


# --------------------------------------------------------------------------------------------
# Locks


@pytest.fixture
def fcntl_holder(mbox: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding an fcntl lock on the mbox until it reads a line."""
    script = textwrap.dedent(
        f"""
        import fcntl, sys
        with open({str(mbox)!r}, "ab") as handle:
            fcntl.lockf(handle, fcntl.LOCK_EX)
            print("locked", flush=True)
            sys.stdin.readline()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdin is not None
    assert process.stdout.readline() == "locked\n"
    yield process
    if process.poll() is None:
        process.stdin.write("release\n")
        process.stdin.flush()
    process.wait(timeout=10)


def test_delivery_waits_for_an_fcntl_lock_held_by_another_process(
    mbox: Path, fcntl_holder: subprocess.Popen[str]
) -> None:
    before = mbox.read_bytes()
    outcome: list[object] = []

    def deliver() -> None:
        try:
            outcome.append(
                deliver_mbox(mbox, MESSAGE, envelope_sender="a@b", lock_timeout=30, lock_delay=0.02)
            )
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=deliver)
    worker.start()
    worker.join(0.5)
    assert worker.is_alive(), outcome
    assert mbox.read_bytes() == before
    assert fcntl_holder.stdin is not None
    fcntl_holder.stdin.write("release\n")
    fcntl_holder.stdin.flush()
    worker.join(10)
    assert not worker.is_alive()
    assert isinstance(outcome[0], int)
    assert mbox.read_bytes().startswith(before)
    assert mbox.read_bytes().endswith(b"plain\n\n")


def test_fcntl_lock_timeout_is_temporary_and_changes_nothing(
    mbox: Path, fcntl_holder: subprocess.Popen[str]
) -> None:
    before = mbox.read_bytes()
    with pytest.raises(DeliveryError) as caught:
        deliver_mbox(mbox, MESSAGE, envelope_sender="a@b", lock_timeout=0.3, lock_delay=0.02)
    assert (caught.value.dsn, caught.value.temporary) == ("4.2.0", True)
    assert "unable to lock" in caught.value.text
    assert mbox.read_bytes() == before
    assert not Path(f"{mbox}.lock").exists()  # our dotlock was released


def test_delivery_waits_for_a_dotlock(mbox: Path) -> None:
    lock = Path(f"{mbox}.lock")
    lock.write_text("12345\n")
    before = mbox.read_bytes()
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            deliver_mbox(mbox, MESSAGE, envelope_sender="a@b", lock_timeout=30, lock_delay=0.02)
        )
    )
    worker.start()
    worker.join(0.5)
    assert worker.is_alive()
    assert mbox.read_bytes() == before
    lock.unlink()
    worker.join(10)
    assert not worker.is_alive() and isinstance(outcome[0], int)
    assert mbox.read_bytes().endswith(b"plain\n\n")
    assert not lock.exists()


def test_dotlock_timeout_leaves_the_other_lock_alone(mbox: Path) -> None:
    lock = Path(f"{mbox}.lock")
    lock.write_text("12345\n")
    before = mbox.read_bytes()
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        deliver_mbox(mbox, MESSAGE, envelope_sender="a@b", lock_timeout=0.3, lock_delay=0.02)
    assert time.monotonic() - started >= 0.3
    assert caught.value.dsn == "4.2.0"
    assert caught.value.text == f"unable to create lock file {lock}: File exists"
    assert lock.read_text() == "12345\n"
    assert mbox.read_bytes() == before


def test_stale_dotlock_is_removed(mbox: Path) -> None:
    lock = Path(f"{mbox}.lock")
    lock.write_text("99999\n")
    old = time.time() - 1000
    os.utime(lock, (old, old))
    deliver_mbox(mbox, MESSAGE, envelope_sender="a@b", lock_timeout=0.5, stale_lock_time=500)
    assert mbox.read_bytes().endswith(b"plain\n\n")
    assert not lock.exists()


def test_threads_of_one_process_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "busy"
    bodies = [f"Subject: {i}\r\n\r\n".encode() + f"{i:03d} ".encode() * 30_000 for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        list(
            pool.map(
                lambda body: deliver_mbox(
                    path, body, envelope_sender="a@b", locks=("fcntl",), lock_delay=0.02
                ),
                bodies,
            )
        )
    content = path.read_bytes()
    messages = re.split(rb"(?m)^From a@b .*\n", content)[1:]
    assert sorted(messages) == sorted(b.replace(b"\r\n", b"\n") + b"\n\n" for b in bodies)


# --------------------------------------------------------------------------------------------
# Failures leave the mbox byte for byte unchanged


def test_read_error_mid_append_truncates(mbox: Path) -> None:
    before = mbox.read_bytes()
    reader = FailingReader(b"Subject: big\r\n\r\n" + b"z" * 500_000, 200_000, OSError(5, "I/O"))
    with pytest.raises(DeliveryError) as caught:
        deliver_mbox(mbox, reader, envelope_sender="a@b")  # type: ignore[arg-type]
    assert reader.position == 200_000
    assert (caught.value.dsn, caught.value.temporary) == ("4.3.0", True)
    assert mbox.read_bytes() == before
    assert not Path(f"{mbox}.lock").exists()


def test_any_exception_mid_append_truncates(mbox: Path) -> None:
    before = mbox.read_bytes()
    reader = FailingReader(b"y" * 500_000, 300_000, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        deliver_mbox(mbox, reader, envelope_sender="a@b")  # type: ignore[arg-type]
    assert mbox.read_bytes() == before


def test_mailbox_size_limit(mbox: Path) -> None:
    before = mbox.read_bytes()
    with pytest.raises(QuotaExceeded) as caught:
        deliver_mbox(mbox, b"w\r\n" * 100_000, envelope_sender="a@b", size_limit=len(before) + 1000)
    assert caught.value.dsn == "5.2.2"
    assert mbox.read_bytes() == before
    deliver_mbox(mbox, b"small\r\n", envelope_sender="a@b", size_limit=len(before) + 1000)


def test_file_size_limit_write_error_truncates(mbox: Path) -> None:
    """A real write failure: RLIMIT_FSIZE makes write() fail with EFBIG mid-append."""
    before = mbox.read_bytes()
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from roost.delivery.errors import DeliveryError
        from roost.delivery.mbox import deliver_mbox
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = {len(before)} + 150_000
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            deliver_mbox(Path({str(mbox)!r}), b"v" * 400_000, envelope_sender="a@b")
        except DeliveryError as exc:
            print(exc.dsn, exc.temporary, exc.text)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.stdout.startswith("5.2.2 False cannot update mailbox"), result
    assert "File too large" in result.stdout
    assert mbox.read_bytes() == before

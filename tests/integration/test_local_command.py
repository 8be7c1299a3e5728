"""|command deliveries: a real /bin/sh script, its environment, exit codes and time limit."""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.delivery.command import CommandEnvironment, deliver_command
from roost.delivery.errors import DeliveryError
from roost.delivery.headers import delivery_headers

IS_ROOT = os.geteuid() == 0
NOBODY = 65534
MESSAGE = b"Subject: order\r\n\r\nFrom here\r\nline\r\n"

SCRIPT = """\
#!/bin/sh
cat > "$OUT/stdin"
env > "$OUT/env"
id -u > "$OUT/uid"
id -G > "$OUT/groups"
pwd > "$OUT/cwd"
umask > "$OUT/umask"
case "$EXTENSION" in
    tempfail) echo "database busy" >&2; exit 75 ;;
    fail) echo "no such list: $LOCAL" >&2; exit 1 ;;
    nouser) exit 67 ;;
esac
echo "queued as 42"
exit 0
"""


@pytest.fixture
def out() -> Iterator[Path]:
    """A directory the command can write to even after switching to nobody."""
    directory = Path(tempfile.mkdtemp(prefix="roost-command-"))
    directory.chmod(0o1777)
    script = directory / "deliver.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def environment(out: Path, extension: str = "") -> CommandEnvironment:
    local = f"orders+{extension}" if extension else "orders"
    return CommandEnvironment(
        sender="bob@example.org",
        recipient=f"{local}@example.com",
        original_recipient="sales@example.com",
        local=local,
        extension=extension,
        domain="example.com",
        user="nobody",
        home="/nonexistent",
        shell="/usr/sbin/nologin",
        extra=(("OUT", str(out)),),
    )


async def run(out: Path, extension: str = "", **options: object) -> str:
    result = await deliver_command(
        str(out / "deliver.sh"),
        MESSAGE,
        environment=environment(out, extension),
        prepend=delivery_headers("bob@example.org", "orders@example.com"),
        uid=NOBODY,
        gid=NOBODY,
        **options,  # type: ignore[arg-type]
    )
    assert result.exit_status == 0
    return result.output


async def test_success_environment_and_input(out: Path) -> None:
    assert await run(out) == "queued as 42"
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line)
    expected = {
        "SENDER": "bob@example.org",
        "RECIPIENT": "orders@example.com",
        "ORIGINAL_RECIPIENT": "sales@example.com",
        "LOCAL": "orders",
        "EXTENSION": "",
        "DOMAIN": "example.com",
        "USER": "nobody",
        "LOGNAME": "nobody",
        "HOME": "/nonexistent",
        "SHELL": "/usr/sbin/nologin",
        "PATH": "/usr/bin:/bin",
    }
    assert {k: env.get(k) for k in expected} == expected
    assert set(env) - set(expected) <= {"OUT", "TZ", "LANG", "PWD", "SHLVL", "_"}
    stdin = (out / "stdin").read_bytes()
    assert re.match(rb"From bob@example.org \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n", stdin)
    assert stdin.split(b"\n", 1)[1] == (
        b"Return-Path: <bob@example.org>\nDelivered-To: orders@example.com\n"
        b"Subject: order\n\nFrom here\nline\n"
    )
    assert (out / "cwd").read_text() == "/\n"
    assert (out / "umask").read_text().strip() == "0077"


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
async def test_runs_as_the_given_user_without_extra_groups(out: Path) -> None:
    await run(out)
    assert (out / "uid").read_text() == f"{NOBODY}\n"
    assert (out / "groups").read_text() == f"{NOBODY}\n"


@pytest.mark.skipif(not IS_ROOT, reason="only root must name the account")
async def test_root_must_name_a_non_root_account(out: Path) -> None:
    with pytest.raises(ValueError, match="non-root uid"):
        await deliver_command("true", MESSAGE, environment=environment(out), uid=None, gid=None)


async def test_ex_tempfail_defers_with_the_output(out: Path) -> None:
    with pytest.raises(DeliveryError) as caught:
        await run(out, "tempfail")
    assert (caught.value.temporary, caught.value.dsn) == (True, "4.3.0")
    assert caught.value.text == "temporary failure. Command output: database busy"


async def test_other_status_bounces_with_the_output(out: Path) -> None:
    with pytest.raises(DeliveryError) as caught:
        await run(out, "fail")
    assert (caught.value.temporary, caught.value.dsn) == (False, "5.3.0")
    assert caught.value.text == (
        f'Command died with status 1: "{out / "deliver.sh"}". '
        "Command output: no such list: orders+fail"
    )
    with pytest.raises(DeliveryError) as caught:
        await run(out, "nouser")
    assert (caught.value.temporary, caught.value.dsn) == (False, "5.1.1")


async def test_signal_defers(out: Path) -> None:
    with pytest.raises(DeliveryError) as caught:
        await deliver_command(
            "kill -TERM $$", MESSAGE, environment=environment(out), uid=NOBODY, gid=NOBODY
        )
    assert caught.value.temporary and "Command died with signal 15" in caught.value.text


async def test_time_limit_kills_the_process_group(out: Path) -> None:
    pidfile = out / "child.pid"
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        await deliver_command(
            f"sleep 60 & echo $! > {pidfile}; echo started; wait",
            MESSAGE,
            environment=environment(out),
            uid=NOBODY,
            gid=NOBODY,
            time_limit=1.0,
        )
    assert time.monotonic() - started < 10
    assert (caught.value.temporary, caught.value.dsn) == (False, "5.3.0")
    assert caught.value.text.startswith("Command time limit exceeded: ")
    assert caught.value.text.endswith("Command output: started")
    child = int(pidfile.read_text())
    for _ in range(100):  # the kernel reaps the killed background child asynchronously
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (FileNotFoundError, IndexError):
        return "Z"


async def test_command_that_ignores_input_has_taken_the_message(out: Path) -> None:
    big = b"x" * 2_000_000 + b"\r\n"
    result = await deliver_command(
        "echo ignored", big, environment=environment(out), uid=NOBODY, gid=NOBODY
    )
    assert result.output == "ignored"


async def test_large_input_and_output_stream_without_deadlock(out: Path, tmp_path: Path) -> None:
    spool = tmp_path / "message"
    spool.write_bytes(b"Subject: big\r\n\r\n" + b"0123456789\r\n" * 300_000)
    with spool.open("rb") as handle:
        result = await deliver_command(
            "cat; cat /dev/null", handle, environment=environment(out), uid=NOBODY, gid=NOBODY
        )
    assert result.output.endswith("0123456789 0123456789")
    assert len(result.output) <= 1024


class BrokenSpool(io.RawIOBase):
    def __init__(self) -> None:
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 2:
            raise OSError(5, "Input/output error")
        return b"y" * 1000


async def test_message_read_error_defers(out: Path) -> None:
    spool = BrokenSpool()
    with pytest.raises(DeliveryError) as caught:
        await deliver_command(
            "cat > /dev/null",
            spool,  # type: ignore[arg-type]
            environment=environment(out),
            uid=NOBODY,
            gid=NOBODY,
        )
    assert spool.calls == 3
    assert (caught.value.temporary, caught.value.dsn) == (True, "4.3.0")
    assert "error reading message" in caught.value.text

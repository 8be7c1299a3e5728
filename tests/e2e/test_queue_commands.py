"""``roost queue``: mailq output, postqueue -j, flush, postsuper -d/-h/-H/-r, postcat, qshape.

A recipient at a remote domain stays deferred (no outbound transport yet, or none that can
reach ``remote.example``), which gives the queue something to show.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.queue import QueueDirectory, QueueName
from tests.conftest import ROOST, ROOT
from tests.e2e.daemon import roost_cli
from tests.e2e.instance import Instance, start_instance

DEFERRED_RECIPIENT = "friend@remote.example"


def sendmail(instance: Instance, *recipients: str, subject: str = "queued") -> str:
    """Submit a message with ``roost sendmail``; return its queue ID (from -v)."""
    config = str(instance.directory / "main.cf")
    options = ["-v", "-i", "-f", "sender@example.org"]
    result = subprocess.run(
        [*ROOST, "-c", config, "sendmail", *options, *recipients],
        input=f"Subject: {subject}\n\nbody of {subject}\n".encode(),
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(rb"roost/sendmail: (\w{13}): queued in maildrop/", result.stderr)
    assert match, result.stderr
    return match.group(1).decode()


def queue(
    instance: Instance, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ROOST, "-c", str(instance.directory / "main.cf"), "queue", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def in_queue(instance: Instance, queue_name: str, queue_id: str) -> bool:
    """Whether ``queue_name`` holds the committed message (docs/spool.md)."""
    with QueueDirectory(instance.queue) as directory:
        return directory.has_message(QueueName(queue_name), queue_id)


def envelope_document(instance: Instance, queue_name: str, queue_id: str) -> dict[str, Any]:
    """The message's current envelope as JSON; {} when it is not there."""
    with QueueDirectory(instance.queue) as directory:
        try:
            data = directory.read_envelope_data(QueueName(queue_name), queue_id)
        except (OSError, ValueError):
            return {}
    return {} if data is None else dict(json.loads(data))


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait (bounded, small sleeps) for a queue file to reach a state."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def attempts(instance: Instance, queue_name: str, queue_id: str) -> int:
    document = envelope_document(instance, queue_name, queue_id)
    if not document:
        return -1
    return max(int(r["attempts"]) for r in document["recipients"])


def wait_deferred(instance: Instance, queue_id: str, tries: int) -> None:
    wait_for(
        lambda: attempts(instance, "deferred", queue_id) == tries,
        f"{queue_id} deferred after {tries} attempts",
    )


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    directory = tmp_path_factory.mktemp("queue")
    running = start_instance(directory, f"mail_location = maildir:{directory}/mail/%d/%n\n")
    yield running
    running.daemon.stop()


def parse_mailq(text: str) -> dict[str, dict[str, object]]:
    """Parse mailq output into {queue_id: {mark, size, sender, reasons, recipients}}."""
    lines = text.splitlines()
    assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    assert re.fullmatch(r"-- \d+ Kbytes in \d+ Requests?\.", lines[-1])
    messages: dict[str, dict[str, object]] = {}
    for block in "\n".join(lines[1:-1]).strip("\n").split("\n\n"):
        head, *rest = block.split("\n")
        match = re.fullmatch(
            r"(\w{13})([*!]?) +(\d+) (\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d)  (\S+)", head
        )
        assert match, head
        reasons = [line.strip()[1:-1] for line in rest if line.strip().startswith("(")]
        recipients = [line.strip() for line in rest if not line.strip().startswith("(")]
        assert all(line.startswith(" " * 41) for line in rest if not line.strip().startswith("("))
        messages[match.group(1)] = {
            "mark": match.group(2),
            "size": int(match.group(3)),
            "sender": match.group(5),
            "reasons": reasons,
            "recipients": recipients,
        }
    return messages


def test_mailq_shows_a_deferred_message_with_its_reason(instance: Instance) -> None:
    queue_id = sendmail(instance, "alice@virtual.test", DEFERRED_RECIPIENT)
    wait_deferred(instance, queue_id, 1)
    listing = queue(instance, "list")
    assert listing.returncode == 0, listing.stderr
    message = parse_mailq(listing.stdout)[queue_id]
    reason = envelope_document(instance, "deferred", queue_id)["recipients"][1]["reason"]
    assert reason  # today: "no transport for other destinations yet"
    assert message["mark"] == "" and message["sender"] == "sender@example.org"
    assert message["recipients"] == [DEFERRED_RECIPIENT]  # alice was delivered
    assert message["reasons"] == [reason]
    reason_line = next(line for line in listing.stdout.splitlines() if line.endswith(f"({reason})"))
    assert len(reason_line) == max(78, len(reason) + 2)  # right-aligned like Postfix

    [as_json] = [
        json.loads(line)
        for line in queue(instance, "list", "--json").stdout.splitlines()
        if json.loads(line)["queue_id"] == queue_id
    ]
    assert as_json == {
        "queue_name": "deferred",
        "queue_id": queue_id,
        "arrival_time": as_json["arrival_time"],
        "message_size": message["size"],
        "forced_expire": False,
        "sender": "sender@example.org",
        "recipients": [{"address": DEFERRED_RECIPIENT, "delay_reason": reason}],
    }
    assert abs(as_json["arrival_time"] - time.time()) < 60

    shown = queue(instance, "show", queue_id)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.startswith(f"*** ENVELOPE RECORDS deferred/{queue_id} ***\n")
    assert "sender: sender@example.org\n" in out
    assert "done_recipient: alice@virtual.test\n" in out
    assert f"recipient: {DEFERRED_RECIPIENT}\n" in out
    assert "state=deferred, attempts=1" in out
    assert f"*** MESSAGE CONTENTS deferred/{queue_id} ***\nReceived: by mx.roost.test" in out
    assert out.endswith(f"\n\nbody of queued\n*** MESSAGE FILE END deferred/{queue_id} ***\n")
    body = queue(instance, "show", "--body", queue_id)
    assert body.stdout == "body of queued\n"

    shape = queue(instance, "shape")
    assert shape.returncode == 0, shape.stderr
    heading, total, *rows = shape.stdout.splitlines()
    assert heading.split() == ["T", *map(str, (5, 10, 20, 40, 80, 160, 320, 640, 1280)), "1280+"]
    assert total.split()[:3] == ["TOTAL", "1", "1"]
    assert rows[0].split() == ["remote.example", "1", "1", *["0"] * 9]

    deleted = queue(instance, "delete", queue_id)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == f"roost: {queue_id}: removed\nroost: Deleted: 1 message\n"
    assert queue(instance, "list").stdout == "Mail queue is empty\n"
    missing = queue(instance, "delete", queue_id)
    assert missing.returncode == 1
    assert "no such message" in missing.stderr


def test_hold_release_requeue_and_flush(instance: Instance) -> None:
    queue_id = sendmail(instance, DEFERRED_RECIPIENT, subject="held")
    wait_deferred(instance, queue_id, 1)
    status = roost_cli(instance.directory / "main.cf", "status")
    assert "scheduled 1," in status.stdout, status.stdout

    held = queue(instance, "hold", "ALL")
    assert held.returncode == 0, held.stderr
    assert f"roost: {queue_id}: placed on hold\n" in held.stdout
    assert in_queue(instance, "hold", queue_id)
    # the command told the daemon: the queue manager dropped the message's retry timer
    status = roost_cli(instance.directory / "main.cf", "status")
    assert "scheduled 0," in status.stdout, status.stdout
    assert parse_mailq(queue(instance, "list").stdout)[queue_id]["mark"] == "!"
    assert json.loads(queue(instance, "list", "--json").stdout)["queue_name"] == "hold"
    assert queue(instance, "shape", "--queue", "hold").stdout.splitlines()[1].split()[1] == "1"

    released = queue(instance, "release", queue_id)
    assert released.returncode == 0, released.stderr
    assert "Released from hold: 1 message" in released.stdout
    # back through incoming/: the queue manager takes it up and, not due yet, defers it
    wait_for(lambda: in_queue(instance, "deferred", queue_id), "back in deferred")
    assert attempts(instance, "deferred", queue_id) == 1

    requeued = queue(instance, "requeue", "-", stdin=f"{queue_id}\n")
    assert requeued.returncode == 0, requeued.stderr
    assert "Requeued: 1 message" in requeued.stdout
    wait_deferred(instance, queue_id, 2)  # tried again at once

    flushed = queue(instance, "flush")
    assert flushed.returncode == 0, flushed.stderr
    wait_deferred(instance, queue_id, 3)

    assert queue(instance, "delete", "ALL", "deferred").returncode == 0
    assert not in_queue(instance, "deferred", queue_id)


def test_bad_arguments(instance: Instance) -> None:
    assert queue(instance, "delete", "not-an-id").returncode == 1
    assert "not a queue ID" in queue(instance, "delete", "not-an-id").stderr
    assert queue(instance, "show", "4jWjKF55yXbR0").returncode == 1
    assert queue(instance, "release").returncode == 2  # argparse: IDs required


def test_a_message_being_delivered_is_active_in_memory_and_left_alone(tmp_path: Path) -> None:
    # the message waits in a |command (as nobody) until the gate file appears
    gate_dir = Path(tempfile.mkdtemp(prefix="roost-gate-"))
    gate_dir.chmod(0o777)
    gate, out = gate_dir / "open", gate_dir / "out.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "aliases").write_text(
        "postmaster: alice@virtual.test\n"
        f'slow: "|while [ ! -e {gate} ]; do sleep 0.05; done; cat > {out}"\n'
    )
    instance = start_instance(tmp_path)
    try:
        queue_id = sendmail(instance, "slow@roost.test")

        def mark() -> object:
            listing = queue(instance, "list").stdout
            if listing == "Mail queue is empty\n":
                return None
            return parse_mailq(listing).get(queue_id, {}).get("mark")

        wait_for(lambda: mark() == "*", "marked active")
        # not moved on disk: the active queue is the queue manager's memory
        assert in_queue(instance, "incoming", queue_id)
        assert not in_queue(instance, "active", queue_id)
        lines = queue(instance, "list", "--json").stdout.splitlines()
        listed = [json.loads(line) for line in lines]
        assert [m["queue_name"] for m in listed if m["queue_id"] == queue_id] == ["active"]
        for action in ("delete", "hold", "requeue"):
            refused = queue(instance, action, queue_id)
            assert refused.returncode == 1
            assert f"roost: {queue_id}: being delivered (active)" in refused.stderr
        gate.touch()
        wait_for(lambda: not in_queue(instance, "incoming", queue_id), "removed")
        assert b"body of queued" in out.read_bytes()
        assert queue(instance, "list").stdout == "Mail queue is empty\n"
    finally:
        gate.touch()
        instance.daemon.stop()
        shutil.rmtree(gate_dir)


def test_active_messages_are_left_alone_while_the_daemon_runs(tmp_path: Path) -> None:
    # the queue manager is off: messages stay where the commands put them
    instance = start_instance(tmp_path, "master_service_disable = qmgr\n")
    config = tmp_path / "main.cf"
    try:
        queue_id = sendmail(instance, "alice@virtual.test")
        assert instance.queued() == [queue_id]  # picked up into incoming/ at once
        # pretend the queue manager is delivering it
        with QueueDirectory(instance.queue) as directory:
            directory.move(queue_id, QueueName.INCOMING, QueueName.ACTIVE)
        assert parse_mailq(queue(instance, "list").stdout)[queue_id]["mark"] == "*"
        for action in ("delete", "hold", "requeue"):
            refused = queue(instance, action, queue_id)
            assert refused.returncode == 1
            assert f"roost: {queue_id}: being delivered (active)" in refused.stderr
        assert in_queue(instance, "active", queue_id)
        flush = roost_cli(config, "queue", "flush")
        assert flush.returncode == 69
        assert "queue manager is not running" in flush.stderr
    finally:
        instance.daemon.stop()
    # with the daemon down, active/ holds a crash leftover and may be changed
    held = roost_cli(config, "queue", "hold", queue_id)
    assert held.returncode == 0, held.stderr
    assert in_queue(instance, "hold", queue_id)
    down = roost_cli(config, "queue", "flush")
    assert down.returncode == 69
    assert "Cannot flush mail queue - mail system is down" in down.stderr
    assert roost_cli(config, "queue", "delete", queue_id).returncode == 0
    assert roost_cli(config, "queue", "list").stdout == "Mail queue is empty\n"

"""The master-worker channel: a worker's commit notices, made without json.dumps."""

from __future__ import annotations

import asyncio
import json
import socket

from hypothesis import given
from hypothesis import strategies as st

from roost.daemon.channel import Channel, Message, commit_line
from roost.queue.queue_id import QueueIdGenerator


def test_commit_line_is_what_send_encodes_for_queue_ids() -> None:
    make = QueueIdGenerator()
    for _ in range(200):
        queue_id = make()
        expected = json.dumps({"t": "commit", "id": queue_id}, separators=(",", ":"))
        assert commit_line(queue_id) == expected.encode() + b"\n"


@given(st.text())
def test_commit_line_is_json_for_any_text(queue_id: str) -> None:
    line = commit_line(queue_id)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"t": "commit", "id": queue_id}


async def test_send_line_and_send_arrive_in_order_as_messages() -> None:
    master_end, worker_end = socket.socketpair()
    received: list[Message] = []
    master = Channel(master_end, received.append)
    worker = Channel(worker_end, lambda message: None)
    await master.start()
    await worker.start()
    worker.send({"t": "ready", "pid": 1})
    worker.send_line(commit_line("4Zk2Xy1AbCdE"))
    worker.send_line(commit_line('odd"id\\'))
    worker.send({"t": "bus", "p": "x"})
    for _ in range(200):
        if len(received) == 4:
            break
        await asyncio.sleep(0.01)
    assert received == [
        {"t": "ready", "pid": 1},
        {"t": "commit", "id": "4Zk2Xy1AbCdE"},
        {"t": "commit", "id": 'odd"id\\'},
        {"t": "bus", "p": "x"},
    ]
    await worker.close()
    await master.close()

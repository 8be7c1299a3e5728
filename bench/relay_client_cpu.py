"""CPU of roost's smtp transport alone, per relayed message (no daemon, no queue).

``SmtpTransport.deliver`` runs in this process on uvloop for ``--messages`` jobs of 4 KB,
``--concurrency`` at a time, to an ``smtp-sink`` on a loopback port (another process, not
counted), routed by a ``transport_maps`` lookup as in bench/relay_bench.py. The content is
handed over in the job (``DeliveryJob.content``, as the queue manager does for small
messages; for a roost without that field, through ``open_content`` from memory). After a
warm-up that opens the connections, the process's CPU time (``time.process_time``, all
threads) over the measured jobs is printed in microseconds per message: the transport's
Python, uvloop and the system calls made for it (socket writes and reads), without the
queue manager, the spool and logging. Wall-clock rates are printed too but are not the
figure (the sink shares the cores).

Usage::

    .venv/bin/python bench/relay_client_cpu.py [--messages 5000] [--src DIR]

``--src DIR`` runs the ``roost`` package found in DIR (e.g. an export of an older commit),
so that two versions can be measured one after the other. With ``valgrind --tool=callgrind``
around it, the instruction counts of two versions can be compared independently of the
machine's load (subtract a ``--messages 0`` run to leave out start-up).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096, help="body bytes")
    parser.add_argument("--src", type=Path, help="directory holding the roost package to run")
    args = parser.parse_args(argv)
    if args.src is not None:
        sys.path.insert(0, str(args.src.resolve()))
    import uvloop

    from roost.delivery.resolver import DnsResolver
    from roost.delivery.smtp import LocalAddresses, SmtpConfig, SmtpTransport
    from roost.queue.envelope import Envelope, Recipient, WithProtocol
    from roost.queue.manager import DeliveryJob

    line = b"x" * 76 + b"\r\n"
    body = b"Subject: relay client cpu\r\nFrom: sender@example.com\r\n\r\n"
    body += line * max(1, args.size // len(line))
    sink_program = common.find_program("smtp-sink")
    if sink_program is None:
        sys.exit("smtp-sink not found: apt-get install postfix (it ships in /usr/sbin)")
    port = common.free_port()
    command = [sink_program, "-c", "-4", f"127.0.0.1:{port}", "256"]
    if os.geteuid() == 0:  # smtp-sink refuses to run as root without -u
        command[1:1] = ["-u", "nobody"]
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:  # until the sink listens
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sink.kill()
                sys.exit("smtp-sink did not start")
            time.sleep(0.05)

    async def run() -> None:
        config = SmtpConfig(
            myhostname="relay.test", helo_name="relay.test", default_port=port, ip_versions=(4,)
        )
        route = f"smtp:[127.0.0.1]:{port}"
        transport = SmtpTransport(
            config,
            dns=DnsResolver(["127.0.0.1:1"], timeout=1.0),
            transport_lookup=lambda key: route if key == "sink.test" else None,
            is_myself=LocalAddresses(["127.0.0.1"]),
        )
        recipient = Recipient("user@sink.test")
        slots = asyncio.Semaphore(args.concurrency)
        extra: dict[str, Any] = {}
        if "content" in DeliveryJob.__dataclass_fields__:
            extra["content"] = body

        async def one(number: int) -> None:
            async with slots:
                envelope = Envelope(
                    envelope_sender="sender@example.com",
                    recipients=(recipient,),
                    arrival_time=time.time(),
                    protocol=WithProtocol.ESMTP,
                    size=len(body),
                )
                job = DeliveryJob(
                    queue_id=f"4ZxYwV{number:07d}",
                    envelope=envelope,
                    recipients=((0, recipient),),
                    open_content=lambda: io.BytesIO(body),
                    content_size=len(body),
                    **extra,
                )
                [result] = await transport.deliver(job)
                if result.status != "sent":
                    raise RuntimeError(f"not sent: {result}")

        await asyncio.gather(*(one(n) for n in range(10 * args.concurrency)))  # warm up
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(args.messages)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if args.messages:
            print(
                f"{1e6 * cpu / args.messages:.1f} us CPU per message"
                f" ({args.messages / wall:.0f} msg/s wall clock, not the figure)"
            )
        await transport.close()

    try:
        uvloop.run(run())
    finally:
        sink.terminate()
        sink.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

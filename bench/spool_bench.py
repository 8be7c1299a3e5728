"""Spool accept throughput: concurrent producers enqueue messages durably.

Each producer stands for one SMTP session: it calls ``Spool.enqueue`` (content fsynced,
envelope fsynced, renamed, directory fsynced) for each of its messages in turn. The run
compares each change on its own (``group_commit=False``, one thread per producer) with
group commit: ``fdatasync`` per file (in parallel, as by default, or one after another)
and one ``syncfs`` per batch. It also counts the disk's cache flushes (Linux).

Usage::

    .venv/bin/python bench/spool_bench.py [--producers 20] [--messages 2000] [--size 4096]
        [--dir PATH]   # a directory on the file system to measure (not a tmpfs)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from roost.queue import Envelope, Recipient, Spool, SyncMethod, WithProtocol
from roost.queue.directory import QueueDirectory


def device_flushes(path: str) -> int | None:
    """Return the cache-flush requests completed so far by the disk holding ``path``.

    Field 16 of /sys/dev/block/MAJ:MIN/stat (Linux 5.5+); None when unavailable. A flush is
    what a durable write costs on real disks (milliseconds on SATA SSDs and HDDs).
    """
    device = os.stat(path).st_dev
    stat = f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/stat"
    try:
        with open(stat) as file:
            fields = file.read().split()
    except OSError:
        return None
    return int(fields[15]) if len(fields) >= 17 else None


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    messages: int
    seconds: float
    batches: int
    latencies: Sequence[float]
    flushes: int | None

    def line(self) -> str:
        rate = self.messages / self.seconds
        ordered = sorted(self.latencies)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[int(len(ordered) * 0.99)] * 1000
        per_batch = self.messages / max(self.batches, 1)
        flushes = "n/a" if self.flushes is None else f"{self.flushes / self.messages:.2f}"
        return (
            f"{self.name:<26} {rate:6.0f} msg/s {self.seconds:6.2f} s  "
            f"{per_batch:5.1f} msg/batch  disk flushes/msg {flushes:>5}  "
            f"latency p50 {p50:5.2f} ms p99 {p99:6.2f} ms"
        )


def make_message(size: int) -> bytes:
    header = (
        b"Received: from client.example (client.example [192.0.2.1])\r\n"
        b"\tby mx.example (roost) with ESMTPS id 0000000000000; Thu, 1 Jan 2025 00:00:00 +0000\r\n"
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n"
    )
    line = b"x" * 76 + b"\r\n"
    body = line * ((size - len(header)) // len(line) + 1)
    return (header + body)[:size]


async def run(
    name: str,
    root: str,
    producers: int,
    messages: int,
    content: bytes,
    *,
    group_commit: bool,
    sync_method: SyncMethod,
    flush_threads: int,
) -> Result:
    directory = tempfile.mkdtemp(prefix="spool-", dir=root)
    envelope = Envelope(
        "sender@example.org",
        (Recipient("rcpt@example.net"),),
        time.time(),
        WithProtocol.ESMTPS,
        client_address="192.0.2.1",
    )
    batches = 0
    original = QueueDirectory.run_batch

    def counting_run_batch(self: QueueDirectory, jobs: Sequence[object]) -> None:
        nonlocal batches
        batches += 1
        original(self, jobs)  # type: ignore[arg-type]

    latencies: list[float] = []
    spool = Spool(
        directory,
        group_commit=group_commit,
        sync_method=sync_method,
        io_threads=producers if not group_commit else 4,
        flush_threads=flush_threads,
    )
    spool.directory.run_batch = counting_run_batch.__get__(spool.directory)  # type: ignore[method-assign]

    async def producer() -> None:
        for _ in range(messages):
            started = time.perf_counter()
            await spool.enqueue(envelope, content)
            latencies.append(time.perf_counter() - started)

    async with spool:
        flushes_before = device_flushes(directory)
        started = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(producers)))
        elapsed = time.perf_counter() - started
        flushes_after = device_flushes(directory)
    shutil.rmtree(directory)
    flushes = (
        None if flushes_before is None or flushes_after is None else flushes_after - flushes_before
    )
    return Result(name, producers * messages, elapsed, batches, latencies, flushes)


async def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--producers", type=int, default=20)
    parser.add_argument("--messages", type=int, default=2000, help="per producer")
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes")
    parser.add_argument("--dir", default=None, help="where to create the spools")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every configuration")
    parser.add_argument(
        "--configs",
        default="single,fsync,fsync1,syncfs",
        help="comma-separated, run in this order: single (no batching), fsync, fsync1 "
        "(flushes one after another), syncfs",
    )
    args = parser.parse_args(argv)
    root = args.dir or tempfile.gettempdir()
    content = make_message(args.size)
    print(
        f"{args.producers} producers x {args.messages} messages of {args.size} bytes "
        f"in {os.path.realpath(root)}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    known = {
        "single": ("no batching (fdatasync)", False, SyncMethod.FSYNC, 1),
        "fsync": ("group commit (fdatasync)", True, SyncMethod.FSYNC, 8),
        "fsync1": ("group, serial fdatasync", True, SyncMethod.FSYNC, 1),
        "syncfs": ("group commit (syncfs)", True, SyncMethod.SYNCFS, 1),
    }
    configurations = [known[name] for name in args.configs.split(",")]
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, group_commit, sync_method, flush_threads in configurations:
            result = await run(
                name,
                root,
                args.producers,
                args.messages,
                content,
                group_commit=group_commit,
                sync_method=sync_method,
                flush_threads=flush_threads,
            )
            print(result.line(), flush=True)
            rates.setdefault(name, []).append(result.messages / result.seconds)
    if args.rounds > 1:
        for name, values in rates.items():
            print(f"{name:<28} median {statistics.median(values):9.0f} msg/s")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

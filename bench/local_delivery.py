"""End-to-end local delivery, side by side: smtp-source -> server -> one user's Maildir.

Issue 4's benchmark. The clock runs from smtp-source's start (its first connection) until
the last message is a file in the recipient's Maildir ``new/``; the rate is messages over
that time. roost runs with its queue manager (local delivery into
``mail_location = maildir:...``), Postfix with virtual(8) Maildir delivery; both durable
(fsync) before the ``250`` and before the Maildir rename. Every run has a fresh instance
(a fresh Maildir: BENCHMARKING.md pitfall), and runs alternate roost, postfix, roost, ...

Every second a sampler counts the queue (incoming + active + deferred) and the Maildir, to
show whether the queue stays bounded while the server accepts faster than it delivers.

Usage (as root, so that Postfix's master can start)::

    .venv/bin/python bench/local_delivery.py [--quick] [--rounds 3] [--workloads 4k-20,100k-20]
        [--servers roost,postfix] [--dir /var/tmp] [--json out.json] [--profile DIR]

Workloads (``--quick``: 10x fewer messages): ``4k-20`` 20 sessions x 20,000 messages of
4 KB (in all), ``100k-20`` 20 x 5,000 x 100 KB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import common
from common import Instance, RunRecord, Workload

WORKLOADS = {
    w.name: w
    for w in (
        Workload("4k-20", sessions=20, messages=20_000, size=4096),
        Workload("100k-20", sessions=20, messages=5_000, size=100 * 1024),
    )
}
#: seconds between two looks at the Maildir while waiting for the last message
POLL_INTERVAL = 0.2


def run_once(
    instance: Instance,
    server: str,
    workload: Workload,
    round_: int,
    *,
    timeout: float,
    profile: Path | None = None,
) -> RunRecord:
    """Fresh instance, send the workload, wait until the Maildir has every message."""
    with common.serving(instance, profile):
        maildir = instance.maildir_new()
        sampler = common.Sampler(
            lambda: {**instance.queue_counts(), "maildir": common.count_names(maildir)}
        )
        load = common.load_average()
        cpu_before = instance.cpu_seconds()
        # roost's master alone (queue manager, deliveries), without its worker processes
        master_pid = instance.profile_pid() if isinstance(instance, common.RoostInstance) else None
        split_before = common.process_cpu_split(master_pid) if master_pid else (0.0, 0.0)
        started = time.monotonic()
        sampler.start(started)
        source = subprocess.Popen(
            common.smtp_source_command(instance.port, workload),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ingest_seconds: float | None = None
        failure = ""
        delivered = 0
        while True:
            now = time.monotonic()
            if ingest_seconds is None and source.poll() is not None:
                ingest_seconds = now - started
                if source.returncode:
                    stderr = source.stderr.read() if source.stderr else ""
                    failure = f"smtp-source exit {source.returncode}: {stderr.strip()[-300:]}"
                    break
            delivered = common.count_names(maildir)
            if delivered >= workload.messages:
                break
            if now - started > timeout:
                failure = f"only {delivered} of {workload.messages} delivered after {timeout:.0f} s"
                break
            time.sleep(POLL_INTERVAL)
        elapsed = time.monotonic() - started
        cpu = instance.cpu_seconds() - cpu_before
        split_after = common.process_cpu_split(master_pid) if master_pid else (0.0, 0.0)
        master_user, master_sys = (a - b for a, b in zip(split_after, split_before, strict=True))
        master_cpu = master_user + master_sys if master_pid else None
        sampler.stop()
        if source.poll() is None:
            source.kill()
            source.wait()
        if delivered > workload.messages:
            failure = f"{delivered} messages in the Maildir, {workload.messages} sent"
        series = [
            (round(t, 1), sum(n for name, n in counts.items() if name != "maildir"))
            for t, counts in sampler.samples
        ]
        return RunRecord(
            server=server,
            workload=workload.name,
            round=round_,
            messages=workload.messages,
            seconds=elapsed,
            cpu_seconds=cpu,
            load_before=load,
            ok=not failure,
            note=failure,
            extra={
                "ingest_seconds": ingest_seconds,
                "delivered": delivered,
                "queue_max": max((q for _, q in series), default=0),
                "queue_at_end": sum(instance.queue_counts().values()),
                "queue_series": series,
                **(
                    {}
                    if master_cpu is None
                    else {
                        "master_cpu_ms": 1000 * master_cpu / max(delivered, 1),
                        # user space (mostly Python) and kernel, for the master's changes
                        "master_user_ms": 1000 * master_user / max(delivered, 1),
                        "master_sys_ms": 1000 * master_sys / max(delivered, 1),
                    }
                ),
            },
        )


def queue_line(series: Sequence[tuple[float, int]], width: int = 24) -> str:
    """The queue size at about ``width`` evenly spaced moments: ``t=3s:120 ...``."""
    picked = common.evenly_spaced(series, width)
    return " ".join(f"{t:.0f}s:{q}" for t, q in picked) if picked else "(no samples)"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    common.add_workload_arguments(parser, WORKLOADS)
    common.add_comparison_arguments(parser)
    args = parser.parse_args(argv)

    workloads = common.chosen_workloads(args, WORKLOADS)
    servers, machine = common.prepare_comparison(args)
    print(f"servers: {', '.join(servers)}; rounds: {args.rounds}")
    try:
        records = common.run_workloads(
            args,
            workloads,
            servers,
            run_once,
            name="delivery",
            deliver=True,
            line=record_line,
            to=f" to {common.RECIPIENT}",
        )
    finally:
        common.drop_roost_snapshot()
    print()
    print(common.comparison_table(records, workloads, servers))
    print("\nsmtp-source's own rate (acceptance while delivering), medians:")
    for workload in workloads:
        for server in servers:
            rates = [
                r.messages / r.extra["ingest_seconds"]
                for r in records
                if r.server == server and r.workload == workload.name and r.extra["ingest_seconds"]
            ]
            queue_max = [
                r.extra["queue_max"]
                for r in records
                if r.server == server and r.workload == workload.name
            ]
            if rates:
                print(
                    f"  {workload.name:<8} {server:<15} {common.median(rates):6.0f} msg/s;"
                    f" largest queue seen {max(queue_max)} messages"
                )
    if args.json:
        common.write_json(args.json, machine, records)
    return 0 if all(r.ok for r in records) else 1


def record_line(record: RunRecord) -> str:
    ingest = record.extra["ingest_seconds"]
    status = "" if record.ok else f"  FAILED: {record.note}"
    master = (
        f" (master {record.extra['master_cpu_ms']:.2f}"
        f" = user {record.extra.get('master_user_ms', 0.0):.2f}"
        f" + sys {record.extra.get('master_sys_ms', 0.0):.2f})"
        if "master_cpu_ms" in record.extra
        else ""
    )
    return (
        f"  round {record.round} {record.server:<15} {record.rate:6.0f} msg/s delivered"
        f"  {record.seconds:7.2f} s (smtp-source done at {ingest or float('nan'):.1f} s)"
        f"  CPU {record.cpu_ms_per_message:5.2f} ms/msg{master}  load {record.load_before:4.1f}"
        f"{status}\n    queue: {queue_line(record.extra['queue_series'])}"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

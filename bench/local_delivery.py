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
import dataclasses
import subprocess
import sys
import tempfile
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
    instance.setup()
    instance.start()
    maildir = instance.maildir_new()
    profiler = None
    sampler = common.Sampler(
        lambda: {**instance.queue_counts(), "maildir": common.count_names(maildir)}
    )
    try:
        time.sleep(0.5)
        if profile is not None and instance.profile_pid() is not None:
            profiler = common.Profiler(instance.profile_pid() or 0, profile)
            time.sleep(1)
        load = common.load_average()
        cpu_before = instance.cpu_seconds()
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
            },
        )
    finally:
        if profiler is not None:
            profiler.stop()
        instance.stop()
        instance.remove()
        trace = instance.take_trace()
        if trace:
            print(common.trace_lines(trace))


def queue_line(series: Sequence[tuple[float, int]], width: int = 24) -> str:
    """The queue size at about ``width`` evenly spaced moments: ``t=3s:120 ...``."""
    if not series:
        return "(no samples)"
    step = max(len(series) // width, 1)
    picked = list(series[::step])
    if picked[-1] != series[-1]:
        picked.append(series[-1])
    return " ".join(f"{t:.0f}s:{q}" for t, q in picked)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer messages")
    parser.add_argument("--messages", type=int, help="messages per run, for every workload")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server (default 3)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--servers", default="roost,postfix", help="comma-separated, in order")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--profile", type=Path, help="py-spy one extra roost run per workload")
    parser.add_argument(
        "--no-snapshot", action="store_true", help="run src/ live, not a copy taken at start"
    )
    parser.add_argument(
        "--roost-src", type=Path, help="run the roost package in this directory (PYTHONPATH)"
    )
    args = parser.parse_args(argv)

    servers = args.servers.split(",")
    if "postfix" in servers and (problem := common.postfix_usable()):
        sys.exit(f"cannot run Postfix: {problem} (or leave it out with --servers roost)")
    workloads = [WORKLOADS[name] for name in args.workloads.split(",")]
    if args.quick:
        workloads = [w.scaled(10) for w in workloads]
    if args.messages:
        workloads = [dataclasses.replace(w, messages=args.messages) for w in workloads]
    common.warn_if_tmpfs(args.dir)
    machine = common.machine_description(args.dir)
    machine["roost_source"] = common.use_roost_source(
        args.dir, snapshot=not args.no_snapshot, source=args.roost_src
    )
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()))
    print(f"servers: {', '.join(servers)}; rounds: {args.rounds}")
    try:
        records = run_all(args, workloads, servers)
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


def run_all(
    args: argparse.Namespace, workloads: Sequence[Workload], servers: Sequence[str]
) -> list[RunRecord]:
    """Every workload with the servers alternating; then a profiled run if asked."""
    records: list[RunRecord] = []
    for workload in workloads:
        print(f"\n{workload.name}: smtp-source {workload.describe()} to {common.RECIPIENT}")
        for round_, server in common.alternating(servers, args.rounds):
            instance = common.make_instance(server, args.dir, f"deliver-{server}", deliver=True)
            record = run_once(instance, server, workload, round_, timeout=args.timeout)
            records.append(record)
            ingest = record.extra["ingest_seconds"]
            status = "" if record.ok else f"  FAILED: {record.note}"
            print(
                f"  round {round_} {server:<15} {record.rate:6.0f} msg/s delivered"
                f"  {record.seconds:7.2f} s (smtp-source done at {ingest or float('nan'):.1f} s)"
                f"  CPU {record.cpu_ms_per_message:5.2f} ms/msg  load {record.load_before:4.1f}"
                f"{status}\n    queue: {queue_line(record.extra['queue_series'])}",
                flush=True,
            )
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            raw = args.profile / f"delivery-{workload.name}.txt"
            instance = common.make_instance("roost", args.dir, "deliver-profile", deliver=True)
            record = run_once(instance, "roost", workload, 0, timeout=args.timeout, profile=raw)
            raw.with_suffix(".summary.txt").write_text(common.summarize_profile(raw) + "\n")
            print(f"  profiled run (not counted): {record.rate:.0f} msg/s; profile {raw}")
    return records


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

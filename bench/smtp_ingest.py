"""SMTP ingest, side by side: roost against a Postfix instance, smtp-source as the client.

Issue 3's benchmark. Every message must be durable before its ``250``. By default
(``--mode accept``) neither server delivers: roost runs with ``master_service_disable =
qmgr`` (mail stays in ``incoming/``) and Postfix holds every message (``header_checks =
static:HOLD``: cleanup(8) writes and fsyncs the queue file, then renames it into ``hold/``).
``--mode deliver`` lets both deliver into the Maildir in the background while they accept
(BENCHMARKING.md's "durable, into Maildir" figures); the rate is still smtp-source's.

Runs alternate (roost, postfix, roost, postfix, ...), each on a fresh instance; the table
gives medians and the ratio roost/Postfix (of the medians, and the median of the ratios of
the runs done next to each other). Server CPU per message comes from /proc (see common.py).

Usage (as root, so that Postfix's master can start)::

    .venv/bin/python bench/smtp_ingest.py [--quick] [--rounds 3] [--workloads 4k-20,4k-1,100k-20]
        [--servers roost,postfix] [--mode accept|deliver] [--dir /var/tmp] [--json out.json]
        [--profile DIR]        # one extra roost run per workload under py-spy (not counted)

Workloads (``--quick``: 10x fewer messages): ``4k-20`` 20 sessions x 20,000 messages of
4 KB (in all, as smtp-source's ``-m``), ``4k-1`` 1 session x 5,000 x 4 KB, ``100k-20`` 20 x
5,000 x 100 KB. ``--servers roost:syncfs`` or ``roost:fastinit+nolog`` run what-if variants of the
daemon (see ``ROOST_PATCHES`` in common.py).
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
        Workload("4k-1", sessions=1, messages=5_000, size=4096),
        Workload("100k-20", sessions=20, messages=5_000, size=100 * 1024),
    )
}
#: issue 3: roost's rate at least this many times Postfix's
TARGETS = {"4k-20": 1.5, "4k-1": 1.0, "100k-20": 1.0}


def run_once(
    instance: Instance,
    server: str,
    workload: Workload,
    round_: int,
    *,
    timeout: float,
    profile: Path | None = None,
) -> RunRecord:
    """Set up and start a fresh instance, send the workload, measure, stop, clean up."""
    instance.setup()
    instance.start()
    profiler = None
    try:
        time.sleep(0.5)  # let start-up work (certificates, process spawns) finish
        if profile is not None and instance.profile_pid() is not None:
            profiler = common.Profiler(instance.profile_pid() or 0, profile)
            time.sleep(1)  # py-spy needs a moment to attach
        load = common.load_average()
        cpu_before = instance.cpu_seconds()
        started = time.monotonic()
        try:
            result = subprocess.run(
                common.smtp_source_command(instance.port, workload),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            failure = (
                f"smtp-source exit {result.returncode}: {result.stderr.strip()[-300:]}"
                if result.returncode
                else ""
            )
        except subprocess.TimeoutExpired:
            failure = f"smtp-source still running after {timeout:.0f} s"
        elapsed = time.monotonic() - started
        cpu = instance.cpu_seconds() - cpu_before
        accepted = instance.accepted()
        if not instance.deliver and accepted != workload.messages and not failure:
            failure = f"{accepted} messages in the queue, expected {workload.messages}"
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
            extra={"accepted": accepted, "queues": instance.queue_counts()},
        )
    finally:
        if profiler is not None:
            profiler.stop()
        instance.stop()
        instance.remove()
        trace = instance.take_trace()
        if trace:
            print(common.trace_lines(trace))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer messages")
    parser.add_argument("--messages", type=int, help="messages per run, for every workload")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server (default 3)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--servers", default="roost,postfix", help="comma-separated, in order")
    parser.add_argument("--mode", choices=("accept", "deliver"), default="accept")
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
    print(f"mode: {args.mode}; servers: {', '.join(servers)}; rounds: {args.rounds}")
    try:
        records = run_all(args, workloads, servers)
    finally:
        common.drop_roost_snapshot()
    print()
    print(common.comparison_table(records, workloads, servers, targets=TARGETS))
    if args.quick:
        print("\n(--quick: short runs; judge the targets on full runs)")
    if args.json:
        common.write_json(args.json, machine, records)
    return 0 if all(r.ok for r in records) else 1


def run_all(
    args: argparse.Namespace, workloads: Sequence[Workload], servers: Sequence[str]
) -> list[RunRecord]:
    """Every workload with the servers alternating; then a profiled run if asked."""
    deliver = args.mode == "deliver"
    records: list[RunRecord] = []
    for workload in workloads:
        print(f"\n{workload.name}: smtp-source {workload.describe()}", flush=True)
        for round_, server in common.alternating(servers, args.rounds):
            instance = common.make_instance(server, args.dir, f"ingest-{server}", deliver=deliver)
            record = run_once(instance, server, workload, round_, timeout=args.timeout)
            records.append(record)
            status = "" if record.ok else f"  FAILED: {record.note}"
            print(
                f"  round {round_} {server:<15} {record.rate:7.0f} msg/s  {record.seconds:7.2f} s"
                f"  CPU {record.cpu_ms_per_message:5.2f} ms/msg  load {record.load_before:4.1f}"
                f"{status}",
                flush=True,
            )
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            raw = args.profile / f"ingest-{args.mode}-{workload.name}.txt"
            instance = common.make_instance("roost", args.dir, "ingest-profile", deliver=deliver)
            record = run_once(instance, "roost", workload, 0, timeout=args.timeout, profile=raw)
            raw.with_suffix(".summary.txt").write_text(common.summarize_profile(raw) + "\n")
            print(f"  profiled run (not counted): {record.rate:.0f} msg/s; profile {raw}")
    return records


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

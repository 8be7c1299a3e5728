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
daemon (see ``ROOST_PATCHES`` in common.py); ``floor``, ``floor:streams``, ``floor:raw``, each
also ``+sync`` (e.g. ``floor:sync``, ``floor:raw+sync``), run bench/smtp_floor.py (the least
server, for comparison: stock aiosmtpd, aiosmtpd's shape, a bare asyncio.Protocol).
"""

from __future__ import annotations

import argparse
import resource
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
    with common.serving(instance, profile):
        load = common.load_average()
        cpu_before = instance.cpu_seconds()
        parts_before = cpu_by_process(instance)
        split_before = common.tree_cpu_split(server_roots(instance))
        client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
        client_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # smtp-source, reaped
        client = [
            round((after - before) * 1000 / workload.messages, 3)
            for before, after in (
                (client_before.ru_utime, client_after.ru_utime),
                (client_before.ru_stime, client_after.ru_stime),
            )
        ]
        cpu = instance.cpu_seconds() - cpu_before
        parts_after = cpu_by_process(instance)
        split = [
            round((after - before) * 1000 / workload.messages, 3)
            for before, after in zip(
                split_before, common.tree_cpu_split(server_roots(instance)), strict=True
            )
        ]
        parts = {
            name: round((seconds - parts_before.get(name, 0.0)) * 1000 / workload.messages, 3)
            for name, seconds in parts_after.items()
        }
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
            extra={
                "accepted": accepted,
                "queues": instance.queue_counts(),
                "cpu_ms_per_message_by_process": parts,
                "cpu_ms_per_message_user_sys": split,
                "client_cpu_ms_per_message_user_sys": client,
            },
        )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    common.add_workload_arguments(parser, WORKLOADS)
    parser.add_argument("--mode", choices=("accept", "deliver"), default="accept")
    common.add_comparison_arguments(parser)
    args = parser.parse_args(argv)

    workloads = common.chosen_workloads(args, WORKLOADS)
    servers, machine = common.prepare_comparison(args)
    print(f"mode: {args.mode}; servers: {', '.join(servers)}; rounds: {args.rounds}")
    try:
        records = common.run_workloads(
            args,
            workloads,
            servers,
            run_once,
            name=f"ingest-{args.mode}",
            deliver=args.mode == "deliver",
            line=record_line,
        )
    finally:
        common.drop_roost_snapshot()
    print()
    print(common.comparison_table(records, workloads, servers, targets=TARGETS))
    if args.quick:
        print("\n(--quick: short runs; judge the targets on full runs)")
    if args.json:
        common.write_json(args.json, machine, records)
    return 0 if all(r.ok for r in records) else 1


def record_line(record: RunRecord) -> str:
    status = "" if record.ok else f"  FAILED: {record.note}"
    parts = record.extra.get("cpu_ms_per_message_by_process") or {}
    detail = " (" + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) + ")" if parts else ""
    if split := record.extra.get("cpu_ms_per_message_user_sys"):
        detail += f" = user {split[0]:.2f} + sys {split[1]:.2f}"
    if client := record.extra.get("client_cpu_ms_per_message_user_sys"):
        detail += f"; smtp-source {client[0]:.2f} + {client[1]:.2f}"
    return (
        f"  round {record.round} {record.server:<15} {record.rate:7.0f} msg/s"
        f"  {record.seconds:7.2f} s  CPU {record.cpu_ms_per_message:5.2f} ms/msg{detail}"
        f"  load {record.load_before:4.1f}{status}"
    )


def cpu_by_process(instance: Instance) -> dict[str, float]:
    """CPU seconds (utime + stime, reaped children included) of the server's processes
    by role: roost's ``master`` and ``workers`` (the processes two levels below a daemon:
    daemon, fork server, workers), else ``smtpd`` and ``other`` by process name."""
    parts: dict[str, float] = {}
    if isinstance(instance, common.RoostDaemon):
        for daemon in instance.processes:
            parts["master"] = parts.get("master", 0.0) + common.process_cpu_seconds(daemon.pid)
            for pid in common.descendants(daemon.pid):
                if pid == daemon.pid:
                    continue
                role = "workers" if _parent(pid) != daemon.pid else "forker"
                parts[role] = parts.get(role, 0.0) + common.process_cpu_seconds(
                    pid, reaped_children=True
                )
        return parts
    master = getattr(instance, "master_pid", lambda: None)()
    if master is None:
        return parts
    for pid in common.descendants(master):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        role = "smtpd" if name == "smtpd" else "cleanup" if name == "cleanup" else "other"
        parts[role] = parts.get(role, 0.0) + common.process_cpu_seconds(pid, reaped_children=True)
    return parts


def server_roots(instance: Instance) -> list[int]:
    """The processes at the top of the server's trees: roost's daemons, Postfix's master
    or the floor server's parent."""
    if isinstance(instance, common.RoostDaemon):
        return [p.pid for p in instance.processes]
    master = getattr(instance, "master_pid", lambda: None)()
    return [] if master is None else [master]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

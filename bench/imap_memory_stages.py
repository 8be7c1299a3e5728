"""Where roost's memory goes with IDLE connections, process by process and stage by stage.

Starts the ``idle`` workload's roost instance (``bench/imap_bench.py``: the same users,
10-message INBOXes and settings), then reads every process's ``/proc/PID/smaps_rollup``
after start, with 10 IDLE sessions (the workers' first logins), after those end, and
with ``--connections`` (1,000) IDLE sessions (LOGIN, SELECT INBOX, IDLE), and, with
``--max-idle SECONDS`` (main.cf ``max_idle``), once those have ended and twice that
time and 10 s more have passed (a worker with no client for ``max_idle`` is replaced by
a new one: the workers are back to their figures after start). With
``--pages`` (as root) it also classifies each worker's private pages of writable
mappings against the fork server's (``/proc/PID/pagemap`` and ``/proc/PID/mem``):

- ``copy``: a page of the image inherited from the fork server, copied on a write, now
  different from the original;
- ``same``: copied, but byte for byte the original again (a reference count went up and
  down);
- ``new``: no page at that address in the fork server: memory the worker allocated.

Used for docs/performance.md, "IMAP memory: base and first use, session 5" and "Worker
replacement after max_idle, session 9". Run under the bench lock::

    flock /tmp/roost-bench.lock .venv/bin/python bench/imap_memory_stages.py --pages
    flock /tmp/roost-bench.lock .venv/bin/python bench/imap_memory_stages.py \\
        --roost-src /var/tmp/base/src
    flock /tmp/roost-bench.lock .venv/bin/python bench/imap_memory_stages.py --max-idle 5

``ROOST_WORKER_PROCESSES`` sets ``worker_processes`` as for ``bench/imap_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import common
import imap_bench
import imap_load
from imap_bench import idle_server, raise_nofile

PAGE = 4096
ROLLUP_FIELDS = ("Pss", "Pss_Anon", "Pss_File", "Private_Dirty", "Shared_Dirty", "Rss")


def rollup(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` (KiB by field)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as text:
        for line in text:
            fields = line.split()
            if len(fields) >= 2 and fields[0].endswith(":") and fields[1].isdigit():
                values[fields[0][:-1]] = int(fields[1])
    return values


def roles(root: int) -> dict[int, str]:
    """The daemon's processes: master, forker (has children), worker1, worker2, ..."""
    parents: dict[int, int] = {}
    for pid in common.descendants(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
    named = {root: "master"}
    for pid, parent in parents.items():
        if parent == root and pid != root:
            children = sorted(p for p, pp in parents.items() if pp == pid)
            named[pid] = "forker" if children else "child"
            for number, child in enumerate(children, start=1):
                named[child] = f"worker{number}"
    return named


def _writable_mappings(pid: int) -> list[tuple[int, int, str]]:
    mappings = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if "w" not in fields[1]:
            continue
        low, high = (int(x, 16) for x in fields[0].split("-"))
        name = os.path.basename(fields[5]) if len(fields) > 5 else "[anon]"
        mappings.append((low, high, name))
    return mappings


def _pagemap(pid: int, low: int, high: int) -> tuple[int, ...]:
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        pagemap.seek(low // PAGE * 8)
        data = pagemap.read((high - low) // PAGE * 8)
    return struct.unpack(f"{len(data) // 8}Q", data)


def page_classes(worker: int, forker: int) -> dict[str, dict[str, int]]:
    """Pages of ``worker``'s writable mappings present and mapped by it alone, by mapping
    name and class (``copy``, ``same``, ``new``)."""
    classes: dict[str, dict[str, int]] = {}
    with (
        open(f"/proc/{forker}/mem", "rb", buffering=0) as original,
        open(f"/proc/{worker}/mem", "rb", buffering=0) as copied,
    ):
        for low, high, name in _writable_mappings(worker):
            mine = _pagemap(worker, low, high)
            try:
                theirs = _pagemap(forker, low, high)
            except OSError:
                theirs = ()
            for index, entry in enumerate(mine):
                if not (entry >> 63 & 1 and entry >> 56 & 1):  # present, exclusive
                    continue
                kind = "new"
                if index < len(theirs) and theirs[index] >> 63 & 1:
                    address = low + index * PAGE
                    try:
                        original.seek(address)
                        copied.seek(address)
                        kind = "same" if original.read(PAGE) == copied.read(PAGE) else "copy"
                    except OSError:
                        kind = "copy"
                counts = classes.setdefault(name, {})
                counts[kind] = counts.get(kind, 0) + 1
    return classes


def report(stage: str, root: int, pages: bool) -> None:
    named = roles(root)
    totals = dict.fromkeys(ROLLUP_FIELDS, 0)
    print(f"== {stage}")
    forkers = [pid for pid, role in named.items() if role == "forker"]
    for pid, role in sorted(named.items(), key=lambda item: item[1]):
        try:
            values = rollup(pid)
        except OSError:
            continue
        for field in ROLLUP_FIELDS:
            totals[field] += values.get(field, 0)
        shown = " ".join(f"{f}={values.get(f, 0) / 1024:.1f}" for f in ROLLUP_FIELDS)
        print(f"  {role:8} {pid:7} {shown}")
        if pages and (role.startswith("worker") or role == "master") and forkers:
            classes = page_classes(pid, forkers[0])
            overall: dict[str, int] = {}
            for name, counts in sorted(classes.items(), key=lambda item: -sum(item[1].values())):
                for kind, count in counts.items():
                    overall[kind] = overall.get(kind, 0) + count
                if sum(counts.values()) * PAGE >= 64 * 1024:
                    text = " ".join(
                        f"{k}={v * PAGE / 2**20:.2f}" for k, v in sorted(counts.items())
                    )
                    print(f"      {name[:40]:40} {text}")
            text = " ".join(f"{k}={v * PAGE / 2**20:.2f}" for k, v in sorted(overall.items()))
            print(f"      {'all (MiB)':40} {text}")
    shown = " ".join(f"{f}={totals[f] / 1024:.1f}" for f in ROLLUP_FIELDS)
    print(f"  total (MiB) {shown}", flush=True)


def set_max_idle(seconds: int) -> None:
    """Have ``idle_server`` write ``max_idle = SECONDS`` into roost's main.cf (a roost
    without the parameter warns and ignores it: the base of a comparison)."""
    make_server = imap_bench.make_server

    def make(*args: Any, **kwargs: Any) -> common.MailboxServer:
        server = make_server(*args, **kwargs)
        server.settings += f"max_idle = {seconds}s\n"
        return server

    imap_bench.make_server = make


def replacements(server: common.MailboxServer) -> int:
    """How many max_idle replacements the daemon logged."""
    log = server.directory / "maillog"
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count(": replaced by pid ")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--pages", action="store_true", help="classify the workers' pages")
    parser.add_argument("--roost-src", type=Path, help="run the roost package in this directory")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--max-idle", type=int, help="main.cf max_idle (s); one more stage")
    args = parser.parse_args()
    raise_nofile()
    if args.max_idle is not None:
        set_max_idle(args.max_idle)
    base = common.mailbox_bench_base(args.dir, "imap-memory-", live=True)
    if args.roost_src is not None:
        common.use_roost_source(base, snapshot=False, source=args.roost_src)
    try:
        with idle_server("roost", base, args.connections) as server:
            time.sleep(1.5)
            root = server.root_pid()
            assert root is not None
            print(f"load {os.getloadavg()[0]:.2f}", flush=True)
            report("after start", root, args.pages)

            async def stages() -> None:
                logins = server.logins()
                first = await imap_load.open_idle_sessions(
                    "127.0.0.1", server.port, logins[:10], 10
                )
                await asyncio.sleep(2)
                report("10 IDLE (first logins)", root, args.pages)
                await first.close()
                await asyncio.sleep(1)
                report("after those 10 ended", root, args.pages)
                many = await imap_load.open_idle_sessions(
                    "127.0.0.1", server.port, logins, args.connections
                )
                await asyncio.sleep(5)
                if many.errors:
                    print(f"errors: {len(many.errors)}, e.g. {many.errors[0]}")
                report(f"{args.connections} IDLE", root, args.pages)
                await many.close()
                if args.max_idle is not None:
                    await asyncio.sleep(2 * args.max_idle + 10)
                    report(
                        f"{args.connections} ended, {2 * args.max_idle + 10}s later"
                        f" ({replacements(server)} replacements logged)",
                        root,
                        args.pages,
                    )

            imap_load.event_loop_run(stages())
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Change-bus relay per IMAP write (docs/performance.md, "Change relay by subscription").

Two worker processes; alice's session in one, bob's in the other, each STOREs flags on
its own INBOX (no other worker watches it, as in imap_bench.py where each client has its
own user). Prints the master's system calls (``strace -c -f``, so strace must be
installed and allowed to attach), the CPU per write of the master and of the workers
(/proc) and the master's relay counters (``status`` answer, ``bus``).

Usage: ``flock /tmp/roost-bench.lock .venv/bin/python bench/bus_relay_count.py [WRITES]``;
``PYTHONPATH=/some/tree/src`` runs another copy of roost (the daemon inherits it).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.e2e.instance import PASSWORD, start_instance  # noqa: E402
from tests.e2e.test_workers import imap_in, status, worker_pids  # noqa: E402

WRITES = int(sys.argv[1]) if len(sys.argv) > 1 else 300


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


directory = Path(tempfile.mkdtemp(prefix="busrelay-measure-", dir="/tmp"))
instance = start_instance(directory, "worker_processes = 2\nmailbox_idle_check_interval = 1h\n")
try:
    master = instance.daemon.process.pid
    pids = worker_pids(instance)
    a, a_pid = imap_in(instance, None, pids)
    b, _ = imap_in(instance, None, pids, avoid=a_pid)
    clients = [(a, "alice", PASSWORD), (b, "bob", "bob's secret")]
    for client, user, password in clients:
        client.login(user, password)
        client.append("INBOX", None, None, b"Subject: x\r\n\r\nbody\r\n")
        client.select("INBOX")
    time.sleep(0.5)
    trace = subprocess.Popen(
        ["strace", "-c", "-f", "-p", str(master), "-o", str(directory / "strace.txt")],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    before = {pid: cpu(pid) for pid in [master, *pids]}
    started = time.monotonic()
    for n in range(WRITES):
        client = clients[n % 2][0]
        client.store("1", "+FLAGS" if n % 4 < 2 else "-FLAGS", "\\Flagged")
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    after = {pid: cpu(pid) for pid in [master, *pids]}
    trace.send_signal(signal.SIGINT)
    trace.wait()
    answer = status(instance)
    print(f"writes {WRITES} in {elapsed:.2f}s; load {os.getloadavg()[0]:.1f}")
    print("master CPU ms/write %.3f" % ((after[master] - before[master]) * 1000 / WRITES))
    print("workers CPU ms/write %.3f" % (sum(after[p] - before[p] for p in pids) * 1000 / WRITES))
    print("bus counters:", answer.get("bus"))
    summary = (directory / "strace.txt").read_text().splitlines()
    print(
        "\n".join(
            line
            for line in summary
            if any(
                word in line
                for word in ("write", "send", "recv", "read", "epoll", "total", "calls")
            )
        )
    )
    for client, _, _ in clients:
        client.logout()
finally:
    instance.daemon.stop()
    shutil.rmtree(directory, ignore_errors=True)

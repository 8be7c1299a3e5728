"""Benchmark the mail store on one big Maildir (default 100,000 messages).

Usage::

    .venv/bin/python bench/store_bench.py [--messages 100000] [--dir /path/to/scratch]
        [--uidlist]

It writes the messages straight into ``cur/`` with Dovecot's delivery names
(``<time>.M<usec>P<pid>.<host>,S=<size>,W=<vsize>:2,<flags>``), then times:

- cold open: no index yet: list cur/, assign UIDs (write ``dovecot-uidlist``), stat
  every file, build ``roost.index.sqlite``. With ``--uidlist`` a Dovecot uidlist already
  exists (the migration case) and its UIDs are adopted instead.
- warm open: index present and current (the common case: a client connects).
- messages(): the message list of an open mailbox.
- sync(), nothing changed; sync() after one delivery into new/; one STORE; one APPEND.
- STATUS without loading the list.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from roost.store import ChangeBus, MailStore, StoreMode

BODY = b"From: bench@example.org\nTo: you@example.org\nSubject: message %d\n\nHello.\n"


def populate(root: Path, count: int, *, uidlist: bool) -> None:
    """Write ``count`` messages into ``root/cur`` (and optionally a Dovecot uidlist)."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cur = os.fspath(root / "cur")
    flags = ("", "S", "RS", "FS", "Sa")
    start = 1_700_000_000
    lines = [f"3 V{start} N{count + 1} G{'0' * 32}\n"]
    for n in range(count):
        data = BODY % n
        size, vsize = len(data), len(data) + data.count(b"\n")
        base = f"{start + n}.M{n % 1_000_000}P4242.bench,S={size},W={vsize}"
        path = os.path.join(cur, f"{base}:2,{flags[n % len(flags)]}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.close(fd)
        os.utime(path, (start + n, start + n))
        lines.append(f"{n + 1} :{base}\n")
    (root / "dovecot-keywords").write_text("0 $Junk\n")
    if uidlist:
        (root / "dovecot-uidlist").write_text("".join(lines))


def timed(label: str, function: Callable[[], object], repeat: int = 1) -> float:
    runs: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        runs.append(time.perf_counter() - started)
    best = min(runs)
    extra = f" (median {statistics.median(runs):.3f} s of {repeat})" if repeat > 1 else ""
    print(f"{label:<46} {best:8.3f} s{extra}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    parser.add_argument("--uidlist", action="store_true", help="start from a Dovecot uidlist")
    parser.add_argument("--keep", action="store_true", help="keep the Maildir afterwards")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="roost-bench-", dir=args.dir))
    root = scratch / "Maildir"
    try:
        print(f"{args.messages} messages in {root}")
        timed("write the files", lambda: populate(root, args.messages, uidlist=args.uidlist))
        mail = MailStore(root, fsync=False, bus=ChangeBus())

        def open_close(readonly: bool = True) -> None:
            mail.open("INBOX", readonly=readonly).close()

        timed("cold open (build the index)", open_close)
        time.sleep(0.2)  # let the directory mtimes leave the race window
        timed("warm open (index current)", open_close, repeat=5)
        box = mail.open("INBOX")
        assert len(box.messages()) == args.messages
        timed("messages()", box.messages, repeat=5)
        timed("sync(), nothing changed", box.sync, repeat=5)

        def deliver() -> None:
            name = f"{time.time_ns()}.Mbench.host"
            (root / "tmp" / name).write_bytes(b"Subject: new\n\nnew\n")
            os.rename(root / "tmp" / name, root / "new" / name)
            assert len(box.sync().added) == 1

        timed("sync() after one delivery to new/", deliver, repeat=5)
        time.sleep(0.2)
        first = box.messages()[0].uid
        timed(
            "store_flags() one message",
            lambda: box.store_flags([first], ["\\Flagged"], StoreMode.ADD),
        )
        timed("sync() right after (cur/ rescan)", box.sync)
        time.sleep(0.2)
        timed("sync() after the race window", box.sync)
        timed("append() one message", lambda: box.append(b"Subject: a\r\n\r\nappended\r\n"))
        box.close()
        time.sleep(0.2)
        timed("STATUS (no message list)", lambda: mail.status("INBOX"), repeat=5)
        size = sum(p.stat().st_size for p in root.iterdir() if p.name.startswith("roost.index"))
        print(f"{'index size':<46} {size / 1e6:8.1f} MB")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Soak: the long versions of the crash and load tests of tests/e2e/test_resilience_*.py.

``crash``: SMTP clients submit numbered messages from ``--concurrency`` sessions while the
daemon is killed with SIGKILL ``--cycles`` times at random moments and restarted; then
every message that got a 250 must be in its recipients' Maildirs (zero losses), duplicates
(the at-least-once window: a delivery done but not yet removed from the queue when the
process died) are counted, every envelope left by each kill must parse, and every Maildir
file must parse with its body intact. Same code as the suite's 4-cycle test
(:func:`tests.e2e.test_resilience_crash.run_crash_campaign`).

``load``: ``--connections`` idle and slow (one byte per second) connections over SMTP, IMAP
and POP3 for ``--hold`` seconds, twice, while a normal client sends over SMTP and reads over
IMAP; VmRSS and Pss of the daemon before, under load and after
(:func:`tests.e2e.test_resilience_load.run_load`).

Usage (as root for the many 127.0.x.y source addresses and file descriptors)::

    .venv/bin/python bench/soak.py [crash] [load] [--cycles 20] [--concurrency 8]
        [--seed N] [--connections 10000] [--hold 30] [--dir /var/tmp] [--json out.json]

Exit status 1 when a pass criterion fails (the figures are printed either way).
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.instance import start_instance  # noqa: E402
from tests.e2e.test_resilience_crash import assert_campaign, run_crash_campaign  # noqa: E402
from tests.e2e.test_resilience_load import MIX, run_load  # noqa: E402
from tests.e2e.test_resilience_support import log_problems  # noqa: E402


def crash(args: argparse.Namespace, base: Path) -> dict[str, object]:
    report, verdict = run_crash_campaign(
        base / "crash",
        cycles=args.cycles,
        seed=args.seed,
        concurrency=args.concurrency,
        min_wait=args.min_wait,
        max_wait=args.max_wait,
        drain_timeout=300,
    )
    by_kind: collections.Counter[str] = collections.Counter()
    for (_, number), _count in verdict.duplicates.items():
        by_kind["two recipients" if number % 3 == 2 else "one recipient"] += 1
    result: dict[str, object] = json.loads(report.to_json())
    result["duplicates_by_message_kind"] = dict(by_kind)
    try:
        assert_campaign(report, verdict)
        result["passed"] = True
    except AssertionError as exc:
        result["passed"] = False
        result["failure"] = str(exc)
    return result


def load(args: argparse.Namespace, base: Path) -> dict[str, object]:
    total = sum(spec[0] for spec in MIX.values())
    scale = args.connections / total
    mix = {name: (round(count * scale), octet, slow) for name, (count, octet, slow) in MIX.items()}
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < args.connections + 1000:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is too low for {args.connections} connections")
    instance = start_instance(base / "load")
    try:
        figures = run_load(instance, mix=mix, hold=args.hold)
    finally:
        instance.daemon.stop()
    result: dict[str, object] = json.loads(figures.to_json())
    problems = log_problems(instance.log())
    result["log_problems"] = problems[:20]
    result["passed"] = (
        figures.dropped == 0
        and figures.normal_client_seconds < 5
        and figures.fds["after_second"] <= figures.fds["baseline"] + 5
        and figures.second_wave["Pss"] <= figures.loaded["Pss"] * 1.15 + 2048
        and not problems
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="*", choices=["crash", "load"], default=["crash", "load"])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--min-wait", type=float, default=0.5)
    parser.add_argument("--max-wait", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="roost-soak-", dir=args.dir))
    results: dict[str, object] = {"directory": str(base), "started": time.time()}
    for what in dict.fromkeys(args.what):
        print(f"== {what} ==", flush=True)
        results[what] = crash(args, base) if what == "crash" else load(args, base)
        print(json.dumps(results[what], indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failed = [w for w in args.what if not results[w].get("passed")]  # type: ignore[union-attr]
    print("FAILED: " + ", ".join(failed) if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

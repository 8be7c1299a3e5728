"""Long fuzzing runs: the properties of tests/unit/test_fuzz_*.py and the live-server fuzzing
of tests/e2e/test_resilience_fuzz.py with many more examples.

The suite runs a few hundred examples per property; this runs ``--examples`` (default
20,000) with no per-test timeout, and shows Hypothesis' statistics. Failures are
minimised by Hypothesis and printed with the exact input; the live runs also fail when
the daemon log holds a Traceback or an "unexpected error".

Usage::

    .venv/bin/python bench/fuzz.py [--examples 20000] [--only smtp|imap|pop3|live]
        [--seed N] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "smtp": ["tests/unit/test_fuzz_smtp.py"],
    "imap": ["tests/unit/test_fuzz_imap.py"],
    "pop3": ["tests/unit/test_fuzz_pop3.py"],
    "live": ["tests/e2e/test_resilience_fuzz.py"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--only", choices=sorted(TARGETS), action="append")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    chosen = args.only or list(TARGETS)
    paths = [path for name in chosen for path in TARGETS[name]]
    basetemp = tempfile.mkdtemp(prefix="roost-fuzz-", dir=args.dir)
    command = [
        sys.executable,
        "-m",
        "pytest",
        *paths,
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "timeout=0",
        f"--basetemp={basetemp}",
        "--hypothesis-show-statistics",
    ]
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    env = {**os.environ, "ROOST_FUZZ_EXAMPLES": str(args.examples)}
    print(" ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())

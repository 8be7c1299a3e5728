"""CPU of roost's log hand-off: records queued by a thread that sleeps between them, as an
event loop does between a session's commands, and written by the log writer thread.

Five records per simulated message, 0.2 ms of sleep after each; reported per message: the
logging thread's CPU (queueing the records, and its sleeps' system calls) and the other
threads' (the writer: its wake-ups, formatting, writes). Run it with another roost source
on ``PYTHONPATH`` to compare (e.g. a ``git archive`` of the base commit's ``src/``).

Usage::

    PYTHONPATH=/var/tmp/base/src .venv/bin/python bench/log_writer.py [--messages 4000]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from roost.daemon import logsetup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        logsetup.setup_logging(
            to_syslog=False, maillog_file=Path(directory, "maillog"), to_stderr=False
        )
        log = logging.getLogger("roost.smtpd")
        process0, thread0 = time.process_time(), time.thread_time()
        for _ in range(args.messages):
            for step in range(5):
                log.info("%s: client=localhost[127.0.0.1] step=%d", "4XyZ1234ABC", step)
                time.sleep(0.0002)
        thread1 = time.thread_time()
        logsetup.flush_logs()
        process1 = time.process_time()
        logsetup.close_logging()
    per_message = 1e6 / args.messages
    print(
        f"{logsetup.__file__}: logging thread {(thread1 - thread0) * per_message:.1f} us/msg, "
        f"other threads {((process1 - process0) - (thread1 - thread0)) * per_message:.1f} us/msg"
    )


if __name__ == "__main__":
    main()

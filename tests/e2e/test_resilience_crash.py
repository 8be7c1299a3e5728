"""Crash test: ``kill -9`` the daemon at random moments while clients submit and the queue
manager delivers; after each restart nothing that got a ``250`` may be missing.

The suite runs a few cycles (:data:`SUITE_CYCLES`); bench/soak.py runs the same campaign
with 20 and more. Proof obligations, checked after the last restart:

- every message that got ``250`` is in each of its recipients' Maildirs (zero losses);
- exactly once: duplicates (at-least-once is the floor) are counted and reported, and
  more than :func:`duplicate_allowance` fails;
- no spool file is corrupt: every committed queue file's envelope parses with
  ``Envelope.from_json`` both in the state each kill left and at the end; at the end no
  ``ID.env`` lacks its queue file and nothing uncommitted is left, ``corrupt/`` stays
  empty, and the queues are empty once delivery is done;
- every Maildir file parses with the email package with its body intact.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from tests.e2e.daemon import RoostDaemon
from tests.e2e.instance import Instance, start_instance
from tests.e2e.test_resilience_support import (
    FAST_RETRY,
    DeliveryVerdict,
    MessageFactory,
    Submitter,
    audit_maildirs,
    audit_spool,
    judge,
    log_problems,
    seeded,
    wait_drained,
)

SUITE_CYCLES = 4
#: the queue manager's concurrency in the campaign (``default_process_limit``, set below):
#: messages in delivery at one kill at most
QMGR_CONCURRENCY = 20
#: the most recipients a campaign message has (MessageFactory.recipients): copies per message
MAX_RECIPIENTS = 2


def duplicate_allowance(kills: int) -> int:
    """Duplicate copies tolerated: a message delivered but not yet removed from the queue
    when the process died is delivered again (the at-least-once window, as in Postfix): at
    most the messages in delivery at each kill, each with all of its recipients' copies."""
    return kills * QMGR_CONCURRENCY * MAX_RECIPIENTS


@dataclass
class CrashReport:
    """Figures of one crash campaign (bench/soak.py prints them as JSON)."""

    cycles: int
    seed: int
    concurrency: int
    duration: float = 0.0
    kills: list[dict[str, object]] = field(default_factory=list)
    verdict: dict[str, object] = field(default_factory=dict)
    recovery_lines: int = 0
    problems: list[str] = field(default_factory=list)
    submit_errors: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def kill_and_restart(
    instance: Instance,
    main_cf: Path,
    cycle: int,
    submitter: Submitter,
    report: CrashReport,
    started: float,
) -> None:
    """SIGKILL the daemon, audit the spool as the kill left it, start a new daemon."""
    daemon = instance.daemon
    accepted_before = len(submitter.accepted())
    pid = daemon.process.pid
    os.kill(pid, signal.SIGKILL)  # the whole process, mid-whatever
    daemon.process.wait(10)
    daemon.kill()  # closes the notify socket and the log
    snapshot = audit_spool(instance.queue)
    report.kills.append(
        {
            "cycle": cycle,
            "pid": pid,
            "at": round(time.monotonic() - started, 2),
            "accepted_so_far": accepted_before,
            "queued_at_kill": snapshot.pending(),
            "uncommitted_at_kill": len(snapshot.uncommitted),
        }
    )
    report.problems += [f"after kill {cycle}: {p}" for p in snapshot.bad_envelopes]
    restarted = RoostDaemon(main_cf)
    instance.daemon = restarted
    restarted.wait_ready()


def run_crash_campaign(
    directory: Path,
    *,
    cycles: int,
    seed: int | None = None,
    concurrency: int = 6,
    min_wait: float = 0.3,
    max_wait: float = 1.5,
    tail: float = 1.0,
    drain_timeout: float = 90.0,
) -> tuple[CrashReport, DeliveryVerdict]:
    """Submit over SMTP from ``concurrency`` sessions and SIGKILL the daemon ``cycles``
    times at random moments (``min_wait``..``max_wait`` s apart), restarting it each time;
    then let it drain and audit spool and Maildirs."""
    rng = seeded(seed)
    actual_seed = rng.randrange(1 << 30)
    rng.seed(actual_seed)
    report = CrashReport(cycles=cycles, seed=actual_seed, concurrency=concurrency)
    instance = start_instance(
        directory, f"{FAST_RETRY}default_process_limit = {QMGR_CONCURRENCY}\n"
    )
    main_cf = directory / "main.cf"
    factory = MessageFactory(f"crash{actual_seed}")
    started = time.monotonic()
    submitter = Submitter(lambda: instance.ports["smtp"], factory, concurrency=concurrency)
    submitter.start()
    try:
        try:
            for cycle in range(cycles):
                time.sleep(rng.uniform(min_wait, max_wait))
                kill_and_restart(instance, main_cf, cycle, submitter, report, started)
                time.sleep(rng.uniform(0, 0.3))
            time.sleep(tail)
        finally:
            submitter.stop()
        wait_drained(instance.queue, drain_timeout)
        time.sleep(0.2)
        assert instance.daemon.stop() == 0
    finally:
        instance.daemon.kill()  # a no-op unless something above failed
    report.duration = round(time.monotonic() - started, 1)
    report.submit_errors = dict(submitter.errors)
    final = audit_spool(instance.queue)
    report.problems += [f"at the end: {p}" for p in final.bad_envelopes]
    report.problems += [
        f"at the end: envelope without content {p}" for p in final.envelope_without_content
    ]
    report.problems += [f"at the end: in corrupt/: {p}" for p in final.corrupt_queue]
    if final.pending():
        report.problems.append(
            f"at the end: {final.pending()} messages still queued: {final.messages}"
        )
    if final.uncommitted:
        report.problems.append(f"at the end: uncommitted files left: {final.uncommitted}")
    log = instance.log()
    report.recovery_lines = log.count("queue recovery:")
    report.problems += [f"daemon log: {line}" for line in log_problems(log)]
    audit = audit_maildirs(instance.maildir, factory)
    verdict = judge(submitter.outcomes.values(), audit)
    report.verdict = {
        "summary": verdict.summary(),
        "accepted": verdict.accepted,
        "copies_owed": verdict.expected_copies,
        "lost": len(verdict.lost),
        "duplicated_messages": len(verdict.duplicates),
        "extra_copies": verdict.extra_copies,
        "uncertain": verdict.uncertain,
        "uncertain_delivered": verdict.uncertain_delivered,
        "rejected": verdict.rejected,
        "unexpected": len(verdict.unexpected),
        "corrupt": len(verdict.corrupt),
        "maildir_tmp_leftovers": verdict.tmp_leftovers,
    }
    return report, verdict


def assert_campaign(report: CrashReport, verdict: DeliveryVerdict) -> None:
    """The pass criteria shared by the suite and bench/soak.py."""
    context = f"seed {report.seed}: {verdict.summary()}"
    assert verdict.accepted > 0, f"nothing was accepted: {context}"
    assert not verdict.lost, f"LOST accepted messages {verdict.lost[:20]}: {context}"
    assert not verdict.corrupt, f"corrupt Maildir files {verdict.corrupt[:5]}: {context}"
    assert not verdict.unexpected, f"delivered without a 250 {verdict.unexpected[:10]}: {context}"
    assert not report.problems, "\n".join(report.problems[:30])
    allowance = duplicate_allowance(len(report.kills))
    assert verdict.extra_copies <= allowance, (
        f"{verdict.extra_copies} duplicate deliveries (allowance {allowance}): "
        f"{sorted(verdict.duplicates.items())[:10]}: {context}"
    )


def test_kill_9_during_submission_and_delivery_loses_nothing(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    report, verdict = run_crash_campaign(tmp_path, cycles=SUITE_CYCLES)
    print(report.to_json())
    record_property("crash_report", report.to_json())
    assert len(report.kills) == SUITE_CYCLES
    assert report.recovery_lines >= 1, "no kill left anything for recovery: kills too gentle"
    assert_campaign(report, verdict)

"""``roost queue``: list, flush and change the mail queue (mailq, postqueue, postsuper, postcat,
qshape).

The commands read and change the spool directly (:class:`~roost.queue.QueueDirectory`), so
they work while the daemon is down; when it runs, they tell it what changed over the
control socket. See docs/queue.md for the semantics, in short:

* every change is one of the spool's atomic, durable moves or removals;
* a message in the running daemon's active queue (kept in memory; the control command
  ``active`` lists it) is being delivered: ``delete``, ``hold`` and ``requeue`` leave it
  alone and say so (try again in a moment), and ``mailq`` marks it ``*``. With the daemon
  down, ``active/`` holds leftovers of a crash (or of an earlier version) and may be
  changed;
* an envelope is only ever rewritten in ``hold/``, a queue the queue manager never takes
  from (``requeue`` passes through it), so the queue manager and these commands never
  write the same file.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from roost.config import Settings
from roost.queue.directory import QueueDirectory, QueueName
from roost.queue.envelope import Envelope, EnvelopeError, Recipient, RecipientState
from roost.queue.errors import SpoolError, SpoolErrorKind
from roost.queue.queue_id import is_queue_id
from roost.queue.shape import ShapeEntry, queue_shape, render_shape

__all__ = [
    "CHANGES",
    "LIST_ORDER",
    "QueuedMessage",
    "format_mailq",
    "list_messages",
    "mailq_json",
    "run_change",
    "run_flush",
    "run_list",
    "run_shape",
    "run_show",
]

#: The order ``mailq`` lists queues in (Postfix's showq, with ``hold/`` last).
LIST_ORDER: Final = (
    QueueName.MAILDROP,
    QueueName.INCOMING,
    QueueName.ACTIVE,
    QueueName.DEFERRED,
    QueueName.HOLD,
)
#: Postfix's name for the null sender in listings (``empty_address_recipient``).
EMPTY_SENDER: Final = "MAILER-DAEMON"
#: Queue IDs per control request (each line stays under the control socket's limit).
_IDS_PER_REQUEST: Final = 200
EX_UNAVAILABLE: Final = 69

_HEADINGS: Final = ("-Queue ID-", "--Size--", "----Arrival Time----", "-Sender/Recipient-------")
_MARKS: Final = {QueueName.ACTIVE: "*", QueueName.HOLD: "!"}


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message found in the spool.

    Attributes:
        queue: where it is.
        queue_id: its queue ID.
        envelope: its envelope.
    """

    queue: QueueName
    queue_id: str
    envelope: Envelope

    @property
    def pending(self) -> tuple[Recipient, ...]:
        """The recipients still to be delivered (neither delivered nor bounced)."""
        return tuple(r for r in self.envelope.recipients if not r.is_final)


def _say(text: str, stream: TextIO | None = None) -> None:
    print(f"roost: {text}", file=stream or sys.stdout)


def _warn(text: str) -> None:
    print(f"roost: {text}", file=sys.stderr)


def read_envelope(directory: QueueDirectory, queue: QueueName, queue_id: str) -> Envelope | None:
    """Read an envelope without side effects; None when the message is gone meanwhile.

    Unlike :meth:`QueueDirectory.load_envelope` this never moves a corrupt message (a
    listing must not change the queue).

    Raises:
        EnvelopeError: the envelope is not valid.
        OSError: it cannot be read.
    """
    data = directory.read_envelope_data(queue, queue_id)
    if data is None:
        return None
    envelope = Envelope.from_json(data)
    if envelope.queue_id != queue_id:
        raise EnvelopeError("queue_id", f"is {envelope.queue_id!r}, not the file name")
    return envelope


def list_messages(
    directory: QueueDirectory, queues: Iterable[QueueName] = LIST_ORDER
) -> Iterator[QueuedMessage]:
    """Yield the committed messages of ``queues``, queue by queue, oldest first.

    A message moved or removed while the listing runs is left out (or, moved forward, may
    show twice); an unreadable envelope is reported on stderr and skipped.

    Raises:
        SpoolError: a queue directory cannot be read.
    """
    for queue in queues:
        try:
            queue_ids = directory.scan(queue)
        except SpoolError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                continue  # a queue not created yet holds nothing
            raise
        for queue_id in queue_ids:
            try:
                envelope = read_envelope(directory, queue, queue_id)
            except (EnvelopeError, OSError) as exc:
                _warn(f"warning: {queue}/{queue_id}: unreadable envelope: {exc}")
                continue
            if envelope is not None:
                yield QueuedMessage(queue, queue_id, envelope)


def _asctime(when: float) -> str:
    """The first 20 characters of asctime(3), as mailq shows: ``Sat Nov 21 06:00:00 ``."""
    return time.asctime(time.localtime(when))[:20]


def format_mailq(messages: Iterable[QueuedMessage]) -> list[str]:
    """Render messages like Postfix's ``mailq`` (``postqueue -p``).

    Each message: the queue ID with ``*`` when active or ``!`` when on hold, the size, the
    arrival time and the sender; then each pending recipient, preceded by its deferral
    reason in parentheses whenever the reason changes; a blank line between messages; and
    the trailer ``-- N Kbytes in M Requests.``, or ``Mail queue is empty``.
    """
    lines: list[str] = []
    count = total = 0
    for message in messages:
        lines.append(
            f"{_HEADINGS[0]:<11} {_HEADINGS[1]:>7} {_HEADINGS[2]:<20} {_HEADINGS[3]}"
            if count == 0
            else ""
        )
        envelope = message.envelope
        marked = message.queue_id + _MARKS.get(message.queue, "")
        sender = envelope.envelope_sender or EMPTY_SENDER
        lines.append(
            f"{marked:<11} {envelope.size:>7} {_asctime(envelope.arrival_time):>20.20} {sender}"
        )
        shown_reason = ""
        for recipient in message.pending:
            reason = _delay_reason(recipient)
            if reason != shown_reason:
                shown_reason = reason
                text = reason or "reason unavailable"
                lines.append(f"{'':>{max(0, 76 - len(text))}}({text})")
            lines.append(f"{'':<11} {'':>7} {'':<20} {recipient.address}")
        count += 1
        total += envelope.size
    if count == 0:
        return ["Mail queue is empty"]
    lines += ["", f"-- {total // 1024} Kbytes in {count} Request{'' if count == 1 else 's'}."]
    return lines


def _delay_reason(recipient: Recipient) -> str:
    if recipient.state is RecipientState.DEFERRED and recipient.reason:
        return recipient.reason
    return ""


def mailq_json(message: QueuedMessage) -> dict[str, object]:
    """One message as Postfix's ``postqueue -j`` shows it (one JSON object per line)."""
    envelope = message.envelope
    recipients: list[dict[str, object]] = []
    for recipient in message.pending:
        item: dict[str, object] = {"address": recipient.address}
        reason = _delay_reason(recipient)
        if reason:
            item["delay_reason"] = reason
        recipients.append(item)
    return {
        "queue_name": str(message.queue),
        "queue_id": message.queue_id,
        "arrival_time": int(envelope.arrival_time),
        "message_size": envelope.size,
        "forced_expire": False,
        "sender": envelope.envelope_sender or EMPTY_SENDER,
        "recipients": recipients,
    }


# --- talking to the daemon ---------------------------------------------------------------


def _control_path(settings: Settings) -> Path:
    """``roost.daemon.app.control_socket_path``, without importing the daemon (fast start)."""
    return settings.path_of("data_directory") / "control.sock"


def daemon_running(settings: Settings) -> bool:
    """Tell whether a daemon answers on the control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(str(_control_path(settings)))
        except OSError:
            return False
    return True


def tell_daemon(settings: Settings, word: str, queue_ids: Sequence[str] = ()) -> bool:
    """Send a control command (with queue IDs, in pieces) if a daemon runs.

    Returns:
        True when the daemon accepted every request; False when it is not running, cannot
        be reached, or refused (e.g. its queue manager is disabled).
    """
    from roost.daemon.control import ControlError, request

    path = _control_path(settings)
    if not path.exists():
        return False
    pieces = [
        list(queue_ids[i : i + _IDS_PER_REQUEST])
        for i in range(0, len(queue_ids), _IDS_PER_REQUEST)
    ] or [[]]
    try:
        answers = [request(path, " ".join([word, *piece]), timeout=30) for piece in pieces]
    except ControlError:
        return False
    return all(answer.get("ok") for answer in answers)


# --- subcommands -------------------------------------------------------------------------


def _directory(settings: Settings) -> QueueDirectory:
    return QueueDirectory(settings.path_of("queue_directory"))


def daemon_active_ids(settings: Settings) -> frozenset[str] | None:
    """The queue IDs a running daemon is delivering now (its in-memory active queue).

    Returns:
        The IDs; None when no daemon answers (or it has no queue manager).
    """
    from roost.daemon.control import ControlError, request

    path = _control_path(settings)
    if not path.exists():
        return None
    try:
        answer = request(path, "active", timeout=30)
    except ControlError:
        return None
    active = answer.get("active")
    if not answer.get("ok") or not isinstance(active, list):
        return None
    return frozenset(str(queue_id) for queue_id in active)


def _mark_active(
    messages: Iterable[QueuedMessage], active: frozenset[str]
) -> Iterator[QueuedMessage]:
    """Show messages being delivered as in ``active/`` (they stay in their queue on disk)."""
    for message in messages:
        if message.queue_id in active and message.queue is not QueueName.HOLD:
            message = dataclasses.replace(message, queue=QueueName.ACTIVE)
        yield message


def run_list(settings: Settings, *, as_json: bool) -> int:
    """``mailq`` / ``postqueue -p``, or ``postqueue -j`` with ``as_json``.

    Messages the running daemon is delivering are shown as in ``active/`` (``*``).
    """
    active = daemon_active_ids(settings)
    with _directory(settings) as directory:
        messages: Iterable[QueuedMessage] = list_messages(directory)
        if active:
            messages = _mark_active(messages, active)
        if as_json:
            for message in messages:
                print(json.dumps(mailq_json(message), ensure_ascii=False))
        else:
            for line in format_mailq(messages):
                print(line)
    return 0


def run_flush(settings: Settings) -> int:
    """``postqueue -f`` / ``sendmail -q``: ask the daemon to retry deferred mail now."""
    from roost.daemon.control import ControlError, request

    try:
        answer = request(_control_path(settings), "flush")
    except ControlError:
        _warn("Cannot flush mail queue - mail system is down")
        return EX_UNAVAILABLE
    if not answer.get("ok"):
        _warn(f"cannot flush the mail queue: {answer.get('error')}")
        return EX_UNAVAILABLE
    return 0


@dataclass(frozen=True, slots=True)
class Change:
    """One ``postsuper``-like operation.

    Attributes:
        sources: the queues it takes messages from (and ``ALL`` means).
        done: what the per-message line says (``removed``).
        summary: the count line's label (``Deleted``).
        control: the control command that tells a running daemon (``forget``/``notify``).
    """

    sources: tuple[QueueName, ...]
    done: str
    summary: str
    control: str


CHANGES: Final[dict[str, Change]] = {
    "delete": Change(
        (
            QueueName.MAILDROP,
            QueueName.INCOMING,
            QueueName.ACTIVE,
            QueueName.DEFERRED,
            QueueName.HOLD,
        ),
        "removed",
        "Deleted",
        "forget",
    ),
    "hold": Change(
        (QueueName.INCOMING, QueueName.ACTIVE, QueueName.DEFERRED),
        "placed on hold",
        "Placed on hold",
        "forget",
    ),
    "release": Change((QueueName.HOLD,), "released from hold", "Released from hold", "notify"),
    "requeue": Change(
        (QueueName.INCOMING, QueueName.ACTIVE, QueueName.DEFERRED, QueueName.HOLD),
        "requeued",
        "Requeued",
        "notify",
    ),
}


class _Skipped(Exception):
    """A message the operation leaves alone, with the reason."""


def _requeued(envelope: Envelope) -> Envelope:
    """The envelope with every pending recipient due now (``postsuper -r``)."""
    recipients = tuple(
        r if r.is_final else dataclasses.replace(r, next_try=None) for r in envelope.recipients
    )
    return dataclasses.replace(envelope, recipients=recipients)


def _apply(action: str, directory: QueueDirectory, queue: QueueName, queue_id: str) -> None:
    """Run one action on one message (blocking).

    Raises:
        SpoolError: the message moved meanwhile (NOT_FOUND) or an I/O failure.
        _Skipped: the action does not apply.
    """
    if action == "delete":
        directory.remove(queue_id, queue)
    elif action == "hold":
        directory.move(queue_id, queue, QueueName.HOLD)
    elif action == "release":
        directory.move(queue_id, QueueName.HOLD, QueueName.INCOMING)
    elif action == "requeue":
        if queue is not QueueName.HOLD:  # rewrite the envelope where no one else writes
            directory.move(queue_id, queue, QueueName.HOLD)
        envelope = read_envelope(directory, QueueName.HOLD, queue_id)
        if envelope is None:
            raise SpoolError("no such message in hold", SpoolErrorKind.NOT_FOUND, queue_id=queue_id)
        directory.move(queue_id, QueueName.HOLD, QueueName.INCOMING, envelope=_requeued(envelope))
    else:  # pragma: no cover - the parser allows only the names above
        raise ValueError(action)


def _find(
    directory: QueueDirectory, queue_id: str, queues: Sequence[QueueName]
) -> QueueName | None:
    for queue in queues:
        if directory.has_message(queue, queue_id):
            return queue
    return None


def _scan_ids(directory: QueueDirectory, queues: Iterable[QueueName]) -> list[str]:
    """The queue IDs in ``queues`` (envelopes unread: a corrupt one is listed too)."""
    found: list[str] = []
    for queue in queues:
        try:
            found += directory.scan(queue)
        except SpoolError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise
    return found


def _read_ids(arguments: Sequence[str], stdin: TextIO) -> list[str]:
    ids: list[str] = []
    for argument in arguments:
        ids.extend(stdin.read().split() if argument == "-" else [argument])
    return ids


def run_change(
    settings: Settings,
    action: str,
    arguments: Sequence[str],
    *,
    queues: Sequence[str] = (),
    stdin: TextIO | None = None,
) -> int:
    """``postsuper -d`` / ``-h`` / ``-H`` / ``-r``: delete, hold, release or requeue.

    Args:
        settings: main.cf.
        action: ``delete``, ``hold``, ``release`` or ``requeue``.
        arguments: queue IDs, ``ALL`` (every message of the action's queues), or ``-``
            (read IDs from standard input); a trailing queue name restricts the queues,
            as ``postsuper -d ALL deferred`` does.
        queues: queue names to restrict to (``--queue``).
        stdin: where ``-`` reads from (default: standard input).

    Returns:
        0 when every named message was changed, 1 otherwise (not found, skipped, failed).
    """
    change = CHANGES[action]
    args = list(arguments)
    restrict = [QueueName(q) for q in queues]
    while args and args[-1] in {q.value for q in QueueName}:
        restrict.append(QueueName(args.pop()))
    sources = tuple(q for q in change.sources if not restrict or q in restrict)
    sources += tuple(q for q in restrict if q not in sources and q is QueueName.CORRUPT)
    if not sources:
        names = ", ".join(q.value for q in change.sources)
        _warn(f"queue {action}: works on {names}, not {', '.join(q.value for q in restrict)}")
        return 1
    if not args:
        _warn(f"queue {action}: name the messages: QUEUE_ID..., ALL, or - (read from stdin)")
        return 1
    running = daemon_running(settings)
    active = (daemon_active_ids(settings) or frozenset()) if running else frozenset()
    status = 0
    changed: list[str] = []
    with _directory(settings) as directory:
        if "ALL" in args:
            targets = _scan_ids(directory, sources)
        else:
            targets = _read_ids(args, stdin or sys.stdin)
        for queue_id in dict.fromkeys(targets):
            if not is_queue_id(queue_id):
                _warn(f"{queue_id}: not a queue ID")
                status = 1
                continue
            try:
                outcome = _change_one(
                    action, directory, queue_id, sources, running=running, active=active
                )
            except _Skipped as skipped:
                _warn(f"{queue_id}: {skipped}")
                status = 1
                continue
            except SpoolError as exc:
                _warn(f"{queue_id}: {exc}")
                status = 1
                continue
            if outcome:
                _say(f"{queue_id}: {change.done}")
                changed.append(queue_id)
            elif "ALL" not in args:
                _warn(f"{queue_id}: no such message in {', '.join(q.value for q in sources)}")
                status = 1
    if changed:
        _say(f"{change.summary}: {len(changed)} message{'' if len(changed) == 1 else 's'}")
        if running:
            tell_daemon(settings, change.control, changed)
    return status


def _change_one(
    action: str,
    directory: QueueDirectory,
    queue_id: str,
    sources: Sequence[QueueName],
    *,
    running: bool,
    active: frozenset[str] = frozenset(),
) -> bool:
    """Apply ``action`` to ``queue_id`` wherever it is; False when it is in none of
    ``sources``. One retry when the queue manager moves it at the same moment.

    Args:
        action: as for :func:`run_change`.
        directory: the queue.
        queue_id: the message.
        sources: the queues the action takes from.
        running: a daemon runs.
        active: the queue IDs the running daemon is delivering (its in-memory active
            queue; the messages stay in ``incoming/`` or ``deferred/`` on disk).

    Raises:
        _Skipped: it is being delivered (in ``active`` or ``active/`` while the daemon
            runs).
        SpoolError: an I/O failure.
    """
    for attempt in range(2):
        queue = _find(directory, queue_id, sources)
        if queue is None:
            return False
        if running and (queue is QueueName.ACTIVE or queue_id in active):
            raise _Skipped("being delivered (active); not changed, try again in a moment")
        try:
            _apply(action, directory, queue, queue_id)
        except SpoolError as exc:
            if attempt == 0 and (exc.kind is SpoolErrorKind.NOT_FOUND or exc.temporary):
                continue
            raise
        return True
    return False


def run_show(
    settings: Settings,
    queue_id: str,
    *,
    envelope_only: bool = False,
    header_only: bool = False,
    body_only: bool = False,
    out: TextIO | None = None,
) -> int:
    """``postcat -q``: the envelope records, then the message (``-e``, ``--header``, ``-b``).

    The content is written as stored, with LF line ends (8-bit bytes unchanged).
    """
    stream = out or sys.stdout
    if not is_queue_id(queue_id):
        _warn(f"{queue_id}: not a queue ID")
        return 1
    with _directory(settings) as directory:
        queue = _find(directory, queue_id, (*LIST_ORDER, QueueName.CORRUPT))
        if queue is None:
            _warn(f"{queue_id}: no such message in the queue")
            return 1
        where = f"{queue}/{queue_id}"
        status = 0
        everything = not (envelope_only or header_only or body_only)
        if everything or envelope_only:
            try:
                envelope = read_envelope(directory, queue, queue_id)
            except (EnvelopeError, OSError) as exc:
                envelope, problem = None, f"unreadable envelope: {exc}"
            else:
                problem = f"the message left {queue}/ meanwhile"
            print(f"*** ENVELOPE RECORDS {where} ***", file=stream)
            if envelope is None:
                _warn(f"{queue_id}: {problem}")
                status = 1
            else:
                for line in envelope_records(envelope):
                    print(line, file=stream)
        if everything or header_only or body_only:
            try:
                with directory.open_content(queue_id, queue) as handle:
                    content = handle.read()
            except SpoolError as exc:
                _warn(f"{queue_id}: {exc}")
                return 1
            header, body = _split_message(content)
            if everything:
                print(f"*** MESSAGE CONTENTS {where} ***", file=stream)
                _write(stream, content)
                print(f"*** MESSAGE FILE END {where} ***", file=stream)
            else:
                if header_only:
                    _write(stream, header)
                if body_only:
                    _write(stream, body)
    return status


def _split_message(content: bytes) -> tuple[bytes, bytes]:
    """Split a message into its header (with its last CRLF) and its body."""
    if content.startswith(b"\r\n"):
        return b"", content[2:]
    end = content.find(b"\r\n\r\n")
    if end < 0:
        return content, b""
    return content[: end + 2], content[end + 4 :]


def _write(stream: TextIO, data: bytes) -> None:
    lines = data.replace(b"\r\n", b"\n")
    if lines and not lines.endswith(b"\n"):
        lines += b"\n"
    stream.flush()
    binary = getattr(stream, "buffer", None)
    if binary is not None:
        binary.write(lines)
        binary.flush()
    else:
        stream.write(lines.decode("utf-8", "replace"))


def envelope_records(envelope: Envelope) -> list[str]:
    """The envelope as ``postcat -e`` style ``name: value`` lines."""
    lines = [
        f"message_size: {envelope.size}",
        f"message_arrival_time: {time.asctime(time.localtime(envelope.arrival_time))}",
        f"protocol: {envelope.protocol}",
    ]
    optional: list[tuple[str, object]] = [
        ("client_address", envelope.client_address),
        ("client_name", envelope.client_hostname),
        ("helo_name", envelope.helo_name),
        ("sasl_method", envelope.sasl_method),
        ("sasl_username", envelope.sasl_username),
        ("body_type", envelope.body_type),
        ("smtputf8", "yes" if envelope.smtputf8 else None),
        ("dsn_ret", envelope.ret),
        ("dsn_envid", envelope.envid),
    ]
    lines += [f"named_attribute: {name}={value}" for name, value in optional if value is not None]
    lines.append(f"sender: {envelope.envelope_sender}")
    for recipient in envelope.recipients:
        if recipient.orcpt:
            lines.append(f"original_recipient: {recipient.orcpt.partition(';')[2]}")
        if recipient.notify:
            lines.append(f"dsn_notify: {','.join(recipient.notify)}")
        label = "done_recipient" if recipient.is_final else "recipient"
        lines.append(f"{label}: {recipient.address}")
        details = [f"state={recipient.state}", f"attempts={recipient.attempts}"]
        if recipient.next_try is not None:
            details.append(f"next_try={time.asctime(time.localtime(recipient.next_try))}")
        if recipient.dsn_status:
            details.append(f"dsn={recipient.dsn_status}")
        if recipient.reason:
            details.append(f"reason={recipient.reason}")
        lines.append(f"recipient_status: {', '.join(details)}")
    return lines


def run_shape(
    settings: Settings,
    *,
    queues: Sequence[str] = (),
    by_sender: bool = False,
    clock: Callable[[], float] = time.time,
) -> int:
    """``qshape``: counts by domain and age for ``queues`` (default ``deferred``)."""
    chosen = [QueueName(q) for q in queues] or [QueueName.DEFERRED]
    with _directory(settings) as directory:
        entries = [
            ShapeEntry(
                m.envelope.arrival_time,
                m.envelope.envelope_sender,
                tuple(r.address for r in m.pending),
            )
            for m in list_messages(directory, chosen)
        ]
    for line in render_shape(queue_shape(entries, clock(), by_sender=by_sender)):
        print(line)
    return 0

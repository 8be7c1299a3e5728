"""sendmail(1), mailq(1) and newaliases(1): Postfix's command-line interface for local mail.

``roost sendmail`` (or roost invoked as ``sendmail``) reads a message from standard input
the way cron, mail(1), PHP's ``mail()`` and Git hand one over, prepares it like Postfix's
cleanup(8) does for local submissions, and commits it durably into the spool's
``maildrop/`` queue before it exits 0. That works while the daemon is down; when it runs,
sendmail asks it over the control socket (``pickup``) to take the message in at once. The
daemon's pickup service (:mod:`roost.queue.pickup`) moves it to ``incoming/`` and adds the
``Received: by HOST (roost, from userid UID)`` header.

What the preparation does (Postfix's sendmail and cleanup):

* line ends become CRLF (bare LF input is normal here); a trailing CR is stripped; lines
  are not dot-stuffed (this is not SMTP); a leading ``From `` (mbox) line is dropped;
* without ``-i``/``-oi`` a line with a single ``.`` ends the message;
* ``-t`` adds the To, Cc and Bcc addresses (Resent-To/Cc/Bcc when the message has any) to
  the command-line recipients; Bcc and Resent-Bcc headers are always removed;
* addresses without a domain get ``@$myorigin``; the envelope sender is ``-f`` or the login
  name; missing Message-ID, Date and From headers are added (From with the ``-F`` full name,
  else ``$NAME`` or the password file's GECOS name), as Resent- headers for resent mail;
* a message body that starts without an empty line after the header gets one.

Exit statuses follow sysexits(3): 64 usage, 65 bad message data, 67 bad recipient address,
69 service unavailable (``-q``, ``-bp`` of a broken queue), 75 temporary failure (the queue
could not be written; nothing was accepted).
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import pwd
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from roost.address import (
    Address,
    AddressError,
    addresses_from_headers,
    parse_esmtp_params,
    parse_path,
    split_command_argument,
)
from roost.config import ConfigError, Settings, config_path, load_settings
from roost.queue.directory import QueueDirectory, QueueName
from roost.queue.envelope import (
    BodyType,
    Envelope,
    EnvelopeError,
    Notify,
    Recipient,
    Ret,
    WithProtocol,
)
from roost.queue.errors import SpoolError
from roost.queue.queue_id import QueueIdGenerator

__all__ = [
    "EX_DATAERR",
    "EX_NOUSER",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "Options",
    "SendmailError",
    "mailq_main",
    "newaliases",
    "newaliases_main",
    "parse_options",
    "prepare_message",
    "read_message",
    "run",
    "sendmail_main",
]

EX_USAGE: Final = 64
EX_DATAERR: Final = 65
EX_NOUSER: Final = 67
EX_UNAVAILABLE: Final = 69
EX_SOFTWARE: Final = 70
EX_TEMPFAIL: Final = 75

#: Options that take an argument (from Postfix's getopt string
#: ``B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx``).
_WITH_ARGUMENT: Final = frozenset("BCFLNORVXbefhopqr")
#: Options without an argument; those not handled below are accepted and ignored.
_FLAGS: Final = frozenset("GIUcimntvx")
_HEADER_FIELD: Final = re.compile(rb"([!-9;-~]+)[ \t]*:")
_RECIPIENT_HEADERS: Final = frozenset({"to", "cc", "bcc"})
_RESENT_RECIPIENT_HEADERS: Final = frozenset({"resent-to", "resent-cc", "resent-bcc"})
_REMOVED_HEADERS: Final = frozenset({"bcc", "resent-bcc"})


class SendmailError(Exception):
    """sendmail gives up: a one-line message and a sysexits(3) status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Options:
    """The parsed command line.

    Attributes:
        mode: ``enqueue`` (default), ``mailq``, ``newaliases``, ``smtp`` (``-bs``) or
            ``flush`` (``-q``).
        extract_recipients: ``-t``.
        dot_ends_message: false with ``-i`` / ``-oi``.
        sender: ``-f`` / ``-r``, as given.
        full_name: ``-F``.
        config: ``-C``: main.cf or its directory.
        alias_database: ``-oA``: the alias table for newaliases.
        notify: ``-N`` (RFC 3461 NOTIFY for every recipient).
        ret: ``-R full|hdrs`` (RFC 3461 RET).
        envid: ``-V`` (RFC 3461 ENVID).
        body_type: ``-B 7BIT|8BITMIME``.
        verbose: how many ``-v``.
        recipients: the command-line recipients (each an address list, as Postfix allows).
    """

    mode: str = "enqueue"
    extract_recipients: bool = False
    dot_ends_message: bool = True
    sender: str | None = None
    full_name: str | None = None
    config: str | None = None
    alias_database: str | None = None
    notify: tuple[Notify, ...] | None = None
    ret: Ret | None = None
    envid: str | None = None
    body_type: BodyType | None = None
    verbose: int = 0
    recipients: list[str] = field(default_factory=list)


def parse_options(argv: Sequence[str], mode: str = "enqueue") -> Options:
    """Parse sendmail's command line like Postfix (getopt with permutation; ``-q`` special).

    Args:
        argv: the arguments after the program name.
        mode: the mode the program name implies (``mailq``, ``newaliases``).

    Raises:
        SendmailError: EX_USAGE for an unknown or unsupported option or a bad value.
    """
    options = Options(mode=mode)
    index = 0
    while index < len(argv):
        argument = argv[index]
        index += 1
        if argument == "--":
            options.recipients += argv[index:]
            break
        if argument == "-q":
            options.mode = "flush"
            continue
        if not argument.startswith("-") or argument == "-":
            options.recipients.append(argument)
            continue
        position = 1
        while position < len(argument):
            letter = argument[position]
            position += 1
            if letter in _WITH_ARGUMENT:
                if position < len(argument):
                    value = argument[position:]
                elif index < len(argv):
                    value = argv[index]
                    index += 1
                else:
                    raise SendmailError(f"option requires an argument -- '{letter}'", EX_USAGE)
                _option(options, letter, value)
                break
            if letter not in _FLAGS:
                raise SendmailError(f"invalid option -- '{letter}'", EX_USAGE)
            _option(options, letter, None)
    if options.extract_recipients and options.mode != "enqueue":
        raise SendmailError("-t can be used only in delivery mode", EX_USAGE)
    if options.recipients and options.mode in ("mailq", "newaliases", "smtp", "flush"):
        raise SendmailError(f"{options.mode} mode requires no recipient", EX_USAGE)
    return options


def _option(options: Options, letter: str, value: str | None) -> None:
    """Apply one option; ``value`` is None for flags."""
    if letter == "t":
        options.extract_recipients = True
    elif letter == "i":
        options.dot_ends_message = False
    elif letter == "v":
        options.verbose += 1
    elif letter == "I":
        options.mode = "newaliases"
    elif letter == "n":
        raise SendmailError("-n option not supported", EX_USAGE)
    elif value is None:
        return  # -G -U -c -m -x: accepted and ignored, as by Postfix
    elif letter in "fr":
        options.sender = value
    elif letter == "F":
        options.full_name = value
    elif letter == "C":
        options.config = value
    elif letter == "b":
        _mode_option(options, value)
    elif letter == "o":
        if value.startswith("i"):
            options.dot_ends_message = False
        elif value.startswith("A"):
            if len(value) < 2:
                raise SendmailError("-oA requires pathname", EX_USAGE)
            options.alias_database = value[1:]
        # -oem, -odi, -odb, -om, -o7, -o8 ...: ignored, as by Postfix
    elif letter == "q":
        if value[:1] == "R":
            options.mode = "flush"  # -qRsite: no fast flush service; flush everything
        elif not value[:1].isdigit():
            raise SendmailError(f"-q{value[:1]} is not implemented", EX_USAGE)
    elif letter == "N":
        options.notify = _parse_notify(value)
    elif letter == "R":
        try:
            options.ret = Ret(value.upper())
        except ValueError:
            raise SendmailError(
                f"-R option: expected full or hdrs, not {value!r}", EX_USAGE
            ) from None
    elif letter == "V":
        options.envid = value
    elif letter == "B":
        with contextlib.suppress(ValueError):  # other values: ignored, as by Postfix
            options.body_type = BodyType(value.upper())
    # -L -O -X -e -h -p: ignored


def _mode_option(options: Options, value: str) -> None:
    modes = {"m": "enqueue", "p": "mailq", "i": "newaliases", "s": "smtp"}
    letter = value[:1]
    if letter in modes:
        options.mode = modes[letter]
    elif letter in ("d", "D"):
        raise SendmailError(f"-b{letter} is not supported: run 'roost serve'", EX_USAGE)
    else:
        raise SendmailError(f"unsupported: -b{letter}", EX_USAGE)


def _parse_notify(value: str) -> tuple[Notify, ...]:
    words = [w.strip().upper() for w in value.split(",") if w.strip()]
    try:
        notify = tuple(Notify(w) for w in words)
    except ValueError:
        raise SendmailError(
            f"-N option: expected never, or success, failure and delay; not {value!r}", EX_USAGE
        ) from None
    if not notify or (Notify.NEVER in notify and len(notify) > 1) or len(set(notify)) < len(notify):
        raise SendmailError(f"-N option: bad value {value!r}", EX_USAGE)
    return notify


# --- the message -------------------------------------------------------------------------


def read_message(stream: BinaryIO, *, dot_ends_message: bool, limit: int) -> list[bytes]:
    """Read the message from ``stream`` into lines without line ends.

    A trailing CR is removed from each line (CRLF and LF input are the same); leading
    ``From `` / ``>From `` lines (an mbox envelope) are dropped; unless
    ``dot_ends_message`` is false, a line with a single ``.`` ends the input.

    Args:
        stream: binary standard input.
        dot_ends_message: true unless ``-i``.
        limit: ``message_size_limit`` in bytes (0: none), counting CRLF line ends.

    Raises:
        SendmailError: EX_DATAERR when the message exceeds ``limit``.
    """
    lines: list[bytes] = []
    size = 0
    leading = True
    for raw in iter(stream.readline, b""):
        line = raw.removesuffix(b"\n").removesuffix(b"\r")
        if leading:
            if line.lstrip(b">").startswith(b"From "):
                continue
            leading = False
        if dot_ends_message and line == b".":
            break
        size += len(line) + 2
        if limit and size > limit:
            raise SendmailError(f"message file too big (limit {limit} bytes)", EX_DATAERR)
        lines.append(line)
    return lines


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """A message ready for the queue.

    Attributes:
        content: CRLF line ends, headers completed, Bcc removed.
        header_recipients: the To/Cc/Bcc addresses when extracting (``-t``), else empty.
    """

    content: bytes
    header_recipients: tuple[Address, ...]


def _split_header(lines: Sequence[bytes]) -> tuple[list[list[bytes]], list[bytes]]:
    """Split into header fields (each its physical lines) and body lines.

    The header ends at the first empty line (dropped) or at the first line that is
    neither a field nor a continuation (kept, as the first body line).
    """
    fields: list[list[bytes]] = []
    for index, line in enumerate(lines):
        if not line:
            return fields, list(lines[index + 1 :])
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif _HEADER_FIELD.match(line):
            fields.append([line])
        else:
            return fields, list(lines[index:])
    return fields, []


def _field_name(field_lines: Sequence[bytes]) -> str:
    match = _HEADER_FIELD.match(field_lines[0])
    assert match is not None  # only matching lines start a field
    return match.group(1).decode("ascii").lower()


def _field_value(field_lines: Sequence[bytes]) -> str:
    text = b"\r\n".join(field_lines).decode("utf-8", "replace")
    return text.partition(":")[2].strip()


def prepare_message(
    lines: Sequence[bytes],
    *,
    extract_recipients: bool,
    sender: str,
    full_name: str | None,
    queue_id: str,
    hostname: str,
    now: float,
) -> PreparedMessage:
    """Complete the header like Postfix's cleanup(8) for local submission.

    Args:
        lines: the message lines without line ends (:func:`read_message`).
        extract_recipients: ``-t``: collect To/Cc/Bcc (or Resent-To/Cc/Bcc when present).
        sender: the envelope sender (``""``: the null sender), for a missing From.
        full_name: the sender's full name for a missing From, or None.
        queue_id: the message's queue ID, for a missing Message-ID.
        hostname: ``myhostname``, for a missing Message-ID.
        now: the submission time, seconds since the epoch, for a missing Date.

    Raises:
        SendmailError: EX_DATAERR when a recipient header cannot be parsed with ``-t``.
    """
    from roost.smtp.received import message_id

    fields, body = _split_header(lines)
    names = [_field_name(f) for f in fields]
    resent = any(name.startswith("resent-") for name in names)
    found: list[Address] = []
    if extract_recipients:
        wanted = (
            _RESENT_RECIPIENT_HEADERS
            if _RESENT_RECIPIENT_HEADERS.intersection(names)
            else _RECIPIENT_HEADERS
        )
        for name, field_lines in zip(names, fields, strict=True):
            if name not in wanted:
                continue
            try:
                found += addresses_from_headers([_field_value(field_lines)])
            except AddressError as exc:
                raise SendmailError(
                    f"bad address in the {name.title()}: header: {exc}", EX_DATAERR
                ) from None
    kept = [f for name, f in zip(names, fields, strict=True) if name not in _REMOVED_HEADERS]
    prefix = "Resent-" if resent else ""
    added: list[str] = []
    if f"{prefix}message-id".lower() not in names:
        added.append(f"{prefix}Message-ID: {message_id(queue_id, hostname, now)}")
    if f"{prefix}date".lower() not in names:
        added.append(f"{prefix}Date: {email.utils.formatdate(now, localtime=True)}")
    if f"{prefix}from".lower() not in names:
        added.append(f"{prefix}From: {_from_value(sender, full_name, hostname)}")
    out = [line for f in kept for line in f]
    out += [header.encode("utf-8") for header in added]
    out.append(b"")
    out += body
    return PreparedMessage(b"\r\n".join(out) + b"\r\n", tuple(found))


def _from_value(sender: str, full_name: str | None, hostname: str) -> str:
    if not sender:
        return f"MAILER-DAEMON@{hostname} (Mail Delivery System)"
    if not full_name:
        return sender
    if not sender.isascii():  # RFC 6532: UTF-8 as is
        return f"{full_name} <{sender}>"
    return email.utils.formataddr((full_name, sender))


# --- who is sending ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalUser:
    """The submitting user: login name, user ID, full name (or None)."""

    login: str
    uid: int
    full_name: str | None


def local_user() -> LocalUser:
    """Find out who runs sendmail: the password entry of the real user ID.

    The full name is ``$NAME`` when set, else the GECOS field's first part with ``&``
    standing for the capitalised login (Postfix's fullname()).

    Raises:
        SendmailError: EX_NOUSER when the user has no name.
    """
    uid = os.getuid()
    try:
        entry = pwd.getpwuid(uid)
        login, gecos = entry.pw_name, entry.pw_gecos
    except KeyError:
        login = os.environ.get("LOGNAME") or os.environ.get("USER") or ""
        gecos = ""
    if not login:
        raise SendmailError("unable to find out your login name", EX_NOUSER)
    full_name = os.environ.get("NAME") or gecos.split(",")[0].replace("&", login.capitalize())
    return LocalUser(login, uid, full_name.strip() or None)


def _qualify(address: Address, origin: str) -> str:
    """Render ``address``, appending ``@origin`` to a bare local part (append_at_myorigin)."""
    if address.domain:
        return address.format()
    return Address(address.local_part, origin).format()


def parse_sender(text: str, origin: str) -> str:
    """Parse ``-f``: ``<>`` or empty is the null sender; ``Name <addr>`` is accepted.

    Raises:
        SendmailError: EX_USAGE when it is not one address.
    """
    stripped = text.strip()
    if stripped in ("", "<>"):
        return ""
    try:
        addresses = addresses_from_headers([stripped])
    except AddressError as exc:
        raise SendmailError(
            f"-f option specified a malformed sender: {text!r}: {exc}", EX_USAGE
        ) from None
    if len(addresses) != 1:
        raise SendmailError(f"-f option specified a malformed sender: {text!r}", EX_USAGE)
    return _qualify(addresses[0], origin)


def parse_recipients(arguments: Iterable[str], origin: str) -> list[str]:
    """Parse command-line recipients; each argument may be an address list.

    Raises:
        SendmailError: EX_NOUSER for an argument that is not an address list.
    """
    result: list[str] = []
    for argument in arguments:
        try:
            addresses = addresses_from_headers([argument])
        except AddressError as exc:
            raise SendmailError(f"bad recipient address {argument!r}: {exc}", EX_NOUSER) from None
        result += [_qualify(address, origin) for address in addresses]
    return result


# --- into the queue ----------------------------------------------------------------------


class Submitter:
    """Commits messages to ``maildrop/`` and asks a running daemon to pick them up.

    Args:
        settings: main.cf.
        verbose: report each step on stderr.
    """

    def __init__(self, settings: Settings, *, verbose: int = 0) -> None:
        self.settings = settings
        self.verbose = verbose
        self.hostname = settings.string("myhostname")
        self.origin = settings.string("myorigin")
        self.limit = settings.size("message_size_limit")
        self._queue_ids = QueueIdGenerator()

    def new_queue_id(self) -> str:
        """A fresh queue ID (known before the message is prepared: Message-ID uses it)."""
        return self._queue_ids()

    def commit(self, envelope: Envelope, content: bytes) -> str:
        """Store the message durably in ``maildrop/``, then notify the daemon.

        Returns:
            The queue ID (``envelope.queue_id``).

        Raises:
            SendmailError: EX_DATAERR when too big; EX_TEMPFAIL when it cannot be stored.
        """
        if self.limit and len(content) > self.limit:
            raise SendmailError(f"message file too big (limit {self.limit} bytes)", EX_DATAERR)
        queue_directory = self.settings.path_of("queue_directory")
        from roost.daemon.privileges import become_queue_owner

        become_queue_owner(self.settings)  # root's mail must stay readable by mail_owner
        try:
            with QueueDirectory(queue_directory) as directory:
                if not directory.queue_path(QueueName.MAILDROP).is_dir():
                    directory.create()
                directory.commit(QueueName.MAILDROP, envelope.queue_id, content, envelope)
        except SpoolError as exc:
            raise SendmailError(
                f"cannot write to {queue_directory}/maildrop: {exc}", EX_TEMPFAIL
            ) from None
        self._say(f"{envelope.queue_id}: queued in maildrop/ ({len(content)} bytes)")
        self.notify_daemon()
        return envelope.queue_id

    def notify_daemon(self) -> None:
        """Ask a running daemon to pick up ``maildrop/`` now; quiet when it is down."""
        from roost.cli.queue import tell_daemon

        if tell_daemon(self.settings, "pickup"):
            self._say("the daemon picked up the message")
        else:
            self._say(
                "no answer from the daemon: the message waits in maildrop/"
                " (a running daemon picks it up within a minute)"
            )

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"roost/sendmail: {text}", file=sys.stderr)


def enqueue(options: Options, settings: Settings, stdin: BinaryIO, user: LocalUser) -> str:
    """The default mode: read, prepare and queue one message; return its queue ID.

    Raises:
        SendmailError: see the module docstring for the statuses.
    """
    submitter = Submitter(settings, verbose=options.verbose)
    origin = submitter.origin
    sender = (
        parse_sender(options.sender, origin)
        if options.sender is not None
        else _qualify(Address(user.login, ""), origin)
    )
    recipients = parse_recipients(options.recipients, origin)
    if not recipients and not options.extract_recipients:
        raise SendmailError(
            "Recipient addresses must be specified on the command line or via the -t option",
            EX_USAGE,
        )
    lines = read_message(stdin, dot_ends_message=options.dot_ends_message, limit=submitter.limit)
    queue_id = submitter.new_queue_id()
    now = time.time()
    prepared = prepare_message(
        lines,
        extract_recipients=options.extract_recipients,
        sender=sender,
        full_name=options.full_name if options.full_name is not None else user.full_name,
        queue_id=queue_id,
        hostname=submitter.hostname,
        now=now,
    )
    recipients += [_qualify(address, origin) for address in prepared.header_recipients]
    if not recipients:
        raise SendmailError("No recipient addresses found in message header", EX_USAGE)
    try:
        envelope = Envelope(
            envelope_sender=sender,
            recipients=tuple(
                Recipient(r, notify=options.notify) for r in dict.fromkeys(recipients)
            ),
            arrival_time=now,
            protocol=WithProtocol.LOCAL,
            queue_id=queue_id,
            size=len(prepared.content),
            body_type=options.body_type,
            smtputf8=not (sender.isascii() and all(r.isascii() for r in recipients)),
            ret=options.ret,
            envid=options.envid,
        )
    except EnvelopeError as exc:
        raise SendmailError(f"bad envelope: {exc}", EX_USAGE) from None
    return submitter.commit(envelope, prepared.content)


# --- sendmail -bs: SMTP on standard input and output -------------------------------------


@dataclass(slots=True)
class _Transaction:
    sender: str
    smtputf8: bool
    body_type: BodyType | None
    recipients: list[str] = field(default_factory=list)


class StdioSmtp:
    """``sendmail -bs``: an SMTP dialogue on standard input and output (RFC 5321).

    Each accepted message is prepared like any local submission and committed to
    ``maildrop/`` before the ``250`` reply. One or more messages per session.

    Args:
        submitter: commits the messages.
        reader: binary standard input.
        writer: binary standard output.
        mail_name: ``mail_name`` for the greeting.
    """

    def __init__(
        self, submitter: Submitter, reader: BinaryIO, writer: BinaryIO, *, mail_name: str
    ) -> None:
        self.submitter = submitter
        self.reader = reader
        self.writer = writer
        self.mail_name = mail_name
        self.helo: str | None = None
        self.esmtp = False
        self.transaction: _Transaction | None = None
        self.finished = False
        self.handlers: dict[str, Callable[[str], str | None]] = {
            "EHLO": self._ehlo,
            "HELO": self._helo,
            "MAIL": self._mail,
            "RCPT": self._rcpt,
            "DATA": self._data,
            "RSET": self._rset,
            "NOOP": lambda _: "250 2.0.0 Ok",
            "VRFY": lambda _: "252 2.0.0 Send some mail, I'll try my best",
        }

    def reply(self, text: str) -> None:
        """Send one reply (lines separated by newlines become a multiline reply)."""
        lines = text.split("\n")
        out = [
            f"{line[:3]}{'-' if i < len(lines) - 1 else ' '}{line[4:]}"
            for i, line in enumerate(lines)
        ]
        self.writer.write(("\r\n".join(out) + "\r\n").encode("utf-8"))
        self.writer.flush()

    def run(self) -> None:
        """Serve until QUIT or the end of input."""
        self.reply(f"220 {self.submitter.hostname} ESMTP {self.mail_name}")
        for raw in iter(self.reader.readline, b""):
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            verb, _, argument = line.partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            handler = self.handlers.get(verb)
            answer = (
                handler(argument.strip()) if handler else "502 5.5.2 Error: command not recognized"
            )
            if answer is not None:
                self.reply(answer)
            if self.finished:
                return

    def _helo(self, argument: str) -> str:
        if not argument:
            return "501 5.5.4 Syntax: HELO hostname"
        self.helo, self.esmtp, self.transaction = argument, False, None
        return f"250 {self.submitter.hostname}"

    def _ehlo(self, argument: str) -> str:
        if not argument:
            return "501 5.5.4 Syntax: EHLO hostname"
        self.helo, self.esmtp, self.transaction = argument, True, None
        keywords = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        if self.submitter.limit:
            keywords.insert(1, f"SIZE {self.submitter.limit}")
        return "\n".join(f"250 {k}" for k in [self.submitter.hostname, *keywords])

    def _rset(self, _: str) -> str:
        self.transaction = None
        return "250 2.0.0 Ok"

    def _mail(self, argument: str) -> str:
        if self.transaction is not None:
            return "503 5.5.1 Error: nested MAIL command"
        if argument[:5].upper() != "FROM:":
            return "501 5.5.4 Syntax: MAIL FROM:<address>"
        try:
            path_text, params_text = split_command_argument(argument[5:])
            params = parse_esmtp_params(params_text)
            smtputf8 = "SMTPUTF8" in params
            path = parse_path(path_text, allow_null=True, smtputf8=smtputf8)
        except AddressError as exc:
            return f"501 5.1.7 Bad sender address syntax: {exc}"
        unknown = set(params) - {"SIZE", "BODY", "SMTPUTF8"}
        if unknown:
            return f"555 5.5.4 Unsupported option: {sorted(unknown)[0]}"
        size = params.get("SIZE")
        limit = self.submitter.limit
        if size is not None and (not size.isdigit() or (limit and int(size) > limit)):
            return "552 5.3.4 Message size exceeds fixed limit"
        body = params.get("BODY")
        try:
            body_type = BodyType(body.upper()) if body else None
        except ValueError:
            return "501 5.5.4 Bad BODY parameter"
        sender = _qualify(path, self.submitter.origin) if isinstance(path, Address) else ""
        self.transaction = _Transaction(sender, smtputf8, body_type)
        return "250 2.1.0 Ok"

    def _rcpt(self, argument: str) -> str:
        if self.transaction is None:
            return "503 5.5.1 Error: need MAIL command"
        if argument[:3].upper() != "TO:":
            return "501 5.5.4 Syntax: RCPT TO:<address>"
        try:
            path_text, params_text = split_command_argument(argument[3:])
            if parse_esmtp_params(params_text, smtputf8=self.transaction.smtputf8):
                return "555 5.5.4 Unsupported option"
            address = parse_path(path_text, allow_null=False, smtputf8=self.transaction.smtputf8)
        except AddressError as exc:
            return f"501 5.1.3 Bad recipient address syntax: {exc}"
        self.transaction.recipients.append(_qualify(address, self.submitter.origin))
        return "250 2.1.5 Ok"

    def _data(self, argument: str) -> str | None:
        transaction = self.transaction
        if argument:
            return "501 5.5.4 Syntax: DATA"
        if transaction is None:
            return "503 5.5.1 Error: need MAIL command"
        if not transaction.recipients:
            return "554 5.5.1 Error: no valid recipients"
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        lines: list[bytes] = []
        size = 0
        ended = False
        for raw in iter(self.reader.readline, b""):
            line = raw.removesuffix(b"\n").removesuffix(b"\r")
            if line == b".":
                ended = True
                break
            line = line[1:] if line.startswith(b".") else line
            size += len(line) + 2
            if not self.submitter.limit or size <= self.submitter.limit:
                lines.append(line)
        self.transaction = None
        if not ended:
            self.finished = True  # the client went away in DATA: nothing was accepted
            return None
        if self.submitter.limit and size > self.submitter.limit:
            return "552 5.3.4 Error: message file too big"
        try:
            queue_id = self._submit(transaction, lines)
        except SendmailError as exc:
            code = "451 4.3.0" if exc.status == EX_TEMPFAIL else "554 5.6.0"
            return f"{code} Error: {exc}"
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _submit(self, transaction: _Transaction, lines: list[bytes]) -> str:
        queue_id = self.submitter.new_queue_id()
        now = time.time()
        prepared = prepare_message(
            lines,
            extract_recipients=False,
            sender=transaction.sender,
            full_name=None,
            queue_id=queue_id,
            hostname=self.submitter.hostname,
            now=now,
        )
        envelope = Envelope(
            envelope_sender=transaction.sender,
            recipients=tuple(Recipient(r) for r in dict.fromkeys(transaction.recipients)),
            arrival_time=now,
            protocol=WithProtocol.ESMTP if self.esmtp else WithProtocol.SMTP,
            queue_id=queue_id,
            size=len(prepared.content),
            body_type=transaction.body_type,
            smtputf8=transaction.smtputf8,
            helo_name=self.helo,
        )
        return self.submitter.commit(envelope, prepared.content)


# --- newaliases --------------------------------------------------------------------------


def newaliases(settings: Settings, tables: Sequence[str] | None = None) -> int:
    """Check the alias files of ``alias_database`` and make a running daemon reload them.

    Bad lines are reported as ``FILE:LINE: reason``; each file gets Sendmail's summary
    ``FILE: N aliases, longest M bytes, K bytes total``. Roost reads the text files
    directly, so there is no index to build: the daemon rereads them on reload.

    Args:
        settings: main.cf.
        tables: ``type:name`` tables instead of ``alias_database`` (``-oA``).

    Returns:
        0, or 1 when a file has bad lines or cannot be read.
    """
    from roost.cli.queue import tell_daemon
    from roost.config import TableError
    from roost.delivery.aliasfile import FILE_TYPES, load_alias_file

    refs = list(tables) if tables else list(settings.tables("alias_database"))
    status = 0
    for ref in refs:
        kind, _, name = ref.partition(":") if ":" in ref else ("hash", ":", ref)
        if kind not in FILE_TYPES or not name:
            print(f"roost/newaliases: {ref}: not an aliases(5) file; nothing to check")
            continue
        if not tables and not settings.is_set("alias_database") and not Path(name).exists():
            print(f"roost/newaliases: warning: {name}: no such file (no aliases)", file=sys.stderr)
            continue
        try:
            aliases = load_alias_file(name, ref)
        except TableError as exc:
            print(f"roost/newaliases: {exc}", file=sys.stderr)
            status = 1
            continue
        for problem in aliases.problems:
            print(f"roost/newaliases: {problem}", file=sys.stderr)
            status = 1
        values = {key: ", ".join(targets) for key, targets in aliases.aliases.items()}
        longest = max((len(v.encode()) for v in values.values()), default=0)
        total = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
        print(
            f"roost/newaliases: {name}: {len(values)} aliases, longest {longest} bytes,"
            f" {total} bytes total"
        )
    if tell_daemon(settings, "reload"):
        print("roost/newaliases: the daemon reloaded its alias tables")
    return status


# --- entry points ------------------------------------------------------------------------


def run(
    argv: Sequence[str],
    *,
    mode: str = "enqueue",
    config: str | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> int:
    """Run sendmail with ``argv`` (after the program name); return the exit status.

    Args:
        argv: the options and recipients.
        mode: what the program name implies: ``enqueue``, ``mailq`` or ``newaliases``.
        config: main.cf or its directory (``roost -c``); ``-C`` overrides it.
        stdin: binary standard input (tests).
        stdout: binary standard output (tests, ``-bs``).
    """
    try:
        options = parse_options(argv, mode)
        settings = _settings(options.config or config)
        if options.mode == "mailq":
            from roost.cli.queue import run_list

            try:
                return run_list(settings, as_json=False)
            except SpoolError as exc:
                raise SendmailError(f"cannot read the mail queue: {exc}", EX_UNAVAILABLE) from None
        if options.mode == "flush":
            from roost.cli.queue import run_flush

            return run_flush(settings)
        if options.mode == "newaliases":
            tables = None
            if options.alias_database:
                tables = [options.alias_database]
            return newaliases(settings, tables)
        reader = stdin or sys.stdin.buffer
        if options.mode == "smtp":
            submitter = Submitter(settings, verbose=options.verbose)
            session = StdioSmtp(
                submitter,
                reader,
                stdout or sys.stdout.buffer,
                mail_name=settings.string("mail_name"),
            )
            session.run()
            return 0
        enqueue(options, settings, reader, local_user())
        return 0
    except SendmailError as exc:
        print(f"roost/sendmail: fatal: {exc}", file=sys.stderr)
        return exc.status
    except OSError as exc:  # reading standard input, writing standard output
        print(f"roost/sendmail: fatal: {exc.strerror or exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        return 130


def _settings(option: str | None) -> Settings:
    path = config_path(option)
    try:
        settings, warnings = load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"roost/sendmail: {problem}", file=sys.stderr)
        raise SendmailError(f"{path}: bad configuration", EX_TEMPFAIL) from None
    for warning in warnings:
        print(f"roost/sendmail: {warning}", file=sys.stderr)
    return settings


def sendmail_main(argv: Sequence[str] | None = None, *, config: str | None = None) -> int:
    """``sendmail``: the entry point (and ``roost sendmail``)."""
    return run(sys.argv[1:] if argv is None else argv, config=config)


def mailq_main(argv: Sequence[str] | None = None, *, config: str | None = None) -> int:
    """``mailq``: ``sendmail -bp``."""
    return run(sys.argv[1:] if argv is None else argv, mode="mailq", config=config)


def newaliases_main(argv: Sequence[str] | None = None, *, config: str | None = None) -> int:
    """``newaliases``: ``sendmail -bi``."""
    return run(sys.argv[1:] if argv is None else argv, mode="newaliases", config=config)

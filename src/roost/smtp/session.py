"""One SMTP server session on aiosmtpd: ESMTP, STARTTLS, AUTH, policy and durable enqueue.

aiosmtpd's ``SMTP`` protocol runs STARTTLS (discarding plaintext pipelined after it,
RFC 3207 §4.2) and sets up the connection. This subclass drives the session with its own
command loop (aiosmtpd's ``_handle_client`` behaviour, command line limits included, with
fewer calls per command; see :meth:`SMTPSession._command_loop`), keeps the idle timeout
with one lazily moved timer, and replaces every command handler: replies come from
:mod:`roost.smtp.reply` with RFC 3463 codes, addresses are parsed by
:mod:`roost.address`, recipients go through the Postfix-style
:class:`roost.smtp.policy.Policy`, AUTH uses the shared sans-IO SASL code, and DATA is
read in large chunks through :class:`roost.smtp.data.DataDecoder` straight into the
spool, which fsyncs before the ``250``.

Error accounting is Postfix's: every 4xx/5xx reply counts; past
``smtpd_soft_error_limit`` each reply waits ``smtpd_error_sleep_time``; at
``smtpd_hard_error_limit`` the session ends with 421.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import email.utils
import functools
import logging
import re
import socket
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP

from roost.address import (
    Address,
    AddressError,
    NullPath,
    decode_xtext,
    parse_esmtp_params,
    parse_path,
    split_command_argument,
)
from roost.auth.sasl import (
    Challenge,
    Credentials,
    EncryptionRequiredError,
    SASLCancelled,
    SASLError,
    UnknownMechanismError,
    advertised_mechanisms,
    decode_response,
    encode_challenge,
    start_mechanism,
)
from roost.auth.throttle import Throttle
from roost.auth.users import FailureReason, UserDatabase
from roost.daemon.logsetup import log_info, log_infos
from roost.delivery.router import Router
from roost.queue.envelope import BodyType, Envelope, Notify, Recipient, Ret, WithProtocol
from roost.queue.errors import SpoolError, SpoolErrorKind
from roost.queue.spool import MessageWriter, Spool
from roost.smtp import reply
from roost.smtp.anvil import Anvil
from roost.smtp.data import DataDecoder
from roost.smtp.policy import Facts, Policy
from roost.smtp.received import header_facts, message_id, received_header
from roost.smtp.reply import Reply, with_enhanced_code
from roost.tls import describe_tls

__all__ = ["SMTPSession", "SessionConfig", "Shared"]

_DATA_CHUNK: Final = 256 * 1024
#: Bytes in a session's stream buffer past which reading from the socket pauses until
#: the session has taken them (asyncio's point with its default stream limit, 64 KiB).
_PAUSE_ABOVE: Final = 128 * 1024
#: The loggers of the Postfix programs whose lines a queued message gets (cleanup, qmgr).
_CLEANUP_LOG: Final = logging.getLogger("roost.cleanup")
#: A session's command line limits before EHLO gives it its own dict (never changed)
_NO_LIMITS: Final[dict[str, int]] = {}
_QMGR_LOG: Final = logging.getLogger("roost.qmgr")
_JUNK_COMMANDS: Final = frozenset({"NOOP", "VRFY", "RSET", "ETRN", "HELP"})
#: The protocols by value, for SMTPSession._protocol.
_PROTOCOLS: Final[dict[str, WithProtocol]] = {member.value: member for member in WithProtocol}
#: A C0 control character or DEL (not allowed in a HELO/EHLO name).
_CONTROL_CHARACTER: Final = re.compile("[\x00-\x1f\x7f]")


@functools.lru_cache(maxsize=64)  # a few per service and TLS state
def _ehlo_reply(
    hostname: str,
    size_limit: int,
    disable_vrfy: bool,
    starttls: bool,
    mechanisms: tuple[str, ...],
    smtputf8: bool,
) -> str:
    """The EHLO reply: the host name and the extensions offered (RFC 5321 §4.1.1.1),
    remembered by what it depends on."""
    lines = [hostname, "PIPELINING", f"SIZE {size_limit}"]
    if not disable_vrfy:
        lines.append("VRFY")
    if starttls:
        lines.append("STARTTLS")
    if mechanisms:
        lines.append("AUTH " + " ".join(mechanisms))
    lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN"]
    if smtputf8:
        lines.append("SMTPUTF8")
    return reply.multiline(250, lines)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """One SMTP service's settings, resolved once per (re)load.

    Attributes are the values of the main.cf parameters of the same names for this
    service (``smtp``, ``submission`` or ``submissions``).
    """

    service: str
    hostname: str
    banner: str
    mail_name: str
    message_size_limit: int
    recipient_limit: int
    timeout: float
    soft_error_limit: int
    hard_error_limit: int
    error_sleep_time: float
    junk_command_limit: int
    sasl_enabled: bool
    auth_required: bool
    tls_level: str
    tls_auth_only: bool
    wrappermode: bool
    normalize_bare_lf: bool
    hopcount_limit: int
    header_size_limit: int
    disable_vrfy: bool
    helo_required: bool
    strict_envelopes: bool
    smtputf8: bool
    submission: bool
    peername_lookup: bool = True
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")

    @property
    def log_name(self) -> str:
        """The logger of this service: ``roost.smtpd`` or ``roost.submission/smtpd``."""
        return "roost.smtpd" if self.service == "smtp" else f"roost.{self.service}/smtpd"


@dataclass(slots=True)
class Shared:
    """What every session of a service shares (built by the composition root).

    Attributes:
        config: the service's settings.
        policy: the restriction lists.
        router: address classes and recipient existence.
        spool: the durable queue.
        users: the user database for AUTH (None: no backends).
        throttle: failed-login throttling shared by every protocol.
        anvil: per-client connection limits.
        tls_context: returns the current server TLS context (or raises).
        sessions: the open sessions, for graceful stop.
        clock: wall-clock seconds.
    """

    config: SessionConfig
    policy: Policy
    router: Router
    spool: Spool
    users: UserDatabase | None
    throttle: Throttle
    anvil: Anvil
    tls_context: Callable[[], Any]
    sessions: set[SMTPSession] = field(default_factory=set)
    clock: Callable[[], float] = time.time


@dataclass(slots=True)
class _Transaction:
    sender: Address | NullPath
    size_hint: int | None = None
    body_type: BodyType | None = None
    smtputf8: bool = False
    ret: Ret | None = None
    envid: str | None = None
    recipients: list[Recipient] = field(default_factory=list)
    rejected: int = 0


class SMTPSession(SMTP):
    """The protocol object of one SMTP connection."""

    _SYNTAX: ClassVar[Mapping[str, Reply]] = {
        "HELO": reply.SYNTAX_HELO,
        "EHLO": reply.SYNTAX_EHLO,
    }

    # asyncio's flow control state (FlowControlMixin, set by StreamReaderProtocol)
    _paused: bool
    _connection_lost: bool

    def __init__(self, shared: Shared) -> None:
        config = shared.config
        hostname, _, ident = config.banner.partition(" ")
        _init_aiosmtpd(
            self,
            hostname=hostname or config.hostname,
            ident=ident or config.mail_name,
            timeout=config.timeout,
        )
        # aiosmtpd keeps these limits in a class-level dict; a session gets its own at EHLO
        # (_greet), the only place that sets any (until then, none: the default applies)
        self.command_size_limits = _NO_LIMITS
        self.shared = shared
        self.config = config
        self.log = _logger(config.log_name)
        self.client_address = "unknown"
        self.client_name = "unknown"
        self.helo: str | None = None
        self.esmtp = False
        self.tls_info: str | None = None
        self.sasl_method: str | None = None
        self.sasl_username: str | None = None
        self.transaction: _Transaction | None = None
        self.errors = 0
        # up to this many errors a 2xx/3xx reply neither waits nor ends the session
        # (_write_now): the soft limit's tarpit starts past it, the hard limit at it
        self._quick_errors = min(config.soft_error_limit, config.hard_error_limit - 1)
        self.junk = 0
        self.commands: dict[str, int] = {}  # per command name, in order of first use
        self.commands_ok: dict[str, int] = {}
        self._admitted = False
        self._closing = False
        self._deadline = 0.0  # loop time at which the idle timeout ends the session
        self._armed_for = 0.0  # loop time at which the idle timer fires
        self._in_data = False  # a message is being received or committed (smtp_DATA)
        self._data_finished: asyncio.Event | None = None  # made when shutdown() must wait
        # a committed message's log lines, written after its reply (smtp_DATA)
        self._queued: tuple[str, _Transaction, int, bytes | None, MessageWriter] | None = None

    # --- connection lifecycle --------------------------------------------------------

    @property
    def client(self) -> str:
        """``name[address]`` as in Postfix's log lines."""
        return f"{self.client_name}[{self.client_address}]"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Account the connection, refuse it over the per-client limits, else greet."""
        if self._admitted:  # STARTTLS: aiosmtpd re-enters with the TLS transport
            super().connection_made(transport)
            self._note_tls(transport)
            return
        peer = transport.get_extra_info("peername")
        self.client_address = str(peer[0]) if peer else "unknown"
        if self.client_address.startswith("::ffff:"):
            self.client_address = self.client_address[7:]
        verdict = self.shared.anvil.connect(self.client_address)
        if not verdict.allowed:
            refusal = reply.TOO_MANY_CONNECTIONS
            text = refusal.text.format(client=self.client_address)
            cast(asyncio.WriteTransport, transport).write(
                f"{refusal.code} {refusal.enhanced} {self.hostname} {text}\r\n".encode()
            )
            self.log.warning(
                "%s: too many connections (%s limit) from %s",
                self.client,
                verdict.reason,
                self.client_address,
            )
            transport.close()
            return
        self._admitted = True
        self.shared.sessions.add(self)
        super().connection_made(transport)
        if self.config.wrappermode:
            self._note_tls(transport)

    async def _handle_client(self) -> None:
        """Look up the client's name before the greeting, as Postfix's smtpd does, then
        run the command loop."""
        if self.config.peername_lookup and self.client_address != "unknown":
            self.client_name = await client_name(self.client_address)
        await self._push_line(f"220 {self.hostname} {self.__ident__}")
        # after the greeting, off the client's path (still the session's first line)
        log_info(self.log, f"connect from {self.client}")
        await self._command_loop()

    async def _command_loop(self) -> None:
        """Read, check and dispatch command lines until the connection ends (after the
        greeting, :meth:`_handle_client`).

        aiosmtpd's ``SMTP._handle_client`` with its behaviour kept (its replies, which
        :meth:`push` maps to ours, its command line limits, the TLS checks and its
        handling of errors and of a lost connection), and its per-command costs cut:
        a line already in the stream's buffer is taken without a ``readuntil`` coroutine,
        and while there is none the loop waits with the stream's own wait and looks again
        (``readuntil`` only at the end of the input, after a stream error or for an
        over-long line, for its answers), the handlers come from the class's table
        (:func:`_command_table`) instead of methods bound per session, no per-line
        logging calls, the idle timer is moved lazily (:meth:`_reset_timeout`) and
        replies skip ``drain()`` unless the transport is paused or closing
        (:meth:`_send`). aiosmtpd's PROXY protocol and per-command call limits are not
        used by roost (our error and junk command limits replace them).
        """
        reader = self._reader
        buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
        line_limit: int = reader._limit  # type: ignore[attr-defined]
        methods = _command_table(type(self))
        # until the transport closes: after QUIT (or a 421) the loop ends here, at once,
        # rather than wait for more input until connection_lost() cancels it (an exception
        # through the loop per connection); nothing could be answered on a closing
        # transport anyway (_answer)
        while (transport := self.transport) is not None and not transport.is_closing():
            try:
                end = buffer.find(b"\n")
                if 0 <= end <= line_limit:  # readuntil's fast case
                    line = bytes(buffer[: end + 1])
                    del buffer[: end + 1]
                    if reader._paused:  # type: ignore[attr-defined]
                        reader._maybe_resume_transport()  # type: ignore[attr-defined]
                elif (
                    end < 0
                    and len(buffer) <= line_limit
                    and not reader._eof  # type: ignore[attr-defined]
                    and reader.exception() is None
                ):
                    # no line yet: wait for more input, then look again (readuntil's
                    # own wait, without its coroutine and its buffer scan)
                    await reader._wait_for_data("readuntil")  # type: ignore[attr-defined]
                    continue
                else:  # end of input, an error, or an over-long line: readuntil's answer
                    try:
                        line = await reader.readuntil()
                    except asyncio.LimitOverrunError as error:
                        await self._skip_long_line(error.consumed)
                        await self.push("500 Command line too long")
                        continue
                line = line.rstrip(b"\r\n")
                if not line:
                    await self.push("500 Error: bad syntax")
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode("ascii")
                except UnicodeDecodeError:
                    await self.push("500 Error: bad syntax")
                    continue
                arg: str | None = None
                if arg_bytes:
                    # non-UTF-8 arguments survive as surrogates (aiosmtpd's enable_SMTPUTF8)
                    arg = str(arg_bytes.strip(), "utf-8", "surrogateescape")
                assert self.session is not None
                limit = (
                    self.command_size_limits.get(command, self.command_size_limit)
                    if self.session.extended_smtp
                    else self.command_size_limit
                )
                if len(line) > limit:
                    await self.push("500 Command line too long")
                    continue
                if not self._tls_handshake_okay and command != "QUIT":
                    await self.push("554 Command refused due to lack of security")
                    continue
                if (
                    self.require_starttls
                    and not self._tls_protocol
                    and command not in aiosmtpd.smtp.ALLOWED_BEFORE_STARTTLS
                ):
                    await self.push("530 Must issue a STARTTLS command first")
                    continue
                method = methods.get(command)
                if method is None:
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue
                self._reset_timeout()  # a valid command (as in aiosmtpd)
                await method(self, arg)
            except (asyncio.CancelledError, ConnectionResetError):
                self._writer.close()  # the connection went away, maybe during DATA
                raise
            except Exception as error:
                await self._loop_exception(error)

    @property
    def _smtp_methods(self) -> dict[str, Callable[[str | None], Any]]:
        """aiosmtpd's table of command handlers (``smtp_*`` methods bound to this
        session), made when asked for: the command loop uses the class's table of
        functions (:func:`_command_table`) instead of binding every handler per session."""
        return {
            name: types.MethodType(function, self)
            for name, function in _command_table(type(self)).items()
        }

    @_smtp_methods.setter
    def _smtp_methods(self, value: dict[str, Any]) -> None:
        """aiosmtpd's ``__init__`` assigns its table; the property makes it instead."""

    async def _skip_long_line(self, consumed: int) -> None:
        """Drop a line longer than the stream's limit up to its end, as aiosmtpd does
        (``consumed``: the bytes already known to be part of it)."""
        reader = self._reader
        await reader.read(consumed)
        while True:
            try:
                await reader.readuntil()
                return
            except asyncio.LimitOverrunError as longer:
                await reader.read(longer.consumed)

    async def _loop_exception(self, error: Exception) -> None:
        """aiosmtpd's handling of an exception out of a command: ask
        :meth:`handle_exception` for the reply; a failed TLS handshake ends the
        connection."""
        status: str | None = None
        try:
            status = await self.handle_exception(error)
        except Exception as inner:
            status = f"500 Error: ({type(inner).__name__}) {inner}"
        finally:
            if isinstance(error, aiosmtpd.smtp.TLSSetupException):
                if self.transport is not None:
                    self.transport.close()
                self.connection_lost(error)
            elif status is not None:
                await self.push(status)

    def _note_tls(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.tls_info = describe_tls(ssl_object)
            self.log.info(
                "Anonymous TLS connection established from %s: %s", self.client, self.tls_info
            )

    def connection_lost(self, error: Exception | None) -> None:
        """Log Postfix's ``disconnect from`` line with the command counts."""
        if not self._admitted:
            return
        if self.session is not None and self._handler_coroutine is not None:
            super().connection_lost(error)
        self.shared.sessions.discard(self)
        self.shared.anvil.disconnect(self.client_address)
        counts = []
        for name in self.commands:
            ok, total = self.commands_ok.get(name, 0), self.commands[name]
            counts.append(f"{name.lower()}={ok}" if ok == total else f"{name.lower()}={ok}/{total}")
        ok_all, total_all = sum(self.commands_ok.values()), sum(self.commands.values())
        commands = f"{ok_all}" if ok_all == total_all else f"{ok_all}/{total_all}"
        log_info(
            self.log, f"disconnect from {self.client} {' '.join([*counts, f'commands={commands}'])}"
        )

    def data_received(self, data: bytes) -> None:
        """Give the client's bytes to the stream reader: ``StreamReaderProtocol``'s
        ``data_received`` with the reader's ``feed_data`` done here (three calls fewer per
        read), and the reader paused only past :data:`_PAUSE_ABOVE` bytes in its buffer
        instead of twice its line limit.

        aiosmtpd sizes the reader's limit for command lines (about 1 KB), and asyncio
        pauses reading at twice the limit: every DATA of more than 2 KB stopped and
        restarted the socket's reading (two ``epoll_ctl`` per message, and the calls
        around them). Command lines are still limited by the reader's limit (the command
        loop and ``readuntil`` check it); the buffer is bounded by :data:`_PAUSE_ABOVE`
        and one read of the event loop, as with asyncio's default stream limit.
        """
        wr: Callable[[], Any] | None = self._stream_reader_wr  # type: ignore[attr-defined]
        reader = wr() if wr is not None else None  # an asyncio.StreamReader
        if reader is None:
            return
        if not data or reader._eof:
            reader.feed_data(data)  # nothing to do, or feed_data's assertion
            return
        buffer: bytearray = reader._buffer
        buffer.extend(data)
        waiter = reader._waiter
        if waiter is not None:  # StreamReader._wakeup_waiter
            reader._waiter = None
            if not waiter.cancelled():
                waiter.set_result(None)
        transport = reader._transport
        if transport is not None and not reader._paused and len(buffer) > _PAUSE_ABOVE:
            try:
                transport.pause_reading()
            except NotImplementedError:  # as feed_data: buffer it all
                reader._transport = None
            else:
                reader._paused = True

    def eof_received(self) -> bool | None:
        """The client half-closed (``nc -q``): answer what it sent, then close.

        aiosmtpd cancels the command loop here; Postfix answers every command already
        received, so only the stream gets its end-of-file.
        """
        self._reader.feed_eof()
        return self.tls_info is None  # keep the socket open to write the replies

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Move the idle deadline to ``duration`` (default ``smtpd_timeout``) from now.

        aiosmtpd cancels and re-creates its timer on every command and DATA chunk; here
        the timer stays while it would fire no later than the new deadline, and
        :meth:`_timeout_cb` re-arms it for the rest when it fires early.
        """
        loop = self.loop
        delay = duration or self._timeout_duration
        deadline = loop.time() + delay
        self._deadline = deadline
        handle = self._timeout_handle
        if handle is not None and not handle.cancelled() and self._armed_for <= deadline:
            return
        if handle is not None:
            handle.cancel()
        self._timeout_handle = loop.call_later(delay, self._timeout_cb)
        self._armed_for = deadline

    def _timeout_cb(self) -> None:
        remaining = self._deadline - self.loop.time()
        if remaining > 0:  # the deadline moved since the timer was set
            self._timeout_handle = self.loop.call_later(remaining, self._timeout_cb)
            self._armed_for = self._deadline
            return
        if self.transport is not None and not self.transport.is_closing():
            self.log.info("timeout after %s from %s", self._last_command(), self.client)
            transport = cast(asyncio.WriteTransport, self.transport)
            transport.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _last_command(self) -> str:
        return next(reversed(self.commands), "CONNECT") if self.commands else "CONNECT"

    @property
    def finished(self) -> bool:
        """Whether the session is over: connection gone and its handler task done (after a
        lost connection the handler still runs its clean-up, which may use the spool)."""
        task = self._handler_coroutine
        return self.transport is None and (task is None or task.done())

    async def shutdown(self, data_grace: float = 60.0) -> None:
        """Say 421 and close (graceful stop after the grace period).

        A message being received or committed is finished and answered first (up to
        ``data_grace`` seconds): a 421 for a message the queue keeps would make the client
        send it again.
        """
        if self._in_data:
            if self._data_finished is None:
                self._data_finished = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._data_finished.wait(), data_grace)
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send(f"421 4.3.2 {self.hostname} Service shutting down")
            self.transport.close()
        task = self._handler_coroutine  # let its clean-up finish before the spool closes
        if task is not None and not task.done() and task is not asyncio.current_task():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 5.0)

    # --- replies and error accounting --------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        """Send a reply; count errors, tarpit past the soft limit, drop at the hard limit.

        Like Postfix's smtpd: past ``smtpd_soft_error_limit`` every reply waits
        ``smtpd_error_sleep_time`` (the wait does not count against the idle timeout).
        """
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        await self._answer(with_enhanced_code(text))

    async def _answer(self, text: str) -> None:
        """:meth:`push` for a reply already in our shape (``CODE X.Y.Z text``)."""
        if self._closing or self.transport is None or self.transport.is_closing():
            return
        if text[:1] in ("4", "5") and not text.startswith("421"):
            self.errors += 1
        if self.errors > self.config.soft_error_limit:
            await asyncio.sleep(self.config.error_sleep_time)
            self._reset_timeout()
        await self._send(text)
        if self.errors >= self.config.hard_error_limit:
            await self._enforce_hard_limit()

    async def _enforce_hard_limit(self) -> None:
        if self.errors < self.config.hard_error_limit or self._closing:
            return
        self._closing = True
        self.log.warning("too many errors after %s from %s", self._last_command(), self.client)
        await self._send(f"421 4.7.0 {self.hostname} Error: too many errors")
        if self.transport is not None:
            self.transport.close()

    async def _send(self, text: str) -> None:
        """Write one reply line; wait in ``drain()`` only when it could wait or raise.

        ``StreamWriter.drain`` returns at once unless the transport is paused (its buffer
        above the high-water mark), closing, or the connection lost (then it raises), so
        it is only awaited in those cases.
        """
        if self._write_line(text.encode("utf-8", "surrogateescape") + b"\r\n"):
            await self._writer.drain()

    def _write_line(self, data: bytes) -> bool:
        """Write ``data`` (a line, CRLF included) as ``StreamWriter.write`` does; return
        whether ``drain()`` is owed: the transport paused, closing, or the connection
        lost (:meth:`_send`)."""
        transport = self._writer._transport  # type: ignore[attr-defined]
        transport.write(data)
        return bool(self._paused or self._connection_lost or transport.is_closing())

    def _write_now(self, data: bytes) -> bool:
        """Write a 2xx/3xx reply line (``data``, CRLF included) at once when
        :meth:`_answer` would do no more than write it; return False, having written
        nothing, when it would (a closed or closing transport or session, a paused
        transport, errors at the tarpit or the hard limit) or ``data`` is empty.

        The reply's path without its calls: :meth:`reply`, :meth:`_answer`,
        :meth:`_send`, ``StreamWriter.write``, the text's formatting and encoding.
        """
        transport = self.transport
        if (
            transport is None
            or not data
            or self._closing
            or self.errors > self._quick_errors
            or self._paused
            or self._connection_lost
            or transport.is_closing()
        ):
            return False
        out = self._writer._transport  # type: ignore[attr-defined]
        if out is not transport and out.is_closing():
            return False
        out.write(data)
        return True

    async def reply(self, answer: Reply | str, command: str | None = None) -> None:
        """Send ``answer`` and count ``command`` as successful when it is 2xx/3xx."""
        if isinstance(answer, Reply):  # ours: nothing of aiosmtpd's to map
            if 200 <= answer.code < 400:
                if command is not None:
                    counts = self.commands_ok
                    counts[command] = counts.get(command, 0) + 1
                if self._write_now(answer.wire):
                    return
            await self._answer(str(answer))
            return
        text = str(answer)
        if command is not None and text[:1] in ("2", "3"):
            counts = self.commands_ok
            counts[command] = counts.get(command, 0) + 1
        await self.push(text)

    def _count(self, command: str) -> None:
        counts = self.commands
        counts[command] = counts.get(command, 0) + 1

    async def _junk(self, command: str) -> None:
        """NOOP, VRFY, RSET, HELP past ``smtpd_junk_command_limit`` count as errors."""
        self.junk += 1
        if self.junk > self.config.junk_command_limit:
            self.errors += 1

    async def handle_exception(self, error: Exception) -> str:
        """Log an unexpected error and answer 451 (the session goes on).

        The end of the client's input (after a half-close) ends the session instead.
        """
        if isinstance(error, aiosmtpd.smtp.TLSSetupException):
            cause = error.__cause__
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else "handshake failed"
            self.log.warning(
                "SSL_accept error from %s: TLS handshake failed: %s", self.client, reason
            )
            return ""  # aiosmtpd closes the connection
        if isinstance(error, asyncio.IncompleteReadError):
            self._closing = True
            if self.transport is not None:
                self.transport.close()
            await asyncio.sleep(0)  # let connection_lost end the command loop
            return ""
        self.log.error("%s: unexpected error: %s: %s", self.client, type(error).__name__, error)
        return str(Reply(451, "4.3.0", "Error: internal error, try again later"))

    # --- HELO / EHLO -------------------------------------------------------------------

    async def smtp_HELO(self, hostname: str | None) -> None:
        """RFC 5321 §4.1.1.1."""
        await self._greet("HELO", hostname)

    async def smtp_EHLO(self, hostname: str | None) -> None:
        """RFC 5321 §4.1.1.1 with the ESMTP extensions we offer."""
        await self._greet("EHLO", hostname)

    async def _greet(self, command: str, hostname: str | None) -> None:
        self._count(command)
        if hostname and "\x00" in hostname:
            await self.reply(reply.NUL_IN_COMMAND)
            return
        stripped = hostname.strip() if hostname else ""
        if not hostname or " " in stripped or _CONTROL_CHARACTER.search(stripped):
            await self.reply(self._SYNTAX[command])
            return
        self.helo = stripped
        self.transaction = None
        self.esmtp = command == "EHLO"
        assert self.session is not None
        self.session.host_name = self.helo
        self.session.extended_smtp = self.esmtp
        if not self.esmtp:
            await self._reply_line(f"250 {self.hostname}", command)
            return
        # aiosmtpd sizes the MAIL command line limit from what EHLO offered
        self.command_size_limits = {
            "MAIL": self.command_size_limit + 26 + 10 + 140,
            "RCPT": self.command_size_limit + 140,
        }
        config = self.config
        text = _ehlo_reply(
            self.hostname,
            config.message_size_limit,
            config.disable_vrfy,
            self._starttls_offered(),
            self._mechanisms(),
            config.smtputf8,
        )
        await self._reply_line(text, command)

    async def _reply_line(self, text: str, command: str) -> None:
        """:meth:`reply` for a 2xx text of our own that aiosmtpd's replies do not map
        (HELO's and EHLO's): counted, then written at once when :meth:`_write_now` can."""
        counts = self.commands_ok
        counts[command] = counts.get(command, 0) + 1
        await self._push_line(text)

    async def _push_line(self, text: str) -> None:
        """:meth:`push` for a 2xx text of our own (the greeting, HELO's and EHLO's
        replies), written at once when :meth:`_write_now` can."""
        if text in reply.AIOSMTPD_REPLIES or not self._write_now(
            text.encode("utf-8", "surrogateescape") + b"\r\n"
        ):
            await self.push(text)

    def _starttls_offered(self) -> bool:
        return self.tls_info is None and self.config.tls_level != "none"

    def _mechanisms(self) -> tuple[str, ...]:
        if not self.config.sasl_enabled or self.shared.users is None:
            return ()
        if self.sasl_username is not None:
            return ()
        secured = self.tls_info is not None
        return advertised_mechanisms(
            secured=secured,
            allow_plaintext=not self.config.tls_auth_only,
            enabled=self.config.mechanisms,
        )

    # --- STARTTLS (RFC 3207) ------------------------------------------------------------

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        """Start TLS with the service's current certificate."""
        self._count("STARTTLS")
        if arg:
            await self.reply(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        if self.tls_info is not None:
            await self.reply(reply.TLS_ALREADY)
            return
        if self.config.tls_level == "none":
            await self.reply(reply.UNKNOWN_COMMAND)
            return
        try:
            self.tls_context = self.shared.tls_context()
        except Exception as exc:  # a certificate that cannot be loaded: a local problem
            self.log.warning("cannot start TLS: %s", exc)
            await self.reply(reply.TLS_UNAVAILABLE)
            return
        self.commands_ok["STARTTLS"] = self.commands_ok.get("STARTTLS", 0) + 1
        # RFC 3207 §4.2: forget everything learned before TLS
        self.helo = None
        self.esmtp = False
        self.transaction = None
        await super().smtp_STARTTLS(arg)

    # --- AUTH (RFC 4954) ----------------------------------------------------------------

    async def smtp_AUTH(self, arg: str | None) -> None:
        """SASL PLAIN and LOGIN through the shared sans-IO mechanisms."""
        self._count("AUTH")
        users = self.shared.users
        if not self.config.sasl_enabled or users is None:
            await self.reply(reply.AUTH_NOT_ENABLED)
            return
        if not self.esmtp:
            await self.reply(reply.NEED_HELO)
            return
        if self.sasl_username is not None:
            await self.reply(reply.AUTH_ALREADY)
            return
        if self.transaction is not None:
            await self.reply(reply.AUTH_DURING_MAIL)
            return
        if not arg:
            await self.reply(reply.SYNTAX_AUTH)
            return
        throttle = self.shared.throttle
        if throttle.refused(self.client_address):
            self.log.warning("%s: SASL authentication refused: too many failures", self.client)
            await self._send(f"421 4.7.0 {self.hostname} Error: too many authentication failures")
            if self.transport is not None:
                self.transport.close()
            return
        name, _, initial_text = arg.strip().partition(" ")
        name = name.upper()
        try:
            mechanism = start_mechanism(
                name,
                secured=self.tls_info is not None,
                allow_plaintext=not self.config.tls_auth_only,
                enabled=self.config.mechanisms,
            )
        except EncryptionRequiredError:
            await self.reply(reply.AUTH_NEEDS_TLS)
            return
        except UnknownMechanismError:
            await self.reply(reply.AUTH_UNKNOWN_MECHANISM)
            return
        try:
            response = (
                decode_response(initial_text.encode(), initial=True) if initial_text else None
            )
            while True:
                step = mechanism.receive(response)
                if isinstance(step, Credentials):
                    break
                assert isinstance(step, Challenge)
                await self._send("334 " + encode_challenge(step.data).decode("ascii"))
                line = await self._reader.readline()
                if not line:
                    return
                response = decode_response(line.rstrip(b"\r\n"))
        except SASLCancelled:
            await self.reply(reply.AUTH_CANCELLED)
            return
        except SASLError as exc:
            self.log.warning("%s: SASL %s authentication failed: %s", self.client, name, exc)
            await self.reply(reply.AUTH_BAD_BASE64 if "base64" in str(exc) else reply.AUTH_FAILED)
            return
        await self._verify(name, step, users)

    async def _verify(self, mechanism: str, credentials: Credentials, users: UserDatabase) -> None:
        throttle = self.shared.throttle
        delay = throttle.delay_for(self.client_address, credentials.authcid)
        if delay > 0:
            await asyncio.sleep(delay)
        result = await users.verify(
            credentials.authcid, credentials.password, remote_address=self.client_address
        )
        if result.ok and result.user is not None:
            throttle.record_success(self.client_address, credentials.authcid)
            self.sasl_method = mechanism
            self.sasl_username = result.user.login
            self.log.info(
                "%s: sasl_method=%s, sasl_username=%s", self.client, mechanism, self.sasl_username
            )
            await self.reply(reply.AUTH_OK, "AUTH")
            return
        if result.failure is FailureReason.BACKEND_ERROR:
            self.log.warning(
                "%s: SASL %s authentication failed: temporary failure", self.client, mechanism
            )
            await self.reply(reply.AUTH_TEMP_FAILED)
            return
        throttle.record_failure(self.client_address, credentials.authcid)
        reason = (
            {
                FailureReason.DISABLED: "account disabled",
            }.get(result.failure, "authentication failure")
            if result.failure
            else "authentication failure"
        )
        self.log.warning(
            "%s: SASL %s authentication failed: %s, sasl_username=%s",
            self.client,
            mechanism,
            reason,
            credentials.authcid,
        )
        await self.reply(reply.AUTH_FAILED)

    # --- MAIL (RFC 5321 §4.1.1.2, RFC 1870, 6152, 3461, 6531) -----------------------------

    async def smtp_MAIL(self, arg: str | None) -> None:
        """Start a mail transaction."""
        self._count("MAIL")
        config = self.config
        if self.helo is None and (config.helo_required or self.tls_info is not None):
            await self.reply(reply.NEED_HELO)
            return
        if self.transaction is not None:
            await self.reply(reply.NESTED_MAIL)
            return
        if config.tls_level == "encrypt" and self.tls_info is None:
            await self.reply(reply.TLS_REQUIRED)
            return
        if config.auth_required and self.sasl_username is None:
            await self.reply(reply.AUTH_REQUIRED)
            return
        if not arg or arg[:5].upper() != "FROM:":
            await self.reply(reply.SYNTAX_MAIL)
            return
        try:
            path_text, params_text = split_command_argument(arg[5:].strip())
        except AddressError:
            await self.reply(reply.BAD_SENDER_SYNTAX)
            return
        try:
            params = parse_esmtp_params(params_text, smtputf8=config.smtputf8)
        except AddressError:
            await self.reply(reply.SYNTAX_MAIL)
            return
        smtputf8 = "SMTPUTF8" in params and config.smtputf8
        try:
            sender = _parse_path(
                path_text,
                allow_null=True,
                smtputf8=smtputf8,
                strict=config.strict_envelopes,
                enforce_length_limits=False,
            )
        except AddressError as exc:
            answer = reply.SMTPUTF8_REQUIRED if exc.reply_code == 553 else reply.BAD_SENDER_SYNTAX
            await self.reply(answer)
            return
        transaction = _Transaction(sender, smtputf8=smtputf8)
        problem = self._mail_parameters(params, transaction)
        if problem is not None:
            await self.reply(problem)
            return
        self.transaction = transaction
        await self.reply(reply.MAIL_OK, "MAIL")

    def _mail_parameters(
        self, params: Mapping[str, str | None], transaction: _Transaction
    ) -> Reply | None:
        for keyword, value in params.items():
            if keyword == "SIZE":
                if value is None or not value.isdigit():
                    return _bad_value("SIZE")
                transaction.size_hint = int(value)
                if transaction.size_hint > self.config.message_size_limit:
                    return reply.SIZE_EXCEEDED
            elif keyword == "BODY":
                body = (value or "").upper()
                if body not in ("7BIT", "8BITMIME"):
                    return _bad_value("BODY")
                transaction.body_type = BodyType(body)
            elif keyword == "SMTPUTF8":
                if value is not None or not self.config.smtputf8:
                    return _bad_value("SMTPUTF8")
            elif keyword == "RET":
                ret = (value or "").upper()
                if ret not in ("FULL", "HDRS"):
                    return _bad_value("RET")
                transaction.ret = Ret(ret)
            elif keyword == "ENVID":
                try:
                    envid = decode_xtext(value or "")
                except AddressError:
                    return _bad_value("ENVID")
                if not envid or len(envid) > 100 or not envid.isascii():
                    return _bad_value("ENVID")
                transaction.envid = envid
            elif keyword == "AUTH":
                continue  # RFC 4954 §5: accepted, not trusted
            else:
                return Reply(555, "5.5.4", f"Unsupported option: {keyword}")
        return None

    # --- RCPT (RFC 5321 §4.1.1.3, RFC 3461 §4.1-4.2) ---------------------------------------

    async def smtp_RCPT(self, arg: str | None) -> None:
        """Add a recipient after the policy accepts it."""
        self._count("RCPT")
        transaction = self.transaction
        if transaction is None:
            await self.reply(reply.NEED_MAIL)
            return
        if not arg or arg[:3].upper() != "TO:":
            await self.reply(reply.SYNTAX_RCPT)
            return
        try:
            path_text, params_text = split_command_argument(arg[3:].strip())
            params = parse_esmtp_params(params_text, smtputf8=transaction.smtputf8)
            recipient = cast(
                Address,  # allow_null=False: never the null path
                _parse_path(
                    path_text,
                    allow_null=False,
                    smtputf8=transaction.smtputf8,
                    strict=self.config.strict_envelopes,
                    enforce_length_limits=True,
                ),
            )
        except AddressError as exc:
            answer = (
                reply.SMTPUTF8_REQUIRED if exc.reply_code == 553 else reply.BAD_RECIPIENT_SYNTAX
            )
            await self.reply(answer)
            return
        notify: tuple[Notify, ...] | None = None
        orcpt: str | None = None
        for keyword, value in params.items():
            if keyword == "NOTIFY":
                words = [w.upper() for w in (value or "").split(",")]
                if (
                    not all(w in Notify.__members__ for w in words)
                    or ("NEVER" in words and len(words) > 1)
                    or len(set(words)) != len(words)
                ):
                    await self.reply(_bad_value("NOTIFY"))
                    return
                notify = tuple(Notify(w) for w in words)
            elif keyword == "ORCPT":
                kind, sep, encoded = (value or "").partition(";")
                try:
                    decoded = decode_xtext(encoded)
                except AddressError:
                    decoded = ""
                if not sep or not kind or not decoded:
                    await self.reply(_bad_value("ORCPT"))
                    return
                orcpt = f"{kind.lower()};{decoded}"
            else:
                await self.reply(Reply(555, "5.5.4", f"Unsupported option: {keyword}"))
                return
        if len(transaction.recipients) >= self.config.recipient_limit:
            await self.reply(reply.TOO_MANY_RECIPIENTS)
            return
        facts = Facts(
            client_address=self.client_address,
            client_name=self.client_name,
            helo=self.helo,
            sender=transaction.sender,
            recipient=recipient,
            sasl_username=self.sasl_username,
            destination=self.shared.router.destination(recipient),
        )
        decision = await self.shared.policy.check_recipient(facts)
        if not decision.accepted:
            assert decision.reply is not None
            transaction.rejected += 1
            self.log.info(
                "NOQUEUE: reject: RCPT from %s: %s; from=<%s> to=<%s> proto=%s helo=<%s>",
                self.client,
                decision.reply,
                transaction.sender,
                recipient,
                "ESMTP" if self.esmtp else "SMTP",
                self.helo or "",
            )
            await self.reply(decision.reply)
            return
        transaction.recipients.append(
            _plain_recipient(str(recipient))
            if orcpt is None and notify is None
            else Recipient(str(recipient), orcpt=orcpt, notify=notify)
        )
        await self.reply(reply.RCPT_OK, "RCPT")

    # --- DATA (RFC 5321 §4.1.1.4) ---------------------------------------------------------

    async def smtp_DATA(self, arg: str | None) -> None:
        """Receive the message into the spool; answer 250 only once it is durable."""
        self._count("DATA")
        transaction = self.transaction
        if arg:
            await self.reply(Reply(501, "5.5.4", "Syntax: DATA"))
            return
        if transaction is None:
            await self.reply(reply.NEED_MAIL)
            return
        if not transaction.recipients:
            await self.reply(reply.NO_VALID_RECIPIENTS if transaction.rejected else reply.NEED_RCPT)
            return
        writer = self.shared.spool.new_message()
        self._in_data = True
        if self._data_finished is not None:
            self._data_finished.clear()
        self._queued = None
        try:
            try:
                answer = await self._receive(transaction, writer)
            finally:
                await writer.abort()  # a no-op once committed
            self.transaction = None
            await self.reply(answer, "DATA")
        finally:
            self._in_data = False
            if self._data_finished is not None:
                self._data_finished.set()
            # the message's log lines after its 250: off the path to the client's next
            # command (the log writer writes them a moment later anyway)
            if self._queued is not None:
                self._log_queued(*self._queued)
                self._queued = None

    async def _receive(self, transaction: _Transaction, writer: MessageWriter) -> Reply:
        if self._write_line(reply.START_DATA_WIRE):
            await self._writer.drain()
        decoder = DataDecoder(normalize_bare_lf=self.config.normalize_bare_lf)
        header = bytearray()
        in_header = True
        size = 0
        too_big = False
        write_failed: SpoolError | None = None
        hops = 0
        has_id: bytes | None = None
        has_date = False
        now = self.shared.clock()
        received = self._received(transaction, writer.queue_id, now)
        limit = self.config.message_size_limit

        async def store(chunk: bytes) -> None:
            nonlocal write_failed
            if write_failed is None and not too_big:
                try:
                    await writer.write(chunk)
                except SpoolError as exc:
                    write_failed = exc

        while not decoder.done:
            data = await self._reader.read(_DATA_CHUNK)
            if not data:
                raise ConnectionResetError("connection lost in DATA")
            self._reset_timeout()
            content = decoder.feed(data)
            if not content:
                continue
            size += len(content)
            if size > limit and not too_big:
                too_big = True
            if too_big:
                continue
            if in_header:
                header += content
                end = _end_of_header(header)
                if end < 0 and len(header) <= self.config.header_size_limit and not decoder.done:
                    continue
                cut = end if end >= 0 else len(header)
                block, rest = bytes(header[:cut]), bytes(header[cut:])
                hops, has_id, has_date = header_facts(block)
                added = self._added_headers(has_id, has_date, writer.queue_id, now)
                await store(received + block + added + rest)
                in_header = False
                header.clear()
            else:
                await store(content)
        if decoder.leftover:
            _unread(self._reader, decoder.leftover)
        if in_header and not too_big:  # the message was all header, or empty
            block = bytes(header)
            hops, has_id, has_date = header_facts(block)
            await store(
                received + block + self._added_headers(has_id, has_date, writer.queue_id, now)
            )
        if too_big:
            self.log.warning("%s: message too large: %d bytes (limit %d)", self.client, size, limit)
            return reply.SIZE_EXCEEDED
        if decoder.saw_bare_lf and not self.config.normalize_bare_lf:
            self.log.warning("%s: bare <LF> received in DATA", self.client)
            return reply.BARE_NEWLINE
        if hops + 1 > self.config.hopcount_limit:  # with the Received header we add
            self.log.warning("%s: too many hops (%d Received headers)", self.client, hops)
            return reply.MAIL_LOOP
        if write_failed is not None:
            return self._spool_failure(write_failed)
        envelope = self._envelope(transaction, now, writer)
        try:
            queue_id = await writer.commit(envelope)
        except SpoolError as exc:
            return self._spool_failure(exc)
        self._queued = (queue_id, transaction, size, has_id, writer)
        return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    def _spool_failure(self, error: SpoolError) -> Reply:
        self.log.error("%s: queue file write error: %s", self.client, error)
        if error.kind is SpoolErrorKind.INSUFFICIENT_STORAGE:
            return reply.STORAGE_FULL
        return reply.QUEUE_ERROR

    def _protocol(self) -> WithProtocol:
        if not self.esmtp:
            return WithProtocol.SMTP
        name = "ESMTP" + ("S" if self.tls_info else "") + ("A" if self.sasl_username else "")
        return _PROTOCOLS[name]  # WithProtocol(name) without the enum's call

    def _received(self, transaction: _Transaction, queue_id: str, now: float) -> bytes:
        only = transaction.recipients[0].address if len(transaction.recipients) == 1 else None
        protocol = str(self._protocol())
        if transaction.smtputf8:
            protocol = protocol.replace("ESMTP", "UTF8SMTP")
        return received_header(
            helo=self.helo,
            client_name=self.client_name,
            client_address=self.client_address,
            hostname=self.config.hostname,
            mail_name=self.config.mail_name,
            protocol=protocol,
            queue_id=queue_id,
            recipient=only,
            tls=self.tls_info,
            now=now,
        )

    def _added_headers(
        self, has_id: bytes | None, has_date: bool, queue_id: str, now: float
    ) -> bytes:
        """Message-ID and Date for submission when missing (RFC 6409 §8.2-8.3)."""
        if not self.config.submission:
            return b""
        added = b""
        if has_id is None:
            added += f"Message-ID: {message_id(queue_id, self.config.hostname, now)}\r\n".encode()
        if not has_date:
            added += f"Date: {email.utils.formatdate(now, localtime=True)}\r\n".encode()
        return added

    def _envelope(self, transaction: _Transaction, now: float, writer: MessageWriter) -> Envelope:
        return Envelope(
            queue_id=writer.queue_id,
            size=writer.size,
            envelope_sender=str(transaction.sender),
            recipients=tuple(transaction.recipients),
            arrival_time=now,
            protocol=self._protocol(),
            body_type=transaction.body_type,
            smtputf8=transaction.smtputf8,
            ret=transaction.ret,
            envid=transaction.envid,
            client_address=self.client_address if self.client_address != "unknown" else None,
            client_hostname=self.client_name if self.client_name != "unknown" else None,
            helo_name=self.helo,
            sasl_method=self.sasl_method,
            sasl_username=self.sasl_username,
        )

    def _log_queued(
        self,
        queue_id: str,
        transaction: _Transaction,
        size: int,
        found_id: bytes | None,
        writer: MessageWriter,
    ) -> None:
        sasl = (
            f", sasl_method={self.sasl_method}, sasl_username={self.sasl_username}"
            if self.sasl_username
            else ""
        )
        shown_id = (
            found_id.decode("utf-8", "replace")
            if found_id is not None
            else message_id(queue_id, self.config.hostname)
        )
        log_infos(
            (self.log, f"{queue_id}: client={self.client}{sasl}"),
            (_CLEANUP_LOG, f"{queue_id}: message-id={shown_id}"),
            (
                _QMGR_LOG,
                f"{queue_id}: from=<{transaction.sender}>, size={writer.size:d}, "
                f"nrcpt={len(transaction.recipients):d} (queue active)",
            ),
        )

    # --- the rest ------------------------------------------------------------------------

    async def smtp_RSET(self, arg: str | None) -> None:
        """Abort the transaction (RFC 5321 §4.1.1.5)."""
        self._count("RSET")
        await self._junk("RSET")
        if arg:
            await self.reply(Reply(501, "5.5.4", "Syntax: RSET"))
            return
        self.transaction = None
        await self.reply(reply.OK, "RSET")

    async def smtp_NOOP(self, arg: str | None) -> None:
        """RFC 5321 §4.1.1.9."""
        self._count("NOOP")
        await self._junk("NOOP")
        await self.reply(reply.OK, "NOOP")

    async def smtp_QUIT(self, arg: str | None) -> None:
        """Say goodbye and close (RFC 5321 §4.1.1.10)."""
        self._count("QUIT")
        if arg:
            await self.reply(Reply(501, "5.5.4", "Syntax: QUIT"))
            return
        await self.reply(reply.CLOSING, "QUIT")
        if self.transport is not None:
            self.transport.close()

    async def smtp_VRFY(self, arg: str | None) -> None:
        """252: cannot verify, but will accept (RFC 5321 §3.5.3), or 502 when disabled."""
        self._count("VRFY")
        await self._junk("VRFY")
        if self.config.disable_vrfy:
            await self.reply(reply.VRFY_DISABLED)
            return
        if not arg:
            await self.reply(Reply(501, "5.5.4", "Syntax: VRFY address"))
            return
        await self.reply(Reply(252, "2.0.0", arg.strip()), "VRFY")

    async def smtp_EXPN(self, arg: str | None) -> None:
        """EXPN discloses lists: refused, as Postfix does by default."""
        self._count("EXPN")
        await self.reply(reply.EXPN_DISABLED)

    async def smtp_HELP(self, arg: str | None) -> None:
        """A short pointer."""
        self._count("HELP")
        await self._junk("HELP")
        await self.reply(reply.HELP, "HELP")


async def client_name(address: str, timeout: float = 5.0) -> str:
    """Return the forward-confirmed reverse name of ``address``, or ``unknown``.

    Postfix's ``client_name``: the PTR name counts only when it resolves back to the
    address (FCrDNS); anything else, including a timeout, is ``unknown``.
    """
    loop = asyncio.get_running_loop()
    try:
        name, _ = await asyncio.wait_for(
            loop.getnameinfo((address, 0), socket.NI_NAMEREQD), timeout
        )
        infos = await asyncio.wait_for(loop.getaddrinfo(name, None), timeout)
    except (OSError, TimeoutError, UnicodeError):
        return "unknown"
    if any(info[4][0] == address for info in infos):
        return name.rstrip(".").lower()
    return "unknown"


@functools.lru_cache(maxsize=1024)
def _parse_path(
    text: str, *, allow_null: bool, smtputf8: bool, strict: bool, enforce_length_limits: bool
) -> Address | NullPath:
    """:func:`roost.address.parse_path`, remembered for the last up to 1,024 paths.

    The parse depends only on its arguments and its results are immutable (a frozen
    :class:`Address`, or the one :data:`roost.address.NULL_PATH`), so a path seen again (the same
    senders and local recipients come back all the time) is not parsed again. Paths that
    do not parse raise as before and are not remembered (``lru_cache`` keeps no errors).
    """
    return parse_path(
        text,
        allow_null=allow_null,
        smtputf8=smtputf8,
        strict=strict,
        enforce_length_limits=enforce_length_limits,
    )


@functools.lru_cache(maxsize=1024)
def _plain_recipient(address: str) -> Recipient:
    """``Recipient(address)``, remembered for the last up to 1,024 addresses: a recipient
    is immutable (a frozen dataclass) and, without ORCPT and NOTIFY, depends only on its
    address, so the same local recipients share one instead of building and checking a
    new one per message. A bad address raises every time (``lru_cache`` keeps no
    errors)."""
    return Recipient(address)


def _bad_value(parameter: str) -> Reply:
    return Reply(501, "5.5.4", f"Bad {parameter} parameter value")


def _end_of_header(header: bytes | bytearray) -> int:
    """Return the offset just after the header block's last line, or -1 if not complete."""
    if header.startswith(b"\r\n"):
        return 0
    end = header.find(b"\r\n\r\n")
    return end + 2 if end >= 0 else -1


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    """Give back bytes read past the end of DATA (pipelined commands, RFC 2920)."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    buffer[0:0] = data


#: Per session class: command name (``EHLO``) -> its ``smtp_*`` function (unbound).
_COMMAND_TABLES: dict[type[SMTP], dict[str, Callable[[Any, str | None], Any]]] = {}


def _command_table(cls: type[SMTP]) -> dict[str, Callable[[Any, str | None], Any]]:
    """The commands of ``cls`` as aiosmtpd finds them (every ``smtp_*`` attribute, the
    name after ``smtp_``), as plain functions, made once per class."""
    table = _COMMAND_TABLES.get(cls)
    if table is None:
        table = _COMMAND_TABLES[cls] = {
            name.replace("smtp_", ""): getattr(cls, name)
            for name in dir(cls)
            if name.startswith("smtp_")
        }
    return table


#: The services' loggers by name (``logging.getLogger`` takes logging's lock each time).
_LOGGERS: dict[str, logging.Logger] = {}


def _logger(name: str) -> logging.Logger:
    found = _LOGGERS.get(name)
    if found is None:
        found = _LOGGERS[name] = logging.getLogger(name)
    return found


# --- aiosmtpd's per-connection set-up, done once per class ------------------------------

#: Per session class: the attributes aiosmtpd's ``SMTP.__init__`` sets on top of
#: ``StreamReaderProtocol``'s, as a session made by the real ``__init__`` had them: those
#: kept as they are (one ``dict.update`` per session), and the rest as entries (name,
#: how, value), ``how`` one of the ``_METHOD`` ... ``_REBIND`` below.
_INIT_TEMPLATES: dict[type[SMTP], tuple[dict[str, Any], list[tuple[str, int, Any]]]] = {}
_KEEP, _METHOD, _METHODS, _RECORDS, _COPY, _REBIND = range(6)


def _init_aiosmtpd(session: SMTP, *, hostname: str, ident: str, timeout: float) -> None:
    """Run aiosmtpd's ``SMTP.__init__`` for ``session``, cheaply after the first time.

    aiosmtpd's ``__init__`` finds the ``smtp_*`` and ``auth_*`` methods with
    ``inspect.getmembers(self)`` and ``dir(self)`` on every connection (14 % of the event
    loop's time under load, docs/performance.md). The first session of each class runs the
    real ``__init__``; its attributes (those beyond ``StreamReaderProtocol``'s) become the
    class's template. Later sessions set up the stream protocol afresh and copy the
    template, rebinding its bound methods to themselves and copying its containers, then
    set the per-service values (host name, ident, timeout). No aiosmtpd code is copied.
    """
    cls = type(session)
    template = _INIT_TEMPLATES.get(cls)
    if template is None:
        SMTP.__init__(
            session,
            None,
            data_size_limit=None,
            enable_SMTPUTF8=True,
            hostname=hostname,
            ident=ident,
            tls_context=None,
            timeout=timeout,
            auth_require_tls=False,
        )
        probe = asyncio.StreamReaderProtocol.__new__(asyncio.StreamReaderProtocol)
        asyncio.StreamReaderProtocol.__init__(
            probe,
            asyncio.StreamReader(loop=session.loop),
            client_connected_cb=session._cb_client_connected,
            loop=session.loop,
        )
        own = set(vars(session)) - set(vars(probe))
        entries = [_template_entry(name, vars(session)[name]) for name in sorted(own)]
        _INIT_TEMPLATES[cls] = (
            {name: value for name, how, value in entries if how == _KEEP},
            [entry for entry in entries if entry[1] != _KEEP],
        )
        return
    loop = asyncio.get_event_loop()
    asyncio.StreamReaderProtocol.__init__(
        session,
        asyncio.StreamReader(loop=loop, limit=session.line_length_limit),
        client_connected_cb=session._cb_client_connected,
        loop=loop,
    )
    attributes = vars(session)
    method_type = types.MethodType
    kept, rest = template
    attributes.update(kept)
    for name, how, value in rest:
        if how == _METHOD:
            attributes[name] = method_type(value, session)
        elif how == _METHODS:
            attributes[name] = {key: method_type(function, session) for key, function in value}
        elif how == _RECORDS:
            attributes[name] = {
                key: make([method_type(item, session) if bound else item for bound, item in items])
                for key, make, items in value
            }
        elif how == _COPY:
            attributes[name] = value.copy()
        else:
            attributes[name] = _rebind(value, session)
    session.loop = loop
    session.hostname = hostname
    session.__ident__ = ident
    session._timeout_duration = timeout


def _template_entry(name: str, value: Any) -> tuple[str, int, Any]:
    """How :func:`_init_aiosmtpd` copies a template attribute (the cases of
    :func:`_rebind`, sorted out once per class instead of once per session)."""
    if _own_method(value):
        return name, _METHOD, value.__func__
    if isinstance(value, collections.defaultdict | collections.OrderedDict | list | set):
        return name, _COPY, value
    if type(value) is dict and not value:
        return name, _COPY, value
    if type(value) is dict and all(_own_method(item) for item in value.values()):
        return name, _METHODS, tuple((key, item.__func__) for key, item in value.items())
    if type(value) is dict and all(_is_record(item) for item in value.values()):
        # aiosmtpd's _auth_methods: {name: _AuthMechAttr(bound method, flag)}
        return (
            name,
            _RECORDS,
            tuple(
                (key, type(item)._make, tuple(_record_field(field) for field in item))
                for key, item in value.items()
            ),
        )
    if isinstance(value, dict | tuple | collections.deque):
        return name, _REBIND, value
    return name, _KEEP, value


def _own_method(value: Any) -> bool:
    return isinstance(value, types.MethodType) and isinstance(value.__self__, SMTP)


def _is_record(value: Any) -> bool:
    """A named tuple whose fields are our own bound methods or plain values (what
    :func:`_rebind` copies field by field)."""
    return (
        isinstance(value, tuple)
        and hasattr(value, "_make")
        and not any(isinstance(field, dict | list | set | tuple) for field in value)
    )


def _record_field(value: Any) -> tuple[bool, Any]:
    """(rebind?, the function or the value) for one field of a :func:`_is_record` tuple."""
    if _own_method(value):
        return True, value.__func__
    return False, value


def _rebind(value: Any, session: SMTP) -> Any:
    """Copy a template attribute for ``session``: bound methods of the template session
    are bound to ``session``, containers copied (one level deeper for dicts)."""
    if isinstance(value, types.MethodType) and isinstance(value.__self__, SMTP):
        return types.MethodType(value.__func__, session)
    if isinstance(value, collections.defaultdict | collections.OrderedDict):
        return copy.copy(value)
    if isinstance(value, dict):
        return {key: _rebind(item, session) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_replace"):  # aiosmtpd's _AuthMechAttr
        return type(value)(*(_rebind(item, session) for item in value))
    if isinstance(value, list | set | collections.deque):
        return copy.copy(value)
    return value

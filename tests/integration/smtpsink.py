"""An SMTP sink on a loopback address for outbound delivery tests, built on aiosmtpd.

Each :class:`Sink` listens on one address and port (127.0.0.x, any unprivileged port) and
behaves as the test says: accept, or answer a 4xx/5xx reply per recipient (or drop the
connection), refuse MAIL or the data, be slow, offer or hide STARTTLS, 8BITMIME, SMTPUTF8,
DSN, SIZE and AUTH (then required). It records every message, every command line and the
number of (concurrent) connections.

:class:`Sink` runs on the test's event loop (integration tests); :class:`ThreadedSink`
runs one in a thread with its own loop, for end-to-end tests that drive the daemon
synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["Received", "Sink", "ThreadedSink"]

_DSN_PARAMS = re.compile(r"\s+(?:RET|ENVID|NOTIFY|ORCPT)=\S+", re.IGNORECASE)


@dataclass
class Received:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_line: str
    rcpt_lines: list[str]
    tls: bool
    login: str | None
    helo: str | None


@dataclass
class _Behaviour:
    replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    data_reply: str | None = None
    data_delay: float = 0.0


class _SinkSMTP(SMTP):  # type: ignore[misc]  # aiosmtpd has no type information for mypy
    def __init__(self, sink: Sink, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink = sink
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:
            self._counted = True
            self.sink.connections += 1
            self.sink.active += 1
            self.sink.max_active = max(self.sink.max_active, self.sink.active)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.sink.chunks.append(data)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.sink.active -= 1
        super().connection_lost(exc)

    async def smtp_EHLO(self, arg: str) -> None:
        self.sink.commands.append(f"EHLO {arg}")
        await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg: str) -> None:
        self.sink.commands.append(f"HELO {arg}")
        await super().smtp_HELO(arg)

    async def smtp_MAIL(self, arg: str) -> None:
        self.sink.commands.append(f"MAIL {arg}")
        self._mail_line = arg
        if self.sink.dsn and arg:
            arg = _DSN_PARAMS.sub("", arg)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str) -> None:
        self.sink.commands.append(f"RCPT {arg}")
        self._rcpt_lines = [*getattr(self, "_rcpt_lines", []), arg]
        if self.sink.dsn and arg:
            arg = _DSN_PARAMS.sub("", arg)
        await super().smtp_RCPT(arg)

    async def smtp_RSET(self, arg: str) -> None:
        self.sink.commands.append("RSET")
        self._rcpt_lines = []
        await super().smtp_RSET(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self.sink.commands.append("DATA")
        await super().smtp_DATA(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        self.sink.commands.append("STARTTLS")
        await super().smtp_STARTTLS(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        self.sink.commands.append("QUIT")
        await super().smtp_QUIT(arg)


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if not self.sink.eightbit:
            responses = [line for line in responses if "8BITMIME" not in line]
        if self.sink.dsn:
            responses.insert(-1, "250-DSN")
        if self.sink.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.sink.behaviour.mail_reply:
            return self.sink.behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        server._rcpt_lines = []
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.sink.behaviour.replies.get(address.lower())
        if reply == "drop":
            server.transport.close()
            return "421 4.4.2 dropped"
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        behaviour = self.sink.behaviour
        if behaviour.data_delay:
            await asyncio.sleep(behaviour.data_delay)
        if behaviour.data_reply:
            return behaviour.data_reply
        login = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode()
        content = envelope.original_content or b""
        self.sink.messages.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                content=content,
                mail_line=getattr(server, "_mail_line", ""),
                rcpt_lines=list(getattr(server, "_rcpt_lines", [])),
                tls=session.ssl is not None,
                login=login,
                helo=session.host_name,
            )
        )
        queue_id = secrets.token_hex(5).upper()
        return f"250 2.0.0 Ok: queued as {queue_id}"


class Sink:
    """One SMTP sink (see the module docstring).

    Args:
        host: a loopback address (127.0.0.x).
        port: its port.
        name: the name in the greeting and EHLO reply.
        tls: a server TLS context: offer STARTTLS.
        eightbit: offer 8BITMIME.
        smtputf8: offer SMTPUTF8.
        dsn: offer DSN (and accept its parameters).
        size: offer SIZE with this limit (None: aiosmtpd's default 33554432).
        users: logins and passwords: offer AUTH PLAIN/LOGIN (after STARTTLS when ``tls``)
            and require it for MAIL.
        pipelining: offer PIPELINING (RFC 2920; aiosmtpd reads commands a line at a time,
            so pipelined commands are simply answered in order). ``chunks`` records the
            bytes of every read, to tell whether commands came in one write.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str = "sink.test",
        tls: ssl.SSLContext | None = None,
        eightbit: bool = True,
        smtputf8: bool = True,
        dsn: bool = False,
        size: int | None = None,
        users: dict[str, str] | None = None,
        pipelining: bool = True,
    ) -> None:
        assert host.startswith("127."), "sinks listen on loopback only"
        self.host, self.port, self.name = host, port, name
        self.tls, self.eightbit, self.smtputf8, self.dsn = tls, eightbit, smtputf8, dsn
        self.size = size
        self.users = users
        self.pipelining = pipelining
        self.chunks: list[bytes] = []
        self.behaviour = _Behaviour()
        self.messages: list[Received] = []
        self.commands: list[str] = []
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self._server: asyncio.Server | None = None

    # --- behaviour ----------------------------------------------------------------------

    def reply(self, address: str, reply: str) -> None:
        """Answer ``reply`` (e.g. ``550 5.1.1 no such user``, or ``drop``) to RCPT TO."""
        self.behaviour.replies[address.lower()] = reply

    def refuse_mail(self, reply: str | None) -> None:
        """Answer ``reply`` to MAIL FROM (None: accept)."""
        self.behaviour.mail_reply = reply

    def refuse_data(self, reply: str | None) -> None:
        """Answer ``reply`` at the end of the data (None: accept)."""
        self.behaviour.data_reply = reply

    def slow_data(self, seconds: float) -> None:
        """Wait before answering the end of the data."""
        self.behaviour.data_delay = seconds

    def recipients(self) -> list[str]:
        """Every recipient of every accepted message, in order."""
        return [rcpt for message in self.messages for rcpt in message.rcpt_tos]

    # --- running ------------------------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.users is not None
        if isinstance(data, LoginPassword):
            login, password = data.login.decode(), data.password.decode()
            if self.users.get(login) == password:
                return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False)

    def _protocol(self) -> _SinkSMTP:
        return _SinkSMTP(
            self,
            _Handler(self),
            hostname=self.name,
            tls_context=self.tls,
            enable_SMTPUTF8=self.smtputf8,
            data_size_limit=self.size if self.size is not None else 33554432,
            authenticator=self._authenticate if self.users is not None else None,
            auth_required=self.users is not None,
            auth_require_tls=self.tls is not None,
            timeout=30,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> Sink:
        """Listen (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        return self

    async def stop(self) -> None:
        """Stop listening and drop the connections."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None


class ThreadedSink:
    """A :class:`Sink` on its own event loop in a thread (for synchronous tests)."""

    def __init__(self, host: str, port: int, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.sink = Sink(host, port, **options)
        self._call(self.sink.start())

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def wait_messages(self, count: int, timeout: float = 30.0) -> Sequence[Received]:
        """Wait (bounded) until the sink holds ``count`` messages."""
        deadline = time.monotonic() + timeout
        while len(self.sink.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.sink.messages)

    def stop(self) -> None:
        self._call(self.sink.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

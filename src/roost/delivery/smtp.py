"""The smtp transport: outbound delivery to relay and other domains (Postfix smtp(8)).

For each recipient of a job the route comes from ``transport_maps``, else ``relayhost``,
else the recipient domain's MX records (:mod:`roost.delivery.nexthop`). Recipients with
the same next hop share transactions of at most ``smtp_destination_recipient_limit``;
each transaction tries the next hop's servers in order (:class:`HostResolution`) until
every recipient is final (:class:`Attempt`):

1. TCP connect (``smtp_connect_timeout``, ``smtp_bind_address``/``6``), greeting and EHLO,
   HELO when EHLO is refused (``smtp_helo_timeout``);
2. STARTTLS when offered (``smtp_tls_security_level``: ``may`` opportunistic without
   verification, retried in plaintext when the handshake fails; ``encrypt`` required;
   ``verify`` the certificate against the MX host name; ``secure`` against the next-hop
   domain), then EHLO again;
3. AUTH PLAIN or LOGIN when ``smtp_sasl_auth_enable`` and ``smtp_sasl_password_maps`` has
   the server (PLAIN/LOGIN only over TLS unless ``smtp_sasl_security_options`` allows);
4. checks before MAIL: SMTPUTF8 needed but not offered -> bounce 5.6.7; the peer's SIZE
   smaller than the message -> bounce 5.3.4;
5. MAIL FROM with SIZE, BODY (when the peer offers 8BITMIME), SMTPUTF8, RET and ENVID (when
   it offers DSN); RCPT TO with NOTIFY and ORCPT; DATA; per-stage timeouts.

Replies: 2xx delivered, 5xx bounced, 4xx (and a lost connection) tries the next server and
is deferred after the last one; each recipient keeps its server's reply as the reason.

A message declared ``BODY=8BITMIME`` goes to a peer without 8BITMIME as it is (no
conversion to 7 bit, as most MTAs do in practice; RFC 6152 allows only conversion or a
bounce, and a bounce would lose mail that nearly every server accepts).

PIPELINING (RFC 2920): when the server offers it, MAIL FROM, every RCPT TO and DATA go in
one write (with the RSET of a reused connection in front), and the replies are read in
order, each with its stage's time limit; then the content. Without it, one command at a
time. The connection itself is :class:`roost.delivery.smtpclient.SmtpConnection`.

Connections are reused: an idle one waits ``smtp_connection_cache_time_limit`` for the
next message to the same next hop (RSET before the new transaction), for at most
``smtp_connection_reuse_time_limit``. ``smtp_destination_concurrency_limit`` deliveries run
per next hop, and a next hop that could not be reached
``smtp_destination_concurrency_failed_cohort_limit`` times in a row is *dead*: its mail is
deferred at once for ``minimal_backoff_time`` (a queue flush tries it again).

Log lines (logger ``roost.smtp``): ``Untrusted TLS connection established to
mx.example.org[192.0.2.1]:25: TLSv1.3 with cipher ...`` (``Anonymous`` without a server
certificate, ``Verified`` at verify/secure), ``QUEUEID: host mx.example.org[192.0.2.1]
said: 450 ... (in reply to RCPT TO command)``, connection failures; the queue manager
logs each recipient's ``to=... relay=... status=...`` line from the results.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import logging
import os
import random
import re
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from roost.address import AddressError, domain_matches, encode_xtext, parse_mailbox
from roost.config import Settings, TableError
from roost.config.lookup import open_table
from roost.delivery.destinations import (
    ConnectionCache,
    DeadDestinations,
    DestinationSlots,
    split_recipients,
)
from roost.delivery.nexthop import (
    SERVICE_PORTS,
    Attempt,
    Failure,
    HostResolution,
    Nexthop,
    NexthopError,
    Reply,
    Route,
    RouteKind,
    Status,
    Target,
    Verdict,
    parse_nexthops,
    route_for,
)
from roost.delivery.resolver import DnsLookup, DnsResolver, resolve
from roost.delivery.smtpclient import ClientError, ClientLost, ClientTimeout, SmtpConnection
from roost.queue.envelope import BodyType, Recipient
from roost.queue.manager import DeliveryJob, RecipientResult
from roost.tls import describe_tls

__all__ = [
    "LocalAddresses",
    "SmtpConfig",
    "SmtpTransport",
    "TlsLevel",
    "client_tls_context",
    "smtp_config",
    "smtp_transport_from_settings",
]

log = logging.getLogger("roost.smtp")

_LINE_ENDINGS: Final = re.compile(rb"\r\n|\n|\r")
_LEADING_DOT: Final = re.compile(rb"(?m)^\.")
_CONTROLS: Final = re.compile(rb"[\x00-\x1f\x7f]")


class TlsLevel(enum.StrEnum):
    """``smtp_tls_security_level`` (Postfix's names; DANE is not supported)."""

    NONE = "none"
    MAY = "may"
    ENCRYPT = "encrypt"
    VERIFY = "verify"
    SECURE = "secure"

    @property
    def required(self) -> bool:
        """TLS is mandatory at this level."""
        return self not in (TlsLevel.NONE, TlsLevel.MAY)

    @property
    def verifies(self) -> bool:
        """The server certificate is checked at this level."""
        return self in (TlsLevel.VERIFY, TlsLevel.SECURE)


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """The smtp transport's parameters (postconf(5) names; times in seconds)."""

    myhostname: str
    helo_name: str
    default_port: int = 25
    relayhost: tuple[Nexthop, ...] = ()
    relay_domains: tuple[str, ...] = ()
    ip_versions: tuple[int, ...] = (4, 6)
    bind_address: str = ""
    bind_address6: str = ""
    tls_level: TlsLevel = TlsLevel.MAY
    sasl_enable: bool = False
    sasl_options: frozenset[str] = frozenset({"noplaintext", "noanonymous"})
    sasl_tls_options: frozenset[str] = frozenset({"noanonymous"})
    skip_5xx_greeting: bool = True
    connect_timeout: float = 30.0
    helo_timeout: float = 300.0
    starttls_timeout: float = 300.0
    mail_timeout: float = 300.0
    rcpt_timeout: float = 300.0
    data_init_timeout: float = 120.0
    data_xfer_timeout: float = 180.0
    data_done_timeout: float = 600.0
    rset_timeout: float = 20.0
    quit_timeout: float = 300.0
    address_limit: int = 5
    session_limit: int = 2
    concurrency_limit: int = 20
    recipient_limit: int = 50
    failed_cohort_limit: int = 1
    dead_time: float = 300.0
    cache_time_limit: float = 2.0
    reuse_time_limit: float = 300.0


@dataclass(frozen=True, slots=True)
class _Content:
    """The message as it goes on the wire (CRLF line endings, before dot-stuffing)."""

    payload: bytes
    eight_bit: bool
    header_utf8: bool

    @property
    def size(self) -> int:
        """RFC 1870 size: the octets sent in DATA, CRLFs included."""
        return len(self.payload)


#: Content up to this size (bytes) is read on the event loop: a page-cache read of a few
#: KB costs less than the hand-off to a thread and back. Larger content is read in a thread.
INLINE_READ_LIMIT: Final = 64 * 1024

#: Routes (``transport_maps``, ``relayhost``) are cached per recipient address for at most
#: this long (seconds), so that a table that changes under roost (``ldap:``) takes effect.
ROUTE_CACHE_SECONDS: Final = 10.0
_ROUTE_CACHE_SIZE: Final = 10000


def _read_content(job: DeliveryJob) -> _Content:
    raw = job.content  # read by the queue manager with the envelope (small messages)
    if raw is None:
        with job.open_content() as handle:
            raw = handle.read()
    lines = raw.count(b"\n")
    if lines == raw.count(b"\r\n") == raw.count(b"\r"):
        payload = raw  # CRLF already (the spool's usual form): no rewrite
    else:
        payload = _LINE_ENDINGS.sub(b"\r\n", raw)
    if payload and not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    end = payload.find(b"\r\n\r\n")
    header = payload if end < 0 else payload[:end]
    return _Content(payload, not payload.isascii(), not header.isascii())


class _SessionError(Exception):
    """A server could not be used; ``handshake``: it failed before MAIL FROM could be sent
    (connect, greeting, EHLO, TLS), which counts against the destination's health."""

    def __init__(
        self, failure: Failure, relay: str, *, handshake: bool, retry_plain: bool = False
    ) -> None:
        super().__init__(failure.reason)
        self.failure = failure
        self.relay = relay
        self.handshake = handshake
        self.retry_plain = retry_plain


class _Lost(Exception):
    """The connection broke or timed out in the middle of a transaction."""


@dataclass(eq=False, slots=True)
class _Session:
    client: SmtpConnection
    target: Target
    opened: float
    tls: bool = False
    broken: bool = False

    @property
    def extensions(self) -> Mapping[str, str]:
        return self.client.extensions

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self.client.extensions

    @property
    def usable(self) -> bool:
        return not self.broken and self.client.is_connected


@dataclass(slots=True)
class _Progress:
    sessions: int = 0
    reached: bool = False
    handshake_failure: Failure | None = None


def client_tls_context(level: TlsLevel, *, ca_file: str = "", ca_path: str = "") -> ssl.SSLContext:
    """The client TLS context of a security level.

    ``may`` and ``encrypt`` check nothing (opportunistic TLS between MTAs, RFC 7435);
    ``verify`` checks the chain and the host name; ``secure`` checks the chain here and
    the next-hop name after the handshake. CAs: ``smtp_tls_CAfile``/``smtp_tls_CApath``,
    else the system's.

    Raises:
        OSError: a CA file or directory cannot be read.
        ssl.SSLError: a CA file is not PEM.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.options |= ssl.OP_NO_COMPRESSION
    if level.verifies:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = level is TlsLevel.VERIFY
        if ca_file or ca_path:
            context.load_verify_locations(cafile=ca_file or None, capath=ca_path or None)
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _certificate_names(ssl_object: ssl.SSLObject) -> list[str]:
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return []
    from cryptography import x509  # about 10 MiB: only when a certificate is checked

    certificate = x509.load_der_x509_certificate(der)
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        attributes = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return [str(attribute.value) for attribute in attributes]
    return list(extension.value.get_values_for_type(x509.DNSName))


def _name_matches(names: Sequence[str], domain: str) -> bool:
    """Postfix ``smtp_tls_secure_cert_match = nexthop, dot-nexthop``: the domain itself, a
    wildcard covering it, or a name under it."""
    for raw in names:
        name = raw.lower().removesuffix(".")
        if name == domain or name.endswith("." + domain):
            return True
        if name.startswith("*.") and domain.partition(".")[2] == name[2:]:
            return True
    return False


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _path(address: str, utf8: bool) -> bytes:
    """``<address>`` for MAIL FROM / RCPT TO, A-label domains unless SMTPUTF8."""
    if not address:
        return b"<>"
    try:
        text = parse_mailbox(address, smtputf8=True).format(smtputf8=utf8)
    except AddressError:
        text = address
    return f"<{text}>".encode()


def _status_text(text: str, kind: str) -> tuple[str, str]:
    """Split Postfix error(8)/retry text ``5.7.1 text`` into the status and the text."""
    match = re.match(rf"({kind}\.\d{{1,3}}\.\d{{1,3}})\s+(.*)", text, re.DOTALL)
    if match:
        return match.group(1), match.group(2)
    return f"{kind}.0.0", text


def _needs_utf8(address: str) -> bool:
    return not address.rpartition("@")[0].isascii() if "@" in address else not address.isascii()


class SmtpTransport:
    """Delivers relay and other recipients over SMTP (the queue manager's ``Transport``).

    Args:
        config: the parameters.
        dns: performs DNS lookups.
        transport_lookup: ``transport_maps`` (key -> value, None: no entry).
        password_lookup: ``smtp_sasl_password_maps`` (key -> ``user:password``).
        is_myself: tells whether an IP address is one this host receives mail on.
        tls_context: the client TLS context (default: from ``config.tls_level``).
        clock: wall-clock seconds (dead destinations, flush detection).
        monotonic: seconds for connection ages.
        rng: shuffles MX hosts of equal preference.
    """

    name = "smtp"

    def __init__(
        self,
        config: SmtpConfig,
        *,
        dns: DnsLookup,
        transport_lookup: Callable[[str], str | None] = lambda key: None,
        password_lookup: Callable[[str], str | None] = lambda key: None,
        is_myself: Callable[[str], bool] = lambda address: False,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._dns = dns
        self._transport_lookup = transport_lookup
        self._password_lookup = password_lookup
        self._is_myself = is_myself
        self._tls_context = tls_context or client_tls_context(config.tls_level)
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self.dead = DeadDestinations(config.failed_cohort_limit, config.dead_time)
        self.slots = DestinationSlots(config.concurrency_limit)
        self.cache: ConnectionCache[_Session] = ConnectionCache(
            config.cache_time_limit, self._quit, per_key=config.concurrency_limit
        )
        self._background: set[asyncio.Task[None]] = set()
        self._routes: dict[str, Route] = {}
        self._routes_since = 0.0
        self._resolved: dict[tuple[Nexthop, bool], tuple[Target, ...] | Failure] = {}

    async def close(self, timeout: float = 5.0) -> None:
        """Close idle connections (at reload and shutdown), waiting up to ``timeout`` s."""
        await self.cache.close_all(timeout)
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)

    # --- one job ----------------------------------------------------------------------

    async def deliver(self, job: DeliveryJob) -> list[RecipientResult]:
        """Deliver the job's recipients; one result each, never raises for them."""
        now = self._clock()
        # The queue manager hands over recipients not yet due only for a flush: then dead
        # destinations are tried too (Postfix: postqueue -f flushes dead queues).
        forced = any(r.next_try is not None and r.next_try > now for _, r in job.recipients)
        verdicts: list[Verdict] = []
        groups: dict[str, tuple[Route, list[tuple[int, Recipient]]]] = {}
        for index, recipient in job.recipients:
            try:
                route = self._route(recipient.address, now)
            except AddressError as exc:
                verdicts.append(Verdict(index, Status.BOUNCED, "5.1.3", f"bad address: {exc}"))
                continue
            except NexthopError as exc:
                verdicts.append(Verdict(index, Status.DEFERRED, "4.3.5", f"transport_maps: {exc}"))
                continue
            if route.kind is RouteKind.SMTP:
                groups.setdefault(route.key, (route, []))[1].append((index, recipient))
            elif route.kind is RouteKind.ERROR:
                dsn, reason = _status_text(route.text, "5")
                verdicts.append(Verdict(index, Status.BOUNCED, dsn, reason, agent="error"))
            elif route.kind is RouteKind.RETRY:
                dsn, reason = _status_text(route.text, "4")
                verdicts.append(Verdict(index, Status.DEFERRED, dsn, reason, agent="retry"))
            elif route.kind is RouteKind.DISCARD:
                reason = f"discarded: {route.text}" if route.text else "discarded"
                verdicts.append(Verdict(index, Status.SENT, "2.0.0", reason, agent="discard"))
            else:
                verdicts.append(Verdict(index, Status.DEFERRED, "4.3.5", route.text))
        if groups:
            try:
                if job.content is not None or job.content_size <= INLINE_READ_LIMIT:
                    content = _read_content(job)
                else:
                    content = await asyncio.to_thread(_read_content, job)
            except OSError as exc:
                reason = f"cannot read the message: {exc}"
                for _, items in groups.values():
                    verdicts += [Verdict(i, Status.DEFERRED, "4.3.0", reason) for i, _ in items]
            else:
                routes = list(groups.values())
                if len(routes) == 1:  # the common case: no task for it
                    route, items = routes[0]
                    parts = [await self._deliver_route(job, route, items, content, forced)]
                else:
                    parts = await asyncio.gather(
                        *(
                            self._deliver_route(job, route, items, content, forced)
                            for route, items in routes
                        )
                    )
                for part in parts:
                    verdicts += part
        return [
            RecipientResult(
                v.index, v.status.value, v.dsn, v.reason, v.relay, v.remote_reply, v.agent
            )
            for v in sorted(verdicts, key=lambda verdict: verdict.index)
        ]

    def _route(self, address: str, now: float) -> Route:
        """The route of one recipient (:func:`route_for`), cached per address for up to
        :data:`ROUTE_CACHE_SECONDS`.

        Raises:
            AddressError: not an address.
            NexthopError: a ``transport_maps`` entry has a bad next hop.
        """
        cache = self._routes
        if now - self._routes_since > ROUTE_CACHE_SECONDS or len(cache) > _ROUTE_CACHE_SIZE:
            cache.clear()
            self._routes_since = now
        route = cache.get(address)
        if route is None:
            parsed = parse_mailbox(address, smtputf8=True)
            route = route_for(
                parsed.local_part,
                parsed.domain_key,
                lookup=self._transport_lookup,
                relayhost=self.config.relayhost,
            )
            cache[address] = route
        return route

    async def _deliver_route(
        self,
        job: DeliveryJob,
        route: Route,
        items: list[tuple[int, Recipient]],
        content: _Content,
        forced: bool,
    ) -> list[Verdict]:
        key = route.key
        if forced:
            self.dead.revive(key)
        suspended = self.dead.suspended(key, self._clock())
        if suspended is not None:  # do not even wait for a slot
            dsn, reason = suspended
            return [Verdict(i, Status.DEFERRED, dsn, reason) for i, _ in items]
        verdicts: list[Verdict] = []
        async with self.slots.slot(key):
            for chunk in split_recipients(items, self.config.recipient_limit):
                suspended = self.dead.suspended(key, self._clock())
                if suspended is not None:
                    dsn, reason = suspended
                    verdicts += [Verdict(i, Status.DEFERRED, dsn, reason) for i, _ in chunk]
                    continue
                verdicts += await self._deliver_chunk(job, route, chunk, content)
        return verdicts

    async def _deliver_chunk(
        self,
        job: DeliveryJob,
        route: Route,
        chunk: Sequence[tuple[int, Recipient]],
        content: _Content,
    ) -> list[Verdict]:
        attempt = Attempt(index for index, _ in chunk)
        recipients = dict(chunk)
        progress = _Progress()
        session = self.cache.take(route.key)
        if session is not None:
            if await self._reuse(session):
                if await self._transaction(
                    job, session, attempt, recipients, content, rset=session.pipelining
                ):
                    progress.reached = True
                    progress.sessions += 1
                self._release(route.key, session)
            else:
                self._spawn(self._quit(session))
        for position, nexthop in enumerate(route.nexthops):
            if not attempt.pending:
                break
            outcome = await self._resolve(nexthop, route)
            if isinstance(outcome, Failure):
                if not outcome.soft and position + 1 < len(route.nexthops):
                    # a fallback relay is left: do not bounce yet (Postfix smtp_connect)
                    outcome = Failure(True, "4" + outcome.dsn[1:], outcome.reason)
                attempt.fail(outcome)
                continue
            for target in outcome:
                if not attempt.pending:
                    break
                limit = self.config.session_limit
                if limit and progress.sessions >= limit:
                    break
                try:
                    session = await self._open(job, target, nexthop)
                except _SessionError as exc:
                    log.info("%s: %s", job.queue_id, exc.failure.reason)
                    if exc.handshake:
                        progress.handshake_failure = exc.failure
                    attempt.fail(exc.failure, exc.relay if not exc.failure.soft else "none")
                    continue
                progress.sessions += 1
                progress.reached = True
                await self._transaction(job, session, attempt, recipients, content)
                self._release(route.key, session)
        if progress.reached:
            self.dead.succeeded(route.key)
        elif progress.handshake_failure is not None:
            failure = progress.handshake_failure
            if self.dead.failed(route.key, failure.dsn, failure.reason, self._clock()):
                log.info(
                    "destination %s is dead for %ds: %s",
                    route.key,
                    self.config.dead_time,
                    failure.reason,
                )
        return attempt.verdicts()

    async def _resolve(self, nexthop: Nexthop, route: Route) -> tuple[Target, ...] | Failure:
        configured = route.configured or (
            nexthop.mx_lookup and domain_matches(nexthop.host, self.config.relay_domains)
        )
        # an address next hop ([192.0.2.1]:port) needs no lookup: the same answer every time
        key = (nexthop, configured)
        cached = self._resolved.get(key)
        if cached is not None:
            return cached
        outcome = await resolve(self._resolution(nexthop, configured), self._dns)
        if not nexthop.mx_lookup and nexthop.is_address and len(self._resolved) < 1000:
            self._resolved[key] = outcome
        return outcome

    def _resolution(self, nexthop: Nexthop, configured: bool) -> HostResolution:
        return HostResolution(
            nexthop,
            default_port=self.config.default_port,
            ip_versions=self.config.ip_versions,
            myhostname=self.config.myhostname,
            is_myself=self._is_myself,
            configured=configured,
            address_limit=self.config.address_limit,
            rng=self._rng,
        )

    # --- sessions ---------------------------------------------------------------------

    async def _open(self, job: DeliveryJob, target: Target, nexthop: Nexthop) -> _Session:
        level = self.config.tls_level
        try:
            return await self._handshake(target, nexthop, tls=level is not TlsLevel.NONE)
        except _SessionError as exc:
            if not (exc.retry_plain and level is TlsLevel.MAY):
                raise
            log.info("%s: %s; trying again without TLS", job.queue_id, exc.failure.reason)
            return await self._handshake(target, nexthop, tls=False)

    async def _connect(self, target: Target) -> socket.socket:
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        bind = self.config.bind_address6 if family == socket.AF_INET6 else self.config.bind_address
        try:
            if bind:
                sock.bind((bind, 0))
            async with asyncio.timeout(self.config.connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, (target.address, target.port))
        except TimeoutError:
            sock.close()
            text = f"connect to {target.relay}: Connection timed out"
            raise self._site(target, "4.4.1", text) from None
        except OSError as exc:
            sock.close()
            text = os.strerror(exc.errno) if exc.errno else str(exc)
            raise self._site(target, "4.4.1", f"connect to {target.relay}: {text}") from None
        return sock

    @staticmethod
    def _site(target: Target, dsn: str, reason: str, *, soft: bool = True) -> _SessionError:
        return _SessionError(Failure(soft, dsn, reason), target.relay, handshake=True)

    async def _handshake(self, target: Target, nexthop: Nexthop, *, tls: bool) -> _Session:
        sock = await self._connect(target)
        try:
            client = await SmtpConnection.open(sock)
        except OSError:
            sock.close()
            where = "while receiving the initial server greeting"
            text = f"lost connection with {target.host_text} {where}"
            raise self._site(target, "4.4.2", text) from None
        session = _Session(client, target, self._monotonic())
        try:
            await self._greeting(session)
            await self._hello(session)
            if tls:
                await self._starttls(session, nexthop)
            elif self.config.tls_level.required:
                raise self._site(target, "4.7.4", "TLS is required")
            if self.config.sasl_enable:
                await self._authenticate(session, nexthop)
        except BaseException:
            client.close()
            raise
        return session

    async def _greeting(self, session: _Session) -> None:
        target = session.target
        where = "while receiving the initial server greeting"
        try:
            reply = await session.client.read(self.config.helo_timeout)
        except ClientTimeout:
            text = f"conversation with {target.host_text} timed out {where}"
            raise self._site(target, "4.4.2", text) from None
        except (ClientError, OSError):
            text = f"lost connection with {target.host_text} {where}"
            raise self._site(target, "4.4.2", text) from None
        if reply.code != 220:
            soft = reply.soft or self.config.skip_5xx_greeting
            dsn = ("4" if soft else "5") + reply.dsn[1:]
            text = f"host {target.host_text} refused to talk to me: {reply}"
            raise self._site(target, dsn, text, soft=soft)

    async def _hello(self, session: _Session) -> None:
        client, target = session.client, session.target
        where = "while performing the EHLO handshake"
        timeout = self.config.helo_timeout
        try:
            reply = await client.ehlo(self.config.helo_name, timeout)
            if reply.code != 250 and reply.code != 421 and client.is_connected:
                reply = await client.helo(self.config.helo_name, timeout)
        except ClientTimeout:
            text = f"conversation with {target.host_text} timed out {where}"
            raise self._site(target, "4.4.2", text) from None
        except (ClientError, OSError, ValueError):
            text = f"lost connection with {target.host_text} {where}"
            raise self._site(target, "4.4.2", text) from None
        if reply.code != 250:
            text = f"host {target.host_text} said: {reply} (in reply to HELO command)"
            raise self._site(target, reply.dsn, text, soft=reply.soft)

    async def _starttls(self, session: _Session, nexthop: Nexthop) -> None:
        client, target = session.client, session.target
        level = self.config.tls_level
        if "starttls" not in client.extensions:
            if level.required:
                text = f"TLS is required, but was not offered by host {target.host_text}"
                raise self._site(target, "4.7.4", text)
            return
        server_hostname = None if _is_ip(target.hostname) else target.hostname
        try:
            reply = await client.starttls(
                self._tls_context, server_hostname, self.config.starttls_timeout
            )
        except ssl.SSLCertVerificationError as exc:
            text = f"Server certificate not verified: {target.host_text}: {exc.verify_message}"
            raise self._site(target, "4.7.5", text) from None
        except (ssl.SSLError, ClientError, OSError) as exc:
            error = _SessionError(
                Failure(
                    True,
                    "4.7.5",
                    f"Cannot start TLS: handshake failure with {target.host_text}: {exc}",
                ),
                target.relay,
                handshake=True,
                retry_plain=True,
            )
            raise error from None
        if reply.code != 220:
            if not level.required and client.is_connected and reply.code != 421:
                log.info("host %s refused to start TLS: %s", target.host_text, reply)
                return
            text = f"TLS is required, but host {target.host_text} refused to start TLS: {reply}"
            raise self._site(target, "4.7.4", text)
        session.tls = True
        ssl_object = client.ssl_object
        if ssl_object is None:
            text = f"lost connection with {target.host_text} after the TLS handshake"
            raise self._site(target, "4.4.2", text)
        if level is TlsLevel.SECURE and not _name_matches(
            _certificate_names(ssl_object), nexthop.host
        ):
            text = (
                f"Server certificate not verified: {target.host_text}: "
                f"no name matches {nexthop.host}"
            )
            raise self._site(target, "4.7.5", text)
        if level.verifies:
            trust = "Verified"
        elif ssl_object.getpeercert(binary_form=True):
            trust = "Untrusted"
        else:
            trust = "Anonymous"
        log.info(
            "%s TLS connection established to %s: %s",
            trust,
            target.relay,
            describe_tls(ssl_object),
        )
        await self._hello(session)

    def _credentials(self, nexthop: Nexthop, hostname: str) -> tuple[str, str] | None:
        keys = [str(nexthop)]
        if nexthop.port is not None:
            keys.append(str(Nexthop(nexthop.host, None, nexthop.mx_lookup)))
        keys += [nexthop.host, hostname]
        for key in dict.fromkeys(keys):
            value = self._password_lookup(key)
            if value is None:
                continue
            user, sep, password = value.strip().partition(":")
            if not sep or not user:
                log.warning("smtp_sasl_password_maps: entry %s is not user:password", key)
                return None
            return user, password
        return None

    async def _authenticate(self, session: _Session, nexthop: Nexthop) -> None:
        client, target = session.client, session.target
        credentials = self._credentials(nexthop, target.hostname)
        if credentials is None:
            return
        offered = session.extensions.get("auth")
        if offered is None:
            log.info("server %s offers no AUTH; continuing without", target.host_text)
            return
        options = self.config.sasl_tls_options if session.tls else self.config.sasl_options
        mechanisms = offered.upper().split()
        usable = (
            [] if "noplaintext" in options else [m for m in ("PLAIN", "LOGIN") if m in mechanisms]
        )
        if not usable:
            text = (
                f"SASL authentication failed: cannot authenticate to server "
                f"{target.host_text}: no mechanism available"
            )
            raise _SessionError(Failure(True, "4.7.0", text), target.relay, handshake=False)
        user, password = credentials
        timeout = self.config.helo_timeout
        try:
            if usable[0] == "PLAIN":
                reply = await client.auth_plain(user, password, timeout)
            else:
                reply = await client.auth_login(user, password, timeout)
        except (ClientError, OSError, ValueError):
            text = f"lost connection with {target.host_text} while authenticating"
            raise _SessionError(
                Failure(True, "4.4.2", text), target.relay, handshake=False
            ) from None
        if reply.code != 235:
            text = f"SASL authentication failed; server {target.host_text} said: {reply}"
            dsn = "4" + reply.dsn[1:]
            raise _SessionError(Failure(True, dsn, text), target.relay, handshake=False)

    async def _reuse(self, session: _Session) -> bool:
        """Take a cached session back into use: young enough, and RSET answers (at once
        without PIPELINING; with it, RSET goes in the transaction's first write)."""
        if not session.usable:
            return False
        if self._monotonic() - session.opened > self.config.reuse_time_limit:
            return False
        if session.pipelining:
            return True
        return await self._rset(session)

    def _release(self, key: str, session: _Session) -> None:
        if session.usable and self._monotonic() - session.opened < self.config.reuse_time_limit:
            self.cache.put(key, session)
        else:
            self._spawn(self._quit(session))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quit(self, session: _Session) -> None:
        if session.usable:
            await session.client.quit(self.config.quit_timeout)
        else:
            session.client.close()

    # --- one transaction --------------------------------------------------------------

    def _broken(self, session: _Session, stage: str, exc: Exception) -> _Lost:
        """Mark the session unusable; the :class:`_Lost` that says what happened."""
        session.broken = True
        session.client.close()
        host = session.target.host_text
        if isinstance(exc, ClientTimeout):
            return _Lost(f"conversation with {host} timed out while sending {stage}")
        if isinstance(exc, (ClientLost, OSError)):
            return _Lost(f"lost connection with {host} while sending {stage}")
        return _Lost(f"conversation with {host} failed while sending {stage}: {exc}")

    async def _read(self, session: _Session, stage: str, timeout: float) -> Reply:
        try:
            reply = await session.client.read(timeout)
        except ClientError as exc:
            raise self._broken(session, stage, exc) from None
        if reply.code == 421:
            session.broken = True
        return reply

    async def _command(self, session: _Session, stage: str, line: bytes, timeout: float) -> Reply:
        try:
            session.client.send(line)
        except (ClientError, ValueError) as exc:
            raise self._broken(session, stage, exc) from None
        return await self._read(session, stage, timeout)

    async def _rset(self, session: _Session) -> bool:
        try:
            reply = await self._command(session, "RSET", b"RSET", self.config.rset_timeout)
        except _Lost:
            return False
        if not reply.ok:
            session.broken = True
        return reply.ok

    async def _send_content(self, session: _Session, content: _Content) -> Reply:
        payload = content.payload
        if payload.startswith(b".") or b"\n." in payload:
            payload = _LEADING_DOT.sub(b"..", payload)
        stage = "message body"
        try:
            session.client.write(payload + b".\r\n")
            return await self._read(
                session, stage, self.config.data_xfer_timeout + self.config.data_done_timeout
            )
        except ClientError as exc:
            raise self._broken(session, stage, exc) from None

    def _log_reply(self, job: DeliveryJob, session: _Session, reply: Reply, stage: str) -> None:
        log.info(
            "%s: host %s said: %s (in reply to %s command)",
            job.queue_id,
            session.target.host_text,
            reply,
            stage,
        )

    async def _transaction(
        self,
        job: DeliveryJob,
        session: _Session,
        attempt: Attempt,
        recipients: Mapping[int, Recipient],
        content: _Content,
        *,
        rset: bool = False,
    ) -> bool:
        """One MAIL/RCPT/DATA transaction for the attempt's pending recipients.

        With PIPELINING (RFC 2920) the RSET of a reused session (``rset``), MAIL, every
        RCPT and DATA go in one write, and their replies are read in order with each
        stage's time limit; then the content. Without it, one command at a time.

        Returns:
            False when the reused session turned out to be dead (the folded RSET got no
            reply, or not 2xx): nothing was attempted and the recipients are unchanged.
        """
        pending = attempt.pending
        if not pending:
            return True
        envelope = job.envelope
        host, relay = session.target.host_text, session.target.relay
        extensions = session.extensions
        utf8 = envelope.smtputf8 and "smtputf8" in extensions
        needs_utf8 = envelope.smtputf8 and (
            _needs_utf8(envelope.envelope_sender)
            or any(_needs_utf8(recipients[index].address) for index in pending)
            or content.header_utf8
        )
        if needs_utf8 and not utf8:
            reason = f"SMTPUTF8 is required, but was not offered by host {host}"
            for index in pending:
                attempt.bounce(index, "5.6.7", reason, relay)
            return True
        size_text = extensions.get("size", "")
        limit = int(size_text) if size_text.isdigit() else 0
        if limit and content.size > limit:
            reason = f"message size {content.size} exceeds size limit {limit} of server {host}"
            for index in pending:
                attempt.bounce(index, "5.3.4", reason, relay)
            return True
        mail = b"MAIL FROM:" + _path(envelope.envelope_sender, utf8)
        if "size" in extensions:
            mail += f" SIZE={content.size}".encode()
        if "8bitmime" in extensions:
            if envelope.body_type is BodyType.EIGHT_BIT_MIME or content.eight_bit:
                mail += b" BODY=8BITMIME"
            elif envelope.body_type is BodyType.SEVEN_BIT:
                mail += b" BODY=7BIT"
        if utf8:
            mail += b" SMTPUTF8"
        dsn = "dsn" in extensions
        if dsn and envelope.ret is not None:
            mail += f" RET={envelope.ret.value}".encode()
        if dsn and envelope.envid:
            mail += f" ENVID={encode_xtext(envelope.envid)}".encode()
        rcpts: list[bytes] = []
        for index in pending:
            recipient = recipients[index]
            rcpt = b"RCPT TO:" + _path(recipient.address, utf8)
            if dsn and recipient.notify:
                notify = ",".join(value.value for value in recipient.notify)
                rcpt += f" NOTIFY={notify}".encode()
            if dsn and recipient.orcpt:
                kind, _, original = recipient.orcpt.partition(";")
                rcpt += f" ORCPT={kind};{encode_xtext(original)}".encode()
            rcpts.append(rcpt)
        config = self.config
        accepted: list[int] = []
        try:
            if session.pipelining:
                lines = [b"RSET", mail] if rset else [mail]
                lines += rcpts
                lines.append(b"DATA")
                if _CONTROLS.search(b" ".join(lines)):
                    error = ValueError("command contains a control character")
                    raise self._broken(session, "MAIL FROM", error)
                try:
                    session.client.write(b"\r\n".join(lines) + b"\r\n")
                except ClientError as exc:
                    lost = self._broken(session, "RSET" if rset else "MAIL FROM", exc)
                    if rset:
                        return False  # a dead cached connection: nothing was attempted
                    raise lost from None
                if rset:
                    try:
                        reply = await self._read(session, "RSET", config.rset_timeout)
                    except _Lost:
                        return False
                    if not reply.ok:
                        session.broken = True
                        session.client.close()
                        return False
                mail_reply = await self._read(session, "MAIL FROM", config.mail_timeout)
                rcpt_replies = [
                    await self._read(session, "RCPT TO", config.rcpt_timeout) for _ in rcpts
                ]
                data_reply: Reply | None = await self._read(
                    session, "DATA", config.data_init_timeout
                )
            else:
                mail_reply = await self._command(session, "MAIL FROM", mail, config.mail_timeout)
                rcpt_replies = []
                if mail_reply.ok:
                    for rcpt in rcpts:
                        rcpt_replies.append(
                            await self._command(session, "RCPT TO", rcpt, config.rcpt_timeout)
                        )
                data_reply = None
            if not mail_reply.ok:
                self._log_reply(job, session, mail_reply, "MAIL FROM")
                for index in pending:
                    attempt.refused(index, mail_reply, relay)
                await self._abandon(session, data_reply)
                return True
            for index, reply in zip(pending, rcpt_replies, strict=True):
                if reply.ok:
                    accepted.append(index)
                else:
                    self._log_reply(job, session, reply, "RCPT TO")
                    attempt.refused(index, reply, relay)
            if not accepted:
                await self._abandon(session, data_reply)
                return True
            if data_reply is None:
                data_reply = await self._command(session, "DATA", b"DATA", config.data_init_timeout)
            reply = data_reply
            if reply.code != 354:
                if reply.ok:
                    reply = Reply(451, f"4.5.0 unexpected reply to DATA: {reply}")
                self._log_reply(job, session, reply, "DATA")
                for index in accepted:
                    attempt.refused(index, reply, relay)
                await self._abandon(session, None)
                return True
            reply = await self._send_content(session, content)
            for index in accepted:
                if reply.ok:
                    attempt.sent(index, reply, relay)
                else:
                    attempt.refused(index, reply, relay)
            if not reply.ok:
                self._log_reply(job, session, reply, "end of DATA")
        except _Lost as exc:
            log.info("%s: %s", job.queue_id, exc)
            for index in pending:
                attempt.soft(index, "4.4.2", str(exc), relay)
        return True

    async def _abandon(self, session: _Session, data_reply: Reply | None) -> None:
        """End a transaction that sends no content: RSET, or close the connection when a
        pipelined DATA was accepted anyway (354 with no recipient: a broken server)."""
        if data_reply is not None and data_reply.code == 354:
            session.broken = True
            session.client.close()
        elif not session.broken:
            await self._rset(session)


# --- construction from settings ----------------------------------------------------------------


class LocalAddresses:
    """Tells whether an IP address is one this host receives mail on (loop detection).

    The addresses are the listening addresses (``inet_interfaces``); a wildcard
    (``0.0.0.0``, ``::``) stands for every address of the host, which is asked of the
    kernel by binding a socket to the address (no packet is sent).
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        self._exact: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self._wildcard: set[int] = set()
        for text in addresses:
            address = ipaddress.ip_address(text)
            if address.is_unspecified:
                self._wildcard.add(address.version)
            else:
                self._exact.add(address)
        self._probed: dict[str, bool] = {}

    def __call__(self, text: str) -> bool:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
        if address in self._exact:
            return True
        if address.version not in self._wildcard:
            return False
        if text not in self._probed:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((str(address), 0))
                except OSError:
                    self._probed[text] = False
                else:
                    self._probed[text] = True
        return self._probed[text]


def _table_lookup(settings: Settings, name: str) -> Callable[[str], str | None]:
    try:
        tables = [open_table(ref) for ref in settings.tables(name)]
    except TableError as exc:
        raise settings.error(name, str(exc)) from None

    def lookup(key: str) -> str | None:
        for table in tables:
            value = table.lookup(key)
            if value is not None:
                return value
        return None

    return lookup


def smtp_config(settings: Settings) -> SmtpConfig:
    """The smtp transport's parameters from the settings.

    Raises:
        ConfigError: ``relayhost`` is not a next hop, naming it.
    """
    from roost.daemon.listeners import ip_versions

    try:
        relayhost = parse_nexthops(settings.string("relayhost"))
    except NexthopError as exc:
        raise settings.error("relayhost", str(exc)) from None
    port_text = settings.string("smtp_tcp_port").strip()
    port = SERVICE_PORTS.get(port_text.lower()) or (int(port_text) if port_text.isdigit() else 0)
    if not 0 < port < 65536:
        raise settings.error("smtp_tcp_port", f"not a port number or service name: {port_text!r}")
    seconds = settings.seconds
    return SmtpConfig(
        myhostname=settings.string("myhostname"),
        helo_name=settings.string("smtp_helo_name"),
        default_port=port,
        relayhost=relayhost,
        relay_domains=settings.strings("relay_domains"),
        ip_versions=ip_versions(settings),
        bind_address=settings.string("smtp_bind_address"),
        bind_address6=settings.string("smtp_bind_address6"),
        tls_level=TlsLevel(settings.string("smtp_tls_security_level").lower()),
        sasl_enable=settings.boolean("smtp_sasl_auth_enable"),
        sasl_options=frozenset(w.lower() for w in settings.strings("smtp_sasl_security_options")),
        sasl_tls_options=frozenset(
            w.lower() for w in settings.strings("smtp_sasl_tls_security_options")
        ),
        skip_5xx_greeting=settings.boolean("smtp_skip_5xx_greeting"),
        connect_timeout=seconds("smtp_connect_timeout"),
        helo_timeout=seconds("smtp_helo_timeout"),
        starttls_timeout=seconds("smtp_starttls_timeout"),
        mail_timeout=seconds("smtp_mail_timeout"),
        rcpt_timeout=seconds("smtp_rcpt_timeout"),
        data_init_timeout=seconds("smtp_data_init_timeout"),
        data_xfer_timeout=seconds("smtp_data_xfer_timeout"),
        data_done_timeout=seconds("smtp_data_done_timeout"),
        rset_timeout=seconds("smtp_rset_timeout"),
        quit_timeout=seconds("smtp_quit_timeout"),
        address_limit=settings.integer("smtp_mx_address_limit"),
        session_limit=settings.integer("smtp_mx_session_limit"),
        concurrency_limit=settings.integer("smtp_destination_concurrency_limit"),
        recipient_limit=settings.integer("smtp_destination_recipient_limit"),
        failed_cohort_limit=settings.integer("smtp_destination_concurrency_failed_cohort_limit"),
        dead_time=seconds("minimal_backoff_time"),
        cache_time_limit=seconds("smtp_connection_cache_time_limit"),
        reuse_time_limit=seconds("smtp_connection_reuse_time_limit"),
    )


def smtp_transport_from_settings(settings: Settings) -> SmtpTransport:
    """Build the smtp transport: parameters, DNS, tables, TLS context, local addresses.

    Tables and CA files are read here (before privileges are dropped).

    Raises:
        ConfigError: a bad ``relayhost``, ``dns_nameservers``, table or CA file, naming
            the parameter.
    """
    from roost.daemon.listeners import listen_addresses

    config = smtp_config(settings)
    try:
        dns = DnsResolver(
            settings.strings("dns_nameservers"), timeout=settings.seconds("dns_lookup_timeout")
        )
    except ValueError as exc:
        raise settings.error("dns_nameservers", str(exc)) from None
    ca_file, ca_path = settings.string("smtp_tls_CAfile"), settings.string("smtp_tls_CApath")
    try:
        tls_context = client_tls_context(config.tls_level, ca_file=ca_file, ca_path=ca_path)
    except (OSError, ssl.SSLError) as exc:
        name = "smtp_tls_CAfile" if ca_file else "smtp_tls_CApath"
        raise settings.error(name, f"cannot load CA certificates: {exc}") from None
    password_lookup: Callable[[str], str | None] = lambda key: None  # noqa: E731
    if config.sasl_enable:
        password_lookup = _table_lookup(settings, "smtp_sasl_password_maps")
    try:
        addresses = listen_addresses(settings)
    except ValueError:
        addresses = []
    return SmtpTransport(
        config,
        dns=dns,
        transport_lookup=_table_lookup(settings, "transport_maps"),
        password_lookup=password_lookup,
        is_myself=LocalAddresses(addresses),
        tls_context=tls_context,
    )

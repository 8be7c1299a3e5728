"""Where outbound mail goes and what each answer means: the pure half of the smtp transport.

Three pieces, none of which does I/O (the async loops live in :mod:`roost.delivery.resolver`
and :mod:`roost.delivery.smtp`):

- **Routes.** ``relayhost`` and ``transport_maps`` values in Postfix's syntax
  (:func:`parse_nexthop`, :func:`route_for`): ``[host]:port`` (no MX lookup), ``host`` or
  ``host:port`` (MX lookup), ``smtp:``/``relay:`` with or without a next hop,
  ``error:text``, ``retry:text``, ``discard:text``. Other transports (``local:``,
  ``lmtp:``...) cannot carry a remote recipient and defer with a clear reason.
- **Next-hop resolution** (:class:`HostResolution`), RFC 5321 §5.1: MX records in
  preference order with equal preferences shuffled, each MX host's A then AAAA
  (``inet_protocols``), no MX -> the domain itself (implicit MX), a null MX (RFC 7505) ->
  bounce 5.1.10, NXDOMAIN -> bounce 5.1.2, SERVFAIL or a timeout -> defer 4.4.3, and
  Postfix's loop rule: MX hosts at or after this host's own preference are dropped; if
  none is left, "mail for X loops back to myself". The loop rule applies only when the
  target port is 25 (:data:`LOOP_DETECT_PORT`), as in Postfix, so that a content filter or
  a second server on this host (``smtp:[127.0.0.1]:10024``) is not mistaken for a loop.
- **One delivery attempt** (:class:`Attempt`): which recipients are final (a 2xx after
  the data, a 5xx) and which go on to the next MX host (a 4xx, a lost connection), and
  what is deferred when no host is left.

See Also: RFC 5321 §5.1 and §4.2; RFC 7505 (null MX); Postfix smtp(8), transport(5),
postconf(5) ``relayhost``.
"""

from __future__ import annotations

import enum
import ipaddress
import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from roost.address import AddressError, normalize_domain

__all__ = [
    "LOOP_DETECT_PORT",
    "SERVICE_PORTS",
    "Attempt",
    "DnsAnswer",
    "DnsQuery",
    "DnsStatus",
    "Failure",
    "HostResolution",
    "Nexthop",
    "NexthopError",
    "Reply",
    "Route",
    "RouteKind",
    "Status",
    "Target",
    "Verdict",
    "domain_nexthop",
    "parse_nexthop",
    "parse_nexthops",
    "parse_transport",
    "route_for",
    "transport_keys",
]

#: The loop rule (this host among the targets) applies only to targets at this port: Postfix
#: smtp_connect.c sets ``SMTP_MISC_FLAG_LOOP_DETECT`` only for ``IPPORT_SMTP``.
LOOP_DETECT_PORT: Final = 25

#: Service names accepted in place of a port number (``[relay]:submission``).
SERVICE_PORTS: Final = {"smtp": 25, "submission": 587, "smtps": 465, "submissions": 465}

_SPLIT: Final = re.compile(r"[\s,]+")


class NexthopError(ValueError):
    """A next hop (``relayhost``, a ``transport_maps`` value) that cannot be used."""


# --- next hops and routes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Nexthop:
    """One next-hop destination of the smtp transport.

    Attributes:
        host: a lower-case A-label host or domain name, or an IP address (no brackets).
        port: the TCP port, or None for ``smtp_tcp_port``.
        mx_lookup: look up MX records of ``host`` (``host``) or not (``[host]``).
    """

    host: str
    port: int | None = None
    mx_lookup: bool = True

    @property
    def is_address(self) -> bool:
        """True when ``host`` is an IP address (``[192.0.2.1]``)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        text = self.host if self.mx_lookup else f"[{self.host}]"
        return text if self.port is None else f"{text}:{self.port}"


def _port(text: str, whole: str) -> int:
    if text.lower() in SERVICE_PORTS:
        return SERVICE_PORTS[text.lower()]
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise NexthopError(f"bad port {text!r} in next hop {whole!r}")
    return int(text)


def parse_nexthop(text: str) -> Nexthop:
    """Parse one next hop in Postfix's syntax.

    ``[host]`` and ``[host]:port`` name the host itself (no MX lookup); ``host`` and
    ``host:port`` look up MX records first. An IP address must be bracketed:
    ``[192.0.2.1]``, ``[2001:db8::1]`` or ``[ipv6:2001:db8::1]``. The port may be a number
    or a service name (``smtp``, ``submission``, ``submissions``).

    Raises:
        NexthopError: the text is not a next hop.

    See Also: postconf(5) ``relayhost``, transport(5).
    """
    whole = text
    text = text.strip()
    if not text:
        raise NexthopError("empty next hop")
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise NexthopError(f"unbalanced brackets in next hop {whole!r}")
        inner, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise NexthopError(f"junk after ] in next hop {whole!r}")
            port = _port(rest[1:], whole)
        if inner.lower().startswith("ipv6:"):
            inner = inner[5:]
        return Nexthop(_host(inner, whole), port, mx_lookup=False)
    host, sep, port_text = text.rpartition(":")
    if sep:
        port = _port(port_text, whole)
    else:
        host = text
    if _is_ip(host):
        raise NexthopError(f"an IP address needs brackets: [{host}] in next hop {whole!r}")
    return Nexthop(_host(host, whole), port, mx_lookup=True)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host(text: str, whole: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return normalize_domain(text)
    except AddressError as exc:
        raise NexthopError(f"bad host name {text!r} in next hop {whole!r}: {exc}") from None


def parse_nexthops(text: str) -> tuple[Nexthop, ...]:
    """Parse a list of next hops separated by commas or spaces (tried in order).

    Raises:
        NexthopError: an element is not a next hop.
    """
    return tuple(parse_nexthop(item) for item in _SPLIT.split(text.strip()) if item)


def domain_nexthop(domain: str) -> Nexthop:
    """The next hop of a recipient domain: its MX records, or an address literal's address.

    Args:
        domain: a domain key (:attr:`roost.address.Address.domain_key`): ``example.org``,
            ``[192.0.2.1]`` or ``[ipv6:2001:db8::1]``.
    """
    if domain.startswith("["):
        inner = domain[1:-1]
        if inner.lower().startswith("ipv6:"):
            inner = inner[5:]
        return Nexthop(str(ipaddress.ip_address(inner)), None, mx_lookup=False)
    return Nexthop(domain, None, mx_lookup=True)


class RouteKind(enum.Enum):
    """What a route does with a recipient."""

    SMTP = "smtp"
    """Deliver over SMTP to ``Route.nexthops``."""
    ERROR = "error"
    """Bounce with ``Route.text`` (Postfix error(8))."""
    RETRY = "retry"
    """Defer with ``Route.text`` (Postfix retry)."""
    DISCARD = "discard"
    """Report success without delivering (Postfix discard(8))."""
    UNSUPPORTED = "unsupported"
    """A transport this transport cannot run (``local:``, ``lmtp:``...): defer."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where one recipient goes.

    Attributes:
        kind: what to do.
        nexthops: for SMTP, the next hops to try in order.
        text: for ERROR, RETRY and DISCARD the text; for UNSUPPORTED the reason.
        configured: the next hops come from ``relayhost`` or ``transport_maps`` rather
            than the recipient domain (a loop to this host is then a configuration error).
    """

    kind: RouteKind
    nexthops: tuple[Nexthop, ...] = ()
    text: str = ""
    configured: bool = False
    key: str = field(init=False, repr=False, compare=False)
    """The destination: what concurrency, connection reuse and dead-destination backoff
    are counted per (Postfix's transport queue name minus the transport). Computed once:
    it is asked for several times per delivery."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ", ".join(str(nexthop) for nexthop in self.nexthops))


def parse_transport(value: str) -> tuple[str, str]:
    """Split a ``transport_maps`` result into (transport, next hop).

    ``smtp:[relay]:25`` -> ``("smtp", "[relay]:25")``; ``smtp`` -> ``("smtp", "")``;
    ``:[relay]`` -> ``("", "[relay]")`` (the default transport); ``error:5.1.1 gone`` ->
    ``("error", "5.1.1 gone")``.
    """
    value = value.strip()
    transport, sep, nexthop = value.partition(":")
    if not sep:
        return value.lower(), ""
    return transport.strip().lower(), nexthop.strip()


def transport_keys(local_part: str, domain: str) -> list[str]:
    """The ``transport_maps`` keys for one recipient, in Postfix's order.

    ``user@sub.example.org``, ``sub.example.org``, ``.example.org``, ``.org``, ``*``
    (``.domain`` matches subdomains only, as with Postfix's compatibility_level >= 2).
    """
    keys = [f"{local_part}@{domain}".lower()] if local_part else []
    keys.append(domain.lower())
    if not domain.startswith("["):
        labels = domain.lower().split(".")
        keys += ["." + ".".join(labels[i:]) for i in range(1, len(labels))]
    keys.append("*")
    return keys


def route_for(
    local_part: str,
    domain: str,
    *,
    lookup: Callable[[str], str | None],
    relayhost: tuple[Nexthop, ...] = (),
) -> Route:
    """Decide the route of one recipient: ``transport_maps``, else ``relayhost``, else MX.

    Args:
        local_part: the recipient's local part.
        domain: its domain key (A-labels, lower case, or an address literal).
        lookup: ``transport_maps`` (the first table with the key answers), None: no entry.
        relayhost: the parsed ``relayhost`` (empty: none).

    Raises:
        NexthopError: a ``transport_maps`` entry has a bad next hop.

    See Also: transport(5); postconf(5) ``relayhost``: an empty transport or next hop in a
        table entry means the default (smtp, and ``relayhost`` or the recipient domain).
    """
    default = Route(RouteKind.SMTP, relayhost, configured=True) if relayhost else None
    if default is None:
        default = Route(RouteKind.SMTP, (domain_nexthop(domain),))
    value = None
    for key in transport_keys(local_part, domain):
        value = lookup(key)
        if value is not None:
            break
    if value is None:
        return default
    transport, nexthop = parse_transport(value)
    if transport in ("", "smtp", "relay"):
        if not nexthop:
            return default
        return Route(RouteKind.SMTP, parse_nexthops(nexthop), configured=True)
    if transport == "error":
        return Route(RouteKind.ERROR, text=nexthop or "mail is not deliverable")
    if transport == "retry":
        return Route(RouteKind.RETRY, text=nexthop or "delivery temporarily suspended")
    if transport == "discard":
        return Route(RouteKind.DISCARD, text=nexthop)
    return Route(
        RouteKind.UNSUPPORTED,
        text=(
            f"transport_maps routes this remote recipient to the {transport!r} transport, "
            "which roost cannot run for a remote domain; use smtp:[host]:port"
        ),
    )


# --- DNS answers and next-hop resolution ------------------------------------------------------


class DnsStatus(enum.Enum):
    """How a DNS lookup ended (dnspython's exceptions map straight onto these)."""

    OK = "ok"
    NODATA = "nodata"
    """The name exists without records of the type (``NoAnswer``)."""
    NXDOMAIN = "nxdomain"
    """The name does not exist."""
    TEMPFAIL = "tempfail"
    """SERVFAIL, a timeout, no server answered: try again later."""


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """One lookup: ``name`` (absolute, without the final dot) and ``rdtype`` (MX, A, AAAA)."""

    name: str
    rdtype: str


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The result of one :class:`DnsQuery`.

    Attributes:
        status: how it ended.
        addresses: for A and AAAA, the addresses.
        mx: for MX, (preference, exchange) pairs; the exchange without the final dot, ``""``
            for the root (a null MX).
        detail: what went wrong, for logs (``timed out``, ``SERVFAIL``).
    """

    status: DnsStatus
    addresses: tuple[str, ...] = ()
    mx: tuple[tuple[int, str], ...] = ()
    detail: str = ""


_DNS_TEXT: Final = {
    DnsStatus.NXDOMAIN: "Host not found",
    DnsStatus.NODATA: "Host found but no data record of requested type",
    DnsStatus.TEMPFAIL: "Host not found, try again",
}


def dns_error(query: DnsQuery, answer: DnsAnswer) -> str:
    """Postfix's words for a failed lookup."""
    return (
        "Host or domain name not found. Name service error for "
        f"name={query.name} type={query.rdtype}: {_DNS_TEXT.get(answer.status, 'error')}"
    )


@dataclass(frozen=True, slots=True)
class Target:
    """One address to try.

    Attributes:
        hostname: the MX host (or next-hop host) name, or the address itself.
        address: the IP address.
        port: the TCP port.
        preference: the MX preference (0 for an implicit MX or a ``[host]``).
    """

    hostname: str
    address: str
    port: int
    preference: int = 0

    @property
    def host_text(self) -> str:
        """``mx.example.org[192.0.2.1]``, as Postfix logs a server."""
        return f"{self.hostname}[{self.address}]"

    @property
    def relay(self) -> str:
        """``mx.example.org[192.0.2.1]:25``, the ``relay=`` of delivery log lines."""
        return f"{self.host_text}:{self.port}"


@dataclass(frozen=True, slots=True)
class Failure:
    """A delivery that cannot start (no usable server), for every recipient of the hop.

    Attributes:
        soft: defer (True) or bounce (False).
        dsn: the RFC 3463 status.
        reason: the text for logs and DSNs.
    """

    soft: bool
    dsn: str
    reason: str


@dataclass(slots=True)
class _Host:
    preference: int
    name: str
    addresses: dict[int, list[str]] = field(default_factory=lambda: {4: [], 6: []})
    errors: list[tuple[DnsQuery, DnsAnswer]] = field(default_factory=list)
    is_myself: bool = False


def _never(address: str) -> bool:
    return False


class HostResolution:
    """MX-then-A resolution of one next hop, as a state machine without I/O.

    The caller asks :meth:`next_query`, performs it, hands the answer to :meth:`give`, and
    repeats until :meth:`next_query` returns None; :meth:`result` then gives the targets
    in the order to try, or the :class:`Failure` for every recipient of the hop::

        while (query := resolution.next_query()) is not None:
            resolution.give(query, await lookup(query))
        outcome = resolution.result()

    Args:
        nexthop: the next hop.
        default_port: ``smtp_tcp_port``.
        ip_versions: ``inet_protocols`` as versions in order of preference (IPv4 first).
        myhostname: this host's name; an MX host of that name is this host.
        is_myself: tells whether an address is one this host receives mail on.

    ``myhostname`` and ``is_myself`` (the loop rule) count only when the port is
    :data:`LOOP_DETECT_PORT` (25): at any other port this host's addresses are ordinary
    targets, e.g. a content filter at ``[127.0.0.1]:10024`` while roost listens on
    127.0.0.1 (Postfix smtp_connect.c: ``SMTP_MISC_FLAG_LOOP_DETECT``).
        configured: the next hop comes from ``relayhost``/``transport_maps``, or the domain
            is in ``relay_domains``: a loop to this host is then a configuration error and
            defers (4.3.5) instead of bouncing (5.4.6).
        address_limit: at most this many targets (``smtp_mx_address_limit``; 0: no limit).
        rng: shuffles MX hosts of equal preference.

    See Also: RFC 5321 §5.1; RFC 7505; Postfix smtp(8) and ``smtp_mx_address_limit``.
    """

    def __init__(
        self,
        nexthop: Nexthop,
        *,
        default_port: int = 25,
        ip_versions: Sequence[int] = (4, 6),
        myhostname: str = "",
        is_myself: Callable[[str], bool] = lambda address: False,
        configured: bool = False,
        address_limit: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self.nexthop = nexthop
        self._port = nexthop.port if nexthop.port is not None else default_port
        self._versions = tuple(v for v in ip_versions if v in (4, 6))
        loop_detect = self._port == LOOP_DETECT_PORT
        self._myhostname = myhostname.lower().removesuffix(".") if loop_detect else ""
        self._is_myself = is_myself if loop_detect else _never
        self._configured = configured
        self._address_limit = address_limit
        self._rng = rng or random.Random()
        self._queue: deque[DnsQuery] = deque()
        self._hosts: list[_Host] = []
        self._failure: Failure | None = None
        if nexthop.is_address:
            ip = ipaddress.ip_address(nexthop.host)
            host = _Host(0, nexthop.host)
            host.addresses[ip.version].append(nexthop.host)
            self._hosts.append(host)
        elif not nexthop.mx_lookup:
            self._add_hosts([(0, nexthop.host)])
        else:
            self._queue.append(DnsQuery(nexthop.host, "MX"))

    def next_query(self) -> DnsQuery | None:
        """The next lookup to perform, or None when the result is known."""
        if self._failure is not None or not self._queue:
            return None
        return self._queue[0]

    def give(self, query: DnsQuery, answer: DnsAnswer) -> None:
        """Take the answer to the query :meth:`next_query` returned.

        Raises:
            ValueError: ``query`` is not the pending query.
        """
        if not self._queue or self._queue[0] != query:
            raise ValueError(f"unexpected answer for {query}")
        self._queue.popleft()
        if query.rdtype == "MX":
            self._give_mx(query, answer)
            return
        version = 4 if query.rdtype == "A" else 6
        for host in self._hosts:
            if host.name == query.name:
                if answer.status is DnsStatus.OK:
                    host.addresses[version] += answer.addresses
                else:
                    host.errors.append((query, answer))

    def _give_mx(self, query: DnsQuery, answer: DnsAnswer) -> None:
        domain = self.nexthop.host
        if answer.status is DnsStatus.NXDOMAIN:
            self._failure = Failure(False, "5.1.2", dns_error(query, answer))
        elif answer.status is DnsStatus.TEMPFAIL:
            self._failure = Failure(True, "4.4.3", dns_error(query, answer))
        elif answer.status is DnsStatus.NODATA or not answer.mx:
            self._add_hosts([(0, domain)])  # implicit MX (RFC 5321 §5.1)
        else:
            records = [(pref, name.lower().removesuffix(".")) for pref, name in answer.mx]
            if all(name == "" for _, name in records):
                reason = f"Domain {domain} does not accept mail (nullMX)"
                self._failure = Failure(False, "5.1.10", reason)
            else:
                self._add_hosts(self._ordered((p, n) for p, n in records if n))

    def _ordered(self, records: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
        """Sort by preference, shuffle equal preferences, drop repeated names."""
        by_preference: dict[int, list[str]] = {}
        for preference, name in records:
            by_preference.setdefault(preference, []).append(name)
        ordered: list[tuple[int, str]] = []
        seen: set[str] = set()
        for preference in sorted(by_preference):
            names = by_preference[preference]
            self._rng.shuffle(names)
            for name in names:
                if name not in seen:
                    seen.add(name)
                    ordered.append((preference, name))
        return ordered

    def _add_hosts(self, records: Sequence[tuple[int, str]]) -> None:
        self_preference = min(
            (pref for pref, name in records if name == self._myhostname), default=None
        )
        for preference, name in records:
            host = _Host(preference, name, is_myself=name == self._myhostname)
            self._hosts.append(host)
            if host.is_myself or (self_preference is not None and preference >= self_preference):
                continue  # dropped by the loop rule anyway: no lookups needed
            if _is_ip(name):
                ip = ipaddress.ip_address(name)
                host.addresses[ip.version].append(str(ip))
                continue
            for version in self._versions:
                self._queue.append(DnsQuery(name, "A" if version == 4 else "AAAA"))

    def result(self) -> tuple[Target, ...] | Failure:
        """The targets in order, or why there are none.

        Raises:
            RuntimeError: lookups are still pending.
        """
        if self._failure is not None:
            return self._failure
        if self._queue:
            raise RuntimeError("resolution not finished")
        self_preference = min(
            (
                host.preference
                for host in self._hosts
                if host.is_myself
                or any(self._is_myself(a) for v in self._versions for a in host.addresses[v])
            ),
            default=None,
        )
        hosts = [
            host
            for host in self._hosts
            if self_preference is None or host.preference < self_preference
        ]
        if not hosts and self_preference is not None:
            reason = f"mail for {self.nexthop} loops back to myself"
            if self._configured:
                return Failure(True, "4.3.5", reason)
            return Failure(False, "5.4.6", reason)
        targets: list[Target] = []
        seen: set[str] = set()
        for host in hosts:
            for version in self._versions:
                for address in host.addresses[version]:
                    if address not in seen:
                        seen.add(address)
                        targets.append(Target(host.name, address, self._port, host.preference))
        if self._address_limit:
            targets = targets[: self._address_limit]
        if targets:
            return tuple(targets)
        errors = [error for host in hosts for error in host.errors]
        for query, answer in errors:
            if answer.status is DnsStatus.TEMPFAIL:
                return Failure(True, "4.4.3", dns_error(query, answer))
        if errors:
            query, answer = errors[-1]
            return Failure(False, "5.4.4", dns_error(query, answer))
        return Failure(True, "4.4.3", f"no usable address for {self.nexthop} (inet_protocols)")


# --- replies and one delivery attempt ----------------------------------------------------------

_ENHANCED: Final = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_CONTROLS: Final = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: the code and its text (lines joined with spaces, controls removed).

    See Also: RFC 5321 §4.2; RFC 3463 (enhanced status codes); RFC 2034.
    """

    code: int
    text: str

    @classmethod
    def of(cls, code: int, message: str) -> Reply:
        """Build from a client library's (code, multi-line message), made safe for logs:
        invalid UTF-8 replaced, control characters turned into spaces."""
        if message.isascii() and _CONTROLS.search(message) is None:
            return cls(code, message.strip())  # one clean line: the common case
        raw = message.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        lines = [_CONTROLS.sub(" ", line).strip() for line in raw.splitlines()]
        return cls(code, " ".join(line for line in lines if line))

    @property
    def dsn(self) -> str:
        """The enhanced status code from the text, else ``X.0.0`` from the reply code."""
        match = _ENHANCED.match(self.text)
        if match and match.group(1) == str(self.code)[0]:
            return match.group(0)
        digit = str(self.code)[0] if 2 <= self.code // 100 <= 5 else "4"
        return f"{'4' if digit == '3' else digit}.0.0"

    @property
    def ok(self) -> bool:
        """A 2xx reply."""
        return 200 <= self.code < 300

    @property
    def soft(self) -> bool:
        """Anything but 2xx and 5xx: try again later (or at the next MX)."""
        return not self.ok and not 500 <= self.code < 600

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()


class Status(enum.StrEnum):
    """What became of a recipient (the queue manager's ``Outcome`` values)."""

    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One recipient's result (converted to the queue manager's ``RecipientResult``;
    ``agent`` is the program its log line names: ``smtp``, or ``discard``, ``error`` and
    ``retry`` for those routes, as Postfix's discard(8), error(8) and retry log)."""

    index: int
    status: Status
    dsn: str
    reason: str
    relay: str = "none"
    remote_reply: bool = False
    agent: str = "smtp"


class Attempt:
    """The recipients of one delivery across the servers tried in turn.

    A recipient is final once a server accepts the message for it (2xx after the data) or
    refuses it with a 5xx reply. A 4xx reply or a lost connection only records a reason:
    the recipient stays pending for the next server, and whatever is pending when no server
    is left is deferred with its last reason (Postfix smtp(8): soft errors are final only
    at the last server).

    Args:
        indexes: the envelope indexes of the recipients.
    """

    def __init__(self, indexes: Iterable[int]) -> None:
        self._pending: dict[int, None] = dict.fromkeys(indexes)
        self._final: dict[int, Verdict] = {}
        self._soft: dict[int, Verdict] = {}

    @property
    def pending(self) -> tuple[int, ...]:
        """Recipients not final yet, in order."""
        return tuple(self._pending)

    def sent(self, index: int, reply: Reply, relay: str) -> None:
        """The server accepted the message for ``index`` with ``reply``."""
        dsn = reply.dsn if reply.dsn.startswith("2") else "2.0.0"
        self._settle(Verdict(index, Status.SENT, dsn, str(reply), relay, True))

    def refused(self, index: int, reply: Reply, relay: str) -> None:
        """The server answered ``reply`` (4xx or 5xx) for ``index``."""
        status = Status.DEFERRED if reply.soft else Status.BOUNCED
        verdict = Verdict(index, status, reply.dsn, str(reply), relay, True)
        if reply.soft:
            self.defer(verdict)
        else:
            self._settle(verdict)

    def bounce(self, index: int, dsn: str, reason: str, relay: str = "none") -> None:
        """A permanent failure of our own making (no remote reply)."""
        self._settle(Verdict(index, Status.BOUNCED, dsn, reason, relay))

    def defer(self, verdict: Verdict) -> None:
        """Remember a temporary failure; the recipient stays pending."""
        if verdict.index in self._pending:
            self._soft[verdict.index] = verdict

    def soft(self, index: int, dsn: str, reason: str, relay: str = "none") -> None:
        """A temporary failure of our own making (lost connection, timeout, DNS)."""
        self.defer(Verdict(index, Status.DEFERRED, dsn, reason, relay))

    def fail(self, failure: Failure, relay: str = "none") -> None:
        """Apply a :class:`Failure` to every pending recipient."""
        for index in self.pending:
            if failure.soft:
                self.soft(index, failure.dsn, failure.reason, relay)
            else:
                self.bounce(index, failure.dsn, failure.reason, relay)

    def _settle(self, verdict: Verdict) -> None:
        if verdict.index in self._pending:
            del self._pending[verdict.index]
            self._soft.pop(verdict.index, None)
            self._final[verdict.index] = verdict

    def verdicts(self) -> list[Verdict]:
        """Every recipient's result; pending ones are deferred with their last reason."""
        results = list(self._final.values())
        for index in self._pending:
            results.append(
                self._soft.get(index)
                or Verdict(index, Status.DEFERRED, "4.4.1", "no server could be tried")
            )
        return sorted(results, key=lambda verdict: verdict.index)

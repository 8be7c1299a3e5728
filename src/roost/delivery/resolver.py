"""DNS lookups for the smtp transport: dnspython's async resolver behind one small call.

:class:`DnsResolver` performs one :class:`~roost.delivery.nexthop.DnsQuery` and maps
dnspython's outcomes onto :class:`~roost.delivery.nexthop.DnsStatus` (NXDOMAIN, NoAnswer
-> NODATA, SERVFAIL/timeouts -> TEMPFAIL); :func:`resolve` is the short loop that drives a
:class:`~roost.delivery.nexthop.HostResolution` with it. The servers are
``dns_nameservers`` (``address`` or ``address:port``, ``[v6]:port``) when set, otherwise
those of /etc/resolv.conf. There is no cache here: like Postfix, roost relies on the
system's caching resolver.

See Also: STYLE.md, "dnspython: the logic in one class, the I/O in short loops".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from roost.delivery.nexthop import (
    DnsAnswer,
    DnsQuery,
    DnsStatus,
    Failure,
    HostResolution,
    Target,
)

__all__ = ["DnsLookup", "DnsResolver", "parse_nameserver", "resolve"]


class DnsLookup(Protocol):
    """Performs one DNS query (never raises for DNS outcomes)."""

    async def lookup(self, query: DnsQuery) -> DnsAnswer:
        """Return the answer to ``query``."""
        ...


def parse_nameserver(text: str) -> tuple[str, int]:
    """Parse one ``dns_nameservers`` entry: ``192.0.2.1``, ``192.0.2.1:5353``, ``::1``,
    ``[::1]:5353``.

    Raises:
        ValueError: not an IP address with an optional port.
    """
    text = text.strip()
    port = 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad DNS server {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"bad DNS server {text!r}")
        port = int(port_text)
    else:
        host = text
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"DNS server {text!r} is not an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port in DNS server {text!r}")
    return address, port


class DnsResolver:
    """Looks names up with dnspython.

    Args:
        nameservers: ``dns_nameservers`` entries; empty: /etc/resolv.conf.
        timeout: seconds one lookup may take in all (``dns_lookup_timeout``).

    Raises:
        ValueError: a bad ``nameservers`` entry.
    """

    def __init__(self, nameservers: Sequence[str] = (), *, timeout: float = 10.0) -> None:
        servers = [parse_nameserver(entry) for entry in nameservers]
        self._problem = ""
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=not servers)
        except dns.resolver.NoResolverConfiguration as exc:
            # no /etc/resolv.conf servers: every lookup is a temporary failure, so mail
            # waits in the queue instead of the daemon refusing to start
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._problem = f"no DNS servers configured: {exc}"
        if servers:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(address, port) for address, port in servers
            ]
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(self._resolver.timeout, timeout)
        self._resolver.retry_servfail = False

    async def lookup(self, query: DnsQuery) -> DnsAnswer:
        """Perform ``query``; every DNS outcome is an answer, never an exception."""
        if self._problem:
            return DnsAnswer(DnsStatus.TEMPFAIL, detail=self._problem)
        name = dns.name.from_text(query.name)
        try:
            answer = await self._resolver.resolve(name, query.rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return DnsAnswer(DnsStatus.NXDOMAIN)
        except dns.resolver.NoAnswer:
            return DnsAnswer(DnsStatus.NODATA)
        except dns.resolver.NoNameservers as exc:
            return DnsAnswer(DnsStatus.TEMPFAIL, detail=f"no server answered: {exc}")
        except dns.exception.Timeout:
            return DnsAnswer(DnsStatus.TEMPFAIL, detail="timed out")
        except (dns.exception.DNSException, OSError) as exc:
            return DnsAnswer(DnsStatus.TEMPFAIL, detail=str(exc))
        if query.rdtype == "MX":
            records = []
            for record in answer:
                exchange = record.exchange
                text = "" if exchange == dns.name.root else exchange.to_text(omit_final_dot=True)
                records.append((int(record.preference), text))
            return DnsAnswer(DnsStatus.OK, mx=tuple(records))
        return DnsAnswer(DnsStatus.OK, addresses=tuple(str(record.address) for record in answer))


async def resolve(
    resolution: HostResolution, dns_lookup: DnsLookup
) -> tuple[Target, ...] | Failure:
    """Drive one next-hop resolution to its end: the I/O half of :class:`HostResolution`."""
    while (query := resolution.next_query()) is not None:
        resolution.give(query, await dns_lookup.lookup(query))
    return resolution.result()

"""Trusted client networks: Postfix's ``mynetworks`` and ``mynetworks_style``.

``mynetworks`` lists networks (``127.0.0.0/8``, ``[::1]/128``, bare addresses) and
``type:table`` references (``cidr:/etc/roost/trusted``; a table entry's key is the client's
address). When it is empty, ``mynetworks_style`` computes it from this host's interfaces:

- ``host``: only the addresses of this machine (each as /32 or /128);
- ``subnet``: the subnets of this machine's interfaces (address and netmask);
- ``class``: the whole class A, B or C network of each IPv4 interface address, and the
  subnet for IPv6 (postconf(5) mynetworks_style).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from roost.config.lookup import LookupTable, open_table, parse_network

__all__ = ["NetworkMatcher", "interface_networks", "mynetworks_from"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SIOCGIFADDR: Final = 0x8915
_SIOCGIFNETMASK: Final = 0x891B


def _ipv4_interfaces() -> list[ipaddress.IPv4Interface]:
    found: list[ipaddress.IPv4Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                address = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)[20:24]
                netmask = fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, request)[20:24]
            except OSError:  # no IPv4 address on this interface
                continue
            found.append(
                ipaddress.IPv4Interface(f"{socket.inet_ntoa(address)}/{socket.inet_ntoa(netmask)}")
            )
    return found


def _ipv6_interfaces() -> list[ipaddress.IPv6Interface]:
    found: list[ipaddress.IPv6Interface] = []
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        hex_address, prefix = fields[0], int(fields[2], 16)
        address = ipaddress.IPv6Address(bytes.fromhex(hex_address))
        if address.is_link_local:  # needs a zone; never a mail client's source
            continue
        found.append(ipaddress.IPv6Interface(f"{address}/{prefix}"))
    return found


def interface_networks(style: str) -> list[Network]:
    """Compute ``mynetworks`` from this host's interfaces for a ``mynetworks_style``."""
    interfaces: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
        *_ipv4_interfaces(),
        *_ipv6_interfaces(),
    ]
    networks: list[Network] = []
    for interface in interfaces:
        if style == "host":
            networks.append(ipaddress.ip_network(interface.ip))
        elif style == "class" and interface.version == 4:
            first = int(interface.ip) >> 24
            prefix = 8 if first < 128 else 16 if first < 192 else 24
            networks.append(ipaddress.ip_network(f"{interface.ip}/{prefix}", strict=False))
        else:
            networks.append(interface.network)
    loopback = ipaddress.ip_network("127.0.0.0/8" if style != "host" else "127.0.0.1/32")
    if not any(n.version == 4 and loopback.subnet_of(n) for n in networks):  # type: ignore[arg-type]
        networks.append(loopback)
    return sorted(set(networks), key=lambda n: (n.version, n))


#: Addresses whose network match a :class:`NetworkMatcher` remembers (then it starts over).
_KNOWN_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class NetworkMatcher:
    """Tells whether a client address is trusted.

    Attributes:
        networks: the literal networks.
        tables: lookup tables whose keys are client addresses (any value means trusted).
    """

    networks: tuple[Network, ...]
    tables: tuple[LookupTable, ...] = ()
    # address text -> (in the networks, the parsed address for the tables); the same
    # client asks once per connection and per recipient
    _known: dict[str, tuple[bool, str | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        known = self._known.get(address)
        if known is None:
            known = self._match_networks(address)
            if len(self._known) >= _KNOWN_LIMIT:
                self._known.clear()
            self._known[address] = known
        in_networks, parsed = known
        if in_networks:
            return True
        if parsed is None:
            return False
        return any(table.lookup(parsed) is not None for table in self.tables)

    def _match_networks(self, address: str) -> tuple[bool, str | None]:
        try:
            parsed = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False, None
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        return any(parsed.version == n.version and parsed in n for n in self.networks), str(parsed)

    def describe(self) -> str:
        """The networks as ``postconf -x mynetworks`` would show them."""
        parts = [f"[{n}]" if n.version == 6 else str(n) for n in self.networks]
        return " ".join([*parts, *(table.ref for table in self.tables)])


def mynetworks_from(words: Sequence[str], style: str) -> NetworkMatcher:
    """Build the matcher from the ``mynetworks`` words, or from the style when empty.

    Raises:
        ValueError: a word is neither a network nor a table (the message names it).
        roost.config.TableError: a table cannot be opened.
    """
    if not words:
        return NetworkMatcher(tuple(interface_networks(style)))
    networks: list[Network] = []
    tables: list[LookupTable] = []
    for word in _expand_files(words):
        if ":" in word and not word.startswith("[") and word.count(":") == 1:
            tables.append(open_table(word))
            continue
        try:
            networks.append(parse_network(word))
        except ValueError as exc:
            raise ValueError(f"bad network {word!r} in mynetworks: {exc}") from None
    return NetworkMatcher(tuple(networks), tuple(tables))


def _expand_files(words: Iterable[str]) -> Iterable[str]:
    """Postfix allows ``/file/name`` in mynetworks: its words are read in place."""
    for word in words:
        if word.startswith("/"):
            text = Path(word).read_text(encoding="utf-8")
            for line in text.splitlines():
                line = line.split("#", 1)[0]
                yield from line.replace(",", " ").split()
        else:
            yield word

"""Client address parsing shared by ``users`` (allow_nets) and ``throttle`` (sans-IO).

Private to the package: only the standard library's ``ipaddress`` module, no I/O.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """Parse a client address as the listeners report it.

    Accepts ``192.0.2.1``, ``2001:db8::1``, ``[2001:db8::1]`` and zone suffixes
    (``fe80::1%eth0``, dropped). IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) become
    the IPv4 address so that one client is one key whichever socket family accepted it.

    Args:
        text: the address text.

    Returns:
        The address, or ``None`` when ``text`` is not an IP address (a UNIX socket path,
        ``"local"``, an empty string).
    """
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    candidate = candidate.partition("%")[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address

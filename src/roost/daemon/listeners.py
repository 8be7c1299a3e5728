"""Listening addresses from Postfix's ``inet_interfaces`` and ``inet_protocols``.

See Also: postconf(5) inet_interfaces (``all``, ``loopback-only``, or addresses) and
inet_protocols (``all``, ``ipv4``, ``ipv6``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from roost.config import SERVICES, Settings

__all__ = [
    "BOUND",
    "LISTEN_BACKLOG",
    "Listener",
    "bind_all",
    "bind_socket",
    "front_context",
    "listen_addresses",
    "open_server",
    "service_listeners",
]

#: The listen(2) backlog of every service socket (asyncio's default of 100 makes bursts of
#: new connections wait for SYN retransmits). Pass it to create_server too: it listens again.
LISTEN_BACKLOG: Final = 512


@dataclass(frozen=True, slots=True)
class Listener:
    """One address and port a service listens on.

    Attributes:
        service: the service name (``smtp``, ``imaps``, ...).
        host: an IP address literal (no brackets).
        port: the TCP port (0 picks a free one, for tests).
    """

    service: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def ip_versions(settings: Settings) -> tuple[int, ...]:
    """Return the enabled IP versions from ``inet_protocols``; IPv6 only if the host has it."""
    words = {word.lower() for word in settings.strings("inet_protocols")}
    versions: list[int] = []
    if words & {"all", "ipv4"}:
        versions.append(4)
    if words & {"all", "ipv6"} and socket.has_ipv6:
        versions.append(6)
    return tuple(versions)


def listen_addresses(settings: Settings) -> list[str]:
    """Resolve ``inet_interfaces`` to IP address literals.

    Raises:
        ValueError: an entry is neither ``all``, ``loopback-only`` nor an IP address
            (roost binds addresses, not names, so a typo cannot listen on the wrong host).
    """
    versions = ip_versions(settings)
    words = settings.strings("inet_interfaces")
    lowered = {word.lower() for word in words}
    if "all" in lowered:
        return [a for a, v in (("0.0.0.0", 4), ("::", 6)) if v in versions]
    if "loopback-only" in lowered:
        return [a for a, v in (("127.0.0.1", 4), ("::1", 6)) if v in versions]
    addresses: list[str] = []
    for word in words:
        address = ipaddress.ip_address(word.strip("[]"))
        if address.version in versions:
            addresses.append(str(address))
    return addresses


def service_listeners(settings: Settings) -> list[Listener]:
    """Return every (service, address, port) to listen on, honouring per-service overrides.

    Services named in ``master_service_disable`` are left out.
    """
    disabled = {word.split("/")[0].lower() for word in settings.strings("master_service_disable")}
    listeners: list[Listener] = []
    for service in SERVICES:
        if service in disabled:
            continue
        view = settings.for_service(service)
        port = view.integer(f"{service}_service_port")
        listeners.extend(Listener(service, host, port) for host in listen_addresses(view))
    return listeners


def bind_socket(listener: Listener, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """Create, bind and listen a TCP socket (before privileges are dropped).

    IPv6 sockets are IPv6-only so ``0.0.0.0`` and ``::`` can both be bound.

    Raises:
        OSError: the address is in use or not available.
    """
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((listener.host, listener.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


#: Sockets bound before the event loop starts (and before privileges are dropped and
#: worker processes forked), by listener; :func:`open_server` takes them from here.
BOUND: Final[dict[Listener, socket.socket]] = {}


def bind_all(settings: Settings) -> None:
    """Bind every listener of ``settings`` into :data:`BOUND` (sockets already there stay).

    Port 0 (tests) is bound once and the same socket serves every worker process.

    Raises:
        OSError: an address cannot be bound; the message names the service and address.
    """
    for listener in service_listeners(settings):
        if listener in BOUND:
            continue
        try:
            BOUND[listener] = bind_socket(listener)
        except OSError as exc:
            raise OSError(
                exc.errno, f"{listener.service} on {listener}: cannot listen: {exc.strerror}"
            ) from None


def front_context(current: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """An implicit-TLS listener context that takes the current certificate per handshake.

    The listening socket keeps this context for its whole life; its ``sni_callback`` (run
    for every ClientHello, with or without SNI) switches the connection to ``current()``,
    so a reload's new certificate serves new connections on 465, 993 and 995 too.
    """
    wrapper = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    wrapper.minimum_version = current().minimum_version

    def pick(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        sock.context = current()

    wrapper.sni_callback = pick
    return wrapper


async def open_server(
    listener: Listener,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    implicit_tls: Callable[[], ssl.SSLContext] | None = None,
) -> asyncio.AbstractServer:
    """Bind ``listener`` and serve it with ``protocol_factory``.

    Args:
        listener: the address, port and service.
        protocol_factory: makes the session of each connection.
        implicit_tls: the service's current TLS context, for implicit-TLS services.

    Raises:
        OSError: the address cannot be bound; the message names the service and address.
    """
    sock = BOUND.pop(listener, None)
    if sock is None:
        try:
            sock = bind_socket(listener)
        except OSError as exc:
            raise OSError(
                exc.errno, f"{listener.service} on {listener}: cannot listen: {exc.strerror}"
            ) from None
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        protocol_factory,
        sock=sock,
        ssl=front_context(implicit_tls) if implicit_tls is not None else None,
        backlog=LISTEN_BACKLOG,  # create_server listens again: keep our backlog
    )

"""A tiny authoritative DNS server on loopback for outbound delivery tests.

It answers over UDP and TCP on one random port of 127.0.0.1 from records set per test:
MX (including the null MX ``0 .``), A and AAAA (loopback addresses only, so nothing a test
resolves can lead off this host), CNAME (followed inside the zone), and names that answer
NXDOMAIN, SERVFAIL or slowly. Unknown names are NXDOMAIN. Built on dnspython's message
and wire APIs; a thread serves it, so sync (e2e) and async (integration) tests can share it.

    with DnsServer() as dns:
        dns.mx("remote.test", 10, "mx1.remote.test")
        dns.a("mx1.remote.test", "127.0.0.10")
        resolver = DnsResolver([dns.address])
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import struct
import threading
import time
from types import TracebackType

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer"]

TTL = 60


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class DnsServer:
    """The server (see the module docstring); ``address`` is ``127.0.0.1:PORT``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.records: dict[tuple[str, str], list[str]] = {}
        self.cnames: dict[str, str] = {}
        self.servfail: set[str] = set()
        self.slow: dict[str, float] = {}
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._udp, self._tcp = self._bind()
        self.port: int = self._udp.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dnsserver", daemon=True)
        self._thread.start()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise OSError("no port free for both UDP and TCP")

    @property
    def address(self) -> str:
        """The ``dns_nameservers`` entry of this server."""
        return f"{self.host}:{self.port}"

    # --- configuration ------------------------------------------------------------------

    def mx(self, domain: str, preference: int, exchange: str) -> None:
        """Add ``domain MX preference exchange`` (``exchange`` ``"."``: a null MX)."""
        absolute = exchange if exchange.endswith(".") else exchange + "."
        with self._lock:
            self.records.setdefault((_key(domain), "MX"), []).append(f"{preference} {absolute}")

    def null_mx(self, domain: str) -> None:
        """Publish RFC 7505's ``domain MX 0 .``."""
        self.mx(domain, 0, ".")

    def a(self, name: str, *addresses: str) -> None:
        """Add A records (loopback only)."""
        self._addresses(name, "A", addresses, 4)

    def aaaa(self, name: str, *addresses: str) -> None:
        """Add AAAA records (loopback only: ``::1``)."""
        self._addresses(name, "AAAA", addresses, 6)

    def _addresses(self, name: str, rdtype: str, addresses: tuple[str, ...], version: int) -> None:
        for text in addresses:
            address = ipaddress.ip_address(text)
            if address.version != version or not address.is_loopback:
                raise ValueError(f"tests may only hand out loopback addresses, not {text}")
        with self._lock:
            self.records.setdefault((_key(name), rdtype), []).extend(addresses)

    def cname(self, name: str, target: str) -> None:
        """Make ``name`` an alias of ``target``."""
        with self._lock:
            self.cnames[_key(name)] = _key(target)

    def fail(self, name: str) -> None:
        """Answer SERVFAIL for ``name``."""
        with self._lock:
            self.servfail.add(_key(name))

    def delay(self, name: str, seconds: float) -> None:
        """Answer queries for ``name`` only after ``seconds``."""
        with self._lock:
            self.slow[_key(name)] = seconds

    def exists(self, name: str) -> None:
        """Make ``name`` exist without records (NODATA for every type)."""
        with self._lock:
            self.records.setdefault((_key(name), "TXT"), [])

    def clear(self) -> None:
        """Forget every record and behaviour."""
        with self._lock:
            self.records.clear()
            self.cnames.clear()
            self.servfail.clear()
            self.slow.clear()
            self.queries.clear()

    def count(self, name: str, rdtype: str | None = None) -> int:
        """How many queries for ``name`` (of ``rdtype``) arrived."""
        with self._lock:
            return sum(
                1 for n, t in self.queries if n == _key(name) and (rdtype is None or t == rdtype)
            )

    # --- answering ----------------------------------------------------------------------

    def _known(self, name: str) -> bool:
        return name in self.cnames or any(key[0] == name for key in self.records)

    def answer(self, wire: bytes) -> tuple[bytes, float]:
        """The response to one query in wire form, and how long to hold it back."""
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            delay = self.slow.get(name, 0.0)
            if name in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response.to_wire(), delay
            current = name
            for _ in range(8):  # follow CNAMEs inside the zone
                target = self.cnames.get(current)
                if target is None or rdtype == "CNAME":
                    break
                response.answer.append(
                    dns.rrset.from_text(current + ".", TTL, "IN", "CNAME", target + ".")
                )
                current = target
            values = self.records.get((current, rdtype), [])
            if values:
                response.answer.append(
                    dns.rrset.from_text_list(current + ".", TTL, "IN", rdtype, values)
                )
            elif not self._known(current) and current not in self.cnames:
                response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire(), delay

    # --- serving ------------------------------------------------------------------------

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._udp, selectors.EVENT_READ, "udp")
        selector.register(self._tcp, selectors.EVENT_READ, "tcp")
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.1):
                try:
                    if key.data == "udp":
                        wire, peer = self._udp.recvfrom(65535)
                        self._reply(lambda data, peer=peer: self._udp.sendto(data, peer), wire)
                    else:
                        connection, _ = self._tcp.accept()
                        threading.Thread(target=self._tcp_client, args=(connection,)).start()
                except OSError:
                    continue
        selector.close()

    def _reply(self, send: object, wire: bytes) -> None:
        try:
            data, delay = self.answer(wire)
        except Exception:
            return
        assert callable(send)
        if delay:
            timer = threading.Timer(delay, lambda: self._safe(send, data))
            timer.daemon = True
            timer.start()
        else:
            self._safe(send, data)

    @staticmethod
    def _safe(send: object, data: bytes) -> None:
        assert callable(send)
        with contextlib.suppress(OSError):
            send(data)

    def _tcp_client(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            try:
                header = connection.recv(2)
                if len(header) < 2:
                    return
                (length,) = struct.unpack("!H", header)
                wire = b""
                while len(wire) < length:
                    chunk = connection.recv(length - len(wire))
                    if not chunk:
                        return
                    wire += chunk
                data, delay = self.answer(wire)
                if delay:
                    time.sleep(delay)
                connection.sendall(struct.pack("!H", len(data)) + data)
            except (OSError, Exception):
                return

    def close(self) -> None:
        """Stop serving."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._udp.close()
        self._tcp.close()

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

"""TLS on every TLS port: protocol versions, weak ciphers, STARTTLS command injection.

Ports: smtp and submission (STARTTLS), submissions (implicit), imap (STARTTLS), imaps,
pop3 (STLS), pop3s. Three kinds of checks:

- Python ``ssl`` probes (always): TLS 1.0 and 1.1 are refused, and so is every weak cipher
  family the local OpenSSL can still offer (``@SECLEVEL=0``: RC4, 3DES, DES, NULL, EXPORT,
  anonymous, MD5, and CBC with SHA-1 MACs). Each probe is first tried against a local
  permissive server, so a family the client cannot offer is reported as untested instead
  of passing. TLS 1.2 with ECDHE+AEAD and TLS 1.3 must work (the control).
- sslyze (when present: ``$ROOST_SSLYZE`` naming its executable, ``sslyze`` on PATH, or the
  module in this interpreter): a full scan of SSL 2.0 to TLS 1.3 with its own legacy
  OpenSSL, which can still offer SSLv2/SSLv3, RC4 and EXPORT suites.
- STARTTLS injection (CVE-2011-0411): ``STARTTLS\\r\\nNOOP\\r\\n`` (SMTP),
  ``a STARTTLS\\r\\nb NOOP\\r\\n`` (IMAP) and ``STLS\\r\\nNOOP\\r\\n`` (POP3) in one packet;
  after the handshake the server must not answer the plaintext-injected command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.instance import Instance, start_instance

#: service -> how TLS starts: "implicit", or the STARTTLS dialect
SERVICES = {
    "smtp": "smtp",
    "submission": "smtp",
    "submissions": "implicit",
    "imap": "imap",
    "imaps": "implicit",
    "pop3": "pop3",
    "pop3s": "implicit",
}
#: weak cipher families (OpenSSL cipher strings) no port may accept in TLS 1.2 and below
WEAK = {
    "RC4": "RC4",
    "3DES": "3DES",
    "DES": "DES",
    "NULL": "eNULL",
    "EXPORT": "EXPORT",
    "anon": "aNULL",
    "MD5": "MD5",
    "CBC-SHA1": "SHA1",
}
OLD_VERSIONS = ("TLSv1", "TLSv1_1")


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    running = start_instance(tmp_path_factory.mktemp("tls"))
    yield running
    running.daemon.stop()


# --- plaintext until the handshake ------------------------------------------------------------


class Lines:
    """Reads CRLF lines from a (plain or TLS) socket with a timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self, timeout: float = 10.0) -> bytes | None:
        self.sock.settimeout(timeout)
        while b"\r\n" not in self.buffer:
            try:
                chunk = self.sock.recv(4096)
            except (TimeoutError, ssl.SSLWantReadError):
                return None
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def until(self, done: Callable[[bytes], bool], timeout: float = 10.0) -> list[bytes]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.line(max(deadline - time.monotonic(), 0.01))
            if line is None:
                break
            seen.append(line)
            if done(line):
                return seen
        raise AssertionError(f"no expected line within {timeout}s; got {seen}")


def smtp_final(line: bytes) -> bool:
    return len(line) >= 4 and line[3:4] == b" "


def open_plain(instance: Instance, service: str) -> tuple[socket.socket, Lines]:
    sock = socket.create_connection(("127.0.0.1", instance.ports[service]), timeout=10)
    lines = Lines(sock)
    dialect = SERVICES[service]
    if dialect == "smtp":
        lines.until(smtp_final)
        sock.sendall(b"EHLO probe.example\r\n")
        lines.until(smtp_final)
    elif dialect == "imap":
        lines.until(lambda line: line.startswith(b"* OK"))
    elif dialect == "pop3":
        lines.until(lambda line: line.startswith(b"+OK"))
    return sock, lines


def start_tls(instance: Instance, service: str) -> socket.socket:
    """A TCP connection to ``service`` ready for the TLS handshake (after STARTTLS/STLS)."""
    sock, lines = open_plain(instance, service)
    dialect = SERVICES[service]
    if dialect == "smtp":
        sock.sendall(b"STARTTLS\r\n")
        assert lines.until(smtp_final)[-1].startswith(b"220")
    elif dialect == "imap":
        sock.sendall(b"a STARTTLS\r\n")
        assert lines.until(lambda line: line.startswith(b"a "))[-1].startswith(b"a OK")
    elif dialect == "pop3":
        sock.sendall(b"STLS\r\n")
        assert lines.line().startswith(b"+OK")  # type: ignore[union-attr]
    return sock


# --- handshakes -----------------------------------------------------------------------------


def client_context(version: str | None, ciphers: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if version is not None:
            context.minimum_version = context.maximum_version = ssl.TLSVersion[version]
    if ciphers is not None:
        context.set_ciphers(f"@SECLEVEL=0:{ciphers}")
    return context


def handshake(sock: socket.socket, context: ssl.SSLContext) -> tuple[str, str] | str:
    """Return (protocol, cipher) on success, else the error text."""
    try:
        tls = context.wrap_socket(sock)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        return f"refused: {exc}"
    with tls:
        cipher = tls.cipher()
        assert cipher is not None
        return (str(tls.version()), cipher[0])


def client_can_offer(instance: Instance, version: str | None, ciphers: str | None) -> bool:
    """Whether this machine's OpenSSL can negotiate it at all: try a permissive local server
    with the instance's certificate over a socket pair."""
    try:
        client = client_context(version, ciphers)
    except ssl.SSLError:
        return False  # "No cipher can be selected": not compiled in, or removed
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    server.set_ciphers("@SECLEVEL=0:ALL:COMPLEMENTOFALL")
    server.load_cert_chain(instance.directory / "tls/cert.pem", instance.directory / "tls/key.pem")
    left, right = socket.socketpair()
    result: list[object] = []

    def serve() -> None:
        try:
            with server.wrap_socket(right, server_side=True):
                result.append(True)
        except (ssl.SSLError, OSError):
            result.append(False)

    thread = threading.Thread(target=serve)
    thread.start()
    outcome = handshake(left, client)
    thread.join(10)
    right.close()
    return isinstance(outcome, tuple)


def connect_tls(instance: Instance, service: str, context: ssl.SSLContext) -> tuple[str, str] | str:
    return handshake(start_tls(instance, service), context)


# --- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", list(SERVICES))
def test_modern_tls_works(instance: Instance, service: str) -> None:
    for version, ciphers in (("TLSv1_3", None), ("TLSv1_2", "ECDHE+AESGCM")):
        result = connect_tls(instance, service, client_context(version, ciphers))
        assert isinstance(result, tuple), f"{service} {version}: {result}"


@pytest.mark.parametrize("service", list(SERVICES))
def test_no_protocol_below_tls_1_2(instance: Instance, service: str) -> None:
    tested = []
    for version in OLD_VERSIONS:
        if not client_can_offer(instance, version, "ALL"):
            continue
        result = connect_tls(instance, service, client_context(version, "ALL"))
        assert isinstance(result, str), f"{service} accepts {version}: {result}"
        tested.append(version)
    print(f"{service}: refused {tested}")
    if not tested:
        pytest.skip("this OpenSSL cannot offer TLS 1.0/1.1 at all")


@pytest.mark.parametrize("service", list(SERVICES))
def test_no_weak_cipher(instance: Instance, service: str) -> None:
    untested = []
    for family, ciphers in WEAK.items():
        if not client_can_offer(instance, "TLSv1_2", ciphers):
            untested.append(family)
            continue
        result = connect_tls(instance, service, client_context("TLSv1_2", ciphers))
        assert isinstance(result, str), f"{service} accepts a {family} cipher: {result}"
    print(f"{service}: weak families this OpenSSL cannot offer (left to sslyze): {untested}")


INJECTION = {
    "smtp": (b"STARTTLS\r\nNOOP\r\n", b"EHLO after.example\r\n"),
    "imap": (b"a STARTTLS\r\nb NOOP\r\n", b"c NOOP\r\n"),
    "pop3": (b"STLS\r\nNOOP\r\n", b"CAPA\r\n"),
}


@pytest.mark.parametrize("service", ["smtp", "submission", "imap", "pop3"])
def test_starttls_injection_is_not_answered(instance: Instance, service: str) -> None:
    dialect = SERVICES[service]
    sock, lines = open_plain(instance, service)
    injected, after = INJECTION[dialect]
    sock.sendall(injected)  # one packet: the command and the injected one behind it
    if dialect == "smtp":
        first = lines.until(smtp_final)
        assert first[-1].startswith(b"220"), first
    elif dialect == "imap":
        first = lines.until(lambda line: line.startswith(b"a "))
        assert first[-1].startswith(b"a OK"), first
    else:
        first = [lines.line() or b""]
        assert first[-1].startswith(b"+OK"), first
    assert not lines.buffer, f"plaintext answered before the handshake: {lines.buffer!r}"
    tls = client_context(None, None).wrap_socket(sock)
    with tls:
        secure = Lines(tls)
        early = secure.line(timeout=1.0)
        assert early is None, f"{service} answered the injected command over TLS: {early!r}"
        tls.sendall(after)
        if dialect == "smtp":
            reply = secure.until(smtp_final)
            assert reply[0].startswith(b"250-"), f"not the EHLO reply first: {reply}"
        elif dialect == "imap":
            reply = secure.until(lambda line: line.startswith(b"c "))
            assert not any(line.startswith(b"b ") for line in reply), reply
            assert reply[-1].startswith(b"c OK"), reply
        else:
            reply = [secure.line() or b""]
            assert reply[0].startswith(b"+OK Capability"), f"not the CAPA reply first: {reply}"


# --- sslyze ---------------------------------------------------------------------------------------


def sslyze_command() -> list[str] | None:
    explicit = os.environ.get("ROOST_SSLYZE")
    if explicit:
        return [explicit]
    found = shutil.which("sslyze")
    if found:
        return [found]
    if importlib.util.find_spec("sslyze") is not None:
        return [sys.executable, "-m", "sslyze"]
    return None


BAD_SUITE_WORDS = ("RC4", "3DES", "_DES_", "NULL", "EXPORT", "anon", "MD5")


def test_sslyze_finds_nothing_weak(instance: Instance) -> None:
    command = sslyze_command()
    if command is None:
        message = "sslyze is not installed (set ROOST_SSLYZE to its executable)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, but .ci/run should have installed it")
        pytest.skip(message)
    groups: dict[str, list[str]] = {}
    for service, dialect in SERVICES.items():
        groups.setdefault(dialect, []).append(f"127.0.0.1:{instance.ports[service]}")
    scans = ["--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3"]
    scans += ["--compression", "--heartbleed", "--openssl_ccs", "--reneg", "--fallback"]
    port_names = {str(port): name for name, port in instance.ports.items()}
    findings = []
    accepted: dict[str, dict[str, list[str]]] = {}
    for dialect, targets in groups.items():
        starttls = [] if dialect == "implicit" else ["--starttls", dialect]
        result = subprocess.run(
            [*command, "--json_out=-", *starttls, *scans, *targets],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads(result.stdout)
        for server in report["server_scan_results"]:
            name = port_names[str(server["server_location"]["port"])]
            assert server["scan_status"] == "COMPLETED", (
                name,
                server.get("connectivity_error_trace"),
            )
            results = server["scan_result"]
            accepted[name] = {}
            for key, scan in results.items():
                outcome = (scan or {}).get("result") or {}
                if scan and scan.get("status") not in (None, "COMPLETED", "NOT_SCHEDULED"):
                    findings.append(f"{name}: {key} did not complete: {scan.get('error_trace')}")
                if "accepted_cipher_suites" in outcome:
                    suites = [c["cipher_suite"]["name"] for c in outcome["accepted_cipher_suites"]]
                    accepted[name][key] = suites
                    version = key.removesuffix("_cipher_suites")
                    if suites and version in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
                        findings.append(f"{name}: accepts {version}: {suites}")
                    findings += [
                        f"{name}: weak suite {suite}"
                        for suite in suites
                        if any(word in suite for word in BAD_SUITE_WORDS)
                    ]
            if (
                (results.get("heartbleed") or {})
                .get("result", {})
                .get("is_vulnerable_to_heartbleed")
            ):
                findings.append(f"{name}: heartbleed")
            ccs = (results.get("openssl_ccs_injection") or {}).get("result", {})
            if ccs.get("is_vulnerable_to_ccs_injection"):
                findings.append(f"{name}: CCS injection")
            compression = (results.get("tls_compression") or {}).get("result", {})
            if compression.get("supports_compression"):
                findings.append(f"{name}: TLS compression (CRIME)")
            reneg = (results.get("session_renegotiation") or {}).get("result", {})
            if reneg.get("is_vulnerable_to_client_renegotiation_dos"):
                findings.append(f"{name}: client-initiated renegotiation")
    print(json.dumps(accepted, indent=1))
    assert not findings, "\n".join(findings)


def failed_starttls(instance: Instance, service: str, source: str = "127.0.0.1") -> None:
    """STARTTLS, then a client that cannot agree on a protocol (TLS 1.0 only)."""
    sock = socket.create_connection(
        ("127.0.0.1", instance.ports[service]), timeout=10, source_address=(source, 0)
    )
    lines = Lines(sock)
    lines.until(smtp_final)
    sock.sendall(b"EHLO old.example\r\nSTARTTLS\r\n")
    lines.until(smtp_final)
    assert lines.until(smtp_final)[-1].startswith(b"220")
    result = handshake(sock, client_context("TLSv1", "ALL"))
    assert isinstance(result, str), result


def test_failed_starttls_handshake_is_logged_as_a_tls_problem(tmp_path: Path) -> None:
    fresh = start_instance(tmp_path)
    try:
        failed_starttls(fresh, "smtp")
        time.sleep(0.3)
    finally:
        fresh.daemon.stop()
    lines = [line for line in fresh.log().splitlines() if "roost/smtpd" in line]
    assert not [line for line in lines if "unexpected error" in line], lines
    assert any("TLS" in line and "127.0.0.1" in line for line in lines), lines


def test_failed_handshakes_do_not_skew_the_per_address_count(instance: Instance) -> None:
    """A session ended by a failed STARTTLS handshake is counted out exactly once."""
    for _ in range(60):
        failed_starttls(instance, "smtp", source="127.0.8.1")
    time.sleep(0.3)
    held = []
    try:
        for _ in range(50):  # smtpd_client_connection_count_limit
            sock = socket.create_connection(
                ("127.0.0.1", instance.ports["smtp"]), timeout=10, source_address=("127.0.8.1", 0)
            )
            held.append(sock)
            assert Lines(sock).until(smtp_final)[-1].startswith(b"220")
        extra = socket.create_connection(
            ("127.0.0.1", instance.ports["smtp"]), timeout=10, source_address=("127.0.8.1", 0)
        )
        held.append(extra)
        refusal = Lines(extra).until(smtp_final)[-1]
        assert refusal.startswith(b"421 4.7.0"), refusal
    finally:
        for sock in held:
            sock.close()

"""Tests for roost.tls: generated certificates, server contexts, real handshakes, checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from roost.tls import (
    TLSError,
    check_certificate,
    describe_tls,
    generate_selfsigned,
    make_server_context,
)

HOSTNAME = "mail.example.test"
DESCRIPTION = r"TLSv1\.[23] with cipher [A-Z0-9_-]+ \((\d+)/\1 bits\)"


@dataclass(frozen=True, slots=True)
class Pair:
    cert: Path
    key: Path


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    result = Pair(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem")
    generate_selfsigned(HOSTNAME, result.cert, result.key)
    return result


@pytest.fixture
def other_pair(tmp_path: Path) -> Pair:
    result = Pair(tmp_path / "other" / "cert.pem", tmp_path / "other" / "key.pem")
    generate_selfsigned("other.example.test", result.cert, result.key)
    return result


def client_context(cafile: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    # What Python 3.13 turns on by default: the generated certificate must pass it too.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def write_certificate(
    path: Path, key: ec.EllipticCurvePrivateKey, not_before: dt.datetime, not_after: dt.datetime
) -> None:
    """A certificate with any validity period, made with cryptography directly."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


# --- generate_selfsigned ----------------------------------------------------------------


def test_generated_certificate_names_and_key(pair: Pair) -> None:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert common_name == HOSTNAME
    assert cert.issuer == cert.subject
    assert san.get_values_for_type(x509.DNSName) == [HOSTNAME, "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert isinstance(read_key(pair.key).curve, ec.SECP256R1)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3650, hours=2)


def test_localhost_is_not_listed_twice(tmp_path: Path) -> None:
    generate_selfsigned("localhost", tmp_path / "c.pem", tmp_path / "k.pem", days=1)
    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert len(san.get_values_for_type(x509.IPAddress)) == 2


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_file_modes_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        generate_selfsigned(HOSTNAME, tmp_path / "a" / "b" / "c.pem", tmp_path / "a" / "k.pem")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "k.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a" / "b" / "c.pem").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o755
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b", "k.pem"]
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["c.pem"]


def test_refuses_to_overwrite(pair: Pair) -> None:
    cert_before, key_before = pair.cert.read_bytes(), pair.key.read_bytes()
    with pytest.raises(FileExistsError, match=r"cert\.pem"):
        generate_selfsigned(HOSTNAME, pair.cert, pair.key)
    assert (pair.cert.read_bytes(), pair.key.read_bytes()) == (cert_before, key_before)

    pair.cert.unlink()  # the key alone is enough to refuse, and nothing is written
    with pytest.raises(FileExistsError, match=r"key\.pem"):
        generate_selfsigned(HOSTNAME, pair.cert, pair.key)
    assert not pair.cert.exists()
    assert pair.key.read_bytes() == key_before


def test_overwrite_replaces_both(pair: Pair) -> None:
    cert_before, key_before = pair.cert.read_bytes(), pair.key.read_bytes()
    generate_selfsigned(HOSTNAME, pair.cert, pair.key, overwrite=True)
    assert pair.cert.read_bytes() != cert_before
    assert pair.key.read_bytes() != key_before
    assert check_certificate(pair.cert, pair.key) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hostname"):
        generate_selfsigned("", tmp_path / "c", tmp_path / "k")
    with pytest.raises(ValueError, match="days"):
        generate_selfsigned(HOSTNAME, tmp_path / "c", tmp_path / "k", days=0)


# --- make_server_context: real handshakes -----------------------------------------------


@pytest.mark.parametrize("server_hostname", [HOSTNAME, "localhost"])
async def test_handshake_over_loopback(pair: Pair, server_hostname: str) -> None:
    server_context = make_server_context(pair.cert, pair.key)
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(describe_tls(writer.get_extra_info("ssl_object")))
        writer.write(b"220 ready\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_context)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(pair.cert), server_hostname=server_hostname
        )
        assert await reader.readline() == b"220 ready\r\n"
        client_side = describe_tls(writer.get_extra_info("ssl_object"))
        writer.close()
        await writer.wait_closed()
        server_side = await asyncio.wait_for(seen, 10)
    assert server_side == client_side
    assert server_side.startswith("TLSv1.3 with cipher ")
    assert re.fullmatch(DESCRIPTION, server_side)


async def test_wrong_hostname_fails_verification(pair: Pair) -> None:
    """Control for the test above: the client really checks the name."""
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=make_server_context(pair.cert, pair.key)
    )
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(pair.cert), server_hostname="x.example"
            )


def tls11_client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def handshake(server_context: ssl.SSLContext, client: ssl.SSLContext) -> tuple[object, object]:
    """One handshake over loopback with blocking sockets; each side's result or error."""
    results: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            connection, _ = listener.accept()
            try:
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    results["server"] = tls.version()
            except (ssl.SSLError, OSError) as error:
                results["server"] = error
            finally:
                connection.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                client.wrap_socket(raw) as tls,
            ):
                results["client"] = tls.version()
        except (ssl.SSLError, OSError) as error:
            results["client"] = error
        thread.join(10)
    return results["server"], results["client"]


def test_tls11_client_refused(pair: Pair) -> None:
    # Control: this client can speak TLS 1.1 when a server allows it, else skip.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.load_cert_chain(pair.cert, pair.key)
    if handshake(permissive, tls11_client_context()) != ("TLSv1.1", "TLSv1.1"):
        pytest.skip("this OpenSSL cannot speak TLS 1.1 at all")

    server, client = handshake(make_server_context(pair.cert, pair.key), tls11_client_context())
    assert isinstance(server, ssl.SSLError)
    assert server.reason == "UNSUPPORTED_PROTOCOL"
    assert isinstance(client, ssl.SSLError)


def test_tls13_minimum_refuses_tls12(pair: Pair) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(pair.cert)
    client.check_hostname = False
    client.maximum_version = ssl.TLSVersion.TLSv1_2

    assert handshake(make_server_context(pair.cert, pair.key), client) == ("TLSv1.2", "TLSv1.2")
    server, _ = handshake(make_server_context(pair.cert, pair.key, min_version="TLSv1.3"), client)
    assert isinstance(server, ssl.SSLError)


def test_context_settings(pair: Pair) -> None:
    context = make_server_context(pair.cert, pair.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert context.options & option
    assert context.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c["aead"] and c["kea"] in ("kx-ecdhe", "kx-dhe") for c in tls12)


def test_bad_min_version_names_allowed_values(pair: Pair) -> None:
    with pytest.raises(ValueError, match=r"TLSv1\.2, TLSv1\.3"):
        make_server_context(pair.cert, pair.key, min_version="TLSv1.1")


# --- make_server_context: bad files -----------------------------------------------------


def test_mismatched_key(pair: Pair, other_pair: Pair) -> None:
    with pytest.raises(TLSError) as caught:
        make_server_context(pair.cert, other_pair.key)
    assert caught.value.path == other_pair.key
    assert str(caught.value).startswith(f"{other_pair.key}: private key does not match")
    assert check_certificate(pair.cert, other_pair.key) == [
        f"{other_pair.key}: private key does not match certificate"
    ]


def test_missing_files(pair: Pair, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TLSError, match=f"^{missing}: missing$"):
        make_server_context(missing, pair.key)
    with pytest.raises(TLSError, match=f"^{missing}: missing$"):
        make_server_context(pair.cert, missing)
    assert check_certificate(missing, missing) == [f"{missing}: missing", f"{missing}: missing"]


def test_not_pem(pair: Pair, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"\x30\x82\x01\x00 DER, not PEM")
    with pytest.raises(TLSError, match=f"^{junk}: not PEM"):
        make_server_context(junk, pair.key)
    with pytest.raises(TLSError, match=f"^{junk}: not PEM"):
        make_server_context(pair.cert, junk)
    # A certificate given where the key belongs is not a key.
    with pytest.raises(TLSError, match=f"^{pair.cert}: not PEM"):
        make_server_context(pair.cert, pair.cert)


def test_directory_is_not_a_file(pair: Pair) -> None:
    with pytest.raises(TLSError, match="directory"):
        make_server_context(pair.cert.parent, pair.key)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_key(pair: Pair) -> None:
    pair.key.chmod(0)
    with pytest.raises(TLSError, match=f"^{pair.key}: unreadable"):
        make_server_context(pair.cert, pair.key)


def test_encrypted_key_refused_without_prompting(pair: Pair) -> None:
    encrypted = pair.key.with_name("encrypted.pem")
    encrypted.write_bytes(
        read_key(pair.key).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSError, match=f"^{encrypted}: private key is encrypted"):
        make_server_context(pair.cert, encrypted)


def test_key_and_chain_in_one_file(pair: Pair) -> None:
    combined = pair.cert.with_name("combined.pem")
    combined.write_bytes(pair.key.read_bytes() + pair.cert.read_bytes())
    combined.chmod(0o600)
    make_server_context(combined, combined)
    assert check_certificate(combined, combined) == []


# --- check_certificate ------------------------------------------------------------------


def test_fresh_pair_is_fine(pair: Pair) -> None:
    assert check_certificate(pair.cert, pair.key) == []


def test_expired_certificate(pair: Pair) -> None:
    now = dt.datetime.now(dt.UTC)
    start, end = dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    write_certificate(pair.cert, read_key(pair.key), start, end)
    assert check_certificate(pair.cert, pair.key, now=now) == [
        f"{pair.cert}: certificate expired on 2025-01-01"
    ]
    # Served anyway, as Postfix does; only the check complains.
    make_server_context(pair.cert, pair.key)


def test_not_yet_valid(pair: Pair) -> None:
    start = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)
    write_certificate(pair.cert, read_key(pair.key), start, start + dt.timedelta(days=90))
    problems = check_certificate(pair.cert, pair.key, now=start - dt.timedelta(days=1))
    assert problems == [f"{pair.cert}: certificate not valid before 2030-06-01T00:00:00+00:00"]


def test_expiry_warning(pair: Pair) -> None:
    not_after = x509.load_pem_x509_certificate(pair.cert.read_bytes()).not_valid_after_utc
    soon = not_after - dt.timedelta(days=12, hours=1)
    assert check_certificate(pair.cert, pair.key, now=soon) == [f"{pair.cert}: expires in 12 days"]
    assert check_certificate(pair.cert, pair.key, now=soon, warn_days=12) == []
    last_day = not_after - dt.timedelta(hours=1)
    assert check_certificate(pair.cert, pair.key, now=last_day) == [
        f"{pair.cert}: expires in 0 days"
    ]


def test_naive_now_rejected(pair: Pair) -> None:
    with pytest.raises(ValueError, match="timezone"):
        check_certificate(pair.cert, pair.key, now=dt.datetime(2030, 1, 1))


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        (0o600, None),
        (0o640, None),
        (0o400, None),
        (0o644, "readable by other users (mode 0644)"),
        (0o604, "readable by other users (mode 0604)"),
        (0o602, "accessible by other users (mode 0602)"),
    ],
)
def test_key_mode(pair: Pair, mode: int, problem: str | None) -> None:
    pair.key.chmod(mode)
    expected = [] if problem is None else [f"{pair.key}: {problem}"]
    assert check_certificate(pair.cert, pair.key) == expected


def test_several_problems_at_once(pair: Pair, other_pair: Pair) -> None:
    other_pair.key.chmod(0o644)
    not_after = x509.load_pem_x509_certificate(pair.cert.read_bytes()).not_valid_after_utc
    problems = check_certificate(pair.cert, other_pair.key, now=not_after + dt.timedelta(seconds=1))
    assert problems == [
        f"{pair.cert}: certificate expired on {not_after.date().isoformat()}",
        f"{other_pair.key}: private key does not match certificate",
        f"{other_pair.key}: readable by other users (mode 0644)",
    ]


# --- describe_tls -----------------------------------------------------------------------


def test_describe_before_handshake_raises() -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ssl_object = context.wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    with pytest.raises(ValueError, match="handshake"):
        describe_tls(ssl_object)


def test_describe_tls12(pair: Pair) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(pair.cert)
    client.check_hostname = False
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    context = make_server_context(pair.cert, pair.key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        described: list[str] = []

        def serve() -> None:
            connection, _ = listener.accept()
            with context.wrap_socket(connection, server_side=True) as tls:
                described.append(describe_tls(tls))

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client.wrap_socket(raw),
        ):
            pass
        thread.join(10)
    assert described == ["TLSv1.2 with cipher ECDHE-ECDSA-AES256-GCM-SHA384 (256/256 bits)"]

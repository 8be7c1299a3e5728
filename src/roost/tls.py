"""TLS for every service: self-signed certificates, server contexts, certificate checks.

One module serves SMTP (STARTTLS on 25/587, implicit TLS on 465), IMAP (143/993) and POP3
(110/995). The parameters it implements are roost's ``tls_cert_file`` / ``tls_key_file``
(with per-service overrides such as ``smtpd_tls_cert_file``, Dovecot's ``ssl_cert`` and
``ssl_key``) and ``ssl_min_protocol`` (Dovecot's parameter of that name).

Files are read here, before privileges are dropped; nothing in this module runs on the
event loop for long (generating a P-256 key takes about a millisecond).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from roost.files import write_atomically

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

# cryptography is imported by the functions that use it: loading it costs about 10 MiB
# per process, and the daemon's processes only need it to generate or check a certificate
# (docs/performance.md, "IMAP memory, session 3").

__all__ = [
    "CIPHERS",
    "MIN_VERSIONS",
    "TLSError",
    "check_certificate",
    "describe_tls",
    "generate_selfsigned",
    "make_server_context",
]

#: OpenSSL cipher string for TLS 1.2: forward secrecy (ECDHE/DHE) and AEAD only.
#: TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults.
CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"

#: The values ``ssl_min_protocol`` accepts, mapped to the ``ssl`` module's versions.
MIN_VERSIONS: Final[dict[str, ssl.TLSVersion]] = {
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}

_LOCAL_NAMES: Final = ("localhost", "127.0.0.1", "::1")
_BACKDATE: Final = dt.timedelta(hours=1)  # tolerate clients whose clocks run a little slow


class TLSError(Exception):
    """A certificate or key file that cannot be used.

    ``str(error)`` is ``"FILE: problem"``, e.g.
    ``"/etc/roost/tls/key.pem: private key does not match certificate"``.

    Attributes:
        path: the file at fault.
        problem: what is wrong with it, in words (missing, unreadable, not PEM, ...).
    """

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# --- generating ---------------------------------------------------------------------------


def generate_selfsigned(
    hostname: str,
    cert_path: Path,
    key_path: Path,
    *,
    days: int = 3650,
    overwrite: bool = False,
) -> None:
    """Create a self-signed certificate and its private key, like Dovecot's ``mkcert.sh``.

    The key is EC P-256. The certificate has ``CN=hostname`` and subjectAltName
    ``DNS:hostname`` (an IP address literal becomes an IP entry), plus ``DNS:localhost``,
    ``IP:127.0.0.1`` and ``IP:::1`` when *hostname* is not one of those. It is a server
    (end-entity) certificate signed with SHA-256, valid from one hour ago for *days* days.

    Missing parent directories are created with mode 0755. Each file is written atomically
    (a temporary file in the same directory, fsync, rename, fsync of the directory): the
    key with mode 0600 and the certificate with mode 0644, whatever the umask. Used for
    ``tls_selfsigned_auto = yes``.

    Args:
        hostname: the server's name (``myhostname``), e.g. ``"mail.example.org"``.
        cert_path: where to write the PEM certificate.
        key_path: where to write the PEM private key (PKCS#8, unencrypted).
        days: validity period in days; at least 1.
        overwrite: replace existing files instead of refusing.

    Raises:
        ValueError: *hostname* is empty or *days* is less than 1.
        FileExistsError: *cert_path* or *key_path* exists and *overwrite* is false; neither
            file is written then.
        OSError: a directory or file cannot be created or written.
    """
    if not hostname:
        raise ValueError("hostname must not be empty")
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    if not overwrite:
        for path in (cert_path, key_path):
            if os.path.lexists(path):
                raise FileExistsError(f"{path}: exists; not overwriting it")

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_alt_names(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for path in (key_path, cert_path):
        _make_parents(path.parent)
    write_atomically(key_path, key_pem, 0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _alt_names(hostname: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for entry in (hostname, *_LOCAL_NAMES):
        general = _general_name(entry)
        if general not in names:
            names.append(general)
    return names


def _general_name(entry: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        return x509.DNSName(entry)


def _make_parents(directory: Path) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            created.mkdir()
            os.chmod(created, 0o755)


# --- loading ------------------------------------------------------------------------------


def make_server_context(
    cert_file: Path, key_file: Path, *, min_version: str = "TLSv1.2"
) -> ssl.SSLContext:
    """Build the server-side SSL context every TLS listener uses.

    Settings: ``min_version`` as the oldest protocol (``ssl_min_protocol``), no TLS
    compression (CRIME), the server's cipher order, no renegotiation, and for TLS 1.2 the
    forward-secret AEAD ciphers of :data:`CIPHERS`. Client certificates are not requested.

    An expired certificate is loaded all the same, as Postfix and Dovecot do: opportunistic
    TLS between MTAs does not verify it, and refusing to start would stop mail altogether.
    :func:`check_certificate` reports it.

    Args:
        cert_file: PEM certificate, followed by its intermediate certificates if any
            (``smtpd_tls_cert_file``, Dovecot's ``ssl_cert``).
        key_file: PEM private key, unencrypted; may be the same file as *cert_file*
            (``smtpd_tls_key_file``, Dovecot's ``ssl_key``).
        min_version: ``"TLSv1.2"`` or ``"TLSv1.3"``.

    Returns:
        A ``PROTOCOL_TLS_SERVER`` context with the chain loaded.

    Raises:
        ValueError: *min_version* is not one of the allowed values (the message names them).
        TLSError: a file is missing, unreadable, not PEM, encrypted, or the key does not
            match the certificate; the error names the file.
    """
    version = MIN_VERSIONS.get(min_version)
    if version is None:
        allowed = ", ".join(MIN_VERSIONS)
        raise ValueError(f"TLS minimum version {min_version!r} is not one of: {allowed}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = version
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    )
    context.set_ciphers(CIPHERS)
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except ssl.SSLError as error:
        _explain_failure(cert_file, key_file)
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TLSError(key_file, "private key does not match certificate") from error
        raise TLSError(cert_file, f"cannot load certificate chain: {error}") from error
    except OSError as error:
        _explain_failure(cert_file, key_file)
        raise TLSError(Path(error.filename or cert_file), _os_problem(error)) from error
    return context


def _explain_failure(cert_file: Path, key_file: Path) -> None:
    """After OpenSSL refused a pair: raise the TLSError that says what is wrong, naming
    the file (cryptography is loaded only here, on failure).

    Raises:
        TLSError: a file is missing, unreadable, not PEM, encrypted, or the key does not
            match the certificate.
    """
    certs = _load_certificates(cert_file)
    key = _load_private_key(key_file)
    if not _key_matches(key, certs[0]):
        raise TLSError(key_file, f"private key does not match certificate {cert_file}")


def _refuse_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and block the daemon.
    raise ssl.SSLError("private key is encrypted; passphrases are not supported")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSError(path, _os_problem(error)) from error


def _os_problem(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "missing"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a file"
    return f"unreadable ({error.strerror or error})"


def _load_certificates(path: Path) -> Sequence[x509.Certificate]:
    from cryptography import x509

    data = _read(path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSError(path, "not PEM (no BEGIN CERTIFICATE line)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise TLSError(path, f"not a valid PEM certificate ({error})") from error


def _load_private_key(path: Path) -> PrivateKeyTypes:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(path)
    if b"PRIVATE KEY-----" not in data:
        raise TLSError(path, "not PEM (no BEGIN PRIVATE KEY line)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as error:  # cryptography's way of saying "needs a password"
        raise TLSError(path, "private key is encrypted; passphrases are not supported") from error
    except (ValueError, UnsupportedAlgorithm) as error:
        raise TLSError(path, f"not a valid PEM private key ({error})") from error


def _key_matches(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    from cryptography.hazmat.primitives import serialization

    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


# --- checking -----------------------------------------------------------------------------


def check_certificate(
    cert_file: Path,
    key_file: Path,
    *,
    now: dt.datetime | None = None,
    warn_days: int = 30,
) -> list[str]:
    """List what is wrong with a certificate and its key, for ``roost check``.

    Problems reported, each as ``"FILE: problem"``: a file missing, unreadable or not PEM;
    the certificate expired (``"certificate expired on 2025-01-01"``, UTC date), not yet
    valid, or expiring within *warn_days* (``"expires in 12 days"``); the private key not
    matching the certificate; the key file accessible by other users
    (``"readable by other users (mode 0644)"``; group access is allowed, as Debian's
    ``ssl-cert`` group uses it).

    Args:
        cert_file: PEM certificate (chain); the first certificate is the server's.
        key_file: PEM private key; may be the same file as *cert_file*.
        now: the time to check against, timezone-aware; defaults to the current time.
        warn_days: warn when the certificate expires within this many days.

    Returns:
        The problems, in words, or an empty list when the pair is fine.

    Raises:
        ValueError: *now* is a naive datetime.
    """
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    problems: list[str] = []
    cert: x509.Certificate | None = None
    key: PrivateKeyTypes | None = None
    try:
        cert = _load_certificates(cert_file)[0]
    except TLSError as error:
        problems.append(str(error))
    try:
        key = _load_private_key(key_file)
    except TLSError as error:
        problems.append(str(error))

    if cert is not None:
        problems.extend(_validity_problems(cert_file, cert, now, warn_days))
    if cert is not None and key is not None and not _key_matches(key, cert):
        problems.append(f"{key_file}: private key does not match certificate")
    with contextlib.suppress(OSError):  # a missing key is reported above
        mode = stat.S_IMODE(os.stat(key_file).st_mode)
        if mode & 0o007:
            access = "readable" if mode & 0o004 else "accessible"
            problems.append(f"{key_file}: {access} by other users (mode {mode:04o})")
    return problems


def _validity_problems(
    path: Path, cert: x509.Certificate, now: dt.datetime, warn_days: int
) -> list[str]:
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if now >= not_after:
        return [f"{path}: certificate expired on {not_after.date().isoformat()}"]
    if now < not_before:
        return [f"{path}: certificate not valid before {not_before.isoformat()}"]
    left = not_after - now
    if left < dt.timedelta(days=warn_days):
        days = left.days
        return [f"{path}: expires in {days} day{'' if days == 1 else 's'}"]
    return []


# --- describing ---------------------------------------------------------------------------


def describe_tls(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """Describe a finished handshake in Postfix's words.

    The shape is what Postfix puts in Received headers and its "TLS connection
    established" log lines, e.g. ``"TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256
    bits)"``. Python reports one key size, so both numbers are the cipher's secret bits.

    Args:
        ssl_object: an asyncio transport's ``get_extra_info("ssl_object")`` or an
            ``ssl.SSLSocket``, after the handshake.

    Returns:
        The description, one line.

    Raises:
        ValueError: the handshake has not completed.
    """
    version = ssl_object.version()
    cipher = ssl_object.cipher()
    if version is None or cipher is None:
        raise ValueError("the TLS handshake has not completed")
    name, _protocol, bits = cipher
    return f"{version} with cipher {name} ({bits}/{bits} bits)"

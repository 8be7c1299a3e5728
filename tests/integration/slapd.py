"""A real OpenLDAP slapd on a loopback port, for LDAP tests (reusable fixture helper).

:class:`Slapd` writes its own ``slapd.conf``, schema file, database and TLS files under a
directory (``tmp_path``), runs ``/usr/sbin/slapd -d 0`` in the foreground on
``ldap://127.0.0.1:PORT/`` (and ``ldaps://127.0.0.1:PORT2/``), waits until a bind as the
rootdn succeeds, loads entries with ldap3 and stops the process. It never reads or writes
/etc/ldap/slapd.d or the system's database: only the stock schema files in
/etc/ldap/schema are included.

Debian packages: ``slapd`` (the server, its mdb backend module and the schema files).

The schema adds a small Active-Directory-like auxiliary class, ``roostADUser``, with
``sAMAccountName``, ``userPrincipalName`` and ``proxyAddresses`` (AD's names, matching
rules and multi-valued-ness), plus ``roostMailQuota``. The OIDs are under
``2.25.<uuid>`` (ITU-T X.667: an arc anyone may use without registration), so they can
never clash with Microsoft's.

Usage::

    with Slapd(tmp_path / "slapd") as server:
        server.add_entries(Slapd.sample_entries())
        uri = server.uri
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ldap3 import ANONYMOUS, SIMPLE, Connection, Server

from roost.tls import generate_selfsigned
from tests.conftest import free_port

SUFFIX = "dc=roost,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret"
SERVICE_DN = f"cn=roost,ou=services,{SUFFIX}"
SERVICE_PW = "service-secret"
PEOPLE = f"ou=people,{SUFFIX}"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")

#: A private arc: 2.25 followed by a random UUID as an integer (X.667).
_ARC = "2.25.147009542436135768227451640391286393137"

AD_SCHEMA = f"""\
# roost test schema: Active-Directory-like attributes on an auxiliary class.
objectIdentifier roostTest {_ARC}
objectIdentifier roostAttr roostTest:1
objectIdentifier roostClass roostTest:2

attributetype ( roostAttr:1 NAME 'sAMAccountName'
    DESC 'AD: the pre-Windows 2000 logon name'
    EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15{{256}} SINGLE-VALUE )

attributetype ( roostAttr:2 NAME 'userPrincipalName'
    DESC 'AD: the user principal name, user@upn-suffix'
    EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15{{1024}} SINGLE-VALUE )

attributetype ( roostAttr:3 NAME 'proxyAddresses'
    DESC 'AD/Exchange: addresses with a type prefix, SMTP: primary, smtp: others'
    EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15{{1123}} )

attributetype ( roostAttr:4 NAME 'roostMailQuota'
    DESC 'roost tests: mail quota, bytes or a Dovecot quota rule'
    EQUALITY caseIgnoreIA5Match
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{{256}} SINGLE-VALUE )

objectclass ( roostClass:1 NAME 'roostADUser'
    DESC 'roost tests: Active-Directory-like user attributes'
    SUP top AUXILIARY
    MAY ( sAMAccountName $ userPrincipalName $ proxyAddresses $ roostMailQuota ) )
"""

_CONF = """\
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
include {schema}/nis.schema
include {directory}/roost-ad.schema

pidfile {directory}/slapd.pid
argsfile {directory}/slapd.args
modulepath {modules}
moduleload back_mdb
{tls}
database mdb
maxsize 16777216
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_pw}
directory {directory}/data
index objectClass eq
index mail,uid,sAMAccountName,userPrincipalName,proxyAddresses eq

access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to *
    by * read
"""


def ssha(password: str) -> str:
    """Hash a password as OpenLDAP's ``{SSHA}`` (salted SHA-1, RFC 2307 style)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry to add: its DN and attributes (objectClass included)."""

    dn: str
    attributes: Mapping[str, str | Sequence[str]] = field(default_factory=dict)


def person(
    uid: str,
    password: str,
    *,
    mail: str | Sequence[str] | None = None,
    ad: Mapping[str, str | Sequence[str]] | None = None,
    posix: tuple[int, int, str] | None = None,
    extra: Mapping[str, str | Sequence[str]] | None = None,
) -> Entry:
    """An inetOrgPerson under ou=people, optionally posixAccount and roostADUser."""
    classes = ["inetOrgPerson"]
    attributes: dict[str, str | Sequence[str]] = {
        "uid": uid,
        "cn": uid.capitalize(),
        "sn": uid.capitalize(),
        "userPassword": ssha(password),
    }
    if mail is not None:
        attributes["mail"] = mail
    if posix is not None:
        classes.append("posixAccount")
        uid_number, gid_number, home = posix
        attributes |= {
            "uidNumber": str(uid_number),
            "gidNumber": str(gid_number),
            "homeDirectory": home,
        }
    if ad:
        classes.append("roostADUser")
        attributes |= ad
    attributes |= extra or {}
    attributes["objectClass"] = classes
    return Entry(f"uid={uid},{PEOPLE}", attributes)


class Slapd:
    """One slapd process with its own configuration and mdb database under ``directory``.

    Args:
        directory: an empty or missing directory (e.g. ``tmp_path / "slapd"``).
        tls: also listen on ``ldaps://`` and offer StartTLS, with a self-signed
            certificate for ``localhost``/``127.0.0.1`` in :attr:`ca_file`.
        program: the slapd binary.
    """

    def __init__(
        self, directory: Path, *, tls: bool = True, program: str = "/usr/sbin/slapd"
    ) -> None:
        self.directory = directory
        self.program = program
        self.tls = tls
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.ca_file = directory / "cert.pem"
        self.log = directory / "slapd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """``ldap://127.0.0.1:PORT``."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        """``ldaps://127.0.0.1:PORT2`` (with ``tls=True`` only)."""
        if self.tls_port is None:
            raise RuntimeError("slapd was started without TLS")
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def write_config(self) -> Path:
        """Write the schema, TLS files and slapd.conf; return the slapd.conf path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        (self.directory / "roost-ad.schema").write_text(AD_SCHEMA)
        tls = ""
        if self.tls:
            key = self.directory / "key.pem"
            generate_selfsigned("localhost", self.ca_file, key, overwrite=True)
            tls = f"TLSCertificateFile {self.ca_file}\nTLSCertificateKeyFile {key}\n"
        conf = self.directory / "slapd.conf"
        conf.write_text(
            _CONF.format(
                schema=SCHEMA_DIR,
                modules=MODULE_DIR,
                directory=self.directory,
                suffix=SUFFIX,
                root_dn=ROOT_DN,
                root_pw=ssha(ROOT_PW),
                tls=tls,
            )
        )
        return conf

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration, start slapd, wait for it and add :meth:`base_entries`.

        Raises:
            RuntimeError: slapd exited, or did not answer within ``timeout`` seconds; the
                message holds its log.
        """
        self.write_config()
        self._launch(timeout)
        self.add_entries(self.base_entries())

    def restart(self, timeout: float = 30.0) -> None:
        """Stop slapd and start it again on the same ports with the same database."""
        self.stop()
        self._launch(timeout)

    def _launch(self, timeout: float) -> None:
        urls = self.uri + "/"
        if self.tls_port is not None:
            urls += f" {self.ldaps_uri}/"
        conf = self.directory / "slapd.conf"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.program, "-h", urls, "-f", str(conf), "-d", "0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"slapd exited with {code}:\n{self.logs()}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"slapd did not answer within {timeout}s:\n{self.logs()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _answers(self) -> bool:
        connection = self.connect(ROOT_DN, ROOT_PW, timeout=1)
        try:
            return bool(connection.bind())
        except Exception:
            return False
        finally:
            connection.unbind()

    def connect(
        self, user: str | None = ROOT_DN, password: str | None = ROOT_PW, *, timeout: int = 5
    ) -> Connection:
        """An unbound ldap3 connection to this server (bind it yourself).

        ``timeout`` is in whole seconds: ldap3 passes it to ``SO_RCVTIMEO`` as an integer.
        """
        server = Server(self.uri, connect_timeout=timeout)
        return Connection(
            server,
            user=user,
            password=password,
            authentication=SIMPLE if user else ANONYMOUS,
            receive_timeout=timeout,
            raise_exceptions=False,
        )

    def add_entries(self, entries: Iterable[Entry]) -> None:
        """Add entries as the rootdn, in order.

        Raises:
            RuntimeError: an add failed (the message names the DN and the result).
        """
        connection = self.connect()
        if not connection.bind():
            raise RuntimeError(f"bind as {ROOT_DN} failed: {connection.result}")
        try:
            for entry in entries:
                attributes = {
                    name: list(value) if not isinstance(value, str) else value
                    for name, value in entry.attributes.items()
                }
                if not connection.add(entry.dn, attributes=attributes):
                    raise RuntimeError(f"adding {entry.dn} failed: {connection.result}")
        finally:
            connection.unbind()

    @staticmethod
    def base_entries() -> list[Entry]:
        """The suffix, ou=people, ou=services and the service account roost binds as."""
        return [
            Entry(
                SUFFIX,
                {"objectClass": ["dcObject", "organization"], "dc": "roost", "o": "roost"},
            ),
            Entry(PEOPLE, {"objectClass": "organizationalUnit", "ou": "people"}),
            Entry(f"ou=services,{SUFFIX}", {"objectClass": "organizationalUnit", "ou": "services"}),
            Entry(
                SERVICE_DN,
                {
                    "objectClass": ["organizationalRole", "simpleSecurityObject"],
                    "cn": "roost",
                    "userPassword": ssha(SERVICE_PW),
                },
            ),
        ]

    def logs(self) -> str:
        """slapd's output so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop slapd with SIGTERM (SIGKILL after ``timeout`` seconds)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Slapd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

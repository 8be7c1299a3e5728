"""Sans-IO SASL server mechanisms (RFC 4422) shared by SMTP, IMAP and POP3.

The protocols differ only in framing: SMTP ``AUTH`` (RFC 4954) sends challenges as
``334 <base64>``, IMAP ``AUTHENTICATE`` (RFC 9051 §6.2.2, initial response by SASL-IR RFC
4959) as ``+ <base64>``, POP3 ``AUTH`` (RFC 5034) as ``+ <base64>``. Each protocol decodes
client lines with :func:`decode_response`, feeds the bytes to a mechanism and encodes
challenges with :func:`encode_challenge`. No I/O here: no asyncio, sockets or files.

Typical use::

    mechanism = start_mechanism(name, secured=connection_is_tls)
    step = mechanism.receive(decode_response(initial, initial=True) if initial else None)
    while isinstance(step, Challenge):
        send(b"334 " + encode_challenge(step.data))
        step = mechanism.receive(decode_response(read_line()))
    result = await users.verify(step.authcid, step.password, remote_address=peer)

Errors and the replies they imply (each protocol keeps its own table):

* :class:`UnknownMechanismError`: SMTP ``504 5.5.4``, IMAP ``NO`` (RFC 9051 §6.2.2),
  POP3 ``-ERR``.
* :class:`EncryptionRequiredError`: a plaintext mechanism before TLS: SMTP
  ``538 5.7.11`` (RFC 4954 §6), IMAP ``NO [PRIVACYREQUIRED]`` (RFC 5530), POP3 ``-ERR``.
* :class:`SASLCancelled`: the client sent ``*``: SMTP ``501 5.7.0``, IMAP ``BAD``,
  POP3 ``-ERR``.
* :class:`AuthzidRejected`: the client asked to act as someone else: SMTP
  ``535 5.7.8``, IMAP ``NO [AUTHORIZATIONFAILED]``.
* :class:`SASLError` (others): a malformed exchange: SMTP ``501 5.5.2``, IMAP ``BAD``,
  POP3 ``-ERR``.
* :class:`MechanismStateError`: a bug in the caller (feeding a finished mechanism).

SCRAM and other mechanisms are added by writing a :class:`Mechanism` subclass and listing
it in :data:`MECHANISMS`; ``plaintext`` tells protocols whether to hide it before TLS.
"""

from __future__ import annotations

import abc
import binascii
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final

__all__ = [
    "MAX_RESPONSE_LINE",
    "MECHANISMS",
    "AuthzidRejected",
    "Challenge",
    "Credentials",
    "EncryptionRequiredError",
    "LoginMechanism",
    "Mechanism",
    "MechanismStateError",
    "MechanismUnavailableError",
    "PlainMechanism",
    "SASLCancelled",
    "SASLError",
    "UnknownMechanismError",
    "advertised_mechanisms",
    "decode_response",
    "encode_challenge",
    "start_mechanism",
]

MAX_RESPONSE_LINE: Final = 12288
"""Longest accepted base64 response line in octets (RFC 4954 §4: 12288 for ``AUTH``)."""


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """The server must send ``data`` (base64 by the protocol) and wait for a response.

    Attributes:
        data: the raw challenge; empty for PLAIN's empty challenge (``334 `` / ``+ ``).
    """

    data: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    """The exchange is complete: verify these. The password is kept out of ``repr``.

    Attributes:
        authcid: the authentication identity (the login name), UTF-8 decoded.
        password: the password, UTF-8 decoded; never empty, never contains NUL.
        authzid: the authorization identity when the client sent one; it is always equal
            to ``authcid`` (others are refused with :class:`AuthzidRejected`).
    """

    authcid: str
    password: str = field(repr=False)
    authzid: str | None = None


# --- errors -------------------------------------------------------------------------------


class SASLError(Exception):
    """The client's side of the exchange failed (RFC 4422 §3.6): malformed or refused.

    Attributes:
        reason: what went wrong, for logs; never contains a password.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SASLCancelled(SASLError):
    """The client cancelled the exchange with ``*`` (RFC 4954 §4, RFC 9051 §6.2.2)."""

    def __init__(self, reason: str = "authentication cancelled by the client") -> None:
        super().__init__(reason)


class AuthzidRejected(SASLError):
    """The client asked for an authorization identity other than its own (RFC 4616 §2)."""


class MechanismUnavailableError(ValueError):
    """The mechanism cannot be started.

    Attributes:
        mechanism: the name the client asked for, uppercased.
    """

    def __init__(self, mechanism: str, reason: str) -> None:
        super().__init__(reason)
        self.mechanism = mechanism


class UnknownMechanismError(MechanismUnavailableError):
    """No such mechanism, or it is not enabled."""


class EncryptionRequiredError(MechanismUnavailableError):
    """A plaintext mechanism was asked for on a connection without TLS."""


class MechanismStateError(RuntimeError):
    """The caller fed a mechanism out of turn (after it finished or failed): a local bug."""


# --- mechanisms ---------------------------------------------------------------------------


class _State(enum.Enum):
    START = enum.auto()
    WAITING = enum.auto()
    WAITING_PASSWORD = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class Mechanism(abc.ABC):
    """One server-side SASL exchange. Instances are single-use.

    Class attributes:
        name: the IANA mechanism name (RFC 4422 §3.1), uppercase.
        plaintext: whether the password crosses the wire in the clear, so the mechanism
            must be hidden before TLS (Postfix ``smtpd_tls_auth_only``, Dovecot
            ``auth_allow_cleartext = no``).
    """

    name: ClassVar[str]
    plaintext: ClassVar[bool]

    def __init__(self) -> None:
        self._state = _State.START

    @property
    def complete(self) -> bool:
        """Whether the exchange produced :class:`Credentials`."""
        return self._state is _State.DONE

    def receive(self, response: bytes | None) -> Challenge | Credentials:
        """Feed the next client response.

        Args:
            response: the decoded response; ``None`` only as the first call, when the
                client sent no initial response (RFC 4422 §5 step 2). ``b""`` is an empty
                response (SMTP/IMAP ``=`` initial response, or an empty line).

        Returns:
            The next challenge to send, or the credentials to verify.

        Raises:
            SASLError: the response is malformed or refused; the exchange is over.
            MechanismStateError: the exchange was already over, or ``None`` came late.
        """
        if self._state in (_State.DONE, _State.FAILED):
            raise MechanismStateError(f"{self.name} exchange is already over")
        if response is None and self._state is not _State.START:
            raise MechanismStateError(f"{self.name}: no response given after a challenge")
        try:
            step = self._step(response)
        except SASLError:
            self._state = _State.FAILED
            raise
        if isinstance(step, Credentials):
            self._state = _State.DONE
        return step

    @abc.abstractmethod
    def _step(self, response: bytes | None) -> Challenge | Credentials:
        """Advance the state machine; raise :class:`SASLError` on bad input."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.name}>"


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError(f"{what} is not UTF-8") from None


class PlainMechanism(Mechanism):
    """PLAIN (RFC 4616): one message ``[authzid] NUL authcid NUL passwd``, UTF-8.

    Without an initial response the server first sends an empty challenge. The authzid
    must be empty or equal to the authcid (no proxy authorization). authcid and passwd
    must be non-empty (RFC 4616 §2: ``1*SAFE``). No SASLprep is applied (as Dovecot).
    """

    name: ClassVar[str] = "PLAIN"
    plaintext: ClassVar[bool] = True

    def _step(self, response: bytes | None) -> Challenge | Credentials:
        if response is None:
            self._state = _State.WAITING
            return Challenge(b"")
        parts = response.split(b"\x00")
        if len(parts) != 3:
            raise SASLError("PLAIN message is not authzid NUL authcid NUL passwd")
        authzid, authcid, password = (_text(part, "PLAIN message") for part in parts)
        if not authcid:
            raise SASLError("PLAIN message has an empty authentication identity")
        if not password:
            raise SASLError("PLAIN message has an empty password")
        if authzid and authzid != authcid:
            raise AuthzidRejected(f"{authcid} may not act as {authzid}")
        return Credentials(authcid=authcid, password=password, authzid=authzid or None)


class LoginMechanism(Mechanism):
    """LOGIN (draft-murchison-sasl-login-00): ``Username:`` then ``Password:`` challenges.

    An initial response, which many clients send, is taken as the user name. Neither
    value may be empty or contain NUL.
    """

    name: ClassVar[str] = "LOGIN"
    plaintext: ClassVar[bool] = True

    USERNAME_CHALLENGE: ClassVar[bytes] = b"Username:"
    PASSWORD_CHALLENGE: ClassVar[bytes] = b"Password:"

    def __init__(self) -> None:
        super().__init__()
        self._username = ""

    def _step(self, response: bytes | None) -> Challenge | Credentials:
        if response is None:
            self._state = _State.WAITING
            return Challenge(self.USERNAME_CHALLENGE)
        if self._state in (_State.START, _State.WAITING):
            self._username = self._value(response, "user name")
            self._state = _State.WAITING_PASSWORD
            return Challenge(self.PASSWORD_CHALLENGE)
        password = self._value(response, "password")
        return Credentials(authcid=self._username, password=password)

    @staticmethod
    def _value(response: bytes, what: str) -> str:
        if not response:
            raise SASLError(f"LOGIN {what} is empty")
        if b"\x00" in response:
            raise SASLError(f"LOGIN {what} contains NUL")
        return _text(response, f"LOGIN {what}")


MECHANISMS: Final[Mapping[str, type[Mechanism]]] = {
    mechanism.name: mechanism for mechanism in (PlainMechanism, LoginMechanism)
}
"""Mechanism classes by name, in the order servers advertise them."""


def start_mechanism(
    name: str,
    *,
    secured: bool = True,
    allow_plaintext: bool = False,
    enabled: Iterable[str] | None = None,
) -> Mechanism:
    """Start a server exchange for the mechanism the client named.

    Args:
        name: the mechanism name from ``AUTH``/``AUTHENTICATE`` (case-insensitive).
        secured: whether the connection is protected by TLS.
        allow_plaintext: allow plaintext mechanisms without TLS (Dovecot
            ``auth_allow_cleartext``, inverse of Postfix ``smtpd_tls_auth_only``).
        enabled: the mechanism names the server offers; ``None`` = all of
            :data:`MECHANISMS`.

    Returns:
        A fresh mechanism.

    Raises:
        UnknownMechanismError: the name is unknown or not enabled.
        EncryptionRequiredError: a plaintext mechanism without TLS (and not allowed).
    """
    key = name.upper()
    mechanism = MECHANISMS.get(key)
    if mechanism is None or (enabled is not None and key not in _upper(enabled)):
        raise UnknownMechanismError(key, f"unsupported SASL mechanism {key[:40]!r}")
    if mechanism.plaintext and not secured and not allow_plaintext:
        raise EncryptionRequiredError(key, f"{key} requires TLS")
    return mechanism()


def advertised_mechanisms(
    *, secured: bool, allow_plaintext: bool = False, enabled: Iterable[str] | None = None
) -> tuple[str, ...]:
    """The mechanism names to advertise (EHLO ``AUTH``, IMAP ``AUTH=``, POP3 ``SASL``).

    Args:
        secured: whether the connection is protected by TLS.
        allow_plaintext: show plaintext mechanisms without TLS too.
        enabled: the names the server offers; ``None`` = all of :data:`MECHANISMS`.

    Returns:
        Names in :data:`MECHANISMS` order; plaintext ones only when ``secured`` or
        ``allow_plaintext``.
    """
    wanted = None if enabled is None else _upper(enabled)
    return tuple(
        name
        for name, mechanism in MECHANISMS.items()
        if (wanted is None or name in wanted)
        and (secured or allow_plaintext or not mechanism.plaintext)
    )


def _upper(names: Iterable[str]) -> frozenset[str]:
    return frozenset(name.upper() for name in names)


# --- base64 framing -----------------------------------------------------------------------


def decode_response(line: bytes, *, initial: bool = False) -> bytes | None:
    """Decode one client response line (without or with its CRLF).

    Args:
        line: the base64 text: a continuation line, or the initial-response argument of
            ``AUTH``/``AUTHENTICATE`` (RFC 4954 §4, RFC 4959).
        initial: whether ``line`` is the initial-response argument; then an empty line
            means "no initial response".

    Returns:
        The decoded bytes; ``b""`` for ``=`` (an empty initial response) or an empty
        continuation line; ``None`` for an empty ``line`` when ``initial``.

    Raises:
        SASLCancelled: the line is ``*``.
        SASLError: the line is longer than :data:`MAX_RESPONSE_LINE` or not base64.
    """
    if len(line) > MAX_RESPONSE_LINE:
        raise SASLError("SASL response too long")
    text = line.strip(b" \t\r\n")
    if text == b"*":
        raise SASLCancelled()
    if text == b"=":
        return b""
    if not text:
        return None if initial else b""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise SASLError("SASL response is not base64") from None


def encode_challenge(data: bytes) -> bytes:
    """Encode a challenge as base64 without a line ending (``b""`` for an empty one)."""
    return binascii.b2a_base64(data, newline=False)

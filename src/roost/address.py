"""Mail addresses: RFC 5321 paths, RFC 5322 header addresses, domains, IDNA and SMTPUTF8.

One module shared by the SMTP server (``MAIL FROM``/``RCPT TO`` and relay control), the router
and local delivery. Everything here is sans-IO: text in, values or :class:`AddressError` out.

The pieces:

* :class:`Address` and :data:`NULL_PATH` (:class:`NullPath`): parsed envelope addresses.
* :func:`split_command_argument`, :func:`parse_path`, :func:`parse_esmtp_params`: the
  argument of ``MAIL FROM:`` / ``RCPT TO:`` (RFC 5321 §4.1.2, RFC 6531 for SMTPUTF8).
* :func:`decode_xtext` / :func:`encode_xtext`: ENVID and ORCPT values (RFC 3461 §4).
* Relay-policy helpers with Postfix semantics: :func:`has_routing_characters`,
  :func:`domain_matches`, :func:`is_fqdn`, :func:`is_valid_hostname`,
  :func:`split_extension`, :func:`normalize_domain`.
* :func:`addresses_from_headers`: ``To:``/``Cc:``/``Bcc:`` values (RFC 5322 §3.4) through the
  standard library's header parser, for ``sendmail -t`` and bounces.

Domains are compared by key: lowercase, A-label (IDNA 2008 with UTS #46 non-transitional
mapping, as Postfix's SMTPUTF8 support does), without the trailing dot. Local parts are
case-sensitive (RFC 5321 §2.4) and are never folded here.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.errors import InvalidHeaderDefect
from email.headerregistry import AddressHeader, HeaderRegistry
from typing import Final, Literal, TypeAlias, overload

import idna

__all__ = [
    "NULL_PATH",
    "Address",
    "AddressError",
    "AddressErrorKind",
    "NullPath",
    "ReversePath",
    "addresses_from_headers",
    "decode_xtext",
    "domain_matches",
    "encode_xtext",
    "has_routing_characters",
    "is_fqdn",
    "is_valid_hostname",
    "normalize_domain",
    "parse_esmtp_params",
    "parse_mailbox",
    "parse_path",
    "quote_local_part",
    "split_command_argument",
    "split_extension",
]

# RFC 5321 §4.5.3.1.1-3 (octets).
MAX_LOCAL_PART_OCTETS: Final = 64
MAX_DOMAIN_OCTETS: Final = 255
MAX_PATH_OCTETS: Final = 256
# RFC 1035 §2.3.4 (octets).
MAX_LABEL_OCTETS: Final = 63


# --------------------------------------------------------------------------------------------
# Errors


class AddressErrorKind(enum.Enum):
    """What is wrong with an address or an ESMTP parameter list."""

    SYNTAX = "syntax"
    """Not an RFC 5321 path (or mailbox, domain, hostname)."""
    TOO_LONG = "too-long"
    """The whole path is over 256 octets (RFC 5321 §4.5.3.1.3)."""
    LOCAL_PART_TOO_LONG = "local-part-too-long"
    """The local part is over 64 octets (RFC 5321 §4.5.3.1.1)."""
    DOMAIN_TOO_LONG = "domain-too-long"
    """The domain is over 255 octets or a label over 63 (RFC 5321 §4.5.3.1.2, RFC 1035)."""
    NON_ASCII_WITHOUT_SMTPUTF8 = "non-ascii"
    """UTF-8 in an address but the transaction did not ask for SMTPUTF8 (RFC 6531 §3.2)."""
    BAD_ADDRESS_LITERAL = "bad-address-literal"
    """An address literal that is not a valid IPv4 or IPv6 address (RFC 5321 §4.1.3)."""
    PARAMETER_SYNTAX = "parameter-syntax"
    """A bad ESMTP parameter list or xtext value (RFC 5321 §4.1.2, RFC 3461 §4)."""


# kind -> (basic reply code, enhanced status for a recipient, for a sender).
# 5.1.3 / 5.1.7: bad destination / sender mailbox address syntax (RFC 3463 §3.2);
# 5.6.7: non-ASCII addresses not permitted (RFC 6531 §3.7.4.1, RFC 5248);
# 5.5.4: invalid command arguments (RFC 3463 §3.6). 501 and 553: RFC 5321 §4.2.2, §4.5.3.1.10.
_REPLY_HINTS: Final[dict[AddressErrorKind, tuple[int, str, str]]] = {
    AddressErrorKind.SYNTAX: (501, "5.1.3", "5.1.7"),
    AddressErrorKind.TOO_LONG: (501, "5.1.3", "5.1.7"),
    AddressErrorKind.LOCAL_PART_TOO_LONG: (501, "5.1.3", "5.1.7"),
    AddressErrorKind.DOMAIN_TOO_LONG: (501, "5.1.3", "5.1.7"),
    AddressErrorKind.NON_ASCII_WITHOUT_SMTPUTF8: (553, "5.6.7", "5.6.7"),
    AddressErrorKind.BAD_ADDRESS_LITERAL: (501, "5.1.3", "5.1.7"),
    AddressErrorKind.PARAMETER_SYNTAX: (501, "5.5.4", "5.5.4"),
}


class AddressError(ValueError):
    """An address, path, domain or ESMTP parameter list was rejected.

    The error is protocol-neutral; the SMTP layer turns it into a reply with
    :attr:`reply_code` and :meth:`enhanced_status`, choosing the sender or recipient
    flavour (``5.1.7`` versus ``5.1.3``) because only it knows which command it parsed.

    Attributes:
        kind: what is wrong, an :class:`AddressErrorKind`.
        reason: a short human-readable explanation, safe to put in a reply: it never quotes
            the offending address.
    """

    def __init__(self, kind: AddressErrorKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    def __repr__(self) -> str:
        return f"AddressError({self.kind}, {self.reason!r})"

    @property
    def reply_code(self) -> int:
        """The suggested basic SMTP reply code: 501 (syntax), or 553 (needs SMTPUTF8)."""
        return _REPLY_HINTS[self.kind][0]

    def enhanced_status(self, *, sender: bool) -> str:
        """The suggested RFC 3463 enhanced status code.

        Args:
            sender: true for ``MAIL FROM`` (gives ``5.1.7``), false for ``RCPT TO``
                (gives ``5.1.3``). Parameter errors give ``5.5.4`` and UTF-8 without
                SMTPUTF8 gives ``5.6.7`` either way.

        Returns:
            A status such as ``"5.1.3"``.
        """
        _, for_recipient, for_sender = _REPLY_HINTS[self.kind]
        return for_sender if sender else for_recipient


def _syntax(reason: str) -> AddressError:
    return AddressError(AddressErrorKind.SYNTAX, reason)


# --------------------------------------------------------------------------------------------
# Character classes and small grammars

# RFC 5321 §4.1.2 atext (the RFC 5322 §3.2.3 set).
_ATEXT_ASCII: Final = "A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~"
# RFC 6531 §3.3: atext =/ UTF8-non-ascii. Surrogates are screened out before matching.
_ATEXT_UTF8: Final = _ATEXT_ASCII + "\u0080-\U0010ffff"
_DOT_STRING_ASCII: Final = re.compile(f"[{_ATEXT_ASCII}]+(?:\\.[{_ATEXT_ASCII}]+)*")
_DOT_STRING_UTF8: Final = re.compile(f"[{_ATEXT_UTF8}]+(?:\\.[{_ATEXT_UTF8}]+)*")
# Postfix-style leniency (strict=False): atext, dots anywhere, and unquoted "@".
_LOOSE_LOCAL_ASCII: Final = re.compile(f"[{_ATEXT_ASCII}.@]+")
_LOOSE_LOCAL_UTF8: Final = re.compile(f"[{_ATEXT_UTF8}.@]+")
# RFC 5321 §4.1.2 sub-domain (ASCII): Let-dig [Ldh-str].
_LDH_LABEL: Final = re.compile("[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# Postfix valid_hostname(): letters, digits, "_" and inner hyphens.
_HOSTNAME_LABEL: Final = re.compile("[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")
# RFC 5321 §4.1.3 IPv4-address-literal: Snum 3("." Snum), Snum = 1*3DIGIT.
_IPV4_LITERAL: Final = re.compile("([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})")
# RFC 5321 §4.1.3 General-address-literal: Standardized-tag ":" 1*dcontent.
_GENERAL_LITERAL: Final = re.compile("[A-Za-z0-9-]*[A-Za-z0-9]:[!-Z^-~]+")
_IPV6_CHARS: Final = frozenset("0123456789abcdefABCDEF:.")
# RFC 5321 §4.1.2 esmtp-keyword.
_ESMTP_KEYWORD: Final = re.compile("[A-Za-z0-9][A-Za-z0-9-]*")
_PARAM_SEPARATOR: Final = re.compile("[ \t]+")
_FOLDING: Final = re.compile("\r?\n(?=[ \t])")
_HEX_DIGITS: Final = frozenset("0123456789ABCDEFabcdef")


def _check_characters(text: str, *, utf8: bool) -> None:
    """Screen out controls, lone surrogates and (without ``utf8``) any non-ASCII."""
    if text.isascii():
        if any(ch < " " or ch == "\x7f" for ch in text):
            raise _syntax("control character in address")
        return
    if not utf8:
        raise AddressError(
            AddressErrorKind.NON_ASCII_WITHOUT_SMTPUTF8,
            "non-ASCII address without SMTPUTF8",
        )
    if any(_is_bad_unicode(ch) for ch in text):
        raise _syntax("control character or invalid UTF-8 in address")


def _is_bad_unicode(ch: str) -> bool:
    """Controls (C0, DEL, C1), line/paragraph separators and lone surrogates.

    RFC 6532's UTF8-non-ascii would admit C1 controls and U+2028/U+2029, but nothing
    legitimate uses them in an address, and they split lines in logs (``str.splitlines``).
    Lone surrogates come from undecodable bytes and are not UTF-8 at all.
    """
    return ch < " " or "\x7f" <= ch <= "\x9f" or ch in "\u2028\u2029" or "\ud800" <= ch <= "\udfff"


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def quote_local_part(local_part: str) -> str:
    """Render a local part in RFC 5321 form: a Dot-string if it is one, else a Quoted-string.

    UTF-8 is kept as is (RFC 6531 §3.3 extends atext and qtextSMTP). Inside quotes only
    ``"`` and ``\\`` are escaped, which is the shortest valid quoted-pairSMTP form.

    Args:
        local_part: the unquoted local part, e.g. ``john doe``.

    Returns:
        ``john.doe`` unchanged, or ``"john doe"`` quoted.

    See Also: RFC 5321 §4.1.2 (Local-part, Dot-string, Quoted-string).
    """
    if _DOT_STRING_UTF8.fullmatch(local_part):
        return local_part
    escaped = local_part.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# --------------------------------------------------------------------------------------------
# Domains


def _ipv4_literal(content: str) -> ipaddress.IPv4Address | None:
    match = _IPV4_LITERAL.fullmatch(content)
    if match is None:
        return None
    octets = [int(part) for part in match.groups()]
    if any(octet > 255 for octet in octets):
        return None
    return ipaddress.IPv4Address(bytes(octets))


def _parse_address_literal(literal: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Validate ``[1.2.3.4]`` or ``[IPv6:...]`` and return the address.

    Raises:
        AddressError: ``BAD_ADDRESS_LITERAL`` for a malformed address or a
            General-address-literal (RFC 5321 §4.1.3), which nothing can route to.
    """
    if len(literal) < 2 or literal[0] != "[" or literal[-1] != "]":
        raise AddressError(AddressErrorKind.BAD_ADDRESS_LITERAL, "unbalanced address literal")
    content = literal[1:-1]
    ipv4 = _ipv4_literal(content)
    if ipv4 is not None:
        return ipv4
    if content[:5].lower() == "ipv6:":
        text = content[5:]
        # ipaddress accepts a "%zone" suffix, which has no place in mail.
        if text and set(text) <= _IPV6_CHARS:
            try:
                return ipaddress.IPv6Address(text)
            except ValueError:
                pass
        raise AddressError(AddressErrorKind.BAD_ADDRESS_LITERAL, "invalid IPv6 address literal")
    if _GENERAL_LITERAL.fullmatch(content):
        raise AddressError(
            AddressErrorKind.BAD_ADDRESS_LITERAL, "general address literals are not supported"
        )
    raise AddressError(AddressErrorKind.BAD_ADDRESS_LITERAL, "invalid address literal")


def _literal_key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv4Address):
        return f"[{ip}]"
    return f"[ipv6:{ip.compressed}]"


def _alabel(label: str) -> str:
    """One U-label to its A-label (IDNA 2008, UTS #46 non-transitional, STD3 rules).

    Raises:
        AddressError: ``SYNTAX`` if the label is not a valid internationalized label.
    """
    try:
        encoded = idna.encode(label, uts46=True, transitional=False, std3_rules=True)
    except (idna.IDNAError, UnicodeError) as exc:
        if len(label.lower().encode("punycode")) + 4 > MAX_LABEL_OCTETS:
            raise AddressError(AddressErrorKind.DOMAIN_TOO_LONG, "domain label too long") from exc
        raise _syntax("invalid internationalized domain label") from exc
    alabel = encoded.decode("ascii")
    if "." in alabel:
        # e.g. U+3002 IDEOGRAPHIC FULL STOP, which UTS #46 maps to ".".
        raise _syntax("label separator other than '.' in domain")
    return alabel


def _domain_to_ascii(domain: str, *, allow_trailing_dot: bool) -> str:
    """Validate an RFC 5321 Domain (U-labels allowed) and return its A-label form.

    ASCII labels keep their case; the trailing dot, if allowed and present, is kept.

    Raises:
        AddressError: ``SYNTAX`` or ``DOMAIN_TOO_LONG``.
    """
    body = domain[:-1] if allow_trailing_dot and domain.endswith(".") else domain
    if not body:
        raise _syntax("empty domain")
    labels = body.split(".")
    ascii_labels: list[str] = []
    for label in labels:
        if not label:
            raise _syntax("empty label in domain")
        if label.isascii():
            if len(label) > MAX_LABEL_OCTETS:
                raise AddressError(AddressErrorKind.DOMAIN_TOO_LONG, "domain label too long")
            if not _LDH_LABEL.fullmatch(label):
                raise _syntax("invalid character or hyphen in domain")
            ascii_labels.append(label)
        else:
            alabel = _alabel(label)
            if len(alabel) > MAX_LABEL_OCTETS:
                raise AddressError(AddressErrorKind.DOMAIN_TOO_LONG, "domain label too long")
            ascii_labels.append(alabel)
    if ascii_labels[-1].isdigit():
        # RFC 1123 §2.1, RFC 3696 §2: an IP address must be written as an address literal.
        raise _syntax("numeric top-level domain; use an address literal")
    ascii_body = ".".join(ascii_labels)
    if len(ascii_body) > MAX_DOMAIN_OCTETS:
        raise AddressError(AddressErrorKind.DOMAIN_TOO_LONG, "domain too long")
    return ascii_body + domain[len(body) :]


def _to_unicode_label(label: str) -> str:
    if label[:4].lower() != "xn--":
        return label
    try:
        return idna.decode(label)
    except (idna.IDNAError, UnicodeError):
        return label


def normalize_domain(domain: str) -> str:
    """Return the comparison key of a domain or address literal.

    The key is lowercase, in A-label form, without a trailing dot; address literals are
    normalised (``[001.2.3.4]`` -> ``[1.2.3.4]``, ``[IPv6:0::1]`` -> ``[ipv6:::1]``). Use it
    for configuration values (``mydestination``, ``relay_domains``) so they compare equal to
    :attr:`Address.domain_key`.

    Args:
        domain: a domain name (ASCII or U-labels, any case, optional trailing dot) or an
            address literal in brackets.

    Returns:
        The key, e.g. ``xn--bcher-kva.example``.

    Raises:
        AddressError: ``SYNTAX``, ``DOMAIN_TOO_LONG`` or ``BAD_ADDRESS_LITERAL``.

    See Also: RFC 5890 §2.3.2.1 (A-label), UTS #46 §4.
    """
    _check_characters(domain, utf8=True)
    if domain.startswith("["):
        return _literal_key(_parse_address_literal(domain))
    ascii_domain = _domain_to_ascii(domain, allow_trailing_dot=True)
    return ascii_domain.removesuffix(".").lower()


# --------------------------------------------------------------------------------------------
# Addresses


@dataclass(frozen=True, slots=True)
class NullPath:
    """The null reverse-path ``<>`` (RFC 5321 §4.5.5): bounces and other notifications."""

    @property
    def is_null(self) -> bool:
        """Always true."""
        return True

    @property
    def had_source_route(self) -> bool:
        """Always false."""
        return False

    def format(self, *, smtputf8: bool = True) -> str:
        """The empty string; the path on the wire is ``<>``."""
        return ""

    def __str__(self) -> str:
        return ""


NULL_PATH: Final = NullPath()
"""The one null path; every :class:`NullPath` compares equal to it."""


@dataclass(frozen=True, slots=True)
class Address:
    """An RFC 5321 mailbox: ``local-part@domain``, or a local part alone.

    Construct from untrusted text with :func:`parse_path` or :func:`parse_mailbox`. The
    constructor itself checks only what every address must satisfy (no control characters,
    a valid domain or address literal, UTF-8 allowed), not session rules such as SMTPUTF8
    or length limits.

    Equality and hashing use ``local_part`` and ``domain`` exactly as given; compare
    domains by :attr:`domain_key`.

    Attributes:
        local_part: the unquoted local part (``john doe`` for ``"john doe"@example.com``);
            case is significant (RFC 5321 §2.4).
        domain: the domain as given (case, U-labels and a trailing dot kept), an address
            literal such as ``[192.0.2.1]``, or ``""`` for a local-only address such as
            ``postmaster`` (RFC 5321 §4.1.1.3; Postfix appends ``$myorigin``).
        source_route: the at-domains of a source route (``@a,@b:user@d`` gives
            ``("a", "b")``). The route itself is ignored (RFC 5321 §C, §3.6.1); a policy
            refuses relaying for it like Postfix's ``allow_untrusted_routing = no``. Not
            part of equality.
    """

    local_part: str
    domain: str
    source_route: tuple[str, ...] = field(default=(), compare=False)
    _ascii_domain: str = field(init=False, repr=False, compare=False)
    _domain_key: str = field(init=False, repr=False, compare=False)
    #: ``str(self)``, made on first use ("" until then): a parsed path is remembered and
    #: used again (the SMTP session's memo), and its text is wanted several times a message
    _text: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_characters(self.local_part, utf8=True)
        if not self.domain:
            if not self.local_part:
                raise _syntax("empty address")
            ascii_domain = key = ""
        elif self.domain.startswith("["):
            _check_characters(self.domain, utf8=False)
            ascii_domain = self.domain
            key = _literal_key(_parse_address_literal(self.domain))
        else:
            _check_characters(self.domain, utf8=True)
            ascii_domain = _domain_to_ascii(self.domain, allow_trailing_dot=True)
            key = ascii_domain.removesuffix(".").lower()
        object.__setattr__(self, "_ascii_domain", ascii_domain)
        object.__setattr__(self, "_domain_key", key)

    @property
    def is_null(self) -> bool:
        """Always false; see :class:`NullPath`."""
        return False

    @property
    def had_source_route(self) -> bool:
        """True if the path carried a source route (``<@relay:user@domain>``)."""
        return bool(self.source_route)

    @property
    def domain_key(self) -> str:
        """The domain for comparisons and lookups; see :func:`normalize_domain`."""
        return self._domain_key

    @property
    def ascii_domain(self) -> str:
        """The domain with U-labels turned into A-labels (case and trailing dot kept).

        Use it towards a server that did not offer SMTPUTF8 and for DNS lookups.
        """
        return self._ascii_domain

    @property
    def utf8_domain(self) -> str:
        """The domain with valid A-labels turned into U-labels, for display and SMTPUTF8."""
        if not self.domain or self.domain.startswith("["):
            return self.domain
        return ".".join(_to_unicode_label(label) for label in self.domain.split("."))

    @property
    def ip_literal(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address of an address-literal domain (``user@[192.0.2.1]``), else ``None``."""
        if not self.domain.startswith("["):
            return None
        return _parse_address_literal(self.domain)

    @property
    def requires_smtputf8(self) -> bool:
        """True if the local part is non-ASCII, so only an SMTPUTF8 session can carry it.

        A non-ASCII domain alone does not count: it has an A-label form (RFC 6531 §3.2).
        """
        return not self.local_part.isascii()

    def format(self, *, smtputf8: bool = True) -> str:
        """Render the mailbox in canonical RFC 5321 form, without angle brackets.

        Args:
            smtputf8: false to render for a session without SMTPUTF8: the domain in A-label
                form, and an error for a non-ASCII local part.

        Returns:
            e.g. ``user@example.com``, ``"john doe"@example.com`` or ``postmaster``.

        Raises:
            AddressError: ``NON_ASCII_WITHOUT_SMTPUTF8`` if ``smtputf8`` is false and the
                local part is non-ASCII (RFC 6531 §3.2: no downgrade exists).
        """
        local = quote_local_part(self.local_part)
        if smtputf8:
            domain = self.domain
        else:
            if self.requires_smtputf8:
                raise AddressError(
                    AddressErrorKind.NON_ASCII_WITHOUT_SMTPUTF8,
                    "non-ASCII local part needs SMTPUTF8",
                )
            domain = self._ascii_domain
        return f"{local}@{domain}" if domain else local

    def __str__(self) -> str:
        text = self._text
        if not text:
            text = self.format()
            object.__setattr__(self, "_text", text)
        return text


ReversePath: TypeAlias = Address | NullPath
"""What ``MAIL FROM`` carries: a mailbox or the null path."""


# --------------------------------------------------------------------------------------------
# Paths


def _parse_route(route: str, *, strict: bool) -> tuple[str, ...]:
    """``@a,@b`` -> ``("a", "b")``; RFC 5321 §4.1.2 A-d-l."""
    domains: list[str] = []
    for at_domain in route.split(","):
        if not at_domain.startswith("@"):
            raise _syntax("malformed source route")
        domain = at_domain[1:]
        _domain_to_ascii(domain, allow_trailing_dot=not strict)
        domains.append(domain)
    return tuple(domains)


def _scan_quoted(text: str, start: int) -> tuple[str, int]:
    """Parse the Quoted-string at ``text[start] == '"'``; return (content, index after)."""
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(chars), i + 1
        if ch == "\\":
            if i + 1 >= len(text):
                break
            # quoted-pairSMTP = %d92 %d32-126 (controls were screened out already).
            chars.append(text[i + 1])
            i += 2
            continue
        chars.append(ch)
        i += 1
    raise _syntax("unterminated quoted string")


def _parse_mailbox_text(
    text: str, *, utf8: bool, strict: bool, enforce_length_limits: bool
) -> tuple[str, str]:
    """Parse an RFC 5321 Mailbox (or a local part alone) into (local part, domain)."""
    if text.startswith('"'):
        local_part, end = _scan_quoted(text, 0)
        raw_local = text[:end]
        rest = text[end:]
        if rest and not rest.startswith("@"):
            raise _syntax("junk after quoted local part")
        domain = rest[1:] if rest else None
    else:
        at = text.rfind("@")
        raw_local = text if at < 0 else text[:at]
        domain = None if at < 0 else text[at + 1 :]
        local_part = raw_local
        dot_string = _DOT_STRING_UTF8 if utf8 else _DOT_STRING_ASCII
        if not dot_string.fullmatch(local_part):
            loose = _LOOSE_LOCAL_UTF8 if utf8 else _LOOSE_LOCAL_ASCII
            if strict or not loose.fullmatch(local_part):
                raise _syntax("invalid local part")
    if enforce_length_limits and _octets(raw_local) > MAX_LOCAL_PART_OCTETS:
        raise AddressError(AddressErrorKind.LOCAL_PART_TOO_LONG, "local part too long")
    if domain is None:
        if not local_part:
            raise _syntax("empty local part without domain")
        if strict and local_part.lower() != "postmaster":
            raise _syntax("address without domain")
        return local_part, ""
    if domain.startswith("["):
        _parse_address_literal(domain)
    else:
        _domain_to_ascii(domain, allow_trailing_dot=not strict)
    return local_part, domain


def _parse_inner(inner: str, *, utf8: bool, strict: bool, enforce_length_limits: bool) -> Address:
    route: tuple[str, ...] = ()
    mailbox = inner
    if inner.startswith("@"):
        colon = inner.find(":")
        if colon < 0:
            raise _syntax("source route without ':'")
        route = _parse_route(inner[:colon], strict=strict)
        mailbox = inner[colon + 1 :]
    if not mailbox:
        raise _syntax("empty address")
    local_part, domain = _parse_mailbox_text(
        mailbox, utf8=utf8, strict=strict, enforce_length_limits=enforce_length_limits
    )
    if route and not domain:
        raise _syntax("source route without a domain in the mailbox")
    return Address(local_part, domain, route)


@overload
def parse_path(
    text: str,
    *,
    allow_null: Literal[False],
    smtputf8: bool = ...,
    strict: bool = ...,
    enforce_length_limits: bool = ...,
) -> Address: ...


@overload
def parse_path(
    text: str,
    *,
    allow_null: bool,
    smtputf8: bool = ...,
    strict: bool = ...,
    enforce_length_limits: bool = ...,
) -> Address | NullPath: ...


def parse_path(
    text: str,
    *,
    allow_null: bool,
    smtputf8: bool = False,
    strict: bool = False,
    enforce_length_limits: bool = True,
) -> Address | NullPath:
    """Parse the path of ``MAIL FROM:`` or ``RCPT TO:``.

    ``Path = "<" [ A-d-l ":" ] Mailbox ">"``. A source route is accepted and dropped
    (RFC 5321 §C); :attr:`Address.source_route` keeps it for the relay policy. Local parts are
    a Dot-string or a Quoted-string; domains are LDH names (U-labels with SMTPUTF8, RFC 6531
    §3.3) or ``[IPv4]`` / ``[IPv6:...]`` literals.

    Leniency like Postfix with ``strict_rfc821_envelopes = no`` (``strict=False``):

    * a bare address without ``<>`` (``MAIL FROM:user@example.com``);
    * a trailing dot on the domain (``user@example.com.``; ``domain_key`` drops it);
    * an unquoted local part that is atext, ``.`` and ``@`` in any order
      (``a..b@example.jp``, ``user@remote@local``: split at the last ``@``); it renders
      quoted;
    * a local-only address (no ``@domain``); strict mode allows only ``postmaster``
      (RFC 5321 §4.1.1.3).

    Postfix's non-strict mode also accepts RFC 822 comments and phrases in the envelope;
    this parser does not.

    Args:
        text: the path as received, e.g. ``<user@example.com>`` (see
            :func:`split_command_argument`).
        allow_null: true for ``MAIL FROM``, where ``<>`` is the null reverse-path.
        smtputf8: the transaction has ``SMTPUTF8`` (RFC 6531): UTF-8 allowed in the local
            part and domain.
        strict: Postfix's ``strict_rfc821_envelopes = yes``: RFC 5321 grammar only.
        enforce_length_limits: reject a local part over 64 octets or a path over 256 octets
            (RFC 5321 §4.5.3.1.1/3). Domain limits (255 octets, 63 per label) always apply.
            RFC 5321 §4.5.3.1 asks servers to avoid such limits where possible; Postfix
            does not enforce them, and long SRS/VERP senders exist.

    Returns:
        :data:`NULL_PATH` for ``<>`` (only with ``allow_null``), else an :class:`Address`.

    Raises:
        AddressError: ``SYNTAX``, ``TOO_LONG``, ``LOCAL_PART_TOO_LONG``,
            ``DOMAIN_TOO_LONG``, ``NON_ASCII_WITHOUT_SMTPUTF8`` or ``BAD_ADDRESS_LITERAL``.

    See Also: RFC 5321 §4.1.2, §4.1.3, §4.5.3.1; RFC 6531 §3.3; Postfix
    ``strict_rfc821_envelopes``, ``allow_untrusted_routing``.
    """
    _check_characters(text, utf8=smtputf8)
    if text.startswith("<"):
        if len(text) < 2 or not text.endswith(">"):
            raise _syntax("missing '>' after path")
        inner = text[1:-1]
        if not inner:
            if allow_null:
                return NULL_PATH
            raise _syntax("null path not allowed here")
    elif strict:
        raise _syntax("path must be enclosed in '<' and '>'")
    elif text.endswith(">"):
        raise _syntax("missing '<' before path")
    else:
        inner = text
    address = _parse_inner(
        inner, utf8=smtputf8, strict=strict, enforce_length_limits=enforce_length_limits
    )
    if enforce_length_limits and _octets(inner) + 2 > MAX_PATH_OCTETS:
        raise AddressError(AddressErrorKind.TOO_LONG, "path too long")
    return address


def parse_mailbox(
    text: str,
    *,
    smtputf8: bool = False,
    strict: bool = False,
    enforce_length_limits: bool = True,
) -> Address:
    """Parse a bare RFC 5321 Mailbox such as ``user@example.com`` (no brackets, no route).

    For addresses from configuration, alias tables and the command line. Takes the same
    leniency options as :func:`parse_path`.

    Args:
        text: the mailbox, e.g. ``"john doe"@example.com`` or ``postmaster``.
        smtputf8: allow UTF-8 (RFC 6531 §3.3).
        strict: RFC 5321 grammar only.
        enforce_length_limits: as for :func:`parse_path` (the local part limit applies).

    Returns:
        The :class:`Address`.

    Raises:
        AddressError: as :func:`parse_path`.

    See Also: RFC 5321 §4.1.2 (Mailbox).
    """
    _check_characters(text, utf8=smtputf8)
    if not text or text.startswith("@"):
        raise _syntax("not a mailbox")
    local_part, domain = _parse_mailbox_text(
        text, utf8=smtputf8, strict=strict, enforce_length_limits=enforce_length_limits
    )
    return Address(local_part, domain)


def _unquoted_index(text: str, start: int, stops: str) -> int:
    """The index of the first of ``stops`` in ``text`` from ``start`` that is outside a
    quoted string (where ``\\`` escapes the next character); ``len(text)`` if none is."""
    if text.find('"', start) < 0:  # no quoted string (the usual path): the first stop
        found = len(text)
        for stop in stops:
            index = text.find(stop, start, found)
            if index >= 0:
                found = index
        return found
    return _unquoted_scan(text, start, stops)


def _unquoted_scan(text: str, start: int, stops: str) -> int:
    """:func:`_unquoted_index` character by character (for a text with a quoted string)."""
    in_quote = False
    i = start
    while i < len(text):
        ch = text[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch in stops:
            return i
        i += 1
    return len(text)


def split_command_argument(arg: str) -> tuple[str, str]:
    """Split the argument of ``MAIL FROM:`` / ``RCPT TO:`` into the path and the parameters.

    Leading spaces and tabs are skipped (``MAIL FROM: <a@b>`` is common and Postfix accepts
    it). A path in ``<...>`` ends at the first ``>`` outside a quoted string, so
    ``<"a>b c"@example.com>`` is one path; a bare path ends at the first space or tab outside
    a quoted string.

    Args:
        arg: everything after the colon, without CRLF, e.g. ``<a@b> SIZE=100 BODY=8BITMIME``.

    Returns:
        ``(path_text, params_text)``, e.g. ``("<a@b>", "SIZE=100 BODY=8BITMIME")``; the
        parameters are stripped of surrounding blanks and may be empty.

    Raises:
        AddressError: ``SYNTAX`` for an empty argument, a ``<`` without ``>``, or text glued
            to the ``>``.

    See Also: RFC 5321 §4.1.1.2, §4.1.1.3; Postfix ``smtpd`` argument extraction.
    """
    text = arg.lstrip(" \t")
    if not text:
        raise _syntax("missing address")
    if text[0] == "<":
        end = _unquoted_index(text, 1, ">")
        if end == len(text):
            raise _syntax("missing '>' after path")
        end += 1
    else:
        end = _unquoted_index(text, 0, " \t")
    path, rest = text[:end], text[end:]
    if rest and rest[0] not in " \t":
        raise _syntax("junk after path")
    return path, rest.strip(" \t")


def parse_esmtp_params(text: str, *, smtputf8: bool = False) -> dict[str, str | None]:
    """Parse ``Mail-parameters`` / ``Rcpt-parameters``.

    ``esmtp-param = esmtp-keyword ["=" esmtp-value]``, separated by spaces (tabs accepted).
    Keywords are returned uppercased, in the order given; values are returned raw (decode
    ENVID and ORCPT with :func:`decode_xtext`).

    Args:
        text: the parameter text, e.g. ``SIZE=1000 BODY=8BITMIME SMTPUTF8``.
        smtputf8: the transaction already has SMTPUTF8 (for ``RCPT``). UTF-8 in values is
            allowed then, or when ``text`` itself contains ``SMTPUTF8`` (RFC 6531 §3.3:
            esmtp-value =/ UTF8-non-ascii).

    Returns:
        ``{"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": None}``.

    Raises:
        AddressError: ``PARAMETER_SYNTAX`` for a bad keyword or value, or a keyword given
            twice (RFC 5321 §4.1.2: each parameter at most once).

    See Also: RFC 5321 §4.1.2 (esmtp-param), RFC 6531 §3.3.
    """
    stripped = text.strip(" \t")
    if not stripped:
        return {}
    tokens = _PARAM_SEPARATOR.split(stripped)
    params: dict[str, str | None] = {}
    for token in tokens:
        keyword, equals, value = token.partition("=")
        if not _ESMTP_KEYWORD.fullmatch(keyword):
            raise AddressError(AddressErrorKind.PARAMETER_SYNTAX, "invalid ESMTP keyword")
        key = keyword.upper()
        if key in params:
            raise AddressError(AddressErrorKind.PARAMETER_SYNTAX, f"duplicate parameter {key}")
        if equals:
            _check_esmtp_value(value)
            params[key] = value
        else:
            params[key] = None
    if not (smtputf8 or "SMTPUTF8" in params):
        for value in params.values():
            if value is not None and not value.isascii():
                raise AddressError(
                    AddressErrorKind.NON_ASCII_WITHOUT_SMTPUTF8,
                    "non-ASCII parameter value without SMTPUTF8",
                )
    return params


def _check_esmtp_value(value: str) -> None:
    # esmtp-value = 1*(%d33-60 / %d62-126), =/ UTF8-non-ascii (RFC 6531 §3.3).
    if not value:
        raise AddressError(AddressErrorKind.PARAMETER_SYNTAX, "empty ESMTP parameter value")
    for ch in value:
        if ch in "= " or _is_bad_unicode(ch):
            raise AddressError(AddressErrorKind.PARAMETER_SYNTAX, "invalid ESMTP parameter value")


# --------------------------------------------------------------------------------------------
# xtext (RFC 3461 §4)


def decode_xtext(text: str) -> str:
    """Decode an xtext value (ENVID, the address of ORCPT).

    ``xtext = *( xchar / hexchar )``: xchar is ``!`` to ``~`` except ``+`` and ``=``;
    hexchar is ``+`` and two hex digits (uppercase in the RFC; lowercase is accepted).
    The decoded octets must be UTF-8. RFC 6533's ``utf-8-addr-xtext`` (``\\x{...}``) is not
    decoded here.

    Args:
        text: e.g. ``rfc822;user+2Bext@example.com`` after the ``;``: ``user+2Bext@...``.

    Returns:
        The decoded text, e.g. ``user+ext@example.com``.

    Raises:
        AddressError: ``PARAMETER_SYNTAX`` for a character outside xtext, a bad ``+XX``, or
            octets that are not UTF-8.

    See Also: RFC 3461 §4.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "+":
            digits = text[i + 1 : i + 3]
            if len(digits) != 2 or not set(digits) <= _HEX_DIGITS:
                raise AddressError(AddressErrorKind.PARAMETER_SYNTAX, "bad xtext hex escape")
            out.append(int(digits, 16))
            i += 3
            continue
        if not ("!" <= ch <= "~") or ch == "=":
            raise AddressError(AddressErrorKind.PARAMETER_SYNTAX, "invalid character in xtext")
        out.append(ord(ch))
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AddressError(AddressErrorKind.PARAMETER_SYNTAX, "xtext is not UTF-8") from exc


def encode_xtext(text: str) -> str:
    """Encode text as xtext: ``+``, ``=``, blanks, controls and non-ASCII become ``+XX``.

    Non-ASCII is encoded octet by octet from UTF-8.

    Args:
        text: e.g. ``user+ext@example.com``.

    Returns:
        e.g. ``user+2Bext@example.com``.

    See Also: RFC 3461 §4.
    """
    parts: list[str] = []
    for octet in text.encode("utf-8", "surrogatepass"):
        if 33 <= octet <= 126 and octet not in (0x2B, 0x3D):
            parts.append(chr(octet))
        else:
            parts.append(f"+{octet:02X}")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Relay and policy helpers (Postfix semantics)


def has_routing_characters(address: Address | NullPath) -> bool:
    """True if the local part contains ``@``, ``%`` or ``!``, quoted or not.

    Such addresses (``user%remote@local``, ``"user@remote"@local``, ``user@remote@local``,
    ``remote!user@local``) may be rewritten into another destination by a later hop or by
    Postfix-style ``allow_percent_hack`` / ``swap_bangpath`` / ``resolve_dequoted_address``
    rewriting, so a policy refuses them from untrusted clients (Postfix's
    ``allow_untrusted_routing = no`` and ``reject_unauth_destination``). Combine with
    :attr:`Address.had_source_route`.

    Args:
        address: a parsed path.

    Returns:
        True for a local part with routing characters; false for :data:`NULL_PATH`.
    """
    if isinstance(address, NullPath):
        return False
    return any(ch in "@%!" for ch in address.local_part)


def _loose_key(domain: str) -> str:
    """Like :func:`normalize_domain`, but never raises (bad input keeps a lowercase form)."""
    try:
        return normalize_domain(domain)
    except AddressError:
        return domain.strip().removesuffix(".").lower()


def domain_matches(
    domain: str, patterns: Iterable[str], *, parent_matches_subdomains: bool = False
) -> bool:
    """Match a domain against a Postfix domain list (``mydestination``, ``relay_domains``).

    Each pattern is a name (case-insensitive, trailing dot and IDNA form ignored) or
    ``.name``, which matches strict subdomains only. With ``parent_matches_subdomains`` a
    bare ``example.com`` also matches its subdomains; Postfix does that for the features
    named in ``parent_domain_matches_subdomains`` — for ``relay_domains`` only with
    ``compatibility_level`` below 2 (Postfix 3.0 and later default it off). A pattern
    ``!name`` excludes; the first pattern that matches decides. Address literals match
    exactly. ``type:table`` and ``/file`` patterns are the configuration's job to expand.

    Args:
        domain: the domain to test, e.g. :attr:`Address.domain`; ``""`` never matches.
        patterns: the list, e.g. ``["example.com", ".example.net", "!bad.example.org"]``.
        parent_matches_subdomains: Postfix ``parent_domain_matches_subdomains`` for this
            list.

    Returns:
        True if the domain matches.

    See Also: Postfix ``match_hostname()``, ``parent_domain_matches_subdomains``.
    """
    if not domain.strip():
        return False
    key = _loose_key(domain)
    is_literal = key.startswith("[")
    for raw in patterns:
        pattern = raw.strip()
        negate = pattern.startswith("!")
        if negate:
            pattern = pattern[1:].strip()
        if not pattern:
            continue
        if pattern.startswith(".") and not is_literal:
            matched = key.endswith("." + _loose_key(pattern[1:]))
        else:
            pattern_key = _loose_key(pattern)
            matched = key == pattern_key or (
                parent_matches_subdomains and not is_literal and key.endswith("." + pattern_key)
            )
        if matched:
            return not negate
    return False


def _valid_hostname(name: str) -> bool:
    """Postfix ``valid_hostname()``: LDH and ``_``, labels <= 63, <= 255, not all-numeric."""
    if not name or len(name) > MAX_DOMAIN_OCTETS or not name.isascii():
        return False
    labels = name.split(".")
    if not all(
        len(label) <= MAX_LABEL_OCTETS and _HOSTNAME_LABEL.fullmatch(label) for label in labels
    ):
        return False
    return not all(label.isdigit() for label in labels)


def _strip_one_dot(name: str) -> str:
    """Postfix ``dup_if_truncate()``: drop a trailing dot, but not from ``..``."""
    if name.endswith(".") and not name.endswith(".."):
        return name[:-1]
    return name


def _valid_literal(text: str) -> bool:
    try:
        _parse_address_literal(text)
    except AddressError:
        return False
    return True


def is_valid_hostname(text: str) -> bool:
    """Check a HELO/EHLO argument like Postfix's ``reject_invalid_helo_hostname``.

    Accepted: a hostname (letters, digits, hyphens inside labels, and ``_``, which
    Postfix tolerates for Windows hosts; labels up to 63 octets; up to 255; not all-numeric;
    one trailing dot ignored), a bare IPv4/IPv6 address (Postfix back compatibility), or an
    address literal ``[192.0.2.1]`` / ``[IPv6:2001:db8::1]``. ASCII only: Postfix does not
    accept U-labels in HELO.

    Args:
        text: the HELO/EHLO argument.

    Returns:
        True if acceptable.

    See Also: RFC 5321 §4.1.1.1 (ehlo); Postfix ``reject_invalid_helo_hostname``.
    """
    if text.startswith("["):
        return _valid_literal(text)
    name = _strip_one_dot(text)
    if _valid_hostname(name):
        return True
    if name.isascii() and name and set(name) <= _IPV6_CHARS:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True
    return False


def is_fqdn(domain: str, *, smtputf8: bool = False, allow_address_literal: bool = True) -> bool:
    """Check a domain like Postfix's ``reject_non_fqdn_sender/recipient/helo_hostname``.

    Fully qualified means: valid hostname syntax (see :func:`is_valid_hostname`) and at least
    one dot, after dropping one trailing dot. U-labels count when ``smtputf8`` is true (they
    are checked in A-label form). An address literal passes, as in Postfix, unless
    ``allow_address_literal`` is false; ``""`` (a local-only address) fails.

    Args:
        domain: e.g. :attr:`Address.domain` or a HELO name.
        smtputf8: accept U-labels.
        allow_address_literal: treat a valid ``[...]`` literal as qualified.

    Returns:
        True if fully qualified.

    See Also: Postfix ``reject_non_fqdn_recipient``, ``reject_non_fqdn_helo_hostname``.
    """
    if domain.startswith("["):
        return allow_address_literal and _valid_literal(domain)
    name = _strip_one_dot(domain)
    if not name.isascii():
        if not smtputf8:
            return False
        try:
            name = ".".join(
                label if label.isascii() else _alabel(label) for label in name.split(".")
            )
        except AddressError:
            return False
    return "." in name and _valid_hostname(name)


def split_extension(local_part: str, delimiters: str) -> tuple[str, str | None]:
    """Split an address extension off a local part, like Postfix's ``recipient_delimiter``.

    The first occurrence of any delimiter character splits (``user+foo-bar`` with ``+-``
    gives ``("user", "foo-bar")``). Not split, as in Postfix ``split_addr()``: a local part
    that starts with a delimiter, ``postmaster`` and ``mailer-daemon`` (any case), and, when
    ``-`` is a delimiter, ``owner-*`` and ``*-request`` (``owner_request_special = yes``).
    Postfix also never splits ``$double_bounce_sender``; callers handle that name.

    Args:
        local_part: the unquoted local part, e.g. ``user+tag``.
        delimiters: the ``recipient_delimiter`` characters, e.g. ``"+"`` or ``"+-"``;
            ``""`` disables splitting.

    Returns:
        ``(base, extension)``; the extension is ``None`` when nothing was split and ``""``
        for a trailing delimiter (``user+``).

    See Also: Postfix ``recipient_delimiter``, ``owner_request_special``.
    """
    if not delimiters:
        return local_part, None
    folded = local_part.lower()
    if folded in ("postmaster", "mailer-daemon"):
        return local_part, None
    if "-" in delimiters and (
        folded.startswith("owner-") or (len(folded) > 8 and folded.endswith("-request"))
    ):
        return local_part, None
    for index, ch in enumerate(local_part):
        if ch in delimiters:
            if index == 0:
                return local_part, None
            return local_part[:index], local_part[index + 1 :]
    return local_part, None


# --------------------------------------------------------------------------------------------
# RFC 5322 header addresses

_HEADER_REGISTRY: Final = HeaderRegistry()
# Tolerated: a bare local part (``To: alice``), which sendmail -t completes with $myorigin.
_NO_DOMAIN_DEFECT: Final = "local part with no domain"


def addresses_from_headers(values: Iterable[str]) -> list[Address]:
    """Extract the mailboxes from address header values (``To``, ``Cc``, ``Bcc``...).

    Parsing is done by the standard library (:mod:`email.headerregistry`): display names,
    comments, groups (``undisclosed-recipients:;`` gives nothing), obsolete routes and
    folding are handled there. Every mailbox is then checked as an :class:`Address` (UTF-8
    allowed, RFC 6532). A value with invalid syntax is an error rather than a guess: the
    caller (``sendmail -t``) must not drop or invent a recipient.

    Args:
        values: header field bodies, e.g. ``['Alice <a@example.com>, b@example.org']``;
            folded values (CRLF + blank) are unfolded.

    Returns:
        The addresses in order, duplicates kept. A bare local part gives an address with
        ``domain == ""``.

    Raises:
        AddressError: ``SYNTAX`` (or another kind from :class:`Address`) for a value that
            does not parse cleanly.

    See Also: RFC 5322 §3.4 (address-list), RFC 6532 §3.2.
    """
    result: list[Address] = []
    for value in values:
        unfolded = _FOLDING.sub("", value)
        if "\r" in unfolded or "\n" in unfolded:
            raise _syntax("bare CR or LF in header value")
        try:
            header = _HEADER_REGISTRY("To", unfolded)
            if not isinstance(header, AddressHeader):  # pragma: no cover - "To" always is
                raise _syntax("not an address header")
            mailboxes = [(item.username, item.domain) for item in header.addresses]
        except (ValueError, IndexError, TypeError, AttributeError) as exc:
            # The stdlib parser raises these on some malformed input (e.g. "a@").
            raise _syntax("malformed address header") from exc
        for defect in header.defects:
            if isinstance(defect, InvalidHeaderDefect) and _NO_DOMAIN_DEFECT not in str(defect):
                raise _syntax("malformed address header")
        for username, domain in mailboxes:
            if not username:
                raise _syntax("empty address in header")
            result.append(Address(username, domain))
    return result

"""The envelope of a queued message: sender, recipients with per-recipient state, and the
facts about its reception that the queue manager, DSNs (RFC 3464) and logging need.

Envelopes are immutable values; update one with :func:`dataclasses.replace` (or
:meth:`Envelope.replace_recipient`) and store it with ``Spool.update_envelope``.

On disk an envelope is one JSON object, version ``"v": 1``; ``docs/spool.md`` is the
reference for the format. :meth:`Envelope.to_json` and :meth:`Envelope.from_json` convert,
and both sides validate: a bad field raises :class:`EnvelopeError` (a ``ValueError``)
whose ``field`` names it, e.g. ``recipients[2].notify``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from roost.queue.queue_id import is_queue_id

__all__ = [
    "ENVELOPE_VERSION",
    "BodyType",
    "Envelope",
    "EnvelopeError",
    "Notify",
    "Recipient",
    "RecipientState",
    "Ret",
    "WithProtocol",
]

#: The ``"v"`` written into every envelope. Readers reject other versions.
ENVELOPE_VERSION: Final = 1
#: One encoder for every envelope (``json.dumps`` with options builds one per call).
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _c_encoder() -> Callable[[object], str] | None:
    """The C encoder behind :data:`_ENCODER`, made once: ``JSONEncoder.encode`` makes a new
    one per call, half the cost of encoding an envelope. The same text (its arguments are
    what ``encode`` passes), without the circular-reference check: an envelope's document
    is a fresh tree. None where CPython's ``_json`` is missing."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    encoder = make(
        None,  # markers: no circular-reference check
        _ENCODER.default,
        json.encoder.encode_basestring,  # ensure_ascii=False
        None,  # indent
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )

    def encode(document: object) -> str:
        return "".join(encoder(document, 0))

    return encode


_ENCODE: Final = _c_encoder() or _ENCODER.encode


class EnvelopeError(ValueError):
    """An envelope field has a bad value.

    Attributes:
        field: the field's path in the JSON object, e.g. ``arrival_time`` or
            ``recipients[0].dsn_status``; empty when the whole document is bad.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class Notify(enum.StrEnum):
    """When the sender wants a DSN for a recipient (RFC 3461 §4.1, ``NOTIFY=``)."""

    NEVER = "NEVER"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


class Ret(enum.StrEnum):
    """How much of the message a DSN should return (RFC 3461 §4.3, ``RET=``)."""

    FULL = "FULL"
    HDRS = "HDRS"


class BodyType(enum.StrEnum):
    """The ``BODY=`` the client declared on MAIL FROM (RFC 6152 §2)."""

    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"


class WithProtocol(enum.StrEnum):
    """How the message was received: the ``with`` value of its Received header.

    See Also: RFC 5321 §4.4 and the RFC 3848 registry (``A``: authenticated,
    ``S``: over TLS). ``LOCAL`` marks mail submitted by sendmail(1) through ``maildrop/``.
    """

    SMTP = "SMTP"
    ESMTP = "ESMTP"
    ESMTPA = "ESMTPA"
    ESMTPS = "ESMTPS"
    ESMTPSA = "ESMTPSA"
    LOCAL = "LOCAL"


class RecipientState(enum.StrEnum):
    """Where one recipient stands; every recipient ends delivered or bounced."""

    PENDING = "pending"
    """Not tried yet."""
    DELIVERED = "delivered"
    """Final: delivered (or relayed) successfully."""
    BOUNCED = "bounced"
    """Final: failed permanently; a DSN goes (or went) to the envelope sender."""
    DEFERRED = "deferred"
    """Failed temporarily; retried at ``next_try``."""


_DSN_STATUS_RE: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_ADDR_TYPE_RE: Final = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


def _check_text(field: str, value: object, *, allow_empty: bool = True) -> None:
    """Check a one-line text field: a str, valid Unicode, no control characters."""
    if not isinstance(value, str):
        raise EnvelopeError(field, f"must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise EnvelopeError(field, "must not be empty")
    if value.isascii() and value.isprintable():
        return  # the usual case, checked at C speed: no control characters, no surrogates
    if _CONTROL_RE.search(value):
        raise EnvelopeError(field, "must not contain control characters (CR, LF, NUL...)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EnvelopeError(field, "is not valid Unicode (lone surrogate)") from None


def _check_optional_text(field: str, value: object) -> None:
    if value is not None:
        _check_text(field, value)


def _check_time(field: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnvelopeError(field, f"must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise EnvelopeError(field, f"must be a finite number of seconds >= 0, got {value!r}")


def _check_count(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EnvelopeError(field, f"must be an integer, got {type(value).__name__}")
    if value < 0:
        raise EnvelopeError(field, f"must be >= 0, got {value}")


def _check_enum(field: str, value: object, kind: type[enum.StrEnum], optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, kind):
        raise EnvelopeError(field, f"must be a {kind.__name__}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Recipient:
    """One envelope recipient and its delivery state.

    Attributes:
        address: the RFC 5321 forward-path without angle brackets, e.g.
            ``user@example.org`` (UTF-8 allowed when the message is SMTPUTF8).
        orcpt: the original recipient as ``addr-type;address`` with xtext decoded, e.g.
            ``rfc822;user@example.org`` (RFC 3461 §4.2 ``ORCPT=``), or None.
        notify: the ``NOTIFY=`` values (RFC 3461 §4.1), or None when not given (the
            default then is FAILURE, and DELAY at the server's choice). NEVER stands alone.
        state: where delivery stands.
        reason: the last delivery attempt's result in words, for logs, ``mailq`` and DSNs.
        next_try: when to try again, seconds since the epoch; None when not scheduled.
        attempts: delivery attempts made so far.
        dsn_status: the RFC 3463 enhanced status of the last attempt, e.g. ``4.4.1``.

    Raises:
        EnvelopeError: a field has a bad value; ``field`` names it.
    """

    address: str
    orcpt: str | None = None
    notify: tuple[Notify, ...] | None = None
    state: RecipientState = RecipientState.PENDING
    reason: str | None = None
    next_try: float | None = None
    attempts: int = 0
    dsn_status: str | None = None

    def __post_init__(self) -> None:
        _check_text("address", self.address, allow_empty=False)
        if self.orcpt is not None:
            _check_text("orcpt", self.orcpt)
            addr_type, sep, address = self.orcpt.partition(";")
            if not sep or not _ADDR_TYPE_RE.fullmatch(addr_type) or not address:
                raise EnvelopeError("orcpt", f"must be 'addr-type;address', got {self.orcpt!r}")
        if self.notify is not None:
            if not isinstance(self.notify, tuple) or not self.notify:
                raise EnvelopeError("notify", "must be a non-empty tuple of Notify, or None")
            for value in self.notify:
                _check_enum("notify", value, Notify, optional=False)
            if len(set(self.notify)) != len(self.notify):
                raise EnvelopeError("notify", "lists a value twice")
            if Notify.NEVER in self.notify and len(self.notify) > 1:
                raise EnvelopeError("notify", "NEVER cannot be combined with other values")
        _check_enum("state", self.state, RecipientState, optional=False)
        _check_optional_text("reason", self.reason)
        _check_time("next_try", self.next_try, optional=True)
        _check_count("attempts", self.attempts)
        if self.dsn_status is not None and (
            not isinstance(self.dsn_status, str) or not _DSN_STATUS_RE.fullmatch(self.dsn_status)
        ):
            raise EnvelopeError("dsn_status", f"must be like '5.1.1', got {self.dsn_status!r}")

    @property
    def is_final(self) -> bool:
        """True once the recipient is delivered or bounced: nothing more to do for it."""
        return self.state in (RecipientState.DELIVERED, RecipientState.BOUNCED)


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything about a queued message except its content.

    Attributes:
        envelope_sender: the RFC 5321 reverse-path without angle brackets; ``""`` is the
            null sender ``<>`` (bounces, RFC 5321 §4.5.5).
        recipients: at least one, in RCPT TO order.
        arrival_time: when the message was received, seconds since the epoch.
        protocol: how it was received (the Received header's ``with``).
        queue_id: the message's queue ID; ``""`` until ``MessageWriter.commit`` sets it.
        size: the content's size in bytes; ``MessageWriter.commit`` sets it.
        body_type: ``BODY=`` from MAIL FROM (RFC 6152), None when not declared.
        smtputf8: the client gave ``SMTPUTF8`` on MAIL FROM (RFC 6531 §3.4).
        ret: ``RET=`` from MAIL FROM (RFC 3461 §4.3), or None.
        envid: ``ENVID=`` from MAIL FROM with xtext decoded (RFC 3461 §4.4), or None.
        client_address: the SMTP client's IP address (Postfix ``client_address``), None
            for local submission.
        client_hostname: the client's verified reverse DNS name (Postfix ``client_name``),
            None when unknown.
        helo_name: the EHLO/HELO argument (Postfix ``helo_name``), or None.
        sasl_method: the SASL mechanism of a successful AUTH (Postfix ``sasl_method``).
        sasl_username: the authenticated user name (Postfix ``sasl_username``).
        delay_warned: a "delayed" DSN was sent (``delay_warning_time``); sent only once.

    Raises:
        EnvelopeError: a field has a bad value; ``field`` names it.
    """

    envelope_sender: str
    recipients: tuple[Recipient, ...]
    arrival_time: float
    protocol: WithProtocol
    queue_id: str = ""
    size: int = 0
    body_type: BodyType | None = None
    smtputf8: bool = False
    ret: Ret | None = None
    envid: str | None = None
    client_address: str | None = None
    client_hostname: str | None = None
    helo_name: str | None = None
    sasl_method: str | None = None
    sasl_username: str | None = None
    delay_warned: bool = False

    def __post_init__(self) -> None:
        _check_text("envelope_sender", self.envelope_sender)
        if not isinstance(self.recipients, tuple) or not self.recipients:
            raise EnvelopeError("recipients", "must be a non-empty tuple of Recipient")
        for index, recipient in enumerate(self.recipients):
            if not isinstance(recipient, Recipient):
                raise EnvelopeError(f"recipients[{index}]", "must be a Recipient")
        _check_time("arrival_time", self.arrival_time, optional=False)
        _check_enum("protocol", self.protocol, WithProtocol, optional=False)
        if not isinstance(self.queue_id, str) or (self.queue_id and not is_queue_id(self.queue_id)):
            raise EnvelopeError("queue_id", f"is not a queue ID: {self.queue_id!r}")
        _check_count("size", self.size)
        _check_enum("body_type", self.body_type, BodyType, optional=True)
        if not isinstance(self.smtputf8, bool):
            raise EnvelopeError("smtputf8", "must be true or false")
        _check_enum("ret", self.ret, Ret, optional=True)
        if self.envid is not None:
            _check_text("envid", self.envid)
            if not self.envid.isascii() or len(self.envid) > 100:
                raise EnvelopeError("envid", "must be at most 100 ASCII characters")
        if self.client_address is not None:
            _check_text("client_address", self.client_address)
            if not _is_ip_address(self.client_address):
                raise EnvelopeError(
                    "client_address", f"is not an IP address: {self.client_address!r}"
                )
        for name in ("client_hostname", "helo_name", "sasl_method", "sasl_username"):
            _check_optional_text(name, getattr(self, name))
        if not isinstance(self.delay_warned, bool):
            raise EnvelopeError("delay_warned", "must be true or false")

    def replace_recipient(self, index: int, recipient: Recipient) -> Envelope:
        """Return a copy with ``recipients[index]`` replaced.

        Raises:
            IndexError: there is no recipient ``index``.
        """
        if not isinstance(recipient, Recipient):
            raise EnvelopeError(f"recipients[{index}]", "must be a Recipient")
        recipients = list(self.recipients)
        recipients[index] = recipient
        # every other field is this (validated) envelope's: copy them without checking
        # them again (the queue manager replaces a recipient per delivery result)
        copy = object.__new__(Envelope)
        for name in _ENVELOPE_FIELDS:
            object.__setattr__(copy, name, getattr(self, name))
        object.__setattr__(copy, "recipients", tuple(recipients))
        return copy

    @property
    def is_done(self) -> bool:
        """True when every recipient is delivered or bounced: the message can go."""
        return all(r.is_final for r in self.recipients)

    def to_json(self) -> str:
        """Render as the on-disk JSON object (one line, UTF-8 text, ``"v": 1``).

        See Also: docs/spool.md, "Envelope file".
        """
        document = {
            "v": ENVELOPE_VERSION,
            "queue_id": self.queue_id,
            "envelope_sender": self.envelope_sender,
            "recipients": [_recipient_to_dict(r) for r in self.recipients],
            "arrival_time": self.arrival_time,
            "size": self.size,
            "protocol": self.protocol.value,
            "body_type": None if self.body_type is None else self.body_type.value,
            "smtputf8": self.smtputf8,
            "ret": None if self.ret is None else self.ret.value,
            "envid": self.envid,
            "client_address": self.client_address,
            "client_hostname": self.client_hostname,
            "helo_name": self.helo_name,
            "sasl_method": self.sasl_method,
            "sasl_username": self.sasl_username,
        }
        if self.delay_warned:  # optional: older readers ignore it
            document["delay_warned"] = True
        return _ENCODE(document)

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        """Parse and validate an envelope written by :meth:`to_json`.

        Unknown keys are ignored, so a later version can add optional fields without
        changing ``"v"``.

        Args:
            text: the JSON document; bytes must be UTF-8.

        Raises:
            EnvelopeError: not JSON, not version 1, a missing field, a duplicate key, or
                a bad value; ``field`` names the culprit.
        """
        try:
            if not isinstance(text, str):
                text = text.decode("utf-8")
            document = _DECODER.decode(text)
        except EnvelopeError:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeError("", f"envelope is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise EnvelopeError("", "envelope is not a JSON object")
        envelope = _envelope_fast(document)
        if envelope is not None:
            return envelope
        return _envelope_from_fields(document)


def _envelope_from_fields(document: dict[str, object]) -> Envelope:
    """:meth:`Envelope.from_json` field by field, for any document; an error names the
    field at fault (the ``field`` of :class:`EnvelopeError`)."""
    fields = _Fields(document, "")
    version = fields.required("v", int)
    if version != ENVELOPE_VERSION:
        raise EnvelopeError("v", f"unsupported envelope version {version!r}")
    raw_recipients = fields.required("recipients", list)
    recipients = []
    for index, item in enumerate(raw_recipients):
        path = f"recipients[{index}]"
        if not isinstance(item, dict):
            raise EnvelopeError(path, "must be a JSON object")
        recipients.append(_recipient_from_dict(_Fields(item, path + ".")))
    return fields.build(
        Envelope,
        envelope_sender=fields.required("envelope_sender", str),
        recipients=tuple(recipients),
        arrival_time=fields.required("arrival_time", float),
        protocol=fields.enum("protocol", WithProtocol, optional=False),
        queue_id=fields.required("queue_id", str),
        size=fields.required("size", int),
        body_type=fields.enum("body_type", BodyType, optional=True),
        smtputf8=fields.required("smtputf8", bool),
        ret=fields.enum("ret", Ret, optional=True),
        envid=fields.optional("envid", str),
        client_address=fields.optional("client_address", str),
        client_hostname=fields.optional("client_hostname", str),
        helo_name=fields.optional("helo_name", str),
        sasl_method=fields.optional("sasl_method", str),
        sasl_username=fields.optional("sasl_username", str),
        delay_warned=fields.optional("delay_warned", bool) or False,
    )


def _number(value: object) -> float | None:
    """A JSON number as a float; None for anything else (booleans included)."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[return-value]  # checked
    if kind is int:
        return float(value)  # type: ignore[arg-type]  # checked
    return None


def _text_or_none(value: object) -> bool:
    return value is None or type(value) is str


_RECIPIENT_STATES: Final = {state.value: state for state in RecipientState}
_PROTOCOLS: Final = {protocol.value: protocol for protocol in WithProtocol}


def _envelope_fast(document: dict[str, object]) -> Envelope | None:
    """:meth:`Envelope.from_json`'s reading of a document in the usual shape (what
    :meth:`Envelope.to_json` writes, without NOTIFY, BODY or RET), without its per-field
    helpers: the queue manager reads one envelope per delivery. None when anything is
    unusual or wrong: the caller then reads field by field, which names the culprit. The
    dataclasses' own checks run either way."""
    get = document.get
    recipients_data = get("recipients")
    arrival_time = _number(get("arrival_time"))
    protocol_name = get("protocol")
    protocol = _PROTOCOLS.get(protocol_name) if type(protocol_name) is str else None
    sender, queue_id, size, smtputf8 = (
        get("envelope_sender"),
        get("queue_id"),
        get("size"),
        get("smtputf8"),
    )
    delay_warned = get("delay_warned")
    envid, client_address = get("envid"), get("client_address")
    client_hostname, helo_name = get("client_hostname"), get("helo_name")
    sasl_method, sasl_username = get("sasl_method"), get("sasl_username")
    if (
        type(get("v")) is not int
        or get("v") != ENVELOPE_VERSION
        or type(recipients_data) is not list
        or arrival_time is None
        or protocol is None
        or type(sender) is not str
        or type(queue_id) is not str
        or type(size) is not int
        or type(smtputf8) is not bool
        or get("body_type") is not None
        or get("ret") is not None
        or not (delay_warned is None or type(delay_warned) is bool)
        or not (
            _text_or_none(envid)
            and _text_or_none(client_address)
            and _text_or_none(client_hostname)
            and _text_or_none(helo_name)
            and _text_or_none(sasl_method)
            and _text_or_none(sasl_username)
        )
    ):
        return None
    recipients: list[Recipient] = []
    for item in recipients_data:
        if type(item) is not dict:
            return None
        address, orcpt, reason = item.get("address"), item.get("orcpt"), item.get("reason")
        attempts, dsn_status = item.get("attempts"), item.get("dsn_status")
        state_name = item.get("state")
        state = _RECIPIENT_STATES.get(state_name) if type(state_name) is str else None
        next_try = item.get("next_try")
        if next_try is not None:
            next_try = _number(next_try)
            if next_try is None:
                return None
        if (
            type(address) is not str
            or state is None
            or type(attempts) is not int
            or item.get("notify") is not None
            or not (_text_or_none(orcpt) and _text_or_none(reason) and _text_or_none(dsn_status))
        ):
            return None
        try:
            recipients.append(
                Recipient(
                    address,
                    orcpt,
                    None,
                    state,
                    reason,
                    next_try,
                    attempts,
                    dsn_status,
                )
            )
        except EnvelopeError:
            return None
    try:
        return Envelope(
            sender,
            tuple(recipients),
            arrival_time,
            protocol,
            queue_id,
            size,
            None,
            smtputf8,
            None,
            envid,  # type: ignore[arg-type]  # str or None, checked
            client_address,  # type: ignore[arg-type]
            client_hostname,  # type: ignore[arg-type]
            helo_name,  # type: ignore[arg-type]
            sasl_method,  # type: ignore[arg-type]
            sasl_username,  # type: ignore[arg-type]
            bool(delay_warned),
        )
    except EnvelopeError:
        return None


#: The field names of :class:`Envelope`, for :meth:`Envelope.replace_recipient`.
_ENVELOPE_FIELDS: Final = tuple(field.name for field in dataclasses.fields(Envelope))


@functools.lru_cache(maxsize=1024)
def _is_ip_address(text: str) -> bool:
    """True when ``text`` is an IPv4 or IPv6 address (cached: client addresses repeat)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _recipient_to_dict(recipient: Recipient) -> dict[str, object]:
    return {
        "address": recipient.address,
        "orcpt": recipient.orcpt,
        "notify": None if recipient.notify is None else [n.value for n in recipient.notify],
        "state": recipient.state.value,
        "reason": recipient.reason,
        "next_try": recipient.next_try,
        "attempts": recipient.attempts,
        "dsn_status": recipient.dsn_status,
    }


def _recipient_from_dict(fields: _Fields) -> Recipient:
    raw_notify = fields.optional("notify", list)
    notify: tuple[Notify, ...] | None = None
    if raw_notify is not None:
        notify = tuple(
            fields.enum_value(f"notify[{i}]", value, Notify) for i, value in enumerate(raw_notify)
        )
    return fields.build(
        Recipient,
        address=fields.required("address", str),
        orcpt=fields.optional("orcpt", str),
        notify=notify,
        state=fields.enum("state", RecipientState, optional=False),
        reason=fields.optional("reason", str),
        next_try=fields.optional("next_try", float),
        attempts=fields.required("attempts", int),
        dsn_status=fields.optional("dsn_status", str),
    )


_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.StrEnum)
_JSON_TYPE_NAMES: Final[Mapping[type, str]] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "an array",
}


class _Fields:
    """Typed access to one JSON object's members, with errors that name the field."""

    __slots__ = ("_document", "_prefix")

    def __init__(self, document: Mapping[str, object], prefix: str) -> None:
        self._document = document
        self._prefix = prefix

    def _typed(self, name: str, value: object, kind: type[_T]) -> _T:
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]  # kind is float here
        if not ok:
            raise EnvelopeError(
                self._prefix + name,
                f"must be {_JSON_TYPE_NAMES[kind]}, got {_json_type(value)}",
            )
        return value  # type: ignore[return-value]  # checked by isinstance above

    def required(self, name: str, kind: type[_T]) -> _T:
        if name not in self._document:
            raise EnvelopeError(self._prefix + name, "is missing")
        return self._typed(name, self._document[name], kind)

    def optional(self, name: str, kind: type[_T]) -> _T | None:
        value = self._document.get(name)
        return None if value is None else self._typed(name, value, kind)

    def enum_value(self, name: str, value: object, kind: type[_E]) -> _E:
        try:
            return kind(self._typed(name, value, str))
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            raise EnvelopeError(
                self._prefix + name, f"must be one of {allowed}; got {value!r}"
            ) from None

    def enum(self, name: str, kind: type[_E], *, optional: bool) -> _E | None:
        value = self._document.get(name)
        if value is None:
            if optional:
                return None
            raise EnvelopeError(self._prefix + name, "is missing")
        return self.enum_value(name, value, kind)

    def build(self, cls: Callable[..., _T], **values: object) -> _T:
        try:
            return cls(**values)
        except EnvelopeError as exc:
            raise EnvelopeError(self._prefix + exc.field, str(exc).partition(": ")[2]) from None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    for kind, name in _JSON_TYPE_NAMES.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _no_duplicate_keys(pairs: Sequence[tuple[str, object]]) -> dict[str, object]:
    document: dict[str, object] = {}
    for key, value in pairs:
        if key in document:
            raise EnvelopeError(key, "appears twice")
        document[key] = value
    return document


def _no_constants(name: str) -> object:
    raise EnvelopeError("", f"envelope is not JSON: {name} is not allowed")


#: The envelope parser, made once: ``json.loads`` with a hook builds a decoder per call
#: (3-4 us, about a sixth of :meth:`Envelope.from_json`).
_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants
)

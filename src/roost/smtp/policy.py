"""Postfix-style SMTP access policy: ordered restriction lists (sans-IO).

Five lists are evaluated at RCPT time, in order, like Postfix with ``smtpd_delay_reject =
yes``: ``smtpd_client_restrictions``, ``smtpd_helo_restrictions``,
``smtpd_sender_restrictions``, ``smtpd_relay_restrictions``, ``smtpd_recipient_restrictions``.
In each list the first restriction that decides (permit, reject or defer) ends that list; a
permit ends only its own list, a reject or defer ends the evaluation. Then, for a recipient
in a local or virtual domain, ``reject_unlisted_recipient`` applies implicitly
(``smtpd_reject_unlisted_recipient = yes``).

Checks that need the outside world (DNS, the user database, login maps) are injected as a
:class:`PolicyChecks`; this module imports no asyncio, sockets or files.

See Also: Postfix SMTPD_ACCESS_README, postconf(5) for each restriction, access(5).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from roost.address import (
    Address,
    NullPath,
    has_routing_characters,
    is_fqdn,
    is_valid_hostname,
)
from roost.config.lookup import LookupTable
from roost.delivery.router import Destination, RecipientStatus
from roost.smtp import reply
from roost.smtp.reply import Reply, parse_reply

__all__ = [
    "LISTS",
    "Action",
    "Decision",
    "Destination",
    "Facts",
    "Policy",
    "PolicyChecks",
    "RecipientStatus",
    "Restriction",
    "TableLookupError",
    "parse_restrictions",
]

#: The restriction lists, in evaluation order, with the words used in reject replies.
LISTS: Final = (
    ("smtpd_client_restrictions", "Client host"),
    ("smtpd_helo_restrictions", "Helo command"),
    ("smtpd_sender_restrictions", "Sender address"),
    ("smtpd_relay_restrictions", "Recipient address"),
    ("smtpd_recipient_restrictions", "Recipient address"),
)

_SIMPLE: Final = frozenset(
    {
        "permit",
        "reject",
        "defer",
        "dunno",
        "permit_mynetworks",
        "permit_sasl_authenticated",
        "reject_unauth_destination",
        "defer_unauth_destination",
        "reject_unlisted_recipient",
        "reject_non_fqdn_helo_hostname",
        "reject_invalid_helo_hostname",
        "reject_non_fqdn_sender",
        "reject_non_fqdn_recipient",
        "reject_unknown_sender_domain",
        "reject_sender_login_mismatch",
        "reject_unauth_pipelining",
    }
)
_WITH_TABLE: Final = frozenset(
    {"check_client_access", "check_helo_access", "check_sender_access", "check_recipient_access"}
)
_DESTINATION_RULES: Final = frozenset({"reject_unauth_destination", "defer_unauth_destination"})


class Action(enum.Enum):
    """What a restriction decided."""

    PERMIT = "permit"
    DUNNO = "dunno"
    REJECT = "reject"
    DEFER = "defer"


@dataclass(frozen=True, slots=True)
class Restriction:
    """One element of a restriction list, e.g. ``check_sender_access texthash:/x``."""

    name: str
    table: str | None = None

    def __str__(self) -> str:
        return f"{self.name} {self.table}" if self.table else self.name


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an evaluation.

    Attributes:
        action: PERMIT/DUNNO (accept) or REJECT/DEFER (refuse with ``reply``).
        reply: the reply to send when refused.
        restriction: the restriction that decided, for the log.
    """

    action: Action
    reply: Reply | None = None
    restriction: str = ""

    @property
    def accepted(self) -> bool:
        """True unless the decision is a reject or a defer."""
        return self.action in (Action.PERMIT, Action.DUNNO)


#: "No decision" (frozen: one instance serves every evaluation).
_DUNNO: Final = Decision(Action.DUNNO)


@dataclass(frozen=True, slots=True)
class Facts:
    """What is known about the SMTP session when a restriction list is evaluated.

    Attributes:
        client_address: the client's IP address.
        client_name: its verified reverse name, or ``unknown``.
        helo: the HELO/EHLO argument, or None before it.
        sender: the envelope sender, or None before MAIL.
        recipient: the recipient being checked, or None.
        sasl_username: the authenticated login, or None.
        destination: the recipient's address class, when there is a recipient.
    """

    client_address: str
    client_name: str = "unknown"
    helo: str | None = None
    sender: Address | NullPath | None = None
    recipient: Address | None = None
    sasl_username: str | None = None
    destination: Destination = Destination.OTHER


class PolicyChecks(Protocol):
    """The outside world a policy may consult."""

    def in_mynetworks(self, address: str) -> bool:
        """Tell whether a client address is in ``mynetworks``."""
        ...

    async def sender_domain_exists(self, domain: str) -> bool | None:
        """Tell whether a domain has MX or address records; None on a temporary failure."""
        ...

    async def recipient_status(self, recipient: Address) -> RecipientStatus:
        """Tell whether a local or virtual recipient exists (aliases, user database)."""
        ...

    async def sender_owners(self, sender: Address) -> tuple[str, ...] | None:
        """Return the logins that own a sender address (``smtpd_sender_login_maps``).

        None means the maps do not know the address.

        Raises:
            TableLookupError: a table could not answer (the reply is 451 4.3.0).
        """
        ...

    async def lookup(self, table: LookupTable, key: str) -> str | None:
        """Look ``key`` up in an access table, off the event loop when it does I/O.

        Raises:
            TableLookupError: the table could not answer (LDAP down, ...).
        """
        ...


class TableLookupError(Exception):
    """A lookup table could not answer: the restriction defers (451 4.3.0)."""


def parse_restrictions(words: Sequence[str]) -> tuple[Restriction, ...]:
    """Parse a restriction list value (already split into words).

    Raises:
        ValueError: an unknown restriction, or a check_*_access without its table.
    """
    result: list[Restriction] = []
    index = 0
    while index < len(words):
        word = words[index].lower()
        if word in _WITH_TABLE:
            if index + 1 >= len(words) or ":" not in words[index + 1]:
                raise ValueError(f"{word} needs a type:table argument")
            result.append(Restriction(word, words[index + 1]))
            index += 2
            continue
        if word not in _SIMPLE:
            raise ValueError(f"unknown restriction {words[index]!r}")
        result.append(Restriction(word))
        index += 1
    return tuple(result)


def blocks_relaying(lists: Mapping[str, tuple[Restriction, ...]]) -> bool:
    """Tell whether the relay or recipient restrictions refuse unauthorized destinations.

    Postfix refuses to run a configuration without ``reject_unauth_destination`` (or
    ``defer_unauth_destination``, or a plain ``reject``) in one of the two lists.
    """
    for name in ("smtpd_relay_restrictions", "smtpd_recipient_restrictions"):
        for restriction in lists.get(name, ()):
            if restriction.name in _DESTINATION_RULES or restriction.name == "reject":
                return True
    return False


def _bracket(text: str) -> str:
    return f"<{text}>: "


def _parent_domains(domain: str) -> Iterable[str]:
    """``a.b.example`` -> ``a.b.example``, ``b.example``, ``example`` (access(5))."""
    labels = domain.lower().rstrip(".").split(".")
    for index in range(len(labels)):
        yield ".".join(labels[index:])


def _address_keys(address: Address) -> list[str]:
    """access(5) lookup order for an address: user@domain, domain (and parents), user@."""
    keys = [f"{address.local_part}@{address.domain}"]
    if address.domain:
        keys.extend(_parent_domains(address.domain_key))
    keys.append(f"{address.local_part}@")
    return keys


def _client_keys(name: str, ip: str) -> list[str]:
    keys = list(_parent_domains(name)) if name and name != "unknown" else []
    keys.append(ip)
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return keys
    if parsed.version == 4:
        octets = ip.split(".")
        keys.extend(".".join(octets[:n]) for n in (3, 2, 1))
    return keys


class Policy:
    """Evaluates the restriction lists of one service.

    Args:
        lists: restriction list name -> parsed restrictions.
        tables: opened access tables by their ``type:name``.
        checks: the injected outside-world checks.
        reject_unlisted: ``smtpd_reject_unlisted_recipient``: refuse unknown local and
            virtual recipients after the lists (an explicit ``reject_unlisted_recipient``
            in a list applies regardless).
    """

    def __init__(
        self,
        lists: Mapping[str, tuple[Restriction, ...]],
        tables: Mapping[str, LookupTable],
        checks: PolicyChecks,
        *,
        reject_unlisted: bool = True,
    ) -> None:
        self.lists = lists
        self.tables = tables
        self.checks = checks
        self.reject_unlisted = reject_unlisted

    async def check_recipient(self, facts: Facts) -> Decision:
        """Evaluate every list for one RCPT TO, then the implicit unlisted-recipient check."""
        for list_name, what in LISTS:
            restrictions = self.lists.get(list_name)
            if not restrictions:  # most lists are empty: no coroutine for them
                continue
            decision = await self._evaluate(restrictions, facts, what)
            if not decision.accepted:
                return decision
        if (
            self.reject_unlisted
            and facts.recipient is not None
            and facts.destination in (Destination.LOCAL, Destination.VIRTUAL)
        ):
            return await self._unlisted(facts)
        return _DUNNO

    async def _evaluate(
        self, restrictions: Iterable[Restriction], facts: Facts, what: str
    ) -> Decision:
        for restriction in restrictions:
            decision = await self._apply(restriction, facts, what)
            if decision.action is not Action.DUNNO:
                return decision
        return _DUNNO

    async def _apply(self, restriction: Restriction, facts: Facts, what: str) -> Decision:
        name = restriction.name
        rule = str(restriction)
        recipient, sender = facts.recipient, facts.sender
        if name == "permit":
            return Decision(Action.PERMIT, restriction=rule)
        if name in ("reject", "defer"):
            template = reply.REJECTED if name == "reject" else reply.DEFERRED
            base = Reply(template.code, template.enhanced, template.text.format(what=what))
            return self._refuse(base, self._subject(facts, what), rule)
        if name == "permit_mynetworks":
            if self.checks.in_mynetworks(facts.client_address):
                return Decision(Action.PERMIT, restriction=rule)
        elif name == "permit_sasl_authenticated":
            if facts.sasl_username:
                return Decision(Action.PERMIT, restriction=rule)
        elif name in _DESTINATION_RULES and recipient is not None:
            if not self._authorized_destination(recipient, facts.destination):
                base = reply.RELAY_DENIED if name[0] == "r" else reply.RELAY_DEFERRED
                return self._refuse(base, _bracket(str(recipient)), rule)
        elif name == "reject_unlisted_recipient" and recipient is not None:
            if facts.destination in (Destination.LOCAL, Destination.VIRTUAL):
                return await self._unlisted(facts)
        elif name == "reject_non_fqdn_helo_hostname" and facts.helo is not None:
            if not is_fqdn(facts.helo):
                return self._refuse(reply.NOT_FQDN_HELO, _bracket(facts.helo), rule)
        elif name == "reject_invalid_helo_hostname" and facts.helo is not None:
            if not is_valid_hostname(facts.helo):
                return self._refuse(reply.INVALID_HELO, _bracket(facts.helo), rule)
        elif name == "reject_non_fqdn_sender" and isinstance(sender, Address):
            if not sender.domain or not is_fqdn(sender.domain):
                return self._refuse(reply.NOT_FQDN_SENDER, _bracket(str(sender)), rule)
        elif name == "reject_non_fqdn_recipient" and recipient is not None:
            if not recipient.domain or not is_fqdn(recipient.domain):
                return self._refuse(reply.NOT_FQDN_RECIPIENT, _bracket(str(recipient)), rule)
        elif name == "reject_unknown_sender_domain" and isinstance(sender, Address):
            if sender.domain and sender.ip_literal is None:
                exists = await self.checks.sender_domain_exists(sender.ascii_domain)
                if not exists:
                    return self._refuse(reply.UNKNOWN_SENDER_DOMAIN, _bracket(str(sender)), rule)
        elif name == "reject_sender_login_mismatch" and isinstance(sender, Address):
            return await self._login_mismatch(sender, facts, rule)
        elif restriction.table is not None:
            return await self._access(restriction, facts, what)
        return _DUNNO

    def _authorized_destination(self, recipient: Address, destination: Destination) -> bool:
        """Postfix's reject_unauth_destination: ours or relayed for, and no routing tricks."""
        if destination is Destination.OTHER:
            return False
        return not (has_routing_characters(recipient) or recipient.had_source_route)

    async def _unlisted(self, facts: Facts) -> Decision:
        assert facts.recipient is not None
        status = await self.checks.recipient_status(facts.recipient)
        if status is RecipientStatus.KNOWN:
            return _DUNNO
        prefix = _bracket(str(facts.recipient))
        if status is RecipientStatus.TEMPFAIL:
            return self._refuse(reply.RECIPIENT_LOOKUP_FAILED, prefix, "reject_unlisted_recipient")
        base = (
            reply.USER_UNKNOWN_LOCAL
            if facts.destination is Destination.LOCAL
            else reply.USER_UNKNOWN_VIRTUAL
        )
        return self._refuse(base, prefix, "reject_unlisted_recipient")

    async def _login_mismatch(self, sender: Address, facts: Facts, rule: str) -> Decision:
        prefix = _bracket(str(sender))
        try:
            owners = await self.checks.sender_owners(sender)
        except TableLookupError:
            base = Reply(451, "4.3.0", "Sender address rejected: Temporary lookup failure")
            return self._refuse(base, prefix, rule)
        if facts.sasl_username is None:
            if owners:
                return self._refuse(reply.SENDER_NOT_LOGGED_IN, prefix, rule)
            return _DUNNO
        login = facts.sasl_username.lower()
        if owners is None or login not in {owner.lower() for owner in owners}:
            base = reply.SENDER_LOGIN_MISMATCH
            text = base.text.format(user=facts.sasl_username)
            return self._refuse(Reply(base.code, base.enhanced, text), prefix, rule)
        return _DUNNO

    def _subject(self, facts: Facts, what: str) -> str:
        if what == "Client host":
            return _bracket(f"{facts.client_name}[{facts.client_address}]")
        if what == "Helo command":
            return _bracket(facts.helo or "")
        if what == "Sender address":
            return _bracket(str(facts.sender or ""))
        return _bracket(str(facts.recipient or ""))

    async def _access(self, restriction: Restriction, facts: Facts, what: str) -> Decision:
        assert restriction.table is not None
        table = self.tables[restriction.table]
        kind = restriction.name
        keys: list[str] = []
        if kind == "check_client_access":
            keys = _client_keys(facts.client_name, facts.client_address)
            what = "Client host"
        elif kind == "check_helo_access" and facts.helo:
            keys = list(_parent_domains(facts.helo))
            what = "Helo command"
        elif kind == "check_sender_access" and isinstance(facts.sender, Address):
            keys = _address_keys(facts.sender)
            what = "Sender address"
        elif kind == "check_sender_access" and isinstance(facts.sender, NullPath):
            keys = ["<>"]
            what = "Sender address"
        elif kind == "check_recipient_access" and facts.recipient is not None:
            keys = _address_keys(facts.recipient)
            what = "Recipient address"
        for key in keys:
            try:
                value = await self.checks.lookup(table, key)
            except TableLookupError:
                base = Reply(451, "4.3.0", f"{what} rejected: Temporary lookup failure")
                return self._refuse(base, self._subject(facts, what), str(restriction))
            if value is not None:
                return await self._access_result(value, facts, what, str(restriction))
        return _DUNNO

    async def _access_result(self, value: str, facts: Facts, what: str, rule: str) -> Decision:
        word, _, text = value.strip().partition(" ")
        upper = word.upper()
        subject = self._subject(facts, what)
        if upper in ("OK", "PERMIT") or (word.isdigit() and not text and len(word) != 3):
            return Decision(Action.PERMIT, restriction=rule)
        if upper == "DUNNO":
            return Decision(Action.DUNNO, restriction=rule)
        if upper in ("REJECT", "DEFER"):
            template = reply.ACCESS_DENIED if upper == "REJECT" else reply.ACCESS_DEFERRED
            base = Reply(template.code, template.enhanced, template.text.format(what=what))
            if text:
                base = Reply(base.code, base.enhanced, f"{what} rejected: {text.strip()}")
            return self._refuse(base, subject, rule)
        parsed = parse_reply(value)
        if parsed is not None and parsed.code >= 400:
            text = f"{what} rejected: {parsed.text}" if parsed.text else f"{what} rejected"
            return self._refuse(Reply(parsed.code, parsed.enhanced, text), subject, rule)
        if word.lower() in _SIMPLE:  # a restriction as the table's result
            return await self._apply(Restriction(word.lower()), facts, what)
        return Decision(Action.DUNNO, restriction=rule)

    def _refuse(self, base: Reply, prefix: str, rule: str) -> Decision:
        action = Action.DEFER if base.temporary else Action.REJECT
        return Decision(action, base.prefixed(prefix), rule)

"""Routing: which address class a recipient is in, and whether a local one exists.

Address classes (Postfix ADDRESS_CLASS_README):

- local: the domain is in ``mydestination`` (or the address has no domain); recipients are
  aliases (``alias_maps``), users of the user database (``auth_backends``) and system
  accounts; ``postmaster`` always exists (RFC 5321 §4.5.1);
- virtual: the domain is in ``virtual_mailbox_domains``; recipients are users of the user
  database (their full address);
- relay: the domain is in ``relay_domains``;
- other: everything else, which needs relay permission.

``recipient_delimiter`` extensions are ignored for the existence check
(``alice+lists@`` exists when ``alice@`` does).
"""

from __future__ import annotations

import enum
import functools
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from roost.address import Address, domain_matches, parse_mailbox, split_extension
from roost.auth.users import User, UserBackendError
from roost.config import Settings

__all__ = [
    "Destination",
    "RecipientStatus",
    "Router",
    "UserLookup",
    "parse_recipient",
    "router_from_settings",
]


class Destination(enum.Enum):
    """The address class of a recipient domain."""

    LOCAL = "local"
    VIRTUAL = "virtual"
    RELAY = "relay"
    OTHER = "other"


class RecipientStatus(enum.Enum):
    """Whether a local or virtual recipient exists."""

    KNOWN = "known"
    UNKNOWN = "unknown"
    TEMPFAIL = "tempfail"


class UserLookup(Protocol):
    """The user database's lookup (``roost.auth.users.UserDatabase``)."""

    async def lookup(self, name: str) -> User | None:
        """Return the user for a login name or address, or None.

        Raises:
            UserBackendError: a backend failed (temporary).
        """
        ...


#: Domains whose route :meth:`Router.destination` remembers (the cache starts over beyond).
_ROUTE_CACHE_SIZE: Final = 4096


def _system_user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Router:
    """Classifies recipients and answers "does this local recipient exist?".

    Attributes:
        mydestination: the expanded ``mydestination`` list.
        virtual_domains: ``virtual_mailbox_domains``.
        relay_domains: ``relay_domains``.
        recipient_delimiter: ``recipient_delimiter`` characters.
        alias_exists: tells whether ``alias_maps`` has a local part (lower-cased).
        users: the user database, or None when ``auth_backends`` is empty.
        system_users: tells whether a system account exists (``pwd`` by default).
    """

    mydestination: tuple[str, ...]
    virtual_domains: tuple[str, ...] = ()
    relay_domains: tuple[str, ...] = ()
    recipient_delimiter: str = ""
    alias_exists: Callable[[str], bool] = lambda name: False
    users: UserLookup | None = None
    system_users: Callable[[str], bool] = _system_user_exists
    _routes: dict[str, Destination] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def destination(self, address: Address) -> Destination:
        """Return the address class of ``address``'s domain.

        The answer is remembered per domain (as spelt), since every recipient of every
        message asks; a new router (reload) starts with an empty cache.
        """
        domain = address.domain
        route = self._routes.get(domain)
        if route is None:
            route = self._classify(address)
            if len(self._routes) >= _ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[domain] = route
        return route

    def _classify(self, address: Address) -> Destination:
        if not address.domain:
            return Destination.LOCAL
        if domain_matches(address.domain, self.mydestination):
            return Destination.LOCAL
        if domain_matches(address.domain, self.virtual_domains):
            return Destination.VIRTUAL
        if domain_matches(address.domain, self.relay_domains):
            return Destination.RELAY
        return Destination.OTHER

    async def recipient_status(self, address: Address) -> RecipientStatus:
        """Tell whether a local or virtual recipient exists (aliases, users, accounts)."""
        destination = self.destination(address)
        local = address.local_part
        base, _ = split_extension(local, self.recipient_delimiter)
        try:
            if destination is Destination.LOCAL:
                if base.lower() == "postmaster" or local.lower() == "postmaster":
                    return RecipientStatus.KNOWN
                for name in dict.fromkeys((local.lower(), base.lower())):
                    if self.alias_exists(name) or self.system_users(name):
                        return RecipientStatus.KNOWN
                if await self._user_exists(base, address.domain_key):
                    return RecipientStatus.KNOWN
                return RecipientStatus.UNKNOWN
            if destination is Destination.VIRTUAL:
                if await self._user_exists(base, address.domain_key, bare=False):
                    return RecipientStatus.KNOWN
                return RecipientStatus.UNKNOWN
        except UserBackendError:
            return RecipientStatus.TEMPFAIL
        return RecipientStatus.KNOWN  # relay and other domains are not ours to judge

    async def _user_exists(self, local: str, domain: str, *, bare: bool = True) -> bool:
        if self.users is None:
            return False
        names = [f"{local}@{domain}"] if domain else []
        if bare:
            names.append(local)
        for name in names:
            if await self.users.lookup(name) is not None:
                return True
        return False


def router_from_settings(
    settings: Settings, users: UserLookup | None, alias_exists: Callable[[str], bool]
) -> Router:
    """Build the router from ``mydestination``, ``virtual_mailbox_domains``,
    ``relay_domains`` and ``recipient_delimiter``."""
    return Router(
        mydestination=settings.strings("mydestination"),
        virtual_domains=settings.strings("virtual_mailbox_domains"),
        relay_domains=settings.strings("relay_domains"),
        recipient_delimiter=settings.string("recipient_delimiter"),
        alias_exists=alias_exists,
        users=users,
    )


@functools.lru_cache(maxsize=4096)
def parse_recipient(address: str) -> Address:
    """Parse a queued recipient address (``parse_mailbox(address, smtputf8=True)``).

    Cached: the queue manager and the local transport parse every recipient of every
    message, and most mail goes to a few addresses (``Address`` is immutable).

    Raises:
        AddressError: not a valid mailbox (not cached: raised again each time).
    """
    return parse_mailbox(address, smtputf8=True)

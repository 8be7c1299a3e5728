"""Counts shared by the worker processes: connections per client address, logins per user.

The IMAP and POP3 services count connections per client address
(``imap_client_connection_count_limit``) and logins per user and address
(``mail_max_userip_connections``) in plain dicts of their ``Registry``. With worker
processes, :func:`share_registry` swaps those dicts for :class:`SharedCounts`: a dict that
answers with the sum over every process and sends this process's changes (as deltas)
through the master to the others. The master keeps each worker's share, so the counts of a
worker that dies are taken back from the others.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Final

__all__ = ["REGISTRY_TABLES", "SharedCounts", "decode_key", "share_registry"]

#: The dict attributes of a service's registry that hold counts, by attribute name.
REGISTRY_TABLES: Final = ("per_ip", "per_user_ip")

#: Sends ``(table name, key, delta)`` to the other processes.
Emit = Callable[[str, Hashable, int], None]


def decode_key(key: object) -> Hashable:
    """A key as it came through JSON: lists (user, address) become tuples again."""
    if isinstance(key, list):
        return tuple(decode_key(item) for item in key)
    return key


class SharedCounts(dict[Any, int]):
    """A count per key, summed over this process (``local``) and the others (``remote``).

    Supports what the registries use: ``get``, ``[key]``, ``[key] = n`` and ``pop``.
    Setting a key to ``n`` changes this process's share by ``n`` minus the current sum.

    Args:
        name: the table's name, the same in every process (``imap.per_ip``).
        emit: sends this process's changes to the others.
    """

    def __init__(self, name: str, emit: Emit) -> None:
        super().__init__()
        self.name = name
        self._emit = emit
        self.local: dict[Hashable, int] = {}
        self.remote: dict[Hashable, int] = {}

    def _total(self, key: Hashable) -> int:
        return self.local.get(key, 0) + self.remote.get(key, 0)

    def get(self, key: Hashable, default: Any = None) -> Any:
        total = self._total(key)
        return total if total or key in self.local or key in self.remote else default

    def __getitem__(self, key: Hashable) -> int:
        if key not in self.local and key not in self.remote:
            raise KeyError(key)
        return self._total(key)

    def __contains__(self, key: object) -> bool:
        return key in self.local or key in self.remote

    def __setitem__(self, key: Hashable, value: int) -> None:
        self._change(key, value - self._total(key))

    def pop(self, key: Hashable, default: Any = None) -> Any:
        if key not in self:
            return default
        total = self._total(key)
        self._change(key, -self.local.get(key, 0))
        return total

    def __len__(self) -> int:
        return len(self.local.keys() | self.remote.keys())

    def _change(self, key: Hashable, delta: int) -> None:
        if not delta:
            return
        _add(self.local, key, delta)
        self._emit(self.name, key, delta)

    def move(self, key: Hashable, delta: int) -> None:
        """Move ``delta`` of ``key``'s count between this process's share and the others'
        without telling them (the sum stays): a hibernated IMAP session leaving for the
        master (-1) or coming back (+1); the master moves its own books the same way
        (:mod:`roost.daemon.hibernation`)."""
        _add(self.local, key, delta)
        _add(self.remote, key, -delta)

    def apply(self, key: Hashable, delta: int) -> None:
        """Account another process's change."""
        _add(self.remote, key, delta)


def _add(counts: dict[Hashable, int], key: Hashable, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)


def share_registry(service: object, emit: Emit) -> list[SharedCounts]:
    """Swap the count dicts of a service's registry for shared ones.

    Looks for the service's ``_registry`` (IMAP and POP3) and its :data:`REGISTRY_TABLES`;
    services without them are left alone. Call it before the service starts.

    Returns:
        The shared tables, named ``<service name>.<attribute>``.
    """
    registry = getattr(service, "_registry", None)
    tables: list[SharedCounts] = []
    if registry is None:
        return tables
    for attribute in REGISTRY_TABLES:
        if isinstance(getattr(registry, attribute, None), dict):
            table = SharedCounts(f"{getattr(service, 'name', '?')}.{attribute}", emit)
            setattr(registry, attribute, table)
            tables.append(table)
    return tables

"""In-process change notification: "mailbox X changed, sync it".

Every write through the store (append, flags, expunge, copy into, create/delete/rename)
publishes the mailbox directory; local delivery calls :func:`notify_delivery` after it
renames a message into ``new/``. IMAP sessions that have the mailbox selected (IDLE or
not) subscribe and learn at once instead of polling.

The bus knows nothing of asyncio: callbacks are plain functions, called in the
publishing thread after the change is on disk. They must be quick and must not block; an
asyncio server passes something like ``lambda path: loop.call_soon_threadsafe(event.set)``.
A callback that raises is logged and does not stop the others.

Changes made by other processes (Dovecot, procmail, another roost) are not published;
sessions still find them on their next ``sync()`` (e.g. an IDLE poll every few seconds).
Roost's own worker processes are the exception: the daemon installs a ``relay`` that
forwards every local publish through the master to the other processes, which hand it to
their subscribers with :meth:`ChangeBus.publish_relayed`. A worker also installs a
``watch hook`` (:meth:`ChangeBus.set_watch_hook`), told when a mailbox gets its first
subscriber and loses its last, so that the master relays a change only to the workers
watching that mailbox.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_BUS",
    "ChangeBus",
    "ChangeCallback",
    "Subscription",
    "WatchHook",
    "notify_delivery",
]

logger = logging.getLogger("roost.store")

#: Called with the mailbox directory that changed.
ChangeCallback = Callable[[Path], None]

#: Called with a resolved mailbox directory and True (its first subscriber came) or
#: False (its last went), under the bus's lock, in the subscribing or cancelling thread.
WatchHook = Callable[[str, bool], None]


def _key(path: Path | str) -> str:
    # The caller's string when it is already the real path: an idle session's mailbox
    # subscription keeps no second copy of its directory's name.
    name = os.fspath(path)
    real = os.path.realpath(name)
    return name if real == name else real


class Subscription:
    """A registered callback; :meth:`cancel` removes it (idempotent)."""

    __slots__ = ("_bus", "_key", "callback", "owner")

    def __init__(self, bus: ChangeBus, key: str, callback: ChangeCallback, owner: object) -> None:
        self._bus = bus
        self._key = key
        self.callback = callback
        self.owner = owner

    def cancel(self) -> None:
        """Stop receiving notifications."""
        self._bus._remove(self._key, self)


class ChangeBus:
    """A thread-safe registry: mailbox directory -> callbacks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[str, list[Subscription]] = {}
        #: Also called (in the publishing thread) with every local publish's directory.
        self.relay: Callable[[str], None] | None = None
        self._watch_hook: WatchHook | None = None

    def set_watch_hook(self, hook: WatchHook | None) -> None:
        """Tell ``hook`` which mailboxes are watched, from now on.

        ``hook(key, True)`` is called at once for every mailbox that has subscribers, then
        whenever a mailbox gets its first subscriber; ``hook(key, False)`` when it loses
        its last. The calls are made under the bus's lock, so they come in the order of
        the changes they report (a hook that queues messages keeps them in order); the
        hook must be quick and must not use the bus.

        Args:
            hook: the function, or None to stop.
        """
        with self._lock:
            self._watch_hook = hook
            if hook is not None:
                for key in self._subscriptions:
                    hook(key, True)

    def subscribe(
        self, mailbox_path: Path, callback: ChangeCallback, *, owner: object = None
    ) -> Subscription:
        """Call ``callback(mailbox_path)`` whenever that mailbox changes.

        Args:
            mailbox_path: the mailbox's Maildir directory (the Maildir root for INBOX).
            callback: a quick, non-blocking function.
            owner: changes published with ``origin=owner`` skip this callback (a
                session need not be woken by its own writes).
        """
        key = _key(mailbox_path)
        subscription = Subscription(self, key, callback, owner)
        with self._lock:
            subscriptions = self._subscriptions.get(key)
            if subscriptions is None:
                subscriptions = self._subscriptions[key] = []
                if self._watch_hook is not None:
                    self._call_hook(key, True)
            subscriptions.append(subscription)
        return subscription

    def _call_hook(self, key: str, watched: bool) -> None:
        assert self._watch_hook is not None
        try:
            self._watch_hook(key, watched)
        except Exception:
            logger.exception("watch hook for %s failed", key)

    def _remove(self, key: str, subscription: Subscription) -> None:
        with self._lock:
            subscriptions = self._subscriptions.get(key)
            if subscriptions is None:
                return
            try:
                subscriptions.remove(subscription)
            except ValueError:
                return
            if not subscriptions:
                del self._subscriptions[key]
                if self._watch_hook is not None:
                    self._call_hook(key, False)

    def publish(self, mailbox_path: Path, *, origin: object = None) -> None:
        """Tell every subscriber of ``mailbox_path`` (except ``origin``'s) that it changed."""
        self.publish_key(_key(mailbox_path), origin=origin)

    def publish_key(self, key: str, *, origin: object = None) -> None:
        """:meth:`publish` for a mailbox directory already resolved (``os.path.realpath``)."""
        if self.relay is not None:
            try:
                self.relay(key)
            except Exception:
                logger.exception("change relay for %s failed", key)
        self._deliver(key, origin)

    def publish_relayed(self, key: str) -> None:
        """Tell this process's subscribers of a change published by another process."""
        self._deliver(key, None)

    def _deliver(self, key: str, origin: object) -> None:
        with self._lock:
            targets = list(self._subscriptions.get(key, ()))
        path = Path(key)
        for subscription in targets:
            if origin is not None and subscription.owner is origin:
                continue
            try:
                subscription.callback(path)
            except Exception:
                logger.exception("change callback for %s failed", key)

    def subscriber_count(self, mailbox_path: Path) -> int:
        """How many callbacks watch ``mailbox_path`` (for tests and metrics)."""
        with self._lock:
            return len(self._subscriptions.get(_key(mailbox_path), ()))


#: The process-wide bus the daemon's store, IMAP, POP3 and local delivery share.
DEFAULT_BUS: Final = ChangeBus()


def notify_delivery(maildir_path: Path, *, bus: ChangeBus = DEFAULT_BUS) -> None:
    """Announce that a message was delivered into ``maildir_path``'s ``new/``.

    Args:
        maildir_path: the Maildir (folder) directory delivered into, e.g. ``~/Maildir``
            for INBOX or ``~/Maildir/.Lists`` for a folder.
        bus: the bus to publish on.
    """
    # Subscribers are keyed by the real path; resolving it costs an lstat per path
    # component, per delivered message. Deliveries go to the same few mailboxes, so the
    # answer is kept for a while (a symlink changed meanwhile delays IDLE wake-ups for
    # that mailbox by at most KEY_CACHE_SECONDS; sessions still find the mail on a sync).
    text = str(maildir_path)
    now = time.monotonic()
    cached = _delivery_keys.get(text)
    if cached is None or now - cached[1] >= KEY_CACHE_SECONDS:
        if len(_delivery_keys) >= _KEY_CACHE_SIZE:
            _delivery_keys.clear()
        cached = _delivery_keys[text] = (_key(text), now)
    bus.publish_key(cached[0])


#: How long :func:`notify_delivery` keeps a mailbox's resolved path (seconds).
KEY_CACHE_SECONDS: Final = 10.0
_KEY_CACHE_SIZE: Final = 10000
_delivery_keys: dict[str, tuple[str, float]] = {}

"""The mail store shared by IMAP, POP3 and local delivery: Maildir++ laid out as Dovecot does.

Maildir is the truth; a per-mailbox SQLite index (``roost.index.sqlite``) makes it fast.
An existing Dovecot Maildir can be served as is, and handed back to Dovecot, with UIDs,
UIDVALIDITY, flags, keywords, folders and subscriptions preserved.

On disk (see :mod:`roost.store.store` for the whole layout):

- INBOX at the Maildir root, folders as ``.Name`` directories, ``.`` between levels
  (``.Parent.Child``), names in modified UTF-7 (``.Entw&APw-rfe``), each with cur/ new/
  tmp/ and ``maildirfolder``.
- ``dovecot-uidlist`` version 3 (``3 V<uidvalidity> N<nextuid> G<guid>`` then
  ``<uid> [W<vsize>] :<base>``), changed only under ``dovecot-uidlist.lock``; appended to,
  or rewritten through ``dovecot-uidlist.tmp`` + fsync + rename.
- ``dovecot-keywords`` (``<index> <keyword>``, index 0 = letter ``a``).
- file names ``<base>,S=<size>,W=<vsize>:2,<flags>`` with the flags D F P R S T and
  keyword letters sorted by ASCII.
- ``subscriptions`` in Dovecot 2.3's version 2 format (``V<TAB>2``, empty line, one
  mailbox per line, levels separated by TAB).
- ``dovecot-uidvalidity`` for new UIDVALIDITY values (the current time, then increasing).

API (errors in :mod:`roost.store.errors`; values in :mod:`roost.store.model`)::

    store = MailStore(root, uid=None, gid=None, fsync=True, quota=None, index_dir=None)
    store.list_mailboxes() -> list[MailboxInfo]      # name, attributes, special_use
    store.create(name, special_use=None); store.delete(name); store.rename(old, new)
    store.subscribe(name); store.unsubscribe(name); store.subscriptions() -> list[str]
    store.ensure_special_use(DEFAULT_SPECIAL_USE, subscribe=True) -> list[str]
    store.open(name, readonly=False) -> Mailbox; store.status(name) -> MailboxStatus
    store.quota_usage() -> int

    mailbox.uid_validity, .uid_next, .highest_modseq, .recent, .modseq_floor
    mailbox.messages() -> list[MessageInfo]; mailbox.message(uid) -> MessageInfo
    mailbox.sync() -> Changes                        # added / expunged / flags / recent
    mailbox.open_message(uid) -> BinaryIO; mailbox.read_message_crlf(uid) -> bytes
    mailbox.append(data, flags=(), internal_date=None) -> uid
    mailbox.store_flags(uids, flags, StoreMode.ADD, unchanged_since=None) -> StoreFlagsResult
    mailbox.expunge(uids=None) -> list[int]
    mailbox.copy(uids, dest) -> [(uid, new uid)]; mailbox.move(uids, dest) -> same
    mailbox.expunged_since(modseq) -> list[int]; mailbox.changed_since(modseq)
    mailbox.status(); mailbox.keywords(); mailbox.pop3_uidl(message) -> "%08X%08X"
    mailbox.cache_get(uid, field); mailbox.cache_put(uid, field, blob)
    mailbox.watch(callback) -> Subscription; mailbox.suspend(); mailbox.close()

    DEFAULT_BUS.subscribe(mailbox_dir, callback); notify_delivery(maildir_path)

Every call blocks (file system, fsync, SQLite). Most take microseconds when nothing
changed (a few ``stat`` calls and index reads): the IMAP server makes those on its event
loop and runs the calls that fsync (APPEND, STORE, EXPUNGE, COPY...) in worker threads. A
:class:`Mailbox` belongs to one session and one thread at a time; any number of them, in
any number of processes, may have the same mailbox open. ``suspend()`` closes its index
connection while the session idles; the next call opens it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from roost.store.bus import DEFAULT_BUS, ChangeBus, ChangeCallback, Subscription, notify_delivery
from roost.store.errors import (
    InvalidMailboxName,
    LockTimeout,
    MailboxExists,
    MailboxNotFound,
    MessageNotFound,
    NotAllowed,
    OverQuota,
    StoreError,
    UnsupportedSpecialUse,
)
from roost.store.mailbox import Mailbox, pop3_uidl
from roost.store.model import (
    Changes,
    FlagUpdate,
    MailboxInfo,
    MailboxStatus,
    MessageInfo,
    StoreFlagsResult,
    StoreMode,
)
from roost.store.mutf7 import MUTF7Error, decode_mutf7, encode_mutf7
from roost.store.protocols import Cancellable, MailboxProtocol, MailStoreProtocol
from roost.store.store import (
    DEFAULT_SPECIAL_USE,
    HIERARCHY_SEPARATOR,
    INBOX,
    SPECIAL_USE_ATTRIBUTES,
    MailStore,
    normalize_mailbox_name,
)

__all__ = [
    "DEFAULT_BUS",
    "DEFAULT_SPECIAL_USE",
    "HIERARCHY_SEPARATOR",
    "INBOX",
    "SPECIAL_USE_ATTRIBUTES",
    "Cancellable",
    "ChangeBus",
    "ChangeCallback",
    "Changes",
    "FlagUpdate",
    "InvalidMailboxName",
    "LockTimeout",
    "MUTF7Error",
    "MailStore",
    "MailStoreProtocol",
    "Mailbox",
    "MailboxExists",
    "MailboxInfo",
    "MailboxNotFound",
    "MailboxProtocol",
    "MailboxStatus",
    "MessageInfo",
    "MessageNotFound",
    "NotAllowed",
    "OverQuota",
    "StoreError",
    "StoreFlagsResult",
    "StoreMode",
    "Subscription",
    "UnsupportedSpecialUse",
    "decode_mutf7",
    "encode_mutf7",
    "normalize_mailbox_name",
    "notify_delivery",
    "pop3_uidl",
]

if TYPE_CHECKING:

    def _conforms(store: MailStore, mailbox: Mailbox) -> tuple[MailStoreProtocol, MailboxProtocol]:
        """mypy checks here that the classes satisfy the protocols."""
        return store, mailbox

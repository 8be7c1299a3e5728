"""The selected mailbox as the client knows it: message sequence numbers and pending updates.

The store's :class:`~roost.store.Mailbox` view changes when it syncs; the client's view
changes only when the server tells it (``EXISTS``, ``EXPUNGE``/``VANISHED``). This class
keeps the client's view and turns the store's :class:`~roost.store.Changes` into untagged
responses at the moments RFC 9051 §7.5.1 allows:

* new messages are appended to the view at once (their numbers follow the last ones) and
  announced with ``EXISTS`` (and ``RECENT`` for IMAP4rev1 clients) at the next update;
* messages expunged by others stay in the view, numbered as before, until an update that
  may carry ``EXPUNGE`` (never while answering ``FETCH``, ``STORE`` or ``SEARCH``:
  RFC 9051 §7.5.1, RFC 3501 §7.4.1); QRESYNC clients get ``VANISHED`` instead (RFC 7162
  §3.2.10);
* flag changes by others become ``FETCH (FLAGS ...)`` (with ``MODSEQ`` under CONDSTORE,
  RFC 7162 §3.1.4.1; ``UID`` under QRESYNC, §3.2.4);
* new keywords become ``FLAGS`` and ``OK [PERMANENTFLAGS]`` (RFC 9051 §7.3.5).

No I/O: the session calls the store and feeds the results here.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Final

from roost.imap.commands import SYSTEM_FLAGS
from roost.imap.response import (
    ExistsResponse,
    ExpungeResponse,
    FetchResponse,
    FetchValue,
    FlagsItem,
    FlagsResponse,
    ModSeqItem,
    RecentResponse,
    Response,
    ResponseCode,
    UidItem,
    UntaggedResponse,
    VanishedResponse,
)
from roost.imap.sequence import SequenceSet
from roost.store import Changes, FlagUpdate, MailboxProtocol, MessageInfo
from roost.store.packed import PackedMessages, PackedUids

__all__ = [
    "PERMANENT_SYSTEM_FLAGS",
    "RECENT_ONLY",
    "SelectedMailbox",
    "UpdateMode",
    "flag_order",
]

PERMANENT_SYSTEM_FLAGS: Final = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
"""The system flags in the order Dovecot shows them."""

RECENT: Final = "\\Recent"
_NO_UIDS: Final[frozenset[int]] = frozenset()
_SYSTEM_RANK: Final = {flag: rank for rank, flag in enumerate(PERMANENT_SYSTEM_FLAGS)}


def flag_order(flags: Iterable[str]) -> tuple[str, ...]:
    """System flags first (in Dovecot's order), ``\\Recent``, then keywords sorted."""
    return tuple(
        sorted(set(flags), key=lambda f: (_SYSTEM_RANK.get(f, 5 if f == RECENT else 6), f))
    )


#: ``\\Recent`` as a flag set (added to a message's flags where IMAP4rev1 shows it).
RECENT_ONLY: Final = frozenset({RECENT})
#: :func:`flag_order` of a flag set, kept: a mailbox has few distinct sets, and FETCH and
#: the updates after each command order them for every message they show.
_ordered: Final = functools.lru_cache(maxsize=4096)(flag_order)


class UpdateMode:
    """What the client has enabled that changes how updates look.

    Attributes:
        condstore: CONDSTORE is enabled: flag updates carry ``MODSEQ``.
        qresync: QRESYNC is enabled: ``VANISHED`` replaces ``EXPUNGE``; updates carry
            ``UID``.
        rev2: IMAP4rev2 is enabled: no ``RECENT`` and no ``\\Recent`` flag.
    """

    __slots__ = ("condstore", "qresync", "rev2")

    def __init__(self, *, condstore: bool = False, qresync: bool = False, rev2: bool = False):
        self.condstore = condstore or qresync
        self.qresync = qresync
        self.rev2 = rev2


class SelectedMailbox:
    """The client's view of the selected mailbox.

    Args:
        name: the store name of the mailbox.
        mailbox: the open store mailbox (used by the session, one call at a time).
        readonly: EXAMINE, or SELECT of a mailbox the user may not change.
        messages: the messages at SELECT time, in UID order.
        recent: the UIDs that are ``\\Recent`` in this session.
        keywords: the keywords defined in the mailbox.
        uid_validity: UIDVALIDITY.
        uid_next: UIDNEXT.
        highest_modseq: HIGHESTMODSEQ.
    """

    # Slotted: an idle session keeps one for as long as it has the mailbox selected.
    __slots__ = (
        "_expunged",
        "_flag_updates",
        "_infos",
        "_keywords_changed",
        "_packed",
        "_recent",
        "_recent_announced",
        "_uids",
        "client_count",
        "highest_modseq",
        "keywords",
        "mailbox",
        "name",
        "readonly",
        "saved",
        "uid_next",
        "uid_validity",
    )

    def __init__(
        self,
        name: str,
        mailbox: MailboxProtocol,
        *,
        readonly: bool,
        messages: Sequence[MessageInfo],
        recent: Iterable[int],
        keywords: Iterable[str],
        uid_validity: int,
        uid_next: int,
        highest_modseq: int,
    ) -> None:
        self.name = name
        self.mailbox = mailbox
        self.readonly = readonly
        # While the session idles, the three below are packed (see :meth:`pack`); the
        # properties uids, infos and recent unpack them at their next use.
        self._packed: tuple[PackedMessages, PackedUids] | None = None
        self._uids: list[int] = [info.uid for info in messages]
        self._infos: dict[int, MessageInfo] = {info.uid: info for info in messages}
        self._recent: set[int] | None = set(recent)  # None: packed
        self.keywords: list[str] = list(keywords)
        self.uid_validity = uid_validity
        self.uid_next = uid_next
        self.highest_modseq = highest_modseq
        self.client_count = len(self.uids)
        """The number of messages the client believes there are (its EXISTS)."""
        self.saved: list[int] | None = None
        """The UIDs saved by ``SEARCH RETURN (SAVE)`` (RFC 5182), or ``None``."""
        self._expunged: frozenset[int] = _NO_UIDS  # replaced, never changed in place
        self._flag_updates: dict[int, None] = {}
        self._recent_announced = len(self._recent or ())
        self._keywords_changed = False

    # --- moving to another process ----------------------------------------------------------

    def hibernation_state(self) -> tuple[object, ...] | None:
        """The client's view, for a session moving to the master
        (:mod:`roost.daemon.hibernation`): what the client was told, not the messages
        (the store has those): the name and mode, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ,
        the UIDs and their MODSEQs (``array('q')`` bytes, UIDs as differences), the
        ``\\Recent`` UIDs, the keywords announced, the saved search and the last
        RECENT count. None while updates are pending (they go out first)."""
        if (
            self._expunged
            or self._flag_updates
            or self._keywords_changed
            or len(self) != self.client_count
        ):
            return None
        uids = self.uids
        infos = self.infos
        steps = array("q", uids)
        for index in range(len(steps) - 1, 0, -1):
            steps[index] -= steps[index - 1]
        return (
            self.name,
            self.readonly,
            self.uid_validity,
            self.uid_next,
            self.highest_modseq,
            steps.tobytes(),
            array("q", (infos[uid].modseq for uid in uids)).tobytes(),
            sorted(self.recent),
            list(self.keywords),
            self.saved,
            self._recent_announced,
        )

    @classmethod
    def from_hibernation(
        cls,
        state: tuple[Any, ...],
        mailbox: MailboxProtocol,
        messages: Sequence[MessageInfo],
        recent: Iterable[int],
    ) -> tuple[SelectedMailbox, Changes]:
        """The view :meth:`hibernation_state` described, on ``mailbox`` (opened again,
        its ``messages`` and ``recent`` now), and the changes since (what the next
        :meth:`apply` reports): messages added, expunged, and changed (another
        MODSEQ). A message gone keeps a stand-in entry until its EXPUNGE is sent."""
        (name, readonly, uid_validity, uid_next, highest_modseq, steps, modseqs, *rest) = state
        was_recent, keywords, saved, recent_announced = rest
        if mailbox.uid_validity != uid_validity:
            changes = Changes(uid_validity_changed=True)
            empty = cls(
                name,
                mailbox,
                readonly=readonly,
                messages=(),
                recent=(),
                keywords=keywords,
                uid_validity=uid_validity,
                uid_next=uid_next,
                highest_modseq=highest_modseq,
            )
            return empty, changes
        uids = array("q")
        uids.frombytes(steps)
        for index in range(1, len(uids)):
            uids[index] += uids[index - 1]
        old_modseqs = array("q")
        old_modseqs.frombytes(modseqs)
        fresh = {info.uid: info for info in messages}
        view: list[MessageInfo] = []
        flags: list[FlagUpdate] = []
        directory = str(mailbox.directory)
        for uid, modseq in zip(uids, old_modseqs, strict=True):
            info = fresh.get(uid)
            if info is None:
                info = MessageInfo(uid, frozenset(), 0, 0, 0.0, 0.0, modseq, "", "", directory)
            elif info.modseq != modseq:
                flags.append(FlagUpdate(uid, info.flags, info.modseq))
                info = dataclasses.replace(info, modseq=modseq)
            view.append(info)
        selected = cls(
            name,
            mailbox,
            readonly=readonly,
            messages=view,
            recent=was_recent,
            keywords=keywords,
            uid_validity=uid_validity,
            uid_next=uid_next,
            highest_modseq=highest_modseq,
        )
        selected.saved = saved
        selected._recent_announced = recent_announced
        known = set(uids)
        added = tuple(info for info in messages if info.uid not in known)
        now_recent = set(recent)
        changes = Changes(
            added=added,
            expunged=tuple(uid for uid in uids if uid not in fresh),
            flags=tuple(flags),
            recent=tuple(info.uid for info in added if info.uid in now_recent),
        )
        return selected, changes

    # --- packing -------------------------------------------------------------------------

    @property
    def uids(self) -> list[int]:
        """The UIDs of the client's view, ascending (index + 1: sequence number)."""
        if self._packed is not None:
            self._unpack()
        return self._uids

    @uids.setter
    def uids(self, uids: list[int]) -> None:
        if self._packed is not None:
            self._unpack()
        self._uids = uids

    @property
    def infos(self) -> dict[int, MessageInfo]:
        """uid -> message for every UID of :attr:`uids` (flags as the client knows them
        after the updates taken in)."""
        if self._packed is not None:
            self._unpack()
        return self._infos

    @property
    def recent(self) -> set[int]:
        """The UIDs that are ``\\Recent`` in this session."""
        if self._packed is not None:
            self._unpack()
        recent = self._recent
        if recent is None:
            recent = self._recent = set()
        return recent

    @property
    def packed(self) -> bool:
        """True while :meth:`pack` keeps the view packed."""
        return self._packed is not None

    def pack(self) -> None:
        """Pack the view while the session idles (unpacked at the next use).

        An idle session needs none of its message objects; packed they take about a
        quarter of the memory, and when the store mailbox holds an equal pack (it was
        suspended with the same view: the usual case) the two share it. Call it after
        the store mailbox's ``suspend()``. O(number of messages).
        """
        if self._packed is not None or not self._uids:
            return
        infos = self._infos
        packed = (
            PackedMessages(infos[uid] for uid in self._uids),
            PackedUids(self._recent or ()),
        )
        shared = self.mailbox.packed_view()
        if shared is not None:
            packed = (
                shared[0] if shared[0] == packed[0] else packed[0],
                shared[1] if shared[1] == packed[1] else packed[1],
            )
        self._packed = packed
        self._uids = []
        self._infos = {}
        self._recent = None

    def _unpack(self) -> None:
        packed, self._packed = self._packed, None
        if packed is not None:
            messages, recent = packed
            self._infos = {info.uid: info for info in messages.unpack()}
            self._uids = list(self._infos)
            self._recent = recent.unpack()

    def _recent_count(self) -> int:
        if self._packed is not None:
            return len(self._packed[1])
        return len(self._recent or ())

    # --- numbers -------------------------------------------------------------------------

    def __len__(self) -> int:
        if self._packed is not None:
            return len(self._packed[0])
        return len(self._uids)

    def msn(self, uid: int) -> int | None:
        """The message sequence number of ``uid`` in the client's view, or ``None``."""
        index = bisect.bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    @property
    def max_uid(self) -> int:
        """The highest UID in the view (the value of ``*`` in UID sets), 0 when empty."""
        return self.uids[-1] if self.uids else 0

    def resolve(self, sequence_set: SequenceSet, *, uid: bool) -> list[int]:
        """The UIDs a set names, ascending; ``$`` is the saved search result.

        Raises:
            ValueError: a message sequence number above the number of messages (the
                client's error: RFC 9051 §6.4 answers ``BAD``).
        """
        if sequence_set.saved:
            saved = set(self.saved or ())
            return [u for u in self.uids if u in saved]
        if not uid:
            if sequence_set.exceeds(len(self.uids)):
                raise ValueError("invalid message sequence number")
            return [self.uids[number - 1] for number in sequence_set.iter_numbers(len(self.uids))]
        found: list[int] = []
        for low, high in sequence_set.intervals(self.max_uid):
            start = bisect.bisect_left(self.uids, low)
            stop = bisect.bisect_right(self.uids, high)
            found.extend(self.uids[start:stop])
        return found

    def is_expunged(self, uid: int) -> bool:
        """Whether ``uid`` is gone from the store but not yet announced as expunged."""
        return uid in self._expunged

    def flags(self, uid: int, mode: UpdateMode) -> tuple[str, ...]:
        """The flags to show for ``uid`` (``\\Recent`` only for IMAP4rev1)."""
        flags = self.infos[uid].flags
        if uid in self.recent and not mode.rev2:
            flags = flags | RECENT_ONLY
        return _ordered(flags)

    # --- changes ---------------------------------------------------------------------------

    def apply(
        self,
        changes: Changes,
        *,
        uid_next: int,
        highest_modseq: int,
        keywords: Sequence[str] | None = None,
    ) -> None:
        """Take in what the store's ``sync()`` reported (nothing is sent yet)."""
        self.uid_next = uid_next
        self.highest_modseq = max(self.highest_modseq, highest_modseq)
        if changes.expunged:
            infos = self.infos
            gone = [uid for uid in changes.expunged if uid in infos]
            if gone:
                self._expunged = self._expunged.union(gone)
                for uid in gone:
                    self._flag_updates.pop(uid, None)
        added = sorted(
            (info for info in changes.added if info.uid not in self.infos),
            key=lambda info: info.uid,
        )
        for info in added:
            self.infos[info.uid] = info
            if self.uids and info.uid < self.uids[-1]:
                bisect.insort(self.uids, info.uid)  # only a renumbered store does this
            else:
                self.uids.append(info.uid)
        if changes.recent:
            self.recent.update(changes.recent)
        for update in changes.flags:
            if self._set_flags(update) and update.uid not in self._expunged:
                self._flag_updates[update.uid] = None
        if keywords is not None:
            self.learn_keywords(keywords)

    def update_flags(self, updates: Iterable[FlagUpdate]) -> list[int]:
        """Record flags changed by this session (``STORE``, ``\\Seen`` by ``FETCH``).

        Returns:
            The UIDs updated (their pending unsolicited ``FETCH`` is dropped: the caller
            reports them).
        """
        done: list[int] = []
        for update in updates:
            if update.uid in self.infos:
                self._set_flags(update)
                self._flag_updates.pop(update.uid, None)
                done.append(update.uid)
                self.learn_keywords(update.flags)
        return done

    def _set_flags(self, update: FlagUpdate) -> bool:
        old = self.infos.get(update.uid)
        if old is None:
            return False
        changed = old.flags != update.flags or old.modseq != update.modseq
        if changed:
            self.infos[update.uid] = _replace_flags(old, update)
            self.highest_modseq = max(self.highest_modseq, update.modseq)
            self.learn_keywords(update.flags)
        return changed

    def learn_keywords(self, flags: Iterable[str]) -> None:
        """Note keywords that the ``FLAGS`` response does not list yet."""
        known = {keyword.lower() for keyword in self.keywords}
        for flag in flags:
            if flag not in SYSTEM_FLAGS and flag != RECENT and flag.lower() not in known:
                self.keywords.append(flag)
                known.add(flag.lower())
                self._keywords_changed = True

    def remove(self, uids: Iterable[int], mode: UpdateMode) -> list[Response]:
        """Drop messages this session expunged; returns the ``EXPUNGE``/``VANISHED``."""
        return self._announce_expunges(set(uids) & self.infos.keys(), mode)

    def _announce_expunges(self, gone: set[int], mode: UpdateMode) -> list[Response]:
        if not gone:
            return []
        responses: list[Response] = []
        if mode.qresync:
            responses.append(VanishedResponse(SequenceSet.of(gone)))
        else:
            for uid in sorted(gone, reverse=True):
                number = self.msn(uid)
                if number is not None:
                    responses.append(ExpungeResponse(number))
        self.uids = [uid for uid in self.uids if uid not in gone]
        for uid in gone:
            del self.infos[uid]
            self.recent.discard(uid)
            self._flag_updates.pop(uid, None)
        self._expunged = self._expunged - gone or _NO_UIDS
        self.client_count -= len(gone)
        if self.saved is not None:
            self.saved = [uid for uid in self.saved if uid not in gone]
        return responses

    # --- updates ---------------------------------------------------------------------------

    def flags_response(self) -> list[Response]:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` for the current keywords."""
        flags = (*PERMANENT_SYSTEM_FLAGS, *self.keywords)
        permanent = () if self.readonly else (*flags, "\\*")
        return [
            FlagsResponse(flags),
            UntaggedResponse(
                "OK",
                "Flags permitted." if permanent else "Read-only mailbox.",
                ResponseCode.permanent_flags(permanent),
            ),
        ]

    def take_updates(self, mode: UpdateMode, *, allow_expunge: bool) -> list[Response]:
        """The untagged responses due now, in a safe order; forgets them.

        Args:
            mode: what the client enabled.
            allow_expunge: ``EXPUNGE``/``VANISHED`` may be sent (not during ``FETCH``,
                ``STORE`` or ``SEARCH``).
        """
        responses: list[Response] = []
        if allow_expunge and self._expunged:
            responses += self._announce_expunges(set(self._expunged), mode)
        if self._keywords_changed:
            self._keywords_changed = False
            responses += self.flags_response()
        recent = self._recent_count()
        if len(self) > self.client_count:
            self.client_count = len(self)
            responses.append(ExistsResponse(self.client_count))
            if not mode.rev2:
                responses.append(RecentResponse(recent))
        elif not mode.rev2 and recent != self._recent_announced:
            responses.append(RecentResponse(recent))
        self._recent_announced = recent
        if self._flag_updates:
            for uid in list(self._flag_updates):
                number = self.msn(uid)
                if number is None:
                    continue
                responses.append(FetchResponse(number, self.flag_items(uid, mode)))
            self._flag_updates.clear()
        return responses

    def flag_items(
        self, uid: int, mode: UpdateMode, *, flags: bool = True
    ) -> tuple[FetchValue, ...]:
        """``UID``, ``FLAGS`` and ``MODSEQ`` items for an unsolicited or STORE ``FETCH``."""
        items: list[FetchValue] = []
        if mode.qresync:
            items.append(UidItem(uid))
        if flags:
            items.append(FlagsItem(self.flags(uid, mode)))
        if mode.condstore:
            items.append(ModSeqItem(self.infos[uid].modseq))
        return tuple(items)


def _replace_flags(info: MessageInfo, update: FlagUpdate) -> MessageInfo:
    return dataclasses.replace(info, flags=update.flags, modseq=update.modseq)

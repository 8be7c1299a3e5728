"""FETCH and SEARCH over the store: the halves that read messages and the index.

The session decides which messages and items (on the event loop, with the client's
view) and calls :func:`fetch_batch` or :func:`search_messages` for each batch; they read
message files and the cache and return rendered responses or numbers.

``ENVELOPE``, ``BODY`` and ``BODYSTRUCTURE`` are cached in the mailbox index (one blob per
message, :data:`STRUCTURE_FIELD`), so a client's first sync parses each message once and
later ones read no message files at all.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from roost.imap.commands import (
    FetchAttribute,
    FetchBinarySize,
    FetchBody,
    FetchItem,
    SearchAnd,
    SearchKey,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSequence,
    Section,
    SectionText,
)
from roost.imap.message import (
    ParsedMessage,
    binary_size,
    body_structure,
    envelope,
    fetch_body,
    partial,
)
from roost.imap.response import (
    BinarySizeItem,
    BodyItem,
    EmailIdItem,
    FetchResponse,
    FetchValue,
    FlagsItem,
    InternalDateItem,
    ModSeqItem,
    RawItem,
    SaveDateItem,
    SizeItem,
    ThreadIdItem,
    UidItem,
)
from roost.imap.search import MessageContext, header_fields, matches, needs_message
from roost.imap.sequence import SequenceSet
from roost.store import MailboxProtocol, MessageInfo, MessageNotFound
from roost.store.filename import to_crlf

__all__ = [
    "STRUCTURE_FIELD",
    "FetchBatch",
    "FetchPlan",
    "FetchTarget",
    "SearchTarget",
    "fetch_batch",
    "has_modseq",
    "is_header_item",
    "search_messages",
    "substitute_saved",
]

STRUCTURE_FIELD: Final = "imap.structure"
"""The cache field holding ENVELOPE, BODY and BODYSTRUCTURE of a message."""

BATCH_OCTETS: Final = 4 * 1024 * 1024
"""A fetch batch stops after about this many octets of message data."""

_HEADER_TEXTS: Final = frozenset(
    {SectionText.HEADER, SectionText.HEADER_FIELDS, SectionText.HEADER_FIELDS_NOT}
)
_RFC822_HEADER: Final = FetchBody(Section(text=SectionText.HEADER), peek=True)
_RFC822_TEXT: Final = FetchBody(Section(text=SectionText.TEXT))


@dataclass(frozen=True, slots=True)
class FetchTarget:
    """One message to fetch.

    Attributes:
        msn: its message sequence number.
        info: what the index knows.
        flags: the flags to show (``\\Recent`` included when it applies).
        add_flags: show ``FLAGS`` even though not asked (``\\Seen`` was just set).
    """

    msn: int
    info: MessageInfo
    flags: tuple[str, ...]
    add_flags: bool = False


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """What each ``FETCH`` response holds.

    Attributes:
        items: the items asked for, macros expanded.
        uid: add ``UID`` first (``UID FETCH``, or QRESYNC) unless asked for.
        modseq: add ``MODSEQ`` (CONDSTORE ``CHANGEDSINCE``) unless asked for.
    """

    items: tuple[FetchItem, ...]
    uid: bool = False
    modseq: bool = False

    @property
    def needs_message(self) -> bool:
        """Whether any item reads the message file (or the structure cache)."""
        return any(not _index_only(item) for item in self.items)


@dataclass(slots=True)
class FetchBatch:
    """What :func:`fetch_batch` produced.

    Attributes:
        responses: rendered ``FETCH`` responses.
        done: how many targets were handled (the rest go in the next batch).
        missing: UIDs whose message was expunged meanwhile (no response for them).
        unknown_cte: a ``BINARY`` part had an unknown transfer encoding.
        header_count, header_octets, body_count, body_octets: for the logout line.
    """

    responses: list[bytes] = field(default_factory=list)
    done: int = 0
    missing: list[int] = field(default_factory=list)
    unknown_cte: bool = False
    header_count: int = 0
    header_octets: int = 0
    body_count: int = 0
    body_octets: int = 0


def _index_only(item: FetchItem) -> bool:
    return isinstance(item, FetchAttribute) and item in (
        FetchAttribute.FLAGS,
        FetchAttribute.INTERNALDATE,
        FetchAttribute.RFC822_SIZE,
        FetchAttribute.UID,
        FetchAttribute.MODSEQ,
        FetchAttribute.SAVEDATE,
        FetchAttribute.EMAILID,
        FetchAttribute.THREADID,
    )


def is_header_item(item: FetchItem) -> bool:
    """Whether the item fetches header data only (Dovecot's ``fetch_hdr_*`` counters)."""
    if isinstance(item, FetchBody):
        return item.section.text in _HEADER_TEXTS and not item.binary
    return item is FetchAttribute.RFC822_HEADER


def _local_time(timestamp: float) -> datetime.datetime:
    try:
        return datetime.datetime.fromtimestamp(timestamp).astimezone()
    except (OverflowError, OSError, ValueError):
        return datetime.datetime.fromtimestamp(0, datetime.UTC)


class _Message:
    """One message's data, loaded on first use."""

    __slots__ = ("_blob", "_parsed", "_structure", "info", "mailbox")

    def __init__(
        self, mailbox: MailboxProtocol, info: MessageInfo, blob: bytes | None = None
    ) -> None:
        self.mailbox = mailbox
        self.info = info
        self._blob = blob  # the cached structure, fetched for the whole batch
        self._parsed: ParsedMessage | None = None
        self._structure: tuple[bytes, bytes, bytes] | None = None

    def raw(self) -> bytes:
        """The message octets (CRLF), without parsing them."""
        if self._parsed is not None:
            return self._parsed.raw
        return self.mailbox.read_message_crlf(self.info.uid)

    @property
    def parsed(self) -> ParsedMessage:
        if self._parsed is None:
            self._parsed = ParsedMessage.parse(self.mailbox.read_message_crlf(self.info.uid))
        return self._parsed

    def structure(self) -> tuple[bytes, bytes, bytes]:
        """ENVELOPE, BODY and BODYSTRUCTURE, from the cache or parsed and cached."""
        if self._structure is None:
            blob = self._blob
            found = None if blob is None else _unpack(blob)
            if found is None:
                parsed = self.parsed
                found = (
                    envelope(parsed),
                    body_structure(parsed, False),
                    body_structure(parsed, True),
                )
                self.mailbox.cache_put(self.info.uid, STRUCTURE_FIELD, _pack(found))
            self._structure = found
        return self._structure


def _pack(parts: tuple[bytes, bytes, bytes]) -> bytes:
    return b"%d %d %d\n" % tuple(len(part) for part in parts) + b"".join(parts)


def _unpack(blob: bytes) -> tuple[bytes, bytes, bytes] | None:
    head, sep, rest = blob.partition(b"\n")
    try:
        sizes = [int(word) for word in head.split()]
    except ValueError:
        return None
    if not sep or len(sizes) != 3 or sum(sizes) != len(rest):
        return None
    first, second = sizes[0], sizes[0] + sizes[1]
    return rest[:first], rest[first:second], rest[second:]


_STRUCTURE_ITEMS: Final = frozenset(
    {FetchAttribute.ENVELOPE, FetchAttribute.BODY, FetchAttribute.BODYSTRUCTURE}
)


def fetch_batch(
    mailbox: MailboxProtocol, targets: Sequence[FetchTarget], plan: FetchPlan
) -> FetchBatch:
    """Build the ``FETCH`` responses of ``targets`` (reads files and the index).

    Stops after :data:`BATCH_OCTETS` of message data so one batch never holds much
    more than that; :attr:`FetchBatch.done` says how far it got.
    """
    batch = FetchBatch()
    octets = 0
    blobs: dict[int, bytes] = {}
    if any(item in _STRUCTURE_ITEMS for item in plan.items):
        blobs = mailbox.cache_get_many([target.info.uid for target in targets], STRUCTURE_FIELD)
    for target in targets:
        batch.done += 1
        message = _Message(mailbox, target.info, blobs.get(target.info.uid))
        try:
            values = _values(message, target, plan, batch)
        except MessageNotFound:
            batch.missing.append(target.info.uid)
            continue
        rendered = bytes(FetchResponse(target.msn, tuple(values)))
        octets += len(rendered)
        batch.responses.append(rendered)
        if octets >= BATCH_OCTETS:
            break
    return batch


def _values(
    message: _Message, target: FetchTarget, plan: FetchPlan, batch: FetchBatch
) -> list[FetchValue]:
    info = target.info
    values: list[FetchValue] = []
    items = plan.items
    if plan.uid and FetchAttribute.UID not in items:
        values.append(UidItem(info.uid))
    flags_shown = False
    for item in items:
        if isinstance(item, FetchBody):
            if not item.binary and not item.section.part and item.section.text is None:
                # BODY[] (the whole message): the octets as stored, no MIME parse.
                whole = message.raw()
                if item.partial is not None:
                    whole = partial(whole, *item.partial)
                _count(batch, item, len(whole))
                values.append(BodyItem(item, whole))
                continue
            data = fetch_body(message.parsed, item)
            if data is None:
                batch.unknown_cte = True
                continue
            _count(batch, item, len(data))
            values.append(BodyItem(item, data))
            continue
        if isinstance(item, FetchBinarySize):
            size = binary_size(message.parsed, item.part)
            if size is None:
                batch.unknown_cte = True
                continue
            values.append(BinarySizeItem(item.part, size))
            continue
        match item:
            case FetchAttribute.UID:
                values.append(UidItem(info.uid))
            case FetchAttribute.FLAGS:
                values.append(FlagsItem(target.flags))
                flags_shown = True
            case FetchAttribute.INTERNALDATE:
                values.append(InternalDateItem(_local_time(info.internal_date)))
            case FetchAttribute.RFC822_SIZE:
                values.append(SizeItem(info.vsize))
            case FetchAttribute.MODSEQ:
                values.append(ModSeqItem(info.modseq))
            case FetchAttribute.SAVEDATE:
                values.append(SaveDateItem(_local_time(info.save_date)))
            case FetchAttribute.EMAILID:
                digest = hashlib.sha1(info.base_name.encode(), usedforsecurity=False)
                values.append(EmailIdItem("M" + digest.hexdigest()[:24]))
            case FetchAttribute.THREADID:
                values.append(ThreadIdItem(None))
            case FetchAttribute.ENVELOPE:
                values.append(RawItem("ENVELOPE", message.structure()[0]))
            case FetchAttribute.BODY:
                values.append(RawItem("BODY", message.structure()[1]))
            case FetchAttribute.BODYSTRUCTURE:
                values.append(RawItem("BODYSTRUCTURE", message.structure()[2]))
            case FetchAttribute.RFC822:
                data = message.parsed.raw
                _count(batch, item, len(data))
                values.append(BodyItem(item, data))
            case FetchAttribute.RFC822_HEADER:
                data = fetch_body(message.parsed, _RFC822_HEADER) or b""
                _count(batch, item, len(data))
                values.append(BodyItem(item, data))
            case FetchAttribute.RFC822_TEXT:
                data = fetch_body(message.parsed, _RFC822_TEXT) or b""
                _count(batch, item, len(data))
                values.append(BodyItem(item, data))
    if target.add_flags and not flags_shown:
        values.append(FlagsItem(target.flags))
    if plan.modseq and FetchAttribute.MODSEQ not in items:
        values.append(ModSeqItem(info.modseq))
    return values


def _count(batch: FetchBatch, item: FetchItem, size: int) -> None:
    if is_header_item(item):
        batch.header_count += 1
        batch.header_octets += size
    else:
        batch.body_count += 1
        batch.body_octets += size


# --- SEARCH ----------------------------------------------------------------------------------


@dataclass(slots=True)
class SearchTarget:
    """One message to test: its number, index data and flags (``\\Recent`` included);
    one per message of each SEARCH, so a plain dataclass (read-only by convention)."""

    msn: int
    info: MessageInfo
    flags: frozenset[str]


#: The index cache field with the header fields SEARCH reads most (see
#: :data:`SEARCH_HEADER_FIELDS`), so ``SEARCH FROM x`` opens no message file twice.
SEARCH_HEADER_CACHE: Final = "search-header"
#: The header fields kept in :data:`SEARCH_HEADER_CACHE` (those of ENVELOPE).
SEARCH_HEADER_FIELDS: Final = frozenset(
    {
        "from", "to", "cc", "bcc", "subject", "date", "sender", "reply-to", "message-id",
        "in-reply-to", "references",
    }
)  # fmt: skip


def search_header(message: bytes) -> bytes:
    """The fields of :data:`SEARCH_HEADER_FIELDS` of ``message`` (CRLF), as a header."""
    data = to_crlf(message)
    end = data.find(b"\r\n\r\n")
    header = data if end < 0 else data[: end + 2]
    kept: list[bytes] = []
    keep = False
    for line in header.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if keep:
                kept.append(line)
            continue
        name = line.partition(b":")[0].strip().lower()
        keep = name.decode("latin-1") in SEARCH_HEADER_FIELDS
        if keep:
            kept.append(line)
    return b"".join(line + b"\r\n" for line in kept) + b"\r\n"


def search_messages(
    mailbox: MailboxProtocol,
    targets: Sequence[SearchTarget],
    key: SearchKey,
    *,
    max_uid: int,
    zone: datetime.tzinfo,
) -> list[SearchTarget]:
    """The targets that match ``key`` (reads files and the index).

    A key on the usual header fields (FROM, TO, SUBJECT, SENTSINCE...) is answered from
    the index's :data:`SEARCH_HEADER_CACHE`; the messages it lacks are read once and
    added to it. A message expunged meanwhile is searched as an empty message.
    """
    max_msn = len(targets)
    found: list[SearchTarget] = []
    fields = header_fields(key) if needs_message(key) else None
    cached: dict[int, bytes] | None = None
    fresh: dict[int, bytes] = {}
    if fields is not None and fields <= SEARCH_HEADER_FIELDS:
        cached = mailbox.cache_get_many([t.info.uid for t in targets], SEARCH_HEADER_CACHE)
    for target in targets:
        info = target.info
        header = None if cached is None else cached.get(info.uid)

        def load(uid: int = info.uid) -> ParsedMessage:
            try:
                if cached is None:
                    return ParsedMessage.parse(mailbox.read_message_crlf(uid))
                blob = cached.get(uid)
                if blob is None:
                    blob = fresh[uid] = search_header(mailbox.read_message_crlf(uid))
                return ParsedMessage.parse(blob)
            except MessageNotFound:
                return ParsedMessage.parse(b"")

        context = MessageContext(
            msn=target.msn,
            uid=info.uid,
            flags=target.flags,
            internal_date=info.internal_date,
            size=info.vsize,
            max_msn=max_msn,
            max_uid=max_uid,
            message=load,
            mod_seq=info.modseq,
            zone=zone,
            header=header,
        )
        if matches(key, context):
            found.append(target)
    if fresh:
        mailbox.cache_put_many(SEARCH_HEADER_CACHE, fresh)
    return found


def has_modseq(key: SearchKey) -> bool:
    """Whether the criteria use ``MODSEQ`` (then the reply carries ``(MODSEQ n)``)."""
    match key:
        case SearchModSeq():
            return True
        case SearchNot(key=inner):
            return has_modseq(inner)
        case SearchOr(left=left, right=right):
            return has_modseq(left) or has_modseq(right)
        case SearchAnd(keys=keys):
            return any(has_modseq(inner) for inner in keys)
        case _:
            return False


def substitute_saved(key: SearchKey, saved_uids: Sequence[int]) -> SearchKey:
    """Replace ``$`` (RFC 5182 §2.1) in the criteria by the saved UIDs."""
    match key:
        case SearchSequence(sequence_set=sequence_set) if sequence_set.saved:
            if not saved_uids:
                return SearchNot(SearchSequence(SequenceSet(((1, None),)), uid=True))
            return SearchSequence(SequenceSet.of(saved_uids), uid=True)
        case SearchNot(key=inner):
            return SearchNot(substitute_saved(inner, saved_uids))
        case SearchOr(left=left, right=right):
            return SearchOr(substitute_saved(left, saved_uids), substitute_saved(right, saved_uids))
        case SearchAnd(keys=keys):
            return SearchAnd(tuple(substitute_saved(inner, saved_uids) for inner in keys))
        case _:
            return key

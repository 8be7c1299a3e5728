"""IMAP4rev1 (RFC 3501) and IMAP4rev2 (RFC 9051) server protocol, sans-IO.

This package turns client octets into command values and server values into octets. It
has no asyncio, sockets, files or store: the session (the asyncio side, written against
this API) reads and writes the socket, calls the store and decides what to answer.

Modules:

* :mod:`roost.imap.connection`: :class:`Connection`, the h11-style state machine:
  ``receive_data(octets)`` in, ``next_event()`` out; :class:`State` and
  :func:`valid_in` (the RFC 9051 §3 state table, :data:`VALID_STATES`).
* :mod:`roost.imap.commands`: one frozen dataclass per command (``Login``, ``Select``,
  ``Fetch``...), search key trees and fetch items.
* :mod:`roost.imap.grammar`: element parsers (``parse_atom(buf, pos) -> (value, end)``...)
  and :func:`parse_command`; :class:`ParseError` (reply ``BAD``).
* :mod:`roost.imap.sequence`: :class:`SequenceSet` (``1:4,7,9:*``, ``$``).
* :mod:`roost.imap.response`: response values whose ``bytes()`` is the wire form, and
  :class:`ResponseCode` with the RFC 5530 codes.

A session loop, in outline::

    conn = Connection(max_append_size=append_limit)
    send(UntaggedResponse("OK", "roost ready", ResponseCode.capability(caps)))
    while True:
        event = conn.next_event()
        match event:
            case NeedData():
                conn.receive_data(await reader.read(65536))    # b"" at EOF
            case ContinuationNeeded():
                send(CONTINUE_LITERAL)                        # "+ Ready for literal data"
            case BadCommand() | LineTooLong():
                send(event.response())
            case ConnectionClosed():
                break
            case Idle(tag=tag):
                send(ContinuationResponse("idling")); conn.start_idle(tag)
            case IdleDone(tag=tag):
                send(TaggedResponse(tag, "OK", "IDLE terminated"))
            case Authenticate():
                conn.start_authenticate()   # then AuthenticateResponse events,
                ...                         # conn.end_authenticate() when done
            case Command():
                await HANDLERS[type(event)](session, event)   # may set conn.state

Commands reach the session only when they are complete, well-formed and valid in
``conn.state``; the session sets ``conn.state`` (and ``conn.utf8`` after
``ENABLE UTF8=ACCEPT``) as commands succeed. A ``UID`` command is the same type as its
plain form with ``uid=True`` (``UID EXPUNGE`` is :class:`UidExpunge`).

Replies go out as ``bytes(response)``: ``TaggedResponse(tag, "NO", "no such mailbox",
NONEXISTENT)`` renders ``a1 NO [NONEXISTENT] no such mailbox\\r\\n``. ``ENVELOPE``,
``BODY`` and ``BODYSTRUCTURE`` values are computed by the session (stdlib ``email``) and
passed through as :class:`RawItem`. Mailbox names are ``str``; modified UTF-7 is the
store's business (RFC 9051 §5.1.3).
"""

from __future__ import annotations

from roost.imap.commands import (
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Compress,
    Copy,
    Create,
    Delete,
    Enable,
    Examine,
    Expunge,
    Fetch,
    FetchAttribute,
    FetchBinarySize,
    FetchBody,
    FetchItem,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QResync,
    Rename,
    Search,
    SearchKey,
    SearchReturn,
    Section,
    SectionText,
    Select,
    SelectCommand,
    SetQuota,
    StartTLS,
    Status,
    Store,
    StoreMode,
    Subscribe,
    UidExpunge,
    Unselect,
    Unsubscribe,
)
from roost.imap.connection import (
    NEED_DATA,
    VALID_STATES,
    AuthenticateResponse,
    BadCommand,
    Connection,
    ConnectionClosed,
    ContinuationNeeded,
    Event,
    IdleDone,
    LineTooLong,
    NeedData,
    State,
    valid_in,
)
from roost.imap.grammar import BadCharsetError, ParseError, parse_command, parse_command_bytes
from roost.imap.response import (
    CONTINUE_LITERAL,
    ContinuationResponse,
    RawItem,
    ResponseCode,
    TaggedResponse,
    UntaggedResponse,
)
from roost.imap.sequence import SequenceSet

__all__ = [
    "CONTINUE_LITERAL",
    "NEED_DATA",
    "VALID_STATES",
    "Append",
    "AppendMessage",
    "Authenticate",
    "AuthenticateResponse",
    "BadCharsetError",
    "BadCommand",
    "Capability",
    "Check",
    "Close",
    "Command",
    "Compress",
    "Connection",
    "ConnectionClosed",
    "ContinuationNeeded",
    "ContinuationResponse",
    "Copy",
    "Create",
    "Delete",
    "Enable",
    "Event",
    "Examine",
    "Expunge",
    "Fetch",
    "FetchAttribute",
    "FetchBinarySize",
    "FetchBody",
    "FetchItem",
    "GetQuota",
    "GetQuotaRoot",
    "Id",
    "Idle",
    "IdleDone",
    "LineTooLong",
    "List",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "Namespace",
    "NeedData",
    "Noop",
    "ParseError",
    "QResync",
    "RawItem",
    "Rename",
    "ResponseCode",
    "Search",
    "SearchKey",
    "SearchReturn",
    "Section",
    "SectionText",
    "Select",
    "SelectCommand",
    "SequenceSet",
    "SetQuota",
    "StartTLS",
    "State",
    "Status",
    "Store",
    "StoreMode",
    "Subscribe",
    "TaggedResponse",
    "UidExpunge",
    "Unselect",
    "Unsubscribe",
    "UntaggedResponse",
    "parse_command",
    "parse_command_bytes",
    "valid_in",
]

"""Messages for ``FETCH`` and ``SEARCH``: structure, ENVELOPE, BODYSTRUCTURE, sections, text.

:meth:`ParsedMessage.parse` reads a message once and records where each MIME part's
header and body lie in the raw octets, so every ``BODY[section]`` is a slice of the
original message, exactly as RFC 9051 §6.4.5 requires (no re-serialisation as the
stdlib ``email`` generator would do). The module functions then render what ``FETCH``
needs:

* :func:`envelope`: the ``ENVELOPE`` structure (RFC 9051 §7.5.2);
* :func:`body_structure`: ``BODY`` (``extensible=False``) or ``BODYSTRUCTURE``;
* :func:`section`: ``BODY[...]`` data, :func:`partial` for ``<origin.count>``;
* :func:`binary` and :func:`binary_size`: ``BINARY[...]`` and ``BINARY.SIZE[...]``
  (RFC 3516); :func:`fetch_body` puts section, binary and partial together.

``SEARCH`` uses :meth:`ParsedMessage.header_values`, :meth:`ParsedMessage.sent_date`,
:meth:`ParsedMessage.header_text_for_search` and :meth:`ParsedMessage.text_for_search`.

The output follows Dovecot's, so a client sees the same answers after a migration:

* the MIME structure is found the way Dovecot's ``message-parser`` finds it: a boundary
  line is any line that starts with ``--boundary`` (the longest matching boundary of the
  enclosing multiparts wins), an outer boundary ends the inner multiparts, a missing close
  delimiter ends the part at the end of the message, and the line break before a boundary
  line belongs to the boundary (RFC 2046 §5.1.1);
* ``Content-*`` fields count only in MIME entities: the parts of a multipart, and
  messages with ``MIME-Version`` or ``Content-Type`` (RFC 2045 §4); an unusable
  ``Content-Type`` means ``text/plain; charset=us-ascii`` (RFC 2045 §5.2), or
  ``message/rfc822`` inside ``multipart/digest`` (RFC 2046 §5.1.5);
* a multipart without parts (no boundary parameter, or no boundary line) is shown with
  one empty ``text/plain`` part, since the grammar needs at least one;
* strings are shown as they appear in the header: RFC 2047 encoded words stay encoded,
  folding is removed, 8-bit octets are sent in a literal and NUL becomes U+FFFD;
  parameter names keep their case and RFC 2231 continuations are joined
  (``filename*`` keeps its ``charset'lang'`` encoding for the client to decode); text
  parts without a ``charset`` parameter get ``("charset" "us-ascii")``;
* an address that cannot be parsed keeps its place with ``MISSING_MAILBOX``,
  ``MISSING_DOMAIN`` or ``SYNTAX_ERROR`` in the missing field.

Nesting is limited to :data:`MAX_DEPTH` levels and a message to :data:`MAX_PARTS` parts;
deeper or further parts are content of the part around them. No function here raises on
any input octets. No I/O.
"""

from __future__ import annotations

import binascii
import codecs
import datetime
import email.utils
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from roost.imap.commands import FetchBody, Section, SectionText
from roost.imap.response import render_string

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "ContentInfo",
    "EnvelopeAddress",
    "HeaderField",
    "MimePart",
    "ParsedMessage",
    "binary",
    "binary_size",
    "body_structure",
    "decode_header_value",
    "envelope",
    "fetch_body",
    "parse_address_list",
    "partial",
    "section",
]

MAX_DEPTH: Final = 100
"""How deep multiparts and message/rfc822 parts may nest (Dovecot's default too)."""

MAX_PARTS: Final = 10_000
"""How many MIME parts one message may have (Dovecot's default too)."""

_LF: Final = 0x0A
_CR: Final = 0x0D
_REPLACEMENT: Final = "\ufffd".encode()
_NIL: Final = b"NIL"
_US_ASCII: Final = b'"charset" "us-ascii"'
_EMPTY_BODY: Final = b'("text" "plain" (' + _US_ASCII + b') NIL NIL "7bit" 0 0)'
_EMPTY_BODYSTRUCTURE: Final = (
    b'("text" "plain" (' + _US_ASCII + b') NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'
)
_EMPTY_ENVELOPE: Final = b"(" + b" ".join([_NIL] * 10) + b")"
_IDENTITY_ENCODINGS: Final = frozenset({b"7bit", b"8bit", b"binary"})

# RFC 5322 atext, with 8-bit octets (RFC 6532); MIME tokens (RFC 2045 §5.1) leave out
# "/", "=" and "?" and take "." in.
_ATEXT: Final = rb"!#$%&'*+\-/=?^_`{|}~0-9A-Za-z\x80-\xff"
_ATOM_RE: Final = re.compile(b"[" + _ATEXT + b"]+")
_ATOM_OR_DOT_RE: Final = re.compile(b"[" + _ATEXT + b".]+")
_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`{|}~0-9A-Za-z\x80-\xff]+")
_LOOSE_VALUE_RE: Final = re.compile(rb'[^;"\s()]+')
_ATEXT_OCTETS: Final = frozenset(
    b"!#$%&'*+-/=?^_`{|}~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
) | frozenset(range(0x80, 0x100))
_WS_RE: Final = re.compile(rb"[ \t\r\n]+")
_QUOTED_RE: Final = re.compile(rb'"((?:[^"\\]+|\\.)*)("?)', re.DOTALL)
_COMMENT_SPECIAL_RE: Final = re.compile(rb"[()\\]")
_DOMAIN_LITERAL_RE: Final = re.compile(rb"\[(?:[^\]\\]|\\.)*\]", re.DOTALL)
_FOLD_RE: Final = re.compile(rb"[\r\n]+(?=[^ \t\r\n])")
_NEWLINES_RE: Final = re.compile(rb"[\r\n]+")
_RFC2231_KEY_RE: Final = re.compile(rb"([0-9]{0,9})(\*?)")
_ENCODED_WORD_RE: Final = re.compile(rb"=\?([^?\s]*)\?([BbQq])\?([^?\s]*)\?=")
_CHARSET_NAME_RE: Final = re.compile(r"[A-Za-z0-9._:+-]{1,40}")
_NOT_BASE64_RE: Final = re.compile(rb"[^A-Za-z0-9+/=]+")
_UNSAFE_CODECS: Final = frozenset(
    {"undefined", "unicode_escape", "raw_unicode_escape", "idna", "punycode"}
)


# --- header fields (RFC 5322 §2.2) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field exactly as written.

    Attributes:
        name: the field name before the colon, trailing white space removed; ``b""`` for
            a line that is no field (no colon, or a continuation line with nothing to
            continue).
        raw: the whole field: name, colon, value, continuation lines and line breaks.
    """

    name: bytes
    raw: bytes

    @property
    def key(self) -> bytes:
        """The name in lower case, for case-insensitive comparison (RFC 5322 §1.2.2)."""
        return self.name.lower()

    @property
    def value(self) -> bytes:
        """The text after the colon, unfolded (RFC 5322 §2.2.3), leading blanks removed.

        Line breaks are dropped; one between two lines that did not start with white space
        (a bare CR or LF in a line) becomes a space, as Dovecot does.
        """
        if not self.name:
            return b""
        return _unfold(self.raw[self.raw.index(b":") + 1 :]).lstrip(b" \t")


def _unfold(data: bytes) -> bytes:
    if b"\n" not in data and b"\r" not in data:
        return data
    return _NEWLINES_RE.sub(b"", _FOLD_RE.sub(b" ", data))


def _field(raw: bytes, start: int, end: int) -> HeaderField | None:
    if end <= start:
        return None
    data = raw[start:end]
    line_end = data.find(b"\n")
    colon = data.find(b":", 0, len(data) if line_end < 0 else line_end)
    if colon < 0 or data[0] in (0x20, 0x09):
        return HeaderField(b"", data)
    return HeaderField(data[:colon].rstrip(b" \t"), data)


# --- MIME structure (RFC 2045, RFC 2046) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContentInfo:
    """What the ``Content-*`` fields of a MIME part say (RFC 2045, RFC 2183, RFC 3282).

    Values are octets as written (case kept), without quoting and comments.

    Attributes:
        media_type: ``Content-Type`` type, e.g. ``b"text"`` (default ``text/plain``).
        subtype: ``Content-Type`` subtype, e.g. ``b"plain"``.
        params: the ``Content-Type`` parameters in order, RFC 2231 continuations joined.
        id: ``Content-ID``, or ``None``.
        description: ``Content-Description``, or ``None``.
        transfer_encoding: the ``Content-Transfer-Encoding`` token, or ``None`` (7bit).
        md5: ``Content-MD5`` (RFC 1864), or ``None``.
        disposition: the ``Content-Disposition`` type (RFC 2183), or ``None``.
        disposition_params: the ``Content-Disposition`` parameters.
        language: the ``Content-Language`` tags (RFC 3282).
        location: ``Content-Location`` (RFC 2557), or ``None``.
    """

    media_type: bytes = b"text"
    subtype: bytes = b"plain"
    params: tuple[tuple[bytes, bytes], ...] = ()
    id: bytes | None = None
    description: bytes | None = None
    transfer_encoding: bytes | None = None
    md5: bytes | None = None
    disposition: bytes | None = None
    disposition_params: tuple[tuple[bytes, bytes], ...] = ()
    language: tuple[bytes, ...] = ()
    location: bytes | None = None

    @property
    def kind(self) -> Literal["multipart", "message", "single"]:
        """``multipart`` (any ``multipart/*``), ``message`` (``message/rfc822``) or ``single``.

        Only ``message/rfc822`` encapsulates a message here: ``message/global`` (RFC 6532)
        is a single part, as in Dovecot, because IMAP4rev1 clients do not expect an
        envelope after it.
        """
        media_type = self.media_type.lower()
        if media_type == b"multipart":
            return "multipart"
        if media_type == b"message" and self.subtype.lower() == b"rfc822":
            return "message"
        return "single"

    @property
    def is_text(self) -> bool:
        """Whether the type is ``text`` (its BODYSTRUCTURE has a line count)."""
        return self.media_type.lower() == b"text"

    def param(self, name: str) -> bytes | None:
        """The first ``Content-Type`` parameter called ``name`` (any case), or ``None``."""
        wanted = name.encode("ascii", "replace").lower()
        for key, value in self.params:
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True, slots=True)
class MimePart:
    """A MIME entity and where it lies in the raw message (offsets in octets).

    The whole message is a ``MimePart`` too (its header is the message header). A
    multipart has its parts in ``children``; a ``message/rfc822`` part has the
    encapsulated message in ``message``.

    Attributes:
        header_start: the first octet of the header.
        fields_end: the end of the last header field (the blank line starts here).
        header_end: the end of the header, blank line included; the body starts here.
        body_end: the end of the body (the line break before a boundary line is not
            part of it, RFC 2046 §5.1.1).
        fields: the header fields in order.
        content: what the ``Content-*`` fields say.
        children: the parts of a multipart; empty when none were found.
        message: the encapsulated message of a ``message/rfc822`` part.
        lines: the number of lines in the body (line feeds counted).
    """

    header_start: int
    fields_end: int
    header_end: int
    body_end: int
    fields: tuple[HeaderField, ...]
    content: ContentInfo
    children: tuple[MimePart, ...] = ()
    message: MimePart | None = None
    lines: int = 0

    @property
    def body_start(self) -> int:
        """The first octet of the body (the same as ``header_end``)."""
        return self.header_end

    @property
    def body_size(self) -> int:
        """The size of the body in octets (BODYSTRUCTURE body-fld-octets)."""
        return self.body_end - self.header_end


@dataclass(frozen=True, slots=True)
class _Stop:
    """A boundary line that ended a part: the boundary's index in the stack, whether it
    is a close delimiter, where the part's body ends and where the next line starts."""

    index: int
    close: bool
    body_end: int
    next: int


def _boundary_at(
    raw: bytes, pos: int, line_end: int, stack: tuple[bytes, ...]
) -> tuple[int, bool] | None:
    # The line at pos starts with "--". It belongs to the longest boundary in the stack
    # that starts the rest of the line (the innermost among equals), Dovecot's rule.
    content_end = line_end
    if content_end > pos and raw[content_end - 1] == _LF:
        content_end -= 1
    if content_end > pos and raw[content_end - 1] == _CR:
        content_end -= 1
    start = pos + 2
    size = content_end - start
    if size > 2 and raw.startswith(b"--", content_end - 2):
        size -= 2
    best, best_len = -1, -1
    for index in range(len(stack) - 1, -1, -1):
        boundary = stack[index]
        if best_len < len(boundary) <= size and raw.startswith(boundary, start):
            best, best_len = index, len(boundary)
            if best_len == size:
                break
    if best < 0:
        return None
    close = start + best_len + 2 <= content_end and raw.startswith(b"--", start + best_len)
    return best, close


def _find_boundary(raw: bytes, pos: int, stack: tuple[bytes, ...]) -> _Stop | None:
    # The first boundary line at or after pos (a line start) of any boundary in stack.
    if not stack:
        return None
    size = len(raw)
    line = pos if raw.startswith(b"--", pos) else -1
    search = pos
    while True:
        if line < 0:
            found = raw.find(b"\n--", search)
            if found < 0:
                return None
            line = found + 1
        newline = raw.find(b"\n", line)
        line_end = size if newline < 0 else newline + 1
        hit = _boundary_at(raw, line, line_end, stack)
        if hit is not None:
            body_end = line
            if line > pos:
                body_end = line - 1
                if body_end > pos and raw[body_end - 1] == _CR:
                    body_end -= 1
            return _Stop(hit[0], hit[1], body_end, line_end)
        search, line = line, -1


def _scan_header(
    raw: bytes, start: int, stack: tuple[bytes, ...]
) -> tuple[list[HeaderField], int, int, _Stop | None]:
    """Split the header at ``start`` into fields.

    Returns:
        The fields, the end of the fields, the end of the header (after the blank line)
        and the boundary line that cut the header short, if one did (then the part has no
        body and the line break before the boundary line is the boundary's).
    """
    size = len(raw)
    fields: list[HeaderField] = []
    field_start = -1
    pos = start
    newline_size = 0

    def close(end: int) -> None:
        field = _field(raw, field_start, end)
        if field is not None:
            fields.append(field)

    while pos < size:
        newline = raw.find(b"\n", pos)
        line_end = size if newline < 0 else newline + 1
        first = raw[pos]
        if first == _LF or (first == _CR and pos + 1 < size and raw[pos + 1] == _LF):
            close(pos)
            return fields, pos, line_end, None
        if stack and raw.startswith(b"--", pos):
            hit = _boundary_at(raw, pos, line_end, stack)
            if hit is not None:
                end = max(start, pos - newline_size)
                close(end)
                return fields, end, end, _Stop(hit[0], hit[1], end, line_end)
        if first not in (0x20, 0x09) or field_start < 0:
            close(pos)
            field_start = pos
        newline_size = 0 if newline < 0 else (2 if newline > pos and raw[newline - 1] == _CR else 1)
        pos = line_end
    close(size)
    return fields, size, size, None


class _Parser:
    __slots__ = ("parts", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.parts = 0

    def entity(
        self, start: int, stack: tuple[bytes, ...], depth: int, *, mime: bool, digest: bool
    ) -> tuple[MimePart, _Stop | None]:
        """Parse the entity (header and body) at ``start``.

        Args:
            start: where its header starts.
            stack: the boundaries of the enclosing multiparts, outermost first.
            depth: how many multiparts and messages enclose it.
            mime: it is a part of a multipart (its Content-* fields count even without
                MIME-Version).
            digest: it is a part of a multipart/digest (default type message/rfc822).

        Returns:
            The part and the boundary line that ended it (``None``: the end of the message).
        """
        raw = self.raw
        self.parts += 1
        fields, fields_end, header_end, stop = _scan_header(raw, start, stack)
        content = _content_info(fields, mime=mime, digest=digest)
        kind = content.kind
        children: tuple[MimePart, ...] = ()
        message: MimePart | None = None
        deeper = depth < MAX_DEPTH and self.parts < MAX_PARTS
        if stop is not None:
            pass
        elif kind == "multipart" and deeper and (boundary := content.param("boundary")):
            children, stop = self._multipart(header_end, stack, boundary, depth, content)
        elif kind == "message" and deeper:
            message, stop = self.entity(header_end, stack, depth + 1, mime=False, digest=False)
        else:
            stop = _find_boundary(raw, header_end, stack)
        body_end = len(raw) if stop is None else max(header_end, stop.body_end)
        part = MimePart(
            header_start=start,
            fields_end=fields_end,
            header_end=header_end,
            body_end=body_end,
            fields=tuple(fields),
            content=content,
            children=children,
            message=message,
            lines=raw.count(b"\n", header_end, body_end),
        )
        return part, stop

    def _multipart(
        self,
        body_start: int,
        stack: tuple[bytes, ...],
        boundary: bytes,
        depth: int,
        content: ContentInfo,
    ) -> tuple[tuple[MimePart, ...], _Stop | None]:
        raw = self.raw
        inner = (*stack, boundary)
        ours = len(stack)
        digest = content.subtype.lower() == b"digest"
        children: list[MimePart] = []
        stop = _find_boundary(raw, body_start, inner)
        while stop is not None and stop.index == ours:
            if stop.close or self.parts >= MAX_PARTS:
                # The epilogue (or what is beyond the part limit) runs to an outer
                # boundary line or the end of the message.
                stop = _find_boundary(raw, stop.next, stack)
                break
            child, stop = self.entity(stop.next, inner, depth + 1, mime=True, digest=digest)
            children.append(child)
        return tuple(children), stop


# --- Content-* field values (RFC 2045 §5, RFC 2231, RFC 2183) ----------------------------


def _unquote(content: bytes) -> bytes:
    # Resolve quoted pairs: "\\x" is "x" (RFC 5322 §3.2.1).
    if b"\\" not in content:
        return content
    pieces = content.split(b"\\")
    out = [pieces[0]]
    escaped = True  # the piece starts right after a backslash
    for piece in pieces[1:]:
        if escaped and not piece:
            out.append(b"\\")  # an escaped backslash; the next piece is plain text
            escaped = False
        else:
            out.append(piece)
            escaped = True
    return b"".join(out)


def _skip_ws(data: bytes, pos: int) -> int:
    match = _WS_RE.match(data, pos)
    return pos if match is None else match.end()


class _Lexer:
    """RFC 5322 §3.2 lexical tokens over one unfolded field value."""

    __slots__ = ("comment", "data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.comment: bytes | None = None

    def more(self) -> bool:
        return self.pos < len(self.data)

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def take(self, pattern: re.Pattern[bytes]) -> bytes:
        match = pattern.match(self.data, self.pos)
        if match is None:
            return b""
        self.pos = match.end()
        return match.group()

    def skip_cfws(self) -> bool:
        """Skip white space and comments; ``True`` when something follows."""
        data = self.data
        while True:
            self.pos = _skip_ws(data, self.pos)
            if self.pos < len(data) and data[self.pos] == 0x28:
                self._comment()
                continue
            return self.pos < len(data)

    def _comment(self) -> None:
        # At "(": skip a (nested) comment, keeping its text in self.comment.
        data = self.data
        pieces: list[bytes] = []
        depth = 0
        segment = self.pos + 1
        pos = self.pos
        while True:
            match = _COMMENT_SPECIAL_RE.search(data, pos)
            if match is None:
                pieces.append(data[segment:])
                self.pos = len(data)
                break
            at = match.start()
            octet = data[at]
            if octet == 0x5C:
                pieces.append(data[segment:at])
                segment, pos = at + 1, at + 2
                continue
            pos = at + 1
            if octet == 0x28:
                depth += 1
                continue
            depth -= 1
            if depth == 0:
                pieces.append(data[segment:at])
                self.pos = pos
                break
        self.comment = b"".join(pieces)

    def quoted(self) -> bytes:
        """At ``"``: a quoted string's content, quoted pairs resolved (unterminated: the rest)."""
        match = _QUOTED_RE.match(self.data, self.pos)
        if match is None:  # pragma: no cover - the pattern matches any '"'
            self.pos += 1
            return b""
        self.pos = match.end()
        value = _unquote(match.group(1))
        self.skip_cfws()
        return value

    def atom(self) -> bytes:
        text = self.take(_ATOM_RE)
        if text:
            self.skip_cfws()
        return text

    def dot_atom(self) -> bytes | None:
        """``dot-atom`` with CFWS allowed around the dots (RFC 5322 §4.4); ``None`` if absent."""
        if self.peek() not in _ATEXT_OCTETS:
            return None
        pieces = [self.take(_ATOM_RE)]
        while self.skip_cfws() and self.peek() == 0x2E:
            self.pos += 1
            self.skip_cfws()
            pieces.append(self.take(_ATOM_RE))
        return b".".join(pieces)

    def phrase(self) -> bytes | None:
        """``phrase``/``obs-phrase``: words joined by a space; ``None`` if it starts with "."."""
        if not self.more():
            return b""
        if self.peek() == 0x2E:
            return None
        words: list[bytes] = []
        while True:
            if self.peek() == 0x22:
                words.append(self.quoted())
            else:
                words.append(self.take(_ATOM_OR_DOT_RE))
                self.skip_cfws()
            following = self.peek()
            if not (following in _ATEXT_OCTETS or following in (0x22, 0x2E)):
                break
        return b" ".join(words)

    def domain(self) -> bytes | None:
        """At ``@``: the domain (dot-atom or domain literal); ``None`` if broken."""
        self.pos += 1
        if not self.skip_cfws():
            return None
        if self.peek() == 0x5B:
            literal = self.take(_DOMAIN_LITERAL_RE)
            if not literal:
                return None
            self.skip_cfws()
            return literal
        return self.dot_atom()


def _parse_params(lexer: _Lexer) -> tuple[tuple[bytes, bytes], ...]:
    """``*(";" parameter)`` with RFC 2231 continuations joined, tolerant of junk."""
    plain: list[tuple[bytes, bytes]] = []
    sections: dict[bytes, list[tuple[int, bool, bytes]]] = {}
    while lexer.more():
        if lexer.peek() != 0x3B:
            lexer.pos += 1
            continue
        lexer.pos += 1
        if not lexer.skip_cfws():
            break
        key = lexer.take(_TOKEN_RE)
        lexer.skip_cfws()
        if not key or lexer.peek() != 0x3D:
            continue
        lexer.pos += 1
        if not lexer.skip_cfws():
            value = b""
        elif lexer.peek() == 0x22:
            value = lexer.quoted()
        else:
            value = lexer.take(_LOOSE_VALUE_RE)
            lexer.skip_cfws()
        star = key.find(b"*")
        match = _RFC2231_KEY_RE.fullmatch(key, star + 1) if star > 0 else None
        if match is None:
            plain.append((key, value))
        else:
            index = int(match.group(1) or b"0")
            extended = bool(match.group(2)) or not match.group(1)
            sections.setdefault(key[:star], []).append((index, extended, value))
    for name in sorted(sections):
        pieces = sorted(sections[name], key=lambda piece: piece[0])
        if [index for index, _, _ in pieces] != list(range(len(pieces))):
            # Numbers missing or repeated: these are no RFC 2231 continuations.
            for index, extended, value in pieces:
                plain.append((name + b"*%d" % index + (b"*" if extended else b""), value))
            continue
        if not any(extended for _, extended, _ in pieces):
            plain.append((name, b"".join(value for _, _, value in pieces)))
            continue
        joined = b"" if pieces[0][1] else b"''"
        for _, extended, value in pieces:
            joined += value if extended else value.replace(b"%", b"%25")
        plain.append((name + b"*", joined))
    return tuple(plain)


_Params = tuple[tuple[bytes, bytes], ...]


def _parse_content_type(value: bytes) -> tuple[bytes, bytes, _Params] | None:
    lexer = _Lexer(value)
    if not lexer.skip_cfws():
        return None
    media_type = lexer.take(_TOKEN_RE)
    lexer.skip_cfws()
    if not media_type or lexer.peek() != 0x2F:
        return None
    lexer.pos += 1
    lexer.skip_cfws()
    subtype = lexer.take(_TOKEN_RE)
    if not subtype:
        return None
    lexer.skip_cfws()
    return media_type, subtype, _parse_params(lexer)


def _parse_token(value: bytes) -> bytes | None:
    # Content-Transfer-Encoding: one token and nothing else (RFC 2045 §6.1).
    lexer = _Lexer(value)
    lexer.skip_cfws()
    token = lexer.take(_TOKEN_RE)
    if not token or lexer.skip_cfws():
        return None
    return token


def _parse_disposition(value: bytes) -> tuple[bytes | None, tuple[tuple[bytes, bytes], ...]]:
    lexer = _Lexer(value)
    lexer.skip_cfws()
    token = lexer.take(_TOKEN_RE)
    if not token:
        return None, ()
    lexer.skip_cfws()
    return token, _parse_params(lexer)


def _parse_language(value: bytes) -> tuple[bytes, ...]:
    # Content-Language: 1#Language-tag (RFC 3282 §2).
    lexer = _Lexer(value)
    lexer.skip_cfws()
    tags: list[bytes] = []
    while True:
        tag = lexer.atom()
        if not tag:
            break
        tags.append(tag)
        if lexer.peek() != 0x2C:
            break
        lexer.pos += 1
        lexer.skip_cfws()
    return tuple(tags)


def _content_info(fields: Iterable[HeaderField], *, mime: bool, digest: bool) -> ContentInfo:
    values: dict[bytes, bytes] = {}
    for field in fields:
        key = field.key
        if key.startswith(b"content-"):
            values.setdefault(key, field.value)
        elif key == b"mime-version":
            mime = True
    if b"content-type" in values:
        mime = True
    default = ContentInfo(b"message", b"rfc822") if digest else ContentInfo()
    if not mime:
        return default
    content_type = values.get(b"content-type")
    parsed = None if content_type is None else _parse_content_type(content_type)
    media_type, subtype, params = (
        (default.media_type, default.subtype, ()) if parsed is None else parsed
    )
    encoding = values.get(b"content-transfer-encoding")
    disposition = values.get(b"content-disposition")
    language = values.get(b"content-language")
    disposition_type, disposition_params = (
        (None, ()) if disposition is None else _parse_disposition(disposition)
    )
    return ContentInfo(
        media_type=media_type,
        subtype=subtype,
        params=params,
        id=values.get(b"content-id"),
        description=values.get(b"content-description"),
        transfer_encoding=None if encoding is None else _parse_token(encoding),
        md5=values.get(b"content-md5"),
        disposition=disposition_type,
        disposition_params=disposition_params,
        language=() if language is None else _parse_language(language),
        location=values.get(b"content-location"),
    )


# --- addresses (RFC 5322 §3.4) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnvelopeAddress:
    """One address structure of the ENVELOPE (RFC 9051 §7.5.2).

    A group is a start marker (``mailbox`` is the group name, ``host`` is ``None``), its
    members, and an end marker (all fields ``None``).

    Attributes:
        name: the display name (or the comment after an addr-spec), RFC 2047 words kept.
        route: the obsolete source route (``@a,@b``), or ``None``.
        mailbox: the local part without quoting, or the group name.
        host: the domain, or ``None`` in group markers.
    """

    name: bytes | None
    route: bytes | None
    mailbox: bytes | None
    host: bytes | None

    def __bytes__(self) -> bytes:
        fields = (self.name, self.route, self.mailbox, self.host)
        return b"(" + b" ".join(map(_nstring, fields)) + b")"


_GROUP_END: Final = EnvelopeAddress(None, None, None, None)


def _fixed(
    name: bytes | None, route: bytes | None, mailbox: bytes | None, host: bytes | None
) -> EnvelopeAddress:
    return EnvelopeAddress(
        name, route, b"MISSING_MAILBOX" if mailbox is None else mailbox, host or b"MISSING_DOMAIN"
    )


def _local_part(lexer: _Lexer) -> bytes | None:
    return lexer.quoted() if lexer.peek() == 0x22 else lexer.dot_atom()


def _angle_addr(lexer: _Lexer, name: bytes | None) -> EnvelopeAddress:
    # At "<": "<" [route ":"] [local-part ["@" domain]] ">"  (obs-angle-addr, RFC 5322 §4.4)
    lexer.pos += 1
    route: bytes | None = None
    mailbox: bytes | None = None
    host: bytes | None = None
    if not lexer.skip_cfws():
        return _fixed(name, route, mailbox, b"SYNTAX_ERROR")
    if lexer.peek() == 0x40:
        domains: list[bytes] = []
        while lexer.peek() == 0x40:
            domain = lexer.domain()
            if domain is None:
                break
            domains.append(b"@" + domain)
            while lexer.peek() == 0x2C:
                lexer.pos += 1
                lexer.skip_cfws()
        if lexer.peek() == 0x3A:
            route = b",".join(domains)
            lexer.pos += 1
        else:
            route = b"INVALID_ROUTE"
        if not lexer.skip_cfws():
            return _fixed(name, route, mailbox, b"SYNTAX_ERROR")
    if lexer.peek() != 0x3E:
        mailbox = _local_part(lexer)
        if mailbox is None:
            return _fixed(name, route, mailbox, b"SYNTAX_ERROR")
        if lexer.peek() == 0x40:
            host = lexer.domain()
            if host is None:
                return _fixed(name, route, mailbox, b"SYNTAX_ERROR")
    if lexer.peek() != 0x3E:
        return _fixed(name, route, mailbox, b"SYNTAX_ERROR")
    lexer.pos += 1
    lexer.skip_cfws()
    return _fixed(name, route, mailbox, host)


def _mailbox(lexer: _Lexer) -> EnvelopeAddress:
    # mailbox = name-addr / addr-spec
    start = lexer.pos
    name = lexer.phrase()
    if name is not None and lexer.peek() == 0x3C:
        return _angle_addr(lexer, name or None)
    lexer.pos = start
    lexer.comment = None
    quoted = lexer.peek() == 0x22
    mailbox = _local_part(lexer)
    host: bytes | None = None
    display: bytes | None = None
    at_sign = lexer.peek() == 0x40
    if at_sign:
        host = lexer.domain()
    complete = mailbox is not None and (host is not None or not at_sign)
    if lexer.comment:
        display = lexer.comment
    elif not at_sign:
        # "user" alone is a mailbox without a domain; "some words" a name without address.
        rest = lexer.phrase()
        if rest:
            display = (mailbox or b"") + b" " + rest
            mailbox = None
        elif not quoted:
            host = b""
        complete = False
    if not complete and display is None and mailbox is not None and host is None:
        display, mailbox = mailbox, None
    return _fixed(display, None, mailbox, host)


def _group_or_mailbox(lexer: _Lexer, out: list[EnvelopeAddress]) -> None:
    start = lexer.pos
    name = lexer.phrase()
    if name is None or lexer.peek() != 0x3A:
        lexer.pos = start
        out.append(_mailbox(lexer))
        return
    # group = display-name ":" [group-list] ";" [CFWS]
    lexer.pos += 1
    out.append(EnvelopeAddress(None, None, name, None))
    if lexer.skip_cfws() and lexer.peek() != 0x3B:
        while True:
            out.append(_mailbox(lexer))
            if lexer.peek() != 0x2C:
                break
            lexer.pos += 1
            if not lexer.skip_cfws():
                break
    if lexer.peek() == 0x3B:
        lexer.pos += 1
        lexer.skip_cfws()
    out.append(_GROUP_END)


def parse_address_list(value: bytes) -> list[EnvelopeAddress]:
    """Parse an address-list field value into ENVELOPE address structures.

    Parsing stops at the first thing that is neither an address nor a comma; what came
    before is kept. An empty value gives an empty list.

    See Also: RFC 5322 §3.4 (address-list, group), §4.4 (obsolete forms); RFC 9051 §7.5.2
        (the address structure and group markers).
    """
    lexer = _Lexer(value)
    out: list[EnvelopeAddress] = []
    if not lexer.skip_cfws():
        return out
    while True:
        _group_or_mailbox(lexer, out)
        if lexer.peek() != 0x2C:
            break
        lexer.pos += 1
        if not lexer.skip_cfws():
            break
    return out


# --- the parsed message ----------------------------------------------------------------------


class ParsedMessage:
    """A message parsed once; the renderers below cache their results on it.

    Attributes:
        raw: the message octets (CRLF line breaks as the store keeps them; LF works too).
        root: the message as a :class:`MimePart`.
    """

    __slots__ = ("_body", "_bodystructure", "_envelope", "_header_text", "_text", "raw", "root")

    def __init__(self, raw: bytes, root: MimePart) -> None:
        self.raw = raw
        self.root = root
        self._envelope: bytes | None = None
        self._body: bytes | None = None
        self._bodystructure: bytes | None = None
        self._text: str | None = None
        self._header_text: str | None = None

    @classmethod
    def parse(cls, raw: bytes) -> ParsedMessage:
        """Parse ``raw``; never raises, whatever the octets.

        See Also: RFC 5322 §2.1 (header, blank line, body), RFC 2046 §5.1.1 (boundaries).
        """
        data = bytes(raw)
        root, _ = _Parser(data).entity(0, (), 0, mime=False, digest=False)
        return cls(data, root)

    def __repr__(self) -> str:
        return f"ParsedMessage(<{len(self.raw)} octets>)"

    @property
    def size(self) -> int:
        """RFC822.SIZE: the message size in octets."""
        return len(self.raw)

    def part(self, path: Iterable[int]) -> MimePart | None:
        """The part numbered ``path`` (``(1, 2)`` for ``1.2``), or ``None`` if there is none.

        See Also: RFC 9051 §6.4.5 (part numbering: a non-multipart message has part 1, the
            parts of an encapsulated message are numbered below its message/rfc822 part).
        """
        return _resolve(self.root, tuple(path))

    def header_values(self, name: str) -> list[str]:
        """The values of the header fields called ``name`` (any case), in order.

        Each is unfolded, RFC 2047 encoded words decoded (RFC 2047 §6), raw 8-bit text
        read as UTF-8 (else windows-1252), and stripped of surrounding white space.
        """
        key = name.encode("utf-8", "replace").lower()
        return [
            decode_header_value(field.value).strip()
            for field in self.root.fields
            if field.name and field.key == key
        ]

    def sent_date(self) -> datetime.datetime | None:
        """The first ``Date:`` field as an aware datetime in its own zone, or ``None``.

        ``None`` when there is no Date field or it cannot be read as an RFC 5322 §3.3
        date-time (obsolete forms of §4.3 included).
        """
        for field in self.root.fields:
            if field.key == b"date":
                return _parse_date(field.value)
        return None

    def header_text_for_search(self) -> str:
        """The message header as text: ``Name: decoded value`` lines (for ``TEXT``)."""
        if self._header_text is None:
            self._header_text = _header_text(self.root.fields)
        return self._header_text

    def text_for_search(self) -> str:
        """The body as text, for ``BODY`` and ``TEXT`` searches.

        The text parts (content transfer encoding removed, converted from their charset
        with fallbacks to UTF-8 and windows-1252) and the headers of encapsulated messages,
        in message order, one per line. Other parts (images, applications) are left out.
        """
        if self._text is None:
            pieces: list[str] = []
            _collect_text(self.raw, self.root, pieces)
            self._text = "\n".join(pieces)
        return self._text


def _resolve(root: MimePart, path: tuple[int, ...]) -> MimePart | None:
    part = root
    is_message = True  # `part` is a message, whose numbering applies to the next number
    for number in path:
        if not is_message and part.message is not None:
            part, is_message = part.message, True
        if part.content.kind == "multipart":
            if not 1 <= number <= len(part.children):
                return None
            part = part.children[number - 1]
        elif not (is_message and number == 1):
            return None
        is_message = False
    return part


# --- ENVELOPE and BODYSTRUCTURE (RFC 9051 §7.5.2) ------------------------------------------


def _nstring(value: bytes | None) -> bytes:
    if value is None:
        return _NIL
    return render_string(value.replace(b"\x00", _REPLACEMENT))


def _address_list(addresses: list[EnvelopeAddress]) -> bytes:
    if not addresses:
        return _NIL
    return b"(" + b"".join(map(bytes, addresses)) + b")"


_ENVELOPE_KEYS: Final = frozenset(
    {b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc"}
    | {b"in-reply-to", b"message-id"}
)


def _envelope(fields: Iterable[HeaderField]) -> bytes:
    first: dict[bytes, bytes] = {}
    for field in fields:
        if field.key in _ENVELOPE_KEYS:
            first.setdefault(field.key, field.value)

    def addresses(key: bytes) -> list[EnvelopeAddress]:
        value = first.get(key)
        return [] if value is None else parse_address_list(value)

    sender_from = addresses(b"from")
    return (
        b"("
        + b" ".join(
            [
                _nstring(first.get(b"date")),
                _nstring(first.get(b"subject")),
                _address_list(sender_from),
                _address_list(addresses(b"sender") or sender_from),
                _address_list(addresses(b"reply-to") or sender_from),
                _address_list(addresses(b"to")),
                _address_list(addresses(b"cc")),
                _address_list(addresses(b"bcc")),
                _nstring(first.get(b"in-reply-to")),
                _nstring(first.get(b"message-id")),
            ]
        )
        + b")"
    )


def envelope(msg: ParsedMessage) -> bytes:
    """Render the ``ENVELOPE`` of ``msg``: ``("date" "subject" (from) ... "message-id")``.

    The first of each field is used; Sender and Reply-To default to From when absent or
    empty (RFC 9051 §7.5.2). Date, Subject, In-Reply-To and Message-ID are the field text
    as written (unfolded; RFC 2047 encoded words not decoded); 8-bit text goes in a
    literal.

    See Also: RFC 9051 §7.5.2 (ENVELOPE), §9 (envelope, address).
    """
    if msg._envelope is None:
        msg._envelope = _envelope(msg.root.fields)
    return msg._envelope


def _params(params: tuple[tuple[bytes, bytes], ...], *, default_charset: bool) -> bytes:
    rendered: list[bytes] = []
    for name, value in params:
        rendered.append(_nstring(name) + b" " + _nstring(value))
    if default_charset and not any(name.lower() == b"charset" for name, _ in params):
        rendered.append(_US_ASCII)
    if not rendered:
        return _NIL
    return b"(" + b" ".join(rendered) + b")"


def _extension_common(content: ContentInfo) -> bytes:
    # body-fld-dsp SP body-fld-lang SP body-fld-loc
    if content.disposition is None:
        disposition = _NIL
    else:
        disposition = (
            b"("
            + _nstring(content.disposition)
            + b" "
            + _params(content.disposition_params, default_charset=False)
            + b")"
        )
    if content.language:
        language = b"(" + b" ".join(map(_nstring, content.language)) + b")"
    else:
        language = _NIL
    return disposition + b" " + language + b" " + _nstring(content.location)


def _render_body(raw: bytes, part: MimePart, extensible: bool, out: list[bytes]) -> None:
    content = part.content
    kind = content.kind
    if kind == "multipart":
        if part.children:
            for child in part.children:
                out.append(b"(")
                _render_body(raw, child, extensible, out)
                out.append(b")")
        else:
            out.append(_EMPTY_BODYSTRUCTURE if extensible else _EMPTY_BODY)
        out.append(b" " + _nstring(content.subtype))
        if extensible:
            out.append(b" " + _params(content.params, default_charset=False))
            out.append(b" " + _extension_common(content))
        return
    text = False
    if kind == "message":
        out.append(b'"message" "rfc822"')
    else:
        text = content.is_text
        out.append(_nstring(content.media_type) + b" " + _nstring(content.subtype))
    out.append(b" " + _params(content.params, default_charset=text))
    out.append(b" " + _nstring(content.id) + b" " + _nstring(content.description) + b" ")
    out.append(_nstring(content.transfer_encoding or b"7bit") + b" %d" % part.body_size)
    if text:
        out.append(b" %d" % part.lines)
    elif kind == "message":
        encapsulated = part.message
        if encapsulated is None:  # beyond MAX_DEPTH or MAX_PARTS
            out.append(b" " + _EMPTY_ENVELOPE + b" ")
            out.append(_EMPTY_BODYSTRUCTURE if extensible else _EMPTY_BODY)
        else:
            out.append(b" " + _envelope(encapsulated.fields) + b" (")
            _render_body(raw, encapsulated, extensible, out)
            out.append(b")")
        out.append(b" %d" % part.lines)
    if extensible:
        out.append(b" " + _nstring(content.md5) + b" " + _extension_common(content))


def body_structure(msg: ParsedMessage, extensible: bool) -> bytes:
    """Render ``BODY`` (``extensible=False``) or ``BODYSTRUCTURE`` of ``msg``.

    Single parts give type, subtype, parameters, id, description, encoding and size in
    octets, then the line count for ``text/*``, or envelope, body structure and line
    count for ``message/rfc822``; ``BODYSTRUCTURE`` adds MD5, disposition, language and
    location. Multiparts give their parts and subtype; ``BODYSTRUCTURE`` adds parameters,
    disposition, language and location.

    Returns:
        The parenthesized structure, e.g. ``("text" "plain" ("charset" "us-ascii") NIL NIL
        "7bit" 6 1 NIL NIL NIL NIL)``, for ``RawItem("BODYSTRUCTURE", ...)``.

    See Also: RFC 9051 §7.5.2 (BODY, BODYSTRUCTURE), §9 (body, body-extension).
    """
    cached = msg._bodystructure if extensible else msg._body
    if cached is not None:
        return cached
    out = [b"("]
    _render_body(msg.raw, msg.root, extensible, out)
    out.append(b")")
    rendered = b"".join(out)
    if extensible:
        msg._bodystructure = rendered
    else:
        msg._body = rendered
    return rendered


# --- sections (RFC 9051 §6.4.5) ------------------------------------------------------------


def _header_section(raw: bytes, message: MimePart, spec: Section) -> bytes:
    if spec.text is SectionText.HEADER:
        return raw[message.header_start : message.header_end]
    if spec.text is SectionText.TEXT:
        return raw[message.header_end : message.body_end]
    names = {name.encode("utf-8", "replace").lower() for name in spec.header_fields}
    wanted = spec.text is SectionText.HEADER_FIELDS
    kept = [
        field.raw for field in message.fields if (bool(field.name) and field.key in names) == wanted
    ]
    return b"".join(kept) + raw[message.fields_end : message.header_end]


def section(msg: ParsedMessage, spec: Section) -> bytes:
    """The octets of ``BODY[spec]``, exactly as they are in the message.

    * ``[]``: the whole message; ``[HEADER]``, ``[TEXT]``: the header (blank line
      included) and the body;
    * ``[HEADER.FIELDS (...)]`` / ``.NOT``: the matching (or other) fields as written,
      names compared without case, continuation lines kept, in message order, then the
      blank line (none when the message has none);
    * ``[1.2]``: the body of part 1.2 (for a message/rfc822 part the whole encapsulated
      message); ``[1.2.MIME]``: its MIME header (for part 1 of a non-multipart message,
      the message header); ``[1.2.HEADER]``, ``[1.2.TEXT]``, ``[1.2.HEADER.FIELDS ...]``:
      of the message encapsulated in message/rfc822 part 1.2.

    A part that does not exist, or ``HEADER``/``TEXT`` after a part that is not
    message/rfc822, gives ``b""``: a non-existent section is an empty string, not an error.

    See Also: RFC 9051 §6.4.5 (BODY[<section>]<<partial>>).
    """
    raw = msg.raw
    if not spec.part:
        if spec.text is None:
            return raw
        if spec.text is SectionText.MIME:
            return b""
        return _header_section(raw, msg.root, spec)
    part = _resolve(msg.root, spec.part)
    if part is None:
        return b""
    if spec.text is None:
        return raw[part.header_end : part.body_end]
    if spec.text is SectionText.MIME:
        return raw[part.header_start : part.header_end]
    if part.message is None:
        return b""
    return _header_section(raw, part.message, spec)


def partial(data: bytes, start: int, length: int) -> bytes:
    """``<start.length>``: at most ``length`` octets from offset ``start``.

    An origin beyond the end gives an empty string (RFC 9051 §6.4.5).
    """
    if start < 0 or length <= 0:
        return b""
    return data[start : start + length]


def _b64decode(data: bytes) -> bytes:
    # Tolerant base64: octets outside the alphabet (line breaks, junk) are dropped, padding
    # ends a run (several runs are decoded one after the other) and a partial final
    # quantum is decoded as far as it goes.
    decoded: list[bytes] = []
    for run in _NOT_BASE64_RE.sub(b"", data).split(b"="):
        extra = len(run) % 4
        if extra == 1:
            run = run[:-1]
        elif extra:
            run += b"=" * (4 - extra)
        if run:
            decoded.append(binascii.a2b_base64(run))
    return b"".join(decoded)


def _decode_transfer(body: bytes, encoding: bytes | None) -> bytes | None:
    """Remove a content transfer encoding (RFC 2045 §6); ``None`` if it is unknown."""
    name = (encoding or b"7bit").lower()
    if name in _IDENTITY_ENCODINGS:
        return body
    if name == b"base64":
        return _b64decode(body)
    if name == b"quoted-printable":
        return binascii.a2b_qp(body)
    return None


def binary(msg: ParsedMessage, part: tuple[int, ...]) -> bytes | None:
    """The octets of ``BINARY[part]``: the part's body with its transfer encoding removed.

    ``BINARY[]`` is the whole message as stored; a multipart or message/rfc822 part is
    given as it is (they have no encoding of their own); a part that does not exist gives
    ``b""``.

    Returns:
        The decoded octets, or ``None`` when the encoding is unknown: reply
        ``NO [UNKNOWN-CTE]`` (RFC 3516 §4.3).

    See Also: RFC 3516 §4.2, RFC 9051 §6.4.5 (BINARY[<section-binary>]).
    """
    if not part:
        return msg.raw
    found = _resolve(msg.root, part)
    if found is None:
        return b""
    body = msg.raw[found.header_end : found.body_end]
    if found.content.kind != "single":
        return body
    return _decode_transfer(body, found.content.transfer_encoding)


def binary_size(msg: ParsedMessage, part: tuple[int, ...]) -> int | None:
    """``BINARY.SIZE[part]``: the decoded size in octets, ``None`` for an unknown encoding.

    See Also: RFC 3516 §4.2.
    """
    data = binary(msg, part)
    return None if data is None else len(data)


def fetch_body(msg: ParsedMessage, item: FetchBody) -> bytes | None:
    """The data of a ``BODY[...]``/``BINARY[...]`` fetch item, partial applied.

    Returns:
        The octets for ``BodyItem(item, data)``; ``None`` only for ``BINARY`` of a part
        whose transfer encoding is unknown (reply ``NO [UNKNOWN-CTE]``).
    """
    data = binary(msg, item.section.part) if item.binary else section(msg, item.section)
    if data is None:
        return None
    if item.partial is not None:
        data = partial(data, *item.partial)
    return data


# --- text for SEARCH -----------------------------------------------------------------------


def _codec(charset: str | bytes | None) -> str | None:
    if charset is None:
        return None
    name = charset.decode("latin-1") if isinstance(charset, bytes) else charset
    name = name.strip().strip("\"'").split("*", 1)[0]
    if not _CHARSET_NAME_RE.fullmatch(name):
        return None
    try:
        info = codecs.lookup(name)
    except LookupError:
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _UNSAFE_CODECS:
        return None
    return info.name


def _to_str(data: bytes, charset: str | bytes | None) -> str:
    """Decode ``data`` in ``charset``, else as UTF-8, else as windows-1252 (never fails)."""
    codec = _codec(charset)
    for name in (codec, "utf-8"):
        if name is not None:
            try:
                return data.decode(name)
            except (UnicodeError, ValueError, LookupError):
                pass
    return data.decode("cp1252", "replace")


def decode_header_value(value: bytes) -> str:
    """Decode a header field value to text: RFC 2047 encoded words, then raw octets.

    Adjacent encoded words in the same charset are decoded together (a character may be
    split between them) and the white space between encoded words is dropped (RFC 2047
    §6.2). Raw 8-bit octets are read as UTF-8 (RFC 6532), else windows-1252. Never
    raises.
    """
    if b"=?" not in value:
        return _to_str(value, None)
    pieces: list[str] = []
    pending: list[bytes] = []
    pending_charset = b""
    position = 0

    def flush() -> None:
        if pending:
            pieces.append(_to_str(b"".join(pending), pending_charset))
            pending.clear()

    for match in _ENCODED_WORD_RE.finditer(value):
        between = value[position : match.start()]
        if position == 0 or between.strip(b" \t"):
            flush()
            pieces.append(_to_str(between, None))
        charset, encoding, text = match.group(1), match.group(2), match.group(3)
        decoded = _b64decode(text) if encoding in b"Bb" else binascii.a2b_qp(text, header=True)
        if pending and charset.lower() != pending_charset.lower():
            flush()
        pending_charset = charset
        pending.append(decoded)
        position = match.end()
    flush()
    pieces.append(_to_str(value[position:], None))
    return "".join(pieces)


def _header_text(fields: Iterable[HeaderField]) -> str:
    lines = []
    for field in fields:
        if field.name:
            lines.append(f"{_to_str(field.name, None)}: {decode_header_value(field.value)}")
    return "\n".join(lines)


def _collect_text(raw: bytes, part: MimePart, out: list[str]) -> None:
    content = part.content
    kind = content.kind
    if kind == "multipart":
        for child in part.children:
            _collect_text(raw, child, out)
    elif kind == "message":
        if part.message is not None:
            out.append(_header_text(part.message.fields))
            _collect_text(raw, part.message, out)
    elif content.is_text:
        body = raw[part.header_end : part.body_end]
        decoded = _decode_transfer(body, content.transfer_encoding)
        out.append(_to_str(body if decoded is None else decoded, content.param("charset")))


def _parse_date(value: bytes) -> datetime.datetime | None:
    text = value.decode("latin-1")
    try:
        parsed = email.utils.parsedate_tz(text)
        if parsed is None:
            return None
        year, month, day, hour, minute, second = parsed[:6]
        offset = parsed[9] or 0
        zone = datetime.timezone(datetime.timedelta(seconds=offset))
        return datetime.datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except (ValueError, OverflowError, IndexError, TypeError):
        return None

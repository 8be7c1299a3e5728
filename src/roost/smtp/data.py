"""Decoding the DATA stream (sans-IO): end of data, dot-unstuffing, bare newlines.

RFC 5321 §4.1.1.4 and §4.5.2: the data ends at ``<CRLF>.<CRLF>`` *exactly*; a line that
starts with ``.`` loses that dot. Bare ``<LF>`` (and ``<LF>.<LF>``, ``<CR>.<CR>`` ...)
never end the data: that is what SMTP smuggling exploits (CVE-2023-51764 and friends).
With Postfix's ``smtpd_forbid_bare_newline = normalize`` a bare ``<LF>`` ends a *content*
line and is stored as ``<CRLF>``; with ``reject`` the message is refused after the data
(550 5.5.2). A bare ``<CR>`` is content, as in Postfix.

The decoder takes the bytes as they arrive and returns the decoded message in CRLF form;
a message without bare newlines takes a fast path that stays in C (``bytes.find`` and
``bytes.replace``) instead of a Python loop per line.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DataDecoder"]

_END: Final = b"\r\n.\r\n"
#: A partial line longer than this is passed on without waiting for its end (bytes).
MAX_PENDING_LINE: Final = 1 << 20


class DataDecoder:
    """Incremental DATA decoder.

    Args:
        normalize_bare_lf: store a bare LF as CRLF (``normalize``); when False the content
            is kept and :attr:`saw_bare_lf` tells the caller to refuse (``reject``).

    Attributes:
        done: True once ``<CRLF>.<CRLF>`` has been seen.
        leftover: bytes after the end of data (pipelined commands), once done.
        saw_bare_lf: True if a line ended with a bare LF.
    """

    def __init__(self, *, normalize_bare_lf: bool = True) -> None:
        self._normalize = normalize_bare_lf
        self._pending = b""
        self._line_start = True
        self._prev_crlf = True  # the CRLF after DATA's 354 counts as the line before
        self._mid_line_cr = False  # a passed-on partial line ended with CR
        self.done = False
        self.leftover = b""
        self.saw_bare_lf = False

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes; return the decoded content they complete (CRLF lines).

        After :attr:`done`, further data is appended to :attr:`leftover`.
        """
        if self.done:
            self.leftover += data
            return b""
        if not data:
            return b""
        buf = self._pending + data
        self._pending = b""
        out: list[bytes] = []
        pos = 0
        if not self._line_start:
            pos = self._finish_partial_line(buf, out)
            if pos < 0:
                return b"".join(out)
        last_lf = buf.rfind(b"\n")
        if last_lf >= pos:
            pos = self._complete_lines(buf, pos, last_lf + 1, out)
            if self.done:
                return b"".join(out)
        rest = buf[pos:]
        if len(rest) > MAX_PENDING_LINE:
            out.append(self._unstuff_start(rest))
            self._line_start = False
            self._mid_line_cr = rest.endswith(b"\r")
        else:
            self._pending = rest
        return b"".join(out)

    def _finish_partial_line(self, buf: bytes, out: list[bytes]) -> int:
        """Pass on the end of a long line begun earlier; return where lines start again."""
        newline = buf.find(b"\n")
        if newline < 0:
            out.append(buf)
            self._mid_line_cr = buf.endswith(b"\r")
            return -1
        crlf = (newline > 0 and buf[newline - 1] == 0x0D) or (newline == 0 and self._mid_line_cr)
        line = buf[: newline + 1]
        if not crlf:
            self.saw_bare_lf = True
            if self._normalize:
                line = line[:-1] + b"\r\n"
        out.append(line)
        self._line_start = True
        self._prev_crlf = crlf
        return newline + 1

    def _unstuff_start(self, line: bytes) -> bytes:
        return line[1:] if line.startswith(b".") else line

    def _complete_lines(self, buf: bytes, start: int, end: int, out: list[bytes]) -> int:
        """Decode buf[start:end], whole lines starting at a line start; return the new pos."""
        region = buf[start:end]
        if region.count(b"\n") == region.count(b"\r\n") and self._prev_crlf:
            return self._fast_lines(buf, start, end, region, out)
        return self._slow_lines(buf, start, end, out)

    def _fast_lines(self, buf: bytes, start: int, end: int, region: bytes, out: list[bytes]) -> int:
        # every line ends with CRLF: find the end marker and unstuff with C loops
        framed = b"\r\n" + region
        marker = framed.find(_END)
        if marker >= 0:
            content = framed[: marker + 2]
            self.done = True
            self.leftover = framed[marker + 5 :] + buf[end:]
        else:
            content = framed
        out.append(content.replace(b"\r\n.", b"\r\n")[2:])
        self._prev_crlf = True
        return end

    def _slow_lines(self, buf: bytes, start: int, end: int, out: list[bytes]) -> int:
        pos = start
        while pos < end:
            newline = buf.index(b"\n", pos)
            crlf = newline > pos and buf[newline - 1] == 0x0D
            line = buf[pos : newline + 1]
            if line == b".\r\n" and self._prev_crlf:
                self.done = True
                self.leftover = buf[newline + 1 :]
                return len(buf)
            line = self._unstuff_start(line)
            if not crlf:
                self.saw_bare_lf = True
                if self._normalize:
                    line = line[:-1] + b"\r\n"
            out.append(line)
            self._prev_crlf = crlf
            pos = newline + 1
        return pos

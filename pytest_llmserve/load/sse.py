"""Incremental Server-Sent Events framing over bytes (WHATWG grammar), fed arbitrary transport fragments.

Only what a streaming client needs: complete `data` payloads as raw bytes, in order. Lines end with
CRLF, LF or CR (a CR at the end of a fragment may be the first half of a CRLF split across reads);
a blank line dispatches the event; `:` lines are comments; `event`/`id`/`retry` are ignored; one
leading space after `data:` is removed; several `data:` lines join with LF; a leading UTF-8 BOM is
skipped; an unterminated event at end of stream is discarded. Nothing is stripped or decoded, so
payload whitespace and U+2028/U+2029 inside JSON survive (vLLM PR #51172 and #54628 bugs).
"""

from __future__ import annotations

import re

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SSEFramer:
    """Feed bytes, get back the payloads of every event completed by them."""

    __slots__ = ("_buf", "_data", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] | None = None
        self._skip_lf = False
        self._started = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if not self._started:
            chunk = self._buf + chunk
            self._buf = b""
            if len(chunk) < 3 and _BOM.startswith(chunk):
                self._buf = chunk  # possibly a BOM split across reads: wait for more bytes
                return []
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
            self._started = True
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        # Fast path: one whole `data: ...\n\n` event per fragment, the common case on a keeping-up client.
        if (
            not self._buf
            and self._data is None
            and chunk.startswith(b"data: ")
            and chunk.endswith(b"\n\n")
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
        ):
            return [chunk[6:-2]]
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            lines = _LINE_END.split(buf)
            # a trailing CR ended a line; if the next fragment starts with LF, that LF belongs to it
            self._skip_lf = buf.endswith(b"\r")
        else:
            lines = buf.split(b"\n")
        self._buf = lines.pop()
        out: list[bytes] = []
        for line in lines:
            if not line:
                if self._data is not None:
                    out.append(b"\n".join(self._data))
                    self._data = None
                continue
            if line.startswith(b"data"):
                if line.startswith(b"data:"):
                    value = line[5:]
                    if value[:1] == b" ":
                        value = value[1:]
                elif len(line) == 4:
                    value = b""  # a bare `data` field name: empty value
                else:
                    continue  # a field such as `database`: unknown, ignored
                if self._data is None:
                    self._data = [value]
                else:
                    self._data.append(value)
            # comments (`:`), event/id/retry and unknown fields carry nothing we use
        return out


class WholeBody:
    """The framer of a non-streaming response: every body fragment is passed on as it came (decode joins them)."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[bytes]:
        return [chunk] if chunk else []

"""The response side of HTTP/1, without I/O.

``ResponseStream`` reads a target's answers on one pooled client connection: it is told a
request left (``expect``), is fed what arrives (``receive``) and how the connection ended
(``closed``), and returns the answer's head, its body pieces (as ``bytes``) and its end, or
why it failed. The framing rules it applies: an answer to HEAD ends at its head whatever
Content-Length says; 1xx answers are skipped (not the answer); 204 and 304 have no body;
trailer fields of a chunked body are dropped; a body with neither Content-Length nor
Transfer-Encoding runs until the connection closes, and only a clean close (FIN) completes
it: a reset means it was cut short.

``frame_head`` is the other direction: the primary's answer head as the client gets it
(hop-by-hop fields dropped, re-chunked or close-delimited when the primary sent no length).
"""

from __future__ import annotations

from typing import Final

import httptools

from shadowd.exchange import ERROR_PROTOCOL, ERROR_RESET, ERROR_TOO_LARGE, Headers
from shadowd.upstream.request import HOP_BY_HOP, PLAIN_CONNECTION, connection_listed

NO_BODY_STATUS: Final = frozenset({204, 304})
# What an answer may send that is not body: its head (and any 1xx heads before it), chunk
# framing, trailer fields. httptools keeps a field until it ends, so a target that never ends
# its head (endless fields, or one endless value) grew a worker's memory by gigabytes within
# its timeout. Past this many bytes since the last body byte the answer fails (``too_large``):
# the client gets 502, as from nginx ("upstream sent too big header" past 4-8 KiB).
MAX_HEAD_BYTES: Final = 64 * 1024
LAST_CHUNK: Final = b"0\r\n\r\n"
_STATUS_LINES = {code: b"HTTP/1.1 %d " % code for code in range(100, 600)}


# -- events -------------------------------------------------------------------------------------
class ResponseHead:
    __slots__ = ("headers", "reason", "status")

    def __init__(self, status: int, reason: bytes, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ResponseHead)
            and other.status == self.status
            and other.reason == self.reason
            and other.headers == self.headers
        )

    def __repr__(self) -> str:
        return f"ResponseHead({self.status}, {self.reason!r}, {self.headers!r})"


class ResponseComplete:
    """The answer ended; ``keep_alive``: the connection may carry another request."""

    __slots__ = ("keep_alive",)

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResponseComplete) and other.keep_alive == self.keep_alive

    def __repr__(self) -> str:
        return f"ResponseComplete(keep_alive={self.keep_alive})"


class ResponseFailed:
    """No (whole) answer: ``kind`` is the error kind (``protocol``, ``reset``). The
    connection cannot be used again."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResponseFailed) and other.kind == self.kind

    def __repr__(self) -> str:
        return f"ResponseFailed({self.kind!r})"


# bytes among the events are a piece of the body, as they arrived (no wrapper: body pieces
# are the most frequent event)
ResponseEvent = ResponseHead | bytes | ResponseComplete | ResponseFailed
# Immutable in practice and said once per answer: not allocated each time.
COMPLETE_KEEP_ALIVE: Final = ResponseComplete(True)
COMPLETE_CLOSE: Final = ResponseComplete(False)
_NOTHING: Final[list[ResponseEvent]] = []  # never appended to: returned when nothing happened


class ResponseStream:
    """The answers on one client connection, one request at a time."""

    __slots__ = (
        "_body_fed",
        "_body_until_close",
        "_events",
        "_head_only",
        "_headers",
        "_in_head",
        "_informational",
        "_parser",
        "_reason",
        "_since_body",
        "_status",
        "_status_keep_alive",
        "got_bytes",
        "waiting",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._events: list[ResponseEvent] = _NOTHING
        self._headers: Headers = []
        self._reason = b""
        self._status = 0
        self._informational = False
        self._in_head = False
        self._status_keep_alive = False
        self._body_until_close = False
        self._body_fed = False  # a body piece arrived in the bytes being fed
        self._since_body = 0  # bytes received since the answer's last body piece
        self._head_only = False
        self.waiting = False  # a request was sent and its answer has not ended
        self.got_bytes = False  # something of that answer arrived (a retry would repeat it)

    def expect(self, *, head_only: bool) -> None:
        """A request left; ``head_only``: it was HEAD (its answer ends at the head)."""
        self.waiting = True
        self._head_only = head_only
        self._headers = []
        self._reason = b""
        self._in_head = True
        self._status = 0
        self.got_bytes = False
        self._body_until_close = False
        self._since_body = 0

    def receive(self, data: bytes) -> list[ResponseEvent]:
        if not self.waiting:
            # Bytes nobody asked for on an idle connection: the stream is out of sync.
            return [ResponseFailed(ERROR_PROTOCOL)]
        self.got_bytes = True
        events = self._events = []
        self._body_fed = False
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # An upgrade nobody asked for (pooled requests never carry Upgrade) is as wrong
            # as bad bytes.
            if self._answer_open():
                self.waiting = False
                events.append(ResponseFailed(ERROR_PROTOCOL))
            elif events and events[-1] is COMPLETE_KEEP_ALIVE:
                # Garbage after a whole answer: that answer stands, but the connection is
                # out of sync (its parser failed) and must not carry another request.
                events[-1] = COMPLETE_CLOSE
        self._events = _NOTHING
        if self._body_fed:
            self._since_body = 0
        else:
            self._since_body += len(data)
            if self._since_body > MAX_HEAD_BYTES and self._answer_open():
                self.waiting = False
                events.append(ResponseFailed(ERROR_TOO_LARGE))
                return events
        if self.waiting and self._head_only and self._status:
            # llhttp cannot be told the request was HEAD: it waits for the announced body.
            # The answer is complete at its head; a fresh parser reads the next one.
            self._parser = httptools.HttpResponseParser(self)
            self.waiting = False
            events.append(COMPLETE_KEEP_ALIVE if self._status_keep_alive else COMPLETE_CLOSE)
        return events

    def closed(self, *, clean: bool) -> list[ResponseEvent]:
        """The connection ended: FIN (``clean``) or reset. What that means for the answer."""
        if not self.waiting:
            return _NOTHING
        self.waiting = False
        if self._body_until_close and self._status and clean:
            return [COMPLETE_CLOSE]  # a close-delimited body ends with the close
        return [ResponseFailed(ERROR_RESET)]

    def _answer_open(self) -> bool:
        # A call, not the attribute: the parser's callbacks change it under the caller, and
        # a type checker that narrowed the attribute before feed_data cannot know.
        return self.waiting

    # -- httptools callbacks --------------------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        # llhttp hands the reason over in pieces when it spans reads (httptools gathers
        # header fields, not this)
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._headers.append((name, value))
        # else a trailer field of a chunked body: dropped, never merged into the headers
        # (the head has gone to the sink already, and the diff must not see it as one)

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 100 Continue, 103 Early Hints: not the answer
            self._headers = []
            self._reason = b""
            self._in_head = True  # the answer's own head follows
            return
        if not self.waiting:
            return
        self._status = status
        self._status_keep_alive = self._parser.should_keep_alive()
        headers = self._headers
        if not self._head_only and status not in NO_BODY_STATUS:
            self._body_until_close = not _has_framing(headers)
        self._events.append(ResponseHead(status, self._reason, headers))

    def on_body(self, chunk: bytes) -> None:
        self._body_fed = True
        if self.waiting and not self._head_only:
            self._events.append(chunk)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.waiting and not self._head_only:
            self.waiting = False
            keep_alive = self._parser.should_keep_alive()
            self._events.append(COMPLETE_KEEP_ALIVE if keep_alive else COMPLETE_CLOSE)


def _has_framing(headers: Headers) -> bool:
    for name, _ in headers:
        lname = name.lower()
        if lname == b"content-length" or lname == b"transfer-encoding":
            return True
    return False


def frame_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    head_request: bool,
    http11: bool,
    close: bool,
) -> tuple[bytes, bool, bool]:
    """The primary's answer head for the client: ``(head, chunked, close)``. Hop-by-hop fields
    (and those the primary's Connection header lists) are dropped. An answer with a body and
    no Content-Length (chunked or close-delimited upstream) is re-chunked for an HTTP/1.1
    client (``chunked``: frame each body piece) and close-delimited for HTTP/1.0 (``close``
    becomes true). ``close``: the connection ends after this answer (Connection: close)."""
    no_body = head_request or status in NO_BODY_STATUS
    listed = None
    framed = False
    chunked = False
    parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    append = parts.append
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            # "keep-alive" or "close" (nearly every answer) lists no other field: no rescan
            if lname == b"connection" and value.lower() not in PLAIN_CONNECTION:
                listed = connection_listed(headers)
            continue
        if lname == b"content-length":
            framed = True
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    if listed:
        parts = parts[:3] + _without(parts[3:], listed)
        append = parts.append
    if not no_body and not framed:
        if http11:
            append(b"Transfer-Encoding: chunked\r\n")
            chunked = True
        else:
            close = True
    if close:
        append(b"Connection: close\r\n")
    elif not http11:
        append(b"Connection: keep-alive\r\n")
    append(b"\r\n")
    return b"".join(parts), chunked, close


def _without(parts: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    """Drop ``name: value\\r\\n`` quadruples whose name is in ``names``."""
    kept: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].lower() not in names:
            kept.extend(parts[i : i + 4])
    return kept

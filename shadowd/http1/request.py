"""The request side of one HTTP/1 server connection, without I/O.

``RequestStream.receive(data, now)`` parses what the client sent with llhttp (httptools) and
returns what happened, in order: requests read in full (``ParsedRequest``, queued until
answered), an interim
``100 Continue`` to write, a refusal (400/413/431/503/505), an upgrade. The caller does the
I/O: it writes, answers, pauses reading, and calls ``answered`` when the first queued request
has its answer, which returns what that unblocks (an owed ``100 Continue``).

Trailer fields of a chunked request body are dropped, never merged into the headers
(RFC 9110 §6.5.1): the body is forwarded whole with a Content-Length, so there is no trailer
section to carry them in, and a trailer must not be able to pose as a header (``Host``, an
identity header set by an authenticating proxy in front of us).

What llhttp refuses by itself, strict mode or not, and is therefore a 400 here: Content-Length
next to Transfer-Encoding, two different Content-Lengths, obs-fold continuation lines, a bare
LF ending a header line, invalid chunk sizes, whitespace before a header's colon.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import httptools

from shadowd.exchange import Headers

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_NOTABLE = frozenset({b"content-length", b"host", b"transfer-encoding", b"upgrade", b"expect"})


class ParsedRequest:
    __slots__ = ("body", "framed", "headers", "http11", "keep_alive", "method", "upgrade", "url")

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: Headers,
        body: bytes,
        keep_alive: bool,
        http11: bool,
        framed: bool = False,
        upgrade: bytes = b"",
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http11 = http11
        # The client declared a body (Content-Length or Transfer-Encoding), maybe an empty one.
        self.framed = framed
        self.upgrade = upgrade  # the Upgrade header's value ("websocket"), b"" without one

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParsedRequest) and _same(self, other)

    def __repr__(self) -> str:
        return f"<ParsedRequest {self.method!r} {self.url!r} body={len(self.body)}>"


# -- events (besides ParsedRequest itself) ------------------------------------------------------
class SendData:
    """Bytes to write to the client now (an interim ``100 Continue``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SendData) and other.data == self.data

    def __repr__(self) -> str:
        return f"SendData({self.data!r})"


class Refused:
    """A request that could not be read (or kept): answer ``status`` after the answers owed
    to the requests queued before it, then close. Nothing more is read from the client."""

    __slots__ = ("message", "reason", "status")

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason  # the label of shadowd_ingress_rejected_total
        self.message = message

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Refused)
            and other.status == self.status
            and other.reason == self.reason
        )

    def __repr__(self) -> str:
        return f"Refused({self.status}, {self.reason!r})"


class UpgradeRequested:
    """The last request asked to switch protocols; ``rest`` is what the client sent after it
    (not HTTP/1 any more). Nothing more is parsed."""

    __slots__ = ("rest",)

    def __init__(self, rest: bytes) -> None:
        self.rest = rest

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UpgradeRequested) and other.rest == self.rest

    def __repr__(self) -> str:
        return f"UpgradeRequested({self.rest!r})"


class InternalError:
    """Our own parsing code raised (a bug, not bad input): the connection is not to be trusted."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __repr__(self) -> str:
        return f"InternalError({self.exc!r})"


# A ParsedRequest among the events is a request read in full, now queued until answered:
# the request itself, not a wrapper around it (one allocation fewer per request).
RequestEvent = ParsedRequest | SendData | Refused | UpgradeRequested | InternalError
_NOTHING: Final[list[RequestEvent]] = []  # never appended to: returned when nothing happened


def _same(a: ParsedRequest, b: ParsedRequest) -> bool:
    return (
        a.method == b.method
        and a.url == b.url
        and a.headers == b.headers
        and a.body == b.body
        and a.keep_alive == b.keep_alive
        and a.http11 == b.http11
        and a.framed == b.framed
        and a.upgrade == b.upgrade
    )


class RequestStream:
    """Reads one connection's requests within limits; holds those read but not yet answered.

    Limits are counted once per request: a head is refused with 431 past ``max_header_bytes``
    (its raw bytes, or the parsed URL and fields), and so are the bytes between two pieces of
    a body (chunk framing, trailer fields), a body with 413 past
    ``max_request_body_bytes`` (declared or received), and more than ``max_pipelined``
    requests waiting for their answers with 503. ``expired(now)`` says whether the head or the
    body being read has taken longer than its deadline (408).
    """

    def __init__(
        self,
        *,
        max_header_bytes: int,
        max_body_bytes: int,
        max_pipelined: int,
        header_timeout: float = float("inf"),
        body_timeout: float = float("inf"),
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.max_pipelined = max_pipelined
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self._parser = httptools.HttpRequestParser(self)
        # requests read in full and not answered yet, oldest (the one being answered) first
        self.queue: deque[ParsedRequest] = deque()
        self._events: list[RequestEvent] = _NOTHING
        self._url = b""
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_bytes = 0
        self._framed = False
        self._upgrade = b""
        # between a message's first byte and its blank line; on_header outside it is a trailer
        self._in_head = False
        self._in_body = False  # between the blank line and the message's end
        # llhttp hands a header line over only once it is complete, and httptools gathers it
        # until then: the bytes of the head read so far are bounded here, chunk by chunk
        # (those of the chunk it began in aside, so as never to count a previous request's).
        self._head_raw = 0
        self._head_began_here = False
        # The same for what is not body once the head is in: chunk framing and trailer fields
        # (an endless trailer field grew memory until the body timeout). Bytes read since the
        # body's last piece, bounded by max_header_bytes.
        self._since_body = 0
        self._body_fed = False
        self._body_began_here = False
        # when the head (body) being read started arriving; 0: none is
        self.head_started = 0.0
        self.body_started = 0.0
        self._now = 0.0
        self._continue_owed = False
        self.stopped = False  # refused, or told to read no more: input is dropped

    @property
    def busy(self) -> bool:
        """Requests are waiting for (or getting) their answers."""
        return bool(self.queue)

    @property
    def reading_head(self) -> bool:
        """Part of a request head has arrived and not all of it."""
        return self._in_head

    @property
    def upgrading(self) -> bool:
        """The last request read asked for a protocol upgrade (what follows is not HTTP/1)."""
        return bool(self._parser.should_upgrade())

    def stop(self) -> None:
        """Read nothing more: whatever arrives from now on is dropped (a closing connection)."""
        self.stopped = True
        self._continue_owed = False

    def receive(self, data: bytes, now: float) -> list[RequestEvent]:
        """Parse ``data``, what the client sent next; returns what it completed, in order."""
        if self.stopped:
            return _NOTHING  # the parser stopped at the refused request; the rest is not read
        self._now = now
        events = self._events = []
        if not self._in_body and not self.head_started:
            self.head_started = now
        self._head_began_here = False
        self._body_fed = self._body_began_here = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.stopped = True
            events.append(UpgradeRequested(data[exc.args[0] :]))
        except httptools.HttpParserCallbackError as exc:
            # llhttp wraps what our own callbacks raised: a bug here, not bad input.
            self.stopped = True
            events.append(InternalError(exc.__context__ or exc))
        except httptools.HttpParserError:
            if not self.stopped:
                if self._parser.get_method() == b"PRI":
                    self._refuse(505, "http_version", "HTTP/2 is not supported here, use HTTP/1.1")
                else:
                    self._refuse(400, "bad_request", "malformed HTTP request")
        if self._in_head and not self._head_began_here and not self.stopped:
            self._head_raw += len(data)
            if self._head_raw > self.max_header_bytes:
                self._refuse(431, "headers_too_large", "request header fields too large")
        elif self._in_body and not self.stopped:
            if self._body_fed or self._body_began_here:
                self._since_body = 0
            else:
                self._since_body += len(data)
                if self._since_body > self.max_header_bytes:
                    self._refuse(431, "headers_too_large", "request trailer fields too large")
        self._events = _NOTHING
        return events

    def answered(self, now: float) -> list[RequestEvent]:
        """The oldest queued request has its answer. When none is left waiting, reading the
        next one resumes: its deadlines run from now (reading was paused), and a ``100
        Continue`` it asked for while earlier answers were on their way is owed now."""
        queue = self.queue
        if queue:
            queue.popleft()
        if queue or self.stopped:
            return _NOTHING
        if self.head_started:
            self.head_started = now
        if self.body_started:
            self.body_started = now
        if self._continue_owed:
            self._continue_owed = False
            return [SendData(CONTINUE)]
        return _NOTHING

    def expired(self, now: float) -> Refused | None:
        """A head (body) trickled in a byte at a time keeps the connection from ever being idle:
        its own deadline, nginx's client_header_timeout (client_body_timeout, here for the
        whole body). While earlier requests are being answered, reading is paused and nothing
        can arrive: no deadline then."""
        if self.stopped or self.queue:
            return None
        started = self.head_started
        if started and now - started > self.header_timeout:
            self.stop()
            return Refused(408, "header_timeout", "request head not received in time")
        started = self.body_started
        if started and now - started > self.body_timeout:
            self.stop()
            return Refused(408, "body_timeout", "request body not received in time")
        return None

    # -- httptools callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._head_bytes = 0
        self._framed = False
        self._upgrade = b""
        self._in_head = True
        self._head_raw = 0
        self._head_began_here = True
        if not self.head_started:
            self.head_started = self._now

    def on_url(self, url: bytes) -> None:
        if self.stopped:
            return
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.max_header_bytes:
            self._refuse(431, "headers_too_large", "request header fields too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.stopped or not self._in_head:
            return  # refused already, or a trailer field: dropped (see the module docstring)
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_header_bytes:
            self._refuse(431, "headers_too_large", "request header fields too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._body_began_here = True
        self.head_started = 0.0
        if self.stopped:
            return
        expect_continue = False
        hosts = 0
        for name, value in self._headers:
            lname = name.lower()
            if lname not in _NOTABLE:
                continue  # most headers: one set lookup instead of five comparisons
            if lname == b"content-length":
                self._framed = True
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_body_bytes:
                    self._refuse(413, "request_too_large", "request body too large")
                    return
            elif lname == b"host":
                hosts += 1
            elif lname == b"transfer-encoding":
                self._framed = True
            elif lname == b"upgrade":
                self._upgrade = value
            elif lname == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        if hosts > 1:
            # RFC 9112 §3.2: which one the primary would pick is anybody's guess.
            self._refuse(400, "bad_request", "more than one Host header")
            return
        if not hosts and self._parser.get_http_version() != "1.0":
            # RFC 9112 §3.2 (a MUST, and nginx's answer too): HTTP/1.1 names its host.
            self._refuse(400, "bad_request", "no Host header")
            return
        if self._framed:
            self.body_started = self._now
        if expect_continue:
            if self.queue:
                # An earlier answer may be mid-stream: invite the body once it is sent.
                self._continue_owed = True
            else:
                # The body is read here, not by the primary: invite it now.
                self._events.append(SendData(CONTINUE))

    def on_body(self, chunk: bytes) -> None:
        self._body_fed = True
        if self.stopped:
            return
        self._body_size += len(chunk)
        if self._body_size > self.max_body_bytes:
            self._refuse(413, "request_too_large", "request body too large")
            return
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._continue_owed = False
        self.body_started = 0.0
        if self.stopped:
            return
        queue = self.queue
        if len(queue) >= self.max_pipelined:
            self._refuse(503, "pipeline_full", "too many pipelined requests")
            return
        parser = self._parser
        body = self._body
        request = ParsedRequest(
            parser.get_method(),
            self._url,
            self._headers,
            body[0] if len(body) == 1 else b"".join(body),
            parser.should_keep_alive(),
            parser.get_http_version() != "1.0",
            self._framed,
            # llhttp stops at an upgrade only with "Connection: upgrade" as well
            self._upgrade if self._upgrade and parser.should_upgrade() else b"",
        )
        queue.append(request)
        self._events.append(request)

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Counted once: a refused request stops the reading, later limits never see it."""
        if self.stopped:
            return
        self.stop()
        self._events.append(Refused(status, reason, message))

"""Reading HTTP/1.1 requests from a client socket with llhttp (httptools), within limits.

``RequestReader`` is the part every ingress mode shares: parsing, the header and body limits
(431/413), malformed requests (400), idle tracking. A subclass decides what a complete
request means (``request_received``): relay it (proxy) or answer it and copy it (tap).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

import httptools

from shadowd.exchange import Exchange, Headers, Request
from shadowd.ingress.responses import error_response
from shadowd.upstream.request import HOP_BY_HOP, connection_listed

if TYPE_CHECKING:
    from shadowd.ingress.server import Ingress
    from shadowd.mirror import PendingExchange

LOG = logging.getLogger("shadowd.ingress")
LINGER_SECONDS = 5.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
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


class RequestReader(asyncio.Protocol, abc.ABC):
    """Trailer fields of a chunked request body are dropped, never merged into the headers
    (RFC 9110 §6.5.1): the body is forwarded whole with a Content-Length, so there is no
    trailer section to carry them in, and a trailer must not be able to pose as a header
    (``Host``, an identity header set by an authenticating proxy in front of us)."""

    def __init__(self, ingress: Ingress) -> None:
        self._ingress = ingress
        self._limits = ingress.config.ingress
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._client = ""
        self._closed = False
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
        # when the head being read started arriving (0: none is); bounded by header_timeout
        self._head_started = 0.0
        self._continue_owed = False
        self._rejected = False
        self._reading_paused = False
        self.idle_since = 0.0

    # -- for subclasses ---------------------------------------------------------------------
    @abc.abstractmethod
    def request_received(self, request: ParsedRequest) -> None:
        """A request was read in full: relay it (proxy) or answer and copy it (tap)."""

    def busy(self) -> bool:
        """Whether a request is being answered (then the idle timeout does not apply)."""
        return False

    def mid_answer(self) -> bool:
        """Whether part of an answer has been written and the rest has not."""
        return False

    def upgrade_requested(self, rest: bytes) -> None:
        """The last request asked for a protocol upgrade; ``rest``: what the client sent
        after it (not HTTP/1 any more). Here: not relayed, the connection stops reading."""
        self._pause_reading()

    def answer_later(self, answer: bytes) -> None:
        """Send ``answer`` (a closing error) once the answers before it are sent."""
        assert self.transport is not None
        self.transport.close()

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection always gets a full Transport; asyncio types it as the base.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) else ""
        self.idle_since = self._ingress.now
        self._ingress.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._ingress.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # the parser stopped at the refused request; the rest is not read
        if not self._in_body and not self._head_started:
            self._head_started = self._ingress.now
        self._head_began_here = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_requested(data[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            # llhttp wraps what our own callbacks raised: a bug here, not bad input.
            self._internal_error(exc.__context__ or exc)
        except httptools.HttpParserError:
            if not self._rejected:
                if self._parser.get_method() == b"PRI":
                    self._refuse_http2()
                else:
                    self._reject(400, "bad_request", "malformed HTTP request")
        if self._in_head and not self._head_began_here and not self._rejected:
            self._head_raw += len(data)
            if self._head_raw > self._limits.max_header_bytes:
                self._reject(431, "headers_too_large", "request header fields too large")
        # A half-sent request counts as idle too; once one is being answered, the
        # primary's deadline applies instead.
        self.idle_since = 0.0 if self.busy() else self._ingress.now

    # -- httptools callbacks (request side) -----------------------------------------------
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
        if not self._head_started:
            self._head_started = self._ingress.now

    def on_url(self, url: bytes) -> None:
        if self._rejected:
            return
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_header_bytes:
            self._reject(431, "headers_too_large", "request header fields too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._rejected or not self._in_head:
            return  # refused already, or a trailer field: dropped (see the class docstring)
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._limits.max_header_bytes:
            self._reject(431, "headers_too_large", "request header fields too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._head_started = 0.0
        if self._rejected:
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
                if declared > self._limits.max_request_body_bytes:
                    self._reject(413, "request_too_large", "request body too large")
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
            self._reject(400, "bad_request", "more than one Host header")
            return
        if expect_continue and self.transport is not None:
            if self.busy():
                # An earlier answer may be mid-stream: invite the body once it is sent.
                self._continue_owed = True
            else:
                # The body is read here, not by the primary: invite it now.
                self.transport.write(CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        if self._rejected:
            return
        self._body_size += len(chunk)
        if self._body_size > self._limits.max_request_body_bytes:
            self._reject(413, "request_too_large", "request body too large")
            return
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._continue_owed = False
        if self._rejected:
            return
        parser = self._parser
        body = self._body
        self.request_received(
            ParsedRequest(
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
        )

    # -- endings ---------------------------------------------------------------------------
    def _reject(self, status: int, reason: str, message: str) -> None:
        """Refuse a request we could not read in full; the connection cannot be reused.
        Answers to earlier pipelined requests still go first, then this one, then close."""
        if self._rejected or self._closed:
            # Closed already (a local answer that ended the connection, inside the same read
            # as what followed it): nothing more may be written, and nothing was refused.
            return
        self._rejected = True
        self._continue_owed = False
        self._ingress.metrics.ingress_rejected(reason)
        self._ingress.metrics.ingress_request(status)
        answer = error_response(status, message, close=True)
        if self.busy():
            self._pause_reading()
            self.answer_later(answer)
            return
        assert self.transport is not None
        self.transport.write(answer)
        self.close_lingering()

    def _refuse_http2(self) -> None:
        LOG.warning(
            "HTTP/2 connection refused: shadowd speaks HTTP/1.x only",
            extra={"client": self._client},
        )
        self._reject(505, "http_version", "HTTP/2 is not supported here, use HTTP/1.1")

    def _internal_error(self, exc: BaseException) -> None:
        """One of our own callbacks raised: log it with its traceback, count it, and end the
        connection (its state is not to be trusted any more)."""
        LOG.error(
            "internal error while reading a request",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"client": self._client},
        )
        self._rejected = True
        metrics = self._ingress.metrics
        metrics.ingress_rejected("internal_error")
        transport = self.transport
        if transport is None:
            return
        self._closed = True
        if self.mid_answer():
            transport.abort()  # a 500 cannot follow half an answer: only closing says so
            return
        metrics.ingress_request(500)
        transport.write(error_response(500, "internal error", close=True))
        transport.close()

    def close_lingering(self) -> None:
        """Close a connection the client may still be sending on (a refused request, requests
        pipelined behind it). Closing with unread input makes the kernel reset the connection,
        and a reset can destroy the answer before the client reads it: send FIN instead, read
        and drop what still comes, and close at the client's FIN or after ``LINGER_SECONDS``
        (nginx's lingering close)."""
        transport = self.transport
        self._closed = True
        self._rejected = True  # data_received drops everything from now on
        if transport is None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._resume_reading()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _copy_if_wanted(
        self, request: ParsedRequest, url: bytes, headers: Headers, has_host: bool
    ) -> PendingExchange | None:
        """Hand the request to the mirror when it wants a copy (it counts why not)."""
        target_text = url.decode("latin-1")
        q = target_text.find("?")
        path = target_text if q < 0 else target_text[:q]
        mirror = self._ingress.mirror
        method = request.method
        if not mirror.wants(method, path, len(request.body)):
            return None
        method_text = method.decode("ascii")
        exchange = Exchange(
            id=0,
            request=Request(
                method=method_text,
                target=target_text,
                headers=request.headers,
                body=request.body,
                received_at=time.time(),
                client=self._client,
                http_version="1.1" if request.http11 else "1.0",
            ),
            endpoint=self._ingress.endpoints.classify(method_text, path),
        )
        return mirror.start(exchange, method, url, headers, has_host)

    def close_if_idle(self, now: float, idle_timeout: float) -> None:
        transport = self.transport
        if transport is None or self._closed:
            return
        if self.idle_since and now - self.idle_since > idle_timeout:
            self._closed = True
            transport.close()
            return
        # A head trickled in a byte at a time keeps the connection from ever being idle:
        # its own deadline (nginx's client_header_timeout). While earlier requests are being
        # answered, reading is paused and the head cannot arrive: no deadline then.
        started = self._head_started
        if started and now - started > self._limits.header_timeout and not self.busy():
            self._rejected = True
            self._closed = True
            metrics = self._ingress.metrics
            metrics.ingress_rejected("header_timeout")
            metrics.ingress_request(408)
            transport.write(error_response(408, "request head not received in time", close=True))
            transport.close()


def forwardable_headers(headers: Headers) -> tuple[Headers, bool, bytes]:
    """The client's headers minus hop-by-hop ones and the body framing (the body is sent
    whole with its own length); also whether a Host header was present, and its value."""
    listed = None
    kept: Headers = []
    has_host = False
    host = b""
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection" and listed is None:
                listed = connection_listed(headers)
            continue
        if lname == b"host":
            has_host = True
            host = value
        elif lname == b"expect" or lname == b"content-length":
            continue
        kept.append((name, value))
    if listed:
        kept = [(n, v) for n, v in kept if n.lower() not in listed]
    return kept, has_host, host

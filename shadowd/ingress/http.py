"""Reading HTTP/1.1 requests from a client socket with llhttp (httptools), within limits.

``RequestReader`` is the part every ingress mode shares: parsing, the header and body limits
(431/413), malformed requests (400), idle tracking. A subclass decides what a complete
request means (``request_received``): relay it (proxy) or answer it and copy it (tap).
"""

from __future__ import annotations

import abc
import asyncio
import time
from typing import TYPE_CHECKING

import httptools

from shadowd.exchange import Exchange, Headers, Request
from shadowd.ingress.responses import error_response
from shadowd.upstream.request import HOP_BY_HOP, connection_listed

if TYPE_CHECKING:
    from shadowd.ingress.server import Ingress
    from shadowd.mirror import PendingExchange


class ParsedRequest:
    __slots__ = ("body", "headers", "http11", "keep_alive", "method", "url")

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: Headers,
        body: bytes,
        keep_alive: bool,
        http11: bool,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http11 = http11


class RequestReader(asyncio.Protocol, abc.ABC):
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

    def upgrade_requested(self) -> None:
        """The last request asked for a protocol upgrade, which shadowd does not relay."""
        self._pause_reading()

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) else ""
        self.idle_since = self._ingress.now
        self._ingress.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._ingress.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgrade_requested()
        except httptools.HttpParserError:
            if not self._rejected:
                self._reject(400, "bad_request", "malformed HTTP request")
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

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_header_bytes:
            self._reject(431, "headers_too_large", "request header fields too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._limits.max_header_bytes:
            self._reject(431, "headers_too_large", "request header fields too large")

    def on_headers_complete(self) -> None:
        if self._rejected:
            return
        expect_continue = False
        for name, value in self._headers:
            lname = name.lower()
            if lname == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self._limits.max_request_body_bytes:
                    self._reject(413, "request_too_large", "request body too large")
                    return
            elif lname == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        if expect_continue and self.transport is not None:
            # The body is read here, not by the primary: invite it now.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        if self._rejected:
            return
        self._body_size += len(chunk)
        if self._body_size > self._limits.max_request_body_bytes:
            self._reject(413, "request_too_large", "request body too large")
            return
        self._body.append(chunk)

    def on_message_complete(self) -> None:
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
            )
        )

    # -- endings ---------------------------------------------------------------------------
    def _reject(self, status: int, reason: str, message: str) -> None:
        """Refuse a request we could not read in full; the connection cannot be reused."""
        self._rejected = True
        self._ingress.metrics.ingress_rejected(reason)
        self._ingress.metrics.ingress_request(status)
        if self.busy():
            # An earlier pipelined answer is still being relayed: just stop here.
            self.transport.close()  # type: ignore[union-attr]
            return
        self.transport.write(error_response(status, message, close=True))  # type: ignore[union-attr]
        self._closed = True
        self.transport.close()  # type: ignore[union-attr]

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
        if self.idle_since and now - self.idle_since > idle_timeout and self.transport:
            self._closed = True
            self.transport.close()


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

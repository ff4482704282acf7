"""Proxy-mode ingress: clients talk to shadowd, shadowd relays the primary's answer unchanged.

One ``ClientConnection`` per client socket, parsing with llhttp (httptools) and relaying the
primary's answer chunk by chunk as it arrives (it is the primary call's ``ResponseSink``).
The primary's status, reason, headers (minus hop-by-hop) and body bytes reach the client as
sent; only the framing may change (a chunked or close-delimited body is re-chunked for an
HTTP/1.1 client). Nothing on this path waits for the mirror targets.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from shadowd.exchange import (
    ERROR_TIMEOUT,
    PRIMARY,
    Answer,
    Exchange,
    Headers,
    Request,
)
from shadowd.ingress.responses import error_response
from shadowd.upstream.collect import BodyKeeper
from shadowd.upstream.connection import Call
from shadowd.upstream.request import HOP_BY_HOP, connection_listed

if TYPE_CHECKING:
    from shadowd.ingress.server import ProxyIngress
    from shadowd.mirror import PendingExchange

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_NO_BODY_STATUS = frozenset({204, 304})
_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_STATUS_LINES = {code: b"HTTP/1.1 %d " % code for code in range(100, 600)}


class _ParsedRequest:
    __slots__ = ("body", "headers", "http11", "keep_alive", "method", "url")

    def __init__(self, method: bytes, url: bytes, headers: Headers, body: bytes,
                 keep_alive: bool, http11: bool) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http11 = http11


class ClientConnection(asyncio.Protocol):
    def __init__(self, ingress: ProxyIngress) -> None:
        self._ingress = ingress
        self._limits = ingress.config.ingress
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._client = ""
        self._closed = False
        # request being parsed
        self._url = b""
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_bytes = 0
        self._rejected = False
        # requests parsed but not answered yet (pipelining): the first one is in flight
        self._queue: deque[_ParsedRequest] = deque()
        self._reading_paused = False
        self._writing_paused = False
        # the answer being relayed
        self._call: Call | None = None
        self._current: _ParsedRequest | None = None
        self._status = 0
        self._head_sent = False
        self._chunked = False
        self._close_after = False
        self._pending: PendingExchange | None = None
        self._keeper: BodyKeeper | None = None
        self._answer: Answer | None = None
        self._primary_started = 0.0
        self.idle_since = 0.0

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
        call = self._call
        if call is not None:
            call.cancel()  # the client left mid-answer: that primary connection is spent
        if self._pending is not None:
            self._ingress.mirror.abandon(self._pending, "client_gone")
            self._pending = None

    def data_received(self, data: bytes) -> None:
        # A half-sent request counts as idle too; once one is in flight, the primary's
        # deadline applies instead.
        self.idle_since = 0.0 if self._queue else self._ingress.now
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Protocol upgrades (WebSocket) are not relayed: the request was answered as a
            # plain one and the connection closes after it.
            if self._queue:
                self._queue[-1].keep_alive = False
                self._close_after = True
            self._pause_reading()
        except httptools.HttpParserError:
            if not self._rejected:
                self._reject(400, "bad_request", "malformed HTTP request")

    def pause_writing(self) -> None:
        # The client reads slower than the primary answers: stop reading the primary.
        self._writing_paused = True
        call = self._call
        if call is not None and call.connection is not None:
            call.connection.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        call = self._call
        if call is not None and call.connection is not None:
            call.connection.resume_reading()

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
        request = _ParsedRequest(
            parser.get_method(),
            self._url,
            self._headers,
            body[0] if len(body) == 1 else b"".join(body),
            parser.should_keep_alive(),
            parser.get_http_version() != "1.0",
        )
        self._queue.append(request)
        if len(self._queue) == 1:
            self._dispatch(request)
        else:
            self._pause_reading()  # pipelined: answer in order, one at a time

    # -- relaying to the primary ----------------------------------------------------------
    def _dispatch(self, req: _ParsedRequest) -> None:
        ingress = self._ingress
        method = req.method
        url = req.url
        if method == b"CONNECT":
            self._answer_locally(405, "bad_request", "CONNECT is not supported by this proxy")
            return
        if not url.startswith(b"/"):
            url = _origin_form(url)
            if url is None:
                self._answer_locally(400, "bad_request", "request target must be a path")
                return
        headers, has_host = self._forwarded_headers(req)
        self._current = req
        self._status = 0
        self._head_sent = False
        self._chunked = False
        self._close_after = not req.keep_alive
        self._keeper = None
        self._pending = None
        target_text = url.decode("latin-1")
        q = target_text.find("?")
        path = target_text if q < 0 else target_text[:q]
        mirror = ingress.mirror
        if mirror.wants(method, path, len(req.body)):
            method_text = method.decode("ascii")
            exchange = Exchange(
                id=0,
                request=Request(
                    method=method_text,
                    target=target_text,
                    headers=req.headers,
                    body=req.body,
                    received_at=time.time(),
                    client=self._client,
                    http_version="1.1" if req.http11 else "1.0",
                ),
                endpoint=ingress.endpoints.classify(method_text, path),
            )
            self._pending = mirror.start(exchange, method, url, headers, has_host)
            if self._pending is not None:
                self._keeper = BodyKeeper(ingress.config.diff.max_body_bytes)
        payload = ingress.primary_template.build(method, url, headers, req.body, has_host)
        self._primary_started = time.perf_counter()
        self._call = ingress.primary_pool.send(
            payload, self, head_only=method == b"HEAD", retryable=method in _IDEMPOTENT
        )

    def _forwarded_headers(self, req: _ParsedRequest) -> tuple[Headers, bool]:
        """The client's headers minus hop-by-hop ones, with X-Forwarded-* conventions."""
        listed = None
        headers: Headers = []
        xff = b""
        has_host = has_proto = False
        host = b""
        for name, value in req.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"connection" and listed is None:
                    listed = connection_listed(req.headers)
                continue
            if lname == _XFF:
                xff = value if not xff else xff + b", " + value
                continue
            if lname == b"host":
                has_host = True
                host = value
            elif lname == _XFP:
                has_proto = True
            elif lname == b"expect" or lname == b"content-length":
                continue  # the body is sent whole with its own length
            headers.append((name, value))
        if listed:
            headers = [(n, v) for n, v in headers if n.lower() not in listed]
        client = self._client.encode("latin-1")
        headers.append((b"X-Forwarded-For", xff + b", " + client if xff else client))
        if not has_proto:
            headers.append((b"X-Forwarded-Proto", b"http"))
        if has_host and not any(n.lower() == _XFH for n, _ in headers):
            headers.append((b"X-Forwarded-Host", host))
        return headers, has_host

    # -- ResponseSink: the primary's answer -----------------------------------------------
    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        if self._closed or self.transport is None:
            return
        req = self._current
        assert req is not None
        self._status = status
        no_body = req.method == b"HEAD" or status in _NO_BODY_STATUS
        listed = None
        framed = False
        parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d " % status, reason, b"\r\n"]
        append = parts.append
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"connection":
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
            # chunked or close-delimited upstream: re-chunk for 1.1, close-delimit for 1.0
            if req.http11:
                append(b"Transfer-Encoding: chunked\r\n")
                self._chunked = True
            else:
                self._close_after = True
        if self._close_after or self._ingress.draining:
            self._close_after = True
            append(b"Connection: close\r\n")
        elif not req.http11:
            append(b"Connection: keep-alive\r\n")
        append(b"\r\n")
        self.transport.write(b"".join(parts))
        self._head_sent = True
        if self._pending is not None:
            self._answer = Answer(target=PRIMARY, status=status, headers=headers)

    def on_response_body(self, chunk: bytes) -> None:
        if self._closed or not chunk:
            return
        transport = self.transport
        assert transport is not None
        if self._chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        if self._keeper is not None:
            self._keeper.add(chunk)

    def on_response_complete(self) -> None:
        self._call = None
        if self._closed:
            return
        if self._chunked:
            self.transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]
        self._ingress.metrics.ingress_request(self._status)
        pending = self._pending
        if pending is not None:
            self._pending = None
            answer = self._answer or Answer(target=PRIMARY, status=self._status)
            answer.latency = time.perf_counter() - self._primary_started
            if self._keeper is not None:
                self._keeper.fill(answer)
            self._answer = None
            self._keeper = None
            self._ingress.mirror.primary_answered(pending, answer)
        self._request_done()

    def on_response_error(self, kind: str) -> None:
        self._call = None
        if self._closed:
            return
        metrics = self._ingress.metrics
        metrics.upstream_error(PRIMARY, kind)
        pending = self._pending
        if pending is not None:
            self._pending = None
            if self._head_sent:
                self._ingress.mirror.abandon(pending, "primary_incomplete")
            else:
                answer = Answer(target=PRIMARY, error=kind)
                answer.latency = time.perf_counter() - self._primary_started
                self._ingress.mirror.primary_answered(pending, answer)
        if self._head_sent:
            # Part of the answer is already with the client: only closing tells it so.
            self.transport.abort()  # type: ignore[union-attr]
            return
        if kind == ERROR_TIMEOUT:
            self._answer_locally(504, "primary_timeout", "primary did not answer in time")
        else:
            self._answer_locally(502, "primary_unreachable", "primary is unreachable")

    # -- endings ---------------------------------------------------------------------------
    def _answer_locally(self, status: int, reason: str, message: str) -> None:
        """A short error answer of our own, for a request that was read in full."""
        self._ingress.metrics.ingress_rejected(reason)
        self._ingress.metrics.ingress_request(status)
        req = self._queue[0] if self._queue else None
        close = req is None or not req.keep_alive
        self.transport.write(error_response(status, message, close=close))  # type: ignore[union-attr]
        self._close_after = close
        self._request_done()

    def _request_done(self) -> None:
        self._current = None
        if self._queue:
            self._queue.popleft()
        if self._close_after or self._ingress.draining:
            self._closed = True
            self.transport.close()  # type: ignore[union-attr]
            return
        if self._queue:
            self._dispatch(self._queue[0])
            return
        self.idle_since = self._ingress.now
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def _reject(self, status: int, reason: str, message: str) -> None:
        """Refuse a request we could not read in full; the connection cannot be reused."""
        self._rejected = True
        self._ingress.metrics.ingress_rejected(reason)
        self._ingress.metrics.ingress_request(status)
        if self._queue or self._call is not None:
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

    def close_if_idle(self, now: float, idle_timeout: float) -> None:
        if self.idle_since and now - self.idle_since > idle_timeout and self.transport:
            self._closed = True
            self.transport.close()


def _origin_form(url: bytes) -> bytes | None:
    """``http://host/path?q`` (absolute-form, sent to proxies) to ``/path?q``."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return None
    if not parsed.schema:
        return None
    path = parsed.path or b"/"
    return path + b"?" + parsed.query if parsed.query else path


def _without(parts: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    """Drop ``name: value\\r\\n`` quadruples whose name is in ``names``."""
    kept: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].lower() not in names:
            kept.extend(parts[i : i + 4])
    return kept

"""Reading HTTP/1.1 requests from a client socket: the I/O around ``RequestStream``.

``RequestReader`` is the part every ingress mode shares: it feeds the socket's bytes to the
sans-io ``shadowd.http1.request.RequestStream`` (parsing, limits, trailers, 100-continue, the
pipelining queue, deadlines) and does what its events ask: writes, refusals (counted and
answered), closing, idle tracking. A subclass decides what a complete request means
(``request_received``): relay it (proxy) or answer it and copy it (tap).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from shadowd.exchange import Exchange, Headers, Request
from shadowd.http1.request import (
    InternalError,
    ParsedRequest,
    Refused,
    RequestStream,
    SendData,
    UpgradeRequested,
)
from shadowd.ingress.responses import error_response
from shadowd.upstream.request import HOP_BY_HOP, PLAIN_CONNECTION, connection_listed

if TYPE_CHECKING:
    from shadowd.ingress.server import Ingress
    from shadowd.mirror import PendingExchange

LOG = logging.getLogger("shadowd.ingress")
LINGER_SECONDS = 5.0
# Requests read ahead of their answer on one connection. Each costs its head and body in
# memory, and answering them is in order anyway: past this the client is refused (503).
MAX_PIPELINED = 128


class RequestReader(asyncio.Protocol, abc.ABC):
    """Drives a ``RequestStream`` (shadowd.http1.request) for one client socket: feeds it what
    arrives, writes what it asks for, counts and answers its refusals, closes."""

    def __init__(self, ingress: Ingress, max_pipelined: int) -> None:
        self._ingress = ingress
        limits = self._limits = ingress.config.ingress
        self._stream = RequestStream(
            max_header_bytes=limits.max_header_bytes,
            max_body_bytes=limits.max_request_body_bytes,
            max_pipelined=max_pipelined,
            header_timeout=limits.header_timeout,
            body_timeout=limits.body_timeout,
        )
        # the requests read and not answered yet, oldest first (the stream's)
        self._queue = self._stream.queue
        self.transport: asyncio.Transport | None = None
        self._client = ""
        self._closed = False
        self._reading_paused = False
        self.idle_since = 0.0

    # -- for subclasses ---------------------------------------------------------------------
    @abc.abstractmethod
    def request_received(self, request: ParsedRequest) -> None:
        """A request was read in full and queued: relay it (proxy) or answer it (tap)."""

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
        self._stream.stop()
        self._ingress.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        """Feed the stream, then act on its events in order. What a subclass does with a
        request (relay, answer) runs here: an exception from it is our bug, answered 500 and
        logged. (One method, not two: this runs for every read.)"""
        events = self._stream.receive(data, self._ingress.now)
        try:
            for event in events:
                if self._closed:
                    # A local answer that ended the connection, inside the same read as what
                    # followed it: nothing more may be written, and nothing was refused.
                    return
                if type(event) is ParsedRequest:  # read in full, queued
                    self.request_received(event)
                elif type(event) is SendData:
                    assert self.transport is not None
                    self.transport.write(event.data)
                elif type(event) is Refused:
                    self._refused(event)
                elif type(event) is UpgradeRequested:
                    self.upgrade_requested(event.rest)
                elif type(event) is InternalError:
                    self._internal_error(event.exc)
        except Exception as exc:  # ours, not the client's: logged with its traceback
            self._internal_error(exc)
        # A half-sent request counts as idle too; once one is being answered, the
        # primary's deadline applies instead.
        self.idle_since = 0.0 if self._queue else self._ingress.now

    # -- endings ---------------------------------------------------------------------------
    def _refused(self, refusal: Refused) -> None:
        """Refuse a request we could not read in full; the connection cannot be reused.
        Answers to earlier pipelined requests still go first, then this one, then close."""
        if refusal.reason == "http_version":
            LOG.warning(
                "HTTP/2 connection refused: shadowd speaks HTTP/1.x only",
                extra={"client": self._client},
            )
        self._ingress.metrics.ingress_rejected(refusal.reason)
        self._ingress.metrics.ingress_request(refusal.status)
        answer = error_response(refusal.status, refusal.message, close=True)
        if self._stream.busy:
            self._pause_reading()
            self.answer_later(answer)
            return
        assert self.transport is not None
        self.transport.write(answer)
        self.close_lingering()

    def _internal_error(self, exc: BaseException) -> None:
        """One of our own callbacks raised: log it with its traceback, count it, and end the
        connection (its state is not to be trusted any more)."""
        LOG.error(
            "internal error while reading a request",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"client": self._client},
        )
        self._stream.stop()
        metrics = self._ingress.metrics
        metrics.ingress_rejected("internal_error")
        transport = self.transport
        if transport is None or self._closed:
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
        self._stream.stop()  # data_received drops everything from now on
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
        refusal = self._stream.expired(now)
        if refusal is not None:
            self._closed = True
            metrics = self._ingress.metrics
            metrics.ingress_rejected(refusal.reason)
            metrics.ingress_request(refusal.status)
            transport.write(error_response(refusal.status, refusal.message, close=True))
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
            if (
                lname == b"connection"
                and listed is None
                and value.lower() not in PLAIN_CONNECTION  # lists no other field: no rescan
            ):
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

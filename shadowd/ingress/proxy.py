"""Proxy-mode ingress: clients talk to shadowd, shadowd relays the primary's answer unchanged.

One ``ClientConnection`` per client socket, parsing with llhttp (httptools) and relaying the
primary's answer chunk by chunk as it arrives (it is the primary call's ``ResponseSink``).
The primary's status, reason, headers (minus hop-by-hop) and body bytes reach the client as
sent; only the framing may change (a chunked or close-delimited body is re-chunked for an
HTTP/1.1 client). Nothing on this path waits for the mirror targets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import httptools

from shadowd.exchange import (
    ERROR_INTERNAL,
    ERROR_PROTOCOL,
    ERROR_TOO_LARGE,
    PRIMARY,
    TIMEOUT_KINDS,
    Answer,
    Headers,
)
from shadowd.http1.request import ParsedRequest, SendData
from shadowd.http1.response import LAST_CHUNK, frame_head
from shadowd.ingress.http import MAX_PIPELINED, RequestReader
from shadowd.ingress.responses import error_response
from shadowd.upstream.collect import BodyKeeper
from shadowd.upstream.connection import Call
from shadowd.upstream.request import (
    ALWAYS_LENGTH_METHODS,
    HOP_BY_HOP,
    IDEMPOTENT_METHODS,
    PLAIN_CONNECTION,
    connection_listed,
)
from shadowd.upstream.tunnel import UpstreamTunnel, open_tunnel

if TYPE_CHECKING:
    from shadowd.ingress.server import Ingress
    from shadowd.mirror import PendingExchange

ACCESS_LOG = logging.getLogger("shadowd.access")
_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_FORWARDING_NOTABLE = frozenset({b"host", _XFF, _XFP, _XFH, b"expect", b"content-length"})


class ClientConnection(RequestReader):
    """One client socket in proxy mode; also the ``ResponseSink`` of its primary calls."""

    def __init__(self, ingress: Ingress) -> None:
        super().__init__(ingress, MAX_PIPELINED)
        self._ingress: Ingress = ingress
        # the answer being relayed
        self._call: Call | None = None
        self._current: ParsedRequest | None = None
        self._status = 0
        self._head_sent = False
        self._out: list[bytes] = []  # answer bytes parsed from the current upstream read
        self._chunked = False
        self._close_after = False
        self._pending: PendingExchange | None = None
        self._keeper: BodyKeeper | None = None
        self._answer: Answer | None = None
        self._primary_started = 0.0
        self._serving = False  # the dispatch loop is running (local answers re-enter it)
        self._writing_paused = False  # the client's socket buffer is full (latched)
        self._final: bytes | None = None  # a refusal owed after the queued answers
        self._tunnel: UpstreamTunnel | None = None  # a relayed WebSocket's primary side
        self._tunnel_open = False  # 101 relayed: the sockets are joined
        self._tunnel_task: asyncio.Task[None] | None = None
        self._holds_tunnel = False  # counted in the ingress's tunnels until this closes
        self._upgrade_rest = b""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        call = self._call
        if call is not None:
            call.cancel()  # the client left mid-answer: that primary connection is spent
        if self._pending is not None:
            self._ingress.mirror.abandon(self._pending, "client_gone")
            self._pending = None
        if self._tunnel is not None:
            self._tunnel.close()
        elif self._tunnel_task is not None:
            self._tunnel_task.cancel()  # still connecting
        if self._holds_tunnel:
            self._holds_tunnel = False
            self._ingress.tunnels -= 1

    def eof_received(self) -> bool | None:
        # A client that half-closes after its last request still gets the answers to what
        # it sent; the connection closes after them.
        queue = self._queue
        if not queue:
            return None
        # Only after the last one: closing after the current answer would lose the others.
        last = queue[-1]
        last.keep_alive = False
        if last is self._current:
            self._close_after = True
        return True

    def pause_writing(self) -> None:
        # The client reads slower than the primary answers: stop reading the primary. Latched,
        # as the next call may have no connection yet; it is paused as soon as it gets one.
        self._writing_paused = True
        call = self._call
        if call is not None:
            call.pause()

    def resume_writing(self) -> None:
        self._writing_paused = False
        call = self._call
        if call is not None:
            call.resume()

    # -- RequestReader ---------------------------------------------------------------------
    def request_received(self, request: ParsedRequest) -> None:
        # The stream queued it. Answered in order, one at a time: it goes now if nothing is
        # in flight, and reading pauses while requests wait behind the one in flight.
        queue = self._queue
        if self._current is None:
            if len(queue) == 1:
                self._dispatch(request)  # the only one: a local answer empties the queue
            else:
                self._serve()
        if len(queue) > 1:
            self._pause_reading()

    def mid_answer(self) -> bool:
        return self._head_sent and self._current is not None

    def answer_later(self, answer: bytes) -> None:
        self._final = answer

    def upgrade_requested(self, rest: bytes) -> None:
        # What follows the request is not HTTP/1. A WebSocket upgrade is relayed (``rest``
        # goes to the primary once the tunnel is open); other upgrades are answered as a
        # plain request, CONNECT with 405, and the connection closes after the answer.
        self._upgrade_rest = rest
        self._pause_reading()
        if self._closed:
            return
        queue = self._queue
        if queue:
            last = queue[-1]
            last.keep_alive = False
            if last is self._current:
                self._close_after = True
        else:
            self.close_lingering()  # answered already, locally

    # -- relaying to the primary ----------------------------------------------------------
    def _serve(self) -> None:
        """Start on the queued requests, in order. A loop, not recursion: a request answered
        locally completes inside ``_dispatch`` and the next one is taken here."""
        if self._serving:
            return
        self._serving = True
        try:
            queue = self._queue
            while queue and self._current is None and not self._closed:
                self._dispatch(queue[0])
        finally:
            self._serving = False

    def _dispatch(self, req: ParsedRequest) -> None:
        ingress = self._ingress
        method = req.method
        url = req.url
        if method == b"CONNECT":
            # What follows a CONNECT is a tunnel's bytes, not requests: end the connection.
            req.keep_alive = False
            self._answer_locally(405, "bad_request", "CONNECT is not supported by this proxy")
            return
        if not url.startswith(b"/"):
            path = _origin_form(url)
            if path is None:
                self._answer_locally(400, "bad_request", "request target must be a path")
                return
            url = path
        headers, has_host = self._forwarded_headers(req)
        if req.upgrade and method == b"GET" and req.upgrade.lower() == b"websocket":
            if not ingress.take_tunnel():
                self._answer_locally(503, "max_connections", "too many client connections")
                return
            self._holds_tunnel = True
            self._start_tunnel(req, url, headers, has_host)
            return
        if req.framed and not req.body and method not in ALWAYS_LENGTH_METHODS:
            # An explicit empty body (DELETE with Content-Length: 0) stays explicit.
            headers.append((b"Content-Length", b"0"))
        self._current = req
        self._status = 0
        self._head_sent = False
        self._chunked = False
        self._close_after = not req.keep_alive
        self._keeper = None
        self._pending = None
        self._pending = self._copy_if_wanted(req, url, headers, has_host)
        if self._pending is not None:
            # Cut as the copies are (the client still gets every byte): the digest of a
            # large download would be hashed on this loop for nothing to compare it with.
            config = ingress.config
            self._keeper = BodyKeeper(config.diff.max_body_bytes, config.mirror.max_answer_bytes)
        payload = ingress.primary_template.build(method, url, headers, req.body, has_host)
        self._primary_started = time.perf_counter()
        call = ingress.primary_pool.send(
            payload, self, head_only=method == b"HEAD", retryable=method in IDEMPOTENT_METHODS
        )
        if not call.done:  # a pool that is closing answers at once, through on_response_error
            self._call = call
            if self._writing_paused:
                call.pause()

    # -- WebSocket: a tunnel to the primary (TunnelClient) ----------------------------------
    def _start_tunnel(
        self, req: ParsedRequest, url: bytes, headers: Headers, has_host: bool
    ) -> None:
        """Relay a WebSocket upgrade on a primary connection of its own (never mirrored)."""
        ingress = self._ingress
        self._current = req
        self._status = 0
        self._head_sent = False
        self._close_after = True
        self._pending = None
        self._keeper = None
        headers.append((b"Connection", b"Upgrade"))
        headers.append((b"Upgrade", req.upgrade))
        payload = ingress.primary_template.build(b"GET", url, headers, b"", has_host)
        self._primary_started = time.perf_counter()
        self._tunnel_task = asyncio.get_running_loop().create_task(
            open_tunnel(ingress.primary_pool, payload, self)
        )

    def tunnel_connected(self, upstream: UpstreamTunnel) -> None:
        self._tunnel = upstream
        if self._closed:
            upstream.close()

    def tunnel_answer(self, data: bytes, status: int) -> None:
        if self._closed:
            return
        self._status = status
        self._head_sent = True
        assert self.transport is not None
        self.transport.write(data)

    def tunnel_open(self, upstream: UpstreamTunnel, rest: bytes) -> None:
        transport = self.transport
        if self._closed or transport is None or upstream.transport is None:
            upstream.close()
            return
        self._tunnel_open = True
        self._ingress.metrics.ingress_request(101)
        if self._ingress.access_log:
            self._log_access()
        upstream.client_transport = transport
        if rest:
            transport.write(rest)
        transport.set_protocol(_ClientSide(self, upstream))
        if self._upgrade_rest:
            upstream.transport.write(self._upgrade_rest)
            self._upgrade_rest = b""
        if self._writing_paused:
            upstream.transport.pause_reading()
        self._reading_paused = False
        transport.resume_reading()

    def tunnel_failed(self, kind: str) -> None:
        if self._closed:
            return
        self.on_response_error(kind)

    def tunnel_closed(self) -> None:
        if self._closed:
            return
        if not self._tunnel_open:  # an answer other than 101, relayed in full
            self._ingress.metrics.ingress_request(self._status)
            if self._ingress.access_log:
                self._log_access()
            self._request_done()
            return
        self._closed = True
        assert self.transport is not None
        self.transport.close()

    def _forwarded_headers(self, req: ParsedRequest) -> tuple[Headers, bool]:
        """The client's end-to-end headers with the X-Forwarded-* conventions applied: what
        ``forwardable_headers`` keeps, in the same single pass (this runs for every request)."""
        source = req.headers
        headers: Headers = []
        listed: frozenset[bytes] = frozenset()
        has_host = has_proto = has_fhost = False
        host = xff = b""
        for name, value in source:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                # "keep-alive" or "close" lists no other field: no rescan
                if lname == b"connection" and value.lower() not in PLAIN_CONNECTION:
                    listed = connection_listed(source)
                continue
            if lname in _FORWARDING_NOTABLE:
                if lname == b"host":
                    has_host = True
                    host = value
                elif lname == _XFF:
                    xff = value if not xff else xff + b", " + value
                    continue
                elif lname == _XFP:
                    has_proto = True
                elif lname == _XFH:
                    has_fhost = True
                else:
                    continue  # Expect, Content-Length: the body is sent whole, with its own
            headers.append((name, value))
        if listed:  # rare: the client's Connection header names more hop-by-hop fields
            headers = [(n, v) for n, v in headers if n.lower() not in listed]
            xff = b"" if _XFF in listed else xff
            has_proto = has_proto and _XFP not in listed
            has_fhost = has_fhost and _XFH not in listed
        client = self._client.encode("latin-1")
        headers.append((b"X-Forwarded-For", xff + b", " + client if xff else client))
        if not has_proto:
            headers.append((b"X-Forwarded-Proto", b"http"))
        if has_host and not has_fhost:
            headers.append((b"X-Forwarded-Host", host))
        return headers, has_host

    # -- ResponseSink: the primary's answer -----------------------------------------------
    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        if self._closed or self.transport is None:
            return
        req = self._current
        assert req is not None
        self._status = status
        head, self._chunked, self._close_after = frame_head(
            status,
            reason,
            headers,
            head_request=req.method == b"HEAD",
            http11=req.http11,
            close=self._close_after or self._ingress.draining,
        )
        # Held until the upstream read is parsed, so that head and body leave in one write.
        self._out.append(head)
        if self._pending is not None:
            self._answer = Answer(target=PRIMARY, status=status, headers=headers)

    def on_response_body(self, chunk: bytes) -> None:
        if self._closed or not chunk:
            return
        out = self._out
        if self._chunked:
            out.append(b"%x\r\n" % len(chunk))
            out.append(chunk)
            out.append(b"\r\n")
        else:
            out.append(chunk)
        if self._keeper is not None:
            self._keeper.add(chunk)

    def on_response_complete(self) -> None:
        self._call = None
        if self._closed:
            return
        if self._chunked:
            self._out.append(LAST_CHUNK)
        self.on_response_flush()
        self._ingress.metrics.ingress_request(self._status)
        if self._ingress.access_log:
            self._log_access()
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

    def _log_access(self, error: str = "") -> None:
        req = self._current
        if req is None:
            return
        extra = {
            "client": self._client,
            "method": req.method.decode("latin-1"),
            "target": self._ingress.redaction.target(req.url.decode("latin-1")),
            "status": self._status,
            "ms": round((time.perf_counter() - self._primary_started) * 1000, 3),
            "mirrored": self._pending is not None,
        }
        if error:
            extra["error"] = error  # why the primary gave no answer: pool_timeout, connect, ...
        ACCESS_LOG.info("access", extra=extra)

    def on_response_flush(self) -> None:
        out = self._out
        if out and not self._closed:
            assert self.transport is not None
            self.transport.writelines(out)
            self._out = []
            self._head_sent = True

    def on_response_error(self, kind: str) -> None:
        self._call = None
        self._out = []  # an answer cut short before it left: the client gets 502/504 instead
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
            assert self.transport is not None
            self.transport.abort()
            return
        if kind in TIMEOUT_KINDS:
            self._answer_locally(
                504, "primary_timeout", "primary did not answer in time", error=kind
            )
        elif kind == ERROR_INTERNAL:
            self._answer_locally(500, "internal_error", "internal error", error=kind)
        elif kind == ERROR_PROTOCOL:
            self._answer_locally(
                502, "primary_unreachable", "primary sent invalid HTTP", error=kind
            )
        elif kind == ERROR_TOO_LARGE:
            self._answer_locally(
                502, "primary_unreachable", "primary sent too big a header", error=kind
            )
        else:
            self._answer_locally(502, "primary_unreachable", "primary is unreachable", error=kind)

    # -- endings ---------------------------------------------------------------------------
    def _answer_locally(self, status: int, reason: str, message: str, error: str = "") -> None:
        """A short error answer of our own, for a request that was read in full."""
        ingress = self._ingress
        ingress.metrics.ingress_rejected(reason)
        ingress.metrics.ingress_request(status)
        req = self._queue[0] if self._queue else None
        close = req is None or not req.keep_alive or ingress.draining
        assert self.transport is not None
        self.transport.write(error_response(status, message, close=close))
        self._close_after = close
        if ingress.access_log and req is not None:
            if not error:  # refused before any primary call: no time was spent on one
                self._primary_started = time.perf_counter()
            self._status = status
            self._current = req
            self._log_access(error)
        self._request_done()

    def _request_done(self) -> None:
        self._current = None
        queue = self._queue
        now = self._ingress.now
        unblocked = self._stream.answered(now)  # the answered request leaves the queue
        if self._close_after or self._ingress.draining:
            if queue or self._reading_paused or self._stream.upgrading:
                self.close_lingering()  # requests (or a tunnel's bytes) left unread
            else:
                self._closed = True
                assert self.transport is not None
                self.transport.close()
            return
        if queue:
            self._serve()
            return
        if self._final is not None:
            assert self.transport is not None
            self.transport.write(self._final)
            self.close_lingering()
            return
        self.idle_since = now
        for event in unblocked:  # a 100 Continue owed to the request read meanwhile
            if type(event) is SendData:
                assert self.transport is not None
                self.transport.write(event.data)
        self._resume_reading()


class _ClientSide(asyncio.Protocol):
    """The client's socket once its WebSocket is open: bytes go to the primary unchanged."""

    __slots__ = ("_conn", "_upstream")

    def __init__(self, conn: ClientConnection, upstream: UpstreamTunnel) -> None:
        self._conn = conn
        self._upstream = upstream

    def data_received(self, data: bytes) -> None:
        transport = self._upstream.transport
        if transport is not None:
            transport.write(data)

    def eof_received(self) -> bool | None:
        # WebSocket has its own closing handshake: a FIN means that side is done, and
        # keeping half-open tunnels would leave both sockets waiting for each other.
        self._upstream.close()
        return None

    def pause_writing(self) -> None:
        transport = self._upstream.transport
        if transport is not None:
            transport.pause_reading()

    def resume_writing(self) -> None:
        transport = self._upstream.transport
        if transport is not None:
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._upstream.close()
        self._conn.connection_lost(exc)


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

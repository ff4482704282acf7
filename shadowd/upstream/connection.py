"""One pooled HTTP/1.1 client connection to a target, driven by callbacks (no task per request).

The hot path of the proxy: aiohttp's ClientSession costs more per request than the whole
proxy budget, so answers are parsed here with llhttp (httptools) and handed to a
``ResponseSink`` chunk by chunk as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from shadowd.exchange import ERROR_INTERNAL, ERROR_PROTOCOL, ERROR_RESET, ERROR_TIMEOUT, Headers

if TYPE_CHECKING:
    from shadowd.upstream.pool import UpstreamPool

LOG = logging.getLogger("shadowd.upstream")


class ResponseSink(Protocol):
    """Receives one answer. Exactly one of ``on_response_complete``/``on_response_error``
    is called, after zero or one ``on_response_head`` and any number of body chunks."""

    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None: ...

    def on_response_body(self, chunk: bytes) -> None: ...

    def on_response_flush(self) -> None:
        """The bytes read so far are parsed: a sink that batches its writes may send now."""

    def on_response_complete(self) -> None: ...

    def on_response_error(self, kind: str) -> None: ...


class Call:
    """One request on its way to a target: what to send, who hears the answer, its deadline."""

    __slots__ = (
        "connecting",
        "connection",
        "done",
        "head_only",
        "paused",
        "payload",
        "retryable",
        "sink",
        "started",
        "timer",
    )

    def __init__(self, payload: bytes, sink: ResponseSink, head_only: bool, retryable: bool):
        self.payload = payload
        self.sink = sink
        self.head_only = head_only  # HEAD: the answer has headers only, whatever it says
        self.retryable = retryable  # idempotent: may be re-sent once on a fresh connection
        self.connection: UpstreamConnection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = 0.0
        self.done = False
        self.paused = False  # the sink cannot take more: do not read the answer for now
        self.connecting = False  # a connection is being opened for it (for the timeout kind)

    def pause(self) -> None:
        self.paused = True
        if self.connection is not None:
            self.connection.pause_reading()

    def resume(self) -> None:
        self.paused = False
        if self.connection is not None:
            self.connection.resume_reading()

    def cancel(self) -> None:
        """Nobody wants the answer any more: stop, and spend the connection if it is mid-answer."""
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connection is not None:
            self.connection.abort()

    def finish_error(self, kind: str) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None  # the handle refers back to this call: no cycle for the GC
        self.sink.on_response_error(kind)


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_body_until_close",
        "_call",
        "_got_bytes",
        "_headers",
        "_informational",
        "_parser",
        "_paused",
        "_pool",
        "_reason",
        "_status_code",
        "_status_keep_alive",
        "closed",
        "served",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._call: Call | None = None
        self._headers: Headers = []
        self._reason = b""
        self._status_code = 0
        self._informational = False
        self._status_keep_alive = False
        self._body_until_close = False
        self._got_bytes = False
        self._paused = False
        self.closed = False
        self.served = 0  # answers completed on this connection (0: never reused)

    # -- driven by the pool ---------------------------------------------------------------
    def start(self, call: Call) -> None:
        self._call = call
        call.connection = self
        call.connecting = False
        self._headers = []
        self._got_bytes = False
        self._body_until_close = False
        assert self.transport is not None
        # The sink may have filled up before this connection was attached (pipelining).
        if call.paused:
            self.pause_reading()
        elif self._paused:
            self.resume_reading()
        self.transport.write(call.payload)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._paused:
            self._paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection always gets a full Transport; asyncio types it as the base.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        call = self._call
        if call is None:
            # Bytes nobody asked for on an idle connection: the stream is out of sync.
            self.abort()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # What a sink raised, wrapped by llhttp: our bug, not the target's bad bytes.
            cause = exc.__context__ or exc
            LOG.error(
                "internal error while handling an answer",
                exc_info=(type(cause), cause, cause.__traceback__),
                extra={"target": self._pool.target.name},
            )
            self._fail(ERROR_INTERNAL)
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # An upgrade nobody asked for (pooled requests never carry Upgrade) is as wrong
            # as bad bytes; uncaught, it would escape data_received.
            self._fail(ERROR_PROTOCOL)
            return
        if self._call is call and not call.done:
            if call.head_only and self._status_code:
                # llhttp cannot be told the request was HEAD: it waits for the announced
                # body. The answer is complete at its head; a fresh parser reads the next.
                self._parser = httptools.HttpResponseParser(self)
                self._complete(keep_alive=self._status_keep_alive)
            else:
                call.sink.on_response_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        call = self._call
        self._pool.connection_closed(self)
        if call is None or call.done:
            return
        if self._body_until_close and self._status_code:
            self._complete(keep_alive=False)  # a close-delimited body ends with the close
            return
        self._call = None
        if call.retryable and not self._got_bytes and self.served > 0:
            # A kept-alive connection the target closed as we reused it: nothing was answered,
            # so an idempotent request may go again on a fresh connection.
            call.retryable = False
            call.connection = None
            self._pool.retry(call)
            return
        call.finish_error(ERROR_RESET)

    # -- httptools callbacks --------------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self._reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 100 Continue, 103 Early Hints: not the answer
            self._headers = []
            return
        call = self._call
        if call is None:
            return
        self._status_code = status
        self._status_keep_alive = self._parser.should_keep_alive()
        headers = self._headers
        if not call.head_only and status not in (204, 304):
            self._body_until_close = not _has_framing(headers)
        call.sink.on_response_head(status, self._reason, headers)

    def on_body(self, chunk: bytes) -> None:
        call = self._call
        if call is not None and not call.done:
            call.sink.on_response_body(chunk)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._call is not None and not self._call.done:
            self._complete(keep_alive=self._parser.should_keep_alive())

    # -- internals ------------------------------------------------------------------------
    def _complete(self, keep_alive: bool) -> None:
        call = self._call
        assert call is not None
        self._call = None
        self._status_code = 0
        call.done = True
        call.connection = None
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        self.served += 1
        # Back to the pool before the sink hears of it, so the sink may send again at once.
        if keep_alive and not self.closed:
            self._pool.release(self)
        else:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        call.sink.on_response_complete()

    def _fail(self, kind: str) -> None:
        call = self._call
        self._call = None
        self.abort()
        if call is not None:
            call.finish_error(kind)

    def on_timeout(self) -> None:
        self._fail(ERROR_TIMEOUT)


def _has_framing(headers: Headers) -> bool:
    for name, _ in headers:
        lname = name.lower()
        if lname == b"content-length" or lname == b"transfer-encoding":
            return True
    return False

"""One pooled HTTP/1.1 client connection to a target, driven by callbacks (no task per request).

The hot path of the proxy: aiohttp's ClientSession costs more per request than the whole
proxy budget, so answers are read here by the sans-io ``ResponseStream`` (llhttp inside) and
handed to a ``ResponseSink`` chunk by chunk as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol, cast

from shadowd.exchange import ERROR_INTERNAL, ERROR_RESET, ERROR_TIMEOUT, Headers
from shadowd.http1.response import (
    ResponseComplete,
    ResponseFailed,
    ResponseHead,
    ResponseStream,
)

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
    )

    def __init__(self, payload: bytes, sink: ResponseSink, head_only: bool, retryable: bool):
        self.payload = payload
        self.sink = sink
        self.head_only = head_only  # HEAD: the answer has headers only, whatever it says
        self.retryable = retryable  # idempotent: may be re-sent once on a fresh connection
        self.connection: UpstreamConnection | None = None
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
        if self.connection is not None:
            self.connection.abort()

    def finish_error(self, kind: str) -> None:
        if self.done:
            return
        self.done = True
        self.sink.on_response_error(kind)


class UpstreamConnection(asyncio.Protocol):
    """Drives a ``ResponseStream`` (shadowd.http1.response) for one pooled connection: writes
    the call's request, feeds the stream what arrives, hands its events to the call's sink."""

    __slots__ = ("_call", "_paused", "_pool", "_stream", "closed", "served", "transport")

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._stream = ResponseStream()
        self._call: Call | None = None
        self._paused = False
        self.closed = False
        self.served = 0  # answers completed on this connection (0: never reused)

    # -- driven by the pool ---------------------------------------------------------------
    def start(self, call: Call) -> None:
        self._call = call
        call.connection = self
        call.connecting = False
        self._stream.expect(head_only=call.head_only)
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
            self.abort()  # bytes nobody asked for on an idle connection: out of sync
            return
        events = self._stream.receive(data)
        try:
            sink = call.sink
            for event in events:
                if call.done:
                    return  # cancelled by the sink (its client left): nothing more for it
                if type(event) is bytes:  # a piece of the body
                    sink.on_response_body(event)
                elif type(event) is ResponseHead:
                    sink.on_response_head(event.status, event.reason, event.headers)
                elif type(event) is ResponseComplete:
                    self._complete(event.keep_alive)
                    return
                elif type(event) is ResponseFailed:
                    self._fail(event.kind)
                    return
            if not call.done:
                sink.on_response_flush()
        except Exception as exc:  # the sink's, not the target's bad bytes: our bug
            LOG.error(
                "internal error while handling an answer",
                exc_info=(type(exc), exc, exc.__traceback__),
                extra={"target": self._pool.target.name},
            )
            self._fail(ERROR_INTERNAL)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        call = self._call
        self._pool.connection_closed(self)
        stream = self._stream
        got_bytes = stream.got_bytes
        # FIN (exc is None) completes a close-delimited body; a reset cuts it short.
        events = stream.closed(clean=exc is None)
        if call is None or call.done:
            return
        self._call = None
        for event in events:
            if type(event) is ResponseComplete:
                self._call = call
                self._complete(keep_alive=False)
                return
        if call.retryable and not got_bytes and self.served > 0:
            # A kept-alive connection the target closed as we reused it: nothing was answered,
            # so an idempotent request may go again on a fresh connection.
            call.retryable = False
            call.connection = None
            self._pool.retry(call)
            return
        call.finish_error(ERROR_RESET)

    # -- internals ------------------------------------------------------------------------
    def _complete(self, keep_alive: bool) -> None:
        call = self._call
        assert call is not None
        self._call = None
        call.done = True
        call.connection = None
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

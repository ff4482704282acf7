"""The bounded hand-off from an ingress worker to an analysis worker, over a Unix socket.

The ingress side (``RecordSender``) writes each finished exchange as one capture-format frame
and never waits: when the analysis worker is gone, or the bytes already waiting for it exceed
``[analysis] queue_bytes``, the record is shed and counted (``shadowd_mirror_dropped_total``
with reason ``analysis_down`` or ``diff_backlog``). The analysis side (``RecordReceiver``)
reads only while its own backlog has room: once full it stops reading, the kernel's socket
buffer fills, the sender's buffer grows past its bound, and the sender sheds. Back-pressure
thus ends at the sender's counter, never at a production client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import cast

import msgpack

from shadowd.capture.format import frame, record_of
from shadowd.exchange import Exchange
from shadowd.stream.frames import FrameDecoder, FrameError

log = logging.getLogger("shadowd.stream")

MAX_RECORD_BYTES = 1 << 28  # 256 MiB: well above 3 answers at any [diff] max_body_bytes


def analysis_socket(runtime_dir: str, index: int) -> str:
    """Where analysis worker ``index`` listens for the ingress workers' records."""
    return os.path.join(runtime_dir, f"analysis-{index}.sock")


def record_payload(exchange: Exchange) -> bytes:
    """One exchange's record as msgpack: a capture frame's payload (before redaction: the
    hand-off never touches a disk)."""
    payload: bytes = msgpack.packb(record_of(exchange), use_bin_type=True)  # untyped library
    return payload


def encode_exchange(exchange: Exchange) -> bytes:
    """The frame of one exchange: what a capture file holds after its header."""
    return frame(record_payload(exchange))


class FrameBatch:
    """Frames finished in one turn of the loop, written together at its end: a write per
    frame costs a syscall, and a wake-up of the reader, each."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._frames: list[bytes] = []
        self.bytes = 0  # waiting here, not yet written
        self._loop = asyncio.get_running_loop()

    def add(self, framed: bytes) -> None:
        if not self._frames:
            self._loop.call_soon(self.flush)
        self._frames.append(framed)
        self.bytes += len(framed)

    def flush(self) -> None:
        frames = self._frames
        if frames:
            self._write(b"".join(frames) if len(frames) > 1 else frames[0])
            self.drop()

    def drop(self) -> int:
        """Forget the frames not written (their reader is gone); how many there were."""
        dropped = len(self._frames)
        self._frames = []
        self.bytes = 0
        return dropped


class _SenderProtocol(asyncio.Protocol):
    def __init__(self, sender: RecordSender) -> None:
        self._sender = sender

    def connection_lost(self, exc: Exception | None) -> None:
        self._sender._lost()

    def data_received(self, data: bytes) -> None:  # the receiver never writes
        pass


class RecordSender:
    """One ingress worker's end of the hand-off. ``offer`` runs on the data plane's loop: it
    costs one msgpack encode and one buffered write, or a counter increment."""

    def __init__(
        self,
        path: str,
        limit_bytes: int,
        on_shed: Callable[[str], None],
    ) -> None:
        self._path = path
        self._limit = limit_bytes
        self._on_shed = on_shed
        self._transport: asyncio.WriteTransport | None = None
        self._closing = False
        self._connecting: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        # one write per loop turn: a send syscall per exchange was one of the ~9 a
        # mirrored request cost the data plane
        self._batch = FrameBatch(self._write)
        # Records written on the current connection (for settling and tests). A new
        # connection means a new analysis worker, whose own count starts at 0 too.
        self.handed_off = 0

    def start(self) -> None:
        self._connecting = asyncio.get_running_loop().create_task(
            self._connect_loop(), name="handoff-connect"
        )

    @property
    def connected(self) -> bool:
        return self._transport is not None

    @property
    def buffered_bytes(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def set_limit(self, limit_bytes: int) -> None:
        self._limit = limit_bytes

    def offer(self, exchange: Exchange) -> bool:
        transport = self._transport
        if transport is None:
            self._on_shed("analysis_down")
            return False
        if transport.get_write_buffer_size() + self._batch.bytes > self._limit:
            self._on_shed("diff_backlog")
            return False
        self._batch.add(encode_exchange(exchange))
        self.handed_off += 1
        return True

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    async def close(self, timeout: float = 5.0) -> bool:
        """Stop sending: what is buffered is still written (asyncio flushes a closing
        transport) for up to ``timeout`` seconds, then dropped. True when all was written."""
        self._closing = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        self._batch.flush()
        transport = self._transport
        if transport is None:
            return True
        self._closed.clear()
        transport.close()
        try:
            async with asyncio.timeout(timeout):
                await self._closed.wait()
        except TimeoutError:
            transport.abort()
            return False
        return True

    def _lost(self) -> None:
        self._transport = None
        self._closed.set()
        for _ in range(self._batch.drop()):  # never written: the analysis worker is gone
            self._on_shed("analysis_down")
        if not self._closing:
            log.warning("analysis worker disconnected; records are shed until it is back")
            self._connecting = asyncio.get_running_loop().create_task(
                self._connect_loop(), name="handoff-reconnect"
            )

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.02
        while not self._closing:
            try:
                transport, _ = await loop.create_unix_connection(
                    lambda: _SenderProtocol(self), self._path
                )
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            # The transport's own buffer is the bounded queue: let it grow to our limit
            # before asyncio reports pressure (we never pause on it; we shed).
            transport.set_write_buffer_limits(high=max(self._limit, 64 * 1024))
            self._transport = transport
            self.handed_off = 0
            return


class _ReceiverProtocol(asyncio.Protocol):
    def __init__(self, receiver: RecordReceiver) -> None:
        self._receiver = receiver
        self._decoder = FrameDecoder(MAX_RECORD_BYTES)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection always gets a full Transport; asyncio types it as the base.
        self.transport = tx = cast(asyncio.Transport, transport)
        self._receiver._connections.add(self)
        if self._receiver.paused:
            tx.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._receiver._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self._decoder.feed(data)
        except FrameError as exc:
            log.error("hand-off stream damaged, connection closed: %s", exc)
            if self.transport is not None:
                self.transport.close()
            return
        consume = self._receiver.consume
        for payload in payloads:
            consume(payload)


class RecordReceiver:
    """The analysis worker's end: a Unix socket every ingress worker connects to. ``consume``
    gets each record's payload (msgpack bytes); ``pause()``/``resume()`` stop and restart
    reading from every connection (called by the consumer as its backlog fills and empties)."""

    def __init__(self, path: str, consume: Callable[[bytes], None]) -> None:
        self.path = path
        self.consume = consume
        self.paused = False
        self._connections: set[_ReceiverProtocol] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _ReceiverProtocol(self), self.path)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            for conn in self._connections:
                if conn.transport is not None:
                    conn.transport.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            for conn in self._connections:
                if conn.transport is not None:
                    conn.transport.resume_reading()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.close()

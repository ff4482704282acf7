"""A WebSocket upgrade relayed to the primary: one connection of its own, never pooled.

The upgrade request goes out with its ``Upgrade``/``Connection`` headers. The primary's answer
head is relayed to the client byte for byte; on ``101 Switching Protocols`` both sockets are
then joined and bytes flow both ways unchanged, each side's flow control pausing the other.
Any other answer is relayed as it is and both connections close after it.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from shadowd.exchange import (
    ERROR_CONNECT,
    ERROR_CONNECT_TIMEOUT,
    ERROR_PROTOCOL,
    ERROR_RESET,
    ERROR_TIMEOUT,
    ERROR_TOO_LARGE,
)
from shadowd.http1.response import MAX_HEAD_BYTES

if TYPE_CHECKING:
    from shadowd.upstream.pool import UpstreamPool


class TunnelClient(Protocol):
    """The client side of a tunnel (the ingress connection that asked for the upgrade)."""

    def tunnel_connected(self, upstream: UpstreamTunnel) -> None:
        """The connection to the primary is open (the client may have left meanwhile)."""

    def tunnel_answer(self, data: bytes, status: int) -> None:
        """Raw bytes of the primary's answer head (and, for a non-101 answer, its body)."""

    def tunnel_open(self, upstream: UpstreamTunnel, rest: bytes) -> None:
        """101 was relayed: join the sockets. ``rest``: bytes the primary sent after it."""

    def tunnel_failed(self, kind: str) -> None:
        """No answer head came (error kind): answer the client ourselves."""

    def tunnel_closed(self) -> None:
        """The primary's side ended (a non-101 answer is complete, or the tunnel closed)."""


class UpstreamTunnel(asyncio.Protocol):
    def __init__(self, payload: bytes, client: TunnelClient, timeout: float) -> None:
        self._payload = payload
        self._client = client
        self._timeout = timeout
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._timer: asyncio.TimerHandle | None = None
        self._status = 0
        self._held = b""  # answer bytes read before its head was whole
        self._complete = False  # a non-101 answer was read in full
        self._open = False  # 101 relayed: raw bytes from now on
        self._done = False  # the client has been told how it ended
        self.transport: asyncio.Transport | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection always gets a full Transport; asyncio types it as the base.
        self.transport = tx = cast(asyncio.Transport, transport)
        self._client.tunnel_connected(self)
        if self._done:
            return
        tx.write(self._payload)
        self._payload = b""
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._on_timeout)

    def data_received(self, data: bytes) -> None:
        if self._open:
            self._client_transport_write(data)
            return
        parser = self._parser
        if parser is None or self._done:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0]
            self._cancel_timer()
            self._parser = None
            head = self._held + data[:offset] if self._held else data[:offset]
            self._held = b""
            self._client.tunnel_answer(head, self._status)
            self._open = True
            self._client.tunnel_open(self, data[offset:])
            return
        except httptools.HttpParserError:
            self._end(ERROR_PROTOCOL)
            return
        if not self._status:
            self._held += data  # the head is not whole yet: nothing goes out before it is
            if len(self._held) > MAX_HEAD_BYTES:
                self._end(ERROR_TOO_LARGE)
            return
        if self._held:
            data = self._held + data
            self._held = b""
        self._client.tunnel_answer(data, self._status)
        if self._complete:
            # Not upgraded: that answer is the last one on both connections.
            self._done = True
            self._cancel_timer()
            if self.transport is not None:
                self.transport.close()
            self._client.tunnel_closed()

    def pause_writing(self) -> None:
        client = self.client_transport
        if client is not None:
            client.pause_reading()

    def resume_writing(self) -> None:
        client = self.client_transport
        if client is not None:
            client.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # closes; connection_lost then ends the client's side (after its bytes)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._done:
            return
        if self._open or self._status:
            self._done = True
            self._client.tunnel_closed()
        else:
            self._end(ERROR_RESET)

    # -- httptools callbacks --------------------------------------------------------------
    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._status = self._parser.get_status_code()

    def on_message_complete(self) -> None:
        parser = self._parser
        if parser is not None and not parser.should_upgrade():
            self._complete = True

    # -- for the client side --------------------------------------------------------------
    client_transport: asyncio.Transport | None = None

    def close(self) -> None:
        self._done = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    # -- internals ------------------------------------------------------------------------
    def _client_transport_write(self, data: bytes) -> None:
        client = self.client_transport
        if client is not None:
            client.write(data)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        if not self._open:
            self._end(ERROR_TIMEOUT)

    def _end(self, kind: str) -> None:
        if self._done:
            return
        self._done = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()
        if self._status:
            self._client.tunnel_closed()  # part of the answer went out: only closing says so
        else:
            self._client.tunnel_failed(kind)


async def open_tunnel(pool: UpstreamPool, payload: bytes, client: TunnelClient) -> None:
    """Connect to the pool's target on a connection of its own and send ``payload``."""
    target = pool.target
    loop = asyncio.get_running_loop()
    context = pool.ssl_context
    try:
        async with asyncio.timeout(target.connect_timeout):
            await loop.create_connection(
                lambda: UpstreamTunnel(payload, client, target.timeout),
                target.host,
                target.port,
                ssl=context,
                server_hostname=target.host if context else None,
            )
    except TimeoutError:
        client.tunnel_failed(ERROR_CONNECT_TIMEOUT)
    except (OSError, ssl.SSLError):
        client.tunnel_failed(ERROR_CONNECT)

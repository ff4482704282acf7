"""The ingress listener: accepts clients, bounds them, closes idle ones, drains on stop."""

from __future__ import annotations

import asyncio
import socket

from shadowd.config import Config
from shadowd.endpoints import EndpointClassifier
from shadowd.ingress.descriptors import client_budget, open_files_limit
from shadowd.ingress.http import RequestReader
from shadowd.ingress.proxy import ClientConnection
from shadowd.ingress.responses import error_response
from shadowd.ingress.tap import TapConnection
from shadowd.metrics import Metrics
from shadowd.mirror import Mirror
from shadowd.redact import Redaction
from shadowd.upstream.pool import UpstreamPool
from shadowd.upstream.request import RequestTemplate


class Ingress:
    """What every client connection shares: config, the primary's pool, the mirror.

    In proxy mode each connection relays the primary's answers; in tap mode it answers
    copies at once and hands them to the mirror, which sends them to every target itself.
    """

    def __init__(
        self,
        config: Config,
        primary_pool: UpstreamPool,
        mirror: Mirror,
        endpoints: EndpointClassifier,
        metrics: Metrics,
    ) -> None:
        self.primary_pool = primary_pool
        self.mirror = mirror
        self.endpoints = endpoints
        self.metrics = metrics
        self.configure(config)
        self.now = asyncio.get_running_loop().time()  # refreshed by the tick, read per request
        self.draining = False
        self._connections: set[RequestReader] = set()
        self.tunnels = 0  # WebSocket tunnels to the primary: a descriptor each, outside the pools
        self._all_closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tick: asyncio.TimerHandle | None = None

    def configure(self, config: Config) -> None:
        """Take ``config``'s limits and primary rewrites (also on reload; the listen address
        and the mode need a restart)."""
        self.config = config
        # Past this, a new client gets 503: this worker's share of max_connections, or what
        # its file descriptors allow beside the targets' pools (shadowd.ingress.descriptors).
        self.max_clients = client_budget(config, open_files_limit()).clients
        self.primary_template = RequestTemplate(config.primary)
        self.access_log = config.logging.access_log
        # The access log hides what every other surface hides: built-in and configured names.
        self.redaction = Redaction.from_config(config)

    def _connection_factory(self) -> RequestReader:
        if self.config.ingress.mode == "tap":
            return TapConnection(self)
        return ClientConnection(self)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(
        self,
        sock: socket.socket | None = None,
        *,
        port: int | None = None,
        reuse_port: bool = False,
    ) -> None:
        """Listen on ``sock`` (inherited or shared), or bind ``[ingress] listen`` (``port``
        overrides its port). ``reuse_port``: one of several processes bound to the same
        address with SO_REUSEPORT, among which the kernel spreads new connections."""
        loop = asyncio.get_running_loop()
        listen = self.config.ingress.listen
        if sock is not None:
            self._server = await loop.create_server(self._connection_factory, sock=sock)
        else:
            self._server = await loop.create_server(
                self._connection_factory,
                listen.host,
                listen.port if port is None else port,
                backlog=4096,
                reuse_address=True,
                reuse_port=reuse_port or None,
            )
        self._on_tick()

    def connection_opened(self, conn: RequestReader) -> None:
        self.metrics.connection_opened()
        self._connections.add(conn)
        if len(self._connections) + self.tunnels > self.max_clients or self.draining:
            self.metrics.ingress_rejected("max_connections")
            if conn.transport is not None:
                conn.transport.write(error_response(503, "too many client connections", close=True))
                conn.transport.close()

    def take_tunnel(self) -> bool:
        """Whether a WebSocket may open a tunnel to the primary: its second descriptor is
        counted as one more client, so tunnels cannot take what the pools need."""
        if len(self._connections) + self.tunnels >= self.max_clients:
            return False
        self.tunnels += 1
        return True

    def connection_closed(self, conn: RequestReader) -> None:
        self.metrics.connection_closed()
        self._connections.discard(conn)
        if not self._connections:
            self._all_closed.set()

    def _on_tick(self) -> None:
        loop = asyncio.get_running_loop()
        self.now = now = loop.time()
        idle_timeout = self.config.ingress.idle_timeout
        for conn in list(self._connections):
            conn.close_if_idle(now, idle_timeout)
        self._tick = loop.call_later(1.0, self._on_tick)

    async def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float) -> bool:
        """Let in-flight answers finish (closing each connection after it), close idle ones.
        Returns whether every connection closed before ``timeout``; the rest are aborted."""
        self.draining = True
        for conn in list(self._connections):
            conn.close_if_idle(float("inf"), 0.0)
        if self._connections:
            self._all_closed.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._all_closed.wait()
            except TimeoutError:
                pass
        clean = not self._connections
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._tick is not None:
            self._tick.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        return clean

"""The data plane of one process: the targets' pools, the mirror and the ingress listener.

It relays the primary's answers, copies sampled requests, and hands every finished exchange to
``deliver`` (the hand-off to the analysis plane). It never parses a body for the diff, never
builds a report and never runs statistics: its loop's cost per request is a proxy's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from shadowd.config import Config
from shadowd.endpoints import EndpointClassifier
from shadowd.exchange import Exchange
from shadowd.ingress.server import Ingress
from shadowd.metrics import Metrics
from shadowd.mirror import Mirror
from shadowd.tasks import TaskGroup
from shadowd.upstream.pool import UpstreamPool

log = logging.getLogger("shadowd")


class DataPlane:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        tasks: TaskGroup,
        deliver: Callable[[Exchange], object],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._tasks = tasks
        self._deliver = deliver
        targets = [config.primary, *config.mirror_targets]
        self.pools = {t.name: UpstreamPool(t, tasks) for t in targets}
        self.endpoints = EndpointClassifier(config.endpoints)
        self.mirror = Mirror(config, self.pools, metrics, deliver)
        self.ingress = Ingress(
            config, self.pools[config.primary.name], self.mirror, self.endpoints, metrics
        )

    async def start(
        self,
        sock: socket.socket | None = None,
        *,
        port: int | None = None,
        reuse_port: bool = False,
    ) -> None:
        await self.ingress.start(sock, port=port, reuse_port=reuse_port)

    @property
    def address(self) -> tuple[str, int]:
        return self.ingress.address

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.mirror.enabled,
            "queue_depth": self.mirror.queue_depth,
            "in_flight": self.mirror.in_flight,
            "connections": self.ingress.connections,
        }

    def set_mirroring(self, enabled: bool) -> None:
        self.mirror.set_enabled(enabled)

    async def drain(self, grace: float) -> bool:
        """Stop accepting, let in-flight answers finish within ``grace`` seconds, then let the
        copies already sent come back (bounded). Returns whether every client finished."""
        await self.ingress.stop_listening()
        drained = await self.ingress.drain(grace)
        if not drained:
            log.warning("drain deadline passed; remaining client connections were closed")
        self.mirror.set_enabled(False)
        try:
            async with asyncio.timeout(min(grace, 5.0)):
                await self.mirror.wait_idle()
        except TimeoutError:
            log.warning(
                "copies still in flight at shutdown", extra={"in_flight": self.mirror.in_flight}
            )
        return drained

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()

    def reconfigure(self, new: Config) -> None:
        """Apply a validated config without dropping connections. The caller has kept the
        settings that need a restart (listen addresses, mode, capture) as they were."""
        old = self.config
        pools = {}
        for target in (new.primary, *new.mirror_targets):
            pool = self.pools.get(target.name)
            if pool is None or pool.target != target:
                pool = UpstreamPool(target, self._tasks)
            pools[target.name] = pool
        for name, pool in self.pools.items():
            if pools.get(name) is not pool:
                pool.close()  # idle connections now; busy ones after their answer
        self.pools = pools
        if new.endpoints != old.endpoints:
            self.endpoints = EndpointClassifier(new.endpoints)
            self.ingress.endpoints = self.endpoints
        self.config = new
        self.mirror.reconfigure(new, pools)
        self.ingress.primary_pool = pools[new.primary.name]
        self.ingress.configure(new)


def restart_only_changes(old: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the settings that need a restart put back as in ``old``, and their keys."""
    import dataclasses

    changed = [
        key
        for key, before, after in (
            ("ingress.listen", old.ingress.listen, new.ingress.listen),
            ("ingress.mode", old.ingress.mode, new.ingress.mode),
            ("ingress.workers", old.ingress.workers, new.ingress.workers),
            ("analysis.workers", old.analysis.workers, new.analysis.workers),
            ("admin.listen", old.admin.listen, new.admin.listen),
            ("admin.token_file", old.admin.token_file, new.admin.token_file),
            ("capture", old.capture, new.capture),
            ("stream", old.stream, new.stream),  # its connections are made at start
        )
        if before != after
    ]
    if changed:
        new = dataclasses.replace(
            new,
            ingress=dataclasses.replace(
                new.ingress,
                listen=old.ingress.listen,
                mode=old.ingress.mode,
                workers=old.ingress.workers,
            ),
            analysis=dataclasses.replace(new.analysis, workers=old.analysis.workers),
            admin=old.admin,
            capture=old.capture,
            stream=old.stream,
        )
    return new, changed

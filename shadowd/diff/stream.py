"""The streaming diff stage: completed exchanges in, aggregated differences out.

Diffing is CPU work on the proxy's event loop, so it never runs inside a request's callbacks:
exchanges wait in a bounded backlog and one task works through it in small batches, yielding
between them so the data plane's reads and writes keep their latency. A full backlog drops
(and counts) exchanges instead of slowing anything down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from shadowd.aggregate import Aggregator
from shadowd.config import DiffConfig
from shadowd.diff.engine import diff_exchange
from shadowd.exchange import Exchange
from shadowd.metrics import Metrics
from shadowd.verdict.evidence import VerdictEvidence

log = logging.getLogger("shadowd.diff")

_BATCH = 32


class DiffStage:
    def __init__(
        self,
        config: DiffConfig,
        aggregator: Aggregator,
        evidence: VerdictEvidence,
        metrics: Metrics,
        backlog: int = 10_000,
    ) -> None:
        self.config = config
        self._aggregator = aggregator
        self._evidence = evidence
        self._metrics = metrics
        self._backlog: deque[Exchange] = deque()
        self._limit = backlog
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_failure_log = 0.0
        self.diffed = 0

    def submit(self, exchange: Exchange) -> None:
        if len(self._backlog) >= self._limit:
            self._metrics.mirror_dropped("diff_backlog")
            return
        self._backlog.append(exchange)
        if not self._wakeup.is_set():
            self._wakeup.set()
            self._idle.clear()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    async def run(self) -> None:
        backlog = self._backlog
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while backlog:
                for _ in range(min(_BATCH, len(backlog))):
                    self._process(backlog.popleft())
                await asyncio.sleep(0)
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Until the backlog is worked off (for shutdown and tests); False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while self._backlog or not self._idle.is_set():
                    await self._idle.wait()
                    if self._backlog:
                        await asyncio.sleep(0)
        except TimeoutError:
            return False
        return True

    def _process(self, exchange: Exchange) -> None:
        try:
            diff = diff_exchange(exchange, self.config)
            self._aggregator.add(exchange, diff)
            self._evidence.record(exchange, diff)
            self.diffed += 1
        except Exception:  # a bug in diffing must never reach the data plane
            self._metrics.diff_failed()
            now = time.monotonic()
            if now - self._last_failure_log > 10.0:
                self._last_failure_log = now
                log.exception("diff failed for exchange %d (%s)", exchange.id, exchange.endpoint)

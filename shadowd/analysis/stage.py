"""The diff stage: exchange records in, aggregated differences out.

It runs wherever the analysis plane runs (an analysis worker process, or one embedded process
in tests), never inside a production request's callbacks: records wait in a bounded backlog
and one task works through them in small batches, yielding between them so the process's
other I/O (the hand-off, snapshots) keeps flowing. Each record is decoded here, off the data
plane: the ingress never parses a body for the diff.

When the backlog is full, ``on_full`` is told (the hand-off stops reading, so the sender
sheds); a record that still arrives is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

from shadowd.aggregate import Aggregator
from shadowd.capture.format import exchange_of
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
        backlog_bytes: int = 128 * 1024 * 1024,
    ) -> None:
        self.config = config
        self.aggregator = aggregator
        self.evidence = evidence
        self._metrics = metrics
        self._backlog: deque[bytes] = deque()
        self._limit = backlog
        # Records of 1 MiB answers are 2-3 MiB: counted alone, an analysis worker's 2,000 of
        # them could hold 4-6 GB.
        self._byte_limit = backlog_bytes
        self._bytes = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_failure_log = 0.0
        self.received = 0  # records submitted (kept or dropped)
        self.diffed = 0
        self.undecodable = 0
        # Called with every decoded exchange before it is diffed (capture, tests): each must
        # be quick and must not raise.
        self.listeners: list[Callable[[Exchange], object]] = []
        # Flow control towards the source: told when the backlog is full and when it has
        # room again (at half), so the source stops reading instead of queueing.
        self.on_full: Callable[[], None] | None = None
        self.on_room: Callable[[], None] | None = None
        self._full = False

    def submit(self, record: bytes) -> None:
        """One record's msgpack payload (``shadowd.capture.format``)."""
        self.received += 1
        backlog = self._backlog
        if self._at_limit():
            self._metrics.mirror_dropped("diff_backlog")
            return
        backlog.append(record)
        self._bytes += len(record)
        if not self._full and self._at_limit() and self.on_full is not None:
            self._full = True
            self.on_full()
        if not self._wakeup.is_set():
            self._wakeup.set()
            self._idle.clear()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    @property
    def backlog_bytes(self) -> int:
        return self._bytes

    def _at_limit(self) -> bool:
        return len(self._backlog) >= self._limit or self._bytes >= self._byte_limit

    def drop_backlog(self) -> None:
        """Forget the records not diffed yet (their source will submit them again). Not
        counted as shed."""
        self._backlog.clear()
        self._bytes = 0
        if self._full:
            self._full = False
            if self.on_room is not None:
                self.on_room()

    def swap_statistics(
        self, aggregator: Aggregator, evidence: VerdictEvidence
    ) -> tuple[Aggregator, VerdictEvidence]:
        """Install fresh statistics and return the ones filled so far (a snapshot's delta)."""
        old = self.aggregator, self.evidence
        self.aggregator, self.evidence = aggregator, evidence
        return old

    async def run(self) -> None:
        backlog = self._backlog
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while backlog:
                for _ in range(min(_BATCH, len(backlog))):
                    record = backlog.popleft()
                    self._bytes -= len(record)
                    self._process(record)
                if (
                    self._full
                    and len(backlog) <= self._limit // 2
                    and self._bytes <= self._byte_limit // 2
                ):
                    self._full = False
                    if self.on_room is not None:
                        self.on_room()
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

    def _process(self, record: bytes) -> None:
        # process_record, in one frame with the unpacking (it runs for every record)
        try:
            # Arrays as tuples: cheaper to make than lists, and exchange_of reads a header
            # pair from a tuple faster; the record is read once, never changed.
            exchange = exchange_of(
                msgpack.unpackb(record, raw=False, strict_map_key=False, use_list=False)
            )
        except Exception:  # a record we cannot read: counted, never fatal
            self.undecodable += 1
            self._metrics.diff_failed()
            return
        for listener in self.listeners:
            listener(exchange)
        self.process_exchange(exchange)

    def process_record(self, record: Any) -> None:
        """One record already unpacked from msgpack (a capture map)."""
        try:
            exchange = exchange_of(record)
        except Exception:  # a record we cannot read: counted, never fatal
            self.undecodable += 1
            self._metrics.diff_failed()
            return
        for listener in self.listeners:
            listener(exchange)
        self.process_exchange(exchange)

    def process_exchange(self, exchange: Exchange) -> None:
        """Diff one decoded exchange into the statistics: what every source of the exchange
        stream (live hand-off, capture file, replay) goes through."""
        try:
            diff = diff_exchange(exchange, self.config)
            self.aggregator.add(exchange, diff)
            self.evidence.record(exchange, diff)
            self.diffed += 1
        except Exception:  # a bug in diffing must never stop the stream
            self._failed(exchange)

    def _failed(self, exchange: Exchange) -> None:
        """Count a diff that raised, and log it (at most every 10 s); in its except block."""
        self._metrics.diff_failed()
        now = time.monotonic()
        if now - self._last_failure_log > 10.0:
            self._last_failure_log = now
            log.exception("diff failed for exchange %d (%s)", exchange.id, exchange.endpoint)

"""The analysis worker process: reads exchange records from its ingress workers, diffs them,
and publishes its statistics to the supervisor as delta snapshots.

It is where every per-exchange CPU cost lives (decode, diff, aggregation, capture encoding),
so none of it is on a loop that relays production. If it falls behind, its backlog fills, it
stops reading, and the ingress workers shed (see ``shadowd.stream.handoff``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any

from shadowd.aggregate import Aggregator
from shadowd.analysis.snapshot import DELTA_SAMPLES, snapshot_of
from shadowd.analysis.stage import DiffStage
from shadowd.capture.writer import CaptureWriter
from shadowd.config import Config
from shadowd.control import Channel, ChannelClosed
from shadowd.metrics import Metrics, export_families
from shadowd.stream.handoff import RecordReceiver, analysis_socket
from shadowd.verdict.evidence import VerdictEvidence

log = logging.getLogger("shadowd.analysis")

BACKLOG_RECORDS = 2_000  # records decoded-and-waiting; past it the hand-off stops reading


def capture_path(path: Path, index: int, workers: int) -> Path:
    """With several analysis workers each records its share in a file of its own."""
    if workers == 1:
        return path
    return path.with_name(f"{path.stem}.{index}{path.suffix}")


METRICS_EVERY = 5.0  # seconds between two exports of this worker's Prometheus series


class AnalysisWorker:
    def __init__(self, config: Config, index: int, runtime_dir: str) -> None:
        self.config = config
        self.index = index
        self.runtime_dir = runtime_dir
        self.metrics = Metrics(config)
        self.generation = 0
        self._metrics_sent_at = -METRICS_EVERY
        self.stage = DiffStage(
            config.diff,
            self._fresh_aggregator(),
            self._fresh_evidence(),
            self.metrics,
            backlog=BACKLOG_RECORDS,
        )
        self.receiver = RecordReceiver(analysis_socket(runtime_dir, index), self.stage.submit)
        self.stage.on_full = self.receiver.pause
        self.stage.on_room = self.receiver.resume
        self.capture: CaptureWriter | None = None
        self._draining = False

    def _fresh_aggregator(self) -> Aggregator:
        return Aggregator(self.config, self.metrics)

    def _fresh_evidence(self) -> VerdictEvidence:
        return VerdictEvidence(self.config.endpoints.max)

    async def run(self, channel: Channel) -> None:
        config = self.config
        if config.capture is not None:
            capture_config = config.capture
            path = capture_path(capture_config.path, self.index, config.analysis.worker_count())
            if path != capture_config.path:
                import dataclasses

                capture_config = dataclasses.replace(capture_config, path=path)
            self.capture = CaptureWriter(
                capture_config,
                digest=config.digest,
                on_written=self.metrics.capture_written,
                on_dropped=self.metrics.capture_dropped,
                on_failed=self.metrics.capture_failed,
            )
            await self.capture.start()
            self.stage.listeners.append(self.capture.submit)
        await self.receiver.start()
        stage_task = asyncio.get_running_loop().create_task(self.stage.run(), name="diff-stage")
        channel.send({"t": "ready", "pid": os.getpid()})
        reporter = asyncio.get_running_loop().create_task(
            self._report_every(channel, config.analysis.snapshot_interval), name="reporter"
        )
        try:
            await self._serve(channel)
        finally:
            reporter.cancel()
            await self.receiver.close()
            stage_task.cancel()
            if self.capture is not None:
                await self.capture.close(timeout=10.0)

    async def _serve(self, channel: Channel) -> None:
        while True:
            try:
                message = await channel.receive()
            except ChannelClosed:
                log.warning("supervisor gone: analysis worker %d stops", self.index)
                return
            kind = message["t"]
            if kind == "report_now":
                # "metrics": False from a one-off report or verdict that only needs the
                # statistics: the series are sent on their own cadence
                self.report(channel, seq=message.get("seq"), metrics=message.get("metrics", True))
            elif kind == "reset":
                self.generation = message["gen"]
                self.stage.swap_statistics(self._fresh_aggregator(), self._fresh_evidence())
            elif kind == "config":
                self.reconfigure(pickle.loads(message["config"]))
                self.report(channel, seq=message.get("seq"))
            elif kind == "drain":
                # The ingress workers have stopped: what they handed off is in our socket
                # buffers or backlog. Work it off, publish it, and leave.
                await self._finish(message.get("grace", 5.0))
                self.report(channel, seq=message.get("seq"))
                await channel.drain()
                return

    async def _finish(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Records may still be arriving from closing hand-off connections: wait until the
        # receiver has none left and the backlog is empty.
        while loop.time() < deadline:
            await self.stage.wait_idle(max(0.0, deadline - loop.time()))
            if not self.receiver.connections:
                break
            await asyncio.sleep(0.02)
        await self.stage.wait_idle(max(0.0, deadline - loop.time()))

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.stage.config = config.diff
        self.stage.aggregator.config = config

    def report(self, channel: Channel, seq: int | None = None, *, metrics: bool = True) -> None:
        aggregator, evidence = self.stage.swap_statistics(
            self._fresh_aggregator(), self._fresh_evidence()
        )
        message: dict[str, Any] = {
            "t": "report",
            "gen": self.generation,
            "seq": seq,
            "status": {
                "capture": self.capture.status() if self.capture is not None else None,
                "backlog": self.stage.backlog,
                "diffed": self.stage.diffed,
                "received": self.stage.received,
            },
        }
        if aggregator.endpoints:
            message["delta"] = snapshot_of(aggregator, evidence, DELTA_SAMPLES)
        now = time.monotonic()
        if (seq is not None and metrics) or now - self._metrics_sent_at >= METRICS_EVERY:
            # Every endpoint's series (tens of thousands with 200 endpoints): unpacked on the
            # supervisor's loop, so sent every few seconds, and whenever it asks (settle).
            message["metrics"] = export_families(self.metrics.registry)
            self._metrics_sent_at = now
        with contextlib.suppress(ChannelClosed):
            channel.send(message)

    async def _report_every(self, channel: Channel, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.report(channel)
            await channel.drain()

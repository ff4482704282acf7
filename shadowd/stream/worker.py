"""An analysis worker that reads the Redis stream (``[stream] backend = "redis"``).

The same diff stage as the local hand-off's worker (``shadowd.analysis.worker``), fed from
the consumer group instead of a Unix socket. Every ``snapshot_interval`` it folds what it
counted into its cumulative statistics and publishes them to Redis together with the
acknowledgement of exactly the records they count (``StreamReader.publish_snapshot``): a
``kill -9`` at any instant loses no acknowledged work, and what it had read but not
published stays pending until another worker claims it (``XAUTOCLAIM``).

It runs alone (``shadowd worker -c FILE``: ``run_alone``) or under ``shadowd run``'s
supervisor (``run_supervised``), which also gets each interval's delta for the instance's
own view.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import pickle
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
from prometheus_client import Counter

from shadowd import sdnotify
from shadowd.aggregate import Aggregator
from shadowd.analysis.snapshot import DELTA_SAMPLES, merge_snapshot, snapshot_of
from shadowd.analysis.stage import DiffStage
from shadowd.capture.format import exchange_of
from shadowd.capture.writer import CaptureWriter
from shadowd.config import Config
from shadowd.control import Channel, ChannelClosed
from shadowd.diff.engine import diff_exchange
from shadowd.metrics import Metrics, export_families
from shadowd.stream.redis_stream import (
    FLEET_SNAPSHOT_VERSION,
    RECONNECT,
    UNREACHABLE,
    StreamReader,
    consumer_name,
)
from shadowd.tasks import stop_task
from shadowd.verdict.evidence import VerdictEvidence

log = logging.getLogger("shadowd.analysis")

BACKLOG_RECORDS = 2_000  # records read and waiting for the diff; reading pauses when full
READ_AHEAD_BYTES = 64 * 1024 * 1024  # ...or when they hold this much (records of large answers)


class StreamAnalysisWorker:
    def __init__(self, config: Config, consumer: str | None = None) -> None:
        self.config = config
        self.consumer = consumer or consumer_name(config.stream)
        self.metrics = Metrics(config)
        self._records = Counter(
            "shadowd_stream_records",
            "Exchange records this analysis worker took from the stream, by how: read (new), "
            "reclaimed (left pending by a dead worker), acknowledged (counted and published), "
            "taken_over (counted here, but claimed by another worker while this one stalled)",
            ["how"],
            registry=self.metrics.registry,
        )
        for how in ("read", "reclaimed", "acknowledged", "taken_over"):
            self._records.labels(how)
        # Never shed here by size: a record read from the stream is diffed or stays pending
        # for another worker. Reading pauses instead (READ_AHEAD_BYTES).
        self.stage = DiffStage(
            config.diff,
            self._fresh(),
            self._fresh_evidence(),
            self.metrics,
            BACKLOG_RECORDS,
            backlog_bytes=sys.maxsize,
        )
        self.reader = StreamReader(config.stream, self.consumer)
        self.capture: CaptureWriter | None = None
        # Cumulative statistics since the start (or the fleet's last reset): what Redis holds.
        self.total = self._fresh()
        self.total_evidence = self._fresh_evidence()
        self._rng = np.random.default_rng(0x5AD1)
        self._in_stage: deque[bytes] = deque()  # ids submitted to the stage, in order
        self._taken = 0  # records the stage has taken out of its backlog (diffed or not)
        self._unacked: list[bytes] = []  # counted in ``total`` but not yet acknowledged
        self._held: set[bytes] = set()  # every id read and not yet acknowledged
        # The cumulative snapshot stored in Redis last: where to go back to when records
        # counted since were taken over by another worker (this one stalled past claim_idle).
        self._published: bytes | None = None  # as stored: our entry of the snapshots hash
        self._reread_from: bytes | None = None  # read our own pending records again from here
        # Going back, records this worker had already diffed are read again. They are
        # counted again into the fleet's statistics only: this worker's own view (the
        # instance's report, its Prometheus series, its capture) saw each of them once.
        self._diffed_before: set[bytes] = set()
        self._recounted = self._quiet()  # counted again since the last delta...
        self._recounted_ids: list[bytes] = []  # ...and their ids, to acknowledge with it
        # What this worker diffed between its last delta and going back: the instance's
        # view still gets it with the next delta (the fleet's statistics do not).
        self._own_only: tuple[Aggregator, VerdictEvidence] | None = None
        self.fleet_generation = 0
        self.generation = 0  # the supervisor's (per-instance reset)
        self.connected = False
        self.error: str | None = None
        self._stopping = False
        self._publishing = asyncio.Lock()
        self._published_at = -1e9  # monotonic time of the last snapshot stored in Redis
        self._resumed = False  # an earlier snapshot under our name was looked for
        # systemd's view of a worker running alone (under the supervisor: nothing).
        self._notify: Callable[[str], object] = lambda status: None

    async def start_capture(self) -> None:
        """``[capture]``: each worker records what it takes, in a file of its own
        (``live.<consumer>.shadow``), off any relaying loop as in the local plane."""
        capture_config = self.config.capture
        if capture_config is None:
            return
        path = capture_config.path
        path = path.with_name(f"{path.stem}.{self.consumer}{path.suffix}")
        self.capture = CaptureWriter(
            dataclasses.replace(capture_config, path=path),
            digest=self.config.digest,
            on_written=self.metrics.capture_written,
            on_dropped=self.metrics.capture_dropped,
            on_failed=self.metrics.capture_failed,
        )
        await self.capture.start()
        self.stage.listeners.append(self.capture.submit)

    async def close_capture(self) -> None:
        if self.capture is not None:
            await self.capture.close(timeout=10.0)

    def _fresh(self) -> Aggregator:
        return Aggregator(self.config, self.metrics)

    def _fresh_evidence(self) -> VerdictEvidence:
        return VerdictEvidence(self.config.endpoints.max)

    def _quiet(self) -> tuple[Aggregator, VerdictEvidence]:
        """Statistics that no Prometheus series observes."""
        return Aggregator(self.config), self._fresh_evidence()

    # -- reading ---------------------------------------------------------------------------
    async def consume(self) -> None:
        """Read, and reclaim, until stopped; reconnect with a doubling back-off."""
        delay = RECONNECT[0]
        claim_every = self.config.stream.claim_idle / 2
        claimed_at = 0.0
        while not self._stopping:
            try:
                if not self.connected:
                    await self.reader.join()
                    self.fleet_generation = await self.reader.generation()
                    if not self._resumed:
                        await self._resume_snapshot()
                    self.connected, self.error, delay = True, None, RECONNECT[0]
                    log.info("stream: %s reads %s", self.consumer, self.config.stream.key)
                    self._notify(f"STATUS=reading {self.config.stream.key} as {self.consumer}")
                room = BACKLOG_RECORDS - self.stage.backlog
                if room < self.config.stream.batch or self.stage.backlog_bytes >= READ_AHEAD_BYTES:
                    # Read ahead no further: what a worker holds must be diffed well within
                    # claim_idle. The stage works it off; one round trip refills it.
                    await self.stage.wait_idle(1.0)
                    continue
                if self._reread_from is not None:  # back at our stored snapshot
                    entries = await self.reader.read_own(self._reread_from, room)
                    if entries:
                        self._reread_from = entries[-1][0]
                        self._submit(entries)
                        continue
                    self._reread_from = None
                now = time.monotonic()
                if now - claimed_at >= claim_every:
                    entries, deleted = await self.reader.reclaim(room)
                    if self.reader.reclaim_done:
                        claimed_at = now
                    if deleted:
                        self.metrics.mirror_dropped("stream_trimmed", deleted)
                    # Ours already (kept alive late, e.g. after a long pause): held once.
                    entries = [e for e in entries if e[0] not in self._held]
                    if entries:
                        self._records.labels("reclaimed").inc(len(entries))
                        self._submit(entries)
                        continue
                entries = await self.reader.read(min(room, self.config.stream.batch * 4))
                self._records.labels("read").inc(len(entries))
                self._submit(entries)
            except UNREACHABLE as exc:
                if self.connected or self.error is None:  # lost, or not there at the start
                    log.warning("stream: Redis unreachable, reading stops: %s", exc)
                    self._notify(f"STATUS=Redis unreachable ({exc}); reconnecting")
                self.connected, self.error = False, f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT[1])

    async def _resume_snapshot(self) -> None:
        """A worker started again under the same name (``[stream] consumer``) continues its
        earlier snapshot rather than overwrite it: what that one acknowledged stays counted.
        Once only, before the first read: after a reconnection the snapshot is our own."""
        blob = await self.reader.client.hget(self.reader.keys["snapshots"], self.consumer)
        self._resumed = True
        if blob is None:
            return
        doc = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        if doc.get("v") != FLEET_SNAPSHOT_VERSION:
            log.warning(
                "stream: %s: an earlier snapshot of another layout is replaced", self.consumer
            )
            return
        merge_snapshot(self.total, self.total_evidence, doc["snapshot"], self._rng)
        self.total.started_at = self.total.reset_at = doc["started_at"]
        self._published = blob if isinstance(blob, bytes) else blob.encode()
        log.info("stream: %s continues its earlier snapshot", self.consumer)

    async def keep_alive(self) -> None:
        """Every third of ``claim_idle``: the records held here must not look abandoned."""
        while True:
            await asyncio.sleep(self.config.stream.claim_idle / 3)
            if self.connected:
                with contextlib.suppress(*UNREACHABLE):
                    await self.reader.keep_alive(list(self._held))

    def _submit(self, entries: list[tuple[bytes, bytes | None]]) -> None:
        submit = self.stage.submit
        held = self._held
        diffed_before = self._diffed_before
        for entry_id, payload in entries:
            if entry_id in held:  # read twice (our own pending list, read again): once
                continue
            if entry_id in diffed_before:
                self._count_again(entry_id, payload)
                continue
            self._in_stage.append(entry_id)
            self._held.add(entry_id)
            # An entry without its record (trimmed after it was read) decodes as nothing:
            # the stage counts it as undecodable, and it is acknowledged like any other.
            submit(payload if payload is not None else b"")

    def _count_again(self, entry_id: bytes, payload: bytes | None) -> None:
        """Diff a record read again after going back into the fleet's statistics only (see
        ``_diffed_before``). Small work, and rare: what one worker held when it stalled."""
        self._held.add(entry_id)
        self._recounted_ids.append(entry_id)
        self._diffed_before.discard(entry_id)
        try:
            exchange = exchange_of(
                msgpack.unpackb(payload or b"", raw=False, strict_map_key=False, use_list=False)
            )
            diff = diff_exchange(exchange, self.config.diff)
        except Exception:  # counted as failed the first time it was diffed
            return
        aggregator, evidence = self._recounted
        aggregator.add(exchange, diff)
        evidence.record(exchange, diff)

    # -- publishing ------------------------------------------------------------------------
    def take_delta(self) -> dict[str, Any] | None:
        """Statistics counted since the last call, folded into the cumulative ones; the ids
        they count join those to acknowledge. Returns the delta of this worker's own view
        (for the instance's report), None when there is none."""
        aggregator, evidence = self.stage.swap_statistics(self._fresh(), self._fresh_evidence())
        taken = self.stage.received - self.stage.backlog
        for _ in range(taken - self._taken):
            self._unacked.append(self._in_stage.popleft())
        self._taken = taken
        if self._recounted_ids:
            merge_snapshot(
                self.total, self.total_evidence, snapshot_of(*self._recounted), self._rng
            )
            self._unacked.extend(self._recounted_ids)
            self._recounted, self._recounted_ids = self._quiet(), []
        delta = snapshot_of(aggregator, evidence, DELTA_SAMPLES) if aggregator.endpoints else None
        if delta is not None:
            merge_snapshot(self.total, self.total_evidence, delta, self._rng)
        if self._own_only is not None:
            own_aggregator, own_evidence = self._own_only
            self._own_only = None
            if delta is not None:
                merge_snapshot(own_aggregator, own_evidence, delta, self._rng)
            if own_aggregator.endpoints:
                return snapshot_of(own_aggregator, own_evidence, DELTA_SAMPLES)
        return delta

    async def publish(self) -> bool:
        """Store the cumulative snapshot in Redis and acknowledge what it counts. False when
        some of it had been taken over by another worker: nothing was stored, and this worker
        went back to its last stored snapshot to count again what it still owns."""
        trimmed = await self.reader.trimmed()
        if trimmed:
            self.metrics.mirror_dropped("stream_trimmed", trimmed)
        blob = msgpack.packb(
            {
                "v": FLEET_SNAPSHOT_VERSION,
                "consumer": self.consumer,
                "at": time.time(),
                "started_at": self.total.started_at,
                "snapshot": snapshot_of(self.total, self.total_evidence),
                "metrics": export_families(self.metrics.registry),
                "status": self.status(),
            },
            use_bin_type=True,
        )
        ack = self._unacked
        generation, lost = await self.reader.publish_snapshot(blob, ack, self.fleet_generation)
        if lost:
            self._go_back(lost)
            return False
        self._records.labels("acknowledged").inc(len(ack))
        self._unacked = []
        self._held.difference_update(ack)
        if self._reread_from is None:  # those not read again were taken over: never back
            self._diffed_before.clear()
        self._published = blob
        if generation != self.fleet_generation:  # a fleet reset: start a new window
            self.fleet_generation = generation
            self.total, self.total_evidence = self._fresh(), self._fresh_evidence()
            self._published = None
        return True

    def _go_back(self, lost: list[bytes]) -> None:
        """Records counted here were claimed by another worker, which counts them too: drop
        everything counted since the last stored snapshot, and read our own pending records
        again (the taken ones are no longer among them). The fleet's statistics stay exact;
        this worker's own view (Prometheus, the instance's report, a capture) counts each
        record it diffed once, those taken over included: it did diff them."""
        self._records.labels("taken_over").inc(len(lost))
        log.warning(
            "stream: %s stalled past claim_idle (%gs): %d records it counted were taken over "
            "by another worker; counting again from its last stored snapshot",
            self.consumer,
            self.config.stream.claim_idle,
            len(lost),
        )
        # The records diffed here: those counted and waiting for their acknowledgement, those
        # counted again, and the stage's first ones up to what it took out of its backlog
        # (it works in order).
        diffed = self.stage.received - self.stage.backlog - self._taken
        self._diffed_before.update(self._unacked, self._recounted_ids)
        self._diffed_before.update(itertools.islice(self._in_stage, diffed))
        self.stage.drop_backlog()
        own = self.stage.swap_statistics(self._fresh(), self._fresh_evidence())
        if self._own_only is not None:
            merge_snapshot(*own, snapshot_of(*self._own_only), self._rng)
        self._own_only = own
        self._recounted, self._recounted_ids = self._quiet(), []
        self._in_stage.clear()
        self._taken = self.stage.received
        self._unacked = []
        self._held = set()
        started, reset = self.total.started_at, self.total.reset_at
        self.total, self.total_evidence = self._fresh(), self._fresh_evidence()
        if self._published is not None:
            doc = msgpack.unpackb(self._published, raw=False, strict_map_key=False)
            merge_snapshot(self.total, self.total_evidence, doc["snapshot"], self._rng)
        self.total.started_at, self.total.reset_at = started, reset
        self._reread_from = b"0"

    async def publish_round(self) -> dict[str, Any] | None:
        """Take the interval's delta and publish the cumulative snapshot; the delta. One at a
        time: a snapshot stored after a newer one would uncount acknowledged records."""
        async with self._publishing:
            delta = self.take_delta()
            if not self._resumed:  # not connected yet: an earlier snapshot may be ours
                return delta
            now = time.monotonic()
            if (
                delta is None
                and not self._unacked
                and now - self._published_at < 2 * self.config.analysis.snapshot_interval
            ):
                return None  # nothing new: an idle worker does not rewrite its snapshot
            try:
                await self.publish()
                self._published_at = now
            except UNREACHABLE as exc:
                # Kept: the next round publishes them (the records stay pending meanwhile).
                log.warning("stream: snapshot not published (%s); retrying next round", exc)
            return delta

    def status(self) -> dict[str, Any]:
        return {
            "stream": {
                "backend": "redis",
                "consumer": self.consumer,
                "connected": self.connected,
                "error": self.error,
            },
            "backlog": self.stage.backlog,
            "diffed": self.stage.diffed,
            "received": self.stage.received,
            "unacknowledged": len(self._unacked) + len(self._in_stage) + len(self._recounted_ids),
            "capture": self.capture.status() if self.capture is not None else None,
        }

    async def _stop_reading(self, reading: asyncio.Task[None]) -> None:
        self._stopping = True  # and should a cancellation be lost, it stops after this read
        await stop_task(reading)

    async def _finish(self, grace: float) -> dict[str, Any] | None:
        """Stop reading, work off the backlog, publish it (acknowledged); the last delta."""
        self._stopping = True
        await self.stage.wait_idle(grace)
        return await self.publish_round()

    # -- running alone: ``shadowd worker`` --------------------------------------------------
    async def run_alone(self, stop: asyncio.Event) -> None:
        # Ready at once, whether Redis is there or not: STATUS= says which (a unit that waits
        # for Redis to start would be killed by systemd's start timeout, and restarted).
        self._notify = sdnotify.notify
        await self.start_capture()
        sdnotify.notify(f"READY=1\nSTATUS=connecting to {self.config.stream.url}")
        loop = asyncio.get_running_loop()
        stage = loop.create_task(self.stage.run(), name="diff-stage")
        reading = loop.create_task(self.consume(), name="stream-reader")
        keeping = loop.create_task(self.keep_alive(), name="stream-keep-alive")
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.analysis.snapshot_interval):
                        await stop.wait()
                if not stop.is_set():
                    await self.publish_round()
            sdnotify.notify("STOPPING=1\nSTATUS=publishing the last snapshot")
            await self._stop_reading(reading)
            await self._finish(5.0)
        finally:
            reading.cancel()
            keeping.cancel()
            stage.cancel()
            await self.reader.close()
            await self.close_capture()

    # -- under ``shadowd run``'s supervisor -------------------------------------------------
    async def run_supervised(self, channel: Channel) -> None:
        await self.start_capture()
        loop = asyncio.get_running_loop()
        stage = loop.create_task(self.stage.run(), name="diff-stage")
        reading = loop.create_task(self.consume(), name="stream-reader")
        keeping = loop.create_task(self.keep_alive(), name="stream-keep-alive")
        channel.send({"t": "ready", "pid": os.getpid()})
        reporter = loop.create_task(self._report_every(channel), name="reporter")
        try:
            await self._serve(channel, reading)
        finally:
            reporter.cancel()
            keeping.cancel()
            reading.cancel()
            stage.cancel()
            await self.reader.close()
            await self.close_capture()

    async def _serve(self, channel: Channel, reading: asyncio.Task[None]) -> None:
        while True:
            try:
                message = await channel.receive()
            except ChannelClosed:
                log.warning("supervisor gone: stream analysis worker %s stops", self.consumer)
                return
            kind = message["t"]
            if kind == "report_now":
                await self.report(channel, seq=message.get("seq"))
            elif kind == "reset":
                # The instance's view starts afresh; the fleet's keeps what was counted (its
                # own reset is POST /api/v1/reset?scope=fleet): taken, but not sent.
                self.generation = message["gen"]
                self.take_delta()
            elif kind == "config":
                self.config = pickle.loads(message["config"])
                self.stage.config = self.config.diff
                await self.report(channel, seq=message.get("seq"))
            elif kind == "drain":
                await self._stop_reading(reading)
                last = await self._finish(message.get("grace", 5.0))
                await self.report(channel, seq=message.get("seq"), delta=last)
                await channel.drain()
                return

    async def report(self, channel: Channel, seq: int | None = None, delta: Any = "take") -> None:
        if delta == "take":
            delta = await self.publish_round()
        message: dict[str, Any] = {
            "t": "report",
            "gen": self.generation,
            "seq": seq,
            "metrics": export_families(self.metrics.registry),
            "status": self.status(),
        }
        if delta is not None:
            message["delta"] = delta
        with contextlib.suppress(ChannelClosed):
            channel.send(message)

    async def _report_every(self, channel: Channel) -> None:
        while True:
            await asyncio.sleep(self.config.analysis.snapshot_interval)
            await self.report(channel)
            with contextlib.suppress(ChannelClosed):
                await channel.drain()


def run_worker(config: Config, consumer: str | None = None) -> int:
    """``shadowd worker -c FILE``: until SIGTERM/SIGINT, then the backlog is worked off and
    published (acknowledged) before it exits."""
    import signal

    async def main() -> None:
        worker = StreamAnalysisWorker(config, consumer)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "analysis worker",
            extra={"consumer": worker.consumer, "stream": config.stream.key, "pid": os.getpid()},
        )
        await worker.run_alone(stop)

    if config.analysis.nice:
        with contextlib.suppress(OSError):
            os.nice(config.analysis.nice)
    asyncio.run(main())
    return 0

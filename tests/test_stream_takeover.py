"""A Redis analysis worker that finds some of its records taken over (it stalled past
``claim_idle``) goes back to its stored snapshot and reads its own pending records again.
The fleet's statistics count each record once; so does the worker's own view (the
instance's deltas, its Prometheus series, its capture): it diffed each record once.

The worker runs in this process against a real redis-server, and the takeover is made
exactly, by claiming some of its pending records for another consumer: no timing."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import numpy as np
import redis.asyncio as redis
from realpeers import free_port
from test_snapshot_merge import workload
from test_stream_redis import (
    RedisServer,
    comparable,
    finished,
    shadowd,
    single_process_report,
    write_capture,
    write_config,
)

from shadowd.aggregate import Aggregator
from shadowd.analysis.snapshot import merge_snapshot
from shadowd.capture.reader import read_capture
from shadowd.config import load_config
from shadowd.diff.engine import diff_exchange
from shadowd.metrics import MergedSeries, Metrics, export_families
from shadowd.stream.fleet import FleetView
from shadowd.stream.worker import StreamAnalysisWorker
from shadowd.verdict.evidence import VerdictEvidence


async def until(condition: Any, timeout: float = 30.0) -> None:
    """Until the worker's state meets ``condition`` (it advances on Redis's answers)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - no event to wait on in the worker
            await asyncio.sleep(0.01)


def exchanges_counted(metrics: Metrics) -> float:
    series = MergedSeries()
    series.update("w", export_families(metrics.registry))
    return series.value("shadowd_exchanges_total", target="primary")


async def test_going_back_counts_each_record_once_in_the_fleet_and_in_its_own_view(tmp_path):
    server = RedisServer(free_port())
    await server.start()
    client = redis.Redis.from_url(server.url)
    try:
        config_path = write_config(
            tmp_path / "w.toml", server.url, "t:back", stream={"claim_idle": "600s"}
        )
        config = load_config(config_path)
        exchanges = workload(seed=13, count=600)
        first = write_capture(tmp_path / "first.shadow", exchanges[:300])
        second = write_capture(tmp_path / "second.shadow", exchanges[300:])

        worker = StreamAnalysisWorker(config, "back")
        diffed: list[int] = []  # what a capture of this worker would record
        worker.stage.listeners.append(lambda exchange: diffed.append(exchange.id))
        stage = asyncio.create_task(worker.stage.run())
        reading = asyncio.create_task(worker.consume())
        deltas = []
        try:
            await finished(await shadowd("publish", str(first), "-c", str(config_path)))
            await until(lambda: worker.stage.diffed == 300)
            deltas.append(await worker.publish_round())  # stored and acknowledged

            await finished(await shadowd("publish", str(second), "-c", str(config_path)))
            await until(lambda: worker.stage.diffed == 600)
            # Diffed, not published: another consumer takes 100 of them over.
            pending = await client.xpending_range(
                "t:back", config.stream.group, min="-", max="+", count=100, consumername="back"
            )
            claimed = await client.xclaim(
                "t:back",
                config.stream.group,
                "thief",
                min_idle_time=0,
                message_ids=[p["message_id"] for p in pending],
            )
            stolen = {msgpack.unpackb(fields[b"r"])["id"] for _, fields in claimed}
            assert len(stolen) == 100

            deltas.append(await worker.publish_round())  # refused: it goes back
            taken_over = worker.metrics.registry.get_sample_value(
                "shadowd_stream_records_total", {"how": "taken_over"}
            )
            assert taken_over == 100
            # It reads its 200 remaining records again, and publishes them.
            await until(
                lambda: (
                    worker._reread_from is None
                    and len(worker._held) == 200
                    and not worker.stage.backlog
                )
            )
            deltas.append(await worker.publish_round())
            assert not (
                await client.xpending_range(
                    "t:back", config.stream.group, min="-", max="+", count=10, consumername="back"
                )
            )
        finally:
            await worker._stop_reading(reading)
            stage.cancel()
            await worker.reader.close()

        # The fleet: exactly the 500 records it kept, as one process counts them.
        kept = write_capture(tmp_path / "kept.shadow", [e for e in exchanges if e.id not in stolen])
        fleet = FleetView(config)
        try:
            await fleet.refresh()
            assert fleet.aggregator.totals.exchanges == 500
            assert comparable(fleet.report()) == comparable(single_process_report(config, [kept]))
        finally:
            await fleet.close()

        # Its own view: each of the 600 records it diffed, once.
        assert sorted(diffed) == sorted(e.id for e in exchanges)
        own = Aggregator(config)
        rng = np.random.default_rng(0)
        for delta in deltas:
            if delta is not None:
                merge_snapshot(own, VerdictEvidence(config.endpoints.max), delta, rng)
        assert own.totals.exchanges == 600
        every = write_capture(tmp_path / "every.shadow", exchanges)
        once = Metrics(config)
        single = Aggregator(config, once)
        for exchange in read_capture(every):
            single.add(exchange, diff_exchange(exchange, config.diff))
        assert exchanges_counted(worker.metrics) == exchanges_counted(once) > 0
    finally:
        await client.aclose()
        await server.kill()

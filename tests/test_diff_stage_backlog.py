"""The diff stage's backlog is bounded in records and in bytes: the hand-off stops reading
when it is full (its sender then sheds, counted), and reads again at half."""

from __future__ import annotations

import asyncio

import msgpack
from conftest import build_config

from shadowd.aggregate import Aggregator
from shadowd.analysis.stage import DiffStage
from shadowd.capture.format import record_of
from shadowd.exchange import Answer, Exchange, Request
from shadowd.metrics import Metrics
from shadowd.verdict.evidence import VerdictEvidence


def record(body_bytes: int) -> bytes:
    exchange = Exchange(1, Request("GET", "/x", [], b"", 1.0, "127.0.0.1"), "GET /x")
    for target in ("primary", "candidate"):
        exchange.answers[target] = Answer(target, 200, [], b"b" * body_bytes, body_bytes)
    return msgpack.packb(record_of(exchange), use_bin_type=True)


async def test_large_records_fill_the_backlog_by_bytes_before_its_record_count():
    config = build_config("http://127.0.0.1:1", "http://127.0.0.1:2")
    metrics = Metrics(config)
    stage = DiffStage(
        config.diff,
        Aggregator(config, metrics),
        VerdictEvidence(config.endpoints.max),
        metrics,
        backlog=10_000,
        backlog_bytes=8 << 20,
    )
    calls: list[str] = []
    stage.on_full = lambda: calls.append("full")
    stage.on_room = lambda: calls.append("room")
    big = record(1 << 20)  # two 1 MiB answers: about 2 MiB a record
    for _ in range(4):
        stage.submit(big)
    assert calls == ["full"] and stage.backlog == 4 and stage.backlog_bytes >= 8 << 20
    stage.submit(big)  # past the bound: shed and counted, not queued
    assert stage.backlog == 4
    assert metrics.mirror_dropped_counts()["diff_backlog"] == 1
    worker = asyncio.create_task(stage.run())
    try:
        assert await stage.wait_idle(10.0)
    finally:
        worker.cancel()
    assert stage.diffed == 4 and stage.backlog_bytes == 0
    assert calls == ["full", "room"]

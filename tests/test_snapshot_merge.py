"""Statistics are mergeable: the report of a workload is the same whether one analysis worker
saw every exchange or three saw a share each and the supervisor merged their snapshots."""

from __future__ import annotations

import random

import msgpack
import numpy as np
import orjson
from conftest import build_config

from shadowd.aggregate import Aggregator
from shadowd.analysis.snapshot import (
    merge_reservoir,
    merge_snapshot,
    merge_usage_reservoir,
    snapshot_of,
)
from shadowd.diff.engine import diff_exchange
from shadowd.exchange import Answer, Exchange, Request
from shadowd.report import build_report
from shadowd.verdict.evidence import (
    USAGE_WIDTH,
    PairReservoir,
    UsageReservoir,
    VerdictEvidence,
    usage_column,
)

CONFIG = build_config("http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3")
ENDPOINTS = ["GET /users/{id}", "GET /orders/{id}", "GET /health"]


def _answer(
    target: str, body: dict, status: int, latency: float, timing: bytes | None = None
) -> Answer:
    raw = orjson.dumps(body)
    headers = [(b"content-type", b"application/json")]
    if timing is not None:
        headers.append((b"server-timing", timing))
    return Answer(
        target=target,
        status=status,
        headers=headers,
        body=raw,
        body_size=len(raw),
        latency=latency,
    )


def _timing(rng: random.Random, calls: int, cache: bool) -> bytes:
    """The companion middleware's header (``shadowd.middleware``) with some work in it.
    Durations are multiples of 1/8 ms: their sums are exact in any order, as a float sum of
    arbitrary values would not be (the merge adds them in another order than one process)."""
    value = f"db;dur={rng.randint(1, 72) / 8}, db-calls;dur={calls}"
    if cache:
        hit = rng.random() < 0.8
        value += f", cache-hits;dur={int(hit)}, cache-misses;dur={int(not hit)}"
    return f"{value}, app;dur={rng.randint(8, 240) / 8}".encode()


def workload(seed: int, count: int) -> list[Exchange]:
    """Exchanges with noise (request ids), real changes, errors and spread latencies; two of
    the three endpoints report their DB calls and cache lookups (one without a secondary's
    figure now and then)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        endpoint = ENDPOINTS[i % len(ENDPOINTS)]
        reports = endpoint != "GET /health"
        cache = endpoint == "GET /users/{id}"

        def timing(calls: int, rng=rng, reports=reports, cache=cache) -> bytes | None:
            return _timing(rng, calls, cache) if reports else None

        base = {"id": i, "name": "n", "items": [1, 2, 3]}
        exchange = Exchange(
            id=i,
            request=Request("GET", f"/x/{i}", [(b"host", b"h")], b"", received_at=1e9 + i),
            endpoint=endpoint,
        )
        exchange.answers["primary"] = _answer(
            "primary", {**base, "rid": rng.random()}, 200, rng.uniform(0.001, 0.05), timing(3)
        )
        exchange.answers["secondary"] = _answer(
            "secondary",
            {**base, "rid": rng.random()},
            200,
            rng.uniform(0.001, 0.05),
            timing(3) if rng.random() < 0.9 else None,
        )
        candidate = {**base, "rid": rng.random()}
        if rng.random() < 0.3:
            candidate["name"] = 7  # a type change
        if rng.random() < 0.1:
            candidate["extra"] = True
        status = 500 if rng.random() < 0.05 else 200
        exchange.answers["candidate"] = _answer(
            "candidate", candidate, status, rng.uniform(0.001, 0.08), timing(rng.randint(3, 9))
        )
        out.append(exchange)
    return out


def _comparable(report: dict) -> dict:
    report = {k: v for k, v in report.items() if k not in ("generated_at", "started_at", "window")}
    for endpoint in report["endpoints"]:
        endpoint.pop("samples", None)
    return report


def _roundtrip(snapshot: dict) -> dict:
    """What crosses the control channel."""
    return msgpack.unpackb(msgpack.packb(snapshot, use_bin_type=True), strict_map_key=False)


def test_three_workers_merged_give_the_same_report_as_one():
    exchanges = workload(seed=1, count=900)
    single = Aggregator(CONFIG)
    single_evidence = VerdictEvidence(CONFIG.endpoints.max)
    for exchange in exchanges:
        diff = diff_exchange(exchange, CONFIG.diff)
        single.add(exchange, diff)
        single_evidence.record(exchange, diff)

    merged = Aggregator(CONFIG)
    merged_evidence = VerdictEvidence(CONFIG.endpoints.max)
    rng = np.random.default_rng(0)
    shares = [exchanges[i::3] for i in range(3)]
    # Each worker publishes several deltas (a snapshot every interval), in any order.
    for round_ in range(3):
        for share in shares:
            aggregator = Aggregator(CONFIG)
            evidence = VerdictEvidence(CONFIG.endpoints.max)
            for exchange in share[round_::3]:
                diff = diff_exchange(exchange, CONFIG.diff)
                aggregator.add(exchange, diff)
                evidence.record(exchange, diff)
            merge_snapshot(
                merged, merged_evidence, _roundtrip(snapshot_of(aggregator, evidence)), rng
            )

    assert _comparable(build_report(merged)) == _comparable(build_report(single))
    for name, ev in single_evidence.endpoints.items():
        other = merged_evidence.endpoints[name]
        assert other.pairs.seen == ev.pairs.seen
        for target, tally in ev.errors.items():
            assert (other.errors[target].answers, other.errors[target].errors) == (
                tally.answers,
                tally.errors,
            )
        # Under capacity, the reservoirs hold the same rows (in another order), every column.
        mine, theirs = ev.pairs.columns(), other.pairs.columns()
        order_mine, order_theirs = np.argsort(mine["at"]), np.argsort(theirs["at"])
        for column in ("primary", "secondary", "candidate", "at", "code"):
            np.testing.assert_array_equal(mine[column][order_mine], theirs[column][order_theirs])
        assert np.all(mine["code"] == ev.code)
        # The warm-up bookkeeping merges exactly: counts add, earliest arrivals are a union.
        assert other.exchanges == ev.exchanges
        assert other.earliest == ev.earliest
        for exchanges, seconds in ((50, 0.0), (10, 0.0), (0, 30.0), (50, 200.0), (1000, 0.0)):
            assert other.warmup_until(exchanges, seconds) == ev.warmup_until(exchanges, seconds)
        # Usage: per-target totals add; under capacity the row reservoirs hold the same rows.
        assert other.usage_totals == ev.usage_totals
        if name == "GET /health":
            assert ev.usage is None and other.usage is None
            continue
        assert other.usage is not None and ev.usage is not None
        assert other.usage.seen == ev.usage.seen > 0
        (mine_rows, mine_at), (their_rows, their_at) = ev.usage.held(), other.usage.held()
        np.testing.assert_array_equal(
            mine_rows[np.argsort(mine_at)], their_rows[np.argsort(their_at)]
        )
        assert ev.usage_totals["candidate"][0] == ev.usage.seen
    users = single_evidence.endpoints["GET /users/{id}"]
    assert set(users.usage_totals) == {"primary", "secondary", "candidate"}
    rows, _ = users.usage.held()
    assert np.isnan(rows[:, usage_column("secondary", "db_calls")]).any()  # sometimes absent
    assert np.all(rows[:, usage_column("primary", "db_calls")] == 3)
    assert merged_evidence.overall.exchanges == single_evidence.overall.exchanges == 900
    # Noise is counted per kind, and merges per kind.
    fields = {
        (e["endpoint"], f["path"]): f
        for e in build_report(merged)["endpoints"]
        for f in e["fields"]
    }
    assert fields[("GET /health", "$.rid")]["noise_kinds"] == {"changed": 300}
    # the report's usage per target is built from merged Server-Timing sums
    usage = {e["endpoint"]: e["usage"] for e in build_report(merged)["endpoints"]}
    assert usage["GET /health"] == {}
    assert usage["GET /orders/{id}"]["primary"]["db_calls_per_request"] == 3
    assert "cache_hit_ratio" not in usage["GET /orders/{id}"]["primary"]
    assert 0.6 < usage["GET /users/{id}"]["candidate"]["cache_hit_ratio"] < 1.0


def test_merged_reservoir_is_a_uniform_sample_of_the_union():
    rng = np.random.default_rng(7)
    hits = np.zeros(2)
    for _ in range(300):
        left = PairReservoir(100)
        for value in range(1000):  # values < 1000 come from the left side
            left.add(float(value), 0.0)
        right = PairReservoir(100)
        for value in range(1000, 4000):
            right.add(float(value), 0.0)
        primary, candidate = right.arrays()
        merge_reservoir(left, right.seen, primary, candidate, rng)
        assert left.seen == 4000
        kept = left.arrays()[0]
        assert len(kept) == 100
        hits += [np.sum(kept < 1000), np.sum(kept >= 1000)]
    share_left = hits[0] / hits.sum()
    assert abs(share_left - 0.25) < 0.02  # 1,000 of 4,000 pairs came from the left


def test_merged_usage_reservoir_is_a_uniform_sample_of_the_union():
    rng = np.random.default_rng(11)
    hits = np.zeros(2)
    column = usage_column("candidate", "db_calls")
    for _ in range(200):
        left, right = UsageReservoir(100), UsageReservoir(100)
        row = [float("nan")] * USAGE_WIDTH
        for value in range(1000):  # values < 1000 come from the left side
            row[column] = value
            left.add(row, float(value))
        for value in range(1000, 4000):
            row[column] = value
            right.add(row, float(value))
        rows, at = right.held()
        merge_usage_reservoir(left, right.seen, rows.astype(np.float32), at, rng)
        assert left.seen == 4000
        kept, kept_at = left.held()
        np.testing.assert_array_equal(kept[:, column], kept_at)  # rows keep their times
        hits += [np.sum(kept_at < 1000), np.sum(kept_at >= 1000)]
    assert abs(hits[0] / hits.sum() - 0.25) < 0.02  # 1,000 of 4,000 rows came from the left


def test_a_delta_carries_a_bounded_number_of_samples_newest_of_every_endpoint_first():
    config = build_config("http://p", "http://c")
    aggregator = Aggregator(config)
    for e, count in enumerate((20, 1, 7)):
        stats = aggregator.stats_for(f"GET /e{e}")
        for i in range(count):
            stats.samples.append({"exchange": e * 100 + i})
    evidence = VerdictEvidence(config.endpoints.max)
    whole = snapshot_of(aggregator, evidence)
    assert [len(e["samples"]) for e in whole["endpoints"]] == [20, 1, 7]
    cut = snapshot_of(aggregator, evidence, max_samples=10)
    kept = [[s["exchange"] for s in e["samples"]] for e in cut["endpoints"]]
    assert kept == [[15, 16, 17, 18, 19], [100], [203, 204, 205, 206]]
    # what the supervisor merges from it: the newest, in order
    merged = Aggregator(config)
    merge_snapshot(merged, VerdictEvidence(config.endpoints.max), cut, np.random.default_rng(0))
    assert [s["exchange"] for s in merged.stats_for("GET /e0").samples] == [15, 16, 17, 18, 19]


def test_latencies_merge_exactly_whether_a_delta_sent_a_histogram_or_values():
    """A delta sends a histogram for the latencies already batched into one (256 at a time)
    and the rest as values; merged, both give the histogram one process would have."""
    exchanges = workload(seed=7, count=1200)
    single = Aggregator(CONFIG)
    for exchange in exchanges:
        single.add(exchange, diff_exchange(exchange, CONFIG.diff))
    merged = Aggregator(CONFIG)
    evidence = VerdictEvidence(CONFIG.endpoints.max)
    rng = np.random.default_rng(0)
    start = 0
    for size in (1000, 5, 195):  # over a batch (histogram + values), a few, the rest
        delta = Aggregator(CONFIG)
        for exchange in exchanges[start : start + size]:
            delta.add(exchange, diff_exchange(exchange, CONFIG.diff))
        start += size
        snap = _roundtrip(snapshot_of(delta, VerdictEvidence(CONFIG.endpoints.max)))
        if size == 1000:
            sent = {t for e in snap["endpoints"] for t in e["latency"]}
            assert sent, "a batch of 256 must have gone into a histogram"
            assert any(e["latency_values"] for e in snap["endpoints"])
        merge_snapshot(merged, evidence, snap, rng)
    for name, stats in single.endpoints.items():
        theirs = merged.endpoints[name].latency
        for target, hist in stats.latency.items():
            other = theirs[target]
            assert other.get_total_count() == hist.get_total_count()
            np.testing.assert_array_equal(
                np.ctypeslib.as_array(other.counts)[: other.counts_len],
                np.ctypeslib.as_array(hist.counts)[: hist.counts_len],
            )

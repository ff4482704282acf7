"""Rates over time for the dashboard: a bounded ring of per-endpoint counts.

The report's counts are totals since the start or the last reset: they cannot tell a rising
divergence from one burst an hour ago. Whoever merges the statistics (the supervisor in
``shadowd run``, the ``Daemon`` when embedded) samples its report every ``step`` seconds
into this ring; each bucket holds what happened in its step (the difference between two
samples) and the endpoint's share beyond noise as judged at the end of the step.

Bounded: ``span / step`` buckets (360 by default: 10 s x 1 h), each with at most one entry per
endpoint that saw traffic in that step, and endpoints are at most ``[endpoints] max``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shadowd.aggregate import Aggregator, EndpointStats, latency_summary

log = logging.getLogger("shadowd.timeline")

STEP = 10.0  # seconds per bucket
SPAN = 3600.0  # seconds kept

# The counts a bucket holds, per endpoint, in this order.
COUNTS = ("exchanges", "divergent", "noisy", "errors")


def _counts(endpoint: dict[str, Any]) -> tuple[int, int, int, int]:
    return (
        int(endpoint["exchanges"]),
        int(endpoint["divergent"]),
        int(endpoint["noisy"]),
        int(endpoint.get("errors", {}).get("candidate", 0)),
    )


@dataclass(slots=True)
class Bucket:
    start: float
    end: float
    # endpoint id -> (exchanges, divergent, noisy, candidate errors) in this step
    counts: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    # endpoint id -> share of its exchanges beyond noise, as judged at ``end``
    beyond_noise: dict[str, float] = field(default_factory=dict)


class Timeline:
    def __init__(self, step: float = STEP, span: float = SPAN) -> None:
        self.step = step
        self.buckets: deque[Bucket] = deque(maxlen=max(1, int(span / step)))
        self._last: dict[str, tuple[int, int, int, int]] = {}
        self._last_at: float | None = None
        self._since_reset: float | None = None  # the report's ``window.since`` last seen

    def sample(self, report: dict[str, Any], now: float) -> None:
        """Close a bucket: what each endpoint counted since the previous sample."""
        if self._last_at is None:
            self._remember(report, now)
            return
        bucket = self._bucket(report, now)
        self.buckets.append(bucket)
        self._remember(report, now)

    def _remember(self, report: dict[str, Any], now: float) -> None:
        self._last = {e["id"]: _counts(e) for e in report.get("endpoints", ())}
        self._last_at = now
        self._since_reset = report.get("window", {}).get("since")

    def _bucket(self, report: dict[str, Any], now: float) -> Bucket:
        assert self._last_at is not None
        # After a reset the counts start again from 0: the previous sample no longer applies.
        reset = report.get("window", {}).get("since") != self._since_reset
        bucket = Bucket(self._last_at, now)
        for endpoint in report.get("endpoints", ()):
            current = _counts(endpoint)
            before = (0, 0, 0, 0) if reset else self._last.get(endpoint["id"], (0, 0, 0, 0))
            delta = (
                max(0, current[0] - before[0]),
                max(0, current[1] - before[1]),
                max(0, current[2] - before[2]),
                max(0, current[3] - before[3]),
            )
            if any(delta):
                bucket.counts[endpoint["id"]] = delta
            ratio = float(endpoint.get("divergent_beyond_noise_ratio", 0.0))
            if ratio or any(delta):
                bucket.beyond_noise[endpoint["id"]] = ratio
        return bucket

    def series(
        self, report: dict[str, Any], now: float, endpoint: str | None = None
    ) -> dict[str, Any]:
        """Columns for a chart: per bucket its end time, counts and rates, oldest first, the
        step under way last (from ``report``, as it stands now). ``endpoint`` (an id) picks
        one endpoint; without it, every endpoint added up."""
        buckets = list(self.buckets)
        if self._last_at is not None and now > self._last_at:
            buckets.append(self._bucket(report, now))
        columns: dict[str, list[Any]] = {"t": [], "seconds": [], "beyond_noise_ratio": []}
        for name in COUNTS:
            columns[name] = []
        for bucket in buckets:
            if endpoint is None:
                summed = [sum(c[i] for c in bucket.counts.values()) for i in range(len(COUNTS))]
                # all endpoints: the worst one's share beyond noise
                beyond = max(bucket.beyond_noise.values(), default=0.0)
            else:
                summed = list(bucket.counts.get(endpoint, (0, 0, 0, 0)))
                beyond = bucket.beyond_noise.get(endpoint, 0.0)
            columns["t"].append(round(bucket.end, 3))
            columns["seconds"].append(round(bucket.end - bucket.start, 3))
            for name, value in zip(COUNTS, summed, strict=True):
                columns[name].append(value)
            columns["beyond_noise_ratio"].append(beyond)
        return {
            "step": self.step,
            "span": self.step * (self.buckets.maxlen or 0),
            "endpoint": endpoint,
            **columns,
        }


def counts_of(aggregator: Aggregator, beyond_noise: Mapping[str, float]) -> dict[str, Any]:
    """What ``Timeline`` reads of a report, straight from the statistics: counts only, no
    quantile and no significance test, so it is cheap enough for any loop. ``beyond_noise``
    (endpoint -> ratio) comes from the newest report built."""
    return {
        "window": {"since": aggregator.reset_at},
        "endpoints": [
            {
                "id": stats.id,
                "exchanges": stats.exchanges,
                "divergent": stats.divergent,
                "noisy": stats.noisy,
                "errors": stats.errors,
                "divergent_beyond_noise_ratio": beyond_noise.get(stats.endpoint, 0.0),
            }
            for stats in aggregator.endpoints.values()
        ],
    }


async def sample_every(timeline: Timeline, report: Callable[[], dict[str, Any]]) -> None:
    """Sample ``report()`` into ``timeline`` now and every ``timeline.step`` seconds, until
    cancelled. ``report`` is the merger's own (``counts_of`` in the supervisor): no work on
    any loop that relays production."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        try:
            timeline.sample(report(), time.time())
        except Exception:  # a bug here must not stop the sampling, nor the daemon
            log.exception("sampling the timeline failed")
        next_at += timeline.step
        await asyncio.sleep(max(0.0, next_at - loop.time()))


# Percentiles at which the dashboard draws an endpoint's latency distribution (a CDF): dense
# in the tail, where releases differ.
CDF_PERCENTILES = (
    *(float(q) for q in range(0, 90, 5)),
    90.0,
    92.0,
    94.0,
    95.0,
    96.0,
    97.0,
    98.0,
    99.0,
    99.5,
    99.9,
    100.0,
)


def latency_cdf(stats: EndpointStats) -> dict[str, Any]:
    """Each target's latency distribution as (percentile, seconds) columns, from the same
    HDR histograms as the report's quantiles."""
    targets: dict[str, Any] = {}
    for target, hist in stats.latency.items():
        count = hist.get_total_count()
        if not count:
            continue
        summary = latency_summary(hist, CDF_PERCENTILES)
        targets[target] = {
            "count": count,
            "percentile": list(CDF_PERCENTILES),
            "seconds": [summary[f"p{q:g}"] / 1e6 for q in CDF_PERCENTILES],
        }
    return {"targets": targets}

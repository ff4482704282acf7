"""Prometheus metrics: one registry per daemon, names per the contract, bounded labels.

Label children are bound once (a ``labels()`` lookup costs more than the increment): the
fixed label sets at start, so that every series known to exist is exported at 0; an
endpoint's series when the endpoint is first seen. The data plane calls the plain methods
below; each is a dict lookup and an increment. Reason strings outside the known lists are
counted under ``other``, never raised on. The endpoint label takes at most
``[endpoints] max`` distinct values plus ``other``.

Counters are never reset (``POST /api/v1/reset`` clears the report, not these): Prometheus
counters only go up, and ``rate()`` / ``increase()`` give any window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
)
from prometheus_client.metrics_core import Metric

from shadowd import __version__
from shadowd.analysis.series import ExchangeSeries
from shadowd.config import Config
from shadowd.diff.model import ExchangeDiff
from shadowd.endpoints import OTHER
from shadowd.exchange import ERROR_KINDS, TARGET_NAMES, Exchange

# Nobody reads the per-series creation time, and it doubles the size of every scrape.
disable_created_metrics()

DROP_REASONS = (
    "queue_full",
    "analysis_down",  # no analysis worker is connected to this ingress worker
    "target_unhealthy",  # a copy target's circuit breaker is open
    "pending_bytes",  # [mirror] max_pending_bytes reached
    "request_body_too_large",
    "diff_backlog",
    "client_gone",  # the client left before the primary's answer: nothing to compare with
    "primary_incomplete",  # the primary's answer did not complete: nothing to compare with
    "disabled",  # the kill switch emptied the queue
    # [stream] backend = "redis" (shadowd.stream.redis_stream):
    "stream_down",  # Redis unreachable: the record could not be appended to the stream
    "stream_backlog",  # the bounded buffer of records waiting for Redis was full
    "stream_trimmed",  # the stream's MAXLEN trimmed the record before any worker read it
    OTHER,
)
SKIP_REASONS = ("sampled_out", "method", "path", "disabled", "not_modified", OTHER)
REJECT_REASONS = (
    "request_too_large",
    "headers_too_large",
    "bad_request",
    "max_connections",
    "primary_unreachable",
    "primary_timeout",
    "pipeline_full",  # too many pipelined requests waiting on one connection
    "header_timeout",  # the request head did not arrive within ingress.header_timeout
    "body_timeout",  # the request body did not arrive within ingress.body_timeout
    "http_version",  # HTTP/2 (prior knowledge) or another version shadowd does not speak
    "internal_error",  # a bug in shadowd, logged with its traceback
    OTHER,
)
CAPTURE_DROP_REASONS = ("buffer_full", "write_error", OTHER)
UPSTREAM_ERROR_KINDS = (*ERROR_KINDS, OTHER)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", OTHER)
VERDICTS = ("pass", "fail", "inconclusive")


class Metrics:
    """Every metric of one daemon, in its own registry (``metrics.registry``)."""

    def __init__(self, config: Config) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._max_endpoints = config.endpoints.max
        _build_info(registry)
        # Per exchange (the analysis plane): plain counts, see shadowd.analysis.series.
        self.exchange_series = ExchangeSeries(config.endpoints.max)
        registry.register(self.exchange_series)
        self._errors_metric = Counter(
            "shadowd_upstream_errors",
            "Requests to a target that got no complete answer, per kind",
            ["target", "kind"],
            registry=registry,
        )
        self._errors = {
            (t, k): self._errors_metric.labels(t, k)
            for t in TARGET_NAMES
            for k in UPSTREAM_ERROR_KINDS
        }
        self._queue_depth = Gauge(
            "shadowd_mirror_queue_depth", "Copies waiting for an in-flight slot", registry=registry
        )
        self._in_flight = Gauge(
            "shadowd_mirror_in_flight", "Copies being answered now", registry=registry
        )
        self._dropped_metric = Counter(
            "shadowd_mirror_dropped",
            "Copies dropped to protect production, per reason",
            ["reason"],
            registry=registry,
        )
        self._dropped = {r: self._dropped_metric.labels(r) for r in DROP_REASONS}
        self._skipped_metric = Counter(
            "shadowd_mirror_skipped",
            "Requests not copied, per reason",
            ["reason"],
            registry=registry,
        )
        self._skipped = {r: self._skipped_metric.labels(r) for r in SKIP_REASONS}
        self._enabled = _mirror_enabled(registry)
        self._enabled.set(1 if config.mirror.enabled else 0)
        requests = Counter(
            "shadowd_ingress_requests",
            "Answers sent to clients, per status class",
            ["code_class"],
            registry=registry,
        )
        self._requests = {c: requests.labels(c) for c in CODE_CLASSES}
        # Indexed by status // 100: one list index on the hot path.
        self._by_class = [self._requests[OTHER]] + [self._requests[f"{i}xx"] for i in range(1, 6)]
        rejected = Counter(
            "shadowd_ingress_rejected",
            "Requests shadowd answered itself with an error, per reason",
            ["reason"],
            registry=registry,
        )
        self._rejected = {r: rejected.labels(r) for r in REJECT_REASONS}
        self._connections = Gauge(
            "shadowd_ingress_connections", "Open client connections", registry=registry
        )
        self._capture_bytes = Counter(
            "shadowd_capture_bytes", "Bytes written to capture files", registry=registry
        )
        self._capture_records = Counter(
            "shadowd_capture_records", "Records written to capture files", registry=registry
        )
        capture_dropped = Counter(
            "shadowd_capture_dropped",
            "Records not captured, per reason",
            ["reason"],
            registry=registry,
        )
        self._capture_dropped = {r: capture_dropped.labels(r) for r in CAPTURE_DROP_REASONS}
        self._capture_failures = Counter(
            "shadowd_capture_failures",
            "Times recording failed (a write, a rotation, opening the file); it recovers by itself",
            registry=registry,
        )
        self._diff_failures = Counter(
            "shadowd_diff_failures", "Exchanges the diff stage failed on (a bug)", registry=registry
        )
        self._verdict, self._criteria = _verdict_series(registry)

    # -- the data plane ------------------------------------------------------------------
    def mirror_dropped(self, reason: str, count: int = 1) -> None:
        child = self._dropped.get(reason)
        (child if child is not None else self._dropped[OTHER]).inc(count)

    def mirror_skipped(self, reason: str) -> None:
        child = self._skipped.get(reason)
        (child if child is not None else self._skipped[OTHER]).inc()

    def ingress_request(self, status: int) -> None:
        index = status // 100
        if 0 < index < 6:
            self._by_class[index].inc()
        else:
            self._by_class[0].inc()

    def ingress_rejected(self, reason: str) -> None:
        child = self._rejected.get(reason)
        (child if child is not None else self._rejected[OTHER]).inc()

    def connection_opened(self) -> None:
        self._connections.inc()

    def connection_closed(self) -> None:
        self._connections.dec()

    def upstream_error(self, target: str, kind: str) -> None:
        child = self._errors.get((target, kind))
        if child is None:  # cold: a kind or target this module does not know
            key = (
                target if target in TARGET_NAMES else OTHER,
                kind if kind in UPSTREAM_ERROR_KINDS else OTHER,
            )
            child = self._errors.get(key)
            if child is None:
                child = self._errors[key] = self._errors_metric.labels(*key)
        child.inc()

    def diff_failed(self) -> None:
        self._diff_failures.inc()

    def set_mirror_enabled(self, enabled: bool) -> None:
        self._enabled.set(1 if enabled else 0)

    def watch_mirror(self, queue_depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        """Read the mirror's queue depth and in-flight count at each scrape."""
        self._queue_depth.set_function(queue_depth)
        self._in_flight.set_function(in_flight)

    def capture_written(self, nbytes: int, records: int = 1) -> None:
        self._capture_bytes.inc(nbytes)
        self._capture_records.inc(records)

    def capture_failed(self) -> None:
        self._capture_failures.inc()

    def capture_dropped(self, reason: str) -> None:
        child = self._capture_dropped.get(reason)
        (child if child is not None else self._capture_dropped[OTHER]).inc()

    # -- per exchange (the aggregator calls it, off the request path) ----------------------
    def observe_exchange(self, exchange: Exchange, diff: ExchangeDiff) -> None:
        """Exchanges and latency per target, divergent/noisy exchanges, and each divergence
        kind once per exchange."""
        self.exchange_series.observe(exchange, diff)

    def endpoint_label(self, endpoint: str) -> str:
        """The label value an endpoint's series carry (``other`` past the cap)."""
        return self.exchange_series.label(endpoint)

    def observe_verdict(self, verdict: Any) -> None:
        """Publish the last verdict (``shadowd.verdict.judge.Verdict``) as gauges."""
        _publish_verdict(self._verdict, self._criteria, verdict, self.endpoint_label)

    # -- for the admin API's mirroring status (cold) --------------------------------------
    def mirror_dropped_counts(self) -> dict[str, int]:
        return _counts_by_label(self._dropped_metric, "reason")

    def mirror_skipped_counts(self) -> dict[str, int]:
        return _counts_by_label(self._skipped_metric, "reason")


def _counts_by_label(counter: Counter, label: str) -> dict[str, int]:
    """Current values of a one-label counter, through the public ``collect()``."""
    counts: dict[str, int] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                counts[sample.labels[label]] = int(sample.value)
    return counts


# -- series the supervisor owns, and the merge of every worker's series ---------------------
def _build_info(registry: CollectorRegistry) -> None:
    Gauge("shadowd_build_info", "shadowd version", ["version"], registry=registry).labels(
        __version__
    ).set(1)


def _mirror_enabled(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        "shadowd_mirror_enabled", "1 when mirroring is on (the kill switch)", registry=registry
    )


def _verdict_series(registry: CollectorRegistry) -> tuple[Gauge, Gauge]:
    verdict = Gauge(
        "shadowd_verdict",
        "1 for the verdict last judged (pass, fail or inconclusive), 0 for the others",
        ["verdict"],
        registry=registry,
    )
    for name in VERDICTS:  # none judged yet: all 0
        verdict.labels(name).set(0)
    criteria = Gauge(
        "shadowd_verdict_criterion_passing",
        "1 when a verdict criterion passed at the last judgement, 0 when not",
        ["criterion", "scope"],
        registry=registry,
    )
    return verdict, criteria


def _publish_verdict(
    verdict_gauge: Gauge, criteria: Gauge, verdict: Any, label: Callable[[str], str]
) -> None:
    for name in VERDICTS:
        verdict_gauge.labels(name).set(1 if verdict.verdict == name else 0)
    criteria.clear()  # endpoints come and go between judgements: no stale series
    for criterion in verdict.criteria:
        scope = criterion.scope
        if scope != "overall":
            scope = label(scope)
        criteria.labels(criterion.name, scope).set(1 if criterion.status == "pass" else 0)


# What the supervisor publishes itself; workers' copies of these are not merged.
SUPERVISOR_FAMILIES = frozenset(
    {
        "shadowd_build_info",
        "shadowd_mirror_enabled",
        "shadowd_verdict",
        "shadowd_verdict_criterion_passing",
    }
)
_SUMMABLE_AFTER_EXIT = frozenset({"counter", "histogram"})

# [name, type, documentation, [[sample name, labels, value], ...]]
Families = list[list[Any]]


def export_families(registry: CollectorRegistry) -> Families:
    """A worker's series as plain data for the supervisor (``MergedSeries``)."""
    out: Families = []
    for family in registry.collect():
        if family.name in SUPERVISOR_FAMILIES:
            continue
        out.append(
            [
                family.name,
                family.type,
                family.documentation,
                [[s.name, s.labels, s.value] for s in family.samples],
            ]
        )
    return out


class MergedSeries:
    """A Prometheus collector that adds up the series of every worker process.

    Counters and histogram buckets add; gauges (queue depth, connections, in-flight) add too,
    since each worker reports its own share. A worker that exits leaves its counters and
    histograms behind (``retire``), so a restart never makes a counter go down."""

    def __init__(self) -> None:
        self._live: dict[str, list[Any]] = {}
        self._retired: Families = []

    def update(self, worker: str, families: Families) -> None:
        # Kept as tuples: a tuple of strings, numbers and a labels dict of strings drops out
        # of the garbage collector's sight, a list never does. Tens of thousands of series
        # per worker, replaced every second, made each full collection of the supervisor
        # walk them all (100+ ms with 200 endpoints: a stall of the admin API).
        self._live[worker] = [
            (name, typ, doc, tuple(map(tuple, samples))) for name, typ, doc, samples in families
        ]

    def retire(self, worker: str) -> None:
        families = self._live.pop(worker, None)
        if families:
            kept = [f for f in families if f[1] in _SUMMABLE_AFTER_EXIT]
            self._retired = _sum_families([self._retired, kept])

    def value(self, sample_name: str, **labels: str) -> float:
        """The merged value of one series (0 when absent)."""
        total = 0.0
        for families in (*self._live.values(), self._retired):
            for _, _, _, samples in families:
                for name, sample_labels, value in samples:
                    if name == sample_name and all(
                        sample_labels.get(k) == v for k, v in labels.items()
                    ):
                        total += value
        return total

    def by_label(self, sample_name: str, label: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for families in (*self._live.values(), self._retired):
            for _, _, _, samples in families:
                for name, sample_labels, value in samples:
                    if name == sample_name and label in sample_labels:
                        key = sample_labels[label]
                        counts[key] = counts.get(key, 0) + int(value)
        return counts

    def collect(self) -> Any:
        for name, typ, doc, samples in _sum_families([*self._live.values(), self._retired]):
            metric = Metric(name, doc, typ)
            for sample_name, labels, value in samples:
                metric.add_sample(sample_name, labels, value)
            yield metric


def _sum_families(sources: list[Families]) -> Families:
    merged: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for families in sources:
        for name, typ, doc, samples in families:
            entry = merged.get(name)
            if entry is None:
                entry = merged[name] = (typ, doc, {})
            values = entry[2]
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                values[key] = values.get(key, 0.0) + value
    return [
        [name, typ, doc, [[sn, dict(lb), v] for (sn, lb), v in values.items()]]
        for name, (typ, doc, values) in merged.items()
    ]


class SupervisorMetrics:
    """The supervisor's registry: its own series (build, kill switch, verdict, workers) and
    the merged series of every worker."""

    def __init__(self, config: Config, merged: MergedSeries) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        _build_info(registry)
        self._enabled = _mirror_enabled(registry)
        self._enabled.set(1 if config.mirror.enabled else 0)
        self._verdict, self._criteria = _verdict_series(registry)
        self._restarts = Counter(
            "shadowd_worker_restarts",
            "Processes that died and were started again, per role (ingress and analysis "
            "workers; the view and, on Redis, the fleet view behind the admin API)",
            ["role"],
            registry=registry,
        )
        self._alive = Gauge(
            "shadowd_workers", "Worker processes running now, per role", ["role"], registry=registry
        )
        for role in ("ingress", "analysis"):
            self._restarts.labels(role)
            self._alive.labels(role).set(0)
        # the processes behind the admin API: the view, and the fleet's view on Redis
        for role in ("view", "fleet") if config.stream.redis else ("view",):
            self._restarts.labels(role)
        self._beyond_noise = Gauge(
            "shadowd_divergence_beyond_noise_ratio",
            "Share of an endpoint's exchanges whose candidate differs in a field that noise "
            "does not explain (the verdict's own measure), at the last judgement",
            ["endpoint"],
            registry=registry,
        )
        self.merged = merged
        registry.register(merged)
        self._endpoint_label: Callable[[str], str] = lambda name: name

    def set_mirror_enabled(self, enabled: bool) -> None:
        self._enabled.set(1 if enabled else 0)

    def worker_restarted(self, role: str) -> None:
        self._restarts.labels(role).inc()

    def set_workers(self, role: str, alive: int) -> None:
        self._alive.labels(role).set(alive)

    def label_endpoints_with(self, label: Callable[[str], str]) -> None:
        self._endpoint_label = label

    def observe_verdict(self, verdict: Any) -> None:
        _publish_verdict(self._verdict, self._criteria, verdict, self._endpoint_label)

    def observe_beyond_noise(self, ratios: Iterable[tuple[str, float]]) -> None:
        """Per endpoint, the divergence that noise does not explain: what an alert should
        fire on (the raw divergent ratio also counts ids and clocks that differ anyway)."""
        self._beyond_noise.clear()
        for endpoint, ratio in ratios:
            self._beyond_noise.labels(self._endpoint_label(endpoint)).set(ratio)

    def mirror_dropped_counts(self) -> dict[str, int]:
        return self.merged.by_label("shadowd_mirror_dropped_total", "reason")

    def mirror_skipped_counts(self) -> dict[str, int]:
        return self.merged.by_label("shadowd_mirror_skipped_total", "reason")

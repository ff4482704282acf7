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

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shadowd import __version__
from shadowd.config import Config
from shadowd.diff.model import ExchangeDiff
from shadowd.endpoints import OTHER
from shadowd.exchange import ERROR_KINDS, TARGET_NAMES, Exchange

DROP_REASONS = (
    "queue_full",
    "request_body_too_large",
    "diff_backlog",
    "client_gone",  # the client left before the primary's answer: nothing to compare with
    "primary_incomplete",  # the primary's answer did not complete: nothing to compare with
    "disabled",  # the kill switch emptied the queue
    OTHER,
)
SKIP_REASONS = ("sampled_out", "method", "path", "disabled", OTHER)
REJECT_REASONS = (
    "request_too_large",
    "headers_too_large",
    "bad_request",
    "max_connections",
    "primary_unreachable",
    "primary_timeout",
    "pipeline_full",  # too many pipelined requests waiting on one connection
    "header_timeout",  # the request head did not arrive within ingress.header_timeout
    "http_version",  # HTTP/2 (prior knowledge) or another version shadowd does not speak
    "internal_error",  # a bug in shadowd, logged with its traceback
    OTHER,
)
CAPTURE_DROP_REASONS = ("buffer_full", "write_error", OTHER)
UPSTREAM_ERROR_KINDS = (*ERROR_KINDS, OTHER)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", OTHER)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
VERDICTS = ("pass", "fail", "inconclusive")


class _EndpointSeries:
    """The children of one endpoint label value, bound on first use."""

    __slots__ = ("divergences", "divergent", "exchanges", "label", "latency", "noisy")

    def __init__(self, metrics: Metrics, label: str) -> None:
        self.label = label
        # Bound now so that a ratio query has a 0 numerator rather than no series at all.
        self.divergent = metrics._divergent.labels(label)
        self.noisy = metrics._noisy.labels(label)
        self.exchanges: dict[str, Any] = {}  # target -> child
        self.latency: dict[str, Any] = {}  # target -> child
        self.divergences: dict[str, Any] = {}  # kind -> child


class Metrics:
    """Every metric of one daemon, in its own registry (``metrics.registry``)."""

    def __init__(self, config: Config) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._max_endpoints = config.endpoints.max
        Gauge("shadowd_build_info", "shadowd version", ["version"], registry=registry).labels(
            __version__
        ).set(1)
        self._exchanges = Counter(
            "shadowd_exchanges",
            "Answers received per target and endpoint (mirrored exchanges)",
            ["target", "endpoint"],
            registry=registry,
        )
        self._divergences = Counter(
            "shadowd_divergences",
            "Exchanges where the candidate differs from the primary, per kind "
            "(each kind counted once per exchange)",
            ["endpoint", "kind"],
            registry=registry,
        )
        self._divergent = Counter(
            "shadowd_divergent_exchanges",
            "Exchanges with any candidate difference",
            ["endpoint"],
            registry=registry,
        )
        self._noisy = Counter(
            "shadowd_noisy_exchanges",
            "Exchanges where the secondary differs from the primary",
            ["endpoint"],
            registry=registry,
        )
        self._latency = Histogram(
            "shadowd_upstream_latency_seconds",
            "Time to a target's complete answer (answers that failed are left out)",
            ["target", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
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
        self._enabled = Gauge(
            "shadowd_mirror_enabled", "1 when mirroring is on (the kill switch)", registry=registry
        )
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
        self._diff_failures = Counter(
            "shadowd_diff_failures", "Exchanges the diff stage failed on (a bug)", registry=registry
        )
        self._verdict = Gauge(
            "shadowd_verdict",
            "1 for the verdict last judged (pass, fail or inconclusive), 0 for the others",
            ["verdict"],
            registry=registry,
        )
        for name in VERDICTS:  # none judged yet: all 0
            self._verdict.labels(name).set(0)
        self._criteria = Gauge(
            "shadowd_verdict_criterion_passing",
            "1 when a verdict criterion passed at the last judgement, 0 when not",
            ["criterion", "scope"],
            registry=registry,
        )
        self._endpoints: dict[str, _EndpointSeries] = {}
        self._other_endpoint: _EndpointSeries | None = None

    # -- the data plane ------------------------------------------------------------------
    def mirror_dropped(self, reason: str) -> None:
        child = self._dropped.get(reason)
        (child if child is not None else self._dropped[OTHER]).inc()

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

    def capture_dropped(self, reason: str) -> None:
        child = self._capture_dropped.get(reason)
        (child if child is not None else self._capture_dropped[OTHER]).inc()

    # -- per exchange (the aggregator calls it, off the request path) ----------------------
    def observe_exchange(self, exchange: Exchange, diff: ExchangeDiff) -> None:
        """Exchanges and latency per target, divergent/noisy exchanges, and each divergence
        kind once per exchange."""
        series = self._endpoints.get(exchange.endpoint) or self._series(exchange.endpoint)
        for target, answer in exchange.answers.items():
            child = series.exchanges.get(target)
            if child is None:
                child = series.exchanges[target] = self._exchanges.labels(target, series.label)
            child.inc()
            if answer.error is None:
                child = series.latency.get(target)
                if child is None:
                    child = series.latency[target] = self._latency.labels(target, series.label)
                child.observe(answer.latency)
        if diff.candidate:
            series.divergent.inc()
            kinds = series.divergences
            for kind in {d.kind for d in diff.candidate}:
                child = kinds.get(kind)
                if child is None:
                    child = kinds[kind] = self._divergences.labels(series.label, kind.value)
                child.inc()
        if diff.secondary:
            series.noisy.inc()

    def _series(self, endpoint: str) -> _EndpointSeries:
        """An endpoint seen for the first time: its own series, or ``other`` past the cap.
        Overflowing names are not remembered, so this dict stays bounded too."""
        if len(self._endpoints) < self._max_endpoints:
            series = self._endpoints[endpoint] = _EndpointSeries(self, endpoint)
            return series
        if self._other_endpoint is None:
            self._other_endpoint = self._endpoints.get(OTHER) or _EndpointSeries(self, OTHER)
        return self._other_endpoint

    def endpoint_label(self, endpoint: str) -> str:
        """The label value an endpoint's series carry (``other`` past the cap)."""
        series = self._endpoints.get(endpoint) or self._series(endpoint)
        return series.label

    def observe_verdict(self, verdict: Any) -> None:
        """Publish the last verdict (``shadowd.verdict.judge.Verdict``) as gauges."""
        for name in VERDICTS:
            self._verdict.labels(name).set(1 if verdict.verdict == name else 0)
        self._criteria.clear()  # endpoints come and go between judgements: no stale series
        for criterion in verdict.criteria:
            scope = criterion.scope
            if scope != "overall":
                scope = self.endpoint_label(scope)
            self._criteria.labels(criterion.name, scope).set(1 if criterion.status == "pass" else 0)

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

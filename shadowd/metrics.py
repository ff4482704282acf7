"""Prometheus metrics: one registry per daemon, names per the contract, bounded labels.

Label children for fixed label sets are bound once at start (a labels() lookup per request
costs more than the increment); per-endpoint children are bound on first use, and the
endpoint label is capped at ``[endpoints] max`` values plus ``other``.
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
    "client_gone",
    "primary_incomplete",
    "disabled",
    "other",
)
SKIP_REASONS = ("sampled_out", "method", "path", "disabled", "other")
REJECT_REASONS = (
    "request_too_large",
    "headers_too_large",
    "bad_request",
    "max_connections",
    "primary_unreachable",
    "primary_timeout",
    "other",
)
CAPTURE_DROP_REASONS = ("buffer_full", "write_error", "other")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
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
            "Exchanges where candidate differs from primary, per kind",
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
            "Exchanges where secondary differs from primary",
            ["endpoint"],
            registry=registry,
        )
        self._latency = Histogram(
            "shadowd_upstream_latency_seconds",
            "Time to a target's complete answer",
            ["target", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        errors = Counter(
            "shadowd_upstream_errors",
            "Requests to a target that got no complete answer",
            ["target", "kind"],
            registry=registry,
        )
        self._errors = {(t, k): errors.labels(t, k) for t in TARGET_NAMES for k in ERROR_KINDS}
        self._queue_depth = Gauge(
            "shadowd_mirror_queue_depth", "Copies waiting for an in-flight slot", registry=registry
        )
        self._in_flight = Gauge(
            "shadowd_mirror_in_flight", "Copies being answered now", registry=registry
        )
        dropped = Counter(
            "shadowd_mirror_dropped",
            "Copies dropped to protect production, per reason",
            ["reason"],
            registry=registry,
        )
        self._dropped = {r: dropped.labels(r) for r in DROP_REASONS}
        skipped = Counter(
            "shadowd_mirror_skipped",
            "Requests not copied, per reason",
            ["reason"],
            registry=registry,
        )
        self._skipped = {r: skipped.labels(r) for r in SKIP_REASONS}
        self._enabled = Gauge(
            "shadowd_mirror_enabled", "1 when mirroring is on (the kill switch)", registry=registry
        )
        requests = Counter(
            "shadowd_ingress_requests",
            "Answers sent to clients, per status class",
            ["code_class"],
            registry=registry,
        )
        self._requests = [requests.labels(f"{i}xx") for i in range(6)]
        rejected = Counter(
            "shadowd_ingress_rejected",
            "Requests shadowd answered itself with an error",
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
            "1 for the verdict last judged (pass, fail or inconclusive)",
            ["verdict"],
            registry=registry,
        )
        self._criteria = Gauge(
            "shadowd_verdict_criterion_passing",
            "1 when a verdict criterion passed at the last judgement, 0 when not",
            ["criterion", "scope"],
            registry=registry,
        )
        self._endpoint_labels: set[str] = set()
        self._bound: dict[tuple[str, str], Any] = {}

    # -- data plane ----------------------------------------------------------------------
    def mirror_dropped(self, reason: str) -> None:
        (self._dropped.get(reason) or self._dropped["other"]).inc()

    def mirror_skipped(self, reason: str) -> None:
        (self._skipped.get(reason) or self._skipped["other"]).inc()

    def ingress_request(self, status: int) -> None:
        self._requests[min(max(status // 100, 0), 5)].inc()

    def ingress_rejected(self, reason: str) -> None:
        (self._rejected.get(reason) or self._rejected["other"]).inc()

    def connection_opened(self) -> None:
        self._connections.inc()

    def connection_closed(self) -> None:
        self._connections.dec()

    def upstream_error(self, target: str, kind: str) -> None:
        child = self._errors.get((target, kind))
        if child is not None:
            child.inc()

    def diff_failed(self) -> None:
        self._diff_failures.inc()

    def set_mirror_enabled(self, enabled: bool) -> None:
        self._enabled.set(1 if enabled else 0)

    def watch_mirror(self, queue_depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self._queue_depth.set_function(queue_depth)
        self._in_flight.set_function(in_flight)

    def capture_written(self, nbytes: int, records: int = 1) -> None:
        self._capture_bytes.inc(nbytes)
        self._capture_records.inc(records)

    def capture_dropped(self, reason: str) -> None:
        (self._capture_dropped.get(reason) or self._capture_dropped["other"]).inc()

    # -- per exchange (the diff stage, off the request path) ------------------------------
    def observe_exchange(self, exchange: Exchange, diff: ExchangeDiff) -> None:
        endpoint = self._endpoint_label(exchange.endpoint)
        for target, answer in exchange.answers.items():
            self._child(self._exchanges, target, endpoint).inc()
            if answer.error is None:
                self._child(self._latency, target, endpoint).observe(answer.latency)
        if diff.candidate:
            self._child(self._divergent, endpoint).inc()
            for kind in {d.kind for d in diff.candidate}:
                self._child(self._divergences, endpoint, kind.value).inc()
        if diff.secondary:
            self._child(self._noisy, endpoint).inc()

    def _endpoint_label(self, endpoint: str) -> str:
        labels = self._endpoint_labels
        if endpoint in labels:
            return endpoint
        if len(labels) >= self._max_endpoints:
            return OTHER
        labels.add(endpoint)
        return endpoint

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._bound.get(key)  # type: ignore[arg-type]
        if child is None:
            child = self._bound[key] = metric.labels(*labels)  # type: ignore[index]
        return child

    def observe_verdict(self, verdict: Any) -> None:
        """Publish the last verdict (called whenever one is judged)."""
        for name in ("pass", "fail", "inconclusive"):
            self._verdict.labels(name).set(1 if verdict.verdict == name else 0)
        self._criteria.clear()  # endpoints come and go: no stale series
        for criterion in verdict.criteria:
            scope = (
                self._endpoint_label(criterion.scope)
                if criterion.scope != "overall"
                else ("overall")
            )
            self._criteria.labels(criterion.name, scope).set(1 if criterion.status == "pass" else 0)

    # -- for the admin API and the report -------------------------------------------------
    def mirror_dropped_counts(self) -> dict[str, int]:
        return {r: int(c._value.get()) for r, c in self._dropped.items()}

    def mirror_skipped_counts(self) -> dict[str, int]:
        return {r: int(c._value.get()) for r, c in self._skipped.items()}

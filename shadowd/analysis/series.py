"""The per-exchange Prometheus series (exchanges, latency, divergences), kept as plain counts.

The analysis plane observes every exchange: with ``prometheus_client``'s objects that is a
label lookup and a locked ``inc``/``observe`` per target and per kind, ~25 µs for a 3-target
exchange (measured), a quarter of an exchange's whole analysis. Here an exchange costs a few
dict increments and one list append per target; latencies are sorted into the histogram's
buckets with numpy when the series are collected (a scrape, or a worker's report). The
families collected are exactly those the objects would give, names and labels included.

Endpoint labels are capped at ``[endpoints] max`` values; the rest go to ``other``, and
overflowing names are not remembered (the dicts stay bounded). Each label is at most
``shadowd.bounds.MAX_NAME_CHARS`` characters.

The work behind the answers (``shadowd.usage``, from the companion middleware's
``Server-Timing``) is exported as counters, not as a per-request gauge: DB calls per request
is ``rate(shadowd_db_calls_total[5m]) / rate(shadowd_usage_answers_total[5m])`` and a hit
ratio is a ratio of ``shadowd_cache_lookups_total`` rates, both summable across workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from shadowd.bounds import bounded
from shadowd.diff.model import ExchangeDiff
from shadowd.diff.timing import timing_of
from shadowd.endpoints import OTHER
from shadowd.exchange import Exchange
from shadowd.usage import usage_of

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LE = [*(f"{b:g}" if b < 1 else f"{float(b)}" for b in LATENCY_BUCKETS), "+Inf"]


class _Latency:
    __slots__ = ("buckets", "count", "pending", "total")

    def __init__(self) -> None:
        self.buckets: Any = None  # numpy counts per bucket and +Inf, made at the first settle
        self.total = 0.0
        self.count = 0
        self.pending: list[float] = []

    def settle(self) -> None:
        # numpy is imported here, not at the top: the ingress processes import this module
        # (through shadowd.metrics) but never observe an exchange, and need not carry numpy.
        import numpy as np

        if self.buckets is None:
            self.buckets = np.zeros(len(LATENCY_BUCKETS) + 1, dtype=np.int64)
        if self.pending:
            values = np.asarray(self.pending)
            # Prometheus buckets are "less than or equal": the first bound >= the value
            index = np.searchsorted(LATENCY_BUCKETS, values, side="left")
            self.buckets += np.bincount(index, minlength=len(self.buckets))
            self.total += float(values.sum())
            self.count += len(values)
            self.pending.clear()


class _Endpoint:
    __slots__ = ("divergences", "divergent", "exchanges", "label", "latency", "noisy", "usage")

    def __init__(self, label: str) -> None:
        self.label = label
        self.exchanges: dict[str, int] = {}  # target -> answers
        self.latency: dict[str, _Latency] = {}  # target -> histogram
        self.divergences: dict[str, int] = {}  # kind -> exchanges
        self.divergent = 0  # exported at 0 from the first exchange: ratios never lack it
        self.noisy = 0
        # target -> [answers reporting usage, db calls, db seconds, cache hits, cache misses]
        self.usage: dict[str, list[float]] = {}


class ExchangeSeries:
    """A Prometheus collector (``registry.register(series)``) fed by ``observe``."""

    def __init__(self, max_endpoints: int) -> None:
        self._max_endpoints = max_endpoints
        self._endpoints: dict[str, _Endpoint] = {}
        self._other: _Endpoint | None = None

    def observe(self, exchange: Exchange, diff: ExchangeDiff) -> None:
        endpoint = exchange.endpoint
        series = self._endpoints.get(endpoint) or self._series(endpoint)
        exchanges = series.exchanges
        latencies = series.latency
        for target, answer in exchange.answers.items():
            exchanges[target] = exchanges.get(target, 0) + 1
            if answer.error is None:
                latency = latencies.get(target)
                if latency is None:
                    latency = latencies[target] = _Latency()
                latency.pending.append(answer.latency)
                # usage comes from Server-Timing, which most answers do not carry
                # (timing_of, without a call when already parsed)
                timing = answer.parsed_timing
                if timing is None:
                    timing = timing_of(answer)
                usage = usage_of(answer) if timing else None
                if usage is not None:
                    cell = series.usage.get(target)
                    if cell is None:
                        cell = series.usage[target] = [0.0, 0.0, 0.0, 0.0, 0.0]
                    cell[0] += 1
                    if usage.db_calls == usage.db_calls:  # not NaN
                        cell[1] += usage.db_calls
                    if usage.db_ms == usage.db_ms:
                        cell[2] += usage.db_ms / 1000
                    if usage.hits == usage.hits:
                        cell[3] += usage.hits
                        cell[4] += usage.misses
        candidate = diff.candidate
        if candidate:
            series.divergent += 1
            kinds = series.divergences
            # each kind once per exchange (one difference: no set needed); the enum's
            # ``value`` property costs more than its ``_value_``
            if len(candidate) == 1:
                kind = candidate[0].kind._value_
                kinds[kind] = kinds.get(kind, 0) + 1
            else:
                for kind in {d.kind._value_ for d in candidate}:
                    kinds[kind] = kinds.get(kind, 0) + 1
        if diff.secondary:
            series.noisy += 1

    def _series(self, endpoint: str) -> _Endpoint:
        # Names are cut where they are made (``shadowd.endpoints``); records from elsewhere (a
        # capture file, a GoReplay file) are cut here too, and names equal once cut share one
        # series: Prometheus refuses two series with the same labels.
        label = bounded(endpoint)
        series = self._endpoints.get(label)
        if series is not None:
            return series
        if len(self._endpoints) < self._max_endpoints:
            series = self._endpoints[label] = _Endpoint(label)
            return series
        if self._other is None:
            self._other = self._endpoints.get(OTHER) or _Endpoint(OTHER)
        return self._other

    def label(self, endpoint: str) -> str:
        """The label value an endpoint's series carry (``other`` past the cap)."""
        return (self._endpoints.get(endpoint) or self._series(endpoint)).label

    def _all(self) -> list[_Endpoint]:
        every = list(self._endpoints.values())
        if self._other is not None and self._other not in every:
            every.append(self._other)
        return every

    def collect(self) -> Iterator[Any]:
        exchanges = CounterMetricFamily(
            "shadowd_exchanges",
            "Answers received per target and endpoint (mirrored exchanges)",
            labels=["target", "endpoint"],
        )
        divergences = CounterMetricFamily(
            "shadowd_divergences",
            "Exchanges where the candidate differs from the primary, per kind "
            "(each kind counted once per exchange)",
            labels=["endpoint", "kind"],
        )
        divergent = CounterMetricFamily(
            "shadowd_divergent_exchanges",
            "Exchanges with any candidate difference",
            labels=["endpoint"],
        )
        noisy = CounterMetricFamily(
            "shadowd_noisy_exchanges",
            "Exchanges where the secondary differs from the primary",
            labels=["endpoint"],
        )
        latency = HistogramMetricFamily(
            "shadowd_upstream_latency_seconds",
            "Time to a target's complete answer (answers that failed are left out)",
            labels=["target", "endpoint"],
        )
        usage_answers = CounterMetricFamily(
            "shadowd_usage_answers",
            "Answers that reported their work in Server-Timing (the companion middleware)",
            labels=["target", "endpoint"],
        )
        db_calls = CounterMetricFamily(
            "shadowd_db_calls",
            "DB calls the answers reported (Server-Timing db-calls)",
            labels=["target", "endpoint"],
        )
        db_seconds = CounterMetricFamily(
            "shadowd_db_seconds",
            "Time in DB calls the answers reported (Server-Timing db)",
            labels=["target", "endpoint"],
        )
        cache = CounterMetricFamily(
            "shadowd_cache_lookups",
            "Cache lookups the answers reported, by result (Server-Timing cache-hits/-misses)",
            labels=["target", "endpoint", "result"],
        )
        for series in self._all():
            label = series.label
            for target, (answers, calls, seconds, hits, misses) in series.usage.items():
                usage_answers.add_metric([target, label], answers)
                db_calls.add_metric([target, label], calls)
                db_seconds.add_metric([target, label], seconds)
                cache.add_metric([target, label, "hit"], hits)
                cache.add_metric([target, label, "miss"], misses)
            for target, count in series.exchanges.items():
                exchanges.add_metric([target, label], count)
            for kind, count in series.divergences.items():
                divergences.add_metric([label, kind], count)
            divergent.add_metric([label], series.divergent)
            noisy.add_metric([label], series.noisy)
            for target, hist in series.latency.items():
                hist.settle()
                cumulative = hist.buckets.cumsum()
                latency.add_metric(
                    [target, label],
                    [(le, float(n)) for le, n in zip(_LE, cumulative, strict=True)],
                    hist.total,
                )
        yield from (exchanges, divergences, divergent, noisy, latency)
        yield from (usage_answers, db_calls, db_seconds, cache)

"""Statistics per endpoint and per field path, fed one diffed exchange at a time (pure).

``Aggregator.add`` runs once per completed exchange, off the request path but thousands of
times a second: it does O(number of differences) work and allocates little. Memory is bounded
however long the daemon runs:

- endpoints: ``[endpoints] max`` plus one ``other`` (also capped upstream; defended here);
- field paths per endpoint: ``[diff] max_fields_per_endpoint``, the rest under ``<other>``;
- samples per endpoint: ``[diff] samples_per_endpoint``, each with at most
  ``SAMPLE_DIFFERENCES`` differences and ``SAMPLE_HEADERS`` request headers, values cut
  (about 3 KiB a sample); once full, refreshed at most every ``SAMPLE_INTERVAL``;
- latency: HDR histograms, 1 µs to 60 s at 2 significant digits (±1 %), 32-bit counts:
  11 KiB each, allocated for the targets that answer (measured: 200 endpoints x 3 targets
  = 6.6 MiB). A histogram whose count reaches 2**32-1 is halved, so a count never wraps.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from shadowd.bounds import MAX_NAME_CHARS, bounded
from shadowd.config import Config
from shadowd.diff.engine import MAX_DIFFERENCES
from shadowd.diff.model import Difference, ExchangeDiff
from shadowd.diff.timing import Metrics as TimingMetrics
from shadowd.diff.timing import timing_of
from shadowd.endpoints import OTHER
from shadowd.exchange import Answer, Exchange, Headers
from shadowd.metrics import Metrics
from shadowd.noise import likely_noise
from shadowd.redact import MARKER, Redaction, Unreadable

OTHER_FIELD = "<other>"
LATENCY_MIN_US = 1
LATENCY_MAX_US = 60_000_000
LATENCY_DIGITS = 2
_COUNT_LIMIT = 2**32 - 1  # 32-bit histogram counts: halve before any can wrap
SAMPLE_DIFFERENCES = 20  # differences listed per sample; the rest are counted
SAMPLE_HEADERS = 32  # request headers kept per sample
SAMPLE_VALUE_CHARS = 256  # header values and the request target are cut to this
# Each answer's body in a sample, decoded, is cut to this: 20 samples x 3 targets x 2 KiB is
# at most 120 KiB per endpoint (24 MiB for 200 endpoints), and only divergent exchanges have
# samples. The dashboard shows the three side by side.
SAMPLE_BODY_BYTES = 2048
SAMPLE_INTERVAL = 0.05  # seconds between two samples of an endpoint once its deque is full
SERVER_TIMING_METRICS = 32  # distinct Server-Timing metric names averaged per endpoint


def endpoint_id(endpoint: str) -> str:
    """A short id for an endpoint: 10 hex digits, stable across restarts, safe in a URL."""
    return hashlib.blake2b(endpoint.encode(), digest_size=5).hexdigest()


def new_latency_histogram() -> HdrHistogram:
    """Microseconds, 1 µs to 60 s, ±1 %, 32-bit counts (see the module docstring)."""
    return HdrHistogram(LATENCY_MIN_US, LATENCY_MAX_US, LATENCY_DIGITS, word_size=4)


_LAYOUT: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _layout(hist: HdrHistogram) -> tuple[np.ndarray, np.ndarray]:
    """Per counts index: the highest value it stands for, and its median value. Every latency
    histogram shares one layout, so this is computed once."""
    layout = _LAYOUT.get(hist.counts_len)
    if layout is None:
        values = [hist.get_value_from_index(i) for i in range(hist.counts_len)]
        layout = _LAYOUT[hist.counts_len] = (
            np.array([hist.get_highest_equivalent_value(v) for v in values], dtype=np.float64),
            np.array([hist._hdr_median_equiv_value(v) for v in values], dtype=np.float64),
        )
    return layout


def latency_summary(hist: HdrHistogram, percentiles: tuple[float, ...]) -> dict[str, float]:
    """``p<q>`` values, ``max`` and ``mean`` in the histogram's unit, exactly as ``hdrh``'s
    own ``get_value_at_percentile``/``get_max_value``/``get_mean_value`` give them, in one
    vectorised pass over the counts (``hdrh`` walks 2,560 buckets in Python per call: 4.6 ms;
    this takes ~30 µs, which is what keeps a 200-endpoint report fast)."""
    highest, median = _layout(hist)
    counts = np.ctypeslib.as_array(hist.counts)[: hist.counts_len].astype(np.float64)
    total = hist.get_total_count()
    out: dict[str, float] = {}
    if not total:
        return {**{f"p{q:g}": 0.0 for q in percentiles}, "max": 0.0, "mean": 0.0}
    cumulative = np.cumsum(counts)
    for q in percentiles:
        target = max(int(min(q, 100.0) * total / 100 + 0.5), 1)
        index = int(np.searchsorted(cumulative, target))
        out[f"p{q:g}"] = float(highest[min(index, len(highest) - 1)])
    nonzero = np.flatnonzero(counts)
    out["max"] = float(highest[nonzero[-1]]) if len(nonzero) else 0.0
    out["mean"] = float(np.dot(counts, median) / total)
    return out


_LATENCY_BATCH = 256


def record_many(hist: HdrHistogram, micros: list[int]) -> None:
    """``hist.record_value`` for each value (clamped to the histogram's range), vectorised:
    the same bucket arithmetic as hdrh's ``_counts_index_for``."""
    values = np.clip(
        np.asarray(micros, dtype=np.int64),
        hist.lowest_trackable_value,
        hist.highest_trackable_value,
    )
    # bit length of (value | sub_bucket_mask): exact through frexp for values below 2**53
    bits = np.frexp((values | hist.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
    bucket = bits - hist.unit_magnitude - (hist.sub_bucket_half_count_magnitude + 1)
    sub_bucket = values >> (bucket + hist.unit_magnitude)
    index = ((bucket + 1) << hist.sub_bucket_half_count_magnitude) + (
        sub_bucket - hist.sub_bucket_half_count
    )
    counts = np.ctypeslib.as_array(hist.counts)[: hist.counts_len]
    np.add.at(counts, index, 1)
    hist.total_count += len(values)
    hist.min_value = min(hist.min_value, int(values.min()))
    hist.max_value = max(hist.max_value, int(values.max()))


def add_encoded(hist: HdrHistogram, encoded: bytes) -> None:
    """``hist.decode_and_add(encoded)``, vectorised. A decoded histogram has 64-bit counts
    and ours 32-bit, and for such a pair ``hdrh`` adds index by index in Python (2,560
    indices: ~1.5 ms a histogram, a quarter of a second for a 200-endpoint delta); with the
    same bucket layout the counts add as arrays."""
    other = HdrHistogram.decode(encoded)
    same_layout = (
        other.bucket_count == hist.bucket_count
        and other.sub_bucket_count == hist.sub_bucket_count
        and other.unit_magnitude == hist.unit_magnitude
        and other.counts_len == hist.counts_len
    )
    if not same_layout or other.get_max_value() > hist.highest_trackable_value:
        hist.add(other)
        return
    mine = np.ctypeslib.as_array(hist.counts)[: hist.counts_len]
    theirs = np.ctypeslib.as_array(other.counts)[: other.counts_len]
    np.add(mine, theirs.astype(mine.dtype), out=mine)
    hist.total_count += other.get_total_count()
    hist.max_value = max(hist.max_value, other.get_max_value())
    hist.min_value = min(hist.get_min_value(), other.get_min_value())
    hist.start_time_stamp_msec = min(hist.start_time_stamp_msec, other.start_time_stamp_msec)
    hist.end_time_stamp_msec = max(hist.end_time_stamp_msec, other.end_time_stamp_msec)


def _halved(hist: HdrHistogram) -> HdrHistogram:
    """The same distribution with every count halved: the quantiles keep their shape."""
    half = new_latency_histogram()
    for item in hist.get_recorded_iterator():
        count = item.count_at_value_iterated_to // 2
        if count:
            half.record_value(item.value_iterated_to, count)
    return half


class FieldStats:
    """One generic field path of one endpoint. Every count is at most one per exchange."""

    __slots__ = ("divergent", "kinds", "noise", "noise_kinds", "volatile")

    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}  # kind -> exchanges where the candidate differs so
        self.noise_kinds: dict[str, int] = {}  # kind -> exchanges where the secondary does
        self.divergent = 0  # exchanges where the candidate differs here
        self.noise = 0  # exchanges where the secondary differs here
        self.volatile = 0  # of the divergent ones: both values look like ids or clocks


class EndpointStats:
    """Everything counted for one endpoint since the start or the last reset."""

    def __init__(self, endpoint: str, samples: int) -> None:
        self.endpoint = endpoint
        self.id = endpoint_id(endpoint)
        self.exchanges = 0
        self.divergent = 0  # exchanges where the candidate differs from the primary
        self.noisy = 0  # exchanges where the secondary differs from the primary
        self.noise_exchanges = 0  # exchanges with a noise baseline's answer (secondary/probe)
        self.overflow = 0  # differences not listed because of the diff engine's per-pair cap
        self.errors: dict[str, int] = {}  # target -> answers that failed (``Answer.error``)
        self.statuses: dict[str, dict[str, int]] = {}  # target -> "2xx" -> answers
        self._latency: dict[str, HdrHistogram] = {}  # target -> µs, answers that did not fail
        self._pending: dict[str, list[int]] = {}  # target -> µs not yet in its histogram
        self.fields: dict[str, FieldStats] = {}
        # Divergent exchanges kept for samples, each built (redacted, bounded) only when read:
        # see PendingSample.
        self.sample_ring: deque[dict[str, Any] | PendingSample] = deque(maxlen=samples)
        self.last_sample_at = 0.0  # received_at of the newest sample's request
        self.absorbed: dict[str, int] = {}  # rule name -> differences it absorbed
        self.by_digest = 0  # exchanges whose bodies were over the size limit: hash and size only
        # Server-Timing metric -> target -> [sum of dur ms, count]
        self.timing: dict[str, dict[str, list[float]]] = {}

    @property
    def samples(self) -> deque[dict[str, Any]]:
        """The samples, oldest first, every pending one built now."""
        self.newest_samples(len(self.sample_ring))
        return self.sample_ring  # type: ignore[return-value]  # every entry is built now

    def newest_samples(self, n: int) -> list[dict[str, Any]]:
        """The newest ``n`` samples, oldest first, built (once: in place)."""
        ring = self.sample_ring
        newest = []
        for i in range(max(0, len(ring) - n), len(ring)):
            kept = ring[i]
            if isinstance(kept, PendingSample):
                kept = ring[i] = kept.build()
            newest.append(kept)
        return newest

    @property
    def latency(self) -> dict[str, HdrHistogram]:
        """Target -> latency histogram (µs), with every recorded latency in it."""
        for target in self._pending:
            self._flush(target)
        return self._latency

    def latency_parts(self) -> tuple[dict[str, HdrHistogram], dict[str, list[int]]]:
        """The histograms as they are, and per target the latencies (µs) not yet in them.
        A delta carries those few values as they are: making and encoding a histogram for
        ten values cost more than counting the exchanges (200 endpoints every second)."""
        return self._latency, self._pending

    def record_latencies_us(self, target: str, micros: list[int]) -> None:
        pending = self._pending.get(target)
        if pending is None:
            pending = self._pending[target] = []
        pending.extend(micros)
        if len(pending) >= _LATENCY_BATCH:
            self._flush(target)

    def record_latency(self, target: str, seconds: float) -> None:
        # Recorded in batches: hdrh's record_value is Python, ~6.5 µs a value; a batch of
        # 256 goes in with numpy at ~0.1 µs a value (measured), and latency is recorded
        # for every target of every exchange.
        pending = self._pending.get(target)
        if pending is None:
            pending = self._pending[target] = []
        pending.append(int(seconds * 1_000_000))
        if len(pending) >= _LATENCY_BATCH:
            self._flush(target)

    def _flush(self, target: str) -> None:
        pending = self._pending.get(target)
        if not pending:
            return
        hist = self._latency.get(target)
        if hist is None:
            hist = self._latency[target] = new_latency_histogram()
        elif hist.get_total_count() + len(pending) > _COUNT_LIMIT:
            hist = self._latency[target] = _halved(hist)
        record_many(hist, pending)
        pending.clear()

    def add_latency_histogram(self, target: str, encoded: bytes) -> None:
        """Add another histogram of this target's latencies (``HdrHistogram.encode()``)."""
        self._flush(target)
        hist = self._latency.get(target)
        if hist is None:
            hist = self._latency[target] = new_latency_histogram()
        add_encoded(hist, encoded)
        if hist.get_total_count() >= _COUNT_LIMIT:
            self._latency[target] = _halved(hist)

    def field(self, path: str, limit: int) -> tuple[str, FieldStats]:
        """The stats of a field path (``<other>`` once ``limit`` paths are known)."""
        if len(path) > MAX_NAME_CHARS:
            path = bounded(path)
        stats = self.fields.get(path)
        if stats is not None:
            return path, stats
        if len(self.fields) >= limit:
            path = OTHER_FIELD
            stats = self.fields.get(path)
            if stats is not None:
                return path, stats
        stats = self.fields[path] = FieldStats()
        return path, stats


class Totals:
    """Sums over every endpoint, kept as exchanges arrive."""

    __slots__ = ("divergent", "errors", "exchanges", "noisy")

    def __init__(self) -> None:
        self.exchanges = 0
        self.divergent = 0
        self.noisy = 0
        self.errors: dict[str, int] = {}  # target -> answers that failed


class Aggregator:
    """Pure statistics over diffed exchanges; see the module docstring for its bounds.

    Read by ``shadowd.report``: ``endpoints`` (endpoint -> ``EndpointStats``), ``totals``,
    ``by_id()``, ``started_at`` and ``reset_at`` (wall-clock seconds), ``config``.
    """

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config  # replaced as a whole when the daemon reloads its config
        self._metrics = metrics
        self.started_at = time.time()
        self.reset_at = self.started_at
        self.endpoints: dict[str, EndpointStats] = {}
        self._by_id: dict[str, EndpointStats] = {}
        self.totals = Totals()

    def reset(self) -> dict[str, int]:
        """Forget every count and sample (e.g. a new candidate was deployed); records the
        time; answers what was cleared. Prometheus counters are not touched."""
        cleared = {"endpoints": len(self.endpoints), "exchanges": self.totals.exchanges}
        self.endpoints = {}
        self._by_id = {}
        self.totals = Totals()
        self.reset_at = time.time()
        return cleared

    def stats_for(self, endpoint: str) -> EndpointStats:
        """The statistics of ``endpoint`` (``other`` past the cap), created on first use."""
        return self.endpoints.get(endpoint) or self._endpoint(endpoint)

    def by_id(self, endpoint_id_: str) -> EndpointStats | None:
        return self._by_id.get(endpoint_id_)

    def add(self, exchange: Exchange, diff: ExchangeDiff) -> None:
        """Count one completed exchange and its diff."""
        endpoint = exchange.endpoint
        stats = self.endpoints.get(endpoint) or self._endpoint(endpoint)
        totals = self.totals
        stats.exchanges += 1
        totals.exchanges += 1
        stats.overflow += diff.overflow
        by_digest = False
        statuses = stats.statuses
        for target, answer in exchange.answers.items():
            if answer.body_digest is not None:
                by_digest = True
            if answer.error is not None:
                stats.errors[target] = stats.errors.get(target, 0) + 1
                totals.errors[target] = totals.errors.get(target, 0) + 1
                continue
            by_class = statuses.get(target)
            if by_class is None:
                by_class = statuses[target] = {}
            status = answer.status
            status_class = _STATUS_CLASS_OF.get(status) or _status_class(status)
            by_class[status_class] = by_class.get(status_class, 0) + 1
            stats.record_latency(target, answer.latency)
            timing = answer.parsed_timing  # timing_of, without a call when already parsed
            if timing is None:
                timing = timing_of(answer)
            if timing:
                _server_timing(stats, target, timing)
        if by_digest:
            stats.by_digest += 1
        limit = self.config.diff.max_fields_per_endpoint
        if diff.candidate:
            stats.divergent += 1
            totals.divergent += 1
            _count_candidate(stats, diff.candidate, limit, diff.reordered)
            # Building a sample costs more than the rest of add(): once the deque is full,
            # at most one per SAMPLE_INTERVAL per endpoint (by the request's own clock).
            samples = stats.sample_ring
            received = exchange.request.received_at
            if samples.maxlen and (
                len(samples) < samples.maxlen or received - stats.last_sample_at >= SAMPLE_INTERVAL
            ):
                stats.last_sample_at = received
                samples.append(PendingSample(exchange, diff, self.config))
        if diff.secondary is not None:
            stats.noise_exchanges += 1
        if diff.secondary:
            stats.noisy += 1
            totals.noisy += 1
            for field, kind, new_path, new_kind, _ in _field_counts(stats, diff.secondary, limit):
                if new_kind:
                    field.noise_kinds[kind] = field.noise_kinds.get(kind, 0) + 1
                if new_path:
                    field.noise += 1
        if diff.absorbed:
            for rule, count in diff.absorbed.items():
                stats.absorbed[rule] = stats.absorbed.get(rule, 0) + count
        if self._metrics is not None:
            self._metrics.observe_exchange(exchange, diff)

    def _endpoint(self, endpoint: str) -> EndpointStats:
        """First exchange of an endpoint. Past ``[endpoints] max`` names (the classifier's cap,
        defended here too) it is counted under ``other``."""
        if len(self.endpoints) >= self.config.endpoints.max and endpoint != OTHER:
            endpoint = OTHER
            stats = self.endpoints.get(OTHER)
            if stats is not None:
                return stats
        stats = EndpointStats(endpoint, self.config.diff.samples_per_endpoint)
        self.endpoints[endpoint] = stats
        self._by_id[stats.id] = stats
        return stats


_STATUS_CLASSES = {i: f"{i}xx" for i in range(1, 6)}
# status -> its class, for the statuses HTTP defines (one lookup instead of a division too)
_STATUS_CLASS_OF = {status: f"{status // 100}xx" for status in range(100, 600)}


def _status_class(status: int) -> str:
    return _STATUS_CLASSES.get(status // 100, "other")


def _field_counts(
    stats: EndpointStats, differences: list[Difference], limit: int
) -> Iterator[tuple[FieldStats, str, bool, bool, Difference]]:
    """Per difference of one exchange: its field's stats, its kind, and whether its path, and
    its (path, kind), come up for the first time in this exchange (each counts once)."""
    counted: set[str] = set()
    kinds_counted: set[tuple[str, str]] = set()
    fields = stats.fields
    for difference in differences:
        path = difference.generic_path
        # the field's stats at once when it is known (``EndpointStats.field``)
        field = fields.get(path) if len(path) <= MAX_NAME_CHARS else None
        if field is None:
            path, field = stats.field(path, limit)
        kind = difference.kind._value_  # the enum's ``value`` property costs more
        # a path not counted yet has no (path, kind) counted either
        new_path = path not in counted
        new_kind = new_path or (path, kind) not in kinds_counted
        if new_kind:
            kinds_counted.add((path, kind))
        if new_path:
            counted.add(path)
        yield field, kind, new_path, new_kind, difference


def _count_candidate(
    stats: EndpointStats,
    differences: list[Difference],
    limit: int,
    reordered: frozenset[str] = frozenset(),
) -> None:
    """Field counts for one exchange: each path, and each (path, kind), at most once."""
    for field, kind, new_path, new_kind, difference in _field_counts(stats, differences, limit):
        if new_kind:
            field.kinds[kind] = field.kinds.get(kind, 0) + 1
        if new_path:
            field.divergent += 1
            if likely_noise(difference, reordered):
                field.volatile += 1


def _server_timing(stats: EndpointStats, target: str, timing: TimingMetrics) -> None:
    for name, fields in timing.items():
        dur = fields.get("dur")
        if isinstance(dur, float) and (
            name in stats.timing or len(stats.timing) < SERVER_TIMING_METRICS
        ):
            cell = stats.timing.setdefault(name, {}).setdefault(target, [0.0, 0])
            cell[0] += dur
            cell[1] += 1


# -- samples ----------------------------------------------------------------------------------
_DEFAULT_POLICY = Redaction()
_policy_cache: tuple[Any, Redaction] = (None, _DEFAULT_POLICY)


def sample_policy(config: Config | None) -> Redaction:
    """The redaction samples apply: ``shadowd.redact``'s rules plus the ``[capture]`` lists
    (an analysis worker holds the whole config, so samples honour them as the capture does).
    Samples always show ``[redacted]``, never a keyed hash."""
    global _policy_cache
    capture = config.capture if config is not None else None
    if capture is None:
        return _DEFAULT_POLICY
    cached_for, policy = _policy_cache
    if cached_for is not capture:
        policy = Redaction.from_config(capture)
        _policy_cache = (capture, policy)
    return policy


def is_sample_secret(name: str, policy: Redaction = _DEFAULT_POLICY) -> bool:
    """Header names whose values samples never show (``shadowd.redact``'s header rule)."""
    return policy.secret_header(name)


def _cut(text: str) -> str:
    return text if len(text) <= SAMPLE_VALUE_CHARS else text[:SAMPLE_VALUE_CHARS] + "…"


def sample_headers(headers: Headers, policy: Redaction = _DEFAULT_POLICY) -> list[list[str]]:
    """Request headers as a sample shows them: at most ``SAMPLE_HEADERS``, secrets replaced
    by ``[redacted]``, long values cut."""
    shown = []
    for name, value in headers[:SAMPLE_HEADERS]:
        text = name.decode("latin-1")
        secret = policy.secret_header(text)
        shown.append([_cut(text), MARKER if secret else _cut(value.decode("latin-1"))])
    return shown


BodyKey = tuple[bytes, bytes | None, bytes | None]


def _sample_body(
    answer: Answer, policy: Redaction, seen: dict[BodyKey, str | None] | None = None
) -> str | None:
    """The start of a body as the dashboard shows it beside the other targets' (decoded,
    secrets replaced, at most ``SAMPLE_BODY_BYTES``); None when there is none to show.
    ``seen`` holds the bodies already prepared for this sample: the targets often answer
    the same bytes (decoding and redacting one costs ~20 µs a KiB)."""
    if answer.error is not None or answer.body_truncated or not answer.body:
        return None
    key = (answer.body, answer.header(b"content-encoding"), answer.header(b"content-type"))
    if seen is not None and key in seen:
        return seen[key]
    try:
        shown: str | None = policy.readable_body(answer.body, answer.headers)[
            :SAMPLE_BODY_BYTES
        ].decode("utf-8", "replace")
    except Unreadable:
        shown = None
    if seen is not None:
        seen[key] = shown
    return shown


def _answer_summary(
    answer: Answer,
    policy: Redaction = _DEFAULT_POLICY,
    seen: dict[BodyKey, str | None] | None = None,
) -> dict[str, Any]:
    return {
        "status": answer.status,
        "error": answer.error,
        "latency_ms": round(answer.latency * 1000, 3),
        "body_bytes": answer.body_size,
        "headers": sample_headers(answer.headers, policy),
        "body": _sample_body(answer, policy, seen),
    }


class PendingSample:
    """A divergent exchange held for a sample, built only when someone reads it. Building
    one (decoding and redacting three bodies) costs more than counting the exchange, and an
    analysis worker sends a fresh delta every second, whose empty sample rings would take
    nearly every divergent exchange of a spread-out load (200 endpoints at 10 req/s each:
    2,000 built a second) while the delta carries at most ``DELTA_SAMPLES`` of them."""

    __slots__ = ("config", "diff", "exchange")

    def __init__(self, exchange: Exchange, diff: ExchangeDiff, config: Config | None) -> None:
        self.exchange, self.diff, self.config = exchange, diff, config

    def build(self) -> dict[str, Any]:
        return _sample(self.exchange, self.diff, self.config)


def _sample(exchange: Exchange, diff: ExchangeDiff, config: Config | None = None) -> dict[str, Any]:
    """A divergent exchange as the samples endpoint shows it, secrets redacted, bounded."""
    policy = sample_policy(config)
    bodies: dict[BodyKey, str | None] = {}  # the targets' bodies, each prepared once
    secondary = exchange.secondary
    noise_by_path: dict[str, Difference] = {d.path: d for d in diff.secondary or ()}
    # Where the secondary's diff has no difference at a path, the secondary agrees with the
    # primary there, as long as it answered and its diff was complete (not cut at the cap).
    secondary_agrees = (
        secondary is not None
        and secondary.error is None
        and diff.secondary is not None
        and len(diff.secondary) < MAX_DIFFERENCES
    )
    differences = []
    for d in diff.candidate[:SAMPLE_DIFFERENCES]:
        entry: dict[str, Any] = {
            "path": bounded(d.path),
            "generic_path": bounded(d.generic_path),
            "kind": d.kind.value,
            "primary": policy.value_at(d.path, d.reference),
            "candidate": policy.value_at(d.path, d.other),
        }
        noise = noise_by_path.get(d.path)
        if noise is not None:
            entry["secondary"] = policy.value_at(d.path, noise.other)
        elif secondary_agrees:
            entry["secondary"] = entry["primary"]
        differences.append(entry)
    request = exchange.request
    return {
        "exchange": exchange.id,
        "time": request.received_at,
        "request": {
            "method": _cut(request.method),
            "target": _cut(policy.target(request.target)),
            "headers": sample_headers(request.headers, policy),
        },
        "answers": {
            name: _answer_summary(a, policy, bodies) for name, a in exchange.answers.items()
        },
        "differences": differences,
        # differences not listed: past the sample's own cap, and past the diff engine's
        "overflow": diff.overflow + max(0, len(diff.candidate) - SAMPLE_DIFFERENCES),
    }

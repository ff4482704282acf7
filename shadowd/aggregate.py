"""Statistics per endpoint and per field path, fed one diffed exchange at a time (pure).

Memory is bounded however long the daemon runs: endpoints are capped upstream
(``[endpoints] max``), field paths per endpoint by ``[diff] max_fields_per_endpoint``
(the rest counted under ``<other>``), samples per endpoint by ``samples_per_endpoint``, and
latency lives in fixed-size HDR histograms (1 µs to 60 s, 2 significant digits: ±1 %,
20 KiB each).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from typing import Any

from hdrh.histogram import HdrHistogram

from shadowd.config import Config
from shadowd.diff.model import Difference, ExchangeDiff
from shadowd.diff.timing import parse_server_timing
from shadowd.exchange import TARGET_NAMES, Answer, Exchange
from shadowd.metrics import Metrics
from shadowd.redact import redact_headers, redact_target, redact_value_at

OTHER_FIELD = "<other>"
_LATENCY_MAX_US = 60_000_000


_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
    r"[0-9a-fA-F]{12}$"
)
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")
_HTTP_DATE = re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$")
_TOKEN = re.compile(r"^[A-Za-z0-9+/_=\-]{20,}$")


def looks_volatile(value: Any) -> bool:
    """Values that differ on every answer of any release: ids, tokens, clocks near now."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        now = time.time()
        return abs(value - now) < 5 * 365 * 86400 or abs(value / 1000 - now) < 5 * 365 * 86400
    if isinstance(value, str):
        return bool(
            _UUID.match(value)
            or _TIMESTAMP.match(value)
            or _HTTP_DATE.match(value)
            or (_TOKEN.match(value) and any(c.isdigit() for c in value))
        )
    return False


def endpoint_id(endpoint: str) -> str:
    """A short id, stable across restarts, safe in a URL."""
    return hashlib.blake2b(endpoint.encode(), digest_size=5).hexdigest()


class FieldStats:
    __slots__ = ("divergent", "kinds", "noise", "volatile")

    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}
        self.divergent = 0  # exchanges where the candidate differs here
        self.noise = 0  # exchanges where the secondary differs here
        self.volatile = 0  # of the divergent ones: both values look like ids or clocks


class EndpointStats:
    def __init__(self, endpoint: str, samples: int) -> None:
        self.endpoint = endpoint
        self.id = endpoint_id(endpoint)
        self.exchanges = 0
        self.divergent = 0
        self.noisy = 0
        self.overflow = 0  # differences not listed because of the per-pair cap
        self.errors = dict.fromkeys(TARGET_NAMES, 0)
        self.statuses: dict[str, dict[str, int]] = {t: {} for t in TARGET_NAMES}
        self.latency: dict[str, HdrHistogram] = {}
        self.fields: dict[str, FieldStats] = {}
        self.samples: deque[dict[str, Any]] = deque(maxlen=samples)
        self.absorbed: dict[str, int] = {}  # rule name -> differences it absorbed
        self.by_digest = 0  # exchanges whose bodies were over the size limit: hash and size only
        # Server-Timing metric -> target -> [sum of dur ms, count]
        self.timing: dict[str, dict[str, list[float]]] = {}

    def histogram(self, target: str) -> HdrHistogram:
        hist = self.latency.get(target)
        if hist is None:
            hist = self.latency[target] = HdrHistogram(1, _LATENCY_MAX_US, 2)
        return hist


class Aggregator:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self._metrics = metrics
        self.endpoints: dict[str, EndpointStats] = {}
        self.reset_at = time.time()

    def reset(self) -> dict[str, int]:
        """Forget everything (e.g. a new candidate was deployed); says what was cleared."""
        cleared = {
            "endpoints": len(self.endpoints),
            "exchanges": sum(e.exchanges for e in self.endpoints.values()),
        }
        self.endpoints = {}
        self.reset_at = time.time()
        return cleared

    def add(self, exchange: Exchange, diff: ExchangeDiff) -> None:
        stats = self.endpoints.get(exchange.endpoint)
        if stats is None:
            stats = self.endpoints[exchange.endpoint] = EndpointStats(
                exchange.endpoint, self.config.diff.samples_per_endpoint
            )
        stats.exchanges += 1
        stats.overflow += diff.overflow
        if any(a.body_digest is not None for a in exchange.answers.values()):
            stats.by_digest += 1
        for target, answer in exchange.answers.items():
            if answer.error is not None:
                stats.errors[target] = stats.errors.get(target, 0) + 1
                status_class = "error"
            else:
                status_class = f"{answer.status // 100}xx"
                if answer.status >= 500:  # errors: what the verdict's error criterion counts
                    stats.errors[target] = stats.errors.get(target, 0) + 1
                micros = int(answer.latency * 1_000_000)
                stats.histogram(target).record_value(min(max(micros, 1), _LATENCY_MAX_US))
            by_class = stats.statuses.setdefault(target, {})
            by_class[status_class] = by_class.get(status_class, 0) + 1
        if diff.candidate:
            stats.divergent += 1
            seen: set[str] = set()
            for difference in diff.candidate:
                field = self._field(stats, difference.generic_path)
                kind = difference.kind.value
                field.kinds[kind] = field.kinds.get(kind, 0) + 1
                if difference.generic_path not in seen:
                    seen.add(difference.generic_path)
                    field.divergent += 1
                    if looks_volatile(difference.reference) and looks_volatile(difference.other):
                        field.volatile += 1
            stats.samples.append(_sample(exchange, diff))
        for rule, count in diff.absorbed.items():
            stats.absorbed[rule] = stats.absorbed.get(rule, 0) + count
        self._timing(stats, exchange)
        if diff.secondary:
            stats.noisy += 1
            for path in {d.generic_path for d in diff.secondary}:
                self._field(stats, path).noise += 1
        if self._metrics is not None:
            self._metrics.observe_exchange(exchange, diff)

    @staticmethod
    def _timing(stats: EndpointStats, exchange: Exchange) -> None:
        for target, answer in exchange.answers.items():
            if answer.error is not None:
                continue
            for name, fields in parse_server_timing(answer.headers).items():
                dur = fields.get("dur")
                if isinstance(dur, float) and (name in stats.timing or len(stats.timing) < 32):
                    cell = stats.timing.setdefault(name, {}).setdefault(target, [0.0, 0])
                    cell[0] += dur
                    cell[1] += 1

    def _field(self, stats: EndpointStats, path: str) -> FieldStats:
        field = stats.fields.get(path)
        if field is None:
            if len(stats.fields) >= self.config.diff.max_fields_per_endpoint:
                path = OTHER_FIELD
                field = stats.fields.get(path)
            if field is None:
                field = stats.fields[path] = FieldStats()
        return field

    def by_id(self, endpoint_id_: str) -> EndpointStats | None:
        for stats in self.endpoints.values():
            if stats.id == endpoint_id_:
                return stats
        return None


def _answer_summary(answer: Answer) -> dict[str, Any]:
    return {
        "status": answer.status,
        "error": answer.error,
        "latency_ms": round(answer.latency * 1000, 3),
        "body_bytes": answer.body_size,
    }


def _sample(exchange: Exchange, diff: ExchangeDiff) -> dict[str, Any]:
    """A divergent exchange as the samples endpoint shows it: secrets redacted."""
    secondary_by_path: dict[str, Difference] = {d.path: d for d in diff.secondary or ()}
    request = exchange.request
    differences = []
    for d in diff.candidate:
        entry: dict[str, Any] = {
            "path": d.path,
            "generic_path": d.generic_path,
            "kind": d.kind.value,
            "primary": redact_value_at(d.path, d.reference),
            "candidate": redact_value_at(d.path, d.other),
        }
        if exchange.secondary is not None:
            noise = secondary_by_path.get(d.path)
            secondary = noise.other if noise is not None else d.reference
            entry["secondary"] = redact_value_at(d.path, secondary)
        differences.append(entry)
    return {
        "exchange": exchange.id,
        "time": request.received_at,
        "request": {
            "method": request.method,
            "target": redact_target(request.target),
            "headers": redact_headers(request.headers),
        },
        "answers": {name: _answer_summary(a) for name, a in exchange.answers.items()},
        "differences": differences,
        "overflow": diff.overflow,
    }

"""What an answer's ``Server-Timing`` says about the work behind it: DB calls, DB time and
cache lookups, in the form the companion middleware writes (``shadowd.middleware``)::

    Server-Timing: db;dur=12.5, db-calls;dur=7, cache-hits;dur=1, cache-misses;dur=0, app;dur=31.2

Read with the diff's own ``parse_server_timing`` (through ``timing_of``), so the daemon and
the diff see the same metrics. An answer without ``db-calls`` and without cache metrics
carries no usage (None): a service without the middleware is simply not judged on it.
"""

from __future__ import annotations

from shadowd.diff.timing import timing_of
from shadowd.exchange import Answer

DB_MS, DB_CALLS, CACHE_HITS, CACHE_MISSES, APP_MS = (
    "db",
    "db-calls",
    "cache-hits",
    "cache-misses",
    "app",
)
_NAN = float("nan")


class Usage:
    """One answer's counts; NaN where the answer does not say (no cache lookup reported)."""

    __slots__ = ("db_calls", "db_ms", "hits", "misses")

    def __init__(self, db_calls: float, db_ms: float, hits: float, misses: float) -> None:
        self.db_calls = db_calls
        self.db_ms = db_ms
        self.hits = hits
        self.misses = misses

    @property
    def lookups(self) -> float:
        return self.hits + self.misses


def _dur(metrics: dict[str, dict[str, str | float]], name: str) -> float:
    value = metrics.get(name, {}).get("dur")
    return value if isinstance(value, float) and value >= 0 else _NAN


def usage_of(answer: Answer | None) -> Usage | None:
    """The usage an answer reports, or None (no answer, a failed one, or no such metrics)."""
    if answer is None or answer.error is not None or answer.status >= 500:
        return None
    metrics = timing_of(answer)
    if not metrics:  # no Server-Timing (or none that parses): nothing reported
        return None
    calls = _dur(metrics, DB_CALLS)
    hits, misses = _dur(metrics, CACHE_HITS), _dur(metrics, CACHE_MISSES)
    if calls != calls and hits != hits and misses != misses:
        return None
    if (hits == hits) != (misses == misses):  # one of the pair: the other is 0
        hits, misses = (0.0 if hits != hits else hits), (0.0 if misses != misses else misses)
    return Usage(calls, _dur(metrics, DB_MS), hits, misses)

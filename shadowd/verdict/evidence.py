"""What the verdict needs beyond the divergence report: paired latencies and error tallies.

Bounded however long the daemon runs: per endpoint (and overall) a reservoir holding a
uniform random sample of latency rows (Vitter's algorithm R), and counters. A row is one
exchange where the candidate answered successfully: the primary's, the secondary's and the
candidate's latency (NaN for a side that failed or is absent), the request's arrival time,
and a code of its endpoint. The latency of an error (a fast 500, a timeout) says nothing
about how fast the service is and is counted as an error instead.

Warm-up: each endpoint also keeps the arrival times of its earliest ``WARMUP_KEEP``
exchanges (a bounded sorted list; merging two is a sorted union, cut again). The judge
leaves out of the latency evidence every row that arrived up to the ``warmup_exchanges``-th
exchange of its endpoint (or within ``warmup_seconds`` of the first one), so a cold
candidate is not failed for its first requests. All of it merges exactly across processes
(``shadowd.analysis.snapshot``).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from dataclasses import dataclass, field

import numpy as np

from shadowd.diff.model import ExchangeDiff
from shadowd.exchange import CANDIDATE, PRIMARY, SECONDARY, Answer, Exchange
from shadowd.usage import usage_of

OVERALL = "*"
WARMUP_KEEP = 500  # the largest ``[verdict] warmup_exchanges`` the evidence can honour
COLUMNS = ("primary", "secondary", "candidate", "at", "code")
_NAN = float("nan")
USAGE_RESERVOIR = 1000  # usage rows kept per endpoint (56 KB)
USAGE_TARGETS = (PRIMARY, SECONDARY, CANDIDATE)
USAGE_FIELDS = ("db_calls", "db_ms", "hits", "misses")
USAGE_WIDTH = len(USAGE_TARGETS) * len(USAGE_FIELDS)
# totals per target: answers that reported usage, then the sum of each field
TOTAL_FIELDS = ("answers", *USAGE_FIELDS)


def endpoint_code(name: str) -> int:
    """A stable 48-bit code of an endpoint name (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=6).digest(), "big")


class PairReservoir:
    """A uniform sample of latency rows (see the module docstring); the arrays are its
    columns, the first ``min(seen, capacity)`` entries of each are in use."""

    __slots__ = ("_rng", "at", "candidate", "capacity", "code", "primary", "secondary", "seen")

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.primary = np.zeros(capacity)
        self.secondary = np.full(capacity, np.nan)
        self.candidate = np.zeros(capacity)
        self.at = np.zeros(capacity)
        self.code = np.zeros(capacity, dtype=np.int64)
        self.seen = 0
        self._rng = random.Random(seed)

    def add(
        self,
        primary: float,
        candidate: float,
        secondary: float = _NAN,
        at: float = 0.0,
        code: int = 0,
    ) -> None:
        seen = self.seen
        self.seen = seen + 1
        capacity = self.capacity
        if seen < capacity:
            slot = seen  # filling: the next slot
        else:  # _slot, inlined: once full, every exchange draws twice (endpoint, overall)
            slot = _below(self._rng, seen + 1)
            if slot >= capacity:
                return
        self.primary[slot] = primary
        self.secondary[slot] = secondary
        self.candidate[slot] = candidate
        self.at[slot] = at
        self.code[slot] = code

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(primary, candidate) of the rows held; NaN where the primary failed."""
        n = min(self.seen, self.capacity)
        return self.primary[:n].copy(), self.candidate[:n].copy()

    def columns(self) -> dict[str, np.ndarray]:
        """Every column of the rows held (copies), by name (``COLUMNS``)."""
        n = min(self.seen, self.capacity)
        return {name: getattr(self, name)[:n].copy() for name in COLUMNS}


def _slot(seen: int, capacity: int, rng: random.Random) -> int | None:
    """Algorithm R: where item number ``seen + 1`` goes in a uniform sample of ``capacity``
    items, or None when it is not kept."""
    if seen < capacity:
        return seen
    slot = _below(rng, seen + 1)
    return slot if slot < capacity else None


def _below(rng: random.Random, n: int) -> int:
    """``rng.randrange(n)`` for n > 0, the same number from the same state (CPython's
    ``Random._randbelow_with_getrandbits``; tests/test_analysis_fast_paths.py holds them
    equal), without randrange's argument handling: once a reservoir is full, every
    exchange draws twice (its endpoint's and the overall one)."""
    k = n.bit_length()
    getrandbits = rng.getrandbits
    r = getrandbits(k)
    while r >= n:
        r = getrandbits(k)
    return r


def usage_column(target: str, name: str) -> int:
    """The column of ``target``'s ``name`` (one of ``USAGE_FIELDS``) in a usage row."""
    return USAGE_TARGETS.index(target) * len(USAGE_FIELDS) + USAGE_FIELDS.index(name)


class UsageReservoir:
    """A uniform sample (algorithm R) of usage rows: ``rows`` (float32, NaN where a side
    did not report; counts stay exact up to 2**24) and their arrival times ``at``."""

    __slots__ = ("_rng", "at", "capacity", "rows", "seen")

    def __init__(self, capacity: int = USAGE_RESERVOIR, seed: int = 0) -> None:
        self.capacity = capacity
        self.rows = np.full((capacity, USAGE_WIDTH), np.nan, dtype=np.float32)
        self.at = np.zeros(capacity)
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, row: list[float], at: float) -> None:
        slot = _slot(self.seen, self.capacity, self._rng)
        self.seen += 1
        if slot is None:
            return
        self.rows[slot] = row
        self.at[slot] = at

    def held(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows as float64, arrival times) of the rows held (copies)."""
        n = min(self.seen, self.capacity)
        return self.rows[:n].astype(np.float64), self.at[:n].copy()


def is_error(answer: Answer | None) -> bool:
    """A transport error or a 5xx: what the error criterion counts."""
    return answer is not None and (answer.error is not None or answer.status >= 500)


@dataclass
class ErrorTally:
    answers: int = 0
    errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, answer: Answer) -> None:
        self.answers += 1
        if answer.error is not None:
            kind = answer.error
        elif answer.status >= 500:
            kind = "5xx"
        else:
            return
        self.errors += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


def merge_earliest(mine: list[float], other: list[float], keep: int = WARMUP_KEEP) -> list[float]:
    """The ``keep`` earliest of two sorted lists of arrival times, sorted."""
    return sorted(mine + other)[:keep]


class EndpointEvidence:
    __slots__ = ("code", "earliest", "errors", "exchanges", "pairs", "usage", "usage_totals")

    def __init__(self, reservoir: int, code: int = 0) -> None:
        self.pairs = PairReservoir(reservoir)
        self.errors = {PRIMARY: ErrorTally(), CANDIDATE: ErrorTally(), SECONDARY: ErrorTally()}
        self.code = code
        self.exchanges = 0  # every exchange recorded, warm-up included
        self.earliest: list[float] = []  # arrival times of the earliest WARMUP_KEEP exchanges
        self.usage: UsageReservoir | None = None  # made on the first answer reporting usage
        # target -> [answers reporting usage, db calls, db ms, cache hits, cache misses]
        self.usage_totals: dict[str, list[float]] = {}

    def record_usage(self, answers: dict[str, Answer], at: float) -> None:
        row: list[float] = []  # made when an answer reports usage (most report none)
        reported = 0
        for index, target in enumerate(USAGE_TARGETS):
            usage = usage_of(answers.get(target))
            if usage is None:
                continue
            if not row:
                row = [_NAN] * USAGE_WIDTH
            reported |= 1 << index
            values = (usage.db_calls, usage.db_ms, usage.hits, usage.misses)
            base = index * len(USAGE_FIELDS)
            row[base : base + len(USAGE_FIELDS)] = values
            totals = self.usage_totals.get(target)
            if totals is None:
                totals = self.usage_totals[target] = [0.0] * len(TOTAL_FIELDS)
            totals[0] += 1
            for i, value in enumerate(values, 1):
                if value == value:
                    totals[i] += value
        # a row pairs the candidate with the primary or the secondary: it needs both sides
        if reported & 0b100 and reported & 0b011:
            if self.usage is None:
                self.usage = UsageReservoir()
            self.usage.add(row, at)

    def note_arrival(self, at: float) -> None:
        self.exchanges += 1
        earliest = self.earliest
        if len(earliest) < WARMUP_KEEP:
            bisect.insort(earliest, at)
        elif at < earliest[-1]:
            bisect.insort(earliest, at)
            earliest.pop()

    def warmup_until(self, exchanges: int, seconds: float) -> float:
        """The arrival time up to which (inclusive) this endpoint is warming up: that of its
        ``exchanges``-th exchange, or ``seconds`` after its first, whichever is later;
        ``inf`` while it has not had ``exchanges`` exchanges yet; ``-inf`` without warm-up."""
        until = -math.inf
        earliest = self.earliest
        if exchanges > 0:
            n = min(exchanges, WARMUP_KEEP)
            until = earliest[n - 1] if len(earliest) >= n else math.inf
        if seconds > 0 and earliest:
            until = max(until, earliest[0] + seconds)
        return until


class VerdictEvidence:
    """Fed every diffed exchange by the diff stage; read by the judge."""

    def __init__(self, max_endpoints: int, reservoir: int = 2000) -> None:
        self._max_endpoints = max_endpoints
        self._reservoir = reservoir
        self.endpoints: dict[str, EndpointEvidence] = {}
        self.overall = EndpointEvidence(reservoir * 4)

    def endpoint_for(self, name: str) -> EndpointEvidence | None:
        """The evidence of an endpoint, created on first use; None past the endpoint cap."""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            if len(self.endpoints) >= self._max_endpoints + 1:  # +1: the "other" endpoint
                return None
            endpoint = self.endpoints[name] = EndpointEvidence(self._reservoir, endpoint_code(name))
        return endpoint

    def record(self, exchange: Exchange, diff: ExchangeDiff | None = None) -> None:
        name = exchange.endpoint
        endpoint = self.endpoints.get(name) or self.endpoint_for(name)
        if endpoint is None:
            return
        at = exchange.request.received_at
        earliest = endpoint.earliest
        if len(earliest) >= WARMUP_KEEP and at >= earliest[-1]:
            endpoint.exchanges += 1  # note_arrival, for an arrival not among the earliest
        else:
            endpoint.note_arrival(at)
        overall = self.overall
        overall.exchanges += 1
        answers = exchange.answers
        errors, overall_errors = endpoint.errors, overall.errors
        # Usage comes from Server-Timing: without any (parsed as empty), none to record.
        timed = False
        for target, answer in answers.items():
            mine, every = errors[target], overall_errors[target]
            if answer.error is None and answer.status < 500:  # ErrorTally.add, inlined
                mine.answers += 1
                every.answers += 1
            else:
                mine.add(answer)
                every.add(answer)
            timing = answer.parsed_timing  # {}: no Server-Timing; None: not read yet
            if timing is None or timing:
                timed = True
        if timed:
            endpoint.record_usage(answers, at)
        candidate = answers.get(CANDIDATE)
        if candidate is None or candidate.error is not None or candidate.status >= 500:
            return
        primary, secondary = answers.get(PRIMARY), answers.get(SECONDARY)
        # is_error, inlined
        p = (
            primary.latency
            if primary is not None and primary.error is None and primary.status < 500
            else _NAN
        )
        s = (
            secondary.latency
            if secondary is not None and secondary.error is None and secondary.status < 500
            else _NAN
        )
        if p != p and s != s:  # NaN: no side to pair the candidate with
            return
        endpoint.pairs.add(p, candidate.latency, s, at, endpoint.code)
        overall.pairs.add(p, candidate.latency, s, at, endpoint.code)

    def reset(self) -> None:
        self.endpoints.clear()
        self.overall = EndpointEvidence(self._reservoir * 4)

"""What the verdict needs beyond the divergence report: paired latencies and error tallies.

Bounded however long the daemon runs: per endpoint (and overall) a reservoir holding a
uniform random sample of (primary, candidate) latency pairs (Vitter's algorithm R), and
counters. Only pairs where both answers succeeded are kept: the latency of an error (a fast
500, a timeout) says nothing about how fast the service is and is counted as an error instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from shadowd.diff.model import ExchangeDiff
from shadowd.exchange import CANDIDATE, PRIMARY, SECONDARY, Answer, Exchange

OVERALL = "*"


class PairReservoir:
    __slots__ = ("_rng", "candidate", "capacity", "primary", "seen")

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.primary = np.zeros(capacity)
        self.candidate = np.zeros(capacity)
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, primary: float, candidate: float) -> None:
        seen = self.seen
        self.seen = seen + 1
        if seen < self.capacity:
            slot = seen
        else:
            slot = self._rng.randrange(seen + 1)
            if slot >= self.capacity:
                return
        self.primary[slot] = primary
        self.candidate[slot] = candidate

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self.seen, self.capacity)
        return self.primary[:n].copy(), self.candidate[:n].copy()


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


class EndpointEvidence:
    __slots__ = ("errors", "pairs")

    def __init__(self, reservoir: int) -> None:
        self.pairs = PairReservoir(reservoir)
        self.errors = {PRIMARY: ErrorTally(), CANDIDATE: ErrorTally(), SECONDARY: ErrorTally()}


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
            endpoint = self.endpoints[name] = EndpointEvidence(self._reservoir)
        return endpoint

    def record(self, exchange: Exchange, diff: ExchangeDiff | None = None) -> None:
        endpoint = self.endpoint_for(exchange.endpoint)
        if endpoint is None:
            return
        answers = exchange.answers
        for name, answer in answers.items():
            endpoint.errors[name].add(answer)
            self.overall.errors[name].add(answer)
        primary, candidate = answers.get(PRIMARY), answers.get(CANDIDATE)
        if (
            primary is not None
            and candidate is not None
            and not is_error(primary)
            and not is_error(candidate)
        ):
            endpoint.pairs.add(primary.latency, candidate.latency)
            self.overall.pairs.add(primary.latency, candidate.latency)

    def reset(self) -> None:
        self.endpoints.clear()
        self.overall = EndpointEvidence(self._reservoir * 4)

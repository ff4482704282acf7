"""A circuit breaker per copy target: a candidate that fails fast stops costing production.

A candidate that resets every connection, answers garbage or refuses connections fails in
microseconds, so the mirror's in-flight cap never fills and every request pays for a
connection attempt, a write and an error path (measured: -32 % production req/s against a
resetting candidate, -44 % against one answering garbage). After ``threshold`` consecutive
transport failures the breaker opens: copies are shed (counted, reason ``target_unhealthy``)
for a back-off window; then one probe copy is let through; its success closes the breaker,
its failure opens it again for twice as long (up to ``max_backoff``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from shadowd.exchange import ERROR_CONNECT, ERROR_PROTOCOL, ERROR_RESET, ERROR_TOO_LARGE

log = logging.getLogger("shadowd.mirror")

# Transport failures that say the target is broken rather than slow. A timeout is not one:
# a slow candidate is held by the in-flight cap, and its latency is evidence for the verdict.
TRIPPING_ERRORS = frozenset(
    {ERROR_CONNECT, ERROR_RESET, ERROR_PROTOCOL, ERROR_TOO_LARGE, "connect_timeout"}
)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    __slots__ = (
        "_backoff",
        "_clock",
        "_failures",
        "_max_backoff",
        "_min_backoff",
        "_opened_at",
        "_probe_at",
        "name",
        "state",
        "threshold",
    )

    def __init__(
        self,
        name: str,
        threshold: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self._min_backoff = self._backoff = backoff
        self._max_backoff = max_backoff
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probe_at: float | None = None
        self.state = CLOSED

    def allow(self) -> bool:
        """Whether a copy may go to this target now (the hot path: one comparison when
        closed). In the half-open state one probe is allowed per back-off window, so a probe
        whose answer never comes does not keep the breaker open forever."""
        if self.state == CLOSED:
            return True
        now = self._clock()
        if self.state == OPEN:
            if now - self._opened_at < self._backoff:
                return False
            self.state = HALF_OPEN
        if self._probe_at is None or now - self._probe_at >= self._backoff:
            self._probe_at = now
            return True
        return False

    def record(self, error: str | None) -> None:
        """The outcome of one copy: ``Answer.error`` (None for any complete answer)."""
        if error is None or error not in TRIPPING_ERRORS:
            if self.state != CLOSED:
                log.info("copy target healthy again: copies resume", extra={"target": self.name})
            self.state = CLOSED
            self._failures = 0
            self._backoff = self._min_backoff
            self._probe_at = None
            return
        self._failures += 1
        if self.state == HALF_OPEN:  # the probe failed: wait twice as long
            self._backoff = min(self._backoff * 2, self._max_backoff)
            self._open()
        elif self.state == CLOSED and self._failures >= self.threshold:
            self._open(error)

    def _open(self, error: str = "") -> None:
        if self.state == CLOSED:
            log.warning(
                "copy target failing: copies shed while it recovers",
                extra={
                    "target": self.name,
                    "failures": self._failures,
                    "error": error,
                    "backoff_s": self._backoff,
                },
            )
        self.state = OPEN
        self._opened_at = self._clock()
        self._probe_at = None

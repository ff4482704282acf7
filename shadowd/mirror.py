"""Copying sampled requests to the mirror targets, off the request path, with bounded load.

The primary's client never waits on anything here: a copy either gets an in-flight slot at
once, waits in a bounded queue, or is dropped and counted. A finished exchange (every answer
in, primary's included) goes to ``deliver`` — the hand-off to the analysis plane.

Two more bounds keep a broken candidate away from production: a circuit breaker per copy
target (``shadowd.breaker``: a target that fails fast is not sent copies for a while), and
``[mirror] max_pending_bytes``, the bodies held for exchanges still waiting for answers (a
hung candidate with 1 MiB primary answers would otherwise hold gigabytes).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from collections import deque
from collections.abc import Callable

from shadowd.breaker import CircuitBreaker
from shadowd.config import Config
from shadowd.exchange import CUT_DIGEST, ERROR_TOO_LARGE, Answer, Exchange, Headers
from shadowd.metrics import Metrics
from shadowd.upstream.collect import AnswerCollector
from shadowd.upstream.pool import UpstreamPool
from shadowd.upstream.request import IDEMPOTENT_METHODS, RequestTemplate

# Cache validators: every instance has its own ETags and clocks, so a copy carrying the
# client's validators gets 304 from one instance and 200 from another, and the exchange
# differs in status, headers and body every time. Copies go without them.
_CONDITIONAL = frozenset({b"if-none-match", b"if-modified-since"})


class PendingExchange:
    """An exchange waiting for its answers. The wire form of the request is kept only until
    the copies are sent."""

    __slots__ = (
        "abandoned",
        "conditional",
        "exchange",
        "has_host",
        "headers",
        "held",
        "method",
        "mirror_remaining",
        "primary_done",
        "sent",
        "target",
    )

    def __init__(
        self,
        exchange: Exchange,
        method: bytes,
        target: bytes,
        headers: Headers,
        has_host: bool,
    ) -> None:
        self.exchange = exchange
        self.method = method
        self.target = target
        self.headers = headers
        self.has_host = has_host
        self.sent = False
        self.mirror_remaining = 0  # copies sent and not answered yet
        self.primary_done = False
        self.abandoned = False
        self.held = 0  # body bytes this exchange holds (counted in Mirror.pending_bytes)
        self.conditional = False  # the client's request was conditional; copies are not


class Mirror:
    def __init__(
        self,
        config: Config,
        pools: dict[str, UpstreamPool],
        metrics: Metrics,
        deliver: Callable[[Exchange], object],
    ) -> None:
        self._metrics = metrics
        self._deliver = deliver
        self._pools = pools
        self._ids = itertools.count(1)
        self._queue: deque[PendingExchange] = deque()
        self._in_flight = 0
        self._idle_waiter: asyncio.Event | None = None
        self._breakers: dict[str, CircuitBreaker] = {}
        self.pending_bytes = 0
        self.enabled = config.mirror.enabled
        self.configure(config)
        metrics.watch_mirror(lambda: len(self._queue), lambda: self._in_flight)
        metrics.set_mirror_enabled(self.enabled)

    def reconfigure(self, config: Config, pools: dict[str, UpstreamPool]) -> None:
        """Take a reloaded config; copies already sent finish on their old targets."""
        self._pools = pools
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take the mirroring settings of ``config``."""
        mirror = config.mirror
        self._sample_rate = mirror.sample_rate
        self._methods = frozenset(m.encode("ascii") for m in mirror.methods)
        self._include = [re.compile(p) for p in mirror.include_paths]
        self._exclude = [re.compile(p) for p in mirror.exclude_paths]
        self._queue_size = mirror.queue_size
        self._max_in_flight = mirror.max_in_flight
        self._max_body = mirror.max_body_bytes
        self._max_pending_bytes = mirror.max_pending_bytes
        self._strip_conditional = mirror.strip_conditional
        self._answer_limit = config.diff.max_body_bytes
        self._answer_cut = mirror.max_answer_bytes
        # In tap mode nobody else asks the primary: it is one more target of the copy.
        self._tap = config.ingress.mode == "tap"
        targets = (config.primary, *config.mirror_targets) if self._tap else config.mirror_targets
        self._targets = [(t.name, self._pools[t.name], RequestTemplate(t)) for t in targets]
        # A reload keeps a target's breaker (its health did not change with the file).
        self._breakers = {
            t.name: self._breakers.get(t.name)
            or CircuitBreaker(t.name, mirror.breaker_failures, mirror.breaker_backoff)
            for t in targets
        }
        self._breaker_list = list(self._breakers.values())
        # The primary-twice probe ([noise] primary_probe): the baseline target that is the
        # primary again goes to this share of the exchanges only (it is production's load).
        probe = config.probe
        self._probe_share = config.noise.primary_probe if probe is not None else 1.0
        self._probe_name = probe.name if probe is not None else None
        self._probe_draw = random.Random(0x5EED).random  # seeded: a run is reproducible

    async def wait_idle(self) -> None:
        """Until no copy is in flight or queued (shutdown, tests)."""
        while self._in_flight or self._queue:
            self._idle_waiter = asyncio.Event()
            await self._idle_waiter.wait()
        self._idle_waiter = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        self._metrics.set_mirror_enabled(enabled)
        if not enabled:
            # The kill switch also empties the queue: nothing more reaches the candidate.
            while self._queue:
                self.abandon(self._queue.popleft(), "disabled")

    # -- called by the ingress for every request ------------------------------------------
    def wants(self, method: bytes, path: str, body_size: int) -> bool:
        """Whether this request should be copied; counts why when it is not."""
        metrics = self._metrics
        if not self.enabled:
            metrics.mirror_skipped("disabled")
            return False
        if method not in self._methods:
            metrics.mirror_skipped("method")
            return False
        if self._include and not any(p.search(path) for p in self._include):
            metrics.mirror_skipped("path")
            return False
        if self._exclude and any(p.search(path) for p in self._exclude):
            metrics.mirror_skipped("path")
            return False
        if self._sample_rate < 1.0 and random.random() >= self._sample_rate:
            metrics.mirror_skipped("sampled_out")
            return False
        if body_size > self._max_body:
            metrics.mirror_dropped("request_body_too_large")
            return False
        return True

    def start(
        self,
        exchange: Exchange,
        method: bytes,
        target: bytes,
        headers: Headers,
        has_host: bool,
    ) -> PendingExchange | None:
        """Send (or queue) the copies. ``None``: dropped and counted, do not track the primary."""
        exchange.id = next(self._ids)
        for breaker in self._breaker_list:
            if not breaker.allow():
                self._metrics.mirror_dropped("target_unhealthy")
                return None
        size = len(exchange.request.body)
        if self.pending_bytes + size > self._max_pending_bytes:
            self._metrics.mirror_dropped("pending_bytes")
            return None
        pending = PendingExchange(exchange, method, target, headers, has_host)
        pending.held = size
        if self._strip_conditional:
            pending.conditional = any(name.lower() in _CONDITIONAL for name, _ in headers)
        self.pending_bytes += size
        pending.primary_done = self._tap  # tap: the primary's answer comes with the copies
        if self._in_flight < self._max_in_flight:
            self._send(pending)
        elif len(self._queue) < self._queue_size:
            self._queue.append(pending)
        else:
            self._release(pending)
            self._metrics.mirror_dropped("queue_full")
            return None
        return pending

    def primary_answered(self, pending: PendingExchange, answer: Answer) -> None:
        if pending.abandoned:
            return
        if pending.conditional and answer.status == 304:
            # The client's cache is fresh; the copies went without its validators and are
            # answered in full: nothing to compare them with. Counted, not diffed.
            pending.abandoned = True
            self._metrics.mirror_skipped("not_modified")
            self._release(pending)
            pending.exchange.answers = {}
            return
        if not self._hold(pending, len(answer.body)):
            return
        pending.exchange.answers[answer.target] = answer
        pending.primary_done = True
        self._maybe_deliver(pending)

    def abandon(self, pending: PendingExchange, reason: str) -> None:
        """The exchange will not be compared (e.g. the client left before the primary's
        answer was complete): counted, and its bodies let go at once."""
        if not pending.abandoned:
            pending.abandoned = True
            self._metrics.mirror_dropped(reason)
            self._release(pending)
            pending.exchange.answers = {}

    def _hold(self, pending: PendingExchange, size: int) -> bool:
        """Count ``size`` more body bytes for ``pending``; past the bound, abandon it."""
        if self.pending_bytes + size > self._max_pending_bytes:
            self.abandon(pending, "pending_bytes")
            return False
        pending.held += size
        self.pending_bytes += size
        return True

    def _release(self, pending: PendingExchange) -> None:
        self.pending_bytes -= pending.held
        pending.held = 0

    # -- internals ------------------------------------------------------------------------
    def _send(self, pending: PendingExchange) -> None:
        self._in_flight += 1
        pending.sent = True
        request = pending.exchange.request
        body = request.body
        method = pending.method
        head_only = method == b"HEAD"
        retryable = method in IDEMPOTENT_METHODS
        headers = pending.headers
        if pending.conditional:
            headers = [(n, v) for n, v in headers if n.lower() not in _CONDITIONAL]
        targets = self._targets
        if self._probe_name is not None and self._probe_draw() >= self._probe_share:
            targets = [t for t in targets if t[0] != self._probe_name]
        pending.mirror_remaining = len(targets)
        for name, pool, template in targets:
            payload = template.build(method, pending.target, headers, body, pending.has_host)
            collector = AnswerCollector(
                name, self._answer_limit, _Arrival(self, pending), self._answer_cut
            )
            call = pool.send(payload, collector, head_only=head_only, retryable=retryable)
            if not call.done:  # answered already (a closing pool): nothing left to cancel
                collector.call = call
        pending.headers = []  # the wire form is no longer needed

    def _mirror_answered(self, pending: PendingExchange, answer: Answer) -> None:
        if answer.error is not None:
            self._metrics.upstream_error(answer.target, answer.error)
        breaker = self._breakers.get(answer.target)
        if breaker is not None:
            outcome = answer.error
            if outcome is None and answer.body_digest == CUT_DIGEST:
                # Answered, and past max_answer_bytes: a target whose every answer is that
                # large costs the relay a cut read per copy (1 MiB at 2,000 copies/s is
                # 2 GB/s), so a run of them rests it like a failing one.
                outcome = ERROR_TOO_LARGE
            breaker.record(outcome)
        if not pending.abandoned and self._hold(pending, len(answer.body)):
            pending.exchange.answers[answer.target] = answer
        pending.mirror_remaining -= 1
        if pending.mirror_remaining == 0:
            self._in_flight -= 1
            self._next_from_queue()
            if self._in_flight == 0 and self._idle_waiter is not None:
                self._idle_waiter.set()
            self._maybe_deliver(pending)

    def _maybe_deliver(self, pending: PendingExchange) -> None:
        if (
            pending.primary_done
            and pending.sent
            and pending.mirror_remaining == 0
            and not pending.abandoned
        ):
            self._release(pending)
            self._deliver(pending.exchange)

    def _next_from_queue(self) -> None:
        queue = self._queue
        while queue and self._in_flight < self._max_in_flight:
            pending = queue.popleft()
            if not pending.abandoned:
                self._send(pending)


class _Arrival:
    """Routes a mirror target's answer back to its exchange (a bound method, kept tiny)."""

    __slots__ = ("_mirror", "_pending")

    def __init__(self, mirror: Mirror, pending: PendingExchange) -> None:
        self._mirror = mirror
        self._pending = pending

    def __call__(self, answer: Answer) -> None:
        self._mirror._mirror_answered(self._pending, answer)

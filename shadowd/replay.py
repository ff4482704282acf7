"""``shadowd replay``: a capture's requests sent to live targets, compared and timed.

Pacing:
- recorded pace scaled by ``speed`` (default), or a fixed ``rate``: open loop. Every request
  has an intended send time, and latency is measured from it, so a stalled target cannot hide
  the queue it causes (coordinated omission corrected, as wrk2 does); the figures measured
  from the actual send are reported beside them.
- ``concurrency``: closed loop, N requests in flight, latency from the actual send.

Comparison: against a live ``primary`` target when one is given, else against the primary
answers recorded in the capture; the same diff engine, aggregator and report as the daemon.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hdrh.histogram import HdrHistogram

from shadowd.aggregate import Aggregator, latency_summary, record_many
from shadowd.analysis.stage import DiffStage
from shadowd.capture.inspect import open_exchanges
from shadowd.config import Config, DiffConfig, target_from_url
from shadowd.exchange import CANDIDATE, PRIMARY, Answer, Exchange
from shadowd.ingress.http import forwardable_headers
from shadowd.metrics import Metrics
from shadowd.progress import Progress
from shadowd.report import build_report
from shadowd.tasks import TaskGroup
from shadowd.upstream.collect import AnswerCollector
from shadowd.upstream.pool import UpstreamPool
from shadowd.upstream.request import RequestTemplate
from shadowd.verdict.evidence import VerdictEvidence
from shadowd.verdict.judge import judge

# uvloop's loop.time() ticks in milliseconds: latency needs the precise clock.
clock = time.perf_counter
_QUANTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
_MAX_US = 3_600_000_000
_TICK = 0.001  # uvloop's timer resolution (seconds)


ANALYSIS_NICE = 10


@dataclass
class ReplayOptions:
    targets: dict[str, str]  # primary / secondary / candidate -> URL
    speed: float = 1.0
    rate: float | None = None
    concurrency: int | None = None
    loop: int = 1
    duration: float | None = None
    endpoint: str | None = None  # regex on the endpoint name
    methods: frozenset[str] = frozenset()
    path: str | None = None  # regex on the path
    headers: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    timeout: float = 10.0
    connections: int = 256
    body_limit: int = 1024 * 1024
    diff: bool = True  # False: time the targets only (the sender's own top rate)
    workers: int = 0  # sender processes; 0 = one per core (``shadowd.replay_parallel``)
    # How far the comparing process steps back from the senders (``os.nice``), so that on a
    # saturated host the comparison takes the CPU the senders leave instead of delaying
    # their sends (which would make the measured latency the comparison's, not the
    # target's). 0: no step back.
    analysis_nice: int = ANALYSIS_NICE

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option that cannot work."""
        for name in ("speed", "rate", "duration", "timeout"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name} must be a number above 0, got {value!r}")
        for name in ("concurrency", "loop", "connections"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value!r}")
        if not 0 <= self.analysis_nice <= 19:
            raise ValueError(f"--analysis-nice must be 0 to 19, got {self.analysis_nice!r}")
        for name in ("endpoint", "path"):
            value = getattr(self, name)
            try:
                re.compile(value or "")
            except re.error as exc:
                raise ValueError(
                    f"--{name} {value!r} is not a regular expression ({exc})"
                ) from None
        for target, headers in self.headers.items():
            if target not in self.targets:
                raise ValueError(f"--header for {target!r}, which is not a --target")
            for name, value in headers:
                problem = header_problem(name, value)
                if problem:
                    raise ValueError(f"--header {target}:{name}: {problem}")


class Latency:
    """Corrected (from the intended send time) and uncorrected latency of one target.

    Values wait in lists and go into the HDR histograms in numpy batches: hdrh's own
    ``record_value`` is Python (~6.5 µs a value, three values per answer), which at tens of
    thousands of answers a second was a large share of the sender's time."""

    _BATCH = 4096

    def __init__(self) -> None:
        self.corrected = HdrHistogram(1, _MAX_US, 3)
        self.uncorrected = HdrHistogram(1, _MAX_US, 3)
        self.by_endpoint: dict[str, HdrHistogram] = {}
        self._pending: list[tuple[str, int, int]] = []

    def record(self, endpoint: str, corrected: float, uncorrected: float) -> None:
        self._pending.append((endpoint, int(corrected * 1e6), int(uncorrected * 1e6)))
        if len(self._pending) >= self._BATCH:
            self.flush()

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        record_many(self.corrected, [c for _, c, _ in pending])
        record_many(self.uncorrected, [u for _, _, u in pending])
        by_endpoint: dict[str, list[int]] = {}
        for endpoint, corrected, _ in pending:
            by_endpoint.setdefault(endpoint, []).append(corrected)
        for endpoint, values in by_endpoint.items():
            hist = self.by_endpoint.get(endpoint)
            if hist is None:
                hist = self.by_endpoint[endpoint] = HdrHistogram(1, _MAX_US, 2)
            record_many(hist, values)
        pending.clear()


def quantiles(hist: HdrHistogram) -> dict[str, float]:
    if not hist.get_total_count():
        return {}
    summary = latency_summary(hist, tuple(q for _, q in _QUANTILES))
    out = {name: summary[f"p{q:g}"] / 1e6 for name, q in _QUANTILES}
    out["max"] = summary["max"] / 1e6
    out["count"] = hist.get_total_count()
    return out


_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
# shadowd writes the framing of every request it sends; a rewrite must not add another.
_FRAMING = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade"}
)


def header_problem(name: str, value: str) -> str | None:
    """Why a ``--header`` rewrite cannot be written into a request, or None."""
    try:
        raw_name, raw_value = name.encode("latin-1"), value.encode("latin-1")
    except UnicodeEncodeError:
        return "HTTP/1.1 headers are Latin-1 text"
    if not _TOKEN.match(raw_name):
        return f"{name!r} is not a valid header name"
    if name.lower() in _FRAMING:
        return f"{name!r} cannot be set: shadowd writes the message framing itself"
    if _BAD_VALUE.search(raw_value):
        return "the value must not contain CR, LF or other control characters"
    return None


def request_problem(exchange: Exchange) -> str | None:
    """Why a recorded request cannot be sent again as it is, or None. A capture is data, not
    trusted input: a CR or LF in a target or header would split the request on the wire."""
    request = exchange.request
    method = request.method
    if not method.isascii() or not _TOKEN.match(method.encode("ascii")):
        return "method"
    target = request.target
    if not (target.startswith("/") or target == "*") or _BAD_TARGET.search(target):
        return "target"
    try:
        target.encode("latin-1")
    except UnicodeEncodeError:
        return "target"
    for name, value in request.headers:
        if not _TOKEN.match(name) or _BAD_VALUE.search(value):
            return "header"
    return None


def parse_targets(specs: list[str]) -> dict[str, str]:
    targets = {}
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or name not in (PRIMARY, "secondary", CANDIDATE):
            raise ValueError(
                f"--target {spec!r}: expected primary=URL, secondary=URL or candidate=URL"
            )
        if not re.match(r"^https?://", url):
            raise ValueError(f"--target {spec!r}: the URL must start with http:// or https://")
        if any(c <= " " or c >= "\x7f" for c in url):
            raise ValueError(f"--target {spec!r}: the URL must be ASCII without spaces")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise ValueError(f"--target {spec!r}: not a valid URL ({exc})") from None
        if not parts.hostname or parts.query or parts.fragment or parts.username:
            raise ValueError(
                f"--target {spec!r}: expected http(s)://host[:port][/prefix], "
                "without a query, a fragment or credentials"
            )
        targets[name] = url
    if CANDIDATE not in targets and PRIMARY not in targets:
        raise ValueError("give at least --target candidate=URL (or primary=URL)")
    return targets


class Replay:
    """One sender: paces, sends, times. Its share of the schedule is every ``shard[1]``-th
    request from ``shard[0]`` (all of it by default), at the global schedule's times, so that
    several senders in several processes together keep the asked pace. Finished exchanges go
    to ``on_complete`` when given (the hand-off to a separate analysis), else are diffed here.
    """

    def __init__(
        self,
        capture: Path,
        options: ReplayOptions,
        *,
        shard: tuple[int, int] = (0, 1),
        on_complete: Any = None,
        start_at: float | None = None,
    ) -> None:
        self.capture = capture
        self.options = options
        self.shard = shard
        self.on_complete = on_complete
        self.start_at = start_at  # a perf_counter value: the clock is system-wide on Linux
        self.handed_off = 0
        self.progress: Any = None  # a Progress-like object; None: a bar of our own
        self.on_loaded: Any = None  # called once the capture is read, before any send
        names = list(options.targets)
        primary_url = options.targets.get(PRIMARY, "http://recorded.invalid")
        candidate_url = options.targets.get(CANDIDATE, options.targets.get(PRIMARY, ""))
        self.config = Config(
            source=str(capture),
            primary=target_from_url(PRIMARY, primary_url),
            candidate=target_from_url(CANDIDATE, candidate_url),
            secondary=target_from_url("secondary", options.targets["secondary"])
            if "secondary" in options.targets
            else None,
            diff=dataclasses.replace(DiffConfig(), max_body_bytes=options.body_limit),
            primary_timing="replayed" if PRIMARY in names else "recorded",
        )
        self.live_primary = PRIMARY in names
        self.aggregator = Aggregator(self.config)
        self.evidence = VerdictEvidence(self.config.endpoints.max)
        # The live daemon's analysis path, fed decoded exchanges: the same diff, statistics
        # and verdict evidence, so the same exchanges give the same verdict.
        self.stage = DiffStage(
            self.config.diff, self.aggregator, self.evidence, Metrics(self.config)
        )
        self.latency = {name: Latency() for name in names}
        self.errors: dict[str, dict[str, int]] = {name: {} for name in names}
        self.sent = 0
        self.completed = 0
        self.skipped_no_reference = 0
        self.not_compared = 0  # finished, but shed before the analysis (parallel replay)
        self.skipped_malformed: dict[str, int] = {}  # by what was wrong: method/target/header
        self.started = 0.0
        self.finished = 0.0
        self.interrupted = False
        self._in_flight = 0
        self._idle = asyncio.Event()

    # -- what to send ------------------------------------------------------------------------
    def _selected(self) -> list[Exchange]:
        opts = self.options
        endpoint = re.compile(opts.endpoint) if opts.endpoint else None
        path = re.compile(opts.path) if opts.path else None
        exchanges, self.damage = open_exchanges(self.capture)
        out = []
        for ex in exchanges:
            problem = request_problem(ex)
            if problem is not None:
                self.skipped_malformed[problem] = self.skipped_malformed.get(problem, 0) + 1
                continue
            if opts.methods and ex.request.method not in opts.methods:
                continue
            if endpoint and not endpoint.search(ex.endpoint):
                continue
            if path and not path.search(ex.request.path):
                continue
            out.append(ex)
        # In arrival order: shadowd writes an exchange when its last answer is in, so a
        # request whose copy took a second is filed a second late. Paced in file order, it
        # left that late, and the corrected latency blamed the target for it (a capture of
        # python's http.server at 1,500 req/s: p99 185 ms against 3 ms). Stable: equal
        # times (or none) keep the file's order.
        out.sort(key=attrgetter("request.received_at"))
        return out

    def _schedule(self, exchanges: list[Exchange]) -> Iterator[tuple[float | None, Exchange]]:
        """(seconds after start when it should leave, exchange); None: closed loop."""
        opts = self.options
        first = exchanges[0].request.received_at if exchanges else 0.0
        span = (exchanges[-1].request.received_at - first) if exchanges else 0.0
        index = 0
        mine, senders = self.shard
        for lap in range(opts.loop):
            for ex in exchanges:
                if index % senders != mine:
                    pass
                elif opts.concurrency:
                    yield None, ex
                elif opts.rate:
                    yield index / opts.rate, ex
                else:
                    pace = max(span, 1e-3) + 1e-3  # laps follow each other at the same pace
                    yield (lap * pace + ex.request.received_at - first) / opts.speed, ex
                index += 1

    # -- running -------------------------------------------------------------------------
    async def run(self) -> None:
        exchanges = self._selected()
        if self.on_loaded is not None:
            self.on_loaded()
        tasks = TaskGroup()
        self.pools = {
            name: UpstreamPool(
                dataclasses.replace(
                    target_from_url(name, url),
                    timeout=self.options.timeout,
                    max_connections=self.options.connections,
                    set_headers=self.options.headers.get(name, ()),
                ),
                tasks,
            )
            for name, url in self.options.targets.items()
        }
        self.templates = {name: RequestTemplate(pool.target) for name, pool in self.pools.items()}
        # id(recorded exchange) -> its requests as bytes, kept when the capture is looped
        self._prepared: dict[int, tuple[list[tuple[str, UpstreamPool, bytes]], bool]] = {}
        total = len(exchanges) * self.options.loop // self.shard[1]
        progress = self.progress or Progress(total, label="replay")
        self.started = self.start_at if self.start_at is not None else clock()
        deadline = self.started + self.options.duration if self.options.duration else None
        try:
            # Parallel senders share a first instant; a closed loop must not start before it
            # either, or what it sent early would count against a shorter elapsed time.
            while (delay := self.started - clock()) > 0:  # noqa: ASYNC110 - pacing
                await asyncio.sleep(delay)
            if self.options.concurrency:
                await self._closed_loop(exchanges, progress, deadline)
            else:
                for offset, ex in self._schedule(exchanges):
                    intended = self.started + (offset or 0.0)
                    if deadline is not None and intended >= deadline:
                        break
                    # Never early, and never polling: uvloop's timers tick in whole
                    # milliseconds, so a shorter sleep returns at once, and waiting out
                    # the rest that way kept both senders at 100 % of a core from 5,000
                    # req/s (the target and the comparison starved beside them). Wait for
                    # the next tick instead, as wrk2 does: a send leaves at most about a
                    # tick late, and the corrected latency counts that lateness.
                    while (delay := intended - clock()) > 0:  # noqa: ASYNC110 - pacing
                        await asyncio.sleep(max(delay, _TICK))
                    self._send(ex, intended)
                    if self.sent % 100 == 0:
                        progress.update(self.sent)
            while self._in_flight:
                self._idle.clear()
                await self._idle.wait()
        except asyncio.CancelledError:
            self.interrupted = True
        finally:
            self.finished = clock()
            if self.sent % 100:
                progress.update(self.sent)
            for pool in self.pools.values():
                pool.close()
            await tasks.cancel_all()

    async def _closed_loop(
        self, exchanges: list[Exchange], progress: Progress, deadline: float | None
    ) -> None:
        schedule = self._schedule(exchanges)
        # A counter and an event rather than asyncio.Semaphore: its acquire() is a coroutine
        # call per request, a measurable share of a sender's CPU at tens of thousands a second.
        free = [self.options.concurrency or 1]
        room = asyncio.Event()

        def release() -> None:
            free[0] += 1
            room.set()

        for _, ex in schedule:
            while not free[0]:
                room.clear()
                await room.wait()
            if deadline is not None and clock() >= deadline:
                break
            free[0] -= 1
            self._send(ex, clock(), release)
            if self.sent % 100 == 0:
                progress.update(self.sent)

    def _outgoing(self, recorded: Exchange) -> tuple[list[tuple[str, UpstreamPool, bytes]], bool]:
        """Each target's request bytes for a recorded exchange, and whether it is a HEAD."""
        prepared = self._prepared.get(id(recorded))
        if prepared is not None:
            return prepared
        request = recorded.request
        headers, has_host, _ = forwardable_headers(request.headers)
        method = request.method.encode("ascii")
        target = request.target.encode("latin-1")
        prepared = (
            [
                (
                    name,
                    pool,
                    self.templates[name].build(method, target, headers, request.body, has_host),
                )
                for name, pool in self.pools.items()
            ],
            method == b"HEAD",
        )
        if self.options.loop > 1:  # every lap sends the same bytes: build them once
            self._prepared[id(recorded)] = prepared
        return prepared

    def _send(self, recorded: Exchange, intended: float, done: Any = None) -> None:
        request = recorded.request
        live = Exchange(id=recorded.id, request=request, endpoint=recorded.endpoint)
        if not self.live_primary:
            reference = recorded.answers.get(PRIMARY)
            if reference is None:
                self.skipped_no_reference += 1
                if done is not None:
                    done()
                return
            live.answers[PRIMARY] = reference
        remaining = [len(self.pools)]
        sent_at = clock()
        self.sent += 1
        self._in_flight += 1

        def arrived(answer: Answer) -> None:
            now = clock()
            live.answers[answer.target] = answer
            if answer.error is not None or answer.status >= 500:
                kind = answer.error or f"{answer.status}"
                errors = self.errors[answer.target]
                errors[kind] = errors.get(kind, 0) + 1
            if answer.error is None:
                self.latency[answer.target].record(recorded.endpoint, now - intended, now - sent_at)
            remaining[0] -= 1
            if remaining[0] == 0:
                self._complete(live)
                if done is not None:
                    done()

        outgoing, head_only = self._outgoing(recorded)
        body_limit = self.options.body_limit
        for name, pool, payload in outgoing:
            pool.send(payload, AnswerCollector(name, body_limit, arrived), head_only=head_only)

    def _complete(self, exchange: Exchange) -> None:
        self.completed += 1
        if self.options.diff and (CANDIDATE in exchange.answers or "secondary" in exchange.answers):
            if self.on_complete is not None:
                self.on_complete(exchange)
            else:
                self.stage.process_exchange(exchange)
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    # -- results -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        elapsed = max(self.finished - self.started, 1e-9)
        opts = self.options
        for latency in self.latency.values():
            latency.flush()
        report = build_report(self.aggregator)
        return {
            "capture": str(self.capture),
            "mode": "closed" if opts.concurrency else "rate" if opts.rate else "recorded pace",
            "asked_rate": opts.rate,
            "speed": None if opts.rate or opts.concurrency else opts.speed,
            "concurrency": opts.concurrency,
            "sent": self.sent,
            "completed": self.completed,
            "seconds": elapsed,
            "achieved_rate": self.completed / elapsed,
            "interrupted": self.interrupted,
            "skipped_without_recorded_answer": self.skipped_no_reference,
            "skipped_malformed": self.skipped_malformed,
            "capture_damage": dataclasses.asdict(self.damage),
            "errors": self.errors,
            "latency": {
                name: {
                    "corrected": quantiles(lat.corrected),
                    "uncorrected": quantiles(lat.uncorrected),
                    "endpoints": {ep: quantiles(h) for ep, h in lat.by_endpoint.items()},
                }
                for name, lat in self.latency.items()
            },
            "diffed": opts.diff,
            "not_compared": self.not_compared,
            "report": report,
            "verdict": judge(report, self.evidence, self.config).to_json() if opts.diff else None,
        }


async def replay(capture: Path, options: ReplayOptions) -> dict[str, Any]:
    """Run a replay in this one process until done or Ctrl-C (which stops sending and
    still summarises). ``shadowd replay`` runs ``replay_parallel`` instead: sender
    processes and the analysis apart."""
    import signal

    options.validate()
    runner = Replay(capture, options)
    task = asyncio.ensure_future(runner.run())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        runner.interrupted = True
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return runner.summary()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def render_summary(summary: dict[str, Any]) -> str:
    from shadowd.report import render_table

    asked = f" (asked {summary['asked_rate']:g}/s)" if summary["asked_rate"] else ""
    # "completed": every target answered or failed; failures are counted under errors
    failed = sum(n for kinds in summary["errors"].values() for n in kinds.values())
    lines = [
        f"replay of {summary['capture']}: {summary['completed']} of {summary['sent']} requests "
        f"completed in {summary['seconds']:.1f}s, {summary['achieved_rate']:,.1f} req/s{asked}, "
        f"{summary['mode']}"
        + (" (interrupted)" if summary["interrupted"] else "")
        + (f"; {failed:,} errors or 5xx answers (below)" if failed else ""),
    ]
    if summary.get("not_compared"):
        lines.append(
            f"  {summary['not_compared']} answers not compared: the comparison fell behind "
            "the senders, and it never delays a send (--analysis-nice 0 gives it more CPU)"
        )
    if summary["skipped_without_recorded_answer"]:
        lines.append(
            f"  {summary['skipped_without_recorded_answer']} requests skipped: no "
            "recorded primary answer to compare with (give --target primary=URL)"
        )
    if summary.get("skipped_malformed"):
        what = ", ".join(f"{n} with a bad {k}" for k, n in summary["skipped_malformed"].items())
        lines.append(f"  requests skipped, not sendable as recorded: {what}")
    damage = summary.get("capture_damage") or {}
    if damage.get("corrupt") or damage.get("torn_tail") or damage.get("header_damaged"):
        lines.append(
            f"  capture damage: {damage.get('corrupt', 0)} corrupt records skipped"
            + (", torn tail" if damage.get("torn_tail") else "")
            + (", damaged header" if damage.get("header_damaged") else "")
        )
    lines.append("")
    header = f"{'target':<11}{'latency':<13}" + "".join(
        f"{q:>9}" for q in ("p50", "p90", "p99", "p99.9", "max")
    )
    lines.append(header + "   (ms)")
    for name, lat in summary["latency"].items():
        for kind in ("corrected", "uncorrected"):
            q = lat[kind]
            lines.append(
                f"{name:<11}{kind:<13}"
                + "".join(f"{_ms(q.get(k)):>9}" for k in ("p50", "p90", "p99", "p999", "max"))
            )
    errors = {t: e for t, e in summary["errors"].items() if e}
    lines.append(f"\nerrors: {errors or 'none'}")
    lines.append("\nper endpoint, corrected p50/p99 ms:")
    for name, lat in summary["latency"].items():
        for endpoint, q in sorted(lat["endpoints"].items()):
            lines.append(f"  {name:<10} {endpoint:<40} {_ms(q.get('p50'))}/{_ms(q.get('p99'))}")
    if not summary.get("diffed", True):
        lines += ["", "answers not compared (--no-diff)"]
        return "\n".join(lines)
    lines += ["", render_table(summary["report"])]
    verdict = summary.get("verdict")
    if verdict:
        lines.append(f"\nverdict: {verdict['verdict'].upper()}")
        lines += [f"  - {reason}" for reason in verdict["reasons"]]
    return "\n".join(lines)

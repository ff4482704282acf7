"""The analysis plane's CPU per exchange, stage by stage, offline and deterministic.

    .venv/bin/python benchmarks/analysis_bench.py [--records 20000] [--rounds 5]
    .venv/bin/python benchmarks/analysis_bench.py --profile      # cProfile of the whole stage
    .venv/bin/python benchmarks/analysis_bench.py --only total   # one stage (e.g. for callgrind)

It records ``--records`` exchanges as the ingress hands them to the analysis worker: framed
capture-format msgpack records (``shadowd.stream.handoff`` sends exactly these payloads) of
primary, secondary and candidate answering planes_bench.py's 3.4 KB order document with a
request id and a millisecond clock that differ on every answer, nginx's answer headers and
seeded latencies. Then it times, in CPU time (``time.process_time``, so other processes on a
shared machine move it little), each stage over every record, each fed the previous stage's
output:

- frames: the hand-off's frame decoder (``FrameDecoder``: length and CRC-32 checked) over
  the records as they arrive on the socket, in 256 KiB reads;
- decode: ``msgpack.unpackb`` of the record;
- exchange: ``exchange_of`` (the record map to an ``Exchange``);
- parse: the three bodies parsed as the diff parses them (the primary whole, the others
  sharing the primary's unchanged members);
- diff: the primary-vs-candidate comparison of the parsed documents and headers;
- noise: the primary-vs-secondary comparison (what the noise model counts);
- aggregate: ``Aggregator.add`` without its latency histograms;
- histograms: the HDR latency histograms (``EndpointStats.record_latency``, flushed);
- evidence: ``VerdictEvidence.record`` (latency pairs, error tallies, usage);
- series: the Prometheus series (``ExchangeSeries.observe``, then one collect);
- total: ``DiffStage._process`` over the raw records with a real ``Metrics``: what the
  analysis worker does per record once it is framed (the stages' sum, frames aside, plus
  the glue between them).

Each stage is timed ``--rounds`` times (fresh statistics every round) and the median is
printed as µs per exchange, with the total's exchanges per second on one core. The stages
add up to about the total; the total is the figure that decides how many exchanges one
analysis core keeps up with.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from planes_bench import DYNAMIC  # noqa: E402  (the body shape of the headline benchmark)

from shadowd.aggregate import Aggregator, EndpointStats  # noqa: E402
from shadowd.analysis.series import ExchangeSeries  # noqa: E402
from shadowd.analysis.stage import DiffStage  # noqa: E402
from shadowd.capture.format import exchange_of, frame, record_of  # noqa: E402
from shadowd.config import Config, target_from_url  # noqa: E402
from shadowd.diff.engine import _compare, _skipped, diff_exchange  # noqa: E402
from shadowd.diff.prepared import PreparedAnswer, shared_tail  # noqa: E402
from shadowd.diff.rules import EMPTY  # noqa: E402
from shadowd.exchange import Answer, Exchange, Request  # noqa: E402
from shadowd.metrics import Metrics  # noqa: E402
from shadowd.stream.frames import FrameDecoder  # noqa: E402
from shadowd.stream.handoff import MAX_RECORD_BYTES  # noqa: E402
from shadowd.verdict.evidence import VerdictEvidence  # noqa: E402

TARGETS = ("primary", "secondary", "candidate")
ENDPOINT = "GET /api/orders/{id}"
STAGES = (
    "frames",
    "decode",
    "exchange",
    "parse",
    "diff",
    "noise",
    "aggregate",
    "histograms",
    "evidence",
    "series",
    "total",
)


def bench_config() -> Config:
    """``shadowd run``'s defaults with the three targets planes_bench.py gives it."""
    return Config(
        source="<analysis_bench>",
        primary=target_from_url("primary", "http://127.0.0.1:9001"),
        secondary=target_from_url("secondary", "http://127.0.0.1:9002"),
        candidate=target_from_url("candidate", "http://127.0.0.1:9003"),
    )


def make_records(count: int, seed: int = 1, distinct: bool = False) -> list[bytes]:
    """``count`` msgpack records as an ingress worker hands them off (fixed seed). With
    ``distinct`` every exchange answers another document (its last member names the
    exchange): the three answers of an exchange still share all but their id and clock,
    two exchanges share nothing past the first members."""
    rng = random.Random(seed)
    records = []
    clock = 1_764_400_000.0
    for i in range(count):
        clock += rng.expovariate(10_000)
        request = Request(
            method="GET",
            target="/api/orders/1",
            headers=[(b"Host", b"127.0.0.1:8470")],
            body=b"",
            received_at=clock,
            client="127.0.0.1",
        )
        exchange = Exchange(id=i + 1, request=request, endpoint=ENDPOINT)
        template = DYNAMIC.replace('"notes": "', f'"notes": "{i} ') if distinct else DYNAMIC
        for target in TARGETS:
            msec = f"{clock + rng.uniform(0, 0.002):.3f}"
            body = (
                template.replace("$request_id", f"{rng.getrandbits(128):032x}")
                .replace("$msec", msec)
                .encode()
            )
            exchange.answers[target] = Answer(
                target=target,
                status=200,
                headers=[
                    (b"Server", b"nginx/1.22.1"),
                    (b"Date", b"Sun, 29 Nov 2026 19:00:00 GMT"),
                    (b"Content-Type", b"application/json"),
                    (b"Content-Length", str(len(body)).encode()),
                    (b"Connection", b"keep-alive"),
                ],
                body=body,
                body_size=len(body),
                latency=rng.lognormvariate(-7.0, 0.5),  # ~1 ms
            )
        records.append(msgpack.packb(record_of(exchange), use_bin_type=True))
    return records


def _unpack(record: bytes) -> Any:
    return msgpack.unpackb(record, raw=False, strict_map_key=False)


class Workload:
    """Every stage's input, computed once from the records."""

    def __init__(self, records: list[bytes], config: Config) -> None:
        self.records = records
        self.config = config
        self.maps = [_unpack(r) for r in records]
        self.exchanges = [exchange_of(m) for m in self.maps]
        self.prepared = [self.prepare(e) for e in self.exchanges]
        for primary, secondary, candidate in self.prepared:  # parsed as diff_exchange does
            candidate.document(primary)
            secondary.document(primary)
        self.exchange_diffs = [diff_exchange(e, config.diff) for e in self.exchanges]
        assert all(d.candidate and d.secondary for d in self.exchange_diffs), "all must differ"

    def prepare(self, exchange: Exchange) -> tuple[PreparedAnswer, ...]:
        skipped = _skipped(self.config.diff)
        limit = self.config.diff.max_body_bytes
        tail = shared_tail(exchange.endpoint)  # as diff_exchange does
        return tuple(
            PreparedAnswer(exchange.answers[t], EMPTY, skipped, limit, tail) for t in TARGETS
        )


def stage_functions(work: Workload) -> dict[str, Callable[[], object]]:
    """Stage name -> a function that runs the stage over every record once."""
    config = work.config
    diff_config = config.diff

    stream = b"".join(frame(record) for record in work.records)
    reads = [stream[i : i + 256 * 1024] for i in range(0, len(stream), 256 * 1024)]

    def frames() -> None:
        decoder = FrameDecoder(MAX_RECORD_BYTES)
        count = sum(len(decoder.feed(data)) for data in reads)
        assert count == len(work.records)

    def decode() -> None:
        for record in work.records:
            _unpack(record)

    def exchange() -> None:
        for record_map in work.maps:
            exchange_of(record_map)

    def parse() -> None:
        for exchange in work.exchanges:
            primary, secondary, candidate = work.prepare(exchange)
            primary.document()
            candidate.document(primary)
            secondary.document(primary)

    def diff() -> None:
        for primary, _secondary, candidate in work.prepared:
            _compare(primary, candidate, diff_config, EMPTY, {})

    def noise() -> None:
        for primary, secondary, _candidate in work.prepared:
            _compare(primary, secondary, diff_config, EMPTY, None)

    def aggregate() -> None:
        aggregator = Aggregator(config)
        # the histograms are timed on their own: here latencies are only set aside
        EndpointStats.record_latency = _set_aside  # type: ignore[method-assign]
        try:
            for exchange, exchange_diff in zip(work.exchanges, work.exchange_diffs, strict=True):
                aggregator.add(exchange, exchange_diff)
        finally:
            EndpointStats.record_latency = _record_latency  # type: ignore[method-assign]

    def histograms() -> None:
        stats = EndpointStats(ENDPOINT, 0)
        for exchange in work.exchanges:
            for target, answer in exchange.answers.items():
                stats.record_latency(target, answer.latency)
        stats.latency  # noqa: B018  (flushes what is pending)

    def evidence() -> None:
        verdict_evidence = VerdictEvidence(config.endpoints.max)
        for exchange, exchange_diff in zip(work.exchanges, work.exchange_diffs, strict=True):
            verdict_evidence.record(exchange, exchange_diff)

    def series() -> None:
        observed = ExchangeSeries(config.endpoints.max)
        for exchange, exchange_diff in zip(work.exchanges, work.exchange_diffs, strict=True):
            observed.observe(exchange, exchange_diff)
        list(observed.collect())

    def total() -> None:
        metrics = Metrics(config)
        stage = DiffStage(
            diff_config, Aggregator(config, metrics), VerdictEvidence(config.endpoints.max), metrics
        )
        for record in work.records:
            stage._process(record)
        assert stage.diffed == len(work.records)

    return {name: fn for name, fn in locals().items() if name in STAGES}


_record_latency = EndpointStats.record_latency


def _set_aside(self: EndpointStats, target: str, seconds: float) -> None:
    pass


def cpu_seconds(fn: Callable[[], object]) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=STAGES, help="time one stage only")
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="every exchange answers another document (no end shared across exchanges)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the total stage")
    args = parser.parse_args()

    config = bench_config()
    work = Workload(make_records(args.records, distinct=args.distinct), config)
    functions = stage_functions(work)
    n = len(work.records)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(functions["total"])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return 0
    chosen = [args.only] if args.only else list(STAGES)
    times: dict[str, list[float]] = {name: [] for name in chosen}
    functions[chosen[-1]]()  # warm-up: caches, first-use imports
    for _ in range(args.rounds):
        for name in chosen:  # stages alternate, so drift on the machine spreads over all
            times[name].append(cpu_seconds(functions[name]) / n * 1e6)
    size = len(work.records[0])
    shape = "another document per exchange" if args.distinct else "one document"
    print(f"{n} records of {size} B (3 targets, 3.4 KB bodies that all differ, {shape}),")
    print("CPU time,", end=" ")
    print(f"median of {args.rounds} rounds, µs per exchange:")
    parts = 0.0
    for name in chosen:
        median = statistics.median(times[name])
        spread = f"{min(times[name]):.1f}-{max(times[name]):.1f}"
        if name not in ("total", "frames"):
            parts += median
        print(f"  {name:<11}{median:8.1f}   ({spread})")
    if "total" in times:
        total = statistics.median(times["total"])
        if len(chosen) > 1:
            print(f"  {'(stages)':<11}{parts:8.1f}   (decode to series: what total does)")
        print(f"exchanges/s per core (total): {1e6 / total:,.0f}")
        if "frames" in times:
            framed = total + statistics.median(times["frames"])
            print(f"with the frames read off the socket: {framed:.1f} µs, {1e6 / framed:,.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

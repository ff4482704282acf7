"""How long one judgement takes: 200 endpoints, each with a full latency reservoir (2,000
rows, secondary included) and 20 fields, judged as the verdict's process does it.

    python benchmarks/verdict_bench.py [--endpoints 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import build_config

from shadowd.aggregate import Aggregator
from shadowd.exchange import Answer, Exchange, Request
from shadowd.report import build_report
from shadowd.verdict.evidence import VerdictEvidence
from shadowd.verdict.judge import judge


def _answer(target: str, latency: float) -> Answer:
    return Answer(target=target, status=200, headers=[], body=b"{}", body_size=2, latency=latency)


def build(endpoints: int, rows: int, seed: int = 1):
    config = build_config("http://p", "http://c", "http://s", verdict={"min_exchanges": 1})
    rng = np.random.default_rng(seed)
    aggregator = Aggregator(config)
    evidence = VerdictEvidence(config.endpoints.max)
    at = 1_800_000_000.0
    for e in range(endpoints):
        name = f"GET /e{e}/{{id}}"
        primary = rng.lognormal(np.log(0.005), 0.3, rows)
        secondary = primary * rng.lognormal(0, 0.05, rows)
        candidate = primary * rng.lognormal(0, 0.05, rows)
        for i in range(rows):
            exchange = Exchange(
                id=i, request=Request("GET", "/", [], b"", received_at=at + i), endpoint=name
            )
            exchange.answers["primary"] = _answer("primary", float(primary[i]))
            exchange.answers["secondary"] = _answer("secondary", float(secondary[i]))
            exchange.answers["candidate"] = _answer("candidate", float(candidate[i]))
            evidence.record(exchange)
        stats = aggregator.stats_for(name)
        stats.exchanges = rows
        aggregator.totals.exchanges += rows
        for f in range(20):
            _, fld = stats.field(f"$.f{f}", 500)
            c, s = int(rng.binomial(rows, 0.02)), int(rng.binomial(rows, 0.02))
            fld.divergent, fld.noise = c, s
            fld.kinds = {"changed": c} if c else {}
            if hasattr(fld, "noise_kinds"):
                fld.noise_kinds = {"changed": s} if s else {}
    return config, aggregator, evidence


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config, aggregator, evidence = build(args.endpoints, args.rows)
    config = dataclasses.replace(config)
    judge(build_report(aggregator), evidence, config)  # warm: SciPy imported
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        report = build_report(aggregator)
        verdict = judge(report, evidence, config)
        times.append(time.perf_counter() - start)
    print(
        f"{args.endpoints} endpoints x {args.rows} rows: report + judge "
        f"min {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s "
        f"({verdict.verdict}, {len(verdict.criteria)} criteria)"
    )


if __name__ == "__main__":
    main()

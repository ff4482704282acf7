"""Diff throughput: shadowd's diff engine against DeepDiff, jsondiff and the parse floor.

    python benchmarks/diff_bench.py [--repeat 5] [--exchange-only]

The corpus is generated (fixed seed): realistic API documents of about 200 B, 4 KB and
64 KB, each as identical / one field changed / many fields changed / array reordered pairs.
"floor" is orjson parsing both bodies and nothing else: no JSON diff can be cheaper.
Times are microseconds per pair, the median of --repeat rounds.

A second table times whole 3-target exchanges (``diff_exchange``: candidate and secondary
each against the primary) whose three bodies are one ~3.4 KB answer differing only in
volatile fields (request id, timestamp in ms, server time taken), as a real service's
answers do; its floor is orjson parsing the three (decoded) bodies. It counts CPU time
(at least 9 alternating rounds, medians), so other processes on the machine barely move it.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gzip

from shadowd.config import DiffConfig
from shadowd.diff.engine import compare_answers, diff_exchange
from shadowd.exchange import Answer, Exchange, Request

try:
    from deepdiff import DeepDiff
except ImportError:  # pragma: no cover
    DeepDiff = None
try:
    import jsondiff
except ImportError:  # pragma: no cover
    jsondiff = None


def item(rng: random.Random, i: int) -> dict:
    return {
        "id": i,
        "sku": f"SKU-{rng.randrange(10**6):06d}",
        "name": rng.choice(["widget", "gadget", "gizmo", "doohickey"]) + f" {i}",
        "price": round(rng.uniform(1, 500), 2),
        "currency": "EUR",
        "in_stock": rng.random() > 0.2,
        "tags": rng.sample(["new", "sale", "eco", "bulk", "gift", "top"], 3),
        "dimensions": {"w": rng.randrange(100), "h": rng.randrange(100), "unit": "cm"},
    }


def document(rng: random.Random, items: int) -> dict:
    return {
        "request_id": "3f2c9a40-8d1e-4c3b-9f7a-1b2c3d4e5f60",
        "page": {"number": 1, "size": items, "total": items * 7},
        "items": [item(rng, i) for i in range(items)],
    }


def variants(doc: dict, rng: random.Random) -> dict[str, dict]:
    one = copy.deepcopy(doc)
    one["items"][len(one["items"]) // 2]["price"] = 0.01
    many = copy.deepcopy(doc)
    for it in many["items"]:
        it["price"] = round(it["price"] * 1.1, 2)
        it["in_stock"] = not it["in_stock"]
    reordered = copy.deepcopy(doc)
    rng.shuffle(reordered["items"])
    return {"identical": doc, "one changed": one, "many changed": many, "reordered": reordered}


def answer(doc: dict) -> Answer:
    body = orjson.dumps(doc)
    return Answer("x", 200, [(b"Content-Type", b"application/json")], body, len(body))


def service_answer(
    rng: random.Random, target: str, encoding: str, volatile_last: bool = False
) -> Answer:
    """One target's answer to the same request: the same ~3.4 KB document (fixed seed) but
    its own request id, timestamp (ms) and time taken, and per-answer headers. The volatile
    fields come first, as most services write them, or last (``volatile_last``): then no
    answer ends like another and each body is parsed whole."""
    doc = document(random.Random(11), 20)
    request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    volatile = {
        "request_id": request_id,
        "generated_at": 1_764_430_000_000 + rng.randrange(5_000),
        "meta": {"took_ms": rng.randrange(3, 40), "region": "eu-west-1", "version": "2.14.3"},
    }
    stable = {k: v for k, v in doc.items() if k != "request_id"}
    doc = {**stable, **volatile} if volatile_last else {**volatile, **stable}
    body = orjson.dumps(doc)
    headers = [
        (b"Content-Type", b"application/json; charset=utf-8"),
        (b"Date", b"Sun, 29 Nov 2026 16:%02d:%02d GMT" % (rng.randrange(60), rng.randrange(60))),
        (b"X-Request-Id", request_id.encode()),
        (b"Cache-Control", b"no-store"),
    ]
    if encoding == "gzip":
        body = gzip.compress(body, mtime=0)
        headers.append((b"Content-Encoding", b"gzip"))
    headers.append((b"Content-Length", str(len(body)).encode()))
    return Answer(target, 200, headers, body, len(body))


def exchange_table(repeat: int) -> None:
    config = DiffConfig()
    print(
        f"\n{'exchange':<48}{'bytes':>7}{'shadowd':>10}{'floor':>9}{'vs floor':>10}"
        "   (µs per exchange; floor: orjson parse of 3 bodies)"
    )
    for name, encoding, volatile_last in (
        ("3-target exchange, 3.4 KB, volatile fields", "identity", False),
        ("3-target exchange, 3.4 KB gzip, volatile fields", "gzip", False),
        ("3-target exchange, 3.4 KB, volatile fields last", "identity", True),
    ):
        rng = random.Random(3)
        exchange = Exchange(1, Request("GET", "/items?page=1", [], b"", 0.0), "GET /items")
        for target in ("primary", "candidate", "secondary"):
            exchange.answers[target] = service_answer(rng, target, encoding, volatile_last)
        plain = [
            gzip.decompress(a.body) if encoding == "gzip" else a.body
            for a in exchange.answers.values()
        ]
        assert diff_exchange(exchange, config).candidate  # the volatile fields do differ
        a, b, c = plain
        ours, floor, ratio = timed_against(
            lambda ex=exchange: diff_exchange(ex, config),
            lambda a=a, b=b, c=c: (orjson.loads(a), orjson.loads(b), orjson.loads(c)),
            max(repeat, 9),
        )
        print(f"{name:<48}{len(a):>7}{ours:>10.1f}{floor:>9.1f}{ratio:>9.2f}x")


def timed_against(
    fn: Callable[[], object], floor: Callable[[], object], repeat: int, calls: int = 2000
) -> tuple[float, float, float]:
    """Median µs per call of ``fn`` and of ``floor``, and the median of their per-round
    ratio. The rounds alternate and count this thread's CPU time, not wall time: the machine
    is shared, and a neighbour's load would otherwise decide the ratio."""
    fn()
    floor()
    mine, theirs, ratios = [], [], []
    for _ in range(repeat):
        started = time.thread_time()
        for _ in range(calls):
            fn()
        mine.append((time.thread_time() - started) / calls * 1e6)
        started = time.thread_time()
        for _ in range(calls):
            floor()
        theirs.append((time.thread_time() - started) / calls * 1e6)
        ratios.append(mine[-1] / theirs[-1])
    return statistics.median(mine), statistics.median(theirs), statistics.median(ratios)


def timed(fn: Callable[[], object], repeat: int, budget: float = 0.2) -> float:
    """Median µs per call over `repeat` rounds, each running for about `budget` seconds of
    this thread's CPU time (the machine is shared: wall time would count the neighbours)."""
    fn()
    started = time.thread_time()
    fn()
    once = max(time.thread_time() - started, 1e-6)
    calls = max(1, int(budget / once))
    rounds = []
    for _ in range(repeat):
        started = time.thread_time()
        for _ in range(calls):
            fn()
        rounds.append((time.thread_time() - started) / calls * 1e6)
    return statistics.median(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--exchange-only", action="store_true", help="only the 3-target exchange table"
    )
    parser.add_argument("--no-others", action="store_true", help="skip DeepDiff and jsondiff")
    args = parser.parse_args()
    if args.exchange_only:
        exchange_table(args.repeat)
        return 0
    rng = random.Random(7)
    config = DiffConfig()
    sizes = {"200 B": 1, "4 KB": 18, "64 KB": 290}
    print(
        f"{'pair':<24}{'bytes':>8}{'shadowd':>10}{'floor':>9}{'DeepDiff':>11}"
        f"{'jsondiff':>11}{'vs DeepDiff':>13}{'vs floor':>10}   (µs per pair)"
    )
    for size_name, items in sizes.items():
        base = document(rng, items)
        for variant, other in variants(base, rng).items():
            a, b = answer(base), answer(other)
            if variant == "identical":
                b = answer(copy.deepcopy(base))  # equal bytes, different objects
            ours = timed(lambda a=a, b=b: compare_answers(a, b, config), args.repeat)
            floor = timed(
                lambda a=a, b=b: (orjson.loads(a.body), orjson.loads(b.body)), args.repeat
            )
            deep = jd = float("nan")
            da, db = orjson.loads(a.body), orjson.loads(b.body)
            if DeepDiff is not None and not args.no_others:
                budget = 0.5 if items < 100 else 1.0
                deep = timed(
                    lambda da=da, db=db: DeepDiff(da, db), max(1, args.repeat // 2), budget
                )
            if jsondiff is not None and not args.no_others:
                jd = timed(lambda da=da, db=db: jsondiff.diff(da, db), max(1, args.repeat // 2))
            print(
                f"{size_name + ' ' + variant:<24}{len(a.body):>8}{ours:>10.1f}{floor:>9.1f}"
                f"{deep:>11.0f}{jd:>11.0f}{deep / ours:>12.0f}x{ours / floor:>9.2f}x"
            )
    exchange_table(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Diff throughput: shadowd's diff engine against DeepDiff, jsondiff and the parse floor.

    python benchmarks/diff_bench.py [--repeat 5]

The corpus is generated (fixed seed): realistic API documents of about 200 B, 4 KB and
64 KB, each as identical / one field changed / many fields changed / array reordered pairs.
"floor" is orjson parsing both bodies and nothing else: no JSON diff can be cheaper.
Times are microseconds per pair, the median of --repeat rounds.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shadowd.config import DiffConfig
from shadowd.diff.engine import compare_answers
from shadowd.exchange import Answer

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


def timed(fn: Callable[[], object], repeat: int, budget: float = 0.2) -> float:
    """Median µs per call over `repeat` rounds, each running for about `budget` seconds."""
    fn()
    started = time.perf_counter()
    fn()
    once = max(time.perf_counter() - started, 1e-7)
    calls = max(1, int(budget / once))
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
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
            if DeepDiff is not None:
                budget = 0.5 if items < 100 else 1.0
                deep = timed(
                    lambda da=da, db=db: DeepDiff(da, db), max(1, args.repeat // 2), budget
                )
            if jsondiff is not None:
                jd = timed(lambda da=da, db=db: jsondiff.diff(da, db), max(1, args.repeat // 2))
            print(
                f"{size_name + ' ' + variant:<24}{len(a.body):>8}{ours:>10.1f}{floor:>9.1f}"
                f"{deep:>11.0f}{jd:>11.0f}{deep / ours:>12.0f}x{ours / floor:>9.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

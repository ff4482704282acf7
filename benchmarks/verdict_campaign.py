"""The verdict's campaign on a realistic noisy service: false-positive runs, recall and false
blames over seeded runs (docs/verdict.md has the figures).

Each run starts three instances of tests/noisy_service.py (primary, secondary, candidate) in
a child process on loopback, a real shadowd in front of them, sends the run's seeded traffic
through it (paced at a fixed rate, or as fast as 32 clients can), and reads the verdict and
the report from the admin API. Scenarios:

- the identical candidate, with a secondary (paced, and flooded), with the primary-twice
  probe and no secondary, and with neither (the likely-noise heuristics alone);
- one candidate per planted regression (tests/noisy_service.py REGRESSIONS), with a
  secondary and with the probe.

A run counts as a false positive when an identical candidate does not pass; a regression is
recalled when a reason names it (its endpoint and its words); a false blame is a field
judged divergent that no planted regression explains.

    .venv/bin/python benchmarks/verdict_campaign.py                 # 20 runs a scenario
    .venv/bin/python benchmarks/verdict_campaign.py --runs 5 --regression-runs 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from noisy_service import REGRESSIONS, Outcome, judge_variant


async def campaign(args: argparse.Namespace) -> list[tuple[str, list[Outcome]]]:
    scenarios: list[tuple[str, str, str, bool, int]] = [
        ("identical, secondary, paced", "identical", "secondary", False, args.runs),
        ("identical, secondary, flood", "identical", "secondary", True, args.runs),
        (f"identical, probe {args.probe:g}, paced", "identical", "probe", False, args.runs),
        ("identical, no baseline, paced", "identical", "none", False, args.runs),
    ]
    for name in REGRESSIONS:
        scenarios.append((f"{name}, secondary", name, "secondary", False, args.regression_runs))
        scenarios.append(
            (f"{name}, probe {args.probe:g}", name, "probe", False, args.regression_runs)
        )
    if args.only:
        scenarios = [s for s in scenarios if any(word in s[0] for word in args.only)]
    results = []
    for label, variant, baseline, flood, runs in scenarios:
        outcomes = []
        for seed in range(runs):
            outcome = await judge_variant(
                variant,
                baseline=baseline,
                seed=seed,
                flood=flood,
                requests=args.requests,
                rate=args.rate,
                probe=args.probe,
            )
            outcomes.append(outcome)
            print(
                f"  {label} seed {seed}: {outcome.verdict} in {outcome.seconds:.1f} s"
                + (f" blames {outcome.false_blames()}" if outcome.false_blames() else ""),
                file=sys.stderr,
                flush=True,
            )
            if outcome.verdict != ("pass" if variant == "identical" else "fail"):
                print(f"    reasons: {outcome.reasons}", file=sys.stderr, flush=True)
        results.append((label, outcomes))
    return results


def table(results: list[tuple[str, list[Outcome]]]) -> str:
    rows = [
        "| scenario | runs | pass | fail | inconclusive | named | false blames | fewest exchanges"
        " | median s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, outcomes in results:
        verdicts = [o.verdict for o in outcomes]
        variant = outcomes[0].variant
        if variant in REGRESSIONS:
            named = f"{sum(o.named(REGRESSIONS[variant]) for o in outcomes)}/{len(outcomes)}"
        else:
            named = "-"
        rows.append(
            f"| {label} | {len(outcomes)} | {verdicts.count('pass')} | {verdicts.count('fail')}"
            f" | {verdicts.count('inconclusive')} | {named}"
            f" | {sum(len(o.false_blames()) for o in outcomes)}"
            f" | {min(o.exchanges for o in outcomes)}"
            f" | {statistics.median(o.seconds for o in outcomes):.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each identical scenario")
    parser.add_argument("--regression-runs", type=int, default=20, help="runs a regression")
    parser.add_argument("--requests", type=int, default=1500, help="requests a run")
    parser.add_argument("--rate", type=float, default=250.0, help="paced requests a second")
    parser.add_argument("--probe", type=float, default=0.5, help="[noise] primary_probe")
    parser.add_argument(
        "--only", nargs="*", default=[], help="run the scenarios whose label has one of these"
    )
    args = parser.parse_args()
    began = time.perf_counter()
    results = asyncio.run(campaign(args))
    print(table(results))
    print(f"\n{time.perf_counter() - began:.0f} s in all")


if __name__ == "__main__":
    main()

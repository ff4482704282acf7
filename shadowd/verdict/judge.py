"""The promotion verdict: pass, fail or inconclusive, with every criterion's evidence (pure).

Inputs are the divergence report (``shadowd.report.build_report``), the latency and error
evidence (``VerdictEvidence``) and the ``[verdict]`` thresholds. Each criterion is judged
per endpoint and overall; any failure fails the verdict; otherwise too few samples make it
inconclusive; otherwise it passes. Every reason is one line a human can act on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shadowd.config import Config
from shadowd.exchange import CANDIDATE, PRIMARY, SECONDARY
from shadowd.noise import DIVERGENT
from shadowd.verdict.evidence import OVERALL, EndpointEvidence, VerdictEvidence
from shadowd.verdict.stats import (
    MIN_PAIRS,
    P99_MIN_PAIRS,
    paired_latency,
    proportion_increase,
    unpaired_latency,
)

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"

_KIND_WORDS = {
    "type": "type changed",
    "changed": "value changed",
    "missing": "missing",
    "extra": "added",
    "array_length": "array length changed",
    "status": "status differs",
    "error": "no answer",
    "header": "value differs",
    "header_missing": "missing",
    "header_extra": "added",
    "content_type": "content type differs",
    "body": "body differs",
    "invalid_json": "invalid JSON",
}


@dataclass(slots=True)
class Criterion:
    name: str  # divergence | errors | latency_p50 | latency_p99 | samples
    scope: str  # an endpoint, or "overall"
    status: str  # pass | fail | inconclusive
    measured: float | None
    threshold: float | None
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Verdict:
    verdict: str
    reasons: list[str]
    criteria: list[Criterion]
    exchanges: int
    window: dict[str, Any]
    thresholds: dict[str, Any]
    config_digest: str
    owner: str
    expected_result: str
    rollback: str
    judged_at: float

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["failed"] = [c.reason for c in self.criteria if c.status == FAIL]
        doc["inconclusive"] = [c.reason for c in self.criteria if c.status == INCONCLUSIVE]
        return doc


def judge(report: dict[str, Any], evidence: VerdictEvidence, config: Config) -> Verdict:
    rules = config.verdict
    has_secondary = config.secondary is not None
    excluded = set(rules.exclude_endpoints)
    weights = dict(rules.endpoint_weights)
    criteria: list[Criterion] = []
    total = int(report["totals"]["exchanges"])
    weighted_exchanges = weighted_divergent = 0.0
    for endpoint in report["endpoints"]:
        name = endpoint["endpoint"]
        if name in excluded:
            continue
        exchanges = int(endpoint["exchanges"])
        if exchanges < max(rules.min_exchanges_per_endpoint, 1):
            criteria.append(
                Criterion(
                    "samples",
                    name,
                    INCONCLUSIVE,
                    exchanges,
                    rules.min_exchanges_per_endpoint,
                    f"{name}: {exchanges} exchanges of the "
                    f"{rules.min_exchanges_per_endpoint} needed per endpoint",
                )
            )
            continue
        divergence = _divergence(endpoint, has_secondary, config)
        criteria.append(divergence)
        weight = weights.get(name, 1.0)
        weighted_exchanges += weight * exchanges
        weighted_divergent += weight * exchanges * (divergence.measured or 0.0)
        ev = evidence.endpoints.get(name)
        if ev is not None:
            criteria.extend(_errors(name, ev, config))
            criteria.extend(_latency(name, ev, evidence, config))
    if total < rules.min_exchanges:
        criteria.insert(
            0,
            Criterion(
                "samples",
                "overall",
                INCONCLUSIVE,
                total,
                rules.min_exchanges,
                f"{total} exchanges so far, {rules.min_exchanges} needed to judge",
            ),
        )
    overall_ratio = weighted_divergent / weighted_exchanges if weighted_exchanges else 0.0
    criteria.append(
        Criterion(
            "divergence",
            "overall",
            FAIL if overall_ratio > rules.max_divergence_ratio else PASS,
            overall_ratio,
            rules.max_divergence_ratio,
            f"overall: {overall_ratio:.2%} of exchanges diverge "
            f"(limit {rules.max_divergence_ratio:.2%})",
        )
    )
    criteria.extend(_errors("overall", evidence.overall, config))
    criteria.extend(_latency("overall", evidence.overall, evidence, config))
    statuses = {c.status for c in criteria}
    verdict = FAIL if FAIL in statuses else INCONCLUSIVE if INCONCLUSIVE in statuses else PASS
    reasons = (
        [c.reason for c in criteria if c.status == verdict]
        if verdict != PASS
        else [f"all {len(criteria)} criteria pass over {total} exchanges"]
    )
    return Verdict(
        verdict=verdict,
        reasons=reasons,
        criteria=criteria,
        exchanges=total,
        window=report.get("window", {}),
        thresholds={
            "min_exchanges": rules.min_exchanges,
            "min_exchanges_per_endpoint": rules.min_exchanges_per_endpoint,
            "max_divergence_ratio": rules.max_divergence_ratio,
            "max_error_rate_increase": rules.max_error_rate_increase,
            "max_latency_regression_p50": rules.max_latency_regression_p50,
            "max_latency_regression_p99": rules.max_latency_regression_p99,
            "significance": rules.significance,
            "warmup_exchanges": rules.warmup_exchanges,
            "warmup_seconds": rules.warmup_seconds,
            "min_p99_pairs": P99_MIN_PAIRS,
            "noise_relative": config.diff.noise_relative,
            "noise_absolute": config.diff.noise_absolute,
        },
        config_digest=config.digest,
        owner=rules.owner,
        expected_result=rules.expected_result,
        rollback=rules.rollback,
        judged_at=time.time(),
    )


def _described(path: str, kind: str) -> str:
    """``$.price type changed``; never ``body body differs``: kind words that repeat the
    path's last segment (``body``, ``status``, ``content-type``) are not said twice."""
    words = _KIND_WORDS.get(kind, kind)
    last = path.rsplit(".", 1)[-1].replace("-", " ").replace("_", " ").lower()
    if last and words.lower().startswith(last + " "):
        words = words[len(last) + 1 :]
    return f"{path} {words}"


def _divergence(endpoint: dict[str, Any], has_secondary: bool, config: Config) -> Criterion:
    """The endpoint's divergence rate: that of its worst field (and kind) that noise does not
    explain. The report decided each field against noise of the same kind, with a
    significance test corrected across every field of every endpoint (``shadowd.noise``)."""
    name = endpoint["endpoint"]
    exchanges = int(endpoint["exchanges"])
    limit = config.verdict.max_divergence_ratio
    worst: dict[str, Any] | None = None
    worst_ratio = 0.0
    for fld in endpoint.get("fields", []):
        if fld.get("decision") != DIVERGENT:
            continue
        ratio = int(fld.get("beyond_noise", fld["divergent"])) / exchanges
        if ratio > worst_ratio:
            worst, worst_ratio = fld, ratio
    if worst is None:
        return Criterion(
            "divergence",
            name,
            PASS,
            0.0,
            limit,
            f"{name}: no divergence beyond noise in {exchanges} exchanges",
        )
    kinds: dict[str, int] = worst.get("kinds") or {}
    kind = worst.get("decisive_kind") or (
        max(kinds, key=lambda k: kinds[k]) if kinds else "changed"
    )
    noise_kinds = worst.get("noise_kinds")
    noise_count = int(worst.get("noise", 0)) if noise_kinds is None else noise_kinds.get(kind, 0)
    noise = int(noise_count) / exchanges
    # the noise shown is that of the same kind at the same path (what it was compared with)
    noise_text = f"noise {noise:.0%}" if has_secondary else "no secondary for noise"
    return Criterion(
        "divergence",
        name,
        FAIL if worst_ratio > limit else PASS,
        worst_ratio,
        limit,
        f"{name}: {_described(worst['path'], kind)} in {worst_ratio:.0%} of "
        f"{exchanges} exchanges ({noise_text})",
        {
            "path": worst["path"],
            "kind": kind,
            "noise_ratio": noise,
            "p_value": worst.get("p_value"),
            "q_value": worst.get("q_value"),
        },
    )


def _errors(scope: str, ev: EndpointEvidence, config: Config) -> list[Criterion]:
    rules = config.verdict
    cand, prim = ev.errors[CANDIDATE], ev.errors[PRIMARY]
    test = proportion_increase(cand.errors, cand.answers, prim.errors, prim.answers)
    if test is None:
        return []
    second = ev.errors[SECONDARY]
    failed = test.increase > rules.max_error_rate_increase and test.p_value < rules.significance
    noise = f", secondary {second.errors / second.answers:.1%}" if second.answers else ""
    return [
        Criterion(
            "errors",
            scope,
            FAIL if failed else PASS,
            test.increase,
            rules.max_error_rate_increase,
            f"{scope}: candidate errors {test.candidate_rate:.1%} vs primary "
            f"{test.baseline_rate:.1%}{noise} (+{test.increase:.1%}, p={test.p_value:.3g}; "
            f"limit +{rules.max_error_rate_increase:.1%})",
            {
                "candidate": dict(cand.by_kind),
                "primary": dict(prim.by_kind),
                "secondary": dict(second.by_kind),
                "p_value": test.p_value,
            },
        )
    ]


def _latency_rows(
    scope: str, ev: EndpointEvidence, evidence: VerdictEvidence, config: Config
) -> tuple[np.ndarray, np.ndarray, str, dict[str, Any]]:
    """(baseline, candidate, baseline name, warm-up details) of the rows to judge.

    The baseline is the secondary when one is configured: the primary's own release, sent
    on the copy path at the same moment as the candidate, so queueing on that path and the
    time the primary spends paused for a slow client cancel out. Without a secondary it is
    the primary, as it is when the secondary answered fewer than ``MIN_PAIRS`` usable rows
    (down, or failing): the reason says which. Rows of an endpoint's warm-up
    (``[verdict] warmup_exchanges`` / ``warmup_seconds``) are left out."""
    rules = config.verdict
    columns = ev.pairs.columns()
    candidate = columns["candidate"]
    warm = np.zeros(len(candidate), dtype=bool)
    if rules.warmup_exchanges > 0 or rules.warmup_seconds > 0:
        if scope == "overall":
            until = {
                e.code: e.warmup_until(rules.warmup_exchanges, rules.warmup_seconds)
                for e in evidence.endpoints.values()
            }
            limits = np.array([until.get(int(code), -np.inf) for code in columns["code"]])
        else:
            limits = np.full(
                len(candidate), ev.warmup_until(rules.warmup_exchanges, rules.warmup_seconds)
            )
        warm = columns["at"] <= limits
    baseline_name = PRIMARY
    if config.secondary is not None:
        baseline_name = SECONDARY
        with_secondary = np.isfinite(columns[SECONDARY]) & np.isfinite(candidate) & ~warm
        if np.count_nonzero(with_secondary) < MIN_PAIRS:
            baseline_name = "primary (too few secondary answers)"
    baseline = columns[PRIMARY if baseline_name.startswith(PRIMARY) else SECONDARY]
    usable = np.isfinite(baseline) & np.isfinite(candidate)
    keep = usable & ~warm
    excluded = int(np.count_nonzero(usable & warm))
    details = {
        "exchanges": rules.warmup_exchanges,
        "seconds": rules.warmup_seconds,
        "excluded_pairs": excluded,
    }
    return baseline[keep], candidate[keep], baseline_name, details


def _latency(
    scope: str, ev: EndpointEvidence, evidence: VerdictEvidence, config: Config
) -> list[Criterion]:
    rules = config.verdict
    baseline, candidate, against, warmup = _latency_rows(scope, ev, evidence, config)
    paired = paired_latency(baseline, candidate, confidence=1 - rules.significance)
    if paired is None:
        return []
    unpaired = unpaired_latency(baseline, candidate)
    mwu_p = unpaired.mann_whitney_p if unpaired else 1.0
    details = {
        "baseline": against,
        "warmup": warmup,
        "paired": asdict(paired),
        "unpaired": asdict(unpaired) if unpaired else None,
    }
    if against == SECONDARY:
        whose = "the secondary's on the same copy path"
    elif against != PRIMARY:
        whose = (
            "the primary's, the secondary answered too few: primary timed inline, "
            "candidate on the copy path,"
        )
    else:
        whose = "the primary's, no secondary: primary timed inline, candidate on the copy path,"
    left_out = (
        f"; {warmup['excluded_pairs']} warm-up pairs left out" if warmup["excluded_pairs"] else ""
    )
    limit50 = 1 + rules.max_latency_regression_p50
    # Fails only when both tests agree the candidate is slower and even the optimistic end
    # of the interval is beyond the tolerance.
    failed50 = paired.ratio_low > limit50 and mwu_p < rules.significance
    result = [
        Criterion(
            "latency_p50",
            scope,
            FAIL if failed50 else PASS,
            paired.median_ratio - 1,
            rules.max_latency_regression_p50,
            f"{scope}: candidate median latency x{paired.median_ratio:.2f} of {whose} "
            f"(interval x{paired.ratio_low:.2f}-x{paired.ratio_high:.2f}, "
            f"{paired.pairs} pairs{left_out}; limit +{rules.max_latency_regression_p50:.0%})",
            details,
        )
    ]
    # The p99 is judged from P99_MIN_PAIRS pairs on, so that each side's p99 rests on at
    # least 10 observations above it; it fails only when the low end of its paired bootstrap
    # interval is beyond the tolerance.
    p99, p99_low, p99_high = paired.p99_ratio, paired.p99_ratio_low, paired.p99_ratio_high
    if p99 is not None and p99_low is not None and p99_high is not None:  # >= P99_MIN_PAIRS
        limit99 = 1 + rules.max_latency_regression_p99
        failed99 = p99_low > limit99
        result.append(
            Criterion(
                "latency_p99",
                scope,
                FAIL if failed99 else PASS,
                p99 - 1,
                rules.max_latency_regression_p99,
                f"{scope}: candidate p99 latency x{p99:.2f} of {whose} "
                f"(interval x{p99_low:.2f}-x{p99_high:.2f}, "
                f"{paired.pairs} pairs, {paired.p99_tail} above each p99{left_out}; "
                f"limit +{rules.max_latency_regression_p99:.0%})",
                {"baseline": against, "warmup": warmup, "min_pairs": P99_MIN_PAIRS},
            )
        )
    return result


__all__ = ["FAIL", "INCONCLUSIVE", "OVERALL", "PASS", "Criterion", "Verdict", "judge"]

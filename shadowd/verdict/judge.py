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
from shadowd.verdict.evidence import OVERALL, EndpointEvidence, VerdictEvidence, usage_column
from shadowd.verdict.stats import (
    MIN_PAIRS,
    P99_MIN_PAIRS,
    paired_latency,
    proportion_increase,
    sign_test_greater,
    unpaired_latency,
)

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"

_KIND_WORDS = {
    "type": "type changed",
    "number_type": "changed between integer and float",
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
    # divergence | errors | latency_p50 | latency_p99 | db_calls | cache_hit_ratio | samples
    name: str
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
    has_secondary = config.noise_baseline is not None
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
            criteria.extend(_usage(name, ev, config))
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
            "max_db_calls_increase": rules.max_db_calls_increase,
            "max_cache_hit_drop": rules.max_cache_hit_drop,
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
    if config.noise_baseline is not None:
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


# How each setting took the primary's latency, said in every latency reason against it.
_PRIMARY_TIMED = {
    "inline": "primary timed inline, candidate on the copy path",
    "copy_path": "both timed on the copy path (tap mode)",
    "recorded": "primary as recorded in the capture (another time and load), "
    "candidate timed by this replay",
    "replayed": "both sent and timed by this replay",
}


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
    else:
        why = "the secondary answered too few" if against != PRIMARY else "no secondary"
        whose = f"the primary's, {why}: {_PRIMARY_TIMED[config.primary_timed]},"
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


def _count(value: float) -> str:
    return f"{value:.3g}"


def _usage(scope: str, ev: EndpointEvidence, config: Config) -> list[Criterion]:
    """The work behind the answers, from the usage rows after the endpoint's warm-up (a cold
    candidate misses its cache and queries more until it is warm). No criterion below
    ``MIN_PAIRS`` rows: an endpoint whose services do not report usage is not judged on it."""
    if ev.usage is None:
        return []
    rules = config.verdict
    rows, at = ev.usage.held()
    warm = at <= ev.warmup_until(rules.warmup_exchanges, rules.warmup_seconds)
    left_out = int(np.count_nonzero(warm))
    rows = rows[~warm]
    result = []
    db = _db_calls(scope, rows, config, left_out)
    if db is not None:
        result.append(db)
    cache = _cache_hits(scope, rows, config, left_out)
    if cache is not None:
        result.append(cache)
    return result


def _db_calls(scope: str, rows: np.ndarray, config: Config, left_out: int) -> Criterion | None:
    """Candidate vs primary DB calls of the same request, paired. Fails when the candidate
    makes more than (1 + ``max_db_calls_increase``) times the primary's calls on average,
    a one-sided sign test on c - (1 + tolerance) p per request gives p < ``significance``,
    and, with a secondary, the same holds against the secondary (the primary's release on
    the copy path: what the same requests cost when nothing changed)."""
    rules = config.verdict
    limit = 1 + rules.max_db_calls_increase
    c = rows[:, usage_column(CANDIDATE, "db_calls")]
    p = rows[:, usage_column(PRIMARY, "db_calls")]
    s = rows[:, usage_column(SECONDARY, "db_calls")]
    paired = np.isfinite(c) & np.isfinite(p)
    n = int(np.count_nonzero(paired))
    if n < MIN_PAIRS:
        return None
    c_mean, p_mean = float(c[paired].mean()), float(p[paired].mean())
    ratio = c_mean / p_mean if p_mean > 0 else (np.inf if c_mean > 0 else 1.0)
    p_value = sign_test_greater(c[paired] - limit * p[paired])
    failed = ratio > limit and p_value < rules.significance
    details: dict[str, Any] = {
        "pairs": n,
        "candidate": c_mean,
        "primary": p_mean,
        "p_value": p_value,
        "warmup_rows_left_out": left_out,
    }
    noise = ""
    with_secondary = np.isfinite(c) & np.isfinite(s)
    if config.noise_baseline is not None and np.count_nonzero(with_secondary) >= MIN_PAIRS:
        s_mean = float(s[with_secondary].mean())
        c_mean_s = float(c[with_secondary].mean())
        noise_p = sign_test_greater(c[with_secondary] - limit * s[with_secondary])
        beyond = c_mean_s > limit * s_mean and noise_p < rules.significance
        failed = failed and beyond
        details.update(secondary=s_mean, secondary_p_value=noise_p, beyond_noise=beyond)
        noise = f"; secondary {_count(s_mean)}"
    shown = "new" if ratio == np.inf else f"x{ratio:.1f}"
    warm = f", {left_out} warm-up requests left out" if left_out else ""
    return Criterion(
        "db_calls",
        scope,
        FAIL if failed else PASS,
        None if ratio == np.inf else ratio - 1,
        rules.max_db_calls_increase,
        f"{scope}: candidate makes {_count(c_mean)} DB calls per request vs {_count(p_mean)} "
        f"({shown}, {n} pairs{noise}; p={p_value:.3g}{warm}; "
        f"limit +{rules.max_db_calls_increase:.0%})",
        details,
    )


def _cache_hits(scope: str, rows: np.ndarray, config: Config, left_out: int) -> Criterion | None:
    """The candidate's cache hit ratio vs the primary's over the same requests. Fails when
    it is more than ``max_cache_hit_drop`` lower, a one-sided two-proportion z-test on the
    miss rates gives p < ``significance``, and, with a secondary, both hold against the
    secondary too (its own misses are the noise)."""
    rules = config.verdict

    def lookups(target: str) -> tuple[np.ndarray, np.ndarray]:
        hits = rows[:, usage_column(target, "hits")]
        return hits, hits + rows[:, usage_column(target, "misses")]

    c_hits, c_look = lookups(CANDIDATE)
    p_hits, p_look = lookups(PRIMARY)
    s_hits, s_look = lookups(SECONDARY)
    paired = np.isfinite(c_look) & np.isfinite(p_look) & ((c_look > 0) | (p_look > 0))
    n = int(np.count_nonzero(paired))
    if n < MIN_PAIRS:
        return None

    def ratio(hits: np.ndarray, look: np.ndarray, keep: np.ndarray) -> tuple[float, int, int]:
        h, total = int(hits[keep].sum()), int(look[keep].sum())
        return (h / total if total else 0.0), h, total

    c_ratio, c_h, c_n = ratio(c_hits, c_look, paired)
    p_ratio, p_h, p_n = ratio(p_hits, p_look, paired)
    test = proportion_increase(c_n - c_h, c_n, p_n - p_h, p_n)
    if test is None:
        return None
    drop = p_ratio - c_ratio
    failed = drop > rules.max_cache_hit_drop and test.p_value < rules.significance
    details: dict[str, Any] = {
        "requests": n,
        "candidate": {"hits": c_h, "lookups": c_n},
        "primary": {"hits": p_h, "lookups": p_n},
        "p_value": test.p_value,
        "warmup_rows_left_out": left_out,
    }
    noise = ""
    with_secondary = np.isfinite(c_look) & np.isfinite(s_look) & ((c_look > 0) | (s_look > 0))
    if config.noise_baseline is not None and np.count_nonzero(with_secondary) >= MIN_PAIRS:
        s_ratio, s_h, s_n = ratio(s_hits, s_look, with_secondary)
        c_ratio_s, c_h_s, c_n_s = ratio(c_hits, c_look, with_secondary)
        noise_test = proportion_increase(c_n_s - c_h_s, c_n_s, s_n - s_h, s_n)
        beyond = (
            noise_test is not None
            and s_ratio - c_ratio_s > rules.max_cache_hit_drop
            and noise_test.p_value < rules.significance
        )
        failed = failed and beyond
        details.update(
            secondary={"hits": s_h, "lookups": s_n},
            secondary_p_value=None if noise_test is None else noise_test.p_value,
            beyond_noise=beyond,
        )
        noise = f", secondary {s_ratio:.0%}"
    warm = f", {left_out} warm-up requests left out" if left_out else ""
    return Criterion(
        "cache_hit_ratio",
        scope,
        FAIL if failed else PASS,
        drop,
        rules.max_cache_hit_drop,
        f"{scope}: cache hit ratio {c_ratio:.0%} vs {p_ratio:.0%} (candidate vs primary"
        f"{noise}; {-drop * 100:+.0f} points, p={test.p_value:.3g}, {n} requests{warm}; "
        f"limit -{rules.max_cache_hit_drop * 100:.0f} points)",
        details,
    )


__all__ = ["FAIL", "INCONCLUSIVE", "OVERALL", "PASS", "Criterion", "Verdict", "judge"]

"""The verdict's statistics and the noise rule, on synthetic data with known answers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from shadowd.noise import DIVERGENT, NOISE, WITHIN_NOISE, decide_field
from shadowd.verdict.evidence import PairReservoir
from shadowd.verdict.stats import (
    benjamini_hochberg,
    bh_adjusted,
    fisher_margin_greater,
    median_interval,
    p99_ratio_interval,
    paired_latency,
    proportion_increase,
    unpaired_latency,
)


def lognormal(n: int, median_ms: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.lognormal(np.log(median_ms / 1000), 0.3, n)


def test_identical_latency_distributions_give_a_ratio_interval_around_one():
    base = lognormal(2000, 10, seed=1)
    jitter = np.random.default_rng(2).lognormal(0, 0.05, 2000)
    result = paired_latency(base, base * jitter)
    assert result is not None
    assert result.ratio_low < 1.0 < result.ratio_high
    assert result.wilcoxon_p > 0.01


def test_a_15ms_slowdown_on_a_10ms_endpoint_is_found_with_a_tight_interval():
    base = lognormal(1000, 10, seed=3)
    result = paired_latency(base, base + 0.015)
    assert result is not None
    assert result.ratio_low > 2.0
    assert result.wilcoxon_p < 1e-6


def test_too_few_pairs_are_not_judged():
    assert paired_latency(np.ones(5), np.ones(5)) is None
    assert unpaired_latency(np.ones(5), np.ones(50)) is None


def test_mann_whitney_sees_a_shift_and_estimates_it():
    primary = lognormal(500, 20, seed=4)
    candidate = lognormal(500, 20, seed=5) + 0.010
    result = unpaired_latency(primary, candidate)
    assert result is not None
    assert result.mann_whitney_p < 0.001
    assert result.common_language > 0.6
    assert 0.007 < result.hodges_lehmann < 0.013


def test_more_errors_on_the_candidate_are_significant():
    result = proportion_increase(60, 1000, 10, 1000)
    assert result is not None
    assert abs(result.increase - 0.05) < 1e-9
    assert result.p_value < 1e-6


def test_equal_error_rates_are_not_significant():
    result = proportion_increase(10, 1000, 10, 1000)
    assert result is not None
    assert result.p_value == 0.5


def test_reservoir_stays_bounded_and_uniform():
    reservoir = PairReservoir(100, seed=9)
    for i in range(10_000):
        reservoir.add(float(i), float(i))
    primary, _ = reservoir.arrays()
    assert len(primary) == 100
    assert reservoir.seen == 10_000
    assert 3000 < float(np.median(primary)) < 7000  # not just the first or last values


def test_field_differing_as_often_on_the_secondary_is_noise():
    decision = decide_field(500, 498, 500, has_secondary=True)
    assert decision.decision == NOISE


def test_real_break_beats_noise_by_both_margins():
    decision = decide_field(500, 0, 500, has_secondary=True)
    assert decision.decision == DIVERGENT


def test_break_on_a_noisy_field_at_a_much_higher_rate_is_divergent():
    # noisy in 10% of answers, but the candidate changes it every time
    decision = decide_field(1000, 100, 1000, has_secondary=True)
    assert decision.decision == DIVERGENT


def test_break_within_the_relative_margin_is_noise():
    decision = decide_field(110, 100, 1000, has_secondary=True)
    assert decision.decision == NOISE
    assert "relative" in decision.why


def test_tiny_absolute_excess_is_within_noise():
    decision = decide_field(3, 0, 100_000, has_secondary=True, absolute=0.0003)
    assert decision.decision == WITHIN_NOISE


def test_without_secondary_every_difference_counts():
    assert decide_field(1, 0, 1000, has_secondary=False).decision == DIVERGENT


def test_median_interval_from_order_statistics_covers_the_median():
    rng = np.random.default_rng(31)
    misses = 0
    for _ in range(400):
        sample = rng.lognormal(0, 1, 200)  # true median 1
        low, high = median_interval(sample, 0.95)
        misses += not (low <= 1.0 <= high)
    assert misses <= 0.05 * 400 + 8  # at least 95 % coverage (conservative: discrete ranks)


def test_p99_bootstrap_on_the_top_pairs_equals_the_full_bootstrap():
    rng = np.random.default_rng(32)
    n = 2000
    baseline = rng.lognormal(-5, 0.3, n)
    candidate = baseline * rng.lognormal(0, 0.05, n)
    candidate[baseline > np.quantile(baseline, 0.97)] *= 1.3
    point, low, high = p99_ratio_interval(baseline, candidate, 0.95)
    need = n - int(np.ceil(0.99 * n)) + 1
    full = []
    for _ in range(1000):  # the textbook bootstrap: resample every pair, take both p99s
        pick = rng.integers(0, n, n)
        full.append(
            np.partition(candidate[pick], n - need)[n - need]
            / np.partition(baseline[pick], n - need)[n - need]
        )
    full_low, full_high = np.quantile(full, [0.025, 0.975])
    assert abs(low - full_low) < 0.02 and abs(high - full_high) < 0.02
    assert low < point < high


def test_exact_tests_match_scipy_and_bh_controls_the_family():
    from scipy.stats import hypergeom, nchypergeom_fisher

    c, s, n = (
        np.array([10, 3, 20, 8, 5]),
        np.array([2, 1, 5, 0, 40]),
        np.array([342, 75, 342, 342, 342]),
    )
    plain = fisher_margin_greater(c, s, n, 1.0)
    margin = fisher_margin_greater(c, s, n, 1.5)
    for i in range(len(c)):
        assert np.isclose(plain[i], hypergeom.sf(c[i] - 1, 2 * n[i], n[i], c[i] + s[i]))
        assert np.isclose(
            margin[i], nchypergeom_fisher.sf(c[i] - 1, 2 * n[i], n[i], c[i] + s[i], 1.5)
        )
    assert list(benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]), 0.05)) == [
        True,
        False,
        False,
        False,
    ]
    assert list(benjamini_hochberg(np.array([0.01, 0.02, 0.03, 0.04]), 0.05)) == [True] * 4
    q = bh_adjusted(np.array([0.01, 0.04, 0.03, 0.5]))
    assert np.allclose(q, [0.04, 0.0533333, 0.0533333, 0.5])


def test_the_report_decides_fields_without_importing_scipy():
    # The report is built by the supervisor, which must stay small (no SciPy there).
    code = (
        "import sys\n"
        "from shadowd.noise import decide_fields, FieldCounts\n"
        "d = decide_fields([FieldCounts(342, 300, 0, {'changed': 300}, {})], has_secondary=True)\n"
        "assert d[0].decision == 'divergent'\n"
        "assert 'scipy' not in sys.modules, 'scipy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

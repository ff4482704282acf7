"""The report's vectorised latency summary gives exactly what hdrh's own (slow) walks give."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shadowd.aggregate import LATENCY_MAX_US, latency_summary, new_latency_histogram

PERCENTILES = (0.0, 50.0, 90.0, 99.0, 99.9, 100.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, LATENCY_MAX_US), min_size=0, max_size=400))
def test_latency_summary_matches_hdrh(values):
    hist = new_latency_histogram()
    for value in values:
        hist.record_value(value)
    summary = latency_summary(hist, PERCENTILES)
    if not values:
        assert summary["max"] == 0 and summary["mean"] == 0
        return
    for q in PERCENTILES[1:]:
        assert summary[f"p{q:g}"] == hist.get_value_at_percentile(q)
    assert summary["max"] == hist.get_max_value()
    assert abs(summary["mean"] - hist.get_mean_value()) <= 1e-9 * hist.get_mean_value()

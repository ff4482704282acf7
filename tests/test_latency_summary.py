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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, LATENCY_MAX_US * 2), min_size=1, max_size=400))
def test_batched_recording_fills_the_same_buckets_as_record_value(values):
    from shadowd.aggregate import LATENCY_MIN_US, record_many

    one_by_one, batched = new_latency_histogram(), new_latency_histogram()
    for value in values:
        one_by_one.record_value(min(max(value, LATENCY_MIN_US), LATENCY_MAX_US))
    record_many(batched, values)
    assert list(batched.counts) == list(one_by_one.counts)
    assert batched.get_total_count() == one_by_one.get_total_count()
    assert (batched.min_value, batched.max_value) == (one_by_one.min_value, one_by_one.max_value)

"""The report JSON built from an aggregator, and the table ``shadowd report`` prints."""

from __future__ import annotations

import orjson
from test_aggregate import SAME, d, make_config, make_diff, make_exchange

from shadowd.aggregate import Aggregator
from shadowd.report import build_report, endpoint_samples, render_samples, render_table

USERS = "GET /users/{id}"
ORDERS = "GET /orders/{id}"
HEALTH = "GET /health"


def fed_aggregator() -> Aggregator:
    """10 users exchanges (4 divergent on $.items[*].price, 5 noisy on $.ts, 1 candidate
    timeout), 3 orders exchanges (1 divergent on status), 20 health exchanges (none)."""
    agg = Aggregator(make_config())
    for i in range(10):
        candidate: list = []
        if i < 4:
            candidate = [d("$.items[0].price", "type", 1, "1"), d("$.items[1].price", "changed")]
        noise = [d("$.ts")] if i < 5 else []
        answers = {"primary": (200, 0.010), "secondary": (200, 0.010), "candidate": (200, 0.020)}
        if i == 9:
            answers["candidate"] = "timeout"
        agg.add(make_exchange(USERS, id=i, **answers), make_diff(*candidate, secondary=noise))
    for i in range(3):
        diff = make_diff(d("status", "status", 200, 500), secondary=[]) if i == 0 else SAME
        answers = {"primary": 200, "secondary": 200, "candidate": 500 if i == 0 else 200}
        agg.add(make_exchange(ORDERS, id=100 + i, **answers), diff)
    for i in range(20):
        agg.add(make_exchange(HEALTH, id=200 + i), SAME)
    return agg


def endpoint(report: dict, name: str) -> dict:
    (found,) = [e for e in report["endpoints"] if e["endpoint"] == name]
    return found


def test_report_has_the_documented_shape():
    report = build_report(fed_aggregator(), {"enabled": True})
    assert set(report) >= {"generated_at", "window", "mirroring", "totals", "endpoints"}
    assert set(report["window"]) == {"since", "seconds"}
    assert set(report["totals"]) >= {"exchanges", "divergent", "divergent_ratio", "noisy", "errors"}
    assert set(endpoint(report, USERS)) >= {
        "id",
        "endpoint",
        "exchanges",
        "divergent",
        "divergent_ratio",
        "noisy",
        "noise_ratio",
        "errors",
        "status",
        "latency",
        "fields",
    }
    orjson.dumps(report)  # JSON as it is


def test_totals_add_up_over_endpoints():
    totals = build_report(fed_aggregator())["totals"]
    assert totals["exchanges"] == 33
    assert totals["divergent"] == 5
    assert totals["divergent_ratio"] == 5 / 33
    assert totals["noisy"] == 5
    assert totals["errors"] == {"candidate": 1}


def test_endpoint_numbers():
    users = endpoint(build_report(fed_aggregator()), USERS)
    assert (users["exchanges"], users["divergent"], users["noisy"]) == (10, 4, 5)
    assert (users["divergent_ratio"], users["noise_ratio"]) == (0.4, 0.5)
    assert users["errors"] == {"candidate": 1}
    assert users["status"] == {
        "primary": {"2xx": 10},
        "secondary": {"2xx": 10},
        "candidate": {"2xx": 9},
    }


def test_latency_quantiles_are_seconds_per_target():
    latency = endpoint(build_report(fed_aggregator()), USERS)["latency"]
    assert set(latency) == {"primary", "secondary", "candidate"}
    candidate = latency["candidate"]
    assert set(candidate) >= {"count", "p50", "p90", "p99", "p999", "max"}
    assert candidate["count"] == 9  # the timeout is not a latency
    for q in ("p50", "p99", "max"):
        assert abs(candidate[q] - 0.020) <= 0.020 * 0.01


def test_fields_carry_kinds_counts_and_ratios():
    users = endpoint(build_report(fed_aggregator()), USERS)
    price, ts = users["fields"]  # sorted by divergent, most first
    assert price["path"] == "$.items[*].price"
    assert price["kinds"] == {"type": 4, "changed": 4}
    assert (price["divergent"], price["noise"], price["divergent_ratio"]) == (4, 0, 0.4)
    assert ts["path"] == "$.ts"
    assert (ts["divergent"], ts["noise"], ts["noise_ratio"]) == (0, 5, 0.5)


def test_endpoints_come_most_divergent_first():
    names = [e["endpoint"] for e in build_report(fed_aggregator())["endpoints"]]
    assert names == [USERS, ORDERS, HEALTH]


def test_the_daemons_status_is_copied_under_mirroring():
    status = {"enabled": False, "queue_depth": 3, "dropped": {"queue_full": 2}}
    assert build_report(fed_aggregator(), status)["mirroring"] == status


def test_the_window_starts_at_the_last_reset():
    agg = fed_aggregator()
    agg.reset()
    report = build_report(agg)
    assert report["window"]["since"] == agg.reset_at
    assert report["totals"]["exchanges"] == 0
    assert report["endpoints"] == []


def test_samples_of_one_endpoint_newest_first():
    agg = fed_aggregator()
    users_id = endpoint(build_report(agg), USERS)["id"]
    samples = endpoint_samples(agg, users_id)
    assert samples is not None
    assert samples["endpoint"] == USERS
    assert [s["exchange"] for s in samples["samples"]] == [3, 2, 1, 0]


def test_samples_of_an_unknown_endpoint_are_none():
    assert endpoint_samples(fed_aggregator(), "ffffffffff") is None


def test_table_lists_endpoints_and_the_fields_of_divergent_ones():
    table = render_table(
        build_report(fed_aggregator(), {"enabled": True, "dropped": {"queue_full": 2}})
    )
    assert "33 exchanges" in table
    assert "mirroring on" in table and "queue_full 2" in table
    for name in (USERS, ORDERS, HEALTH):
        assert name in table
    assert "$.items[*].price" in table
    assert "changed:4,type:4" in table
    assert "4 (40.0%)" in table
    assert "status:1" in table


def test_table_columns_are_aligned():
    lines = render_table(build_report(fed_aggregator())).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("endpoint"))
    rows = lines[header : header + 4]
    ends = {len(row) for row in rows}
    assert len(ends) == 1  # right-aligned last column: every row ends at the same place


def test_table_fits_the_width():
    agg = Aggregator(make_config())
    long_name = "GET /" + "very-long-segment/" * 10 + "{id}"
    agg.add(make_exchange(long_name), make_diff(d("$." + "deep." * 20 + "leaf")))
    table = render_table(build_report(agg), width=100)
    assert "GET /very-long-segment/" in table  # cut, not dropped
    assert max(len(line) for line in table.splitlines()) <= 100


def test_table_of_an_empty_report_says_so():
    assert "No exchanges yet" in render_table(build_report(Aggregator(make_config())))


def test_samples_text_shows_answers_and_values():
    agg = fed_aggregator()
    orders_id = endpoint(build_report(agg), ORDERS)["id"]
    samples = endpoint_samples(agg, orders_id)
    assert samples is not None
    text = render_samples(samples)
    assert "GET /orders/{id}: 1 recent divergent exchanges" in text
    assert "candidate 500" in text
    assert "status  status: primary=200 candidate=500 secondary=200" in text

"""The aggregator, fed hand-built exchanges and diffs: no sockets, no diff engine."""

from __future__ import annotations

import dataclasses
import re
import tracemalloc
from typing import Any

from shadowd.aggregate import (
    OTHER_FIELD,
    SAMPLE_DIFFERENCES,
    SAMPLE_INTERVAL,
    Aggregator,
    endpoint_id,
    new_latency_histogram,
)
from shadowd.config import Config, DiffConfig, EndpointsConfig, target_from_url
from shadowd.diff.model import Difference, DiffKind, ExchangeDiff
from shadowd.exchange import Answer, Exchange, Request

# -- helpers (also used by test_report.py and test_admin.py) ----------------------------------
AnswerSpec = Answer | int | str | tuple[int, float]


def make_config(*, secondary: bool = True, max_endpoints: int = 200, **diff: Any) -> Config:
    return Config(
        source="<test>",
        primary=target_from_url("primary", "http://127.0.0.1:9001"),
        candidate=target_from_url("candidate", "http://127.0.0.1:9003"),
        secondary=target_from_url("secondary", "http://127.0.0.1:9002") if secondary else None,
        endpoints=EndpointsConfig(max=max_endpoints),
        diff=dataclasses.replace(DiffConfig(), **diff),
    )


def _answer(target: str, spec: AnswerSpec) -> Answer:
    """200 → a 200 in 10 ms; "timeout" → an error; (200, 0.5) → a 200 in 500 ms."""
    if isinstance(spec, Answer):
        return spec
    if isinstance(spec, str):
        return Answer(target, error=spec)
    status, latency = spec if isinstance(spec, tuple) else (spec, 0.010)
    return Answer(target, status=status, body=b"{}", body_size=2, latency=latency)


def make_exchange(
    endpoint: str = "GET /users/{id}",
    *,
    id: int = 1,
    target: str = "/users/1",
    headers: list[tuple[bytes, bytes]] | None = None,
    received_at: float = 1_000.0,
    **answers: AnswerSpec,
) -> Exchange:
    """One line per exchange: ``make_exchange(primary=200, candidate=500, secondary="reset")``.
    Without answers: primary, secondary and candidate all 200."""
    if not answers:
        answers = {"primary": 200, "secondary": 200, "candidate": 200}
    method = endpoint.partition(" ")[0]
    request = Request(method, target, headers or [], b"", received_at)
    return Exchange(id, request, endpoint, {t: _answer(t, s) for t, s in answers.items()})


def d(path: str, kind: str = "changed", reference: Any = 1, other: Any = 2) -> Difference:
    """A difference at an exact path; its generic path has indices as ``[*]``."""
    return Difference(path, re.sub(r"\[\d+\]", "[*]", path), DiffKind(kind), reference, other)


def make_diff(*candidate: Difference, secondary: list[Difference] | None = None) -> ExchangeDiff:
    return ExchangeDiff(candidate=list(candidate), secondary=secondary)


SAME = make_diff(secondary=[])


# -- counts -----------------------------------------------------------------------------------
def test_counts_exchanges_divergent_and_noisy_per_endpoint():
    agg = Aggregator(make_config())
    agg.add(make_exchange(), SAME)
    agg.add(make_exchange(), make_diff(d("$.a")))
    agg.add(make_exchange(), make_diff(secondary=[d("$.ts")]))
    agg.add(make_exchange("GET /health"), SAME)
    stats = agg.endpoints["GET /users/{id}"]
    assert (stats.exchanges, stats.divergent, stats.noisy) == (3, 1, 1)
    assert agg.endpoints["GET /health"].exchanges == 1


def test_totals_sum_over_endpoints():
    agg = Aggregator(make_config())
    agg.add(make_exchange("GET /a", candidate="timeout", primary=200), make_diff(d("error")))
    agg.add(make_exchange("GET /b", primary="reset", candidate=200), SAME)
    agg.add(make_exchange("GET /b"), make_diff(secondary=[d("$.ts")]))
    totals = agg.totals
    assert (totals.exchanges, totals.divergent, totals.noisy) == (3, 1, 1)
    assert totals.errors == {"candidate": 1, "primary": 1}


def test_endpoint_id_is_ten_hex_digits_stable_across_restarts():
    agg = Aggregator(make_config())
    agg.add(make_exchange("GET /users/{id}"), SAME)
    assert endpoint_id("GET /users/{id}") == "7666780fa5"  # blake2b, 5 bytes: never changes
    assert agg.by_id("7666780fa5") is agg.endpoints["GET /users/{id}"]
    assert agg.by_id("0000000000") is None


def test_errors_are_failed_answers_per_target():
    agg = Aggregator(make_config())
    agg.add(make_exchange(primary=200, candidate="timeout"), SAME)
    agg.add(make_exchange(primary=200, candidate=500), SAME)  # an answer: a status, not an error
    stats = agg.endpoints["GET /users/{id}"]
    assert stats.errors == {"candidate": 1}


def test_status_classes_are_counted_per_target():
    agg = Aggregator(make_config())
    for status in (200, 204, 404, 503):
        agg.add(make_exchange(primary=200, candidate=status), SAME)
    stats = agg.endpoints["GET /users/{id}"]
    assert stats.statuses["candidate"] == {"2xx": 2, "4xx": 1, "5xx": 1}
    assert stats.statuses["primary"] == {"2xx": 4}


def test_latency_leaves_failed_answers_out():
    agg = Aggregator(make_config())
    agg.add(make_exchange(primary=(200, 0.002), candidate="timeout"), SAME)
    agg.add(make_exchange(primary=(200, 0.004), candidate=(200, 0.300)), SAME)
    latency = agg.endpoints["GET /users/{id}"].latency
    assert latency["primary"].get_total_count() == 2
    assert latency["candidate"].get_total_count() == 1
    assert abs(latency["candidate"].get_max_value() - 300_000) <= 300_000 * 0.01


def test_latency_outside_the_histogram_range_is_clamped_not_lost():
    agg = Aggregator(make_config())
    agg.add(make_exchange(primary=(200, 0.0), candidate=(200, 3600.0)), SAME)
    latency = agg.endpoints["GET /users/{id}"].latency
    assert latency["primary"].get_min_value() == 1  # µs
    assert latency["candidate"].get_max_value() >= 59_000_000  # ~60 s, the top of the range


def test_a_histogram_about_to_overflow_is_halved_not_wrapped():
    agg = Aggregator(make_config())
    agg.add(make_exchange(primary=(200, 0.001)), SAME)
    hist = agg.endpoints["GET /users/{id}"].latency["primary"]
    hist.record_value(1_000, 2**32 - 2)  # 32-bit counts: one more would reach the limit
    agg.add(make_exchange(primary=(200, 0.001)), SAME)
    halved = agg.endpoints["GET /users/{id}"].latency["primary"]
    assert 2**31 - 2 <= halved.get_total_count() <= 2**31 + 2
    assert abs(halved.get_value_at_percentile(50) - 1_000) <= 10


def test_latency_histograms_stay_small():
    tracemalloc.start()
    histograms = [new_latency_histogram() for _ in range(600)]  # 200 endpoints x 3 targets
    for hist in histograms:
        for micros in range(1, 60_000_000, 600_001):
            hist.record_value(micros)
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert used < 8 * 2**20  # measured: 6.5 MiB, 11 KiB each


# -- fields -----------------------------------------------------------------------------------
def test_a_kind_is_counted_once_per_exchange_and_path():
    agg = Aggregator(make_config())
    two_prices = make_diff(
        d("$.items[0].price", "type", 1, "1"), d("$.items[1].price", "type", 2, "2")
    )
    agg.add(make_exchange(), two_prices)
    agg.add(make_exchange(), two_prices)
    field = agg.endpoints["GET /users/{id}"].fields["$.items[*].price"]
    assert field.kinds == {"type": 2}
    assert field.divergent == 2


def test_each_kind_on_one_path_is_counted():
    agg = Aggregator(make_config())
    agg.add(
        make_exchange(),
        make_diff(d("$.items[0].price", "type"), d("$.items[1].price", "missing")),
    )
    field = agg.endpoints["GET /users/{id}"].fields["$.items[*].price"]
    assert field.kinds == {"type": 1, "missing": 1}
    assert field.divergent == 1


def test_noise_is_counted_once_per_exchange_and_path():
    agg = Aggregator(make_config())
    agg.add(make_exchange(), make_diff(secondary=[d("$.rows[0].ts"), d("$.rows[1].ts")]))
    agg.add(make_exchange(), make_diff(d("$.rows[0].ts"), secondary=[d("$.rows[3].ts")]))
    field = agg.endpoints["GET /users/{id}"].fields["$.rows[*].ts"]
    assert (field.noise, field.divergent) == (2, 1)


def test_fields_past_the_cap_are_counted_under_other_once_per_exchange():
    agg = Aggregator(make_config(max_fields_per_endpoint=2))
    agg.add(make_exchange(), make_diff(d("$.a"), d("$.b")))
    agg.add(make_exchange(), make_diff(d("$.c"), d("$.d"), d("$.e"), secondary=[d("$.f")]))
    fields = agg.endpoints["GET /users/{id}"].fields
    assert set(fields) == {"$.a", "$.b", OTHER_FIELD}
    assert (fields[OTHER_FIELD].divergent, fields[OTHER_FIELD].noise) == (1, 1)
    assert fields[OTHER_FIELD].kinds == {"changed": 1}


def test_endpoints_past_the_cap_are_counted_under_other():
    agg = Aggregator(make_config(max_endpoints=2))
    for name in ("GET /a", "GET /b", "GET /c", "GET /d"):
        agg.add(make_exchange(name), SAME)
    assert set(agg.endpoints) == {"GET /a", "GET /b", "other"}
    assert agg.endpoints["other"].exchanges == 2


# -- samples ----------------------------------------------------------------------------------
def test_samples_are_bounded_and_keep_the_newest():
    agg = Aggregator(make_config(samples_per_endpoint=3))
    for i in range(10):
        agg.add(make_exchange(id=i, received_at=1_000.0 + i), make_diff(d("$.a")))
    samples = agg.endpoints["GET /users/{id}"].samples
    assert [s["exchange"] for s in samples] == [7, 8, 9]


def test_a_full_sample_deque_takes_at_most_one_sample_per_interval():
    agg = Aggregator(make_config(samples_per_endpoint=2))
    for i in range(5):  # all within one interval
        agg.add(
            make_exchange(id=i, received_at=1_000.0 + i * SAMPLE_INTERVAL / 10), make_diff(d("$.a"))
        )
    agg.add(make_exchange(id=99, received_at=1_000.0 + 2 * SAMPLE_INTERVAL), make_diff(d("$.a")))
    samples = agg.endpoints["GET /users/{id}"].samples
    assert [s["exchange"] for s in samples] == [1, 99]


def test_only_the_samples_read_are_built(monkeypatch):
    """A delta carries a few samples of the many an analysis worker keeps: building one
    (decoding, redacting) is the costly part, so it waits until a sample is read."""
    import shadowd.aggregate as aggregate
    from shadowd.analysis.snapshot import snapshot_of
    from shadowd.verdict.evidence import VerdictEvidence

    built: list[int] = []
    real = aggregate._sample

    def counting(exchange, diff, config=None):
        built.append(exchange.id)
        return real(exchange, diff, config)

    monkeypatch.setattr(aggregate, "_sample", counting)
    agg = Aggregator(make_config(samples_per_endpoint=20))
    for e in range(10):  # 10 endpoints x 20 divergent exchanges: 200 sample slots filled
        for i in range(20):
            agg.add(
                make_exchange(f"GET /e{e}", id=e * 100 + i, target=f"/e{e}"),
                make_diff(d("$.a")),
            )
    assert built == []
    snap = snapshot_of(agg, VerdictEvidence(200), max_samples=15)
    assert len(built) == 15  # the newest of each endpoint, then the second newest, ...
    assert sorted(built) == sorted(s["exchange"] for e in snap["endpoints"] for s in e["samples"])
    (e3,) = [e for e in snap["endpoints"] if e["name"] == "GET /e3"]
    sent = len(e3["samples"])
    assert {s["exchange"] for s in agg.endpoints["GET /e3"].samples} == set(range(300, 320))
    assert len(built) == 15 + 20 - sent  # read now: built, but those already sent not again
    assert len(agg.endpoints["GET /e3"].samples) == 20
    assert len(built) == 15 + 20 - sent


def test_exchanges_without_candidate_differences_are_not_sampled():
    agg = Aggregator(make_config())
    agg.add(make_exchange(), make_diff(secondary=[d("$.ts")]))
    assert not agg.endpoints["GET /users/{id}"].samples


def test_samples_redact_secret_headers():
    secrets = [
        b"Authorization",
        b"Cookie",
        b"Set-Cookie",
        b"Proxy-Authorization",
        b"X-Api-Key",
        b"X-Auth-Token",
        b"X-Client-Secret",
        b"X-Signing-Key",
    ]
    headers = [(name, b"s3cret-value") for name in secrets] + [(b"Accept", b"application/json")]
    agg = Aggregator(make_config())
    agg.add(make_exchange(headers=headers), make_diff(d("$.a")))
    (sample,) = agg.endpoints["GET /users/{id}"].samples
    shown = dict(sample["request"]["headers"])
    assert {shown[name.decode()] for name in secrets} == {"[redacted]"}
    assert shown["Accept"] == "application/json"
    assert "s3cret-value" not in repr(sample)


def test_samples_redact_secret_query_parameters_and_fields():
    agg = Aggregator(make_config())
    agg.add(
        make_exchange(target="/users/1?api_key=k-1&page=2"),
        make_diff(d("$.session_token", "changed", "tok-a", "tok-b")),
    )
    (sample,) = agg.endpoints["GET /users/{id}"].samples
    assert "k-1" not in sample["request"]["target"]
    assert "page=2" in sample["request"]["target"]
    assert sample["differences"][0]["primary"] == "[redacted]"
    assert sample["differences"][0]["candidate"] == "[redacted]"


def test_a_sample_has_each_targets_answer_and_the_field_level_diff():
    agg = Aggregator(make_config())
    agg.add(
        make_exchange(id=7, primary=(200, 0.002), candidate=(500, 0.004), secondary="timeout"),
        make_diff(d("status", "status", 200, 500)),
    )
    (sample,) = agg.endpoints["GET /users/{id}"].samples
    assert sample["exchange"] == 7
    assert sample["request"]["method"] == "GET"
    assert sample["answers"]["candidate"] == {
        "status": 500,
        "error": None,
        "latency_ms": 4.0,
        "body_bytes": 2,
        "headers": [],  # the answer's own, for the dashboard's side-by-side view
        "body": "{}",
    }
    assert sample["answers"]["secondary"]["error"] == "timeout"
    assert sample["answers"]["secondary"]["body"] is None  # no answer, no body
    assert sample["differences"] == [
        {
            "path": "status",
            "generic_path": "status",
            "kind": "status",
            "primary": 200,
            "candidate": 500,
        }
    ]


def test_a_sample_shows_the_secondary_value_at_the_same_path():
    agg = Aggregator(make_config())
    agg.add(
        make_exchange(),
        make_diff(
            d("$.items[1].price", "type", 20, "20"),
            d("$.ts", "changed", 1, 2),
            secondary=[d("$.ts", "changed", 1, 3)],
        ),
    )
    (sample,) = agg.endpoints["GET /users/{id}"].samples
    by_path = {x["path"]: x for x in sample["differences"]}
    assert by_path["$.ts"]["secondary"] == 3
    assert by_path["$.items[1].price"]["secondary"] == 20  # no noise there: as the primary


def test_a_sample_has_no_secondary_value_when_the_secondary_failed():
    agg = Aggregator(make_config())
    agg.add(
        make_exchange(primary=200, candidate=200, secondary="reset"),
        make_diff(d("$.a"), secondary=[d("error", "error")]),
    )
    (sample,) = agg.endpoints["GET /users/{id}"].samples
    assert "secondary" not in sample["differences"][0]


def test_a_sample_lists_a_bounded_number_of_differences():
    agg = Aggregator(make_config())
    many = make_diff(*(d(f"$.f{i}") for i in range(SAMPLE_DIFFERENCES + 5)))
    agg.add(make_exchange(), many)
    (sample,) = agg.endpoints["GET /users/{id}"].samples
    assert len(sample["differences"]) == SAMPLE_DIFFERENCES
    assert sample["overflow"] == 5


# -- reset and metrics ------------------------------------------------------------------------
def test_reset_really_clears_and_records_the_time():
    agg = Aggregator(make_config())
    agg.add(make_exchange(candidate="timeout", primary=200), make_diff(d("$.a")))
    endpoint = agg.endpoints["GET /users/{id}"].id
    before = agg.reset_at
    cleared = agg.reset()
    assert cleared == {"endpoints": 1, "exchanges": 1}
    assert agg.endpoints == {}
    assert agg.by_id(endpoint) is None
    assert (agg.totals.exchanges, agg.totals.divergent, agg.totals.errors) == (0, 0, {})
    assert agg.reset_at >= before
    assert agg.started_at <= before


def test_each_exchange_reaches_the_metrics():
    from shadowd.metrics import Metrics

    config = make_config()
    metrics = Metrics(config)
    agg = Aggregator(config, metrics)
    agg.add(make_exchange(), make_diff(d("$.a", "type"), d("$.b", "type")))
    value = metrics.registry.get_sample_value
    labels = {"endpoint": "GET /users/{id}"}
    assert value("shadowd_divergences_total", {**labels, "kind": "type"}) == 1
    assert value("shadowd_divergent_exchanges_total", labels) == 1
    assert value("shadowd_exchanges_total", {**labels, "target": "candidate"}) == 1

"""Text bodies line by line (shadowd.diff.text): a changed line is not averaged with a
print-time line that differs in every answer. Pure: answers built in memory, seeded."""

from __future__ import annotations

import random

from conftest import build_config

from shadowd.aggregate import Aggregator
from shadowd.config import DiffConfig
from shadowd.diff.engine import compare_answers, diff_exchange
from shadowd.diff.text import MAX_LINES, template_of
from shadowd.exchange import Answer, Exchange, Request
from shadowd.noise import DIVERGENT, LIKELY_NOISE
from shadowd.report import build_report
from shadowd.verdict.evidence import VerdictEvidence
from shadowd.verdict.judge import judge

T0 = 1_800_000_000.0


def text(body: str, media: bytes = b"text/plain; charset=utf-8", target: str = "x") -> Answer:
    raw = body.encode()
    return Answer(target, 200, [(b"content-type", media)], raw, len(raw), latency=0.004)


def found(a: Answer, b: Answer) -> list[tuple[str, str, str]]:
    differences, _ = compare_answers(a, b, DiffConfig())
    return [(d.path, d.generic_path, d.kind.value) for d in differences]


def receipt(rng: random.Random, total: str = "12.50") -> str:
    return (
        f"RECEIPT {rng.getrandbits(64):016x}\n"
        f"Printed at 2026-11-29T19:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z\n"
        f"1 x coffee 2.50\n2 x cake 10.00\n"
        f"Total: {total} EUR\n"
        f"served in {rng.randrange(1, 90)} ms\n"
    )


def test_volatile_tokens_are_generalised_in_the_line_key():
    assert template_of("Printed at 2026-11-29T19:14:52Z")[0] == "Printed at <ts>"
    assert template_of("order 3f2a9c1b7d4e6f80 for bob")[0] == "order <hex> for bob"
    assert template_of("order 0123456789012345 for bob")[0] == "order <hex> for bob"
    assert template_of("qty 12 of 3")[0] == "qty <n> of <n>"
    assert template_of("id=0b7c5a9e-4f0e-4c1e-9d43-2f0b3e1a9c77;")[0] == "id=<uuid>;"
    assert template_of("Total: 12.50 EUR")[0] == "Total: <n> EUR"
    assert template_of('<input name="csrf" value="Zk3pQ9xL2mV8aR1tB7nW">')[0] == (
        '<input name="csrf" value="<token>">'
    )
    assert template_of("at 1764443692 seconds")[0] == "at <epoch> seconds"


def test_a_changed_line_is_its_own_difference_at_its_template():
    rng = random.Random(1)
    a = text(receipt(rng))
    b = text(receipt(random.Random(1), total="12.60"))
    assert found(a, b) == [("text:line[4]:Total: <n> EUR", "text:line:Total: <n> EUR", "changed")]


def test_an_inserted_line_does_not_shift_the_lines_after_it():
    a = text("one\ntwo\nthree\n")
    b = text("one\nnew\ntwo\nthree\n")
    assert found(a, b) == [("text:line[1]:new", "text:line:new", "extra")]


def test_a_removed_line_is_missing():
    assert found(text("one\ntwo\nthree\n"), text("one\nthree\n")) == [
        ("text:line[1]:two", "text:line:two", "missing")
    ]


def test_minified_html_is_split_between_tags():
    page = '<html><body><form><input type="hidden" name="csrf" value="{}"><p>Hi {}</p></form>'
    a = text(page.format("Zk3pQ9xL2mV8aR1tB7nW", "Ann"), b"text/html")
    b = text(page.format("Qm8vT2bN5cX1zL7kD4sE", "Bob"), b"text/html")
    assert found(a, b) == [
        (
            'text:line[3]:<input type="hidden" name="csrf" value="<token>">',
            'text:line:<input type="hidden" name="csrf" value="<token>">',
            "changed",
        ),
        ("text:line[4]:<p>Hi Ann</p>", "text:line:<p>Hi Ann</p>", "changed"),
    ]


def test_csv_rows_are_lines():
    a = text("sku,qty\nA1,3\nB2,4\n", b"text/csv")
    b = text("sku,qty\nA1,3\nB2,5\n", b"text/csv")
    assert found(a, b) == [("text:line[2]:B2,<n>", "text:line:B2,<n>", "changed")]


def test_past_the_line_bound_it_is_one_body_difference():
    lines = "".join(f"row {i}\n" for i in range(MAX_LINES + 1))
    assert found(text(lines), text(lines + "one more\n")) == [("body", "body", "body")]


def test_only_whitespace_differs():
    assert found(text("a\n\nb\n"), text("a\nb\n")) == [
        ("text:whitespace", "text:whitespace", "changed")
    ]


def _run(candidate_total: float | None, secondary: bool, n: int = 300):
    """n receipts: the print time, id and duration differ on every answer; the candidate's
    total differs in 10 % of them when ``candidate_total`` is set."""
    urls = ("http://127.0.0.1:1", "http://127.0.0.1:2")
    cfg = build_config(
        *urls, "http://127.0.0.1:3" if secondary else None, verdict={"min_exchanges": 100}
    )
    aggregator = Aggregator(cfg)
    evidence = VerdictEvidence(cfg.endpoints.max)
    rng = random.Random(7)
    for i in range(n):
        exchange = Exchange(
            i, Request("GET", f"/r/{i}", [(b"host", b"h")], b"", T0 + i), "GET /r/{id}"
        )
        exchange.answers["primary"] = text(receipt(rng), target="primary")
        if secondary:
            exchange.answers["secondary"] = text(receipt(rng), target="secondary")
        total = "12.50" if candidate_total is None or i % 10 else str(candidate_total)
        exchange.answers["candidate"] = text(receipt(rng, total), target="candidate")
        diff = diff_exchange(exchange, cfg.diff)
        aggregator.add(exchange, diff)
        evidence.record(exchange, diff)
    report = build_report(aggregator)
    fields = {f["path"]: f for f in report["endpoints"][0]["fields"]}
    return fields, judge(report, evidence, cfg)


def test_with_a_secondary_the_print_time_is_noise_and_a_changed_total_is_named():
    fields, verdict = _run(candidate_total=12.6, secondary=True)
    assert fields["text:line:Printed at <ts>"]["decision"] != DIVERGENT
    assert fields["text:line:RECEIPT <hex>"]["decision"] != DIVERGENT
    assert fields["text:line:served in <n> ms"]["decision"] != DIVERGENT
    assert fields["text:line:Total: <n> EUR"]["decision"] == DIVERGENT
    assert verdict.verdict == "fail"
    assert any("text:line:Total: <n> EUR value changed in 10%" in r for r in verdict.reasons)


def test_with_a_secondary_an_identical_text_service_passes():
    fields, verdict = _run(candidate_total=None, secondary=True)
    assert not any(f["decision"] == DIVERGENT for f in fields.values())
    assert verdict.verdict == "pass", verdict.reasons


def test_without_a_secondary_ids_and_clocks_in_lines_are_likely_noise():
    fields, _ = _run(candidate_total=12.6, secondary=False)
    assert fields["text:line:Printed at <ts>"]["decision"] == LIKELY_NOISE
    assert fields["text:line:RECEIPT <hex>"]["decision"] == LIKELY_NOISE
    assert fields["text:line:Total: <n> EUR"]["decision"] == DIVERGENT


def test_a_value_from_a_line_that_names_a_secret_is_hidden_in_samples():
    from shadowd.redact import MARKER, Redaction

    a = text("user: ann\napi_token: Zk3pQ9xL2mV8aR1tB7nW\n")
    b = text("user: ann\napi_token: Qm8vT2bN5cX1zL7kD4sE\n")
    (d,), _ = compare_answers(a, b, DiffConfig())
    assert d.other == "Qm8vT2bN5cX1zL7kD4sE"  # the token alone: no name left to scrub by
    assert Redaction().value_at(d.path, d.other) == MARKER
    plain = text("Total: 12.50 EUR\n"), text("Total: 12.60 EUR\n")
    (total,), _ = compare_answers(*plain, DiffConfig())
    assert Redaction().value_at(total.path, total.other) == 12.6

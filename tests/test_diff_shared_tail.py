"""SharedTail: the end an endpoint's answers share, parsed once and reused by every answer
that ends with it, in any JSON formatting. A document built on it must be what orjson.loads
of the whole body gives (same keys in the same order, same values of the same types), and
INVALID exactly when the body is not JSON, whatever comes before the tail; and the diff of
an exchange must be the same with and without it.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_diff_shared_suffix import objects, parsed_whole, prefixes, same

from shadowd.config import DiffConfig, DiffRule
from shadowd.diff import prepared
from shadowd.diff.engine import diff_exchange
from shadowd.diff.prepared import INVALID, PreparedAnswer, SharedTail, shared_tail
from shadowd.diff.rules import EMPTY, rules_for
from shadowd.exchange import Answer, Exchange, Request


@pytest.fixture(autouse=True)
def fresh_tails():
    """Tails are kept per endpoint name in the process: every test starts without any."""
    prepared.forget_tails()
    yield
    prepared.forget_tails()


def answer(body: bytes, target: str = "x") -> Answer:
    return Answer(target, 200, [(b"Content-Type", b"application/json")], body, len(body))


# json.dumps in the styles services write: compact, spaced, indented, trailing newline
STYLES = (
    {"separators": (",", ":")},
    {},
    {"indent": 2},
    {"indent": "\t", "separators": (", ", " : ")},
)


def formatted(doc: dict, style: int) -> bytes:
    return json.dumps(doc, ensure_ascii=False, **STYLES[style]).encode()


def member_commas(body: bytes) -> list[int]:
    """Offsets of every comma in a body (member separators among them)."""
    return [i for i, byte in enumerate(body) if byte == ord(",")]


@settings(max_examples=500)
@given(objects, st.sampled_from(range(len(STYLES))), st.data())
@example({"a": 1, "b": 2}, 1, None)
def test_a_document_built_on_a_tail_is_the_whole_parse(doc, style, data):
    body = formatted(doc, style)
    tail = SharedTail()
    commas = member_commas(body)
    if data is None:
        learned, prefix = tail.learn(body[body.index(b", ") :]), '{"b": 3'
    else:
        # any comma of the body (nested, in a string, or a member separator)
        learned = tail.learn(body[data.draw(st.sampled_from(commas)) :]) if commas else False
        prefix = data.draw(prefixes)
    if not learned:
        assert tail.text is None
        return
    other = prefix.encode() + tail.text
    built = tail.document(other)
    if built is not None:
        assert same(built, parsed_whole(other))
    assert same(tail.document(body) or parsed_whole(body), parsed_whole(body))


@settings(max_examples=300)
@given(objects, objects, st.sampled_from(range(len(STYLES))))
def test_documents_of_an_exchange_in_any_formatting_are_the_whole_parse(a, b, style):
    # shared whatever the size (hypothesis runs every example inside one test call)
    prepared._MIN_SHARED, saved = 0, prepared._MIN_SHARED
    try:
        tail = SharedTail()
        bodies = [formatted(a, style), formatted({**b, **a}, style), formatted(b, style)]
        for _ in range(2):  # learned on the first pass, reused on the second
            reference = PreparedAnswer(answer(bodies[0]), EMPTY, tail=tail)
            assert same(reference.document(), parsed_whole(bodies[0]))
            for body in bodies[1:]:
                assert same(
                    PreparedAnswer(answer(body), EMPTY, tail=tail).document(reference),
                    parsed_whole(body),
                )
    finally:
        prepared._MIN_SHARED = saved


def test_a_text_that_is_not_the_last_members_is_not_learned():
    body = b'{"a": 1, "b": {"x": 1, "y": 2}}'
    tail = SharedTail()
    assert not tail.learn(body[body.index(b", ") :][:-1])  # the root's brace cut off
    assert not tail.learn(body[body.rindex(b",") :])  # nested: one brace too many
    assert not tail.learn(b", }")  # no member
    assert tail.text is None
    assert tail.learn(body[body.index(b", ") :])
    assert tail.members == {"b": {"x": 1, "y": 2}}


def test_a_body_whose_rest_is_no_object_is_parsed_whole():
    tail = SharedTail()
    assert tail.learn(b', "b": [1, 2]}')
    assert tail.document(b'{"a": 1, "b": [1, 2]}') == {"a": 1, "b": [1, 2]}
    for rest in (b"", b"{", b"{ ", b'{"a":', b'{"a":"x', b'["a",1', b'{"a":{"c":1', b'{"s":"'):
        assert tail.document(rest + b', "b": [1, 2]}') is None
    assert tail.document(b'{"a": 1, "b": [1, 3]}') is None  # ends otherwise


def order_document(request_id: str, clock: float) -> dict:
    items = [{"sku": f"SKU-{i}", "price": 4.5 + i, "tags": ["red"] * (i % 3)} for i in range(30)]
    return {"request_id": request_id, "at": clock, "items": items, "totals": {"net": 1.5}}


def exchange(number: int, style: int, rng: random.Random) -> Exchange:
    ex = Exchange(number, Request("GET", "/orders/1", [], b"", 0.0), "GET /orders/{id}")
    for target in ("primary", "secondary", "candidate"):
        doc = order_document(f"{rng.getrandbits(64):x}", 1.7e9 + rng.random())
        if target == "candidate" and number % 2:
            doc["totals"]["net"] = 2  # a real difference, in the shared part's place
        ex.answers[target] = answer(formatted(doc, style), target)
    return ex


@pytest.mark.parametrize("style", range(len(STYLES)))
def test_the_diffs_of_an_endpoints_exchanges_do_not_change(style, monkeypatch):
    rng = random.Random(5)
    exchanges = [exchange(i, style, rng) for i in range(12)]
    config = DiffConfig()
    with_tails = [diff_exchange(ex, config) for ex in exchanges]
    assert prepared._TAILS["GET /orders/{id}"].text is not None
    monkeypatch.setattr(SharedTail, "document", lambda self, body: None)
    monkeypatch.setattr(SharedTail, "learn", lambda self, text: False)
    monkeypatch.setattr(SharedTail, "keep", lambda self, text, members: None)
    prepared.forget_tails()
    assert with_tails == [diff_exchange(ex, config) for ex in exchanges]
    assert all(d.candidate and d.secondary for d in with_tails)


def test_answers_of_later_exchanges_share_the_tails_objects():
    rng = random.Random(1)
    diff_exchange(exchange(0, 1, rng), DiffConfig())  # learns the tail
    tail = shared_tail("GET /orders/{id}")
    ex = exchange(2, 1, rng)
    docs = [
        PreparedAnswer(ex.answers[t], EMPTY, tail=tail).document() for t in ("primary", "candidate")
    ]
    assert docs[0]["items"] is docs[1]["items"] is tail.members["items"]
    assert docs[0]["request_id"] != docs[1]["request_id"]


def test_a_tail_longer_than_kept_serves_its_exchange_only(monkeypatch):
    monkeypatch.setattr(prepared, "TAIL_KEPT_BYTES", 100)
    import shadowd.diff.engine as engine

    monkeypatch.setattr(engine, "TAIL_KEPT_BYTES", 100)
    diff_exchange(exchange(0, 0, random.Random(2)), DiffConfig())
    assert shared_tail("GET /orders/{id}").text is None


def test_rules_that_reorder_arrays_turn_sharing_off():
    rules = rules_for((DiffRule("o", "order", "unordered", path="$.items"),), "GET /x")
    tail = SharedTail()
    assert tail.learn(b', "items": [2, 1]}')
    prepared_answer = PreparedAnswer(answer(b'{"a": 1, "items": [2, 1]}'), rules, tail=tail)
    doc = prepared_answer.document()
    assert doc["items"] is not tail.members["items"]


def test_invalid_json_stays_invalid():
    tail = SharedTail()
    assert tail.learn(b', "b": [1, 2]}')
    body = b'{"a": 1 "x", "b": [1, 2]}'
    assert PreparedAnswer(answer(body), EMPTY, tail=tail).document() is INVALID


def test_tails_past_the_byte_budget_are_dropped_and_learned_again(monkeypatch):
    monkeypatch.setattr(prepared, "TAILS_BUDGET_BYTES", 3000)
    rng = random.Random(4)
    for number in range(4):  # four endpoints of ~1.5 KB tails: over the budget at the third
        ex = exchange(number, 0, rng)
        ex.endpoint = f"GET /e{number}"
        diff_exchange(ex, DiffConfig())
        assert prepared._kept_bytes <= 3000 + 2000
    assert len(prepared._TAILS) < 4
    assert shared_tail("GET /e3").text is not None  # the newest one was learned again

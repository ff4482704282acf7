"""100 vs 100.0: equal numbers, but strictly typed clients (Go, Rust, Java) refuse a float
where they decode an integer. It is its own kind, number_type, below a type change."""

from __future__ import annotations

import pytest

from shadowd.config import DiffConfig, DiffRule
from shadowd.diff.engine import compare_answers, diff_exchange
from shadowd.diff.json_diff import DiffCollector, diff_json
from shadowd.diff.model import SEVERITY, DiffKind
from shadowd.diff.rules import rules_for
from shadowd.exchange import Answer, Exchange, Request


def diffs(a, b):
    out = DiffCollector(1000)
    diff_json(a, b, out)
    return [(d.path, d.kind, d.reference, d.other) for d in out.differences]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (100, 100.0, DiffKind.NUMBER_TYPE),
        (100.0, 100, DiffKind.NUMBER_TYPE),
        (0, -0.0, DiffKind.NUMBER_TYPE),
        (100, 100.5, DiffKind.CHANGED),  # the value changed: that says more
        (True, 1, DiffKind.TYPE),  # bool is not a number, even though True == 1
        (1, True, DiffKind.TYPE),
        (False, 0.0, DiffKind.TYPE),
        (1, "1", DiffKind.TYPE),
    ],
)
def test_kind_of_a_number_change(a, b, expected):
    assert diffs({"n": a}, {"n": b}) == [("$.n", expected, a, b)]
    assert diffs([a], [b]) == [("$[0]", expected, a, b)]


def test_an_int_float_swap_inside_containers_that_compare_equal_is_found():
    a = {"page": {"size": 20, "items": [{"price": 100}]}, "ok": True}
    b = {"page": {"size": 20.0, "items": [{"price": 100.0}]}, "ok": True}
    assert a == b  # what == alone says
    assert diffs(a, b) == [
        ("$.page.size", DiffKind.NUMBER_TYPE, 20, 20.0),
        ("$.page.items[0].price", DiffKind.NUMBER_TYPE, 100, 100.0),
    ]


def test_number_type_ranks_below_a_type_change_and_every_kind_has_a_severity():
    assert SEVERITY[DiffKind.NUMBER_TYPE] < SEVERITY[DiffKind.TYPE]
    assert set(SEVERITY) == set(DiffKind)


def answer(target: str, body: bytes) -> Answer:
    return Answer(target, 200, [(b"Content-Type", b"application/json")], body, len(body))


def test_an_exchange_with_a_float_for_an_integer_is_divergent():
    ex = Exchange(1, Request("GET", "/x", [], b"", 0.0), "GET /x")
    ex.answers["primary"] = answer("primary", b'{"count": 100, "ok": true}')
    ex.answers["candidate"] = answer("candidate", b'{"count": 100.0, "ok": true}')
    ex.answers["secondary"] = answer("secondary", b'{"count": 100, "ok": true}')
    diff = diff_exchange(ex, DiffConfig())
    assert diff.divergent
    assert [(d.path, d.kind.value) for d in diff.candidate] == [("$.count", "number_type")]
    assert diff.secondary == []


def test_a_tolerance_rule_does_not_absorb_a_number_type_change_but_ignore_does():
    a, b = answer("p", b'{"n": 100}'), answer("c", b'{"n": 100.0}')
    tolerance = DiffRule("t", "rounding", "tolerance", path="$.n", absolute=1.0)
    ignore = DiffRule("i", "float on purpose", "ignore", path="$.n")
    found, _ = compare_answers(a, b, DiffConfig(), rules_for((tolerance,), "GET /x"))
    assert [d.kind for d in found] == [DiffKind.NUMBER_TYPE]
    absorbed: dict[str, int] = {}
    found, _ = compare_answers(a, b, DiffConfig(), rules_for((ignore,), "GET /x"), absorbed)
    assert found == [] and absorbed == {"i": 1}

"""Rules absorb differences as they are found, before the per-pair cap (MAX_DIFFERENCES):
many ignorable differences must not push a real one out of the list."""

from __future__ import annotations

import orjson

from shadowd.config import DiffConfig, DiffRule
from shadowd.diff.engine import MAX_DIFFERENCES, compare_answers, diff_exchange
from shadowd.diff.model import DiffKind
from shadowd.diff.rules import rules_for
from shadowd.exchange import Answer, Exchange, Request

IGNORE_VOLATILE = DiffRule("volatile", "per-request values", "ignore", path="$.volatile")


def answer(target: str, doc: dict) -> Answer:
    body = orjson.dumps(doc)
    return Answer(target, 200, [(b"Content-Type", b"application/json")], body, len(body))


def exchange(primary: dict, candidate: dict, secondary: dict | None = None) -> Exchange:
    ex = Exchange(1, Request("GET", "/x", [], b"", 0.0), "GET /x")
    ex.answers["primary"] = answer("primary", primary)
    ex.answers["candidate"] = answer("candidate", candidate)
    if secondary is not None:
        ex.answers["secondary"] = answer("secondary", secondary)
    return ex


def volatile(n: int, seed: int) -> dict:
    return {f"f{i}": seed * 1000 + i for i in range(n)}


def test_150_ignored_fields_do_not_hide_a_type_change():
    # The ignored fields come first in the walk: before the fix they filled the cap, the
    # type change went to overflow, and the exchange counted as not divergent.
    primary = {"volatile": volatile(150, 1), "price": 9.5}
    candidate = {"volatile": volatile(150, 2), "price": "9.5"}
    diff = diff_exchange(exchange(primary, candidate), DiffConfig(rules=(IGNORE_VOLATILE,)))
    assert diff.divergent
    assert [(d.path, d.kind) for d in diff.candidate] == [("$.price", DiffKind.TYPE)]
    assert diff.overflow == 0
    assert diff.absorbed == {"volatile": 150}  # every absorbed difference counted, not 100


def test_the_secondary_diff_is_absorbed_before_its_cap_too():
    primary = {"volatile": volatile(150, 1), "n": 1}
    secondary = {"volatile": volatile(150, 3), "n": 2}
    diff = diff_exchange(
        exchange(primary, primary, secondary), DiffConfig(rules=(IGNORE_VOLATILE,))
    )
    assert diff.candidate == []
    assert [d.path for d in diff.secondary] == ["$.n"]
    assert diff.absorbed == {}  # only the candidate's absorptions are reported


def test_the_cap_counts_only_what_no_rule_absorbs():
    primary = {"volatile": volatile(150, 1), "real": volatile(MAX_DIFFERENCES + 20, 1)}
    candidate = {"volatile": volatile(150, 2), "real": volatile(MAX_DIFFERENCES + 20, 2)}
    absorbed: dict[str, int] = {}
    rules = rules_for((IGNORE_VOLATILE,), "GET /x")
    found, overflow = compare_answers(
        answer("primary", primary), answer("candidate", candidate), DiffConfig(), rules, absorbed
    )
    assert len(found) == MAX_DIFFERENCES and all(d.path.startswith("$.real.") for d in found)
    assert overflow == 20
    assert absorbed == {"volatile": 150}


def test_a_missing_answer_is_never_absorbed():
    rule = DiffRule("err", "a rule naming the error path", "ignore", path="error")
    ex = exchange({"a": 1}, {"a": 1})
    ex.answers["candidate"] = Answer("candidate", error="timeout")
    diff = diff_exchange(ex, DiffConfig(rules=(rule,)))
    assert [d.kind for d in diff.candidate] == [DiffKind.ERROR]

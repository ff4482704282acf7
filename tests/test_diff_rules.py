"""Each shipped example rule absorbs exactly what its examples say, and is counted."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from shadowd.config import ConfigError, load_config
from shadowd.diff.engine import diff_exchange
from shadowd.exchange import Answer, Exchange, Request

ROOT = Path(__file__).resolve().parent.parent
CONFIG = load_config(ROOT / "config" / "examples" / "diff-rules.toml")
CASES = json.loads((ROOT / "config" / "examples" / "diff-rules-cases.json").read_text())


def exchange(primary, candidate, endpoint: str, headers: bool) -> Exchange:
    def answer(name: str, doc: dict) -> Answer:
        if headers:
            pairs = [(k.encode(), v.encode()) for k, v in doc.items()]
            return Answer(name, 200, pairs, b"{}", 2)
        body = orjson.dumps(doc)
        return Answer(name, 200, [(b"Content-Type", b"application/json")], body, len(body))

    ex = Exchange(1, Request("GET", "/x", [], b"", 0.0), endpoint)
    ex.answers["primary"] = answer("primary", primary)
    ex.answers["candidate"] = answer("candidate", candidate)
    return ex


def cases(kind: str):
    for rule, spec in CASES.items():
        for i, (primary, candidate) in enumerate(spec[kind]):
            yield pytest.param(rule, spec, primary, candidate, id=f"{rule}-{i}")


def test_every_rule_has_cases():
    assert {r.name for r in CONFIG.diff.rules} == set(CASES)


@pytest.mark.parametrize(("rule", "spec", "primary", "candidate"), list(cases("absorbs")))
def test_rule_absorbs_its_examples(rule, spec, primary, candidate):
    ex = exchange(primary, candidate, spec.get("endpoint", "GET /any"), spec.get("headers", False))
    diff = diff_exchange(ex, CONFIG.diff)
    assert diff.candidate == []
    if spec.get("action") not in ("unordered", "set"):
        assert sum(diff.absorbed.values()) == diff.absorbed.get(rule, 0)


@pytest.mark.parametrize(("rule", "spec", "primary", "candidate"), list(cases("keeps")))
def test_rule_keeps_what_it_must_not_absorb(rule, spec, primary, candidate):
    ex = exchange(primary, candidate, spec.get("endpoint", "GET /any"), spec.get("headers", False))
    diff = diff_exchange(ex, CONFIG.diff)
    assert diff.candidate != []
    assert rule not in diff.absorbed


def test_rule_applies_only_to_its_endpoints():
    spec = CASES["price-rounding"]
    primary, candidate = spec["absorbs"][0]
    diff = diff_exchange(exchange(primary, candidate, spec["elsewhere"], False), CONFIG.diff)
    assert [d.path for d in diff.candidate] == ["$.items[0].price"]


def test_ignore_and_tolerance_counts_are_reported(tmp_path):
    spec = CASES["generated-at"]
    primary, candidate = spec["absorbs"][0]
    diff = diff_exchange(exchange(primary, candidate, "GET /any", False), CONFIG.diff)
    assert diff.absorbed == {"generated-at": 1}


def test_a_rule_without_why_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[targets.primary]\nurl = "http://127.0.0.1:1"\n[targets.candidate]\n'
        'url = "http://127.0.0.1:2"\n[[diff.rules]]\nname = "x"\naction = "ignore"\n'
        'path = "$.a"\n[[diff.rules]]\nname = "y"\nwhy = "z"\naction = "sideways"\npath = "a"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [p.split(": ", 2)[1] for p in caught.value.problems] == [
        "diff.rules[1].why",
        "diff.rules[2].action",
        "diff.rules[2].path",
    ]

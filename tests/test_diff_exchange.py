"""diff_exchange derives each answer once (PreparedAnswer) and compares top-level containers
by their orjson bytes: neither may change a difference, its order, a cap or a rule count.

The reference is the old way: each pair compared on its own (``compare_answers``, which
decodes and parses both of its answers afresh), and ``diff_json`` without the top-level
byte comparison.
"""

from __future__ import annotations

import copy
import gzip
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shadowd.config import DiffConfig, DiffRule
from shadowd.diff import body as body_module
from shadowd.diff import engine, prepared
from shadowd.diff.engine import compare_answers, diff_exchange
from shadowd.diff.json_diff import DiffCollector, diff_json
from shadowd.diff.model import ExchangeDiff
from shadowd.diff.rules import EMPTY, rules_for
from shadowd.exchange import Answer, Exchange, Request


@pytest.fixture(autouse=True, scope="module")
def share_small_bodies():
    """Share members whatever the body's size, so that small generated bodies take that
    path (it is skipped below prepared._MIN_SHARED bytes)."""
    saved = prepared._MIN_SHARED
    prepared._MIN_SHARED = 0
    yield
    prepared._MIN_SHARED = saved


# Numbers whose == hides a type: True == 1 == 1.0, False == 0 == 0.0.
swappable = st.sampled_from([True, False, 1, 0, 1.0, 0.0, -0.0, 2, 2.0])
scalars = st.one_of(
    st.none(),
    swappable,
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=6),
)
keys = st.sampled_from(["a", "b", "id", "ts", "items", "x y", "n"])
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=5),
    ),
    max_leaves=24,
)
# Answers are mostly objects or arrays of containers: the top level the byte comparison acts on.
tops = st.one_of(
    st.dictionaries(keys, documents, min_size=1, max_size=6),
    st.lists(documents, min_size=1, max_size=5),
    documents,
)


def twins(value) -> list:
    """Values == to ``value`` but of another type (what == alone cannot tell apart)."""
    if type(value) is bool:
        return [int(value), float(value)]
    if type(value) is int:
        return [float(value)] + ([bool(value)] if value in (0, 1) else [])
    if type(value) is float and value.is_integer() and abs(value) < 2**53:
        return [int(value)] + ([bool(value)] if value in (0, 1) else [])
    return []


@st.composite
def mutated(draw, doc):
    """``doc`` with a few random changes (so that most of it is shared, as in real answers):
    a scalar replaced (often by one == to it), a key dropped or added, an item appended."""
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            if draw(st.integers(0, 9)) == 0:
                continue  # dropped
            out[key] = draw(mutated(value)) if draw(st.booleans()) else value
        if draw(st.integers(0, 5)) == 0:
            out[draw(keys)] = draw(scalars)
        return out
    if isinstance(doc, list):
        out = [draw(mutated(v)) if draw(st.booleans()) else v for v in doc]
        if draw(st.integers(0, 5)) == 0:
            out.append(draw(scalars))
        return out
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.sampled_from(twins(doc) or [doc]))
    if choice == 1:
        return draw(scalars)
    return doc


@st.composite
def exchanges(draw):
    primary = draw(tops)
    docs = {"primary": primary}
    for target in ("candidate", "secondary"):
        docs[target] = draw(mutated(primary)) if draw(st.integers(0, 4)) else draw(tops)
    primary_body = orjson.dumps(primary)
    exchange = Exchange(1, Request("GET", "/x", [], b"", 0.0), "GET /x")
    for target, doc in docs.items():
        body = orjson.dumps(doc)
        if target != "primary" and type(primary) is dict and draw(st.integers(0, 3)) == 0:
            # the primary's tail after any comma, behind a hand-written start: valid or not,
            # repeating a key or not (what PreparedAnswer._shared_parse must get right)
            cut = draw(st.sampled_from([i for i, c in enumerate(primary_body) if c == 44] or [0]))
            start = draw(st.sampled_from(['{"a":1', '{"n":true', "{", '{"x":"y', '{"a":[', "[1"]))
            body = start.encode() + primary_body[cut:]
        headers = [(b"Content-Type", draw(st.sampled_from([b"application/json", b""])))]
        if draw(st.booleans()):
            body = gzip.compress(body, mtime=0)
            headers.append((b"Content-Encoding", b"gzip"))
        if draw(st.integers(0, 9)) == 0:
            body = body[:-1]  # invalid JSON (or a broken gzip stream)
        if target == "secondary" and draw(st.integers(0, 4)) == 0:
            continue  # no secondary answer
        exchange.answers[target] = Answer(target, 200, headers, body, len(body))
    return exchange


CONFIGS = [
    DiffConfig(),
    DiffConfig(
        rules=(
            DiffRule("ts", "clock", "ignore", path="$.ts"),
            DiffRule("order", "unordered", "unordered", path="$.items"),
            DiffRule("ids", "ids", "set", path="$.*"),
            DiffRule("near", "rounding", "tolerance", path="$.n", absolute=0.5),
        )
    ),
]


def plain_walk(reference, other, out, root="$"):
    """diff_json without identical objects: nothing shared, every member compared."""
    diff_json(reference, copy.deepcopy(other), out, root)


def separately(exchange: Exchange, config: DiffConfig) -> ExchangeDiff:
    """The old diff_exchange: each pair on its own, every body decoded and parsed whole per
    pair, documents walked by _diff alone."""
    rules = rules_for(config.rules, exchange.endpoint) if config.rules else EMPTY
    absorbed: dict[str, int] = {}
    primary, secondary = exchange.primary, exchange.secondary
    with (
        mock.patch.object(body_module, "diff_json", plain_walk),
        mock.patch.object(prepared.PreparedAnswer, "_shared_parse", lambda self, ref: None),
    ):
        differences, overflow = compare_answers(
            primary, exchange.candidate, config, rules, absorbed
        )
        noise = None
        if secondary is not None:
            noise, _ = compare_answers(primary, secondary, config, rules)
    return ExchangeDiff(differences, noise, overflow, absorbed)


def plain(primary, candidate, secondary) -> Exchange:
    return raw(*(orjson.dumps(doc) for doc in (primary, candidate, secondary)))


def raw(*bodies: bytes) -> Exchange:
    exchange = Exchange(1, Request("GET", "/x", [], b"", 0.0), "GET /x")
    for target, body in zip(("primary", "candidate", "secondary"), bodies, strict=False):
        exchange.answers[target] = Answer(
            target, 200, [(b"Content-Type", b"application/json")], body, len(body)
        )
    return exchange


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exchanges(), st.sampled_from(CONFIGS))
@example(plain({"a": [True], "b": 1}, {"a": [1], "b": 2}, {"a": [1.0], "b": 1}), CONFIGS[0])
@example(plain([{"n": 1}, {"ts": 1}], [{"n": 1.0}, {"ts": 2}], [{"n": True}]), CONFIGS[1])
# The candidate repeats a key of the members it shares with the primary; the secondary is
# not JSON before them.
@example(
    raw(b'{"a":1,"b":[2],"n":3}', b'{"n":0,"a":5,"b":[2],"n":3}', b'{"a":,"b":[2],"n":3}'),
    CONFIGS[0],
)
def test_an_exchange_diffs_as_its_pairs_diffed_separately(exchange, config):
    assert diff_exchange(exchange, config) == separately(exchange, config)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exchanges())
def test_same_under_a_small_cap(exchange):
    with mock.patch.object(engine, "MAX_DIFFERENCES", 2):
        assert diff_exchange(exchange, CONFIGS[0]) == separately(exchange, CONFIGS[0])


def walked(a, b, plain: bool = False):
    out = DiffCollector(10_000)
    (plain_walk if plain else diff_json)(a, b, out)
    return out.differences


@settings(max_examples=500)
@given(tops.flatmap(lambda doc: st.tuples(st.just(doc), mutated(doc))))
@example(({"a": [True], "b": 1}, {"a": [1], "b": 2}))  # a hidden swap, then a change
@example(([{"k": 1.0}, 1], [{"k": 1}, 2]))
def test_skipping_shared_members_finds_the_same_differences_in_the_same_order(pair):
    # mutated() keeps the members it leaves alone as the same objects: shared, as
    # PreparedAnswer.document shares the primary's last members.
    a, b = pair
    assert walked(a, b) == walked(a, b, plain=True)


def test_a_bool_number_swap_in_a_top_level_container_is_still_found():
    a = {"flags": {"on": True, "n": 1}, "items": [1, 2.0]}
    b = {"flags": {"on": 1, "n": 1.0}, "items": [True, 2]}
    assert a == b  # what == alone would say
    found = [(d.path, d.kind.value) for d in walked(a, b)]
    assert found == [
        ("$.flags.on", "type"),
        ("$.flags.n", "number_type"),
        ("$.items[0]", "type"),
        ("$.items[1]", "number_type"),
    ]
    assert walked(a, b) == walked(a, b, plain=True)


def test_the_primary_body_is_decoded_and_parsed_once_per_exchange():
    doc = {"id": 1, "items": [{"p": i} for i in range(5)]}
    exchange = Exchange(1, Request("GET", "/x", [], b"", 0.0), "GET /x")
    for i, target in enumerate(("primary", "candidate", "secondary")):
        body = gzip.compress(orjson.dumps({**doc, "id": i}), mtime=0)
        headers = [(b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip")]
        exchange.answers[target] = Answer(target, 200, headers, body, len(body))
    with (
        mock.patch.object(prepared.orjson, "loads", wraps=orjson.loads) as loads,
        mock.patch.object(prepared, "decode", wraps=prepared.decode) as decoded,
    ):
        diff = diff_exchange(exchange, DiffConfig())
    assert [d.path for d in diff.candidate] == ["$.id"]
    assert [d.path for d in diff.secondary] == ["$.id"]
    assert loads.call_count == 3
    assert decoded.call_count == 3

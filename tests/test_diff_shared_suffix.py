"""PreparedAnswer.document(reference) parses only what precedes the last members a body
shares, byte for byte, with its reference's document in orjson's compact form, and takes
those members from the reference's document. The result must be what orjson.loads of the
whole body gives: the same keys in the same order, the same values of the same types,
INVALID exactly when the body is not JSON, whatever comes before the shared members.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shadowd.config import DiffConfig, DiffRule
from shadowd.diff import prepared
from shadowd.diff.prepared import INVALID, PreparedAnswer
from shadowd.diff.rules import EMPTY, rules_for
from shadowd.exchange import Answer


@pytest.fixture(autouse=True, scope="module")
def share_small_bodies():
    """Share members whatever the body's size, so that small generated bodies take that
    path (it is skipped below prepared._MIN_SHARED bytes)."""
    saved = prepared._MIN_SHARED
    prepared._MIN_SHARED = 0
    yield
    prepared._MIN_SHARED = saved


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet='ab,:"\\{}[] é', max_size=6),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("abk"), inner, max_size=3)
    ),
    max_leaves=10,
)
keys = st.sampled_from(["a", "b", "k", "items", 'q"x', "a,b", "", "é"])
objects = st.dictionaries(keys, values, min_size=2, max_size=6)
# Text that may come before the shared members: valid member lists, and every way of being
# inside a string, an array, a nested object, after a key or a backslash.
pieces = st.sampled_from(
    ['{', '"a":1', ",", " ", '"k":', '"x":"ab', "\\", '"', "[", "]", "{", "}", '"items":[1]',
     '"a":{"b":', "1", "true", '"q\\"x":0', ":", "\n"]
)  # fmt: skip
prefixes = st.lists(pieces, max_size=7).map("".join)


def answer(body: bytes) -> Answer:
    return Answer("x", 200, [(b"Content-Type", b"application/json")], body, len(body))


def parsed_whole(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return INVALID


def same(doc, expected) -> bool:
    if expected is INVALID or doc is INVALID:
        return doc is expected
    return list(doc) == list(expected) and orjson.dumps(doc) == orjson.dumps(expected)


def check(reference_body: bytes, body: bytes, config: DiffConfig | None = None) -> None:
    rules = rules_for(config.rules, "GET /x") if config is not None else EMPTY
    reference = PreparedAnswer(answer(reference_body), rules)
    other = PreparedAnswer(answer(body), rules)
    assert same(other.document(reference), parsed_whole(body))
    assert same(reference.document(), parsed_whole(reference_body))


def commas(doc: dict) -> list[int]:
    """Where the comma before each member after the first is in orjson.dumps(doc)."""
    offsets, offset = [], 0
    for i, (key, value) in enumerate(doc.items()):
        offset += len(orjson.dumps(key)) + 1 + len(orjson.dumps(value)) + 1
        if i < len(doc) - 1:
            offsets.append(offset)
    return offsets


@settings(max_examples=600)
@given(objects, st.data())
@example({"a": 1, "b": 2}, None)
def test_a_body_ending_with_the_references_last_members_parses_as_a_whole(doc, data):
    reference_body = orjson.dumps(doc)
    if data is None:
        comma, prefix = commas(doc)[0], '{"b":3'
    else:
        # the suffix from the comma, or one byte more or less (no comma, or its neighbour)
        comma = data.draw(st.sampled_from(commas(doc))) + data.draw(st.sampled_from([0, 1, -1]))
        prefix = data.draw(prefixes)
    check(reference_body, prefix.encode() + reference_body[comma:])


@settings(max_examples=600)
@given(objects, st.data())
@example({"a": 1, "b": 2}, None)
def test_a_body_starting_and_ending_with_the_references_members_parses_as_a_whole(doc, data):
    reference_body = orjson.dumps(doc)
    ends = commas(doc)
    if data is None:
        head, middle, tail = reference_body[: ends[0] + 1], b'"c":0', b"}"
    else:
        # up to a comma (or one byte more or less), anything, from a comma (or +-1) or "}"
        head = reference_body[
            : data.draw(st.sampled_from(ends)) + data.draw(st.sampled_from([1, 0, 2]))
        ]
        middle = data.draw(prefixes).encode()
        tail = data.draw(
            st.sampled_from(
                [reference_body[c + d :] for c in ends for d in (0, 1, -1)] + [b"}", b"} \n", b""]
            )
        )
    check(reference_body, head + middle + tail)


@settings(max_examples=300)
@given(objects, objects)
def test_two_documents_parse_as_a_whole(a, b):
    # Their bodies share a suffix only by chance, or when b's last members are a's.
    check(orjson.dumps(a), orjson.dumps(b))
    check(orjson.dumps(a), orjson.dumps({**b, **a}))
    check(orjson.dumps({**a, **b}), orjson.dumps(a))


def test_later_duplicate_keys_win_and_keep_their_first_place_in_orjson():
    # _shared_parse relies on it: a shared member overrides an earlier one of the same key.
    assert list(orjson.loads(b'{"a":1,"b":2,"a":3}').items()) == [("a", 3), ("b", 2)]
    check(b'{"x":0,"a":[1,true]}', b'{"a":2,"x":5,"a":[1,true]}')
    # ... and a parsed member overrides a shared one before it
    check(b'{"a":[1],"b":2,"c":3}', b'{"a":[1],"b":5,"a":0,"c":3}')
    check(b'{"a":[1],"b":2,"c":3}', b'{"a":[1],"c":9,"b":5}')


def test_the_shared_members_are_the_references_own_objects():
    reference = PreparedAnswer(answer(b'{"id":"r1","items":[{"p":1.5}],"page":{"n":2}}'))
    other = PreparedAnswer(answer(b'{"id":"r2","items":[{"p":1.5}],"page":{"n":2}}'))
    doc = other.document(reference)
    assert doc == {"id": "r2", "items": [{"p": 1.5}], "page": {"n": 2}}
    assert doc["items"] is reference.document()["items"]
    assert doc["page"] is reference.document()["page"]


def shared(reference_body: bytes, body: bytes, rules=EMPTY) -> bool:
    reference = PreparedAnswer(answer(reference_body), rules)
    doc = PreparedAnswer(answer(body), rules).document(reference)
    expected = parsed_whole(body)
    rules.reorder(expected)
    assert same(doc, expected)
    return doc["b"] is reference.document()["b"]


def test_what_is_shared_and_what_is_parsed_whole():
    assert shared(b'{"a":1,"b":[2]}', b'{"a":5,"b":[2]}')
    assert shared(b'{"b":[2],"a":1}', b'{"b":[2],"a":5}')  # at the start
    assert shared(b'{"b":[2],"a":1}', b'{"b":[2],"a":5}\n')
    assert shared(b'{"x":[0],"b":[2],"a":1,"y":{}}', b'{"x":[0],"b":[2],"a":5,"y":{}}')
    assert not shared(b'{"b":[2],"a":1}', b'{"b":[3],"a":1}')
    assert shared(b'{"a":1,"b":[2]}', b'{"x":{"y":[1,"}"]},"b":[2]}')  # any prefix
    assert shared(b'{"a":1,"b":[2],"c":null}', b'{"a":5,"b":[2],"c":null}')
    assert not shared(b'{"a": 1, "b": [2]}', b'{"a":5,"b":[2]}')  # not found in the reference
    assert not shared(b'{"a":1,"b":[2.50]}', b'{"a":5,"b":[2.50]}')  # not orjson's 2.5
    assert not shared(b'{"a":1,"b":[2]}', b'{"a":5,"b":[3]}')
    assert not shared(b'{"a":1,"b":[2]}', b'{"a":5, "b":[2]}')
    rules = rules_for((DiffRule("o", "order", "unordered", path="$.b"),), "GET /x")
    assert not shared(b'{"a":1,"b":[2,1]}', b'{"a":5,"b":[2,1]}', rules)  # reordered after


def test_a_key_found_inside_a_value_is_not_taken_for_a_member():
    # ',"b":' also ends the reference's nested object: the bytes after it are no member.
    reference = b'{"a":1,"b":{"x":1,"b":2}}'
    check(reference, b'{"a":7,"b":{"x":1,"b":2}}')
    check(reference, b'{"a":7,"b":[0],"b":2}}')  # not JSON
    check(reference, b'{"a":{"x":1,"b":2}}')
    # a tail found inside the last value, not confirmed, with a shared head (found by the
    # exchange property test: the cut must move back to the end with the tail dropped)
    check(
        b'{"a":null,"b":null,"n":null,"ts":{"items":null,"ts":null}}',
        b'{"a":null,"ts":{"items":null,"ts":null}}',
    )


def test_invalid_json_before_the_shared_members_is_invalid():
    reference_body = b'{"a":1,"b":[1,2]}'
    for prefix in (b'{"a":', b'{"a":"x', b'["a",1', b"", b"{", b"{ ", b'{"a":1,', b'{"a":{"c":1'):
        check(reference_body, prefix + b',"b":[1,2]}')
    check(reference_body, b'{"a":55"b":[1,2]}')  # no comma: what precedes is not cut at one


def test_small_bodies_are_parsed_whole(monkeypatch):
    monkeypatch.setattr(prepared, "_MIN_SHARED", 1024)
    assert not shared(b'{"a":1,"b":[2]}', b'{"a":5,"b":[2]}')
    items = [{"n": i, "name": f"item {i}"} for i in range(60)]
    big = orjson.dumps({"a": 1, "b": items})
    assert len(big) > 1024
    assert shared(big, big.replace(b'"a":1', b'"a":5'))

"""Property tests of the JSON diff (hypothesis) and hand-made pairs for every kind."""

from __future__ import annotations

import gzip
import re
import zlib

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowd.config import DiffConfig
from shadowd.diff.engine import compare_answers
from shadowd.diff.json_diff import DiffCollector, diff_json
from shadowd.diff.model import DiffKind
from shadowd.exchange import Answer

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=8),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=4),
    ),
    max_leaves=20,
)


def diffs(a, b):
    out = DiffCollector(10_000)
    diff_json(a, b, out)
    return out.differences


def resolve(doc, path: str):
    """Follow an exact path; raises KeyError/IndexError when it does not exist."""
    for m in re.finditer(r'\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]', path[1:]):
        if m.group(1) is not None:
            doc = doc[m.group(1)]
        elif m.group(2) is not None:
            doc = doc[int(m.group(2))]
        else:
            doc = doc[orjson.loads(m.group(3))]
    return doc


@given(documents)
def test_a_document_diffed_with_itself_is_empty(doc):
    assert diffs(doc, doc) == []


@given(documents, documents)
def test_swapping_sides_swaps_missing_and_extra(a, b):
    swap = {DiffKind.MISSING: DiffKind.EXTRA, DiffKind.EXTRA: DiffKind.MISSING}
    forward = sorted((d.path, swap.get(d.kind, d.kind)) for d in diffs(a, b))
    backward = sorted((d.path, d.kind) for d in diffs(b, a))
    assert forward == backward


@settings(max_examples=200)
@given(documents, documents)
def test_every_path_exists_on_the_side_its_kind_names(a, b):
    for d in diffs(a, b):
        if d.kind == DiffKind.MISSING:
            resolve(a, d.path)
        elif d.kind == DiffKind.EXTRA:
            resolve(b, d.path)
        else:
            resolve(a, d.path)
            resolve(b, d.path)


@given(documents, documents)
def test_generic_path_is_the_exact_path_without_indices(a, b):
    for d in diffs(a, b):
        assert d.generic_path == re.sub(r"\[\d+\]", "[*]", d.path)


def answer(body: bytes, content_type: bytes = b"application/json", **kw) -> Answer:
    headers = [(b"Content-Type", content_type), *kw.pop("headers", [])]
    return Answer("x", kw.pop("status", 200), headers, body, len(body), **kw)


def kinds(a: Answer, b: Answer, config: DiffConfig | None = None) -> list[tuple[str, str]]:
    found, _ = compare_answers(a, b, config or DiffConfig())
    return [(d.path, d.kind.value) for d in found]


def test_each_kind_on_hand_made_pairs():
    a = answer(b'{"id": 1, "price": 9.5, "tags": ["x", "y"], "gone": 1, "n": {"k": true}}')
    b = answer(b'{"id": 1, "price": "9.5", "tags": ["x"], "new": 2, "n": {"k": 1}}')
    assert sorted(kinds(a, b)) == sorted(
        [
            ("$.price", "type"),
            ("$.tags", "array_length"),
            ("$.gone", "missing"),
            ("$.new", "extra"),
            ("$.n.k", "type"),
        ]
    )


def test_exact_index_in_path_generic_in_aggregation_key():
    a = answer(b'{"items": [{"p": 1}, {"p": 2}, {"p": 3}]}')
    b = answer(b'{"items": [{"p": 1}, {"p": 2}, {"p": 4}]}')
    (d,), _ = compare_answers(a, b, DiffConfig())
    assert (d.path, d.generic_path, d.kind, d.reference, d.other) == (
        "$.items[2].p",
        "$.items[*].p",
        DiffKind.CHANGED,
        3,
        4,
    )


def test_integer_and_float_of_equal_value_differ_in_number_type():
    assert kinds(answer(b'{"n": 1}'), answer(b'{"n": 1.0}')) == [("$.n", "number_type")]


def test_odd_keys_are_quoted():
    assert kinds(answer(b'{"a b": 1}'), answer(b'{"a b": 2}')) == [('$["a b"]', "changed")]


def test_identical_bodies_are_never_parsed():
    broken = answer(b"{not json")
    assert kinds(broken, answer(b"{not json")) == []


def test_compressed_bodies_are_compared_decoded():
    plain = answer(b'{"a": 1}')
    gz = answer(gzip.compress(b'{"a": 1}'), headers=[(b"Content-Encoding", b"gzip")])
    deflated = answer(zlib.compress(b'{"a": 1}'), headers=[(b"Content-Encoding", b"deflate")])
    assert kinds(plain, gz) == [("header.content-encoding", "header_extra")]
    assert [k for k in kinds(gz, deflated) if k[0] != "header.content-encoding"] == []


def test_status_headers_and_ignored_headers():
    a = answer(b"{}", status=200, headers=[(b"Date", b"Mon"), (b"X-Cache", b"HIT")])
    b = answer(b"{}", status=404, headers=[(b"Date", b"Tue"), (b"X-Cache", b"MISS")])
    assert sorted(kinds(a, b)) == [("header.x-cache", "header"), ("status", "status")]


def test_invalid_json_on_one_side_is_reported_as_such():
    assert kinds(answer(b'{"a": 1}'), answer(b'{"a": ')) == [("body", "invalid_json")]


def test_binary_bodies_compare_by_bytes_with_sizes_and_digests():
    (d,), _ = compare_answers(
        answer(b"hello", b"application/octet-stream"),
        answer(b"hullo", b"application/octet-stream"),
        DiffConfig(),
    )
    assert d.kind == DiffKind.BODY
    assert d.reference["size"] == d.other["size"] == 5 and d.reference["sha"] != d.other["sha"]


def test_content_type_mismatch_is_reported():
    found = kinds(answer(b'{"a": 1}'), answer(b"<a>1</a>", b"text/html"))
    assert ("body.content-type", "content_type") in found


def test_large_bodies_compare_by_digest_and_size():
    a = Answer("p", 200, [], b"", 5_000_000, "aaa")
    assert kinds(a, Answer("c", 200, [], b"", 5_000_000, "aaa")) == []
    assert kinds(a, Answer("c", 200, [], b"", 5_000_001, "bbb")) == [("body", "body")]


def test_one_side_errored():
    assert kinds(Answer("p", 200), Answer("c", error="timeout")) == [("error", "error")]
    assert kinds(Answer("p", error="timeout"), Answer("c", error="timeout")) == []


def test_differences_are_capped_and_counted():
    a = answer(orjson.dumps({f"k{i}": i for i in range(300)}))
    b = answer(orjson.dumps({f"k{i}": -i - 1 for i in range(300)}))
    found, overflow = compare_answers(a, b, DiffConfig())
    assert len(found) == 100 and overflow == 200


def test_text_bodies_differ_line_by_line():
    a = answer(b"line one\nline two\nline three\n", b"text/plain")
    b = answer(b"line one\nline 2\nline three\n", b"text/plain")
    (d,), _ = compare_answers(a, b, DiffConfig())
    assert (d.path, d.generic_path, d.kind) == (
        "text:line[1]:line two",
        "text:line:line two",
        "changed",
    )
    assert (d.reference, d.other) == ("line two", "line 2")


def test_server_timing_metrics_are_compared_by_name_and_desc():
    a = answer(b"{}", headers=[(b"Server-Timing", b'db;dur=12.5, cache;desc="HIT"')])
    b = answer(b"{}", headers=[(b"Server-Timing", b'db;dur=80, cache;desc="MISS", q;dur=1')])
    assert sorted(kinds(a, b)) == [
        ("server-timing.cache.desc", "header"),
        ("server-timing.q", "header_extra"),
    ]

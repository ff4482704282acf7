"""The analysis plane's fast paths give what the plain code they stand for gives.

Each reference below is the code as it was before the fast path replaced it: the fast path
must agree with it on every input, odd ones included (missing keys, other types, header
names in any case, repeated headers).
"""

from __future__ import annotations

import math
import random
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowd.aggregate import _STATUS_CLASS_OF, _STATUS_CLASSES, _status_class
from shadowd.capture.format import _complete_exchange_of, exchange_of, record_of
from shadowd.diff.prepared import PreparedAnswer
from shadowd.diff.timing import parse_server_timing, timing_of
from shadowd.exchange import Answer, Exchange, Request
from shadowd.noise import (
    _HEX_ID,
    _HTTP_DATE,
    _TIMESTAMP,
    _TOKEN,
    _UUID,
    _looks_random,
    looks_volatile,
)
from shadowd.usage import Usage, _dur, usage_of
from shadowd.verdict.evidence import _below

NAMES = [
    b"Content-Type",
    b"content-type",
    b"CONTENT-TYPE",
    b"Content-Encoding",
    b"content-encoding",
    b"Server-Timing",
    b"server-timing",
    b"SERVER-TIMING",
    b"Server-Timinx",
    b"Content-Typo",
    b"Date",
    b"Connection",
    b"X-Other",
]
VALUES = [
    b"application/json",
    b"Application/JSON; charset=utf-8",
    b" text/plain ;q=1",
    b"",
    b"gzip",
    b"db;dur=12.5, db-calls;dur=7, cache-hits;dur=1",
    b'cache;desc="HIT", app;dur=3',
    b"cache-misses;dur=2",
    b"db-calls;dur=-1",
    b"x;dur=abc",
]
headers_st = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=8)


# -- references: the code before the fast paths -----------------------------------------------
def reference_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def reference_media(headers: list[tuple[bytes, bytes]]) -> str:
    value = reference_header(headers, b"content-type")
    return value.split(b";", 1)[0].strip().lower().decode("latin-1") if value else ""


def reference_usage(answer: Answer | None) -> Usage | None:
    if answer is None or answer.error is not None or answer.status >= 500:
        return None
    for name, _ in answer.headers:
        if name.lower() == b"server-timing":
            break
    else:
        return None
    metrics = parse_server_timing(answer.headers)
    calls = _dur(metrics, "db-calls")
    hits, misses = _dur(metrics, "cache-hits"), _dur(metrics, "cache-misses")
    if calls != calls and hits != hits and misses != misses:
        return None
    if (hits == hits) != (misses == misses):
        hits, misses = (0.0 if hits != hits else hits), (0.0 if misses != misses else misses)
    return Usage(calls, _dur(metrics, "db"), hits, misses)


def reference_looks_volatile(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        now = time.time()
        return abs(value - now) < 5 * 365 * 86400 or abs(value / 1000 - now) < 5 * 365 * 86400
    if isinstance(value, str):
        return bool(
            _UUID.match(value)
            or _TIMESTAMP.match(value)
            or _HTTP_DATE.match(value)
            or (_TOKEN.match(value) and any(c.isdigit() for c in value))
            or _HEX_ID.match(value)
            or _looks_random(value)
        )
    return False


def _same_usage(a: Usage | None, b: Usage | None) -> bool:
    if a is None or b is None:
        return a is b

    def same(x: float, y: float) -> bool:
        return (math.isnan(x) and math.isnan(y)) or x == y

    return all(same(getattr(a, f), getattr(b, f)) for f in ("db_calls", "db_ms", "hits", "misses"))


# -- headers ----------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(headers_st, st.sampled_from([200, 404, 500, 503]), st.sampled_from([None, "timeout"]))
def test_usage_and_timing_as_before(headers: list[tuple[bytes, bytes]], status: int, error: Any):
    answer = Answer("primary", status, headers, b"{}", 2, None, 0.1, error)
    assert _same_usage(usage_of(answer), reference_usage(answer))
    assert timing_of(answer) == parse_server_timing(headers)
    assert timing_of(answer) is timing_of(answer)  # parsed once


@settings(max_examples=300, deadline=None)
@given(headers_st, st.booleans())
def test_body_headers_as_before(headers: list[tuple[bytes, bytes]], scanned: bool):
    answer = Answer("primary", 200, headers, b'{"a": 1}', 8)
    prepared = PreparedAnswer(answer)
    if scanned:  # headers compared first: the lookups go through the scan's first values
        prepared.named_headers()
    assert prepared.media() == reference_media(headers)
    assert prepared.decoded() == answer.body  # no encoding that decodes this body
    assert prepared.header(b"content-encoding") == reference_header(headers, b"content-encoding")
    # what the body-header pass may have noted about Server-Timing is what timing_of parses
    assert timing_of(answer) == parse_server_timing(headers)


@settings(max_examples=200, deadline=None)
@given(headers_st)
def test_read_as_an_answer_with_equal_headers(headers: list[tuple[bytes, bytes]]):
    reference = PreparedAnswer(Answer("primary", 200, headers, b'{"a": 1}', 8))
    answer = Answer("candidate", 200, list(headers), b'{"a": 2}', 8)
    other = PreparedAnswer(answer)
    other.read_as(reference)
    assert other.media() == reference_media(headers)
    assert other.decoded() == answer.body
    assert timing_of(answer) == parse_server_timing(headers)


def test_gzip_body_still_decoded():
    import gzip

    body = gzip.compress(b'{"a": 1}')
    answer = Answer("primary", 200, [(b"Content-Encoding", b"GZIP")], body, len(body))
    assert PreparedAnswer(answer).decoded() == b'{"a": 1}'


# -- exchange_of ------------------------------------------------------------------------------
def _record() -> dict[str, Any]:
    request = Request("GET", "/a?b=1", [(b"Host", b"x")], b"", 1.5, "127.0.0.1", "1.1")
    exchange = Exchange(7, request, "GET /a")
    for name in ("primary", "candidate"):
        exchange.answers[name] = Answer(
            name, 200, [(b"Content-Type", b"application/json")], b"{}", 2, None, 0.25, None
        )
    return record_of(exchange)


def _exchange_of(record: dict[str, Any]) -> Exchange:
    """exchange_of as it was before its fast path (the reference)."""

    def pairs(raw: Any) -> list[tuple[bytes, bytes]]:
        return [(bytes(n), bytes(v)) for n, v in raw or ()]

    rq = record["rq"]
    get = rq.get
    request = Request(
        rq["m"],
        rq["t"],
        pairs(get("h")),
        bytes(get("b", b"")),
        float(get("at", 0.0)),
        get("c", ""),
        get("v", "1.1"),
    )
    exchange = Exchange(int(record.get("id", 0)), request, record.get("ep", ""))
    for an in record.get("an", ()):
        get = an.get
        exchange.answers[an["n"]] = Answer(
            an["n"],
            int(get("s", 0)),
            pairs(get("h")),
            bytes(get("b", b"")),
            int(get("z", 0)),
            get("d"),
            float(get("l", 0.0)),
            get("e"),
        )
    return exchange


def _outcome(fn: Any, record: dict[str, Any]) -> Any:
    try:
        return ("ok", fn(record))
    except Exception as exc:  # which one does not matter: undecodable either way
        return ("error", type(exc).__name__)


RECORD_KEYS = ["id", "ep", "an", "rq", "m", "t", "h", "b", "at", "c", "v", "n", "s", "z", "d"]
RECORD_KEYS += ["l", "e"]
ODD_VALUES = [None, 0, 1, True, 2.0, "x", b"y", [], [[b"a", b"b"]], ((b"a", b"b"),), [[b"a"]]]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["top", "rq", "an0", "an1"]),
            st.sampled_from(RECORD_KEYS),
            st.one_of(st.just("<delete>"), st.sampled_from(ODD_VALUES)),
        ),
        max_size=4,
    )
)
def test_exchange_of_as_before(edits: list[tuple[str, str, Any]]):
    record = _record()
    for where, key, value in edits:
        target: Any = record if where == "top" else record.get("rq")
        if where.startswith("an"):
            answers, index = record.get("an"), int(where[-1])
            target = answers[index] if isinstance(answers, list) and len(answers) > index else None
        if not isinstance(target, dict):
            continue
        if value == "<delete>":
            target.pop(key, None)
        else:
            target[key] = value
    fast, plain = _outcome(exchange_of, record), _outcome(_exchange_of, record)
    assert fast[0] == plain[0]
    if fast[0] == "ok":
        assert fast[1] == plain[1]
    complete = _outcome(_complete_exchange_of, record)
    if complete[0] == "ok":
        assert complete == plain


def test_exchange_of_reads_tuples_as_lists():
    record = _record()
    record["an"] = tuple({**an, "h": tuple(tuple(pair) for pair in an["h"])} for an in record["an"])
    record["rq"]["h"] = tuple(tuple(pair) for pair in record["rq"]["h"])
    assert exchange_of(record) == _exchange_of(_record())


# -- bookkeeping ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 42])
def test_below_is_randrange(seed: int):
    mine, theirs = random.Random(seed), random.Random(seed)
    sizes = [1, 2, 3, 7, 8, 9, 2000, 2001, 8191, 8192, 8193, 10**6, 2**40 + 3]
    for n in sizes * 50:
        assert _below(mine, n) == theirs.randrange(n)
    assert mine.getstate() == theirs.getstate()


def test_status_classes_as_before():
    for status in [*range(-5, 1005), 200.0, True]:
        expected = _STATUS_CLASSES.get(status // 100, "other")
        assert (_STATUS_CLASS_OF.get(status) or _status_class(status)) == expected


VOLATILE_VALUES = [
    True,
    False,
    0,
    1,
    time.time(),
    int(time.time() * 1000),
    1.5,
    "2026-11-29T19:00:00Z",
    "Sun, 29 Nov 2026 19:00:00 GMT",
    "1e2feb89414c343c1027c4d1c386bbc4",
    "k3J9xQ2mP7vR",
    "shipped",
    "",
    None,
    [1],
    {"a": 1},
    b"bytes",
]


class _Int(int):
    pass


class _Str(str):
    pass


@pytest.mark.parametrize(
    "value", [*VOLATILE_VALUES, _Int(5), _Int(int(time.time())), _Str("k3J9xQ2mP7vR")]
)
def test_looks_volatile_as_before(value: Any):
    assert looks_volatile(value) == reference_looks_volatile(value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(re.compile(r"[0-9a-fA-F-]{8,40}"))))
def test_looks_volatile_text_as_before(value: str):
    assert looks_volatile(value) == reference_looks_volatile(value)

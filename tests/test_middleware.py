"""The companion middleware in-process: what it adds, what it never changes, and how the
daemon reads it back (``shadowd.usage``) and judges it (``db_calls``, ``cache_hit_ratio``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from conftest import build_config
from sqlalchemy import create_engine, text

from shadowd.aggregate import Aggregator
from shadowd.diff.engine import diff_exchange
from shadowd.diff.timing import parse_server_timing
from shadowd.exchange import Answer, Exchange, Request
from shadowd.middleware import (
    ShadowdASGIMiddleware,
    ShadowdWSGIMiddleware,
    instrument_sqlalchemy,
    record_cache,
    record_db_call,
    server_timing,
)
from shadowd.report import build_report
from shadowd.usage import usage_of
from shadowd.verdict.evidence import VerdictEvidence
from shadowd.verdict.judge import judge


async def call_asgi(app, scope_type: str = "http", path: str = "/") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": scope_type, "method": "GET", "path": path}, receive, send)
    return sent


async def streaming_app(scope, receive, send) -> None:
    record_db_call(0.002)
    record_cache("hit")
    await send(
        {
            "type": "http.response.start",
            "status": 203,
            "headers": [(b"content-type", b"text/plain"), (b"server-timing", b"own;dur=1")],
        }
    )
    await send({"type": "http.response.body", "body": b"one ", "more_body": True})
    record_db_call(0.001)  # after the headers left: not in them
    await send({"type": "http.response.body", "body": b"two", "more_body": False})


async def test_asgi_adds_one_header_and_changes_nothing_else():
    sent = await call_asgi(ShadowdASGIMiddleware(streaming_app))
    start, *body = sent
    assert start["status"] == 203
    headers = start["headers"]
    assert headers[:2] == [(b"content-type", b"text/plain"), (b"server-timing", b"own;dur=1")]
    assert len(headers) == 3
    name, value = headers[2]
    assert name == b"server-timing"
    assert value.startswith(b"db;dur=2.00, db-calls;dur=1, cache-hits;dur=1, cache-misses;dur=0, ")
    assert b"app;dur=" in value
    assert [m["body"] for m in body] == [b"one ", b"two"]  # a streamed answer: counts so far
    metrics = parse_server_timing(headers)
    assert metrics["db-calls"] == {"dur": 1.0}
    assert metrics["own"] == {"dur": 1.0}  # the application's own metric is kept


async def test_asgi_other_scopes_and_outside_requests_are_left_alone():
    seen = []

    async def app(scope, receive, send) -> None:
        seen.append(server_timing())
        await send({"type": "websocket.accept"})

    assert await call_asgi(ShadowdASGIMiddleware(app), "websocket") == [
        {"type": "websocket.accept"}
    ]
    assert seen == [None]
    record_db_call(1.0)  # outside any request: nothing to count, no error
    record_cache("miss")
    with pytest.raises(ValueError):
        record_cache("maybe")


async def test_requests_do_not_share_counts():
    release = asyncio.Event()

    async def app(scope, receive, send) -> None:
        record_db_call()
        if scope["path"] == "/":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = ShadowdASGIMiddleware(app)
    first = asyncio.create_task(call_asgi(wrapped))
    await asyncio.sleep(0)
    second = await call_asgi(wrapped, path="/other")
    release.set()
    for sent in (await first, second):
        assert parse_server_timing(sent[0]["headers"])["db-calls"] == {"dur": 1.0}


def test_wsgi_adds_one_header_and_changes_nothing_else():
    def app(environ, start_response):
        record_db_call(0.004)
        record_db_call(0.001)
        record_cache(False)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no ", b"such"]

    started = []
    body = ShadowdWSGIMiddleware(app)(
        {}, lambda status, headers, *exc: started.append((status, headers))
    )
    assert list(body) == [b"no ", b"such"]
    ((status, headers),) = started
    assert status == "404 Not Found"
    assert headers[0] == ("Content-Type", "text/plain")
    assert headers[1][0] == "Server-Timing"
    assert headers[1][1].startswith(
        "db;dur=5.00, db-calls;dur=2, cache-hits;dur=0, cache-misses;dur=1"
    )
    assert server_timing() is None  # nothing left behind in the server's thread


async def test_sqlalchemy_statements_are_counted_per_request_also_in_threads():
    engine = instrument_sqlalchemy(create_engine("sqlite://"))
    instrument_sqlalchemy(engine)  # twice: still counted once

    def query(n: int) -> None:
        with engine.connect() as conn:
            for _ in range(n):
                conn.execute(text("SELECT 1")).scalar_one()

    async def app(scope, receive, send) -> None:
        await asyncio.to_thread(query, 7)  # a synchronous endpoint in a thread pool
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    query(3)  # outside a request: not counted anywhere
    sent = await call_asgi(ShadowdASGIMiddleware(app))
    metrics = parse_server_timing(sent[0]["headers"])
    assert metrics["db-calls"] == {"dur": 7.0}
    assert metrics["db"]["dur"] > 0
    assert "cache-hits" not in metrics  # no lookup reported: no cache metric


async def test_an_async_engine_is_counted_too():
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = instrument_sqlalchemy(create_async_engine("sqlite+aiosqlite://"))

    async def app(scope, receive, send) -> None:
        async with engine.connect() as conn:
            for _ in range(5):
                await conn.execute(text("SELECT 1"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    try:
        sent = await call_asgi(ShadowdASGIMiddleware(app))
    finally:
        await engine.dispose()
    assert parse_server_timing(sent[0]["headers"])["db-calls"] == {"dur": 5.0}


def test_the_middleware_imports_nothing_of_the_daemon_and_the_daemon_never_imports_it():
    code = (
        "import sys; import shadowd.middleware; "
        "print(sorted(m for m in sys.modules if m.startswith('shadowd')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['shadowd', 'shadowd.middleware']"
    code = (
        "import sys, shadowd.cli, shadowd.supervisor, shadowd.daemon, shadowd.worker; "
        "print('shadowd.middleware' in sys.modules, 'sqlalchemy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


# -- the daemon's side: reading it back and judging it -----------------------------------------
CONFIG = build_config(
    "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3", verdict={"min_exchanges": 10}
)


def _answer(target: str, timing: str | None) -> Answer:
    headers = [(b"content-type", b"application/json")]
    if timing is not None:
        headers.append((b"server-timing", timing.encode()))
    return Answer(target=target, status=200, headers=headers, body=b"{}", body_size=2, latency=0.01)


def _timing(calls: int, hit: bool | None = None) -> str:
    cache = "" if hit is None else f", cache-hits;dur={int(hit)}, cache-misses;dur={int(not hit)}"
    return f"db;dur=1.5, db-calls;dur={calls}{cache}, app;dur=3.0"


def _judged(rows: list[tuple[str, str, str]], config=CONFIG) -> dict:
    aggregator, evidence = Aggregator(config), VerdictEvidence(config.endpoints.max)
    for i, (p, s, c) in enumerate(rows):
        exchange = Exchange(
            id=i,
            request=Request("GET", f"/items/{i}", [(b"host", b"h")], b"", received_at=1e9 + i),
            endpoint="GET /items/{id}",
        )
        exchange.answers = {
            "primary": _answer("primary", p),
            "secondary": _answer("secondary", s),
            "candidate": _answer("candidate", c),
        }
        diff = diff_exchange(exchange, config.diff)
        aggregator.add(exchange, diff)
        evidence.record(exchange, diff)
    verdict = judge(build_report(aggregator), evidence, config).to_json()
    return {(c["name"], c["scope"]): c for c in verdict["criteria"]} | {"_verdict": verdict}


def test_usage_is_read_from_the_header_form():
    usage = usage_of(_answer("primary", _timing(7, hit=True)))
    assert (usage.db_calls, usage.db_ms, usage.hits, usage.misses) == (7, 1.5, 1, 0)
    assert usage_of(_answer("primary", "db;dur=3")) is None  # someone else's metrics only
    assert usage_of(_answer("primary", None)) is None
    assert usage_of(Answer(target="primary", error="timeout")) is None


def test_more_db_calls_fail_only_beyond_the_secondarys_noise():
    more = _judged([(_timing(3), _timing(3), _timing(6))] * 120)
    assert more[("db_calls", "GET /items/{id}")]["status"] == "fail"
    assert more[("db_calls", "GET /items/{id}")]["reason"].startswith(
        "GET /items/{id}: candidate makes 6 DB calls per request vs 3 (x2.0, 70 pairs; "
    )
    # The secondary (the primary's release) makes as many: the extra calls are noise.
    noise = _judged([(_timing(3), _timing(6), _timing(6))] * 120)
    assert noise[("db_calls", "GET /items/{id}")]["status"] == "pass"
    # Within the tolerance (+25 %): 3 -> 3.5 on average passes.
    some = _judged([(_timing(6), _timing(6), _timing(6 + i % 2)) for i in range(120)])
    assert some[("db_calls", "GET /items/{id}")]["status"] == "pass"


def test_cache_misses_fail_after_the_warm_up_only():
    broken = _judged([(_timing(0, True), _timing(0, True), _timing(1, False))] * 120)
    cache = broken[("cache_hit_ratio", "GET /items/{id}")]
    assert cache["status"] == "fail"
    assert cache["reason"].startswith("GET /items/{id}: cache hit ratio 0% vs 100% (")
    # cold for its first 50 requests (the warm-up), then warm: passes
    cold = [
        (_timing(0, True), _timing(0, True), _timing(0, True) if i >= 50 else _timing(1, False))
        for i in range(120)
    ]
    judged = _judged(cold)
    assert judged["_verdict"]["verdict"] == "pass", judged["_verdict"]["reasons"]
    assert judged[("cache_hit_ratio", "GET /items/{id}")]["details"]["warmup_rows_left_out"] == 50


def test_services_without_the_middleware_are_not_judged_on_it():
    judged = _judged([(None, None, None)] * 120)
    assert not {key for key in judged if key[0] in ("db_calls", "cache_hit_ratio")}

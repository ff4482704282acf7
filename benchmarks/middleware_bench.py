"""What the companion middleware costs a service: µs per request, in-process.

A bare ASGI app and a bare WSGI app (one header, a small body) are called directly, with no
server and no socket, with and without the middleware, so the difference is the
middleware's own work: a context variable set and reset, one header formatted, and the
calls the application makes (``record_db_call`` x3 and ``record_cache`` per request, as a
request with three statements and one cache lookup would). The SQLAlchemy event hooks are
measured apart: per statement, on an in-memory SQLite engine, with and without them.

    .venv/bin/python benchmarks/middleware_bench.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from shadowd.middleware import (
    ShadowdASGIMiddleware,
    ShadowdWSGIMiddleware,
    instrument_sqlalchemy,
    record_cache,
    record_db_call,
)

BODY = b'{"id": 1, "name": "product 1", "price": 107}'
ROUNDS = 5  # each figure is the median of this many rounds


async def asgi_app(scope, receive, send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


async def asgi_app_reporting(scope, receive, send) -> None:
    for _ in range(3):
        record_db_call(0.0004)
    record_cache("hit")
    await asgi_app(scope, receive, send)


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [BODY]


def wsgi_app_reporting(environ, start_response):
    for _ in range(3):
        record_db_call(0.0004)
    record_cache("hit")
    return wsgi_app(environ, start_response)


def asgi_rate(app: Callable, requests: int) -> float:
    scope = {"type": "http", "method": "GET", "path": "/catalog/1", "headers": []}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    async def run() -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await app(scope, receive, send)
        return (time.perf_counter() - started) / requests * 1e6

    return statistics.median(asyncio.run(run()) for _ in range(ROUNDS))


def wsgi_rate(app: Callable, requests: int) -> float:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/catalog/1"}

    def start_response(status, headers, exc_info=None):
        return None

    def run() -> float:
        started = time.perf_counter()
        for _ in range(requests):
            for _chunk in app(environ, start_response):
                pass
        return (time.perf_counter() - started) / requests * 1e6

    return statistics.median(run() for _ in range(ROUNDS))


def sqlalchemy_rate(instrumented: bool, statements: int) -> float:
    from sqlalchemy import create_engine, text

    engine = create_engine("sqlite://")
    if instrumented:
        instrument_sqlalchemy(engine)
    query = text("SELECT 1")

    def statements_in_a_request() -> None:
        with engine.connect() as conn:
            for _ in range(statements):
                conn.execute(query).scalar_one()

    wrapped = ShadowdWSGIMiddleware(
        lambda environ, start: (statements_in_a_request(), start("200 OK", []), [b""])[2]
    )

    def run() -> float:
        started = time.perf_counter()
        for _chunk in wrapped({}, lambda *a: None):
            pass
        return (time.perf_counter() - started) / statements * 1e6

    return statistics.median(run() for _ in range(ROUNDS))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    n = args.requests
    rows = [
        ("ASGI", asgi_rate(asgi_app, n), asgi_rate(ShadowdASGIMiddleware(asgi_app), n)),
        (
            "ASGI, app reports 3 DB calls + 1 cache lookup",
            asgi_rate(asgi_app_reporting, n),
            asgi_rate(ShadowdASGIMiddleware(asgi_app_reporting), n),
        ),
        ("WSGI", wsgi_rate(wsgi_app, n), wsgi_rate(ShadowdWSGIMiddleware(wsgi_app), n)),
        (
            "WSGI, app reports 3 DB calls + 1 cache lookup",
            wsgi_rate(wsgi_app_reporting, n),
            wsgi_rate(ShadowdWSGIMiddleware(wsgi_app_reporting), n),
        ),
        (
            "SQLAlchemy statement (SQLite in memory), per statement",
            sqlalchemy_rate(False, n // 10),
            sqlalchemy_rate(True, n // 10),
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'app':<{width}}  {'bare µs':>8}  {'with µs':>8}  {'added µs':>8}")
    for name, bare, wrapped in rows:
        print(f"{name:<{width}}  {bare:8.2f}  {wrapped:8.2f}  {wrapped - bare:8.2f}")
    print(f"({n} requests per round, median of {ROUNDS} rounds, one process, no server)")


if __name__ == "__main__":
    main()

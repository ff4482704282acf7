"""Companion middleware for the services shadowd compares (not for shadowd itself).

Added to a service, it counts per request the database statements the service ran and
their time, the cache lookups it reported, and its own time, and adds ONE ``Server-Timing``
header to the answer::

    Server-Timing: db;dur=12.5, db-calls;dur=7, cache-hits;dur=1, cache-misses;dur=0, app;dur=31.2

- ``db``: milliseconds spent in database statements (from the cursor's execute to its end);
- ``db-calls``: the number of statements (a count, carried in ``dur`` so that every value
  sits in the one place shadowd compares numerically);
- ``cache-hits`` / ``cache-misses``: lookups reported with ``record_cache``; both are present
  as soon as the request reported one lookup, neither otherwise;
- ``app``: milliseconds from the request's arrival to its answer's status line.

Every value is a ``dur``, none a ``desc``: shadowd diffs a metric's presence and ``desc``
like a header value, so a count in ``desc`` would be a field difference on every request
whose count differs, and a cold cache would be reported as a changed answer. As ``dur``s they
reach the verdict's own paired criteria (``db_calls``, ``cache_hit_ratio``) instead.

Nothing else about the answer changes: status, the other headers (an application's own
``Server-Timing`` header is kept as it is) and the body pass through untouched. The counts
are those when the status line is sent; a streamed answer gets the counts so far.

Per request state lives in a ``contextvars.ContextVar``: it follows the request into tasks
and into the thread pool that runs synchronous endpoints (Starlette/FastAPI copy the
context there), and WSGI servers give each request its own thread's context.

This module imports only the standard library; ``instrument_sqlalchemy`` imports SQLAlchemy
when called. The shadowd daemon never imports it.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "HEADER",
    "ShadowdASGIMiddleware",
    "ShadowdWSGIMiddleware",
    "instrument_sqlalchemy",
    "record_cache",
    "record_db_call",
    "server_timing",
]

HEADER = "Server-Timing"
_HEADER_BYTES = b"server-timing"
_clock = time.perf_counter


class _Usage:
    __slots__ = ("db_calls", "db_seconds", "hits", "misses", "started")

    def __init__(self) -> None:
        self.started = _clock()
        self.db_calls = 0
        self.db_seconds = 0.0
        self.hits = 0
        self.misses = 0

    def header(self) -> str:
        app_ms = (_clock() - self.started) * 1000
        value = f"db;dur={self.db_seconds * 1000:.2f}, db-calls;dur={self.db_calls}"
        if self.hits or self.misses:
            value += f", cache-hits;dur={self.hits}, cache-misses;dur={self.misses}"
        return f"{value}, app;dur={app_ms:.2f}"


_usage: contextvars.ContextVar[_Usage | None] = contextvars.ContextVar(
    "shadowd_usage", default=None
)


def record_db_call(seconds: float = 0.0) -> None:
    """Count one database call of the current request, and the seconds it took.

    The hook for drivers other than SQLAlchemy (asyncpg, psycopg, a Redis client used as a
    store...): call it once per statement. Outside a request it does nothing."""
    usage = _usage.get()
    if usage is not None:
        usage.db_calls += 1
        usage.db_seconds += seconds


def record_cache(result: str | bool) -> None:
    """Count one cache lookup of the current request: ``"hit"`` (or True) or ``"miss"``
    (or False). Outside a request it does nothing."""
    if result is True or result == "hit":
        hit = True
    elif result is False or result == "miss":
        hit = False
    else:  # a typo must show in development, not only under shadowd
        raise ValueError(f"record_cache takes 'hit' or 'miss', not {result!r}")
    usage = _usage.get()
    if usage is None:
        return
    if hit:
        usage.hits += 1
    else:
        usage.misses += 1


def server_timing() -> str | None:
    """The header value for the current request so far (None outside a request): for
    frameworks that build their answers' headers themselves."""
    usage = _usage.get()
    return None if usage is None else usage.header()


_STARTED = "_shadowd_started"


def _before_cursor_execute(conn: Any, cursor: Any, statement: Any, *args: Any) -> None:
    if _usage.get() is not None:
        conn.info.setdefault(_STARTED, []).append(_clock())


def _after_cursor_execute(conn: Any, cursor: Any, statement: Any, *args: Any) -> None:
    usage = _usage.get()
    if usage is None:
        return
    started = conn.info.get(_STARTED)
    # A statement that raised never reaches this event: its start is dropped here, at the
    # connection's next statement, so the stack cannot grow.
    seconds = _clock() - started.pop() if started else 0.0
    if started:
        started.clear()
    usage.db_calls += 1
    usage.db_seconds += seconds


def instrument_sqlalchemy(engine: Any) -> Any:
    """Count the statements run through ``engine`` (a SQLAlchemy ``Engine`` or
    ``AsyncEngine``) per request. Call it once per engine; returns the engine."""
    from sqlalchemy import event

    sync_engine = getattr(engine, "sync_engine", engine)
    if not event.contains(sync_engine, "before_cursor_execute", _before_cursor_execute):
        event.listen(sync_engine, "before_cursor_execute", _before_cursor_execute)
        event.listen(sync_engine, "after_cursor_execute", _after_cursor_execute)
    return engine


class ShadowdASGIMiddleware:
    """ASGI middleware: ``app.add_middleware(ShadowdASGIMiddleware)`` (Starlette, FastAPI) or
    ``app = ShadowdASGIMiddleware(app)`` (any ASGI 3 application). Only ``http`` scopes are
    counted; websocket and lifespan pass straight through."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        usage = _Usage()
        token = _usage.set(usage)

        async def send_with_timing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((_HEADER_BYTES, usage.header().encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_timing)
        finally:
            _usage.reset(token)


class ShadowdWSGIMiddleware:
    """WSGI middleware: ``app.wsgi_app = ShadowdWSGIMiddleware(app.wsgi_app)`` (Flask) or
    ``application = ShadowdWSGIMiddleware(get_wsgi_application())`` (Django, any WSGI app).

    The header is made when the application calls ``start_response``; work an application
    does while its body iterable is consumed after that is not counted (the header is
    already gone)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        usage = _Usage()
        context = contextvars.copy_context()

        def start_with_timing(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, [*headers, (HEADER, usage.header())], *exc_info)

        # A copy of the caller's context per request: nothing leaks into the server's
        # thread between requests, and a generator body started later still sees it.
        return context.run(_run_wsgi, self.app, usage, environ, start_with_timing)


def _run_wsgi(app: Callable[..., Any], usage: _Usage, environ: Any, start: Any) -> Any:
    _usage.set(usage)
    return app(environ, start)

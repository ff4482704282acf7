"""Why an upstream call timed out is told apart: waiting for a pooled connection, connecting,
or waiting for the answer. Real listeners on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp
from aiohttp import web

from shadowd.config import target_from_url
from shadowd.exchange import (
    ERROR_CONNECT_TIMEOUT,
    ERROR_POOL_TIMEOUT,
    ERROR_TIMEOUT,
    Answer,
)
from shadowd.tasks import TaskGroup
from shadowd.upstream.collect import AnswerCollector
from shadowd.upstream.pool import UpstreamPool


async def call(pool: UpstreamPool, path: bytes = b"/") -> Answer:
    done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    collector = AnswerCollector("primary", 1024, done.set_result)
    pool.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n", collector)
    async with asyncio.timeout(10):
        return await done


def full_backlog_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listener that never accepts, its queue filled: the next connect hangs in SYN."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(listener.getsockname())
        fillers.append(filler)
    return listener, fillers


async def test_a_connect_that_hangs_is_a_connect_timeout():
    listener, fillers = full_backlog_listener()
    port = listener.getsockname()[1]
    tasks = TaskGroup()
    target = target_from_url(
        "primary", f"http://127.0.0.1:{port}", timeout=5.0, connect_timeout=0.3
    )
    pool = UpstreamPool(target, tasks)
    try:
        answer = await call(pool)
    finally:
        pool.close()
        for sock in [*fillers, listener]:
            sock.close()
    assert answer.error == ERROR_CONNECT_TIMEOUT


async def test_the_call_deadline_passing_while_connecting_is_a_connect_timeout():
    listener, fillers = full_backlog_listener()
    port = listener.getsockname()[1]
    target = target_from_url(
        "primary", f"http://127.0.0.1:{port}", timeout=0.3, connect_timeout=5.0
    )
    pool = UpstreamPool(target, TaskGroup())
    try:
        answer = await call(pool)
    finally:
        pool.close()
        for sock in [*fillers, listener]:
            sock.close()
    assert answer.error == ERROR_CONNECT_TIMEOUT


async def test_waiting_for_a_pooled_connection_is_a_pool_timeout():
    # The only connection slot is taken by a connect that hangs (it outlives its call's
    # deadline), so the second call waits in the pool until its own deadline.
    listener, fillers = full_backlog_listener()
    port = listener.getsockname()[1]
    target = target_from_url(
        "primary",
        f"http://127.0.0.1:{port}",
        timeout=0.3,
        connect_timeout=5.0,
        max_connections=1,
    )
    pool = UpstreamPool(target, TaskGroup())
    try:
        first, second = await asyncio.gather(call(pool), call(pool))
    finally:
        pool.close()
        for sock in [*fillers, listener]:
            sock.close()
    assert (first.error, second.error) == (ERROR_CONNECT_TIMEOUT, ERROR_POOL_TIMEOUT)


async def test_an_answer_that_does_not_come_in_time_is_a_timeout(make_backend):
    release = asyncio.Event()
    backend = make_backend()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    backend.route("GET", "/hang", hang)
    await backend.start()
    pool = UpstreamPool(target_from_url("primary", backend.url, timeout=0.3), TaskGroup())
    try:
        answer = await call(pool, b"/hang")
    finally:
        release.set()
        pool.close()
    assert answer.error == ERROR_TIMEOUT


async def test_the_client_gets_504_and_the_metrics_tell_the_kinds_apart(
    make_backend, start_shadowd
):
    release = asyncio.Event()
    backend = make_backend()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    backend.route("GET", "/hang", hang)
    await backend.start()
    listener, fillers = full_backlog_listener()
    hanging_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    options = {"timeout": 0.3, "connect_timeout": 5.0, "max_connections": 1}
    stuck = await start_shadowd(
        hanging_url, backend.url, primary_options=options, mirror={"sample_rate": 0.0}
    )
    slow = await start_shadowd(
        backend.url, backend.url, primary_options=options, mirror={"sample_rate": 0.0}
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def get(url: str) -> int:
                async with session.get(url + "/hang") as answer:
                    return answer.status

            statuses = await asyncio.gather(get(stuck.url), get(stuck.url), get(slow.url))
    finally:
        release.set()
        for sock in [*fillers, listener]:
            sock.close()
    assert statuses == [504, 504, 504]
    errors = stuck.daemon.metrics._errors
    assert errors[("primary", "connect_timeout")]._value.get() == 1
    assert errors[("primary", "pool_timeout")]._value.get() == 1
    assert errors[("primary", "timeout")]._value.get() == 0
    errors = slow.daemon.metrics._errors
    assert errors[("primary", "timeout")]._value.get() == 1
    assert errors[("primary", "pool_timeout")]._value.get() == 0

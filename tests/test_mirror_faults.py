"""Faults on the copy path never tax production: the circuit breaker per copy target, and
the bound on bodies held for exchanges still waiting for their answers."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from realpeers import EndlessAnswer

from shadowd.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_then_probes_and_closes():
    clock = FakeClock()
    breaker = CircuitBreaker("candidate", threshold=3, backoff=1.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record("reset")
    assert breaker.state == CLOSED
    breaker.record(None)  # a success in between: the count starts again
    for _ in range(3):
        breaker.record("connect")
    assert breaker.state == OPEN
    assert not breaker.allow()
    clock.now += 0.99
    assert not breaker.allow()
    clock.now += 0.02
    assert breaker.allow()  # the probe
    assert breaker.state == HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.record(None)
    assert breaker.state == CLOSED and breaker.allow()


def test_a_failed_probe_doubles_the_wait_up_to_the_cap():
    clock = FakeClock()
    breaker = CircuitBreaker("candidate", threshold=1, backoff=1.0, max_backoff=3.0, clock=clock)
    breaker.record("protocol")
    waits = []
    for _ in range(4):
        start = clock.now
        while not breaker.allow():
            clock.now += 0.25
        waits.append(clock.now - start)
        breaker.record("protocol")
    assert waits == [1.0, 2.0, 3.0, 3.0]


def test_timeouts_and_answers_of_any_status_do_not_trip_it():
    breaker = CircuitBreaker("candidate", threshold=2, clock=FakeClock())
    for _ in range(10):
        breaker.record("timeout")  # slow is not broken: the in-flight cap holds it
        breaker.record(None)  # a 500 is an answer: the diff must see it
    assert breaker.state == CLOSED


def test_a_lost_probe_is_retried_after_another_window():
    clock = FakeClock()
    breaker = CircuitBreaker("candidate", threshold=1, backoff=1.0, clock=clock)
    breaker.record("reset")
    clock.now += 1.0
    assert breaker.allow()  # a probe that never reports back...
    clock.now += 1.0
    assert breaker.allow()  # ...does not keep copies off forever


async def _resetting_server() -> tuple[asyncio.Server, str, list[int]]:
    accepted: list[int] = []

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        await reader.readline()
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", accepted


async def test_a_resetting_candidate_is_shed_after_a_few_copies(make_backend, start_shadowd):
    primary = make_backend()

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    primary.route("GET", "/{tail:.*}", answer)
    await primary.start()
    server, url, accepted = await _resetting_server()
    async with server:
        shadowd = await start_shadowd(
            primary.url, url, mirror={"breaker_failures": 5, "breaker_backoff": 60.0}
        )
        async with aiohttp.ClientSession() as session:
            for i in range(200):
                async with session.get(f"{shadowd.url}/items/{i}") as response:
                    assert response.status == 200
                    assert await response.json() == {"ok": True}
        await shadowd.settled(5)
        dropped = shadowd.daemon.metrics.mirror_dropped_counts()
        # five copies reached the candidate and failed; the rest never left shadowd
        assert len(accepted) <= 6
        assert dropped["target_unhealthy"] >= 190
        assert dropped["target_unhealthy"] + shadowd.daemon.diff_stage.diffed == 200


async def test_held_bodies_are_bounded_while_the_candidate_hangs(make_backend, start_shadowd):
    primary, candidate = make_backend(), make_backend()
    big = b"x" * (512 * 1024)
    release = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/octet-stream")

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=b"late")

    primary.route("GET", "/{tail:.*}", answer)
    candidate.route("GET", "/{tail:.*}", hang)
    await primary.start()
    await candidate.start()
    shadowd = await start_shadowd(
        primary.url,
        candidate.url,
        mirror={"max_pending_bytes": 2 * 1024 * 1024, "max_in_flight": 64},
        candidate_options={"timeout": 30.0},
    )
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(20):
                async with session.get(f"{shadowd.url}/blob/{i}") as response:
                    assert await response.read() == big  # production untouched
        mirror = shadowd.daemon.mirror
        assert mirror.pending_bytes <= 2 * 1024 * 1024
        dropped = shadowd.daemon.metrics.mirror_dropped_counts()
        assert dropped["pending_bytes"] >= 16  # at most 4 answers of 512 KiB fit in 2 MiB
    finally:
        release.set()


def endless_head() -> EndlessAnswer:
    """A target whose answer head never ends: one field line after another."""
    return EndlessAnswer(b"HTTP/1.1 200 OK\r\n", (b"X-Field: " + b"v" * 1000 + b"\r\n") * 64)


async def test_a_candidate_whose_head_never_ends_is_cut_off_not_buffered(
    make_backend, start_shadowd
):
    primary = make_backend()

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    primary.route("GET", "/{tail:.*}", answer)
    await primary.start()
    candidate = endless_head()
    async with await candidate.start():
        shadowd = await start_shadowd(primary.url, candidate.url)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{shadowd.url}/items/1") as response:
                assert response.status == 200
                assert await response.json() == {"ok": True}
        await shadowd.settled(1)
        assert shadowd.exchanges[0].answers["candidate"].error == "too_large"
        async with asyncio.timeout(5):
            await candidate.cut_off.wait()
        # Cut off past the limit (64 KiB, plus what was in flight), not after gigabytes.
        assert candidate.sent[0] < 16 << 20


async def test_a_primary_whose_head_never_ends_gets_the_client_a_502_at_once(
    make_backend, start_shadowd
):
    candidate = make_backend()
    await candidate.start()
    primary = endless_head()
    async with await primary.start():
        shadowd = await start_shadowd(primary.url, candidate.url, primary_options={"timeout": 60.0})
        async with aiohttp.ClientSession() as session, asyncio.timeout(10):
            async with session.get(f"{shadowd.url}/items/1") as response:
                assert response.status == 502
                assert "primary sent too big a header" in await response.text()
        errors = {"target": "primary", "kind": "too_large"}
        registry = shadowd.daemon.metrics.registry
        assert registry.get_sample_value("shadowd_upstream_errors_total", errors) == 1

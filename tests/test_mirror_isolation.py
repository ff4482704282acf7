"""Nothing the candidate does reaches the primary's client; mirroring sheds load, counted."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from realpeers import EndlessAnswer

from shadowd.diff.engine import diff_exchange
from shadowd.exchange import CUT_DIGEST, Answer, Exchange

PRIMARY_BODY = b'{"answer": "from primary"}'


@pytest.fixture
async def primary(make_backend):
    backend = make_backend()

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=PRIMARY_BODY, content_type="application/json")

    backend.route("*", "/{tail:.*}", answer)
    await backend.start()
    return backend


async def answering_candidate(make_backend):
    """A candidate that answers what the primary answers."""
    candidate = make_backend()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=PRIMARY_BODY, content_type="application/json")

    candidate.route("*", "/{tail:.*}", ok)
    await candidate.start()
    return candidate


async def hanging_candidate(make_backend, release: asyncio.Event):
    """A candidate that holds every copy until ``release`` is set."""
    candidate = make_backend()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="too late")

    candidate.route("*", "/{tail:.*}", hang)
    await candidate.start()
    return candidate


async def raw_server(handle) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def timed_get(url: str, count: int = 20) -> tuple[list[bytes], float]:
    """Bodies of ``count`` sequential GETs on one keep-alive connection, and the slowest one."""
    bodies = []
    slowest = 0.0
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            started = time.perf_counter()
            async with session.get(f"{url}/items/{i}") as answer:
                bodies.append(await answer.read())
                assert answer.status == 200
            slowest = max(slowest, time.perf_counter() - started)
    return bodies, slowest


async def test_candidate_that_never_answers_does_not_delay_the_client(
    primary, make_backend, start_shadowd
):
    release = asyncio.Event()
    candidate = await hanging_candidate(make_backend, release)
    shadowd = await start_shadowd(primary.url, candidate.url, candidate_options={"timeout": 30.0})
    try:
        bodies, slowest = await timed_get(shadowd.url)
        await candidate.wait_for_requests(20)  # the copies really went out and are stuck
    finally:
        release.set()
    assert bodies == [PRIMARY_BODY] * 20
    assert slowest < 0.5  # the candidate holds every copy; a client never waits for it


NO_BREAKER = {"breaker_failures": 1_000_000}


async def test_candidate_down_leaves_answers_unchanged(primary, start_shadowd):
    # the breaker kept closed: every copy's failure is recorded (test_mirror_faults.py has
    # the breaker itself)
    shadowd = await start_shadowd(primary.url, "http://127.0.0.1:9", mirror=NO_BREAKER)
    bodies, _ = await timed_get(shadowd.url)
    assert bodies == [PRIMARY_BODY] * 20
    await shadowd.settled(20)
    errors = [ex.candidate.error for ex, _ in _exchanges(shadowd)]
    assert set(errors) == {"connect"}


async def test_candidate_resetting_connections_leaves_answers_unchanged(primary, start_shadowd):
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.transport.abort()

    server, url = await raw_server(reset)
    async with server:
        shadowd = await start_shadowd(primary.url, url, mirror=NO_BREAKER)
        bodies, _ = await timed_get(shadowd.url)
        assert bodies == [PRIMARY_BODY] * 20
        await shadowd.settled(20)
        assert {ex.candidate.error for ex, _ in _exchanges(shadowd)} == {"reset"}


async def test_candidate_answering_garbage_leaves_answers_unchanged(primary, start_shadowd):
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"\x00\xffNOT HTTP AT ALL\r\n\r\n" * 100)
        await writer.drain()
        writer.close()

    server, url = await raw_server(garbage)
    async with server:
        shadowd = await start_shadowd(primary.url, url, mirror=NO_BREAKER)
        bodies, _ = await timed_get(shadowd.url)
        assert bodies == [PRIMARY_BODY] * 20
        await shadowd.settled(20)
        assert {ex.candidate.error for ex, _ in _exchanges(shadowd)} == {"protocol"}


async def test_candidate_sending_a_huge_body_does_not_change_the_answer(
    primary, make_backend, start_shadowd
):
    candidate = make_backend()

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"z" * (20 * 1024 * 1024))

    candidate.route("*", "/{tail:.*}", huge)
    await candidate.start()
    # Past diff.max_body_bytes and within mirror.max_answer_bytes: read whole, by digest.
    shadowd = await start_shadowd(
        primary.url,
        candidate.url,
        diff={"max_body_bytes": 64 * 1024},
        mirror={"max_answer_bytes": 32 * 1024 * 1024},
    )
    bodies, _ = await timed_get(shadowd.url, count=3)
    assert bodies == [PRIMARY_BODY] * 3
    await shadowd.settled(3)
    for exchange, _ in _exchanges(shadowd):
        assert exchange.candidate.body == b""
        assert exchange.candidate.body_size == 20 * 1024 * 1024
        assert exchange.candidate.body_digest not in (None, CUT_DIGEST)
    (stats,) = shadowd.daemon.aggregator.endpoints.values()
    assert stats.by_digest == 3  # the reason is counted: over [diff] max_body_bytes


def endless_body() -> EndlessAnswer:
    """A target whose every answer declares 64 GiB and streams it until the peer goes away."""
    return EndlessAnswer(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 << 30), b"z" * (1 << 20)
    )


async def test_a_candidate_answering_gigabytes_is_cut_off_at_max_answer_bytes(
    primary, start_shadowd
):
    # Read whole, a body like this took the loop that relays production: 200 req/s through
    # shadowd fell to 10, at 0.4 s a request. It is read up to mirror.max_answer_bytes.
    endless = endless_body()
    async with await endless.start():
        shadowd = await start_shadowd(
            primary.url, endless.url, mirror={"max_answer_bytes": 1 << 20}
        )
        bodies, _ = await timed_get(shadowd.url, count=5)
        assert bodies == [PRIMARY_BODY] * 5
        await shadowd.settled(5)
        for exchange, _ in _exchanges(shadowd):
            assert exchange.candidate.status == 200
            assert exchange.candidate.body_digest == CUT_DIGEST
            assert 1 << 20 < exchange.candidate.body_size < 64 << 20
            assert exchange.candidate.error is None
        async with asyncio.timeout(5):
            await endless.cut_off.wait()
        assert endless.sent[0] < 64 << 20  # the connection was closed, not drained


async def test_a_target_whose_answers_are_all_cut_is_rested_like_a_failing_one(
    primary, start_shadowd
):
    # Each cut still costs a read of max_answer_bytes on the relaying loop: at the top rate
    # such a candidate took production from 10.7k to 1.1-2.7k req/s (faults_bench).
    endless = endless_body()
    async with await endless.start():
        shadowd = await start_shadowd(
            primary.url,
            endless.url,
            mirror={"max_answer_bytes": 1 << 20, "breaker_failures": 3, "breaker_backoff": 60.0},
        )
        bodies, _ = await timed_get(shadowd.url, count=10)
        assert bodies == [PRIMARY_BODY] * 10
        async with asyncio.timeout(10):
            await shadowd.daemon.mirror.wait_idle()
        await shadowd.settled(3)
        shed = shadowd.daemon.metrics.mirror_dropped_counts()["target_unhealthy"]
        # Three cut answers (a fourth copy may have left before the third was cut), then the
        # breaker opened and the rest were shed, counted.
        assert len(shadowd.exchanges) <= 4
        assert len(shadowd.exchanges) + shed == 10
        assert all(ex.candidate.body_digest == CUT_DIGEST for ex in shadowd.exchanges)


async def test_two_bodies_past_max_answer_bytes_are_alike_and_the_client_gets_every_byte(
    make_backend, start_shadowd
):
    download = bytes(range(256)) * (12 * 1024)  # 3 MiB

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=download, content_type="application/octet-stream")

    small_primary, candidate = make_backend(), make_backend()
    for backend in (small_primary, candidate):
        backend.route("*", "/{tail:.*}", big)
        await backend.start()
    shadowd = await start_shadowd(
        small_primary.url, candidate.url, mirror={"max_answer_bytes": 1 << 20}
    )
    bodies, _ = await timed_get(shadowd.url, count=3)
    assert bodies == [download] * 3  # the primary's answer, whole
    await shadowd.settled(3)
    for exchange, _ in _exchanges(shadowd):
        assert exchange.primary.body_digest == exchange.candidate.body_digest == CUT_DIGEST
        assert exchange.primary.body_size == len(download)  # the client got all of it
        assert diff_exchange(exchange, shadowd.daemon.config.diff).candidate == []
    # A body within the cut against one past it is a difference.
    cut = Answer("candidate", 200, body_size=(1 << 20) + 1, body_digest=CUT_DIGEST)
    whole = Answer("primary", 200, body=b"{}", body_size=2)
    assert diff_exchange(
        Exchange(1, exchange.request, "GET /x", {"primary": whole, "candidate": cut}),
        shadowd.daemon.config.diff,
    ).candidate


async def test_copies_beyond_queue_and_in_flight_cap_are_dropped_and_counted(
    primary, make_backend, start_shadowd
):
    release = asyncio.Event()
    candidate = await hanging_candidate(make_backend, release)
    shadowd = await start_shadowd(
        primary.url,
        candidate.url,
        mirror={"max_in_flight": 2, "queue_size": 3},
        candidate_options={"timeout": 30.0},
    )
    try:
        bodies, slowest = await timed_get(shadowd.url, count=10)
        mirror = shadowd.daemon.mirror
        assert (mirror.in_flight, mirror.queue_depth) == (2, 3)
        assert shadowd.daemon.metrics.mirror_dropped_counts()["queue_full"] == 5
    finally:
        release.set()
    assert bodies == [PRIMARY_BODY] * 10
    assert slowest < 0.5
    await shadowd.settled(5)


async def test_only_safe_methods_are_mirrored_by_default(primary, make_backend, start_shadowd):
    candidate = await answering_candidate(make_backend)
    shadowd = await start_shadowd(primary.url, candidate.url)
    async with aiohttp.ClientSession() as session:
        for method in ("POST", "PUT", "DELETE", "PATCH", "GET"):
            async with session.request(method, shadowd.url + "/orders/1", data=b"{}") as answer:
                assert await answer.read() == PRIMARY_BODY
    await shadowd.settled(1)
    assert [seen["method"] for seen in candidate.seen] == ["GET"]
    assert shadowd.daemon.metrics.mirror_skipped_counts()["method"] == 4


async def test_copy_carries_method_path_query_headers_and_body(
    primary, make_backend, start_shadowd
):
    candidate = await answering_candidate(make_backend)
    shadowd = await start_shadowd(
        primary.url,
        candidate.url,
        mirror={"methods": frozenset({"GET", "POST"})},
        candidate_options={
            "host_header": "candidate.internal",
            "set_headers": (("X-Shadow", "1"),),
        },
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            shadowd.url + "/search?q=shoes&page=2",
            data=b'{"size": 42}',
            headers={"X-Tenant": "acme", "Host": "shop.example"},
        ) as answer,
    ):
        await answer.read()
    await candidate.wait_for_requests(1)
    copy = candidate.seen[0]
    original = primary.seen[0]
    assert copy["method"] == "POST"
    assert copy["path_qs"] == original["path_qs"] == "/search?q=shoes&page=2"
    assert copy["body"] == original["body"] == b'{"size": 42}'
    assert copy["headers"]["X-Tenant"] == "acme"
    assert copy["headers"]["Host"] == "candidate.internal"
    assert copy["headers"]["X-Shadow"] == "1"
    assert original["headers"]["Host"] == "shop.example"
    assert "X-Shadow" not in original["headers"]


async def test_kill_switch_stops_copies(primary, make_backend, start_shadowd):
    candidate = make_backend()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    candidate.route("*", "/{tail:.*}", ok)
    await candidate.start()
    shadowd = await start_shadowd(primary.url, candidate.url)
    await shadowd.daemon.set_mirroring(False)
    bodies, _ = await timed_get(shadowd.url, count=5)
    assert bodies == [PRIMARY_BODY] * 5
    assert candidate.seen == []
    assert shadowd.daemon.metrics.mirror_skipped_counts()["disabled"] == 5


def _exchanges(shadowd):
    return [(exchange, None) for exchange in shadowd.exchanges]


async def test_access_log_names_the_request_without_its_secrets(primary, start_shadowd, caplog):
    shadowd = await start_shadowd(primary.url, primary.url, logging={"access_log": True})
    with caplog.at_level("INFO", logger="shadowd.access"):
        async with (
            aiohttp.ClientSession() as session,
            session.get(shadowd.url + "/items/1?token=hunter2&page=3") as answer,
        ):
            await answer.read()
    (record,) = [r for r in caplog.records if r.name == "shadowd.access"]
    assert record.status == 200
    assert record.target == "/items/1?token=%5Bredacted%5D&page=3"
    assert "hunter2" not in caplog.text


async def test_include_exclude_paths_and_sample_rate_choose_the_copies(
    primary, make_backend, start_shadowd
):
    candidate = await answering_candidate(make_backend)
    shadowd = await start_shadowd(
        primary.url,
        candidate.url,
        mirror={"include_paths": (r"^/api/",), "exclude_paths": (r"/internal",)},
    )
    async with aiohttp.ClientSession() as session:
        for path in ("/api/a", "/api/internal/b", "/static/c", "/api/d"):
            async with session.get(shadowd.url + path) as answer:
                assert await answer.read() == PRIMARY_BODY
    await shadowd.settled(2)
    assert sorted(seen["path_qs"] for seen in candidate.seen) == ["/api/a", "/api/d"]
    assert shadowd.daemon.metrics.mirror_skipped_counts()["path"] == 2

    unsampled = await start_shadowd(primary.url, candidate.url, mirror={"sample_rate": 0.0})
    bodies, _ = await timed_get(unsampled.url, count=5)
    assert bodies == [PRIMARY_BODY] * 5
    assert unsampled.daemon.metrics.mirror_skipped_counts()["sampled_out"] == 5
    assert len(candidate.seen) == 2

"""The ingress against real sockets on loopback: slow heads, idle keep-alive, pipelining,
HTTP/2 clients, trailers and empty bodies reaching a real primary."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from aiohttp import web


@pytest.fixture
async def primary(make_backend):
    backend = make_backend()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    backend.route("*", "/{tail:.*}", ok)
    await backend.start()
    return backend


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def rejected(shadowd, reason: str) -> float:
    return shadowd.daemon.metrics._rejected[reason]._value.get()


async def read_to_close(reader: asyncio.StreamReader, timeout: float) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read()


async def test_slowloris_heads_are_closed_at_the_deadline_and_others_still_served(
    primary, start_shadowd
):
    header_timeout = 2.0
    shadowd = await start_shadowd(
        primary.url, primary.url, ingress={"header_timeout": header_timeout, "idle_timeout": 60.0}
    )
    host, port = address(shadowd.url)
    slow_count = 200
    all_sending = asyncio.Event()
    all_closed = asyncio.Event()
    sending = 0
    results: list[bytes] = []
    closed_at: list[float] = []
    loop = asyncio.get_running_loop()

    async def slowloris() -> None:
        nonlocal sending
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        sending += 1
        if sending == slow_count:
            all_sending.set()
        try:
            # One header line every 200 ms: never idle, never done.
            for i in range(100):
                writer.write(b"X-%d: y\r\n" % i)
                try:
                    async with asyncio.timeout(0.2):
                        # read(n), not read(): a read-to-EOF cancelled by the timeout
                        # loses what it had read (the 408 arriving just before the close)
                        data = await reader.read(65536)
                except TimeoutError:
                    continue
                closed_at.append(loop.time())
                results.append(data + await read_to_close(reader, 5.0))
                return
            results.append(b"still open")
        finally:
            writer.close()
            if len(results) == slow_count:
                all_closed.set()

    started = loop.time()
    slow = [asyncio.create_task(slowloris()) for _ in range(slow_count)]
    async with asyncio.timeout(10):
        await all_sending.wait()
    async with aiohttp.ClientSession() as session, session.get(shadowd.url + "/x") as answer:
        assert answer.status == 200
        assert await answer.text() == "fine"
    assert results == []  # served while all 200 slow heads were still open
    async with asyncio.timeout(15):
        await all_closed.wait()
    await asyncio.gather(*slow)
    assert all(r.startswith(b"HTTP/1.1 408 Request Timeout") for r in results), results[:3]
    # closed after the deadline (checked once a second), never before it
    assert min(closed_at) - started >= header_timeout
    assert max(closed_at) - started < header_timeout + 5.0
    assert rejected(shadowd, "header_timeout") == slow_count
    assert shadowd.daemon.ingress.connections == 0


async def test_a_trickled_body_is_refused_at_its_deadline_and_never_relayed(primary, start_shadowd):
    body_timeout = 1.5
    shadowd = await start_shadowd(
        primary.url,
        primary.url,
        ingress={"body_timeout": body_timeout, "header_timeout": 60.0, "idle_timeout": 60.0},
    )
    reader, writer = await asyncio.open_connection(*address(shadowd.url))
    loop = asyncio.get_running_loop()
    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    started = loop.time()
    answer = b""
    # A byte every 100 ms: never idle, never done.
    for _ in range(100):
        writer.write(b"x")
        try:
            async with asyncio.timeout(0.1):
                answer = await reader.read(65536)  # not read(): see the slowloris test
        except TimeoutError:
            continue
        break
    closed_at = loop.time()
    answer += await read_to_close(reader, 5.0)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"request body not received in time" in answer
    # after the deadline (checked once a second), never before it
    assert body_timeout <= closed_at - started < body_timeout + 5.0
    assert rejected(shadowd, "body_timeout") == 1
    assert primary.seen == []


async def test_idle_keep_alive_connections_are_reaped(primary, start_shadowd):
    shadowd = await start_shadowd(primary.url, primary.url, ingress={"idle_timeout": 0.5})
    reader, writer = await asyncio.open_connection(*address(shadowd.url))
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await read_to_close(reader, 5.0)  # returns only once shadowd closes it
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert data.endswith(b"fine")


async def test_a_connection_that_sends_nothing_is_closed_when_idle(primary, start_shadowd):
    shadowd = await start_shadowd(primary.url, primary.url, ingress={"idle_timeout": 0.5})
    reader, writer = await asyncio.open_connection(*address(shadowd.url))
    assert await read_to_close(reader, 5.0) == b""
    writer.close()


async def test_5000_pipelined_requests_on_a_socket_are_answered_or_refused_in_order(
    primary, start_shadowd
):
    from shadowd.ingress.proxy import MAX_PIPELINED

    shadowd = await start_shadowd(primary.url, primary.url)
    reader, writer = await asyncio.open_connection(*address(shadowd.url))
    star = b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n" + star * 4999)
    data = await read_to_close(reader, 10.0)
    writer.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200"] + [b"400"] * (MAX_PIPELINED - 1) + [b"503"]
    assert rejected(shadowd, "pipeline_full") == 1


async def test_an_http2_prior_knowledge_client_is_told_so(primary, start_shadowd):
    shadowd = await start_shadowd(primary.url, primary.url)
    reader, writer = await asyncio.open_connection(*address(shadowd.url))
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    data = await read_to_close(reader, 5.0)
    writer.close()
    assert data.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert b"HTTP/2 is not supported" in data


async def test_curl_with_http2_prior_knowledge_fails_clearly(primary, start_shadowd):
    import shutil

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    shadowd = await start_shadowd(primary.url, primary.url)
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--http2-prior-knowledge",
        "--max-time",
        "5",
        shadowd.url + "/x",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    assert proc.returncode != 0  # curl does not hang: it is told no at once and gives up
    assert rejected(shadowd, "http_version") == 1
    assert stderr


async def test_trailers_and_an_empty_delete_body_reach_a_real_primary_correctly(
    primary, start_shadowd
):
    shadowd = await start_shadowd(primary.url, primary.url, mirror={"sample_rate": 0.0})
    reader, writer = await asyncio.open_connection(*address(shadowd.url))
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-User-Id: admin\r\nHost: evil\r\n\r\n"
        b"DELETE /item/1 HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    data = await read_to_close(reader, 5.0)
    writer.close()
    assert data.count(b"HTTP/1.1 200 OK") == 2
    upload, delete = [seen for seen in primary.seen if seen["method"] in ("POST", "DELETE")]
    assert upload["body"] == b"abc"
    assert "X-User-Id" not in upload["headers"]
    assert upload["headers"].getall("Host") == ["shop"]
    assert delete["headers"].get("Content-Length") == "0"


async def test_tap_mode_copies_drop_trailers_and_keep_an_explicit_empty_length(
    make_backend, start_shadowd
):
    primary, candidate = make_backend(), make_backend()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    primary.route("*", "/{tail:.*}", ok)
    candidate.route("*", "/{tail:.*}", ok)
    await primary.start()
    await candidate.start()
    shadowd = await start_shadowd(
        primary.url,
        candidate.url,
        ingress={"mode": "tap"},
        mirror={"methods": frozenset({"OPTIONS"})},
    )
    reader, writer = await asyncio.open_connection(*address(shadowd.url))
    writer.write(
        b"OPTIONS /a HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\nX-User-Id: admin\r\nHost: evil\r\n\r\n"
        b"OPTIONS /b HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    data = await read_to_close(reader, 5.0)
    writer.close()
    assert data.count(b"HTTP/1.1 204 No Content") == 2
    await shadowd.settled(2)
    for backend in (primary, candidate):
        assert len(backend.seen) == 2
        for seen in backend.seen:
            assert seen["headers"].get("Content-Length") == "0"
            assert "X-User-Id" not in seen["headers"]
            assert seen["headers"].getall("Host") == ["shop"]


async def test_an_oversized_request_after_50_pipelined_gets_answered_last_on_a_socket(
    primary, start_shadowd
):
    shadowd = await start_shadowd(
        primary.url, primary.url, ingress={"max_request_body_bytes": 1000}
    )
    reader, writer = await asyncio.open_connection(*address(shadowd.url))
    writer.write(
        b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n" * 50
        + b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
        + b"z" * 200_000  # unread input when shadowd closes: must not reset the answers
    )
    data = await read_to_close(reader, 10.0)
    writer.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200"] * 50 + [b"413"]
    assert data.endswith(b"request body too large\n")


async def test_connect_then_pipelined_requests_on_a_socket_get_405_and_close(
    primary, start_shadowd
):
    shadowd = await start_shadowd(primary.url, primary.url)
    reader, writer = await asyncio.open_connection(*address(shadowd.url))
    writer.write(
        b"CONNECT shop:443 HTTP/1.1\r\nHost: shop:443\r\n\r\n"
        + b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n" * 3
    )
    data = await read_to_close(reader, 5.0)
    writer.close()
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", data) == [b"405"]
    assert b"Connection: close" in data
    assert primary.seen == []

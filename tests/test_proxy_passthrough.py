"""The client receives exactly the primary's answer: status, reason, headers, body bytes."""

from __future__ import annotations

import asyncio
import gzip
import os

import aiohttp
import pytest
from aiohttp import web

BINARY = os.urandom(256 * 1024)
LARGE = os.urandom(8 * 1024 * 1024 + 17)


async def raw_exchange(url: str, request: bytes, *, read_until_close: bool = True) -> bytes:
    """Send raw bytes, return every byte the server sent until it closed the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(10):
        data = await reader.read() if read_until_close else await reader.read(65536)
    writer.close()
    return data


@pytest.fixture
async def primary(make_backend):
    backend = make_backend()

    async def json_answer(request: web.Request) -> web.Response:
        return web.json_response({"id": 1, "name": "ada"}, headers={"X-Custom": "kept"})

    async def binary(request: web.Request) -> web.Response:
        return web.Response(body=BINARY, content_type="application/octet-stream")

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=LARGE, content_type="application/octet-stream")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, reason="Fine Thanks")
        response.content_type = "text/plain"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(50):
            await response.write(b"chunk %d;" % i)
        await response.write_eof()
        return response

    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"X-Why": "nothing"})

    async def not_modified(request: web.Request) -> web.Response:
        return web.Response(status=304, headers={"ETag": '"v1"'})

    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b'{"compressed": true}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), status=201)

    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418, reason="I Am A Teapot", text="short and stout")

    backend.route("GET", "/json", json_answer)
    backend.route("HEAD", "/json", json_answer)
    backend.route("GET", "/binary", binary)
    backend.route("GET", "/large", large)
    backend.route("GET", "/chunked", chunked)
    backend.route("GET", "/empty", no_content)
    backend.route("GET", "/cached", not_modified)
    backend.route("GET", "/cookies", cookies)
    backend.route("GET", "/gzip", gzipped)
    backend.route("POST", "/echo", echo)
    backend.route("GET", "/teapot", teapot)
    await backend.start()
    return backend


@pytest.fixture
async def proxy(primary, make_backend, start_shadowd):
    candidate = make_backend()

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text="candidate")

    candidate.route("*", "/{tail:.*}", anything)
    await candidate.start()
    return await start_shadowd(primary.url, candidate.url)


async def fetch(url: str, method: str = "GET", **kwargs) -> tuple[int, str, dict, bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(method, url, **kwargs) as answer,
    ):
        return answer.status, answer.reason or "", answer.headers, await answer.read()


async def test_json_answer_and_its_headers_are_relayed(proxy):
    status, _, headers, body = await fetch(proxy.url + "/json")
    assert status == 200
    assert body == b'{"id": 1, "name": "ada"}'
    assert headers["X-Custom"] == "kept"
    assert headers["Content-Type"] == "application/json; charset=utf-8"


async def test_binary_body_is_byte_identical(proxy):
    _, _, _, body = await fetch(proxy.url + "/binary")
    assert body == BINARY


async def test_large_body_is_byte_identical(proxy):
    _, _, headers, body = await fetch(proxy.url + "/large")
    assert int(headers["Content-Length"]) == len(LARGE)
    assert body == LARGE


async def test_chunked_answer_arrives_whole_with_its_reason_phrase(proxy):
    status, reason, headers, body = await fetch(proxy.url + "/chunked")
    assert (status, reason) == (200, "Fine Thanks")
    assert headers["Transfer-Encoding"] == "chunked"
    assert body == b"".join(b"chunk %d;" % i for i in range(50))


async def test_head_answer_keeps_length_and_has_no_body(proxy):
    raw = await raw_exchange(
        proxy.url, b"HEAD /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Length: 24" in head
    assert rest == b""


async def test_head_then_get_on_one_connection(proxy):
    """After a HEAD answer the upstream connection is reused without confusion."""
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.head(proxy.url + "/json") as answer:
                assert answer.status == 200
            async with session.get(proxy.url + "/json") as answer:
                assert await answer.read() == b'{"id": 1, "name": "ada"}'


async def test_204_and_304_have_no_body(proxy):
    raw = await raw_exchange(
        proxy.url,
        b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\nGET /cached HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
    )
    first, _, second = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 204 No Content")
    assert b"X-Why: nothing" in first
    assert second.startswith(b"HTTP/1.1 304 Not Modified")
    assert second.endswith(b"\r\n\r\n")


async def test_repeated_headers_are_all_relayed(proxy):
    _, _, headers, _ = await fetch(proxy.url + "/cookies")
    assert headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


async def test_compressed_body_is_relayed_compressed(proxy):
    _, _, headers, body = await fetch(proxy.url + "/gzip")
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == b'{"compressed": true}'


async def test_unusual_status_and_reason_are_relayed(proxy):
    status, reason, _, body = await fetch(proxy.url + "/teapot")
    assert (status, reason, body) == (418, "I Am A Teapot", b"short and stout")


async def test_request_body_reaches_primary(proxy, primary):
    payload = os.urandom(100_000)
    status, _, _, body = await fetch(proxy.url + "/echo", "POST", data=payload)
    assert status == 201
    assert body == payload


async def test_chunked_request_body_reaches_primary(proxy):
    async def gen():
        for i in range(10):
            yield b"part%d," % i

    status, _, _, body = await fetch(proxy.url + "/echo", "POST", data=gen())
    assert status == 201
    assert body == b"".join(b"part%d," % i for i in range(10))


async def test_http10_client_gets_a_close_delimited_answer(proxy):
    raw = await raw_exchange(proxy.url, b"GET /chunked HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    assert body == b"".join(b"chunk %d;" % i for i in range(50))


async def test_pipelined_requests_are_answered_in_order(proxy):
    raw = await raw_exchange(
        proxy.url,
        b"GET /teapot HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /teapot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.1 418") == 2
    assert raw.index(b"short and stout") < raw.index(b'"ada"') < raw.rindex(b"short and stout")


async def test_hop_by_hop_headers_are_not_forwarded(proxy, primary):
    await fetch(
        proxy.url + "/json",
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "TE": "trailers",
            "X-End-To-End": "yes",
        },
    )
    seen = primary.seen[-1]["headers"]
    assert "X-Secret-Hop" not in seen
    assert "TE" not in seen
    assert seen["X-End-To-End"] == "yes"


async def test_forwarded_for_is_appended_and_host_preserved(proxy, primary):
    await fetch(
        proxy.url + "/json", headers={"Host": "shop.example", "X-Forwarded-For": "10.0.0.7"}
    )
    seen = primary.seen[-1]["headers"]
    assert seen["Host"] == "shop.example"
    assert seen["X-Forwarded-For"] == "10.0.0.7, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == "shop.example"


async def test_keep_alive_reuses_upstream_connections(proxy, primary):
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(proxy.url + "/json") as answer:
                await answer.read()
    peers = {seen["peer"] for seen in primary.seen}
    assert len(peers) <= 2


async def test_oversized_request_body_gets_413(make_backend, primary, start_shadowd):
    shadowd = await start_shadowd(
        primary.url, primary.url, ingress={"max_request_body_bytes": 1000}
    )
    status, _, _, body = await fetch(shadowd.url + "/echo", "POST", data=b"x" * 5000)
    assert status == 413
    assert b"too large" in body
    assert all(seen["method"] != "POST" for seen in primary.seen)


async def test_oversized_headers_get_431(make_backend, primary, start_shadowd):
    shadowd = await start_shadowd(primary.url, primary.url, ingress={"max_header_bytes": 2048})
    status, _, _, _ = await fetch(shadowd.url + "/json", headers={"X-Big": "y" * 4096})
    assert status == 431


async def test_unreachable_primary_gives_502(start_shadowd, make_backend):
    candidate = make_backend()
    await candidate.start()
    shadowd = await start_shadowd("http://127.0.0.1:9", candidate.url)
    status, _, _, body = await fetch(shadowd.url + "/anything")
    assert status == 502
    assert body.startswith(b"shadowd: 502")


async def test_primary_timeout_gives_504(start_shadowd, make_backend):
    release = asyncio.Event()
    slow = make_backend()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    slow.route("GET", "/slow", hang)
    await slow.start()
    shadowd = await start_shadowd(slow.url, slow.url, primary_options={"timeout": 0.3})
    try:
        status, _, _, body = await fetch(shadowd.url + "/slow")
    finally:
        release.set()
    assert status == 504
    assert b"did not answer in time" in body


async def test_malformed_request_gets_400(proxy):
    raw = await raw_exchange(proxy.url, b"THIS IS NOT HTTP\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 Bad Request")


async def test_absolute_form_target_is_forwarded_as_a_path(proxy, primary):
    raw = await raw_exchange(
        proxy.url,
        b"GET http://shop.example/json?x=1 HTTP/1.1\r\nHost: shop.example\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert primary.seen[-1]["path_qs"] == "/json?x=1"


async def test_expect_100_continue_is_answered_and_the_body_relayed(proxy):
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n"
    )
    async with asyncio.timeout(5):
        interim = await reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    async with asyncio.timeout(5):
        final = await reader.read()
    writer.close()
    assert final.startswith(b"HTTP/1.1 201 Created")
    assert final.endswith(b"hello")


async def test_https_primary_verified_with_a_configured_ca(
    tmp_path, make_backend, start_shadowd, caplog
):
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()

    async def secure(request: web.Request) -> web.Response:
        return web.Response(text=f"tls {request.secure}")

    app.router.add_get("/", secure)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        url = f"https://127.0.0.1:{port}"
        shadowd = await start_shadowd(url, url, primary_options={"ca_file": cert})
        status, _, _, body = await fetch(shadowd.url + "/")
        assert (status, body) == (200, b"tls True")
        untrusted = await start_shadowd(url, url)  # no CA: verification fails -> 502
        status, _, _, _ = await fetch(untrusted.url + "/")
        assert status == 502
        # and the log says why, and what to set (the client only sees "unreachable")
        said = [r.getMessage() for r in caplog.records if r.name == "shadowd.upstream"]
        assert any(
            "TLS certificate not trusted" in m and "[targets.primary] ca_file" in m for m in said
        ), said
    finally:
        await runner.cleanup()


async def test_a_client_that_half_closes_still_gets_its_answer(proxy):
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /teapot HTTP/1.1\r\nHost: x\r\n\r\n")
    writer.write_eof()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 418 I Am A Teapot")
    assert answer.endswith(b"short and stout")


async def test_slow_client_gets_a_large_body_intact_with_backpressure(proxy):
    """A client that reads slowly makes shadowd pause reading the primary (flow control)
    instead of buffering the whole answer."""
    from shadowd.upstream.connection import UpstreamConnection

    pauses = 0
    original = UpstreamConnection.pause_reading

    def counting(self):
        nonlocal pauses
        pauses += 1
        original(self)

    UpstreamConnection.pause_reading = counting
    try:
        host, port = proxy.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), limit=16 * 1024)
        writer.write(b"GET /large HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = bytearray()
        async with asyncio.timeout(30):
            while chunk := await reader.read(16 * 1024):
                received += chunk
                if len(received) < 2 * 1024 * 1024:
                    await asyncio.sleep(0.001)  # a slow reader for the first 2 MB
        writer.close()
    finally:
        UpstreamConnection.pause_reading = original
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == LARGE
    assert pauses > 0

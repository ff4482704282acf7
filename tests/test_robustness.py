"""Garbage in never crashes anything: the ingress, the upstream parser, the diff engine."""

from __future__ import annotations

import asyncio
import random

import aiohttp
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowd.config import DiffConfig
from shadowd.diff.engine import compare_answers
from shadowd.exchange import Answer

CONTENT_TYPES = [b"application/json", b"text/plain", b"", b"application/octet-stream"]
ENCODINGS = [b"", b"gzip", b"deflate", b"br", b"bogus"]


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300),
    st.binary(max_size=300),
    st.sampled_from(CONTENT_TYPES),
    st.sampled_from(ENCODINGS),
    st.integers(100, 599),
)
def test_the_diff_engine_never_raises_on_any_bytes(a, b, content_type, encoding, status):
    headers = [
        (b"Content-Type", content_type),
        (b"Content-Encoding", encoding),
        (b"Server-Timing", a[:40]),
    ]
    compare_answers(
        Answer("p", 200, headers, a, len(a)),
        Answer("c", status, headers[:1], b, len(b)),
        DiffConfig(),
    )


async def test_random_bytes_at_the_ingress_never_take_it_down(make_backend, start_shadowd):
    backend = make_backend()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    backend.route("*", "/{tail:.*}", ok)
    await backend.start()
    shadowd = await start_shadowd(backend.url, backend.url)
    host, port = shadowd.url.removeprefix("http://").split(":")
    rng = random.Random(11)
    prefixes = [
        b"",
        b"GET / HTTP/1.1\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    ]
    for i in range(60):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(rng.choice(prefixes) + rng.randbytes(rng.randrange(1, 400)))
        await writer.drain()
        if i % 2:
            writer.transport.abort()  # a client that vanishes mid-request
        else:
            writer.write_eof()  # a client that stops half-way: shadowd must close, not hang
            async with asyncio.timeout(5):
                while await reader.read(4096):
                    pass
            writer.close()
    async with aiohttp.ClientSession() as session, session.get(shadowd.url + "/after") as answer:
        assert answer.status == 200
        assert await answer.text() == "fine"
    metrics = shadowd.daemon.metrics
    assert metrics._rejected["bad_request"]._value.get() > 0


async def test_a_primary_answering_garbage_gets_the_client_a_502(start_shadowd):
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"\x16\x03\x01 definitely not http\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        shadowd = await start_shadowd(url, url)
        async with aiohttp.ClientSession() as session, session.get(shadowd.url + "/") as answer:
            assert answer.status == 502

"""WebSocket upgrades relayed to a real primary on loopback, through shadowd."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiohttp import web


@pytest.fixture
async def primary(make_backend):
    backend = make_backend()
    backend.socket_ended = asyncio.Event()

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str("echo " + message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(message.data)
        finally:
            backend.socket_ended.set()
        return ws

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no sockets here")

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain")

    backend.route("GET", "/ws", echo)
    backend.route("GET", "/no-ws", refuse)
    backend.route("GET", "/plain", plain)
    await backend.start()
    return backend


async def test_a_websocket_is_relayed_both_ways(primary, start_shadowd):
    shadowd = await start_shadowd(primary.url, primary.url)
    payload = os.urandom(1024 * 1024)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(shadowd.url + "/ws") as ws:
            await ws.send_str("hello")
            async with asyncio.timeout(5):
                assert await ws.receive_str() == "echo hello"
                await ws.send_bytes(payload)
                assert await ws.receive_bytes() == payload
            await ws.close()
        # the client's next connection is an ordinary one again
        async with session.get(shadowd.url + "/plain") as answer:
            assert await answer.text() == "plain"
    seen = [s for s in primary.seen if s["path_qs"] == "/ws"]
    assert seen[0]["headers"]["Upgrade"].lower() == "websocket"
    metrics = shadowd.daemon.metrics
    assert metrics._by_class[1]._value.get() == 1  # the 101


async def test_a_refused_upgrade_is_relayed_and_the_connection_closed(primary, start_shadowd):
    shadowd = await start_shadowd(primary.url, primary.url)
    host, port = shadowd.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /no-ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    assert data.startswith(b"HTTP/1.1 403 Forbidden")
    assert data.endswith(b"no sockets here")


async def test_an_unreachable_primary_gives_the_upgrade_a_502(start_shadowd, make_backend):
    candidate = make_backend()
    await candidate.start()
    shadowd = await start_shadowd("http://127.0.0.1:9", candidate.url)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(shadowd.url + "/ws")
    assert refused.value.status == 502


async def test_the_client_leaving_closes_the_primary_side(primary, start_shadowd):
    shadowd = await start_shadowd(primary.url, primary.url)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(shadowd.url + "/ws")
        await ws.send_str("hi")
        async with asyncio.timeout(5):
            assert await ws.receive_str() == "echo hi"
        ws._response.connection.transport.abort()  # vanish without a close frame
    async with asyncio.timeout(5):
        await primary.socket_ended.wait()  # the primary's side was closed for it
        await shadowd.daemon.ingress._all_closed.wait()  # and the client's is let go


async def test_an_upgrade_header_without_connection_upgrade_is_a_plain_request(
    primary, start_shadowd
):
    shadowd = await start_shadowd(primary.url, primary.url)
    host, port = shadowd.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /plain HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
        b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert "Upgrade" not in primary.seen[0]["headers"]


async def test_a_tunnel_counts_as_a_client_connection(primary, start_shadowd):
    # Each WebSocket holds two descriptors: its client's and its own to the primary, outside
    # the pool. Counted as two clients, a flood of upgrades cannot take the pools' share.
    shadowd = await start_shadowd(
        primary.url, primary.url, ingress={"max_connections": 3, "workers": 1}
    )
    ingress = shadowd.daemon.ingress
    async with aiohttp.ClientSession() as first, aiohttp.ClientSession() as second:
        async with first.ws_connect(shadowd.url + "/ws") as ws:  # 2 of 3
            await ws.send_str("hi")
            async with asyncio.timeout(5):
                assert await ws.receive_str() == "echo hi"
            assert ingress.tunnels == 1
            # A third connection fits, and its upgrade would be a fourth: refused.
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await second.ws_connect(shadowd.url + "/ws")
            assert refused.value.status == 503
            await ws.close()
        async with asyncio.timeout(5):
            await ingress._all_closed.wait()
        assert ingress.tunnels == 0
        async with second.ws_connect(shadowd.url + "/ws") as ws:  # room again
            await ws.send_str("again")
            async with asyncio.timeout(5):
                assert await ws.receive_str() == "echo again"

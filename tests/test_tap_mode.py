"""Tap mode: copies are answered at once, then sent to every target by shadowd itself."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from shadowd.ingress.tap import strip_shadow_suffix


async def test_copy_is_answered_at_once_even_when_targets_hang(make_backend, start_shadowd):
    release = asyncio.Event()
    slow = make_backend()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})

    slow.route("*", "/{tail:.*}", hang)
    await slow.start()
    shadowd = await start_shadowd(
        slow.url,
        slow.url,
        ingress={"mode": "tap"},
        primary_options={"timeout": 30.0},
        candidate_options={"timeout": 30.0},
    )
    try:
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            for i in range(10):
                async with session.get(f"{shadowd.url}/items/{i}") as answer:
                    assert answer.status == 204
                    assert await answer.read() == b""
            elapsed = time.perf_counter() - started
        await slow.wait_for_requests(20)  # 10 copies, each sent to primary and candidate
    finally:
        release.set()
    assert elapsed < 1.0
    await shadowd.settled(10)


async def test_tap_sends_each_copy_to_primary_and_candidate_and_diffs(make_backend, start_shadowd):
    primary, candidate = make_backend(), make_backend()

    async def price(request: web.Request) -> web.Response:
        return web.json_response({"id": 1, "price": 10})

    async def price_changed(request: web.Request) -> web.Response:
        return web.json_response({"id": 1, "price": "10"})

    primary.route("GET", "/{tail:.*}", price)
    candidate.route("GET", "/{tail:.*}", price_changed)
    await primary.start()
    await candidate.start()
    shadowd = await start_shadowd(primary.url, candidate.url, ingress={"mode": "tap"})
    async with aiohttp.ClientSession() as session:
        for i in range(5):
            async with session.get(f"{shadowd.url}/products/{i}?x=1") as answer:
                assert answer.status == 204
    await shadowd.settled(5)
    assert sorted(seen["path_qs"] for seen in primary.seen) == [
        f"/products/{i}?x=1" for i in range(5)
    ]
    assert len(candidate.seen) == 5
    for exchange in shadowd.exchanges:
        assert exchange.primary.status == 200
        assert exchange.candidate.body == b'{"id": 1, "price": "10"}'


async def test_original_uri_header_and_shadow_host_suffix_are_undone(make_backend, start_shadowd):
    primary = make_backend()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    primary.route("GET", "/{tail:.*}", ok)
    await primary.start()
    shadowd = await start_shadowd(primary.url, primary.url, ingress={"mode": "tap"})
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{shadowd.url}/mirror",
            headers={"X-Original-URI": "/orders/7?expand=items", "Host": "shop-shadow:8080"},
        ) as answer,
    ):
        assert answer.status == 204
    await primary.wait_for_requests(2)
    for seen in primary.seen:
        assert seen["path_qs"] == "/orders/7?expand=items"
        assert seen["headers"]["Host"] == "shop:8080"
        assert "X-Original-URI" not in seen["headers"]


def test_shadow_suffix_is_stripped_only_from_the_host_name():
    assert strip_shadow_suffix(b"app-shadow") == b"app"
    assert strip_shadow_suffix(b"app-shadow:8080") == b"app:8080"
    assert strip_shadow_suffix(b"shadow.example") == b"shadow.example"
    assert strip_shadow_suffix(b"[::1]:80") == b"[::1]:80"

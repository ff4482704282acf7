"""A reload that changes a primary setting swaps the pool under load: requests queued on the
old pool are still served, none is answered 502."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
from aiohttp import web

from shadowd.config import target_from_url


async def test_requests_queued_on_the_old_pool_are_served_across_a_reload(
    make_backend, start_shadowd
):
    primary, candidate = make_backend(), make_backend()
    gate = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await gate.wait()
        return web.json_response({"ok": True})

    primary.route("GET", "/{tail:.*}", slow)
    candidate.route("GET", "/{tail:.*}", slow)
    await primary.start()
    await candidate.start()
    # two pooled connections: most of the 40 requests wait in the pool's queue
    shadowd = await start_shadowd(
        primary.url, candidate.url, primary_options={"max_connections": 2}
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:

        async def get(i: int) -> int:
            async with session.get(f"{shadowd.url}/items/{i}") as response:
                await response.read()
                return response.status

        requests = [asyncio.ensure_future(get(i)) for i in range(40)]
        await arrived.wait()
        config = shadowd.daemon.config
        changed = dataclasses.replace(
            config,
            primary=target_from_url("primary", primary.url, timeout=20.0, max_connections=4),
        )
        shadowd.daemon.reconfigure(changed)  # a new pool for the primary
        gate.set()
        statuses = await asyncio.gather(*requests)
    assert statuses == [200] * 40

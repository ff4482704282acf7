"""The peer a developer would hand-roll: an aiohttp reverse proxy with a fire-and-forget mirror.

python benchmarks/plain_aiohttp_proxy.py LISTEN_PORT PRIMARY_URL MIRROR_URL
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
    "host",
}


def build_app(primary: str, mirror: str) -> web.Application:
    tasks: set[asyncio.Task[None]] = set()
    state: dict[str, aiohttp.ClientSession] = {}

    async def start(app: web.Application) -> None:
        state["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), auto_decompress=False
        )

    async def stop(app: web.Application) -> None:
        await state["session"].close()

    async def copy(method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        try:
            async with state["session"].request(
                method, mirror + path, headers=headers, data=body
            ) as answer:
                await answer.read()
        except aiohttp.ClientError:
            pass

    async def proxy(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        task = asyncio.create_task(copy(request.method, request.path_qs, headers, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        async with state["session"].request(
            request.method, primary + request.path_qs, headers=headers, data=body
        ) as answer:
            payload = await answer.read()
            out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=answer.status, headers=out_headers, body=payload)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


if __name__ == "__main__":
    port, primary_url, mirror_url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    uvloop.install()
    web.run_app(
        build_app(primary_url, mirror_url), host="127.0.0.1", port=port, access_log=None, print=None
    )

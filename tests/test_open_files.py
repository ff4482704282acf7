"""Client connections within the file descriptors a worker may open.

Under ``ulimit -n 1024`` a flood of idle connections far below ``max_connections`` used every
descriptor: new clients got resets and connects to the primary failed, with nothing logged or
counted. Now shadowd raises its soft limit, and a worker short of descriptors takes only the
clients it can serve beside its pools: the rest get 503, counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp
import pytest
from aiohttp import web
from conftest import build_config
from realpeers import ShadowdProcess, free_port

from shadowd.config import Config
from shadowd.ingress.descriptors import MIN_CLIENTS, RESERVED, client_budget

pytestmark = pytest.mark.integration


def config_with(max_connections: int, workers: int, pool: int) -> Config:
    return build_config(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        ingress={"max_connections": max_connections, "workers": workers},
        primary_options={"max_connections": pool},
        candidate_options={"max_connections": pool},
    )


def test_max_connections_is_split_across_the_workers():
    budget = client_budget(config_with(10_000, 4, 256), open_files=1 << 20)
    assert (budget.share, budget.clients, budget.short) == (2500, 2500, False)
    assert client_budget(config_with(9, 2, 1), open_files=1 << 20).share == 5  # rounded up


def test_a_short_open_files_limit_leaves_descriptors_for_the_pools():
    budget = client_budget(config_with(10_000, 2, 100), open_files=1024)
    assert budget.clients == 1024 - RESERVED - 200
    assert budget.short
    assert "ulimit -n" in budget.explain() and "1024" in budget.explain()
    # Pools that claim every descriptor still leave a worker some clients.
    assert client_budget(config_with(10_000, 1, 256), open_files=300).clients == MIN_CLIENTS


async def test_a_connection_flood_past_the_descriptors_gets_503_not_resets(make_backend, tmp_path):
    primary, candidate = make_backend(), make_backend()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    for backend in (primary, candidate):
        backend.route("GET", "/hello", hello)
        await backend.start()
    ingress, admin = free_port(), free_port()
    config = tmp_path / "shadowd.toml"
    config.write_text(
        f"""
[ingress]
listen = "127.0.0.1:{ingress}"
workers = 1
[admin]
listen = "127.0.0.1:{admin}"
[targets.primary]
url = "{primary.url}"
max_connections = 100
[targets.candidate]
url = "{candidate.url}"
max_connections = 100
"""
    )
    # 300 descriptors, 200 for the pools, 64 reserved: 36 clients (not 10,000).
    daemon = ShadowdProcess(config, open_files=300)
    await daemon.start()
    flood: list[socket.socket] = []
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, f"http://127.0.0.1:{admin}/readyz")
            for _ in range(100):  # idle clients, each with half a request head
                sock = socket.create_connection(("127.0.0.1", ingress))
                sock.sendall(b"GET /hello HTTP/1.1\r\nHost: shop\r\n")
                flood.append(sock)
            # Accepted after the flood: the worker holds its 36 and answers this one itself.
            async with session.get(f"http://127.0.0.1:{ingress}/hello") as answer:
                assert answer.status == 503
                assert "too many client connections" in await answer.text()
            for sock in flood:
                sock.close()
            flood.clear()
            # Freed: served again (as soon as the worker has seen the closes).
            async with asyncio.timeout(10):
                while True:
                    async with session.get(f"http://127.0.0.1:{ingress}/hello") as answer:
                        if answer.status == 200:
                            assert await answer.json() == {"hello": True}
                            break
            # Counted (the supervisor merges each worker's counters about once a second).
            rejected = 'shadowd_ingress_rejected_total{reason="max_connections"}'
            async with asyncio.timeout(10):
                while True:
                    if _sample(await _get(session, admin, "/metrics"), rejected) >= 100 - 36:
                        break
                    await asyncio.sleep(0.1)
        daemon.process.terminate()
        assert await daemon.wait() == 0
        log = await daemon.output()
        assert "each ingress worker takes 36 client connections, not 10000" in log
        assert "the open-files limit is 300" in log
    finally:
        for sock in flood:
            sock.close()
        await daemon.kill()


async def _wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(0.05)


async def _get(session: aiohttp.ClientSession, port: int, path: str) -> str:
    async with session.get(f"http://127.0.0.1:{port}{path}") as answer:
        return await answer.text()


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")

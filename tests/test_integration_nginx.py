"""shadowd driven by real third-party peers: curl as the client, nginx `mirror` as the tap feed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import aiohttp
import pytest
from aiohttp import web
from realpeers import Nginx, curl, free_port

pytestmark = pytest.mark.integration

BLOB = os.urandom(3 * 1024 * 1024 + 5)


@pytest.fixture
async def shop(make_backend):
    """primary and candidate: the candidate sends prices as strings and drops `stock`."""
    primary, candidate = make_backend(), make_backend()

    def product(as_candidate: bool):
        async def handler(request: web.Request) -> web.Response:
            pid = int(request.match_info["id"])
            doc: dict[str, object] = {"id": pid, "price": pid * 2, "stock": 5}
            if as_candidate:
                doc["price"] = str(doc["price"])
                del doc["stock"]
            return web.json_response(doc)

        return handler

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=BLOB, content_type="application/octet-stream")

    primary.route("GET", "/products/{id}", product(False))
    primary.route("GET", "/blob", blob)
    candidate.route("GET", "/products/{id}", product(True))
    candidate.route("GET", "/blob", blob)
    await primary.start()
    await candidate.start()
    return primary, candidate


def mirror_block(listen: int, primary_url: str, shadowd_port: int) -> str:
    primary = primary_url.removeprefix("http://")
    return f"""
  upstream primary {{ server {primary}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{listen};
    location / {{
      mirror /_shadowd;
      mirror_request_body on;
      proxy_pass http://primary;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    # The settings that keep a slow or absent shadowd harmless: nginx finishes the client's
    # request only when this subrequest ends, so it must end quickly.
    location = /_shadowd {{
      internal;
      proxy_pass http://127.0.0.1:{shadowd_port}$request_uri;
      proxy_set_header X-Original-URI $request_uri;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 100ms;
      proxy_send_timeout 100ms;
      proxy_read_timeout 100ms;
    }}
  }}"""


async def test_curl_through_proxy_gets_byte_identical_bodies(shop, start_shadowd):
    primary, candidate = shop
    shadowd = await start_shadowd(primary.url, candidate.url)
    code, out, err = await curl(shadowd.url + "/blob")
    assert code == 0, err
    assert hashlib.sha256(out).digest() == hashlib.sha256(BLOB).digest()
    code, out, _ = await curl(shadowd.url + "/products/3", "-i")
    assert code == 0
    assert out.startswith(b"HTTP/1.1 200 OK")
    assert out.endswith(b'{"id": 3, "price": 6, "stock": 5}')


async def test_nginx_mirror_feeds_tap_mode_and_divergences_are_reported(shop, start_shadowd):
    primary, candidate = shop
    shadowd = await start_shadowd(primary.url, candidate.url, ingress={"mode": "tap"})
    tap_port = int(shadowd.url.rsplit(":", 1)[1])
    nginx_port = free_port()
    nginx = Nginx(mirror_block(nginx_port, primary.url, tap_port))
    await nginx.start(nginx_port)
    try:
        for pid in range(1, 21):
            code, out, _ = await curl(f"http://127.0.0.1:{nginx_port}/products/{pid}")
            assert code == 0
            assert out == b'{"id": %d, "price": %d, "stock": 5}' % (pid, pid * 2)
        await shadowd.settled(20)
    finally:
        await nginx.stop()
    async with (
        aiohttp.ClientSession() as session,
        session.get(shadowd.admin_url + "/api/v1/report") as answer,
    ):
        report = await answer.json()
    (endpoint,) = [e for e in report["endpoints"] if e["endpoint"] == "GET /products/{id}"]
    assert endpoint["exchanges"] == 20
    assert endpoint["divergent"] == 20
    kinds = {field["path"]: field["kinds"] for field in endpoint["fields"]}
    assert kinds["$.price"] == {"type": 20}
    assert kinds["$.stock"] == {"missing": 20}


async def test_nginx_clients_are_answered_when_shadowd_is_down(shop):
    primary, _ = shop
    nginx_port = free_port()
    nginx = Nginx(mirror_block(nginx_port, primary.url, free_port()))  # nothing listens there
    await nginx.start(nginx_port)
    try:
        started = time.perf_counter()
        for pid in range(1, 11):
            code, out, _ = await curl(f"http://127.0.0.1:{nginx_port}/products/{pid}")
            assert code == 0
            assert out == b'{"id": %d, "price": %d, "stock": 5}' % (pid, pid * 2)
        elapsed = time.perf_counter() - started
    finally:
        await nginx.stop()
    assert elapsed < 5.0  # ten curl processes; a refused mirror costs nginx nothing visible


async def test_nginx_clients_are_answered_when_shadowd_hangs(shop):
    """A tap that accepts but never answers: each client still gets its answer; nginx holds
    the connection until proxy_read_timeout (100 ms here) ends the mirror subrequest."""
    primary, _ = shop
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    hole_port = server.sockets[0].getsockname()[1]
    nginx_port = free_port()
    nginx = Nginx(mirror_block(nginx_port, primary.url, hole_port))
    await nginx.start(nginx_port)
    try:
        urls = [f"http://127.0.0.1:{nginx_port}/products/{pid}" for pid in range(1, 6)]
        started = time.perf_counter()
        code, out, _ = await curl(urls[-1], *urls[:-1])  # one curl: one keep-alive connection
        elapsed = time.perf_counter() - started
        assert code == 0
        assert out == b"".join(
            b'{"id": %d, "price": %d, "stock": 5}' % (pid, pid * 2) for pid in range(1, 6)
        )
        assert accepted.is_set()
    finally:
        await nginx.stop()
        for writer in held:
            writer.close()
        server.close()
    # Five requests on one keep-alive connection: each waits for its mirror's 100 ms timeout
    # before the next is read. Bounded by the timeout, not by the hung tap.
    assert elapsed < 5 * 0.1 + 2.0


async def test_load_from_hey_is_relayed_and_every_copy_diffed(shop, start_shadowd):
    """hey (a load generator no one here wrote) through the proxy: every answer is right,
    and every request was mirrored and diffed."""
    import shutil

    hey = shutil.which("hey")
    if hey is None:
        pytest.fail("hey is not installed: run `make test` (scripts/install-system-deps)")
    primary, candidate = shop
    shadowd = await start_shadowd(primary.url, candidate.url)
    process = await asyncio.create_subprocess_exec(
        hey,
        "-n",
        "2000",
        "-c",
        "20",
        shadowd.url + "/products/5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert process.returncode == 0
    assert "[200]\t2000 responses" in out.decode()
    await shadowd.settled(2000, timeout=20)
    report = shadowd.daemon.aggregator.endpoints["GET /products/{id}"]
    assert report.exchanges == 2000
    assert report.divergent == 2000  # the candidate's planted price type change, every time

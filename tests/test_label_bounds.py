"""Long names stay short: real requests with long, distinct paths and long JSON keys through
a real shadowd; /metrics, the report, the samples and the verdict stay small."""

from __future__ import annotations

import string

import aiohttp
import orjson
import pytest
from aiohttp import web

from shadowd.bounds import MAX_NAME_CHARS, bounded
from shadowd.config import EndpointsConfig
from shadowd.endpoints import OTHER, EndpointClassifier

REQUESTS = 210
PATH_CHARS = 60_000
KEY_CHARS = 20_000


def word(i: int) -> str:
    """A letters-only path segment (numbers would be templated into {id})."""
    letters = string.ascii_lowercase
    return "p" + letters[i // 26 % 26] + letters[i % 26]


def long_key(path: str) -> str:
    # distinct in their first characters, so cut keys stay distinct too
    return path[1:4] + "k" * KEY_CHARS


async def long_service(role: str) -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.Response:
        value = "1" if role == "candidate" else 1
        return web.Response(
            body=orjson.dumps({long_key(request.path): value, "ok": True}),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", answer)
    # aiohttp refuses request lines over 8 KiB by default: these services take long ones
    runner = web.AppRunner(app, access_log=None, max_line_size=200_000, max_field_size=200_000)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def flooded(start_shadowd):
    runners = []
    urls = {}
    for role in ("primary", "candidate"):
        runner, urls[role] = await long_service(role)
        runners.append(runner)
    shadowd = await start_shadowd(urls["primary"], urls["candidate"], verdict={"min_exchanges": 1})
    async with aiohttp.ClientSession() as session:
        for i in range(REQUESTS):
            path = f"/{word(i)}/" + "x" * PATH_CHARS
            async with session.get(shadowd.url + path) as answer:
                assert answer.status == 200
                await answer.read()
    await shadowd.settled(REQUESTS, timeout=30)
    yield shadowd
    for runner in runners:
        await runner.cleanup()


async def _get(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        assert answer.status == 200, url
        return await answer.read()


async def test_long_paths_and_keys_keep_every_surface_small(flooded):
    admin = flooded.admin_url
    metrics = await _get(admin + "/metrics")
    report_bytes = await _get(admin + "/api/v1/report")
    verdict = await _get(admin + "/api/v1/verdict")
    # Before the bound: 671 MB of metrics, a 13.6 MB report, a 72 MB verdict. Measured
    # with it: 2.2 MB (201 endpoints, each label 200 characters, in ~40 series), 0.23 MB,
    # 0.52 MB.
    assert len(metrics) < 3_000_000, len(metrics)
    assert len(report_bytes) < 500_000, len(report_bytes)
    assert len(verdict) < 1_000_000, len(verdict)

    report = orjson.loads(report_bytes)
    assert report["totals"]["exchanges"] == REQUESTS
    names = [e["endpoint"] for e in report["endpoints"]]
    assert OTHER in names  # [endpoints] max = 200: ten went to "other"
    assert max(len(n) for n in names) == MAX_NAME_CHARS
    assert all(n == OTHER or n.endswith("…") for n in names)
    assert len(set(names)) == len(names)
    paths = [f["path"] for e in report["endpoints"] for f in e["fields"]]
    assert max(len(p) for p in paths) == MAX_NAME_CHARS
    assert any(p.startswith("$.pa") and p.endswith("…") for p in paths)

    # every label of /metrics is bounded, and the report's names are the labels
    for line in metrics.decode().splitlines():
        assert len(line) < MAX_NAME_CHARS + 200, line[:300]
    assert names[0].encode() in metrics or names[1].encode() in metrics

    endpoint = next(e for e in report["endpoints"] if e["endpoint"] != OTHER)
    samples = await _get(f"{admin}/api/v1/endpoints/{endpoint['id']}/samples")
    assert len(samples) < 20_000, len(samples)


def test_the_classifier_cuts_names_and_counts_them_under_the_cap():
    classifier = EndpointClassifier(EndpointsConfig(max=3))
    long = "/a/" + "z" * 5000
    name = classifier.classify("GET", long)
    assert name == bounded("GET " + long)
    assert len(name) == MAX_NAME_CHARS and name.endswith("…")
    # two paths equal up to the cut are one endpoint
    assert classifier.classify("GET", long + "c") == name
    assert classifier.classify("GET", "/short") == "GET /short"

"""What the dashboard reads: the rates-over-time ring (``shadowd.timeline``) and the admin
routes for it, the latency distribution, the static files, and the samples' bodies."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web

from shadowd.admin import STATIC_FILES
from shadowd.timeline import Timeline


def report(since: float, **endpoints: tuple[int, int, int, float]) -> dict:
    return {
        "window": {"since": since},
        "endpoints": [
            {
                "id": name,
                "exchanges": ex,
                "divergent": div,
                "noisy": noisy,
                "errors": {},
                "divergent_beyond_noise_ratio": beyond,
            }
            for name, (ex, div, noisy, beyond) in endpoints.items()
        ],
    }


def test_each_bucket_holds_what_happened_in_its_step():
    ring = Timeline(step=10, span=60)
    ring.sample(report(0, a=(0, 0, 0, 0.0)), now=100)
    ring.sample(report(0, a=(50, 5, 1, 0.1), b=(10, 0, 0, 0.0)), now=110)
    ring.sample(report(0, a=(80, 5, 1, 0.05), b=(10, 0, 0, 0.0)), now=120)
    a = ring.series(report(0, a=(90, 7, 1, 0.06), b=(10, 0, 0, 0.0)), now=125, endpoint="a")
    assert a["t"] == [110, 120, 125]  # the step under way comes last
    assert a["seconds"] == [10, 10, 5]
    assert a["exchanges"] == [50, 30, 10]
    assert a["divergent"] == [5, 0, 2]
    assert a["beyond_noise_ratio"] == [0.1, 0.05, 0.06]
    both = ring.series(report(0, a=(80, 5, 1, 0.05), b=(10, 0, 0, 0.0)), now=120)
    assert both["exchanges"] == [60, 30]  # added up; nothing new in the step under way
    assert both["beyond_noise_ratio"] == [0.1, 0.05]  # the worst endpoint's


def test_the_ring_is_bounded_and_a_reset_starts_counting_again():
    ring = Timeline(step=10, span=30)
    ring.sample(report(0, a=(0, 0, 0, 0.0)), now=0)
    for n in range(1, 11):
        ring.sample(report(0, a=(n * 10, 0, 0, 0.0)), now=n * 10)
    assert len(ring.buckets) == 3
    assert [b.end for b in ring.buckets] == [80, 90, 100]
    # a reset: counts fall to a small number; the step holds them, not a negative delta
    ring.sample(report(105, a=(4, 1, 0, 0.25)), now=110)
    assert ring.buckets[-1].counts["a"] == (4, 1, 0, 0)


@pytest.fixture
async def daemon_with_traffic(make_backend, start_shadowd):
    urls = {}
    for role in ("primary", "candidate"):
        backend = make_backend()

        async def item(request: web.Request, role=role) -> web.Response:
            body = {"id": 1, "secret_token": "hunter2", "note": "x" * 5000, "who": role}
            return web.json_response(body)

        backend.route("GET", "/items/{id}", item)
        urls[role] = await backend.start()
    shadowd = await start_shadowd(urls["primary"], urls["candidate"])
    async with aiohttp.ClientSession() as session:
        for n in range(25):
            async with session.get(f"{shadowd.url}/items/{n}") as answer:
                await answer.read()
    await shadowd.settled(25)
    return shadowd


async def get(url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        return answer.status, dict(answer.headers), await answer.read()


async def test_history_latency_and_static_routes(daemon_with_traffic):
    base = daemon_with_traffic.admin_url
    status, _, body = await get(base + "/api/v1/report")
    endpoint = orjson.loads(body)["endpoints"][0]["id"]

    status, _, body = await get(base + "/api/v1/history")
    history = orjson.loads(body)
    assert status == 200 and history["step"] == 10.0 and history["span"] == 3600.0
    assert sum(history["exchanges"]) == 25 and sum(history["divergent"]) == 25

    status, _, body = await get(base + f"/api/v1/history?endpoint={endpoint}")
    assert status == 200 and sum(orjson.loads(body)["exchanges"]) == 25
    status, _, _ = await get(base + "/api/v1/history?endpoint=nope")
    assert status == 404

    status, _, body = await get(base + f"/api/v1/endpoints/{endpoint}/latency")
    cdf = orjson.loads(body)["targets"]
    assert set(cdf) == {"primary", "candidate"} and cdf["primary"]["count"] == 25
    assert cdf["primary"]["seconds"] == sorted(cdf["primary"]["seconds"])
    assert cdf["primary"]["percentile"][0] == 0 and cdf["primary"]["percentile"][-1] == 100

    status, headers, page = await get(base + "/")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert b"http:" not in page and b"https:" not in page  # nothing from elsewhere
    for name, content_type in STATIC_FILES.items():
        status, headers, _ = await get(base + "/static/" + name)
        assert status == 200 and headers["Content-Type"].startswith(content_type), name
    for name in ("../admin.py", "uPlot.LICENSE", "%2e%2e/admin.py"):
        status, _, _ = await get(base + "/static/" + name)
        assert status == 404, name


async def test_samples_carry_each_answer_cut_and_redacted(daemon_with_traffic):
    base = daemon_with_traffic.admin_url
    _, _, body = await get(base + "/api/v1/report")
    endpoint = orjson.loads(body)["endpoints"][0]["id"]
    _, _, body = await get(base + f"/api/v1/endpoints/{endpoint}/samples")
    sample = orjson.loads(body)["samples"][0]
    primary = sample["answers"]["primary"]
    assert primary["body_bytes"] > 5000
    assert len(primary["body"].encode()) == 2048  # the first 2 KiB
    assert "hunter2" not in primary["body"]  # secrets redacted before anything is kept
    assert ["Content-Type", "application/json; charset=utf-8"] in primary["headers"]

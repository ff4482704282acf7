"""Conditional requests: every instance has its own ETags, so copies go without the client's
validators and are answered in full; when the primary answers 304, there is nothing to
compare them with, and the exchange is counted, not diffed."""

from __future__ import annotations

import aiohttp
from aiohttp import web


def etag_server(make_backend, etag: str):
    backend = make_backend()

    async def item(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.json_response({"id": request.match_info["id"]}, headers={"ETag": etag})

    backend.route("GET", "/items/{id}", item)
    return backend


async def test_copies_go_without_validators_and_a_304_is_counted_not_diffed(
    make_backend, start_shadowd
):
    primary = etag_server(make_backend, '"primary-etag"')
    candidate = etag_server(make_backend, '"candidate-etag"')
    await primary.start()
    await candidate.start()
    shadowd = await start_shadowd(primary.url, candidate.url)
    async with aiohttp.ClientSession() as session:
        for i in range(10):
            headers = {"If-None-Match": '"primary-etag"'} if i % 2 else {}
            async with session.get(f"{shadowd.url}/items/{i}", headers=headers) as response:
                # the client's conditional request still reaches the primary as sent
                assert response.status == (304 if i % 2 else 200)
    await candidate.wait_for_requests(10)
    await shadowd.settled(5)
    assert all("If-None-Match" not in seen["headers"] for seen in candidate.seen)
    assert [s["headers"].get("If-None-Match") for s in primary.seen].count('"primary-etag"') == 5
    skipped = shadowd.daemon.metrics.mirror_skipped_counts()
    assert skipped["not_modified"] == 5
    report = shadowd.daemon.report()
    assert report["totals"]["exchanges"] == 5  # the unconditional ones, compared
    fields = {f["path"] for e in report["endpoints"] for f in e["fields"]}
    assert "status" not in fields  # no 304-vs-200 difference on every conditional request


async def test_validators_can_be_kept_on_copies(make_backend, start_shadowd):
    primary = etag_server(make_backend, '"same"')
    candidate = etag_server(make_backend, '"same"')
    await primary.start()
    await candidate.start()
    shadowd = await start_shadowd(primary.url, candidate.url, mirror={"strip_conditional": False})
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{shadowd.url}/items/1", headers={"If-None-Match": '"same"'}
        ) as response:
            assert response.status == 304
    await candidate.wait_for_requests(1)
    assert candidate.seen[0]["headers"]["If-None-Match"] == '"same"'
    await shadowd.settled(1)

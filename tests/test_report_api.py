"""Report, samples, metrics and controls after real traffic through a real daemon."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from shadowd.cli import main as cli_main


def service(kind: str):
    async def handler(request: web.Request) -> web.Response:
        uid = int(request.match_info["id"])
        doc: dict[str, object] = {
            "id": uid,
            "items": [{"price": 10}, {"price": 20}],
            "token": "s3cret-primary",
        }
        if kind == "candidate":
            doc["items"] = [{"price": 10}, {"price": "20"}]
            doc["token"] = "s3cret-candidate"
        return web.json_response(doc)

    return handler


@pytest.fixture
async def shadowd(make_backend, start_shadowd, tmp_path):
    urls = {}
    for kind in ("primary", "secondary", "candidate"):
        backend = make_backend()
        backend.route("GET", "/users/{id}", service(kind))
        urls[kind] = await backend.start()
    token = tmp_path / "token"
    token.write_text("let-me-in\n")
    running = await start_shadowd(
        urls["primary"], urls["candidate"], urls["secondary"], admin={"token_file": token}
    )
    async with aiohttp.ClientSession() as session:
        for uid in range(1, 31):
            async with session.get(
                f"{running.url}/users/{uid}?api_key=k-{uid}&page=1",
                headers={"Authorization": "Bearer user-secret", "Cookie": "sid=abc"},
            ) as answer:
                assert answer.status == 200
    await running.settled(30)
    return running


AUTH = {"Authorization": "Bearer let-me-in"}


async def get(url: str, headers: dict[str, str] | None = AUTH) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        if answer.content_type == "application/json":
            return answer.status, await answer.json()
        return answer.status, await answer.text()


async def test_report_names_endpoint_fields_kinds_and_noise(shadowd):
    status, report = await get(shadowd.admin_url + "/api/v1/report")
    assert status == 200
    assert report["totals"]["exchanges"] == 30
    (endpoint,) = report["endpoints"]
    assert endpoint["endpoint"] == "GET /users/{id}"
    assert endpoint["divergent"] == 30
    fields = {f["path"]: f for f in endpoint["fields"]}
    assert fields["$.items[*].price"]["kinds"] == {"type": 30}
    assert fields["$.items[*].price"]["decision"] == "divergent"
    assert fields["$.token"]["kinds"] == {"changed": 30}
    assert set(endpoint["latency"]) == {"primary", "secondary", "candidate"}
    assert endpoint["latency"]["primary"]["count"] == 30


async def test_samples_keep_exact_indices_and_hide_secrets(shadowd):
    _, report = await get(shadowd.admin_url + "/api/v1/report")
    endpoint_id = report["endpoints"][0]["id"]
    status, samples = await get(f"{shadowd.admin_url}/api/v1/endpoints/{endpoint_id}/samples")
    assert status == 200
    assert len(samples["samples"]) == 20  # samples_per_endpoint: bounded
    sample = samples["samples"][0]
    paths = {d["path"]: d for d in sample["differences"]}
    assert paths["$.items[1].price"]["primary"] == 20
    assert paths["$.items[1].price"]["candidate"] == "20"
    assert paths["$.items[1].price"]["secondary"] == 20
    text = str(samples)
    for secret in ("user-secret", "sid=abc", "s3cret", "k-3"):
        assert secret not in text
    assert "api_key=%5Bredacted%5D" in sample["request"]["target"]


async def test_unknown_endpoint_samples_are_404(shadowd):
    status, body = await get(shadowd.admin_url + "/api/v1/endpoints/nope/samples")
    assert status == 404
    assert "nope" in body["error"]


async def test_metrics_follow_the_contract(shadowd):
    status, text = await get(shadowd.admin_url + "/metrics")
    assert status == 200
    for line in (
        'shadowd_exchanges_total{endpoint="GET /users/{id}",target="candidate"} 30.0',
        'shadowd_divergences_total{endpoint="GET /users/{id}",kind="type"} 30.0',
        'shadowd_mirror_dropped_total{reason="queue_full"} 0.0',
        "# TYPE shadowd_upstream_latency_seconds histogram",
        "shadowd_mirror_queue_depth 0.0",
        'shadowd_build_info{version="0.1.0"} 1.0',
        "shadowd_capture_bytes_total 0.0",
    ):
        assert line in text, line


async def test_token_is_required_except_for_probes(shadowd):
    status, body = await get(shadowd.admin_url + "/api/v1/report", headers=None)
    assert status == 401
    assert "bearer token" in body["error"]
    status, _ = await get(shadowd.admin_url + "/api/v1/report", {"Authorization": "Bearer no"})
    assert status == 401
    assert (await get(shadowd.admin_url + "/healthz", headers=None))[0] == 200
    assert (await get(shadowd.admin_url + "/readyz", headers=None))[0] == 200


async def test_reset_really_clears(shadowd):
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(shadowd.admin_url + "/api/v1/reset", json={}) as answer:
            assert (await answer.json())["cleared"]["exchanges"] == 30
    _, report = await get(shadowd.admin_url + "/api/v1/report")
    assert report["totals"]["exchanges"] == 0
    assert report["endpoints"] == []


async def test_kill_switch_validates_and_toggles(shadowd):
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(shadowd.admin_url + "/api/v1/mirror", data=b"off") as answer:
            assert answer.status == 415  # not JSON: a browser form could send that
        async with session.post(
            shadowd.admin_url + "/api/v1/mirror",
            data=b"off",
            headers={"Content-Type": "application/json"},
        ) as answer:
            assert answer.status == 400
        async with session.post(
            shadowd.admin_url + "/api/v1/mirror", json={"enabled": False}
        ) as answer:
            assert (await answer.json())["enabled"] is False
    assert shadowd.daemon.mirror.enabled is False


async def test_readyz_reports_each_target(make_backend, start_shadowd):
    primary = make_backend()
    await primary.start()
    running = await start_shadowd(primary.url, "http://127.0.0.1:9")
    status, body = await get(running.admin_url + "/readyz", headers=None)
    assert status == 200  # a candidate that is down never takes production out of service
    assert body["targets"]["candidate"]["reachable"] is False
    assert body["targets"]["primary"]["reachable"] is True


async def test_report_command_prints_the_table(shadowd, capsys, monkeypatch):
    monkeypatch.setenv("SHADOWD_TOKEN", "let-me-in")
    # the CLI is synchronous: run it in a thread so the daemon keeps serving
    import asyncio

    code = await asyncio.to_thread(cli_main, ["report", "--url", shadowd.admin_url])
    out = capsys.readouterr().out
    assert code == 0
    assert "GET /users/{id}" in out
    assert "$.items[*].price" in out


async def test_report_command_without_daemon_exits_3(capsys):
    import asyncio

    code = await asyncio.to_thread(cli_main, ["report", "--url", "http://127.0.0.1:9"])
    assert code == 3
    assert "cannot reach the admin API" in capsys.readouterr().err


async def test_report_command_prints_one_endpoints_samples(shadowd, capsys, monkeypatch):
    import asyncio

    monkeypatch.setenv("SHADOWD_TOKEN", "let-me-in")
    _, report = await get(shadowd.admin_url + "/api/v1/report")
    endpoint_id = report["endpoints"][0]["id"]
    code = await asyncio.to_thread(
        cli_main, ["report", "--url", shadowd.admin_url, "--samples", endpoint_id]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "GET /users/{id}: 20 recent divergent exchanges" in out
    assert "$.items[1].price  type: primary=20 candidate='20'" in out

"""The promotion verdict on real traffic: planted regressions fail with the right reason, an
identical candidate passes, too little traffic is inconclusive.

Deterministic services: request ids come from a seeded generator per service and clocks are
per-service counters (noise that differs on every answer, reproducibly); no handler sleeps.
Latency regressions are tested on synthetic evidence in test_verdict_model.py, where the
latencies themselves are seeded."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shadowd.verdict.markdown import render_markdown

ROOT = Path(__file__).resolve().parent.parent


ROLE_SEEDS = {"primary": 1, "secondary": 2, "candidate": 3}


def build_service(change: str | None, seed: int):
    ids = random.Random(seed)  # seeded: the same ids on every run, different per service
    clock = itertools.count(1_800_000_000 + seed * 1000, 0.5)  # an injected clock per service

    async def account(request: web.Request) -> web.Response:
        aid = int(request.match_info["id"])
        doc: dict[str, object] = {
            "id": aid,
            "balance": aid * 10,
            "owner": f"user{aid}",
            "request_id": str(uuid.UUID(int=ids.getrandbits(128))),  # noise: differs always
            "at": next(clock),
        }
        if change == "type":
            doc["balance"] = str(doc["balance"])
        elif change == "extra":
            doc["beta_flag"] = True
        elif change == "errors" and aid % 5 == 0:
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response(doc)

    async def search(request: web.Request) -> web.Response:
        return web.json_response({"results": [1, 2, 3]})

    return account, search


async def run_traffic(url: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            path = f"/accounts/{i % 50}" if i % 2 else "/search"
            async with session.get(url + path) as answer:
                await answer.read()

        for start in range(0, count, 20):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 20, count))))


@pytest.fixture
async def judged(make_backend, start_shadowd):
    async def run(change: str | None, requests: int = 400, **verdict) -> tuple[dict, object]:
        urls = {}
        for role in ("primary", "secondary", "candidate"):
            backend = make_backend()
            account, search = build_service(
                change if role == "candidate" else None, ROLE_SEEDS[role]
            )
            backend.route("GET", "/accounts/{id}", account)
            backend.route("GET", "/search", search)
            urls[role] = await backend.start()
        shadowd = await start_shadowd(
            urls["primary"],
            urls["candidate"],
            urls["secondary"],
            verdict={"min_exchanges": 300, **verdict},
        )
        await run_traffic(shadowd.url, requests)
        await shadowd.settled(requests)
        async with (
            aiohttp.ClientSession() as session,
            session.get(shadowd.admin_url + "/api/v1/verdict") as answer,
        ):
            assert answer.status == 200
            return await answer.json(), shadowd

    return run


async def test_type_change_fails_with_its_field(judged):
    verdict, _ = await judged("type")
    assert verdict["verdict"] == "fail"
    assert any(
        re.match(
            r"GET /accounts/\{id\}: \$\.balance type changed in 100% of \d+ exchanges "
            r"\(noise 0%\)",
            reason,
        )
        for reason in verdict["reasons"]
    ), verdict["reasons"]


async def test_extra_field_fails(judged):
    verdict, _ = await judged("extra")
    assert verdict["verdict"] == "fail"
    assert any("$.beta_flag added" in r for r in verdict["reasons"]), verdict["reasons"]


async def test_added_500s_fail_the_error_criterion(judged):
    verdict, _ = await judged("errors")
    assert verdict["verdict"] == "fail"
    failed = {(c["name"], c["scope"]) for c in verdict["criteria"] if c["status"] == "fail"}
    assert ("errors", "GET /accounts/{id}") in failed


@pytest.mark.parametrize("run", range(3))
async def test_identical_candidate_passes_despite_noise_and_jitter(judged, run):
    verdict, _ = await judged(None)
    assert verdict["verdict"] == "pass", verdict["reasons"]


async def test_too_few_exchanges_is_inconclusive(judged):
    verdict, _ = await judged(None, requests=60)
    assert verdict["verdict"] == "inconclusive"
    assert verdict["reasons"][0] == "60 exchanges so far, 300 needed to judge"


async def test_gate_form_answers_412_for_flagger(judged):
    _, shadowd = await judged("type", requests=320)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            shadowd.admin_url + "/api/v1/verdict?gate=1",
            json={"name": "shop", "namespace": "prod", "phase": "Progressing"},
        ) as answer:
            assert answer.status == 412
            assert (await answer.json())["verdict"] == "fail"


async def test_argo_json_path_resolves_on_a_real_answer(judged):
    verdict, _ = await judged(None, requests=320)
    template = (ROOT / "config" / "examples" / "argo-analysistemplate.yaml").read_text()
    (json_path,) = re.findall(r'jsonPath: "\{\$\.(\w+)\}"', template)
    assert verdict[json_path] == "pass"
    assert 'successCondition: result == "pass"' in template


async def test_markdown_report_renders_every_section(judged):
    verdict, shadowd = await judged("type", requests=320)
    async with (
        aiohttp.ClientSession() as session,
        session.get(shadowd.admin_url + "/api/v1/report") as answer,
    ):
        report = await answer.json()
    endpoint = next(e for e in report["endpoints"] if e["divergent"])
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{shadowd.admin_url}/api/v1/endpoints/{endpoint['id']}/samples") as answer,
    ):
        samples = {endpoint["id"]: await answer.json()}
    text = render_markdown(verdict, report, samples)
    for section in (
        "# Promotion report: FAIL",
        "## Reasons",
        "## Endpoints",
        "## Top divergent fields",
        "## Latency and errors",
        "## All criteria",
        "## Thresholds",
        "**Rollback**",
        "**Config digest**",
    ):
        assert section in text, section
    assert '"path":"$.balance"' in text  # one sample of the top field


async def test_verdict_command_exits_1_on_fail_and_writes_the_report(judged, tmp_path, capsys):
    from shadowd.cli import main as cli_main

    _, shadowd = await judged("type", requests=320)
    report = tmp_path / "promotion.md"
    code = await asyncio.to_thread(
        cli_main, ["verdict", "--url", shadowd.admin_url, "--markdown", str(report)]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert out.startswith("verdict: fail")
    assert "$.balance type changed" in out
    assert "## Top divergent fields" in report.read_text()


async def test_verdict_command_exits_0_on_pass_and_3_when_unreachable(judged):
    from shadowd.cli import main as cli_main

    _, shadowd = await judged(None, requests=320)
    assert await asyncio.to_thread(cli_main, ["verdict", "--url", shadowd.admin_url]) == 0
    assert await asyncio.to_thread(cli_main, ["verdict", "--url", "http://127.0.0.1:9"]) == 3

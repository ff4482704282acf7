"""The companion middleware end to end: real FastAPI (uvicorn) and Flask (gunicorn) services on
SQLite, run as processes on loopback as primary, secondary and candidate, shadowd in front.

A candidate with an N+1 query loop on one endpoint and a volatile cache key on another, and
the same answers everywhere, fails on exactly those two endpoints; an identical candidate
passes, also when it starts with an empty cache while the primary and the secondary are warm
(the verdict's warm-up leaves its first requests out). No sleeps: every wait is on a process's
readiness line or on shadowd having diffed the exchanges, each with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from realpeers import free_port

from shadowd.report import render_table
from shadowd.verdict.markdown import render_markdown

APPS = Path(__file__).resolve().parent / "middleware_apps"
BIN = Path(sys.executable).parent
ORDERS, CATALOG, CUSTOMERS = "GET /orders/{id}", "GET /catalog/{id}", "GET /customers/{id}"
PRODUCTS_ASKED = 20  # catalog ids cycled through: all of them within the 50 warm-up exchanges
# Latency is not what these tests judge. Here three app servers, shadowd and the client share
# the machine's cores (two on the build machine); the secondary and the candidate answer each
# copy at the same moment, and which of them waits for a core is the scheduler's choice: runs
# measured an identical candidate at x1.5-x1.8 of the secondary. Latency criteria are tested
# on seeded latencies (test_verdict_model.py); the tolerances here only keep them quiet.
VERDICT = {
    "min_exchanges": 200,
    "max_latency_regression_p50": 5.0,
    "max_latency_regression_p99": 5.0,
}


class Service:
    """One app server process; ``start`` returns once it printed its readiness line."""

    def __init__(self, argv: list[str], env: dict[str, str], ready: bytes) -> None:
        self.argv, self.env, self.ready = argv, env, ready
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self.log: list[bytes] = []

    async def start(self, timeout: float = 20.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=APPS,
            env={**os.environ, **self.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        stream = self.process.stderr
        assert stream is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await stream.readline()
                if not line:
                    raise AssertionError(b"".join(self.log).decode(errors="replace"))
                self.log.append(line)
                if self.ready in line:
                    break
        self._drain = asyncio.create_task(self._read_rest(stream))

    async def _read_rest(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.log.append(line)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain


def uvicorn(port: int, db: Path, variant: str) -> Service:
    return Service(
        [
            *(str(BIN / "python"), "-m", "uvicorn", "--app-dir", str(APPS), "shop_asgi:app"),
            *("--host", "127.0.0.1", "--port", str(port), "--no-access-log"),
        ],
        {"SHOP_DB": str(db), "SHOP_VARIANT": variant},
        b"Uvicorn running on",
    )


def gunicorn(port: int, db: Path, variant: str) -> Service:
    # One worker process (with threads): its cache is the one that was warmed.
    return Service(
        [
            *(str(BIN / "python"), "-m", "gunicorn", "--chdir", str(APPS), "shop_wsgi:app"),
            *("-b", f"127.0.0.1:{port}", "-w", "1", "--threads", "4"),
        ],
        {"SHOP_DB": str(db), "SHOP_VARIANT": variant},
        b"Booting worker",
    )


@pytest.fixture
async def shop(tmp_path) -> AsyncIterator[Callable[..., object]]:
    services: list[Service] = []

    async def start(server: Callable[[int, Path, str], Service], variant: str) -> dict[str, str]:
        urls = {}
        for role in ("primary", "secondary", "candidate"):
            port = free_port()
            service = server(
                port, tmp_path / f"{role}.db", variant if role == "candidate" else "release"
            )
            services.append(service)
            await service.start()
            urls[role] = f"http://127.0.0.1:{port}"
        return urls

    yield start
    for service in services:
        await service.stop()


async def warm(url: str) -> None:
    """Fill a service's cache directly (not through shadowd): a release long in production."""
    async with aiohttp.ClientSession() as session:
        for product in range(PRODUCTS_ASKED):
            async with session.get(f"{url}/catalog/{product}") as answer:
                assert answer.status == 200
                await answer.read()


async def traffic(shadowd, paths: list[str]) -> None:
    """One request at a time, the next sent once shadowd has diffed the last exchange: no
    target ever queues. (Driven at the primary's full speed, a candidate that does more work
    falls behind and every one of its endpoints gets slower: true, but not what is tested.)"""
    async with aiohttp.ClientSession() as session:
        for i, path in enumerate(paths):
            headers = {"x-request-id": f"req-{i}"}
            async with session.get(shadowd.url + path, headers=headers) as answer:
                assert answer.status == 200, await answer.text()
                await answer.read()
            await shadowd.settled(i + 1, timeout=10)


def paths(rounds: int, customers: bool = True) -> list[str]:
    out = []
    for i in range(rounds):
        out.append(f"/orders/{i % 40}")
        out.append(f"/catalog/{i % PRODUCTS_ASKED}")
        if customers:
            out.append(f"/customers/{i % 10}")
    return out


async def judged(start_shadowd, urls: dict[str, str], requests: list[str]) -> dict:
    for role in ("primary", "secondary"):
        await warm(urls[role])
    shadowd = await start_shadowd(
        urls["primary"], urls["candidate"], urls["secondary"], verdict=VERDICT
    )
    await traffic(shadowd, requests)
    async with (
        aiohttp.ClientSession() as session,
        session.get(shadowd.admin_url + "/api/v1/verdict") as answer,
    ):
        assert answer.status == 200
        verdict = await answer.json()
    async with (
        aiohttp.ClientSession() as session,
        session.get(shadowd.admin_url + "/api/v1/report") as answer,
    ):
        verdict["_report"] = await answer.json()
    async with (
        aiohttp.ClientSession() as session,
        session.get(shadowd.admin_url + "/metrics") as answer,
    ):
        verdict["_metrics"] = await answer.text()
    return verdict


def failed(verdict: dict) -> set[tuple[str, str]]:
    return {(c["name"], c["scope"]) for c in verdict["criteria"] if c["status"] == "fail"}


def criterion(verdict: dict, name: str, scope: str) -> dict:
    (found,) = [c for c in verdict["criteria"] if c["name"] == name and c["scope"] == scope]
    return found


async def test_asgi_n_plus_one_and_broken_cache_key_fail_on_exactly_those_endpoints(
    shop, start_shadowd
):
    verdict = await judged(start_shadowd, await shop(uvicorn, "nplus1"), paths(150))
    assert verdict["verdict"] == "fail", verdict["reasons"]
    endpoints = {scope for _, scope in failed(verdict) if scope != "overall"}
    assert endpoints == {ORDERS, CATALOG}, "\n".join(verdict["reasons"])
    assert ("db_calls", ORDERS) in failed(verdict)
    assert ("cache_hit_ratio", CATALOG) in failed(verdict)
    # the answers are the same: nothing diverges, nothing errs
    assert not {n for n, _ in failed(verdict)} & {"divergence", "errors"}, verdict["reasons"]
    db = criterion(verdict, "db_calls", ORDERS)
    assert db["reason"].startswith(
        f"{ORDERS}: candidate makes 21 DB calls per request vs 3 (x7.0, "
    )
    assert db["details"]["secondary"] == 3
    cache = criterion(verdict, "cache_hit_ratio", CATALOG)
    assert cache["reason"].startswith(f"{CATALOG}: cache hit ratio 0% vs 100% ("), cache["reason"]
    assert criterion(verdict, "db_calls", CUSTOMERS)["status"] == "pass"
    # the report and /metrics show the work per target
    report = {e["endpoint"]: e for e in verdict["_report"]["endpoints"]}
    usage = report[ORDERS]["usage"]
    assert usage["candidate"]["db_calls_per_request"] == 21
    assert usage["primary"]["db_calls_per_request"] == 3
    assert report[CATALOG]["usage"]["primary"]["cache_hit_ratio"] == 1.0
    assert report[CATALOG]["usage"]["candidate"]["cache_hit_ratio"] == 0.0
    metrics = verdict["_metrics"]
    assert f'shadowd_db_calls_total{{endpoint="{ORDERS}",target="candidate"}} 3150.0' in metrics
    misses = f'shadowd_cache_lookups_total{{endpoint="{CATALOG}",result="miss",target="candidate"}}'
    assert f"{misses} 150.0" in metrics
    table = render_table(verdict["_report"], width=120)
    assert "db calls p/s/c" in table
    assert any(line.startswith(ORDERS) and "3/3/21" in line for line in table.splitlines()), table
    markdown = render_markdown(verdict, verdict["_report"])
    assert "## DB calls and cache" in markdown
    assert f"| `{CATALOG}` | 0 / 0 / 1 |" in markdown, markdown
    assert "100.0% / 100.0% / 0.0% |" in markdown
    assert db["reason"] in markdown and cache["reason"] in markdown


async def test_asgi_identical_candidate_starting_cold_passes(shop, start_shadowd):
    verdict = await judged(start_shadowd, await shop(uvicorn, "release"), paths(150))
    assert verdict["verdict"] == "pass", verdict["reasons"]
    cache = criterion(verdict, "cache_hit_ratio", CATALOG)
    # the candidate missed on its first lookups: the warm-up left them out
    assert cache["details"]["warmup_rows_left_out"] == 50
    assert cache["details"]["candidate"]["hits"] == cache["details"]["candidate"]["lookups"]
    report = {e["endpoint"]: e for e in verdict["_report"]["endpoints"]}
    assert report[CATALOG]["usage"]["candidate"]["cache_hit_ratio"] < 1.0  # the cold start shows


async def test_wsgi_n_plus_one_and_broken_cache_key_fail(shop, start_shadowd):
    verdict = await judged(start_shadowd, await shop(gunicorn, "nplus1"), paths(110, False))
    assert verdict["verdict"] == "fail", verdict["reasons"]
    assert {scope for _, scope in failed(verdict) if scope != "overall"} == {ORDERS, CATALOG}
    assert ("db_calls", ORDERS) in failed(verdict)
    assert ("cache_hit_ratio", CATALOG) in failed(verdict)


async def test_wsgi_identical_candidate_starting_cold_passes(shop, start_shadowd):
    verdict = await judged(start_shadowd, await shop(gunicorn, "release"), paths(110, False))
    assert verdict["verdict"] == "pass", verdict["reasons"]

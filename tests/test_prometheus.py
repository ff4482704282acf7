"""Monitoring that tells the truth, checked with a real Prometheus (Debian's package, installed
by scripts/install-system-deps) scraping a real ``shadowd run`` under traffic: every PromQL
expression in docs/api.md, in the example alert rules and in the example Grafana dashboard
returns data; the divergence alert picks the endpoint that really diverges and not the one
whose every difference is noise; the verdict gauges move without anybody asking for the
verdict; no ``_created`` series. The alert rules also go through ``promtool check rules`` and
``promtool test rules`` with their fixtures."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path
from typing import IO

import aiohttp
import pytest
from aiohttp import web
from realpeers import ShadowdProcess, free_port, wait_for_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "config" / "examples"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def need(tool: str | None, name: str) -> str:
    if tool is None:
        pytest.fail(f"{name} is not installed: run `make test` (scripts/install-system-deps)")
    return tool


# -- the expressions ---------------------------------------------------------------------------
def documented_queries() -> list[str]:
    """Every expression in docs/api.md's ```promql blocks (comment lines name them; an
    expression may span lines)."""
    text = (ROOT / "docs" / "api.md").read_text()
    queries = []
    for block in re.findall(r"```promql\n(.*?)```", text, re.S):
        current: list[str] = []
        for line in [*block.splitlines(), ""]:
            if line.strip() and not line.lstrip().startswith("#"):
                current.append(line.strip())
            elif current:
                queries.append(" ".join(current))
                current = []
    return queries


def alert_expressions() -> dict[str, str]:
    text = (EXAMPLES / "prometheus-alerts.yaml").read_text()
    names = re.findall(r"- alert: (\S+)", text)
    exprs = re.findall(r"^\s+expr: (.+)$", text, re.M)
    assert len(names) == len(exprs) > 0
    return dict(zip(names, exprs, strict=True))


def grafana_expressions() -> list[str]:
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC, label): the metric must exist
            metric = re.match(r"label_values\((\w+),", variable["definition"])
            assert metric is not None
            exprs.append(metric.group(1))
    # Grafana's own variables, as Grafana fills them in
    return [e.replace("$__rate_interval", "1m").replace("$endpoint", ".*") for e in exprs]


# -- promtool ------------------------------------------------------------------------------------
async def run(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=EXAMPLES,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def test_the_alert_rules_pass_promtool_check_and_their_unit_tests():
    promtool = need(PROMTOOL, "promtool")
    code, out = await run(promtool, "check", "rules", "prometheus-alerts.yaml")
    assert code == 0 and "SUCCESS: 4 rules found" in out, out
    code, out = await run(promtool, "test", "rules", "prometheus-alerts-tests.yaml")
    assert code == 0 and "SUCCESS" in out, out


# -- a real shadowd, real traffic, a real Prometheus ------------------------------------------
SERVER_TIMING = "db;dur=0.4, db-calls;dur={calls}, cache-hits;dur={hits}, cache-misses;dur=1"


@pytest.fixture
async def services(make_backend):
    urls = {}
    for role in ("primary", "secondary", "candidate"):
        backend = make_backend()
        answered = iter(range(10**9))

        async def user(request: web.Request, role=role) -> web.Response:
            uid = int(request.match_info["id"])
            body = {"id": uid, "plan": "pro" if role == "candidate" and uid % 2 else "free"}
            calls = 3 if role == "candidate" else 1
            timing = SERVER_TIMING.format(calls=calls, hits=2)
            return web.json_response(body, headers={"Server-Timing": timing})

        async def clock(request: web.Request, role=role, answered=answered) -> web.Response:
            # every answer differs from every other one, on the secondary as well: noise only
            return web.json_response({"now": f"{role}-{next(answered)}", "ok": True})

        backend.route("GET", "/users/{id}", user)
        backend.route("GET", "/clock", clock)
        urls[role] = await backend.start()
    return urls


class Prometheus:
    def __init__(self, directory: Path, admin: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / "prometheus.yml"
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: shadowd\n"
            f"    static_configs:\n      - targets: ['{admin}']\n"
        )
        self.storage = directory / "tsdb"
        self.log = directory / "prometheus.log"
        self.process: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None

    async def start(self) -> None:
        self._log_file = log_file = self.log.open("wb")
        self.process = await asyncio.create_subprocess_exec(
            need(PROMETHEUS, "prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.storage}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
        async with asyncio.timeout(30), aiohttp.ClientSession() as session:
            while True:  # its readiness endpoint, polled
                try:
                    async with session.get(self.url + "/-/ready") as answer:
                        if answer.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                assert self.process.returncode is None, self.log.read_text()[-2000:]
                await asyncio.sleep(0.1)

    async def query(self, session: aiohttp.ClientSession, expr: str) -> list[dict]:
        async with session.get(self.url + "/api/v1/query", params={"query": expr}) as answer:
            body = await answer.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    async def until(self, session, expr: str, timeout: float = 45.0) -> list[dict]:
        """Until ``expr`` returns data (each try is one query; scrapes come every second)."""
        async with asyncio.timeout(timeout):
            while True:
                result = await self.query(session, expr)
                if result:
                    return result
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        if self._log_file is not None:
            self._log_file.close()


@pytest.mark.timeout(180)  # a real browser or Prometheus on a busy 2-core host
async def test_every_documented_alerting_and_dashboard_query_returns_data(services, tmp_path):
    ingress, admin = free_port(), free_port()
    config = tmp_path / "shadowd.toml"
    config.write_text(
        f"""
[ingress]
mode = "proxy"
listen = "127.0.0.1:{ingress}"
workers = 1

[analysis]
workers = 1
snapshot_interval = 0.5

[targets.primary]
url = "{services["primary"]}"

[targets.secondary]
url = "{services["secondary"]}"

[targets.candidate]
url = "{services["candidate"]}"

[admin]
listen = "127.0.0.1:{admin}"

[verdict]
min_exchanges = 20
"""
    )
    shadowd = ShadowdProcess(config)
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{admin}")
    stop_traffic = asyncio.Event()

    async def traffic(session: aiohttp.ClientSession) -> int:
        sent = 0
        while not stop_traffic.is_set():
            for path in (f"/users/{sent % 50}", "/clock"):
                async with session.get(f"http://127.0.0.1:{ingress}{path}") as answer:
                    await answer.read()
            sent += 1
            await asyncio.sleep(0.01)  # a steady trickle, not a benchmark
        return sent

    await shadowd.start()
    try:
        await wait_for_port(admin, timeout=30)
        await prometheus.start()
        async with aiohttp.ClientSession() as session:
            load = asyncio.create_task(traffic(session))
            try:
                started = time.monotonic()
                # The verdict gauges move with nobody calling /api/v1/verdict: the daemon
                # judges on its own timer.
                failing = await prometheus.until(session, 'shadowd_verdict{verdict="fail"} == 1')
                assert failing
                # two scrapes with traffic in between: every rate() has data
                await prometheus.until(
                    session, 'rate(shadowd_exchanges_total{target="candidate"}[5m]) > 0'
                )
                await prometheus.until(
                    session, "max by (endpoint) (shadowd_divergence_beyond_noise_ratio) > 0.01"
                )
                empty = []
                queries = [
                    *documented_queries(),
                    *alert_expressions().values(),
                    *grafana_expressions(),
                ]
                assert len(queries) > 20
                for expr in queries:
                    if not await prometheus.query(session, expr):
                        empty.append(expr)
                # An alert's expression returns data when the alert fires. Those that should
                # not fire here (no drops, a reachable primary) are checked on the
                # expression under their threshold.
                quiet = {
                    alert_expressions()["ShadowdDroppingCopies"],
                    alert_expressions()["ShadowdPrimaryErrors"],
                }
                for expr in quiet:
                    assert expr in empty, f"fires with nothing dropped and no error: {expr}"
                    assert await prometheus.query(session, expr.rsplit(">", 1)[0]), expr
                    empty.remove(expr)
                assert empty == [], "queries without data:\n" + "\n".join(empty)

                # The divergence alert: the endpoint that diverges, not the noise-only one,
                # though the raw share of the noise-only one is as high.
                diverges = alert_expressions()["ShadowdCandidateDiverges"]
                firing = {
                    r["metric"]["endpoint"] for r in await prometheus.query(session, diverges)
                }
                assert firing == {"GET /users/{id}"}, firing
                raw = (
                    "sum by (endpoint) (rate(shadowd_divergent_exchanges_total[5m]))"
                    ' / sum by (endpoint) (rate(shadowd_exchanges_total{target="candidate"}[5m]))'
                    " > 0.01"
                )
                raw_firing = {r["metric"]["endpoint"] for r in await prometheus.query(session, raw)}
                assert "GET /clock" in raw_firing

                assert not await prometheus.query(session, '{__name__=~"shadowd_.+_created"}')

                # the supervisor keeps the dashboard's rates over time too
                async with session.get(f"http://127.0.0.1:{admin}/api/v1/history") as answer:
                    history = await answer.json()
                assert sum(history["exchanges"]) > 0 and max(history["beyond_noise_ratio"]) > 0
                print(
                    f"prometheus: {len(queries)} queries with data after "
                    f"{time.monotonic() - started:.1f}s"
                )
            finally:
                stop_traffic.set()
                await load
    finally:
        await prometheus.stop()
        await shadowd.kill()

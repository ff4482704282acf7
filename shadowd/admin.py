"""The admin HTTP API (aiohttp; the cold path, written for clarity).

Separate from the ingress and on loopback by default. With ``[admin] token_file`` set, every
route but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import hmac
from importlib import resources
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shadowd.aggregate import Aggregator
from shadowd.config import Config
from shadowd.metrics import Metrics
from shadowd.report import build_report, endpoint_samples
from shadowd.verdict.evidence import VerdictEvidence
from shadowd.verdict.judge import PASS, judge

# The dashboard page itself holds no data (it reads the API with the token from its URL
# fragment), so it is served without one, like the probes.
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})


class AdminControl(Protocol):
    config: Config
    aggregator: Aggregator
    metrics: Metrics
    evidence: VerdictEvidence

    def mirror_status(self) -> dict[str, Any]: ...

    def set_mirroring(self, enabled: bool) -> None: ...

    def reset(self) -> dict[str, Any]: ...

    async def readiness(self) -> dict[str, Any]: ...


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status=status)


def create_admin_app(control: AdminControl) -> web.Application:
    token_file = control.config.admin.token_file
    token = token_file.read_text().strip().encode() if token_file else None

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if token is not None and request.path not in _OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token):
                return _json(
                    {"error": "a valid bearer token is required"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="shadowd"'},
                )
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        state = await control.readiness()
        return _json(state, status=200 if state["ready"] else 503)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(control.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def report(request: web.Request) -> web.Response:
        return _json(build_report(control.aggregator, control.mirror_status()))

    async def samples(request: web.Request) -> web.Response:
        found = endpoint_samples(control.aggregator, request.match_info["id"])
        if found is None:
            return _error(404, f"no endpoint with id {request.match_info['id']!r}")
        return _json(found)

    async def reset(request: web.Request) -> web.Response:
        return _json({"cleared": control.reset()})

    async def mirror_get(request: web.Request) -> web.Response:
        return _json(control.mirror_status())

    async def mirror_post(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, 'expected a JSON body such as {"enabled": false}')
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            return _error(400, 'expected {"enabled": true} or {"enabled": false}')
        control.set_mirroring(body["enabled"])
        return _json(control.mirror_status())

    async def verdict(request: web.Request) -> web.Response:
        report = build_report(control.aggregator, control.mirror_status())
        # The statistics take milliseconds per endpoint: off the event loop that proxies.
        judged = await asyncio.to_thread(judge, report, control.evidence, control.config)
        control.metrics.observe_verdict(judged)
        doc = judged.to_json()
        # Argo Rollouts reads any 2xx body and decides with its conditions; Flagger's webhook
        # wants a refusal as a non-2xx that it will not retry: 412, never 5xx.
        gate = request.query.get("gate") in ("1", "true", "yes")
        status = 412 if gate and judged.verdict != PASS else 200
        return _json(doc, status=status)

    async def dashboard(request: web.Request) -> web.Response:
        page = resources.files("shadowd").joinpath("dashboard.html")
        if page.is_file():
            return web.Response(text=page.read_text(), content_type="text/html")
        return _json({"routes": sorted(ROUTES)})

    app = web.Application(middlewares=[guard])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/report", report)
    app.router.add_get("/api/v1/endpoints/{id}/samples", samples)
    app.router.add_post("/api/v1/reset", reset)
    app.router.add_get("/api/v1/mirror", mirror_get)
    app.router.add_post("/api/v1/mirror", mirror_post)
    app.router.add_get("/api/v1/verdict", verdict)
    app.router.add_post("/api/v1/verdict", verdict)  # Flagger webhooks POST
    app.router.add_get("/", dashboard)
    return app


ROUTES = (
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /api/v1/report",
    "GET /api/v1/endpoints/{id}/samples",
    "POST /api/v1/reset",
    "GET /api/v1/mirror",
    "POST /api/v1/mirror",
    "GET|POST /api/v1/verdict[?gate=1]",
)

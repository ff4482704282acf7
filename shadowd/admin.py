"""The admin HTTP API (aiohttp; the cold path, written for clarity).

Separate from the ingress and on loopback by default. With ``[admin] token_file`` set, every
route but ``/healthz``, ``/readyz`` and the dashboard page needs
``Authorization: Bearer <token>``. Every route checks ``Host`` (``_misdirected``), and the
routes that change something ``Content-Type`` and ``Origin`` (``_cross_site``). Every answer but
``/metrics`` and the dashboard is JSON; every error is ``{"error": "..."}``. The routes are
listed in ``ROUTES`` and docs/api.md.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shadowd.aggregate import Aggregator
from shadowd.config import Config, ConfigError
from shadowd.report import endpoint_samples
from shadowd.stream.fleet_client import FleetUnavailable
from shadowd.timeline import Timeline, latency_cdf
from shadowd.verdict.evidence import VerdictEvidence
from shadowd.verdict.judge import PASS, Verdict, judge

log = logging.getLogger("shadowd.admin")

ROUTES = (
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /api/v1",
    "GET /api/v1/report",
    "GET /api/v1/endpoints/{id}/samples",
    "GET /api/v1/endpoints/{id}/latency",
    "GET /api/v1/history[?endpoint=ID]",
    "POST /api/v1/reset",
    "GET /api/v1/mirror",
    "POST /api/v1/mirror",
    "GET|POST /api/v1/verdict[?gate=1]",
    "GET /",
    "GET /static/{file}",
)

# Probes must work without credentials. The dashboard page and its scripts and styles hold
# no data (the page reads the API with the token from its URL fragment), so they are served
# without one too.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
STATIC_PREFIX = "/static/"

# The dashboard's files, from package data (shadowd/static): nothing from a CDN, so the admin
# API works offline. Listed, not globbed: no request can name any other file.
STATIC_FILES = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
}

# Everything the dashboard shows that came from a target is put in the page as text. This
# policy is a second line: no inline script, nothing from another origin, no framing.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminControl(Protocol):
    """What the admin API needs from the daemon (``shadowd.daemon.Daemon`` implements it)."""

    config: Config
    aggregator: Aggregator
    metrics: Any  # Metrics or SupervisorMetrics: ``registry`` and ``observe_verdict``
    evidence: VerdictEvidence
    timeline: Timeline  # rates over time, sampled by whoever merges the statistics

    def mirror_status(self) -> dict[str, Any]:
        """``{"enabled", "queue_depth", "in_flight", "dropped": {reason: n},
        "skipped": {reason: n}}``"""
        ...

    async def set_mirroring(self, enabled: bool) -> None:
        """The kill switch; returns once every process that copies has applied it."""
        ...

    def reset(self) -> dict[str, Any]:
        """Clear the aggregator (and the verdict's evidence); answer what was cleared."""
        ...

    async def readiness(self) -> dict[str, Any]:
        """``{"ready": bool, "targets": {name: {"reachable": bool, "error": str | None}}}``"""
        ...

    def report(self) -> dict[str, Any]:
        """The report (``shadowd.report.build_report``), built now."""
        ...

    async def report_json(self) -> bytes:
        """The report as ``GET /api/v1/report`` serves it, as JSON."""
        ...

    def timeline_counts(self) -> dict[str, Any]:
        """What ``Timeline`` samples (``shadowd.timeline.counts_of``), cheap to make."""
        ...

    async def current_verdict(self, caller: str = "") -> Verdict:
        """The verdict on the statistics as they stand (``judge_now`` judges on demand).
        ``caller`` names who asks (address and User-Agent), for the judgement schedule
        to tell a poller from a one-off caller."""
        ...


async def judge_now(control: AdminControl) -> Verdict:
    """Judge the statistics now, off the event loop (the statistics take milliseconds per
    endpoint), and publish the result as gauges."""
    report = control.report()
    judged = await asyncio.to_thread(judge, report, control.evidence, control.config)
    control.metrics.observe_verdict(judged)
    return judged


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"error": message}, status=status, headers=headers)


def read_token(config: Config) -> bytes | None:
    """The bearer token from ``[admin] token_file`` (whitespace stripped), None when unset.
    An unreadable or empty file is a config error: an empty token would let anyone in."""
    path: Path | None = config.admin.token_file
    if path is None:
        return None
    try:
        token = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            [f"{config.source}: admin.token_file: cannot read {path}: {exc.strerror}"]
        ) from exc
    if not token:
        raise ConfigError([f"{config.source}: admin.token_file: {path} is empty"])
    return token


def _authorized(request: web.Request, token: bytes) -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken must not tell how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode("utf-8", "surrogateescape"), token
    )


# -- what a browser can be made to send -------------------------------------------------------
# A page from any site can make the operator's browser send a "simple" request (a form POST,
# a no-cors fetch with a text/plain body) to the admin API, and a DNS-rebinding page can even
# read the answers, under its own host name. So every route checks Host, and the routes that
# change something want a JSON body (a cross-site page cannot send that without a CORS
# preflight, which this API never grants) and no Origin but its own.
STATE_CHANGING = frozenset({("POST", "/api/v1/reset"), ("POST", "/api/v1/mirror")})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _split_host(value: str) -> tuple[str, str]:
    """``[::1]:8471`` → ("::1", "8471"); ``Example.COM.`` → ("example.com", "")."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        host, port = value, ""
    return host.rstrip("."), port


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_loopback(host: str) -> bool:
    address = _address(host)
    if address is None:
        # Browsers resolve *.localhost to loopback themselves, never through DNS.
        return host == "localhost" or host.endswith(".localhost")
    return address.is_loopback


class HostCheck:
    """Which ``Host`` values the admin API answers: its listen address (any loopback spelling
    when it listens on loopback; any IP address when it listens on all of them) and the
    names in ``[admin] allowed_hosts``. A rebinding page reaches the API under a DNS name of
    its own, which is none of these. Ports are not compared: a port forward
    (``kubectl port-forward``, ``ssh -L``) changes the port, not the name."""

    def __init__(self, listen_host: str, allowed: tuple[str, ...] = ()) -> None:
        self.allowed = frozenset(_split_host(name)[0] for name in allowed)
        host = _split_host(listen_host)[0] if listen_host.startswith("[") else listen_host
        self.listen = host.lower().rstrip(".")
        self.listen_address = _address(self.listen)
        self.loopback = _is_loopback(self.listen)
        self.everywhere = self.listen_address is not None and self.listen_address.is_unspecified

    def allows(self, value: str | None) -> bool:
        if value is None:
            return True  # HTTP/1.0 without Host: not a browser
        host, _ = _split_host(value)
        if host in self.allowed or host == self.listen:
            return True
        address = _address(host)
        if (self.loopback or self.everywhere) and _is_loopback(host):
            return True
        if self.everywhere:
            return address is not None  # an address literal cannot be rebound
        return address is not None and address == self.listen_address


def _same_origin(origin: str, host: str | None) -> bool:
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or host is None or "/" in rest:
        return False  # "null" (sandboxed frames, file: pages) and anything malformed
    origin_host, origin_port = _split_host(rest)
    request_host, request_port = _split_host(host)
    default = _DEFAULT_PORTS.get(scheme, "")
    return (origin_host, origin_port or default) == (request_host, request_port or default)


def _misdirected(request: web.Request, hosts: HostCheck) -> web.Response | None:
    if hosts.allows(request.headers.get("Host")):
        return None
    return error_response(
        421,
        f"this admin API does not answer for Host {request.headers.get('Host')!r}: "
        "use its listen address or a name from [admin] allowed_hosts",
    )


def _cross_site(request: web.Request) -> web.Response | None:
    """Why a state-changing request that may come from another site's page is refused."""
    if (request.method, request.path) not in STATE_CHANGING:
        return None
    origin = request.headers.get("Origin")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if (origin is not None and not _same_origin(origin, request.headers.get("Host"))) or (
        fetch_site is not None and fetch_site not in ("same-origin", "none")
    ):
        return error_response(403, f"cross-origin requests may not {request.method} {request.path}")
    if request.content_type != "application/json":
        return error_response(
            415,
            f"{request.method} {request.path} needs Content-Type: application/json "
            "(curl: -H 'Content-Type: application/json')",
        )
    return None


def _guard(token: bytes | None, hosts: Callable[[], HostCheck]) -> Any:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = _misdirected(request, hosts())
        if refused is not None:
            return refused
        if (
            token is not None
            and request.path not in OPEN_PATHS
            and not request.path.startswith(STATIC_PREFIX)
            and not _authorized(request, token)
        ):
            return error_response(
                401,
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="shadowd"'},
            )
        refused = _cross_site(request)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return error_response(404, f"no such route: {request.method} {request.path}")
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return error_response(
                405, f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
            )
        except web.HTTPException as exc:
            if exc.status >= 400:
                return error_response(exc.status, exc.reason)
            raise
        except FleetUnavailable as exc:  # stalled or restarting: say so, and soon ask again
            return error_response(503, str(exc), headers={"Retry-After": "1"})
        except Exception:  # a bug in a handler: a JSON 500 and a log line, never a crash
            log.exception("admin API: %s %s failed", request.method, request.path)
            return error_response(500, "internal error (logged by shadowd)")

    return guard


def _fleet_of(control: AdminControl, request: web.Request) -> tuple[Any, web.Response | None]:
    """The fleet's view (``shadowd.stream.fleet_client.FleetProcess``) when the request
    asks for it with ``?scope=fleet`` (or ``[stream] view = "fleet"`` makes it the default);
    None for this instance's own view. The second member is the error to answer instead.
    The fleet is merged in a process of its own: its calls are awaited, and raise
    ``FleetUnavailable`` (503) while that process is stalled or restarting."""
    scope = request.query.get("scope") or control.config.stream.view
    if scope == "instance":
        return None, None
    if scope != "fleet":
        return None, error_response(400, f"scope must be 'instance' or 'fleet', got {scope!r}")
    fleet = getattr(control, "fleet", None)
    if fleet is None:
        return None, error_response(
            400, 'no fleet here: the fleet view needs [stream] backend = "redis"'
        )
    return fleet, None


def create_admin_app(control: AdminControl) -> web.Application:
    """The admin application. Reads the token file once, now (raises ``ConfigError``)."""
    token = read_token(control.config)

    async def index(request: web.Request) -> web.Response:
        return json_response({"routes": list(ROUTES)})

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        state = await control.readiness()
        return json_response(state, status=200 if state["ready"] else 503)

    async def metrics(request: web.Request) -> web.Response:
        fleet, problem = _fleet_of(control, request)
        if problem is not None:
            return problem
        if fleet is not None:
            body = await fleet.metrics_text()
        else:
            body = generate_latest(control.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def report(request: web.Request) -> web.Response:
        fleet, problem = _fleet_of(control, request)
        if problem is not None:
            return problem
        body = await (fleet or control).report_json()
        return web.Response(body=body, content_type="application/json")

    async def samples(request: web.Request) -> web.Response:
        endpoint_id = request.match_info["id"]
        fleet, problem = _fleet_of(control, request)
        if problem is not None:
            return problem
        if fleet is not None:
            found = await fleet.samples(endpoint_id)
        else:
            found = endpoint_samples(control.aggregator, endpoint_id)
        if found is None:
            return error_response(404, f"no endpoint with id {endpoint_id!r}")
        return json_response(found)

    async def reset(request: web.Request) -> web.Response:
        fleet, problem = _fleet_of(control, request)
        if problem is not None:
            return problem
        if fleet is not None:
            return json_response({"cleared": await fleet.reset(), "scope": "fleet"})
        return json_response({"cleared": control.reset()})

    async def mirror_get(request: web.Request) -> web.Response:
        return json_response(control.mirror_status())

    async def mirror_post(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400, 'expected a JSON body such as {"enabled": false}')
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            return error_response(
                400, 'expected {"enabled": true} or {"enabled": false} (a JSON boolean)'
            )
        await control.set_mirroring(body["enabled"])
        return json_response(control.mirror_status())

    judged_json: list[Any] = [None, b""]  # (the last verdict served, its JSON)

    async def verdict(request: web.Request) -> web.Response:
        fleet, problem = _fleet_of(control, request)
        if problem is not None:
            return problem
        # the dashboard's polls must not make a gate's one-off call a poll too
        caller = f"{request.remote} {request.headers.get('User-Agent', '')}"
        judged = await (fleet or control).current_verdict(caller)
        # The same judgement is served until the next one: polled every 100 ms, a
        # 200-endpoint verdict is serialised once, not on every poll.
        if judged is not judged_json[0]:
            # ``shadowd run`` serialises each judgement in its view process, off this loop
            made = getattr(fleet or control, "json_of_verdict", lambda _: None)(judged)
            judged_json[:] = [
                judged,
                made or orjson.dumps(judged.to_json(), option=orjson.OPT_NON_STR_KEYS),
            ]
        # Argo Rollouts reads any 2xx body and decides with its conditions; Flagger's webhook
        # wants a refusal as a non-2xx that it will not retry: 412, never 5xx.
        gate = request.query.get("gate") in ("1", "true", "yes")
        status = 412 if gate and judged.verdict != PASS else 200
        return web.Response(body=judged_json[1], status=status, content_type="application/json")

    async def latency(request: web.Request) -> web.Response:
        endpoint_id = request.match_info["id"]
        stats = control.aggregator.by_id(endpoint_id)
        if stats is None:
            return error_response(404, f"no endpoint with id {endpoint_id!r}")
        return json_response({"id": stats.id, "endpoint": stats.endpoint, **latency_cdf(stats)})

    async def history(request: web.Request) -> web.Response:
        endpoint_id = request.query.get("endpoint") or None
        if endpoint_id is not None and control.aggregator.by_id(endpoint_id) is None:
            return error_response(404, f"no endpoint with id {endpoint_id!r}")
        counts = control.timeline_counts()
        return json_response(control.timeline.series(counts, time.time(), endpoint_id))

    package = resources.files("shadowd")

    async def dashboard(request: web.Request) -> web.Response:
        page = package.joinpath("dashboard.html")
        if page.is_file():
            return web.Response(
                text=page.read_text(), content_type="text/html", headers=DASHBOARD_HEADERS
            )
        return json_response({"routes": list(ROUTES)})

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            return error_response(404, f"no such file: {request.path}")
        data = package.joinpath("static", name).read_bytes()
        return web.Response(
            body=data, content_type=content_type, charset="utf-8", headers=DASHBOARD_HEADERS
        )

    # The socket keeps the listen address it started with; allowed_hosts follows a reload.
    listen_host = control.config.admin.listen.host
    checks: dict[tuple[str, ...], HostCheck] = {}

    def hosts() -> HostCheck:
        allowed = control.config.admin.allowed_hosts
        check = checks.get(allowed)
        if check is None:
            checks.clear()
            check = checks[allowed] = HostCheck(listen_host, allowed)
        return check

    app = web.Application(middlewares=[_guard(token, hosts)])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1", index)
    app.router.add_get("/api/v1/report", report)
    app.router.add_get("/api/v1/endpoints/{id}/samples", samples)
    app.router.add_get("/api/v1/endpoints/{id}/latency", latency)
    app.router.add_get("/api/v1/history", history)
    app.router.add_post("/api/v1/reset", reset)
    app.router.add_get("/api/v1/mirror", mirror_get)
    app.router.add_post("/api/v1/mirror", mirror_post)
    app.router.add_get("/api/v1/verdict", verdict)
    app.router.add_post("/api/v1/verdict", verdict)  # Flagger webhooks POST
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{file}", static)
    return app

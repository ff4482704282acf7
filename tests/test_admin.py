"""The admin API served for real on loopback, over a fake daemon holding a real aggregator
and real metrics; and the metrics it exports."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from test_aggregate import d, make_config, make_diff, make_exchange

from shadowd.admin import create_admin_app, judge_now
from shadowd.aggregate import Aggregator
from shadowd.config import AdminConfig, Config, ConfigError
from shadowd.metrics import Metrics
from shadowd.report import build_report
from shadowd.verdict.evidence import VerdictEvidence

TOKEN = "let-me-in"
USERS = "GET /users/{id}"


class FakeDaemon:
    """The AdminControl side of the daemon, without ingress or upstreams."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics(config)
        self.aggregator = Aggregator(config, self.metrics)
        self.evidence = VerdictEvidence(config.endpoints.max)
        self.enabled = True
        self.ready = True

    def feed(self, count: int = 5) -> None:
        for i in range(count):
            exchange = make_exchange(USERS, id=i, received_at=1_000.0 + i)
            diff = make_diff(d("$.price", "type", 1, "1"), secondary=[])
            self.aggregator.add(exchange, diff)
            self.evidence.record(exchange, diff)

    def mirror_status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "queue_depth": 0,
            "in_flight": 0,
            "dropped": self.metrics.mirror_dropped_counts(),
            "skipped": self.metrics.mirror_skipped_counts(),
        }

    async def set_mirroring(self, enabled: bool) -> None:
        self.enabled = enabled
        self.metrics.set_mirror_enabled(enabled)

    def reset(self) -> dict[str, Any]:
        self.evidence.reset()
        return self.aggregator.reset()

    def report(self) -> dict[str, Any]:
        return build_report(self.aggregator, self.mirror_status())

    async def report_json(self) -> bytes:
        return orjson.dumps(self.report(), option=orjson.OPT_NON_STR_KEYS)

    async def current_verdict(self, caller: str = "") -> Any:
        return await judge_now(self)

    async def readiness(self) -> dict[str, Any]:
        error = None if self.ready else "ConnectionRefusedError: [Errno 111]"
        return {
            "ready": self.ready,
            "targets": {"primary": {"reachable": self.ready, "error": error}},
        }


class Admin:
    """A running admin app: ``await admin.get(path)`` → (status, headers, JSON or text)."""

    def __init__(self, daemon: FakeDaemon, url: str) -> None:
        self.daemon = daemon
        self.url = url

    async def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        headers.update(kwargs.pop("headers", {}))
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, headers=headers, **kwargs) as answer,
        ):
            if answer.content_type == "application/json":
                return answer.status, answer.headers, await answer.json()
            return answer.status, answer.headers, await answer.text()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        return await self.request("POST", path, **kwargs)


async def serve(daemon: FakeDaemon) -> AsyncIterator[Admin]:
    runner = web.AppRunner(create_admin_app(daemon), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Admin(daemon, f"http://{host}:{port}")
    finally:
        await runner.cleanup()


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    daemon = FakeDaemon(make_config())
    daemon.feed()
    async for running in serve(daemon):
        yield running


def with_token(config: Config, path: Path) -> Config:
    return dataclasses.replace(config, admin=AdminConfig(token_file=path))


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Admin]:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")  # surrounding whitespace is not part of it
    daemon = FakeDaemon(with_token(make_config(), token_file))
    async for running in serve(daemon):
        yield running


# -- probes -----------------------------------------------------------------------------------
async def test_healthz_answers_ok(admin):
    assert (await admin.get("/healthz"))[::2] == (200, {"status": "ok"})


async def test_readyz_is_200_when_ready(admin):
    status, _, body = await admin.get("/readyz")
    assert (status, body["ready"]) == (200, True)


async def test_readyz_is_503_with_each_target_when_not_ready(admin):
    admin.daemon.ready = False
    status, _, body = await admin.get("/readyz")
    assert status == 503
    assert body["targets"]["primary"]["reachable"] is False


# -- metrics ----------------------------------------------------------------------------------
CONTRACT_METRICS = {
    "shadowd_build_info": "gauge",
    "shadowd_exchanges": "counter",
    "shadowd_divergences": "counter",
    "shadowd_divergent_exchanges": "counter",
    "shadowd_noisy_exchanges": "counter",
    "shadowd_upstream_latency_seconds": "histogram",
    "shadowd_upstream_errors": "counter",
    "shadowd_mirror_queue_depth": "gauge",
    "shadowd_mirror_in_flight": "gauge",
    "shadowd_mirror_dropped": "counter",
    "shadowd_mirror_skipped": "counter",
    "shadowd_mirror_enabled": "gauge",
    "shadowd_ingress_requests": "counter",
    "shadowd_ingress_rejected": "counter",
    "shadowd_ingress_connections": "gauge",
    "shadowd_capture_bytes": "counter",
    "shadowd_capture_records": "counter",
    "shadowd_capture_dropped": "counter",
    "shadowd_diff_failures": "counter",
}


async def test_metrics_are_prometheus_text_with_the_contracts_names_and_types(admin):
    status, headers, text = await admin.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert {name: types.get(name) for name in CONTRACT_METRICS} == CONTRACT_METRICS
    for name, kind in CONTRACT_METRICS.items():  # counters end in _total on the wire
        wire = f"{name}_total" if kind == "counter" else name
        assert f"# TYPE {wire} {kind}" in text


async def test_metrics_export_zero_for_fixed_series_from_the_start():
    metrics = Metrics(make_config())
    value = metrics.registry.get_sample_value
    assert value("shadowd_mirror_dropped_total", {"reason": "queue_full"}) == 0
    assert value("shadowd_mirror_skipped_total", {"reason": "sampled_out"}) == 0
    assert value("shadowd_ingress_rejected_total", {"reason": "primary_timeout"}) == 0
    assert value("shadowd_ingress_requests_total", {"code_class": "5xx"}) == 0
    assert value("shadowd_upstream_errors_total", {"target": "candidate", "kind": "timeout"}) == 0
    assert value("shadowd_capture_dropped_total", {"reason": "buffer_full"}) == 0
    assert value("shadowd_diff_failures_total") == 0
    assert value("shadowd_mirror_enabled") == 1
    assert value("shadowd_build_info", {"version": "0.1.0"}) == 1


async def test_metrics_count_exchanges_latency_and_divergences_per_endpoint(admin):
    value = admin.daemon.metrics.registry.get_sample_value
    assert value("shadowd_exchanges_total", {"target": "candidate", "endpoint": USERS}) == 5
    assert value("shadowd_divergences_total", {"endpoint": USERS, "kind": "type"}) == 5
    assert value("shadowd_divergent_exchanges_total", {"endpoint": USERS}) == 5
    assert value("shadowd_noisy_exchanges_total", {"endpoint": USERS}) == 0
    labels = {"target": "primary", "endpoint": USERS}
    assert value("shadowd_upstream_latency_seconds_count", labels) == 5
    assert value("shadowd_upstream_latency_seconds_bucket", {**labels, "le": "0.01"}) == 5


async def test_metrics_endpoint_label_is_capped_with_other():
    metrics = Metrics(make_config(max_endpoints=2))
    for name in ("GET /a", "GET /b", "GET /c", "GET /d"):
        metrics.observe_exchange(make_exchange(name), make_diff())
    labels = {s.labels["endpoint"] for s in _samples(metrics, "shadowd_exchanges")}
    assert labels == {"GET /a", "GET /b", "other"}
    value = metrics.registry.get_sample_value
    assert value("shadowd_exchanges_total", {"target": "primary", "endpoint": "other"}) == 2


async def test_metrics_count_unknown_reasons_under_other():
    metrics = Metrics(make_config())
    metrics.mirror_dropped("no-such-reason")
    metrics.mirror_skipped("no-such-reason")
    metrics.ingress_rejected("no-such-reason")
    metrics.capture_dropped("no-such-reason")
    metrics.upstream_error("candidate", "no-such-kind")
    metrics.ingress_request(0)
    value = metrics.registry.get_sample_value
    for name in ("mirror_dropped", "mirror_skipped", "ingress_rejected", "capture_dropped"):
        assert value(f"shadowd_{name}_total", {"reason": "other"}) == 1
    assert value("shadowd_upstream_errors_total", {"target": "candidate", "kind": "other"}) == 1
    assert value("shadowd_ingress_requests_total", {"code_class": "other"}) == 1


async def test_metrics_count_ingress_status_classes_and_connections():
    metrics = Metrics(make_config())
    for status in (200, 201, 404, 502):
        metrics.ingress_request(status)
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.connection_closed()
    value = metrics.registry.get_sample_value
    assert value("shadowd_ingress_requests_total", {"code_class": "2xx"}) == 2
    assert value("shadowd_ingress_requests_total", {"code_class": "5xx"}) == 1
    assert value("shadowd_ingress_connections") == 1


async def test_metrics_read_the_mirror_gauges_at_scrape_time():
    metrics = Metrics(make_config())
    depth = [3]
    metrics.watch_mirror(lambda: depth[0], lambda: 7)
    depth[0] = 5
    value = metrics.registry.get_sample_value
    assert (value("shadowd_mirror_queue_depth"), value("shadowd_mirror_in_flight")) == (5, 7)


def _samples(metrics: Metrics, family: str) -> list[Any]:
    return [
        sample
        for metric in metrics.registry.collect()
        if metric.name == family
        for sample in metric.samples
        if sample.name == f"{family}_total"
    ]


# -- report and samples -----------------------------------------------------------------------
async def test_report_route_answers_the_report(admin):
    status, headers, report = await admin.get("/api/v1/report")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert report["totals"]["exchanges"] == 5
    assert report["mirroring"]["enabled"] is True
    assert [e["endpoint"] for e in report["endpoints"]] == [USERS]


async def test_samples_route_answers_recent_divergent_exchanges(admin):
    _, _, report = await admin.get("/api/v1/report")
    endpoint_id = report["endpoints"][0]["id"]
    status, _, samples = await admin.get(f"/api/v1/endpoints/{endpoint_id}/samples")
    assert status == 200
    assert [s["exchange"] for s in samples["samples"]] == [4, 3, 2, 1, 0]
    assert samples["samples"][0]["differences"][0]["path"] == "$.price"


async def test_samples_of_an_unknown_endpoint_are_404_json(admin):
    status, _, body = await admin.get("/api/v1/endpoints/0000000000/samples")
    assert status == 404
    assert "0000000000" in body["error"]


# -- reset ------------------------------------------------------------------------------------
async def test_reset_clears_the_report_and_says_what_was_cleared(admin):
    status, _, body = await admin.post("/api/v1/reset", json={})
    assert (status, body) == (200, {"cleared": {"endpoints": 1, "exchanges": 5}})
    _, _, report = await admin.get("/api/v1/report")
    assert report["totals"]["exchanges"] == 0
    assert report["endpoints"] == []


async def test_reset_leaves_prometheus_counters_alone(admin):
    await admin.post("/api/v1/reset", json={})
    value = admin.daemon.metrics.registry.get_sample_value
    assert value("shadowd_divergent_exchanges_total", {"endpoint": USERS}) == 5


async def test_reset_is_post_only(admin):
    status, _, body = await admin.get("/api/v1/reset")
    assert status == 405
    assert "POST" in body["error"]


# -- the kill switch --------------------------------------------------------------------------
async def test_mirror_status_is_readable(admin):
    status, _, body = await admin.get("/api/v1/mirror")
    assert status == 200
    assert body["enabled"] is True
    assert body["dropped"]["queue_full"] == 0


async def test_mirror_can_be_turned_off(admin):
    status, _, body = await admin.post("/api/v1/mirror", json={"enabled": False})
    assert (status, body["enabled"]) == (200, False)
    assert admin.daemon.enabled is False
    assert admin.daemon.metrics.registry.get_sample_value("shadowd_mirror_enabled") == 0


async def test_mirror_refuses_a_body_that_is_not_json(admin):
    status, _, body = await admin.post(
        "/api/v1/mirror", data=b"off", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert '{"enabled": false}' in body["error"]
    assert admin.daemon.enabled is True


async def test_mirror_refuses_enabled_that_is_not_a_boolean(admin):
    status, _, body = await admin.post("/api/v1/mirror", json={"enabled": "false"})
    assert status == 400
    assert "boolean" in body["error"]
    assert admin.daemon.enabled is True


# -- the bearer token -------------------------------------------------------------------------
async def test_the_token_is_required_on_api_routes(guarded):
    status, headers, body = await guarded.get("/api/v1/report")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert "bearer token" in body["error"]


async def test_a_wrong_token_is_refused(guarded):
    assert (await guarded.get("/api/v1/report", token="let-me-i"))[0] == 401


async def test_the_right_token_is_accepted(guarded):
    assert (await guarded.get("/api/v1/report", token=TOKEN))[0] == 200


async def test_metrics_and_controls_need_the_token(guarded):
    assert (await guarded.get("/metrics"))[0] == 401
    assert (await guarded.post("/api/v1/mirror", json={"enabled": False}))[0] == 401
    assert (await guarded.post("/api/v1/reset"))[0] == 401
    assert guarded.daemon.enabled is True


async def test_probes_need_no_token(guarded):
    assert (await guarded.get("/healthz"))[0] == 200
    assert (await guarded.get("/readyz"))[0] == 200


async def test_an_empty_token_file_is_refused_when_the_app_is_created(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match=r"admin\.token_file: .* is empty"):
        create_admin_app(FakeDaemon(with_token(make_config(), token_file)))


async def test_a_missing_token_file_is_refused_when_the_app_is_created(tmp_path):
    with pytest.raises(ConfigError, match=r"admin\.token_file: cannot read"):
        create_admin_app(FakeDaemon(with_token(make_config(), tmp_path / "missing")))


# -- errors -----------------------------------------------------------------------------------
async def test_unknown_paths_are_404_json(admin):
    status, _, body = await admin.get("/api/v1/nope")
    assert status == 404
    assert body == {"error": "no such route: GET /api/v1/nope"}


async def test_a_failing_handler_answers_500_json(admin, caplog):
    def broken() -> dict[str, Any]:
        raise RuntimeError("a bug")

    admin.daemon.mirror_status = broken
    status, _, body = await admin.get("/api/v1/mirror")
    assert status == 500
    assert "internal error" in body["error"]
    assert "a bug" in caplog.text


async def test_the_api_index_lists_the_routes(admin):
    status, _, body = await admin.get("/api/v1")
    assert status == 200
    assert "GET /api/v1/report" in body["routes"]


async def test_the_verdict_answers_200_for_argo(admin):
    status, _, body = await admin.get("/api/v1/verdict")
    assert status == 200
    assert body["verdict"] == "fail"  # $.price changed type in every exchange


async def test_the_verdict_gate_answers_412_unless_it_passes(admin):
    status, _, body = await admin.get("/api/v1/verdict?gate=1")
    assert (status, body["verdict"]) == (412, "fail")


async def test_the_cli_says_how_to_give_the_token_when_it_is_refused(guarded):
    import asyncio

    from shadowd.cli import AdminUnreachable, admin_get

    for token, hint in ((None, "--token-file FILE or $SHADOWD_TOKEN"), ("nope", "refused")):
        with pytest.raises(AdminUnreachable) as refused:
            await asyncio.to_thread(admin_get, guarded.url, "/api/v1/report", token)
        assert "answered 401" in str(refused.value) and hint in str(refused.value)
    assert await asyncio.to_thread(admin_get, guarded.url, "/api/v1/report", TOKEN)

"""The two planes as real processes: ingress workers relay and hand off, analysis workers diff,
the supervisor merges. Workers are real subprocesses; targets are real loopback servers."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import Backend, build_config

from shadowd.supervisor import Supervisor

pytestmark = pytest.mark.timeout(90)


async def _json_answer(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"], "status": "ok"})


async def _candidate_answer(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"], "status": "ok", "new": 1})


@pytest.fixture
async def targets(make_backend: Callable[[], Backend]) -> dict[str, Backend]:
    primary, candidate = make_backend(), make_backend()
    primary.route("GET", "/items/{id}", _json_answer)
    candidate.route("GET", "/items/{id}", _candidate_answer)
    await primary.start()
    await candidate.start()
    return {"primary": primary, "candidate": candidate}


@pytest.fixture
async def start_supervisor() -> AsyncIterator[Callable[..., Awaitable[Supervisor]]]:
    started: list[Supervisor] = []

    async def start(*args: Any, **kwargs: Any) -> Supervisor:
        kwargs.setdefault("analysis", {}).setdefault("snapshot_interval", 0.1)
        supervisor = Supervisor(build_config(*args, **kwargs))
        await supervisor.start()
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        await supervisor.stop(grace=2.0)


def _url(supervisor: Supervisor) -> str:
    return "http://{}:{}".format(*supervisor.ingress_address)


async def _get_many(url: str, count: int, connections: int) -> list[int]:
    """``count`` GETs over ``connections`` separate keep-alive connections."""
    statuses: list[int] = []

    async def client(offset: int) -> None:
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(offset, count, connections):
                async with session.get(f"{url}/items/{i}") as answer:
                    await answer.read()
                    statuses.append(answer.status)

    await asyncio.gather(*(client(c) for c in range(connections)))
    return statuses


def _ingress_pids(supervisor: Supervisor) -> list[int]:
    return [
        w.process.pid
        for w in supervisor._workers.values()
        if w.role == "ingress" and w.alive and w.process is not None
    ]


def _analysis_pid(supervisor: Supervisor) -> int:
    (pid,) = [
        w.process.pid
        for w in supervisor._workers.values()
        if w.role == "analysis" and w.alive and w.process is not None
    ]
    return pid


async def test_two_ingress_workers_serve_and_their_statistics_merge_exactly(
    targets, start_supervisor
):
    supervisor = await start_supervisor(
        targets["primary"].url, targets["candidate"].url, ingress={"workers": 2}
    )
    statuses = await _get_many(_url(supervisor), 300, connections=16)
    assert statuses == [200] * 300
    assert await supervisor.settle(timeout=15.0)
    totals = supervisor.aggregator.totals
    assert totals.exchanges == 300
    assert totals.divergent == 300  # the candidate adds $.new to every answer
    (stats,) = supervisor.aggregator.endpoints.values()
    assert stats.fields["$.new"].divergent == 300
    merged = supervisor.merged
    assert merged.value("shadowd_ingress_requests_total", code_class="2xx") == 300
    assert merged.value("shadowd_exchanges_total", target="candidate") == 300
    # both processes took a share of the 16 connections (SO_REUSEPORT spreads them)
    shares = [
        w.status.get("handed_off", 0) for w in supervisor._workers.values() if w.role == "ingress"
    ]
    assert len(shares) == 2 and all(share > 0 for share in shares), shares


async def test_a_killed_ingress_worker_is_restarted_counted_and_the_others_keep_serving(
    targets, start_supervisor
):
    supervisor = await start_supervisor(
        targets["primary"].url, targets["candidate"].url, ingress={"workers": 2}
    )
    victim = _ingress_pids(supervisor)[0]
    (worker,) = [w for w in supervisor._workers.values() if w.process and w.process.pid == victim]
    os.kill(victim, signal.SIGKILL)
    # Connections already in the dying listener's accept queue are lost with it (documented);
    # from its exit on, the kernel gives new connections to the other worker only.
    await asyncio.wait_for(worker.exited.wait(), 10)
    # New connections are served while the victim is down and after it is back.
    statuses = await _get_many(_url(supervisor), 60, connections=6)
    assert statuses == [200] * 60
    async with asyncio.timeout(20):
        while True:
            workers = supervisor.workers_status()["ingress"]
            if workers["running"] == 2 and workers["restarts"] == 1:
                pids = _ingress_pids(supervisor)
                if victim not in pids and len(pids) == 2:
                    break
            await asyncio.sleep(0.05)
    assert (
        supervisor.metrics.registry.get_sample_value(
            "shadowd_worker_restarts_total", {"role": "ingress"}
        )
        == 1
    )
    for _ in range(400):  # readiness is a probe: ask until it says yes (20 s at most)
        if (await supervisor.readiness())["ready"]:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("not ready again within 20 s")
    statuses = await _get_many(_url(supervisor), 40, connections=8)
    assert statuses == [200] * 40


async def test_copies_are_shed_and_counted_while_the_analysis_is_stopped(targets, start_supervisor):
    supervisor = await start_supervisor(
        targets["primary"].url,
        targets["candidate"].url,
        ingress={"workers": 1},
        analysis={"queue_bytes": 4096},
    )
    analysis = _analysis_pid(supervisor)
    os.kill(analysis, signal.SIGSTOP)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        statuses = await _get_many(_url(supervisor), 1500, connections=8)
        elapsed = loop.time() - started
        assert statuses == [200] * 1500
        assert elapsed < 30  # nobody waited for the stopped analysis
        await supervisor.settle(timeout=0.5)  # collects the ingress counters; cannot settle
        shed = supervisor.merged.value("shadowd_mirror_dropped_total", reason="diff_backlog")
        assert shed > 0
    finally:
        os.kill(analysis, signal.SIGCONT)
    assert await supervisor.settle(timeout=15.0)
    diffed = supervisor.aggregator.totals.exchanges
    # every request was either diffed or shed and counted: nothing vanished silently
    assert diffed + shed == 1500
    assert supervisor.mirror_status()["dropped"]["diff_backlog"] == shed


async def test_kill_switch_and_reload_reach_every_ingress_worker(
    targets, start_supervisor, make_backend
):
    supervisor = await start_supervisor(
        targets["primary"].url, targets["candidate"].url, ingress={"workers": 2}
    )
    await supervisor.set_mirroring(False)
    await supervisor.settle(timeout=5.0)
    seen_before = len(targets["candidate"].seen)
    assert await _get_many(_url(supervisor), 40, connections=8) == [200] * 40
    await supervisor.settle(timeout=5.0)
    assert len(targets["candidate"].seen) == seen_before
    assert supervisor.merged.value("shadowd_mirror_skipped_total", reason="disabled") == 40

    await supervisor.set_mirroring(True)
    replacement = make_backend()
    replacement.route("GET", "/items/{id}", _json_answer)
    await replacement.start()
    import dataclasses

    from shadowd.config import target_from_url

    await supervisor.reconfigure(
        dataclasses.replace(
            supervisor.config, candidate=target_from_url("candidate", replacement.url)
        )
    )
    await supervisor.settle(timeout=5.0)
    assert await _get_many(_url(supervisor), 40, connections=8) == [200] * 40
    await replacement.wait_for_requests(40, timeout=10.0)
    assert len(targets["candidate"].seen) == seen_before


async def test_stop_drains_an_in_flight_request_on_any_worker(make_backend, start_supervisor):
    primary, candidate = make_backend(), make_backend()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"slow": True})

    primary.route("GET", "/slow", slow)
    candidate.route("GET", "/slow", slow)
    await primary.start()
    await candidate.start()
    supervisor = await start_supervisor(primary.url, candidate.url, ingress={"workers": 2})
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(session.get(f"{_url(supervisor)}/slow"))
        await primary.wait_for_requests(1)
        stopping = asyncio.ensure_future(supervisor.stop(grace=10.0))
        await asyncio.sleep(0)  # the stop has begun: listeners close, the request goes on
        release.set()
        answer = await pending
        assert answer.status == 200
        assert await answer.json() == {"slow": True}
        await stopping


async def test_tap_mode_with_two_workers_answers_at_once_and_diffs_every_copy(
    targets, start_supervisor
):
    supervisor = await start_supervisor(
        targets["primary"].url,
        targets["candidate"].url,
        ingress={"workers": 2, "mode": "tap"},
    )
    statuses = await _get_many(_url(supervisor), 80, connections=8)
    assert statuses == [204] * 80
    assert await supervisor.settle(timeout=15.0)
    assert supervisor.aggregator.totals.exchanges == 80
    assert supervisor.aggregator.totals.divergent == 80
    await targets["primary"].wait_for_requests(80)


async def test_the_analysis_worker_records_the_capture_of_every_ingress_worker(targets, tmp_path):
    import dataclasses

    from shadowd.capture.reader import CaptureReader
    from shadowd.config import CaptureConfig

    path = tmp_path / "live.shadow"
    config = dataclasses.replace(
        build_config(
            targets["primary"].url,
            targets["candidate"].url,
            ingress={"workers": 2},
            analysis={"snapshot_interval": 0.1},
        ),
        capture=CaptureConfig(path=path),
    )
    supervisor = Supervisor(config)
    await supervisor.start()
    try:
        assert await _get_many(_url(supervisor), 120, connections=8) == [200] * 120
        assert await supervisor.settle(timeout=15.0)
    finally:
        await supervisor.stop(grace=2.0)
    reader = CaptureReader(path)
    records = list(reader.records())
    assert len(records) == 120
    assert sorted(int(r["rq"]["t"].rsplit("/", 1)[1]) for r in records) == list(range(120))
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_a_killed_analysis_worker_is_restarted_and_the_stream_resumes(
    targets, start_supervisor
):
    supervisor = await start_supervisor(
        targets["primary"].url, targets["candidate"].url, ingress={"workers": 2}
    )
    assert await _get_many(_url(supervisor), 40, connections=4) == [200] * 40
    assert await supervisor.settle(timeout=15.0)
    assert supervisor.aggregator.totals.exchanges == 40
    os.kill(_analysis_pid(supervisor), signal.SIGKILL)
    for _ in range(400):  # until the restarted worker is back and every sender reconnected
        status = supervisor.workers_status()["analysis"]
        await supervisor.settle(timeout=0.2)
        connected = [
            w.status.get("analysis_connected")
            for w in supervisor._workers.values()
            if w.role == "ingress"
        ]
        if status["running"] == 1 and status["restarts"] == 1 and all(connected):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the analysis worker did not come back")
    # production never noticed; copies made while it was down were counted, not queued
    assert await _get_many(_url(supervisor), 60, connections=6) == [200] * 60
    assert await supervisor.settle(timeout=15.0)
    shed = supervisor.merged.value("shadowd_mirror_dropped_total", reason="analysis_down")
    assert supervisor.aggregator.totals.exchanges + shed == 100
    assert (
        supervisor.metrics.registry.get_sample_value(
            "shadowd_worker_restarts_total", {"role": "analysis"}
        )
        == 1
    )


async def test_a_port_another_process_listens_on_is_refused_not_shared(targets):
    import socket as socket_module

    holder = socket_module.socket()
    holder.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        from shadowd.config import Listen

        supervisor = Supervisor(
            build_config(
                targets["primary"].url,
                targets["candidate"].url,
                ingress={"listen": Listen("127.0.0.1", port)},
            )
        )
        with pytest.raises(OSError):
            await supervisor.start()
    finally:
        holder.close()


async def test_verdict_gauges_follow_the_statistics_without_being_asked(targets, start_supervisor):
    supervisor = await start_supervisor(
        targets["primary"].url,
        targets["candidate"].url,
        ingress={"workers": 1},
        verdict={"min_exchanges": 50},
    )
    assert await _get_many(_url(supervisor), 80, connections=4) == [200] * 80
    assert await supervisor.settle(timeout=15.0)
    await supervisor.verdicts.judge_now()  # what the 5 s timer does
    registry = supervisor.metrics.registry
    assert registry.get_sample_value("shadowd_verdict", {"verdict": "fail"}) == 1
    beyond = registry.get_sample_value(
        "shadowd_divergence_beyond_noise_ratio", {"endpoint": "GET /items/{id}"}
    )
    assert beyond == 1.0  # the candidate adds $.new to every answer


async def test_a_one_off_report_or_verdict_counts_what_the_analysis_diffed_before_it(
    targets, start_supervisor, monkeypatch
):
    # `shadowd verdict` right after a load test: the analysis workers publish only every
    # snapshot_interval (here far beyond the test), so without asking them first a one-off
    # caller read statistics without that traffic (and the verdict judged at start-up).
    from shadowd import supervisor as supervisor_module
    from shadowd.verdict import schedule

    monkeypatch.setattr(supervisor_module, "REPORT_MAX_AGE", 0.0)  # every call a one-off
    monkeypatch.setattr(schedule, "POLL_WINDOW", 0.0)
    supervisor = await start_supervisor(
        targets["primary"].url,
        targets["candidate"].url,
        ingress={"workers": 2},
        analysis={"snapshot_interval": 600.0},
    )
    statuses = await _get_many(_url(supervisor), 40, connections=4)
    assert statuses == [200] * 40
    reported = 0
    async with asyncio.timeout(15):  # until the last copies are back and diffed
        while reported < 40:
            report = orjson.loads(await supervisor.report_json())
            reported = report["totals"]["exchanges"]
            assert reported <= 40
            if reported < 40:
                await asyncio.sleep(0.05)
    verdict = await supervisor.current_verdict()
    assert verdict.exchanges == 40

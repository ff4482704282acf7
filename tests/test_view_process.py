"""The supervisor's view process: the report and the verdict are built off the admin API's
loop, from the same deltas the supervisor merges, and a view process that dies loses
nothing. Real worker processes, real loopback targets."""

from __future__ import annotations

import asyncio
import os
import signal

import orjson
import pytest
from test_two_planes import _get_many, _url, start_supervisor, targets

from shadowd.report import build_report
from shadowd.supervisor import Supervisor

pytestmark = pytest.mark.timeout(90)
__all__ = ["start_supervisor", "targets"]  # fixtures, used by name


def _comparable(report: dict) -> dict:
    """The report without what differs between two builds of the same statistics."""
    report = {k: v for k, v in report.items() if k not in ("generated_at", "window", "mirroring")}
    return orjson.loads(orjson.dumps(report, option=orjson.OPT_NON_STR_KEYS))


def _view_pid(supervisor: Supervisor) -> int:
    process = supervisor.view._process
    assert process is not None and process.returncode is None
    return process.pid


async def test_the_served_report_is_the_supervisors_statistics_built_elsewhere(
    targets, start_supervisor
):
    supervisor = await start_supervisor(
        targets["primary"].url, targets["candidate"].url, ingress={"workers": 2}
    )
    assert await _get_many(_url(supervisor), 200, connections=8) == [200] * 200
    assert await supervisor.settle(timeout=15.0)
    served = orjson.loads(await supervisor.report_json())
    assert served["totals"]["exchanges"] == 200
    assert _view_pid(supervisor) != os.getpid()
    here = build_report(supervisor.aggregator, supervisor.mirror_status())
    assert _comparable(served) == _comparable(here)
    # the gauges follow the report the view process built
    beyond = supervisor.metrics.registry.get_sample_value(
        "shadowd_divergence_beyond_noise_ratio", {"endpoint": "GET /items/{id}"}
    )
    assert beyond == 1.0
    # the verdict comes serialised from the view process, as the admin API serves it
    verdict = await supervisor.verdicts.judge_now()
    made = supervisor.json_of_verdict(verdict)
    assert made is not None
    assert orjson.loads(made) == orjson.loads(
        orjson.dumps(verdict.to_json(), option=orjson.OPT_NON_STR_KEYS)
    )


async def test_a_poller_is_answered_at_once_while_the_view_process_is_busy(
    targets, start_supervisor, monkeypatch
):
    # A poller is someone who asked within REPORT_MAX_AGE; on a busy host the steps below
    # may take longer than the 2 s it is in production.
    monkeypatch.setattr("shadowd.supervisor.REPORT_MAX_AGE", 120.0)
    supervisor = await start_supervisor(targets["primary"].url, targets["candidate"].url)
    assert await _get_many(_url(supervisor), 20, connections=2) == [200] * 20
    assert await supervisor.settle(timeout=15.0)
    first = orjson.loads(await supervisor.report_json())
    assert first["totals"]["exchanges"] == 20
    pid = _view_pid(supervisor)
    os.kill(pid, signal.SIGSTOP)  # a view process that cannot build anything just now
    try:
        assert await _get_many(_url(supervisor), 10, connections=2) == [200] * 10
        await supervisor._round()  # the workers publish what they have: new statistics
        async with asyncio.timeout(1.0):  # the newest report, without waiting for a build
            stale = orjson.loads(await supervisor.report_json())
        assert stale["totals"]["exchanges"] == 20
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await supervisor.settle(timeout=15.0)
    fresh = orjson.loads(await supervisor.report_json())  # after settle: all of it
    assert fresh["totals"]["exchanges"] == 30


async def test_a_killed_view_process_is_replaced_and_loses_nothing(targets, start_supervisor):
    supervisor = await start_supervisor(
        targets["primary"].url, targets["candidate"].url, verdict={"min_exchanges": 20}
    )
    assert await _get_many(_url(supervisor), 40, connections=4) == [200] * 40
    assert await supervisor.settle(timeout=15.0)
    await supervisor.report_json()
    os.kill(_view_pid(supervisor), signal.SIGKILL)
    assert await _get_many(_url(supervisor), 20, connections=2) == [200] * 20
    assert await supervisor.settle(timeout=15.0)
    report = orjson.loads(await supervisor.report_json())
    assert report["totals"]["exchanges"] == 60  # seeded with everything merged before
    assert report["endpoints"][0]["fields"][0]["path"] == "$.new"
    assert supervisor.view.restarts == 1
    restarts = supervisor.metrics.registry.get_sample_value(
        "shadowd_worker_restarts_total", {"role": "view"}
    )
    assert restarts == 1
    verdict = await supervisor.verdicts.judge_now()
    assert verdict.verdict == "fail"  # the candidate adds $.new to every answer


async def test_a_reset_is_never_answered_with_the_statistics_before_it(targets, start_supervisor):
    supervisor = await start_supervisor(targets["primary"].url, targets["candidate"].url)
    assert await _get_many(_url(supervisor), 15, connections=3) == [200] * 15
    assert await supervisor.settle(timeout=15.0)
    assert orjson.loads(await supervisor.report_json())["totals"]["exchanges"] == 15
    supervisor.reset()
    assert orjson.loads(await supervisor.report_json())["totals"]["exchanges"] == 0

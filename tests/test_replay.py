"""Replay against real loopback servers: divergences found, pacing kept, capture end to end."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from conftest import build_config

from shadowd.capture.format import encode_header, encode_record, record_of
from shadowd.capture.reader import read_capture
from shadowd.config import CaptureConfig
from shadowd.daemon import Daemon
from shadowd.exchange import Answer, Exchange, Request
from shadowd.replay import Replay, ReplayOptions


def recorded(i: int, at: float) -> Exchange:
    ex = Exchange(
        id=i,
        request=Request("GET", f"/prices/{i}", [(b"Host", b"shop")], b"", at),
        endpoint="GET /prices/{id}",
    )
    ex.answers["primary"] = Answer(
        "primary",
        200,
        [(b"Content-Type", b"application/json")],
        b'{"price": %d}' % i,
        body_size=12,
        latency=0.001,
    )
    return ex


def capture(path: Path, exchanges: list[Exchange]) -> Path:
    path.write_bytes(
        encode_header("test", 0.0, "") + b"".join(encode_record(record_of(ex)) for ex in exchanges)
    )
    return path


async def candidate_server(make_backend, times: list[float] | None = None):
    backend = make_backend()

    async def price(request: web.Request) -> web.Response:
        if times is not None:
            times.append(time.perf_counter())
        i = int(request.match_info["id"])
        return web.json_response({"price": str(i) if i % 2 else i})

    backend.route("GET", "/prices/{id}", price)
    return await backend.start()


async def test_replay_against_recorded_answers_finds_planted_divergence(make_backend, tmp_path):
    url = await candidate_server(make_backend)
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0 + i * 0.001) for i in range(20)])
    runner = Replay(path, ReplayOptions(targets={"candidate": url}, rate=500))
    await runner.run()
    summary = runner.summary()
    assert summary["completed"] == 20
    (endpoint,) = summary["report"]["endpoints"]
    fields = {f["path"]: f for f in endpoint["fields"]}
    assert fields["$.price"]["kinds"] == {"type": 10}
    assert summary["latency"]["candidate"]["corrected"]["count"] == 20


async def test_fixed_rate_paces_the_sends(make_backend, tmp_path):
    times: list[float] = []
    url = await candidate_server(make_backend, times)
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0) for i in range(50)])
    runner = Replay(path, ReplayOptions(targets={"candidate": url}, rate=100))
    await runner.run()
    span = times[-1] - times[0]
    assert 0.45 < span < 0.75  # 49 gaps of 10 ms, with loopback jitter
    assert 80 < runner.summary()["achieved_rate"] < 110


async def test_speed_scales_the_recorded_pace(make_backend, tmp_path):
    times: list[float] = []
    url = await candidate_server(make_backend, times)
    # recorded over 2 s; at --speed 4 it takes about 0.5 s
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0 + i * 0.1) for i in range(21)])
    runner = Replay(path, ReplayOptions(targets={"candidate": url}, speed=4.0))
    await runner.run()
    span = times[-1] - times[0]
    assert 0.45 < span < 0.7


async def test_closed_loop_and_filters(make_backend, tmp_path):
    url = await candidate_server(make_backend)
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0) for i in range(30)])
    runner = Replay(
        path,
        ReplayOptions(targets={"candidate": url}, concurrency=4, loop=2, path=r"/prices/1\d$"),
    )
    await runner.run()
    assert runner.summary()["completed"] == 20  # /prices/10..19, twice


async def test_daemon_records_a_capture_that_replays(make_backend, start_shadowd, tmp_path):
    primary = make_backend()

    async def price(request: web.Request) -> web.Response:
        return web.json_response({"price": int(request.match_info["id"])})

    primary.route("GET", "/prices/{id}", price)
    await primary.start()
    url = await candidate_server(make_backend)
    config = dataclasses.replace(
        build_config(primary.url, url), capture=CaptureConfig(path=tmp_path / "live.shadow")
    )
    daemon = Daemon(config)
    await daemon.start()
    host, port = daemon.ingress_address
    async with aiohttp.ClientSession() as session:
        for i in range(10):
            async with session.get(
                f"http://{host}:{port}/prices/{i}", headers={"Authorization": "Bearer hunter2"}
            ) as answer:
                await answer.read()
    await daemon.stop()
    records = list(read_capture(tmp_path / "live.shadow"))
    assert len(records) == 10
    assert b"hunter2" not in (tmp_path / "live.shadow").read_bytes()
    runner = Replay(tmp_path / "live.shadow", ReplayOptions(targets={"candidate": url}, rate=1000))
    await runner.run()
    fields = runner.summary()["report"]["endpoints"][0]["fields"]
    assert {f["path"]: f["kinds"] for f in fields}["$.price"] == {"type": 5}


async def test_inspect_and_replay_commands(make_backend, tmp_path):
    import asyncio
    import json
    import sys

    url = await candidate_server(make_backend)
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0 + i) for i in range(10)])

    async def run(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shadowd",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await process.communicate()
        return process.returncode, out.decode(), err.decode()

    code, out, _ = await run("inspect", str(path))
    assert code == 0 and "10 records" in out and "GET /prices/{id}" in out
    code, out, _ = await run("inspect", str(path), "--records")
    assert code == 0 and len(out.splitlines()) == 10
    assert json.loads(out.splitlines()[0])["request"]["target"] == "/prices/0"
    result = tmp_path / "result.json"
    code, out, err = await run(
        "replay", str(path), "--target", f"candidate={url}", "--speed", "20", "--json", str(result)
    )
    assert code == 0, err
    assert "10 of 10 requests completed" in out
    assert "$.price" in out
    summary = json.loads(result.read_text())
    assert summary["completed"] == 10
    assert summary["analysis_nice"] == 10  # the comparison stepped back from the senders
    code, _, err = await run(
        "replay", str(path), "--target", f"candidate={url}", "--analysis-nice", "20"
    )
    assert code == 2 and "--analysis-nice must be 0 to 19" in err
    code, _, err = await run("replay", str(path), "--target", "staging=http://x")
    assert code == 2 and "expected primary=URL" in err


async def test_ctrl_c_stops_replay_cleanly_and_still_summarises(make_backend, tmp_path):
    import asyncio
    import signal
    import sys

    backend = make_backend()

    async def price(request: web.Request) -> web.Response:
        return web.json_response({"price": 1})

    backend.route("GET", "/prices/{id}", price)
    url = await backend.start()
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0 + i) for i in range(100)])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadowd",
        "replay",
        str(path),
        "--target",
        f"candidate={url}",
        "--rate",
        "20",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await backend.wait_for_requests(3, timeout=10)  # it is replaying
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(10):
        out, _ = await process.communicate()
    assert process.returncode == 130
    text = out.decode()
    assert "(interrupted)" in text
    assert "requests completed" in text and "latency" in text


async def test_per_target_headers_and_auth_from_the_environment(
    make_backend, tmp_path, monkeypatch
):
    from shadowd.cli import _header_rewrites

    backend = make_backend()

    async def price(request: web.Request) -> web.Response:
        return web.json_response({"price": 1})

    backend.route("GET", "/prices/{id}", price)
    url = await backend.start()
    monkeypatch.setenv("STAGING_TOKEN", "tok-123")
    headers = _header_rewrites(
        ["candidate:Authorization=env:STAGING_TOKEN", "candidate:Host=staging.shop"],
        {"candidate": url},
    )
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0) for i in range(3)])
    runner = Replay(
        path,
        ReplayOptions(
            targets={"candidate": url}, rate=100, headers=headers, methods=frozenset({"GET"})
        ),
    )
    await runner.run()
    assert len(backend.seen) == 3
    for seen in backend.seen:
        assert seen["headers"]["Authorization"] == "tok-123"
        assert seen["headers"]["Host"] == "staging.shop"


def test_header_rewrite_errors_are_clear(monkeypatch):
    import pytest

    from shadowd.cli import _header_rewrites

    monkeypatch.delenv("MISSING_TOKEN", raising=False)
    with pytest.raises(ValueError, match=r"\$MISSING_TOKEN is not set"):
        _header_rewrites(["candidate:Authorization=env:MISSING_TOKEN"], {"candidate": "x"})
    with pytest.raises(ValueError, match="expected TARGET:Name=value"):
        _header_rewrites(["nonsense"], {"candidate": "x"})


async def test_replay_gives_the_verdict_the_live_daemon_gives_for_the_same_exchanges(
    make_backend, tmp_path
):
    """A fixed capture, as the live daemon recorded it (primary and candidate answers). The
    live verdict: its records through the analysis plane's diff stage. The replay verdict:
    the same requests sent to a candidate that answers exactly what was recorded."""
    from shadowd.aggregate import Aggregator
    from shadowd.analysis.stage import DiffStage
    from shadowd.capture.reader import CaptureReader
    from shadowd.metrics import Metrics
    from shadowd.report import build_report
    from shadowd.stream.handoff import record_payload
    from shadowd.verdict.evidence import VerdictEvidence
    from shadowd.verdict.judge import judge

    exchanges = []
    for i in range(600):
        ex = recorded(i, 100.0 + i * 0.001)
        # the candidate: a type change on every third price, and a 500 on every 25th
        status = 500 if i % 25 == 0 else 200
        body = b'{"price": "%d"}' % i if i % 3 == 0 else b'{"price": %d}' % i
        ex.answers["candidate"] = Answer(
            "candidate",
            status,
            [(b"Content-Type", b"application/json")],
            body,
            body_size=len(body),
            latency=0.001,
        )
        exchanges.append(ex)
    path = capture(tmp_path / "live.shadow", exchanges)

    config = build_config("http://recorded.invalid", "http://127.0.0.1:1")
    live = DiffStage(
        config.diff, Aggregator(config), VerdictEvidence(config.endpoints.max), Metrics(config)
    )
    for record in CaptureReader(path).exchanges():
        live.submit(record_payload(record))
    await live.wait_idle(0)  # not started: process the backlog by hand
    while live.backlog:
        live._process(live._backlog.popleft())
    live_verdict = judge(build_report(live.aggregator), live.evidence, config)

    answers = {i: ex.answers["candidate"] for i, ex in enumerate(exchanges)}

    async def recorded_answer(request: web.Request) -> web.Response:
        answer = answers[int(request.match_info["id"])]
        return web.Response(status=answer.status, body=answer.body, content_type="application/json")

    backend = make_backend()
    backend.route("GET", "/prices/{id}", recorded_answer)
    url = await backend.start()
    runner = Replay(path, ReplayOptions(targets={"candidate": url}, concurrency=16))
    await runner.run()
    replayed = runner.summary()["verdict"]

    def decided(verdict: dict) -> set[tuple[str, str, str]]:
        # latency is measured anew by a replay; every other criterion must agree
        return {
            (c["name"], c["scope"], c["status"])
            for c in verdict["criteria"]
            if not c["name"].startswith("latency")
        }

    assert live_verdict.verdict == replayed["verdict"] == "fail"
    assert decided(live_verdict.to_json()) == decided(replayed)
    assert any("$.price type changed" in r for r in replayed["reasons"])
    assert any("candidate errors" in r for r in replayed["reasons"])
    # latency against the capture's primary is said to be that, not "timed inline"
    latency = [c for c in replayed["criteria"] if c["name"] == "latency_p50"]
    assert latency
    assert all("primary as recorded in the capture" in c["reason"] for c in latency)


async def test_no_diff_times_the_targets_without_comparing(make_backend, tmp_path):
    url = await candidate_server(make_backend)
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0) for i in range(40)])
    runner = Replay(path, ReplayOptions(targets={"candidate": url}, concurrency=8, diff=False))
    await runner.run()
    summary = runner.summary()
    assert summary["completed"] == 40
    assert summary["latency"]["candidate"]["corrected"]["count"] == 40
    assert summary["report"]["totals"]["exchanges"] == 0
    assert summary["verdict"] is None


async def timed_prices(make_backend):  # type: ignore[no-untyped-def]
    """A backend answering GET /prices/{id}; the perf_counter instant each request arrived
    (the system-wide monotonic clock, as the senders'). (backend, its URL, the instants)."""
    seen: list[float] = []
    backend = make_backend()

    async def price(request: web.Request) -> web.Response:
        seen.append(time.perf_counter())
        return web.json_response({"price": int(request.match_info["id"])})

    backend.route("GET", "/prices/{id}", price)
    return backend, await backend.start(), seen


async def test_closed_loop_senders_start_together_at_the_shared_instant(make_backend, tmp_path):
    """A sender ready early must not start before the shared first instant: what it sent
    before it would count against a shorter elapsed time, inflating the rate."""
    from shadowd.replay_parallel import replay_parallel

    _, url, seen = await timed_prices(make_backend)
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0) for i in range(200)])
    summary = await replay_parallel(
        path,
        ReplayOptions(targets={"candidate": url}, concurrency=4, workers=2, analysis_nice=0),
    )
    assert summary["completed"] == 200
    # elapsed runs from the shared instant to the last answer: every request is inside it
    assert max(seen) - min(seen) <= summary["seconds"]


async def test_parallel_senders_share_the_schedule_and_merge_their_figures(make_backend, tmp_path):
    from shadowd.replay_parallel import replay_parallel

    backend, url, seen = await timed_prices(make_backend)
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0) for i in range(300)])
    summary = await replay_parallel(
        # analysis_nice=0: in this process, a lower priority would outlive the test
        path,
        ReplayOptions(targets={"candidate": url}, rate=500, workers=2, analysis_nice=0),
    )
    paths = sorted(int(s["path_qs"].rsplit("/", 1)[1]) for s in backend.seen)
    assert paths == list(range(300))  # every request once, whichever sender sent it
    assert summary["senders"] == 2
    assert summary["sent"] == summary["completed"] == 300
    assert summary["latency"]["candidate"]["corrected"]["count"] == 300
    assert summary["report"]["totals"]["exchanges"] == 300
    # 299 gaps of 2 ms (0.6 s) kept by two processes; loose bounds, the host may be busy
    # (a sender that starts late catches up at once: latency is measured from the schedule)
    assert 0.3 < seen[-1] - seen[0] < 2.0


async def test_paced_senders_wait_for_the_timer_instead_of_polling_the_loop(make_backend, tmp_path):
    """Sends less than a millisecond apart (3,000 req/s from one sender): uvloop's timers
    tick in whole milliseconds, and a sender that waited out the rest by polling spent a
    whole core doing it (the target and the comparison beside it starved). It waits for
    the next tick instead; the sender's CPU is then a fraction of the time it sends."""
    import resource

    from shadowd.replay_parallel import replay_parallel

    _, url, _seen = await timed_prices(make_backend)
    path = capture(tmp_path / "c.shadow", [recorded(i, 100.0) for i in range(300)])

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before = children_cpu()
    summary = await replay_parallel(
        path,
        ReplayOptions(
            targets={"candidate": url},
            rate=3000,
            loop=1000,
            duration=3.0,
            workers=1,
            diff=False,
            analysis_nice=0,
        ),
    )
    sender_cpu = children_cpu() - before  # the sender process, waited for: startup included
    assert summary["completed"] > 3000
    # Measured over 3 s: 0.8 s of CPU waiting for ticks (startup included), 3.3 s polling.
    assert sender_cpu < 0.7 * summary["seconds"], (sender_cpu, summary["seconds"])


async def test_a_capture_filed_in_completion_order_is_sent_in_arrival_order(make_backend, tmp_path):
    # shadowd files an exchange when its last answer is in: a request whose copy took a
    # second lands a second late in the file. Sent in file order at the recorded pace, it
    # left a second late, and its corrected latency counted that second against the target.
    seen: list[int] = []
    backend = make_backend()

    async def price(request: web.Request) -> web.Response:
        seen.append(int(request.match_info["id"]))
        return web.json_response({"price": int(request.match_info["id"])})

    backend.route("GET", "/prices/{id}", price)
    url = await backend.start()
    arrivals = {i: 100.0 + i * 0.05 for i in range(20)}  # 50 ms apart, 0.95 s in all
    slow = 3  # answered last: filed after every other, 0.8 s after the one before it
    filed = [recorded(i, arrivals[i]) for i in range(20) if i != slow]
    filed.append(recorded(slow, arrivals[slow]))
    path = capture(tmp_path / "c.shadow", filed)
    runner = Replay(path, ReplayOptions(targets={"candidate": url}))
    await runner.run()
    assert seen == sorted(seen)  # the target sees them as they first arrived
    corrected = runner.summary()["latency"]["candidate"]["corrected"]
    assert corrected["count"] == 20
    assert corrected["max"] < 400  # ms; in file order it left 800 ms late

"""The exchange stream on Redis Streams, with a real redis-server on a loopback port: ingress
sides and analysis workers as separate processes, one fleet report equal to one process's,
a worker killed with SIGKILL, the stream's bound, and Redis going away under live traffic."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import redis.asyncio as redis
from aiohttp import web
from realpeers import ShadowdProcess, free_port
from test_snapshot_merge import workload

from shadowd.aggregate import Aggregator
from shadowd.capture.format import encode_header, frame, record_of
from shadowd.capture.reader import read_capture
from shadowd.config import Config, ConfigError, StreamConfig, load_config
from shadowd.diff.engine import diff_exchange
from shadowd.exchange import Exchange
from shadowd.metrics import Metrics
from shadowd.report import build_report
from shadowd.stream.fleet import FleetView
from shadowd.stream.redis_stream import StreamReader, StreamSender, append_records

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]  # real processes, busy hosts

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)
# The report's fields that say when it was built, not what was counted.
WALL_CLOCK = ("generated_at", "started_at", "window", "mirroring")


class RedisServer:
    """``redis-server`` on 127.0.0.1:<port>, without persistence: a restart starts empty."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed: run `make setup` (install-system-deps)")
        self.process = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            async with asyncio.timeout(10.0):
                while True:  # until it answers PING (it may not listen yet)
                    try:
                        if await client.ping():
                            return
                    except (redis.ConnectionError, OSError):
                        if self.process.returncode is not None:
                            pytest.fail(f"redis-server exited with {self.process.returncode}")
                        await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer(free_port())
    await server.start()
    yield server
    await server.kill()


def write_config(path: Path, redis_url: str, key: str, **sections: dict[str, Any]) -> Path:
    """A config for workers and publishers (targets are never contacted by them)."""
    tables: dict[str, dict[str, Any]] = {
        "targets.primary": {"url": "http://127.0.0.1:9"},
        "targets.secondary": {"url": "http://127.0.0.1:10"},
        "targets.candidate": {"url": "http://127.0.0.1:11"},
        "analysis": {"snapshot_interval": "300ms", "nice": 0},
        "stream": {"backend": "redis", "url": redis_url, "key": key, "claim_idle": "1s"},
    }
    for name, values in sections.items():
        tables.setdefault(name.replace("__", "."), {}).update(values)
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        for k, v in values.items():
            lines.append(f"{k} = {v!r}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}")
        lines.append("")
    path.write_text("\n".join(lines).replace("'", '"'))
    return path


def write_capture(path: Path, exchanges: list[Exchange]) -> Path:
    with path.open("wb") as out:
        out.write(encode_header("test", 1e9, ""))
        for exchange in exchanges:
            out.write(frame(msgpack.packb(record_of(exchange), use_bin_type=True)))
    return path


def single_process_report(config: Config, captures: list[Path]) -> dict[str, Any]:
    """What one process reports for the same records (the capture reader, the same diff)."""
    aggregator = Aggregator(config, Metrics(config))
    for capture in captures:
        for exchange in read_capture(capture):
            aggregator.add(exchange, diff_exchange(exchange, config.diff))
    return build_report(aggregator)


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in WALL_CLOCK}


async def shadowd(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadowd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: asyncio.subprocess.Process, timeout: float = 60.0) -> str:
    communicating = asyncio.ensure_future(process.communicate())
    done, _ = await asyncio.wait([communicating], timeout=timeout)
    if not done:
        # Say where it was stuck: its stack (py-spy, when there) and what it logged.
        stacks = ""
        places = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))
        spy = shutil.which("py-spy", path=places)
        if process.returncode is None and spy is not None:
            dump = await asyncio.create_subprocess_exec(
                spy, "dump", "--pid", str(process.pid), stdout=asyncio.subprocess.PIPE
            )
            stacks = (await dump.communicate())[0].decode(errors="replace")
        if process.returncode is None:
            process.kill()
        out, err = await communicating
        raise AssertionError(
            f"still running after {timeout}s (exit {process.returncode});\n{stacks}\n"
            f"stderr: {err.decode(errors='replace')[-4000:]}"
        )
    out, err = communicating.result()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


async def fleet_counts(fleet: FleetView, exchanges: int, timeout: float = 60.0) -> None:
    """Until the fleet's merged statistics count ``exchanges`` (read from Redis)."""
    async with asyncio.timeout(timeout):
        while True:
            await fleet.refresh()
            if fleet.aggregator.totals.exchanges >= exchanges:
                return
            await asyncio.sleep(0.05)


def consumers(fleet: FleetView) -> dict[str, dict[str, Any]]:
    return {m["consumer"]: m for m in fleet.members}


async def test_fleet_report_of_two_ingress_and_two_workers_equals_one_process(
    redis_server, tmp_path
):
    config_path = write_config(tmp_path / "fleet.toml", redis_server.url, "t:equal")
    config = load_config(config_path)
    exchanges = workload(seed=3, count=1500)
    captures = [
        write_capture(tmp_path / "a.shadow", exchanges[0::2]),
        write_capture(tmp_path / "b.shadow", exchanges[1::2]),
    ]
    fleet = FleetView(config)
    workers = [await shadowd("worker", "-c", str(config_path), "--consumer", name) for name in "wx"]
    try:
        # Both workers are in the group (they publish an empty snapshot at once) before any
        # record is appended, so that each takes a share.
        async with asyncio.timeout(30.0):
            while len(fleet.members) < 2:
                await fleet.refresh()
                await asyncio.sleep(0.05)
        publishers = [await shadowd("publish", str(c), "-c", str(config_path)) for c in captures]
        outputs = [await finished(p) for p in publishers]
        assert outputs == ["750 records appended to t:equal\n"] * 2
        await fleet_counts(fleet, len(exchanges))
        # Every worker has published everything it took (nothing left unacknowledged).
        async with asyncio.timeout(10.0):
            while any(m["unacknowledged"] for m in fleet.members):
                await fleet.refresh()
                await asyncio.sleep(0.05)
        shares = {name: m["diffed"] for name, m in consumers(fleet).items()}
        assert sum(shares.values()) == len(exchanges)
        assert all(shares.values()), shares  # both did a share of the work
        assert comparable(fleet.report()) == comparable(single_process_report(config, captures))
        assert fleet.report()["totals"]["exchanges"] == 1500
    finally:
        for worker in workers:
            await stop(worker)
        await fleet.close()


async def published_backlog(
    redis_server: RedisServer, tmp_path: Path, key: str, seed: int
) -> tuple[Config, Path, Path, FleetView, redis.Redis]:
    """6,000 records of a fixed workload appended to ``key`` (read in batches of 50), and a
    fleet view and a Redis client to watch them: (config, its path, the capture, ...)."""
    config_path = write_config(tmp_path / "fleet.toml", redis_server.url, key, stream={"batch": 50})
    capture = write_capture(tmp_path / "all.shadow", workload(seed=seed, count=6000))
    await finished(await shadowd("publish", str(capture), "-c", str(config_path)))
    config = load_config(config_path)
    return config, config_path, capture, FleetView(config), redis.Redis.from_url(redis_server.url)


async def holding_unpublished(
    fleet: FleetView, client: redis.Redis, config: Config, consumer: str
) -> None:
    """Until ``consumer`` has published some work and holds more it has not published."""
    async with asyncio.timeout(30.0):
        while True:
            await fleet.refresh()
            # (published first: the group exists once the worker has published)
            if consumers(fleet).get(consumer, {}).get("diffed", 0):
                pending = await client.xpending(config.stream.key, config.stream.group)
                if pending["pending"]:
                    return
            await asyncio.sleep(0.01)


async def nothing_pending(client: redis.Redis, key: str, group: str, timeout: float) -> None:
    """Until every record of the group is acknowledged (the survivor's next snapshot)."""
    async with asyncio.timeout(timeout):
        while (await client.xpending(key, group))["pending"]:  # noqa: ASYNC110 - Redis state
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("successor", ["survivor", "doomed"], ids=["another", "same-name"])
async def test_a_worker_killed_with_sigkill_loses_nothing_acknowledged_and_another_finishes(
    redis_server, tmp_path, successor
):
    """Another worker takes over what the dead one held; or the dead one, started again
    under its configured name, continues its own snapshot and takes its records back."""
    config, config_path, capture, fleet, client = await published_backlog(
        redis_server, tmp_path, "t:kill", seed=5
    )
    doomed = await shadowd("worker", "-c", str(config_path), "--consumer", "doomed")
    survivor = None
    try:
        # Kill it mid-way: it has published (acknowledged) some work and holds more that it
        # read but has not published.
        await holding_unpublished(fleet, client, config, "doomed")
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        pending = await client.xpending("t:kill", config.stream.group)
        assert pending["pending"] > 0
        await fleet.refresh()
        acknowledged = fleet.aggregator.totals.exchanges
        assert 0 < acknowledged < 6000

        survivor = await shadowd("worker", "-c", str(config_path), "--consumer", successor)
        await fleet_counts(fleet, 6000)
        await nothing_pending(client, "t:kill", config.stream.group, timeout=10.0)
        await fleet.refresh()
        # Exactly once: what the dead worker acknowledged is counted in its snapshot, what
        # it left pending was claimed and counted by the survivor, nothing twice.
        assert comparable(fleet.report()) == comparable(single_process_report(config, [capture]))
        reclaimed = fleet.series.value("shadowd_stream_records_total", how="reclaimed")
        assert reclaimed >= pending["pending"]
        if successor == "survivor":
            assert consumers(fleet)["doomed"]["diffed"] >= acknowledged
    finally:
        await stop(doomed)
        if survivor is not None:
            await stop(survivor)
        await client.aclose()
        await fleet.close()


async def test_a_worker_stalled_past_claim_idle_does_not_count_what_was_taken_over(
    redis_server, tmp_path
):
    """SIGSTOP a worker while it holds records it has counted but not published; another
    worker claims them after claim_idle and counts them. When the stalled one wakes, its
    snapshot must not count them a second time."""
    config, config_path, capture, fleet, client = await published_backlog(
        redis_server, tmp_path, "t:stall", seed=6
    )
    stalled = await shadowd("worker", "-c", str(config_path), "--consumer", "stalled")
    survivor = None
    try:
        await holding_unpublished(fleet, client, config, "stalled")
        stalled.send_signal(signal.SIGSTOP)
        held = (await client.xpending("t:stall", config.stream.group))["pending"]
        assert held > 0
        survivor = await shadowd("worker", "-c", str(config_path), "--consumer", "survivor")
        await fleet_counts(fleet, 6000)
        # the survivor claimed and acknowledged them all
        await nothing_pending(client, "t:stall", config.stream.group, timeout=30.0)
        stalled.send_signal(signal.SIGCONT)

        async def went_back() -> bool:
            await fleet.refresh()
            return bool(fleet.series.value("shadowd_stream_records_total", how="taken_over"))

        await until(went_back, timeout=30.0)
        await fleet.refresh()
        assert fleet.series.value("shadowd_stream_records_total", how="reclaimed") >= held
        assert comparable(fleet.report()) == comparable(single_process_report(config, [capture]))
    finally:
        if stalled.returncode is None:
            stalled.send_signal(signal.SIGCONT)
        await stop(stalled)
        if survivor is not None:
            await stop(survivor)
        await client.aclose()
        await fleet.close()


async def test_the_streams_bound_sheds_the_oldest_records_and_counts_them(redis_server):
    config = StreamConfig(backend="redis", url=redis_server.url, key="t:bound", maxlen=1000)
    first = StreamReader(config, "first")
    second = StreamReader(config, "second")
    await first.join()
    payloads = [msgpack.packb({"n": i}) for i in range(5000)]
    for start in range(0, 5000, 500):
        await append_records(first.client, config, payloads[start : start + 500])
    length = await first.client.xlen("t:bound")
    assert 1000 <= length < 5000  # MAXLEN ~ trims whole macro nodes: at least the bound
    # The trimmed records nobody read are counted once across the fleet.
    assert await first.trimmed() == 5000 - length
    assert await second.trimmed() == 0
    read = []
    while entries := await first.read(1000, block_ms=10):
        read.extend(entries)
    assert len(read) == length
    assert msgpack.unpackb(read[0][1]) == {"n": 5000 - length}  # the newest are kept
    assert await first.trimmed() == 0
    await first.close()
    await second.close()


async def test_the_sender_sheds_and_counts_when_its_buffer_is_full_or_redis_is_gone(
    redis_server,
):
    config = StreamConfig(backend="redis", url=redis_server.url, key="t:shed")
    shed: list[str] = []
    exchange = workload(seed=1, count=1)[0]
    size = len(msgpack.packb(record_of(exchange), use_bin_type=True))
    sender = StreamSender(config, limit_bytes=10 * size, on_shed=shed.append)
    assert not sender.offer(exchange)  # not connected yet: shed, never waited for
    assert shed == ["stream_down"]
    sender.start()
    await sender_until(sender, lambda: sender.connected)
    # One turn of the loop: the sender's task cannot run, the buffer fills to its bound.
    offered = [sender.offer(exchange) for _ in range(20)]
    assert offered.count(True) == 11 and shed.count("stream_backlog") == 9
    await sender_until(sender, lambda: sender.handed_off == 11)
    client = redis.Redis.from_url(redis_server.url)
    assert await client.xlen("t:shed") == 11
    await client.aclose()
    await redis_server.kill()
    assert sender.offer(exchange)  # buffered: found out when it is appended
    await sender_until(sender, lambda: not sender.connected)
    assert shed.count("stream_down") == 2  # that record, shed when the append failed
    before = shed.count("stream_down")
    assert not sender.offer(exchange)
    assert shed.count("stream_down") == before + 1
    # Back: it reconnects by itself (doubling back-off) and appends again.
    await redis_server.start()
    await sender_until(sender, lambda: sender.connected, timeout=20.0)
    assert sender.offer(exchange)
    assert await sender.close()
    client = redis.Redis.from_url(redis_server.url)
    assert await client.xlen("t:shed") == 1  # a restarted Redis without persistence
    await client.aclose()


async def sender_until(sender: StreamSender, done: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            sender.changed.clear()
            await sender.changed.wait()


def test_config_refuses_credentials_in_the_url_and_a_claim_idle_below_the_snapshots(tmp_path):
    path = tmp_path / "bad.toml"
    write_config(
        path,
        "redis://user:secret@127.0.0.1:6379/0",
        "k",
        stream={"claim_idle": "500ms", "view": "everything"},
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    text = str(refused.value)
    assert f"{path}: stream.url: must not carry credentials" in text
    assert f"{path}: stream.view: " in text
    write_config(path, "redis://127.0.0.1:6379/0", "k", stream={"claim_idle": "500ms"})
    with pytest.raises(ConfigError, match=r"stream.claim_idle: must be at least 1s"):
        load_config(path)


@pytest.fixture
async def services(make_backend):
    primary, candidate = make_backend(), make_backend()

    async def users(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "name": "ada"})

    for backend in (primary, candidate):
        backend.route("GET", "/users/{id}", users)
        await backend.start()
    return primary, candidate


async def admin_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as answer:
        return answer.status, await answer.json()


async def analysis_is_ready(
    session: aiohttp.ClientSession, api: str, expected: bool = True
) -> bool:
    """Whether the instance's /readyz says its analysis plane is (or is not) ready."""
    try:
        _, state = await admin_json(session, api + "/readyz")
    except aiohttp.ClientError:
        return False
    return state.get("analysis", {}).get("ready") is expected


async def until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Until another process's state (read over HTTP) meets ``condition``."""
    async with asyncio.timeout(timeout):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.05)


async def test_redis_down_production_is_served_copies_are_shed_and_it_reconnects(
    redis_server, services, tmp_path
):
    primary, candidate = services
    ingress, admin = free_port(), free_port()
    path = tmp_path / "shadowd.toml"
    write_config(
        path,
        redis_server.url,
        "t:down",
        targets__primary={"url": primary.url},
        targets__candidate={"url": candidate.url},
        ingress={"listen": f"127.0.0.1:{ingress}", "workers": 1},
        analysis={"workers": 1},
        admin={"listen": f"127.0.0.1:{admin}"},
    )
    text = path.read_text().replace('[targets.secondary]\nurl = "http://127.0.0.1:10"\n', "")
    path.write_text(text)
    daemon = ShadowdProcess(path)
    await daemon.start()
    base, api = f"http://127.0.0.1:{ingress}", f"http://127.0.0.1:{admin}"
    try:
        async with aiohttp.ClientSession() as session:

            def analysis_ready(expected: bool = True) -> Awaitable[bool]:
                return analysis_is_ready(session, api, expected)

            async def get_all(count: int) -> None:
                for i in range(count):
                    async with session.get(f"{base}/users/{i}") as answer:
                        assert answer.status == 200
                        assert await answer.json() == {"id": str(i), "name": "ada"}

            async def fleet_exchanges(count: int) -> bool:
                _, report = await admin_json(session, api + "/api/v1/report?scope=fleet")
                return report["totals"]["exchanges"] == count

            async def dropped(reason: str) -> float:
                async with session.get(api + "/metrics") as answer:
                    for line in (await answer.text()).splitlines():
                        if line.startswith(f'shadowd_mirror_dropped_total{{reason="{reason}"}}'):
                            return float(line.split()[-1])
                return 0.0

            await until(analysis_ready)
            await get_all(50)
            await until(lambda: fleet_exchanges(50))

            await redis_server.kill()
            await get_all(300)  # production is served, unchanged, with Redis gone
            await until(lambda: analysis_ready(False))
            status, state = await admin_json(session, api + "/readyz")
            assert status == 200 and state["ready"] is True  # never out of the balancer
            assert state["analysis"]["error"]
            await until(lambda: _equals(dropped("stream_down"), 300.0))
            status, problem = await admin_json(session, api + "/api/v1/report?scope=fleet")
            assert status == 200 and problem["mirroring"]["connected"] is False

            await redis_server.start()  # empty: no persistence
            await until(analysis_ready, timeout=30.0)
            await get_all(40)
            # The worker republishes its cumulative snapshot: the fleet sees all it counted.
            await until(lambda: fleet_exchanges(90), timeout=30.0)
            _, instance = await admin_json(session, api + "/api/v1/report")
            assert instance["totals"]["exchanges"] == 90
            _, verdict = await admin_json(session, api + "/api/v1/verdict?scope=fleet")
            assert verdict["exchanges"] == 90
            status, _ = await admin_json(session, api + "/api/v1/report?scope=galaxy")
            assert status == 400
        out = await finished(
            await shadowd("report", "--url", api, "--scope", "fleet", "--json"), timeout=20.0
        )
        assert '"exchanges": 90' in out
    finally:
        await daemon.kill()


async def _equals(value, expected) -> bool:  # type: ignore[no-untyped-def]
    return await value == expected


async def test_a_one_off_fleet_verdict_waits_for_the_workers_next_publication(
    redis_server, services, tmp_path
):
    # A gate right after a load test: the fleet view reads snapshots every interval, and a
    # worker publishes every interval, so the newest merge can miss the test's last seconds.
    primary, candidate = services
    ingress, admin = free_port(), free_port()
    path = write_config(
        tmp_path / "shadowd.toml",
        redis_server.url,
        "t:oneoff",
        targets__primary={"url": primary.url},
        targets__candidate={"url": candidate.url},
        ingress={"listen": f"127.0.0.1:{ingress}", "workers": 1},
        analysis={"workers": 1, "snapshot_interval": "3s"},
        stream={"claim_idle": "10s"},
        admin={"listen": f"127.0.0.1:{admin}"},
    )
    path.write_text(
        path.read_text().replace('[targets.secondary]\nurl = "http://127.0.0.1:10"\n', "")
    )
    daemon = ShadowdProcess(path)
    await daemon.start()
    base, api = f"http://127.0.0.1:{ingress}", f"http://127.0.0.1:{admin}"
    try:
        async with aiohttp.ClientSession() as session:

            async def instance_counts(count: int) -> bool:
                _, report = await admin_json(session, api + "/api/v1/report")
                return report["totals"]["exchanges"] == count

            await until(lambda: analysis_is_ready(session, api), timeout=30.0)
            for i in range(50):
                async with session.get(f"{base}/users/{i}") as answer:
                    assert answer.status == 200
            await until(lambda: instance_counts(50), timeout=30.0)  # all 50 diffed
            # at once, a one-off caller: judged after the worker's next publication
            _, verdict = await admin_json(session, api + "/api/v1/verdict?scope=fleet")
            assert verdict["exchanges"] == 50
    finally:
        await daemon.kill()


async def test_two_instances_on_one_stream_show_the_same_fleet_view(
    redis_server, services, tmp_path
):
    primary, candidate = services
    daemons, ingress, admin = [], [], []
    for name, view in (("a", "instance"), ("b", "fleet")):
        ingress.append(free_port())
        admin.append(free_port())
        path = write_config(
            tmp_path / f"{name}.toml",
            redis_server.url,
            "t:two",
            targets__primary={"url": primary.url},
            targets__candidate={"url": candidate.url},
            ingress={"listen": f"127.0.0.1:{ingress[-1]}", "workers": 1},
            analysis={"workers": 1},
            admin={"listen": f"127.0.0.1:{admin[-1]}"},
            stream={"view": view},
        )
        path.write_text(
            path.read_text().replace('[targets.secondary]\nurl = "http://127.0.0.1:10"\n', "")
        )
        daemons.append(ShadowdProcess(path))
        await daemons[-1].start()
    a, b = (f"http://127.0.0.1:{port}" for port in admin)
    try:
        async with aiohttp.ClientSession() as session:

            async def both_ready() -> bool:
                for api in (a, b):
                    try:
                        _, state = await admin_json(session, api + "/readyz")
                    except aiohttp.ClientError:
                        return False
                    if not state.get("analysis", {}).get("ready"):
                        return False
                return True

            await until(both_ready, timeout=30.0)
            for port, count in zip(ingress, (60, 40), strict=True):
                for i in range(count):
                    async with session.get(f"http://127.0.0.1:{port}/users/{i}") as answer:
                        assert answer.status == 200

            async def fleet_counts_everything() -> bool:
                _, report = await admin_json(session, a + "/api/v1/report?scope=fleet")
                _, default_b = await admin_json(session, b + "/api/v1/report")
                return report["totals"]["exchanges"] == default_b["totals"]["exchanges"] == 100

            await until(fleet_counts_everything, timeout=30.0)
            # Any instance serves the same fleet view; [stream] view = "fleet" makes it the
            # default (b), ?scope=instance still gives each instance its own share.
            _, fleet_a = await admin_json(session, a + "/api/v1/report?scope=fleet")
            _, fleet_b = await admin_json(session, b + "/api/v1/report")
            assert comparable(fleet_a) == comparable(fleet_b)
            _, own_a = await admin_json(session, a + "/api/v1/report")
            _, own_b = await admin_json(session, b + "/api/v1/report?scope=instance")
            assert own_a["totals"]["exchanges"] + own_b["totals"]["exchanges"] == 100
            _, verdict_a = await admin_json(session, a + "/api/v1/verdict?scope=fleet")
            _, verdict_b = await admin_json(session, b + "/api/v1/verdict")
            assert verdict_a["exchanges"] == verdict_b["exchanges"] == 100
            assert verdict_a["verdict"] == verdict_b["verdict"]
            async with session.get(b + "/metrics") as answer:
                text = await answer.text()
            acknowledged = [
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith('shadowd_stream_records_total{how="acknowledged"}')
            ]
            assert acknowledged == [100.0]  # both workers' series, summed by the fleet's /metrics
    finally:
        for daemon in daemons:
            await daemon.kill()


def test_a_reload_does_not_change_the_stream_it_needs_a_restart(tmp_path):
    from shadowd.ingress.plane import restart_only_changes

    old = load_config(write_config(tmp_path / "old.toml", "redis://127.0.0.1:1/0", "k1"))
    new = load_config(write_config(tmp_path / "new.toml", "redis://127.0.0.1:2/0", "k2"))
    applied, restart_only = restart_only_changes(old, new)
    assert restart_only == ["stream"]
    assert applied.stream == old.stream


# -- the fleet view process ---------------------------------------------------------------


async def fleet_daemon(
    tmp_path: Path, redis_url: str, key: str, primary: Any, candidate: Any
) -> tuple[ShadowdProcess, str, str]:
    """``shadowd run`` on the stream ``key``: the daemon, its ingress URL and admin URL."""
    ingress, admin = free_port(), free_port()
    path = write_config(
        tmp_path / "shadowd.toml",
        redis_url,
        key,
        targets__primary={"url": primary.url},
        targets__candidate={"url": candidate.url},
        ingress={"listen": f"127.0.0.1:{ingress}", "workers": 1},
        analysis={"workers": 1},
        admin={"listen": f"127.0.0.1:{admin}"},
    )
    path.write_text(
        path.read_text().replace('[targets.secondary]\nurl = "http://127.0.0.1:10"\n', "")
    )
    daemon = ShadowdProcess(path)
    await daemon.start()
    return daemon, f"http://127.0.0.1:{ingress}", f"http://127.0.0.1:{admin}"


def process_stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: [0] state, [1] ppid, [16] nice."""
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def fleet_process_of(daemon: ShadowdProcess) -> int | None:
    """The pid of the daemon's fleet view process (a zombie has no command line: None)."""
    return child_of(daemon, b"shadowd.stream.fleet_process")


def child_of(daemon: ShadowdProcess, module: bytes) -> int | None:
    """The pid of the daemon's child running ``module`` (a zombie has no command line)."""
    assert daemon.process is not None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(process_stat(int(entry.name))[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == daemon.process.pid and module in command:
            return int(entry.name)
    return None


async def fleet_process_started(daemon: ShadowdProcess, other_than: int | None = None) -> int:
    found: list[int] = []

    async def running() -> bool:
        pid = fleet_process_of(daemon)
        if pid is not None and pid != other_than:
            found.append(pid)
        return bool(found)

    await until(running)
    return found[0]


async def fleet_report(session: aiohttp.ClientSession, api: str) -> tuple[int, Any, float]:
    """The status, body and seconds of one ``GET /api/v1/report?scope=fleet``."""
    began = asyncio.get_running_loop().time()
    status, body = await admin_json(session, api + "/api/v1/report?scope=fleet")
    return status, body, asyncio.get_running_loop().time() - began


async def mirror_and_count(session: aiohttp.ClientSession, base: str, api: str) -> None:
    """Twenty requests through the proxy, until the fleet's report counts them."""
    for i in range(20):
        async with session.get(f"{base}/users/{i}") as answer:
            assert answer.status == 200

    async def counted() -> bool:
        status, report, _ = await fleet_report(session, api)
        return status == 200 and report["totals"]["exchanges"] == 20

    await until(counted, timeout=30.0)


async def test_a_stalled_fleet_process_answers_503_in_time_and_the_rest_of_the_api_at_once(
    redis_server, services, tmp_path
):
    from shadowd.stream.fleet_client import REQUEST_TIMEOUT
    from shadowd.view.process import NICE

    daemon, base, api = await fleet_daemon(tmp_path, redis_server.url, "t:stall", *services)
    child = None
    try:
        async with aiohttp.ClientSession() as session:
            child = await fleet_process_started(daemon)
            await mirror_and_count(session, base, api)
            # the view process's priority: NICE below the supervisor's (which other tests of
            # this session may have lowered already)
            supervisor = int(process_stat(daemon.process.pid)[16])  # type: ignore[union-attr]
            assert int(process_stat(child)[16]) == min(19, supervisor + NICE)
            os.kill(child, signal.SIGSTOP)

            async def stopped() -> bool:
                return process_stat(child)[0] == "T"

            await until(stopped)
            asking = asyncio.create_task(fleet_report(session, api))
            # Nothing of the fleet's runs on the supervisor's loop: it answers at once.
            for path in ("/healthz", "/metrics"):
                async with asyncio.timeout(2.0), session.get(api + path) as answer:
                    assert answer.status == 200, path
            assert not asking.done()
            # The instance's own report and verdict come from its view process, not the
            # fleet's (a one-off caller waits for a current build: long on a busy host).
            for path in ("/api/v1/report", "/api/v1/verdict"):
                async with asyncio.timeout(30.0), session.get(api + path) as answer:
                    assert answer.status == 200, path
            status, problem, took = await asking
            assert status == 503
            assert problem["error"] == (
                f"the fleet view process did not answer within {REQUEST_TIMEOUT:g} s"
            )
            assert REQUEST_TIMEOUT - 0.5 <= took < REQUEST_TIMEOUT + 10.0  # a busy host
            os.kill(child, signal.SIGCONT)  # going on where it stopped, it answers again
            status, report, _ = await fleet_report(session, api)
            assert status == 200 and report["totals"]["exchanges"] == 20
            assert fleet_process_of(daemon) == child
    finally:
        if child is not None and fleet_process_of(daemon) == child:
            os.kill(child, signal.SIGKILL)  # a stopped child would outlive the daemon
        await daemon.kill()


async def test_a_supervisor_killed_with_sigkill_takes_its_view_and_fleet_processes_along(
    redis_server, services, tmp_path
):
    """They serve only the supervisor: left behind, they held its stderr open (a caller
    waiting for that pipe waited forever) and their Redis connections. Stopped here, so that
    they cannot notice the end of their input: whatever they are doing, they go along."""
    daemon, _, api = await fleet_daemon(tmp_path, redis_server.url, "t:orphans", *services)
    children: list[int] = []
    try:
        children.append(await fleet_process_started(daemon))
        async with aiohttp.ClientSession() as session:
            status, _ = await admin_json(session, api + "/api/v1/report")
            assert status == 200  # the view process is up
        view = child_of(daemon, b"shadowd.view.process")
        assert view is not None
        children.append(view)
        for pid in children:
            os.kill(pid, signal.SIGSTOP)
        daemon.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]

        async def all_gone() -> bool:
            return not any(alive(pid) for pid in children)

        await until(all_gone, timeout=10.0)
    finally:
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        await daemon.kill()


def alive(pid: int) -> bool:
    try:
        return process_stat(pid)[0] != "Z"
    except OSError:
        return False


async def test_a_killed_fleet_process_is_replaced_and_the_new_one_reads_the_fleet_again(
    redis_server, services, tmp_path
):
    daemon, base, api = await fleet_daemon(tmp_path, redis_server.url, "t:respawn", *services)
    try:
        async with aiohttp.ClientSession() as session:
            child = await fleet_process_started(daemon)
            await mirror_and_count(session, base, api)
            os.kill(child, signal.SIGKILL)
            replacement = await fleet_process_started(daemon, other_than=child)
            assert replacement != child

            async def counted_again() -> bool:
                status, report, _ = await fleet_report(session, api)
                assert status in (200, 503), report  # 503 only until the new one answers
                return status == 200 and report["totals"]["exchanges"] == 20

            await until(counted_again, timeout=30.0)
            # the new one serves every route of the fleet's scope
            _, verdict = await admin_json(session, api + "/api/v1/verdict?scope=fleet")
            assert verdict["exchanges"] == 20
            _, report, _ = await fleet_report(session, api)
            endpoint = report["endpoints"][0]["id"]
            status, found = await admin_json(
                session, f"{api}/api/v1/endpoints/{endpoint}/samples?scope=fleet"
            )
            assert status == 200 and found["exchanges"] == 20
            status, _ = await admin_json(
                session, api + "/api/v1/endpoints/nope/samples?scope=fleet"
            )
            assert status == 404
            async with session.get(api + "/metrics?scope=fleet") as answer:
                assert answer.status == 200
                text = await answer.text()
            assert 'shadowd_stream_records_total{how="acknowledged"} 20.0' in text
            async with session.get(api + "/metrics") as answer:  # this instance's
                assert 'shadowd_worker_restarts_total{role="fleet"} 1.0' in await answer.text()
            assert f'shadowd_verdict{{verdict="{verdict["verdict"]}"}} 1.0' in text  # its gauges
            async with session.post(
                api + "/api/v1/reset?scope=fleet", json={}, headers={"Origin": api}
            ) as answer:
                assert answer.status == 200
                assert await answer.json() == {
                    "cleared": {"exchanges": 20, "endpoints": 1},
                    "scope": "fleet",
                }
            status, report, _ = await fleet_report(session, api)
            assert status == 200 and report["totals"]["exchanges"] == 0
    finally:
        await daemon.kill()
    assert "fleet view process exited" in await daemon.output()


def test_the_fleet_process_splices_the_status_into_the_report_it_serialised_once(tmp_path):
    import json

    import orjson

    from shadowd.stream.fleet_process import FleetServer

    config = load_config(write_config(tmp_path / "fleet.toml", "redis://127.0.0.1:1/0", "k"))
    server = FleetServer(config)
    status = {"enabled": False, "queue_depth": 3}
    body = server._report(status, 0.0)
    objects: list[list[tuple[str, Any]]] = []
    json.loads(body, object_pairs_hook=lambda pairs: objects.append(pairs) or dict(pairs))
    assert all(len(dict(pairs)) == len(pairs) for pairs in objects)  # no key twice
    # the same bytes as serialising the whole report, the status current
    assert body == orjson.dumps(server.fleet.report(status), option=orjson.OPT_NON_STR_KEYS)
    mirroring = orjson.loads(body)["mirroring"]
    assert mirroring["enabled"] is False and mirroring["scope"] == "fleet"

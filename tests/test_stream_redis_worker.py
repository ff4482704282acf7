"""``shadowd worker`` as systemd runs it: its unit, its notify protocol while Redis comes and
goes, and a SIGTERM that publishes (acknowledges) everything it took before it exits."""

from __future__ import annotations

import asyncio
import configparser
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import redis.asyncio as redis
from realpeers import free_port
from test_snapshot_merge import workload
from test_stream_redis import (
    RedisServer,
    finished,
    shadowd,
    stop,
    write_capture,
    write_config,
)

from shadowd.capture.reader import read_capture
from shadowd.config import load_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]  # real processes, busy hosts

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "shadowd-worker.service"


def test_worker_unit_runs_shadowd_worker_hardened_and_of_type_notify():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"] == "/usr/local/bin/shadowd worker -c /etc/shadowd/shadowd.toml"
    for key, value in (
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("KillSignal", "SIGTERM"),
    ):
        assert service[key] == value, key


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    async def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                message = (await loop.sock_recv(self.sock, 4096)).decode()
                if needle in message:
                    return message


async def test_worker_is_ready_without_redis_says_so_and_reads_once_it_is_there(tmp_path):
    server = RedisServer(free_port())
    config_path = write_config(tmp_path / "w.toml", server.url, "t:notify")
    notify = NotifySocket(tmp_path / "notify")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadowd",
        "worker",
        "-c",
        str(config_path),
        env={**os.environ, "NOTIFY_SOCKET": str(notify.path)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert "READY=1" in await notify.wait_for("READY=1")
        assert "Redis unreachable" in await notify.wait_for("Redis unreachable")
        await server.start()
        assert "reading t:notify" in await notify.wait_for("STATUS=reading", timeout=30.0)
    finally:
        await stop(process)
        await server.kill()
        notify.sock.close()


async def test_sigterm_publishes_acknowledges_and_records_everything_taken_before_exit(
    tmp_path,
):
    server = RedisServer(free_port())
    await server.start()
    try:
        config_path = write_config(
            tmp_path / "w.toml",
            server.url,
            "t:term",
            analysis={"snapshot_interval": "60s"},
            stream={"claim_idle": "180s"},
            capture={"path": str(tmp_path / "live.shadow")},
        )
        config = load_config(config_path)
        capture = write_capture(tmp_path / "c.shadow", workload(seed=9, count=300))
        await finished(await shadowd("publish", str(capture), "-c", str(config_path)))
        worker = await shadowd("worker", "-c", str(config_path), "--consumer", "w")
        client = redis.Redis.from_url(server.url)
        try:
            # It has read them all (nothing left to deliver) and, with a 60 s interval, has
            # published none of them yet.
            async with asyncio.timeout(45.0):
                while True:
                    groups = await client.xinfo_groups("t:term")
                    if groups and groups[0]["entries-read"] == 300:
                        break
                    await asyncio.sleep(0.05)
            assert (await client.xpending("t:term", config.stream.group))["pending"] > 0
            worker.send_signal(signal.SIGTERM)
            await finished(worker, timeout=45.0)
            assert (await client.xpending("t:term", config.stream.group))["pending"] == 0
            snapshots = await client.hgetall("t:term:fleet:snapshots")
            assert list(snapshots) == [b"w"]
            # [capture] holds: the worker recorded what it took, in a file of its own.
            assert sum(1 for _ in read_capture(tmp_path / "live.w.shadow")) == 300
        finally:
            await stop(worker)
            await client.aclose()
    finally:
        await server.kill()

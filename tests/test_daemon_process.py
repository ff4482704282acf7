"""`shadowd run` as a real process: systemd notify, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from realpeers import ShadowdProcess, free_port, wait_for_port

pytestmark = pytest.mark.integration


def write_config(
    path: Path, primary: str, candidate: str, ingress: int, admin: int, sample_rate: float = 1.0
) -> None:
    path.write_text(
        f"""
[ingress]
mode = "proxy"
listen = "127.0.0.1:{ingress}"

[targets.primary]
url = "{primary}"

[targets.candidate]
url = "{candidate}"

[mirror]
sample_rate = {sample_rate}

[admin]
listen = "127.0.0.1:{admin}"
"""
    )


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)

    async def receive(self, timeout: float = 10.0) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            data = await loop.sock_recv(self.sock, 4096)
        return data.decode()

    async def wait_for(self, needle: str, timeout: float = 10.0) -> list[str]:
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                message = await self.receive(timeout)
                seen.append(message)
                if needle in message:
                    return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def services(make_backend):
    release = asyncio.Event()
    primary, candidate = make_backend(), make_backend()

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"slow": True})

    for backend in (primary, candidate):
        backend.route("GET", "/fast", fast)
        backend.route("GET", "/slow", slow)
        await backend.start()
    yield primary, candidate, release
    release.set()


async def test_ready_reload_and_graceful_stop(services, tmp_path):
    primary, candidate, release = services
    ingress, admin = free_port(), free_port()
    config = tmp_path / "shadowd.toml"
    write_config(config, primary.url, candidate.url, ingress, admin)
    notify = NotifySocket(tmp_path)
    daemon = ShadowdProcess(
        config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
    )
    await daemon.start()
    try:
        assert any("READY=1" in m for m in await notify.wait_for("READY=1"))
        await notify.wait_for("WATCHDOG=1")  # pinged every WATCHDOG_USEC / 2
        base = f"http://127.0.0.1:{ingress}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/fast") as answer:
                assert answer.status == 200
            await candidate.wait_for_requests(1)

            # An invalid config is refused; the daemon keeps serving with the old one.
            config.write_text("[ingress]\nlisten = 'nonsense'\n")
            daemon.process.send_signal(signal.SIGHUP)
            await notify.wait_for("reload refused")
            async with session.get(base + "/fast") as answer:
                assert answer.status == 200
            await candidate.wait_for_requests(2)

            # A valid one applies without a restart: sampling off, no more copies.
            write_config(config, primary.url, candidate.url, ingress, admin, sample_rate=0.0)
            daemon.process.send_signal(signal.SIGHUP)
            await notify.wait_for("reloaded")
            async with session.get(base + "/fast") as answer:
                assert answer.status == 200
            assert len(candidate.seen) == 2

            # SIGTERM during a slow request: it still completes, then the process exits 0.
            in_flight = asyncio.ensure_future(session.get(base + "/slow"))
            await primary.wait_for_requests(4)
            daemon.process.send_signal(signal.SIGTERM)
            await notify.wait_for("STOPPING=1")
            release.set()
            answer = await in_flight
            assert answer.status == 200
            assert await answer.json() == {"slow": True}
            answer.release()
        assert await daemon.wait() == 0
    finally:
        await daemon.kill()
        notify.close()


async def test_invalid_config_is_refused_before_listening(tmp_path):
    port = free_port()
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[ingress]\nlisten = "127.0.0.1:{port}"\nmode = "sideways"\n'
        '[targets.primary]\nurl = "http://127.0.0.1:1"\n'
    )
    daemon = ShadowdProcess(config)
    await daemon.start()
    code = await daemon.wait()
    output = await daemon.output()
    assert code != 0
    assert f"{config}: ingress.mode:" in output
    assert f"{config}: targets.candidate" in output
    with pytest.raises(OSError):
        await wait_for_port(port, timeout=0.2)


async def test_a_second_signal_stops_at_once(services, tmp_path):
    primary, candidate, release = services
    ingress, admin = free_port(), free_port()
    config = tmp_path / "shadowd.toml"
    write_config(config, primary.url, candidate.url, ingress, admin)
    notify = NotifySocket(tmp_path)
    daemon = ShadowdProcess(config, env={"NOTIFY_SOCKET": str(notify.path)})
    await daemon.start()
    try:
        await notify.wait_for("READY=1")
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.ensure_future(session.get(f"http://127.0.0.1:{ingress}/slow"))
            await primary.wait_for_requests(1)
            daemon.process.send_signal(signal.SIGTERM)
            await notify.wait_for("STOPPING=1")  # draining: the slow request holds it up
            daemon.process.send_signal(signal.SIGTERM)
            assert await daemon.wait(timeout=5) == 1  # no waiting for the drain deadline
            with pytest.raises(aiohttp.ClientError):
                await in_flight
    finally:
        release.set()
        await daemon.kill()
        notify.close()

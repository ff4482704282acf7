"""Fixtures that start real servers on loopback in one line: sample targets and shadowd."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from shadowd.config import (
    AdminConfig,
    AnalysisConfig,
    Config,
    DiffConfig,
    IngressConfig,
    Listen,
    LoggingConfig,
    MirrorConfig,
    NoiseConfig,
    VerdictConfig,
    target_from_url,
)

if TYPE_CHECKING:
    from shadowd.daemon import Daemon
    from shadowd.exchange import Exchange

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture(autouse=True)
def _test_session_priority_is_left_alone():
    """A CLI command run in this process (``shadowd replay`` lowers its own priority once
    its senders run) must not leave the test session slower, and every process the later
    tests start at a lowered priority too."""
    before = os.nice(0)
    yield
    assert os.nice(0) == before, "this test lowered the test session's CPU priority"


class Backend:
    """An aiohttp server on 127.0.0.1:<free port> that records the requests it saw."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.seen: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.requests_seen = asyncio.Event()

    def route(self, method: str, path: str, handler: Handler) -> None:
        async def recording(request: web.Request) -> web.StreamResponse:
            self.seen.append(
                {
                    "method": request.method,
                    "path_qs": request.path_qs,
                    "headers": request.headers.copy(),
                    "body": await request.read(),
                    "peer": request.transport.get_extra_info("peername")
                    if request.transport
                    else None,
                }
            )
            self.requests_seen.set()
            return await handler(request)

        self.app.router.add_route(method, path, recording)

    async def start(self) -> str:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                self.requests_seen.clear()
                await self.requests_seen.wait()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def make_backend() -> AsyncIterator[Callable[[], Backend]]:
    backends: list[Backend] = []

    def make() -> Backend:
        backend = Backend()
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        await backend.close()


class RunningShadowd:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.exchanges: list[Exchange] = []  # every completed exchange, in delivery order
        daemon.exchange_listeners.append(self.exchanges.append)
        host, port = daemon.ingress_address
        self.url = f"http://{host}:{port}"
        ahost, aport = daemon.admin_address
        self.admin_url = f"http://{ahost}:{aport}"

    async def settled(self, exchanges: int, timeout: float = 5.0) -> None:
        """Until ``exchanges`` exchanges have been diffed and aggregated."""
        async with asyncio.timeout(timeout):
            while self.daemon.diff_stage.diffed < exchanges:
                await self.daemon.diff_stage.wait_idle(timeout)
                if self.daemon.diff_stage.diffed < exchanges:
                    await asyncio.sleep(0.005)


def build_config(
    primary: str,
    candidate: str,
    secondary: str | None = None,
    *,
    ingress: dict[str, Any] | None = None,
    analysis: dict[str, Any] | None = None,
    mirror: dict[str, Any] | None = None,
    diff: dict[str, Any] | None = None,
    primary_options: dict[str, Any] | None = None,
    candidate_options: dict[str, Any] | None = None,
    admin: dict[str, Any] | None = None,
    verdict: dict[str, Any] | None = None,
    logging: dict[str, Any] | None = None,
    noise: dict[str, Any] | None = None,
) -> Config:
    return Config(
        source="<test>",
        primary=target_from_url("primary", primary, **(primary_options or {})),
        candidate=target_from_url("candidate", candidate, **(candidate_options or {})),
        secondary=target_from_url("secondary", secondary) if secondary else None,
        ingress=dataclasses.replace(
            IngressConfig(listen=Listen("127.0.0.1", 0)), **(ingress or {})
        ),
        analysis=dataclasses.replace(AnalysisConfig(), **(analysis or {})),
        mirror=dataclasses.replace(MirrorConfig(), **(mirror or {})),
        diff=dataclasses.replace(DiffConfig(), **(diff or {})),
        noise=dataclasses.replace(NoiseConfig(), **(noise or {})),
        admin=AdminConfig(listen=Listen("127.0.0.1", 0), **(admin or {})),
        verdict=dataclasses.replace(VerdictConfig(), **(verdict or {})),
        logging=dataclasses.replace(LoggingConfig(), **(logging or {})),
    )


@pytest.fixture
async def start_shadowd() -> AsyncIterator[Callable[..., Awaitable[RunningShadowd]]]:
    # Imported here: conftest must load even while a stage is being rewritten.
    from shadowd.daemon import Daemon

    daemons: list[Daemon] = []

    async def start(*args: Any, **kwargs: Any) -> RunningShadowd:
        daemon = Daemon(build_config(*args, **kwargs))
        await daemon.start()
        daemons.append(daemon)
        return RunningShadowd(daemon)

    yield start
    for daemon in daemons:
        await daemon.stop(grace=2.0)

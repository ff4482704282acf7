"""The supervisor's verdict: judged on a timer from a snapshot, in a process of its own.

The judgement's statistics (bootstrap intervals, rank tests) cost tens of milliseconds per
endpoint: seconds of CPU with hundreds of endpoints. They run in one child process
(``judge_process``) at the lowest CPU priority (nice 19), so on a busy host the data plane
always wins the core, and never on the loop that serves the admin API.
``GET /api/v1/verdict`` answers the newest judgement at once; it waits only when the
statistics changed since and no judgement of them exists yet (the first call, or right
after a reset). The verdict gauges follow every judgement, so they move without anybody
asking for the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
from collections.abc import Callable
from typing import Any

from shadowd.config import Config
from shadowd.processes import start_module
from shadowd.verdict.evidence import VerdictEvidence
from shadowd.verdict.judge import Verdict, judge
from shadowd.verdict.judge_process import LENGTH

log = logging.getLogger("shadowd.verdict")

JUDGE_EVERY = 5.0  # seconds between judgements while the statistics change
STALE_AFTER = 30.0  # an answer older than this waits for a fresh judgement


def _judge_frozen(report: dict[str, Any], evidence: bytes, config: Config) -> Verdict:
    return judge(report, pickle.loads(evidence), config)


class JudgeProcess:
    """A long-lived child that judges (``shadowd.verdict.judge_process``): started on first
    use, started again if it dies, killed on close. A plain subprocess rather than a
    ``ProcessPoolExecutor``: closing must never wait for a judgement in progress."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def judge(self, report: dict[str, Any], evidence: bytes, config: Config) -> Verdict:
        async with self._lock:  # one judgement at a time
            process = self._process
            if process is None or process.returncode is not None:
                process = self._process = await start_module(
                    "shadowd.verdict.judge_process",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            assert process.stdin is not None and process.stdout is not None
            request = pickle.dumps((report, pickle.loads(evidence), config))
            process.stdin.write(LENGTH.pack(len(request)) + request)
            await process.stdin.drain()
            head = await process.stdout.readexactly(LENGTH.size)
            (length,) = LENGTH.unpack(head)
            verdict: Verdict = pickle.loads(await process.stdout.readexactly(length))
            return verdict

    async def close(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


class ScheduledVerdict:
    def __init__(
        self,
        snapshot: Callable[[], tuple[dict[str, Any], VerdictEvidence, Config]],
        version: Callable[[], tuple[int, int]],
        publish: Callable[[Verdict], None],
    ) -> None:
        """``snapshot()`` gives (report, evidence, config) as they stand; ``version()`` a
        value that changes with the statistics (generation, merges); ``publish`` gets each
        new verdict (the gauges)."""
        self._snapshot = snapshot
        self._version = version
        self._publish = publish
        self._judge_process: JudgeProcess | None = None
        self._latest: Verdict | None = None
        self._latest_version: tuple[int, int] | None = None
        self._latest_at = 0.0
        self._running: asyncio.Task[Verdict] | None = None
        self._timer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._judge_process = JudgeProcess()
        self._timer = asyncio.get_running_loop().create_task(self._every(), name="verdict-timer")
        self._judge_soon()

    async def close(self) -> None:
        for task in (self._timer, self._running):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._judge_process is not None:
            await self._judge_process.close()

    async def current(self) -> Verdict:
        version = self._version()
        latest = self._latest
        if latest is not None and self._latest_version == version:
            return latest
        if (
            latest is not None
            and self._latest_version is not None
            and self._latest_version[0] == version[0]  # no reset since
            and time.monotonic() - self._latest_at < STALE_AFTER
        ):
            self._judge_soon()
            return latest
        return await asyncio.shield(self._judge_soon())

    async def judge_now(self) -> Verdict:
        """A judgement of the statistics as they stand now (after any one under way)."""
        if self._running is not None and not self._running.done():
            with contextlib.suppress(Exception):
                await self._running
        return await self._judge_soon()

    def _judge_soon(self) -> asyncio.Task[Verdict]:
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._judge(), name="judge")
        return self._running

    async def _judge(self) -> Verdict:
        version = self._version()
        report, evidence, config = self._snapshot()
        # Frozen now: the supervisor keeps merging into ``evidence`` while the judge works.
        frozen = pickle.dumps(evidence)
        if self._judge_process is None:
            verdict = await asyncio.to_thread(_judge_frozen, report, frozen, config)
        else:
            verdict = await self._judge_process.judge(report, frozen, config)
        if self._version()[0] == version[0]:  # a reset during the judgement voids it
            self._latest, self._latest_version = verdict, version
            self._latest_at = time.monotonic()
            self._publish(verdict)
        return verdict

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(JUDGE_EVERY)
            if self._latest_version != self._version():
                try:
                    await self._judge_soon()
                except Exception:  # a failed judgement is logged; the next one may succeed
                    log.exception("judging the verdict failed")

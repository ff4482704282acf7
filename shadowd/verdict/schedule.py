"""The supervisor's verdict: judged on a timer from a snapshot, in a process of its own.

The judgement's statistics (bootstrap intervals, rank tests) cost tens of milliseconds per
endpoint: seconds of CPU with hundreds of endpoints. They run in one child process at the
lowest CPU priority (nice 19), so on a busy host the data plane always wins the core, and
never on the loop that serves the admin API. ``GET /api/v1/verdict`` answers the newest
judgement at once; it waits only when the statistics changed since and no judgement of them
exists yet (the first call, or right after a reset). The verdict gauges follow every
judgement, so they move without anybody asking for the verdict.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from typing import Any

from shadowd.config import Config
from shadowd.verdict.evidence import VerdictEvidence
from shadowd.verdict.judge import Verdict, judge

log = logging.getLogger("shadowd.verdict")

JUDGE_EVERY = 5.0  # seconds between judgements while the statistics change
STALE_AFTER = 30.0  # an answer older than this waits for a fresh judgement


def _lowest_priority() -> None:
    try:
        os.nice(19)
    except OSError:  # refused (a seccomp filter): judge at the default priority
        log.info("the verdict's process could not lower its CPU priority")


def _judge_frozen(report: dict[str, Any], evidence: bytes, config: Config) -> Verdict:
    return judge(report, pickle.loads(evidence), config)


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
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._latest: Verdict | None = None
        self._latest_version: tuple[int, int] | None = None
        self._latest_at = 0.0
        self._running: asyncio.Task[Verdict] | None = None
        self._timer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_lowest_priority,
        )
        self._timer = asyncio.get_running_loop().create_task(self._every(), name="verdict-timer")
        self._judge_soon()

    async def close(self) -> None:
        for task in (self._timer, self._running):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

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

    def _judge_soon(self) -> asyncio.Task[Verdict]:
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._judge(), name="judge")
        return self._running

    async def _judge(self) -> Verdict:
        version = self._version()
        report, evidence, config = self._snapshot()
        loop = asyncio.get_running_loop()
        # Frozen now: the supervisor keeps merging into ``evidence`` while the judge works.
        frozen = pickle.dumps(evidence)
        if self._pool is None:
            verdict = await asyncio.to_thread(_judge_frozen, report, frozen, config)
        else:
            verdict = await loop.run_in_executor(self._pool, _judge_frozen, report, frozen, config)
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

"""The supervisor's verdict: judged on a timer, off the loop that serves the admin API.

The judgement's statistics (bootstrap intervals, rank tests) cost tens of milliseconds per
endpoint: seconds of CPU with hundreds of endpoints. The supervisor judges in its view
process (``shadowd.view``), at a lower CPU priority, so on a busy host the data plane
always wins the core, and never on the loop that serves the admin API.
A poller of ``GET /api/v1/verdict`` (a caller who asked within ``POLL_WINDOW``: the
dashboard, a scraper every 100 ms; callers are told apart by address and User-Agent) gets
the newest judgement at once and a new one at most every ``JUDGE_EVERY``. Anyone else, a
one-off ``shadowd verdict`` after a load test or a rollout gate asking once a minute, waits
for a judgement of every delta merged before the call: the newest one may be seconds old
and have judged none of that traffic. It waits ``ONE_OFF_WAIT`` at most, then gets the
newest, so a rollout gate's 10 s timeout is never spent waiting on a busy host. Everyone
waits right after a reset. The verdict gauges follow every judgement, so they move without
anybody asking for the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from shadowd.verdict.judge import Verdict

log = logging.getLogger("shadowd.verdict")

JUDGE_EVERY = 5.0  # seconds between judgements while the statistics change
STALE_AFTER = 30.0  # an answer older than this waits for a fresh judgement
POLL_WINDOW = 2 * JUDGE_EVERY  # asked again within this, a caller is a poller
CALLERS_KEPT = 64  # callers whose last call is remembered (the oldest are forgotten first)
ONE_OFF_WAIT = 5.0  # a one-off caller waits this long for a fresh judgement, then the newest


class ScheduledVerdict:
    def __init__(
        self,
        judge: Callable[[], Awaitable[Verdict]],
        version: Callable[[], tuple[int, int]],
        publish: Callable[[Verdict], None],
        catch_up: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``judge()`` judges the statistics as they stand (every delta merged before the
        call); ``version()`` a value that changes with the statistics (generation,
        merges); ``publish`` gets each new verdict (the gauges); ``catch_up()``, awaited
        before a one-off caller's judgement, has the statistics' sources publish what
        they hold."""
        self._judge_statistics = judge
        self._version = version
        self._publish = publish
        self._catch_up = catch_up
        self._latest: Verdict | None = None
        self._latest_version: tuple[int, int] | None = None
        self._latest_at = 0.0
        self._asked_at: dict[str, float] = {}  # caller -> monotonic time of its last call
        self._running: asyncio.Task[Verdict] | None = None
        self._timer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().create_task(self._every(), name="verdict-timer")
        self._judge_soon()

    async def close(self) -> None:
        for task in (self._timer, self._running):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def current(self, caller: str = "") -> Verdict:
        version = self._version()
        latest = self._latest
        now = time.monotonic()
        polling = self._asked(caller, now)
        if latest is not None and self._latest_version == version:
            return latest
        if (
            polling
            and latest is not None
            and self._latest_version is not None
            and self._latest_version[0] == version[0]  # no reset since
            and now - self._latest_at < STALE_AFTER
        ):
            # A poller gets the newest judgement and asks for a new one at most every
            # JUDGE_EVERY: judging the moment anyone asks kept the view process judging
            # back to back, ~0.3 cores of a busy host.
            if now - self._latest_at >= JUDGE_EVERY:
                self._judge_soon()
            return latest
        try:
            async with asyncio.timeout(ONE_OFF_WAIT):
                if self._catch_up is not None:
                    await self._catch_up()
                    version = self._version()
                return await self._judgement_including(version)
        except TimeoutError:
            # A gate gives up after 10 s (Argo's and Flagger's default) and reads that as
            # an error: on a host too busy to judge in time, the newest judgement (its
            # judged_at says how old) beats none. Without one, wait: there is nothing else.
            judged = self._latest_version
            if self._latest is not None and judged is not None and judged[0] == self._version()[0]:
                return self._latest
            return await self._judgement_including(self._version())

    def _asked(self, caller: str, now: float) -> bool:
        """Note ``caller``'s call; whether it is a poller (it asked within POLL_WINDOW)."""
        asked = self._asked_at
        polling = now - asked.pop(caller, now - POLL_WINDOW) < POLL_WINDOW
        asked[caller] = now  # last: the dict is ordered from the least recent caller
        while len(asked) > CALLERS_KEPT:
            del asked[next(iter(asked))]
        return polling

    async def _judgement_including(self, version: tuple[int, int]) -> Verdict:
        """A judgement of at least ``version``'s statistics: one under way may have begun
        before the deltas the caller is asking about were merged."""
        while True:
            verdict = await asyncio.shield(self._judge_soon())
            judged = self._latest_version
            if self._version()[0] != version[0]:  # a reset since: the new statistics' will do
                return verdict
            if judged is not None and judged[0] == version[0] and judged[1] >= version[1]:
                return verdict

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
        verdict = await self._judge_statistics()
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

"""The scheduled verdict: pollers get the newest judgement and never keep the judge busy."""

from __future__ import annotations

import asyncio
import time

import pytest

from shadowd.verdict import schedule

_real_monotonic = time.monotonic


class Clock:
    """The monotonic clock moved forward by hand. It keeps running underneath: asyncio's
    loop reads the same clock, and its timeouts and sleeps must still end."""

    def __init__(self) -> None:
        self.offset = 1000.0

    @property
    def now(self) -> float:
        return _real_monotonic() + self.offset

    @now.setter
    def now(self, value: float) -> None:
        self.offset += value - self.now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(schedule.time, "monotonic", fake)
    return fake


class Statistics:
    """The judged side: a version that moves with every merge, and a counting judge."""

    def __init__(self) -> None:
        self.generation, self.merges = 0, 0
        self.judged = 0
        self.published: list[object] = []

    def version(self) -> tuple[int, int]:
        return self.generation, self.merges

    async def judge(self) -> object:
        self.judged += 1
        return ("verdict", self.judged)


def scheduled(stats: Statistics) -> schedule.ScheduledVerdict:
    return schedule.ScheduledVerdict(stats.judge, stats.version, stats.published.append)


async def settle() -> None:
    for _ in range(5):  # the judging task runs on the next turns of the loop
        await asyncio.sleep(0)


async def test_polls_between_judgements_get_the_newest_without_judging_again(clock: Clock):
    stats = Statistics()
    verdicts = scheduled(stats)
    assert await verdicts.current() == ("verdict", 1)  # the first call waits for one
    for _ in range(40):  # polled every 100 ms for 4 s while deltas keep merging
        stats.merges += 1
        clock.now += 0.1
        assert await verdicts.current() == ("verdict", 1)
        await settle()
    assert stats.judged == 1
    clock.now += schedule.JUDGE_EVERY  # old enough: the next poll asks for a new one
    stats.merges += 1
    assert await verdicts.current() == ("verdict", 1)
    await settle()
    assert stats.judged == 2
    assert await verdicts.current() == ("verdict", 2)
    assert stats.published == [("verdict", 1), ("verdict", 2)]


async def test_unchanged_statistics_are_never_judged_twice(clock: Clock):
    stats = Statistics()
    verdicts = scheduled(stats)
    await verdicts.current()
    clock.now += 10 * schedule.JUDGE_EVERY
    assert await verdicts.current() == ("verdict", 1)
    await settle()
    assert stats.judged == 1


async def test_after_a_reset_a_caller_waits_for_a_judgement_of_the_new_statistics(clock: Clock):
    stats = Statistics()
    verdicts = scheduled(stats)
    await verdicts.current()
    stats.generation, stats.merges = 1, 0  # reset: the old verdict judged what is gone
    assert await verdicts.current() == ("verdict", 2)
    assert await verdicts.judge_now() == ("verdict", 3)


async def test_a_one_off_caller_waits_for_a_judgement_of_the_traffic_before_it(clock: Clock):
    # `shadowd verdict` right after a load test: the newest judgement (made at start-up,
    # before any traffic) is seconds old and judged none of it; the gate must not read it.
    stats = Statistics()
    verdicts = scheduled(stats)
    assert await verdicts.current() == ("verdict", 1)
    stats.merges += 4  # the load test's deltas, merged within JUDGE_EVERY
    clock.now += schedule.POLL_WINDOW  # nobody asked in between: not a poller
    assert await verdicts.current() == ("verdict", 2)
    clock.now += 0.1  # the same caller again at once: a poller now, answered from the newest
    stats.merges += 1
    assert await verdicts.current() == ("verdict", 2)
    await settle()
    assert stats.judged == 2


async def test_a_judgement_begun_before_the_callers_traffic_is_not_its_answer(clock: Clock):
    stats = Statistics()
    release = asyncio.Event()
    judging = asyncio.Event()

    async def slow_judge() -> object:
        judging.set()
        await release.wait()
        return await Statistics.judge(stats)

    verdicts = schedule.ScheduledVerdict(slow_judge, stats.version, stats.published.append)
    verdicts.start()  # the supervisor's first judgement, of no traffic yet
    await asyncio.wait_for(judging.wait(), 5)
    stats.merges += 3  # traffic merged while that judgement runs
    clock.now += schedule.POLL_WINDOW
    asking = asyncio.ensure_future(verdicts.current())
    judging.clear()
    release.set()
    assert await asyncio.wait_for(asking, 5) == ("verdict", 2)  # not the one of no traffic
    assert stats.judged == 2
    await verdicts.close()


async def test_a_one_off_caller_on_a_host_too_busy_to_judge_gets_the_newest_in_time(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    # A rollout gate gives up after 10 s: waiting longer for a fresh judgement than that
    # would turn "the newest judgement, a few seconds old" into a measurement error.
    monkeypatch.setattr(schedule, "ONE_OFF_WAIT", 0.05)
    stats = Statistics()
    release = asyncio.Event()

    async def judge() -> object:
        if stats.judged:  # the first judgement is quick; the host is busy after it
            await release.wait()
        return await Statistics.judge(stats)

    verdicts = schedule.ScheduledVerdict(judge, stats.version, stats.published.append)
    assert await verdicts.current() == ("verdict", 1)
    stats.merges += 1
    clock.now += schedule.POLL_WINDOW
    assert await asyncio.wait_for(verdicts.current(), 5) == ("verdict", 1)  # the newest
    release.set()
    await settle()
    assert stats.judged == 2  # the fresh one was still made, for the next caller
    stats.generation, stats.merges = 1, 0  # after a reset there is no newest to give:
    release.clear()
    asking = asyncio.ensure_future(verdicts.current())
    await asyncio.sleep(0.1)  # past ONE_OFF_WAIT: still waiting, for the only answer there is
    assert not asking.done()
    release.set()
    assert await asyncio.wait_for(asking, 5) == ("verdict", 3)


async def test_a_gate_is_not_taken_for_a_poller_because_a_dashboard_polls(clock: Clock):
    stats = Statistics()
    verdicts = scheduled(stats)
    dashboard, gate = "127.0.0.1 Mozilla/5.0", "10.0.0.7 Argo Rollouts"
    assert await verdicts.current(dashboard) == ("verdict", 1)
    stats.merges += 3  # the load test
    clock.now += 1.0
    assert await verdicts.current(dashboard) == ("verdict", 1)  # polling: the newest
    assert await verdicts.current(gate) == ("verdict", 2)  # first call: a fresh one
    clock.now += 0.5
    stats.merges += 1
    assert await verdicts.current(gate) == ("verdict", 2)  # asking again: a poller now


def test_the_callers_remembered_are_bounded():
    verdicts = scheduled(Statistics())
    for i in range(schedule.CALLERS_KEPT * 3):
        assert not verdicts._asked(f"10.0.0.{i} curl", 1000.0 + i)
    assert len(verdicts._asked_at) == schedule.CALLERS_KEPT
    last = 1000.0 + schedule.CALLERS_KEPT * 3 - 1
    assert verdicts._asked(f"10.0.0.{schedule.CALLERS_KEPT * 3 - 1} curl", last + 1)
    assert not verdicts._asked("10.0.0.0 curl", last + 2)  # forgotten: a one-off again

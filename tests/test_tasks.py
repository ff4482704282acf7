"""Stopping background tasks: ``stop_task`` ends one that swallows a cancellation."""

from __future__ import annotations

import asyncio

from shadowd.tasks import stop_task


async def test_stop_task_ends_a_task_that_swallowed_its_first_cancellation():
    swallowed = asyncio.Event()

    async def reading_on() -> None:
        # What redis-py did under load: a cancelled read returned normally, and the loop
        # around it went on reading.
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.sleep(3600)

    task = asyncio.get_running_loop().create_task(reading_on())
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        assert await stop_task(task, timeout=5.0)
    assert swallowed.is_set() and task.cancelled()


async def test_stop_task_gives_up_after_its_timeout_on_a_task_that_never_ends():
    released = asyncio.Event()

    async def ignores_cancellation() -> None:
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.get_running_loop().create_task(ignores_cancellation())
    await asyncio.sleep(0)
    assert not await stop_task(task, timeout=0.5)
    assert not task.done()
    released.set()
    await task

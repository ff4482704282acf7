"""Background tasks that are never orphaned: named, referenced, and their failures logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("shadowd.tasks")


class TaskGroup:
    """Holds a reference to every task it spawns until it ends (asyncio keeps only weak ones)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def stop_task(task: asyncio.Task[Any], timeout: float = 10.0) -> bool:
    """Cancel ``task`` and wait until it ends, cancelling it again while it runs on. One
    cancellation is not always enough: redis-py can swallow it (seen under load: an
    XREADGROUP cancelled as its answer arrived returned that answer, the reading loop went
    on, and a worker told to stop never did). True once the task ended, False after
    ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.error("task %s did not stop within %gs", task.get_name(), timeout)
            return False
        task.cancel()
        await asyncio.wait([task], timeout=min(0.25, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
    return True

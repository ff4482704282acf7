"""Drives a fixed mix of requests through shadowd, showing progress."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import aiohttp

from shadowd.progress import Progress

# (weight, path template) — ids drawn from a small range so endpoints collapse to templates
MIX: list[tuple[int, str]] = [
    (30, "/api/users/{n}"),
    (20, "/api/products/{n}"),
    (15, "/api/orders/{n}"),
    (10, "/api/reports/{n}"),
    (10, "/api/inventory"),
    (10, "/api/health"),
    (5, "/static/banner.txt"),
]


@dataclass
class TrafficResult:
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    seconds: float = 0.0


async def drive(
    base_url: str, requests: int, concurrency: int = 16, seed: int = 7
) -> TrafficResult:
    rng = random.Random(seed)
    weights = [w for w, _ in MIX]
    paths = [rng.choices(MIX, weights)[0][1].format(n=rng.randint(1, 60)) for _ in range(requests)]
    result = TrafficResult()
    progress = Progress(requests)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)
    started = time.perf_counter()

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                async with session.get(base_url + path) as answer:
                    await answer.read()
                    result.statuses[answer.status] = result.statuses.get(answer.status, 0) + 1
            except aiohttp.ClientError:
                result.failures += 1
            result.sent += 1
            if result.sent % 50 == 0 or result.sent == requests:
                progress.update(result.sent)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result

"""The supervisor's end of the view process (see ``shadowd.view``).

Deltas are written without waiting for anything: the child merges them in order, and a
request (build a report, judge) is answered after every delta written before it. When the
child dies, or falls so far behind that the deltas waiting for it pass ``MAX_BACKLOG``
bytes, it is replaced by a new one seeded with one snapshot of the supervisor's own merged
statistics (``seed()``): nothing is lost, and what waits for the child stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
from collections.abc import Callable
from typing import Any

from shadowd.config import Config
from shadowd.processes import start_module
from shadowd.verdict.judge import Verdict
from shadowd.view.process import LENGTH

log = logging.getLogger("shadowd.view")

MAX_BACKLOG = 256 * 1024 * 1024  # bytes of deltas written but not yet read by the child


class ViewFailed(RuntimeError):
    """Building the report or judging raised in the view process (its traceback is logged)."""


class ViewProcess:
    def __init__(
        self,
        config: Config,
        seed: Callable[[], dict[str, Any]],
        clock: Callable[[], tuple[float, float]],
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        """``seed()`` gives a snapshot of everything merged so far (``snapshot_of`` of the
        supervisor's statistics); ``clock()`` the supervisor's start and last reset (the
        report's ``started_at`` and ``window``); ``on_restart()`` is told of each restart
        (the supervisor counts it)."""
        self._config = config
        self._seed = seed
        self._clock = clock
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()  # one request (and its answer) at a time
        self.restarts = 0
        self._on_restart = on_restart

    def kill(self) -> None:
        """Stop the view process now (a second SIGTERM: no goodbye, nothing left behind)."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    def _alive(self) -> asyncio.subprocess.Process | None:
        process = self._process
        if process is None or process.returncode is not None or process.stdin is None:
            return None
        if process.stdin.is_closing():
            return None
        return process

    def _send(self, message: tuple[Any, ...]) -> None:
        process = self._alive()
        if process is None:
            return  # the next start seeds the child with everything merged so far
        assert process.stdin is not None
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        process.stdin.write(LENGTH.pack(len(payload)) + payload)
        transport = process.stdin.transport
        if transport.get_write_buffer_size() > MAX_BACKLOG:
            log.warning("the view process is %d MB behind; starting a fresh one", MAX_BACKLOG >> 20)
            process.kill()

    def merge(self, delta: dict[str, Any]) -> None:
        self._send(("merge", delta))

    def reset(self) -> None:
        self._send(("reset",))

    def configure(self, config: Config) -> None:
        self._config = config
        self._send(("config", config))

    async def build(self, status: dict[str, Any]) -> tuple[bytes, list[tuple[str, float]]]:
        """The report as JSON (of every delta sent before this call) and each endpoint's
        rate beyond noise."""
        answer: tuple[bytes, list[tuple[str, float]]] = await self._request(
            ("build", status, *self._clock())
        )
        return answer

    async def judge(self) -> tuple[Verdict, bytes]:
        """The verdict of every delta sent before this call, and its JSON."""
        judged: tuple[Verdict, bytes] = await self._request(("judge",))
        return judged

    async def _request(self, message: tuple[Any, ...]) -> Any:
        """Asked of a child that turns out dead (its exit not yet noticed), the request goes
        once more to a new one: building and judging change nothing, so they can repeat."""
        async with self._lock:
            for attempt in (1, 2):
                process = self._alive() or await self._start()
                assert process.stdin is not None and process.stdout is not None
                self._send(message)
                try:
                    head = await process.stdout.readexactly(LENGTH.size)
                    (length,) = LENGTH.unpack(head)
                    ok, answer = pickle.loads(await process.stdout.readexactly(length))
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
                    if attempt == 2:
                        raise ViewFailed("the view process died twice in a row") from None
            if not ok:
                log.error("the view process failed:\n%s", answer)
                raise ViewFailed(str(answer).strip().splitlines()[-1])
            return answer

    async def _start(self) -> asyncio.subprocess.Process:
        if self._process is not None:
            await self._stop()
            self.restarts += 1
            self._on_restart()
            log.warning("view process restarted (%d so far)", self.restarts)
        self._process = await start_module(
            "shadowd.view.process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 30,
        )
        self._send(("config", self._config))
        self._send(("merge", self._seed()))
        return self._process

    async def _stop(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            with contextlib.suppress(ProcessLookupError):
                await process.wait()

    async def close(self) -> None:
        await self._stop()
        self._process = None

"""The supervisor's end of the fleet view process (``shadowd.stream.fleet_process``).

The admin API's fleet scope (``?scope=fleet``, ``[stream] view = "fleet"``) asks this
client; the child reads Redis, merges, builds and judges. Nothing on the supervisor's loop is
heavier than moving bytes: the report and the verdict come back as JSON made in the child,
and a verdict is sent again only when it is a new judgement.

Every request has a timeout: a child that is stalled (stopped, swapping, starved of CPU)
makes the fleet's routes answer 503 (``FleetUnavailable``), never hang, and the instance's
routes do not notice. A child that exits is started again (logged); meanwhile the fleet's
routes answer 503. One that answers nothing for ``HUNG_AFTER`` while asked is killed first.
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
from shadowd.verdict.judge import Verdict
from shadowd.view.process import LENGTH

log = logging.getLogger("shadowd.stream")

REQUEST_TIMEOUT = 5.0  # seconds: a report, samples, /metrics, a reset
# A first judgement (or the first after a reset) of a big fleet takes seconds at nice 10.
JUDGE_TIMEOUT = 30.0
HUNG_AFTER = 30.0  # asked, and no answer at all for this long: the child is killed
RESTART_BACKOFF = (0.1, 5.0)  # first and longest pause before starting a dead child again
STABLE_AFTER = 10.0  # a child alive this long has its backoff reset
# A poller (the dashboard, ten times a second) is served statistics up to this old: the
# child serialises a 200-endpoint report at most this often for it.
REBUILD_EVERY = 2.0
REPORT_MAX_AGE = 2.0  # asked again within this, a caller is a poller


class FleetUnavailable(RuntimeError):
    """The fleet view process is not running, or did not answer in time (the admin API
    answers 503 with this message)."""


class FleetFailed(RuntimeError):
    """A request raised in the fleet view process (its traceback is logged)."""


class FleetProcess:
    def __init__(
        self,
        config: Config,
        instance_status: Callable[[], dict[str, Any]],
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        """``instance_status()`` is this instance's mirroring status (its kill switch,
        queue): the fleet's report carries it beside the fleet's members. ``on_restart()``
        is told each time the process exited and is started again (the supervisor counts
        it)."""
        self._config = config
        self._instance_status = instance_status
        self._process: asyncio.subprocess.Process | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[tuple[bool, Any]]] = {}
        self._next_id = 0
        self._waiting_since: float | None = None  # asked, and nothing answered since
        self.restarts = 0
        self._on_restart = on_restart
        self._report_asked_at = -REPORT_MAX_AGE
        self._verdict: tuple[Verdict, bytes] | None = None
        self._verdict_sequence = 0  # the child's number for ``_verdict``

    def start(self) -> None:
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep_running(), name="fleet-process"
        )

    def kill(self) -> None:
        """Stop the fleet process now (a second SIGTERM: nothing left behind)."""
        if self._keeper is not None:
            self._keeper.cancel()  # no restart
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        self._fail_pending("the fleet view process was stopped")

    # -- the child's life ------------------------------------------------------------------
    async def _keep_running(self) -> None:
        delay = RESTART_BACKOFF[0]
        while True:
            began = time.monotonic()
            try:
                process = await self._spawn()
            except OSError:
                log.exception("fleet view process: cannot start it")
            else:
                try:
                    await self._read_answers(process)
                except Exception:  # a garbled answer: this child cannot be trusted further
                    log.exception("fleet view process: reading its answers failed")
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    code = await process.wait()
                    self._forget(process)
                self.restarts += 1
                self._on_restart()
                log.warning(
                    "fleet view process exited (status %s); starting it again (%d so far)",
                    code,
                    self.restarts,
                )
            if time.monotonic() - began > STABLE_AFTER:
                delay = RESTART_BACKOFF[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF[1])

    async def _spawn(self) -> asyncio.subprocess.Process:
        process = await start_module(
            "shadowd.stream.fleet_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 30,
        )
        assert process.stdin is not None
        payload = pickle.dumps(self._config, protocol=pickle.HIGHEST_PROTOCOL)
        process.stdin.write(LENGTH.pack(len(payload)) + payload)
        # the new child numbers its judgements from 1 again
        self._verdict, self._verdict_sequence = None, 0
        self._waiting_since = None
        self._process = process
        return process

    def _forget(self, process: asyncio.subprocess.Process) -> None:
        if self._process is process:
            self._process = None
        self._fail_pending("the fleet view process exited; it is being started again")

    async def _read_answers(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            try:
                head = await process.stdout.readexactly(LENGTH.size)
                (length,) = LENGTH.unpack(head)
                request_id, ok, value = pickle.loads(await process.stdout.readexactly(length))
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            future = self._pending.pop(request_id, None)
            if future is not None and not future.done():  # else: it timed out
                future.set_result((ok, value))
            self._waiting_since = time.monotonic() if self._pending else None

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(FleetUnavailable(why))

    async def _request(self, kind: str, *args: Any, timeout: float = REQUEST_TIMEOUT) -> Any:
        process = self._process
        if (
            process is None
            or process.returncode is not None
            or process.stdin is None
            or process.stdin.is_closing()
        ):
            raise FleetUnavailable("the fleet view process is not running; it is being started")
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        payload = pickle.dumps((request_id, kind, *args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            process.stdin.write(LENGTH.pack(len(payload)) + payload)
            async with asyncio.timeout(timeout):
                ok, value = await future
        except TimeoutError:
            self._kill_if_hung(process)
            raise FleetUnavailable(
                f"the fleet view process did not answer within {timeout:g} s"
            ) from None
        finally:
            self._pending.pop(request_id, None)
        if not ok:
            log.error("fleet view process: %s failed:\n%s", kind, value)
            raise FleetFailed(str(value).strip().splitlines()[-1])
        return value

    def _kill_if_hung(self, process: asyncio.subprocess.Process) -> None:
        since = self._waiting_since
        if since is not None and time.monotonic() - since >= HUNG_AFTER:
            log.error(
                "fleet view process: no answer for %.0f s; killing it (pid %d)",
                time.monotonic() - since,
                process.pid,
            )
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    # -- what the admin API asks -----------------------------------------------------------
    async def report_json(self) -> bytes:
        """The fleet's report as JSON, made by the child, its mirroring status current. A
        poller (asked again within ``REPORT_MAX_AGE``) may get statistics up to
        ``REBUILD_EVERY`` old; anyone else gets them as the child last merged them."""
        now = time.monotonic()
        polling, self._report_asked_at = now - self._report_asked_at < REPORT_MAX_AGE, now
        max_age = REBUILD_EVERY if polling else 0.0
        body: bytes = await self._request("report", self._instance_status(), max_age)
        return body

    async def current_verdict(self, caller: str = "") -> Verdict:
        sequence, judged = await self._request(
            "verdict", self._verdict_sequence, caller, timeout=JUDGE_TIMEOUT
        )
        if judged is not None or self._verdict is None:
            if judged is None:  # asked of a child that numbers afresh: ask for it whole
                sequence, judged = await self._request("verdict", 0, caller, timeout=JUDGE_TIMEOUT)
            self._verdict, self._verdict_sequence = judged, sequence
        assert self._verdict is not None
        return self._verdict[0]

    def json_of_verdict(self, verdict: Verdict) -> bytes | None:
        """The JSON the child made of ``verdict`` (None for any other verdict)."""
        judged = self._verdict
        return judged[1] if judged is not None and judged[0] is verdict else None

    async def samples(self, endpoint_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._request("samples", endpoint_id)
        return found

    async def metrics_text(self) -> bytes:
        """The fleet's Prometheus exposition (``generate_latest`` of its registry)."""
        body: bytes = await self._request("metrics")
        return body

    async def status(self) -> dict[str, Any]:
        found: dict[str, Any] = await self._request("status")
        return found

    async def reset(self) -> dict[str, Any]:
        """Clear the fleet's statistics (``FleetView.reset``); what was cleared."""
        cleared: dict[str, Any] = await self._request("reset")
        return cleared

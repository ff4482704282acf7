"""The fleet view process: reads the fleet's snapshots from Redis, merges them, and answers
the supervisor's questions about them (see ``shadowd.stream.fleet_client``).

Merging a fleet's snapshots (msgpack, HDR histograms, reservoirs), building its report and
judging its verdict take seconds of CPU with many workers and 200 endpoints. Done on the
supervisor's loop, they held up the admin API (``/healthz`` included) for as long. Here they
run in a process of their own, at the view process's lowered priority: on a busy host the
relay and the diffing win the core, and the supervisor's loop only moves bytes.

The first message on standard input is the config; then each request is
``(id, kind, *args)`` and each answer ``(id, ok, value)`` (``value`` a traceback when not
``ok``), framed as the view process frames them (``shadowd.view.process``). Requests are
answered as they finish, not in order: a judgement that takes seconds does not hold up a
report. Standard input closing (the supervisor gone) ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
import time
import traceback
from typing import Any

import orjson
from prometheus_client import generate_latest

from shadowd.config import Config
from shadowd.logs import setup_logging
from shadowd.processes import die_with_parent
from shadowd.report import endpoint_samples
from shadowd.stream.fleet import FleetView
from shadowd.verdict.judge import Verdict
from shadowd.view.process import LENGTH, NICE

CLOSE_WITHIN = 5.0  # seconds to close the fleet view (Redis) once the supervisor is gone


class FleetServer:
    """Answers each request kind from the ``FleetView`` that refreshes in this process."""

    def __init__(self, config: Config) -> None:
        self.fleet = FleetView(config)
        # The newest judgement as sent: a poller asking again gets its sequence number back,
        # not the verdict again (200 endpoints' worth of pickle on the supervisor's loop).
        self._judged: tuple[Verdict, int, bytes] | None = None
        self._sequence = 0
        # the statistics' part of the report as JSON: (bytes, (generation, merge), built at)
        self._body: tuple[bytes, tuple[int, int], float] | None = None

    async def answer(self, kind: str, args: tuple[Any, ...]) -> Any:
        fleet = self.fleet
        if kind == "report":
            return self._report(*args)
        if kind == "verdict":
            known, caller = args
            return self._verdict_unless(known, await fleet.current_verdict(caller))
        if kind == "samples":
            (endpoint_id,) = args
            return endpoint_samples(fleet.aggregator, endpoint_id)
        if kind == "metrics":
            return generate_latest(fleet.metrics.registry)
        if kind == "status":
            return fleet.status()
        if kind == "reset":
            cleared = await fleet.reset()
            self._body = None  # one built while Redis was asked counts what was cleared
            return cleared
        raise ValueError(f"fleet view process: unknown request {kind!r}")

    def _report(self, instance_status: dict[str, Any], max_age: float) -> bytes:
        """The report as JSON, its status current. The statistics' part is serialised once
        per merge, and for a poller (``max_age`` > 0) at most every ``max_age`` seconds:
        200 endpoints cost tens of milliseconds, each refresh may bring a new merge, and a
        dashboard asks ten times a second."""
        fleet, now = self.fleet, time.monotonic()
        version = (fleet.generation, fleet.version)
        body = self._body
        if body is None or (body[1] != version and now - body[2] >= max_age):
            encoded = orjson.dumps(fleet.statistics_report(), option=orjson.OPT_NON_STR_KEYS)
            body = self._body = (encoded, version, now)
        status = dict(instance_status)
        status.update(fleet.status())
        # spliced, not serialised again: the same bytes as ``fleet.report(instance_status)``
        mirroring = orjson.dumps(status, option=orjson.OPT_NON_STR_KEYS)
        return b"".join((body[0][:-1], b',"mirroring":', mirroring, b"}"))

    def _verdict_unless(self, known: int, verdict: Verdict) -> tuple[int, Any]:
        """``(sequence, None)`` when the caller holds this judgement already, else
        ``(sequence, (verdict, its JSON))``."""
        if self._judged is None or self._judged[0] is not verdict:
            self._sequence += 1
            body = orjson.dumps(verdict.to_json(), option=orjson.OPT_NON_STR_KEYS)
            self._judged = (verdict, self._sequence, body)
        _, sequence, body = self._judged
        return sequence, None if sequence == known else (verdict, body)


def _write(stdout: Any, message: tuple[Any, ...]) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stdout.write(LENGTH.pack(len(payload)) + payload)
    stdout.flush()


async def _serve(server: FleetServer, reader: asyncio.StreamReader) -> None:
    stdout = sys.stdout.buffer
    pending: set[asyncio.Task[None]] = set()

    async def handle(request_id: int, kind: str, args: tuple[Any, ...]) -> None:
        try:
            answer = (request_id, True, await server.answer(kind, args))
        except Exception:  # a bug answers this one request with its traceback, not a death
            answer = (request_id, False, traceback.format_exc())
        _write(stdout, answer)

    while True:
        try:
            head = await reader.readexactly(LENGTH.size)
            (length,) = LENGTH.unpack(head)
            request_id, kind, *args = pickle.loads(await reader.readexactly(length))
        except asyncio.IncompleteReadError:
            return  # the supervisor is gone
        task = asyncio.get_running_loop().create_task(handle(request_id, kind, tuple(args)))
        pending.add(task)
        task.add_done_callback(pending.discard)


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
        config: Config = pickle.loads(await reader.readexactly(length))
    except asyncio.IncompleteReadError:
        return
    setup_logging(config.logging.level, config.logging.format)
    server = FleetServer(config)
    server.fleet.start()
    try:
        await _serve(server, reader)
    finally:
        # The supervisor is gone: never outlive it for long, even with Redis unreachable.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WITHIN):
                await server.fleet.close()


def main() -> int:
    die_with_parent()
    with contextlib.suppress(OSError):  # refused (a seccomp filter): the default priority
        os.nice(NICE)
    # A Ctrl-C reaches the whole process group; the supervisor decides when this one ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    sys.exit(main())

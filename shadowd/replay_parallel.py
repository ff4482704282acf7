"""``shadowd replay`` on two planes: sender processes pace and time, this process diffs.

    shadowd replay (this process: the analysis plane)
        │  decodes each sender's records, diffs them (the live daemon's DiffStage),
        │  merges the senders' latency histograms and counts, judges the verdict
        ├── sender 0 ─┐  each sends every N-th request of the global schedule (open loop,
        ├── sender 1 ─┤  latency from the intended send time), times the answers, and writes
        └── ...      ─┘  each finished exchange to its standard output as a capture frame

A sender never waits for the analysis: what it writes waits in its own transport buffer, and
past ``queue_bytes`` an exchange is not compared (counted as ``not_compared``), so pacing
and latency stay honest whatever the diff costs. The senders start on one shared instant
(``perf_counter`` is the system-wide monotonic clock on Linux), so together they keep the
asked rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import pickle
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
from hdrh.histogram import HdrHistogram

from shadowd.analysis.stage import DiffStage
from shadowd.capture.format import frame
from shadowd.metrics import Metrics
from shadowd.processes import start_module
from shadowd.progress import Progress
from shadowd.replay import _MAX_US, Latency, Replay, ReplayOptions
from shadowd.stream.frames import FrameDecoder
from shadowd.stream.handoff import MAX_RECORD_BYTES, FrameBatch, record_payload

log = logging.getLogger("shadowd.replay")

QUEUE_BYTES = 32 * 1024 * 1024  # per sender: records waiting for the analysis
START_DELAY = 0.5  # seconds between spawning the senders and their shared first send
PROGRESS_EVERY = 0.1  # seconds between a sender's progress reports
_SUMMARY = "summary"
_PROGRESS = "progress"


def sender_count(options: ReplayOptions) -> int:
    return options.workers or max(1, os.cpu_count() or 1)


# -- the parent: the analysis plane ------------------------------------------------------------
class ParallelReplay:
    def __init__(self, capture: Path, options: ReplayOptions) -> None:
        self.capture = capture
        self.options = options
        self.senders = sender_count(options)
        # The single-process Replay holds the config, statistics and summary code we share.
        self.base = Replay(capture, options)
        self.stage = DiffStage(
            self.base.config.diff,
            self.base.aggregator,
            self.base.evidence,
            Metrics(self.base.config),
        )
        self.summaries: list[dict[str, Any]] = []
        self.stepped_back = 0  # how far the comparison's priority was lowered (os.nice)
        self.undecodable = 0
        self._progress: dict[int, int] = {}

    async def run(self) -> dict[str, Any]:
        start_at = time.perf_counter() + START_DELAY + 0.1 * self.senders
        processes = [await self._spawn(k, start_at) for k in range(self.senders)]
        self._step_back()
        total = self._total()
        progress = Progress(total, label="replay")
        loop = asyncio.get_running_loop()

        def interrupt() -> None:
            self.base.interrupted = True
            for process in processes:  # EOF on its stdin: a sender stops and summarises
                if process.stdin is not None and not process.stdin.is_closing():
                    process.stdin.close()

        loop.add_signal_handler(signal.SIGINT, interrupt)
        try:
            await asyncio.gather(
                *(self._read(k, p, progress, total) for k, p in enumerate(processes))
            )
            for process in processes:
                await process.wait()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        # what was sent, not the schedule's length: --duration may have ended it early
        progress.update(min(total, sum(part["sent"] for part in self.summaries)))
        return self.summary()

    def _step_back(self) -> None:
        """Lower this process's priority below the senders' (spawned above, so they keep
        the one we started with): on a saturated host the comparison then gets what the
        senders leave, and sheds the rest as ``not_compared``, instead of delaying sends
        and so inflating the latency the replay measures. Irreversible, which is why it
        happens here (the CLI's process) and only when asked."""
        nice = self.options.analysis_nice
        if nice and self.options.diff:
            try:
                os.nice(nice)
            except OSError as exc:  # a sandbox may forbid even lowering one's priority
                log.warning("could not lower the comparison's priority: %s", exc)
                return
            self.stepped_back = nice

    def _total(self) -> int:
        base = self.base
        return len(base._selected()) * self.options.loop

    async def _spawn(self, index: int, start_at: float) -> asyncio.subprocess.Process:
        options = self.options
        if options.concurrency:  # the in-flight cap is shared out, at least one each
            share = max(1, -(-options.concurrency // self.senders))
            options = dataclasses.replace(options, concurrency=share)
        process = await start_module(
            "shadowd.replay_parallel",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=MAX_RECORD_BYTES,
        )
        assert process.stdin is not None
        job = (str(self.capture), options, (index, self.senders), start_at, QUEUE_BYTES)
        payload = pickle.dumps(job)
        process.stdin.write(len(payload).to_bytes(4, "big") + payload)
        await process.stdin.drain()
        return process

    async def _read(
        self, index: int, process: asyncio.subprocess.Process, progress: Progress, total: int
    ) -> None:
        assert process.stdout is not None
        decoder = FrameDecoder(MAX_RECORD_BYTES)
        while data := await process.stdout.read(256 * 1024):
            for payload in decoder.feed(data):
                doc = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                if _SUMMARY in doc:
                    self.summaries.append(doc[_SUMMARY])
                elif _PROGRESS in doc:
                    self._progress[index] = doc[_PROGRESS]
                    progress.update(min(total, sum(self._progress.values())))
                else:
                    self.stage.process_record(doc)
            await asyncio.sleep(0)  # let the other senders' pipes be read too

    def summary(self) -> dict[str, Any]:
        base = self.base
        for part in self.summaries:
            base.sent += part["sent"]
            base.completed += part["completed"]
            base.skipped_no_reference += part["skipped_no_reference"]
            for kind, n in part["skipped_malformed"].items():
                base.skipped_malformed[kind] = base.skipped_malformed.get(kind, 0) + n
            for target, kinds in part["errors"].items():
                mine = base.errors.setdefault(target, {})
                for kind, n in kinds.items():
                    mine[kind] = mine.get(kind, 0) + n
            for target, hists in part["latency"].items():
                latency = base.latency.setdefault(target, Latency())
                latency.corrected.decode_and_add(hists["corrected"])
                latency.uncorrected.decode_and_add(hists["uncorrected"])
                for endpoint, encoded in hists["endpoints"].items():
                    hist = latency.by_endpoint.get(endpoint)
                    if hist is None:
                        hist = latency.by_endpoint[endpoint] = HdrHistogram(1, _MAX_US, 2)
                    hist.decode_and_add(encoded)
            base.not_compared += part["not_compared"]
        if self.summaries:
            base.started = min(p["started"] for p in self.summaries)
            base.finished = max(p["finished"] for p in self.summaries)
            base.interrupted = base.interrupted or any(p["interrupted"] for p in self.summaries)
        summary = base.summary()
        summary["senders"] = self.senders
        summary["analysis_nice"] = self.stepped_back
        summary["undecodable"] = self.stage.undecodable
        return summary


async def replay_parallel(capture: Path, options: ReplayOptions) -> dict[str, Any]:
    options.validate()
    return await ParallelReplay(capture, options).run()


# -- a sender process --------------------------------------------------------------------------
class _Output(asyncio.Protocol):
    def __init__(self) -> None:
        self.closed = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


async def _send(job: tuple[str, ReplayOptions, tuple[int, int], float, int]) -> None:
    capture, options, shard, start_at, queue_bytes = job
    loop = asyncio.get_running_loop()
    transport, output = await loop.connect_write_pipe(_Output, os.fdopen(1, "wb", buffering=0))
    transport.set_write_buffer_limits(high=queue_bytes)
    not_compared = 0
    batch = FrameBatch(transport.write)  # a write per exchange woke the parent each time

    def hand_off(exchange: Any) -> None:
        nonlocal not_compared
        if transport.get_write_buffer_size() + batch.bytes > queue_bytes:
            not_compared += 1  # the analysis is behind: never slow the pacing down
            return
        batch.add(frame(record_payload(exchange)))

    class _Progress:
        """Progress to the parent at most every PROGRESS_EVERY seconds (each is a write)."""

        last = 0.0

        def update(self, sent: int) -> None:
            now = time.monotonic()
            if now - self.last >= PROGRESS_EVERY:
                self.last = now
                batch.flush()  # in order: the records sent so far, then the count
                transport.write(frame(msgpack.packb({_PROGRESS: sent})))

    runner = Replay(Path(capture), options, shard=shard, on_complete=hand_off, start_at=start_at)
    runner.progress = _Progress()
    # The modules and the capture live as long as this process: out of the collector's
    # sight, a full collection walks only what sending creates. With them in view one took
    # 14 ms at 10,000 req/s, every answer of those 14 ms timed late (max 20 ms against 4).
    runner.on_loaded = gc.freeze
    sending = asyncio.ensure_future(runner.run())
    stop = asyncio.Event()
    loop.add_reader(0, stop.set)  # the parent closed our stdin: Ctrl-C
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((sending, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not sending.done():
        runner.interrupted = True
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
    stopping.cancel()
    loop.remove_reader(0)
    batch.flush()
    for latency in runner.latency.values():
        latency.flush()
    summary = {
        "sent": runner.sent,
        "completed": runner.completed,
        "skipped_no_reference": runner.skipped_no_reference,
        "skipped_malformed": runner.skipped_malformed,
        "errors": runner.errors,
        "latency": {
            target: {
                "corrected": lat.corrected.encode(),
                "uncorrected": lat.uncorrected.encode(),
                "endpoints": {e: h.encode() for e, h in lat.by_endpoint.items()},
            }
            for target, lat in runner.latency.items()
        },
        "not_compared": not_compared,
        "started": runner.started,
        "finished": runner.finished,
        "interrupted": runner.interrupted,
    }
    transport.write(frame(msgpack.packb({_SUMMARY: summary}, use_bin_type=True)))
    transport.close()  # flushes what is buffered first, then the protocol hears of it
    await output.closed.wait()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides (it closes our stdin)
    size = int.from_bytes(sys.stdin.buffer.read(4), "big")
    job = pickle.loads(sys.stdin.buffer.read(size))
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    asyncio.run(_send(job))
    return 0


if __name__ == "__main__":
    sys.exit(main())

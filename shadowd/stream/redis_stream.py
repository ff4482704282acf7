"""The exchange stream on Redis Streams (``[stream] backend = "redis"``).

Ingress and tap instances on any hosts append exchange records (the capture format's msgpack
record, one entry field ``r``) with ``XADD key MAXLEN ~ N``; analysis workers on any hosts
read them through one consumer group (``XREADGROUP``), acknowledge them once the exchange is
counted in a snapshot published to Redis (``XACK`` in the same script as the snapshot, so a
worker killed at any instant leaves each record either counted and acknowledged, or neither),
and take over what a dead worker left pending (``XAUTOCLAIM`` after ``claim_idle``).

The stream's interface is three small pieces, so that another engine (Kafka) would be one
more module beside this one: a sender (``offer(exchange)`` on the data plane, never awaiting;
appends in its own task), a reader (``read``, ``reclaim``, ``trimmed``) and the publication
of a worker's snapshot together with the acknowledgement of what it counts
(``publish_snapshot``). See docs/stream.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack
import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from shadowd.config import StreamConfig
from shadowd.exchange import Exchange
from shadowd.stream.handoff import record_payload
from shadowd.tasks import stop_task

log = logging.getLogger("shadowd.stream")

FIELD = b"r"  # the one field of an entry: the record's msgpack payload
# The layout of a worker's entry in "<key>:fleet:snapshots" (msgpack map: v, consumer, at,
# started_at, snapshot, metrics, status). An admin skips entries of another version.
FLEET_SNAPSHOT_VERSION = 2  # 2: the snapshot inside carries latency values (snapshot v4)
BLOCK_MS = 1000  # an XREADGROUP waits at most this long for new entries
RECONNECT = (0.05, 5.0)  # first and longest pause between two connection attempts
# Errors that mean "Redis is not there (now)": the sender sheds, the reader retries.
UNREACHABLE = (RedisError, OSError, asyncio.TimeoutError)

# Acknowledge what a snapshot counts, and publish the snapshot, in one step: a worker killed
# between the two would otherwise either lose counted work (acknowledged, snapshot lost) or
# count it twice (snapshot kept, records claimed again by another worker). A snapshot made
# under an older generation (a fleet reset since) is not stored; its records are still
# acknowledged, as they belong to the window that was cleared.
# A worker that stalled past claim_idle (SIGSTOP, a VM pause, swapping) may have had records
# it counted taken over by another worker, which counts them too: then nothing is
# acknowledged or stored, and the ids it no longer owns are returned (the worker goes back
# to its last stored snapshot and counts again what it still owns).
# KEYS: stream, snapshots hash, generation; ARGV: group, consumer, generation, blob, ids...
# Returns {generation, ids this consumer no longer owns}.
PUBLISH_LUA = """
local gen = redis.call('GET', KEYS[3]) or '0'
if #ARGV >= 5 then
  local owned = {}
  local from = '-'
  while true do
    local page = redis.call('XPENDING', KEYS[1], ARGV[1], from, '+', 10000, ARGV[2])
    for _, entry in ipairs(page) do owned[entry[1]] = true end
    if #page < 10000 then break end
    from = '(' .. page[#page][1]
  end
  local lost = {}
  for i = 5, #ARGV do
    if not owned[ARGV[i]] then lost[#lost + 1] = ARGV[i] end
  end
  if #lost > 0 then return {gen, lost} end
end
for i = 5, #ARGV, 1000 do
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if gen == ARGV[3] then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
end
return {gen, {}}
"""

# A live worker keeps the records it holds (read, not yet acknowledged) from looking idle, so
# that XAUTOCLAIM hands over only a dead (or stalled) worker's: each one it still owns is
# claimed again by itself, which resets its idle time. One it no longer owns is left alone.
# KEYS: stream; ARGV: group, consumer, ids...
KEEP_ALIVE_LUA = """
local kept = 0
for i = 3, #ARGV do
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #mine > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""

# How many records were trimmed by MAXLEN before the group read them is a fleet-wide total
# that only grows; each worker claims the part no other worker has counted yet, so that the
# sum of every worker's shadowd_mirror_dropped_total{reason="stream_trimmed"} is that total.
# KEYS: the counted-so-far key; ARGV: the total now.
CLAIM_TRIMMED_LUA = """
local counted = tonumber(redis.call('GET', KEYS[1]) or '0')
local total = tonumber(ARGV[1])
if total > counted then
  redis.call('SET', KEYS[1], total)
  return total - counted
end
return 0
"""


def fleet_keys(config: StreamConfig) -> dict[str, str]:
    """Where the fleet's state lives, beside the stream."""
    base = f"{config.key}:fleet"
    return {
        "snapshots": f"{base}:snapshots",  # consumer -> its cumulative snapshot (msgpack)
        "ingress": f"{base}:ingress",  # ingress instance -> its Prometheus series (msgpack)
        "generation": f"{base}:generation",  # bumped by a fleet reset
        "trimmed": f"{base}:trimmed",  # trimmed-before-read records already counted
    }


def consumer_name(config: StreamConfig, suffix: str = "") -> str:
    """This worker's name in the group: configured, or unique per host and process (a dead
    worker's pending records are then claimed by the others, not waited for)."""
    if config.consumer:
        return config.consumer + suffix
    return f"{socket.gethostname()}.{os.getpid()}{suffix}"


def redis_client(config: StreamConfig) -> redis.Redis:
    password = None
    if config.password_file is not None:
        password = config.password_file.read_text().strip()
    return redis.Redis.from_url(
        config.url,
        password=password,
        socket_connect_timeout=2.0,
        # An XREADGROUP blocks for BLOCK_MS: the socket must wait longer than that.
        socket_timeout=BLOCK_MS / 1000 + 5.0,
        decode_responses=False,
    )


# A batch of records in one command: redis-py spends ~20 µs of the caller's CPU per pipelined
# XADD building and parsing commands, on the ingress's loop; one script call per batch costs
# that once per batch. KEYS: stream; ARGV: maxlen, records...
APPEND_LUA = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[i])
end
return #ARGV - 1
"""


async def append_records(
    client: redis.Redis, config: StreamConfig, payloads: Iterable[bytes]
) -> int:
    """Append records with one round trip: ``XADD key MAXLEN ~ maxlen * r record`` each."""
    batch = list(payloads)
    if not batch:
        return 0
    # A Script only hashes its text (EVALSHA, then EVAL once if Redis does not know it yet).
    script = client.register_script(APPEND_LUA)
    appended = await script(keys=[config.key], args=[config.maxlen, *batch])
    return int(appended)


class StreamSender:
    """An ingress instance's end of the stream. ``offer`` runs on the data plane's loop and
    never awaits: it encodes the record and appends it to a bounded buffer, or counts a shed
    copy (``stream_down`` while Redis is unreachable, ``stream_backlog`` when the buffer
    holds ``limit_bytes``). A task of its own sends the buffer in pipelined XADD batches and
    reconnects with a doubling back-off."""

    def __init__(
        self,
        config: StreamConfig,
        limit_bytes: int,
        on_shed: Callable[[str], None],
        *,
        series: Callable[[], Any] | None = None,
        name: str = "",
    ) -> None:
        self.config = config
        self._limit = limit_bytes
        self._on_shed = on_shed
        self._series = series  # this instance's Prometheus series, for the fleet's /metrics
        self._name = name or consumer_name(config, ".ingress")
        self._client = redis_client(config)
        self._buffer: deque[bytes] = deque()
        self._buffered_bytes = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.error: str | None = None
        self.handed_off = 0  # records Redis has accepted
        # Set whenever ``connected`` or ``handed_off`` changes (for tests and status).
        self.changed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-sender")

    @property
    def buffered_bytes(self) -> int:
        return self._buffered_bytes

    def set_limit(self, limit_bytes: int) -> None:
        self._limit = limit_bytes

    def offer(self, exchange: Exchange) -> bool:
        if not self.connected:
            self._on_shed("stream_down")
            return False
        if self._buffered_bytes > self._limit:
            self._on_shed("stream_backlog")
            return False
        payload = record_payload(exchange)
        self._buffer.append(payload)
        self._buffered_bytes += len(payload)
        if not self._wakeup.is_set():
            self._wakeup.set()
        return True

    def _take_batch(self) -> list[bytes]:
        buffer = self._buffer
        batch = [buffer.popleft() for _ in range(min(self.config.batch, len(buffer)))]
        self._buffered_bytes -= sum(len(p) for p in batch)
        return batch

    def _shed_buffer(self, batch: list[bytes]) -> None:
        for _ in range(len(batch) + len(self._buffer)):
            self._on_shed("stream_down")
        self._buffer.clear()
        self._buffered_bytes = 0

    async def _run(self) -> None:
        delay = RECONNECT[0]
        published_at = 0.0
        while not self._closing:
            batch: list[bytes] = []
            try:
                if not self.connected:
                    await self._client.ping()
                    self.connected, self.error, delay = True, None, RECONNECT[0]
                    self.changed.set()
                    log.info("stream: connected to %s", self.config.url)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wakeup.wait()
                self._wakeup.clear()
                while self._buffer:
                    batch = self._take_batch()
                    self.handed_off += await append_records(self._client, self.config, batch)
                    self.changed.set()
                    batch = []
                now = time.monotonic()
                if self._series is not None and now - published_at >= 1.0:
                    published_at = now
                    await self._publish_series()
            except UNREACHABLE as exc:
                if self.connected:
                    log.warning("stream: Redis unreachable, copies are shed: %s", exc)
                self.connected, self.error = False, f"{type(exc).__name__}: {exc}"
                self.changed.set()
                self._shed_buffer(batch)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT[1])

    async def _publish_series(self) -> None:
        assert self._series is not None
        blob = msgpack.packb({"at": time.time(), "metrics": self._series()}, use_bin_type=True)
        await self._client.hset(fleet_keys(self.config)["ingress"], self._name, blob)

    async def close(self, timeout: float = 5.0) -> bool:
        """Send what is buffered (for up to ``timeout`` seconds), then stop. True when every
        buffered record reached Redis."""
        self._closing = True
        if self._task is not None:
            await stop_task(self._task)
        sent = True
        try:
            async with asyncio.timeout(timeout):
                while self._buffer:
                    batch = self._take_batch()
                    self.handed_off += await append_records(self._client, self.config, batch)
                if self._series is not None:
                    await self._publish_series()
        except (*UNREACHABLE, TimeoutError):
            sent = False
            self._shed_buffer([])
        with contextlib.suppress(*UNREACHABLE):
            await self._client.aclose()
        return sent


Entry = tuple[bytes, bytes | None]  # (entry id, record payload; None when it was trimmed)


class StreamReader:
    """An analysis worker's end of the stream: its consumer in the group."""

    def __init__(self, config: StreamConfig, consumer: str) -> None:
        self.config = config
        self.consumer = consumer
        self.client = redis_client(config)
        self.keys = fleet_keys(config)
        self._publish = self.client.register_script(PUBLISH_LUA)
        self._claim_trimmed = self.client.register_script(CLAIM_TRIMMED_LUA)
        self._keep_alive = self.client.register_script(KEEP_ALIVE_LUA)
        self._claim_cursor = b"0-0"

    async def join(self) -> None:
        """Create the group (reading from the stream's start) unless it exists."""
        try:
            await self.client.xgroup_create(
                self.config.key, self.config.group, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, count: int, block_ms: int = BLOCK_MS) -> list[Entry]:
        answer: Any = await self.client.xreadgroup(
            self.config.group,
            self.consumer,
            {self.config.key: ">"},
            count=count,
            block=block_ms,
        )
        return _entries(answer)

    async def reclaim(self, count: int) -> tuple[list[Entry], int]:
        """Take over up to ``count`` records another consumer left unacknowledged for
        ``claim_idle`` (a dead worker's); also how many such records the stream had already
        trimmed (Redis drops them from the pending list as it reports them)."""
        answer: Any = await self.client.xautoclaim(
            self.config.key,
            self.config.group,
            self.consumer,
            min_idle_time=int(self.config.claim_idle * 1000),
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = answer[0]
        claimed = [
            (entry_id, fields.get(FIELD) if fields else None) for entry_id, fields in answer[1]
        ]
        deleted = len(answer[2]) if len(answer) > 2 else 0
        return claimed, deleted

    async def keep_alive(self, held: list[bytes]) -> int:
        """Reset the idle time of the records this worker holds; how many it still owns."""
        if not held:
            return 0
        kept = await self._keep_alive(
            keys=[self.config.key], args=[self.config.group, self.consumer, *held]
        )
        return int(kept)

    @property
    def reclaim_done(self) -> bool:
        """True once a reclaim pass has gone through the whole pending list."""
        return self._claim_cursor in (b"0-0", "0-0")

    async def trimmed(self) -> int:
        """Records MAXLEN trimmed before the group read them and that no worker has counted
        yet (this worker counts them now). 0 when Redis cannot tell (before Redis 7)."""
        info = await self.client.xinfo_stream(self.config.key)
        groups = await self.client.xinfo_groups(self.config.key)
        group = self.config.group.encode()
        mine = next((g for g in groups if g.get("name") in (group, self.config.group)), None)
        added = info.get("entries-added")
        if mine is None or added is None:
            return 0
        read = mine.get("entries-read")
        if read is None:  # Redis keeps no count before the group's first read
            if mine.get("last-delivered-id") not in (b"0-0", "0-0"):
                return 0
            read = 0
        # The group reads, and MAXLEN trims, the stream in order: while the group lags behind
        # the trim point, everything it read was trimmed too, and the trimmed records it
        # never read are the difference (exact then; a lower bound once it has caught up, and
        # the claimed total never goes down).
        unread_trimmed = max(0, int(added) - int(info["length"]) - int(read))
        return int(await self._claim_trimmed(keys=[self.keys["trimmed"]], args=[unread_trimmed]))

    async def generation(self) -> int:
        return int(await self.client.get(self.keys["generation"]) or 0)

    async def publish_snapshot(
        self, blob: bytes, ack: list[bytes], generation: int
    ) -> tuple[int, list[bytes]]:
        """Store this worker's cumulative snapshot and acknowledge the records it counts, in
        one step. Returns the fleet's generation (a reset bumps it: start afresh) and the
        ids of ``ack`` this consumer no longer owns: when there are any (another worker took
        them over), nothing was stored or acknowledged."""
        gen, lost = await self._publish(
            keys=[self.config.key, self.keys["snapshots"], self.keys["generation"]],
            args=[self.config.group, self.consumer, str(generation), blob, *ack],
        )
        return int(gen), list(lost)

    async def read_own(self, after: bytes, count: int) -> list[Entry]:
        """This consumer's pending records after id ``after`` (``b"0"``: from the first),
        read again: what it must count once more after going back to its stored snapshot."""
        answer: Any = await self.client.xreadgroup(
            self.config.group, self.consumer, {self.config.key: after}, count=count
        )
        return _entries(answer)

    async def close(self) -> None:
        with contextlib.suppress(*UNREACHABLE):
            await self.client.aclose()


def _entries(answer: Any) -> list[Entry]:
    """XREADGROUP's answer as (id, record); an entry trimmed after it was read has none."""
    entries: list[Entry] = []
    for _stream, items in answer or ():
        for entry_id, fields in items:
            entries.append((entry_id, fields.get(FIELD) if fields else None))
    return entries


async def publish_capture(config: StreamConfig, path: Path) -> int:
    """Append every intact record of a capture file to the stream (``shadowd publish``):
    yesterday's traffic, or a test's fixed workload, analysed by the fleet's workers. A
    batch tool, not the data plane: it waits for Redis instead of shedding."""
    from shadowd.capture.reader import CaptureReader

    client = redis_client(config)
    count = 0
    try:
        batch: list[bytes] = []
        for record in CaptureReader(path).records():
            batch.append(msgpack.packb(record, use_bin_type=True))
            if len(batch) >= config.batch:
                count += await append_records(client, config, batch)
                batch = []
        count += await append_records(client, config, batch)
    except RedisError as exc:
        raise OSError(str(exc)) from exc
    finally:
        with contextlib.suppress(*UNREACHABLE):
            await client.aclose()
    return count

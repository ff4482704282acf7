"""The exchange stream on Redis: what a record costs, and exchanges analysed per second.

    .venv/bin/python benchmarks/stream_bench.py [--records 12000] [--runs 3]

A real redis-server on a loopback port (no persistence). The records are 3-target exchanges
with ~1.6 KB JSON bodies in which the candidate differs (a value, sometimes a type) and the
secondary differs by a request id: every exchange is parsed and diffed.

1. Cost per record of the stream: the data plane's ``offer()`` (encode + buffer) in µs, the
   sender task's pipelined XADD in µs per record, bytes per record on the wire (XADD in,
   XREADGROUP out, XACK) and in Redis's memory, and Redis's own CPU per record (append +
   read + acknowledge), read from /proc.
2. Exchanges analysed per second, peers interleaved in every run, medians over --runs:
   the local hand-off (one analysis worker fed through its Unix socket), and 1 and 2
   ``shadowd worker`` processes through Redis. Each measures from the first record offered
   to the last one counted (for Redis: published in a snapshot and acknowledged).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
import orjson
import redis.asyncio as redis

from shadowd.capture.format import encode_header, frame, record_of
from shadowd.config import load_config
from shadowd.exchange import Answer, Exchange, Request
from shadowd.stream.handoff import record_payload
from shadowd.stream.redis_stream import FIELD, StreamReader, StreamSender, fleet_keys

HERE = Path(__file__).resolve().parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SNAPSHOT = "200ms"  # a worker's snapshot interval here: the finish line's resolution


def workload(count: int, seed: int = 16) -> list[Exchange]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        doc = {
            "id": i,
            "name": f"item-{i}",
            "price": rng.randint(100, 9999) / 100,
            "tags": [f"t{rng.randint(0, 50)}" for _ in range(8)],
            "stock": {f"w{w}": rng.randint(0, 500) for w in range(12)},
            "description": "x" * 900,
            "request_id": rng.getrandbits(64),
        }
        request = Request(
            "GET", f"/items/{i}", [(b"host", b"shop"), (b"accept", b"*/*")], b"", 1e9 + i
        )
        exchange = Exchange(i, request, f"GET /items/{{id}}#{i % 20}")
        for target in ("primary", "secondary", "candidate"):
            body = dict(doc, request_id=rng.getrandbits(64))
            if target == "candidate" and rng.random() < 0.3:
                body["price"] = str(body["price"])  # a type change
            raw = orjson.dumps(body)
            headers = [(b"content-type", b"application/json")]
            latency = rng.uniform(0.002, 0.02)
            exchange.answers[target] = Answer(target, 200, headers, raw, len(raw), latency)
        out.append(exchange)
    return out


def config_text(url: str, key: str) -> str:
    return f"""
[targets.primary]
url = "http://127.0.0.1:9"
[targets.secondary]
url = "http://127.0.0.1:10"
[targets.candidate]
url = "http://127.0.0.1:11"
[analysis]
snapshot_interval = "{SNAPSHOT}"
nice = 0
[stream]
backend = "redis"
url = "{url}"
key = "{key}"
claim_idle = "5s"
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def resp_size(*parts: bytes | str) -> int:
    """Bytes of one command in RESP: what the client sends for it."""
    size = len(f"*{len(parts)}\r\n")
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        size += len(f"${len(data)}\r\n") + len(data) + 2
    return size


async def wait_ping(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    if await client.ping():
                        return
                except (redis.ConnectionError, OSError):
                    await asyncio.sleep(0.02)
    finally:
        await client.aclose()


# -- 1. cost per record ----------------------------------------------------------------------
async def cost_per_record(url: str, redis_pid: int, exchanges: list[Exchange]) -> dict[str, Any]:
    config = load_config_text(url, "bench:cost").stream
    shed: list[str] = []
    sender = StreamSender(config, 1 << 30, shed.append)
    sender.start()
    async with asyncio.timeout(10):
        while not sender.connected:
            sender.changed.clear()
            await sender.changed.wait()
    reader = StreamReader(config, "bench")
    await reader.join()
    n = len(exchanges)
    redis_before = cpu_seconds(redis_pid)
    process_before = time.process_time()
    offer_seconds = 0.0
    for i in range(0, n, 256):  # as traffic arrives: a few hundred records per loop turn
        started = time.perf_counter()
        for exchange in exchanges[i : i + 256]:
            sender.offer(exchange)
        offer_seconds += time.perf_counter() - started
        await asyncio.sleep(0)
    async with asyncio.timeout(60):
        while sender.handed_off < n:
            sender.changed.clear()
            await sender.changed.wait()
    append_cpu = time.process_time() - process_before
    redis_append = cpu_seconds(redis_pid) - redis_before
    memory = await reader.client.memory_usage(config.key) or 0
    redis_before = cpu_seconds(redis_pid)
    got: list[tuple[bytes, bytes | None]] = []
    while len(got) < n:
        entries = await reader.read(1000, block_ms=100)
        got.extend(entries)
        await reader.client.xack(config.key, config.group, *[e[0] for e in entries])
    redis_read = cpu_seconds(redis_pid) - redis_before
    await sender.close()
    await reader.close()
    # The offer loop itself was measured with the sender's task running between turns:
    # encode + buffer alone is what the data plane pays.
    encode_started = time.perf_counter()
    for exchange in exchanges[:2000]:
        record_payload(exchange)
    encode_us = (time.perf_counter() - encode_started) / 2000 * 1e6
    payload = sum(len(p or b"") for _, p in got) / n
    entry_id = got[0][0]
    # one EVALSHA per batch of config.batch records: its fixed part, shared
    xadd = resp_size("EVALSHA", "x" * 40, "1", config.key, str(config.maxlen)) / config.batch + 6
    return {
        "records": n,
        "shed": len(shed),
        "offer_us": offer_seconds / n * 1e6,
        "encode_us": encode_us,
        "sender_cpu_us": append_cpu / n * 1e6,
        "payload_bytes": payload,
        "xadd_bytes": xadd + payload,
        # a reply entry: *2 id, *2 field value (+ the array headers amortised over 1000)
        "read_bytes": payload + len(entry_id) + 30,
        "ack_bytes": len(entry_id) + 8,
        "memory_bytes": memory / n,
        "redis_append_us": redis_append / n * 1e6,
        "redis_read_ack_us": redis_read / n * 1e6,
    }


def load_config_text(url: str, key: str) -> Any:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(config_text(url, key))
    try:
        return load_config(handle.name)
    finally:
        os.unlink(handle.name)


# -- 2. exchanges analysed per second --------------------------------------------------------
LOCAL_WORKER = """
import asyncio, sys, time
from shadowd.aggregate import Aggregator
from shadowd.analysis.stage import DiffStage
from shadowd.config import load_config
from shadowd.metrics import Metrics
from shadowd.stream.handoff import RecordReceiver
from shadowd.verdict.evidence import VerdictEvidence

async def main(config_path, socket_path, total):
    config = load_config(config_path)
    metrics = Metrics(config)
    stage = DiffStage(config.diff, Aggregator(config, metrics),
                      VerdictEvidence(config.endpoints.max), metrics, backlog=2000)
    all_received = asyncio.Event()

    def consume(payload):
        stage.submit(payload)
        if stage.received >= total:
            all_received.set()

    receiver = RecordReceiver(socket_path, consume)
    stage.on_full, stage.on_room = receiver.pause, receiver.resume
    await receiver.start()
    runner = asyncio.get_running_loop().create_task(stage.run())
    print("ready", flush=True)
    await all_received.wait()
    while not await stage.wait_idle(1.0):
        pass
    print("done", time.time(), stage.diffed, flush=True)
    runner.cancel()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def local_handoff_rate(config_path: Path, frames: bytes, total: int, tmp: Path) -> float:
    """One analysis worker fed through the local hand-off's Unix socket, as fast as it reads."""
    socket_path = str(tmp / "analysis.sock")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCAL_WORKER,
        str(config_path),
        socket_path,
        str(total),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        assert (await process.stdout.readline()).strip() == b"ready"
        _, writer = await asyncio.open_unix_connection(socket_path)
        started = time.time()
        writer.write(frames)
        await writer.drain()
        line = await asyncio.wait_for(process.stdout.readline(), 600)
        _, finished, diffed = line.split()
        writer.close()
        # Records the worker dropped (its backlog full between two reads) are not analysed.
        return int(diffed) / (float(finished) - started)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def redis_rate(
    url: str, config_path: Path, key: str, payloads: list[bytes], workers: int
) -> float:
    """``workers`` shadowd worker processes: from the first record appended to the last one
    counted in a published snapshot."""
    config = load_config(config_path)
    client = redis.Redis.from_url(url)
    snapshots = fleet_keys(config.stream)["snapshots"]
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shadowd",
            "worker",
            "-c",
            str(config_path),
            "--consumer",
            f"w{i}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    try:
        async with asyncio.timeout(60):
            while True:  # every worker has joined (published its first, empty snapshot)
                if await client.hlen(snapshots) >= workers:
                    break
                await asyncio.sleep(0.05)
        started = time.time()
        pipe = client.pipeline(transaction=False)
        for i, payload in enumerate(payloads, start=1):
            pipe.xadd(key, {FIELD: payload}, maxlen=config.stream.maxlen, approximate=True)
            # (the bench's own appending: redis-py's plain pipeline, off the measured side)
            if i % 500 == 0:
                await pipe.execute()
        await pipe.execute()
        total = len(payloads)
        async with asyncio.timeout(300):
            while True:
                counted, at = 0, 0.0
                for blob in (await client.hgetall(snapshots)).values():
                    doc = msgpack.unpackb(blob, raw=False, strict_map_key=False)
                    counted += sum(e["exchanges"] for e in doc["snapshot"]["endpoints"])
                    at = max(at, doc["at"])
                if counted >= total:
                    return total / (at - started)
                await asyncio.sleep(0.02)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await client.aclose()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=12_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    exchanges = workload(args.records)
    payloads = [msgpack.packb(record_of(e), use_bin_type=True) for e in exchanges]
    frames = b"".join(frame(p) for p in payloads)
    assert encode_header  # the same framing as a capture file's records
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = subprocess.Popen(  # noqa: ASYNC220 - before anything else runs
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        await wait_ping(url)
        cost = await cost_per_record(url, server.pid, exchanges)
        rates: dict[str, list[float]] = {
            "local hand-off, 1 worker": [],
            "Redis, 1 worker": [],
            "Redis, 2 workers": [],
        }
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            for run in range(args.runs):
                print(f"run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
                key = f"bench:run{run}"
                config_path = tmp / f"run{run}.toml"
                config_path.write_text(config_text(url, key))
                rates["local hand-off, 1 worker"].append(
                    await local_handoff_rate(config_path, frames, len(payloads), tmp)
                )
                for workers in (1, 2):
                    key_w = f"{key}:w{workers}"
                    path_w = tmp / f"run{run}w{workers}.toml"
                    path_w.write_text(config_text(url, key_w))
                    rates[f"Redis, {workers} worker{'s' if workers > 1 else ''}"].append(
                        await redis_rate(url, path_w, key_w, payloads, workers)
                    )
    finally:
        server.kill()
        server.wait()
    print(f"records: {cost['records']}, payload {cost['payload_bytes']:.0f} B (3 targets)")
    print("\n| stream cost per record | value |\n| --- | ---: |")
    print(f"| data plane `offer()` (encode + buffer), on the loop | {cost['offer_us']:.1f} µs |")
    print(f"| of which msgpack encode | {cost['encode_us']:.1f} µs |")
    print(
        f"| ingress process CPU in all (offer + sender task's XADD batches) | "
        f"{cost['sender_cpu_us']:.1f} µs |"
    )
    print(f"| Redis CPU, XADD MAXLEN ~ | {cost['redis_append_us']:.1f} µs |")
    print(f"| Redis CPU, XREADGROUP + XACK | {cost['redis_read_ack_us']:.1f} µs |")
    print(f"| wire, XADD (ingress → Redis) | {cost['xadd_bytes']:.0f} B |")
    print(f"| wire, XREADGROUP reply (Redis → worker) | {cost['read_bytes']:.0f} B |")
    print(f"| wire, XACK (worker → Redis) | {cost['ack_bytes']:.0f} B |")
    print(f"| Redis memory per entry held (MAXLEN bounds it) | {cost['memory_bytes']:.0f} B |")
    print(f"| shed during the measurement | {cost['shed']} |")
    print(f"\n| analysis, {args.runs} runs interleaved | exchanges/s (median) | runs |")
    print("| --- | ---: | --- |")
    for name, values in rates.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {name} | {statistics.median(values):,.0f} | {runs} |")
    print(f"\nmachine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

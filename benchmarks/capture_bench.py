"""Capture throughput: records/s and MB/s written (through the writer thread) and read back.

    python benchmarks/capture_bench.py [--records 50000]

Flush policy as in the daemon: one write() per batch of up to 512 records, fsync on rotation
and close only. Redaction runs (headers by name; no body paths configured).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shadowd.capture.reader import CaptureReader
from shadowd.capture.writer import CaptureWriter
from shadowd.config import CaptureConfig
from shadowd.exchange import Answer, Exchange, Request

BODY = b'{"id": 1, "name": "widget", "description": "' + b"x" * 940 + b'"}'


def exchange(i: int) -> Exchange:
    request = Request(
        "GET",
        f"/items/{i}?page=2",
        [(b"Host", b"shop"), (b"Accept", b"*/*"), (b"Authorization", b"Bearer abc")],
        b"",
        time.time(),
        "10.0.0.1",
    )
    ex = Exchange(i, request, "GET /items/{id}")
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(BODY))]
    ex.answers["primary"] = Answer("primary", 200, headers, BODY, len(BODY), latency=0.002)
    ex.answers["candidate"] = Answer("candidate", 200, headers, BODY, len(BODY), latency=0.003)
    return ex


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args()
    exchanges = [exchange(i) for i in range(1000)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.shadow"
        config = CaptureConfig(path=path, buffer_records=args.records, max_bytes=1 << 40)
        writer = CaptureWriter(config)
        await writer.start()
        started = time.perf_counter()
        submit_started = time.perf_counter()
        for i in range(args.records):
            writer.submit(exchanges[i % 1000])
        submit_us = (time.perf_counter() - submit_started) / args.records * 1e6
        await writer.close(timeout=600)
        seconds = time.perf_counter() - started
        size = os.path.getsize(path)  # noqa: ASYNC240 - a benchmark, nothing else runs
        started = time.perf_counter()
        reader = CaptureReader(path)
        count = sum(1 for _ in reader.exchanges())
        read_seconds = time.perf_counter() - started
    print(
        f"{'':<8}{'records':>9}{'records/s':>12}{'MB/s':>8}   ({size / args.records:.0f} B/record)"
    )
    print(
        f"{'write':<8}{writer.written:>9}{writer.written / seconds:>12,.0f}"
        f"{size / seconds / 1e6:>8.1f}   submit() {submit_us:.2f} us on the event loop; "
        f"dropped {writer.dropped}"
    )
    print(f"{'read':<8}{count:>9}{count / read_seconds:>12,.0f}{size / read_seconds / 1e6:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Replay as a load generator: its maximum rate against wrk's, and its rate accuracy.

    python benchmarks/replay_bench.py [--duration 10]

One nginx backend (CPU 1); the load generator under test on CPU 0. A synthetic capture of
1,000 GET requests is replayed in a loop, with nothing to compare against but the recorded
answers (the diff engine runs, as it would for a user).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from proxy_bench import BODY, LOAD_CPU, PROXY_CPU, Processes, free_port, pinned, wait_port  # noqa: E402

from shadowd.capture.format import encode_header, encode_record, record_of  # noqa: E402
from shadowd.exchange import Answer, Exchange, Request  # noqa: E402


def make_capture(path: Path, records: int = 1000) -> None:
    body = BODY.encode()
    data = bytearray(encode_header("replay_bench", time.time(), ""))
    for i in range(records):
        ex = Exchange(
            i,
            Request("GET", f"/api/items/{i}", [(b"Host", b"bench")], b"", 1000.0 + i * 0.001),
            "GET /api/items/{id}",
        )
        ex.answers["primary"] = Answer(
            "primary",
            200,
            [(b"Content-Type", b"application/json")],
            body,
            len(body),
            latency=0.0003,
        )
        data += encode_record(record_of(ex))
    path.write_bytes(bytes(data))


def replay(capture: Path, url: str, *args: str) -> dict:
    out = Path(tempfile.mktemp(suffix=".json"))
    subprocess.run(
        pinned(
            PROXY_CPU,
            [
                sys.executable,
                "-m",
                "shadowd",
                "replay",
                str(capture),
                "--target",
                f"candidate={url}",
                "--loop",
                "1000000",
                *args,
                "--json",
                str(out),
            ],
        ),
        check=True,
        capture_output=True,
        cwd=HERE.parent,
    )
    result = json.loads(out.read_text())
    out.unlink()
    return result


def wrk(url: str, duration: float) -> float:
    text = subprocess.run(
        pinned(PROXY_CPU, ["wrk", "-t1", "-c32", f"-d{duration:g}s", url + "/api/items/1"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    procs = Processes()
    port = free_port()
    escaped = BODY.replace("'", "\\'")
    procs.nginx(
        f"server {{ listen 127.0.0.1:{port}; default_type application/json;"
        f" location / {{ return 200 '{escaped}'; }} }}",
        LOAD_CPU,
    )
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as tmp:
            capture = Path(tmp) / "bench.shadow"
            make_capture(capture)
            wrk_rate = wrk(url, args.duration)
            closed = replay(capture, url, "--concurrency", "32", "--duration", f"{args.duration}")
            rows = []
            for rate in (1000, 2000, 5000):
                result = replay(capture, url, "--rate", str(rate), "--duration", f"{args.duration}")
                lat = result["latency"]["candidate"]
                rows.append(
                    (
                        rate,
                        result["achieved_rate"],
                        lat["corrected"].get("p99", 0),
                        lat["uncorrected"].get("p99", 0),
                    )
                )
    finally:
        procs.stop()
    print(f"\nmaximum rate, 32 in flight, {args.duration:g}s, one process each:")
    print(f"  wrk -t1 -c32           {wrk_rate:>10,.0f} req/s")
    print(
        f"  shadowd replay -c 32   {closed['achieved_rate']:>10,.0f} req/s   "
        f"({closed['achieved_rate'] / wrk_rate:.2f}x wrk)"
    )
    print(f"\nrate accuracy over {args.duration:g}s (open loop):")
    print(
        f"  {'asked':>7}{'achieved':>11}{'error':>9}{'p99 corrected ms':>19}"
        f"{'p99 uncorrected ms':>21}"
    )
    for asked, achieved, p99c, p99u in rows:
        print(
            f"  {asked:>7,}{achieved:>11,.1f}{(achieved - asked) / asked:>9.2%}"
            f"{p99c * 1000:>19.2f}{p99u * 1000:>21.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

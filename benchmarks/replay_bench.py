"""Replay as a load generator: its top rate against wrk's, and its rate accuracy.

    python benchmarks/replay_bench.py [--seconds 10] [--runs 3]

One nginx backend (worker_processes auto). Nothing is pinned: wrk runs with 2 threads and 64
connections, `shadowd replay` on its defaults (one sender process per core, and the parent
process diffing) with 64 requests in flight. The capture holds 1,000 GET requests whose
recorded answers differ from the live ones in one field (a request id), so the comparison
parses and diffs every answer, as it would against a real service. Rows:

- wrk: the peer's top rate;
- replay, comparison on, defaults: the headline. The comparing process runs at
  `--analysis-nice 10`, so at the top rate it compares what CPU the senders leave and counts
  the rest as not compared; the table shows the share of answers compared;
- replay, comparison on, `--analysis-nice 0`: the comparison on an equal footing with the
  senders (more compared, fewer sent);
- replay --no-diff: the senders alone;
- replay --workers 1: one sender process;
- rate accuracy: `--rate` 1k, 5k and 20k for the whole run, achieved vs asked, and the share
  of answers compared at that rate.

Medians of `--runs` runs, peers interleaved in each run.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _peers import Processes, free_port, wait_port  # noqa: E402

from shadowd.capture.format import encode_header, encode_record, record_of  # noqa: E402
from shadowd.exchange import Answer, Exchange, Request  # noqa: E402

LIVE = json.dumps(
    {
        "request_id": "live",
        "items": [{"id": i, "name": f"item {i}", "price": i * 1.25} for i in range(40)],
    }
)
RECORDED = LIVE.replace('"live"', '"recorded"')  # one field differs: every answer is parsed


def make_capture(path: Path, records: int = 1000) -> None:
    body = RECORDED.encode()
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
            body_size=len(body),
            latency=0.0003,
        )
        data += encode_record(record_of(ex))
    path.write_bytes(bytes(data))


def replay(capture: Path, url: str, *args: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    subprocess.run(
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
        check=True,
        capture_output=True,
        cwd=HERE.parent,
        timeout=600,
    )
    result = json.loads(out.read_text())
    out.unlink()
    return result


def wrk(url: str, seconds: float) -> float:
    text = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds:g}s", url + "/api/items/1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))


HEADLINE = "replay, comparison on (defaults: --analysis-nice 10)"
EAGER = "replay, comparison on, --analysis-nice 0"
ONE = "replay --workers 1, comparison on"


def compared(summary: dict) -> float:
    """The share of answered requests whose answers the comparison saw."""
    return summary["report"]["totals"]["exchanges"] / max(1, summary["completed"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    seconds = f"{args.seconds:g}"
    procs = Processes()
    port = free_port()
    escaped = LIVE.replace("'", "\\'")
    procs.nginx(
        f"server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;"
        f" default_type application/json; location / {{ return 200 '{escaped}'; }} }}",
        workers="auto",
    )
    rows: dict[str, list[float]] = {}
    diffed: dict[str, list[float]] = {}
    accuracy: dict[int, list[tuple[float, float, float, float]]] = {}
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as tmp:
            capture = Path(tmp) / "bench.shadow"
            make_capture(capture)
            for run in range(args.runs):
                print(f"run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
                rows.setdefault("wrk -t2 -c64", []).append(wrk(url, args.seconds))
                full = replay(capture, url, "--concurrency", "64", "--duration", seconds)
                rows.setdefault(HEADLINE, []).append(full["achieved_rate"])
                diffed.setdefault(HEADLINE, []).append(compared(full))
                eager = replay(
                    capture,
                    url,
                    "--concurrency",
                    "64",
                    "--duration",
                    seconds,
                    "--analysis-nice",
                    "0",
                )
                rows.setdefault(EAGER, []).append(eager["achieved_rate"])
                diffed.setdefault(EAGER, []).append(compared(eager))
                bare = replay(
                    capture, url, "--concurrency", "64", "--duration", seconds, "--no-diff"
                )
                rows.setdefault("replay --no-diff", []).append(bare["achieved_rate"])
                one = replay(
                    capture, url, "--concurrency", "64", "--duration", seconds, "--workers", "1"
                )
                rows.setdefault(ONE, []).append(one["achieved_rate"])
                diffed.setdefault(ONE, []).append(compared(one))
                for rate in (1000, 5000, 20000):
                    result = replay(capture, url, "--rate", str(rate), "--duration", seconds)
                    lat = result["latency"]["candidate"]
                    accuracy.setdefault(rate, []).append(
                        (
                            result["achieved_rate"],
                            lat["corrected"].get("p99", 0),
                            lat["uncorrected"].get("p99", 0),
                            compared(result),
                        )
                    )
    finally:
        procs.stop()
    wrk_rate = statistics.median(rows["wrk -t2 -c64"])
    print(f"\n### Replay: top rate, 64 in flight, {seconds} s, medians of {args.runs}")
    print("| load generator | req/s | vs wrk | answers compared |")
    print("| --- | ---: | ---: | ---: |")
    for name, rates in rows.items():
        rate = statistics.median(rates)
        share = f"{statistics.median(diffed[name]):.1%}" if name in diffed else "-"
        print(f"| {name} | {rate:,.0f} | {rate / wrk_rate:.2f}x | {share} |")
    print(f"\n### Replay: rate accuracy over {seconds} s (open loop, medians)")
    print(
        "| asked req/s | achieved | error | p99 corrected ms | p99 uncorrected ms "
        "| answers compared |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for asked, results in accuracy.items():
        achieved = statistics.median(r[0] for r in results)
        p99c = statistics.median(r[1] for r in results)
        p99u = statistics.median(r[2] for r in results)
        share = statistics.median(r[3] for r in results)
        print(
            f"| {asked:,} | {achieved:,.1f} | {(achieved - asked) / asked:+.2%} | "
            f"{p99c * 1000:.2f} | {p99u * 1000:.2f} | {share:.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

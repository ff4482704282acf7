"""The proxy data plane against its peers, side by side, on loopback, in one run.

    python benchmarks/proxy_bench.py [--duration 10] [--connections 32] [--runs 3]

Peers (each in front of the same nginx backend, each copying every request to a mirror
target that is the same backend on a second port):
  direct          wrk -> backend (the floor: no proxy)
  nginx+mirror    nginx proxy_pass + `mirror` (what a user would pick instead of shadowd)
  aiohttp+mirror  a plain aiohttp proxy with a fire-and-forget mirror task
  shadowd         shadowd in proxy mode, one worker, mirroring and diffing every request

Pinning: the proxy under test gets CPU 0; wrk/hey and the backend share CPU 1, so each proxy
gets one core of its own. Figures are medians of --runs runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _peers import Processes, duration_ms, free_port, pinned, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BODY = json.dumps(
    {
        "id": 42,
        "name": "widget",
        "price": 9.99,
        "currency": "EUR",
        "tags": ["a", "b", "c"],
        "stock": {"warehouse": "north", "count": 17},
        "description": "lorem ipsum dolor sit amet " * 30,
    }
)
PROXY_CPU, LOAD_CPU = "0", "1"


@dataclass
class Result:
    peer: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    runs: list[dict[str, float]] = field(default_factory=list)
    note: str = ""


def wrk(url: str, duration: float, connections: int) -> dict[str, float]:
    out = subprocess.run(
        pinned(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # Anchored: the thread statistics above have columns like "68.50%" that "50%" would match.
    p50 = duration_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = duration_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"    wrk reported errors: {errors.group(0)}", file=sys.stderr)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def hey_fixed_rate(url: str, rate: int, seconds: float) -> dict[str, float]:
    """hey paces each of 10 workers at rate/10 per second (open loop per worker ticker)."""
    workers = 10
    out = subprocess.run(
        pinned(
            LOAD_CPU,
            ["hey", "-z", f"{seconds:g}s", "-c", str(workers), "-q", str(rate // workers), url],
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    achieved = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = float(re.search(r"50% in ([\d.]+) secs", out).group(1)) * 1000
    p99 = float(re.search(r"99% in ([\d.]+) secs", out).group(1)) * 1000
    return {"rps": achieved, "p50_ms": p50, "p99_ms": p99}


def shadowd_config(tmp: Path, listen: int, admin: int, primary: int, mirror: int) -> Path:
    path = tmp / "shadowd-bench.toml"
    path.write_text(
        f'[ingress]\nmode = "proxy"\nlisten = "127.0.0.1:{listen}"\n'
        f'[targets.primary]\nurl = "http://127.0.0.1:{primary}"\n'
        f'[targets.candidate]\nurl = "http://127.0.0.1:{mirror}"\n'
        f"[mirror]\nsample_rate = 1.0\nqueue_size = 4096\nmax_in_flight = 256\n"
        f'[admin]\nlisten = "127.0.0.1:{admin}"\n[logging]\nlevel = "warning"\n'
    )
    return path


def scrape(admin: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        for name in (
            "shadowd_exchanges_total",
            "shadowd_mirror_dropped_total",
            "shadowd_ingress_requests_total",
        ):
            if line.startswith(name) and ('target="candidate"' in line or "exchanges" not in name):
                sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


def measure(name: str, url: str, args: argparse.Namespace) -> Result:
    wrk(url, 2, args.connections)  # warm-up: pools filled, caches hot
    result = Result(name)
    for _ in range(args.runs):
        result.runs.append(wrk(url, args.duration, args.connections))
    result.rps = statistics.median(r["rps"] for r in result.runs)
    result.p50_ms = statistics.median(r["p50_ms"] for r in result.runs)
    result.p99_ms = statistics.median(r["p99_ms"] for r in result.runs)
    print(
        f"  {name:<15} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
        f"p99 {result.p99_ms:6.2f} ms",
        file=sys.stderr,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1000, help="fixed-rate test (req/s)")
    parser.add_argument("--only", action="append", help="measure only these peers")
    args = parser.parse_args()
    for tool in ("wrk", "hey"):
        if not shutil.which(tool):
            print(f"{tool} is missing: run scripts/install-system-deps", file=sys.stderr)
            return 2
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="shadowd-bench-"))
    primary, mirror = free_port(), free_port()
    escaped = BODY.replace("'", "\\'")
    procs.nginx(
        f"server {{ listen 127.0.0.1:{primary}; listen 127.0.0.1:{mirror};\n"
        f" default_type application/json; location / {{ return 200 '{escaped}'; }} }}",
        LOAD_CPU,
    )
    wait_port(primary)
    results: list[Result] = []
    fixed: list[Result] = []
    wanted = set(args.only or ["direct", "nginx+mirror", "aiohttp+mirror", "shadowd"])
    print(
        f"proxy benchmark: wrk -t1 -c{args.connections} -d{args.duration:g}s x{args.runs}, "
        f"{len(BODY)} B JSON answers, proxy on CPU {PROXY_CPU}",
        file=sys.stderr,
    )
    try:
        peers: list[tuple[str, str]] = [("direct", f"http://127.0.0.1:{primary}")]
        port = free_port()
        procs.nginx(
            f"upstream primary {{ server 127.0.0.1:{primary}; keepalive 64; }}\n"
            f"upstream mirror {{ server 127.0.0.1:{mirror}; keepalive 64; }}\n"
            f"server {{ listen 127.0.0.1:{port};\n"
            " location / { mirror /_m; proxy_pass http://primary; proxy_http_version 1.1;"
            ' proxy_set_header Connection ""; }\n'
            " location = /_m { internal; proxy_pass http://mirror$request_uri;"
            ' proxy_http_version 1.1; proxy_set_header Connection ""; } }',
            PROXY_CPU,
        )
        wait_port(port)
        peers.append(("nginx+mirror", f"http://127.0.0.1:{port}"))
        port = free_port()
        procs.start(
            pinned(
                PROXY_CPU,
                [
                    sys.executable,
                    str(HERE / "plain_aiohttp_proxy.py"),
                    str(port),
                    f"http://127.0.0.1:{primary}",
                    f"http://127.0.0.1:{mirror}",
                ],
            )
        )
        wait_port(port)
        peers.append(("aiohttp+mirror", f"http://127.0.0.1:{port}"))
        port, admin = free_port(), free_port()
        config = shadowd_config(tmp, port, admin, primary, mirror)
        shadowd = procs.start(
            pinned(PROXY_CPU, [sys.executable, "-m", "shadowd", "run", "-c", str(config)]), cwd=ROOT
        )
        wait_port(port)
        peers.append(("shadowd", f"http://127.0.0.1:{port}"))
        for name, base in peers:
            if name in wanted:
                results.append(measure(name, base + "/api/items/1", args))
        shadowd_stats = scrape(admin)
        for name, base in peers:
            if name in wanted and name != "aiohttp+mirror":
                hey_fixed_rate(base + "/api/items/1", args.rate, 2)  # warm-up
                r = Result(
                    name,
                    **{
                        k: v
                        for k, v in hey_fixed_rate(base + "/api/items/1", args.rate, 10).items()
                    },
                )
                fixed.append(r)
        if shadowd.poll() is not None:
            print(shadowd.stderr.read().decode() if shadowd.stderr else "", file=sys.stderr)
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print_tables(results, fixed, args, shadowd_stats if "shadowd" in wanted else {})
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"proxy-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {"max_rate": [asdict(r) for r in results], "fixed_rate": [asdict(r) for r in fixed]},
            indent=2,
        )
    )
    print(f"\nresults: {out.relative_to(ROOT)}")
    return 0


def print_tables(
    results: list[Result], fixed: list[Result], args: argparse.Namespace, stats: dict[str, float]
) -> None:
    by = {r.peer: r for r in results}
    nginx, plain = by.get("nginx+mirror"), by.get("aiohttp+mirror")
    print(
        f"\n{'peer':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'vs nginx+mirror':>17}{'vs aiohttp+mirror':>19}"
    )
    for r in results:
        vs_n = f"{r.rps / nginx.rps:.2f}x" if nginx else "-"
        vs_p = f"{r.rps / plain.rps:.2f}x" if plain else "-"
        print(f"{r.peer:<16}{r.rps:>10,.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{vs_n:>17}{vs_p:>19}")
    if stats:
        sent = stats.get("shadowd_ingress_requests_total", 0)
        mirrored = stats.get("shadowd_exchanges_total", 0)
        dropped = stats.get("shadowd_mirror_dropped_total", 0)
        print(
            f"\nshadowd mirrored and diffed {mirrored:,.0f} of {sent:,.0f} requests "
            f"({mirrored / sent if sent else 0:.1%}), dropped {dropped:,.0f}"
        )
    if fixed:
        direct = next((r for r in fixed if r.peer == "direct"), None)
        print(f"\nfixed rate {args.rate} req/s for 10 s (hey -c 10 -q {args.rate // 10})")
        print(f"{'peer':<16}{'achieved':>10}{'p50 ms':>9}{'p99 ms':>9}{'added p99 ms':>14}")
        for r in fixed:
            added = f"{r.p99_ms - direct.p99_ms:.2f}" if direct and r is not direct else "-"
            print(f"{r.peer:<16}{r.rps:>10,.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{added:>14}")


if __name__ == "__main__":
    sys.exit(main())

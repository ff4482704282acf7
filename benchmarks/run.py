"""`make bench`: every benchmark, one after the other, each printing its own table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "proxy_bench.py",
    "http1_bench.py",
    "planes_bench.py",
    "faults_bench.py",
    "diff_bench.py",
    "analysis_bench.py",
    "capture_bench.py",
    "replay_bench.py",
    "middleware_bench.py",
    "stream_bench.py",
]


def main() -> int:
    failed = 0
    for name in BENCHMARKS:
        script = HERE / name
        if not script.exists():
            continue
        print(f"\n=== {name} ===", flush=True)
        failed |= subprocess.call([sys.executable, str(script)]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Production traffic while the candidate misbehaves: side by side, on loopback, in one run.

    python benchmarks/faults_bench.py [--runs 3] [--seconds 10] [--quick]

One nginx primary (3.4 KB JSON answers, and a 1 MiB one for the memory rows) behind
`shadowd run` (a real supervisor with its ingress and analysis workers, defaults otherwise,
every GET copied), driven by `wrk -t2 -c64 --latency`. One shadowd per scenario, each with a
candidate that is:

  healthy       a second nginx answering the same (the baseline)
  mirroring off no copies at all ([mirror] enabled = false): the ceiling, for reference
  hung          accepts, reads, never answers (each copy waits for the candidate timeout)
  down          a closed port (every copy is refused at connect)
  resetting     accepts, reads the request, aborts the connection (RST)
  garbage       answers every request with bytes that are not HTTP
  endless head  answers with a head that never ends (one field line after another)
  huge answers  answers with a 64 GiB body, sent as fast as the socket takes it
  1MiB healthy  / 1MiB hung: the same with 1 MiB primary answers, for shadowd's memory

The runs are interleaved (run 1 of every scenario, then run 2...), so drift in the load of a
shared machine spreads over all scenarios instead of landing on one. Figures are medians of
--runs; RSS is the peak, over the measured runs, of the VmRSS sum of shadowd's process tree.
Nothing is pinned to a CPU. Targets (reported, not enforced): req/s >= 95 % and p99 <= 1.2x
of the healthy run; RSS <= 2x of the healthy run with the same answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from _peers import Processes, duration_ms, free_port, rss_bytes, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHADOWD = ROOT / ".venv" / "bin" / "shadowd"

RPS_TARGET = 0.95  # of the healthy run's req/s
P99_TARGET = 1.2  # times the healthy run's p99
RSS_TARGET = 2.0  # times the healthy run's RSS, same answers
FAULTS = ("hung", "reset", "garbage", "endless_head", "huge")  # this script's --serve mode
_STREAMED = {  # what the streaming faults send, over and over, after their first line
    "endless_head": (b"HTTP/1.1 200 OK\r\n", b"X-Field: " + b"v" * 1000 + b"\r\n"),
    "huge": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 << 30), b"z" * 65536),
}


def json_body(size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes (one item array, padded in a string)."""
    item = {"id": 42, "name": "widget", "price": 9.99, "currency": "EUR", "tags": ["a", "b"]}
    doc = {"items": [item] * max(1, size // 400), "pad": ""}
    text = json.dumps(doc, separators=(",", ":"))
    doc["pad"] = "x" * max(0, size - len(text))
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) == size, (len(body), size)
    return body


# -- the misbehaving candidates ---------------------------------------------------------------
class _Fault(asyncio.Protocol):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.transport: asyncio.Transport | None = None
        self.seen = b""
        self.streaming = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.kind == "hung" or self.transport is None:
            return  # read and dropped, so the sender never blocks on a full socket
        self.seen += data
        if b"\r\n\r\n" not in self.seen:
            return  # a whole request head first: the fault follows a request, not a connect
        self.seen = b""
        if self.kind in _STREAMED:
            if not self.streaming:  # one answer per connection: it never ends
                self.streaming = True
                self.transport.write(_STREAMED[self.kind][0])
                self._pump()
        elif self.kind == "reset":
            sock = self.transport.get_extra_info("socket")
            # SO_LINGER 0: the close is an RST, not a FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.write(b"\x00\xff\xfeSSH-2.0-not-http \x1b[31m\r\n\r\n<html>")

    def _pump(self) -> None:
        # Until the transport's buffer is full (pause_writing), again once it drains.
        transport, block = self.transport, _STREAMED[self.kind][1]
        while transport is not None and not self.paused and not transport.is_closing():
            transport.write(block)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def _serve(ports: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    for kind, port in ports.items():
        await loop.create_server(
            lambda kind=kind: _Fault(kind), "127.0.0.1", port, backlog=1024, reuse_address=True
        )
    await asyncio.Event().wait()


# -- shadowd and wrk ----------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    candidate: str  # healthy, off (mirroring disabled), or one of FAULTS, or down
    path: str  # the primary's answer: 3.4 KB or 1 MiB
    healthy: str  # the scenario it is compared with
    port: int = 0
    admin: int = 0
    proc: subprocess.Popen[bytes] | None = None
    runs: list[dict[str, float]] = field(default_factory=list)
    rss_peak: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.runs)


def shadowd_config(tmp: Path, s: Scenario, primary: int, candidate: int) -> Path:
    path = tmp / f"shadowd-{s.name.replace(' ', '-')}.toml"
    path.write_text(
        f'[ingress]\nmode = "proxy"\nlisten = "127.0.0.1:{s.port}"\n'
        f'[targets.primary]\nurl = "http://127.0.0.1:{primary}"\n'
        f'[targets.candidate]\nurl = "http://127.0.0.1:{candidate}"\n'
        f"[mirror]\nenabled = {'false' if s.candidate == 'off' else 'true'}\nsample_rate = 1.0\n"
        f'[admin]\nlisten = "127.0.0.1:{s.admin}"\n'
    )
    return path


def wait_ready(admin: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"shadowd exited ({proc.returncode}) before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"shadowd not ready after {timeout}s")


def wrk(url: str, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds:g}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    # Anchored: the thread statistics above have columns like "68.50%" and "91.99%".
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (found and p50 and p99):
        raise RuntimeError(f"unreadable wrk output:\n{out}")
    errors = 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += float(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(float(n) for n in sock.groups())
    return {
        "rps": float(found.group(1)),
        "p50_ms": duration_ms(p50.group(1)),
        "p99_ms": duration_ms(p99.group(1)),
        "errors": errors,
    }


class PeakRss:
    """The highest VmRSS sum of a process tree, sampled while a measurement runs."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


def scrape(admin: int) -> dict[str, float]:
    """Candidate-side counters, to show the fault was real: copies that failed, and copies
    dropped (``dropped:<reason>``, e.g. an open breaker)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("shadowd_upstream_errors_total") and 'target="candidate"' in line:
            sums["candidate_errors"] = sums.get("candidate_errors", 0) + float(line.split()[-1])
        elif line.startswith("shadowd_mirror_dropped_total"):
            reason = re.search(r'reason="([^"]*)"', line)
            key = f"dropped:{reason.group(1) if reason else '?'}"
            sums[key] = sums.get(key, 0) + float(line.split()[-1])
    return sums


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# -- the run ------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s per scenario")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # kind=port,...: the fault server
    args = parser.parse_args()
    if args.serve:
        ports = {kind: int(port) for kind, port in (p.split("=") for p in args.serve.split(","))}
        asyncio.run(_serve(ports))
        return 0
    if args.quick:
        args.runs, args.seconds = 1, 3.0
    if not shutil.which("wrk"):
        print("wrk is missing: run scripts/install-system-deps", file=sys.stderr)
        return 2
    if not SHADOWD.exists():
        print(f"{SHADOWD} is missing: run make setup", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="shadowd-faults-"))
    (tmp / "logs").mkdir()
    # Output to files: a pipe nobody reads would stall a process that logs every failed copy.
    procs = Processes(log_dir=tmp / "logs")
    small, big = json_body(3400), json_body(1 << 20)
    (tmp / "www").mkdir()
    # nginx's workers run as an unprivileged user: mkdtemp's 0700 would make every answer 403.
    tmp.chmod(0o755)
    (tmp / "www").chmod(0o755)
    (tmp / "www" / "small.json").write_bytes(small)
    (tmp / "www" / "big.json").write_bytes(big)
    scenarios = [
        Scenario("healthy", "healthy", "/small.json", "healthy"),
        # The ceiling: no copies at all. A failing candidate can only approach it.
        Scenario("mirroring off", "off", "/small.json", "healthy"),
        Scenario("hung", "hung", "/small.json", "healthy"),
        Scenario("down", "down", "/small.json", "healthy"),
        Scenario("resetting", "reset", "/small.json", "healthy"),
        Scenario("garbage", "garbage", "/small.json", "healthy"),
        Scenario("endless head", "endless_head", "/small.json", "healthy"),
        Scenario("huge answers", "huge", "/small.json", "healthy"),
        Scenario("1MiB healthy", "healthy", "/big.json", "1MiB healthy"),
        Scenario("1MiB hung", "hung", "/big.json", "1MiB healthy"),
    ]
    load_before = loadavg()
    print(
        f"faults benchmark: wrk -t2 -c64 -d{args.seconds:g}s x{args.runs} (interleaved), "
        f"{len(small)} B and {len(big)} B JSON answers, {len(scenarios)} scenarios, "
        f"load average {load_before}",
        file=sys.stderr,
    )
    try:
        primary, healthy = free_port(), free_port()
        site = (
            f" root {tmp / 'www'}; default_type application/json;"
            " location / { etag off; add_header Cache-Control no-store; }"
        )
        procs.nginx(f"server {{ listen 127.0.0.1:{primary};{site} }}", name="primary")
        procs.nginx(f"server {{ listen 127.0.0.1:{healthy};{site} }}", name="candidate")
        faults = {kind: free_port() for kind in FAULTS}
        down = free_port()  # bound and released: nothing listens there
        fault_server = procs.start(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve",
                ",".join(f"{k}={p}" for k, p in faults.items()),
            ],
            name="faults",
        )
        for port in (primary, healthy, *faults.values()):
            wait_port(port, proc=fault_server if port in faults.values() else None)
        candidate_port = {"healthy": healthy, "off": healthy, "down": down, **faults}
        for s in scenarios:
            s.port, s.admin = free_port(), free_port()
            config = shadowd_config(tmp, s, primary, candidate_port[s.candidate])
            s.proc = procs.start([str(SHADOWD), "run", "-c", str(config)], name="shadowd")
        for s in scenarios:
            assert s.proc is not None
            wait_ready(s.admin, s.proc)
            wrk(f"http://127.0.0.1:{s.port}{s.path}", 2)  # warm-up: pools filled
        for run in range(args.runs):
            for s in scenarios:
                assert s.proc is not None
                with PeakRss(s.proc.pid) as rss:
                    s.runs.append(wrk(f"http://127.0.0.1:{s.port}{s.path}", args.seconds))
                s.rss_peak = max(s.rss_peak, rss.peak)
                r = s.runs[-1]
                print(
                    f"  run {run + 1} {s.name:<13} {r['rps']:>8,.0f} req/s  "
                    f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                    f"RSS {rss.peak / 1e6:6.0f} MB  errors {r['errors']:.0f}",
                    file=sys.stderr,
                )
        for s in scenarios:
            s.metrics = scrape(s.admin)
            if s.proc is not None and s.proc.poll() is not None:
                print(f"shadowd ({s.name}) exited: {s.proc.returncode}", file=sys.stderr)
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(scenarios, args, load_before, loadavg())
    return 0


def print_table(
    scenarios: list[Scenario], args: argparse.Namespace, load_before: str, load_after: str
) -> None:
    by = {s.name: s for s in scenarios}
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.runs} x "
        f"{args.seconds:g} s per scenario, load average {load_before} before, "
        f"{load_after} after\n"
    )
    print(
        "| candidate | req/s | p50 ms | p99 ms | req/s vs healthy | p99 vs healthy | RSS MB "
        "| RSS vs healthy | wrk errors | copies failed / dropped (main reason) | targets |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for s in scenarios:
        base = by[s.healthy]
        rps, p50, p99 = s.median("rps"), s.median("p50_ms"), s.median("p99_ms")
        rps_ratio = rps / base.median("rps")
        p99_ratio = p99 / base.median("p99_ms")
        rss_ratio = s.rss_peak / base.rss_peak if base.rss_peak else float("nan")
        errors = sum(r["errors"] for r in s.runs)
        failed = s.metrics.get("candidate_errors", 0)
        drops = {k[8:]: v for k, v in s.metrics.items() if k.startswith("dropped:") and v}
        dropped = f"{sum(drops.values()):,.0f}"
        if drops:
            dropped += f" ({max(drops, key=lambda k: drops[k])})"
        if s is base:
            verdict = "(baseline)"
        elif s.candidate == "off":
            verdict = "(reference)"
        else:
            missed = []
            if rps_ratio < RPS_TARGET:
                missed.append(f"req/s < {RPS_TARGET:.0%}")
            if p99_ratio > P99_TARGET:
                missed.append(f"p99 > {P99_TARGET}x")
            if s.path == "/big.json" and rss_ratio > RSS_TARGET:
                missed.append(f"RSS > {RSS_TARGET}x")
            verdict = "met" if not missed else "missed: " + ", ".join(missed)
        print(
            f"| {s.name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {rps_ratio:.0%} | "
            f"{p99_ratio:.2f}x | {s.rss_peak / 1e6:.0f} | {rss_ratio:.2f}x | {errors:.0f} | "
            f"{failed:,.0f} / {dropped} | {verdict} |"
        )


if __name__ == "__main__":
    sys.exit(main())

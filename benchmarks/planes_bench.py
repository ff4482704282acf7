"""Two planes: every answer differs. shadowd against nginx with two mirrors, side by side.

    .venv/bin/python benchmarks/planes_bench.py [--runs 3] [--seconds 10] [--quick]

Backends: three nginx servers (primary, secondary, candidate). Every path answers a ~3.4 KB
JSON document embedding nginx's $request_id and $msec, so no two answers are equal and
shadowd must parse and diff every exchange. Under /same/ they answer a static document,
byte-identical on all three: the flattering case, kept beside the headline.

Sections, each a markdown table of medians over --runs runs (peers interleaved in every run):
  1. max rate, `wrk -t2 -c64 --latency`, nothing pinned: direct, nginx+2 mirrors, shadowd,
     shadowd 1 worker, shadowd 2 workers ([ingress] workers; n/a on builds without it), and
     with --nice N shadowd at [analysis] nice = N.
     For shadowd: share of exchanges diffed, share of copies shed (per reason), RSS.
  2. fixed rate, 2,000 req/s in two shapes: evenly paced (`wrk -t2 -c20` with a pacing
     script, a send every 1 ms per thread: many independent clients) and in bursts
     (`hey -c 20 -q 100`: 20 workers ticking together every 10 ms); p50/p99 and p99 added
     over direct.
  3. admin under load: 200 endpoints x 3 targets; 2,000 req/s quiet, then while a poller
     GETs /api/v1/report and /api/v1/verdict every 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _peers import NGINX, ROOT, Processes, duration_ms, free_port, rss_bytes, wait_port

HERE = Path(__file__).resolve().parent
THREADS, CONNECTIONS = 2, 64  # max-rate load: wrk -t2 -c64
RATE, HEY_WORKERS = 2000, 20  # fixed-rate load: hey -c 20 -q 100
ENDPOINTS = 200
POLL_EVERY = 0.1  # seconds between admin polls
SETTLE_LIMIT = 10.0  # seconds to wait for the diff stage to catch up after a load
STEADY_FOR = 2.5  # ...and totals.exchanges must hold still this long (> a 1 s snapshot period)
WRK_TIMEOUT = "30s"  # wrk's default (2 s) would drop stalled requests from its percentiles
ADMIN_TIMEOUT = 60.0  # an admin answer slower than this is a failure
TOOL_SLACK = 30.0  # a load tool may overrun its -d/-z by this much before it is killed
PATH = "/api/orders/1"  # -> endpoint GET /api/orders/{id}
TARGETS = ("primary", "secondary", "candidate")


# ---------------------------------------------------------------- backends and configs


def _document(request_id: str, msec: str, size: int = 3400) -> str:
    """An order document of exactly `size` bytes once nginx has filled the variables."""
    items = [
        {
            "sku": f"SKU-{i:04d}",
            "name": f"widget model {i}",
            "price": round(4.5 + 1.25 * i, 2),
            "currency": "EUR",
            "quantity": i % 5 + 1,
            "tags": ["blue", "small"] if i % 2 else ["red"],
            "warehouse": {"name": "north", "bin": f"B{i:02d}"},
        }
        for i in range(14)
    ]
    doc: dict[str, Any] = {
        "request_id": "@RID@",
        "generated_at": "@MSEC@",
        "order": {"id": 1, "status": "shipped", "customer": {"id": 42, "tier": "gold"}},
        "items": items,
        "totals": {"net": 412.75, "tax": 82.55, "gross": 495.3, "currency": "EUR"},
        "notes": "",
    }

    def render(d: dict[str, Any]) -> str:
        text = json.dumps(d)
        return text.replace('"@RID@"', f'"{request_id}"').replace('"@MSEC@"', msec)

    filler = "lorem ipsum dolor sit amet consectetur " * 100
    doc["notes"] = filler[: max(0, size - len(render(doc)))]
    return render(doc)


DYNAMIC = _document("$request_id", "$msec")  # nginx fills both per answer
STATIC = _document("0" * 32, "1764400000.000")  # same length as a filled DYNAMIC
for _text in (DYNAMIC, STATIC):
    assert "'" not in _text and "\\" not in _text, "the body must not need nginx escaping"
assert STATIC.count("$") == 0 and DYNAMIC.count("$") == 2


def backend_block(port: int, body: str = "<body>") -> str:
    static = STATIC if body == "<body>" else "<static 3.4 KB JSON>"
    dynamic = DYNAMIC if body == "<body>" else "<3.4 KB JSON with $request_id and $msec>"
    return (
        f"server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;\n"
        "  default_type application/json;\n"
        f"  location /same/ {{ return 200 '{static}'; }}\n"
        f"  location / {{ return 200 '{dynamic}'; }} }}"
    )


def mirror_block(port: int, backends: dict[str, int]) -> str:
    upstreams = "".join(
        f"upstream {name} {{ server 127.0.0.1:{p}; keepalive 64; }}\n"
        for name, p in backends.items()
    )
    keepalive = 'proxy_http_version 1.1; proxy_set_header Connection "";'
    return (
        f"{upstreams}"
        f"server {{ listen 127.0.0.1:{port}; keepalive_requests 1000000;\n"
        "  location / { mirror /_secondary; mirror /_candidate;\n"
        f"    proxy_pass http://primary; {keepalive} }}\n"
        "  location = /_secondary { internal;\n"
        f"    proxy_pass http://secondary$request_uri; {keepalive} }}\n"
        "  location = /_candidate { internal;\n"
        f"    proxy_pass http://candidate$request_uri; {keepalive} }} }}"
    )


def shadowd_toml(
    listen: int,
    admin: int,
    backends: dict[str, int],
    workers: int | None,
    nice: int | None = None,
) -> str:
    lines = ["[ingress]", 'mode = "proxy"', f'listen = "127.0.0.1:{listen}"']
    if workers is not None:
        lines.append(f"workers = {workers}")
    for name, port in backends.items():
        lines += ["", f"[targets.{name}]", f'url = "http://127.0.0.1:{port}"']
    lines += ["", "[admin]", f'listen = "127.0.0.1:{admin}"']
    if nice is not None:
        lines += ["", "[analysis]", f"nice = {nice}"]
    return "\n".join(lines) + "\n"


WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
]
SUFFIXES = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st"]
# Distinct first segments: shadowd learns a parameter where one path position takes more than
# 20 values under the same prefix (ids that are not numbers), but never in the first segment,
# so these stay 200 route templates, as 200 real routes would.
ENDPOINT_PATHS = [f"/{w}-{s}/items" for w in WORDS for s in SUFFIXES]
assert len(set(ENDPOINT_PATHS)) == ENDPOINTS


def paced_lua(paths: list[str]) -> str:
    """wrk script: round robin over `paths`, each thread paced to the rate given after `--`.

    `delay()` hands out send slots `interval` ms apart on a monotonic clock (LuaJIT ffi);
    a thread that falls behind does not catch up in a burst (as hey's ticker).
    """
    listed = ",\n  ".join(json.dumps(p) for p in paths)
    return f"""-- written by benchmarks/planes_bench.py
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} planes_timespec;
int clock_gettime(int clk, planes_timespec *tp);
]]
local ts = ffi.new("planes_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local paths = {{
  {listed}
}}
local created = 0
function setup(thread)
  thread:set("offset", created * 101)
  created = created + 1
end
local i, interval, next_at = 0, 1, nil
function init(args)
  interval = 1000 / tonumber(args[1])
  i = offset or 0
end
function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
function delay()
  local now = now_ms()
  if next_at == nil or next_at < now then next_at = now end
  local wait = next_at - now
  next_at = next_at + interval
  return math.floor(wait)
end
"""


# ---------------------------------------------------------------- load tools


def _search(pattern: str, text: str, default: str | None = None) -> str:
    m = re.search(pattern, text)
    if m:
        return m.group(1)
    if default is not None:
        return default
    raise RuntimeError(f"cannot read {pattern!r} in:\n{text}")


def run_wrk(
    url: str,
    seconds: float,
    *,
    threads: int = THREADS,
    connections: int = CONNECTIONS,
    script: Path | None = None,
    script_args: tuple[str, ...] = (),
    rss_pid: int | None = None,
) -> dict[str, Any]:
    """One wrk run; with rss_pid, the RSS of that process tree sampled until wrk ends."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    argv += ["--timeout", WRK_TIMEOUT]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss_last = rss_peak = 0
    deadline = time.monotonic() + seconds + TOOL_SLACK
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if rss_pid is not None:
                sample = rss_bytes(rss_pid)
                rss_last, rss_peak = sample, max(rss_peak, sample)
            time.sleep(0.25)
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"wrk did not finish within {seconds + TOOL_SLACK:g}s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip() or out.strip()}")
    errors = []
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors.append(f"socket errors: {socket_errors.group(1)}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors.append(f"non-2xx: {non2xx.group(1)}")
    requests = int(_search(r"(\d+) requests in", out))
    nothing = requests == 0  # wrk then prints 0.00us percentiles
    return {
        "rps": float(_search(r"Requests/sec:\s+([\d.]+)", out)),
        "requests": requests,
        "p50_ms": float("nan") if nothing else duration_ms(_search(r"\n\s+50%\s+(\S+)", out)),
        "p99_ms": float("nan") if nothing else duration_ms(_search(r"\n\s+99%\s+(\S+)", out)),
        "errors": "; ".join(errors),
        "rss_last": rss_last,
        "rss_peak": rss_peak,
    }


def run_hey(url: str, seconds: float) -> dict[str, Any]:
    """hey -z S -c 20 -q 100: 20 workers each paced at 100 req/s, 2,000 req/s in all."""
    argv = ["hey", "-z", f"{seconds:g}s", "-c", str(HEY_WORKERS), "-q", str(RATE // HEY_WORKERS)]
    try:
        done = subprocess.run(
            [*argv, url], capture_output=True, text=True, timeout=seconds + TOOL_SLACK
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"hey did not finish within {seconds + TOOL_SLACK:g}s") from None
    out = done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr.strip() or out}")
    answered = sum(int(n) for n in re.findall(r"\[\d{3}\]\s+(\d+) responses", out))
    ok = sum(int(n) for n in re.findall(r"\[2\d\d\]\s+(\d+) responses", out))
    error_part = out.split("Error distribution:", 1)[1] if "Error distribution:" in out else ""
    failed = sum(int(n) for n in re.findall(r"\[(\d+)\]\s", error_part))
    errors = []
    if answered - ok:
        errors.append(f"non-2xx: {answered - ok}")
    if failed:
        errors.append(f"failed: {failed}")
    return {
        "rps": float(_search(r"Requests/sec:\s+([\d.]+)", out, "0")),
        "requests": answered + failed,
        "p50_ms": float(_search(r"50% in ([\d.]+) secs", out, "nan")) * 1000,
        "p99_ms": float(_search(r"99% in ([\d.]+) secs", out, "nan")) * 1000,
        "errors": "; ".join(errors),
    }


# ---------------------------------------------------------------- shadowd


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Shadowd:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    config: Path
    unsettled: bool = False

    def report(self) -> dict[str, Any]:
        status, body = http_get(self.admin, "/api/v1/report", timeout=ADMIN_TIMEOUT)
        if status != 200:
            raise RuntimeError(f"{self.name}: GET /api/v1/report answered {status}")
        return json.loads(body)

    def dropped(self) -> dict[str, float]:
        status, body = http_get(self.admin, "/metrics", timeout=ADMIN_TIMEOUT)
        if status != 200:
            raise RuntimeError(f"{self.name}: GET /metrics answered {status}")
        counts: dict[str, float] = {}
        for m in re.finditer(
            r'^shadowd_mirror_dropped_total\{reason="([^"]*)"\} (\S+)$', body.decode(), re.M
        ):
            counts[m.group(1)] = counts.get(m.group(1), 0.0) + float(m.group(2))
        return counts

    def settled_exchanges(self) -> int:
        """totals.exchanges once it has stopped increasing for STEADY_FOR seconds with nothing
        in flight, or after SETTLE_LIMIT seconds (then `unsettled` is set)."""
        deadline = time.monotonic() + SETTLE_LIMIT
        last, since = -1, time.monotonic()
        while True:
            report = self.report()
            now = time.monotonic()
            exchanges = int(report["totals"]["exchanges"])
            mirroring = report.get("mirroring") or {}
            busy = any(
                isinstance(v, int | float) and v > 0
                for v in (mirroring.get(k) for k in ("in_flight", "queue_depth", "diff_backlog"))
            )
            if exchanges != last or busy:
                last, since = exchanges, now
            elif now - since >= STEADY_FOR:
                self.unsettled = False
                return exchanges
            if now >= deadline:
                self.unsettled = True
                return exchanges
            time.sleep(0.25)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = Processes(log_dir=tmp)
        self.shadowd_bin = args.shadowd
        self.backends: dict[str, int] = {}
        self.configs: dict[str, str] = {}

    def fail(self, proc: subprocess.Popen[bytes], what: str) -> RuntimeError:
        return RuntimeError(f"{what}; last lines of its log:\n{self.procs.log_tail(proc)}")

    def start_backends(self) -> None:
        for name in TARGETS:
            port = free_port()
            proc = self.procs.nginx(backend_block(port), name=f"nginx-{name}")
            try:
                wait_port(port, proc=proc)
            except RuntimeError as exc:
                raise self.fail(proc, str(exc)) from None
            self.backends[name] = port
        self.configs["backends (nginx, worker_processes 1 each)"] = "\n".join(
            backend_block(p, body="elided") for p in self.backends.values()
        )

    def start_mirror_nginx(self) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        block = mirror_block(port, self.backends)
        proc = self.procs.nginx(block, workers="auto", name="nginx-mirror")
        try:
            wait_port(port, proc=proc)
        except RuntimeError as exc:
            raise self.fail(proc, str(exc)) from None
        self.configs["nginx+2 mirrors (worker_processes auto)"] = block
        return f"http://127.0.0.1:{port}", proc

    def check_config(self, path: Path) -> tuple[bool, str]:
        done = subprocess.run(
            [self.shadowd_bin, "check-config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode == 0, (done.stdout + done.stderr).strip()

    def start_shadowd(
        self, name: str, workers: int | None, nice: int | None = None
    ) -> Shadowd | str:
        """A running, ready shadowd; or the n/a note when this build has no [ingress] workers."""
        port, admin = free_port(), free_port()
        config = self.tmp / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".toml")
        text = shadowd_toml(port, admin, self.backends, workers, nice)
        config.write_text(text)
        ok, said = self.check_config(config)
        if not ok:
            if workers is not None and "workers" in said:
                return "n/a (no [ingress] workers in this build)"
            raise RuntimeError(f"shadowd check-config refused {config}:\n{said}")
        self.configs[f"{name} ({config.name})"] = text.strip()
        proc = self.procs.start([self.shadowd_bin, "run", "-c", str(config)], name="shadowd")
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise self.fail(proc, f"{name} exited ({proc.returncode}) while starting")
            try:
                if http_get(admin, "/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self.fail(proc, f"{name}: /readyz not 200 after 60 s")
            time.sleep(0.1)
        return Shadowd(name, proc, port, admin, config)

    def alive(self, sd: Shadowd) -> None:
        if sd.proc.poll() is not None:
            raise self.fail(sd.proc, f"{sd.name} exited ({sd.proc.returncode}) during the run")


def _shadowd_binary() -> str:
    for candidate in (Path(sys.executable).parent / "shadowd", ROOT / ".venv" / "bin" / "shadowd"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("shadowd")
    if found:
        return found
    raise SystemExit("shadowd is not installed: pip install -e '.[dev,bench]' in a venv")


# ---------------------------------------------------------------- measurements


@dataclass
class Peer:
    name: str
    url: str = ""
    shadowd: Shadowd | None = None
    rss_pid: int | None = None
    na: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) is not None and r[key] == r[key]]  # no nan
    return statistics.median(values) if values else float("nan")


def share(part: float, requests: int) -> float:
    return part / requests if requests else float("nan")


def pct(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"


def _note_unsettled(result: dict[str, Any], sd: Shadowd) -> None:
    if sd.unsettled:
        note = f"exchanges still rising {SETTLE_LIMIT:g} s after the load"
        result["errors"] = f"{result['errors']}; {note}" if result["errors"] else note


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_max(peer: Peer, path: str, seconds: float) -> dict[str, Any]:
    sd = peer.shadowd
    before_x = before_d = None
    if sd is not None:
        before_x, before_d = sd.settled_exchanges(), sd.dropped()
    result = run_wrk(peer.url + path, seconds, rss_pid=peer.rss_pid)
    if sd is not None:
        after_x, after_d = sd.settled_exchanges(), sd.dropped()
        _note_unsettled(result, sd)
        result["exchanges"] = after_x - before_x
        result["dropped"] = {
            r: after_d[r] - before_d.get(r, 0.0) for r in after_d if after_d[r] > before_d.get(r, 0)
        }
        result["diffed"] = share(result["exchanges"], result["requests"])
        result["shed"] = share(sum(result["dropped"].values()), result["requests"])
    log(
        f"  {peer.name:<18} {result['rps']:>9,.0f} req/s  p50 {result['p50_ms']:7.2f} ms  "
        f"p99 {result['p99_ms']:7.2f} ms"
        + (f"  diffed {pct(result['diffed'])} shed {pct(result['shed'])}" if sd else "")
        + (f"  [{result['errors']}]" if result["errors"] else "")
    )
    return result


def measure_fixed(peer: Peer, seconds: float, load: Any) -> dict[str, Any]:
    """One fixed-rate run; `load(base_url, seconds)` is the load tool (paced wrk or hey)."""
    sd = peer.shadowd
    before = sd.settled_exchanges() if sd else 0
    result = load(peer.url, seconds)
    if sd is not None:
        result["diffed"] = share(sd.settled_exchanges() - before, result["requests"])
        _note_unsettled(result, sd)
    log(
        f"  {peer.name:<18} {result['rps']:>9,.0f} req/s  p50 {result['p50_ms']:7.2f} ms  "
        f"p99 {result['p99_ms']:7.2f} ms"
        + (f"  diffed {pct(result['diffed'])}" if sd else "")
        + (f"  [{result['errors']}]" if result["errors"] else "")
    )
    return result


ADMIN_ROUTES = ("/api/v1/report", "/api/v1/verdict")
# The control: a client as busy on the same host, asking for what costs shadowd nothing.
CONTROL_ROUTES = ("/healthz", "/healthz")


class Poller(threading.Thread):
    """GETs each of ``routes`` in turn every POLL_EVERY seconds, timing each answer."""

    def __init__(self, admin: int, routes: tuple[str, ...] = ADMIN_ROUTES) -> None:
        super().__init__(daemon=True)
        self.admin = admin
        self.stop_event = threading.Event()
        self.routes = routes
        self.times: dict[str, list[float]] = {route: [] for route in routes}
        self.failures: list[str] = []

    def run(self) -> None:
        # Not timed: the first request after a quiet spell waits for a report of the
        # statistics as they are now (by design: a one-off `shadowd report` must not be
        # served a stale one); from then on the poller is what a dashboard or a scraper is.
        self.first: dict[str, float] = {}
        for route in self.times:
            start = time.perf_counter()
            with contextlib.suppress(OSError):
                http_get(self.admin, route, timeout=ADMIN_TIMEOUT)
            self.first[route] = (time.perf_counter() - start) * 1000
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            for route in self.routes:
                times = self.times[route]
                start = time.perf_counter()
                try:
                    status, _ = http_get(self.admin, route, timeout=ADMIN_TIMEOUT)
                except OSError as exc:
                    self.failures.append(f"{route}: {exc}")
                    continue
                times.append((time.perf_counter() - start) * 1000)
                if status != 200:
                    self.failures.append(f"{route}: {status}")
            next_at += POLL_EVERY
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - POLL_EVERY)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------- output


def _fmt(value: float, spec: str = ",.0f") -> str:
    return "-" if value != value else format(value, spec)  # nan -> "-"


def max_rate_table(title: str, peers: list[Peer]) -> list[str]:
    nginx = next((p for p in peers if p.name == "nginx+2 mirrors" and p.runs), None)
    nginx_rps = _median(nginx.runs, "rps") if nginx else float("nan")
    out = [
        f"### {title}",
        "",
        "| peer | req/s | p50 ms | p99 ms | req/s vs nginx+2 mirrors | diffed | shed "
        "| shed reasons | RSS MB (end of load) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for p in peers:
        if p.na:
            out.append(f"| {p.name} | {p.na} | | | | | | | |")
            continue
        rps = _median(p.runs, "rps")
        ratio = f"{rps / nginx_rps:.2f}x" if nginx_rps == nginx_rps else "-"
        diffed = shed = reasons = "-"
        if p.shadowd is not None:
            diffed = pct(_median(p.runs, "diffed"))
            shed = pct(_median(p.runs, "shed"))
            requests = sum(r["requests"] for r in p.runs) or 1
            totals: dict[str, float] = {}
            for r in p.runs:
                for reason, n in r["dropped"].items():
                    totals[reason] = totals.get(reason, 0.0) + n
            reasons = (
                ", ".join(f"{k} {v / requests:.1%}" for k, v in sorted(totals.items())) or "none"
            )
        rss = _median(p.runs, "rss_last") / 2**20 if p.rss_pid else float("nan")
        out.append(
            f"| {p.name} | {_fmt(rps)} | {_fmt(_median(p.runs, 'p50_ms'), '.2f')} "
            f"| {_fmt(_median(p.runs, 'p99_ms'), '.2f')} | {ratio} | {diffed} | {shed} "
            f"| {reasons} | {_fmt(rss, '.0f')} |"
        )
    errors = [f"{p.name} run {i + 1}: {r['errors']}" for p in peers for i, r in enumerate(p.runs)]
    errors = [e for e in errors if not e.endswith(": ")]
    if errors:
        out += ["", "load tool errors: " + "; ".join(errors)]
    return out


def fixed_rate_table(title: str, peers: list[Peer]) -> list[str]:
    direct_p99 = _median(peers[0].runs, "p99_ms")
    out = [
        title,
        "",
        "| peer | achieved req/s | p50 ms | p99 ms | added p99 over direct ms | diffed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in peers:
        if p.na:
            out.append(f"| {p.name} | {p.na} | | | | |")
            continue
        p99 = _median(p.runs, "p99_ms")
        added = "-" if p is peers[0] else _fmt(p99 - direct_p99, "+.2f")
        diffed = pct(_median(p.runs, "diffed")) if p.shadowd else "-"
        out.append(
            f"| {p.name} | {_fmt(_median(p.runs, 'rps'))} "
            f"| {_fmt(_median(p.runs, 'p50_ms'), '.2f')} | {_fmt(p99, '.2f')} | {added} "
            f"| {diffed} |"
        )
    errors = [f"{p.name} run {i + 1}: {r['errors']}" for p in peers for i, r in enumerate(p.runs)]
    errors = [e for e in errors if not e.endswith(": ")]
    if errors:
        out += ["", "load tool errors: " + "; ".join(errors)]
    return out


def _movement(base: list[dict[str, Any]], other: list[dict[str, Any]], key: str) -> str:
    """The median over runs of each run's movement from ``base`` (the runs are pairs)."""
    moves = [
        (b[key] - a[key]) / a[key]
        for a, b in zip(base, other, strict=False)
        if a[key] and a[key] == a[key] and b[key] == b[key]
    ]
    return f"{statistics.median(moves):+.0%}" if moves else "-"


def admin_table(
    quiet: list[dict[str, Any]],
    polled: list[dict[str, Any]],
    admin_times: dict[str, dict[str, list[float]]],
    failures: list[str],
    endpoints: int,
    seconds: float,
    control: list[dict[str, Any]] | None = None,
) -> list[str]:
    control = control or []
    out = [
        f"### Admin under load: {endpoints} endpoints x 3 targets, {RATE:,} req/s for "
        f"{seconds:g} s (`wrk -t{THREADS} -c{HEY_WORKERS}` paced, round robin over "
        f"{len(ENDPOINT_PATHS)} paths)",
        "",
        "Each run measures the arms back to back, in an order rotated from run to run; a",
        "movement is the median over runs of each run's own movement from its quiet arm. The",
        "control polls `/healthz` at the same cadence: what any client as busy costs this host.",
        "",
        "| data plane | quiet | report + verdict polled every 100 ms | movement "
        "| control: /healthz polled | movement |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in (("rps", "achieved req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")):
        spec = ",.0f" if key == "rps" else ".2f"
        a, b = _median(quiet, key), _median(polled, key)
        c = _median(control, key) if control else float("nan")
        out.append(
            f"| {label} | {_fmt(a, spec)} | {_fmt(b, spec)} | {_movement(quiet, polled, key)} "
            f"| {_fmt(c, spec)} | {_movement(quiet, control, key)} |"
        )
    out.append(
        f"| diffed | {pct(_median(quiet, 'diffed'))} | {pct(_median(polled, 'diffed'))} | "
        f"| {pct(_median(control, 'diffed')) if control else '-'} | |"
    )
    errors = [
        f"{label} run {i + 1}: {r['errors']}"
        for label, runs in (("quiet", quiet), ("polled", polled), ("control", control))
        for i, r in enumerate(runs)
        if r["errors"]
    ]
    if errors:
        out += ["", "load tool errors: " + "; ".join(errors)]
    out += [
        "",
        "| admin answer | answers | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for when, routes in admin_times.items():
        for route, times in routes.items():
            out.append(
                f"| GET {route}, {when} | {len(times)} | {_fmt(_quantile(times, 0.5), '.1f')} "
                f"| {_fmt(_quantile(times, 0.99), '.1f')} "
                f"| {_fmt(max(times, default=float('nan')), '.1f')} |"
            )
    if failures:
        out += ["", f"admin failures: {len(failures)} ({'; '.join(failures[:3])})"]
    return out


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


def header(args: argparse.Namespace, bench: Bench) -> list[str]:
    commit = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return [
        f"## planes_bench ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"- machine: nproc {_version(['nproc'])}, {platform.machine()}, "
        f"Python {platform.python_version()}, {_version([NGINX, '-v'])}, "
        f"{_version(['wrk', '-v']).split(' Copyright')[0]}, hey; nothing pinned",
        f"- shadowd: {_version([bench.shadowd_bin, '--version'])} (commit {commit})",
        f"- medians of {args.runs} run(s) of {args.seconds:g} s after a {args.warmup:g} s "
        "warm-up per peer; peers interleaved (order rotated) in every run",
        f"- bodies: {len(STATIC)} B JSON; 'every answer differs' embeds $request_id and $msec; "
        "'identical' is static under /same/",
        "- configs were written to a temporary directory (removed at exit); they are:",
    ]


def configs_text(configs: dict[str, str]) -> list[str]:
    out: list[str] = []
    for name, text in configs.items():
        lang = "toml" if name.endswith(".toml)") else "nginx"
        out += ["", f"{name}:", "", f"```{lang}", text, "```"]
    return out


# ---------------------------------------------------------------- main


def _rotated(peers: list[Peer], by: int) -> list[Peer]:
    live = [p for p in peers if not p.na]
    return live[by % len(live) :] + live[: by % len(live)] if live else []


def section_max_rate(bench: Bench, peers: list[Peer], record: dict[str, Any]) -> list[str]:
    args, tables = bench.args, []
    for title, prefix in (
        ("Max rate: every answer differs (headline)", ""),
        ("Max rate: identical bodies (flattering case)", "/same"),
    ):
        log(f"{title}: wrk -t{THREADS} -c{CONNECTIONS} -d{args.seconds:g}s --latency")
        variant = [Peer(p.name, p.url, p.shadowd, p.rss_pid, p.na) for p in peers]
        for p in _rotated(variant, 0):
            run_wrk(p.url + prefix + PATH, args.warmup)
        for i in range(args.runs):
            log(f" run {i + 1}/{args.runs}")
            for p in _rotated(variant, i):
                p.runs.append(measure_max(p, prefix + PATH, args.seconds))
                if p.shadowd:
                    bench.alive(p.shadowd)
        tables += ["", *max_rate_table(title, variant)]
        record[title] = {p.name: p.runs or p.na for p in variant}
    return tables


def section_fixed_rate(bench: Bench, peers: list[Peer], record: dict[str, Any]) -> list[str]:
    """The same 2,000 req/s in two shapes. Evenly paced (wrk, each thread's sends spaced
    1 ms apart) is how many independent clients arrive: the headline. hey's 20 workers each
    tick every 10 ms from one start, so the load comes as a burst of 20 requests every
    10 ms; a burst queues behind itself in any proxy, so it is the harsher figure."""
    args = bench.args
    script = bench.tmp / "paced-one-path.lua"
    script.write_text(paced_lua([PATH]))

    def paced(base_url: str, seconds: float) -> dict[str, Any]:
        return run_wrk(
            base_url + "/",  # the script names the path
            seconds,
            connections=HEY_WORKERS,
            script=script,
            script_args=(f"{RATE / THREADS:g}",),
        )

    shapes = (
        (
            "evenly paced",
            paced,
            f"### Fixed rate: {RATE:,} req/s for {args.seconds:g} s, every answer differs, "
            f"evenly paced (`wrk -t{THREADS} -c{HEY_WORKERS}`, each thread a send every "
            f"{1000 * THREADS / RATE:g} ms)",
        ),
        (
            "hey bursts",
            lambda base_url, seconds: run_hey(base_url + PATH, seconds),
            f"### Fixed rate: {RATE:,} req/s in bursts of {HEY_WORKERS}, every answer differs "
            f"(`hey -z {args.seconds:g}s -c {HEY_WORKERS} -q {RATE // HEY_WORKERS}`: "
            f"{HEY_WORKERS} workers ticking together every {1000 * HEY_WORKERS // RATE} ms)",
        ),
    )
    tables: list[str] = []
    for label, load, title in shapes:
        log(f"Fixed rate, {label}")
        fixed = [Peer(p.name, p.url, p.shadowd, p.rss_pid, p.na) for p in peers]
        for p in _rotated(fixed, 0):
            load(p.url, args.warmup)
        for i in range(args.runs):
            log(f" run {i + 1}/{args.runs}")
            for p in _rotated(fixed, i):
                p.runs.append(measure_fixed(p, args.seconds, load))
                if p.shadowd:
                    bench.alive(p.shadowd)
        record[f"fixed rate, {label}"] = {p.name: p.runs for p in fixed}
        tables += ["", *fixed_rate_table(title, fixed)]
    return tables


def _time_admin(admin: int, times: dict[str, list[float]], failures: list[str]) -> None:
    for route in times:
        start = time.perf_counter()
        try:
            status, _ = http_get(admin, route, timeout=ADMIN_TIMEOUT)
        except OSError as exc:
            failures.append(f"{route}: {exc}")
            continue
        times[route].append((time.perf_counter() - start) * 1000)
        if status != 200:
            failures.append(f"{route}: {status}")


def section_admin(bench: Bench, record: dict[str, Any]) -> list[str]:
    """A fresh shadowd holding 200 endpoints x 3 targets; the paced load quiet, then polled."""
    args = bench.args
    log(f"Admin under load: {ENDPOINTS} endpoints, {RATE} req/s, polled every 100 ms")
    sd = bench.start_shadowd("shadowd (admin under load)", None)
    if isinstance(sd, str):
        raise RuntimeError(sd)
    script = bench.tmp / "paced.lua"
    script.write_text(paced_lua(ENDPOINT_PATHS))
    url = f"http://127.0.0.1:{sd.port}/"
    paced: dict[str, Any] = {
        "threads": THREADS,
        "connections": HEY_WORKERS,
        "script": script,
        "script_args": (f"{RATE / THREADS:g}",),
    }
    run_wrk(url, max(args.warmup, 2.0), **paced)  # every endpoint exists afterwards
    sd.settled_exchanges()
    endpoints = int(sd.report()["totals"]["endpoints"])
    routes = ("/api/v1/report", "/api/v1/verdict")
    admin_times: dict[str, dict[str, list[float]]] = {
        "idle": {r: [] for r in routes},
        "under load": {r: [] for r in routes},
        "first after a quiet spell (untimed above)": {r: [] for r in routes},
    }
    failures: list[str] = []
    for _ in range(3):  # the same answers with no traffic, for scale
        _time_admin(sd.admin, admin_times["idle"], failures)
    quiet: list[dict[str, Any]] = []
    polled: list[dict[str, Any]] = []
    control: list[dict[str, Any]] = []
    arms = [("quiet", quiet), ("polled", polled), ("control", control)]
    for i in range(args.runs):
        log(f" run {i + 1}/{args.runs} ({endpoints} endpoints in the report)")
        # Rotated: whatever drifts over a run (the statistics grow) favours no arm.
        for label, into in arms[i % 3 :] + arms[: i % 3]:
            before = sd.settled_exchanges()
            poller = None
            if label == "polled":
                poller = Poller(sd.admin)
            elif label == "control":
                poller = Poller(sd.admin, CONTROL_ROUTES)
            if poller:
                poller.start()
            try:
                result = run_wrk(url, args.seconds, **paced)
            finally:
                if poller:
                    poller.stop_event.set()
                    poller.join(ADMIN_TIMEOUT + 5)
            if poller and label == "polled":
                for route, times in poller.times.items():
                    admin_times["under load"][route] += times
                    admin_times["first after a quiet spell (untimed above)"][route].append(
                        poller.first.get(route, float("nan"))
                    )
            if poller:
                failures += poller.failures
            result["diffed"] = share(sd.settled_exchanges() - before, result["requests"])
            _note_unsettled(result, sd)
            into.append(result)
            log(
                f"  {label:<7} {result['rps']:>7,.0f} req/s  p50 {result['p50_ms']:7.2f} ms"
                f"  p99 {result['p99_ms']:7.2f} ms  diffed {pct(result['diffed'])}"
                + (f"  [{result['errors']}]" if result["errors"] else "")
            )
        bench.alive(sd)
    record["admin under load"] = {
        "endpoints": endpoints,
        "quiet": quiet,
        "polled": polled,
        "control": control,
        "admin_ms": admin_times,
        "admin_failures": failures,
    }
    return [
        "",
        *admin_table(quiet, polled, admin_times, failures, endpoints, args.seconds, control),
    ]


def measure_all(bench: Bench, record: dict[str, Any]) -> list[str]:
    """Sections 1-3, every peer interleaved."""
    args = bench.args
    tables: list[str] = []
    mirror_url, mirror_proc = bench.start_mirror_nginx()
    peers = [
        Peer("direct", f"http://127.0.0.1:{bench.backends['primary']}"),
        Peer("nginx+2 mirrors", mirror_url, rss_pid=mirror_proc.pid),
    ]
    variants: list[tuple[str, int | None, int | None]] = [
        ("shadowd", None, None),
        ("shadowd 1 worker", 1, None),
        ("shadowd 2 workers", 2, None),
    ]
    if args.nice is not None:
        variants.append((f"shadowd, [analysis] nice = {args.nice}", None, args.nice))
    for name, workers, nice in variants:
        sd = bench.start_shadowd(name, workers, nice)
        if isinstance(sd, str):
            peers.append(Peer(name, na=sd))
        else:
            peers.append(Peer(name, f"http://127.0.0.1:{sd.port}", sd, sd.proc.pid))
    tables += section_max_rate(bench, peers, record)
    for p in peers[3:]:  # the worker variants are not measured further
        if p.shadowd:
            bench.procs.stop(p.shadowd.proc)
    tables += section_fixed_rate(bench, peers[:3], record)
    if peers[2].shadowd:
        bench.procs.stop(peers[2].shadowd.proc)
    tables += section_admin(bench, record)
    return tables


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per peer (default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="per run (default 10)")
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s, 1 s warm-ups")
    parser.add_argument(
        "--shadowd",
        metavar="PATH",
        help="the shadowd executable to measure (default: the one next to this Python)",
    )
    parser.add_argument(
        "--only-admin",
        action="store_true",
        help="only section 3 (admin under load), with the direct peer for scale",
    )
    parser.add_argument(
        "--nice",
        type=int,
        metavar="N",
        help="one more max-rate peer: shadowd with [analysis] nice = N (the CPU split)",
    )
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.warmup = 1.0 if args.quick else 2.0
    missing = [t for t in ("wrk", "hey") if not shutil.which(t)]
    if not Path(NGINX).exists():
        missing.insert(0, "nginx")
    if args.shadowd and not shutil.which(args.shadowd):
        print(f"--shadowd {args.shadowd}: not an executable", file=sys.stderr)
        return 2
    if missing:
        print(f"missing: {', '.join(missing)}; run scripts/install-system-deps", file=sys.stderr)
        return 2
    args.shadowd = args.shadowd or _shadowd_binary()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops everything

    tmp = Path(tempfile.mkdtemp(prefix="shadowd-planes-"))
    bench = Bench(args, tmp)
    record: dict[str, Any] = {}
    tables: list[str] = []
    status = 0
    lines: list[str] = []
    try:
        lines = header(args, bench)
        log(f"planes_bench: {args.runs} run(s) x {args.seconds:g} s; temp files in {tmp}")
        bench.start_backends()
        if args.only_admin:
            tables += section_admin(bench, record)
        else:
            tables += measure_all(bench, record)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        tables += ["", f"**aborted**: {exc}"]
        log(f"planes_bench: aborted: {exc}")
        status = 1
    finally:
        bench.procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(lines + configs_text(bench.configs) + tables))
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"planes-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"\nraw results: {out.relative_to(ROOT)}")
    return status


if __name__ == "__main__":
    sys.exit(main())

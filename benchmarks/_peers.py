"""Helpers shared by the benchmarks that start real peers (nginx, shadowd) on loopback.

Every process is started in a session of its own and stopped by `Processes.stop()`, which the
benchmarks call from a `finally`: SIGTERM, a bounded wait, then SIGKILL for the process and any
descendant left in its process group.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def duration_ms(text: str) -> float:
    """wrk's '1.23ms', '850.00us', '1.02s' in milliseconds (nan when unreadable)."""
    m = re.match(r"([\d.]+)(us|ms|s|m)\b", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) before port {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    if cpu is None or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        return argv
    return ["taskset", "-c", cpu, *argv]


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid, from /proc/<pid>/task/*/children, recursively."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                text = Path(f"/proc/{current}/task/{task}/children").read_text()
            except OSError:
                continue
            for child in text.split():
                if int(child) not in found:
                    found.append(int(child))
                    stack.append(int(child))
    return found


def rss_bytes(pid: int) -> int:
    """VmRSS of pid and all its descendants (0 for processes that are gone)."""
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def _process_group(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[2])


class Processes:
    """Every process started here, stopped on exit whatever happens.

    With `log_dir`, each process's stdout and stderr go to a file there (a pipe nobody reads
    can fill and stall a busy process); without it, stderr is a pipe (as proxy_bench reads it).
    """

    def __init__(self, log_dir: Path | None = None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dirs: list[Path] = []
        self.log_dir = log_dir
        self.logs: dict[int, Path] = {}
        self._files: list[IO[bytes]] = []

    def start(self, argv: list[str], name: str = "", **kwargs) -> subprocess.Popen[bytes]:
        if self.log_dir is not None:
            log = self.log_dir / f"{name or Path(argv[0]).name}-{len(self.procs)}.log"
            out = open(log, "wb")  # noqa: SIM115 - closed in stop()
            self._files.append(out)
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )
            self.logs[proc.pid] = log
        else:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                **kwargs,
            )
        self.procs.append(proc)
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 20) -> str:
        log = self.logs.get(proc.pid)
        if log is None or not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def nginx(
        self, http_block: str, cpu: str | None = None, workers: str = "1", name: str = "nginx"
    ) -> subprocess.Popen[bytes]:
        if self.log_dir is not None:
            prefix = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.log_dir))
        else:
            prefix = Path(tempfile.mkdtemp(prefix="shadowd-bench-nginx-"))
            self.dirs.append(prefix)
        (prefix / "logs").mkdir()
        conf = prefix / "nginx.conf"
        temp_paths = "".join(
            f" {kind}_temp_path {prefix}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf.write_text(
            f"worker_processes {workers};\ndaemon off;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/logs/error.log crit;\n"
            "events { worker_connections 4096; }\n"
            f"http {{\n access_log off;\n{temp_paths}{http_block}\n}}\n"
        )
        argv = [NGINX, "-p", str(prefix), "-c", str(conf)]
        if self.log_dir is not None:
            argv[1:1] = ["-e", str(prefix / "logs" / "error.log")]
        return self.start(pinned(cpu, argv), name=name)

    def stop(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        for p in [proc] if proc else list(self.procs):
            children = [c for c in descendants(p.pid) if _process_group(c) == p.pid]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            for child in children:  # only those still in the group this script created
                if _process_group(child) == p.pid:
                    with contextlib.suppress(OSError):
                        os.kill(child, signal.SIGKILL)
            if p in self.procs:
                self.procs.remove(p)
        if proc is None:
            for d in self.dirs:
                shutil.rmtree(d, ignore_errors=True)
            for f in self._files:
                f.close()

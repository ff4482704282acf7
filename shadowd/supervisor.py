"""The supervisor: what ``shadowd run`` is. It starts the two planes as processes, merges what
they publish into one view, and serves that view.

    clients ─► ingress worker x N  (relay, copy, hand off records; SO_REUSEPORT)
                    │ bounded Unix-socket hand-off, shed when full
               analysis worker x M (decode, diff, statistics; delta snapshots)
                    │ control channel
               supervisor          (merge, admin API, /metrics, verdict, signals, restarts)

Nothing here runs on a loop that relays production: the metrics are built from merged
snapshots in this process, the report and the verdict in its view process
(``shadowd.view``), which merges the same snapshots at a lower CPU priority. With the
stream on Redis, the fleet's view is read, merged, reported and judged in a process of its
own too (``shadowd.stream.fleet_process``), at the same priority. A worker that
dies is logged, counted (``shadowd_worker_restarts_total``) and started again; readiness
says so meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pickle
import shutil
import signal
import socket
import tempfile
import time
from typing import Any

import numpy as np
from aiohttp import web

from shadowd import sdnotify
from shadowd.admin import create_admin_app
from shadowd.aggregate import Aggregator
from shadowd.analysis.snapshot import merge_snapshot, snapshot_of
from shadowd.config import Config, ConfigError, load_config
from shadowd.control import Channel, ChannelClosed
from shadowd.endpoints import OTHER
from shadowd.ingress.descriptors import client_budget, open_files_limit, raise_open_files_limit
from shadowd.ingress.plane import restart_only_changes
from shadowd.metrics import MergedSeries, Metrics, SupervisorMetrics, export_families
from shadowd.processes import start_module
from shadowd.report import build_report
from shadowd.stream.fleet_client import FleetProcess
from shadowd.timeline import Timeline, counts_of, sample_every
from shadowd.verdict.evidence import VerdictEvidence
from shadowd.verdict.judge import Verdict
from shadowd.verdict.schedule import ScheduledVerdict
from shadowd.view.client import ViewProcess
from shadowd.worker import control_socket

log = logging.getLogger("shadowd")

INGRESS, ANALYSIS = "ingress", "analysis"
START_TIMEOUT = 30.0  # seconds for a worker to say it is ready
RESTART_BACKOFF = (0.1, 5.0)  # first and longest pause before starting a dead worker again
STABLE_AFTER = 10.0  # a worker alive this long has its backoff reset
# Pollers are served reports at most this far apart in the statistics: a 200-endpoint report
# costs the view process ~0.3 s of CPU, which on a small host is taken beside the relay.
REBUILD_EVERY = 2.0
REPORT_MAX_AGE = 2.0  # asked again within this, a caller is a poller: served without waiting
CATCH_UP_TIMEOUT = 1.0  # at most this for the analysis workers to publish before a one-off


def _without_samples(delta: dict[str, Any]) -> dict[str, Any]:
    """A delta as the view process needs it: the report and the verdict never read samples,
    which are most of a delta's bytes (three answers' bodies each)."""
    return {
        **delta,
        "endpoints": [{**e, "samples": []} for e in delta["endpoints"]],
    }


class WorkerProcess:
    """The supervisor's handle on one worker process."""

    def __init__(self, role: str, index: int) -> None:
        self.role = role
        self.index = index
        self.key = f"{role}-{index}"
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self.status: dict[str, Any] = {}
        self.replied_seq = 0
        self.replied = asyncio.Event()
        self.started_at = 0.0
        self.restarts = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def send(self, message: dict[str, Any]) -> bool:
        if self.channel is None:
            return False
        try:
            self.channel.send(message)
        except ChannelClosed:
            return False
        return True


def _warn_if_descriptors_short(config: Config) -> None:
    budget = client_budget(config, open_files_limit())
    if budget.short:
        log.warning(budget.explain())


def _can_listen(key: str, host: str, port: int) -> None:
    """Bind ``host:port`` once and let go; an OSError names the config key and address."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(info[0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(info[4])
    except OSError as exc:
        raise OSError(exc.errno, f"{key} {host}:{port}: {exc.strerror or exc}") from exc


class Supervisor:
    """``shadowd run``: ``start()`` returns once every worker is ready and the admin API
    listens; ``run_until_signalled()`` then serves until SIGTERM/SIGINT."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.aggregator = Aggregator(config)
        self.evidence = VerdictEvidence(config.endpoints.max)
        self.merged = MergedSeries()
        # Every series a worker exports, at 0, before any worker has reported.
        self.merged.update("baseline", export_families(Metrics(config).registry))
        self.metrics = SupervisorMetrics(config, self.merged)
        self.metrics.label_endpoints_with(self._endpoint_label)
        self.generation = 0  # bumped by each reset; older deltas are discarded
        self.mirror_enabled = config.mirror.enabled
        self.started = False
        self._stopping = False
        self._rng = np.random.default_rng(0x5AD0)
        self._seq = 0
        self._workers: dict[str, WorkerProcess] = {}
        self._monitors: set[asyncio.Task[None]] = set()
        self._runtime_dir = ""
        self._control_server: asyncio.AbstractServer | None = None
        self._reserved: socket.socket | None = None
        self._shared_fd: int | None = None
        self._port = 0
        self._address: tuple[str, int] = ("", 0)
        self._admin_runner: web.AppRunner | None = None
        self._admin_site: web.TCPSite | None = None
        self._stopped = asyncio.Event()
        self.merged_at = 0.0  # when the last statistics delta was merged
        self._merges = 0  # statistics deltas merged since the start
        self._reloading: asyncio.Task[bool] | None = None
        self._status_reports = 0  # worker status reports received (the report shows them)
        self.view = ViewProcess(
            config,
            seed=lambda: snapshot_of(self.aggregator, self.evidence),
            clock=lambda: (self.aggregator.started_at, self.aggregator.reset_at),
            on_restart=lambda: self.metrics.worker_restarted("view"),
        )
        # the newest report the view process built: (JSON, the version it reflects)
        self._report_json: tuple[bytes, tuple[int, int, int, int]] | None = None
        self._report_asked_at = -REPORT_MAX_AGE  # monotonic time the report was last asked for
        self._report_started_at = -REBUILD_EVERY  # when the newest build began
        self._report_building: asyncio.Task[tuple[bytes, tuple[int, int, int, int]]] | None = None
        self._fresh_from = 0  # a report must include the merges up to here (``settle``)
        self._verdict_json: tuple[Verdict, bytes] | None = None  # the newest, serialised
        self._beyond_noise: dict[str, float] = {}  # endpoint -> ratio, of the newest report
        self.timeline = Timeline()  # rates over time for the dashboard
        self._timeline_task: asyncio.Task[None] | None = None
        self.verdicts = ScheduledVerdict(
            self._judge,
            lambda: (self.generation, self._merges),
            self.metrics.observe_verdict,
            catch_up=self._catch_up,
        )
        # [stream] on Redis: the fleet's merged view, beside this instance's (?scope=fleet).
        # Merged in a process of its own (shadowd.stream.fleet_process), like the view.
        self.fleet: FleetProcess | None = None
        if config.stream.redis:
            self.fleet = FleetProcess(
                config, self.mirror_status, lambda: self.metrics.worker_restarted("fleet")
            )

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, *, ingress_sock: socket.socket | None = None) -> None:
        config = self.config
        self._runtime_dir = tempfile.mkdtemp(prefix="shadowd-")  # 0700: our sockets only
        if len(self._runtime_dir) > 80:  # a Unix socket path must fit in 108 bytes
            os.rmdir(self._runtime_dir)
            self._runtime_dir = tempfile.mkdtemp(prefix="shadowd-", dir="/tmp")
        try:
            self._control_server = await asyncio.start_unix_server(
                self._on_control, control_socket(self._runtime_dir), limit=1 << 30
            )
            self._bind_ingress(ingress_sock)
            raise_open_files_limit()  # before the workers start: they inherit it
            _warn_if_descriptors_short(config)
            analysis = [WorkerProcess(ANALYSIS, i) for i in range(config.analysis.worker_count())]
            ingress = [WorkerProcess(INGRESS, i) for i in range(config.ingress.worker_count())]
            # Analysis first: its sockets must exist before the ingress connects to them.
            await self._start_all(analysis)
            await self._start_all(ingress)
            # Admin before traffic is announced: a readiness probe may ask at once.
            self._admin_runner = web.AppRunner(create_admin_app(self), access_log=None)
            await self._admin_runner.setup()
            admin = config.admin.listen
            self._admin_site = web.TCPSite(self._admin_runner, admin.host, admin.port)
            await self._admin_site.start()
            self.verdicts.start()  # and a first judgement now: later calls never wait
            self._timeline_task = asyncio.get_running_loop().create_task(
                sample_every(self.timeline, self.timeline_counts), name="timeline"
            )
            if self.fleet is not None:
                self.fleet.start()
        except BaseException:
            await self._kill_all()
            await self.verdicts.close()
            await self.view.close()
            if self._admin_runner is not None:
                await self._admin_runner.cleanup()
            if self._control_server is not None:
                self._control_server.close()
                await self._control_server.wait_closed()
            if self._reserved is not None:
                self._reserved.close()
            self._cleanup_runtime()
            raise
        self.started = True
        log.info(
            "listening",
            extra={
                "ingress": "{}:{}".format(*self.ingress_address),
                "admin": "{}:{}".format(*self.admin_address),
                "ingress_workers": len(ingress),
                "analysis_workers": len(analysis),
                "primary": config.primary.url,
                "candidate": config.candidate.url,
                "secondary": config.secondary.url if config.secondary else None,
            },
        )

    def _bind_ingress(self, inherited: socket.socket | None) -> None:
        """Reserve the ingress address. Workers bind it themselves with SO_REUSEPORT (the
        kernel then spreads connections evenly); this socket never listens, so it receives
        none, but it holds the port (port 0 picks one) across worker restarts. An inherited
        listener (systemd socket activation) is shared by every worker instead."""
        if inherited is not None:
            self._shared_fd = inherited.fileno()
            self._address = inherited.getsockname()[:2]
            self._port = self._address[1]
            return
        listen = self.config.ingress.listen
        info = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)[0]
        if listen.port:
            # SO_REUSEPORT would let us join another process's group on this port (another
            # shadowd, say) and split its traffic silently: a plain bind first must succeed.
            _can_listen("ingress.listen", listen.host, listen.port)
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(info[4])
        admin = self.config.admin.listen
        if admin.port:  # before any worker starts, not after: nothing half-started to undo
            _can_listen("admin.listen", admin.host, admin.port)
        self._reserved = sock
        self._address = sock.getsockname()[:2]
        self._port = self._address[1]

    @property
    def ingress_address(self) -> tuple[str, int]:
        return self._address

    @property
    def admin_address(self) -> tuple[str, int]:
        assert self._admin_runner is not None
        host, port = self._admin_runner.addresses[0][:2]  # the one site: the admin listener
        return host, port

    async def _start_all(self, workers: list[WorkerProcess]) -> None:
        for worker in workers:
            self._workers[worker.key] = worker
            await self._spawn(worker)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                for worker in workers:
                    await self._until_ready_or_exit(worker)
        except TimeoutError:
            raise RuntimeError(f"{workers[0].role} workers did not start in time") from None

    async def _until_ready_or_exit(self, worker: WorkerProcess) -> None:
        ready = asyncio.ensure_future(worker.ready.wait())
        exited = asyncio.ensure_future(worker.exited.wait())
        await asyncio.wait((ready, exited), return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()
        if not worker.ready.is_set():
            raise OSError(
                f"{worker.role} worker {worker.index} exited at start "
                f"(code {worker.process.returncode if worker.process else '?'}); see its log"
            )

    async def _spawn(self, worker: WorkerProcess) -> None:
        worker.ready.clear()
        worker.exited.clear()
        worker.status = {}
        worker.channel = None
        args = [
            worker.role,
            str(worker.index),
            self._runtime_dir,
            "--port",
            str(self._port),
        ]
        pass_fds: tuple[int, ...] = ()
        if worker.role == INGRESS and self._shared_fd is not None:
            args += ["--fd", str(self._shared_fd)]
            pass_fds = (self._shared_fd,)
        process = await start_module(
            "shadowd.worker", *args, stdin=asyncio.subprocess.PIPE, pass_fds=pass_fds
        )
        assert process.stdin is not None
        process.stdin.write(pickle.dumps(self._config_for_workers()))
        await process.stdin.drain()
        process.stdin.close()
        worker.process = process
        worker.started_at = time.monotonic()
        task = asyncio.get_running_loop().create_task(
            self._monitor(worker, process), name=f"monitor-{worker.key}"
        )
        self._monitors.add(task)
        task.add_done_callback(self._monitors.discard)
        self._count_alive()

    def _config_for_workers(self) -> Config:
        """The config as workers must apply it now: with the kill switch's current state."""
        config = self.config
        if config.mirror.enabled != self.mirror_enabled:
            config = dataclasses.replace(
                config, mirror=dataclasses.replace(config.mirror, enabled=self.mirror_enabled)
            )
        return config

    async def _monitor(self, worker: WorkerProcess, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        worker.exited.set()
        worker.channel = None
        self.merged.retire(worker.key)
        self._count_alive()
        if self._stopping or not self.started:
            return
        worker.restarts += 1
        self.metrics.worker_restarted(worker.role)
        lived = time.monotonic() - worker.started_at
        low, high = RESTART_BACKOFF
        delay = low if lived > STABLE_AFTER else min(high, low * 2 ** min(worker.restarts, 6))
        log.error(
            "%s worker %d exited; starting it again",
            worker.role,
            worker.index,
            extra={"code": code, "pid": process.pid, "restart_in_s": delay},
        )
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn(worker)

    def _count_alive(self) -> None:
        for role in (INGRESS, ANALYSIS):
            self.metrics.set_workers(
                role, sum(1 for w in self._workers.values() if w.role == role and w.alive)
            )

    # -- the control channel ---------------------------------------------------------------
    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        worker: WorkerProcess | None = None
        try:
            hello = await channel.receive()
            worker = self._workers.get(f"{hello.get('role')}-{hello.get('index')}")
            if hello["t"] != "hello" or worker is None:
                log.error("control: unexpected first message %r", hello.get("t"))
                return
            worker.channel = channel
            while True:
                self._on_message(worker, await channel.receive())
        except ChannelClosed:
            pass
        except Exception:  # a bug here must not take the supervisor down
            log.exception("control channel of %s failed", worker.key if worker else "?")
        finally:
            if worker is not None and worker.channel is channel:
                worker.channel = None
            channel.close()

    def _on_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "ready":
            worker.ready.set()
            self._count_alive()
        elif kind == "report":
            if "metrics" in message:  # an analysis worker sends them every few seconds
                self.merged.update(worker.key, message["metrics"])
            worker.status = message["status"]
            self._status_reports += 1
            delta = message.get("delta")
            if delta is not None and message.get("gen") == self.generation:
                merge_snapshot(self.aggregator, self.evidence, delta, self._rng)
                self.view.merge(_without_samples(delta))
                self.merged_at = time.time()
                self._merges += 1
            seq = message.get("seq")
            if seq is not None and seq > worker.replied_seq:
                worker.replied_seq = seq
                worker.replied.set()

    def _live(self, role: str | None = None) -> list[WorkerProcess]:
        return [
            w
            for w in self._workers.values()
            if (role is None or w.role == role) and w.channel is not None and w.alive
        ]

    def _broadcast(self, message: dict[str, Any], role: str | None = None) -> None:
        for worker in self._live(role):
            worker.send(message)

    async def _round(
        self,
        kind: str = "report_now",
        timeout: float = 5.0,
        role: str | None = None,
        **fields: Any,
    ) -> None:
        """Send every live worker (of ``role``) ``kind`` and wait until each has answered
        with a report."""
        self._seq += 1
        seq = self._seq
        waiting = []
        for worker in self._live(role):
            worker.replied.clear()
            if worker.send({"t": kind, "seq": seq, **fields}):
                waiting.append(worker)
        try:
            async with asyncio.timeout(timeout):
                for worker in waiting:
                    while worker.replied_seq < seq and worker.alive:
                        worker.replied.clear()
                        await worker.replied.wait()
        except TimeoutError:
            log.warning("workers did not answer %s in %.1fs", kind, timeout)

    async def _catch_up(self) -> None:
        """Every analysis worker publishes what it has diffed so far, now: a one-off report
        or verdict (``shadowd verdict`` after a load test) then counts the traffic sent
        until just before it, not only what the last publication, up to a
        ``snapshot_interval`` ago, held. Bounded: a stopped worker delays it by
        ``CATCH_UP_TIMEOUT`` at most."""
        await self._round(timeout=CATCH_UP_TIMEOUT, role=ANALYSIS, metrics=False)

    async def settle(self, timeout: float = 10.0) -> bool:
        """Until every copy sent so far has come back, been handed off, diffed and merged
        (for the demo, tests and shutdown). False when ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await self._round(timeout=max(0.1, deadline - loop.time()))
            ingress = [w.status for w in self._workers.values() if w.role == INGRESS]
            analysis = [w.status for w in self._workers.values() if w.role == ANALYSIS]
            copies = sum(s.get("queue_depth", 0) + s.get("in_flight", 0) for s in ingress)
            handed = sum(s.get("handed_off", 0) for s in ingress)
            received = sum(s.get("received", 0) for s in analysis)
            backlog = sum(s.get("backlog", 0) for s in analysis)
            if copies == 0 and backlog == 0 and received >= handed:
                self._fresh_from = self._merges  # the next report shows all of this
                return True
            await asyncio.sleep(0.02)
        return False

    # -- stopping --------------------------------------------------------------------------
    async def stop(self, grace: float = 10.0) -> None:
        """Drain the ingress workers (clients finish, copies come back), let the analysis
        workers work off and publish what they received, then close everything."""
        if self._stopping:
            return
        self._stopping = True
        self.started = False
        await self._round("drain", timeout=grace + 6.0, role=INGRESS, grace=grace)
        await self._wait_exit(INGRESS, 5.0)
        await self._round("drain", timeout=grace + 6.0, role=ANALYSIS, grace=min(grace, 5.0))
        await self._wait_exit(ANALYSIS, 5.0)
        await self._kill_all()
        await self.verdicts.close()
        if self._report_building is not None:
            self._report_building.cancel()
        await self.view.close()
        if self._timeline_task is not None:
            self._timeline_task.cancel()
        if self.fleet is not None:
            await self.fleet.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self._control_server is not None:
            self._control_server.close()
        if self._reserved is not None:
            self._reserved.close()
        for task in list(self._monitors):
            task.cancel()
        self._cleanup_runtime()
        self._stopped.set()
        log.info(
            "stopped",
            extra={"exchanges": self.aggregator.totals.exchanges},
        )

    async def _wait_exit(self, role: str, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                for worker in self._workers.values():
                    if worker.role == role and worker.process is not None:
                        await worker.process.wait()
        except TimeoutError:
            log.warning("%s workers did not exit in %.1fs: killed", role, timeout)

    async def _kill_all(self) -> None:
        for worker in self._workers.values():
            if worker.alive and worker.process is not None:
                worker.process.kill()
        for worker in self._workers.values():
            if worker.process is not None:
                await worker.process.wait()

    def _cleanup_runtime(self) -> None:
        if self._runtime_dir:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    async def run_until_signalled(self) -> None:
        """Run until SIGTERM/SIGINT; a second signal stops at once."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                log.warning("second signal: stopping now")
                for worker in self._workers.values():
                    if worker.alive and worker.process is not None:
                        worker.process.kill()
                # the view and fleet processes too: at a low priority on a busy host they
                # would take a while to notice their supervisor gone
                self.view.kill()
                if self.fleet is not None:
                    self.fleet.kill()
                raise SystemExit(1)
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            stop_requested.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self.reload_from_file)
        sdnotify.notify(f"READY=1\nSTATUS={self._status_line()}")
        interval = sdnotify.watchdog_interval()
        watchdog = loop.create_task(self._watchdog(interval)) if interval else None
        try:
            await stop_requested.wait()
            sdnotify.notify("STOPPING=1\nSTATUS=draining connections")
            await self.stop()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)

    def _status_line(self) -> str:
        ingress = len(self._live(INGRESS))
        analysis = len(self._live(ANALYSIS))
        return (
            f"proxying on {self.config.ingress.listen} with {ingress} ingress and "
            f"{analysis} analysis workers"
        )

    async def _watchdog(self, interval: float) -> None:
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- reload ----------------------------------------------------------------------------
    def reload_from_file(self) -> None:
        """SIGHUP (a signal handler: the reload itself runs as a task)."""
        if self._reloading is not None and not self._reloading.done():
            log.warning("a reload is already under way; this SIGHUP is folded into it")
            return
        self._reloading = asyncio.get_running_loop().create_task(self.reload(), name="reload")

    async def reload(self) -> bool:
        """Re-read the config file. It is validated here, once, before any worker sees it:
        an invalid file changes nothing anywhere (all or nothing). READY=1 follows once
        every worker has applied the new one."""
        sdnotify.notify("RELOADING=1")
        try:
            new = load_config(self.config.source)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, the running config stays: %s", exc)
            sdnotify.notify("READY=1\nSTATUS=reload refused: config invalid")
            return False
        await self.reconfigure(new)
        sdnotify.notify(f"READY=1\nSTATUS=reloaded {self.config.source}")
        return True

    async def reconfigure(self, new: Config) -> None:
        """Apply a validated config in every worker; returns once each has acknowledged."""
        new, restart_only = restart_only_changes(self.config, new)
        if restart_only:
            log.warning("these changes need a restart and were not applied: %s", restart_only)
        self.config = new
        self.aggregator.config = new
        self.view.configure(new)
        _warn_if_descriptors_short(new)
        await self._round("config", config=pickle.dumps(self._config_for_workers()))
        log.info("config reloaded", extra={"source": new.source, "digest": new.digest[:12]})

    # -- AdminControl ----------------------------------------------------------------------
    def mirror_status(self) -> dict[str, Any]:
        ingress = [w.status for w in self._workers.values() if w.role == INGRESS]
        analysis = [w.status for w in self._workers.values() if w.role == ANALYSIS]
        return {
            "enabled": self.mirror_enabled,
            "queue_depth": sum(s.get("queue_depth", 0) for s in ingress),
            "in_flight": sum(s.get("in_flight", 0) for s in ingress),
            "diff_backlog": sum(s.get("backlog", 0) for s in analysis),
            # recording's health, per analysis worker: failing does not make shadowd unready
            # (production is fine), but an operator must see it
            "capture": [s["capture"] for s in analysis if s.get("capture")] or None,
            "dropped": self.metrics.mirror_dropped_counts(),
            "skipped": self.metrics.mirror_skipped_counts(),
            "workers": self.workers_status(),
        }

    def workers_status(self) -> dict[str, Any]:
        return {
            role: {
                "running": sum(1 for w in self._workers.values() if w.role == role and w.alive),
                "configured": sum(1 for w in self._workers.values() if w.role == role),
                "restarts": sum(w.restarts for w in self._workers.values() if w.role == role),
            }
            for role in (INGRESS, ANALYSIS)
        }

    async def set_mirroring(self, enabled: bool) -> None:
        """The kill switch: returns once every ingress worker has applied it, so no copy
        leaves after the caller is told mirroring is off."""
        self.mirror_enabled = enabled
        self.metrics.set_mirror_enabled(enabled)
        await self._round("mirror", role=INGRESS, enabled=enabled)
        log.info("mirroring %s", "enabled" if enabled else "disabled")

    def reset(self) -> dict[str, Any]:
        """Clear the report and the verdict's evidence in every process. Deltas published
        before the reset arrive with the old generation and are discarded."""
        self.generation += 1
        self._broadcast({"t": "reset", "gen": self.generation}, role=ANALYSIS)
        self.evidence.reset()
        cleared = self.aggregator.reset()
        self.view.reset()
        return cleared

    async def readiness(self) -> dict[str, Any]:
        """Ready when every worker runs and the primary is reachable: a candidate that is
        down must never take production traffic out of a load balancer."""
        from shadowd.daemon import probe_target

        names = [t.name for t in (self.config.primary, *self.config.mirror_targets)]
        targets_cfg = {t.name: t for t in (self.config.primary, *self.config.mirror_targets)}
        results = await asyncio.gather(*(probe_target(targets_cfg[n]) for n in names))
        targets = {
            name: {"reachable": error is None, "error": error}
            for name, error in zip(names, results, strict=True)
        }
        workers = self.workers_status()
        all_running = all(w["running"] == w["configured"] for w in workers.values())
        state = {
            "ready": self.started and all_running and targets["primary"]["reachable"],
            "targets": targets,
            "workers": workers,
        }
        if self.config.stream.redis:
            # Redis down never makes the proxy unready (production is served unchanged);
            # the analysis side's readiness says so, for an operator and an alert.
            state["analysis"] = self._stream_readiness()
        return state

    def _stream_readiness(self) -> dict[str, Any]:
        ingress = [w.status for w in self._workers.values() if w.role == INGRESS]
        analysis = [
            w.status.get("stream", {}) for w in self._workers.values() if w.role == ANALYSIS
        ]
        errors = [s.get("error") for s in analysis if s.get("error")]
        connected = (
            sum(1 for s in ingress if s.get("analysis_connected")),
            sum(1 for s in analysis if s.get("connected")),
        )
        return {
            "ready": connected == (len(ingress), len(analysis)) and bool(ingress or analysis),
            "stream": "redis",
            "key": self.config.stream.key,
            "ingress_connected": connected[0],
            "analysis_connected": connected[1],
            "error": errors[0] if errors else None,
        }

    async def current_verdict(self, caller: str = "") -> Verdict:
        return await self.verdicts.current(caller)

    def report(self) -> dict[str, Any]:
        """The report built here, now, on this loop: for a caller in this process (the
        demo). The admin API serves ``report_json``, built off this loop."""
        return build_report(self.aggregator, self.mirror_status())

    def timeline_counts(self) -> dict[str, Any]:
        """What the timeline samples: counts from the merged statistics, the rate beyond
        noise from the newest report (built in the view process)."""
        return counts_of(self.aggregator, self._beyond_noise)

    def _statistics_version(self) -> tuple[int, int, int, int]:
        return (self.generation, self._merges, self._status_reports, id(self.config))

    async def report_json(self) -> bytes:
        """The report as ``GET /api/v1/report`` serves it, built by the view process.

        A poller (someone asked less than ``REPORT_MAX_AGE`` ago) gets the newest report at
        once, and a newer one is built behind it: the view process may be slow on a busy
        host, the admin API never is. Anyone else waits for a report of the statistics as
        they are, after the analysis workers published what they hold (a one-off ``shadowd
        report`` after a test run counts all of it), and so does everyone after a reset, a
        reload or ``settle()``."""
        version = self._statistics_version()
        latest = self._report_json
        now = time.monotonic()
        polling, self._report_asked_at = now - self._report_asked_at < REPORT_MAX_AGE, now
        if latest is not None and latest[1] == version:
            return latest[0]
        if (
            polling
            and latest is not None
            and latest[1][0] == version[0]  # no reset since
            and latest[1][3] == version[3]  # no reload since
            and latest[1][1] >= self._fresh_from
        ):
            if now - self._report_started_at >= REBUILD_EVERY:
                self._build_report_soon()
            return latest[0]
        await self._catch_up()
        return (await self._report_including(self._merges))[0]

    async def _report_including(self, merges: int) -> tuple[bytes, tuple[int, int, int, int]]:
        """A report built after ``merges`` deltas were merged (in this generation)."""
        while True:
            built = await asyncio.shield(self._build_report_soon())
            if built[1][0] != self.generation:
                merges = 0  # a reset since: any report of the new generation will do
            elif built[1][1] >= merges:
                return built

    def _build_report_soon(self) -> asyncio.Task[tuple[bytes, tuple[int, int, int, int]]]:
        if self._report_building is None or self._report_building.done():
            self._report_building = asyncio.get_running_loop().create_task(
                self._build_report(), name="report"
            )
        return self._report_building

    async def _build_report(self) -> tuple[bytes, tuple[int, int, int, int]]:
        version = self._statistics_version()
        self._report_started_at = time.monotonic()
        body, beyond_noise = await self.view.build(self.mirror_status())
        built = (body, version)
        if version[0] == self.generation:
            self._report_json = built
            self.metrics.observe_beyond_noise(beyond_noise)  # gauges follow every report
            self._beyond_noise = dict(beyond_noise)
        return built

    async def _judge(self) -> Verdict:
        """The verdict of every delta merged so far, judged in the view process; the report
        first, so the beyond-noise gauges move with the verdict's."""
        await self._report_including(self._merges)
        verdict, body = await self.view.judge()
        self._verdict_json = (verdict, body)
        return verdict

    def json_of_verdict(self, verdict: Verdict) -> bytes | None:
        """The JSON the view process made of ``verdict`` (None for any other verdict)."""
        judged = self._verdict_json
        return judged[1] if judged is not None and judged[0] is verdict else None

    def _endpoint_label(self, endpoint: str) -> str:
        return endpoint if endpoint in self.aggregator.endpoints else OTHER

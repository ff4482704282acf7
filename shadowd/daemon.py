"""One process with both planes, for tests and for embedding shadowd in a Python program.

``shadowd run`` does not use this: it runs the supervisor (``shadowd.supervisor``), with the
data plane and the analysis plane in processes of their own. Here the same two planes share
one event loop, joined by the same record format: the data plane encodes each finished
exchange as a capture-format record and the diff stage decodes it, exactly as across
processes. Everything a CLI user can do, a Python caller can do with ``Daemon(config)``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from shadowd import sdnotify
from shadowd.admin import create_admin_app, judge_now
from shadowd.aggregate import Aggregator
from shadowd.analysis.stage import DiffStage
from shadowd.capture.writer import CaptureWriter
from shadowd.config import Config, ConfigError, load_config
from shadowd.exchange import Exchange
from shadowd.ingress.plane import DataPlane, restart_only_changes
from shadowd.metrics import Metrics
from shadowd.report import build_report
from shadowd.stream.handoff import record_payload
from shadowd.tasks import TaskGroup
from shadowd.timeline import Timeline, sample_every
from shadowd.verdict.evidence import VerdictEvidence

log = logging.getLogger("shadowd")


class Daemon:
    """One shadowd instance. ``start()`` returns once ingress and admin listen."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics(config)
        self.aggregator = Aggregator(config, self.metrics)
        self.evidence = VerdictEvidence(config.endpoints.max)
        self.timeline = Timeline()  # rates over time for the dashboard
        self._tasks = TaskGroup()
        self._stopped = asyncio.Event()
        self._admin_runner: web.AppRunner | None = None
        self._admin_site: web.TCPSite | None = None
        # Called with every completed exchange before it is diffed (capture, tests). They run
        # on the event loop: each must be quick and must not raise.
        self.exchange_listeners: list[Callable[[Exchange], object]] = []
        self.started = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, *, ingress_sock: socket.socket | None = None) -> None:
        config = self.config
        self.plane = DataPlane(config, self.metrics, self._tasks, self._deliver)
        self.mirror = self.plane.mirror
        self.ingress = self.plane.ingress
        self.diff_stage = DiffStage(config.diff, self.aggregator, self.evidence, self.metrics)
        self._tasks.spawn(self.diff_stage.run(), name="diff-stage")
        self._tasks.spawn(sample_every(self.timeline, self.timeline_counts), name="timeline")
        self.capture: CaptureWriter | None = None
        if config.capture is not None:
            self.capture = CaptureWriter(
                config.capture,
                digest=config.digest,
                on_written=self.metrics.capture_written,
                on_dropped=self.metrics.capture_dropped,
                on_failed=self.metrics.capture_failed,
            )
            await self.capture.start()
            self.diff_stage.listeners.append(self.capture.submit)
        # Admin first: a readiness probe may ask before traffic is accepted.
        self._admin_runner = web.AppRunner(create_admin_app(self), access_log=None)
        await self._admin_runner.setup()
        admin = config.admin.listen
        self._admin_site = web.TCPSite(self._admin_runner, admin.host, admin.port)
        await self._admin_site.start()
        await self.plane.start(ingress_sock)
        self.started = True
        log.info(
            "listening",
            extra={
                "ingress": "{}:{}".format(*self.ingress.address),
                "admin": "{}:{}".format(*self.admin_address),
                "primary": config.primary.url,
                "candidate": config.candidate.url,
                "secondary": config.secondary.url if config.secondary else None,
            },
        )

    @property
    def pools(self) -> dict[str, Any]:
        return self.plane.pools

    @property
    def ingress_address(self) -> tuple[str, int]:
        return self.ingress.address

    @property
    def admin_address(self) -> tuple[str, int]:
        assert self._admin_runner is not None
        host, port = self._admin_runner.addresses[0][:2]  # the one site: the admin listener
        return host, port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight answers finish within ``grace`` seconds, let the copies
        already sent come back (bounded), diff what arrived, then close everything."""
        if not self.started:
            return
        self.started = False
        drained = await self.plane.drain(grace)
        await self.diff_stage.wait_idle(min(grace, 5.0))
        if self.capture is not None and not await self.capture.close(timeout=grace):
            log.warning("capture buffer not fully written at shutdown")
        self.plane.close()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await self._tasks.cancel_all()
        self._stopped.set()
        log.info(
            "stopped",
            extra={
                "drained": drained,
                "diffed": self.diff_stage.diffed,
                "captured": self.capture.written if self.capture else None,
            },
        )

    def reload_from_file(self) -> bool:
        """SIGHUP: re-read the config file; an invalid one changes nothing."""
        sdnotify.notify("RELOADING=1")
        try:
            new = load_config(self.config.source)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, the running config stays: %s", exc)
            sdnotify.notify("READY=1\nSTATUS=reload refused: config invalid")
            return False
        self.reconfigure(new)
        sdnotify.notify(f"READY=1\nSTATUS=reloaded {self.config.source}")
        return True

    def reconfigure(self, new: Config) -> None:
        """Apply a validated config without dropping connections or statistics. The listen
        addresses and the ingress mode are kept: changing those needs a restart."""
        new, restart_only = restart_only_changes(self.config, new)
        if restart_only:
            log.warning("these changes need a restart and were not applied: %s", restart_only)
        self.plane.reconfigure(new)
        self.config = new
        self.diff_stage.config = new.diff
        self.aggregator.config = new
        log.info("config reloaded", extra={"source": new.source, "digest": new.digest[:12]})

    # -- the pipeline's end ----------------------------------------------------------------
    def _deliver(self, exchange: Exchange) -> None:
        for listener in self.exchange_listeners:
            listener(exchange)
        self.diff_stage.submit(record_payload(exchange))

    # -- AdminControl ----------------------------------------------------------------------
    def mirror_status(self) -> dict[str, Any]:
        return {
            "enabled": self.mirror.enabled,
            "queue_depth": self.mirror.queue_depth,
            "in_flight": self.mirror.in_flight,
            "diff_backlog": self.diff_stage.backlog,
            "capture": [self.capture.status()] if self.capture is not None else None,
            "dropped": self.metrics.mirror_dropped_counts(),
            "skipped": self.metrics.mirror_skipped_counts(),
        }

    def reset(self) -> dict[str, Any]:
        """Clear the report and the verdict's evidence (e.g. a new candidate is deployed).
        Prometheus counters are not reset: counters never go down."""
        self.evidence.reset()
        return self.aggregator.reset()

    def report(self) -> dict[str, Any]:
        return build_report(self.aggregator, self.mirror_status())

    def timeline_counts(self) -> dict[str, Any]:
        return self.report()  # embedded, for tests: the whole report will do

    async def report_json(self) -> bytes:
        # Embedded, for tests: built on this loop (``shadowd run`` builds it off its loop).
        return orjson.dumps(self.report(), option=orjson.OPT_NON_STR_KEYS)

    async def current_verdict(self, caller: str = "") -> Any:
        return await judge_now(self)  # embedded (demo, tests): judged at every call

    async def set_mirroring(self, enabled: bool) -> None:
        self.mirror.set_enabled(enabled)
        log.info("mirroring %s", "enabled" if enabled else "disabled")

    async def readiness(self) -> dict[str, Any]:
        """Ready when the primary is reachable: a candidate that is down must never take
        production traffic out of a load balancer. Every target's state is reported."""
        names = [t.name for t in (self.config.primary, *self.config.mirror_targets)]
        results = await asyncio.gather(*(probe_target(self.pools[n].target) for n in names))
        targets = {
            name: {"reachable": error is None, "error": error}
            for name, error in zip(names, results, strict=True)
        }
        return {"ready": self.started and targets["primary"]["reachable"], "targets": targets}


async def probe_target(target: Any) -> str | None:
    """Whether a TCP connection to a target opens within a second: None, or why not."""
    try:
        async with asyncio.timeout(min(1.0, target.connect_timeout)):
            _, writer = await asyncio.open_connection(target.host, target.port)
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}".rstrip(": ")
    writer.close()
    return None

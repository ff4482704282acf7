"""The fleet's view: every analysis worker's snapshot, read from Redis and merged.

Each analysis worker on the stream stores its cumulative snapshot (counters, HDR histograms,
field statistics, verdict evidence, its Prometheus series) under its consumer name; each
ingress instance stores its Prometheus series. Any ``shadowd run`` with ``[stream] backend =
"redis"`` merges them on a timer into one report, one verdict and one ``/metrics``
(``?scope=fleet`` on the admin API, or ``[stream] view = "fleet"``), exactly as the
supervisor merges its own workers' deltas: the fleet's report equals one process's report of
the same exchanges.

``FleetView`` runs in the fleet view process (``shadowd.stream.fleet_process``), never on the
supervisor's loop: the supervisor asks it through ``shadowd.stream.fleet_client``.

A dead worker's snapshot stays: what it acknowledged is counted once, there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
from typing import Any

import msgpack
import numpy as np

from shadowd.aggregate import Aggregator
from shadowd.analysis.snapshot import merge_snapshot
from shadowd.config import Config
from shadowd.metrics import Families, MergedSeries, Metrics, SupervisorMetrics, export_families
from shadowd.report import build_report
from shadowd.stream.redis_stream import (
    FLEET_SNAPSHOT_VERSION,
    UNREACHABLE,
    fleet_keys,
    redis_client,
)
from shadowd.tasks import stop_task
from shadowd.verdict.evidence import VerdictEvidence
from shadowd.verdict.judge import Verdict, judge
from shadowd.verdict.schedule import ScheduledVerdict

log = logging.getLogger("shadowd.stream")

STALE_AFTER_INTERVALS = 5  # a worker silent this many snapshot intervals is shown as stale


def _judge_frozen(report: dict[str, Any], evidence: bytes, config: Config) -> Verdict:
    return judge(report, pickle.loads(evidence), config)


class FleetSeries(MergedSeries):
    """Every fleet member's series, replaced as a whole at each refresh (a fleet reset
    removes snapshots; a member's counters are cumulative in its own snapshot)."""

    def replace(self, members: dict[str, Families]) -> None:
        self._live = dict(members)


class FleetView:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.keys = fleet_keys(config.stream)
        self.client = redis_client(config.stream)
        self.aggregator = Aggregator(config)
        self.evidence = VerdictEvidence(config.endpoints.max)
        self.series = FleetSeries()
        self._baseline = export_families(Metrics(config).registry)
        self.series.replace({"baseline": self._baseline})
        self.metrics = SupervisorMetrics(config, self.series)
        self.generation = 0
        self.version = 0  # bumped whenever a member's snapshot changed
        self.members: list[dict[str, Any]] = []
        self.ingress: list[dict[str, Any]] = []
        self.connected = False
        self.error: str | None = None
        self.refreshed = asyncio.Event()
        self._raw: tuple[dict[bytes, bytes], dict[bytes, bytes]] | None = None
        self._report: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        # Judged on demand, in a thread: requests keep being answered while it judges.
        self.verdicts = ScheduledVerdict(
            self._judge,
            lambda: (self.generation, self.version),
            self._observe,
            catch_up=self._catch_up,
        )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._every(), name="fleet-view")

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
        await self.verdicts.close()
        with contextlib.suppress(*UNREACHABLE):
            await self.client.aclose()

    async def _every(self) -> None:
        while True:
            try:
                await self.refresh()
            except UNREACHABLE as exc:
                if self.connected:
                    log.warning("fleet view: Redis unreachable: %s", exc)
                self.connected, self.error = False, f"{type(exc).__name__}: {exc}"
            except Exception:  # a bug or a damaged entry must not end the view's refreshes
                log.exception("fleet view: merging the snapshots failed")
            await asyncio.sleep(self.config.analysis.snapshot_interval)

    async def refresh(self) -> bool:
        """Read every member's snapshot; merge again if any changed. True when it did."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys["snapshots"])
        pipe.hgetall(self.keys["ingress"])
        pipe.get(self.keys["generation"])
        snapshots, ingress, generation = await pipe.execute()
        self.connected, self.error = True, None
        raw = (snapshots, ingress)
        changed = raw != self._raw
        if changed:
            self._raw = raw
            self._merge(snapshots, ingress, int(generation or 0))
        self.refreshed.set()
        return changed

    async def _catch_up(self) -> None:
        """Until every analysis worker that is not stale has published after this call, and
        its snapshot is merged: a one-off verdict (a gate right after a load test) then
        judges the traffic up to about the call, not up to two snapshot intervals before it.
        Bounded by two intervals (a worker whose clock runs behind never seems to publish
        after the call), and by the verdict's own wait for a one-off caller."""
        asked = time.time()
        loop = asyncio.get_running_loop()
        interval = self.config.analysis.snapshot_interval
        deadline = loop.time() + 2 * interval + 1.0
        while True:
            with contextlib.suppress(*UNREACHABLE):
                await self.refresh()
            live = [member for member in self.members if not member["stale"]]
            if all(m["published_at"] >= asked for m in live) or loop.time() >= deadline:
                return
            await asyncio.sleep(min(0.1, interval / 4))

    def _merge(
        self, snapshots: dict[bytes, bytes], ingress: dict[bytes, bytes], generation: int
    ) -> None:
        aggregator = Aggregator(self.config)
        evidence = VerdictEvidence(self.config.endpoints.max)
        rng = np.random.default_rng(0x5AD0)  # the reservoirs' merge: reproducible
        members: dict[str, Families] = {"baseline": self._baseline}
        self.members, self.ingress = [], []
        started = []
        now = time.time()
        stale = STALE_AFTER_INTERVALS * self.config.analysis.snapshot_interval
        for name in sorted(snapshots):  # one order everywhere: every admin merges alike
            doc = msgpack.unpackb(snapshots[name], raw=False, strict_map_key=False)
            if not isinstance(doc, dict) or doc.get("v") != FLEET_SNAPSHOT_VERSION:
                log.warning("fleet view: %r has another snapshot layout; skipped", name)
                continue
            merge_snapshot(aggregator, evidence, doc["snapshot"], rng)
            consumer = name.decode(errors="replace")
            members[f"analysis:{consumer}"] = doc["metrics"]
            started.append(doc["started_at"])
            self.members.append(
                {
                    "consumer": consumer,
                    "published_at": doc["at"],
                    "stale": now - doc["at"] > stale,
                    **doc["status"],
                }
            )
        for name in sorted(ingress):
            doc = msgpack.unpackb(ingress[name], raw=False, strict_map_key=False)
            members[f"ingress:{name.decode(errors='replace')}"] = doc["metrics"]
            self.ingress.append({"name": name.decode(errors="replace"), "published_at": doc["at"]})
        if started:
            aggregator.started_at = aggregator.reset_at = min(started)
        self.aggregator, self.evidence = aggregator, evidence
        self.series.replace(members)
        self.metrics.set_workers("analysis", sum(1 for m in self.members if not m["stale"]))
        self.metrics.set_workers("ingress", len(self.ingress))
        self.generation = generation
        self.version += 1
        self._report = None

    def status(self) -> dict[str, Any]:
        return {
            "scope": "fleet",
            "stream": self.config.stream.key,
            "connected": self.connected,
            "error": self.error,
            "analysis_workers": self.members,
            "ingress_instances": self.ingress,
            "dropped": self.series.by_label("shadowd_mirror_dropped_total", "reason"),
            "skipped": self.series.by_label("shadowd_mirror_skipped_total", "reason"),
        }

    def report(self, instance_status: dict[str, Any] | None = None) -> dict[str, Any]:
        """Built once per merge; the status part is current at every call. The asking
        instance's mirroring status (its kill switch, queue) goes beside the fleet's
        members, so the dashboard's switch stays truthful."""
        status = dict(instance_status or {})
        status.update(self.status())
        return {**self.statistics_report(), "mirroring": status}

    def statistics_report(self) -> dict[str, Any]:
        """The report without its ``mirroring`` status: built once per merge."""
        if self._report is None:
            built = build_report(self.aggregator)
            del built["mirroring"]  # the caller's, current at each call: see ``report``
            self._report = built
        return self._report

    async def current_verdict(self, caller: str = "") -> Verdict:
        return await self.verdicts.current(caller)

    async def _judge(self) -> Verdict:
        report = self.report()
        self.metrics.observe_beyond_noise(
            (e["endpoint"], e["divergent_beyond_noise_ratio"]) for e in report["endpoints"]
        )
        # Frozen now: the refresh keeps merging into ``evidence`` while the thread judges.
        frozen = pickle.dumps(self.evidence)
        return await asyncio.to_thread(_judge_frozen, report, frozen, self.config)

    def _observe(self, verdict: Verdict) -> None:
        self.metrics.observe_verdict(verdict)

    async def reset(self) -> dict[str, Any]:
        """Clear the fleet's statistics: every worker starts a new window at its next
        snapshot (the generation changed), and the snapshots stored so far are removed."""
        cleared = {
            "exchanges": self.aggregator.totals.exchanges,
            "endpoints": len(self.aggregator.endpoints),
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(self.keys["generation"])
        pipe.delete(self.keys["snapshots"])
        await pipe.execute()
        await self.refresh()
        return cleared

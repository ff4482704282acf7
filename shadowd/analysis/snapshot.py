"""Mergeable statistics: what an analysis worker publishes, and how the supervisor adds it up.

An analysis worker fills an ``Aggregator`` and a ``VerdictEvidence`` for one interval, then
ships them as a *delta* snapshot (plain msgpack-ready data) and starts afresh; the supervisor
merges every delta into the one cumulative view the admin API serves. Everything merges
exactly: counters add, HDR histograms add bucket by bucket (``hdrh``'s encode/``decode_and_add``),
field counts add under the same caps as in one process, samples join a bounded deque. Latency
pair reservoirs merge into a uniform sample of the union (a hypergeometric split), so N
workers give the same distribution of evidence as one. The warm-up bookkeeping merges
exactly too: exchange counts add, the earliest arrival times are a sorted union cut to
``WARMUP_KEEP``. Usage (DB calls, cache lookups per request) merges the same way: per-target
totals add, and the usage row reservoirs merge into a uniform sample of the union.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shadowd.aggregate import SERVER_TIMING_METRICS, Aggregator, EndpointStats
from shadowd.verdict.evidence import (
    COLUMNS,
    EndpointEvidence,
    ErrorTally,
    PairReservoir,
    UsageReservoir,
    VerdictEvidence,
    merge_earliest,
)

SNAPSHOT_VERSION = 4  # 2: noise counted per kind, latency rows with secondary and warm-up;
# 3: usage (DB calls, cache lookups) per request; 4: latencies not yet in a histogram as values


# -- statistics -> snapshot ------------------------------------------------------------------
# Samples a worker's delta carries at most, newest first, taken in turn from every endpoint:
# each holds three answers' bodies (up to ~8 KB), and a delta of 200 endpoints with 20 samples
# each was ~30 MB to unpack in one piece on the supervisor's loop (hundreds of milliseconds,
# once a second, for every admin request that came meanwhile). A person reads a few samples
# per endpoint; the supervisor keeps the newest ``samples_per_endpoint`` it was sent.
DELTA_SAMPLES = 100


def snapshot_of(
    aggregator: Aggregator, evidence: VerdictEvidence, max_samples: int | None = None
) -> dict[str, Any]:
    """Everything ``aggregator`` and ``evidence`` hold, as plain data; with ``max_samples``,
    only that many samples in all (see ``DELTA_SAMPLES``)."""
    stats_list = list(aggregator.endpoints.values())
    endpoints = [_endpoint_snapshot(s) for s in stats_list]
    if max_samples is not None:
        _keep_newest_samples(endpoints, max_samples)
    for stats, endpoint in zip(stats_list, endpoints, strict=True):
        # only the samples sent are built (see PendingSample)
        endpoint["samples"] = stats.newest_samples(len(endpoint["samples"]))
    return {
        "v": SNAPSHOT_VERSION,
        "endpoints": endpoints,
        "evidence": {
            "overall": _evidence_snapshot(evidence.overall),
            "endpoints": {n: _evidence_snapshot(e) for n, e in evidence.endpoints.items()},
        },
    }


def _endpoint_snapshot(stats: EndpointStats) -> dict[str, Any]:
    histograms, values = stats.latency_parts()
    return {
        "name": stats.endpoint,
        "exchanges": stats.exchanges,
        "divergent": stats.divergent,
        "noisy": stats.noisy,
        "noise_exchanges": stats.noise_exchanges,
        "overflow": stats.overflow,
        "by_digest": stats.by_digest,
        "errors": stats.errors,
        "statuses": stats.statuses,
        "latency": {t: h.encode() for t, h in histograms.items() if h.get_total_count()},
        "latency_values": {t: list(micros) for t, micros in values.items() if micros},
        "fields": {
            path: [f.divergent, f.noise, f.volatile, f.kinds, f.noise_kinds]
            for path, f in stats.fields.items()
        },
        "samples": list(stats.sample_ring),
        "last_sample_at": stats.last_sample_at,
        "absorbed": stats.absorbed,
        "timing": stats.timing,
    }


def _keep_newest_samples(endpoints: list[dict[str, Any]], budget: int) -> None:
    """Cut the endpoints' sample lists (oldest first in each) to ``budget`` samples in all:
    every endpoint's newest first, then every endpoint's second newest, and so on."""
    if sum(len(e["samples"]) for e in endpoints) <= budget:
        return
    kept = [0] * len(endpoints)
    depth = 0
    while budget > 0:
        took = False
        for i, endpoint in enumerate(endpoints):
            if budget > 0 and depth < len(endpoint["samples"]):
                kept[i] += 1
                budget -= 1
                took = True
        if not took:
            break
        depth += 1
    for endpoint, n in zip(endpoints, kept, strict=True):
        endpoint["samples"] = endpoint["samples"][len(endpoint["samples"]) - n :]


def _evidence_snapshot(ev: EndpointEvidence) -> dict[str, Any]:
    columns = ev.pairs.columns()
    return {
        "seen": ev.pairs.seen,
        **{name: columns[name].tobytes() for name in COLUMNS},
        "errors": {t: [e.answers, e.errors, e.by_kind] for t, e in ev.errors.items()},
        "exchanges": ev.exchanges,
        "earliest": np.asarray(ev.earliest, dtype=np.float64).tobytes(),
        "usage": _usage_snapshot(ev),
    }


def _usage_snapshot(ev: EndpointEvidence) -> dict[str, Any] | None:
    if ev.usage is None and not ev.usage_totals:
        return None
    reservoir = ev.usage
    n = 0 if reservoir is None else min(reservoir.seen, reservoir.capacity)
    return {
        "totals": {t: list(v) for t, v in ev.usage_totals.items()},
        "seen": 0 if reservoir is None else reservoir.seen,
        "rows": b"" if reservoir is None else reservoir.rows[:n].tobytes(),
        "at": b"" if reservoir is None else reservoir.at[:n].tobytes(),
    }


# -- snapshot -> cumulative statistics ------------------------------------------------------
def _frozen(value: Any) -> Any:
    """``value`` with every list made a tuple. A sample is dozens of small lists (header
    pairs, differences); as tuples of strings and numbers, and dicts of those, the garbage
    collector stops tracking them, so the thousands of samples a supervisor holds do not
    lengthen each of its full collections (a stall of the admin API)."""
    if type(value) is list:
        return tuple([_frozen(item) for item in value])
    if type(value) is dict:
        return {key: _frozen(item) for key, item in value.items()}
    return value


def merge_snapshot(
    aggregator: Aggregator,
    evidence: VerdictEvidence,
    snapshot: dict[str, Any],
    rng: np.random.Generator,
) -> None:
    """Add one delta snapshot to cumulative statistics (caps applied as in one process)."""
    limit = aggregator.config.diff.max_fields_per_endpoint
    totals = aggregator.totals
    for snap in snapshot["endpoints"]:
        stats = aggregator.stats_for(snap["name"])
        stats.exchanges += snap["exchanges"]
        stats.divergent += snap["divergent"]
        stats.noisy += snap["noisy"]
        stats.noise_exchanges += snap.get("noise_exchanges", 0)
        stats.overflow += snap["overflow"]
        stats.by_digest += snap["by_digest"]
        totals.exchanges += snap["exchanges"]
        totals.divergent += snap["divergent"]
        totals.noisy += snap["noisy"]
        for target, count in snap["errors"].items():
            stats.errors[target] = stats.errors.get(target, 0) + count
            totals.errors[target] = totals.errors.get(target, 0) + count
        for target, classes in snap["statuses"].items():
            mine = stats.statuses.setdefault(target, {})
            for status_class, count in classes.items():
                mine[status_class] = mine.get(status_class, 0) + count
        for target, encoded in snap["latency"].items():
            stats.add_latency_histogram(target, encoded)
        for target, micros in snap["latency_values"].items():
            stats.record_latencies_us(target, micros)
        for path, (divergent, noise, volatile, kinds, noise_kinds) in snap["fields"].items():
            _, fld = stats.field(path, limit)
            fld.divergent += divergent
            fld.noise += noise
            fld.volatile += volatile
            for kind, count in kinds.items():
                fld.kinds[kind] = fld.kinds.get(kind, 0) + count
            for kind, count in noise_kinds.items():
                fld.noise_kinds[kind] = fld.noise_kinds.get(kind, 0) + count
        for sample in snap["samples"][-(stats.sample_ring.maxlen or 0) :]:
            stats.sample_ring.append(_frozen(sample))
        stats.last_sample_at = max(stats.last_sample_at, snap["last_sample_at"])
        for rule, count in snap["absorbed"].items():
            stats.absorbed[rule] = stats.absorbed.get(rule, 0) + count
        for metric, by_target in snap["timing"].items():
            if metric not in stats.timing and len(stats.timing) >= SERVER_TIMING_METRICS:
                continue
            mine_t = stats.timing.setdefault(metric, {})
            for target, (total, count) in by_target.items():
                cell = mine_t.setdefault(target, [0.0, 0])
                cell[0] += total
                cell[1] += count
    ev = snapshot["evidence"]
    _merge_evidence(evidence.overall, ev["overall"], rng)
    for name, snap in ev["endpoints"].items():
        endpoint = evidence.endpoint_for(name)
        if endpoint is not None:
            _merge_evidence(endpoint, snap, rng)


def _merge_evidence(ev: EndpointEvidence, snap: dict[str, Any], rng: np.random.Generator) -> None:
    for target, (answers, errors, by_kind) in snap["errors"].items():
        tally = ev.errors.setdefault(target, ErrorTally())
        tally.answers += answers
        tally.errors += errors
        for kind, count in by_kind.items():
            tally.by_kind[kind] = tally.by_kind.get(kind, 0) + count
    ev.exchanges += snap["exchanges"]
    ev.earliest = merge_earliest(
        ev.earliest, np.frombuffer(snap["earliest"], dtype=np.float64).tolist()
    )
    merge_reservoir(
        ev.pairs,
        snap["seen"],
        np.frombuffer(snap["primary"], dtype=np.float64),
        np.frombuffer(snap["candidate"], dtype=np.float64),
        rng,
        secondary=np.frombuffer(snap["secondary"], dtype=np.float64),
        at=np.frombuffer(snap["at"], dtype=np.float64),
        code=np.frombuffer(snap["code"], dtype=np.int64),
    )
    usage = snap.get("usage")
    if usage:
        _merge_usage(ev, usage, rng)


def _merge_usage(ev: EndpointEvidence, snap: dict[str, Any], rng: np.random.Generator) -> None:
    for target, values in snap["totals"].items():
        mine = ev.usage_totals.setdefault(target, [0.0] * len(values))
        for i, value in enumerate(values):
            mine[i] += value
    if not snap["seen"]:
        return
    if ev.usage is None:
        ev.usage = UsageReservoir()
    rows = np.frombuffer(snap["rows"], dtype=np.float32).reshape(-1, ev.usage.rows.shape[1])
    merge_usage_reservoir(
        ev.usage, snap["seen"], rows, np.frombuffer(snap["at"], dtype=np.float64), rng
    )


def merge_usage_reservoir(
    reservoir: UsageReservoir,
    seen: int,
    rows: np.ndarray,
    at: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Make ``reservoir`` a uniform sample of its rows and another reservoir's (``seen``
    rows, of which ``rows``/``at`` are a uniform sample): the split between the two sides is
    drawn from the hypergeometric law, as for latency rows (``merge_reservoir``)."""
    if not seen:
        return
    n = len(rows)
    capacity = reservoir.capacity
    mine = min(reservoir.seen, capacity)
    total = reservoir.seen + seen
    if total <= capacity:
        reservoir.rows[mine : mine + n] = rows
        reservoir.at[mine : mine + n] = at
        reservoir.seen = total
        return
    from_other = int(rng.hypergeometric(seen, reservoir.seen, capacity))
    keep_mine = capacity - from_other
    mine_idx: np.ndarray = (
        rng.choice(mine, size=keep_mine, replace=False) if keep_mine else np.empty(0, dtype=int)
    )
    other_idx = rng.choice(n, size=from_other, replace=False)
    reservoir.rows[:capacity] = np.concatenate([reservoir.rows[:mine][mine_idx], rows[other_idx]])
    reservoir.at[:capacity] = np.concatenate([reservoir.at[:mine][mine_idx], at[other_idx]])
    reservoir.seen = total


def merge_reservoir(
    reservoir: PairReservoir,
    seen: int,
    primary: np.ndarray,
    candidate: np.ndarray,
    rng: np.random.Generator,
    *,
    secondary: np.ndarray | None = None,
    at: np.ndarray | None = None,
    code: np.ndarray | None = None,
) -> None:
    """Make ``reservoir`` a uniform sample of its rows and another reservoir's (``seen``
    rows, of which the given columns are a uniform sample; a column not given is NaN for
    ``secondary``, 0 for ``at`` and ``code``). With both samples uniform, drawing how many
    come from each side from the hypergeometric law and then that many at random from each
    keeps the union's sample uniform."""
    if not seen:
        return
    n = len(primary)
    other = {
        "primary": primary,
        "candidate": candidate,
        "secondary": np.full(n, np.nan) if secondary is None else secondary,
        "at": np.zeros(n) if at is None else at,
        "code": np.zeros(n, dtype=np.int64) if code is None else code,
    }
    capacity = reservoir.capacity
    mine = min(reservoir.seen, capacity)
    total = reservoir.seen + seen
    if total <= capacity:
        for name in COLUMNS:
            getattr(reservoir, name)[mine : mine + n] = other[name]
        reservoir.seen = total
        return
    from_other = int(rng.hypergeometric(seen, reservoir.seen, capacity))
    keep_mine = capacity - from_other
    mine_idx: np.ndarray | list[int] = (
        rng.choice(mine, size=keep_mine, replace=False) if keep_mine else []
    )
    other_idx = rng.choice(n, size=from_other, replace=False)
    for name in COLUMNS:
        column = getattr(reservoir, name)
        column[:capacity] = np.concatenate([column[:mine][mine_idx], other[name][other_idx]])
    reservoir.seen = total

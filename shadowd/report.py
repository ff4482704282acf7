"""The divergence report: the JSON of ``GET /api/v1/report`` and the table ``shadowd report``
prints from it. Field decisions (divergent / noise) come from ``shadowd.noise``.

Everything here reads the aggregator and builds plain dicts (the cold path): the table is
rendered from the JSON alone, so the CLI can print a report fetched from a remote daemon.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

from shadowd.aggregate import Aggregator, EndpointStats, latency_summary
from shadowd.bounds import bounded
from shadowd.noise import DIVERGENT, FieldCounts, decide_fields
from shadowd.usage import CACHE_HITS, CACHE_MISSES, DB_CALLS, DB_MS

QUANTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
_PERCENTILES = tuple(q for _, q in QUANTILES)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _latency(stats: EndpointStats) -> dict[str, dict[str, float | int]]:
    """Seconds per target. ``count`` is every answer that did not fail (the histogram may
    hold half of them after 2**32, see ``shadowd.aggregate``)."""
    out: dict[str, dict[str, float | int]] = {}
    for target, hist in stats.latency.items():
        if not hist.get_total_count():
            continue
        entry: dict[str, float | int] = {"count": sum(stats.statuses.get(target, {}).values())}
        summary = latency_summary(hist, _PERCENTILES)
        for name, q in QUANTILES:
            entry[name] = summary[f"p{q:g}"] / 1e6
        entry["max"] = summary["max"] / 1e6
        entry["mean"] = summary["mean"] / 1e6
        out[target] = entry
    return out


def _fields(stats: EndpointStats) -> list[dict[str, Any]]:
    """The field rows of an endpoint, without their decisions (``_decide`` adds them)."""
    exchanges = stats.exchanges
    return [
        {
            "path": path,
            "kinds": dict(fld.kinds),
            "noise_kinds": dict(fld.noise_kinds),
            "divergent": fld.divergent,
            "noise": fld.noise,
            "volatile": fld.volatile,
            "divergent_ratio": _ratio(fld.divergent, exchanges),
            "noise_ratio": _ratio(fld.noise, exchanges),
        }
        for path, fld in stats.fields.items()
    ]


def _decide(endpoints: list[dict[str, Any]], aggregator: Aggregator) -> None:
    """Every field's decision against noise, made over the whole report at once (the
    false-discovery rate is controlled across all fields of all endpoints, see
    ``shadowd.noise``), and each endpoint's rate beyond noise."""
    config = aggregator.config
    rows = [(e, f) for e in endpoints for f in e["fields"]]
    # The probe answers a share of the exchanges: noise counts are out of those. A secondary
    # answers all of them (its rare gaps are counted as agreement, as before).
    probing = config.probe is not None
    decisions = decide_fields(
        [
            FieldCounts(
                e["exchanges"],
                f["divergent"],
                f["noise"],
                f["kinds"],
                f["noise_kinds"],
                f["volatile"],
                e["noise_exchanges"] if probing else None,
            )
            for e, f in rows
        ],
        has_secondary=config.noise_baseline is not None,
        relative=config.diff.noise_relative,
        absolute=config.diff.noise_absolute,
        significance=config.verdict.significance,
    )
    for (_, fld), decision in zip(rows, decisions, strict=True):
        fld["decision"] = decision.decision
        fld["why"] = decision.why
        fld["decisive_kind"] = decision.kind
        fld["beyond_noise"] = decision.count if decision.decision == DIVERGENT else 0
        fld["p_value"] = decision.p_value
        fld["q_value"] = decision.q_value
    for endpoint in endpoints:
        endpoint["fields"].sort(key=lambda f: (-f["divergent"], -f["noise"], f["path"]))
        # Exchanges are not re-judged one by one when noise estimates move, so the endpoint's
        # rate beyond noise is that of its worst divergent field and kind (a lower bound of
        # the share of exchanges with any real divergence).
        endpoint["divergent_beyond_noise_ratio"] = max(
            (_ratio(f["beyond_noise"], endpoint["exchanges"]) for f in endpoint["fields"]),
            default=0.0,
        )


def _usage(stats: EndpointStats) -> dict[str, dict[str, float | int | None]]:
    """Per target: the work behind its answers as the companion middleware reports it
    (``shadowd.usage``), averaged over the answers that reported it."""
    timing = stats.timing
    out: dict[str, dict[str, float | int | None]] = {}
    calls, db_ms = timing.get(DB_CALLS, {}), timing.get(DB_MS, {})
    hits, misses = timing.get(CACHE_HITS, {}), timing.get(CACHE_MISSES, {})
    for target in {*calls, *hits, *misses}:
        entry: dict[str, float | int | None] = {}
        if target in calls:
            total, count = calls[target]
            entry["answers"] = count
            entry["db_calls_per_request"] = total / count if count else 0.0
            ms_total, ms_count = db_ms.get(target, (0.0, 0))
            entry["db_ms_per_request"] = ms_total / ms_count if ms_count else None
        h = hits.get(target, (0.0, 0))[0]
        m = misses.get(target, (0.0, 0))[0]
        if target in hits or target in misses:
            entry["cache_lookups"] = int(h + m)
            entry["cache_hit_ratio"] = h / (h + m) if h + m else None
        out[target] = entry
    return dict(sorted(out.items()))


def _endpoint(stats: EndpointStats) -> dict[str, Any]:
    exchanges = stats.exchanges
    return {
        "id": stats.id,
        "endpoint": stats.endpoint,
        "exchanges": exchanges,
        "divergent": stats.divergent,
        "divergent_ratio": _ratio(stats.divergent, exchanges),
        "divergent_beyond_noise_ratio": 0.0,  # set by _decide
        "noisy": stats.noisy,
        "noise_ratio": _ratio(stats.noisy, exchanges),
        "noise_exchanges": stats.noise_exchanges,
        "errors": {t: n for t, n in stats.errors.items() if n},
        "status": {t: dict(sorted(c.items())) for t, c in stats.statuses.items() if c},
        "latency": _latency(stats),
        "fields": _fields(stats),
        "unlisted_differences": stats.overflow,
        "bodies_compared_by_digest": stats.by_digest,
        "rules_absorbed": dict(stats.absorbed),
        # Metric names come from the targets' Server-Timing headers: as long as a header.
        "server_timing": {
            bounded(metric): {
                target: {"mean_ms": total / count, "count": count}
                for target, (total, count) in by_target.items()
            }
            for metric, by_target in stats.timing.items()
        },
        "usage": _usage(stats),
    }


def build_report(aggregator: Aggregator, status: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report since the start or the last reset. ``status`` (the daemon's mirroring
    status) is copied under ``mirroring``. Endpoints come worst first: by their rate beyond
    noise, then divergent exchanges, then exchanges."""
    now = time.time()
    endpoints = [_endpoint(s) for s in aggregator.endpoints.values()]
    _decide(endpoints, aggregator)
    endpoints.sort(
        key=lambda e: (
            -e["divergent_beyond_noise_ratio"],
            -e["divergent"],
            -e["exchanges"],
            e["endpoint"],
        )
    )
    totals = aggregator.totals
    config = aggregator.config
    absorbed: dict[str, int] = {}
    for e in endpoints:
        for rule, n in e["rules_absorbed"].items():
            absorbed[rule] = absorbed.get(rule, 0) + n
    return {
        "generated_at": now,
        "started_at": aggregator.started_at,
        "window": {"since": aggregator.reset_at, "seconds": max(0.0, now - aggregator.reset_at)},
        "targets": {t.name: t.url for t in (config.primary, *config.mirror_targets)},
        "rules": [
            {"name": r.name, "why": r.why, "action": r.action, "absorbed": absorbed.get(r.name, 0)}
            for r in config.diff.rules
        ],
        "mirroring": dict(status) if status else {},
        "totals": {
            "exchanges": totals.exchanges,
            "divergent": totals.divergent,
            "divergent_ratio": _ratio(totals.divergent, totals.exchanges),
            "noisy": totals.noisy,
            "errors": {t: n for t, n in totals.errors.items() if n},
            "endpoints": len(endpoints),
        },
        "endpoints": endpoints,
    }


def endpoint_samples(aggregator: Aggregator, endpoint_id: str) -> dict[str, Any] | None:
    """The recent divergent exchanges of one endpoint, newest first; None for an unknown id."""
    stats = aggregator.by_id(endpoint_id)
    if stats is None:
        return None
    return {
        "id": stats.id,
        "endpoint": stats.endpoint,
        "exchanges": stats.exchanges,
        "divergent": stats.divergent,
        "samples": list(reversed(stats.samples)),
    }


# -- the table -------------------------------------------------------------------------------
MIN_NAME_WIDTH = 16  # the first column is cut (with "…") to fit the width, never below this


def _ms(latency: dict[str, Any], target: str, q: str) -> str:
    value = latency.get(target, {}).get(q)
    return "-" if value is None else f"{value * 1000:.1f}"


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def _columns(rows: list[list[str]], right: set[int], width: int) -> list[str]:
    """Rows as aligned lines (columns in ``right`` right-aligned), two spaces apart. When the
    lines would be wider than ``width``, the first column is cut to make room."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    others = sum(widths[1:]) + 2 * (len(widths) - 1)
    if widths[0] + others > width:
        widths[0] = max(MIN_NAME_WIDTH, width - others)
        rows = [[_cut(row[0], widths[0]), *row[1:]] for row in rows]
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def _pair(values: dict[str, Any], default: Any = 0) -> str:
    return f"{values.get('candidate', default)}/{values.get('primary', default)}"


def _header(report: dict[str, Any], width: int) -> list[str]:
    totals = report["totals"]
    errors = totals.get("errors") or {}
    lines = [
        f"shadowd report: {totals['exchanges']} exchanges over "
        f"{report['window']['seconds']:.0f}s, {totals['divergent']} divergent "
        f"({_pct(totals['divergent_ratio'])}), {totals['noisy']} with noise"
        + (f", errors c/p {_pair(errors)}" if errors else "")
    ]
    mirroring = report.get("mirroring") or {}
    if mirroring:
        dropped = {k: v for k, v in (mirroring.get("dropped") or {}).items() if v}
        lines.append(
            f"mirroring {'on' if mirroring.get('enabled') else 'OFF'}; queue "
            f"{mirroring.get('queue_depth', 0)}, in flight {mirroring.get('in_flight', 0)}, "
            f"dropped {sum(dropped.values())}"
            + (f" ({', '.join(f'{k} {v}' for k, v in dropped.items())})" if dropped else "")
        )
    return [part for line in lines for part in textwrap.wrap(line, width, subsequent_indent="  ")]


def render_table(report: dict[str, Any], *, width: int = 100, max_fields: int = 8) -> str:
    """What ``shadowd report`` prints: totals and mirroring, one row per endpoint, then the
    top ``max_fields`` fields of each endpoint that differs. Lines fit ``width`` columns
    (endpoint names and paths are cut when they must be)."""
    lines = [*_header(report, width), ""]
    if not report["endpoints"]:
        lines.append("No exchanges yet: send traffic through the ingress.")
        return "\n".join(lines)
    rows = [
        [
            "endpoint",
            "exchanges",
            "diverge",
            "any diff",
            "noise",
            "err c/p",
            "p50 ms p/c",
            "p99 ms p/c",
        ]
    ]
    for e in report["endpoints"]:
        lat = e["latency"]
        rows.append(
            [
                e["endpoint"],
                str(e["exchanges"]),
                _pct(e.get("divergent_beyond_noise_ratio", e["divergent_ratio"])),
                _pct(e["divergent_ratio"]),
                _pct(e["noise_ratio"]),
                _pair(e["errors"]),
                f"{_ms(lat, 'primary', 'p50')}/{_ms(lat, 'candidate', 'p50')}",
                f"{_ms(lat, 'primary', 'p99')}/{_ms(lat, 'candidate', 'p99')}",
            ]
        )
    lines += _columns(rows, right=set(range(1, 8)), width=width)
    lines += textwrap.wrap(
        "(diverge: worst field beyond noise; any diff: any difference, noise included; "
        "err: no complete answer (a 5xx is a status difference); c/p: candidate/primary)",
        width,
    )
    lines += _usage_lines(report, width)
    for e in report["endpoints"]:
        fields = [f for f in e["fields"] if f["divergent"] or f["noise"]]
        if not fields:
            continue
        about = f"  ({e['exchanges']} exchanges; samples: shadowd report --samples {e['id']})"
        lines += ["", _cut(e["endpoint"], max(MIN_NAME_WIDTH, width - len(about))) + about]
        frows = [["  field", "kinds", "divergent", "noise", "decision"]]
        for f in fields[:max_fields]:
            kinds = ",".join(f"{k}:{n}" for k, n in sorted(f["kinds"].items()))
            frows.append(
                [
                    f"  {f['path']}",
                    kinds or "-",
                    f"{f['divergent']} ({_pct(f['divergent_ratio'])})",
                    _pct(f["noise_ratio"]),
                    f["decision"],
                ]
            )
        lines += _columns(frows, right={2, 3}, width=width)
        if len(fields) > max_fields:
            lines.append(f"  ... {len(fields) - max_fields} more fields (--json for all)")
    return "\n".join(lines)


def _usage_lines(report: dict[str, Any], width: int) -> list[str]:
    """DB calls per request and cache hit ratio per target, for the endpoints whose services
    report them (the companion middleware); nothing when none does."""
    rows = [["endpoint", "db calls p/s/c", "db ms p/c", "cache hit p/s/c"]]
    for e in report["endpoints"]:
        usage = e.get("usage") or {}
        if not usage:
            continue

        def each(key: str, fmt: str, targets: tuple[str, ...], usage=usage) -> str:
            values = [usage.get(t, {}).get(key) for t in targets if t in usage or t != "secondary"]
            return "/".join("-" if v is None else format(v, fmt) for v in values)

        rows.append(
            [
                e["endpoint"],
                each("db_calls_per_request", ".3g", ("primary", "secondary", "candidate")),
                each("db_ms_per_request", ".1f", ("primary", "candidate")),
                each("cache_hit_ratio", ".0%", ("primary", "secondary", "candidate")),
            ]
        )
    if len(rows) == 1:
        return []
    return ["", *_columns(rows, right={1, 2, 3}, width=width)]


def _answers(answers: dict[str, Any]) -> str:
    parts = []
    for target, a in answers.items():
        outcome = a["error"] or str(a["status"])
        parts.append(f"{target} {outcome} {a['latency_ms']:.1f}ms {a['body_bytes']}B")
    return " | ".join(parts)


def render_samples(samples: dict[str, Any]) -> str:
    """What ``shadowd report --samples ID`` prints: each recent divergent exchange, its
    answers, and its differences with the primary's, candidate's and secondary's values."""
    lines = [f"{samples['endpoint']}: {len(samples['samples'])} recent divergent exchanges"]
    for sample in samples["samples"]:
        request = sample["request"]
        lines.append(f"\n#{sample['exchange']} {request['method']} {request['target']}")
        if sample.get("answers"):
            lines.append(f"  {_answers(sample['answers'])}")
        for d in sample["differences"]:
            extra = f" secondary={d['secondary']!r}" if "secondary" in d else ""
            lines.append(
                f"  {d['path']}  {d['kind']}: primary={d['primary']!r} "
                f"candidate={d['candidate']!r}{extra}"
            )
        if sample.get("overflow"):
            lines.append(f"  ... {sample['overflow']} more differences")
    return "\n".join(lines)

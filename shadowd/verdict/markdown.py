"""The promotion report in Markdown: what a release note or a pull request comment carries."""

from __future__ import annotations

import time
from typing import Any

import orjson

_ICON = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}


def _utc(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def render_markdown(
    verdict: dict[str, Any],
    report: dict[str, Any],
    samples: dict[str, dict[str, Any]] | None = None,
) -> str:
    """``verdict``: the /api/v1/verdict JSON; ``report``: /api/v1/report; ``samples``: the
    /api/v1/endpoints/{id}/samples answers of the endpoints worth showing, by endpoint id."""
    samples = samples or {}
    window = report.get("window", {})
    since = window.get("since")
    lines = [
        f"# Promotion report: {_ICON.get(verdict['verdict'], verdict['verdict'])}",
        "",
        f"- **Verdict**: {verdict['verdict']}",
        f"- **Judged at**: {_utc(verdict['judged_at'])}",
        f"- **Window**: since {_utc(since) if since else '-'} ({window.get('seconds', 0):.0f} s)",
        f"- **Exchanges**: {verdict['exchanges']}",
        f"- **Config digest**: `{verdict.get('config_digest') or '-'}`",
        f"- **Owner**: {verdict.get('owner') or '-'}",
        f"- **Expected result**: {verdict.get('expected_result') or '-'}",
        f"- **Rollback**: {verdict.get('rollback') or '-'}",
        "",
        "## Reasons",
        "",
    ]
    lines += [f"- {reason}" for reason in verdict["reasons"]] or ["- none"]
    lines += ["", "## Endpoints", ""]
    rows = []
    for ep in report.get("endpoints", []):
        lat = ep.get("latency", {})
        rows.append(
            [
                f"`{ep['endpoint']}`",
                str(ep["exchanges"]),
                _pct(ep.get("divergent_ratio")),
                _pct(ep.get("noise_ratio")),
                _ms(lat.get("primary", {}).get("p50")),
                _ms(lat.get("candidate", {}).get("p50")),
                _ms(lat.get("primary", {}).get("p99")),
                _ms(lat.get("candidate", {}).get("p99")),
            ]
        )
    lines += _table(
        [
            "endpoint",
            "exchanges",
            "divergent",
            "noise",
            "p50 primary ms",
            "p50 candidate ms",
            "p99 primary ms",
            "p99 candidate ms",
        ],
        rows,
    )
    lines += ["", "## Top divergent fields", ""]
    fields = [
        (ep, fld)
        for ep in report.get("endpoints", [])
        for fld in ep.get("fields", [])
        if fld.get("divergent")
    ]
    fields.sort(key=lambda pair: pair[1].get("divergent_ratio", 0), reverse=True)
    if not fields:
        lines.append("None.")
    for ep, fld in fields[:10]:
        kinds = ", ".join(f"{k} {n}" for k, n in fld.get("kinds", {}).items())
        lines.append(
            f"- `{ep['endpoint']}` `{fld['path']}`: {kinds}; divergent "
            f"{_pct(fld.get('divergent_ratio'))}, noise {_pct(fld.get('noise_ratio'))}"
        )
        sample = _sample_for(samples.get(ep.get("id", "")), fld["path"])
        if sample is not None:
            lines += ["", "  ```json", f"  {orjson.dumps(sample).decode()}", "  ```", ""]
    lines += ["", "## Latency and errors", ""]
    crit_rows = [
        [
            c["name"],
            c["scope"],
            c["status"],
            "-" if c["measured"] is None else f"{c['measured']:.4g}",
            "-" if c["threshold"] is None else f"{c['threshold']:.4g}",
            c["reason"],
        ]
        for c in verdict["criteria"]
        if c["name"] in ("errors", "latency_p50", "latency_p99")
    ]
    lines += (
        _table(["criterion", "scope", "status", "measured", "threshold", "evidence"], crit_rows)
        if crit_rows
        else ["No latency or error evidence yet."]
    )
    lines += ["", "## DB calls and cache", ""]
    lines += _usage_table(report)
    usage_rows = [
        [c["name"], c["scope"], c["status"], c["reason"]]
        for c in verdict["criteria"]
        if c["name"] in ("db_calls", "cache_hit_ratio")
    ]
    if usage_rows:
        lines += ["", *_table(["criterion", "scope", "status", "evidence"], usage_rows)]
    lines += ["", "## All criteria", ""]
    lines += _table(
        ["criterion", "scope", "status", "reason"],
        [[c["name"], c["scope"], c["status"], c["reason"]] for c in verdict["criteria"]],
    )
    lines += ["", "## Thresholds", ""]
    lines += _table(
        ["threshold", "value"], [[k, str(v)] for k, v in verdict.get("thresholds", {}).items()]
    )
    return "\n".join(lines) + "\n"


def _per_target(usage: dict[str, Any], key: str, fmt: str) -> str:
    values = []
    for target in ("primary", "secondary", "candidate"):
        value = usage.get(target, {}).get(key)
        if target in usage or target != "secondary":
            values.append("-" if value is None else format(value, fmt))
    return " / ".join(values)


def _usage_table(report: dict[str, Any]) -> list[str]:
    """Per endpoint, the work behind the answers as the services' companion middleware
    reported it (``docs/middleware.md``): primary / secondary / candidate."""
    rows = []
    for ep in report.get("endpoints", []):
        usage = ep.get("usage") or {}
        if not usage:
            continue
        rows.append(
            [
                f"`{ep['endpoint']}`",
                _per_target(usage, "db_calls_per_request", ".3g"),
                _per_target(usage, "db_ms_per_request", ".2f"),
                _per_target(usage, "cache_hit_ratio", ".1%"),
            ]
        )
    if not rows:
        return ["No service reported DB calls or cache lookups (see docs/middleware.md)."]
    header = ["endpoint", "DB calls / request", "DB ms / request", "cache hit ratio"]
    return [
        "Primary / secondary / candidate, averaged over every answer (warm-up included).",
        "",
        *_table(header, rows),
    ]


def _sample_for(samples: dict[str, Any] | None, generic_path: str) -> dict[str, Any] | None:
    """One recent difference at ``generic_path`` from an endpoint's samples, if any."""
    if not samples:
        return None
    for sample in samples.get("samples", []):
        for difference in sample.get("differences", []):
            if difference.get("generic_path", difference.get("path")) == generic_path:
                return {"request": sample.get("request", {}).get("target"), **difference}
    return None

"""``Server-Timing`` (W3C): the signals an API team watches besides the body.

``Server-Timing: db;dur=53.2;desc="primary", cache;desc=HIT, sql-count;dur=7`` is parsed
into named metrics. Their *presence* and ``desc`` are compared like header values (a cache
that says MISS where it said HIT is a difference); their ``dur`` values always vary, so they
are not diffed but averaged per endpoint and target in the report.
"""

from __future__ import annotations

import re

from shadowd.diff.json_diff import DiffCollector
from shadowd.diff.model import DiffKind
from shadowd.exchange import Answer, Headers

_PARAM = re.compile(r'\s*;\s*([A-Za-z0-9_\-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;,]*))?')


_SERVER_TIMING = b"server-timing"
_SERVER_TIMING_LEN = len(_SERVER_TIMING)


def has_server_timing(headers: Headers) -> bool:
    """Whether any of the headers is a ``Server-Timing`` (checked for every answer the
    analysis reads: only names of its length are lower-cased)."""
    for name, _ in headers:
        if len(name) == _SERVER_TIMING_LEN and name.lower() == _SERVER_TIMING:
            return True
    return False


def parse_server_timing(headers: Headers) -> dict[str, dict[str, str | float]]:
    """Metric name -> {"dur": float, "desc": str} (either may be absent)."""
    metrics: dict[str, dict[str, str | float]] = {}
    for name, value in headers:
        if len(name) != _SERVER_TIMING_LEN or name.lower() != _SERVER_TIMING:
            continue
        for entry in value.decode("latin-1").split(","):
            entry = entry.strip()
            if not entry:
                continue
            metric, _, params = entry.partition(";")
            fields: dict[str, str | float] = {}
            for m in _PARAM.finditer(";" + params):
                key, raw = m.group(1).lower(), (m.group(2) or "").strip()
                if raw.startswith('"'):
                    raw = raw[1:-1]
                if key == "dur":
                    try:
                        fields["dur"] = float(raw)
                    except ValueError:
                        continue
                elif key == "desc":
                    fields["desc"] = raw
            metrics[metric.strip().lower()] = fields
    return metrics


Metrics = dict[str, dict[str, str | float]]


def timing_of(answer: Answer) -> Metrics:
    """``parse_server_timing(answer.headers)``, parsed at most once per answer (kept in
    ``Answer.parsed_timing``). Every reader of it only reads it: it is shared."""
    timing = answer.parsed_timing
    if timing is None:
        headers = answer.headers
        timing = parse_server_timing(headers) if has_server_timing(headers) else {}
        answer.parsed_timing = timing
    return timing


def diff_server_timing(ref: Metrics, oth: Metrics, out: DiffCollector) -> None:
    """Differences between two answers' parsed metrics (``parse_server_timing``)."""
    if not ref and not oth:
        return
    for name, fields in ref.items():
        path = f"server-timing.{name}"
        if name not in oth:
            out.add(DiffKind.HEADER_MISSING, path, path, fields.get("desc", name), None)
        elif fields.get("desc") != oth[name].get("desc"):
            out.add(
                DiffKind.HEADER,
                path + ".desc",
                path + ".desc",
                fields.get("desc"),
                oth[name].get("desc"),
            )
    for name, fields in oth.items():
        if name not in ref:
            path = f"server-timing.{name}"
            out.add(DiffKind.HEADER_EXTRA, path, path, None, fields.get("desc", name))

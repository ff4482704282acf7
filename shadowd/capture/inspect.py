"""``shadowd inspect``: what a capture holds, as a summary or as JSON lines."""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from shadowd.capture.format import MAGIC, VERSION
from shadowd.capture.gor import read_gor
from shadowd.capture.reader import CaptureReader, CaptureStats
from shadowd.exchange import Exchange
from shadowd.redact import MARKER


def is_gor(path: Path) -> bool:
    name = path.name
    return name.endswith(".gor") or name.endswith(".gor.gz")


def open_exchanges(path: str | Path) -> tuple[Iterator[Exchange], CaptureStats]:
    """Exchanges of a shadowd capture or a GoReplay file, and the reader's damage counts."""
    path = Path(path)
    if is_gor(path):
        stats = CaptureStats()
        return read_gor(path, stats), stats
    reader = CaptureReader(path)
    return reader.exchanges(), reader.stats


def _sizes(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    array = np.array(values)
    return {
        "min": int(array.min()),
        "p50": int(np.percentile(array, 50)),
        "p90": int(np.percentile(array, 90)),
        "max": int(array.max()),
    }


def inspect_capture(path: str | Path) -> dict[str, Any]:
    exchanges, stats = open_exchanges(path)
    endpoints: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    statuses: dict[str, Counter[str]] = {}
    request_sizes: list[int] = []
    answer_sizes: list[int] = []
    redacted: Counter[str] = Counter()
    first = last = None
    count = 0
    for exchange in exchanges:
        count += 1
        request = exchange.request
        at = request.received_at
        first = at if first is None else min(first, at)
        last = at if last is None else max(last, at)
        endpoints[exchange.endpoint or f"{request.method} {request.path}"] += 1
        methods[request.method] += 1
        request_sizes.append(len(request.body))
        if MARKER[:-1].encode() in request.target.encode() or "%5Bredacted" in request.target:
            redacted["query"] += 1
        for name, value in request.headers:
            if value.startswith(b"[redacted"):
                redacted[f"header:{name.decode('latin-1').lower()}"] += 1
        for target, answer in exchange.answers.items():
            key = answer.error or f"{answer.status // 100}xx"
            statuses.setdefault(target, Counter())[key] += 1
            if target == "primary":
                answer_sizes.append(answer.body_size or len(answer.body))
    return {
        "file": str(path),
        "header": stats.header,
        "records": count,
        "damaged": {
            "corrupt": stats.corrupt,
            "corrupt_bytes": stats.corrupt_bytes,
            "torn_tail": stats.torn_tail,
            "header_damaged": stats.header_damaged,
        },
        "time_span": {
            "first": first,
            "last": last,
            "seconds": (last - first) if first is not None and last is not None else 0.0,
        },
        "endpoints": dict(endpoints.most_common()),
        "methods": dict(methods.most_common()),
        "statuses": {t: dict(c) for t, c in statuses.items()},
        "request_body_bytes": _sizes(request_sizes),
        "primary_body_bytes": _sizes(answer_sizes),
        "redacted": dict(redacted.most_common()),
    }


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def render_inspect(summary: dict[str, Any]) -> str:
    damaged = summary["damaged"]
    span = summary["time_span"]
    header = summary["header"]
    lines = [
        f"{summary['file']}: {summary['records']} records"
        + (
            f", GoReplay file, {header.get('version')}"
            if header.get("format") == "goreplay"
            else f", format v{header.get('v')} by {header.get('creator')}"
            if header
            else ""
        ),
        f"  time span: {_when(span['first'])} .. {_when(span['last'])} ({span['seconds']:.1f} s)",
        f"  damaged: {damaged['corrupt']} corrupt records ({damaged['corrupt_bytes']} bytes), "
        f"torn tail: {'yes' if damaged['torn_tail'] else 'no'}"
        + (
            f", header damaged (read as format v{VERSION})" if damaged.get("header_damaged") else ""
        ),
        f"  methods: {', '.join(f'{m} {n}' for m, n in summary['methods'].items()) or '-'}",
        f"  request body bytes: {summary['request_body_bytes'] or '-'}",
        f"  primary body bytes: {summary['primary_body_bytes'] or '-'}",
        f"  redacted: {', '.join(f'{k} {n}' for k, n in summary['redacted'].items()) or 'none'}",
        "  statuses: " + "; ".join(f"{t} {dict(c)}" for t, c in summary["statuses"].items()),
        "  endpoints:",
    ]
    lines += [f"    {n:>8}  {ep}" for ep, n in list(summary["endpoints"].items())[:50]]
    if len(summary["endpoints"]) > 50:
        lines.append(f"    ... {len(summary['endpoints']) - 50} more")
    return "\n".join(lines)


def _text(data: bytes) -> Any:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _headers(headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]


def iter_records_json(path: str | Path) -> Iterator[str]:
    """One JSON object per record: bodies as UTF-8 text, or {"base64": ...} when binary."""
    exchanges, _ = open_exchanges(path)
    for exchange in exchanges:
        request = exchange.request
        yield orjson.dumps(
            {
                "id": exchange.id,
                "endpoint": exchange.endpoint,
                "request": {
                    "method": request.method,
                    "target": request.target,
                    "headers": _headers(request.headers),
                    "body": _text(request.body),
                    "received_at": request.received_at,
                    "client": request.client,
                },
                "answers": {
                    name: {
                        "status": a.status,
                        "headers": _headers(a.headers),
                        "body": _text(a.body),
                        "body_size": a.body_size,
                        "body_digest": a.body_digest,
                        "latency": a.latency,
                        "error": a.error,
                    }
                    for name, a in exchange.answers.items()
                },
            }
        ).decode()


__all__ = ["MAGIC", "inspect_capture", "iter_records_json", "open_exchanges", "render_inspect"]

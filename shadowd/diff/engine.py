"""The diff engine's entry points: one pair of answers, or a whole exchange (pure)."""

from __future__ import annotations

from shadowd.config import DiffConfig
from shadowd.diff.body import diff_bodies
from shadowd.diff.headers import diff_headers
from shadowd.diff.json_diff import DiffCollector
from shadowd.diff.model import Difference, DiffKind, ExchangeDiff
from shadowd.exchange import Answer, Exchange

MAX_DIFFERENCES = 100  # per pair; the rest are counted, not listed

_IGNORED_CACHE: dict[frozenset[str], frozenset[bytes]] = {}


def _ignored(config: DiffConfig) -> frozenset[bytes]:
    names = config.ignore_headers
    cached = _IGNORED_CACHE.get(names)
    if cached is None:
        cached = _IGNORED_CACHE[names] = frozenset(n.lower().encode("latin-1") for n in names)
    return cached


def compare_answers(
    reference: Answer, other: Answer, config: DiffConfig
) -> tuple[list[Difference], int]:
    """Differences of ``other`` from ``reference`` (capped), and how many were not listed."""
    out = DiffCollector(MAX_DIFFERENCES)
    if reference.error is not None or other.error is not None:
        if reference.error != other.error:
            out.add(
                DiffKind.ERROR,
                "error",
                "error",
                reference.error or reference.status,
                other.error or other.status,
            )
        return out.differences, out.overflow
    if reference.status != other.status:
        out.add(DiffKind.STATUS, "status", "status", reference.status, other.status)
    if config.compare_headers:
        diff_headers(reference.headers, other.headers, _ignored(config), out)
    diff_bodies(reference, other, out)
    return out.differences, out.overflow


def diff_exchange(exchange: Exchange, config: DiffConfig) -> ExchangeDiff:
    primary = exchange.primary
    candidate = exchange.candidate
    if primary is None or candidate is None:
        return ExchangeDiff(candidate=[])
    differences, overflow = compare_answers(primary, candidate, config)
    secondary = exchange.secondary
    noise = None
    if secondary is not None:
        noise, _ = compare_answers(primary, secondary, config)
    return ExchangeDiff(candidate=differences, secondary=noise, overflow=overflow)

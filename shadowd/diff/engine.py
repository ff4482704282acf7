"""The diff engine's entry points: one pair of answers, or a whole exchange (pure)."""

from __future__ import annotations

from shadowd.config import DiffConfig
from shadowd.diff.body import diff_prepared_bodies
from shadowd.diff.headers import diff_headers
from shadowd.diff.json_diff import DiffCollector
from shadowd.diff.model import Difference, DiffKind, ExchangeDiff
from shadowd.diff.order import reordered_paths
from shadowd.diff.prepared import TAIL_KEPT_BYTES, PreparedAnswer, shared_tail
from shadowd.diff.rules import EMPTY, RuleSet, rules_for
from shadowd.diff.timing import diff_server_timing
from shadowd.exchange import CANDIDATE, PRIMARY, SECONDARY, Answer, Exchange
from shadowd.upstream.request import HOP_BY_HOP

MAX_DIFFERENCES = 100  # per pair; the rest are counted, not listed

_SKIPPED_CACHE: dict[frozenset[str], frozenset[bytes]] = {}


def _skipped(config: DiffConfig) -> frozenset[bytes]:
    """Header names never compared: ``ignore_headers`` and hop-by-hop ones (lower case)."""
    names = config.ignore_headers
    cached = _SKIPPED_CACHE.get(names)
    if cached is None:
        cached = frozenset(n.lower().encode("latin-1") for n in names) | HOP_BY_HOP
        _SKIPPED_CACHE[names] = cached
    return cached


def compare_answers(
    reference: Answer,
    other: Answer,
    config: DiffConfig,
    rules: RuleSet = EMPTY,
    absorbed: dict[str, int] | None = None,
) -> tuple[list[Difference], int]:
    """Differences of ``other`` from ``reference`` (capped), and how many were not listed.
    ``rules`` (see ``shadowd.diff.rules``) absorb differences, counted in ``absorbed``; what
    they absorb is neither listed nor counted as unlisted (it never reaches the cap)."""
    skipped = _skipped(config)
    return _compare(
        PreparedAnswer(reference, rules, skipped, config.max_body_bytes),
        PreparedAnswer(other, rules, skipped, config.max_body_bytes),
        config,
        rules,
        absorbed,
    )


def _compare(
    ref: PreparedAnswer,
    oth: PreparedAnswer,
    config: DiffConfig,
    rules: RuleSet,
    absorbed: dict[str, int] | None,
) -> tuple[list[Difference], int]:
    reference, other = ref.answer, oth.answer
    if reference.error is not None or other.error is not None:
        if reference.error != other.error:  # no rule absorbs a missing answer
            return [
                Difference(
                    "error",
                    "error",
                    DiffKind.ERROR,
                    reference.error or reference.status,
                    other.error or other.status,
                )
            ], 0
        return [], 0
    out = DiffCollector(MAX_DIFFERENCES, rules, absorbed)
    if reference.status != other.status:
        out.add(DiffKind.STATUS, "status", "status", reference.status, other.status)
    # Both header comparisons derive from the header list alone: equal lists, nothing to do.
    if config.compare_headers:
        if reference.headers != other.headers:
            diff_headers(ref.named_headers(), oth.named_headers(), out)
            diff_server_timing(ref.server_timing(), oth.server_timing(), out)
        else:
            oth.read_as(ref)
    diff_prepared_bodies(ref, oth, out)
    return out.differences, out.overflow


def diff_exchange(exchange: Exchange, config: DiffConfig) -> ExchangeDiff:
    answers = exchange.answers
    primary = answers.get(PRIMARY)
    candidate = answers.get(CANDIDATE)
    if primary is None or candidate is None:
        return ExchangeDiff(candidate=[])
    rules = rules_for(config.rules, exchange.endpoint) if config.rules else EMPTY
    absorbed: dict[str, int] = {}
    # The primary is compared twice: what it derives (decoded body, parsed document...) is
    # derived once, in this PreparedAnswer.
    skipped = _SKIPPED_CACHE.get(config.ignore_headers) or _skipped(config)
    limit = config.max_body_bytes
    # The end the endpoint's answers share, parsed once (see SharedTail).
    tail = shared_tail(exchange.endpoint)
    reference = PreparedAnswer(primary, rules, skipped, limit, tail)
    other = PreparedAnswer(candidate, rules, skipped, limit, tail)
    differences, overflow = _compare(reference, other, config, rules, absorbed)
    secondary = answers.get(SECONDARY)
    noise = None
    reordered: frozenset[str] = frozenset()
    if secondary is not None:
        noise, _ = _compare(
            reference, PreparedAnswer(secondary, rules, skipped, limit, tail), config, rules, None
        )
    elif differences and any(d.path.startswith("$") and "[" in d.path for d in differences):
        # No noise measured for this exchange: say which differences only reorder a set.
        reordered = reordered_paths(differences, reference.document(), other.document(reference))
    if tail.size > TAIL_KEPT_BYTES:
        tail.forget()  # bounded memory: a long tail served this exchange only
    # positional (candidate, secondary, overflow, absorbed, reordered): cheaper than keywords
    return ExchangeDiff(differences, noise, overflow, absorbed, reordered)

"""Telling a real divergence from noise, per field and kind, from counts alone (pure).

With a secondary (a second instance of the primary's release), every field path has, per
*kind* of difference (``changed``, ``missing``, ``header_missing``...), two counts: in how
many exchanges the candidate differs from the primary there in that way, and in how many
the secondary does. A difference the primary's own release also produces, *of the same
kind*, is noise: a candidate that drops a header (``header_missing``) is not excused by a
secondary whose value of that header differs (``header``).

A (path, kind) is a divergence only when the candidate's count

1. beats the noise count by a relative margin *and* an absolute one (Diffy's rule; its
   defaults: 20 % and 0.03 % of the endpoint's exchanges), and
2. does so significantly: a one-sided exact conditional test (Fisher's, with the null
   "the candidate's odds of differing are at most (1 + r)/(1 - r) times the secondary's",
   r the relative margin: the hypothesis the margin states; r = 0 is Fisher's exact test)
   gives a p-value, and Benjamini-Hochberg across *every* (endpoint, path, kind) the
   candidate differs at keeps the false-discovery rate at ``[verdict] significance``.

A field's decision is that of its worst kind; its rate beyond noise is the count of its
worst divergent kind. Counts are never discounted: the decision is made when the report is
read (``decide_fields`` over the whole report).

Without a secondary there is no measured noise and no test is possible: every difference
counts, except that a field whose differences nearly all look like noise (``likely_noise``
below: ids, tokens, clocks, durations, float jitter, a set-like array in another order) is
flagged ``likely_noise`` with that evidence, shown in the report, not counted as a
divergence. The primary-twice probe (``[noise] primary_probe``) measures noise instead.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shadowd.diff.model import Difference, DiffKind

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
    r"[0-9a-fA-F]{12}$"
)
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")
_HTTP_DATE = re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$")
_TOKEN = re.compile(r"^[A-Za-z0-9+/_=\-]{20,}$")
# Shorter ids: 12+ hex digits with a digit and a letter (a 16-hex span id), or a base62 id
# (``_looks_random``). A product code (``SKU-12``, ``ABC123``) is neither.
_HEX_ID = re.compile(r"^(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{12,}$")
_ALPHANUMERIC = re.compile(r"^[A-Za-z0-9]{12,}$")
# Field names that say "how long this answer took": a duration differs on every answer.
_DURATION_NAME = re.compile(
    r"(took|elapsed|uptime|duration|latency|runtime|time_taken|response_time|processing_time)"
    r"|(^|_)(ms|us|ns|s|sec|secs|seconds|millis|micros)$"
    r"|^text:line:.*<n> ?(ms|µs|us|ns|s|sec|secs|seconds)\b",
    re.IGNORECASE,
)
_FIVE_YEARS = 5 * 365 * 86400
_FLOAT_JITTER = 1e-9  # relative: last-digit noise of a float summed in another order


def looks_volatile(value: Any) -> bool:
    """Values that differ on every answer of any release: ids, tokens, clocks near now."""
    # The exact types a parsed document holds are told apart first: the isinstance checks
    # below (bool before int, a union) cost more, and this runs for every divergent field.
    kind = type(value)
    if kind is str:
        return _volatile_text(value)
    if kind is float or kind is int:
        now = time.time()
        return abs(value - now) < _FIVE_YEARS or abs(value / 1000 - now) < _FIVE_YEARS
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        now = time.time()
        return abs(value - now) < _FIVE_YEARS or abs(value / 1000 - now) < _FIVE_YEARS
    if isinstance(value, str):
        return _volatile_text(value)
    return False


def _volatile_text(value: str) -> bool:
    # Every pattern below needs 12 characters at least (a hex or base62 id; a timestamp 16,
    # a token 20, a UUID 32): shorter values (statuses, names, small numbers) are not
    # volatile, without running them.
    if len(value) < 12:
        return False
    return bool(
        _UUID.match(value)
        or _TIMESTAMP.match(value)
        or _HTTP_DATE.match(value)
        or (_TOKEN.match(value) and any(c.isdigit() for c in value))
        or _HEX_ID.match(value)
        or _looks_random(value)
    )


def _looks_random(value: str) -> bool:
    """12+ letters and digits that switch between lower case, upper case and digits at least
    every third character: random base62 (``k3J9xQ2mP7vR``, ~60 % switches), not words,
    codes or CamelCase (``SKU123456789``: 1 switch; ``PaymentMethod``: 2)."""
    if not _ALPHANUMERIC.match(value):
        return False
    classes = ["d" if c.isdigit() else "u" if c.isupper() else "l" for c in value]
    switches = sum(a != b for a, b in itertools.pairwise(classes))
    return switches * 3 >= len(value)


def _last_name(path: str) -> str:
    last = path.rsplit(".", 1)[-1]
    if last.endswith('"]'):  # $["took ms"]
        last = last[last.rfind('["') + 2 : -2]
    return last


def likely_noise(difference: Difference, reordered: frozenset[str] = frozenset()) -> bool:
    """Whether a difference looks like one any release makes on every answer (used only
    without measured noise): both values volatile (``looks_volatile``); a number in a field
    named as a duration (``took_ms``, ``uptime_s``, ``elapsed``); two floats within 1e-9 of
    each other, relatively; or an element of an array that holds the same elements in
    another order (``reordered``: the exact paths the diff found so, ``ExchangeDiff``)."""
    a, b = difference.reference, difference.other
    if difference.path in reordered:
        return True
    if looks_volatile(a) and looks_volatile(b):
        return True
    if difference.kind is not DiffKind.CHANGED:
        return False
    numbers = (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    )
    if not numbers:
        return False
    if _DURATION_NAME.search(_last_name(difference.generic_path)):
        return True
    return (isinstance(a, float) or isinstance(b, float)) and math.isclose(
        a, b, rel_tol=_FLOAT_JITTER
    )


DIVERGENT = "divergent"
NOISE = "noise"
WITHIN_NOISE = "within_noise"
LIKELY_NOISE = "likely_noise"  # no secondary, but the values look like ids or clocks

DEFAULT_RELATIVE = 0.20
DEFAULT_ABSOLUTE = 0.0003
DEFAULT_SIGNIFICANCE = 0.05
_RANK = {DIVERGENT: 3, LIKELY_NOISE: 2, WITHIN_NOISE: 1, NOISE: 0}


@dataclass(frozen=True, slots=True)
class FieldDecision:
    decision: str  # DIVERGENT, NOISE (the secondary differs as often), WITHIN_NOISE (too small)
    why: str
    kind: str | None = None  # the kind that decided
    count: int = 0  # exchanges of that kind: with DIVERGENT, the field's count beyond noise
    p_value: float | None = None  # the exact test of that kind (None: no test made)
    q_value: float | None = None  # its Benjamini-Hochberg adjusted p-value


@dataclass(frozen=True, slots=True)
class FieldCounts:
    """The counts of one field path of one endpoint, as ``aggregate.FieldStats`` has them.
    ``noise_kinds`` None: noise was counted per path only (then it stands for every kind)."""

    exchanges: int
    divergent: int
    noise: int
    kinds: Mapping[str, int]
    noise_kinds: Mapping[str, int] | None = None
    volatile: int = 0
    # Exchanges the noise was counted over, when fewer than ``exchanges`` (the primary-twice
    # probe answers a share of them); None: the same exchanges.
    noise_exchanges: int | None = None


def margin_odds(relative: float) -> float:
    """The odds ratio Diffy's relative margin stands for: (c - s)/(c + s) > r <=> c/s > this."""
    return (1 + relative) / (1 - relative) if relative < 1 else float("inf")


def _shown_count(count: float) -> str:
    """A count as reasons say it: an integer, or a scaled probe count with one decimal."""
    return str(int(count)) if float(count).is_integer() else f"{count:.1f}"


def _margins(
    divergent: int, noise: float, exchanges: int, relative: float, absolute: float
) -> FieldDecision | None:
    """The margin part of the rule: a NOISE / WITHIN_NOISE decision, or None if it passes.
    ``noise`` is out of the same ``exchanges`` (a probe's count is scaled to them)."""
    if divergent <= noise:
        return FieldDecision(
            NOISE,
            f"the secondary differs as often ({_shown_count(noise)} vs {divergent} of {exchanges})",
        )
    gap = divergent - noise
    rel = gap / (divergent + noise)
    if rel <= relative:
        return FieldDecision(
            NOISE,
            f"candidate {divergent} vs secondary {_shown_count(noise)}: {rel:.0%} apart, "
            f"not more than the {relative:.0%} relative margin",
        )
    if gap / exchanges <= absolute:
        return FieldDecision(
            WITHIN_NOISE,
            f"{_shown_count(gap)} more differences than noise in {exchanges} exchanges, "
            f"not more than the {absolute:.2%} absolute margin",
        )
    return None


def _no_secondary(divergent: int, volatile: int) -> FieldDecision:
    if volatile >= 0.9 * divergent:
        return FieldDecision(
            LIKELY_NOISE,
            f"no secondary, but both values look like ids, tokens or clocks in "
            f"{volatile} of {divergent} differences (configure a secondary or "
            f"[noise] primary_probe to measure it)",
            count=divergent,
        )
    return FieldDecision(DIVERGENT, "no secondary to measure noise against", count=divergent)


def decide_field(
    divergent: int,
    noise: int,
    exchanges: int,
    *,
    has_secondary: bool,
    relative: float = DEFAULT_RELATIVE,
    absolute: float = DEFAULT_ABSOLUTE,
    volatile: int = 0,
    significance: float = DEFAULT_SIGNIFICANCE,
) -> FieldDecision:
    """Decide one field of one endpoint from its path-level counts, alone in its family of
    tests (no correction across fields). ``decide_fields`` decides a whole report."""
    counts = FieldCounts(exchanges, divergent, noise, {"changed": divergent} if divergent else {})
    return decide_fields(
        [counts],
        has_secondary=has_secondary,
        relative=relative,
        absolute=absolute,
        significance=significance,
        volatile=[volatile],
    )[0]


def decide_fields(
    fields: Sequence[FieldCounts],
    *,
    has_secondary: bool,
    relative: float = DEFAULT_RELATIVE,
    absolute: float = DEFAULT_ABSOLUTE,
    significance: float = DEFAULT_SIGNIFICANCE,
    volatile: Sequence[int] | None = None,
) -> list[FieldDecision]:
    """Decide every field of a report at once (see the module docstring): the false-discovery
    rate is controlled across all of them."""
    from shadowd.verdict.stats import bh_adjusted, fisher_margin_greater

    decisions: list[FieldDecision | None] = [None] * len(fields)
    # cells: (field index, kind, candidate count, noise count, margin decision or None)
    cells: list[tuple[int, str, int, int, FieldDecision | None]] = []
    noise_sizes: list[int] = []  # per cell: the exchanges its noise count is out of
    for i, fld in enumerate(fields):
        vol = fld.volatile if volatile is None else volatile[i]
        if fld.exchanges <= 0 or fld.divergent <= 0:
            decisions[i] = FieldDecision(WITHIN_NOISE, "the candidate never differs here")
            continue
        if not has_secondary:
            kind = max(fld.kinds, key=fld.kinds.__getitem__) if fld.kinds else None
            decision = _no_secondary(fld.divergent, vol)
            decisions[i] = FieldDecision(decision.decision, decision.why, kind, fld.divergent)
            continue
        kinds = fld.kinds or {"changed": fld.divergent}
        for kind, count in kinds.items():
            if count <= 0:
                continue
            noise = fld.noise if fld.noise_kinds is None else int(fld.noise_kinds.get(kind, 0))
            sampled = fld.noise_exchanges
            if sampled is not None and sampled <= 0:
                # The probe has answered none of this endpoint's exchanges yet: no noise is
                # measured, so every difference counts, as without a secondary.
                decision = _no_secondary(fld.divergent, vol)
                decisions[i] = FieldDecision(decision.decision, decision.why, kind, count)
                break
            # The margins compare rates: the noise count scaled to the candidate's exchanges.
            scaled = noise if sampled is None else noise * fld.exchanges / sampled
            cells.append(
                (
                    i,
                    kind,
                    int(count),
                    noise,
                    _margins(count, scaled, fld.exchanges, relative, absolute),
                )
            )
            noise_sizes.append(fld.exchanges if sampled is None else sampled)
    if cells:
        tested = [j for j, cell in enumerate(cells) if cell[4] is None]
        p = np.ones(len(cells))  # a cell within the margins cannot be a divergence
        if tested:
            p[tested] = fisher_margin_greater(
                np.array([cells[j][2] for j in tested]),
                np.array([cells[j][3] for j in tested]),
                np.array([fields[cells[j][0]].exchanges for j in tested]),
                margin_odds(relative),
                np.array([noise_sizes[j] for j in tested]),
            )
        q = bh_adjusted(p)
        by_field: dict[int, list[FieldDecision]] = {}
        m = len(cells)
        for j, (i, kind, count, noise, margin) in enumerate(cells):
            exchanges = fields[i].exchanges
            if margin is not None:
                decision = FieldDecision(margin.decision, margin.why, kind, count)
            elif q[j] <= significance:
                decision = FieldDecision(
                    DIVERGENT,
                    f"candidate {kind} in {count} of {exchanges}, secondary in {noise} "
                    f"(p={p[j]:.2g}, {m} tests, BH q={q[j]:.2g} <= {significance:g})",
                    kind,
                    count,
                    float(p[j]),
                    float(q[j]),
                )
            else:
                decision = FieldDecision(
                    WITHIN_NOISE,
                    f"candidate {kind} in {count} of {exchanges}, secondary in {noise}: "
                    f"not significant (p={p[j]:.2g}, {m} tests, BH q={q[j]:.2g} > "
                    f"{significance:g})",
                    kind,
                    count,
                    float(p[j]),
                    float(q[j]),
                )
            by_field.setdefault(i, []).append(decision)
        for i, options in by_field.items():
            decision = max(options, key=lambda d: (_RANK[d.decision], d.count))
            fld = fields[i]
            vol = fld.volatile if volatile is None else volatile[i]
            if (
                decision.decision == DIVERGENT
                and fld.noise_exchanges is not None
                and vol >= 0.9 * fld.divergent
            ):
                # The probe asks the same instance twice: what differs per instance (its
                # start time, clock skew, host name) it cannot show. Values that look like
                # ids, clocks or durations are then taken for that, as without a secondary.
                decision = FieldDecision(
                    LIKELY_NOISE,
                    f"the primary probe differs less ({decision.why}), but both values look "
                    f"like ids, clocks or durations in {vol} of {fld.divergent} differences: "
                    f"noise of an instance, which a second request to the same instance "
                    f"cannot show",
                    decision.kind,
                    decision.count,
                    decision.p_value,
                    decision.q_value,
                )
            decisions[i] = decision
    return [d if d is not None else FieldDecision(WITHIN_NOISE, "") for d in decisions]

"""Telling a real divergence from noise, per field, from counts alone (pure).

With a secondary (a second instance of the primary's release), every field has two rates:
how often the candidate differs from the primary there (``divergent``) and how often the
secondary does (``noise``). A difference the primary's own release also produces is noise.
The field is a divergence only when the candidate's rate beats the noise rate by a relative
margin *and* an absolute one (Diffy's rule; its defaults: 20 % and 0.03 % of the endpoint's
exchanges). Counts are never discounted: the decision is made when the report is read.

Without a secondary there is no measured noise; a field whose differing values nearly all
look volatile (UUIDs, timestamps, epoch times near now, long tokens) is flagged
``likely_noise`` with that evidence — shown in the report, not counted as a divergence.
"""

from __future__ import annotations

from dataclasses import dataclass

DIVERGENT = "divergent"
NOISE = "noise"
WITHIN_NOISE = "within_noise"
LIKELY_NOISE = "likely_noise"  # no secondary, but the values look like ids or clocks

DEFAULT_RELATIVE = 0.20
DEFAULT_ABSOLUTE = 0.0003


@dataclass(frozen=True, slots=True)
class FieldDecision:
    decision: str  # DIVERGENT, NOISE (the secondary differs as often), WITHIN_NOISE (too small)
    why: str


def decide_field(
    divergent: int,
    noise: int,
    exchanges: int,
    *,
    has_secondary: bool,
    relative: float = DEFAULT_RELATIVE,
    absolute: float = DEFAULT_ABSOLUTE,
    volatile: int = 0,
) -> FieldDecision:
    """Decide one field of one endpoint from its counts (see the module docstring)."""
    if exchanges <= 0 or divergent <= 0:
        return FieldDecision(WITHIN_NOISE, "the candidate never differs here")
    if not has_secondary:
        if volatile >= 0.9 * divergent:
            return FieldDecision(
                LIKELY_NOISE,
                f"no secondary, but both values look like ids, tokens or clocks in "
                f"{volatile} of {divergent} differences (configure a secondary to measure it)",
            )
        return FieldDecision(DIVERGENT, "no secondary to measure noise against")
    if divergent <= noise:
        return FieldDecision(
            NOISE, f"the secondary differs as often ({noise} vs {divergent} of {exchanges})"
        )
    gap = divergent - noise
    rel = gap / (divergent + noise)
    abs_ = gap / exchanges
    if rel <= relative:
        return FieldDecision(
            NOISE,
            f"candidate {divergent} vs secondary {noise}: {rel:.0%} apart, "
            f"not more than the {relative:.0%} relative margin",
        )
    if abs_ <= absolute:
        return FieldDecision(
            WITHIN_NOISE,
            f"{gap} more differences than noise in {exchanges} exchanges, "
            f"not more than the {absolute:.2%} absolute margin",
        )
    return FieldDecision(
        DIVERGENT,
        f"candidate differs in {divergent} of {exchanges}, secondary in {noise} "
        f"({rel:.0%} relative, {abs_:.2%} absolute)",
    )

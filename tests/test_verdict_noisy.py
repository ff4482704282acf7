"""The verdict on a realistic noisy service (tests/noisy_service.py): three instances in a
child process on loopback, a real shadowd in front, seeded traffic paced at a fixed rate.

The fast subset of benchmarks/verdict_campaign.py: an identical candidate passes with a
secondary and with the primary-twice probe instead, and a candidate with every planted
regression (each on its own endpoint) has each one named in the verdict's reasons, with no
noise field blamed. Bounded: ~6-10 s a run; no sleeps in the tests themselves."""

from __future__ import annotations

import pytest
from noisy_service import REGRESSIONS, judge_variant

pytestmark = pytest.mark.timeout(120)


async def test_identical_candidate_passes_with_a_secondary():
    outcome = await judge_variant("identical", baseline="secondary", seed=0)
    assert outcome.exchanges == 1500
    assert outcome.verdict == "pass", outcome.reasons
    assert outcome.false_blames() == []


async def test_identical_candidate_passes_with_the_primary_probe_and_no_secondary():
    outcome = await judge_variant("identical", baseline="probe", seed=1, probe=0.5)
    assert outcome.verdict == "pass", outcome.reasons
    assert outcome.false_blames() == []


async def test_every_planted_regression_is_named_and_no_noise_is_blamed():
    outcome = await judge_variant("all", baseline="secondary", seed=2)
    assert outcome.verdict == "fail"
    missed = [name for name, r in REGRESSIONS.items() if not outcome.named(r)]
    assert missed == [], outcome.reasons
    assert outcome.false_blames() == [], outcome.divergent_fields

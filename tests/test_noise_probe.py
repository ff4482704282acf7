"""The primary-twice probe ([noise] primary_probe): configuration, the test with a sampled
noise baseline, and the probe's copies on real loopback servers."""

from __future__ import annotations

import random
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from shadowd.config import ConfigError, load_config
from shadowd.noise import DIVERGENT, NOISE, FieldCounts, decide_fields
from shadowd.report import build_report
from shadowd.verdict.stats import fisher_margin_greater

TARGETS = """
[targets.primary]
url = "http://127.0.0.1:9001"
[targets.candidate]
url = "http://127.0.0.1:9003"
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "shadowd.toml"
    path.write_text(TARGETS + text)
    return load_config(path)


def test_the_probe_is_the_primary_again_under_the_secondary_s_name(tmp_path):
    config = load(tmp_path, "[noise]\nprimary_probe = 0.1\n")
    assert config.secondary is None
    assert config.probe is not None
    assert (config.probe.name, config.probe.url) == ("secondary", config.primary.url)
    assert [t.name for t in config.mirror_targets] == ["secondary", "candidate"]
    assert load(tmp_path, "").probe is None  # off by default


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[noise]\nprimary_probe = 1.5\n", "noise.primary_probe: must be"),
        ('[noise]\nprimary_probe = "10%"\n', "noise.primary_probe: must be a number"),
        (
            '[noise]\nprimary_probe = 0.1\n[targets.secondary]\nurl = "http://127.0.0.1:9002"\n',
            "noise.primary_probe: is for running without a secondary",
        ),
    ],
)
def test_a_bad_probe_is_refused_with_its_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, text)
    assert words in str(refused.value)


def test_the_exact_test_with_two_group_sizes_matches_scipy():
    from scipy.stats import nchypergeom_fisher

    c, s = np.array([30, 10, 150, 5]), np.array([0, 3, 0, 9])
    n, m = np.array([1000, 342, 5000, 400]), np.array([100, 40, 500, 400])
    for odds in (1.0, 1.5):
        p = fisher_margin_greater(c, s, n, odds, m)
        for i in range(len(c)):
            expected = nchypergeom_fisher.sf(c[i] - 1, n[i] + m[i], n[i], c[i] + s[i], odds)
            assert np.isclose(p[i], expected), (i, odds)


def test_noise_out_of_the_probed_exchanges_is_compared_as_a_rate():
    same_rate = FieldCounts(1000, 300, 30, {"changed": 300}, {"changed": 30}, 0, 100)
    ten_times = FieldCounts(1000, 300, 3, {"changed": 300}, {"changed": 3}, 0, 100)
    not_yet = FieldCounts(1000, 300, 0, {"changed": 300}, {}, 0, 0)
    decisions = decide_fields([same_rate, ten_times, not_yet], has_secondary=True)
    assert [d.decision for d in decisions] == [NOISE, DIVERGENT, DIVERGENT]
    assert "no secondary" in decisions[2].why  # nothing probed yet: judged as without one


def test_a_probe_field_of_per_instance_noise_is_likely_noise():
    uptime = FieldCounts(93, 93, 1, {"changed": 93}, {"changed": 1}, 93, 46)
    stock = FieldCounts(93, 93, 0, {"type": 93}, {}, 0, 46)
    decisions = decide_fields([uptime, stock], has_secondary=True)
    assert decisions[0].decision == "likely_noise"
    assert "the same instance cannot show" in decisions[0].why
    assert decisions[1].decision == DIVERGENT


async def test_the_probe_sends_its_share_to_the_primary_on_the_copy_path(
    make_backend, start_shadowd
):
    counter = iter(range(1_000_000))

    async def item(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "seq": next(counter)})

    primary, candidate = make_backend(), make_backend()
    for backend in (primary, candidate):
        backend.route("GET", "/items/{id}", item)
    shadowd = await start_shadowd(
        await primary.start(), await candidate.start(), noise={"primary_probe": 0.5}
    )
    requests = 200
    async with aiohttp.ClientSession() as session:
        for i in range(requests):
            async with session.get(f"{shadowd.url}/items/{i}") as answer:
                assert answer.status == 200
                assert (await answer.json())["id"] == str(i)  # the client's answer: the primary's
    await shadowd.settled(requests)
    # The mirror draws who is probed from its seeded generator, once per exchange sent.
    draw = random.Random(0x5EED).random
    probed = sum(draw() < 0.5 for _ in range(requests))
    assert 60 < probed < 140
    assert len(primary.seen) == requests + probed
    assert len(candidate.seen) == requests
    endpoint = build_report(shadowd.daemon.aggregator)["endpoints"][0]
    assert endpoint["noise_exchanges"] == probed
    seq = next(f for f in endpoint["fields"] if f["path"] == "$.seq")
    assert seq["noise"] == probed and seq["decision"] != DIVERGENT

"""Likely-noise heuristics without a secondary (shadowd.noise.likely_noise): each kind of
noise the issue lists, and the real changes next to it that must stay divergent."""

from __future__ import annotations

import random

import orjson
from conftest import build_config

from shadowd.aggregate import Aggregator
from shadowd.diff.engine import diff_exchange
from shadowd.diff.model import Difference, DiffKind
from shadowd.exchange import Answer, Exchange, Request
from shadowd.noise import DIVERGENT, LIKELY_NOISE, likely_noise, looks_volatile
from shadowd.report import build_report


def changed(path: str, a: object, b: object) -> Difference:
    return Difference(path, path, DiffKind.CHANGED, a, b)


def test_short_hex_and_base62_ids_look_volatile():
    assert looks_volatile("3f2a9c1b7d4e6f80")  # a 16-hex span id
    assert looks_volatile("k3J9xQ2mP7vR")  # base62, 12 characters
    assert not looks_volatile("ABC123")  # a product code
    assert not looks_volatile("deadbeef")  # 8 hex digits: too short to tell
    assert not looks_volatile("SKU-2024-XL")


def test_durations_are_known_by_their_names():
    for name in ("$.took_ms", "$.meta.uptime_s", "$.elapsed", "$.stats.duration", "$.latency_us"):
        assert likely_noise(changed(name, 12, 31)), name
    assert not likely_noise(changed("$.total_items", 12, 31))
    assert not likely_noise(changed("$.price", 12, 31))
    assert not likely_noise(Difference("$.took_ms", "$.took_ms", DiffKind.TYPE, 12, "12"))


def test_float_jitter_at_1e_12_is_noise_and_a_real_change_is_not():
    assert likely_noise(changed("$.score", 0.1 + 0.2, 0.3))
    assert likely_noise(changed("$.mean", 123.456, 123.456 * (1 + 1e-12)))
    assert not likely_noise(changed("$.mean", 123.456, 123.457))
    assert not likely_noise(changed("$.count", 3, 4))


def _no_secondary_report(pairs: list[tuple[dict, dict]]) -> dict[str, dict]:
    cfg = build_config("http://127.0.0.1:1", "http://127.0.0.1:2")
    aggregator = Aggregator(cfg)
    for i, (primary, candidate) in enumerate(pairs):
        exchange = Exchange(i, Request("GET", "/x", [], b"", 1_800_000_000.0 + i), "GET /x")
        for target, doc in (("primary", primary), ("candidate", candidate)):
            raw = orjson.dumps(doc)
            exchange.answers[target] = Answer(
                target, 200, [(b"content-type", b"application/json")], raw, len(raw)
            )
        aggregator.add(exchange, diff_exchange(exchange, cfg.diff))
    return {f["path"]: f for f in build_report(aggregator)["endpoints"][0]["fields"]}


def test_a_set_like_array_in_another_order_is_likely_noise_a_dropped_element_is_not():
    rng = random.Random(5)
    pairs = []
    for i in range(40):
        tags = ["red", "green", "blue", "cyan"]
        roles = [{"id": 1, "name": "admin"}, {"id": 2, "name": "user"}]
        primary = {
            "tags": tags,
            "roles": roles,
            "items": [1, 2, 3],
            "span": f"{rng.getrandbits(64):016x}",
        }
        candidate = {
            "tags": tags[i % 4 :] + tags[: i % 4],
            "roles": roles[::-1],
            "items": [1, 2, 3] if i % 10 else [1, 3, 2][:2],
            "span": f"{rng.getrandbits(64):016x}",
        }
        pairs.append((primary, candidate))
    fields = _no_secondary_report(pairs)
    assert fields["$.tags[*]"]["decision"] == LIKELY_NOISE
    assert fields["$.roles[*].id"]["decision"] == LIKELY_NOISE
    assert fields["$.roles[*].name"]["decision"] == LIKELY_NOISE
    assert fields["$.span"]["decision"] == LIKELY_NOISE
    assert fields["$.items"]["decision"] == DIVERGENT  # the dropped element: array_length
    assert fields["$.items"]["kinds"] == {"array_length": 4}


def test_a_reordered_array_with_a_changed_element_is_not_a_set_reordering():
    pairs = [({"tags": ["a", "b", "c"]}, {"tags": ["c", "a", "x"]}) for _ in range(20)]
    assert _no_secondary_report(pairs)["$.tags[*]"]["decision"] == DIVERGENT

"""Endpoint names: data-looking path segments collapse, templates win, the count is capped."""

from __future__ import annotations

import json
import logging

from shadowd.config import EndpointsConfig
from shadowd.endpoints import (
    LEARN_DISTINCT,
    LEARN_PREFIXES,
    OTHER,
    EndpointClassifier,
    auto_template,
)
from shadowd.logs import JsonFormatter, TextFormatter


def test_numbers_uuids_hex_and_tokens_become_placeholders():
    assert auto_template("/users/42/orders/7") == "/users/{id}/orders/{id}"
    assert auto_template("/files/3f2c9a40-8d1e-4c3b-9f7a-1b2c3d4e5f60") == "/files/{uuid}"
    assert auto_template("/blobs/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b") == "/blobs/{hex}"
    assert auto_template("/s/aB3dE5fG7hJ9kL1mN3pQ5rS7") == "/s/{token}"
    assert auto_template("/api/v2/health") == "/api/v2/health"
    assert auto_template("/reports/annual-summary-of-things") == "/reports/annual-summary-of-things"


def test_configured_templates_win_over_the_automatic_guess():
    classify = EndpointClassifier(
        EndpointsConfig(templates=("/users/{id}/orders/{order}", "GET /search/{term}"))
    ).classify
    assert classify("GET", "/users/ada/orders/A-17") == "GET /users/{id}/orders/{order}"
    assert classify("GET", "/search/red-shoes") == "GET /search/{term}"
    assert classify("POST", "/search/red-shoes") == "POST /search/red-shoes"  # method-bound


def test_distinct_endpoints_are_capped_and_the_rest_is_other():
    classifier = EndpointClassifier(EndpointsConfig(max=3))
    names = [classifier.classify("GET", f"/page-{c}") for c in "abcdef"]
    assert names == ["GET /page-a", "GET /page-b", "GET /page-c", OTHER, OTHER, OTHER]
    assert classifier.classify("GET", "/page-a") == "GET /page-a"  # known ones stay known
    assert classifier.overflowed == 3


def record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("shadowd", logging.INFO, __file__, 1, "listening", None, None)
    rec.__dict__.update(extra)
    return rec


def test_json_logs_are_one_object_per_line_with_fields():
    line = JsonFormatter().format(record(ingress="127.0.0.1:8470"))
    doc = json.loads(line)
    assert doc["msg"] == "listening" and doc["level"] == "info"
    assert doc["ingress"] == "127.0.0.1:8470"


def test_text_logs_are_readable_with_fields():
    line = TextFormatter().format(record(ingress="127.0.0.1:8470"))
    assert line.endswith("info    shadowd: listening ingress=127.0.0.1:8470")


def test_alphanumeric_ids_are_learned_from_cardinality():
    classifier = EndpointClassifier(EndpointsConfig(max=200))
    names = [classifier.classify("GET", f"/catalog/SKU{i:03d}") for i in range(60)]
    # the first LEARN_DISTINCT values are named as they come; then the position is learned
    assert names[:LEARN_DISTINCT] == [f"GET /catalog/SKU{i:03d}" for i in range(LEARN_DISTINCT)]
    assert set(names[LEARN_DISTINCT:]) == {"GET /catalog/{id}"}
    # every later request, cached raw paths too, and deeper paths under it
    assert classifier.classify("GET", "/catalog/SKU001") == "GET /catalog/{id}"
    assert classifier.classify("GET", "/catalog/SKU999/reviews") == "GET /catalog/{id}/reviews"
    assert classifier.classify("POST", "/catalog/SKU001") == "POST /catalog/SKU001"  # per method
    assert classifier.learned == ["GET /catalog/{id}"]
    classifier.reset()  # the evidence is cleared; what was learned about the API is kept
    assert classifier.classify("GET", "/catalog/SKU002") == "GET /catalog/{id}"


def test_few_static_siblings_stay_apart_and_templates_win():
    classifier = EndpointClassifier(EndpointsConfig(templates=("GET /catalog/search",), max=500))
    for kind in ("new", "popular", "sale"):
        assert classifier.classify("GET", f"/shop/{kind}") == f"GET /shop/{kind}"
    for i in range(50):
        classifier.classify("GET", f"/catalog/item-{i}x")
    assert classifier.classify("GET", "/catalog/search") == "GET /catalog/search"
    assert classifier.classify("GET", "/catalog/anything") == "GET /catalog/{id}"
    # top-level segments are resources, never learned
    assert classifier.classify("GET", "/zz-resource-77") == "GET /zz-resource-77"


def test_learning_memory_is_bounded():
    classifier = EndpointClassifier(EndpointsConfig(max=100_000))
    for i in range(LEARN_PREFIXES + 500):
        classifier.classify("GET", f"/r{i}/x/q")  # two new prefixes a path
    assert len(classifier._values) <= LEARN_PREFIXES
    assert all(v is None or len(v) <= LEARN_DISTINCT + 1 for v in classifier._values.values())

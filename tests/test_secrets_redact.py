"""The one redaction policy (``shadowd.redact``) piece by piece, and the same secrets through
real worker processes (the supervisor), where samples are built in analysis workers."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import zlib

import aiohttp
import orjson
import pytest
from test_secrets_everywhere import (
    REQUEST_SECRETS,
    _answer,
    _send_everything,
    capture_leaks,
    leaks,
)

from shadowd.aggregate import Aggregator, is_sample_secret
from shadowd.capture.format import record_of
from shadowd.capture.reader import read_capture
from shadowd.capture.redact import Redactor
from shadowd.config import CaptureConfig
from shadowd.diff.engine import diff_exchange
from shadowd.exchange import Answer, Exchange, Request
from shadowd.redact import MARKER, Redaction, Unreadable, redact_target


# -- query strings ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a?x=1;token=S&b=2", "/a?x=1;token=%5Bredacted%5D&b=2"),
        ("/a?%74oken=S", "/a?%74oken=%5Bredacted%5D"),  # a percent-encoded name
        ("/a?key=S&keyword=shoes", "/a?key=%5Bredacted%5D&keyword=shoes"),
        ("/a?signingKey=S&page=2", "/a?signingKey=%5Bredacted%5D&page=2"),
        ("/a?q=a%20b&flag&password=", "/a?q=a%20b&flag&password=%5Bredacted%5D"),
        ("/a?user=ada", "/a?user=ada"),
        ("/no-query", "/no-query"),
    ],
)
def test_query_parameters_by_name_with_both_separators(target, expected):
    assert redact_target(target) == expected


def test_configured_query_parameters_and_keyed_markers():
    policy = Redaction(query_params=["sig"], key=b"k")
    out = policy.target("/a?sig=S1&token=S1&page=2")
    first, second = out.split("&")[:2]
    assert first.split("=")[1] == second.split("=")[1]  # equal secrets, equal hashes
    assert "S1" not in out and "%5Bredacted:" in out and out.endswith("&page=2")


# -- bodies -----------------------------------------------------------------------------------
JSON = [(b"Content-Type", b"application/json")]


def test_json_members_by_name_at_any_depth_and_configured_paths():
    policy = Redaction(body_fields=["$.card.number", "$.items[*].pin"])
    body = orjson.dumps(
        {
            "user": "ada",
            "api_token": "S1",
            "nested": {"deeper": [{"password": "S2"}, {"x": 1}]},
            "card": {"number": "S3", "brand": "visa"},
            "items": [{"pin": "S4"}, {"pin": "S5"}],
            "key": "sku-1",  # "key" alone is data in JSON documents
        }
    )
    out = orjson.loads(policy.body(body, JSON))
    assert out["api_token"] == out["nested"]["deeper"][0]["password"] == MARKER
    assert out["card"] == {"number": MARKER, "brand": "visa"}
    assert [i["pin"] for i in out["items"]] == [MARKER, MARKER]
    assert out["key"] == "sku-1" and out["user"] == "ada"


def test_an_untouched_body_keeps_its_bytes():
    body = b'{ "user" : "ada" }'
    assert Redaction().body(body, JSON) is body


def test_form_bodies_and_text_bodies():
    policy = Redaction()
    form = [(b"Content-Type", b"application/x-www-form-urlencoded; charset=utf-8")]
    assert policy.body(b"user=a&password=S&x=1", form) == b"user=a&password=%5Bredacted%5D&x=1"
    text = [(b"Content-Type", b"text/plain")]
    out = policy.body(b'login password=S1 and {"token": "S 2"} ok', text)
    assert b"S1" not in out and b"S 2" not in out and out.endswith(b" ok")
    broken_json = policy.body(b'{"password": "S3", oops', JSON)
    assert b"S3" not in broken_json


def test_escaped_names_are_still_found_and_binary_bodies_are_left_alone():
    escaped = b'{"\\u0070assword": "S1", "x": 1}'
    assert orjson.loads(Redaction().body(escaped, JSON))["password"] == MARKER
    png = b"\x89PNG password=S2"
    assert Redaction().body(png, [(b"Content-Type", b"image/png")]) == png


@pytest.mark.parametrize(
    ("encoding", "compress", "decompress"),
    [
        (b"gzip", gzip.compress, gzip.decompress),
        (b"deflate", zlib.compress, zlib.decompress),
    ],
)
def test_compressed_bodies_are_redacted_and_stay_compressed(encoding, compress, decompress):
    headers = [*JSON, (b"Content-Encoding", encoding)]
    out = Redaction().body(compress(b'{"password": "S1", "a": 1}'), headers)
    assert orjson.loads(decompress(out)) == {"password": MARKER, "a": 1}


def test_a_body_that_cannot_be_decoded_is_not_kept():
    with pytest.raises(Unreadable):
        Redaction().body(b"not gzip at all", [(b"Content-Encoding", b"gzip")])
    with pytest.raises(Unreadable):
        Redaction().body(b"...", [(b"Content-Encoding", b"zstd")])
    record = record_of(_exchange(b"password=S1", [(b"Content-Encoding", b"gzip")]))
    record["an"][0]["h"] = [[b"Content-Encoding", b"x-unknown"]]
    record["an"][0]["b"] = b"secret S2"
    redactor = Redactor(CaptureConfig(path=None))  # type: ignore[arg-type]
    out = redactor.apply(record)
    assert out["rq"]["b"] == b""
    answer = out["an"][0]
    assert answer["b"] == b"" and answer["d"] and answer["z"] == len(b"secret S2")
    assert redactor.redacted["body:unreadable"] == 2


def _exchange(body: bytes = b"", headers=(), target: str = "/users/1") -> Exchange:
    request = Request("POST", target, list(headers), body, 1000.0)
    exchange = Exchange(1, request, "POST /users/{id}")
    exchange.answers["primary"] = Answer("primary", 200, [], b"", 0)
    return exchange


# -- samples ----------------------------------------------------------------------------------
def test_samples_honour_the_capture_lists_and_compared_set_cookie(tmp_path):
    from test_aggregate import make_config

    config = make_config()
    config = dataclasses.replace(
        config,
        diff=dataclasses.replace(config.diff, ignore_headers=frozenset({"date"})),
        capture=CaptureConfig(
            path=tmp_path / "c.shadow",
            redact_headers=frozenset({"x-ssn"}),
            redact_query_params=frozenset({"sig"}),
            redact_body_fields=("$.card.number",),
        ),
    )
    request = Request(
        "GET", "/users/1?sig=S1&page=2", [(b"X-SSN", b"S2"), (b"Accept", b"*/*")], b"", 1000.0
    )
    exchange = Exchange(1, request, "GET /users/{id}")
    for role, suffix in (("primary", "p"), ("candidate", "c")):
        exchange.answers[role] = Answer(
            role,
            200,
            [(b"Set-Cookie", f"sid=S3{suffix}".encode()), (b"Content-Type", b"application/json")],
            orjson.dumps({"card": {"number": f"S4{suffix}"}, "price": 1 if suffix == "p" else 2}),
        )
    aggregator = Aggregator(config)
    aggregator.add(exchange, diff_exchange(exchange, config.diff))
    (sample,) = aggregator.endpoints["GET /users/{id}"].samples
    text = json.dumps(sample)
    for secret in ("S1", "S2", "S3p", "S3c", "S4p", "S4c"):
        assert secret not in text, secret
    differences = {d["path"]: d for d in sample["differences"]}
    assert differences["$.price"]["candidate"] == 2
    assert differences["header.set-cookie"]["primary"] == MARKER
    assert dict(sample["request"]["headers"])["Accept"] == "*/*"


def test_sample_header_rule_is_the_shared_one():
    for name in ("Authorization", "X-Signing-Key", "X-Client-Secret", "Set-Cookie", "X-Csrf"):
        assert is_sample_secret(name) == (name != "X-Csrf"), name
    assert is_sample_secret("X-SSN", Redaction(headers=["x-ssn"]))


# -- through real worker processes --------------------------------------------------------------
@pytest.mark.timeout(90)
async def test_secrets_stay_out_with_real_worker_processes(make_backend, tmp_path):
    from aiohttp import web
    from conftest import build_config

    from shadowd.supervisor import Supervisor

    urls = {}
    for role in ("primary", "secondary", "candidate"):
        backend = make_backend()

        async def login(request: web.Request, role: str = role) -> web.Response:
            await request.read()
            return _answer(role)

        backend.route("POST", "/login", login)
        urls[role] = await backend.start()
    config = build_config(
        urls["primary"],
        urls["candidate"],
        urls["secondary"],
        mirror={"methods": frozenset({"GET", "POST"})},
        diff={"ignore_headers": frozenset({"date", "server", "content-length"})},
        analysis={"snapshot_interval": 0.1},
        verdict={"min_exchanges": 1},
    )
    config = dataclasses.replace(
        config,
        capture=CaptureConfig(
            path=tmp_path / "capture" / "live.shadow",
            redact_headers=frozenset({"x-ssn"}),
            redact_query_params=frozenset({"sig"}),
            redact_body_fields=("$.card.number",),
        ),
    )
    supervisor = Supervisor(config)
    await supervisor.start()
    try:
        admin = "http://{}:{}".format(*supervisor.admin_address)

        class Front:  # what _send_everything needs of a running shadowd
            url = "http://{}:{}".format(*supervisor.ingress_address)

            async def settled(self, count: int) -> None:
                async with asyncio.timeout(30), aiohttp.ClientSession() as session:
                    while True:
                        async with session.get(admin + "/api/v1/report") as answer:
                            report = await answer.json()
                        if report["totals"]["exchanges"] >= count:
                            return
                        await asyncio.sleep(0.1)

        await _send_everything(Front())  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session:
            async with session.get(admin + "/api/v1/report") as answer:
                report_bytes = await answer.read()
            (endpoint,) = json.loads(report_bytes)["endpoints"]
            surfaces = {"report": report_bytes}
            for name, path in (
                ("samples", f"/api/v1/endpoints/{endpoint['id']}/samples"),
                ("metrics", "/metrics"),
                ("verdict", "/api/v1/verdict"),
            ):
                async with session.get(admin + path) as answer:
                    surfaces[name] = await answer.read()
        samples = json.loads(surfaces["samples"])["samples"]
        assert samples and dict(samples[0]["request"]["headers"])["X-SSN"] == MARKER
        assert REQUEST_SECRETS["query_configured"] not in samples[0]["request"]["target"]
        for name, data in surfaces.items():
            assert leaks(data) == [], name
    finally:
        await supervisor.stop(grace=5.0)
    files = list((tmp_path / "capture").iterdir())
    captured = b"".join(p.read_bytes() for p in files)
    assert captured and leaks(captured) == []
    exchanges = [e for p in files for e in read_capture(p)]
    assert len(exchanges) == 9
    assert capture_leaks(exchanges) == ([], 3 + 9 * 3)

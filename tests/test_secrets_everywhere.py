"""One set of requests carrying a secret in every place a secret can hide, through a real
shadowd with capture and the access log on; then every surface is searched for them: the
capture file (compressed bodies decompressed), the report, the samples, /metrics, the
verdict, the access log and ``shadowd inspect``."""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import RunningShadowd, build_config
from yarl import URL

from shadowd.capture.inspect import inspect_capture
from shadowd.capture.reader import read_capture
from shadowd.config import CaptureConfig
from shadowd.daemon import Daemon

# Each secret is unique, so a hit names the place it leaked from.
REQUEST_SECRETS = {
    "authorization": "S3CRET-authorization",
    "cookie": "S3CRET-cookie",
    "configured_header": "S3CRET-ssn",
    "api_key_header": "S3CRET-x-api-key",
    "query_amp": "S3CRET-query-token",
    "query_semicolon": "S3CRET-query-session",
    "query_configured": "S3CRET-query-sig",
    "json_password": "S3CRET-json-password",
    "json_api_token": "S3CRET-json-api-token",
    "json_nested": "S3CRET-json-nested-password",
    "json_configured": "S3CRET-json-card-number",
    "form_password": "S3CRET-form-password",
    "gzip_password": "S3CRET-gzip-password",
    "gzip_nested": "S3CRET-gzip-nested-secret",
}
ANSWER_SECRETS = {
    role: {
        "set_cookie": f"S3CRET-set-cookie-{role}",
        "access_token": f"S3CRET-access-token-{role}",
        "nested": f"S3CRET-nested-password-{role}",
        "card": f"S3CRET-card-{role}",
    }
    for role in ("primary", "secondary", "candidate")
}
ALL_SECRETS = [*REQUEST_SECRETS.values(), *(v for a in ANSWER_SECRETS.values() for v in a.values())]


def leaks(data: bytes | str) -> list[str]:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return [secret for secret in ALL_SECRETS if secret in text]


def capture_leaks(exchanges) -> tuple[list[str], int]:
    """Secrets in the bodies of captured exchanges, gzip bodies decompressed; and how many
    bodies were decompressed."""
    found: list[str] = []
    decoded = 0
    for exchange in exchanges:
        bodies = [(exchange.request.headers, exchange.request.body)]
        bodies.extend((a.headers, a.body) for a in exchange.answers.values())
        for headers, body in bodies:
            encoding = {k.lower(): v for k, v in headers}.get(b"content-encoding")
            if encoding == b"gzip":
                body = zlib.decompress(body, zlib.MAX_WBITS | 32)
                assert body.startswith(b"{")  # still a readable, re-compressed document
                decoded += 1
            found += leaks(body)
    return found, decoded


def _answer(role: str) -> web.Response:
    s = ANSWER_SECRETS[role]
    doc = {
        # the candidate changes a price's type: every exchange is divergent, so sampled
        "price": "12" if role == "candidate" else 12,
        "access_token": s["access_token"],
        "user": {"name": "ada", "profile": {"password": s["nested"]}},
        "card": {"number": s["card"], "brand": "visa"},
    }
    return web.Response(
        body=gzip.compress(orjson.dumps(doc)),
        headers={
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Set-Cookie": f"session={s['set_cookie']}; HttpOnly",
        },
    )


@pytest.fixture
async def shadowd(make_backend, tmp_path):
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
        # Set-Cookie compared (not ignored, as it is by default): its values reach the diff
        diff={"ignore_headers": frozenset({"date", "server", "content-length"})},
        verdict={"min_exchanges": 1},
        logging={"access_log": True},
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
    daemon = Daemon(config)
    await daemon.start()
    try:
        yield RunningShadowd(daemon)
    finally:
        await daemon.stop(grace=2.0)


def _requests() -> list[tuple[dict[str, str], bytes]]:
    s = REQUEST_SECRETS
    json_body = orjson.dumps(
        {
            "user": "ada",
            "password": s["json_password"],
            "api_token": s["json_api_token"],
            "profile": {"settings": {"password": s["json_nested"]}},
            "card": {"number": s["json_configured"]},
        }
    )
    form_body = f"user=ada&password={s['form_password']}&remember=1".encode()
    gzip_body = gzip.compress(
        orjson.dumps(
            {"password": s["gzip_password"], "deep": [{"client_secret": s["gzip_nested"]}]}
        )
    )
    return [
        ({"Content-Type": "application/json"}, json_body),
        ({"Content-Type": "application/x-www-form-urlencoded"}, form_body),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, gzip_body),
    ]


async def _send_everything(shadowd: RunningShadowd) -> None:
    s = REQUEST_SECRETS
    target = (
        f"/login?user=ada&token={s['query_amp']};session={s['query_semicolon']}"
        f"&sig={s['query_configured']}&page=2"
    )
    headers = {
        "Authorization": f"Bearer {s['authorization']}",
        "Cookie": f"sid={s['cookie']}",
        "X-SSN": s["configured_header"],
        "X-Api-Key": s["api_key_header"],
    }
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for _ in range(3):
            for extra, body in _requests():
                async with session.post(
                    URL(shadowd.url + target, encoded=True),
                    headers={**headers, **extra},
                    data=body,
                ) as answer:
                    assert answer.status == 200
                    await answer.read()
    await shadowd.settled(9)


async def _get(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        assert answer.status == 200, url
        return await answer.read()


async def test_no_secret_reaches_any_surface(shadowd, caplog):
    with caplog.at_level("INFO", logger="shadowd.access"):
        await _send_everything(shadowd)
    admin = shadowd.admin_url

    # -- the admin API ------------------------------------------------------------------
    report_bytes = await _get(admin + "/api/v1/report")
    report = json.loads(report_bytes)
    assert report["totals"]["exchanges"] == 9
    assert leaks(report_bytes) == []
    (endpoint,) = report["endpoints"]
    samples_bytes = await _get(f"{admin}/api/v1/endpoints/{endpoint['id']}/samples")
    assert leaks(samples_bytes) == []
    metrics_bytes = await _get(admin + "/metrics")
    assert leaks(metrics_bytes) == []
    verdict_bytes = await _get(admin + "/api/v1/verdict")
    assert leaks(verdict_bytes) == []

    # The samples did see the secrets' places (so the check above means something).
    samples = json.loads(samples_bytes)["samples"]
    assert len(samples) == 9
    sample = samples[0]
    differences = {d["path"]: d for d in sample["differences"]}
    assert differences["$.price"]["candidate"] == "12"
    for path in ("$.access_token", "$.user.profile.password", "$.card.number"):
        assert differences[path]["primary"] == "[redacted]", path
        assert differences[path]["candidate"] == "[redacted]", path
    assert differences["header.set-cookie"]["candidate"] == "[redacted]"
    shown = dict(sample["request"]["headers"])
    for name in ("Authorization", "Cookie", "X-SSN", "X-Api-Key"):
        assert shown[name] == "[redacted]", name
    assert "user=ada" in sample["request"]["target"]
    assert "page=2" in sample["request"]["target"]
    assert sample["request"]["target"].count("%5Bredacted%5D") == 3

    # -- the access log -----------------------------------------------------------------
    access = [r for r in caplog.records if r.name == "shadowd.access"]
    assert len(access) == 9
    for record in access:
        assert leaks(repr(record.__dict__)) == []
        # token and session (built in) and sig (configured)
        assert record.target.count("%5Bredacted%5D") == 3

    # -- the capture file ---------------------------------------------------------------
    await shadowd.daemon.capture.close()
    path = shadowd.daemon.config.capture.path
    raw = path.read_bytes()
    assert leaks(raw) == []
    exchanges = list(read_capture(path))
    assert len(exchanges) == 9
    assert capture_leaks(exchanges) == ([], 3 + 9 * 3)  # the gzip requests, every answer
    by_body = {e.request.body[:1]: e for e in exchanges}
    assert b"password=%5Bredacted%5D" in by_body[b"u"].request.body  # the form
    assert b"remember=1" in by_body[b"u"].request.body
    summary = inspect_capture(path)
    assert leaks(json.dumps(summary, default=str)) == []

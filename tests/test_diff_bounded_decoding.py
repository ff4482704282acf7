"""Decoding for the diff is bounded by ``[diff] max_body_bytes``: a decompression bomb from a
candidate costs at most that much memory, and is compared as it came."""

from __future__ import annotations

import dataclasses
import gzip
import tracemalloc
import zlib

from shadowd.config import DiffConfig
from shadowd.diff.engine import diff_exchange
from shadowd.diff.prepared import decode
from shadowd.exchange import Answer, Exchange, Request


def _answer(target: str, body: bytes, encoding: bytes | None) -> Answer:
    headers = [(b"content-type", b"application/json")]
    if encoding:
        headers.append((b"content-encoding", encoding))
    return Answer(target, 200, headers, body, body_size=len(body))


def test_a_gzip_bomb_is_not_inflated_past_the_limit():
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zeros = bytes(1024 * 1024)
    bomb = b"".join(deflater.compress(zeros) for _ in range(200)) + deflater.flush()
    assert len(bomb) < 512 * 1024  # 200 MiB of zeros
    tracemalloc.start()
    out = decode(bomb, b"gzip", limit=1024 * 1024)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out == bomb  # compared as it came
    assert peak < 8 * 1024 * 1024


def test_deflate_within_the_limit_is_decoded():
    body = b'{"a": 1}'
    assert decode(zlib.compress(body), b"deflate", limit=1024) == body
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode(raw.compress(body) + raw.flush(), b"deflate", limit=1024) == body


def test_the_limit_is_diff_max_body_bytes():
    document = b'{"items": [' + b",".join(b"%d" % i for i in range(50_000)) + b"]}"
    config = dataclasses.replace(DiffConfig(), max_body_bytes=64 * 1024)
    exchange = Exchange(1, Request("GET", "/x", [], b"", 0.0), "GET /x")
    exchange.answers["primary"] = _answer("primary", gzip.compress(document), b"gzip")
    exchange.answers["candidate"] = _answer("candidate", gzip.compress(document, 1), b"gzip")
    # 300 KB decoded > 64 KiB: both stay compressed and are compared as bytes, not parsed
    diff = diff_exchange(exchange, config)
    assert [d.kind.value for d in diff.candidate] == ["body"]
    roomy = dataclasses.replace(DiffConfig(), max_body_bytes=1024 * 1024)
    assert diff_exchange(exchange, roomy).candidate == []  # decoded: the same document

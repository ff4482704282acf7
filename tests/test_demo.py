"""The demo runs to completion offline and finds every planted difference."""

from __future__ import annotations

import asyncio
import io
import sys

from shadowd.demo.tour import tour


async def test_demo_reports_every_planted_difference_and_fails_the_verdict():
    out = io.StringIO()
    assert await tour(duration=0, requests=1200, out=out) == 0
    text = out.getvalue()
    assert "1200 requests" in text
    for planted in (
        "$.nickname added",  # extra field
        "$.price type changed",  # type change
        "$.shipping missing",  # missing field
        "header.x-cache value differs",  # header
        "candidate errors",  # 500s
        "GET /api/inventory: candidate median latency",  # +15 ms
    ):
        assert planted in text, planted
    assert "verdict: FAIL" in text
    # noise (request ids, clocks) is recognised as such, and identical endpoints stay clean
    assert "$.meta.request_id" in text and "noise" in text
    assert "GET /api/health" not in text.split("verdict:")[1]


async def test_demo_command_finishes_by_itself():
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shadowd",
        "demo",
        "--duration",
        "0",
        "--requests",
        "300",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert b"verdict: FAIL" in out
    assert b"traffic: 300/300" in err

"""The dashboard in a real headless Chromium against a real daemon and real backends: a user
clicks an endpoint, a field, a sample (side by side), reloads the deep link, toggles the kill
switch with and without the token; screenshots at 1400 and 800 px wide go to
test-artifacts/ and neither width scrolls sideways. Payloads in bodies and headers stay text."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from cdp import Browser

from shadowd.config import DiffRule

pytestmark = pytest.mark.integration

TOKEN = "dash-secret"
WHY = "the tags list has no order in the API contract"


@pytest.fixture
async def shop(make_backend, start_shadowd, tmp_path):
    """A primary, a secondary (same release) and a candidate that returns prices as strings
    and a changed text line; every answer carries its own request id (noise)."""
    urls = {}
    for role in ("primary", "secondary", "candidate"):
        backend = make_backend()
        served = iter(range(10**9))

        async def product(request: web.Request, role=role, served=served) -> web.Response:
            pid = int(request.match_info["id"])
            price = str(pid) if role == "candidate" else pid
            body = {
                "id": pid,
                "price": price,
                "request_id": f"{role}-{next(served)}",  # differs on every answer: noise
                "tags": ["a", "b"],
                "details": {"colour": "red", "sizes": list(range(30))},  # a long body
            }
            return web.json_response(body, headers={"X-Instance": f"{role}-{pid}"})

        async def terms(request: web.Request, role=role) -> web.Response:
            lines = [f"clause {n}: the same" for n in range(8)]
            if role == "candidate":
                lines[4] = "clause 4: changed in the candidate"
            return web.Response(text="\n".join(lines), content_type="text/plain")

        backend.route("GET", "/products/{id}", product)
        backend.route("GET", "/terms", terms)
        urls[role] = await backend.start()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    shadowd = await start_shadowd(
        urls["primary"],
        urls["candidate"],
        urls["secondary"],
        admin={"token_file": token},
        diff={"rules": (DiffRule("tags-order", WHY, "unordered", path="$.tags"),)},
        verdict={
            "min_exchanges": 20,
            "owner": "team-shop (#shop-oncall)",
            "expected_result": "identical answers; prices stay numbers",
            "rollback": "argo rollouts abort shop",
        },
    )
    async with aiohttp.ClientSession() as session:
        for n in range(40):
            async with session.get(f"{shadowd.url}/products/{n}") as answer:
                await answer.read()
            async with session.get(f"{shadowd.url}/terms") as answer:
                await answer.read()
    await shadowd.settled(80)
    return shadowd


async def endpoint_id(shadowd, name: str) -> str:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(shadowd.admin_url + "/api/v1/report", headers=headers) as answer,
    ):
        report = await answer.json()
    return next(e["id"] for e in report["endpoints"] if e["endpoint"] == name)


@pytest.mark.timeout(180)  # a real browser or Prometheus on a busy 2-core host
async def test_a_user_walks_from_the_verdict_to_a_sample_side_by_side(shop, tmp_path):
    async with Browser(tmp_path / "profile") as page:
        await page.navigate(shop.admin_url + f"/?confirm=0#token={TOKEN}")
        await page.wait_for("document.getElementById('verdict').textContent === 'FAIL'")
        # the token is out of the address bar and the history entry at once
        assert TOKEN not in await page.evaluate("location.href")
        assert await page.evaluate("document.getElementById('owner').innerText") == (
            "owner\nteam-shop (#shop-oncall)\nexpected result\nidentical answers; prices stay "
            "numbers\nrollback\nargo rollouts abort shop"
        )
        assert await page.wait_for("document.querySelectorAll('#criteria .criterion.fail').length")
        rules = await page.evaluate("document.getElementById('rules').innerText")
        assert "tags-order\tunordered\t0\t" + WHY in rules, rules

        # the endpoint filter
        await page.evaluate(
            "(() => { const f = document.getElementById('filter'); f.value = 'terms';"
            " f.dispatchEvent(new Event('input')); })()"
        )
        rows = await page.evaluate("[...document.querySelectorAll('#endpoints tbody tr')].length")
        assert rows == 1
        await page.evaluate(
            "(() => { const f = document.getElementById('filter'); f.value = '';"
            " f.dispatchEvent(new Event('input')); })()"
        )

        # endpoint -> fields, latency picture and the rates over time
        products = await endpoint_id(shop, "GET /products/{id}")
        await page.click(
            f"#endpoints tr[data-id='{products}'] a", until=f"location.hash === '#/e/{products}'"
        )
        fields = await page.wait_for(
            "document.querySelector('#fields tbody').innerText.includes('$.price') &&"
            " document.querySelector('#fields tbody').innerText"
        )
        assert "type 40" in fields
        await page.wait_for("document.querySelectorAll('#latency-chart canvas').length === 1")
        marks = await page.wait_for("document.getElementById('latency-marks').innerText")
        assert "p50" in marks and "p99" in marks and "candidate" in marks
        await page.wait_for("document.querySelectorAll('#endpoint-chart canvas').length === 1")
        await page.wait_for("document.querySelectorAll('#overall-chart canvas').length === 1")

        # field -> its samples -> one sample, side by side
        await page.click(
            "#fields a[href$='/f/%24.price']", until="location.hash.endsWith('/f/%24.price')"
        )
        await page.wait_for("document.querySelectorAll('#samples tr.sample').length > 0")
        await page.click("#samples tr.sample a", until="location.hash.includes('/s/')")
        deep_link = await page.evaluate("location.href")
        await check_side_by_side(page)

        # the deep link survives a reload (the token is in this tab's sessionStorage)
        await page.reload()
        assert await page.evaluate("location.href") == deep_link
        await check_side_by_side(page)

        for width in (1400, 800):
            await page.set_width(width)
            await page.wait_for("document.querySelectorAll('.column').length === 3")
            shot = await page.screenshot(f"dashboard-sample-{width}.png")
            assert shot.stat().st_size > 10_000
            assert await page.overflow() == 0, f"the page scrolls sideways at {width} px"
        await page.navigate(shop.admin_url + "/?confirm=0#/")
        await page.wait_for("document.getElementById('verdict').textContent === 'FAIL'")
        for width in (1400, 800):
            await page.set_width(width)
            await page.wait_for("document.querySelectorAll('#overall-chart canvas').length")
            await page.screenshot(f"dashboard-overview-{width}.png")
            assert await page.overflow() == 0, f"the overview scrolls sideways at {width} px"

        # the text endpoint: bodies as a line diff
        terms = await endpoint_id(shop, "GET /terms")
        await page.navigate(shop.admin_url + f"/?confirm=0#/e/{terms}")
        await page.click(
            f"#samples a[href^='#/e/{terms}/s/']",  # its samples, not the last endpoint's
            until=f"location.hash.startsWith('#/e/{terms}/s/')",
        )
        await page.wait_for(
            "document.getElementById('sample-title').textContent.includes('/terms')"
        )
        changed = await page.wait_for(
            "[...document.querySelectorAll('.column.candidate .line.diff')].map(l => l.textContent)"
            ".join('|')"
        )
        assert changed == "+ clause 4: changed in the candidate\n"
        gone = await page.evaluate(
            "[...document.querySelectorAll('.column.candidate .line.gone')].map(l => l.textContent)"
        )
        assert gone == ["- clause 4: the same\n"]

        # the kill switch, with the token: off, then on again
        await page.click("#kill")  # once: a second click would toggle it back
        await page.wait_for("document.getElementById('mirroring').textContent === 'mirroring OFF'")
        assert shop.daemon.mirror.enabled is False
        await page.click("#kill")  # once: a second click would toggle it back
        await page.wait_for("document.getElementById('mirroring').textContent === 'mirroring on'")
        assert shop.daemon.mirror.enabled is True
        assert not [m for m in page.console if m.startswith("exception")], page.console


async def check_side_by_side(page) -> None:
    await page.wait_for("document.querySelectorAll('.column').length === 3")
    roles = await page.evaluate(
        "[...document.querySelectorAll('.column .role')].map(r => r.textContent)"
    )
    assert roles == ["primary", "candidate", "secondary"]
    # the divergent field is highlighted in every column, the noise field dimmed
    # (the folded view and the whole body behind "all N lines" hold the same lines)
    highlighted = await page.evaluate(
        "[...new Set([...document.querySelectorAll('.column.candidate .line.diff')]"
        ".map(l => l.textContent.trim()))]"
    )
    assert len(highlighted) == 1 and highlighted[0].startswith('"price": "'), highlighted
    in_primary = await page.evaluate(
        "[...new Set([...document.querySelectorAll('.column.primary .line.diff')]"
        ".map(l => l.textContent.trim()))]"
    )
    assert len(in_primary) == 1 and in_primary[0].startswith('"price": '), in_primary
    dimmed = await page.evaluate(
        "[...document.querySelectorAll('.column.candidate .line.noise')]"
        ".map(l => l.textContent.trim())"
    )
    assert any(line.startswith('"request_id": "candidate-') for line in dimmed), dimmed
    # the long body is folded: the sizes list is behind "all N lines"
    assert await page.evaluate(
        "document.querySelector('.column.primary details:not(.headers-fold) summary')"
        ".textContent.startsWith('all ')"
    )
    # headers, the noisy one dimmed
    noisy_header = await page.evaluate(
        "[...document.querySelectorAll('.column.candidate table.headers tr.noise th')]"
        ".map(t => t.textContent.toLowerCase())"
    )
    assert "x-instance" in noisy_header


async def test_the_kill_switch_without_the_token_is_refused_and_says_why(shop, tmp_path):
    async with Browser(tmp_path / "profile") as page:
        await page.navigate(shop.admin_url + "/?confirm=0")
        await page.wait_for("document.getElementById('error').textContent.includes('401')")
        await page.click("#kill")
        message = await page.wait_for(
            "document.getElementById('error').textContent.startsWith('The kill switch was refused')"
            " && document.getElementById('error').textContent"
        )
        assert "/api/v1/mirror answered 401" in message and "#token=" in message
        assert shop.daemon.mirror.enabled is True


PAYLOADS = [
    "<script>window.__pwned = 'script'; alert('script')</script>",
    "\"><img src=x onerror=\"window.__pwned = 'img'; alert('img')\">",
    "'><svg onload=alert('svg')>",
]


async def test_answers_holding_markup_are_shown_as_text_and_nothing_runs(
    make_backend, start_shadowd, tmp_path
):
    urls = {}
    for role in ("primary", "candidate"):
        backend = make_backend()

        async def evil(request: web.Request, role=role) -> web.Response:
            n = int(request.match_info["n"])
            body = {
                "name": PAYLOADS[n % 3] if role == "candidate" else "plain",
                PAYLOADS[1]: PAYLOADS[2],  # a key holding markup: it shows up as a field path
            }
            return web.json_response(
                body, headers={"X-Note": PAYLOADS[n % 2] if role == "candidate" else "ok"}
            )

        async def page_text(request: web.Request, role=role) -> web.Response:
            return web.Response(
                text=PAYLOADS[0] if role == "candidate" else "hello", content_type="text/html"
            )

        backend.route("GET", "/evil/{n}", evil)
        backend.route("GET", "/html", page_text)
        urls[role] = await backend.start()
    shadowd = await start_shadowd(urls["primary"], urls["candidate"])
    async with aiohttp.ClientSession() as session:
        for n in range(12):
            async with session.get(f"{shadowd.url}/evil/{n}") as answer:
                await answer.read()
            async with session.get(f"{shadowd.url}/html") as answer:
                await answer.read()
    await shadowd.settled(24)
    async with Browser(tmp_path / "profile") as page:
        async with (
            aiohttp.ClientSession() as session,
            session.get(shadowd.admin_url + "/api/v1/report") as answer,
        ):
            ids = [e["id"] for e in (await answer.json())["endpoints"]]
        assert len(ids) == 2
        texts = []
        for eid in ids:
            await page.navigate(shadowd.admin_url + f"/#/e/{eid}")
            for row in range(3):
                # this endpoint's sample (not the one shown before), rendered for that link
                link = f"#samples tr.sample:nth-child({row + 1}) a[href^='#/e/{eid}/s/']"
                href = await page.wait_for(
                    f"document.querySelector({link!r})?.getAttribute('href')"
                )
                await page.click(link, until=f"location.hash === {href!r}")
                await page.wait_for(
                    "document.querySelector('#samples tr.selected a')?.getAttribute('href') === "
                    f"{href!r} && document.querySelectorAll('.column').length === 2"
                )
                text = await page.evaluate("document.getElementById('sample').innerText")
                texts.append(text)
        shown = "\n".join(texts)
        for payload in PAYLOADS:  # every payload is there, as text
            assert payload in shown or payload.replace('"', '\\"') in shown, payload
        assert await page.evaluate("window.__pwned === undefined")
        assert page.dialogs == []
        # the page's own two scripts and nothing else; no element a payload could have made
        assert await page.evaluate("document.scripts.length") == 2
        assert await page.evaluate("document.querySelectorAll('img, svg, iframe').length") == 0
        handlers = await page.evaluate(
            "[...document.querySelectorAll('*')].flatMap(e => [...e.attributes])"
            ".filter(a => a.name.startsWith('on')).length"
        )
        assert handlers == 0


def word(n: int) -> str:
    """0 -> "a", 25 -> "z", 26 -> "ba": path segments without digits (digits read as ids)."""
    letters = ""
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n //= 26
        if not n:
            return letters


async def test_two_hundred_endpoints_stay_fast_and_filterable(
    make_backend, start_shadowd, tmp_path
):
    urls = {}
    for role in ("primary", "candidate"):
        backend = make_backend()

        async def any_path(request: web.Request, role=role) -> web.Response:
            name = request.match_info["name"]
            changed = role == "candidate" and len(name) % 3 == 0
            return web.json_response({"name": name, "v": 2 if changed else 1})

        backend.route("GET", "/{name}", any_path)
        urls[role] = await backend.start()
    shadowd = await start_shadowd(urls["primary"], urls["candidate"])
    names = [f"svc-{word(n)}" for n in range(200)]
    async with aiohttp.ClientSession() as session:
        for name in names:
            for _ in range(2):
                async with session.get(f"{shadowd.url}/{name}") as answer:
                    await answer.read()
    await shadowd.settled(400)
    async with Browser(tmp_path / "profile") as page:
        await page.navigate(shadowd.admin_url + "/")
        await page.wait_for("document.querySelectorAll('#endpoints tbody tr').length === 200")
        # one whole refresh of the report: the table, the panels (median of 5)
        elapsed = await page.evaluate(
            """(() => { const times = [];
              for (let i = 0; i < 5; i++) {
                const t = performance.now(); renderReport(state.report);
                document.body.offsetHeight;  // and the layout it causes
                times.push(performance.now() - t);
              }
              return times.sort((a, b) => a - b)[2]; })()"""
        )
        print(f"200 endpoints: one report render {elapsed:.1f} ms (median of 5)")
        assert elapsed < 500, elapsed  # refreshed every 3 s: must not take a good part of it
        await page.evaluate(
            "(() => { const f = document.getElementById('filter'); f.value = 'svc-ba';"
            " f.dispatchEvent(new Event('input')); })()"
        )
        shown = await page.evaluate(
            "[...document.querySelectorAll('#endpoints tbody code')].map(c => c.textContent)"
        )
        assert shown == ["GET /svc-ba"], shown
        await page.evaluate(
            "(() => { const f = document.getElementById('filter'); f.value = '';"
            " f.dispatchEvent(new Event('input')); })()"
        )
        for width in (1400, 800):
            await page.set_width(width)
            await page.screenshot(f"dashboard-200-endpoints-{width}.png")
            assert await page.overflow() == 0, width

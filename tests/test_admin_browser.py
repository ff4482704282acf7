"""The admin API against what a real browser can be made to do: a page from another origin
posting to it (CSRF), a rebinding host name, and the dashboard's own kill switch, which must
keep working. Headless Chromium, a real daemon."""

from __future__ import annotations

import asyncio
import json
import shutil

import aiohttp
import pytest
from aiohttp import web
from realpeers import chromium_args

pytestmark = pytest.mark.integration

CURL = shutil.which("curl")


async def dump_dom(url: str, profile, *extra: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *chromium_args(profile, "--virtual-time-budget=8000", "--dump-dom", *extra),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(45):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:  # timed out: no browser left behind
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()


@pytest.fixture
async def shop(make_backend, start_shadowd):
    urls = {}
    for role in ("primary", "candidate"):
        backend = make_backend()

        async def product(request: web.Request, role=role) -> web.Response:
            pid = int(request.match_info["id"])
            return web.json_response({"id": pid, "price": str(pid) if role == "candidate" else pid})

        backend.route("GET", "/products/{id}", product)
        urls[role] = await backend.start()
    shadowd = await start_shadowd(
        urls["primary"], urls["candidate"], admin={"allowed_hosts": ("shadowd.internal",)}
    )
    async with aiohttp.ClientSession() as session:
        for pid in range(10):
            async with session.get(f"{shadowd.url}/products/{pid}") as answer:
                await answer.read()
    await shadowd.settled(10)
    return shadowd


async def exchanges_counted(shadowd) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(shadowd.admin_url + "/api/v1/report") as answer,
    ):
        return (await answer.json())["totals"]["exchanges"]


ATTACK = """<!doctype html><title>cute cats</title><body><p id="log">log:</p>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="POST" action="{admin}/api/v1/mirror" enctype="text/plain" target="sink">
  <input name='{{"enabled": false, "x": "' value='"}}'>
</form>
<script>
const log = (t) => document.getElementById("log").textContent += " " + t;
(async () => {{
  const attempts = [["/api/v1/mirror", '{{"enabled": false}}'], ["/api/v1/reset", "{{}}"]];
  for (const [path, body] of attempts) {{
    try {{
      await fetch("{admin}" + path, {{method: "POST", body, mode: "no-cors",
                                     headers: {{"Content-Type": "text/plain"}}}});
      log("answered " + path);  // an opaque answer: the request did reach the API
    }} catch (e) {{ log("failed " + path + " " + e); }}
  }}
  // the oldest trick: a cross-site form, its answer loaded in a frame
  document.getElementById("sink").onload = () => log("form answered");
  document.getElementById("form").submit();
}})();
</script>"""


async def test_a_page_from_another_origin_cannot_stop_mirroring_or_reset(
    shop, make_backend, tmp_path
):
    evil = make_backend()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=ATTACK.format(admin=shop.admin_url), content_type="text/html")

    evil.route("GET", "/", page)
    evil_url = await evil.start()
    assert evil_url != shop.admin_url  # another loopback port: another origin
    before = await exchanges_counted(shop)
    assert before == 10

    dom = await dump_dom(evil_url + "/", tmp_path / "profile")

    # Every request reached the API (without the checks each would have acted)...
    assert "log: answered /api/v1/mirror answered /api/v1/reset form answered" in dom
    # ...and was refused.
    assert shop.daemon.mirror.enabled is True
    assert await exchanges_counted(shop) == before


async def test_a_rebinding_host_name_is_refused_in_the_browser(shop, tmp_path):
    # What DNS rebinding achieves: the browser reaches the admin API under the attacker's
    # name (here Chromium maps the name to loopback itself), so the page is same-origin
    # with every answer it reads.
    port = shop.admin_url.rsplit(":", 1)[1]
    dom = await dump_dom(
        f"http://evil.example:{port}/api/v1/report",
        tmp_path / "profile",
        "--host-resolver-rules=MAP evil.example 127.0.0.1",
    )
    assert "does not answer for Host" in dom
    assert "GET /products/{id}" not in dom


async def test_hosts_answered_and_refused(shop):
    port = shop.admin_url.rsplit(":", 1)[1]
    cases = {
        f"evil.example:{port}": 421,
        "evil.example": 421,
        f"127.0.0.1.evil.example:{port}": 421,
        f"10.1.2.3:{port}": 421,
        f"127.0.0.1:{port}": 200,
        f"localhost:{port}": 200,
        f"LOCALHOST.:{port}": 200,
        f"[::1]:{port}": 200,
        "127.0.0.2:9000": 200,  # a port forward changes the port, not the name
        "shadowd.internal": 200,  # [admin] allowed_hosts
    }
    async with aiohttp.ClientSession() as session:
        for host, expected in cases.items():
            for path in ("/api/v1/report", "/metrics", "/healthz"):
                async with session.get(shop.admin_url + path, headers={"Host": host}) as answer:
                    assert answer.status == expected, (host, path)
                    if expected == 421:
                        assert "does not answer for Host" in (await answer.json())["error"]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_with_a_foreign_host_gets_421_and_the_documented_curl_works(shop):
    async def curl(*args: str) -> tuple[str, str]:
        process = await asyncio.create_subprocess_exec(
            CURL, "-s", "-o", "-", "-w", "\n%{http_code}", *args, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        body, _, code = out.decode().rpartition("\n")
        return code, body

    code, body = await curl("-H", "Host: evil.example", shop.admin_url + "/api/v1/report")
    assert code == "421"
    # curl -d sends a form content type: refused, with the fix in the message
    code, body = await curl("-X", "POST", shop.admin_url + "/api/v1/mirror", "-d", "{}")
    assert code == "415" and "Content-Type: application/json" in body
    assert shop.daemon.mirror.enabled is True
    code, body = await curl(
        "-X",
        "POST",
        shop.admin_url + "/api/v1/mirror",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"enabled": false}',
    )
    assert code == "200" and json.loads(body)["enabled"] is False
    assert shop.daemon.mirror.enabled is False


async def test_flagger_style_verdict_post_still_works(shop):
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            shop.admin_url + "/api/v1/verdict",
            json={"name": "shop", "namespace": "prod", "phase": "Progressing"},
        ) as answer,
    ):
        assert answer.status == 200
        assert (await answer.json())["verdict"] in ("pass", "fail", "inconclusive")


async def test_the_dashboard_kill_switch_still_works_in_the_browser(shop, tmp_path):
    """Chromium opens the dashboard and clicks "Stop mirroring" (through the DevTools
    protocol): the same-origin JSON POST the page sends is accepted."""
    profile = tmp_path / "profile"
    process = await asyncio.create_subprocess_exec(
        *chromium_args(profile, "--remote-debugging-port=0"),
        shop.admin_url + "/?confirm=0",  # no "Stop mirroring?" question to answer
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(60):
            port_file = profile / "DevToolsActivePort"
            while not port_file.exists() or not port_file.read_text().strip():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            devtools = int(port_file.read_text().split()[0])
            async with aiohttp.ClientSession() as session:
                page = None
                while page is None:
                    async with session.get(f"http://127.0.0.1:{devtools}/json/list") as answer:
                        pages = [p for p in await answer.json() if p["type"] == "page"]
                    page = next((p for p in pages if p["url"].startswith(shop.admin_url)), None)
                    await asyncio.sleep(0.05)
                async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    click = """(async () => {
                      for (let i = 0; i < 200; i++) {
                        const b = document.getElementById("kill");
                        if (b && b.textContent === "Stop mirroring" &&
                            document.getElementById("mirroring").textContent) { b.click(); break; }
                        await new Promise((r) => setTimeout(r, 50));
                      }
                      for (let i = 0; i < 200; i++) {
                        if (document.getElementById("mirroring").textContent.includes("OFF"))
                          return "off";
                        await new Promise((r) => setTimeout(r, 50));
                      }
                      return document.body.innerText;
                    })()"""
                    for attempt in range(1, 20):
                        # The first attempts may land while the page is still loading.
                        await ws.send_json(
                            {
                                "id": attempt,
                                "method": "Runtime.evaluate",
                                "params": {"expression": click, "awaitPromise": True},
                            }
                        )
                        while True:
                            message = await ws.receive_json()
                            if message.get("id") == attempt:
                                break
                        if "error" not in message:
                            break
                        await asyncio.sleep(0.1)
        assert message.get("result", {}).get("result", {}).get("value") == "off", message
        assert shop.daemon.mirror.enabled is False
    finally:
        process.kill()
        await process.wait()


async def test_state_changes_need_json_and_their_own_origin(shop):
    own = shop.admin_url
    cases = [
        ({"Origin": "http://127.0.0.1:1"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": own, "Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": own, "Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Origin": own, "Sec-Fetch-Site": "same-origin"}, 200),  # the dashboard
        ({}, 200),  # the CLI, curl, scripts
    ]
    async with aiohttp.ClientSession() as session:
        for headers, expected in cases:
            headers = {"Content-Type": "application/json", **headers}
            async with session.post(
                own + "/api/v1/mirror", data=b'{"enabled": true}', headers=headers
            ) as answer:
                assert answer.status == expected, headers
            async with session.post(own + "/api/v1/reset", data=b"{}", headers=headers) as answer:
                assert answer.status == expected, headers
                if expected == 403:
                    assert "cross-origin requests may not POST" in (await answer.json())["error"]

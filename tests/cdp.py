"""Headless Chromium driven through its DevTools protocol (a WebSocket, spoken with aiohttp):
navigate, evaluate, wait for a condition in the page, click, size the window, screenshot.
No extra dependency: Debian's chromium and the protocol are enough for what the dashboard
tests do."""

from __future__ import annotations

import asyncio
import base64
import itertools
from pathlib import Path
from typing import Any

import aiohttp
from realpeers import chromium_args

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class PageError(AssertionError):
    pass


class Browser:
    """One headless Chromium with one page. ``async with Browser(profile) as page``."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self.console: list[str] = []  # console messages and uncaught exceptions
        self.dialogs: list[str] = []  # alert/confirm/prompt texts (each dismissed)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Browser:
        self.process = await asyncio.create_subprocess_exec(
            *chromium_args(self.profile, "--remote-debugging-port=0"),
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        async with asyncio.timeout(30):
            # Chromium writes the file once it listens; there is no event to wait on.
            while not port_file.exists() or not port_file.read_text().strip():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            devtools = int(port_file.read_text().split()[0])
            self.session = aiohttp.ClientSession()
            page = None
            while page is None:
                async with self.session.get(f"http://127.0.0.1:{devtools}/json/list") as answer:
                    pages = [p for p in await answer.json() if p["type"] == "page"]
                page = pages[0] if pages else None
                if page is None:
                    await asyncio.sleep(0.05)
            self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        for domain in ("Page.enable", "Runtime.enable"):
            await self.send(domain)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            data = message.json()
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            method = data.get("method")
            params = data.get("params", {})
            if method == "Runtime.consoleAPICalled":
                self.console.append(
                    " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                )
            elif method == "Runtime.exceptionThrown":
                self.console.append("exception: " + str(params["exceptionDetails"]))
            elif method == "Page.javascriptDialogOpening":
                self.dialogs.append(params["message"])
                asyncio.get_running_loop().create_task(
                    self.send("Page.handleJavaScriptDialog", accept=False)
                )
            for future in self._events.pop(method, []):
                if not future.done():
                    future.set_result(params)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(30):
            answer = await future
        if "error" in answer:
            raise PageError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def _next(self, *events: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the first of ``events`` to come."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        for event in events:
            self._events.setdefault(event, []).append(future)
        return future

    async def navigate(self, url: str) -> None:
        """Go to ``url``: a page load, or (only the fragment changed) a same-page navigation."""
        done = self._next("Page.loadEventFired", "Page.navigatedWithinDocument")
        await self.send("Page.navigate", url=url)
        async with asyncio.timeout(30):
            await done

    async def reload(self) -> None:
        loaded = self._next("Page.loadEventFired")
        await self.send("Page.reload", ignoreCache=True)
        async with asyncio.timeout(30):
            await loaded

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise PageError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, condition: str, timeout: float = 20.0) -> Any:
        """Until the JavaScript expression ``condition`` is truthy in the page (polled inside
        the page with requestAnimationFrame-free timers, bounded by ``timeout``)."""
        script = f"""(async () => {{
          const deadline = Date.now() + {int(timeout * 1000)};
          while (Date.now() < deadline) {{
            try {{ const v = ({condition}); if (v) return v; }} catch (e) {{}}
            await new Promise((r) => setTimeout(r, 50));
          }}
          return null;
        }})()"""
        value = await self.evaluate(script)
        if not value:
            body = await self.evaluate("document.body.innerText.slice(-3000)")
            raise PageError(f"not true within {timeout}s: {condition}\npage: {body}")
        return value

    async def click(self, selector: str, until: str | None = None, tries: int = 3) -> None:
        """A real mouse click at the element's centre (not element.click()): what a user does.
        With ``until`` (a JavaScript condition), click again while it has not come true: the
        page may scroll or redraw between finding the element and the click landing, as it
        may under a user's pointer."""
        for attempt in range(tries):
            await self._click_once(selector)
            if until is None:
                return
            try:
                await self.wait_for(until, timeout=5.0)
                return
            except PageError:
                if attempt == tries - 1:
                    raise

    async def _click_once(self, selector: str) -> None:
        box = await self.wait_for(
            f"""(() => {{ const e = document.querySelector({selector!r}); if (!e) return null;
                e.scrollIntoView({{block: "center"}}); const r = e.getBoundingClientRect();
                if (!r.width || !r.height) return null;
                return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()"""
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box["x"],
                y=box["y"],
                button="left",
                clickCount=1,
            )

    async def set_width(self, width: int, height: int = 1000) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        # the page's resize handler and layout have run once two frames have passed
        await self.evaluate(
            "new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"
        )

    async def overflow(self) -> int:
        """How many CSS pixels the page is wider than its window (0: no horizontal scroll)."""
        return int(
            await self.evaluate(
                "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
                " - document.documentElement.clientWidth"
            )
        )

    async def screenshot(self, name: str) -> Path:
        """The whole page as a PNG under test-artifacts/ (kept by the test suite)."""
        ARTIFACTS.mkdir(exist_ok=True)
        # at the top, once the page's own scrolling is done: the sticky header stays on top
        await self.evaluate(
            "new Promise((r) => { window.scrollTo(0, 0);"
            " requestAnimationFrame(() => requestAnimationFrame(r)); })"
        )
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

"""Sample primary, secondary and candidate services with known, planted differences.

primary and secondary run the same "release" (secondary differs only in noise: request ids
and timestamps); candidate is the release under test, with these planted changes:

- ``GET /api/users/{id}``: candidate adds a field ``nickname`` (extra field)
- ``GET /api/products/{id}``: candidate sends ``price`` as a string for every third id
  (type change)
- ``GET /api/orders/{id}``: candidate drops ``shipping`` (missing field) and, for even ids,
  returns one item fewer (array length)
- ``GET /api/reports/{id}``: candidate answers 500 for one id in ten (status)
- ``GET /api/inventory``: candidate answers ``X-Cache: MISS`` where primary says ``HIT``
  (header) — and is 15 ms slower
- ``GET /api/health``, ``GET /static/banner.txt``: identical everywhere
"""

from __future__ import annotations

import asyncio
import time
import uuid

from aiohttp import web

PRIMARY = "primary"
SECONDARY = "secondary"
CANDIDATE = "candidate"


def _noise() -> dict[str, object]:
    """Fields that differ on every answer of any release: ids and clocks."""
    return {"request_id": str(uuid.uuid4()), "served_at": time.time()}


def build_service(role: str) -> web.Application:
    candidate = role == CANDIDATE

    async def user(request: web.Request) -> web.Response:
        uid = int(request.match_info["id"])
        doc: dict[str, object] = {
            "id": uid,
            "name": f"user-{uid}",
            "email": f"user{uid}@example.com",
            "roles": ["reader", "writer"] if uid % 2 else ["reader"],
            "meta": _noise(),
        }
        if candidate:
            doc["nickname"] = f"u{uid}"
        return web.json_response(doc)

    async def product(request: web.Request) -> web.Response:
        pid = int(request.match_info["id"])
        price: object = round(pid * 1.25 + 0.99, 2)
        if candidate and pid % 3 == 0:
            price = str(price)
        return web.json_response(
            {"id": pid, "price": price, "currency": "EUR", "tags": ["new", "sale"], **_noise()}
        )

    async def order(request: web.Request) -> web.Response:
        oid = int(request.match_info["id"])
        items = [{"sku": f"sku-{oid}-{i}", "qty": i + 1} for i in range(3)]
        doc: dict[str, object] = {
            "id": oid,
            "items": items,
            "total": 42.5,
            "shipping": {"carrier": "post", "days": 2},
            **_noise(),
        }
        if candidate:
            del doc["shipping"]
            if oid % 2 == 0:
                doc["items"] = items[:-1]
        return web.json_response(doc)

    async def report(request: web.Request) -> web.Response:
        rid = int(request.match_info["id"])
        if candidate and rid % 10 == 7:
            return web.json_response({"error": "internal"}, status=500)
        return web.json_response({"id": rid, "rows": rid % 5, **_noise()})

    async def inventory(request: web.Request) -> web.Response:
        if candidate:
            await asyncio.sleep(0.015)
        headers = {"X-Cache": "MISS" if candidate else "HIT"}
        return web.json_response({"warehouses": 3, "units": 1200}, headers=headers)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def banner(request: web.Request) -> web.Response:
        return web.Response(text="Welcome to the demo shop.\n")

    app = web.Application()
    app.router.add_get("/api/users/{id}", user)
    app.router.add_get("/api/products/{id}", product)
    app.router.add_get("/api/orders/{id}", order)
    app.router.add_get("/api/reports/{id}", report)
    app.router.add_get("/api/inventory", inventory)
    app.router.add_get("/api/health", health)
    app.router.add_get("/static/banner.txt", banner)
    return app


class SampleServices:
    """The three services on free loopback ports."""

    def __init__(self) -> None:
        self._runners: list[web.AppRunner] = []
        self.urls: dict[str, str] = {}

    async def start(self) -> dict[str, str]:
        for role in (PRIMARY, SECONDARY, CANDIDATE):
            runner = web.AppRunner(build_service(role), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self._runners.append(runner)
            self.urls[role] = f"http://127.0.0.1:{port}"
        return self.urls

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

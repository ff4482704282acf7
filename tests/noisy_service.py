"""A realistic noisy service, its planted regressions, and a harness that judges a candidate
of it through a real shadowd (tests/test_verdict_noisy.py, benchmarks/verdict_campaign.py).

Ten endpoints, with noise in every instance and every answer, as production services have:
ids at several depths (UUIDs, 16-hex span ids, base62 references), ISO and epoch clocks,
set-like arrays in a random order, floats summed in a random order (jitter at ~1e-16
relative), gzip answers whose bytes differ per instance (compression level, mtime),
per-instance ETags, a CSRF token in an HTML form, a text receipt with a print time, a CSV
export with a generation line, and durations (``took_ms``, ``uptime_s``).

Every instance draws its ids, orders and jitter from its own seeded generator. Clocks are the
host's (the instances are hosts with synchronised clocks; ISO and epoch values carry
milliseconds, so nearly every answer differs), and each instance has its own start time
(``uptime_s`` differs per instance: noise the primary-twice probe cannot see, see
docs/verdict.md). Service time is deterministic per request: a function of the request's
path, the same on every instance; the +8 ms regression adds exactly 8 ms.

The three instances run in one child process (``python tests/noisy_service.py serve``), so
that shadowd and the clients have the parent process to themselves.

``VARIANTS`` are the candidates: ``identical`` and one per planted regression; ``all`` plants
every regression at once, each on its own endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import random
import sys
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from shadowd.config import (
    AdminConfig,
    Config,
    EndpointsConfig,
    IngressConfig,
    Listen,
    NoiseConfig,
    VerdictConfig,
    target_from_url,
)
from shadowd.noise import DIVERGENT

CLOCK_START = 1_795_000_000.0  # the injected clocks start here (late 2026: "near now")
ENDPOINTS = (
    "GET /api/users/{id}",
    "GET /api/orders/{id}",
    "GET /api/search",
    "GET /api/catalog",
    "GET /api/stats",
    "GET /login",
    "GET /receipt/{id}",
    "GET /export.csv",
    "GET /api/health",
    "GET /api/inventory/{sku}",
)
ROLES = ("admin", "billing", "support", "viewer", "auditor")
FACETS = ("color", "size", "brand", "price", "rating", "stock")
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Regression:
    """A planted regression: the candidate's change, and how the verdict must name it."""

    name: str
    endpoint: str
    named_by: tuple[str, ...]  # a reason naming it contains the endpoint and one of these
    planted_fields: tuple[str, ...]  # field paths that may (rightly) be divergent


REGRESSIONS = {
    r.name: r
    for r in (
        # Its answers are made 8 ms later: their millisecond clock moves with them.
        Regression(
            "latency_8ms", "GET /api/users/{id}", ("median latency",), ("$.meta.generated_at",)
        ),
        # A 500's body differs in every field: any field of the endpoint is explained by it.
        Regression("errors_3pct", "GET /api/search", ("candidate errors", "status"), ("*",)),
        Regression(
            "array_element_dropped",
            "GET /api/orders/{id}",
            ("$.items array length changed",),
            ("$.items", "$.items[*].sku", "$.items[*].qty", "$.items[*].price"),
        ),
        Regression(
            "text_line_changed",
            "GET /receipt/{id}",
            ("text:line:Total: <n> EUR",),
            ("text:line:Total: <n> EUR",),
        ),
        Regression("type_change", "GET /api/inventory/{sku}", ("$.stock type",), ("$.stock",)),
        Regression(
            "header_dropped",
            "GET /api/catalog",
            ("header.cache-control missing",),
            ("header.cache-control",),
        ),
    )
}
VARIANTS = ("identical", *REGRESSIONS, "all")


def _fraction(path: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the request's path: the same on every instance and run."""
    return zlib.crc32((salt + path).encode()) / 2**32


def service_time(path: str) -> float:
    """Seconds every instance spends on a request: 0.5 to 2.5 ms, fixed per path."""
    return 0.0005 + 0.002 * _fraction(path, "time")


class NoisyService:
    """One instance: ``seed`` makes its noise, ``planted`` its regressions (candidate)."""

    def __init__(self, seed: int, planted: frozenset[str] = frozenset()) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.planted = planted
        self.requests = 0
        self.started = CLOCK_START - 3600 * (1 + seed % 7)
        self.etag_salt = f"{seed:08x}"

    # -- noise --------------------------------------------------------------------------
    def now(self) -> float:
        return time.time()

    def iso(self) -> str:
        moment = self.now()
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + (
            f".{int(moment * 1000) % 1000:03d}Z"
        )

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def hex16(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def base62(self, n: int = 14) -> str:
        return "".join(self.rng.choice(BASE62) for _ in range(n))

    def shuffled(self, items: tuple[str, ...]) -> list[str]:
        out = list(items)
        self.rng.shuffle(out)
        return out

    def jittered_sum(self, values: list[float]) -> float:
        """A sum in a random order: the same number up to its last bits."""
        order = list(values)
        self.rng.shuffle(order)
        return sum(order)

    def took_ms(self) -> float:
        return round(self.rng.uniform(0.4, 9.0), 3)

    def etag(self, body: bytes) -> str:
        return (
            '"' + hashlib.blake2b(body + self.etag_salt.encode(), digest_size=8).hexdigest() + '"'
        )

    def json(
        self, doc: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        body = orjson.dumps(doc)
        out = {
            "Content-Type": "application/json",
            "X-Request-Id": self.uuid(),
            "ETag": self.etag(body),
            "Cache-Control": "private, max-age=30",
        }
        return web.Response(body=body, status=status, headers={**out, **(headers or {})})

    # -- endpoints ----------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        routes: list[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("/api/users/{id}", self.user),
            ("/api/orders/{id}", self.order),
            ("/api/search", self.search),
            ("/api/catalog", self.catalog),
            ("/api/stats", self.stats),
            ("/login", self.login),
            ("/receipt/{id}", self.receipt),
            ("/export.csv", self.export),
            ("/api/health", self.health),
            ("/api/inventory/{sku}", self.inventory),
        ]
        for path, handler in routes:
            app.router.add_get(path, self._timed(handler))
        return app

    def _timed(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def timed(request: web.Request) -> web.StreamResponse:
            self.requests += 1
            delay = service_time(request.path_qs)
            if "latency_8ms" in self.planted and request.path.startswith("/api/users/"):
                delay += 0.008
            await asyncio.sleep(delay)
            return await handler(request)

        return timed

    async def user(self, request: web.Request) -> web.Response:
        uid = int(request.match_info["id"])
        return self.json(
            {
                "id": uid,
                "name": f"user {uid}",
                "email": f"user{uid}@example.com",
                "roles": self.shuffled(ROLES[: 2 + uid % 4]),
                "request_id": self.uuid(),
                "trace": {"span_id": self.hex16(), "sampled": True},
                "meta": {"generated_at": self.iso(), "took_ms": self.took_ms()},
            }
        )

    async def order(self, request: web.Request) -> web.Response:
        oid = int(request.match_info["id"])
        items = [
            {"sku": f"SKU-{oid % 7}-{i}", "qty": 1 + (oid + i) % 3, "price": 1.1 * (i + 1)}
            for i in range(3 + oid % 3)
        ]
        if "array_element_dropped" in self.planted and _fraction(request.path, "drop") < 0.10:
            items = items[:-1]
        return self.json(
            {
                "id": oid,
                "items": items,
                "total": self.jittered_sum([i["qty"] * i["price"] for i in items]),
                "payment": {"auth": {"ref": self.base62(), "at": self.now()}},
                "served_at": int(self.now()),
            }
        )

    async def search(self, request: web.Request) -> web.Response:
        q = request.query.get("q", "")
        if "errors_3pct" in self.planted and _fraction(request.path_qs, "err") < 0.03:
            return self.json({"error": "internal"}, status=500)
        results = [zlib.crc32(f"{q}{i}".encode()) % 10_000 for i in range(5)]
        return self.json(
            {
                "q": q,
                "results": results,
                "facets": self.shuffled(FACETS),
                "cursor": self.base62(24),
                "took_ms": self.took_ms(),
            }
        )

    async def catalog(self, request: web.Request) -> web.Response:
        doc = {
            "products": [
                {"sku": f"P{i:04d}", "name": f"product {i}", "price": i * 0.5} for i in range(60)
            ],
            "generated_at": self.iso(),
        }
        raw = orjson.dumps(doc)
        # Per-instance compression level and gzip mtime: the bytes differ, the JSON does not.
        body = gzip.compress(raw, compresslevel=1 + self.seed % 9, mtime=int(self.now()))
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "ETag": self.etag(raw),
            "Cache-Control": "public, max-age=300",
            "Vary": "Accept-Encoding",
        }
        if "header_dropped" in self.planted:
            del headers["Cache-Control"]
        return web.Response(body=body, headers=headers)

    async def stats(self, request: web.Request) -> web.Response:
        samples = [0.1 * i + 0.01 * (i % 7) for i in range(50)]
        return self.json(
            {
                "count": len(samples),
                "mean": self.jittered_sum(samples) / len(samples),
                "uptime_s": int(self.now() - self.started),
                "elapsed": self.took_ms(),
            }
        )

    async def login(self, request: web.Request) -> web.Response:
        page = (
            "<!doctype html><html><head><title>Sign in</title></head><body>"
            '<form method="post" action="/login">'
            f'<input type="hidden" name="csrf_token" value="{self.base62(32)}">'
            '<input name="user"><input name="password" type="password">'
            "<button>Sign in</button></form>"
            f"<!-- rendered {self.iso()} -->"
            "</body></html>"
        )
        return web.Response(text=page, content_type="text/html", headers={"ETag": self.etag(b"")})

    async def receipt(self, request: web.Request) -> web.Response:
        rid = int(request.match_info["id"])
        total = 2.5 * (1 + rid % 4) + 10
        if "text_line_changed" in self.planted:
            total += 0.01  # a rounding change in the candidate
        lines = [
            f"RECEIPT {self.hex16()}",
            f"Printed at {self.iso()}",
            f"{1 + rid % 4} x coffee {2.5 * (1 + rid % 4):.2f}",
            "1 x cake 10.00",
            f"Total: {total:.2f} EUR",
            f"Served in {self.took_ms()} ms",
            "Thank you!",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def export(self, request: web.Request) -> web.Response:
        rows = ["sku,name,stock"] + [f"P{i:04d},product {i},{(i * 7) % 13}" for i in range(25)]
        rows.append(f"# generated {self.iso()} by {self.hex16()}")
        return web.Response(text="\n".join(rows) + "\n", content_type="text/csv")

    async def health(self, request: web.Request) -> web.Response:
        return self.json(
            {
                "status": "ok",
                "version": "4.2.0",
                "checked_at": self.iso(),
                "uptime_s": int(self.now() - self.started),
                "checks": {"db": {"ok": True, "latency_ms": self.took_ms()}},
            }
        )

    async def inventory(self, request: web.Request) -> web.Response:
        sku = request.match_info["sku"]
        stock: Any = zlib.crc32(sku.encode()) % 40
        if "type_change" in self.planted:
            stock = str(stock)
        return self.json(
            {
                "sku": sku,
                "stock": stock,
                "warehouses": self.shuffled(("north", "south", "east")),
                "snapshot": {"id": self.uuid(), "at_epoch_ms": int(self.now() * 1000)},
            }
        )


# -- traffic ----------------------------------------------------------------------------
def request_paths(count: int, seed: int) -> list[str]:
    """``count`` request paths, a seeded mix over the ten endpoints."""
    rng = random.Random(seed)
    makers: list[tuple[float, Callable[[], str]]] = [
        (0.14, lambda: f"/api/users/{rng.randrange(500)}"),
        (0.12, lambda: f"/api/orders/{rng.randrange(5000)}"),
        (0.20, lambda: f"/api/search?q={rng.choice('abcdefgh')}{rng.randrange(100_000)}"),
        (0.06, lambda: "/api/catalog"),
        (0.06, lambda: "/api/stats"),
        (0.06, lambda: "/login"),
        (0.12, lambda: f"/receipt/{rng.randrange(5000)}"),
        (0.06, lambda: "/export.csv"),
        (0.06, lambda: "/api/health"),
        (0.12, lambda: f"/api/inventory/SKU{rng.randrange(300)}"),
    ]
    weights = [w for w, _ in makers]
    return [rng.choices(makers, weights)[0][1]() for _ in range(count)]


async def send_paced(url: str, paths: list[str], rate: float) -> None:
    """Open loop at ``rate`` requests a second (each request starts at its planned time)."""
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(path: str) -> None:
            async with session.get(url + path) as answer:
                await answer.read()

        tasks = []
        for i, path in enumerate(paths):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not waiting for an outcome
            tasks.append(asyncio.ensure_future(one(path)))
        await asyncio.gather(*tasks)


async def send_flood(url: str, paths: list[str], clients: int = 32) -> None:
    """``clients`` closed-loop clients, each sending its next request as soon as it can."""
    queue = list(reversed(paths))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while queue:
                path = queue.pop()
                async with session.get(url + path) as answer:
                    await answer.read()

        await asyncio.gather(*(client() for _ in range(clients)))


# -- a run: three instances, a real shadowd, traffic, the verdict -------------------------
@dataclass
class Outcome:
    variant: str
    baseline: str
    verdict: str
    reasons: list[str]
    divergent_fields: list[tuple[str, str]]  # (endpoint, path)
    exchanges: int
    seconds: float

    def named(self, regression: Regression) -> bool:
        return any(
            regression.endpoint in reason and any(word in reason for word in regression.named_by)
            for reason in self.reasons
        )

    def false_blames(self) -> list[tuple[str, str]]:
        """Divergent fields that no planted regression explains: noise blamed."""
        planted = {
            (r.endpoint, path)
            for name, r in REGRESSIONS.items()
            if self.variant in (name, "all")
            for path in r.planted_fields
        }
        return [f for f in self.divergent_fields if f not in planted and (f[0], "*") not in planted]


def shadowd_config(urls: dict[str, str], baseline: str, probe: float) -> Config:
    secondary = urls.get("secondary") if baseline == "secondary" else None
    return Config(
        source="<noisy service>",
        primary=target_from_url("primary", urls["primary"]),
        candidate=target_from_url("candidate", urls["candidate"]),
        secondary=target_from_url("secondary", secondary) if secondary else None,
        ingress=IngressConfig(listen=Listen("127.0.0.1", 0)),
        endpoints=EndpointsConfig(templates=ENDPOINTS),
        noise=NoiseConfig(primary_probe=probe if baseline == "probe" else 0.0),
        admin=AdminConfig(listen=Listen("127.0.0.1", 0)),
        verdict=dataclasses.replace(VerdictConfig(), min_exchanges=500),
    )


async def judge_variant(
    variant: str,
    *,
    baseline: str = "secondary",  # "secondary" | "probe" | "none"
    requests: int = 1500,
    seed: int = 0,
    flood: bool = False,
    rate: float = 250.0,
    probe: float = 0.5,
) -> Outcome:
    """Three instances on loopback, a real shadowd in front, seeded traffic; the verdict."""
    from shadowd.daemon import Daemon  # the daemon, as `shadowd run` embeds it

    daemon: Daemon | None = None
    began = time.perf_counter()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "serve",
        variant,
        str(seed),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            urls = orjson.loads(await child.stdout.readline())
        daemon = Daemon(shadowd_config(urls, baseline, probe))
        await daemon.start()
        host, port = daemon.ingress_address
        paths = request_paths(requests, seed)
        if flood:
            await send_flood(f"http://{host}:{port}", paths)
        else:
            await send_paced(f"http://{host}:{port}", paths, rate)
        # Every copy answered (or timed out) and every finished exchange diffed. A copy that
        # the mirror shed (a bound, a breaker) is counted by the daemon, not waited for: the
        # run then judges fewer exchanges (Outcome.exchanges says how many).
        async with asyncio.timeout(60):
            await daemon.mirror.wait_idle()
        await daemon.diff_stage.wait_idle(30.0)
        ahost, aport = daemon.admin_address
        admin = f"http://{ahost}:{aport}"
        async with aiohttp.ClientSession() as session:
            async with session.get(admin + "/api/v1/verdict") as answer:
                verdict = await answer.json()
            async with session.get(admin + "/api/v1/report") as answer:
                report = await answer.json()
    finally:
        if daemon is not None:
            await daemon.stop(grace=2.0)
        if child.stdin is not None:
            child.stdin.close()  # the child serves until its stdin closes
        try:
            async with asyncio.timeout(10):
                await child.wait()
        except TimeoutError:
            child.kill()
            await child.wait()
    divergent = [
        (e["endpoint"], f["path"])
        for e in report["endpoints"]
        for f in e["fields"]
        if f.get("decision") == DIVERGENT
    ]
    return Outcome(
        variant,
        baseline,
        verdict["verdict"],
        verdict["reasons"],
        divergent,
        int(report["totals"]["exchanges"]),
        time.perf_counter() - began,
    )


async def serve(variant: str, seed: int) -> None:
    """The three instances on loopback ports; their URLs as one JSON line on stdout; until
    stdin closes."""
    planted = frozenset(REGRESSIONS) if variant == "all" else frozenset({variant}) - {"identical"}
    instances = {
        "primary": NoisyService(10 * seed + 1),
        "secondary": NoisyService(10 * seed + 2),
        "candidate": NoisyService(10 * seed + 3, planted),
    }
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}
    for role, instance in instances.items():
        runner = web.AppRunner(instance.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        urls[role] = f"http://127.0.0.1:{port}"
    sys.stdout.write(orjson.dumps(urls).decode() + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # EOF: the parent is done
    for runner in runners:
        await runner.cleanup()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "serve":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(sys.argv[2], int(sys.argv[3])))

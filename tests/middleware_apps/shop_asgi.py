"""A small FastAPI shop on SQLite, with the companion middleware: the service under test.

``SHOP_VARIANT`` picks the release: ``release`` (what production runs), ``nplus1`` (the
same answers, but ``GET /orders/{id}`` loads each item's product with its own query and
``GET /catalog/{id}`` puts a volatile parameter in its cache key), or ``release`` again for
an identical candidate. ``SHOP_DB`` is the SQLite file this process creates and seeds.
Run: ``uvicorn --app-dir tests/middleware_apps shop_asgi:app``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request
from shop_db import ShopStore

from shadowd.middleware import ShadowdASGIMiddleware

store = ShopStore(os.environ["SHOP_DB"], os.environ.get("SHOP_VARIANT", "release"))
app = FastAPI()
app.add_middleware(ShadowdASGIMiddleware)


# Plain ``def`` endpoints run in the thread pool: the middleware's counts must follow there.
@app.get("/orders/{order_id}")
def order(order_id: int) -> dict:
    return store.order(order_id)


@app.get("/catalog/{product_id}")
def catalog(product_id: int, request: Request) -> dict:
    return store.product(product_id, request.headers.get("x-request-id", ""))


@app.get("/customers/{customer_id}")
async def customer(customer_id: int) -> dict:
    return store.customer(customer_id)

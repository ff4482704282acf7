"""The same shop as ``shop_asgi`` as a Flask app (WSGI), for gunicorn:
``gunicorn --chdir tests/middleware_apps shop_wsgi:app``."""

from __future__ import annotations

import os

from flask import Flask, request
from shop_db import ShopStore

from shadowd.middleware import ShadowdWSGIMiddleware

store = ShopStore(os.environ["SHOP_DB"], os.environ.get("SHOP_VARIANT", "release"))
app = Flask(__name__)
app.wsgi_app = ShadowdWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]


@app.get("/orders/<int:order_id>")
def order(order_id: int) -> dict:
    return store.order(order_id)


@app.get("/catalog/<int:product_id>")
def catalog(product_id: int) -> dict:
    return store.product(product_id, request.headers.get("x-request-id", ""))

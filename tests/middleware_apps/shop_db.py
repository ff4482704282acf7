"""The shop's data, on SQLite through SQLAlchemy, shared by the ASGI and the WSGI sample apps.

The planted regressions (``variant="nplus1"``) change the work, never the answer:

- ``order``: the release loads an order, its items with their products (one join) and its
  customer: 3 queries. ``nplus1`` loads the items, then each item's product with a query of
  its own: 2 + items + 1 queries.
- ``product``: the release caches a product under ``product:<id>``. ``nplus1`` adds the
  request id to the key, so every lookup misses and goes to the database.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text

from shadowd.middleware import instrument_sqlalchemy, record_cache

ORDERS = 40
ITEMS_PER_ORDER = 18
PRODUCTS = 60
CUSTOMERS = 10


class ShopStore:
    def __init__(self, path: str, variant: str) -> None:
        self.variant = variant
        self.engine = create_engine(
            f"sqlite:///{path}",
            connect_args={"check_same_thread": False},
            pool_size=8,
        )
        instrument_sqlalchemy(self.engine)
        self._cache: dict[str, dict] = {}
        self._seed()

    def _seed(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS item"))
            conn.execute(text("DROP TABLE IF EXISTS orders"))
            conn.execute(text("DROP TABLE IF EXISTS product"))
            conn.execute(text("DROP TABLE IF EXISTS customer"))
            conn.execute(text("CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT)"))
            conn.execute(
                text("CREATE TABLE product (id INTEGER PRIMARY KEY, name TEXT, price INTEGER)")
            )
            conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER)"))
            conn.execute(
                text("CREATE TABLE item (id INTEGER PRIMARY KEY, orders INTEGER, product INTEGER)")
            )
            conn.execute(
                text("INSERT INTO customer VALUES (:id, :name)"),
                [{"id": i, "name": f"customer {i}"} for i in range(CUSTOMERS)],
            )
            conn.execute(
                text("INSERT INTO product VALUES (:id, :name, :price)"),
                [{"id": i, "name": f"product {i}", "price": 100 + 7 * i} for i in range(PRODUCTS)],
            )
            conn.execute(
                text("INSERT INTO orders VALUES (:id, :customer)"),
                [{"id": i, "customer": i % CUSTOMERS} for i in range(ORDERS)],
            )
            conn.execute(
                text("INSERT INTO item (orders, product) VALUES (:orders, :product)"),
                [
                    {"orders": o, "product": (o * 7 + k) % PRODUCTS}
                    for o in range(ORDERS)
                    for k in range(ITEMS_PER_ORDER)
                ],
            )

    def order(self, order_id: int) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT id, customer FROM orders WHERE id = :id"), {"id": order_id}
            ).one()
            if self.variant == "nplus1":
                product_ids = conn.execute(
                    text("SELECT product FROM item WHERE orders = :id ORDER BY id"), {"id": row.id}
                ).scalars()
                items = []
                for product_id in list(product_ids):
                    product = conn.execute(
                        text("SELECT id, name, price FROM product WHERE id = :id"),
                        {"id": product_id},
                    ).one()
                    items.append(
                        {"product": product.id, "name": product.name, "price": product.price}
                    )
            else:
                items = [
                    {"product": r.id, "name": r.name, "price": r.price}
                    for r in conn.execute(
                        text(
                            "SELECT product.id, product.name, product.price FROM item "
                            "JOIN product ON product.id = item.product "
                            "WHERE item.orders = :id ORDER BY item.id"
                        ),
                        {"id": row.id},
                    )
                ]
            customer = conn.execute(
                text("SELECT name FROM customer WHERE id = :id"), {"id": row.customer}
            ).scalar_one()
        return {
            "id": row.id,
            "customer": customer,
            "items": items,
            "total": sum(i["price"] for i in items),
        }

    def product(self, product_id: int, request_id: str) -> dict:
        key = f"product:{product_id}"
        if self.variant == "nplus1":
            key += f":{request_id}"  # the planted bug: a volatile parameter in the key
        cached = self._cache.get(key)
        record_cache("hit" if cached is not None else "miss")
        if cached is not None:
            return cached
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT id, name, price FROM product WHERE id = :id"), {"id": product_id}
            ).one()
        value = {"id": row.id, "name": row.name, "price": row.price}
        self._cache[key] = value
        return value

    def customer(self, customer_id: int) -> dict:
        with self.engine.connect() as conn:
            name = conn.execute(
                text("SELECT name FROM customer WHERE id = :id"), {"id": customer_id}
            ).scalar_one()
        return {"id": customer_id, "name": name}

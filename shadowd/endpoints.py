"""Naming the endpoint a request belongs to: ``GET /users/{id}``, never a raw path.

Raw paths carry ids, and ids explode the number of endpoints (Diffy #6, #49), so path segments
that look like data are collapsed into placeholders; configured route templates win over the
automatic guess; past ``max`` distinct endpoints, everything new is counted under ``other``.

Ids that do not look like data (``SKU009``, ``ada``, ``red-shoes``) are learned from
cardinality: once a path position under the same method and prefix has taken more than
``LEARN_DISTINCT`` distinct values, it is a parameter, ``{id}``, for every later request.
Memory is bounded: at most ``LEARN_PREFIXES`` prefixes are watched, each remembering at most
``LEARN_DISTINCT + 1`` value hashes; learned parameters survive ``reset()``. The first
segment is never learned (``/users``, ``/orders``... are resources, however many there are).
Until a position is learned, its first values are endpoints of their own; after it, every
request (cached ones too) gets the template.
"""

from __future__ import annotations

import re

from shadowd.bounds import bounded
from shadowd.config import EndpointsConfig

OTHER = "other"

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_HEX = re.compile(r"^[0-9a-fA-F]{16,}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_\-=.~]{24,}$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

_CACHE_LIMIT = 20_000
_CACHE_PATH_CHARS = 512  # 20,000 cached paths of at most this: ~10 MiB, whatever clients send
LEARN_DISTINCT = 20  # more distinct values than this at one position: a parameter
LEARN_PREFIXES = 4096  # (method, prefix) positions watched at most
_LEARNED = "{id}"


def templated_segment(segment: str) -> str:
    """A path segment, or the placeholder standing for it when it looks like data."""
    if not segment:
        return segment
    first = segment[0]
    if (first.isdigit() or first == "-") and _NUMBER.match(segment):
        return "{id}"
    if len(segment) >= 16:
        if _UUID.match(segment):
            return "{uuid}"
        if _HEX.match(segment):
            return "{hex}"
        if _TOKEN.match(segment) and any(c.isdigit() for c in segment):
            return "{token}"
    return segment


def auto_template(path: str) -> str:
    return "/".join(templated_segment(s) for s in path.split("/"))


class _RouteTemplate:
    __slots__ = ("method", "pattern", "template")

    def __init__(self, spec: str) -> None:
        method, _, template = spec.strip().rpartition(" ")
        self.method = method.strip().upper() or None
        self.template = template
        regex = ""
        last = 0
        for m in _PLACEHOLDER.finditer(template):
            regex += re.escape(template[last : m.start()]) + "[^/]+"
            last = m.end()
        regex += re.escape(template[last:])
        self.pattern = re.compile(f"^{regex}/?$")


class EndpointClassifier:
    """Maps (method, path) to a bounded set of endpoint names. Not thread-safe."""

    def __init__(self, config: EndpointsConfig) -> None:
        self._max = config.max
        self._routes = [_RouteTemplate(spec) for spec in config.templates]
        self._known: set[str] = set()
        self._cache: dict[tuple[str, str], str] = {}
        self.overflowed = 0  # distinct endpoints refused because of the cap
        # (method, templated prefix) -> hashes of the values seen right after it, or None
        # once more than LEARN_DISTINCT were: that position is a parameter.
        self._values: dict[tuple[str, str], set[int] | None] = {}

    def classify(self, method: str, path: str) -> str:
        key = (method, path)
        name = self._cache.get(key)
        if name is not None:
            return name
        # Cut: a path can be as long as the ingress admits, and the name is in every series.
        name = bounded(self._name(method, path))
        if name not in self._known:
            if len(self._known) >= self._max:
                self.overflowed += 1
                name = OTHER
            else:
                self._known.add(name)
        if len(path) <= _CACHE_PATH_CHARS:  # a long path is classified again, never kept
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()  # raw paths are unbounded; the cache must not be
            self._cache[key] = name
        return name

    def reset(self) -> None:
        self._known.clear()
        self._cache.clear()
        self.overflowed = 0

    def _name(self, method: str, path: str) -> str:
        for route in self._routes:
            if (route.method is None or route.method == method) and route.pattern.match(path):
                return f"{method} {route.template}"
        return f"{method} {self._learned_template(method, path)}"

    def _learned_template(self, method: str, path: str) -> str:
        """``auto_template``, with the positions learned from cardinality as ``{id}``."""
        out: list[str] = []
        for i, raw in enumerate(path.split("/")):
            segment = templated_segment(raw)
            # a literal segment past the first (top-level segments are resources): a parameter?
            if i > 1 and segment == raw and raw:
                key = (method, "/".join(out))
                values = self._values.get(key, ())
                if values is None:
                    segment = _LEARNED
                elif isinstance(values, tuple):  # () until the first value is learned
                    if len(self._values) < LEARN_PREFIXES:
                        self._values[key] = {hash(raw)}
                else:
                    values.add(hash(raw))
                    if len(values) > LEARN_DISTINCT:
                        self._values[key] = None
                        self._cache.clear()  # paths cached under the old name get the new one
                        segment = _LEARNED
            out.append(segment)
        return "/".join(out)

    @property
    def learned(self) -> list[str]:
        """The learned parameter positions, as ``METHOD /prefix/{id}``."""
        return sorted(
            f"{m} {prefix}/{_LEARNED}" for (m, prefix), v in self._values.items() if v is None
        )

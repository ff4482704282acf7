"""Redacting a record before a byte of it reaches the disk.

Headers and query parameters by name (``shadowd.redact``'s rule plus ``[capture]
redact_headers`` / ``redact_query_params``), JSON body fields by path
(``redact_body_fields``: ``$.password``, ``$.user.ssn``, ``$.items[*].card``). Works on the
record map, never on the live exchange, which the daemon is still using.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from shadowd.config import CaptureConfig
from shadowd.redact import is_secret_name, marker, redact_target

_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[\*\]|\[(\d+)\]|\[\"((?:[^\"\\]|\\.)*)\"\]")


def parse_path(path: str) -> list[str | int | None]:
    """``$.items[*].card`` → ["items", None, "card"] (None: every element or member)."""
    steps: list[str | int | None] = []
    position = 1  # after "$"
    for m in _STEP.finditer(path, position):
        if m.start() != position:
            raise ValueError(f"cannot read JSON path {path!r} at {position}")
        if m.group(1) is not None:
            steps.append(m.group(1))
        elif m.group(2) is not None:
            steps.append(int(m.group(2)))
        elif m.group(3) is not None:
            steps.append(m.group(3))
        else:
            steps.append(None)
        position = m.end()
    if position != len(path):
        raise ValueError(f"cannot read JSON path {path!r} at {position}")
    return steps


def _redact_at(doc: Any, steps: list[str | int | None], key: bytes | None) -> int:
    if not steps:
        return 0
    step, rest = steps[0], steps[1:]
    if isinstance(doc, dict):
        targets = list(doc) if step is None else [step] if step in doc else []
    elif isinstance(doc, list):
        targets = (
            list(range(len(doc)))
            if step is None
            else ([step] if isinstance(step, int) and step < len(doc) else [])
        )
    else:
        return 0
    count = 0
    for name in targets:
        if rest:
            count += _redact_at(doc[name], rest, key)
        else:
            doc[name] = marker(orjson.dumps(doc[name]), key)
            count += 1
    return count


class Redactor:
    def __init__(self, config: CaptureConfig, key: bytes | None = None) -> None:
        self._headers = config.redact_headers
        self._params = config.redact_query_params
        self._paths = [parse_path(p) for p in config.redact_body_fields]
        self._key = key
        self.redacted: dict[str, int] = {}  # what was redacted, by header/param/path name

    def _count(self, what: str, n: int = 1) -> None:
        self.redacted[what] = self.redacted.get(what, 0) + n

    def _redact_headers(self, headers: list[list[bytes]]) -> None:
        for pair in headers:
            name = pair[0].decode("latin-1")
            if is_secret_name(name, self._headers):
                pair[1] = marker(pair[1], self._key).encode()
                self._count(f"header:{name.lower()}")

    def _redact_body(self, body: bytes) -> bytes:
        if not self._paths or not body or body.lstrip()[:1] not in (b"{", b"["):
            return body
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body  # not JSON after all: nothing to find by path
        count = sum(_redact_at(doc, steps, self._key) for steps in self._paths)
        if not count:
            return body
        self._count("body", count)
        return orjson.dumps(doc)

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        """Redact a record map in place (it was built for writing and is not shared)."""
        rq = record["rq"]
        self._redact_headers(rq["h"])
        target = redact_target(rq["t"], self._params, self._key)
        if target != rq["t"]:
            self._count("query")
            rq["t"] = target
        rq["b"] = self._redact_body(rq["b"])
        for answer in record["an"]:
            self._redact_headers(answer["h"])
            answer["b"] = self._redact_body(answer["b"])
        return record

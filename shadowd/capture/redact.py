"""Redacting a record before a byte of it reaches the disk, with ``shadowd.redact``'s policy.

Works on the record map, never on the live exchange, which the daemon is still using. A body
whose ``Content-Encoding`` cannot be undone cannot be checked for secrets, so it is not
written: an answer keeps its size and digest (the record then reads like an answer over the
size limit, compared by digest and size on replay), a request keeps nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

from shadowd.config import CaptureConfig
from shadowd.redact import Redaction, Unreadable, parse_path

__all__ = ["Redactor", "parse_path"]


class Redactor:
    def __init__(self, config: CaptureConfig, key: bytes | None = None) -> None:
        self.policy = Redaction.from_config(config, key=key, count=self._count)
        self.redacted: dict[str, int] = {}  # what was redacted, by header/param/body

    def _count(self, what: str, n: int = 1) -> None:
        self.redacted[what] = self.redacted.get(what, 0) + n

    def _body(self, holder: dict[str, Any], answer: bool) -> None:
        body = holder.get("b") or b""
        try:
            holder["b"] = self.policy.body(bytes(body), holder["h"])
        except Unreadable:
            holder["b"] = b""
            if answer and holder.get("d") is None:
                holder["d"] = hashlib.blake2b(body, digest_size=16).hexdigest()
                holder["z"] = holder.get("z") or len(body)
            self._count("body:unreadable")

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        """Redact a record map in place (it was built for writing and is not shared)."""
        policy = self.policy
        rq = record["rq"]
        # The body first: it is read with the headers as they came (Content-Encoding).
        self._body(rq, answer=False)
        rq["h"] = policy.header_pairs(rq["h"])
        rq["t"] = policy.target(rq["t"])
        for answer in record["an"]:
            self._body(answer, answer=True)
            answer["h"] = policy.header_pairs(answer["h"])
        return record

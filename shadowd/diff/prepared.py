"""One answer as the diff stage reads it, each derived form computed at most once.

An exchange compares the primary's answer twice (with the candidate's, then with the
secondary's). Everything the comparisons derive from one answer (header names in lower case,
its Server-Timing metrics, the body with its Content-Encoding undone, the parsed and
reordered JSON document, the orjson bytes of the document's top-level containers) depends on
that answer and the exchange's rules only, so a ``PreparedAnswer`` computes each of them on
first use and keeps it for the exchange. Nothing is computed that a comparison does not ask
for: identical bodies are still never decoded or parsed.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from shadowd.diff.rules import EMPTY, RuleSet
from shadowd.diff.timing import parse_server_timing
from shadowd.exchange import Answer
from shadowd.upstream.request import HOP_BY_HOP

try:  # brotli is optional: without it a "br" body is compared as it came
    import brotli  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

# Decompressed bodies beyond this are compared by digest: a zip bomb must not eat memory.
_MAX_DECODED = 64 * 1024 * 1024

INVALID = object()  # the document of a JSON body that does not parse
_UNSET = object()

_SERVER_TIMING = b"server-timing"


class PreparedAnswer:
    """An answer and, once asked for, what the diff derives from it (for one exchange:
    ``rules`` are the exchange's, applied to the parsed document)."""

    __slots__ = (
        "_decoded",
        "_doc",
        "_first",
        "_ignored",
        "_media",
        "_named",
        "_timing",
        "_timing_lines",
        "answer",
        "rules",
        "top_bytes",
    )

    def __init__(
        self, answer: Answer, rules: RuleSet = EMPTY, ignored: frozenset[bytes] = frozenset()
    ) -> None:
        self.answer = answer
        self.rules = rules
        self._ignored = ignored  # header names (lower case) left out of named_headers
        self._first: dict[bytes, bytes] | None = None
        self._named: dict[bytes, bytes] = {}
        self._timing_lines: list[tuple[bytes, bytes]] = []
        self._timing: dict[str, dict[str, str | float]] | None = None
        self._decoded: bytes | None = None
        self._media: str | None = None
        self._doc: Any = _UNSET
        # id(top-level container of the document) -> its orjson bytes, or None when orjson
        # cannot write it (shadowd.diff.json_diff._diff_top); the document keeps ids valid.
        self.top_bytes: dict[int, bytes | None] = {}

    # -- headers ---------------------------------------------------------------------------
    def _scan(self) -> dict[bytes, bytes]:
        """One pass over the headers for all that is read of them (lower-casing each name
        once): first values, compared headers, Server-Timing lines."""
        first: dict[bytes, bytes] = {}
        named = self._named
        ignored = self._ignored
        for name, value in self.answer.headers:
            lname = name.lower()
            if lname not in first:
                first[lname] = value
            if lname == _SERVER_TIMING:
                self._timing_lines.append((lname, value))
            if lname in ignored or lname in HOP_BY_HOP:
                continue
            if lname in named:
                named[lname] = named[lname] + b", " + value  # repeated: compare the list
            else:
                named[lname] = value
        self._first = first
        return first

    def header(self, name: bytes) -> bytes | None:
        """``Answer.header``: the first value of a header (``name`` in lower case)."""
        first = self._first
        if first is None:
            first = self._scan()
        return first.get(name)

    def named_headers(self) -> dict[bytes, bytes]:
        """Compared headers by lower-case name, repeated ones joined (the ``ignored`` and
        hop-by-hop ones left out)."""
        if self._first is None:
            self._scan()
        return self._named

    def server_timing(self) -> dict[str, dict[str, str | float]]:
        timing = self._timing
        if timing is None:
            if self._first is None:
                self._scan()
            lines = self._timing_lines
            timing = self._timing = parse_server_timing(lines) if lines else {}
        return timing

    # -- body ------------------------------------------------------------------------------
    def decoded(self) -> bytes:
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = decode(self.answer.body, self.header(b"content-encoding"))
        return decoded

    def media(self) -> str:
        media = self._media
        if media is None:
            value = self.header(b"content-type")
            media = self._media = (
                value.split(b";", 1)[0].strip().lower().decode("latin-1") if value else ""
            )
        return media

    def document(self) -> Any:
        """The decoded body parsed as JSON, the rules' arrays reordered; ``INVALID`` when it
        does not parse. Only asked for bodies that are JSON (``body.is_json``)."""
        doc = self._doc
        if doc is _UNSET:
            try:
                doc = orjson.loads(self.decoded())
            except orjson.JSONDecodeError:
                doc = INVALID
            else:
                if self.rules.array_rules:
                    self.rules.reorder(doc)
            self._doc = doc
        return doc


def decode(body: bytes, encoding: bytes | None) -> bytes:
    """The body with its Content-Encoding undone (compressed bodies would differ byte-wise
    for equal content: Diffy users hit exactly that). Unknown or broken encodings: as is."""
    if not encoding or not body:
        return body
    encoding = encoding.strip().lower()
    try:
        if encoding in (b"gzip", b"x-gzip"):
            return zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body, _MAX_DECODED)
        if encoding == b"deflate":
            try:
                return zlib.decompressobj().decompress(body, _MAX_DECODED)
            except zlib.error:
                return zlib.decompressobj(-zlib.MAX_WBITS).decompress(body, _MAX_DECODED)
        if encoding == b"br" and brotli is not None:
            return brotli.decompress(body)
    except (zlib.error, Exception):  # a broken encoding is the answer's problem, not ours
        return body
    return body

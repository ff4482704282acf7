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

import itertools
import zlib
from typing import Any

import orjson

from shadowd.diff.json_diff import json_bytes
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
_LAYOUT_MEMBERS = 64  # as json_diff._TOP_CHILDREN: wider objects are not worth the dumps


class PreparedAnswer:
    """An answer and, once asked for, what the diff derives from it (for one exchange:
    ``rules`` are the exchange's, applied to the parsed document)."""

    __slots__ = (
        "_decoded",
        "_doc",
        "_first",
        "_layout",
        "_media",
        "_named",
        "_skipped",
        "_timing",
        "_timing_lines",
        "answer",
        "rules",
        "top_bytes",
    )

    def __init__(
        self, answer: Answer, rules: RuleSet = EMPTY, skipped: frozenset[bytes] = HOP_BY_HOP
    ) -> None:
        self.answer = answer
        self.rules = rules
        # Header names (lower case) left out of named_headers: the ignored ones, hop-by-hop ones.
        self._skipped = skipped
        self._first: dict[bytes, bytes] | None = None
        self._named: dict[bytes, bytes] = {}
        self._timing_lines: list[tuple[bytes, bytes]] = []
        self._timing: dict[str, dict[str, str | float]] | None = None
        self._decoded: bytes | None = None
        self._media: str | None = None
        self._doc: Any = _UNSET
        self._layout: Any = _UNSET
        # id(top-level container of the document) -> its orjson bytes, or None when orjson
        # cannot write it (shadowd.diff.json_diff._diff_top); the document keeps ids valid.
        self.top_bytes: dict[int, bytes | None] = {}

    # -- headers ---------------------------------------------------------------------------
    def _scan(self) -> dict[bytes, bytes]:
        """One pass over the headers for all that is read of them (lower-casing each name
        once): first values, compared headers, Server-Timing lines."""
        first: dict[bytes, bytes] = {}
        named = self._named
        skipped = self._skipped
        for name, value in self.answer.headers:
            lname = name.lower()
            if lname not in first:
                first[lname] = value
            if lname == _SERVER_TIMING:
                self._timing_lines.append((lname, value))
            if lname in skipped:
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
        """Compared headers by lower-case name, repeated ones joined (the ``skipped`` ones
        left out)."""
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

    def document(self, reference: PreparedAnswer | None = None) -> Any:
        """The decoded body parsed as JSON, the rules' arrays reordered; ``INVALID`` when it
        does not parse. Only asked for bodies that are JSON (``body.is_json``).

        With a ``reference`` (the answer it is compared with), the members it ends with
        byte for byte are taken from the reference's document instead of parsed again (see
        ``_shared_suffix``): the same values, as the same objects.
        """
        doc = self._doc
        if doc is _UNSET:
            doc = self._shared_suffix(reference) if reference is not None else None
            if doc is None:
                try:
                    doc = orjson.loads(self.decoded())
                except orjson.JSONDecodeError:
                    doc = INVALID
                else:
                    if self.rules.array_rules:
                        self.rules.reorder(doc)
            self._doc = doc
        return doc

    def layout(self) -> list[tuple[int, str]] | None:
        """When the decoded body is exactly orjson's compact form of its document, an object
        of 2 to ``_LAYOUT_MEMBERS`` members: (offset of the comma before it, key) for each
        member after the first. None otherwise (other formatting, arrays reordered by rules,
        a body that is not an object...). The members' bytes are those ``_diff_top``
        compares, so they are memoized in ``top_bytes`` for it."""
        layout = self._layout
        if layout is _UNSET:
            layout = self._layout = self._compute_layout()
        return layout

    def _compute_layout(self) -> list[tuple[int, str]] | None:
        doc = self.document()
        if type(doc) is not dict or not 2 <= len(doc) <= _LAYOUT_MEMBERS:
            return None
        if self.rules.array_rules:
            return None  # the document is reordered: its bytes are not the body's
        memo = self.top_bytes
        parts = []
        for key, value in doc.items():
            kind = type(value)
            if kind is dict or kind is list:
                found = memo.get(id(value), _UNSET)
                if found is _UNSET:
                    found = memo[id(value)] = json_bytes(value)
            else:
                found = orjson.dumps(value)
            if found is None:
                return None
            parts.append(orjson.dumps(key) + b":" + found)
        if b"{" + b",".join(parts) + b"}" != self.decoded():
            return None
        layout = []
        offset = len(parts[0]) + 1  # "{" and the first member: the first comma
        for part, key in zip(parts[1:], itertools.islice(doc, 1, None), strict=True):
            layout.append((offset, key))
            offset += 1 + len(part)
        return layout

    def _shared_suffix(self, reference: PreparedAnswer) -> Any:
        """This document, parsing only what differs from ``reference``'s, or None.

        When the reference's body is compact orjson (``layout``) and this body ends with
        the reference's from the comma before one of its members on, those last members are
        this document's too, with the same values:
        - that comma is outside any string here: inside one, the quote opening the next key
          would close the string and the key's text would follow it, which is not JSON;
        - so it separates members of an object (a key follows it), and the closing brace
          that ends both bodies closes that object: it is the root;
        - the same bytes from the same lexical state are the same tokens, so the same keys
          and values; a key that also appears earlier keeps its first place and takes the
          last value, in orjson as in a dict assignment (tests/test_diff_shared_suffix.py).
        What comes before the comma, closed with a brace, is a valid object with members
        exactly when the whole body is valid JSON (an empty one means "{" then the comma:
        not JSON, left to the whole parse). Parsing only it and sharing the reference's
        values spares the 3.4 KB exchange of benchmarks/diff_bench.py two parses of ~3.2 KB
        and the byte comparisons of its shared containers: 52 µs -> 33 µs.
        """
        layout = reference.layout()
        if layout is None:
            return None
        body = self.decoded()
        ref_body = reference.decoded()
        ref_view = memoryview(ref_body)
        first = next(
            (i for i, (comma, _) in enumerate(layout) if body.endswith(ref_view[comma:])), None
        )
        if first is None:
            return None
        comma = layout[first][0]
        cut = len(body) - (len(ref_body) - comma)
        try:
            doc = orjson.loads(body[:cut] + b"}")
        except orjson.JSONDecodeError:
            return INVALID
        if type(doc) is not dict or not doc:  # "{" alone: the body is "{,...": parse it all
            return None
        ref_doc = reference.document()
        for _, key in layout[first:]:
            doc[key] = ref_doc[key]
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

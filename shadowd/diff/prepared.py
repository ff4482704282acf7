"""One answer as the diff stage reads it, each derived form computed at most once.

An exchange compares the primary's answer twice (with the candidate's, then with the
secondary's). Everything the comparisons derive from one answer (header names in lower case,
its Server-Timing metrics, the body with its Content-Encoding undone, the parsed and
reordered JSON document) depends on that answer and the exchange's rules only, so a
``PreparedAnswer`` computes each of them on first use and keeps it for the exchange. Nothing
is computed that a comparison does not ask for: identical bodies are still never decoded or
parsed. And a candidate's or secondary's document parses only what precedes the members its
body shares, byte for byte, with the end of the primary's (``_shared_suffix``): answers of
one service to one request mostly differ in a few leading fields (ids, clocks).
"""

from __future__ import annotations

import itertools
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
_SHARED_MEMBERS = 64  # wider roots are parsed whole (a dumps per shared member to check)


class PreparedAnswer:
    """An answer and, once asked for, what the diff derives from it (for one exchange:
    ``rules`` are the exchange's, applied to the parsed document)."""

    __slots__ = (
        "_decoded",
        "_doc",
        "_first",
        "_media",
        "_named",
        "_skipped",
        "_timing",
        "_timing_lines",
        "answer",
        "checked_tails",
        "rules",
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
        # start offset in the body -> number of last members checked to be orjson's bytes
        # from there on (see _shared_suffix)
        self.checked_tails: dict[int, int] = {}

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
        if first is None:  # headers not compared (or equal): a lookup costs less than _scan
            return self.answer.header(name)
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
        does not parse. Only asked for bodies that are JSON (``body._is_json``).

        With a ``reference`` (the answer it is compared with), the last members it has in
        common with it, byte for byte, are taken from the reference's document instead of
        parsed again (see ``_shared_suffix``): the same values, as the same objects.
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

    def _shared_suffix(self, reference: PreparedAnswer) -> Any:
        """This document, parsing only what precedes the members it shares with
        ``reference``'s, or None (then it is parsed whole).

        Let T be the bytes "," + the reference's last members in orjson's compact form +
        "}". When this body ends with T, its document ends with those members, with the same
        values:
        - T's comma is outside any string here: inside one, the quote opening the next key
          would close the string and the key's text would follow it, which is not JSON;
        - so it separates members of an object (a key follows it), and the closing brace
          that ends both T and the body closes that object: it is the root;
        - the same bytes from the same lexical state are the same tokens, so the same keys
          and values (orjson reads its own bytes back exactly); a key that also appears
          earlier keeps its first place and takes the last value, in orjson as in a dict
          assignment (tests/test_diff_shared_suffix.py checks both).
        What precedes T, closed with a brace, is a valid object with members exactly when
        the whole body is valid JSON (an empty one means "{" then T's comma: not JSON, left
        to the whole parse). So that is all that is parsed; the shared members are the
        reference's own objects (which json_diff._diff then skips by identity).

        T is looked for in the reference's body, where a compact-JSON service wrote it, from
        the last member backwards, then checked against orjson's bytes of those members
        (once per exchange, ``checked_tails``): the reference's formatting never decides
        anything, it only finds T cheaply. On the 3.4 KB exchange of benchmarks/diff_bench.py the
        candidate and the secondary parse ~150 B each instead of 3.4 KB: ~52 µs -> ~34 µs.
        """
        ref_doc = reference.document()
        if type(ref_doc) is not dict or not 2 <= len(ref_doc) <= _SHARED_MEMBERS:
            return None
        if self.rules.array_rules:
            return None  # documents are reordered after parsing: not their bytes
        body = self.decoded()
        ref_body = reference.decoded()
        ref_view = memoryview(ref_body)
        end = len(ref_body)
        start = -1  # where T starts in the reference's body
        shared = 0  # how many members T holds
        for key in reversed(ref_doc):
            if shared == len(ref_doc) - 1:
                break  # the first member has no comma before it
            at = ref_body.rfind(b"," + _key_bytes(key) + b":", 0, end)
            if at < 0 or not body.endswith(ref_view[at:]):
                break
            start, end, shared = at, at, shared + 1
        if not shared:
            return None
        if reference.checked_tails.get(start) != shared:  # the secondary finds the same
            if not _is_orjson_tail(reference, start, shared):
                return None  # not orjson's form there (or T was found inside a value)
            reference.checked_tails[start] = shared
        try:
            doc = orjson.loads(body[: len(body) - (len(ref_body) - start)] + b"}")
        except orjson.JSONDecodeError:
            return INVALID
        if type(doc) is not dict or not doc:
            return None
        for key in itertools.islice(ref_doc, len(ref_doc) - shared, None):
            doc[key] = ref_doc[key]
        return doc


def _is_orjson_tail(reference: PreparedAnswer, start: int, shared: int) -> bool:
    """The reference's body from ``start`` on is "," + its document's last ``shared``
    members in orjson's compact form + "}"."""
    ref_doc = reference.document()
    parts = []
    for key in itertools.islice(reversed(ref_doc), shared):
        try:
            parts.append(_key_bytes(key) + b":" + orjson.dumps(ref_doc[key]))
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
            return False
    parts.reverse()
    tail = b"," + b",".join(parts) + b"}"
    body = reference.decoded()
    # endswith is a memcmp; memoryview == bytes compares item by item (6 µs for 3.4 KB).
    return len(body) - start == len(tail) and body.endswith(tail)


_KEY_BYTES: dict[str, bytes] = {}
_KEY_BYTES_LIMIT = 50_000


def _key_bytes(key: str) -> bytes:
    """A key as orjson writes it (cached: keys repeat)."""
    found = _KEY_BYTES.get(key)
    if found is None:
        if len(_KEY_BYTES) >= _KEY_BYTES_LIMIT:
            _KEY_BYTES.clear()
        found = _KEY_BYTES[key] = orjson.dumps(key)
    return found


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

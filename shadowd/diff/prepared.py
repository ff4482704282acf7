"""One answer as the diff stage reads it, each derived form computed at most once.

An exchange compares the primary's answer twice (with the candidate's, then with the
secondary's). Everything the comparisons derive from one answer (header names in lower case,
its Server-Timing metrics, the body with its Content-Encoding undone, the parsed and
reordered JSON document) depends on that answer and the exchange's rules only, so a
``PreparedAnswer`` computes each of them on first use and keeps it for the exchange. Nothing
is computed that a comparison does not ask for: identical bodies are still never decoded or
parsed. And a candidate's or secondary's document parses only what lies between the members
its body shares, byte for byte, with the start and the end of the primary's
(``_shared_parse``): answers of one service to one request mostly differ in a few fields
(ids, clocks).
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from shadowd.diff.rules import EMPTY, RuleSet
from shadowd.diff.timing import timing_of
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

_SHARED_MEMBERS = 64  # wider roots are parsed whole (a dumps per shared member to check)
# Sharing fewer bytes than this costs more than it saves: finding and checking what is
# shared, building the document, is ~2-3 µs, and orjson parses ~1 KB in ~3 µs. Measured on
# diff_bench's single pairs: 200 B one changed 7.3 -> 11.2 µs and 4 KB one changed (only
# its first ~100 B shared) 33 -> 40 µs when sharing whatever could be.
_MIN_SHARED = 1024
_SERVER_TIMING = b"server-timing"


class PreparedAnswer:
    """An answer and, once asked for, what the diff derives from it (for one exchange:
    ``rules`` are the exchange's, applied to the parsed document)."""

    __slots__ = (
        "_decoded",
        "_doc",
        "_encoding",
        "_first",
        "_media",
        "_named",
        "_skipped",
        "answer",
        "checked",
        "limit",
        "rules",
        "tail",
    )

    def __init__(
        self,
        answer: Answer,
        rules: RuleSet = EMPTY,
        skipped: frozenset[bytes] = HOP_BY_HOP,
        limit: int = _MAX_DECODED,
        tail: SharedTail | None = None,
    ) -> None:
        self.answer = answer
        self.rules = rules
        # The endpoint's shared tail (see SharedTail): read, and learned, by document().
        self.tail = tail
        self.limit = limit  # decoded bytes at most ([diff] max_body_bytes)
        # Header names (lower case) left out of named_headers: the ignored ones, hop-by-hop ones.
        self._skipped = skipped
        self._first: dict[bytes, bytes] | None = None
        self._decoded: bytes | None = None
        # None: Content-Type and Content-Encoding not read yet (_body_headers sets both)
        self._media: str | None = None
        self._doc: Any = _UNSET
        # ("head" or "tail", offset, members) -> whether the body holds those members in
        # orjson's bytes there (see _shared_parse); made on first use (a reference's only)
        self.checked: dict[tuple[str, int, int], bool] | None = None

    # -- headers ---------------------------------------------------------------------------
    def _scan(self) -> dict[bytes, bytes]:
        """One pass over the headers for all that is read of them (lower-casing each name
        once): first values, compared headers."""
        first: dict[bytes, bytes] = {}
        named: dict[bytes, bytes] = {}
        self._named = named
        skipped = self._skipped
        for name, value in self.answer.headers:
            lname = name.lower()
            if lname not in first:
                first[lname] = value
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
            # Answer.header, lower-casing only the names of the right length
            size = len(name)
            for key, value in self.answer.headers:
                if len(key) == size and key.lower() == name:
                    return value
            return None
        return first.get(name)

    def named_headers(self) -> dict[bytes, bytes]:
        """Compared headers by lower-case name, repeated ones joined (the ``skipped`` ones
        left out)."""
        if self._first is None:
            self._scan()
        return self._named

    def server_timing(self) -> dict[str, dict[str, str | float]]:
        return timing_of(self.answer)

    # -- body ------------------------------------------------------------------------------
    def _body_headers(self) -> str:
        """Read Content-Encoding and Content-Type (first values) in one pass, lower-casing
        only names of their lengths: every body compared needs both. Answers the media.

        The same pass tells whether the answer has a Server-Timing: when it has none, its
        (empty) metrics are set here, and the statistics read them without a pass of their
        own (``timing_of``)."""
        first = self._first
        if first is not None:
            encoding, content_type = first.get(b"content-encoding"), first.get(b"content-type")
        else:
            encoding = content_type = None
            timed = False
            answer = self.answer
            for key, value in answer.headers:
                size = len(key)
                if size == 12:
                    # the usual spelling first: lower() makes a new object
                    if content_type is None and (
                        key == b"Content-Type" or key.lower() == b"content-type"
                    ):
                        content_type = value
                elif size == 16:
                    if encoding is None and key.lower() == b"content-encoding":
                        encoding = value
                elif size == 13 and key.lower() == _SERVER_TIMING:
                    timed = True
            if not timed and answer.parsed_timing is None:
                answer.parsed_timing = {}  # what timing_of finds for no Server-Timing
        self._encoding = encoding
        media = self._media = media_type(content_type) if content_type else ""
        return media

    def read_as(self, reference: PreparedAnswer) -> None:
        """This answer's headers equal ``reference``'s: what is read of them (media type,
        Content-Encoding, Server-Timing) is the reference's, read once for both. Answers to
        one request mostly carry the same headers."""
        if self._media is None and self._first is None:
            self._media = reference.media()
            self._encoding = reference._encoding
            timing = reference.answer.parsed_timing
            if timing is not None and self.answer.parsed_timing is None:
                self.answer.parsed_timing = timing  # equal headers parse to equal metrics

    def decoded(self) -> bytes:
        decoded = self._decoded
        if decoded is None:
            if self._media is None:
                self._body_headers()
            encoding = self._encoding
            body = self.answer.body
            decoded = self._decoded = decode(body, encoding, self.limit) if encoding else body
        return decoded

    def media(self) -> str:
        media = self._media
        if media is None:
            media = self._body_headers()
        return media

    def document(self, reference: PreparedAnswer | None = None) -> Any:
        """The decoded body parsed as JSON, the rules' arrays reordered; ``INVALID`` when it
        does not parse. Only asked for bodies that are JSON (``body._is_json``).

        With a ``reference`` (the answer it is compared with), the last members it has in
        common with it, byte for byte, are taken from the reference's document instead of
        parsed again (see ``_shared_parse``): the same values, as the same objects.
        """
        doc = self._doc
        if doc is _UNSET:
            doc = None
            tail = self.tail if not self.rules.array_rules else None
            if tail is not None:
                doc = tail.document(self.decoded())
            if doc is None and reference is not None:
                doc = self._shared_parse(reference)
                if doc is None and tail is not None:
                    doc = self._learn_tail(reference, tail)
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

    def _shared_parse(self, reference: PreparedAnswer) -> Any:
        """This document, parsing only what lies between the members it shares with
        ``reference``'s at its start and at its end, or None (then it is parsed whole).

        Let H be "{" + the reference's first members in orjson's compact form + ",", and T
        be "," + its last members in that form + "}". When this body starts with H and/or
        ends with T, its document has those members, with the same values:
        - H is read from the start of the body as in the reference's: the same tokens;
        - T's comma is outside any string here (inside one, the quote opening the next key
          would close the string and the key's text would follow it, which is not JSON), so
          it separates members of an object (a key follows it), and the closing brace that
          ends both T and the body closes that object: it is the root;
        - the same bytes from the same lexical state are the same tokens, so the same keys
          and values (orjson reads its own bytes back exactly); a key that appears twice
          keeps its first place and takes its last value, in orjson as in a dict assignment
          (tests/test_diff_shared_suffix.py checks both).
        What lies between, as an object ("{" + it + "}"), is valid with members exactly when
        the whole body is valid JSON (an empty one means H's comma then T's, or "{" then
        T's comma: not JSON, left to the whole parse). So that is all that is parsed; the
        shared members are the reference's own objects (json_diff._diff skips them by
        identity), assigned in body order: H's, the parsed ones, T's.

        H and T are looked for in the reference's body, where a compact-JSON service wrote
        them, then checked against orjson's bytes of those members (once per exchange,
        ``checked``): the reference's formatting never decides anything, it only finds H
        and T cheaply. On the 3.4 KB exchanges of benchmarks/diff_bench.py the candidate and
        the secondary parse ~150 B each instead of 3.4 KB: ~52-64 µs -> ~34 µs.
        """
        ref_doc = reference.document()
        if type(ref_doc) is not dict or not 2 <= len(ref_doc) <= _SHARED_MEMBERS:
            return None
        if self.rules.array_rules:
            return None  # documents are reordered after parsing: not their bytes
        body = self.decoded()
        if len(body) < _MIN_SHARED:
            return None
        ref_body = reference.decoded()
        ref_view = memoryview(ref_body)
        keys = list(ref_doc)
        n = len(keys)
        # T: from the last member backwards, while this body ends with the bytes from the
        # comma before it (the first member has no comma before it).
        tail = 0
        tail_at = len(ref_body)  # where T starts in the reference's body
        while tail < n - 1:
            at = ref_body.rfind(b"," + _key_bytes(keys[n - 1 - tail]) + b":", 0, tail_at)
            if at < 0 or not body.endswith(ref_view[at:]):
                break
            tail, tail_at = tail + 1, at
        cut = len(body) - (len(ref_body) - tail_at) if tail else len(body)  # T's comma here
        # H: from the first member on, while this body starts with the bytes up to the comma
        # after it; T's members and one byte of something else stay out of it.
        head = 0
        head_end = 1  # bytes of the reference's body in H
        while head < n - 1 - tail:
            at = ref_body.find(b"," + _key_bytes(keys[head + 1]) + b":", head_end)
            if at < 0 or at + 1 >= cut or not body.startswith(ref_view[: at + 1]):
                break
            head, head_end = head + 1, at + 1
        if head_end + len(ref_body) - tail_at < _MIN_SHARED:
            return None  # not worth checking
        if tail and not reference._checked("tail", tail_at, tail):
            tail, tail_at, cut = 0, len(ref_body), len(body)  # H stays short of the new cut
        if head and not reference._checked("head", head_end, head):
            head, head_end = 0, 1
        if not head and not tail:
            return None
        if head:
            text = b"{" + body[head_end:cut] + (b"}" if tail else b"")
        else:
            text = body[:cut] + b"}"
        try:
            middle = orjson.loads(text)
        except orjson.JSONDecodeError:
            return INVALID
        if type(middle) is not dict or not middle:
            return None
        doc = {key: ref_doc[key] for key in keys[:head]}
        doc.update(middle)
        members = {key: ref_doc[key] for key in keys[n - tail :]} if tail else None
        if members:
            doc.update(members)
            if self.tail is not None:
                # T holds exactly these members in orjson's bytes, which orjson reads back
                # as they are: what SharedTail.learn would verify by parsing T again.
                self.tail.keep(ref_body[tail_at:], members)
        return doc

    def _learn_tail(self, reference: PreparedAnswer, tail: SharedTail) -> Any:
        """This document through a shared tail learned from ``reference``'s body and this
        one (in any JSON formatting), or None.

        The tail is the longest end the two bodies share that starts at a member separator
        of the reference's root object (its last members: a "," before one of its keys,
        whitespace allowed, found by searching the key's bytes). Where it is looked for
        decides nothing: ``SharedTail.learn`` parses what is found, and every document is
        built from it only under the conditions ``SharedTail`` states.
        """
        ref_doc = reference.document()
        if type(ref_doc) is not dict or len(ref_doc) < 2:
            return None
        body = self.decoded()
        if len(body) < _MIN_SHARED:
            return None
        ref_body = reference.decoded()
        ref_view = memoryview(ref_body)
        keys = list(ref_doc)
        start = len(ref_body)  # where the shared end found so far starts (its comma)
        for key in reversed(keys[1:]):  # the first member has no comma before it
            at = ref_body.rfind(_key_bytes(key), 0, start)
            if at < 0:
                break
            comma = at - 1
            while comma > 0 and ref_body[comma] in _WHITESPACE:
                comma -= 1
            if comma <= 0 or ref_body[comma] != _COMMA or not body.endswith(ref_view[comma:]):
                break
            start = comma
        if len(ref_body) - start < _MIN_SHARED or not tail.learn(ref_body[start:]):
            return None
        # The reference's document again, on the tail (what it already holds, re-parsed
        # short of the tail): its members are then the very objects this one and the next
        # answers hold, which the diff skips by identity instead of comparing them.
        rebuilt = tail.document(ref_body)
        if rebuilt is not None:
            reference._doc = rebuilt
        return tail.document(body)

    def _checked(self, end: str, offset: int, members: int) -> bool:
        """This (reference's) body holds, before ``offset`` (``end`` "head": "{" + members +
        ",") or from it on ("tail": "," + members + "}"), its document's first or last
        ``members`` members in orjson's compact form. Memoized: the secondary asks again."""
        checked = self.checked
        if checked is None:
            checked = self.checked = {}
        found = checked.get((end, offset, members))
        if found is None:
            found = checked[end, offset, members] = self._is_orjson(end, offset, members)
        return found

    def _is_orjson(self, end: str, offset: int, members: int) -> bool:
        doc = self.document()
        keys = list(doc)
        chosen = keys[:members] if end == "head" else keys[len(keys) - members :]
        try:
            parts = b",".join(_key_bytes(key) + b":" + orjson.dumps(doc[key]) for key in chosen)
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
            return False
        body = self.decoded()
        # startswith/endswith are a memcmp; memoryview == bytes compares item by item (6 µs
        # for 3.4 KB).
        if end == "head":
            return offset == len(parts) + 2 and body.startswith(b"{" + parts + b",")
        return len(body) - offset == len(parts) + 2 and body.endswith(b"," + parts + b"}")


_WHITESPACE = frozenset(b" \t\r\n")
_COMMA = ord(",")


class SharedTail:
    """The end an endpoint's answers share, parsed once: ``text``, a JSON root object's
    last members from the comma before them to the end of the body (closing brace and
    trailing whitespace included), and ``members``, what they parse to.

    ``text`` is kept only once ``"{" + text[1:]`` parsed to a non-empty object (``learn``):
    from the state "a key is expected in the object" these bytes are those members, then
    the end of that object. A body that ends with ``text`` and whose rest, closed with a
    brace, parses to a non-empty object, is therefore valid JSON: that rest puts the lexer
    after a complete member of the root object, where the comma is a member separator and
    a key is expected, the state ``text`` was checked in; the same bytes from the same state
    are the same tokens. Its document is the rest's members, then ``members``: a key that
    appears twice keeps its first place and takes its last value, as in orjson's own parse
    (tests/test_diff_shared_suffix.py). So ``document`` parses only the rest. When the rest
    does not parse that way (the comma is nested, or in a string), ``document`` answers None
    and the body is parsed whole: a wrong guess costs one parse of the rest, never a wrong
    document.

    ``members`` are shared: the documents of every answer that ends with ``text`` hold the
    same objects, which ``json_diff`` skips by identity. Nothing mutates a parsed document
    (a rule that reorders arrays turns sharing off: ``PreparedAnswer.document``).

    Answers of one service to one request mostly differ in a few fields near the start
    (ids, clocks); answers to the same resource share the rest across requests too, so the
    tail is kept per endpoint (``shared_tail``) and the primary's own answer is parsed from
    it as well. One that ends otherwise is parsed whole, and a new tail is learned from it
    and the answer it is compared with (one extra parse of the shared end).
    """

    __slots__ = ("members", "size", "text")

    def __init__(self) -> None:
        self.text: bytes | None = None
        self.size = 0  # len(text), 0 without one: read for every answer parsed
        self.members: dict[str, Any] = {}

    def learn(self, text: bytes) -> bool:
        """Keep ``text`` (it starts with a comma) if it parses as stated above."""
        if text == self.text:
            return True
        try:
            members = orjson.loads(b"{" + text[1:])
        except orjson.JSONDecodeError:
            return False
        if type(members) is not dict or not members:
            return False
        self.keep(text, members)
        return True

    def keep(self, text: bytes, members: dict[str, Any]) -> None:
        """``text`` and what it was checked to parse to."""
        if text != self.text:
            global _kept_bytes
            _kept_bytes += len(text) - len(self.text or b"")
            self.text, self.members, self.size = text, members, len(text)

    def forget(self) -> None:
        global _kept_bytes
        _kept_bytes -= len(self.text or b"")
        self.text, self.members, self.size = None, {}, 0

    def document(self, body: bytes) -> Any:
        """``body``'s document built on the tail, or None (then it is parsed whole)."""
        text = self.text
        cut = len(body) - self.size
        if text is None or cut <= 0 or not body.endswith(text):
            return None
        try:
            doc = orjson.loads(body[:cut] + b"}")
        except orjson.JSONDecodeError:
            return None
        if type(doc) is not dict or not doc:
            return None
        doc.update(self.members)
        return doc


_TAILS: dict[str, SharedTail] = {}
_TAILS_LIMIT = 4096  # endpoints remembered (the classifier caps them far below this)
TAIL_KEPT_BYTES = 64 * 1024  # longer tails serve their own exchange only
# Bytes of tail text kept over every endpoint: past it every tail is dropped and learned
# again. Parsed, JSON takes several times its text's size: this bounds the cache to a few
# tens of MB however many large-bodied endpoints there are.
TAILS_BUDGET_BYTES = 4 * 1024 * 1024
_kept_bytes = 0


def shared_tail(endpoint: str) -> SharedTail:
    """The shared tail of an endpoint's answers (one per endpoint name, in this process)."""
    tail = _TAILS.get(endpoint)
    if tail is None or _kept_bytes > TAILS_BUDGET_BYTES:
        if len(_TAILS) >= _TAILS_LIMIT or _kept_bytes > TAILS_BUDGET_BYTES:
            forget_tails()
        tail = _TAILS[endpoint] = SharedTail()
    return tail


def forget_tails() -> None:
    """Drop every endpoint's tail (the next exchanges learn theirs again)."""
    global _kept_bytes
    for tail in _TAILS.values():
        tail.forget()
    _TAILS.clear()
    _kept_bytes = 0


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


_MEDIA: dict[bytes, str] = {}
_MEDIA_LIMIT = 256  # distinct Content-Type values remembered (a service uses a handful)


def media_type(content_type: bytes) -> str:
    """The media type of a Content-Type value, lower case, parameters left out (cached by
    the value: every answer compared reads one, and a service sends a few)."""
    media = _MEDIA.get(content_type)
    if media is None:
        media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        if len(_MEDIA) >= _MEDIA_LIMIT:
            _MEDIA.clear()
        _MEDIA[content_type] = media
    return media


def decode(body: bytes, encoding: bytes | None, limit: int = _MAX_DECODED) -> bytes:
    """The body with its Content-Encoding undone (compressed bodies would differ byte-wise
    for equal content: Diffy users hit exactly that). Unknown or broken encodings, and
    bodies that would decode to more than ``limit`` bytes (``[diff] max_body_bytes``; a
    decompression bomb from a candidate among them), are compared as they came: decoding
    stops at the limit, so a bomb costs at most ``limit`` bytes of memory."""
    if not encoding or not body:
        return body
    encoding = encoding.strip().lower()
    try:
        if encoding in (b"gzip", b"x-gzip"):
            return _inflate(zlib.decompressobj(zlib.MAX_WBITS | 32), body, limit)
        if encoding == b"deflate":
            try:
                return _inflate(zlib.decompressobj(), body, limit)
            except zlib.error:
                return _inflate(zlib.decompressobj(-zlib.MAX_WBITS), body, limit)
        if encoding == b"br" and brotli is not None:
            return _unbrotli(body, limit)
    except _TooLarge:
        return body
    except (zlib.error, Exception):  # a broken encoding is the answer's problem, not ours
        return body
    return body


class _TooLarge(Exception):
    pass


def _inflate(inflater: Any, body: bytes, limit: int) -> bytes:
    out: bytes = inflater.decompress(body, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise _TooLarge
    return out


def _unbrotli(body: bytes, limit: int) -> bytes:
    # brotli has no output bound in every version: fed in small pieces, and the output
    # checked after each, a bomb stops within one piece's expansion of the limit.
    decompressor = brotli.Decompressor()
    out = bytearray()
    for start in range(0, len(body), 256):
        out += decompressor.process(body[start : start + 256])
        if len(out) > limit:
            raise _TooLarge
    return bytes(out)

"""Keeping secrets out of everything shadowd keeps or shows: the one redaction policy.

Capture files, samples (and so the dashboard and ``shadowd report --samples``), the access
log and replay's report all redact through ``Redaction``; no surface has a rule of its own.
A value is hidden when its *name* says it is a secret, or when the operator listed it:

- headers: ``SECRET_HEADERS``, any name matching ``_SECRET_NAME`` or containing ``key``
  (``X-Api-Key``, ``X-Signing-Key``), and ``[capture] redact_headers``;
- query parameters (split on ``&`` and ``;``, names percent-decoded): ``_SECRET_NAME``, a
  ``key`` word (``?key=``, ``signingKey``), and ``[capture] redact_query_params``;
- ``application/x-www-form-urlencoded`` body fields: ``_SECRET_NAME``;
- JSON body fields: any member, at any depth, whose name matches ``_SECRET_NAME`` (a bare
  ``key`` member is left alone: JSON documents use it for data), plus the paths of
  ``[capture] redact_body_fields``;
- diff values in samples: at a path under a secret-named member or a listed path, or at a
  secret header's ``header.<name>``.

Bodies are read after undoing their ``Content-Encoding`` (gzip, deflate, br when the
``brotli`` module is installed): a compressed body is redacted like a plain one and stored
re-compressed with the same encoding, so the record still says what crossed the wire. A body
whose encoding cannot be undone cannot be checked, so it is not kept (``Unreadable``).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import os
import re
import zlib
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, unquote_plus

import orjson

from shadowd.exchange import Headers

try:  # optional, as in the diff: without it a "br" body cannot be read, so is not kept
    import brotli
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

MARKER = "[redacted]"
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "set-cookie2",
        "x-api-key",
        "api-key",
        "apikey",
        "x-auth-token",
        "x-csrf-token",
        "x-xsrf-token",
        "x-amz-security-token",
    }
)
_SECRET_NAME = re.compile(
    r"token|secret|passw|pwd|passphrase|api[-_]?key|apikey|private[-_]?key|session|"
    r"credential|signature|cookie|authorization",
    re.IGNORECASE,
)
# Literal pieces of _SECRET_NAME: every name it matches contains one of them. A regex search
# with that alternation costs ~200 µs on 3 KB; lower() and these substring searches ~3 µs.
_SECRET_PIECES = (
    b"token",
    b"secret",
    b"passw",
    b"pwd",
    b"passphrase",
    b"apikey",
    b"api-key",
    b"api_key",
    b"private",
    b"session",
    b"credential",
    b"signature",
    b"cookie",
    b"authorization",
)
_WORDS = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
# A decoded body larger than this cannot be checked in reasonable time: not kept.
MAX_DECODED = 64 * 1024 * 1024


def is_secret_name(name: str, extra: frozenset[str] = frozenset()) -> bool:
    """A header name whose value must never be shown or stored. Any name containing ``key``
    counts: few headers carry it that are not keys (``Idempotency-Key`` is hidden too)."""
    lname = name.lower()
    return (
        lname in SECRET_HEADERS
        or lname in extra
        or bool(_SECRET_NAME.search(lname))
        or "key" in lname
    )


def is_secret_param(name: str, extra: frozenset[str] = frozenset()) -> bool:
    """A query parameter name whose value must never be shown or stored: ``key`` only as a
    word (``?key=``, ``signingKey``; not ``?keyword=``, which is data)."""
    lname = name.lower()
    if lname in extra or _SECRET_NAME.search(lname):
        return True
    return "key" in _WORDS.split(_CAMEL.sub(r"\1 \2", name).lower())


def is_secret_field(name: str) -> bool:
    """A JSON member or form field name whose value must never be shown or stored (a bare
    ``key`` member is data in many documents, so not by that word alone)."""
    return bool(_SECRET_NAME.search(name))


def marker(value: str | bytes, key: bytes | None = None) -> str:
    """The stand-in for a secret: a fixed marker, or with a key (``$SHADOWD_REDACT_KEY``) a
    keyed hash, so that equal secrets stay comparable without being readable."""
    if key is None:
        return MARKER
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return f"[redacted:{hmac.new(key, raw, hashlib.sha256).hexdigest()[:12]}]"


def redaction_key() -> bytes | None:
    key = os.environ.get("SHADOWD_REDACT_KEY")
    return key.encode() if key else None


# -- JSON paths -------------------------------------------------------------------------------
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[\*\]|\[(\d+)\]|\[\"((?:[^\"\\]|\\.)*)\"\]")

Steps = list[str | int | None]


def parse_path(path: str) -> Steps:
    """``$.items[*].card`` → ["items", None, "card"] (None: every element or member)."""
    if not path.startswith("$"):
        raise ValueError(f"cannot read JSON path {path!r} at 0")
    steps: Steps = []
    position = 1  # after "$"
    for m in _STEP.finditer(path, position):
        if m.start() != position:
            raise ValueError(f"cannot read JSON path {path!r} at {position}")
        if m.group(1) is not None:
            steps.append(m.group(1))
        elif m.group(2) is not None:
            steps.append(int(m.group(2)))
        elif m.group(3) is not None:
            try:  # the diff writes such keys with JSON escapes
                steps.append(orjson.loads(f'"{m.group(3)}"'))
            except orjson.JSONDecodeError:
                steps.append(m.group(3))
        else:
            steps.append(None)
        position = m.end()
    if position != len(path):
        raise ValueError(f"cannot read JSON path {path!r} at {position}")
    return steps


def _covers(listed: Steps, steps: Steps) -> bool:
    """True when ``steps`` is at or beneath the listed path (None in either: any step)."""
    if len(listed) > len(steps):
        return False
    return all(a is None or b is None or a == b for a, b in zip(listed, steps, strict=False))


# -- bodies -----------------------------------------------------------------------------------
class Unreadable(Exception):
    """A body whose encoding cannot be undone (unknown, broken, or too large decoded)."""


def _header(headers: Iterable[Any], name: bytes) -> bytes | None:
    for pair in headers:
        if pair[0].lower() == name:
            return bytes(pair[1])
    return None


def _inflate(body: bytes, wbits: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, MAX_DECODED)
    if inflater.unconsumed_tail:
        raise Unreadable("too large decoded")
    return out


def _decode_one(body: bytes, encoding: bytes) -> bytes:
    try:
        if encoding in (b"gzip", b"x-gzip"):
            return _inflate(body, zlib.MAX_WBITS | 32)
        if encoding == b"deflate":
            try:
                return _inflate(body, zlib.MAX_WBITS)
            except zlib.error:
                return _inflate(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send
        if encoding == b"br" and brotli is not None:
            out = brotli.decompress(body)
            if len(out) > MAX_DECODED:
                raise Unreadable("too large decoded")
            return out
        if encoding == b"identity":
            return body
    except Unreadable:
        raise
    except Exception as exc:  # zlib.error, brotli.error: the body's problem, not ours
        raise Unreadable(f"broken {encoding.decode('latin-1')} body: {exc}") from exc
    raise Unreadable(f"cannot undo Content-Encoding {encoding.decode('latin-1')}")


def _encode_one(body: bytes, encoding: bytes) -> bytes:
    if encoding in (b"gzip", b"x-gzip"):
        return gzip.compress(body, mtime=0)
    if encoding == b"deflate":
        return zlib.compress(body)
    if encoding == b"br":
        return brotli.compress(body)
    return body


def _encodings(value: bytes | None) -> list[bytes]:
    if not value:
        return []
    return [e.strip().lower() for e in value.split(b",") if e.strip()]


_TEXT_MEDIA = frozenset({b"", b"application/xml", b"application/javascript"})


def media_type(headers: Iterable[Any]) -> bytes:
    value = _header(headers, b"content-type")
    return value.split(b";", 1)[0].strip().lower() if value else b""


class Redaction:
    """One redaction policy: the built-in name rules plus the operator's lists.

    ``key`` turns markers into keyed hashes (capture files only: samples always show
    ``[redacted]``). ``count(what, n)`` is told what was redacted (capture statistics)."""

    def __init__(
        self,
        headers: Iterable[str] = (),
        query_params: Iterable[str] = (),
        body_fields: Iterable[str] = (),
        key: bytes | None = None,
        count: Callable[[str, int], None] | None = None,
    ) -> None:
        self.headers = frozenset(h.lower() for h in headers)
        self.query_params = frozenset(p.lower() for p in query_params)
        self.body_fields = tuple(body_fields)
        self._paths = [parse_path(p) for p in self.body_fields]
        # Bytes whose absence from a body proves a listed path cannot match in it (the
        # quoted last member name); None when some path names no member (``$[*]``).
        needles = [next((s for s in reversed(p) if isinstance(s, str)), None) for p in self._paths]
        self._needles: list[bytes] | None = (
            None if None in needles else [orjson.dumps(n) for n in needles if n is not None]
        )
        self.key = key
        self._count = count or (lambda what, n: None)
        self._header_names: dict[bytes, bool] = {}

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> Redaction:
        """From a ``Config`` or a ``CaptureConfig`` (its ``[capture]`` lists; none without)."""
        capture = getattr(config, "capture", config)
        if capture is None:
            return cls(**kwargs)
        return cls(
            capture.redact_headers,
            capture.redact_query_params,
            capture.redact_body_fields,
            **kwargs,
        )

    # -- names ---------------------------------------------------------------------------
    def secret_header(self, name: str) -> bool:
        return is_secret_name(name, self.headers)

    def secret_param(self, name: str) -> bool:
        return is_secret_param(name, self.query_params)

    def _marker(self, value: str | bytes) -> str:
        return marker(value, self.key)

    def header_pairs(self, headers: Iterable[Any]) -> list[list[bytes]]:
        """Raw ``[name, value]`` pairs, secret values replaced."""
        # Header names repeat on every record: each is judged once (a bounded memo).
        known = self._header_names
        out = []
        for name, value in headers:
            raw = bytes(name)
            secret = known.get(raw)
            if secret is None:
                secret = self.secret_header(raw.decode("latin-1"))
                if len(known) >= 4096:
                    known.clear()
                known[raw] = secret
            if secret:
                self._count(f"header:{raw.decode('latin-1').lower()}", 1)
                out.append([raw, self._marker(bytes(value)).encode()])
            else:
                out.append([raw, bytes(value)])
        return out

    # -- query strings and forms ---------------------------------------------------------
    def _pairs(self, text: str, secret: Callable[[str], bool]) -> tuple[str, int]:
        # Split by hand, keeping each separator and every other byte as it came: parse_qsl
        # splits on "&" only (";" was dropped in Python 3.10), and re-encoding would change
        # what a replay sends.
        parts = re.split(r"([&;])", text)
        count = 0
        for i in range(0, len(parts), 2):
            name, eq, value = parts[i].partition("=")
            if eq and secret(unquote_plus(name)):
                parts[i] = f"{name}={quote(self._marker(unquote_plus(value)), safe=':')}"
                count += 1
        return "".join(parts), count

    def target(self, target: str) -> str:
        """``/login?user=a&token=xyz`` → ``/login?user=a&token=%5Bredacted%5D``."""
        path, sep, query = target.partition("?")
        if not sep:
            return target
        query, fragment_sep, fragment = query.partition("#")
        redacted, count = self._pairs(query, self.secret_param)
        if not count:
            return target
        self._count("query", count)
        return f"{path}?{redacted}{fragment_sep}{fragment}"

    # -- bodies --------------------------------------------------------------------------
    def _json(self, doc: Any) -> int:
        count = 0
        stack = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for name, value in node.items():
                    if is_secret_field(name) and not _is_marker(value):
                        node[name] = self._marker(orjson.dumps(value))
                        count += 1
                    elif isinstance(value, dict | list):
                        stack.append(value)
            elif isinstance(node, list):
                stack.extend(v for v in node if isinstance(v, dict | list))
        for steps in self._paths:
            count += self._at(doc, steps)
        return count

    def _at(self, doc: Any, steps: Steps) -> int:
        if not steps:
            return 0
        step, rest = steps[0], steps[1:]
        if isinstance(doc, dict):
            names: list[Any] = list(doc) if step is None else [step] if step in doc else []
        elif isinstance(doc, list):
            if step is None:
                names = list(range(len(doc)))
            else:
                names = [step] if isinstance(step, int) and step < len(doc) else []
        else:
            return 0
        count = 0
        for name in names:
            if rest:
                count += self._at(doc[name], rest)
            elif not _is_marker(doc[name]):
                doc[name] = self._marker(orjson.dumps(doc[name]))
                count += 1
        return count

    def _may_hold_secrets(self, body: bytes) -> bool:
        # Parsing and walking a 3 KB document costs ~150 µs; this search a few, and most
        # bodies name no secret at all. Escapes (\u0070assword, pass%77ord) could spell a
        # name the search misses: such bodies take the slow path.
        if b"\\u" in body or b"%" in body:
            return True
        lowered = body.lower()
        if any(piece in lowered for piece in _SECRET_PIECES):
            return True
        needles = self._needles
        return needles is None or any(needle in body for needle in needles)

    def _plain_body(self, body: bytes, media: bytes) -> tuple[bytes, int]:
        form = media == b"application/x-www-form-urlencoded"
        json_like = media == b"application/json" or media.endswith(b"+json")
        if not json_like and not form and body.lstrip()[:1] in (b"{", b"["):
            json_like = True
        text_like = media.startswith(b"text/") or media in _TEXT_MEDIA
        if not (form or json_like or text_like) or not self._may_hold_secrets(body):
            return body, 0  # images, archives...: no names to go by; or no secret name
        if form:
            text, count = self._pairs(body.decode("latin-1"), is_secret_field)
            return (text.encode("latin-1"), count) if count else (body, 0)
        if json_like:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                pass  # broken JSON still has names and values: scrubbed as text below
            else:
                count = self._json(doc)
                return (orjson.dumps(doc), count) if count else (body, 0)
        text = body.decode("latin-1")
        scrubbed, count = _TEXT_SECRET.subn(_text_marker, text)
        return (scrubbed.encode("latin-1"), count) if count else (body, 0)

    def body(self, body: bytes, headers: Iterable[Any]) -> bytes:
        """The body with its secrets replaced, in the encoding it came in. Raises
        ``Unreadable`` when its ``Content-Encoding`` cannot be undone."""
        if not body:
            return body
        encodings = _encodings(_header(headers, b"content-encoding"))
        decoded = body
        for encoding in reversed(encodings):
            decoded = _decode_one(decoded, encoding)
        redacted, count = self._plain_body(decoded, media_type(headers))
        if not count:
            return body
        self._count("body", count)
        for encoding in encodings:
            redacted = _encode_one(redacted, encoding)
        return redacted

    def readable_body(self, body: bytes, headers: Iterable[Any]) -> bytes:
        """The body decoded (``Content-Encoding`` undone) with its secrets replaced: what a
        sample shows. Raises ``Unreadable`` when the encoding cannot be undone."""
        decoded = body
        for encoding in reversed(_encodings(_header(headers, b"content-encoding"))):
            decoded = _decode_one(decoded, encoding)
        redacted, count = self._plain_body(decoded, media_type(headers))
        if count:
            self._count("body", count)
        return redacted

    # -- diff values (samples) -----------------------------------------------------------
    def value_at(self, path: str, value: Any) -> Any:
        """A diff value shown in a sample, hidden when its path says it holds a secret."""
        if path.startswith("header."):
            return MARKER if self.secret_header(path[7:]) else value
        if path.startswith("text:line[") and is_secret_field(path):
            # A text line that names a secret (its template is in the path): a value taken
            # from it may be the secret alone, without the name that _scrub_text looks for.
            return MARKER
        if not path.startswith("$"):
            return _scrub_text(value)  # "body" (previews and line diffs), status, error
        try:
            steps = parse_path(path)
        except ValueError:
            steps = re.split(r"[.\[\]\"]+", path)  # a path we cannot read: judge by its words
        if any(isinstance(s, str) and is_secret_field(s) for s in steps):
            return MARKER
        if any(_covers(listed, steps) for listed in self._paths):
            return MARKER
        return value


def _is_marker(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("[redacted")


# ``password=x``, ``"token": "x y"``, ``api_key: x`` in text that is not a document shadowd
# can parse. Anchored on the secret word and reading forward only: linear in the text.
_TEXT_SECRET = re.compile(
    r"(?P<name>(?:" + _SECRET_NAME.pattern + r")[\w.-]*\"?)(?P<sep>\s*[:=]\s*)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"?|[^\"&;,\s}<]+)",
    re.IGNORECASE,
)


def _text_marker(m: re.Match[str]) -> str:
    value = MARKER if not m["value"].startswith('"') else f'"{MARKER}"'
    return m["name"] + m["sep"] + value


def _scrub_text(value: Any) -> Any:
    """Body previews and line diffs are text: hide ``password=...`` / ``"token": "..."``."""
    if isinstance(value, str):
        return _TEXT_SECRET.sub(_text_marker, value)
    if isinstance(value, dict):
        return {k: _scrub_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_text(v) for v in value]
    return value


# -- what the rest of shadowd calls ------------------------------------------------------------
_DEFAULT = Redaction()


def redact_target(
    target: str, extra: frozenset[str] = frozenset(), key: bytes | None = None
) -> str:
    """The request target with secret query parameters hidden (the access log's call)."""
    if "?" not in target:
        return target
    policy = _DEFAULT if not extra and key is None else Redaction(query_params=extra, key=key)
    return policy.target(target)


def redact_headers(
    headers: Headers, extra: frozenset[str] = frozenset(), key: bytes | None = None
) -> list[list[str]]:
    """Headers decoded for display, secret values replaced."""
    policy = Redaction(headers=extra, key=key)
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in policy.header_pairs(headers)]


def redact_value_at(path: str, value: Any) -> Any:
    """A diff value shown in a sample, by the built-in rules only."""
    return _DEFAULT.value_at(path, value)

"""Comparing bodies: byte-equal first, then decoded, then as JSON, text or bytes."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import zlib
from typing import Any

import orjson

from shadowd.diff.json_diff import DiffCollector, diff_json
from shadowd.diff.model import DiffKind
from shadowd.diff.rules import EMPTY, RuleSet
from shadowd.exchange import Answer

try:  # brotli is optional: without it a "br" body is compared as it came
    import brotli  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

_PREVIEW = 120
_LINE_DIFF_LIMIT = 64 * 1024  # larger text bodies get sizes and digests only
# Decompressed bodies beyond this are compared by digest: a zip bomb must not eat memory.
_MAX_DECODED = 64 * 1024 * 1024


def _decoded(answer: Answer) -> bytes:
    """The body with its Content-Encoding undone (compressed bodies would differ byte-wise
    for equal content: Diffy users hit exactly that). Unknown or broken encodings: as is."""
    body = answer.body
    encoding = answer.header(b"content-encoding")
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


def media_type(answer: Answer) -> str:
    value = answer.header(b"content-type")
    if not value:
        return ""
    return value.split(b";", 1)[0].strip().lower().decode("latin-1")


def _is_json(media: str, body: bytes) -> bool:
    if media == "application/json" or media.endswith("+json"):
        return True
    if media:
        return False
    stripped = body.lstrip()[:1]
    return stripped in (b"{", b"[")


def _summary(body: bytes, media: str) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "size": len(body),
        "sha": hashlib.blake2b(body, digest_size=8).hexdigest(),
    }
    if media.startswith("text/") or media in ("application/xml", "application/javascript"):
        text = body[:_PREVIEW].decode("utf-8", "replace")
        summary["preview"] = text + ("…" if len(body) > _PREVIEW else "")
    return summary


def _line_diff(reference: bytes, other: bytes) -> list[str]:
    """A compact unified diff of two text bodies (at most 20 lines), for samples."""
    lines = difflib.unified_diff(
        reference.decode("utf-8", "replace").splitlines(),
        other.decode("utf-8", "replace").splitlines(),
        "primary",
        "candidate",
        n=1,
        lineterm="",
    )
    return [line[:200] for line in itertools.islice(lines, 20)]


def diff_bodies(
    reference: Answer, other: Answer, out: DiffCollector, rules: RuleSet = EMPTY
) -> None:
    # Too large to keep: digests and sizes are all there is.
    if reference.body_digest is not None or other.body_digest is not None:
        if (reference.body_digest, reference.body_size) != (other.body_digest, other.body_size):
            out.add(
                DiffKind.BODY,
                "body",
                "body",
                {"size": reference.body_size, "digest": reference.body_digest},
                {"size": other.body_size, "digest": other.body_digest},
            )
        return
    if reference.body == other.body:
        return  # the fast path: nothing parsed
    ref_body, oth_body = _decoded(reference), _decoded(other)
    if ref_body == oth_body:
        return
    ref_media, oth_media = media_type(reference), media_type(other)
    if ref_media != oth_media and ref_media and oth_media:
        out.add(
            DiffKind.CONTENT_TYPE, "body.content-type", "body.content-type", ref_media, oth_media
        )
    if _is_json(ref_media, ref_body) and _is_json(oth_media, oth_body):
        try:
            ref_doc = orjson.loads(ref_body)
        except orjson.JSONDecodeError:
            ref_doc = _INVALID
        try:
            oth_doc = orjson.loads(oth_body)
        except orjson.JSONDecodeError:
            oth_doc = _INVALID
        if ref_doc is not _INVALID and oth_doc is not _INVALID:
            if rules.array_rules:
                rules.reorder(ref_doc)
                rules.reorder(oth_doc)
            diff_json(ref_doc, oth_doc, out)
            return
        if ref_doc is _INVALID and oth_doc is _INVALID:
            pass  # both broken: compare what they are, bytes
        else:
            out.add(
                DiffKind.INVALID_JSON,
                "body",
                "body",
                "invalid JSON" if ref_doc is _INVALID else "valid JSON",
                "invalid JSON" if oth_doc is _INVALID else "valid JSON",
            )
            return
    other_summary = _summary(oth_body, oth_media)
    if "preview" in other_summary and max(len(ref_body), len(oth_body)) <= _LINE_DIFF_LIMIT:
        other_summary["line_diff"] = _line_diff(ref_body, oth_body)
    out.add(DiffKind.BODY, "body", "body", _summary(ref_body, ref_media), other_summary)


_INVALID = object()

"""Comparing bodies: byte-equal first, then decoded, then as JSON, text or bytes."""

from __future__ import annotations

import difflib
import hashlib
import itertools
from typing import Any

from shadowd.diff.json_diff import DiffCollector, diff_json
from shadowd.diff.model import DiffKind
from shadowd.diff.prepared import INVALID, PreparedAnswer
from shadowd.diff.rules import EMPTY, RuleSet
from shadowd.diff.text import diff_text, is_text
from shadowd.exchange import CUT_DIGEST, Answer

_PREVIEW = 120
_JSON = "application/json"
_LINE_DIFF_LIMIT = 64 * 1024  # larger text bodies get sizes and digests only


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
    diff_prepared_bodies(PreparedAnswer(reference, rules), PreparedAnswer(other, rules), out)


def diff_prepared_bodies(ref: PreparedAnswer, oth: PreparedAnswer, out: DiffCollector) -> None:
    """The bodies' differences; what is derived from each answer (decoded body, document) is
    kept in ``ref``/``oth`` for their next comparison in the exchange."""
    reference, other = ref.answer, oth.answer
    # Too large to keep: digests and sizes are all there is. Past [mirror] max_answer_bytes
    # (cut) not even that: two cut bodies are both that large, and nothing more is known.
    if reference.body_digest is not None or other.body_digest is not None:
        if reference.body_digest == CUT_DIGEST or other.body_digest == CUT_DIGEST:
            same = reference.body_digest == other.body_digest
        else:
            same = (reference.body_digest, reference.body_size) == (
                other.body_digest,
                other.body_size,
            )
        if not same:
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
    ref_body, oth_body = ref.decoded(), oth.decoded()
    if ref_body == oth_body:
        return
    # decoded() has read the media types: media() would only return them
    ref_media, oth_media = ref._media or ref.media(), oth._media or oth.media()
    if ref_media != oth_media and ref_media and oth_media:
        out.add(
            DiffKind.CONTENT_TYPE, "body.content-type", "body.content-type", ref_media, oth_media
        )
    # (the usual media type first, without a call)
    if (ref_media == _JSON or _is_json(ref_media, ref_body)) and (
        oth_media == _JSON or _is_json(oth_media, oth_body)
    ):
        # the other's first: parsing it may rebuild the reference's document on a shared
        # tail (PreparedAnswer._learn_tail), an equal document whose members they share
        oth_doc = oth.document(ref)
        ref_doc = ref.document()
        if ref_doc is not INVALID and oth_doc is not INVALID:
            diff_json(ref_doc, oth_doc, out)
            return
        if ref_doc is INVALID and oth_doc is INVALID:
            pass  # both broken: compare what they are, bytes
        else:
            out.add(
                DiffKind.INVALID_JSON,
                "body",
                "body",
                "invalid JSON" if ref_doc is INVALID else "valid JSON",
                "invalid JSON" if oth_doc is INVALID else "valid JSON",
            )
            return
    # Text, line by line under keys that noise can be learned for (shadowd.diff.text).
    if is_text(ref_media or oth_media) and diff_text(
        ref_body, oth_body, ref_media or oth_media, out
    ):
        return
    other_summary = _summary(oth_body, oth_media)
    if "preview" in other_summary and max(len(ref_body), len(oth_body)) <= _LINE_DIFF_LIMIT:
        other_summary["line_diff"] = _line_diff(ref_body, oth_body)
    out.add(DiffKind.BODY, "body", "body", _summary(ref_body, ref_media), other_summary)

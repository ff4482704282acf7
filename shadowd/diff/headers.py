"""Comparing headers: names case-insensitively, values exactly, the volatile ones skipped."""

from __future__ import annotations

from shadowd.diff.json_diff import DiffCollector
from shadowd.diff.model import DiffKind
from shadowd.exchange import Headers
from shadowd.upstream.request import HOP_BY_HOP


def _by_name(headers: Headers, ignored: frozenset[bytes]) -> dict[bytes, bytes]:
    merged: dict[bytes, bytes] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in ignored or lname in HOP_BY_HOP:
            continue
        if lname in merged:
            merged[lname] = merged[lname] + b", " + value  # repeated: compare the list
        else:
            merged[lname] = value
    return merged


def diff_headers(
    reference: Headers, other: Headers, ignored: frozenset[bytes], out: DiffCollector
) -> None:
    if reference == other:
        return
    ref = _by_name(reference, ignored)
    oth = _by_name(other, ignored)
    if ref == oth:
        return
    for name, value in ref.items():
        path = "header." + name.decode("latin-1")
        if name not in oth:
            out.add(DiffKind.HEADER_MISSING, path, path, value.decode("latin-1"), None)
        elif oth[name] != value:
            out.add(
                DiffKind.HEADER, path, path, value.decode("latin-1"), oth[name].decode("latin-1")
            )
    for name, value in oth.items():
        if name not in ref:
            path = "header." + name.decode("latin-1")
            out.add(DiffKind.HEADER_EXTRA, path, path, None, value.decode("latin-1"))

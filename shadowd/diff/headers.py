"""Comparing headers: names case-insensitively, values exactly, the volatile ones skipped.

The headers arrive by lower-case name, ignored and hop-by-hop ones already left out and
repeated ones joined (``PreparedAnswer.named_headers``).
"""

from __future__ import annotations

from shadowd.diff.json_diff import DiffCollector
from shadowd.diff.model import DiffKind


def diff_headers(ref: dict[bytes, bytes], oth: dict[bytes, bytes], out: DiffCollector) -> None:
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

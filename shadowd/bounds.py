"""How long a name shadowd reports may be: endpoint names, field paths, metric labels.

The endpoint and field caps bound how many names there are, not how long each is, and a
request path or a JSON key can be as long as the ingress lets in (tens of kilobytes). Every
name is repeated in ``/metrics`` (once per series), the report and the verdict, so one long
name costs megabytes on each scrape. Longer names are cut, the cut marked with ``…``; names
that agree up to the cut are counted together.
"""

from __future__ import annotations

MAX_NAME_CHARS = 200
CUT_MARK = "…"


def bounded(name: str, limit: int = MAX_NAME_CHARS) -> str:
    """``name``, or its first ``limit - 1`` characters and ``…`` (``limit`` in all)."""
    return name if len(name) <= limit else name[: limit - 1] + CUT_MARK
